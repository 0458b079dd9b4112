//! The `demo` command's wiring: an accelerated charge starts and stops at its target through
//! the HTTP API, in real time; and, on a manual clock, a legacy dongle's charge puts the
//! settings back, the stall stop is as fast as the physics, and `--prices sample` charges in
//! the cheap slots of its compressed day.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use solar_charging_backend::cli::{DemoArgs, FaultArg, FirmwareArg, PricesArg};
use solar_charging_backend::clock::ManualClock;
use solar_charging_backend::domain::session::StopReason;
use solar_charging_backend::engine::Status;
use solar_charging_backend::run::{Demo, start_demo, start_demo_with_clock};

fn args(firmware: FirmwareArg, fault: FaultArg, speed: f64) -> DemoArgs {
    DemoArgs {
        port: 0,
        host: "127.0.0.1".into(),
        speed,
        soc: 50.0,
        firmware,
        data_dir: None,
        fault,
        ntfy: None,
        webhook: Vec::new(),
        prices: None,
    }
}

/// The demo on a manual clock, once its service has heard the dongle.
async fn manual_demo(args: DemoArgs) -> (Demo, ManualClock) {
    let clock = ManualClock::new(Timestamp::now());
    let demo = start_demo_with_clock(&args, clock.clock())
        .await
        .expect("the demo starts");
    // Nothing moves the clock yet: the SOC can only come from the report the dongle sends
    // when it connects, which the service hears because it listens first.
    wait_status(&demo, |s| s.soc.is_some()).await;
    (demo, clock)
}

async fn wait_status(demo: &Demo, pred: impl Fn(&Status) -> bool) -> Status {
    crate::harness::wait_for_status(&demo.app.engine, pred).await
}

/// Lets `d` pass and waits until the service has seen the dongle's report of that instant.
async fn tick(demo: &Demo, clock: &ManualClock, d: Duration) {
    clock.advance(d);
    demo.sim.publish_telemetry_now();
    let now = clock.clock().now();
    wait_status(demo, |s| s.last_telemetry == Some(now)).await;
}

/// Ticks until the charge under way has ended (its restores included); returns the status
/// and the clock time that took.
async fn run_to_the_end(
    demo: &Demo,
    clock: &ManualClock,
    step: Duration,
    limit: Duration,
) -> (Status, Duration) {
    let mut elapsed = Duration::ZERO;
    loop {
        let st = demo.app.engine.status();
        if st.session.is_none() && st.last_stop.is_some() {
            return (st, elapsed);
        }
        assert!(elapsed < limit, "no end within {limit:?}; status: {st:#?}");
        tick(demo, clock, step).await;
        elapsed += step;
    }
}

