//! The last day of battery readings, for the dashboard's chart: `GET /api/telemetry`.
//!
//! A ring of at most one sample a minute (the latest reading of that minute), at most
//! [`CAPACITY`] of them, kept in memory only: after a restart the chart starts empty. It is
//! filled from the engine's status whenever a new report from the dongle has arrived
//! (`last_telemetry` moved), so a quiet dongle leaves a gap instead of repeating its last
//! values.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{RawQuery, State};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::validate::FieldError;
use super::{ApiError, ApiState, dto};
use crate::engine::Status;

/// One day of one-minute samples.
pub const CAPACITY: usize = 24 * 60;
/// The longest window that can be asked for, and the default.
pub const MAX_HOURS: u8 = 24;

/// A reading of the battery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When the report arrived.
    pub at: Timestamp,
    pub soc: Option<u8>,
    /// W, positive = charging; `None` when unknown or not a finite number.
    pub battery_power: Option<f64>,
}

impl Sample {
    /// The reading `status` shows, if any report has arrived.
    fn of(status: &Status) -> Option<Sample> {
        Some(Sample {
            at: status.last_telemetry?,
            soc: status.soc.map(|s| s.get()),
            battery_power: status.battery_power.filter(|p| p.is_finite()),
        })
    }
}

/// The samples, oldest first, at most one per minute of the clock and [`CAPACITY`] in all.
#[derive(Debug, Default)]
pub struct Ring {
    samples: VecDeque<Sample>,
}

/// The minute of the clock `t` falls in.
fn minute(t: Timestamp) -> i64 {
    t.as_second().div_euclid(60)
}

impl Ring {
    /// Adds a reading. A reading no newer than the last one is the same report seen again and
    /// changes nothing; one in the same minute as the last replaces it, so the newest sample
    /// always shows the latest values.
    pub fn record(&mut self, s: Sample) {
        // Readings arrive in order (see [`Telemetry::catch_up`]), so an older one means the
        // wall clock was set back: what was recorded "ahead" of the present is dropped, as the
        // chart cannot place it.
        if self.samples.back().is_some_and(|last| s.at < last.at) {
            while self.samples.back().is_some_and(|last| last.at > s.at) {
                self.samples.pop_back();
            }
        }
        match self.samples.back_mut() {
            Some(last) if last.at == s.at => {}
            Some(last) if minute(last.at) == minute(s.at) => *last = s,
            _ => {
                self.samples.push_back(s);
                if self.samples.len() > CAPACITY {
                    self.samples.pop_front();
                }
            }
        }
    }

    /// The samples from `from` to `until`, oldest first.
    pub fn between(&self, from: Timestamp, until: Timestamp) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| from <= s.at && s.at <= until)
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The ring and where its readings come from. Clones share the ring.
#[derive(Clone)]
pub struct Telemetry {
    ring: Arc<Mutex<Ring>>,
    status: watch::Receiver<Status>,
}

impl Telemetry {
    /// An empty ring fed from the engine's status.
    pub fn new(status: watch::Receiver<Status>) -> Telemetry {
        Telemetry {
            ring: Arc::default(),
            status,
        }
    }

    /// Records the reading the status shows now.
    ///
    /// The status is read while the ring is locked, so readings are recorded in the order
    /// they arrived whoever records them (the recording task, or a request that wants the
    /// latest reading in its answer).
    pub fn catch_up(&self) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = Sample::of(&self.status.borrow()) {
            ring.record(s);
        }
    }

    /// Records each new status until the engine is gone or `stop` is cancelled.
    pub async fn record(mut self, stop: CancellationToken) {
        loop {
            self.catch_up();
            tokio::select! {
                changed = self.status.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The samples of the last `hours` hours before `now`, oldest first.
    pub fn last_hours(&self, now: Timestamp, hours: u8) -> Vec<Sample> {
        self.catch_up();
        let from = now - SignedDuration::from_hours(i64::from(hours));
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.between(from, now).copied().collect()
    }
}

/// `?hours=N`: 1..=24, default 24. Problems are reported as FastAPI reports a query
/// parameter's (`loc: ["query", "hours"]`, the raw text as `input`).
pub fn parse_hours(query: Option<&str>) -> Result<u8, Vec<FieldError>> {
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == "hours").then(|| percent_decode(v))
        })
        // FastAPI takes the last of a repeated parameter.
        .next_back();
    let Some(raw) = raw else {
        return Ok(MAX_HOURS);
    };
    let problem = |kind, msg: &str, ctx| {
        vec![FieldError {
            kind,
            loc: vec!["query".into(), "hours".into()],
            msg: msg.into(),
            input: json!(raw),
            ctx,
        }]
    };
    let n: i64 = raw.trim().parse().map_err(|_| {
        problem(
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            None,
        )
    })?;
    if n < 1 {
        return Err(problem(
            "greater_than_equal",
            "Input should be greater than or equal to 1",
            Some(json!({"ge": 1})),
        ));
    }
    if n > i64::from(MAX_HOURS) {
        return Err(problem(
            "less_than_equal",
            &format!("Input should be less than or equal to {MAX_HOURS}"),
            Some(json!({"le": MAX_HOURS})),
        ));
    }
    Ok(n as u8)
}

