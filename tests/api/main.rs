//! Whole-service tests: the real app on port 0, a real MQTT broker (in this process, or
//! Debian's mosquitto as a child process), the simulated dongle, and a manual clock.

mod apns_stand_in;
mod harness;
mod hooks_stand_in;

mod apns;
mod charging;
mod cheapest;
mod contract;
mod demo;
mod demo_command;
mod discover;
mod docs;
mod edge;
mod guards;
mod home_assistant;
mod notify;
mod owner;
mod prices;
mod process;
mod resilience;
mod sessions;
mod telemetry;
