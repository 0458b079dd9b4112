//! systemd integration (`Type=notify`): readiness, watchdog pings while the engine loop
//! answers, and the stopping notice. Without systemd (no `NOTIFY_SOCKET`) every call does
//! nothing.

use sd_notify::NotifyState;

use crate::engine::EngineHandle;

/// Tells systemd the service is ready and, when `WatchdogSec` is set, pings it at half the
/// interval for as long as the engine loop answers a ping: a stuck or dead engine stops the
/// pings, and systemd restarts the service.
pub fn ready(engine: EngineHandle) {
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            if engine
                .ping(interval / 4, &crate::clock::Clock::System)
                .await
            {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
        }
    });
}

pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}
