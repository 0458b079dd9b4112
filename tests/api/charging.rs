//! Charges as a user sees them: scheduled, skipped, stopped at the target or the cutoff.

use std::time::Duration;

use serde_json::json;
use solar_charging_backend::metrics::Metrics;
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

/// A sample's value in a `/metrics` text (`name` with its labels, if any); 0 when absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn scrape(w: &World) -> String {
    let r = w
        .http
        .get(format!("{}/metrics", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn each_service_counts_its_own_sessions_and_writes_and_none_of_another_in_the_process() {
    let a = World::start(Setup::default()).await;
    let b = World::start(Setup::default()).await;
    let a_metrics = a.app.as_ref().unwrap().metrics.clone();
    let b_metrics = b.app.as_ref().unwrap().metrics.clone();
    // Every write request has one outcome; the dongle may receive one more than once (a
    // stop is sent again until it is confirmed).
    let requests = |m: &Metrics| {
        ["confirmed", "rejected", "unknown", "not_sent"]
            .map(|o| m.writes(o))
            .iter()
            .sum::<u64>()
    };

    // A charges to its target while B stays idle.
    let (_, body) = a
        .post("/api/charging/enable", json!({"target_soc": 52}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    a.run_until(MIN, Duration::from_secs(3600), |s| !ac_on(s))
        .await;
    a.wait_status(|s| s.session.is_none()).await;
    let a_requests = requests(&a_metrics);
    let a_received = a.sim.state().borrow().writes.len() as u64;
    assert_eq!(a_metrics.sessions_ended("target_reached"), 1);
    // The settings, the window, ACCharge on and off, and the settings put back (a write
    // the moving clock overtakes ends `unknown` and is read back or sent again).
    assert!(a_requests >= 10, "{a_requests}");
    assert!(a_metrics.writes("confirmed") >= 1);
    assert!(a_requests <= a_received, "{a_requests} > {a_received}");
    assert_eq!(b_metrics.sessions_ended("target_reached"), 0);
    assert_eq!(requests(&b_metrics), 0);

    // B's charge is cancelled: counted by B alone.
    let (_, body) = b
        .post("/api/charging/enable", json!({"target_soc": 90}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    let (_, body) = b.post("/api/charging/disable", json!({})).await;
    assert_eq!(body["success"], true, "{body}");
    b.wait_status(|s| s.session.is_none()).await;
    let b_requests = requests(&b_metrics);
    assert_eq!(b_metrics.sessions_ended("cancelled"), 1);
    assert!(b_requests >= 10, "{b_requests}");
    assert!(b_requests <= b.sim.state().borrow().writes.len() as u64);
    assert_eq!(a_metrics.sessions_ended("cancelled"), 0);
    assert_eq!(a_metrics.sessions_ended("target_reached"), 1);
    assert_eq!(requests(&a_metrics), a_requests);

    // Each service's /metrics shows its own counts only.
    let a_text = scrape(&a).await;
    let b_text = scrape(&b).await;
    let sessions =
        |t: &str, reason: &str| sample(t, &format!("solar_sessions_total{{reason=\"{reason}\"}}"));
    assert_eq!(sessions(&a_text, "target_reached"), 1.0, "{a_text}");
    assert_eq!(sessions(&a_text, "cancelled"), 0.0, "{a_text}");
    assert_eq!(sessions(&b_text, "cancelled"), 1.0, "{b_text}");
    assert_eq!(sessions(&b_text, "target_reached"), 0.0, "{b_text}");
    for (text, m, n) in [
        (&a_text, &a_metrics, a_requests),
        (&b_text, &b_metrics, b_requests),
    ] {
        assert_eq!(
            sample(text, "solar_dongle_writes_total{outcome=\"confirmed\"}"),
            m.writes("confirmed") as f64,
            "{text}"
        );
        assert_eq!(
            sample(text, "solar_dongle_write_seconds_count"),
            n as f64,
            "{text}"
        );
    }
}

#[tokio::test]
async fn the_engine_answers_a_watchdog_ping_while_it_runs_and_not_after_it_stopped() {
    let mut w = World::start(Setup::default()).await;
    let engine = w.app.as_ref().unwrap().engine.clone();
    assert!(engine.ping(Duration::from_secs(5), &w.clock.clock()).await);
    w.shutdown().await;
    assert!(!engine.ping(Duration::from_secs(5), &w.clock.clock()).await);
}
