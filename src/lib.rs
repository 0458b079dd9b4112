//! Solar charging backend: grid-charges a LuxPower/EG4 battery to a chosen SOC at a scheduled
//! local time, through a Monitor My Solar dongle spoken to over MQTT.
//!
//! # Layout
//!
//! * [`domain`]: the pure core. Schedules ([`domain::schedule`]), the charge-session state
//!   machine ([`domain::session`]) and value types ([`domain::units`]). No IO, no clock reads:
//!   every decision takes the time as an argument.
//! * [`engine`]: the single owner of the schedule, the session and the latest telemetry; turns
//!   the core's decisions into dongle writes and saved state.
//! * [`dongle`]: the MQTT wire format ([`dongle::codec`], pure) and the client task that
//!   subscribes, reconnects and makes verified writes ([`dongle::client`]).
//! * [`http`]: the REST API, its wire shapes and the dashboard.
//! * [`ha`]: Home Assistant MQTT discovery: the scheduler as a device with sensors and
//!   controls, on the dongle's broker connection ([`ha::discovery`] builds the payloads).
//! * [`store`]: the state file, the charge history and the old backend's schedule import.
//! * [`sim`]: the simulated dongle and inverter and the embedded broker (demo and tests).
//! * [`config`], [`clock`], [`logging`], [`metrics`], [`systemd`]: configuration, the
//!   injectable clock, log setup, Prometheus metrics and service-manager integration.
//! * [`app`] wires the parts together; [`run`] implements each command of [`cli`].

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod dongle;
pub mod engine;
pub mod ha;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod sim;
pub mod store;
pub mod systemd;
