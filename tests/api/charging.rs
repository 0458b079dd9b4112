//! Charges as a user sees them: scheduled, skipped, stopped at the target or the cutoff.

use std::time::Duration;

use serde_json::json;
use solar_charging_backend::sim::dongle::HoldValue;

use crate::harness::{Setup, World, ac_on, local, written};

const MIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_scheduled_charge_starts_at_the_minute_stops_at_the_target_and_restores_the_inverter() {
    let w = World::start(Setup::default()).await;
    let before = w.sim.state().borrow().holds.clone();
    let (code, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 60, "start_time": "01:30", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["next_run"], "2026-01-15T01:30:00");
    assert_eq!(body["is_charging"], false);

    w.tick(29 * MIN).await;
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing is written before the time"
    );

    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        written(&on),
        [
            ("ACChgSOCLimit", "60".to_string()),
            ("ACChargeType", "2".to_string()),
            ("ACChgStart", "\"01:30:00\"".to_string()),
            ("ACChgEnd", "\"09:30:00\"".to_string()),
            ("ACCharge", "1".to_string()),
        ],
        "the charge settings, ACCharge last, skipping those already right"
    );
    let status = w.wait_status(|s| s.is_charging()).await;
    assert_eq!(status.target_soc().map(|t| t.get()), Some(60));

    let stopped = w
        .run_until(MIN, Duration::from_secs(3 * 3600), |s| !ac_on(s))
        .await;
    assert!(
        (60..=61).contains(&stopped.reported_soc),
        "stopped at the target, SOC {}",
        stopped.reported_soc
    );
    let st = w.wait_status(|s| s.session.is_none()).await;
    assert_eq!(
        w.sim.state().borrow().holds,
        before,
        "the inverter is left as it was found"
    );
    assert!(
        st.schedule.is_none(),
        "a once schedule is gone after its charge"
    );
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched, serde_json::Value::Null);
    let (_, history) = w.get("/api/charge/history").await;
    assert_eq!(history[0]["stop_reason"], "target_reached");
    assert_eq!(history[0]["origin"], "schedule");
    assert_eq!(history[0]["start_soc"], 50);
}

#[tokio::test]
async fn a_charge_is_skipped_when_the_battery_is_already_at_the_target_and_recurring_rearms() {
    let w = World::start(Setup {
        soc: 90.0,
        ..Setup::default()
    })
    .await;
    let (code, _) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 80, "start_time": "01:30"}),
        )
        .await;
    assert_eq!(code, 200);
    w.tick(30 * MIN).await;
    let st = w
        .wait_status(|s| s.next_run() == Some(local("2026-01-16T01:30")))
        .await;
    assert!(st.session.is_none());
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing written when SOC >= target"
    );
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-16T01:30:00");
    assert_eq!(sched["mode"], "recurring");
}

#[tokio::test]
async fn the_safety_cutoff_stops_a_charge_that_never_reaches_its_target() {
    let w = World::start(Setup {
        charging: "safety_cutoff_hours: 0.5".into(),
        max_charge_w: 200.0,
        ..Setup::default()
    })
    .await;
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 95}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["is_charging"], true);
    let stopped = w
        .run_until(MIN, Duration::from_secs(3600), |s| !ac_on(s))
        .await;
    assert!(stopped.reported_soc < 95);
    w.wait_status(|s| s.session.is_none()).await;
    let (_, history) = w.get("/api/charge/history").await;
    assert_eq!(history[0]["stop_reason"], "cutoff");
    assert_eq!(w.hold("ACChgEnd"), Some(HoldValue::Time(0, 0)));
}

#[tokio::test]
async fn metrics_show_the_battery_the_charge_and_the_writes_in_prometheus_format() {
    let w = World::start(Setup::default()).await;
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 52}))
        .await;
    assert_eq!(body["success"], true);
    let text = w
        .http
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
    };
    assert_eq!(value("solar_soc_percent"), 50.0);
    assert_eq!(value("solar_charging"), 1.0);
    assert_eq!(value("solar_mqtt_connected"), 1.0);
    assert!(
        text.contains("solar_dongle_writes_total{outcome=\"confirmed\"}"),
        "{text}"
    );
    assert!(text.contains("solar_dongle_write_seconds_bucket"), "{text}");
    w.run_until(MIN, Duration::from_secs(3600), |s| !ac_on(s))
        .await;
    w.wait_status(|s| s.session.is_none()).await;
    let text = w
        .http
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("solar_sessions_total{reason=\"target_reached\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_engine_answers_a_watchdog_ping_while_it_runs_and_not_after_it_stopped() {
    let mut w = World::start(Setup::default()).await;
    let engine = w.app.as_ref().unwrap().engine.clone();
    assert!(engine.ping(Duration::from_secs(5), &w.clock.clock()).await);
    w.shutdown().await;
    assert!(!engine.ping(Duration::from_secs(5), &w.clock.clock()).await);
}
