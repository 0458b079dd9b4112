//! Cheapest hours, end to end: a schedule "60 % by 06:00 at the lowest price" against a
//! time-of-use table (no network), on the manual clock, with the simulated inverter.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{GUARD, Setup, World, ac_on, local};

const MIN: Duration = Duration::from_secs(60);

/// A 10 kWh battery charged at 6 kW (60 % an hour), and prices cheap from 03:00 to 04:00.
const CHEAP_AT_THREE: &str = "battery: {capacity_kwh: 10, charge_kw: 6}\n\
tariff:\n  source: fixed\n  currency: GBP\n  fixed:\n    \
- {from: '00:00', to: '03:00', price: 0.30}\n    \
- {from: '03:00', to: '04:00', price: 0.05}\n    \
- {from: '04:00', to: '24:00', price: 0.30}\n";

async fn world(sections: &str) -> World {
    World::start(Setup {
        sections: sections.into(),
        ..Setup::default()
    })
    .await
}

/// Waits until the plan has prices (the feed publishes them shortly after the start).
async fn priced_plan(w: &World) -> Value {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (code, plan) = w.get("/api/charge/plan").await;
        assert_eq!(code, 200);
        if plan["price_source"].is_string() {
            return plan;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no priced plan: {plan}"
        );
        tokio::task::yield_now().await;
    }
}

