//! Solar charging backend: grid-charges a LuxPower/EG4 battery to a chosen SOC at a scheduled
//! local time, through a Monitor My Solar dongle spoken to over MQTT.

pub mod clock;
pub mod config;
pub mod domain;
pub mod dongle;
pub mod http;
