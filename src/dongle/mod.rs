//! The dongle adapter: the MQTT wire format and the client that speaks it.

pub mod client;
pub mod codec;
pub mod discover;
pub mod input;
pub mod protocol;
