//! The contract's wire shapes: field names and JSON types exactly as the app reads them, and
//! datetimes as naive local wall-clock time.
//!
//! Each shape is one type that the handlers serialise and that the OpenAPI document describes
//! (`utoipa::ToSchema`), so the document cannot say anything the answers do not.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{session, units};
use crate::engine::Status;
use crate::http::validate::FieldError;
use crate::store::SessionRecord;

/// The web dashboard, served from the binary.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// A scheduled instant on the wire: naive local, whole seconds (`2025-12-27T02:30:00`).
pub fn scheduled_stamp(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// A "now"-type stamp on the wire: naive local with microseconds
/// (`2025-12-26T10:30:00.123456`).
pub fn now_stamp(t: Timestamp, tz: &TimeZone) -> String {
    let z = t.to_zoned_datetime(tz.clone());
    format!(
        "{}.{:06}",
        z.strftime("%Y-%m-%dT%H:%M:%S"),
        z.subsec_nanosecond() / 1000
    )
}

/// A schedule's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Once,
    Recurring,
}

impl From<units::Mode> for Mode {
    fn from(m: units::Mode) -> Mode {
        match m {
            units::Mode::Once => Mode::Once,
            units::Mode::Recurring => Mode::Recurring,
        }
    }
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// The days of `days`, in week order.
    pub fn list(days: units::Days) -> Vec<Weekday> {
        use jiff::civil::Weekday as W;
        [
            (W::Monday, Weekday::Mon),
            (W::Tuesday, Weekday::Tue),
            (W::Wednesday, Weekday::Wed),
            (W::Thursday, Weekday::Thu),
            (W::Friday, Weekday::Fri),
            (W::Saturday, Weekday::Sat),
            (W::Sunday, Weekday::Sun),
        ]
        .into_iter()
        .filter(|(day, _)| days.contains(*day))
        .map(|(_, wire)| wire)
        .collect()
    }
}

/// How a finished charge was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Schedule,
    ChargeNow,
}

impl From<session::Origin> for Origin {
    fn from(o: session::Origin) -> Origin {
        match o {
            session::Origin::Schedule => Origin::Schedule,
            session::Origin::ChargeNow => Origin::ChargeNow,
        }
    }
}

/// Why a charge stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The battery reached the target SOC.
    TargetReached,
    /// The safety cutoff (a maximum charge duration) ended it.
    Cutoff,
    /// Cancelled through the API.
    Cancelled,
    /// The dongle stopped reporting.
    StaleData,
    /// Charging power tapered off near the target.
    Taper,
    /// The SOC stopped rising.
    Stalled,
    /// A write to the inverter failed.
    WriteFailed,
    /// The inverter's charge settings were changed outside this service.
    ExternalOverride,
    /// A scheduled occurrence that charged nothing: SOC was already at the target.
    Skipped,
    /// A scheduled occurrence that did not run: the service was down or the clock moved past
    /// it, or another charge was running (the detail says which).
    Missed,
    /// A scheduled occurrence that could not start: the dongle was offline, silent or had sent
    /// no SOC for the whole 10-minute grace (the detail says which).
    ChargeFailed,
    /// A run of a cheapest-hours charge reached the end of its planned slots; the charge goes
    /// on in the next ones.
    SlotEnd,
}

impl From<session::StopReason> for StopReason {
    fn from(r: session::StopReason) -> StopReason {
        use session::StopReason as S;
        match r {
            S::TargetReached => StopReason::TargetReached,
            S::Cutoff => StopReason::Cutoff,
            S::Cancelled => StopReason::Cancelled,
            S::StaleData => StopReason::StaleData,
            S::Taper => StopReason::Taper,
            S::Stalled => StopReason::Stalled,
            S::WriteFailed => StopReason::WriteFailed,
            S::ExternalOverride => StopReason::ExternalOverride,
            S::Skipped => StopReason::Skipped,
            S::Missed => StopReason::Missed,
            S::ChargeFailed => StopReason::ChargeFailed,
            S::SlotEnd => StopReason::SlotEnd,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "mqtt_connected": true, "version": "1.0.0", "uptime_seconds": 12.5,
    "dongle_online": true, "dongle_last_seen": "2025-12-26T10:30:00.123456"}))]
