//! The chart's readings: `GET /api/telemetry` answers, for the hours asked, at most one sample a
//! minute of the reports the dongle sent, with the charge's rising SOC and power in them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Setup, World};

const REPORT_EVERY: Duration = Duration::from_secs(20);

/// The `at` of each sample.
fn times(window: &Value) -> Vec<&str> {
    window["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s["at"].as_str().expect("an at"))
        .collect()
}

#[tokio::test]
async fn telemetry_keeps_one_sample_a_minute_of_the_reports_over_the_hours_asked_for() {
    // The dongle reported at 01:00:00 local (09:00:00Z) on start.
    let w = World::start(Setup::default()).await;
    let (code, started) = w
        .post("/api/charging/enable", json!({"target_soc": 60}))
        .await;
    assert_eq!(
        (code, &started["success"]),
        (200, &json!(true)),
        "{started}"
    );

    // A report every 20 s for 62 minutes: three in every minute but the last.
    for _ in 0..62 * 3 {
        w.tick(REPORT_EVERY).await;
        let (code, _) = w.get("/api/telemetry?hours=1").await;
        assert_eq!(code, 200);
    }

    let (code, day) = w.get("/api/telemetry").await;
    assert_eq!(code, 200, "{day}");
    assert_eq!(day["hours"], 24);
    assert_eq!(day["timezone"], "America/Los_Angeles");
    assert_eq!(day["until"], "2026-01-15T02:02:00-08:00");
    assert_eq!(day["from"], "2026-01-14T02:02:00-08:00");
    let at = times(&day);
    assert_eq!(at.len(), 63, "one sample for each minute: {at:?}");
    assert_eq!(
        at[0], "2026-01-15T01:00:40-08:00",
        "the minute's latest report"
    );
    assert_eq!(at[1], "2026-01-15T01:01:40-08:00");
    assert_eq!(at[62], "2026-01-15T02:02:00-08:00");

    let samples = day["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    let (_, status) = w.get("/api/charging/status").await;
    assert_eq!(
        last["soc"], status["current_soc"],
        "the newest is the status's"
    );
    assert_eq!(last["battery_power"], status["battery_power"]);
    assert!(
        samples
            .iter()
            .any(|s| s["battery_power"].as_f64() > Some(0.0)),
        "the charge's power is in it: {samples:?}"
    );
    let socs: Vec<u64> = samples.iter().filter_map(|s| s["soc"].as_u64()).collect();
    assert_eq!(socs.len(), 63);
    assert_eq!(socs[0], 50);
    assert!(
        socs.iter().max() >= Some(&60),
        "the SOC rose to the target: {socs:?}"
    );

    let (code, hour) = w.get("/api/telemetry?hours=1").await;
    assert_eq!(code, 200, "{hour}");
    assert_eq!(hour["hours"], 1);
    assert_eq!(hour["from"], "2026-01-15T01:02:00-08:00");
    let at = times(&hour);
    assert_eq!(at.len(), 61, "{at:?}");
    assert_eq!(at[0], "2026-01-15T01:02:40-08:00");
}

#[tokio::test]
async fn telemetry_refuses_hours_outside_1_to_24_in_the_validation_shape() {
    let w = World::start(Setup::default()).await;
    for (query, kind) in [
        ("hours=0", "greater_than_equal"),
        ("hours=25", "less_than_equal"),
        ("hours=abc", "int_parsing"),
        ("hours=", "int_parsing"),
    ] {
        let (code, body) = w.get(&format!("/api/telemetry?{query}")).await;
        assert_eq!(code, 422, "{query}: {body}");
        let issues = body["detail"].as_array().expect("a detail list");
        assert_eq!(issues.len(), 1, "{body}");
        assert_eq!(issues[0]["type"], kind, "{query}");
        assert_eq!(issues[0]["loc"], json!(["query", "hours"]));
        assert!(issues[0]["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (code, body) = w.get("/api/telemetry?hours=24").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(times(&body), ["2026-01-15T01:00:00-08:00"]);
}

#[tokio::test]
async fn telemetry_needs_the_api_key_when_one_is_set() {
    let w = World::start(Setup {
        server: "api_key: k".into(),
        ..Default::default()
    })
    .await;
    let (code, body) = w.get("/api/telemetry").await;
    assert_eq!(code, 401, "{body}");
    let r = w
        .http
        .get(format!("{}/api/telemetry", w.base))
        .header("X-API-Key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
