//! Log setup: one human line per event by default, JSON lines on request. `RUST_LOG` wins over
//! the config's level.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Chatty dependencies are kept at warnings unless `RUST_LOG` says otherwise.
const QUIET: &str = "rumqttd=off,rumqttc=warn,hyper=warn,tower_http=warn";

pub fn init(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},{QUIET}", cfg.level)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colour only on a terminal: journald and Docker keep escape codes as literal noise.
        // (Set after `compact()`, which starts a fresh format.)
        LogFormat::Text => builder
            .compact()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
    };
    // Already set (tests, or a second call): keep the first.
    let _ = result;
}

/// Prints a fatal error with its causes, for when logging may not be set up yet.
pub fn report_fatal(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// Lets a recurring warning through at most once per `every`, counting the rest, so that a
/// flood of bad messages cannot flood the log.
#[derive(Debug, Clone)]
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Duration>,
    suppressed: u64,
}

impl Throttle {
    pub const fn per_minute() -> Throttle {
        Throttle {
            every: std::time::Duration::from_secs(60),
            last: None,
            suppressed: 0,
        }
    }

    /// At monotonic time `now`: `Some(n)` to log now (`n` occurrences were held back since the
    /// last line), `None` to stay quiet.
    pub fn allow(&mut self, now: std::time::Duration) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.saturating_sub(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_throttle_logs_once_a_minute_and_counts_what_it_held_back() {
        let mut t = Throttle::per_minute();
        assert_eq!(t.allow(Duration::from_secs(0)), Some(0));
        for s in 1..60 {
            assert_eq!(t.allow(Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow(Duration::from_secs(60)), Some(59));
        assert_eq!(t.allow(Duration::from_secs(61)), None);
    }
}
