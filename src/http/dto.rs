//! The contract's wire shapes: field names and JSON types exactly as the app reads them, and
//! datetimes as naive local wall-clock time.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::json;

use crate::engine::Status;
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

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ok", "mqtt_connected": true, "version": "1.0.0", "uptime_seconds": 12.5}))]
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
}

#[derive(Serialize, Debug, PartialEq, utoipa::ToSchema)]
#[schema(example = json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring", "enabled": true,
    "next_run": "2025-12-27T02:30:00", "is_charging": false, "current_soc": 45}))]
pub struct ScheduleResponse {
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: u8,
    /// The local start time of day, `HH:MM`.
    #[schema(example = "02:30")]
    pub start_time: String,
    #[schema(value_type = crate::http::openapi::Mode)]
    pub mode: &'static str,
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
    #[schema(value_type = Vec<crate::http::openapi::Weekday>, required = false)]
    pub days: Option<Vec<&'static str>>,
}

impl ScheduleResponse {
    pub fn of(st: &Status, tz: &TimeZone) -> Option<ScheduleResponse> {
        let s = st.schedule.as_ref()?;
        Some(ScheduleResponse {
            target_soc: s.target.get(),
            start_time: s.time.to_string(),
            mode: s.mode.as_str(),
            enabled: s.enabled,
            next_run: s.next_run.map(|t| scheduled_stamp(t, tz)),
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            days: s.days.map(|d| d.names()),
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"success": true, "message": "Schedule cancelled"}))]
pub struct Message {
    pub success: bool,
    pub message: String,
}

/// Battery power while a session is charging and the power is positive, else null.
fn charging_power(st: &Status) -> Option<f64> {
    st.battery_power.filter(|p| st.is_charging() && *p > 0.0)
}

/// When the dongle last reported, or now when it has not yet.
fn last_updated(st: &Status, tz: &TimeZone, now: Timestamp) -> String {
    now_stamp(st.last_telemetry.unwrap_or(now), tz)
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"is_charging": false, "current_soc": 45, "target_soc": 85, "charging_power": null,
    "scheduled_next": "2025-12-27T02:30:00", "last_updated": "2025-12-26T10:30:00.123456"}))]
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
    /// When the dongle last reported, or now if it has not yet (naive local, microseconds).
    pub last_updated: String,
}

impl ChargeStatus {
    pub fn of(st: &Status, tz: &TimeZone, now: Timestamp) -> ChargeStatus {
        ChargeStatus {
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            target_soc: st.target_soc().map(|t| t.get()),
            charging_power: charging_power(st),
            scheduled_next: st.next_run().map(|t| scheduled_stamp(t, tz)),
            last_updated: last_updated(st, tz, now),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"is_enabled": true, "is_charging": true, "current_soc": 52, "target_soc": 80,
    "charging_power": 3500.0, "battery_power": 3500.0, "mode": "once",
    "scheduled_start": null, "scheduled_next": null,
    "charge_started_at": "2026-01-03T01:58:45.123456", "last_updated": "2026-01-03T02:10:00.000001",
    "mqtt_connected": true}))]
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
    #[schema(value_type = Option<crate::http::openapi::Mode>)]
    pub mode: Option<&'static str>,
    /// The armed start time of day (`HH:MM`) while a run is armed.
    pub scheduled_start: Option<String>,
    /// The next scheduled run (naive local, whole seconds), or `null`.
    pub scheduled_next: Option<String>,
    /// When the running charge started (naive local, microseconds), or `null`.
    pub charge_started_at: Option<String>,
    /// When the dongle last reported, or now if it has not yet (naive local, microseconds).
    pub last_updated: String,
    /// The live broker connection state.
    pub mqtt_connected: bool,
}

impl ChargingStatus {
    pub fn of(st: &Status, tz: &TimeZone, now: Timestamp) -> ChargingStatus {
        let next = st.next_run();
        ChargingStatus {
            is_enabled: st.schedule.as_ref().is_some_and(|s| s.enabled),
            is_charging: st.is_charging(),
            current_soc: st.soc.map(|s| s.get()),
            target_soc: st.target_soc().map(|t| t.get()),
            charging_power: charging_power(st),
            battery_power: st.battery_power,
            mode: st.schedule.as_ref().map(|s| s.mode.as_str()),
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
            last_updated: last_updated(st, tz, now),
            mqtt_connected: st.mqtt_connected,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
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

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"success": true, "message": "Charging disabled", "stopped_at": "2026-01-03T01:58:45.123456"}))]
pub struct DisableResponse {
    pub success: bool,
    pub message: String,
    /// When the request was handled (naive local, microseconds).
    pub stopped_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({"started_at": "2026-01-03T01:58:45.123456", "ended_at": "2026-01-03T03:12:10.000001",
    "origin": "charge_now", "target_soc": 80, "start_soc": 45, "end_soc": 80,
    "stop_reason": "target_reached", "detail": null, "energy_wh": 4120.5}))]
pub struct HistoryEntry {
    /// Naive local, microseconds.
    pub started_at: String,
    /// Naive local, microseconds.
    pub ended_at: String,
    #[schema(value_type = crate::http::openapi::Origin)]
    pub origin: &'static str,
    #[schema(minimum = 10, maximum = 100)]
    pub target_soc: u8,
    #[schema(maximum = 100)]
    pub start_soc: Option<u8>,
    #[schema(maximum = 100)]
    pub end_soc: Option<u8>,
    #[schema(value_type = Option<crate::http::openapi::StopReason>)]
    pub stop_reason: Option<&'static str>,
    /// More about the stop, as a sentence.
    pub detail: Option<String>,
    /// Energy put into the battery, in Wh, where known.
    pub energy_wh: Option<f64>,
    /// Settings that could not be put back after the charge; present only when some failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub restore_failures: Vec<String>,
}

impl HistoryEntry {
    pub fn of(r: &SessionRecord, tz: &TimeZone) -> HistoryEntry {
        HistoryEntry {
            started_at: now_stamp(r.started_at, tz),
            ended_at: now_stamp(r.ended_at, tz),
            origin: match r.origin {
                crate::domain::session::Origin::Schedule => "schedule",
                crate::domain::session::Origin::ChargeNow => "charge_now",
            },
            target_soc: r.target_soc.get(),
            start_soc: r.start_soc.map(|s| s.get()),
            end_soc: r.end_soc.map(|s| s.get()),
            stop_reason: r.stop_reason.map(|s| s.as_str()),
            detail: r.detail.clone(),
            energy_wh: r.energy_wh,
            restore_failures: r.restore_failures.clone(),
        }
    }
}

/// `GET /` for non-browser clients.
pub fn overview(st: &Status, tz: &TimeZone) -> serde_json::Value {
    json!({
        "name": "solar-charging-backend",
        "version": env!("CARGO_PKG_VERSION"),
        "status": "running",
        "mqtt_connected": st.mqtt_connected,
        "charging": {
            "is_charging": st.is_charging(),
            "current_soc": st.soc.map(|s| s.get()),
            "started_at": st.session.as_ref().filter(|s| s.charging).map(|s| now_stamp(s.started_at, tz)),
        },
        "schedule": ScheduleResponse::of(st, tz),
        "docs": "/docs",
        "api_endpoints": {
            "health": "GET /api/health",
            "schedule": "GET|POST|DELETE /api/charge/schedule",
            "charge_status": "GET /api/charge/status",
            "charge_history": "GET /api/charge/history",
            "charging_enable": "POST /api/charging/enable",
            "charging_disable": "POST /api/charging/disable",
            "charging_status": "GET /api/charging/status",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
