//! The other side of the dongle protocol: a simulated Monitor My Solar dongle in front of a
//! modelled LuxPower/EG4 inverter, and an embedded MQTT broker to run it against.
//!
//! Used by `demo` (the real service against a simulated installation), by `simulate` (a
//! simulated dongle on any broker) and by the whole-app tests.
//!
//! * [`inverter`]: the pure inverter/battery model (registers, validation, charge physics).
//! * [`dongle`]: the MQTT front end speaking the dongle protocol, with switchable faults.
//! * [`broker`]: an in-process rumqttd broker bound on 127.0.0.1.

pub mod broker;
pub mod dongle;
pub mod inverter;
pub mod nights;