pub struct Health {
    /// `ok`, or `degraded` (with HTTP 503 and a `reason`) when the engine that runs the
    /// schedule and the charges does not answer.
    #[schema(example = "ok")]
    pub status: &'static str,
    pub mqtt_connected: bool,
    /// The service's version.
    #[schema(example = "1.0.0")]
    pub version: &'static str,
    pub uptime_seconds: f64,
    /// Why the service is degraded; absent when it is `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// [ext] The dongle is publishing: it has not said it is offline and was heard within the
    /// stale limit (90 s by default). A silent dongle does not make the service `degraded`:
    /// restarting the service would not help it.
    pub dongle_online: bool,
    /// [ext] When anything was last heard from the dongle; `null` before anything.
    pub dongle_last_seen: Option<String>,
}

impl Health {
    /// The dongle's part of the answer.
    pub fn dongle(st: &Status, tz: &TimeZone, now: Timestamp) -> (bool, Option<String>) {
        (st.dongle_online_at(now), dongle_last_seen(st, tz))
    }
}

#[derive(Serialize, Debug, PartialEq, ToSchema)]
#[schema(example = json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring", "enabled": true,
    "next_run": "2025-12-27T02:30:00", "is_charging": false, "current_soc": 45}))]
pub struct ScheduleResponse {
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: u8,
    /// The local start time of day, `HH:MM`.
    #[schema(example = "02:30")]
    pub start_time: String,
    pub mode: Mode,
    pub enabled: bool,
    /// The next local occurrence (naive local, whole seconds); `null` when disabled or when a
    /// `once` schedule has run.
    #[schema(example = "2025-12-27T02:30:00")]
    pub next_run: Option<String>,
    pub is_charging: bool,
    /// The last SOC from the dongle, `null` if none seen yet.
    #[schema(maximum = 100)]
    pub current_soc: Option<u8>,
    /// The weekdays of a recurring schedule; present only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<Weekday>, required = false)]
    pub days: Option<Vec<Weekday>>,
    /// `cheapest` for a cheapest-hours schedule; absent for a fixed start.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, example = "cheapest")]
    pub strategy: Option<&'static str>,
    /// With `cheapest`: the local time the target is needed by, `HH:MM`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false, example = "07:00")]
    pub ready_by: Option<String>,
}

impl ScheduleResponse {
    pub fn of(st: &Status, tz: &TimeZone) -> Option<ScheduleResponse> {
        let s = st.schedule.as_ref()?;
        let cheapest = s.strategy == crate::domain::schedule::Strategy::Cheapest;
        // A cheapest schedule's next run is the first planned slot, once there is a plan.
        let planned = st
            .plan
            .as_ref()
            .filter(|_| cheapest && s.enabled)
            .and_then(|p| p.plan.runs().first().map(|r| r.0));
        Some(ScheduleResponse {
            target_soc: s.target.get(),
            start_time: s.time.to_string(),
            mode: s.mode.into(),
            enabled: s.enabled,
            next_run: planned.or(s.next_run).map(|t| scheduled_stamp(t, tz)),
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            days: s.days.map(Weekday::list),
            strategy: cheapest.then_some("cheapest"),
            ready_by: s.ready_by.filter(|_| cheapest).map(|t| t.to_string()),
        })
    }
}

/// The planned window of a cheapest-hours charge.
#[derive(Serialize, ToSchema)]
pub struct PlanWindow {
    #[schema(example = "2026-01-02T23:00:00")]
    pub from: String,
    #[schema(example = "2026-01-03T07:00:00")]
    pub until: String,
}

/// One stretch of the window and its price.
#[derive(Serialize, ToSchema)]
pub struct PlanSlot {
    #[schema(example = "2026-01-03T02:00:00")]
    pub start: String,
    #[schema(example = "2026-01-03T02:30:00")]
    pub end: String,
    /// Currency per kWh; `null` where no price is known.
    pub price: Option<f64>,
    /// AC charging is planned in it.
    pub planned: bool,
}

/// A point of the expected SOC curve.
#[derive(Serialize, ToSchema)]
pub struct SocPoint {
    #[schema(example = "2026-01-03T02:00:00")]
    pub at: String,
    pub soc: f64,
}

