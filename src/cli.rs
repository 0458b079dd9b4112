//! Command line: `serve` (the default), `demo`, `simulate`, `check-config`, `healthcheck`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
    /// Where the schedule, a running charge and the history are kept.
    #[arg(long, global = true, env = "SBC_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
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
    /// Where the demo keeps its state (a fresh folder each run when omitted).
    #[arg(long)]
    pub demo_data: Option<PathBuf>,
    /// Make the simulated dongle misbehave, to see how the service copes.
    #[arg(long, value_enum, default_value_t = FaultArg::None)]
    pub fault: FaultArg,
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