/// `%XX` escapes and `+` of a query string part; an invalid escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A datetime with the zone's offset (`2026-01-15T01:00:00-08:00`).
fn with_offset(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The battery's readings over a window.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"hours": 24, "from": "2026-01-14T01:00:00-08:00",
    "until": "2026-01-15T01:00:00-08:00", "timezone": "America/Los_Angeles",
    "samples": [{"at": "2026-01-15T00:59:12-08:00", "soc": 52, "battery_power": 3500.0}]}))]
pub struct TelemetryWindow {
    /// The window's length, as asked for.
    #[schema(minimum = 1, maximum = 24)]
    pub hours: u8,
    /// The window's start.
    pub from: String,
    /// The window's end: now.
    pub until: String,
    /// The service's time zone (IANA name), whose wall-clock time the datetimes show; `null`
    /// when the zone has no name.
    pub timezone: Option<String>,
    /// Oldest first; at most one a minute, and none while the dongle did not report.
    pub samples: Vec<TelemetrySample>,
}

#[derive(Serialize, ToSchema)]
pub struct TelemetrySample {
    /// When the report arrived.
    pub at: String,
    /// State of charge in percent, `null` when the report had none.
    #[schema(maximum = 100)]
    pub soc: Option<u8>,
    /// Battery power in W (positive = charging, negative = discharging), `null` when unknown.
    pub battery_power: Option<f64>,
}

/// SOC and battery power over the last hours, for a chart.
///
/// At most one sample a minute (the latest reading of that minute), from reports the dongle
/// sent; kept in memory for 24 hours, so a restart starts an empty chart. Unlike the other
/// endpoints' naive local times, these datetimes carry their UTC offset: a chart across a
/// daylight-saving change needs them in order.
#[utoipa::path(get, path = "/api/telemetry", tag = "status",
    security((), ("bearer" = []), ("api_key" = [])),
    params(("hours" = Option<u8>, Query, minimum = 1, maximum = 24,
        description = "How many hours back from now, 1 to 24 (default 24).")),
    responses(
        (status = 200, description = "The readings of the window, oldest first.",
            body = TelemetryWindow),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 422, description = "`hours` is not a whole number from 1 to 24.",
            body = dto::ValidationError,
            example = json!({"detail": [{"type": "less_than_equal", "loc": ["query", "hours"],
                "msg": "Input should be less than or equal to 24", "input": "48", "ctx": {"le": 24}}]})),
    ))]
