//! What a command from Home Assistant asks of the engine, decided from the current status.
//!
//! Values are checked by the HTTP API's own parsers ([`crate::http::validate`]): a control's
//! new value is put into the body `POST /api/charge/schedule` would get (the current schedule
//! with that one field changed), or the body of `POST /api/charging/enable`, so that both
//! doors accept and refuse exactly the same values. Pure: the task runs what this returns.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};

use crate::domain::schedule::{local_time_of, next_occurrence};
use crate::domain::units::TargetSoc;
use crate::engine::{ScheduleInput, Status};
use crate::http::validate::{self, FieldError, StartTime};

use super::discovery::{Remembered, controls};

/// What to ask the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /api/charge/schedule` with this schedule.
    SetSchedule(ScheduleInput),
    /// `POST /api/charging/enable` with this target.
    ChargeNow(TargetSoc),
    /// `POST /api/charging/disable`: stop now and cancel the schedule.
    Stop,
}

/// The command for `object_id` (the last part of its command topic) with `payload`, or why it
/// is refused.
///
/// * Target, start time, mode and the enabled switch change the current schedule. Without one,
///   they create it from what the controls show, **disabled** unless it is the switch that
///   turned it on: nothing charges until the user says so.
/// * A new target while a charge runs that no armed schedule stands behind (a "charge now",
///   or a `once` schedule already fired) goes to that charge, as "charge now" with the new
///   target, so that changing it does not re-arm a spent `once` schedule for tomorrow.
/// * "Charge now" charges to the target the number shows; "stop" is the API's disable.
pub fn decide(
    object_id: &str,
    payload: &str,
    status: &Status,
    memory: &Remembered,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<Action, String> {
    let value = payload.trim();
    match object_id {
        "target_soc" if charging_unscheduled(status) => {
            let body = serde_json::to_vec(&json!({ "target_soc": value }))
                .expect("a JSON object always serialises");
            validate::parse_enable_request(&body)
                .map(|r| Action::ChargeNow(r.target_soc))
                .map_err(|e| reasons(&e))
        }
        "target_soc" => schedule_change("target_soc", value, status, memory, now, tz),
        "start_time" => schedule_change("start_time", value, status, memory, now, tz),
        "mode" => schedule_change("mode", value, status, memory, now, tz),
        "schedule_enabled" => schedule_change("enabled", value, status, memory, now, tz),
        "charge_now" => Ok(Action::ChargeNow(controls(status, memory).target)),
        "stop" => Ok(Action::Stop),
        other => Err(format!("there is no control {other:?}")),
    }
}

/// A charge is running towards a target and no armed schedule stands behind it.
fn charging_unscheduled(status: &Status) -> bool {
    status
        .session
        .as_ref()
        .is_some_and(|s| s.active_target.is_some())
        && status
            .schedule
            .as_ref()
            .is_none_or(|s| s.next_run.is_none())
}

/// The schedule as it is (or as the controls show it), with `field` set to `value`.
fn schedule_change(
    field: &str,
    value: &str,
    status: &Status,
    memory: &Remembered,
    now: Timestamp,
    tz: &TimeZone,
) -> Result<Action, String> {
    let shown = controls(status, memory);
    let current = status.schedule.as_ref();
    let mut body = Map::new();
    body.insert("target_soc".into(), json!(shown.target.get()));
    body.insert("start_time".into(), json!(shown.time.to_string()));
    body.insert("mode".into(), json!(shown.mode.as_str()));
    body.insert("enabled".into(), json!(shown.enabled));
    if let Some(days) = current.and_then(|s| s.days) {
        body.insert("days".into(), json!(days.names()));
    }
    // A cheapest-hours schedule stays one when a control changes another field.
    if let Some(ready_by) = current.and_then(|s| s.ready_by) {
        body.insert("strategy".into(), json!("cheapest"));
        body.insert("ready_by".into(), json!(ready_by.to_string()));
    }
    body.insert(field.into(), Value::String(value.to_string()));
    let bytes = serde_json::to_vec(&Value::Object(body)).expect("a JSON object always serialises");
    let req = validate::parse_schedule_request(&bytes).map_err(|e| reasons(&e))?;
    let (time, first_run) = match req.start_time {
        StartTime::Daily(t) => (t, None),
        StartTime::At(ts) => (local_time_of(ts, tz), Some(ts)),
    };
    // A schedule set with an exact first run (an ISO start time through the API) keeps it when
    // only its target or mode changes; a new time or re-enabling arms it afresh.
    let keeps_its_run = matches!(field, "target_soc" | "mode");
    let first_run = first_run.or_else(|| {
        current
            .filter(|_| keeps_its_run)
            .and_then(|s| s.next_run)
            .filter(|&n| n > now && n != next_occurrence(time, req.days, now, tz))
    });
    Ok(Action::SetSchedule(ScheduleInput {
        target: req.target_soc,
        time,
        mode: req.mode,
        enabled: req.enabled,
        days: req.days,
        first_run,
        ready_by: req.ready_by,
    }))
}

/// The validation messages, one sentence.
fn reasons(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.msg.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "commands_tests.rs"]
mod tests;
