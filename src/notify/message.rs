//! What each channel is sent for an event: the app's APNs payload (the old backend's for a
//! charge's start and end), ntfy's title, priority and tags, and the webhook's JSON body and
//! signature. Pure functions.

use jiff::tz::TimeZone;
use serde_json::{Value, json};

use crate::domain::event::{Event, EventKind};
use crate::http::dto::now_stamp;

/// The app's payload. For a charge's start and end it is exactly the old backend's (the app
/// reads `type`, and its Live Activity ends on `charge_complete`); other events use the same
/// envelope with `type` the event's name and its fields.
pub fn apns_payload(e: &Event, tz: &TimeZone) -> Value {
    let target = e.target_soc.map(|t| t.get());
    let soc = e.soc.map(|s| s.get());
    let alert = json!({"title": e.title(), "body": e.body()});
    match e.kind {
        EventKind::ChargeStarted => json!({
            "aps": {"content-available": 1, "alert": alert},
            "type": "charging_started",
            "target_soc": target,
            "current_soc": soc,
        }),
        EventKind::ChargeComplete => json!({
            "aps": {"content-available": 1, "alert": alert, "sound": "default"},
            "type": "charge_complete",
            "target_soc": target,
            "final_soc": soc,
        }),
        kind => {
            let mut aps = json!({"content-available": 1, "alert": alert});
            if kind.is_problem() {
                aps["sound"] = json!("default");
            }
            let mut v = json!({"aps": aps, "type": kind.as_str()});
            if let (Value::Object(out), Value::Object(fields)) = (&mut v, fields(e, tz)) {
                for (k, val) in fields {
                    if k != "event" && !val.is_null() {
                        out.insert(k, val);
                    }
                }
            }
            v
        }
    }
}

/// The fields every channel's structured form carries; those that do not apply are `null`.
fn fields(e: &Event, tz: &TimeZone) -> Value {
    json!({
        "event": e.kind.as_str(),
        "id": e.id,
        "at": now_stamp(e.at, tz),
        "target_soc": e.target_soc.map(|t| t.get()),
        "soc": e.soc.map(|s| s.get()),
        "stop_reason": e.stop_reason.map(|r| r.as_str()),
        "detail": e.detail,
        "started_at": e.started_at.map(|t| now_stamp(t, tz)),
        "energy_wh": e.energy_wh,
    })
}

/// The webhook's body: the event's fields as JSON (the exact bytes the signature covers).
pub fn webhook_body(e: &Event, tz: &TimeZone) -> Vec<u8> {
    serde_json::to_vec(&fields(e, tz)).expect("an event serializes")
}

/// `X-Solar-Signature`'s value: `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let digest = ring::hmac::sign(&key, body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// ntfy's priority for an event: the configured one, and at least `high` (4) for a problem.
pub fn ntfy_priority(kind: EventKind, configured: u8) -> u8 {
    if kind.is_problem() {
        configured.max(4)
    } else {
        configured
    }
}

/// ntfy's tags (emoji short codes it shows beside the title).
pub fn ntfy_tags(kind: EventKind) -> &'static str {
    match kind {
        EventKind::ChargeStarted => "battery,zap",
        EventKind::ChargeComplete => "battery,white_check_mark",
        EventKind::ChargeSkipped => "battery,information_source",
        EventKind::DongleOnline => "satellite,white_check_mark",
        EventKind::Test => "battery,wave",
        _ => "battery,warning",
    }
}

#[cfg(test)]
mod tests;