pub async fn telemetry(
    State(s): State<Arc<ApiState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<TelemetryWindow>, ApiError> {
    let hours = parse_hours(query.as_deref()).map_err(ApiError::validation)?;
    let now = s.clock.now();
    let samples = s.telemetry.last_hours(now, hours);
    Ok(Json(TelemetryWindow {
        hours,
        from: with_offset(now - SignedDuration::from_hours(i64::from(hours)), &s.tz),
        until: with_offset(now, &s.tz),
        timezone: s.tz.iana_name().map(str::to_owned),
        samples: samples
            .iter()
            .map(|x| TelemetrySample {
                at: with_offset(x.at, &s.tz),
                soc: x.soc,
                battery_power: x.battery_power,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::validate::LocItem;

    fn t0() -> Timestamp {
        "2026-01-15T09:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    fn sample(secs: i64, soc: u8) -> Sample {
        Sample {
            at: at(secs),
            soc: Some(soc),
            battery_power: Some(f64::from(soc) * 10.0),
        }
    }

    fn all(r: &Ring) -> Vec<Sample> {
        r.between(Timestamp::MIN, Timestamp::MAX).copied().collect()
    }

    #[test]
    fn readings_within_a_minute_become_one_sample_with_the_latest_values() {
        let mut r = Ring::default();
        for (secs, soc) in [(0, 40), (10, 41), (50, 42), (59, 43), (60, 44), (119, 45)] {
            r.record(sample(secs, soc));
        }
        assert_eq!(all(&r), [sample(59, 43), sample(119, 45)]);
    }

    #[test]
    fn the_same_report_seen_again_changes_nothing() {
        let mut r = Ring::default();
        r.record(sample(0, 40));
        r.record(sample(0, 40));
        r.record(sample(61, 41));
        r.record(sample(61, 41));
        assert_eq!(all(&r), [sample(0, 40), sample(61, 41)]);
    }

    #[test]
    fn the_ring_keeps_the_newest_day_of_minutes() {
        let mut r = Ring::default();
        let minutes = CAPACITY as i64 + 90;
        for m in 0..minutes {
            r.record(sample(m * 60, (m % 100) as u8));
        }
        assert_eq!(r.len(), CAPACITY);
        let kept = all(&r);
        assert_eq!(
            kept.first().unwrap().at,
            at(90 * 60),
            "the oldest 90 are gone"
        );
        assert_eq!(kept.last().unwrap().at, at((minutes - 1) * 60));
    }

    #[test]
    fn a_window_holds_the_samples_of_its_hours_only() {
        let mut r = Ring::default();
        for m in 0..180 {
            r.record(sample(m * 60, 50));
        }
        let now = at(179 * 60 + 30);
        let last_hour: Vec<_> = r
            .between(now - SignedDuration::from_hours(1), now)
            .collect();
        assert_eq!(last_hour.len(), 60);
        assert_eq!(last_hour[0].at, at(120 * 60));
        assert_eq!(
            r.between(now - SignedDuration::from_hours(24), now).count(),
            180
        );
    }

    #[test]
    fn a_clock_set_back_drops_what_was_recorded_ahead_of_it() {
        let mut r = Ring::default();
        for m in 0..10 {
            r.record(sample(m * 60, 50 + m as u8));
        }
        r.record(sample(5 * 60 + 30, 90));
        let kept = all(&r);
        assert_eq!(kept.len(), 6);
        assert_eq!(kept.last(), Some(&sample(5 * 60 + 30, 90)));
    }

    #[test]
    fn a_reading_is_taken_when_a_report_arrives_and_not_before() {
        let mut st = Status::new(t0());
        st.battery_power = Some(f64::NAN);
        let (tx, rx) = watch::channel(st.clone());
        let t = Telemetry::new(rx);
        t.catch_up();
        assert!(t.last_hours(at(60), 24).is_empty(), "no report yet");
        st.last_telemetry = Some(at(30));
        st.soc = crate::domain::units::Soc::new(55);
        tx.send(st.clone()).unwrap();
        assert_eq!(
            t.last_hours(at(60), 24),
            [Sample {
                at: at(30),
                soc: Some(55),
                battery_power: None
            }],
            "a power that is not a number is unknown"
        );
    }

    #[test]
    fn hours_default_to_a_day_and_must_be_whole_numbers_from_1_to_24() {
        assert_eq!(parse_hours(None), Ok(24));
        assert_eq!(parse_hours(Some("")), Ok(24));
        assert_eq!(parse_hours(Some("other=3")), Ok(24));
        assert_eq!(parse_hours(Some("hours=1")), Ok(1));
        assert_eq!(parse_hours(Some("x=1&hours=%32%34")), Ok(24));
        assert_eq!(parse_hours(Some("hours=3&hours=6")), Ok(6));
        let bad = |q: &str| {
            let mut errors = parse_hours(Some(q)).unwrap_err();
            assert_eq!(errors.len(), 1, "{q}: one problem");
            let e = errors.remove(0);
            assert_eq!(e.loc, ["query", "hours"].map(LocItem::from));
            serde_json::to_value(e).unwrap()
        };
        assert_eq!(
            bad("hours=0"),
            json!({"type": "greater_than_equal", "loc": ["query", "hours"], "input": "0",
                "msg": "Input should be greater than or equal to 1", "ctx": {"ge": 1}})
        );
        assert_eq!(
            bad("hours=25"),
            json!({"type": "less_than_equal", "loc": ["query", "hours"], "input": "25",
                "msg": "Input should be less than or equal to 24", "ctx": {"le": 24}})
        );
        for q in [
            "hours=",
            "hours=1.5",
            "hours=abc",
            "hours=99999999999999999999",
        ] {
            assert_eq!(bad(q)["type"], "int_parsing", "{q}");
        }
        assert_eq!(bad("hours=%")["input"], "%");
    }
}
