//! Command line: `serve` (the default), `demo`, `simulate`, `check-config`, `discover`,
//! `healthcheck`.

use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

use crate::config::{MqttConfig, ServerConfig};

#[derive(Debug, Parser)]
#[command(
    name = "solar-charging-backend",
    version,
    about = "Grid-charges a LuxPower/EG4 battery to a chosen SOC at a scheduled time, through a Monitor My Solar dongle over MQTT"
)]
pub struct Cli {
    /// The config file (the old backend's config.yaml format).
    #[arg(long, global = true, env = "SBC_CONFIG", default_value = "config.yaml")]
    pub config: PathBuf,
    /// Where the schedule, a running charge and the history are kept. For `demo`, only this
    /// flag counts (not `SBC_DATA_DIR`): without it the demo uses a fresh folder.
    #[arg(long, global = true, env = "SBC_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// Parses the process's command line; prints help or the error and exits on a bad one.
    pub fn from_command_line() -> Cli {
        Cli::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses a command line (the program name first).
    ///
    /// `demo --data-dir DIR` keeps the demo's state in DIR. The flag is global, so its default
    /// (`data`) and `SBC_DATA_DIR` would otherwise reach the demo too: only a value typed on
    /// the command line is handed to it, so that a demo never writes into the service's own
    /// state because of an environment variable set for the service.
    pub fn try_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::command();
        let matches = command.try_get_matches_from_mut(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        let typed = matches.value_source("data_dir") == Some(ValueSource::CommandLine);
        if let (true, Some(Command::Demo(demo))) = (typed, &mut cli.command) {
            match &demo.data_dir {
                Some(older) if *older != cli.data_dir => {
                    return Err(command.error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--demo-data is the older name of --data-dir: give one of them",
                    ));
                }
                _ => demo.data_dir = Some(cli.data_dir.clone()),
            }
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API and run the scheduler (the default).
    Serve,
    /// Run everything on this machine: an embedded MQTT broker, a simulated dongle and
    /// inverter, and the service. Needs no config file and touches no real inverter.
    Demo(DemoArgs),
    /// Run only the simulated dongle and inverter against an MQTT broker.
    Simulate(SimulateArgs),
    /// Check a config file and print every problem with its key path.
    CheckConfig,
    /// Listen to every topic on the configured broker and list the dongles publishing there.
    /// Exit 0 when mqtt.dongle_prefix is among them, 1 when not, 2 when the broker cannot be
    /// reached (or the config not read).
    Discover(DiscoverArgs),
    /// Exit 0 when the service answers its health check (for container health checks).
    Healthcheck {
        /// Default: http://127.0.0.1:$SERVER_PORT/api/health (SERVER_PORT defaults to 8088).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FirmwareArg {
    /// Before 4.3: inputbankN/holdbankN topics.
    Legacy,
    /// 4.3 and later: input/hold deltas, snapshots, setting/updated.
    Modern,
}

/// A fault for the simulated dongle to show from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultArg {
    /// Behaves like a healthy dongle.
    None,
    /// Connected, but publishes and answers nothing.
    Silent,
    /// Refuses every write.
    RejectWrites,
    /// Never answers writes, and applies each one 15 s late.
    LateApply,
    /// Says it is offline and goes quiet.
    Offline,
    /// Keeps reporting the same SOC while the battery charges.
    SocFrozen,
    /// Publishes garbage on its telemetry topics.
    Garbage,
}

/// Where the demo's prices come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PricesArg {
    /// A bundled day of half-hourly prices in GBP/kWh, compressed by `--speed` like the physics,
    /// with a cheapest-hours schedule over it.
    Sample,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// HTTP port for the API and dashboard.
    #[arg(long, env = "SERVER_PORT", default_value_t = ServerConfig::DEFAULT_PORT)]
    pub port: u16,
    /// HTTP address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Battery physics runs this many times faster than real time (the schedule stays real).
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// The simulated battery's starting SOC.
    #[arg(long, default_value_t = 42.0)]
    pub soc: f64,
    /// Which dongle firmware generation to simulate.
    #[arg(long, value_enum, default_value_t = FirmwareArg::Modern)]
    pub firmware: FirmwareArg,
    /// Where the demo keeps its state: `--data-dir DIR` (or its older name `--demo-data`) on
    /// the command line; a fresh folder each run when omitted.
    #[arg(id = "demo_data", long = "demo-data", hide = true)]
    pub data_dir: Option<PathBuf>,
    /// Make the simulated dongle misbehave, to see how the service copes.
    #[arg(long, value_enum, default_value_t = FaultArg::None)]
    pub fault: FaultArg,
    /// Send the demo's notifications to this ntfy topic URL too (e.g. https://ntfy.sh/TOPIC).
    #[arg(long, value_name = "URL")]
    pub ntfy: Option<String>,
    /// Send the demo's notifications to this webhook too (repeatable).
    #[arg(long, value_name = "URL")]
    pub webhook: Vec<String>,
    /// Plan with prices: `sample` runs a day of prices at demo speed and sets a cheapest-hours
    /// schedule over it (80 % by the day's end), to watch on the dashboard.
    #[arg(long, value_enum)]
    pub prices: Option<PricesArg>,
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The broker, HOST:PORT.
    #[arg(long, default_value_t = format!("127.0.0.1:{}", MqttConfig::DEFAULT_PORT))]
    pub broker: String,
    /// The dongle id to publish under.
    #[arg(long, default_value = "dongle-40:4C:CA:00:00:01")]
    pub prefix: String,
    #[arg(long, value_enum, default_value_t = FirmwareArg::Modern)]
    pub firmware: FirmwareArg,
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    #[arg(long, default_value_t = 42.0)]
    pub soc: f64,
    /// Make the simulated dongle misbehave.
    #[arg(long, value_enum, default_value_t = FaultArg::None)]
    pub fault: FaultArg,
}

#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    /// How long to listen, in seconds (a 4.3+ dongle whose values do not change may only send
    /// its status every 30 s).
    #[arg(long, default_value = "30", value_parser = seconds)]
    pub seconds: Duration,
}

