//! What the dongle client does with each decoded message, as plain functions: which part
//! (the write protocol, the engine) hears it, and what the engine's core is told. The MQTT
//! client and the night simulator route messages through these same functions.

use crate::domain::core::DongleInput;
use crate::domain::session::{Report, value_like};
use crate::dongle::codec::{self, Fields, Message, encode_snapshot_request};

/// Who hears one message from the dongle.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// For the write protocol: answers, settings, heartbeats; telemetry only as a sign of
    /// life on its topic (it learns the firmware from where messages arrive).
    pub protocol: Option<Message>,
    /// For the engine: everything but a retained write answer, which belongs to a write
    /// from before this connection.
    pub engine: Option<Message>,
}

/// Routes one decoded message that arrived on the dongle's prefix.
pub fn route(message: Message, retained: bool) -> Route {
    if matches!(message, Message::Ignored) {
        return Route {
            protocol: None,
            engine: None,
        };
    }
    let protocol = match &message {
        Message::WriteResponse { .. }
        | Message::Settings(_)
        | Message::SettingUpdated(_)
        | Message::Status { .. } => Some(message.clone()),
        Message::Telemetry(_) => Some(Message::Ignored),
        _ => None,
    };
    let engine =
        (!(retained && matches!(message, Message::WriteResponse { .. }))).then_some(message);
    Route { protocol, engine }
}

/// What the client publishes (under the prefix) on every connect: a snapshot request, since
/// firmware >= 4.3 publishes only changes and an idle battery's SOC might otherwise not be
/// heard for hours (older firmware ignores it and reports periodically anyway), and a
/// firmware-code request.
pub fn on_connect() -> [(&'static str, Vec<u8>); 2] {
    [
        ("snapshot/request", encode_snapshot_request()),
        ("firmwarecode/request", b"{}".to_vec()),
    ]
}

/// The core's view of a message, with the telemetry values refused as out of range (for the
/// caller to log).
pub fn to_core(message: Message) -> (DongleInput, Vec<String>) {
    let settings = |fields: &Fields| {
        fields
            .iter()
            .map(|(name, raw)| {
                (
                    name.to_string(),
                    codec::setting_value(raw, value_like(name)),
                )
            })
            .collect()
    };
    let input = match message {
        Message::Telemetry(fields) => {
            let t = codec::telemetry(&fields);
            return (
                DongleInput::Telemetry {
                    soc: t.soc,
                    battery_power_w: t.battery_power_w,
                    charge_power_w: t.charge_power_w,
                },
                t.rejected,
            );
        }
        Message::Availability { online } => DongleInput::Availability(online),
        Message::SettingUpdated(fields) => DongleInput::Settings {
            values: settings(&fields),
            report: Report::Confirmed,
            firmware_code: None,
        },
        Message::Settings(fields) => DongleInput::Settings {
            values: settings(&fields),
            report: Report::Polled,
            firmware_code: codec::firmware_code(&fields),
        },
        Message::FirmwareCode(code) => DongleInput::FirmwareCode(code),
        Message::WriteResponse { .. } | Message::Status { .. } | Message::Ignored => {
            DongleInput::Other
        }
    };
    (input, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dongle::codec::RawValue;

    #[test]
    fn a_retained_write_answer_reaches_the_protocol_but_not_the_engine() {
        let m = Message::WriteResponse {
            setting: Some("ACCharge".into()),
            success: true,
            status: "success".into(),
        };
        let r = route(m.clone(), true);
        assert_eq!(r.protocol, Some(m.clone()));
        assert_eq!(r.engine, None);
        assert_eq!(route(m.clone(), false).engine, Some(m));
    }

    #[test]
    fn telemetry_reaches_the_engine_whole_and_the_protocol_only_as_a_sign_of_life() {
        let mut f = Fields::default();
        f.insert("SOC", RawValue::Num(150.0));
        let r = route(Message::Telemetry(f.clone()), false);
        assert_eq!(r.protocol, Some(Message::Ignored));
        let (input, rejected) = to_core(r.engine.expect("for the engine"));
        assert!(matches!(input, DongleInput::Telemetry { soc: None, .. }));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
    }
}
