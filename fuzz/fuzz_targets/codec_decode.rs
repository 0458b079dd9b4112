//! Any bytes on any dongle topic: decoding never panics, and whatever decodes as telemetry
//! yields only in-range values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use solar_charging_backend::dongle::codec::{Message, decode, telemetry};

const PREFIX: &str = "dongle-40:4C:CA:AB:CD:EF";
const TOPICS: &[&str] = &[
    "inputbank1", "holdbank1", "input", "hold", "snap/input", "snap/hold", "response",
    "setting/updated", "status", "availability", "firmwarecode/response", "update",
];

fuzz_target!(|data: &[u8]| {
    for t in TOPICS {
        if let Ok(Message::Telemetry(fields)) = decode(PREFIX, &format!("{PREFIX}/{t}"), data) {
            let tm = telemetry(&fields);
            assert!(tm.soc.is_none_or(|s| s.get() <= 100));
            assert!(tm.battery_power_w.is_none_or(f64::is_finite));
        }
    }
});
