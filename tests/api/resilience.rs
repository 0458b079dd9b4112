//! Faults around the service: a real mosquitto broker that dies and comes back, no broker at
//! start, wall-clock jumps, DST nights, a damaged state file or data directory, garbage and
//! floods on the dongle's topics.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use solar_charging_backend::domain::session::Phase;
use solar_charging_backend::engine::Status;
use solar_charging_backend::sim::dongle::{Firmware, HoldValue, SimState};
use tokio::sync::watch;
use tracing_subscriber::filter::LevelFilter;

use crate::harness::{BrokerKind, GUARD, LogCapture, PREFIX, Setup, World, ac_on, local, written};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Held by the tests that push megabytes through the process, so that the one measuring the
/// process's memory does not count the other's.
static MEMORY_HUNGRY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Helpers

/// How many times the service switched AC charging on: one per charge started.
fn charges_started(s: &SimState) -> usize {
    s.writes
        .iter()
        .filter(|w| w.setting == "ACCharge" && w.value == json!(1))
        .count()
}

/// The value last written to `setting`, as JSON text.
fn last_written(s: &SimState, setting: &str) -> Option<String> {
    s.writes
        .iter()
        .rev()
        .find(|w| w.setting == setting)
        .map(|w| w.value.to_string())
}

fn charging(s: &Status) -> bool {
    s.session
        .as_ref()
        .is_some_and(|x| x.phase == Phase::Charging)
}

/// Ticks a minute at a time (less for the last step) until the wall clock reads `until`.
async fn tick_to(w: &World, until: Timestamp) {
    loop {
        let now = w.clock.clock().now();
        if now >= until {
            return;
        }
        let left = Duration::try_from(until.duration_since(now)).unwrap();
        w.tick(left.min(MIN)).await;
    }
}

/// Lets `d` pass a minute at a time, the dongle reporting each minute. A running charge needs
/// this: a single long tick is a dongle silent for that long (stale after 90 s).
async fn tick_for(w: &World, d: Duration) {
    let until = w.clock.clock().now() + SignedDuration::try_from(d).unwrap();
    tick_to(w, until).await;
}

/// Posts a schedule and checks it was accepted.
async fn schedule(w: &World, body: Value) -> Value {
    let (code, resp) = w.post("/api/charge/schedule", body).await;
    assert_eq!(code, 200, "{resp}");
    resp
}

/// Waits until the charge is under way, lets time pass a minute at a time while it charges,
/// then waits (without moving the clock, so that no write in flight times out) until AC
/// charging is off and the session has ended. Returns the SOC the dongle reported at the stop.
async fn charge_to_the_end(w: &World, limit: Duration) -> u8 {
    w.wait_sim(ac_on).await;
    w.wait_status(|s| {
        s.session
            .as_ref()
            .is_none_or(|x| !matches!(x.phase, Phase::Preparing | Phase::Starting))
    })
    .await;
    let mut elapsed = Duration::ZERO;
    while charging(&w.status()) {
        assert!(
            elapsed < limit,
            "still charging after {limit:?}; sim: {:#?}",
            *w.sim.state().borrow()
        );
        w.tick(MIN).await;
        elapsed += MIN;
    }
    let stopped = w.wait_sim(|s| !ac_on(s)).await;
    w.wait_status(|s| s.session.is_none()).await;
    stopped.reported_soc
}

async fn history(w: &World) -> Vec<Value> {
    let (code, h) = w.get("/api/charge/history").await;
    assert_eq!(code, 200);
    h.as_array().cloned().unwrap_or_default()
}

/// A plain MQTT client publishing whatever the test wants on the dongle's topics.
struct RawClient {
    client: AsyncClient,
    acks: watch::Receiver<usize>,
}

impl RawClient {
    async fn connect(port: u16, id: &str) -> RawClient {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
        opts.set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (acks_tx, acks) = watch::channel(0usize);
        let (up_tx, up) = tokio::sync::oneshot::channel();
        let mut up_tx = Some(up_tx);
        tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        if let Some(tx) = up_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Event::Incoming(Packet::PubAck(_)) => acks_tx.send_modify(|n| *n += 1),
                    _ => {}
                }
            }
        });
        tokio::time::timeout(GUARD, up)
            .await
            .expect("the raw client connects")
            .unwrap();
        RawClient { client, acks }
    }

    async fn publish(&self, suffix: &str, qos: QoS, payload: Vec<u8>) {
        self.client
            .publish(format!("{PREFIX}/{suffix}"), qos, false, payload)
            .await
            .unwrap();
    }

    /// Waits until the broker has acknowledged `n` QoS 1 publishes.
    async fn wait_acked(&self, n: usize) {
        let mut rx = self.acks.clone();
        tokio::time::timeout(GUARD, rx.wait_for(|a| *a >= n))
            .await
            .expect("the broker acknowledges every publish")
            .unwrap();
    }
}

