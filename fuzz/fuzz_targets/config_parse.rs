//! Any text as config.yaml: the loader answers with a config or a list of problems, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use solar_charging_backend::config::{EnvOverrides, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(problems) = parse(text, &EnvOverrides::default()) {
            assert!(!problems.is_empty());
        }
    }
});