/// `GET /api/charge/plan`: the plan of a cheapest-hours charge (tonight's, or the next one's).
#[derive(Serialize, ToSchema)]
pub struct ChargePlan {
    /// Always `cheapest`.
    pub strategy: &'static str,
    pub window: PlanWindow,
    pub target_soc: u8,
    pub soc_at_planning: f64,
    pub energy_needed_kwh: f64,
    /// The charge power planned with; `null` when unknown (then it charges from the start).
    pub charge_kw: Option<f64>,
    /// `config` or `learned` (from past charges).
    pub charge_kw_source: Option<&'static str>,
    /// The whole window, in order; `planned` marks the chosen stretches.
    pub slots: Vec<PlanSlot>,
    /// What the plan is expected to cost; `null` where prices are missing.
    pub planned_cost: Option<f64>,
    /// What charging continuously from `start_time` would cost instead.
    pub fixed_start_cost: Option<f64>,
    pub currency: Option<String>,
    /// E.g. `GBP/kWh`.
    pub price_unit: Option<String>,
    pub price_source: Option<String>,
    /// Naive local, microseconds.
    pub prices_fetched_at: Option<String>,
    pub expected_soc: Vec<SocPoint>,
    /// Whether the target can be reached by `ready_by` at the planned rate.
    pub feasible: bool,
    /// `null`, or why the plan is not price-based and what it does instead.
    pub fallback: Option<String>,
}

impl ChargePlan {
    pub fn of(v: &crate::domain::night::PlanView, tz: &TimeZone) -> ChargePlan {
        let round = |x: f64, places: i32| {
            let f = 10f64.powi(places);
            (x * f).round() / f
        };
        let p = &v.plan;
        ChargePlan {
            strategy: "cheapest",
            window: PlanWindow {
                from: scheduled_stamp(p.from, tz),
                until: scheduled_stamp(p.until, tz),
            },
            target_soc: v.target.get(),
            soc_at_planning: v.soc_at_planning,
            energy_needed_kwh: round(p.energy_needed_kwh, 2),
            charge_kw: v.charge_kw,
            charge_kw_source: v.charge_kw_source,
            slots: p
                .slots
                .iter()
                .map(|s| PlanSlot {
                    start: scheduled_stamp(s.start, tz),
                    end: scheduled_stamp(s.end, tz),
                    price: s.price,
                    planned: s.planned,
                })
                .collect(),
            planned_cost: p.planned_cost.map(|c| round(c, 3)),
            fixed_start_cost: p.fixed_start_cost.map(|c| round(c, 3)),
            currency: v.currency.clone(),
            price_unit: v.currency.as_ref().map(|c| format!("{c}/kWh")),
            price_source: v.price_source.clone(),
            prices_fetched_at: v.prices_fetched_at.map(|t| now_stamp(t, tz)),
            expected_soc: p
                .expected_soc
                .iter()
                .map(|(t, soc)| SocPoint {
                    at: scheduled_stamp(*t, tz),
                    soc: round(*soc, 1),
                })
                .collect(),
            feasible: p.feasible,
            fallback: v.fallback.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true, "message": "Schedule cancelled"}))]
pub struct Message {
    pub success: bool,
    pub message: String,
}

/// Battery power while a session is charging and the power is positive, else null.
fn charging_power(st: &Status) -> Option<f64> {
    st.battery_power.filter(|p| st.is_charging() && *p > 0.0)
}

/// When the last telemetry arrived; `None` before any.
fn last_updated(st: &Status, tz: &TimeZone) -> Option<String> {
    st.last_telemetry.map(|t| now_stamp(t, tz))
}

/// When anything was last heard from the dongle; `None` before anything.
fn dongle_last_seen(st: &Status, tz: &TimeZone) -> Option<String> {
    st.last_message.map(|t| now_stamp(t, tz))
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"is_charging": false, "current_soc": 45, "target_soc": 85, "charging_power": null,
    "scheduled_next": "2025-12-27T02:30:00", "last_updated": "2025-12-26T10:30:00.123456",
    "dongle_online": true, "dongle_last_seen": "2025-12-26T10:30:00.123456"}))]
pub struct ChargeStatus {
    /// True from when `ACCharge=1` is written until `ACCharge=0` is written.
    pub is_charging: bool,
    #[schema(maximum = 100)]
    pub current_soc: Option<u8>,
    /// The schedule's target, else that of a charge starting or running, else `null`.
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: Option<u8>,
    /// Battery power in W (positive = charging) while a charge runs, else `null`.
    pub charging_power: Option<f64>,
    /// The schedule's `next_run`, or `null`.
    pub scheduled_next: Option<String>,
    /// When the last telemetry from the dongle arrived (naive local, microseconds); `null`
    /// before any.
    pub last_updated: Option<String>,
    /// [ext] The dongle is publishing: it has not said it is offline and was heard within the
    /// stale limit (90 s by default).
    pub dongle_online: bool,
    /// [ext] When anything was last heard from the dongle; `null` before anything.
    pub dongle_last_seen: Option<String>,
}