/// The process's resident memory in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

// ---------------------------------------------------------------------------------------------
// 1. mosquitto

#[tokio::test]
async fn a_scheduled_charge_against_mosquitto_starts_at_the_minute_stops_at_the_target_and_restores_the_inverter()
 {
    let w = World::start(Setup {
        broker: BrokerKind::Mosquitto,
        ..Setup::default()
    })
    .await;
    let before = w.sim.state().borrow().holds.clone();
    let body = schedule(
        &w,
        json!({"target_soc": 60, "start_time": "01:30", "mode": "once"}),
    )
    .await;
    assert_eq!(body["next_run"], "2026-01-15T01:30:00");

    w.tick(29 * MIN).await;
    assert!(w.sim.state().borrow().writes.is_empty());
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
        ]
    );
    let soc = charge_to_the_end(&w, 3 * HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(
        w.sim.state().borrow().holds,
        before,
        "the inverter is restored"
    );
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(
        sched,
        Value::Null,
        "a once schedule is gone after its charge"
    );
    let h = history(&w).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["stop_reason"], "target_reached");
    assert_eq!(h[0]["origin"], "schedule");
}

#[tokio::test]
async fn when_mosquitto_is_killed_and_restarted_mid_charge_the_service_reconnects_resubscribes_and_still_stops_at_the_target()
 {
    let mut w = World::start(Setup {
        broker: BrokerKind::Mosquitto,
        ..Setup::default()
    })
    .await;
    let before = w.sim.state().borrow().holds.clone();
    schedule(
        &w,
        json!({"target_soc": 60, "start_time": "01:30", "mode": "once"}),
    )
    .await;
    tick_to(&w, local("2026-01-15T01:30")).await;
    w.wait_status(charging).await;
    tick_for(&w, 2 * MIN).await;
    let soc_before_outage = w.sim.state().borrow().reported_soc;
    assert!(soc_before_outage < 60);

    w.mosquitto.as_mut().unwrap().kill();
    w.wait_status(|s| !s.mqtt_connected).await;
    let (_, health) = w.get("/api/health").await;
    assert_eq!(health["mqtt_connected"], false, "{health}");
    let (_, status) = w.get("/api/charging/status").await;
    assert_eq!(
        status["is_charging"], true,
        "an outage alone does not end the charge"
    );

    w.mosquitto.as_mut().unwrap().restart().await;
    // Long enough for any reconnect backoff; short of the 90 s after which the data is stale.
    w.clock.advance(Duration::from_secs(30));
    w.wait_status(|s| s.mqtt_connected).await;
    w.wait_sim(|s| s.connected).await;
    // Telemetry after the restart only reaches the service if it subscribed again. (The
    // dongle reports every 5 s; a first step as long as a minute would add up with the
    // outage to the 90 s after which the data counts as stale.)
    w.tick(Duration::from_secs(5)).await;

    let soc = charge_to_the_end(&w, 2 * HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(
        w.sim.state().borrow().holds,
        before,
        "the inverter is restored"
    );
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
    let h = history(&w).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["stop_reason"], "target_reached");
}

#[tokio::test]
async fn a_broker_outage_longer_than_the_stale_limit_stops_the_charge_as_soon_as_the_broker_is_back()
 {
    let mut w = World::start(Setup {
        broker: BrokerKind::Mosquitto,
        ..Setup::default()
    })
    .await;
    let before = w.sim.state().borrow().holds.clone();
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 90}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    w.wait_status(charging).await;
    tick_for(&w, 2 * MIN).await;

    w.mosquitto.as_mut().unwrap().kill();
    w.wait_status(|s| !s.mqtt_connected).await;
    // Two minutes without a word from the dongle: past the 90 s after which SOC is stale.
    for _ in 0..4 {
        w.clock.advance(Duration::from_secs(30));
    }
    let st = w
        .wait_status(|s| {
            s.session
                .as_ref()
                .is_some_and(|x| x.phase == Phase::Stopping)
        })
        .await;
    assert!(
        st.is_charging(),
        "AC charging is still on as far as anyone knows: the stop could not be sent"
    );
    assert!(ac_on(&w.sim.state().borrow()));

    w.mosquitto.as_mut().unwrap().restart().await;
    w.clock.advance(Duration::from_secs(30));
    w.wait_status(|s| s.mqtt_connected).await;
    w.wait_sim(|s| s.connected).await;
    // The stop is retried every 30 s until it goes out.
    w.clock.advance(Duration::from_secs(30));
    w.wait_sim(|s| !ac_on(s)).await;
    w.wait_status(|s| s.session.is_none()).await;
    assert_eq!(
        w.sim.state().borrow().holds,
        before,
        "the inverter is restored"
    );
    let h = history(&w).await;
    assert_eq!(h[0]["stop_reason"], "stale_data");
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. No broker at start

