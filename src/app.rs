//! Wiring: store, dongle client, engine and HTTP server, started together and stopped together.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::session::ChargeParams;
use crate::dongle::client::{self, DongleSettings};
use crate::engine::{self, EngineConfig, EngineHandle};
use crate::http::{self, ApiState};
use crate::store::Store;

/// How long a graceful stop may take before the remaining tasks are abandoned.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// A running service.
pub struct App {
    /// Where HTTP is served.
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    shutdown: CancellationToken,
    engine_task: JoinHandle<()>,
    other_tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Stops gracefully: the in-flight write finishes, state is saved, a running charge is
    /// left to be resumed by the next start.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let all = async {
            let _ = self.engine_task.await;
            for t in self.other_tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_LIMIT, all).await.is_err() {
            warn!(
                "shutdown took longer than {} s; exiting anyway",
                SHUTDOWN_LIMIT.as_secs()
            );
        }
    }

    /// Stops at once, saving nothing: what a crash or power cut does. For tests.
    pub fn kill(self) {
        self.engine_task.abort();
        for t in &self.other_tasks {
            t.abort();
        }
        self.shutdown.cancel();
    }
}

pub fn charge_params(config: &Config) -> ChargeParams {
    let c = &config.charging;
    ChargeParams {
        charge_type_setting: c.charge_type_setting.clone(),
        charge_type_value: c.charge_type_value,
        cutoff: c.safety_cutoff,
        stale_after: c.stale_after,
        taper_after: Duration::from_secs(u64::from(c.taper_minutes) * 60),
        stall_after: Duration::from_secs(u64::from(c.stall_minutes) * 60),
    }
}

pub fn dongle_settings(config: &Config) -> DongleSettings {
    let c = &config.charging;
    DongleSettings {
        host: config.mqtt.host.clone(),
        port: config.mqtt.port,
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
        prefix: config.mqtt.dongle_prefix.clone(),
        client_id: config.mqtt.client_id.clone(),
        keep_alive: config.mqtt.keep_alive,
        write_timeout: c.write_timeout,
        min_write_interval: c.min_write_interval,
        readback_timeout: c.readback_timeout,
        max_retries: if c.retry_on_failure { c.max_retries } else { 0 },
        time_format: c.time_format,
    }
}

/// Starts the service. `listener` is bound by the caller (port 0 in tests).
pub async fn start(
    config: &Config,
    data_dir: &Path,
    clock: Clock,
    listener: TcpListener,
) -> anyhow::Result<App> {
    crate::metrics::init();
    let store = Store::open(data_dir)
        .with_context(|| format!("the data directory {} is not usable", data_dir.display()))?;
    let loaded = store.load(clock.now(), &config.timezone);
    for notice in &loaded.notices {
        warn!("{notice}");
    }
    let shutdown = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::channel(1024);
    let (dongle, dongle_tasks) = client::spawn(
        dongle_settings(config),
        clock.clone(),
        events_tx,
        shutdown.clone(),
    );
    let engine_cfg = EngineConfig {
        params: charge_params(config),
        tz: config.timezone.clone(),
        check_interval: config.charging.soc_check_interval,
    };
    let (engine, handle, cmds) = engine::new(
        engine_cfg,
        clock.clone(),
        store.clone(),
        dongle,
        loaded.state,
    );
    let engine_task = tokio::spawn(engine.run(cmds, events_rx, shutdown.clone()));

    let api = ApiState {
        engine: handle.clone(),
        tz: config.timezone.clone(),
        store,
        api_key: config.server.api_key.clone(),
        started: std::time::Instant::now(),
        clock: clock.clone(),
    };
    let router = http::router(api, &config.server.cors_origins, Duration::from_secs(120));
    let addr = listener.local_addr()?;
    let limits = http::serve::Limits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
    };
    let http_task = tokio::spawn(http::serve::serve(
        listener,
        router,
        limits,
        clock,
        shutdown.clone(),
    ));
    let mut other_tasks = dongle_tasks;
    other_tasks.push(http_task);
    info!(%addr, zone = %config.timezone_name, data_dir = %data_dir.display(), "serving the API");
    Ok(App {
        addr,
        engine: handle,
        shutdown,
        engine_task,
        other_tasks,
    })
}

/// Binds the configured address with a message that says what to do when it fails.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).await.with_context(|| {
        format!("cannot listen on {host}:{port}: is another program using the port? Set server.port in config.yaml or SERVER_PORT")
    })
}