impl ChargeStatus {
    pub fn of(st: &Status, tz: &TimeZone, now: Timestamp) -> ChargeStatus {
        ChargeStatus {
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            target_soc: st.target_soc().map(|t| t.get()),
            charging_power: charging_power(st),
            scheduled_next: st.next_run().map(|t| scheduled_stamp(t, tz)),
            last_updated: last_updated(st, tz),
            dongle_online: st.dongle_online_at(now),
            dongle_last_seen: dongle_last_seen(st, tz),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"is_enabled": true, "is_charging": true, "current_soc": 52, "target_soc": 80,
    "charging_power": 3500.0, "battery_power": 3500.0, "mode": "once",
    "scheduled_start": null, "scheduled_next": null,
    "charge_started_at": "2026-01-03T01:58:45.123456", "last_updated": "2026-01-03T02:10:00.000001",
    "mqtt_connected": true, "dongle_online": true,
    "dongle_last_seen": "2026-01-03T02:10:00.000001"}))]
pub struct ChargingStatus {
    /// The schedule's `enabled` (false when there is none).
    pub is_enabled: bool,
    pub is_charging: bool,
    #[schema(maximum = 100)]
    pub current_soc: Option<u8>,
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: Option<u8>,
    /// Battery power in W while charging and above 0, else `null`.
    pub charging_power: Option<f64>,
    /// The last battery power in W (negative = discharging), or `null`.
    pub battery_power: Option<f64>,
    /// The schedule's mode, or `null`.
    pub mode: Option<Mode>,
    /// The armed start time of day (`HH:MM`) while a run is armed.
    pub scheduled_start: Option<String>,
    /// The next scheduled run (naive local, whole seconds), or `null`.
    pub scheduled_next: Option<String>,
    /// When the running charge started (naive local, microseconds), or `null`.
    pub charge_started_at: Option<String>,
    /// When the last telemetry from the dongle arrived (naive local, microseconds); `null`
    /// before any.
    pub last_updated: Option<String>,
    /// The live broker connection state.
    pub mqtt_connected: bool,
    /// [ext] The dongle is publishing: it has not said it is offline and was heard within the
    /// stale limit (90 s by default).
    pub dongle_online: bool,
    /// [ext] When anything was last heard from the dongle; `null` before anything.
    pub dongle_last_seen: Option<String>,
}

impl ChargingStatus {
    pub fn of(st: &Status, tz: &TimeZone, now: Timestamp) -> ChargingStatus {
        let next = st.next_run();
        ChargingStatus {
            // A "charge now" beside a recurring schedule shows as the enabled one-shot it is.
            is_enabled: st.schedule.as_ref().is_some_and(|s| s.enabled)
                || st.charge_now_target().is_some(),
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            target_soc: st.target_soc().map(|t| t.get()),
            charging_power: charging_power(st),
            battery_power: st.battery_power,
            mode: st.mode().map(Mode::from),
            // The armed start time of day, while a run is armed.
            scheduled_start: st
                .schedule
                .as_ref()
                .filter(|s| s.next_run.is_some())
                .map(|s| s.time.to_string()),
            scheduled_next: next.map(|t| scheduled_stamp(t, tz)),
            charge_started_at: st
                .session
                .as_ref()
                .filter(|s| s.charging)
                .map(|s| now_stamp(s.started_at, tz)),
            last_updated: last_updated(st, tz),
            mqtt_connected: st.mqtt_connected,
            dongle_online: st.dongle_online_at(now),
            dongle_last_seen: dongle_last_seen(st, tz),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true, "message": "Charging enabled to 80%", "target_soc": 80,
    "current_soc": 45, "is_charging": true}))]
pub struct EnableResponse {
    pub success: bool,
    pub message: String,
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: u8,
    #[schema(maximum = 100)]
    pub current_soc: Option<u8>,
    pub is_charging: bool,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true, "message": "Charging disabled", "stopped_at": "2026-01-03T01:58:45.123456"}))]
