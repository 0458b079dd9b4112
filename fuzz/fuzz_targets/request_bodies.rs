//! Any bytes as a request body: a typed request or FastAPI-shaped errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use solar_charging_backend::http::validate::{parse_enable_request, parse_schedule_request};

fuzz_target!(|data: &[u8]| {
    if let Err(errors) = parse_schedule_request(data) {
        assert!(!errors.is_empty());
        serde_json::to_string(&errors).expect("errors serialize");
    }
    if let Err(errors) = parse_enable_request(data) {
        assert!(!errors.is_empty());
    }
});
