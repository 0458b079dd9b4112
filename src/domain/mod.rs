//! The pure core: no IO, no tokio, no clock reads. Every function that needs the time takes it.

pub mod core;
pub mod event;
pub mod night;
pub mod plan;
pub mod schedule;
pub mod session;
pub mod soc_filter;
pub mod state;
pub mod throttle;
pub mod units;