async fn starts_without_a_broker_then_connects_when(kind: BrokerKind) {
    let log = LogCapture::install();
    let mut w = World::start(Setup {
        broker: BrokerKind::Down,
        ..Setup::default()
    })
    .await;
    // Logged just before the service settles into its reconnect backoff.
    log.wait_for("MQTT broker unreachable", 1).await;
    let (code, health) = w.get("/api/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt_connected"], false);
    let (code, status) = w.get("/api/charging/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["mqtt_connected"], false);
    assert_eq!(status["current_soc"], Value::Null);

    w.bring_up_broker(kind).await;
    w.clock.advance(Duration::from_secs(30));
    w.wait_status(|s| s.mqtt_connected).await;
    w.wait_sim(|s| s.connected).await;
    w.tick(MIN).await;
    let (_, health) = w.get("/api/health").await;
    assert_eq!(health["mqtt_connected"], true);

    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 60}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
    let soc = charge_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(history(&w).await[0]["stop_reason"], "target_reached");
}

#[tokio::test]
async fn with_no_broker_at_start_the_service_serves_http_then_connects_when_mosquitto_appears_and_charges()
 {
    starts_without_a_broker_then_connects_when(BrokerKind::Mosquitto).await;
}

#[tokio::test]
async fn with_no_broker_at_start_the_service_serves_http_then_connects_when_the_embedded_broker_appears_and_charges()
 {
    starts_without_a_broker_then_connects_when(BrokerKind::Embedded).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Wall-clock jumps (the engine re-reads the wall clock every soc_check_interval of
// monotonic time; `tick` advances both clocks, `jump` only the wall clock)

#[tokio::test]
async fn a_wall_clock_set_back_an_hour_before_the_start_fires_the_charge_once_at_the_wall_time() {
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    w.tick(10 * MIN).await;
    w.clock.jump(SignedDuration::from_hours(-1));
    w.tick(MIN).await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-15T01:30:00");

    tick_to(&w, local("2026-01-15T01:29")).await;
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing is written before 01:30 on the wall clock"
    );
    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        last_written(&on, "ACChgStart").as_deref(),
        Some("\"01:30:00\"")
    );
    charge_to_the_end(&w, HOUR).await;
    tick_to(&w, local("2026-01-15T02:30")).await;
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
    assert_eq!(history(&w).await.len(), 1);
}

#[tokio::test]
async fn a_wall_clock_jumping_forward_past_the_start_skips_that_charge_and_keeps_the_next_one() {
    let log = LogCapture::install();
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    w.tick(20 * MIN).await;
    // 01:20 -> 02:20: the 01:30 start is 50 minutes in the past, beyond the 10-minute grace.
    w.clock.jump(SignedDuration::from_hours(1));
    w.tick(MIN).await;
    log.wait_for("was missed by more than 10 minutes", 1).await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-16T01:30:00");
    assert!(w.sim.state().borrow().writes.is_empty(), "no late start");
    // The owner can see why that night did not charge.
    let missed = history(&w).await;
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(missed[0]["stop_reason"], "missed");
    assert_eq!(missed[0]["origin"], "schedule");
    let detail = missed[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("missed by 51 minutes"), "{detail}");

    w.tick(22 * HOUR).await;
    tick_to(&w, local("2026-01-16T01:29")).await;
    assert!(w.sim.state().borrow().writes.is_empty());
    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        last_written(&on, "ACChgStart").as_deref(),
        Some("\"01:30:00\"")
    );
    charge_to_the_end(&w, HOUR).await;
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
    let h = history(&w).await;
    assert_eq!(h.len(), 2, "{h:?}");
}