async fn cheapest_schedule(w: &World) -> Value {
    let (code, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 60, "start_time": "01:30", "mode": "once",
                   "strategy": "cheapest", "ready_by": "06:00"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test]
async fn a_cheapest_night_charges_only_in_the_cheap_hour_and_reaches_the_target_by_ready_by() {
    let w = world(CHEAP_AT_THREE).await;
    let body = cheapest_schedule(&w).await;
    assert_eq!(body["strategy"], "cheapest");
    assert_eq!(body["ready_by"], "06:00");

    let plan = priced_plan(&w).await;
    assert_eq!(plan["strategy"], "cheapest");
    assert_eq!(plan["window"]["from"], "2026-01-15T01:30:00");
    assert_eq!(plan["window"]["until"], "2026-01-15T06:00:00");
    assert_eq!(plan["currency"], "GBP");
    assert_eq!(plan["charge_kw_source"], "config");
    assert_eq!(plan["fallback"], Value::Null, "{plan}");
    let planned: Vec<&Value> = plan["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["planned"] == true)
        .collect();
    assert!(!planned.is_empty(), "{plan}");
    assert_eq!(planned[0]["start"], "2026-01-15T03:00:00", "{plan}");
    assert!(planned.iter().all(|s| s["price"] == 0.05), "{plan}");
    assert!(
        plan["planned_cost"].as_f64().unwrap() < plan["fixed_start_cost"].as_f64().unwrap(),
        "{plan}"
    );
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(
        sched["next_run"], "2026-01-15T03:00:00",
        "the next run is the first planned slot"
    );

    // 01:00 .. 03:00: the night has begun at 01:30, but nothing charges in the dear hours.
    for _ in 0..119 {
        w.tick(MIN).await;
        assert!(
            !ac_on(&w.sim.state().borrow()),
            "AC charging on at {} outside the planned slots",
            w.clock.clock().now()
        );
    }
    // At 03:00 the cheap hour begins: AC charging goes on (the writes go out at once, and
    // the clock waits for them), and the charge stops at the target.
    w.tick(MIN).await;
    assert_eq!(w.clock.clock().now(), local("2026-01-15T03:00"));
    w.wait_sim(ac_on).await;
    w.run_until(MIN, 60 * MIN, |s| !ac_on(s)).await;
    let st = w.wait_status(|s| s.session.is_none()).await;
    assert!(w.clock.clock().now() < local("2026-01-15T04:00"));
    assert!(st.soc.unwrap().get() >= 60);
    let (_, history) = w.get("/api/charge/history").await;
    assert_eq!(history[0]["stop_reason"], "target_reached", "{history}");
    assert_eq!(history[0]["currency"], "GBP", "{history}");
    let cost = history[0]["cost"].as_f64().unwrap();
    // About 1 kWh at 0.05.
    assert!((0.02..0.1).contains(&cost), "{history}");
    // The rest of the night stays quiet: the once schedule is spent.
    for _ in 0..30 {
        w.tick(2 * MIN).await;
        assert!(!ac_on(&w.sim.state().borrow()));
    }
    let (_, plan) = w.get("/api/charge/plan").await;
    assert_eq!(plan, Value::Null);
}

#[tokio::test]
async fn without_prices_it_charges_from_the_latest_start_that_still_makes_ready_by_and_says_so() {
    // A source that cannot be reached: no prices ever come.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let w = world(&format!(
        "battery: {{capacity_kwh: 10, charge_kw: 6}}\n\
         tariff: {{source: octopus_agile, product: AGILE-24-10-01, region: C, base_url: 'http://127.0.0.1:{port}'}}\n"
    ))
    .await;
    cheapest_schedule(&w).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    let plan = loop {
        let (_, plan) = w.get("/api/charge/plan").await;
        if plan["fallback"].is_string() && plan["price_source"].is_string() {
            break plan;
        }
        assert!(tokio::time::Instant::now() < deadline, "{plan}");
        tokio::task::yield_now().await;
    };
    let why = plan["fallback"].as_str().unwrap();
    assert!(why.contains("latest start"), "{why}");
    // 10 points at 60 %/h with the margin: 20 minutes before 06:00.
    let planned: Vec<&Value> = plan["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["planned"] == true)
        .collect();
    assert_eq!(planned.len(), 1, "{plan}");
    assert_eq!(planned[0]["start"], "2026-01-15T05:40:00", "{plan}");
    assert_eq!(planned[0]["end"], "2026-01-15T06:00:00", "{plan}");

    for _ in 0..(4 * 30 + 19) {
        w.tick(2 * MIN).await;
        assert!(
            !ac_on(&w.sim.state().borrow()),
            "on at {} before the latest start",
            w.clock.clock().now()
        );
    }
    w.tick(MIN).await;
    assert!(!ac_on(&w.sim.state().borrow()));
    w.tick(MIN).await;
    assert_eq!(w.clock.clock().now(), local("2026-01-15T05:40"));
    w.wait_sim(ac_on).await;
    w.run_until(MIN, 30 * MIN, |s| !ac_on(s)).await;
    w.wait_status(|s| s.session.is_none()).await;
    assert!(w.clock.clock().now() <= local("2026-01-15T06:00"));
    let (_, history) = w.get("/api/charge/history").await;
    assert_eq!(history[0]["stop_reason"], "target_reached", "{history}");
}

#[tokio::test]
async fn a_cheapest_schedule_without_the_battery_capacity_is_refused_with_the_key_to_set() {
    let w = world("").await;
    let refused = |body: Value| async {
        let (code, body) = w.post("/api/charge/schedule", body).await;
        assert_eq!(code, 422, "{body}");
        body["detail"][0].clone()
    };
    let first = refused(
        json!({"target_soc": 60, "start_time": "01:30", "strategy": "cheapest", "ready_by": "06:00"}),
    )
    .await;
    assert_eq!(first["loc"], json!(["body", "strategy"]));
    assert!(
        first["msg"]
            .as_str()
            .unwrap()
            .contains("battery.capacity_kwh"),
        "{first}"
    );
    let missing =
        refused(json!({"target_soc": 60, "start_time": "01:30", "strategy": "cheapest"})).await;
    assert_eq!(missing["type"], "missing");
    assert_eq!(missing["loc"], json!(["body", "ready_by"]));
    let equal = refused(
        json!({"target_soc": 60, "start_time": "01:30", "strategy": "cheapest", "ready_by": "01:30"}),
    )
    .await;
    assert_eq!(equal["loc"], json!(["body", "ready_by"]));
    // A fixed schedule answers as it always did: no strategy, no ready_by.
    let (_, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 60, "start_time": "01:30"}),
        )
        .await;
    assert!(
        body.get("strategy").is_none() && body.get("ready_by").is_none(),
        "{body}"
    );
    let (_, plan) = w.get("/api/charge/plan").await;
    assert_eq!(plan, Value::Null);
}

#[tokio::test]
async fn a_cheapest_night_survives_a_restart_between_its_start_and_its_run() {
    let mut w = world(CHEAP_AT_THREE).await;
    cheapest_schedule(&w).await;
    priced_plan(&w).await;
    for _ in 0..45 {
        w.tick(MIN).await;
    }
    // 01:45: the night has begun, no run yet. The service restarts.
    assert!(w.data_path("state.json").exists());
    let state = std::fs::read_to_string(w.data_path("state.json")).unwrap();
    assert!(state.contains("\"night\""), "{state}");
    w.shutdown().await;
    w.boot().await;
    for _ in 0..74 {
        w.tick(MIN).await;
        assert!(!ac_on(&w.sim.state().borrow()));
    }
    w.tick(MIN).await;
    assert_eq!(w.clock.clock().now(), local("2026-01-15T03:00"));
    w.wait_sim(ac_on).await;
    w.run_until(MIN, 60 * MIN, |s| !ac_on(s)).await;
    w.wait_status(|s| s.session.is_none()).await;
    let (_, history) = w.get("/api/charge/history").await;
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history[0]["stop_reason"], "target_reached");
}
