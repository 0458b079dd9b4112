//! Prometheus metrics at `/metrics`: live gauges taken from the engine's status when scraped,
//! and counters and a latency histogram recorded where things happen.

use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::domain::core::Status;

/// Seconds; dongle writes take from milliseconds to the 15 s timeout and beyond.
const WRITE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// The process-wide recorder (installed on first use, shared by every service in the process).
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(WRITE_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a host program's): then only ours is
        // rendered, empty of counters, and the gauges still work.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Makes sure the recorder exists before anything is recorded.
pub fn init() {
    let _ = handle();
}

/// A finished charge session, by stop reason.
pub fn session_ended(reason: &'static str) {
    metrics::counter!("solar_sessions_total", "reason" => reason).increment(1);
}

/// A dongle write's outcome and how long it took (including read-back and retries).
pub fn write_done(outcome: &'static str, took: Duration) {
    metrics::counter!("solar_dongle_writes_total", "outcome" => outcome).increment(1);
    metrics::histogram!("solar_dongle_write_seconds").record(took.as_secs_f64());
}

/// The text exposition, with the status gauges refreshed first.
pub fn render(st: &Status, now: Timestamp) -> String {
    let g = |name: &'static str, v: f64| metrics::gauge!(name).set(v);
    let opt = |name: &'static str, v: Option<f64>| match v {
        Some(v) => metrics::gauge!(name).set(v),
        None => metrics::gauge!(name).set(f64::NAN),
    };
    opt("solar_soc_percent", st.soc.map(|s| f64::from(s.get())));
    opt("solar_battery_power_watts", st.battery_power);
    g("solar_charging", if st.is_charging() { 1.0 } else { 0.0 });
    g(
        "solar_mqtt_connected",
        if st.mqtt_connected { 1.0 } else { 0.0 },
    );
    opt(
        "solar_dongle_last_message_age_seconds",
        st.last_message
            .map(|t| now.duration_since(t).as_secs_f64().max(0.0)),
    );
    opt(
        "solar_schedule_next_run_timestamp_seconds",
        st.next_run().map(|t| t.as_second() as f64),
    );
    g(
        "solar_uptime_seconds",
        now.duration_since(st.started_at).as_secs_f64().max(0.0),
    );
    handle().render()
}