#[tokio::test]
async fn a_wall_clock_set_back_an_hour_mid_charge_neither_fires_the_schedule_again_nor_loses_the_stop()
 {
    let w = World::start(Setup {
        // No stall stop while the inverter waits for its window to open again.
        charging: "stall_minutes: 240".into(),
        ..Setup::default()
    })
    .await;
    schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    tick_to(&w, local("2026-01-15T01:30")).await;
    w.wait_status(charging).await;
    tick_for(&w, 3 * MIN).await;
    // 01:33 -> 00:33: the wall clock passes 01:30 again while the charge runs. The simulated
    // inverter shares the clock, so it stops charging until its window (from 01:30) opens.
    w.clock.jump(SignedDuration::from_hours(-1));
    let soc = charge_to_the_end(&w, 2 * HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert!(w.clock.clock().now() > local("2026-01-15T01:30"));
    tick_to(&w, local("2026-01-15T02:00")).await;

    assert_eq!(charges_started(&w.sim.state().borrow()), 1, "fired once");
    let h = history(&w).await;
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["stop_reason"], "target_reached");
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-16T01:30:00");
}

#[tokio::test]
async fn a_wall_clock_set_back_an_hour_after_a_charge_does_not_fire_the_same_start_again() {
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    tick_to(&w, local("2026-01-15T01:30")).await;
    charge_to_the_end(&w, HOUR).await;
    tick_to(&w, local("2026-01-15T01:40")).await;
    w.clock.jump(SignedDuration::from_hours(-1));
    // Lower the battery so that a second start would not be skipped as already at target.
    w.sim.set_soc(40.0);
    tick_to(&w, local("2026-01-15T02:00")).await;
    assert_eq!(charges_started(&w.sim.state().borrow()), 1, "fired once");
    assert_eq!(history(&w).await.len(), 1);
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-16T01:30:00");
}

#[tokio::test]
async fn a_wall_clock_jumping_forward_an_hour_mid_charge_still_stops_at_the_target() {
    let w = World::start(Setup { ..Setup::default() }).await;
    schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    tick_to(&w, local("2026-01-15T01:30")).await;
    w.wait_status(charging).await;
    tick_for(&w, 3 * MIN).await;
    w.clock.jump(SignedDuration::from_hours(1));
    let soc = charge_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
    assert_eq!(history(&w).await[0]["stop_reason"], "target_reached");
}

#[tokio::test]
async fn the_safety_cutoff_still_ends_a_charge_on_time_when_the_wall_clock_is_set_back() {
    let w = World::start(Setup {
        max_charge_w: 200.0,
        charging: "safety_cutoff_hours: 1, stall_minutes: 240".into(),
        ..Setup::default()
    })
    .await;
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 95}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    let started = w.clock.clock().mono();
    tick_for(&w, 10 * MIN).await;
    // The wall-clock deadline (02:00) moves an hour away; an hour of charging must still end it.
    w.clock.jump(SignedDuration::from_hours(-1));
    charge_to_the_end(&w, 2 * HOUR).await;
    let charged_for = w.clock.clock().mono().saturating_since(started);
    assert!(
        charged_for <= HOUR,
        "stopped after {charged_for:?} of charging"
    );
    assert_eq!(history(&w).await[0]["stop_reason"], "cutoff");
}

// ---------------------------------------------------------------------------------------------
// 4. DST nights in America/Los_Angeles

#[tokio::test]
async fn on_the_spring_forward_night_a_0230_schedule_fires_once_at_0330_daylight_time() {
    let w = World::start(Setup {
        // 01:00 PST; at 02:00 the clocks jump to 03:00 PDT.
        wall: "2026-03-08T09:00:00Z".parse().unwrap(),
        ..Setup::default()
    })
    .await;
    let body = schedule(&w, json!({"target_soc": 60, "start_time": "02:30"})).await;
    assert_eq!(body["next_run"], "2026-03-08T03:30:00");

    tick_to(&w, "2026-03-08T10:29:00Z".parse().unwrap()).await;
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing is written through the missing hour"
    );
    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        last_written(&on, "ACChgStart").as_deref(),
        Some("\"03:30:00\"")
    );
    let soc = charge_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&soc));
    tick_to(&w, "2026-03-08T12:00:00Z".parse().unwrap()).await;
    assert_eq!(charges_started(&w.sim.state().borrow()), 1);
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-03-09T02:30:00");
}

