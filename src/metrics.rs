//! Prometheus metrics at `/metrics`: counters and a latency histogram recorded where things
//! happen, and live gauges set from plain values when scraped.
//!
//! Each running app has its own [`Metrics`] (a registry and its metrics), so that two services
//! in one process, as in the tests, never count each other's sessions or writes. The text
//! exposition (OpenMetrics) is `prometheus-client`'s.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Seconds; dongle writes take from milliseconds to the 15 s timeout and beyond.
const WRITE_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What the status gauges show, as plain values (the HTTP layer takes them from the engine's
/// status at each scrape). `None` is shown as NaN: not known.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatusGauges {
    pub soc_percent: Option<f64>,
    pub battery_power_watts: Option<f64>,
    pub charging: bool,
    pub mqtt_connected: bool,
    pub last_message_age: Option<Duration>,
    /// The next scheduled run, in seconds since the Unix epoch.
    pub next_run_unix_seconds: Option<i64>,
    pub uptime: Duration,
}

/// One app's metrics. Cloning is cheap: every clone records into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    /// Holds clones of the metrics below (they share their values); only read after `new`.
    registry: Registry,
    sessions: Family<Reason, Counter>,
    writes: Family<Outcome, Counter>,
    rejected_values: Counter,
    write_seconds: Histogram,
    soc: FloatGauge,
    battery_power: FloatGauge,
    charging: FloatGauge,
    mqtt_connected: FloatGauge,
    last_message_age: FloatGauge,
    next_run: FloatGauge,
    uptime: FloatGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every metric of the service, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let sessions = Family::<Reason, Counter>::default();
        // Counters are named without `_total`: the encoder appends it to the samples.
        registry.register(
            "solar_sessions",
            "Finished charge sessions, by stop reason",
            sessions.clone(),
        );
        let writes = Family::<Outcome, Counter>::default();
        registry.register(
            "solar_dongle_writes",
            "Dongle writes, by outcome",
            writes.clone(),
        );
        let rejected_values = Counter::default();
        registry.register(
            "solar_telemetry_values_rejected",
            "Telemetry values dropped as impossible (SOC outside 0..100, power beyond 50 kW, NaN)",
            rejected_values.clone(),
        );
        let write_seconds = Histogram::new(WRITE_BUCKETS);
        registry.register(
            "solar_dongle_write_seconds",
            "How long a dongle write took, including read-back and retries",
            write_seconds.clone(),
        );
        let mut gauge = |name: &str, help: &str| {
            let g = FloatGauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let soc = gauge("solar_soc_percent", "The battery's last SOC");
        let battery_power = gauge(
            "solar_battery_power_watts",
            "The last battery power (positive = charging)",
        );
        let charging = gauge(
            "solar_charging",
            "1 from when ACCharge=1 is written until ACCharge=0 is, else 0",
        );
        let mqtt_connected = gauge(
            "solar_mqtt_connected",
            "1 while connected to the MQTT broker, else 0",
        );
        let last_message_age = gauge(
            "solar_dongle_last_message_age_seconds",
            "Time since the last message from the dongle",
        );
        let next_run = gauge(
            "solar_schedule_next_run_timestamp_seconds",
            "When the schedule runs next, in seconds since the Unix epoch",
        );
        let uptime = gauge("solar_uptime_seconds", "Time since the service started");
        Metrics {
            inner: Arc::new(Inner {
                registry,
                sessions,
                writes,
                rejected_values,
                write_seconds,
                soc,
                battery_power,
                charging,
                mqtt_connected,
                last_message_age,
                next_run,
                uptime,
            }),
        }
    }

    /// A finished charge session, by stop reason.
    pub fn session_ended(&self, reason: &'static str) {
        self.inner.sessions.get_or_create(&Reason { reason }).inc();
    }

    /// A dongle write's outcome and how long it took (including read-back and retries).
    pub fn write_done(&self, outcome: &'static str, took: Duration) {
        self.inner.writes.get_or_create(&Outcome { outcome }).inc();
        self.inner.write_seconds.observe(took.as_secs_f64());
    }

    /// Telemetry values dropped as impossible.
    pub fn values_rejected(&self, n: usize) {
        self.inner.rejected_values.inc_by(n as u64);
    }

    /// How many telemetry values were dropped as impossible.
    pub fn rejected_values(&self) -> u64 {
        self.inner.rejected_values.get()
    }

    /// How many sessions ended for `reason`.
    pub fn sessions_ended(&self, reason: &'static str) -> u64 {
        self.inner
            .sessions
            .get(&Reason { reason })
            .map_or(0, |c| c.get())
    }

    /// How many dongle writes had `outcome` (`confirmed`, `rejected`, `unknown`, `not_sent`).
    pub fn writes(&self, outcome: &'static str) -> u64 {
        self.inner
            .writes
            .get(&Outcome { outcome })
            .map_or(0, |c| c.get())
    }

    /// The text exposition, with the status gauges set to `status` first.
    pub fn render(&self, status: &StatusGauges) -> String {
        let m = &self.inner;
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let known = |v: Option<f64>| v.unwrap_or(f64::NAN);
        m.soc.set(known(status.soc_percent));
        m.battery_power.set(known(status.battery_power_watts));
        m.charging.set(flag(status.charging));
        m.mqtt_connected.set(flag(status.mqtt_connected));
        m.last_message_age
            .set(known(status.last_message_age.map(|d| d.as_secs_f64())));
        m.next_run
            .set(known(status.next_run_unix_seconds.map(|s| s as f64)));
        m.uptime.set(status.uptime.as_secs_f64());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry)
            .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, if any) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counts_show_under_the_names_and_labels_of_the_readme() {
        let m = Metrics::new();
        m.session_ended("target_reached");
        m.session_ended("target_reached");
        m.session_ended("cutoff");
        m.write_done("confirmed", Duration::from_millis(300));
        m.write_done("unknown", Duration::from_secs(20));
        let text = m.render(&StatusGauges::default());
        assert_eq!(
            sample(&text, "solar_sessions_total{reason=\"target_reached\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "solar_sessions_total{reason=\"cutoff\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "solar_dongle_writes_total{outcome=\"confirmed\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "solar_dongle_write_seconds_bucket{le=\"0.5\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "solar_dongle_write_seconds_bucket{le=\"30.0\"}"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "solar_dongle_write_seconds_count"), Some(2.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.sessions_ended("target_reached"), 2);
        assert_eq!(m.sessions_ended("stalled"), 0);
        assert_eq!(m.writes("confirmed"), 1);
    }

    #[test]
    fn reading_a_count_that_never_happened_adds_no_sample() {
        let m = Metrics::new();
        assert_eq!(m.sessions_ended("cancelled"), 0);
        assert_eq!(m.writes("rejected"), 0);
        let text = m.render(&StatusGauges::default());
        assert!(!text.contains("solar_sessions_total"), "{text}");
        assert!(!text.contains("solar_dongle_writes_total"), "{text}");
    }

    #[test]
    fn gauges_show_the_values_passed_in_and_nan_for_what_is_unknown() {
        let m = Metrics::new();
        let text = m.render(&StatusGauges {
            soc_percent: Some(52.0),
            battery_power_watts: None,
            charging: true,
            mqtt_connected: false,
            last_message_age: Some(Duration::from_millis(1500)),
            next_run_unix_seconds: Some(1_768_467_600),
            uptime: Duration::from_secs(90),
        });
        assert_eq!(sample(&text, "solar_soc_percent"), Some(52.0), "{text}");
        assert!(
            sample(&text, "solar_battery_power_watts").is_some_and(f64::is_nan),
            "{text}"
        );
        assert_eq!(sample(&text, "solar_charging"), Some(1.0));
        assert_eq!(sample(&text, "solar_mqtt_connected"), Some(0.0));
        assert_eq!(
            sample(&text, "solar_dongle_last_message_age_seconds"),
            Some(1.5)
        );
        assert_eq!(
            sample(&text, "solar_schedule_next_run_timestamp_seconds"),
            Some(1_768_467_600.0)
        );
        assert_eq!(sample(&text, "solar_uptime_seconds"), Some(90.0));
    }

    #[test]
    fn two_registries_do_not_share_counts() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.session_ended("target_reached");
        a.clone().write_done("confirmed", Duration::from_millis(10));
        assert_eq!(a.sessions_ended("target_reached"), 1);
        assert_eq!(a.writes("confirmed"), 1);
        assert_eq!(b.sessions_ended("target_reached"), 0);
        assert_eq!(b.writes("confirmed"), 0);
        let text = b.render(&StatusGauges::default());
        assert_eq!(sample(&text, "solar_dongle_write_seconds_count"), Some(0.0));
    }
}