pub struct DisableResponse {
    pub success: bool,
    pub message: String,
    /// When the request was handled (naive local, microseconds).
    pub stopped_at: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"started_at": "2026-01-03T01:58:45.123456", "ended_at": "2026-01-03T03:12:10.000001",
    "origin": "charge_now", "target_soc": 80, "start_soc": 45, "end_soc": 80,
    "stop_reason": "target_reached", "detail": null, "energy_wh": 4120.5}))]
pub struct HistoryEntry {
    /// Naive local, microseconds.
    pub started_at: String,
    /// Naive local, microseconds.
    pub ended_at: String,
    pub origin: Origin,
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: u8,
    #[schema(maximum = 100)]
    pub start_soc: Option<u8>,
    #[schema(maximum = 100)]
    pub end_soc: Option<u8>,
    pub stop_reason: Option<StopReason>,
    /// More about the stop, as a sentence.
    pub detail: Option<String>,
    /// Energy put into the battery, in Wh, where known.
    pub energy_wh: Option<f64>,
    /// Settings that could not be put back after the charge; present only when some failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub restore_failures: Vec<String>,
    /// A cheapest-hours run's cost (its energy at the prices of its time); present only then.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    pub currency: Option<String>,
}

impl HistoryEntry {
    pub fn of(r: &SessionRecord, tz: &TimeZone) -> HistoryEntry {
        HistoryEntry {
            started_at: now_stamp(r.started_at, tz),
            ended_at: now_stamp(r.ended_at, tz),
            origin: r.origin.into(),
            target_soc: r.target_soc.get(),
            start_soc: r.start_soc.map(|s| s.get()),
            end_soc: r.end_soc.map(|s| s.get()),
            stop_reason: r.stop_reason.map(StopReason::from),
            detail: r.detail.clone(),
            energy_wh: r.energy_wh,
            restore_failures: r.restore_failures.clone(),
            cost: r.cost,
            currency: r.currency.clone(),
        }
    }
}

// `GET /` for non-browser clients. The fields are in alphabetical order, here and in
// `OverviewCharging`: the answer was first built as a JSON map, which orders its keys so, and it
// keeps its bytes.
/// The service at a glance.
#[derive(Serialize, ToSchema)]
pub struct Overview {
    /// Name -> `"METHOD /path"` of each API endpoint.
    #[schema(example = json!({"health": "GET /api/health"}))]
    pub api_endpoints: BTreeMap<&'static str, &'static str>,
    pub charging: OverviewCharging,
    /// Where the interactive documentation is.
    #[schema(example = "/docs")]
    pub docs: &'static str,
    pub mqtt_connected: bool,
    #[schema(example = "solar-charging-backend")]
    pub name: &'static str,
    /// The schedule, as `GET /api/charge/schedule` shows it.
    // Its keys in alphabetical order, as the first JSON map had them.
    #[serde(serialize_with = "keys_in_alphabetical_order")]
    pub schedule: Option<ScheduleResponse>,
    #[schema(example = "running")]
    pub status: &'static str,
    #[schema(example = "1.0.0")]
    pub version: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct OverviewCharging {
    #[schema(maximum = 100)]
    pub current_soc: Option<u8>,
    pub is_charging: bool,
    /// When the running charge started (naive local, microseconds).
    pub started_at: Option<String>,
}

impl Overview {
    pub fn of(st: &Status, tz: &TimeZone) -> Overview {
        Overview {
            api_endpoints: BTreeMap::from([
                ("health", "GET /api/health"),
                ("schedule", "GET|POST|DELETE /api/charge/schedule"),
                ("charge_status", "GET /api/charge/status"),
                ("charge_history", "GET /api/charge/history"),
                ("charging_enable", "POST /api/charging/enable"),
                ("charging_disable", "POST /api/charging/disable"),
                ("charging_status", "GET /api/charging/status"),
            ]),
            charging: OverviewCharging {
                current_soc: st.soc.map(|s| s.get()),
                is_charging: st.is_charging(),
                started_at: st
                    .session
                    .as_ref()
                    .filter(|s| s.charging)
                    .map(|s| now_stamp(s.started_at, tz)),
            },
            docs: "/docs",
            mqtt_connected: st.mqtt_connected,
            name: "solar-charging-backend",
            schedule: ScheduleResponse::of(st, tz),
            status: "running",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Serialises `v` with the keys of every object in alphabetical order.
fn keys_in_alphabetical_order<T: Serialize, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let m: BTreeMap<String, serde_json::Value> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(m.into_iter().collect())
            }
            serde_json::Value::Array(a) => a.into_iter().map(sorted).collect(),
            other => other,
        }
    }
    let v = serde_json::to_value(v).map_err(serde::ser::Error::custom)?;
    sorted(v).serialize(s)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// An error other than a validation failure.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"detail": "Not Found"}))]
pub struct HttpError {
    /// What went wrong, as a sentence.
    pub detail: String,
}

/// FastAPI's validation error: one entry per problem in the request body.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"detail": [{"type": "less_than_equal", "loc": ["body", "target_soc"],
    "msg": "Input should be less than or equal to 100", "input": 101, "ctx": {"le": 100}}]}))]