#[tokio::test]
async fn on_the_fall_back_night_a_0130_schedule_fires_once_at_the_first_0130() {
    let w = World::start(Setup {
        // 00:00 PDT; 01:00-02:00 happens twice, first PDT (08:00Z) then PST (09:00Z).
        wall: "2026-11-01T07:00:00Z".parse().unwrap(),
        ..Setup::default()
    })
    .await;
    let body = schedule(&w, json!({"target_soc": 60, "start_time": "01:30"})).await;
    assert_eq!(body["next_run"], "2026-11-01T01:30:00");

    tick_to(&w, "2026-11-01T08:29:00Z".parse().unwrap()).await;
    assert!(w.sim.state().borrow().writes.is_empty());
    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        last_written(&on, "ACChgStart").as_deref(),
        Some("\"01:30:00\"")
    );
    charge_to_the_end(&w, HOUR).await;
    // Through the second 01:30 (PST) with a battery low enough to charge again.
    w.sim.set_soc(40.0);
    tick_to(&w, "2026-11-01T10:00:00Z".parse().unwrap()).await;
    assert_eq!(charges_started(&w.sim.state().borrow()), 1, "fired once");
    assert_eq!(history(&w).await.len(), 1);
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-11-02T01:30:00");
}

// ---------------------------------------------------------------------------------------------
// 5. A state file that cannot be read

/// Boots on a data directory whose `state.json` holds `content`, then checks the service
/// starts, keeps the file aside, answers, and saves a new schedule.
async fn boots_over_a_bad_state_file(mut w: World, content: Vec<u8>) {
    w.kill();
    std::fs::write(w.data_path("state.json"), &content).unwrap();
    w.boot().await;

    let aside: Vec<_> = std::fs::read_dir(w.data.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside: {aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), content, "unchanged");

    let (code, health) = w.get("/api/health").await;
    assert_eq!((code, &health["mqtt_connected"]), (200, &json!(true)));
    let (code, sched) = w.get("/api/charge/schedule").await;
    assert_eq!((code, sched), (200, Value::Null));
    schedule(&w, json!({"target_soc": 75, "start_time": "04:15"})).await;

    w.kill();
    w.boot().await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(
        sched["target_soc"], 75,
        "the new schedule was saved: {sched}"
    );
    assert_eq!(sched["start_time"], "04:15");

    let (code, _) = w.delete("/api/charge/schedule").await;
    assert_eq!(code, 200);
    w.shutdown().await;
    w.boot().await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched, Value::Null, "the cancellation was saved too");
}

#[tokio::test]
async fn a_corrupt_state_file_is_kept_aside_and_the_service_starts_and_saves_new_schedules() {
    let w = World::start(Setup::default()).await;
    boots_over_a_bad_state_file(w, b"\x00\xffnot json at all {{{".to_vec()).await;
}

#[tokio::test]
async fn a_truncated_state_file_is_kept_aside_and_the_service_starts_and_saves_new_schedules() {
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 90, "start_time": "02:30"})).await;
    let full = std::fs::read(w.data_path("state.json")).unwrap();
    let half = full[..full.len() / 2].to_vec();
    boots_over_a_bad_state_file(w, half).await;
}

#[tokio::test]
async fn an_empty_state_file_is_kept_aside_and_the_service_starts_and_saves_new_schedules() {
    let w = World::start(Setup::default()).await;
    boots_over_a_bad_state_file(w, Vec::new()).await;
}

#[tokio::test]
async fn a_state_file_from_a_newer_version_is_kept_aside_and_the_service_starts_and_saves_new_schedules()
 {
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 90, "start_time": "02:30"})).await;
    let mut state: Value =
        serde_json::from_slice(&std::fs::read(w.data_path("state.json")).unwrap()).unwrap();
    state["version"] = json!(99);
    state["something_new"] = json!({"from": "the future"});
    boots_over_a_bad_state_file(w, serde_json::to_vec_pretty(&state).unwrap()).await;
}

// ---------------------------------------------------------------------------------------------
// 6. The data directory becomes unusable while running (as root, permissions would not stop
// the writes, so the paths themselves are broken)