/// Charges now, moving the clock while the answer is pending: the demo spaces its writes a
/// second apart, and the answer comes once AC charging is on.
async fn charge_now(demo: &Demo, clock: &ManualClock, target: u8) {
    let request = crate::harness::http_client()
        .post(format!("http://{}/api/charging/enable", demo.app.addr))
        .json(&json!({"target_soc": target}))
        .send();
    let answer = tokio::spawn(async move { request.await?.json::<serde_json::Value>().await });
    while !answer.is_finished() {
        tick(demo, clock, Duration::from_secs(1)).await;
    }
    let r = answer.await.unwrap().unwrap();
    assert_eq!(r["success"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_demo_charge_leaves_the_registers_as_it_found_them() {
    let (demo, clock) = manual_demo(args(FirmwareArg::Legacy, FaultArg::None, 60.0)).await;
    let found = demo.sim.state().borrow().holds.clone();
    charge_now(&demo, &clock, 55).await;
    let (ended, _) = run_to_the_end(
        &demo,
        &clock,
        Duration::from_secs(1),
        Duration::from_secs(600),
    )
    .await;
    assert_eq!(
        ended.last_stop.as_ref().map(|l| l.0),
        Some(StopReason::TargetReached),
        "{:?}",
        ended.last_stop
    );
    let sim = demo.sim.state().borrow().clone();
    assert!(
        sim.writes
            .iter()
            .any(|w| w.setting == "ACChgSOCLimit" && w.value == json!(55)),
        "the charge changed the settings: {:?}",
        sim.writes
    );
    assert_eq!(
        sim.holds, found,
        "every register is back as the charge found it"
    );
    demo.app.shutdown().await;
    demo.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_frozen_soc_the_demo_stops_as_stalled_within_its_sped_up_minute() {
    let (demo, clock) = manual_demo(args(FirmwareArg::Modern, FaultArg::SocFrozen, 60.0)).await;
    let c = &demo.config.charging;
    assert_eq!(c.stall_minutes, 1, "30 min at 60x");
    assert_eq!(c.taper_minutes, 1, "10 min at 60x, at least one");
    assert_eq!(c.safety_cutoff, Duration::from_secs(8 * 60), "8 h at 60x");
    assert_eq!(
        c.stale_after,
        Duration::from_secs(90),
        "the dongle reports in real time"
    );
    charge_now(&demo, &clock, 80).await;
    // Until AC charging goes off: the stop itself, not the restore writes after it (spaced a
    // second apart, each answered in real time while this test moves the clock in steps).
    let step = Duration::from_secs(5);
    let mut took = Duration::ZERO;
    while demo.app.engine.status().is_charging() {
        assert!(took < Duration::from_secs(31 * 60), "never stopped");
        tick(&demo, &clock, step).await;
        took += step;
    }
    let (ended, _) = run_to_the_end(&demo, &clock, step, Duration::from_secs(31 * 60)).await;
    assert_eq!(
        ended.last_stop.as_ref().map(|l| l.0),
        Some(StopReason::Stalled),
        "{:?}",
        ended.last_stop
    );
    assert!(
        took <= Duration::from_secs(90),
        "stopped after {took:?} of demo time"
    );
    demo.app.shutdown().await;
    demo.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_charges_to_the_target_and_stops_through_the_api() {
    let demo = start_demo(&args(FirmwareArg::Modern, FaultArg::None, 900.0))
        .await
        .expect("the demo starts");
    let base = format!("http://{}", demo.app.addr);
    let mut status = demo.app.engine.watch();
    // The simulated dongle reports on connect; wait for its SOC.
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.soc.is_some()),
    )
    .await
    .expect("the demo's dongle reports")
    .unwrap();

    let r: serde_json::Value = crate::harness::http_client()
        .post(format!("{base}/api/charging/enable"))
        .json(&json!({"target_soc": 55}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["is_charging"], true);

    // Real writes are spaced a second apart, and the physics runs 900x: about ten seconds.
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.session.is_none() && s.last_stop.is_some()),
    )
    .await
    .expect("the charge ends")
    .unwrap()
    .clone();
    assert_eq!(
        ended.last_stop.as_ref().map(|l| l.0),
        Some(StopReason::TargetReached)
    );
    let soc = ended.soc.unwrap().get();
    assert!((55..=57).contains(&soc), "stopped at {soc}");
    let st: serde_json::Value = reqwest::get(format!("{base}/api/charging/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["is_charging"], false);
    demo.app.shutdown().await;
    demo.sim.shutdown().await;
}

/// A naive local time of the API, in the demo's zone.
fn demo_instant(demo: &Demo, naive: &serde_json::Value) -> Timestamp {
    naive
        .as_str()
        .and_then(|s| s.parse::<jiff::civil::DateTime>().ok())
        .and_then(|dt| dt.to_zoned_datetime(demo.config.timezone.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or_else(|| panic!("not a local time: {naive}"))
}

async fn get_json(demo: &Demo, path: &str) -> serde_json::Value {
    crate::harness::http_client()
        .get(format!("http://{}{path}", demo.app.addr))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sample_prices_the_demo_charges_in_its_cheap_slots_and_is_ready_in_time() {
    let mut a = args(FirmwareArg::Modern, FaultArg::None, 60.0);
    a.prices = Some(PricesArg::Sample);
    let (demo, clock) = manual_demo(a).await;
    let day = demo.cheapest.clone().expect("the sample day");
    let start = clock.clock().now();
    assert_eq!(day.slots.len(), 48);
    assert_eq!(day.slot, Duration::from_secs(30), "30 min at 60x");
    assert!(day.slots[0].start <= start && start < day.slots[0].start + Duration::from_secs(60));
    assert_eq!(
        day.ready_by, day.slots[47].end,
        "24 min from a whole minute"
    );
    assert_eq!(day.charge_kw, 5.0 * 60.0);

    // The demo set the schedule itself; the plan is priced once the SOC is known.
    let schedule = get_json(&demo, "/api/charge/schedule").await;
    assert_eq!(schedule["strategy"], "cheapest", "{schedule}");
    assert_eq!(schedule["mode"], "once");
    assert_eq!(schedule["target_soc"], 80);
    let plan = get_json(&demo, "/api/charge/plan").await;
    assert_eq!(plan["fallback"], serde_json::Value::Null, "{plan}");
    assert_eq!(plan["price_source"], "sample");
    assert_eq!(plan["currency"], "GBP");
    assert_eq!(plan["price_unit"], "GBP/kWh");
    assert_eq!(plan["soc_at_planning"], 50.0, "{plan}");
    assert_eq!(demo_instant(&demo, &plan["window"]["from"]), day.start);
    assert_eq!(demo_instant(&demo, &plan["window"]["until"]), day.ready_by);
    let mean = day.slots.iter().map(|s| s.price).sum::<f64>() / day.slots.len() as f64;
    let planned: Vec<(Timestamp, Timestamp, f64)> = plan["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["planned"] == true)
        .map(|s| {
            (
                demo_instant(&demo, &s["start"]),
                demo_instant(&demo, &s["end"]),
                s["price"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(!planned.is_empty(), "{plan}");
    assert!(
        planned.iter().all(|&(_, _, price)| price < mean),
        "every planned slot is cheaper than the day's mean {mean}: {plan}"
    );
    let saves = plan["fixed_start_cost"].as_f64().unwrap() - plan["planned_cost"].as_f64().unwrap();
    assert!(saves > 0.1, "{plan}");

    // Through the day: AC charging is on only inside the planned slots, and the charge ends
    // at the target before ready_by.
    let step = Duration::from_secs(2);
    let mut charged = false;
    loop {
        let now = clock.clock().now();
        if crate::harness::ac_on(&demo.sim.state().borrow()) {
            charged = true;
            assert!(
                planned.iter().any(|&(s, e, _)| s <= now && now <= e),
                "AC charging on at {now}, outside the planned slots {planned:?}"
            );
        }
        let st = demo.app.engine.status();
        if charged && st.session.is_none() && st.last_stop.is_some() {
            assert_eq!(
                st.last_stop.as_ref().map(|l| l.0),
                Some(StopReason::TargetReached),
                "{:?}",
                st.last_stop
            );
            assert!(st.soc.unwrap().get() >= 80, "{st:?}");
            break;
        }
        assert!(now < day.ready_by, "not done by ready_by: {st:#?}");
        tick(&demo, &clock, step).await;
    }
    let history = get_json(&demo, "/api/charge/history").await;
    assert_eq!(history[0]["stop_reason"], "target_reached", "{history}");
    assert_eq!(history[0]["currency"], "GBP", "{history}");
    assert!(history[0]["cost"].as_f64().unwrap() > 0.0, "{history}");
    assert!(demo_instant(&demo, &history[0]["ended_at"]) < day.ready_by);
    demo.app.shutdown().await;
    demo.sim.shutdown().await;
}
