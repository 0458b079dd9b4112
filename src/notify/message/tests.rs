use super::*;
use crate::domain::session::StopReason;
use crate::domain::units::{Soc, TargetSoc};

fn tz() -> TimeZone {
    TimeZone::get("America/Los_Angeles").unwrap()
}

fn event(kind: EventKind, soc: Option<u8>) -> Event {
    let mut e = Event::new("s1-x", kind, "2026-01-15T11:12:10.000001Z".parse().unwrap());
    e.target_soc = Some(TargetSoc::new(80).unwrap());
    e.soc = soc.map(|s| Soc::new(s).unwrap());
    e
}

#[test]
fn the_app_gets_the_old_backends_payloads_for_a_charges_start_and_end() {
    assert_eq!(
        apns_payload(&event(EventKind::ChargeStarted, Some(45)), &tz()),
        json!({"aps": {"content-available": 1,
                       "alert": {"title": "Charging Started", "body": "Charging from 45% to 80%"}},
               "type": "charging_started", "target_soc": 80, "current_soc": 45})
    );
    assert_eq!(
        apns_payload(&event(EventKind::ChargeComplete, Some(80)), &tz()),
        json!({"aps": {"content-available": 1,
                       "alert": {"title": "Charging Complete", "body": "Battery reached 80% (target: 80%)"},
                       "sound": "default"},
               "type": "charge_complete", "target_soc": 80, "final_soc": 80})
    );
    let unknown = apns_payload(&event(EventKind::ChargeStarted, None), &tz());
    assert_eq!(unknown["aps"]["alert"]["body"], "Charging to 80%");
}

#[test]
fn other_events_reach_the_app_in_the_same_envelope_with_their_fields() {
    let mut e = event(EventKind::ChargeStopped, Some(62));
    e.stop_reason = Some(StopReason::StaleData);
    e.detail = Some("no SOC for 90 s".into());
    let p = apns_payload(&e, &tz());
    assert_eq!(p["type"], "charge_stopped");
    assert_eq!(p["stop_reason"], "stale_data");
    assert_eq!(p["soc"], 62);
    assert_eq!(p["aps"]["sound"], "default", "a problem is not silent");
    assert_eq!(
        p["aps"]["alert"]["body"],
        "Stopped at 62% (target: 80%): no SOC for 90 s"
    );
    assert!(
        p.get("energy_wh").is_none(),
        "nothing null is sent to the phone"
    );
}

#[test]
fn the_webhook_body_has_every_field_with_null_for_what_does_not_apply() {
    let body = webhook_body(&event(EventKind::ChargeComplete, Some(80)), &tz());
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        json!({"event": "charge_complete", "id": "s1-x", "at": "2026-01-15T03:12:10.000001",
               "target_soc": 80, "soc": 80, "stop_reason": null, "detail": null,
               "started_at": null, "energy_wh": null})
    );
}

#[test]
fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
    // RFC 4231-style check with a well-known pair.
    assert_eq!(
        signature("key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
}

#[test]
fn problems_are_sent_at_least_at_high_priority() {
    assert_eq!(ntfy_priority(EventKind::ChargeFailed, 3), 4);
    assert_eq!(ntfy_priority(EventKind::ChargeFailed, 5), 5);
    assert_eq!(ntfy_priority(EventKind::ChargeComplete, 2), 2);
}