/// Breaks the data directory with `break_it`, checks that a new schedule is refused with a
/// clear 5xx and the old one still shown, repairs it with `repair`, and checks that the old
/// schedule is also what was on disk.
async fn a_failed_save_changes_nothing(
    break_it: impl FnOnce(&std::path::Path),
    repair: impl FnOnce(&std::path::Path),
) {
    let mut w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 70, "start_time": "01:30"})).await;
    let dir = w.data.path().to_path_buf();
    break_it(&dir);

    let (code, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 80, "start_time": "03:00"}),
        )
        .await;
    assert!((500..600).contains(&code), "{code} {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("could not be saved") && detail.contains("data directory"),
        "says what went wrong and what to check: {detail}"
    );
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(
        sched["target_soc"], 70,
        "the previous schedule stays: {sched}"
    );
    assert_eq!(sched["start_time"], "01:30");
    let (_, status) = w.get("/api/charge/status").await;
    assert_eq!(status["target_soc"], 70);

    repair(&dir);
    w.kill();
    w.boot().await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["target_soc"], 70, "what was shown is what was saved");
    schedule(&w, json!({"target_soc": 80, "start_time": "03:00"})).await;
}

fn aside(dir: &std::path::Path) -> std::path::PathBuf {
    dir.with_extension("aside")
}

