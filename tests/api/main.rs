//! Whole-service tests: the real app on port 0, a real MQTT broker in this process, the
//! simulated dongle, and a manual clock.

mod harness;

mod charging;
mod resilience;
