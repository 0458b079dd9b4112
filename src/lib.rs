//! Solar charging backend: grid-charges a LuxPower/EG4 battery to a chosen SOC at a scheduled
//! local time, through a Monitor My Solar dongle spoken to over MQTT.
//!
//! # Layout
//!
//! * [`domain`]: the pure core. The engine's decisions ([`domain::core`]: one input and the
//!   time in, effects out), schedules ([`domain::schedule`]), the charge-session state machine
//!   ([`domain::session`]), SOC plausibility and value types. No IO, no clock reads: every
//!   decision takes the time as an argument.
//! * [`engine`]: the one task that drives the core: it turns API commands and dongle messages
//!   into the core's inputs and carries out its effects (writes, reads, saves, answers).
//! * [`dongle`]: the MQTT wire format ([`dongle::codec`], pure) and the client task that
//!   subscribes, reconnects and makes verified writes ([`dongle::client`]), and the listen
//!   that finds the dongles on a broker ([`dongle::discover`]).
//! * [`http`]: the REST API, its wire shapes and the dashboard.
//! * [`ha`]: Home Assistant MQTT discovery: the scheduler as a device with sensors and
//!   controls, on the dongle's broker connection ([`ha::discovery`] builds the payloads).
//! * [`store`]: the state file, the charge history and the old backend's schedule import.
//! * [`sim`]: the simulated dongle and inverter, the embedded broker (demo and tests), and the
//!   night simulator that drives the core through faults, restarts and clock jumps.
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
pub mod notify;
pub mod run;
pub mod sim;
pub mod store;
pub mod systemd;
pub mod tariff;