pub struct ValidationError {
    pub detail: Vec<FieldError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn wire(v: impl Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn wire_enums_spell_every_value_as_the_domain_names_it() {
        for m in [units::Mode::Once, units::Mode::Recurring] {
            assert_eq!(wire(Mode::from(m)), m.as_str());
        }
        for o in [session::Origin::Schedule, session::Origin::ChargeNow] {
            assert_eq!(wire(Origin::from(o)), wire(o));
        }
        use session::StopReason as S;
        for r in [
            S::TargetReached,
            S::Cutoff,
            S::Cancelled,
            S::StaleData,
            S::Taper,
            S::Stalled,
            S::WriteFailed,
            S::ExternalOverride,
            S::Skipped,
            S::Missed,
            S::ChargeFailed,
        ] {
            assert_eq!(wire(StopReason::from(r)), r.as_str());
        }
        let every_day = units::Days::from_names(units::Days::NAMES).unwrap();
        assert_eq!(wire(Weekday::list(every_day)), json!(units::Days::NAMES));
        let some = units::Days::from_names(["sun", "wed"]).unwrap();
        assert_eq!(wire(Weekday::list(some)), json!(some.names()));
    }

    #[test]
    fn stamps_are_naive_local_with_the_contracts_precision() {
        let tz = TimeZone::get("America/Los_Angeles").unwrap();
        let t: Timestamp = "2025-12-27T10:30:00.123456789Z".parse().unwrap();
        assert_eq!(scheduled_stamp(t, &tz), "2025-12-27T02:30:00");
        assert_eq!(now_stamp(t, &tz), "2025-12-27T02:30:00.123456");
        let whole: Timestamp = "2025-12-27T10:30:00Z".parse().unwrap();
        assert_eq!(now_stamp(whole, &tz), "2025-12-27T02:30:00.000000");
    }
}

/// The answer of `POST /api/device/register` and `DELETE /api/device/unregister`: always 200,
/// `success` says the outcome (as the old backend answered).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true, "message": "Device registered for push notifications"}))]
pub struct DeviceResult {
    pub success: bool,
    /// `Device registered for push notifications`, `Device unregistered`, `Device token not
    /// found`, `Invalid device token format`, `Push notifications not enabled`, `Push
    /// notifications not configured on server` (register) or `Push notifications not
    /// configured` (unregister).
    pub message: &'static str,
}

/// `GET /api/device/status`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"apns_enabled": true, "registered_devices": 1}))]
pub struct DeviceStatus {
    /// Push to the app is set up and on.
    pub apns_enabled: bool,
    pub registered_devices: usize,
}

/// A channel's last delivery attempt.
#[derive(Serialize, ToSchema)]
pub struct Delivery {
    /// When (naive local, microseconds).
    #[schema(example = "2026-01-03T03:12:10.000001")]
    pub at: String,
    #[schema(example = "charge_complete")]
    pub event: &'static str,
    pub ok: bool,
    /// `delivered`, or what went wrong.
    pub detail: String,
}

/// One notification channel. Names hold no secrets, tokens or full URLs.
#[derive(Serialize, ToSchema)]
pub struct NotificationChannel {
    /// `apns` (the iPhone app), `ntfy` or `webhook`.
    #[schema(example = "ntfy")]
    pub kind: &'static str,
    #[schema(example = "ntfy (ntfy.sh)")]
    pub name: String,
    /// The events it is sent.
    pub events: Vec<&'static str>,
    pub last_delivery: Option<Delivery>,
    /// Messages waiting for it (retried with backoff for up to 6 hours).
    pub pending: usize,
}

/// `GET /api/notifications`.
#[derive(Serialize, ToSchema)]
pub struct Notifications {
    pub channels: Vec<NotificationChannel>,
}

impl Notifications {
    pub fn of(channels: Vec<crate::notify::ChannelState>, tz: &TimeZone) -> Notifications {
        Notifications {
            channels: channels
                .into_iter()
                .map(|c| NotificationChannel {
                    kind: c.kind,
                    name: c.name,
                    events: c.events.iter().map(|e| e.as_str()).collect(),
                    last_delivery: c.last_delivery.map(|d| Delivery {
                        at: now_stamp(d.at, tz),
                        event: d.event.as_str(),
                        ok: d.ok,
                        detail: d.detail,
                    }),
                    pending: c.pending,
                })
                .collect(),
        }
    }
}

/// One channel's answer to a test message.
#[derive(Serialize, ToSchema)]
pub struct TestOutcome {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// `POST /api/notifications/test`.
#[derive(Serialize, ToSchema)]
pub struct NotificationTest {
    pub results: Vec<TestOutcome>,
}

/// One AC-charge window of the inverter.
#[derive(Serialize, ToSchema)]
pub struct TimeWindow {
    /// 1..3.
    pub window: u8,
    #[schema(example = "23:00")]
    pub start: String,
    #[schema(example = "23:30")]
    pub end: String,
}

/// `GET /api/inverter/status`: the AC-charge settings as last read from the dongle.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ac_charge_enabled": false, "ac_charge_mode": 2, "ac_charge_mode_name": "Time + SOC",
    "ac_charge_soc_limit": 100, "time_windows": [{"window": 1, "start": "23:00", "end": "23:30"}],
    "data_available": true}))]