/// A positive number of seconds, fractions allowed, at most a day.
fn seconds(text: &str) -> Result<Duration, String> {
    let s: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if s.is_finite() && s > 0.0 && s <= 86_400.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{text} is not between 0 and 86400 seconds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discover_seconds(args: &[&str]) -> Result<Duration, clap::Error> {
        let cli = Cli::try_from_args(
            ["solar-charging-backend", "discover"]
                .into_iter()
                .chain(args.iter().copied()),
        )?;
        match cli.command {
            Some(Command::Discover(d)) => Ok(d.seconds),
            other => panic!("not discover: {other:?}"),
        }
    }

    #[test]
    fn discover_listens_30_seconds_unless_told_and_refuses_a_length_that_is_not_one() {
        assert_eq!(discover_seconds(&[]).unwrap(), Duration::from_secs(30));
        assert_eq!(
            discover_seconds(&["--seconds", "90"]).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            discover_seconds(&["--seconds", "0.5"]).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-3", "soon", "inf", "100000"] {
            assert!(discover_seconds(&["--seconds", bad]).is_err(), "{bad}");
        }
    }

    fn demo_dir(args: &[&str]) -> Result<Option<PathBuf>, clap::Error> {
        let cli = Cli::try_from_args(
            std::iter::once("solar-charging-backend").chain(args.iter().copied()),
        )?;
        match cli.command {
            Some(Command::Demo(d)) => Ok(d.data_dir),
            other => panic!("not a demo: {other:?}"),
        }
    }

    #[test]
    fn demo_keeps_its_state_where_data_dir_says_wherever_it_is_given() {
        assert_eq!(
            demo_dir(&["demo", "--data-dir", "d"]).unwrap(),
            Some("d".into())
        );
        assert_eq!(
            demo_dir(&["--data-dir", "d", "demo"]).unwrap(),
            Some("d".into())
        );
    }

    #[test]
    fn demo_data_still_works_as_the_older_name_of_data_dir() {
        assert_eq!(
            demo_dir(&["demo", "--demo-data", "d"]).unwrap(),
            Some("d".into())
        );
        assert_eq!(
            demo_dir(&["demo", "--demo-data", "d", "--data-dir", "d"]).unwrap(),
            Some("d".into())
        );
        let both = demo_dir(&["demo", "--demo-data", "a", "--data-dir", "b"]).unwrap_err();
        assert!(both.to_string().contains("--demo-data"), "{both}");
    }

    #[test]
    fn demo_prices_takes_sample_and_nothing_else() {
        let prices = |args: &[&str]| {
            Cli::try_from_args(
                ["solar-charging-backend", "demo"]
                    .into_iter()
                    .chain(args.iter().copied()),
            )
            .map(|cli| match cli.command {
                Some(Command::Demo(d)) => d.prices,
                other => panic!("not a demo: {other:?}"),
            })
        };
        assert_eq!(prices(&[]).unwrap(), None);
        assert_eq!(
            prices(&["--prices", "sample"]).unwrap(),
            Some(PricesArg::Sample)
        );
        assert!(prices(&["--prices", "agile"]).is_err());
    }

    #[test]
    fn without_the_flag_the_demo_takes_a_fresh_folder_not_the_services_default() {
        assert_eq!(demo_dir(&["demo"]).unwrap(), None);
        let serve =
            Cli::try_from_args(["solar-charging-backend", "serve", "--data-dir", "s"]).unwrap();
        assert_eq!(serve.data_dir, PathBuf::from("s"));
    }
}
