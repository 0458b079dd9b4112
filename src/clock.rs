//! The service's two clocks behind one handle.
//!
//! * **Wall clock** ([`Clock::now`]): what "02:30 local" is measured against. It can jump (NTP
//!   sync after a Raspberry Pi boots, a manual change), so nothing waits on it directly.
//! * **Monotonic timers** ([`Clock::sleep`], [`Clock::mono`]): timeouts, write spacing, backoff
//!   and the engine's periodic re-check of the wall clock.
//!
//! Production uses [`Clock::System`]. Tests use [`Clock::Manual`], where time only moves when the
//! test says so: [`ManualClock::advance`] moves both clocks (as real time passing does) and
//! [`ManualClock::jump`] moves the wall clock alone (as NTP does). Because sleepers are woken by
//! the test and not by a runtime timer, whole-app tests can talk to a real MQTT broker over real
//! sockets and still be deterministic, which tokio's paused time cannot offer (it auto-advances
//! whenever the runtime waits for I/O).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;

/// A monotonic instant: time elapsed since the clock's origin. Only differences mean anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub Duration);

impl Mono {
    pub fn saturating_since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, rhs: Duration) -> Mono {
        Mono(self.0 + rhs)
    }
}

#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(ManualClock),
}

fn system_origin() -> tokio::time::Instant {
    static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(tokio::time::Instant::now)
}

impl Clock {
    /// The current wall-clock instant.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Manual(m) => m.state.borrow().wall,
        }
    }

    /// The current monotonic instant.
    pub fn mono(&self) -> Mono {
        match self {
            Clock::System => Mono(tokio::time::Instant::now().duration_since(system_origin())),
            Clock::Manual(m) => m.state.borrow().mono,
        }
    }

    /// Waits for `d` of monotonic time, measured from this call (not from the first poll).
    pub fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send + 'static {
        self.sleep_until(self.mono() + d)
    }

    /// Waits until the monotonic instant `at`.
    pub fn sleep_until(&self, at: Mono) -> impl Future<Output = ()> + Send + 'static {
        let clock = self.clone();
        async move {
            match clock {
                Clock::System => tokio::time::sleep_until(system_origin() + at.0).await,
                Clock::Manual(m) => m.wait_for_mono(at).await,
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ManualState {
    wall: Timestamp,
    mono: Mono,
}

/// A clock that moves only when told to. Cloning shares the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    state: Arc<watch::Sender<ManualState>>,
}

impl ManualClock {
    pub fn new(wall: Timestamp) -> Self {
        let (tx, _) = watch::channel(ManualState {
            wall,
            mono: Mono::default(),
        });
        ManualClock {
            state: Arc::new(tx),
        }
    }

    pub fn clock(&self) -> Clock {
        Clock::Manual(self.clone())
    }

    /// Lets `d` of time pass: both the wall clock and the monotonic clock move.
    pub fn advance(&self, d: Duration) {
        self.state.send_modify(|s| {
            s.wall = s
                .wall
                .checked_add(SignedDuration::try_from(d).expect("duration in range"))
                .expect("timestamp in range");
            s.mono = s.mono + d;
        });
    }

    /// Moves the wall clock alone, as an NTP correction or a manual change does.
    pub fn jump(&self, d: SignedDuration) {
        self.state.send_modify(|s| {
            s.wall = s.wall.checked_add(d).expect("timestamp in range");
        });
    }

    async fn wait_for_mono(&self, target: Mono) {
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|s| s.mono >= target).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleep_wakes_only_when_advanced_past_its_deadline() {
        let m = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let clock = m.clock();
        // The deadline is fixed when `sleep` is called, before the task first runs.
        let sleeper = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        m.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        m.jump(SignedDuration::from_hours(5));
        tokio::task::yield_now().await;
        assert!(
            !sleeper.is_finished(),
            "a wall-clock jump must not end a monotonic sleep"
        );
        m.advance(Duration::from_secs(1));
        sleeper.await.unwrap();
        assert_eq!(
            clock.now(),
            "2026-01-01T05:00:10Z".parse::<Timestamp>().unwrap()
        );
    }
}
