//! What the owner is shown and told: a charge now beside the nightly schedule, a stop that
//! keeps it, a dongle that is offline or silent, and telemetry that cannot be true.

use std::time::Duration;

use serde_json::{Value, json};
use solar_charging_backend::sim::dongle::Fault;

use crate::harness::{BrokerKind, Setup, World, ac_on};
use crate::sessions::{Peer, charge_now, run_to_the_end};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn low_battery() -> Setup {
    Setup {
        soc: 30.0,
        ..Setup::default()
    }
}

async fn nightly_85_at_0230(w: &World) {
    let (code, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
}

async fn schedule(w: &World) -> Value {
    let (code, body) = w.get("/api/charge/schedule").await;
    assert_eq!(code, 200);
    body
}

#[tokio::test]
async fn charge_now_keeps_the_nightly_schedule_and_shows_the_charge_it_runs() {
    let w = World::start(low_battery()).await;
    nightly_85_at_0230(&w).await;
    charge_now(&w, 50).await;

    let sched = schedule(&w).await;
    assert_eq!(
        (&sched["mode"], &sched["target_soc"]),
        (&json!("recurring"), &json!(85))
    );
    assert_eq!(sched["next_run"], "2026-01-15T02:30:00");
    // The app is shown the charge it started, as the old backend showed it.
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(
        (&st["target_soc"], &st["mode"], &st["is_enabled"]),
        (&json!(50), &json!("once"), &json!(true)),
        "{st}"
    );

    run_to_the_end(&w, 2 * HOUR).await;
    let sched = schedule(&w).await;
    assert_eq!(
        sched["mode"], "recurring",
        "still there after the charge: {sched}"
    );
    assert_eq!(sched["next_run"], "2026-01-15T02:30:00");
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(
        (&st["target_soc"], &st["mode"]),
        (&json!(85), &json!("recurring"))
    );
}

#[tokio::test]
async fn the_dashboards_stop_keeps_the_nightly_schedule_and_the_apps_stop_cancels_it() {
    let w = World::start(low_battery()).await;
    nightly_85_at_0230(&w).await;
    charge_now(&w, 80).await;
    let (code, body) = w
        .post("/api/charging/disable", json!({"keep_schedule": true}))
        .await;
    assert_eq!((code, &body["success"]), (200, &json!(true)), "{body}");
    assert!(!ac_on(&w.sim.state().borrow()));
    assert_eq!(schedule(&w).await["mode"], "recurring");

    charge_now(&w, 80).await;
    // The app sends no body: stop and cancel, as it always meant.
    let (code, body) = w.post_empty("/api/charging/disable").await;
    assert_eq!((code, &body["success"]), (200, &json!(true)), "{body}");
    assert_eq!(schedule(&w).await, Value::Null);

    // A body that is not what the endpoint takes is refused in the contract's shape.
    let (code, body) = w
        .post("/api/charging/disable", json!({"keep_schedule": "maybe"}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "keep_schedule"]));
}

#[tokio::test]
async fn charge_now_with_the_dongle_offline_is_refused_at_once_with_what_to_check() {
    let w = World::start(low_battery()).await;
    w.sim.set_fault(Fault::Offline);
    w.wait_status(|s| s.dongle_online == Some(false)).await;
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 80}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], false, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains("offline") && msg.contains("WiFi"), "{msg}");
    assert!(w.sim.state().borrow().writes.is_empty(), "nothing written");
    let (_, health) = w.get("/api/health").await;
    assert_eq!(
        (&health["status"], &health["dongle_online"]),
        (&json!("ok"), &json!(false))
    );
}

#[tokio::test]
async fn a_silent_dongle_is_shown_offline_with_when_it_was_last_heard() {
    let w = World::start(low_battery()).await;
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["dongle_online"], true);
    w.silence_dongle().await;
    // Last heard now, then nothing for longer than the stale limit (90 s).
    let (_, before) = w.get("/api/charging/status").await;
    let heard = before["dongle_last_seen"].clone();
    assert!(heard.is_string(), "{before}");
    w.clock.advance(2 * MIN);

    for path in ["/api/charging/status", "/api/charge/status", "/api/health"] {
        let (_, st) = w.get(path).await;
        assert_eq!(st["dongle_online"], false, "{path}: {st}");
        assert_eq!(st["dongle_last_seen"], heard, "{path}: {st}");
    }
    // `last_updated` is when telemetry last came, not the time of asking.
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["last_updated"], before["last_updated"]);

    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 80}))
        .await;
    assert_eq!(body["success"], false, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("nothing has been heard from the dongle for"),
        "{msg}"
    );
    assert!(w.sim.state().borrow().writes.is_empty());
}

#[tokio::test]
async fn before_any_telemetry_the_status_says_so() {
    let w = World::start(Setup {
        broker: BrokerKind::Down,
        ..Setup::default()
    })
    .await;
    for path in ["/api/charging/status", "/api/charge/status"] {
        let (code, st) = w.get(path).await;
        assert_eq!(code, 200);
        assert_eq!(st["last_updated"], Value::Null, "{path}: {st}");
        assert_eq!(st["dongle_online"], false, "{path}: {st}");
        assert_eq!(st["dongle_last_seen"], Value::Null, "{path}: {st}");
    }
}

#[tokio::test]
async fn impossible_telemetry_is_dropped_counted_and_never_shown() {
    let w = World::start(low_battery()).await;
    let peer = Peer::connect(&w).await;
    peer.publish(
        "input",
        json!({"event": "input_delta", "ts": 0,
               "payload": {"SOC": 250, "Pdischarge": 1e300, "Pcharge": 90000}}),
    )
    .await;
    // A believable reading after it, on the same connection (so it arrives after it), shows
    // when both have been taken in.
    peer.publish(
        "input",
        json!({"event": "input_delta", "ts": 0, "payload": {"Pcharge": 1234, "Pdischarge": 0}}),
    )
    .await;
    // (Waited for through the count: the dongle's own reports may overwrite the power shown.)
    let metrics = w.app.as_ref().unwrap().metrics.clone();
    w.wait_status(|_| metrics.rejected_values() >= 3).await;
    assert_eq!(metrics.rejected_values(), 3);
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["current_soc"], 30, "{st}");
    let power = st["battery_power"].as_f64();
    assert!(power.is_none_or(|p| p.abs() <= 50_000.0), "{st}");
    let (_, metrics) = w.get_text("/metrics").await;
    assert!(
        metrics.contains("solar_telemetry_values_rejected_total 3"),
        "{metrics}"
    );
}
