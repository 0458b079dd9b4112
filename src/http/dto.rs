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

#[derive(Serialize)]
pub struct Health {
    pub status: &'static str,
    pub mqtt_connected: bool,
    pub version: &'static str,
    pub uptime_seconds: f64,
}

#[derive(Serialize, Debug, PartialEq)]
pub struct ScheduleResponse {
    pub target_soc: u8,
    pub start_time: String,
    pub mode: &'static str,
    pub enabled: bool,
    pub next_run: Option<String>,
    pub is_charging: bool,
    pub current_soc: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
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

#[derive(Serialize)]
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

#[derive(Serialize)]
pub struct ChargeStatus {
    pub is_charging: bool,
    pub current_soc: Option<u8>,
    pub target_soc: Option<u8>,
    pub charging_power: Option<f64>,
    pub scheduled_next: Option<String>,
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

#[derive(Serialize)]
pub struct ChargingStatus {
    pub is_enabled: bool,
    pub is_charging: bool,
    pub current_soc: Option<u8>,
    pub target_soc: Option<u8>,
    pub charging_power: Option<f64>,
    pub battery_power: Option<f64>,
    pub mode: Option<&'static str>,
    pub scheduled_start: Option<String>,
    pub scheduled_next: Option<String>,
    pub charge_started_at: Option<String>,
    pub last_updated: String,
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

#[derive(Serialize)]
pub struct EnableResponse {
    pub success: bool,
    pub message: String,
    pub target_soc: u8,
    pub current_soc: Option<u8>,
    pub is_charging: bool,
}

#[derive(Serialize)]
pub struct DisableResponse {
    pub success: bool,
    pub message: String,
    pub stopped_at: String,
}

#[derive(Serialize)]
pub struct HistoryEntry {
    pub started_at: String,
    pub ended_at: String,
    pub origin: &'static str,
    pub target_soc: u8,
    pub start_soc: Option<u8>,
    pub end_soc: Option<u8>,
    pub stop_reason: Option<&'static str>,
    pub detail: Option<String>,
    pub energy_wh: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
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
