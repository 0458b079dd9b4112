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

pub use crate::domain::throttle::Throttle;