#[tokio::test]
async fn when_the_data_directory_is_replaced_by_a_file_a_new_schedule_is_refused_with_a_clear_5xx_and_the_old_one_kept()
 {
    a_failed_save_changes_nothing(
        |dir| {
            std::fs::rename(dir, aside(dir)).unwrap();
            std::fs::write(dir, b"not a directory").unwrap();
        },
        |dir| {
            std::fs::remove_file(dir).unwrap();
            std::fs::rename(aside(dir), dir).unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn when_state_json_becomes_a_directory_a_new_schedule_is_refused_with_a_clear_5xx_and_the_old_one_kept()
 {
    a_failed_save_changes_nothing(
        |dir| {
            let state = dir.join("state.json");
            std::fs::rename(&state, aside(&state)).unwrap();
            std::fs::create_dir(&state).unwrap();
        },
        |dir| {
            let state = dir.join("state.json");
            std::fs::remove_dir(&state).unwrap();
            std::fs::rename(aside(&state), &state).unwrap();
        },
    )
    .await;
}

#[tokio::test]
async fn a_cancellation_that_cannot_be_saved_is_reported_not_claimed() {
    let w = World::start(Setup::default()).await;
    schedule(&w, json!({"target_soc": 70, "start_time": "01:30"})).await;
    let dir = w.data.path().to_path_buf();
    std::fs::rename(&dir, aside(&dir)).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();

    let (code, body) = w.delete("/api/charge/schedule").await;
    assert_eq!(
        code, 200,
        "the contract's DELETE always answers 200: {body}"
    );
    assert_eq!(body["success"], false, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("could not be saved") && msg.contains("after a restart"),
        "says the cancellation is not durable: {msg}"
    );
    let (code, body) = w.post("/api/charging/disable", json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], false, "{body}");

    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(aside(&dir), &dir).unwrap();
}

#[tokio::test]
async fn no_log_line_ever_shows_the_mqtt_password_or_the_api_key() {
    const PASSWORD: &str = "pw-7d1f0c2e";
    const KEY: &str = "key-93b4a8f1";
    // Everything, down to TRACE, from before the service starts.
    let log = LogCapture::install_at(LevelFilter::TRACE);
    let w = World::start(Setup {
        mqtt: format!("username: solar, password: {PASSWORD}"),
        server: format!("api_key: {KEY}"),
        ..Setup::default()
    })
    .await;
    let authed = |r: reqwest::RequestBuilder| r.header("X-API-Key", KEY);
    let r = authed(w.http.post(format!("{}/api/charging/enable", w.base)))
        .json(&json!({"target_soc": 55}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Refused attempts with a near-miss key, and a charge to its end.
    for bad in [&KEY[..KEY.len() - 1], "key-93b4a8f2"] {
        let r = w
            .http
            .get(format!("{}/api/charge/status", w.base))
            .header("Authorization", format!("Bearer {bad}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    charge_to_the_end(&w, HOUR).await;
    let lines = log.lines.borrow().clone();
    assert!(
        lines.len() > 20,
        "the capture saw the service: {} lines",
        lines.len()
    );
    for l in &lines {
        assert!(
            !l.contains(PASSWORD) && !l.contains(KEY),
            "a secret in the log: {l}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Garbage on every topic

/// What the dongle publishes (the service decodes these) ...
const DONGLE_TOPICS: [&str; 11] = [
    "inputbank1",
    "holdbank1",
    "input",
    "hold",
    "snap/input",
    "snap/hold",
    "setting/updated",
    "response",
    "status",
    "availability",
    "firmwarecode/response",
];
/// ... and what the service publishes itself (also under its `prefix/#` subscription).
const SERVICE_TOPICS: [&str; 3] = ["update", "snapshot/request", "firmwarecode/request"];

fn garbage_payloads() -> Vec<Vec<u8>> {
    let megabyte_ff = vec![0xFFu8; 1_000_000];
    // Valid JSON that would wreck the SOC if it were read.
    let mut megabyte_json = br#"{"SOC": 5, "Pcharge": 0, "pad": ""#.to_vec();
    megabyte_json.resize(1_000_000 - 2, b'x');
    megabyte_json.extend_from_slice(br#""}"#);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let binary: Vec<u8> = (0..4096)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8 | 0x80
        })
        .collect();
    let truncated = br#"{"SOC": 5, "Pcharge": 30"#.to_vec();
    vec![megabyte_ff, megabyte_json, binary, truncated]
}

#[tokio::test]
async fn megabyte_and_binary_garbage_on_every_topic_is_logged_and_dropped_and_the_charge_still_stops_at_the_target()
 {
    let _alone = MEMORY_HUNGRY.lock().await;
    let w = World::start(Setup {
        // Outside this process, so that the megabytes do not stay in an embedded broker.
        broker: BrokerKind::Mosquitto,
        ..Setup::default()
    })
    .await;
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 60}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    w.wait_status(charging).await;
    let soc = w.status().soc;

    let log = LogCapture::install();
    let raw = RawClient::connect(w.broker.port, "garbage").await;
    let payloads = garbage_payloads();
    let mut sent = 0;
    for topic in DONGLE_TOPICS.iter().chain(&SERVICE_TOPICS) {
        for p in &payloads {
            raw.publish(topic, QoS::AtLeastOnce, p.clone()).await;
            sent += 1;
        }
    }
    raw.wait_acked(sent).await;
    let undecodable = DONGLE_TOPICS.len() * payloads.len();
    // A valid marker after the garbage: once the service has seen it, it has handled every
    // message before it.
    raw.publish(
        "firmwarecode/response",
        QoS::AtLeastOnce,
        br#"{"FWCode":"MARK"}"#.to_vec(),
    )
    .await;
    w.wait_status(|s| s.firmware_code.as_deref() == Some("MARK"))
        .await;
    assert_eq!(
        log.count("dropped a dongle message"),
        1,
        "one warning a minute however much garbage arrives, not one line per message"
    );

    let st = w.status();
    assert!(st.mqtt_connected);
    assert_eq!(
        st.soc, soc,
        "nothing from the garbage was taken as telemetry"
    );
    assert!(charging(&st), "the charge goes on");
    let soc = charge_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(history(&w).await[0]["stop_reason"], "target_reached");
    // The next bad message, more than a minute later, says how many were held back.
    raw.publish("inputbank1", QoS::AtLeastOnce, b"\xff".to_vec())
        .await;
    log.wait_for(&format!("more_since_last_warning={}", undecodable - 1), 1)
        .await;
}

// ---------------------------------------------------------------------------------------------
// 8. A flood of telemetry

/// Old-firmware `inputbank1` messages of a realistic size (~3 KB): the SOC, a charge power of
/// `n` W to tell them apart, and the many other registers a bank carries. Cheap to make, so
/// that the flood is limited by the broker and the service, not by building it.
struct InputBank {
    registers: String,
}

impl InputBank {
    fn new(soc: u8) -> InputBank {
        let mut registers = format!(r#""SOC":{soc},"Pdischarge":0,"Vbat":53.1"#);
        for i in 0..120 {
            registers.push_str(&format!(r#","register_{i:03}":"{}""#, 1000 + i * 7));
        }
        InputBank { registers }
    }

    fn message(&self, n: usize) -> Vec<u8> {
        format!(
            r#"{{"Serialnumber":"BA00000001","payload":{{"Pcharge":{n},{}}}}}"#,
            self.registers
        )
        .into_bytes()
    }
}

#[tokio::test]
async fn a_flood_of_ten_thousand_inputbank_messages_keeps_memory_bounded_and_the_stop_still_lands()
{
    let _alone = MEMORY_HUNGRY.lock().await;
    let w = World::start(Setup {
        broker: BrokerKind::Mosquitto,
        firmware: Firmware::Legacy,
        ..Setup::default()
    })
    .await;
    // The old firmware sends its settings once a minute: the service has them after this, and
    // takes its pre-charge snapshot from them.
    w.tick(MIN).await;
    w.tick(MIN).await;
    let (_, body) = w
        .post("/api/charging/enable", json!({"target_soc": 60}))
        .await;
    assert_eq!(body["success"], true, "{body}");
    w.wait_status(charging).await;
    let soc = w.sim.state().borrow().reported_soc;
    let bank = InputBank::new(soc);
    let size = bank.message(0).len();
    assert!(size > 2500, "messages of a realistic size: {size} bytes");

    let before = rss_bytes();
    // Published from a thread of its own, as fast as the broker takes them, while the service
    // goes on with its own work on this one.
    let port = w.broker.port;
    let (sent_tx, sent) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let raw = RawClient::connect(port, "flood").await;
            for n in 0..10_000 {
                raw.publish("inputbank1", QoS::AtMostOnce, bank.message(n))
                    .await;
            }
            // After the flood on the same connection: once the service shows it, it has
            // been through everything before it.
            raw.publish("inputbank1", QoS::AtLeastOnce, bank.message(10_000))
                .await;
            raw.wait_acked(1).await;
        });
        let _ = sent_tx.send(());
    });
    tokio::time::timeout(GUARD, sent)
        .await
        .expect("the flood is published")
        .expect("the flooding thread finished");
    // A guard longer than usual: an unoptimised build takes seconds to decode 10 000 messages.
    let mut status = w.app.as_ref().unwrap().engine.watch();
    tokio::time::timeout(
        3 * GUARD,
        status.wait_for(|s| s.battery_power == Some(10_000.0)),
    )
    .await
    .expect("the service gets through the flood")
    .unwrap();
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 20 * 1024 * 1024,
        "memory grew by {} MB over a flood of {} MB",
        grown / (1024 * 1024),
        10_000 * size / (1024 * 1024)
    );
    assert!(charging(&w.status()), "the charge goes on");

    let soc = charge_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&soc), "stopped at the target, SOC {soc}");
    assert_eq!(history(&w).await[0]["stop_reason"], "target_reached");
    assert_eq!(w.hold("ACCharge"), Some(HoldValue::Int(0)));
}

#[tokio::test]
async fn a_scheduled_start_with_the_battery_already_at_the_target_is_recorded_as_skipped() {
    let w = World::start(Setup {
        soc: 80.0,
        ..Setup::default()
    })
    .await;
    schedule(
        &w,
        json!({"target_soc": 60, "start_time": "01:30", "mode": "recurring"}),
    )
    .await;
    tick_to(&w, local("2026-01-15T01:32")).await;
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing to charge, nothing written"
    );
    let h = history(&w).await;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["stop_reason"], "skipped");
    assert_eq!(h[0]["origin"], "schedule");
    assert!(
        h[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("already at 80%")),
        "{h:?}"
    );
    // One record per occurrence: the next minutes add none.
    tick_for(&w, 5 * MIN).await;
    assert_eq!(history(&w).await.len(), 1);
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched["next_run"], "2026-01-16T01:30:00");
}

#[tokio::test]
async fn a_lone_soc_outlier_after_hours_of_quiet_gives_way_to_the_true_reading() {
    let w = World::start(Setup {
        soc: 56.0,
        ..Setup::default()
    })
    .await;
    w.tick(MIN).await;
    assert_eq!(w.status().soc.map(|s| s.get()), Some(56));
    // Hours without a report (firmware >= 4.3 sends SOC only when it changes), then a glitch.
    w.clock.advance(3 * HOUR);
    w.sim.glitch_soc(4);
    w.sim.publish_telemetry_now();
    // The service asks the dongle again and believes the reading that agrees with before.
    let glitch_at = w.clock.clock().now();
    let st = w
        .wait_status(|s| s.soc.map(|s| s.get()) == Some(56) && s.last_telemetry == Some(glitch_at))
        .await;
    assert_eq!(st.soc.map(|s| s.get()), Some(56));
    // A charge now to 50 % is therefore refused as already reached, not started at "4 %".
    let (code, resp) = w
        .post("/api/charging/enable", json!({"target_soc": 50}))
        .await;
    assert_eq!(code, 200, "{resp}");
    assert!(
        resp["message"]
            .as_str()
            .is_some_and(|m| m.contains("already at 56%")),
        "{resp}"
    );
    assert!(
        !w.sim
            .state()
            .borrow()
            .writes
            .iter()
            .any(|x| x.setting == "ACCharge"),
        "AC charging was never switched on"
    );
}