pub struct InverterStatus {
    pub ac_charge_enabled: Option<bool>,
    /// The charge-type setting's value.
    pub ac_charge_mode: Option<i64>,
    /// What that value means for the inverter (`null` when unknown).
    pub ac_charge_mode_name: Option<&'static str>,
    pub ac_charge_soc_limit: Option<i64>,
    /// Windows whose start and end are not both `00:00`.
    pub time_windows: Vec<TimeWindow>,
    /// Whether any setting has been read yet.
    pub data_available: bool,
}

impl InverterStatus {
    pub fn of(st: &Status) -> InverterStatus {
        use crate::domain::session::{AC_CHARGE, BAT_CHG_CONTROL, SOC_LIMIT, WINDOWS};
        use crate::domain::units::SettingValue;
        let int = |name: &str| match st.inverter.get(name) {
            Some(SettingValue::Int(v)) => Some(*v),
            _ => None,
        };
        let time = |name: &str| match st.inverter.get(name) {
            Some(SettingValue::Time(t)) => Some(*t),
            _ => None,
        };
        let mode = int(&st.charge_type_setting);
        // The GEN family's table (DONGLE.md): 0 time, 1 SOC/volt, 2 both; SOC or voltage by
        // `ubBatChgcontrol`. Another setting's values have no known meaning.
        let by_voltage = int(BAT_CHG_CONTROL) == Some(1);
        let mode_name = match (st.charge_type_setting.as_str(), mode) {
            ("ACChargeType", Some(0)) => Some("Time"),
            ("ACChargeType", Some(1)) if by_voltage => Some("Voltage"),
            ("ACChargeType", Some(1)) => Some("SOC"),
            ("ACChargeType", Some(2)) if by_voltage => Some("Time + Voltage"),
            ("ACChargeType", Some(2)) => Some("Time + SOC"),
            _ => None,
        };
        let time_windows = WINDOWS
            .iter()
            .enumerate()
            .filter_map(|(i, (start, end))| {
                let (s, e) = (time(start)?, time(end)?);
                let midnight =
                    |t: crate::domain::units::LocalTime| t.hour() == 0 && t.minute() == 0;
                (!(midnight(s) && midnight(e))).then(|| TimeWindow {
                    window: i as u8 + 1,
                    start: s.to_string(),
                    end: e.to_string(),
                })
            })
            .collect();
        InverterStatus {
            ac_charge_enabled: int(AC_CHARGE).map(|v| v != 0),
            ac_charge_mode: mode,
            ac_charge_mode_name: mode_name,
            ac_charge_soc_limit: int(SOC_LIMIT),
            time_windows,
            data_available: st.inverter_read_at.is_some(),
        }
    }
}
