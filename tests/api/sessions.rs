//! Charge sessions end to end: crash-safe (killed and booted again on the same data), verified
//! writes against a dongle that times out, applies late or refuses, every stop reason, both
//! firmware generations, and the fallback when the inverter's settings cannot be read.
//!
//! Every test gives the inverter settings of its own first (SOC limit 95, charge type 1, a
//! 05:00-06:00 window) and checks at the end that the charge left them exactly as found.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use solar_charging_backend::clock::ManualClock;
use solar_charging_backend::config::{self, EnvOverrides};
use solar_charging_backend::domain::session::Phase;
use solar_charging_backend::engine::Status;
use solar_charging_backend::sim::broker::start_embedded_broker;
use solar_charging_backend::sim::dongle::{
    self, Fault, Firmware, HoldValue, Reply, SimConfig, SimHandle, SimState,
};
use solar_charging_backend::store::STATE_FILE;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::harness::{GUARD, PREFIX, Setup, World, ZONE, ac_on, tz};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// How a test wants its world, beyond what [`Setup`] offers.
pub(crate) struct Knobs {
    pub firmware: Firmware,
    pub soc: f64,
    pub max_charge_w: f64,
    /// Legacy `holdbank1` period; `None` turns hold polling off.
    pub hold_interval: Option<Duration>,
    /// Extra YAML under `charging:`.
    pub charging: &'static str,
    /// The inverter has AC charging switched on before any charge (for its own window).
    pub ac_charge_before: bool,
    /// Registers the legacy hold bank leaves out.
    pub bank_omits: &'static [&'static str],
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            firmware: Firmware::V43,
            soc: 50.0,
            max_charge_w: 6000.0,
            hold_interval: Some(MIN),
            charging: "min_write_interval_ms: 0",
            ac_charge_before: false,
            bank_omits: &[],
        }
    }
}

static CLIENT_IDS: AtomicU32 = AtomicU32::new(0);

/// Like `World::start`, with the simulator's hold polling and the write spacing chosen here.
/// With `min_write_interval_ms: 1000` every write after the first waits for the test to move
/// the clock a second, which lets a test stop the start sequence between two given writes.
///
/// The inverter gets settings of its own before anything connects (so that every hold bank a
/// legacy dongle sends carries them); returns the world and every register as a charge will
/// find it.
pub(crate) async fn world(k: Knobs) -> (World, BTreeMap<String, HoldValue>) {
    let setup = Setup::default();
    let broker = start_embedded_broker(0).expect("embedded broker");
    let clock = ManualClock::new(setup.wall);
    let sim_cfg = SimConfig {
        prefix: PREFIX.into(),
        firmware: k.firmware,
        initial_soc: k.soc,
        max_charge_w: k.max_charge_w,
        hold_interval: k.hold_interval,
        bank_omits: k.bank_omits.iter().map(|s| s.to_string()).collect(),
        tz: tz(),
        ..Default::default()
    };
    let sim = dongle::spawn("127.0.0.1", broker.port, sim_cfg, clock.clock());
    let before = own_settings(&sim, k.ac_charge_before);
    let id = CLIENT_IDS.fetch_add(1, Ordering::Relaxed);
    let yaml = format!(
        "mqtt: {{host: 127.0.0.1, port: {port}, dongle_prefix: \"{PREFIX}\", client_id: sessions-{id}}}\n\
         server: {{host: 127.0.0.1, port: 0}}\n\
         charging: {{{charging}}}\n\
         timezone: {ZONE}\n",
        port = broker.port,
        charging = k.charging,
    );
    let config = config::parse(&yaml, &EnvOverrides::default())
        .unwrap_or_else(|p| panic!("test config: {p:?}"))
        .config;
    let mut w = World::assemble(broker, None, clock, sim, config);
    w.boot().await;
    (w, before)
}

/// Gives the inverter settings of its own, so that a restore to defaults would show; returns
/// every register.
pub(crate) fn own_settings(sim: &SimHandle, ac_charge: bool) -> BTreeMap<String, HoldValue> {
    for (name, value) in [
        ("ACChgSOCLimit", HoldValue::Int(95)),
        ("ACChargeType", HoldValue::Int(1)),
        ("ACChgStart", HoldValue::Time(5, 0)),
        ("ACChgEnd", HoldValue::Time(6, 0)),
        ("ACCharge", HoldValue::Int(ac_charge.into())),
    ] {
        sim.set_hold(name, value).unwrap();
    }
    sim.state().borrow().holds.clone()
}

/// The inverter is exactly as it was found: AC charging off unless it was on before, every
/// other register as it was.
pub(crate) fn assert_left_as_found(w: &World, before: &BTreeMap<String, HoldValue>) {
    let now = w.sim.state().borrow().clone();
    assert_eq!(
        ac_on(&now),
        before["ACCharge"] == HoldValue::Int(1),
        "AC charging is as it was"
    );
    assert_eq!(&now.holds, before, "the inverter is left as it was found");
}

pub(crate) async fn history(w: &World) -> Vec<Value> {
    let (code, body) = w.get("/api/charge/history").await;
    assert_eq!(code, 200, "{body}");
    body.as_array().expect("a list").clone()
}

/// The only history entry, which must give `reason`.
pub(crate) async fn the_one_session_ended_for(w: &World, reason: &str) -> Value {
    let h = history(w).await;
    assert_eq!(h.len(), 1, "one session: {h:#?}");
    assert_eq!(h[0]["stop_reason"], reason, "{:#}", h[0]);
    h[0].clone()
}

pub(crate) fn phase(s: &Status) -> Option<Phase> {
    s.session.as_ref().map(|v| v.phase)
}

/// Starts a charge now through the API and checks that it is running.
pub(crate) async fn charge_now(w: &World, target: u8) {
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": target}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["is_charging"], true, "{body}");
    assert!(ac_on(&w.sim.state().borrow()));
}

/// A POST whose answer is awaited later, for requests that wait on writes the test drives.
pub(crate) fn post_later(w: &World, path: &str, body: Value) -> JoinHandle<(u16, Value)> {
    let http = w.http.clone();
    let url = format!("{}{path}", w.base);
    tokio::spawn(async move {
        let r = http.post(url).json(&body).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    })
}

pub(crate) async fn answer(h: JoinHandle<(u16, Value)>) -> (u16, Value) {
    tokio::time::timeout(GUARD, h)
        .await
        .expect("the request is answered")
        .expect("the request task")
}

/// Runs the clock until the session has ended, at most `limit` of it: a minute at a time
/// while the charge only watches the SOC, a second at a time while writes go out. (A minute's
/// jump with a write in flight passes the write's 15 s timeout before the dongle's answer can
/// arrive; the service copes by reading the value back, but these tests should not lean on
/// that.) Returns the inverter as the session left it.
pub(crate) async fn run_to_the_end(w: &World, limit: Duration) -> SimState {
    let mut elapsed = Duration::ZERO;
    while w.status().session.is_some() {
        assert!(
            elapsed < limit,
            "the session did not end within {limit:?}: {:#?}; writes: {:?}",
            w.status().session,
            written(&w.sim.state().borrow())
        );
        let step = if phase(&w.status()) == Some(Phase::Charging) {
            MIN
        } else {
            SEC
        };
        w.tick(step).await;
        elapsed += step;
    }
    w.sim.state().borrow().clone()
}

/// Lets `n` minutes of charging pass a minute at a time: telemetry keeps coming (one jump
/// longer than `stale_after` would look like a dongle gone quiet).
pub(crate) async fn minutes(w: &World, n: u32) {
    for _ in 0..n {
        w.tick(MIN).await;
    }
}

pub(crate) fn writes_of(s: &SimState, setting: &str) -> usize {
    s.writes.iter().filter(|r| r.setting == setting).count()
}

pub(crate) fn written(s: &SimState) -> Vec<(String, String)> {
    s.writes
        .iter()
        .map(|r| (r.setting.clone(), r.value.to_string()))
        .collect()
}

/// A plain MQTT client on the broker: another app talking to the dongle, or an observer.
pub(crate) struct Peer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

impl Peer {
    pub(crate) async fn connect(w: &World) -> Peer {
        let id = CLIENT_IDS.fetch_add(1, Ordering::Relaxed);
        let opts = MqttOptions::new(format!("peer-{id}"), "127.0.0.1", w.broker.port);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (suback_tx, mut suback) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(p);
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = suback_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        client
            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(GUARD, suback.recv())
            .await
            .expect("subscribed");
        Peer { client, rx }
    }

    /// Waits for the next message on `suffix`, skipping others.
    pub(crate) async fn expect(&mut self, suffix: &str) -> Value {
        let topic = format!("{PREFIX}/{suffix}");
        tokio::time::timeout(GUARD, async {
            loop {
                let p = self.rx.recv().await.expect("peer connection");
                if p.topic == topic {
                    return serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no message on {suffix}"))
    }

    /// Publishes `payload` on the dongle's `suffix` topic, as if the dongle had sent it.
    pub(crate) async fn publish(&self, suffix: &str, payload: Value) {
        self.client
            .publish(
                format!("{PREFIX}/{suffix}"),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn write(&self, setting: &str, value: Value) {
        let payload = json!({"setting": setting, "value": value, "from": "another-app"});
        self.client
            .publish(
                format!("{PREFIX}/update"),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }
}

/// Log lines written while the guard lives (the test runtime has one thread, so the service's
/// tasks log through it).
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || SharedBuf(sink.clone()))
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (Logs(buf), guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// --- crash safety ---

#[tokio::test]
async fn a_charge_killed_mid_way_resumes_after_the_restart_and_still_stops_at_the_target() {
    let (mut w, before) = world(Knobs::default()).await;
    once_at_0130(&w, 70).await;
    w.tick(30 * MIN).await;
    w.wait_sim(ac_on).await;
    w.wait_status(|s| phase(s) == Some(Phase::Charging)).await;
    minutes(&w, 5).await;
    let (_, running) = w.get("/api/charging/status").await;
    assert_eq!(running["charge_started_at"], "2026-01-15T01:30:00.000000");

    w.kill();
    w.clock.advance(5 * MIN);
    w.boot().await;

    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["is_charging"], true, "{st}");
    assert_eq!(
        st["charge_started_at"], "2026-01-15T01:30:00.000000",
        "the charge keeps its start: {st}"
    );
    assert_eq!(st["target_soc"], 70);
    let (_, st) = w.get("/api/charge/status").await;
    assert_eq!(st["is_charging"], true, "{st}");
    let writes_before_restart = w.sim.state().borrow().writes.len();
    assert_eq!(
        writes_before_restart,
        5,
        "resuming writes nothing again: {:?}",
        written(&w.sim.state().borrow())
    );

    let end = run_to_the_end(&w, 2 * HOUR).await;
    assert!(
        (70..=71).contains(&end.reported_soc),
        "stopped at the target, SOC {}",
        end.reported_soc
    );
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "target_reached").await;
    assert_eq!(entry["started_at"], "2026-01-15T01:30:00.000000");
    assert_eq!(entry["start_soc"], 50);
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["is_charging"], false);
    assert_eq!(st["charge_started_at"], Value::Null);
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(
        sched,
        Value::Null,
        "the once schedule is spent, not fired again"
    );
}

#[tokio::test]
async fn a_charge_whose_cutoff_passed_while_the_service_was_down_stops_at_once_on_boot() {
    let (mut w, before) = world(Knobs {
        max_charge_w: 1000.0,
        charging: "min_write_interval_ms: 0, safety_cutoff_hours: 1",
        ..Knobs::default()
    })
    .await;
    charge_now(&w, 90).await;
    minutes(&w, 10).await;

    w.kill();
    w.clock.advance(2 * HOUR);
    // Meanwhile the inverter's own window end has stopped the charge, with AC charge still on.
    let meanwhile = w.wait_sim(|s| !s.charging).await;
    assert!(ac_on(&meanwhile));
    w.boot().await;

    // No time passes: the stop is made on boot.
    let st = w.wait_status(|s| s.session.is_none()).await;
    assert!(!st.is_charging());
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "cutoff").await;
    assert_eq!(entry["origin"], "charge_now");
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["is_charging"], false);
    assert_eq!(st["charge_started_at"], Value::Null);
}

#[tokio::test]
async fn a_charge_goes_on_across_a_graceful_restart_without_starting_again() {
    let (mut w, before) = world(Knobs::default()).await;
    charge_now(&w, 60).await;
    minutes(&w, 3).await;
    w.shutdown().await;
    w.boot().await;
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["is_charging"], true, "{st}");
    assert_eq!(st["charge_started_at"], "2026-01-15T01:00:00.000000");
    assert_eq!(w.sim.state().borrow().writes.len(), 5, "no second start");
    let end = run_to_the_end(&w, HOUR).await;
    assert!((60..=61).contains(&end.reported_soc));
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

/// A world whose writes go out a second apart (each waits for the test to move the clock),
/// with a once charge to `target` scheduled at 01:30, half an hour ahead.
pub(crate) async fn spaced_writes_and_a_once_charge_at_0130(
    target: u8,
) -> (World, BTreeMap<String, HoldValue>) {
    let (w, before) = world(Knobs {
        charging: "min_write_interval_ms: 1000",
        ..Knobs::default()
    })
    .await;
    once_at_0130(&w, target).await;
    (w, before)
}

/// Schedules a once charge to `target` at 01:30 (the test worlds start at 01:00).
pub(crate) async fn once_at_0130(w: &World, target: u8) {
    let (code, body) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": target, "start_time": "01:30", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
}

/// Schedules a charge at 01:30 with writes a second apart, lets the first two through, then
/// kills the service while the third (the window start) is unanswered by a silent dongle.
async fn killed_while_starting() -> (World, BTreeMap<String, HoldValue>) {
    let (mut w, before) = spaced_writes_and_a_once_charge_at_0130(55).await;
    w.tick(30 * MIN).await;
    w.wait_sim(|s| s.writes.len() == 1).await;
    w.clock.advance(SEC);
    w.wait_sim(|s| s.writes.len() == 2).await;
    w.sim.set_fault(Fault::Silent);
    w.clock.advance(SEC);
    let s = w.wait_sim(|s| s.writes.len() == 3).await;
    assert_eq!(s.writes[2].setting, "ACChgStart");
    assert_eq!(s.writes[2].reply, Reply::NoReply);
    assert!(!ac_on(&s));
    assert!(!w.status().is_charging());

    w.kill();
    // What may have changed was on disk before the write went out.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(w.data_path(STATE_FILE)).unwrap()).unwrap();
    assert_eq!(saved["session"]["phase"], "starting");
    assert_eq!(
        saved["session"]["touched"],
        json!(["ACChgSOCLimit", "ACChargeType", "ACChgStart"])
    );
    w.sim.set_fault(Fault::None);
    (w, before)
}

#[tokio::test]
async fn a_service_killed_during_the_start_finishes_the_start_after_the_restart() {
    let (mut w, before) = killed_while_starting().await;
    w.boot().await;
    let (_, st) = w.get("/api/charging/status").await;
    assert_eq!(st["is_charging"], false, "ACCharge is not on yet: {st}");

    // The unanswered write goes out again at once; each after it waits a second of clock.
    w.run_until(SEC, MIN, ac_on).await;
    let on = w.sim.state().borrow().clone();
    let settings: Vec<&str> = on.writes.iter().map(|r| r.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "ACChgSOCLimit",
            "ACChargeType",
            "ACChgStart",
            // After the restart: the unanswered write again, then the rest.
            "ACChgStart",
            "ACChgEnd",
            "ACCharge",
        ]
    );
    w.wait_status(|s| s.is_charging()).await;

    let end = run_to_the_end(&w, HOUR).await;
    assert!((55..=56).contains(&end.reported_soc));
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

#[tokio::test]
async fn a_service_killed_during_the_start_rolls_it_back_when_the_cutoff_passed_meanwhile() {
    let (mut w, before) = killed_while_starting().await;
    w.clock.advance(9 * HOUR);
    w.boot().await;
    let s = run_to_the_end(&w, MIN).await;
    assert_eq!(
        writes_of(&s, "ACCharge"),
        0,
        "AC charging was never switched on: {:?}",
        written(&s)
    );
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "cutoff").await;
}

// --- verified writes ---

#[tokio::test]
async fn a_write_that_times_out_but_applies_late_is_not_sent_twice_and_the_charge_goes_on() {
    let (w, before) = world(Knobs::default()).await;
    let mut peer = Peer::connect(&w).await;
    w.sim.set_fault(Fault::LateApply {
        delay: Duration::from_secs(20),
    });
    let enable = post_later(&w, "/api/charging/enable", json!({"target_soc": 60}));
    let s = w.wait_sim(|s| s.writes.len() == 1).await;
    assert_eq!(s.writes[0].setting, "ACChgSOCLimit");
    assert_eq!(s.writes[0].reply, Reply::NoReply);
    // Only this write is late; the dongle answers the rest.
    w.sim.set_fault(Fault::None);

    // No answer within 15 s: the service reads the setting back, which still shows the old
    // value, because the write has not applied yet.
    w.clock.advance(15 * SEC);
    let now = w.clock.clock().now().as_second();
    let snap = loop {
        // The one answering the read-back, not the one taken before the charge.
        let snap = peer.expect("snap/hold").await;
        if snap["ts"] == now {
            break snap;
        }
    };
    assert_eq!(snap["payload"]["ACChgSOCLimit"], 95);
    // Five seconds later the inverter applies it after all.
    w.clock.advance(5 * SEC);

    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        writes_of(&on, "ACChgSOCLimit"),
        1,
        "written once: {:?}",
        written(&on)
    );
    let (code, body) = answer(enable).await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["is_charging"], true, "{body}");

    run_to_the_end(&w, HOUR).await;
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

#[tokio::test]
async fn a_write_refused_mid_start_rolls_back_what_was_written_and_says_why() {
    let (w, before) = world(Knobs {
        charging: "min_write_interval_ms: 1000",
        ..Knobs::default()
    })
    .await;
    let enable = post_later(&w, "/api/charging/enable", json!({"target_soc": 80}));
    w.wait_sim(|s| s.writes.len() == 1).await;
    w.clock.advance(SEC);
    w.wait_sim(|s| s.writes.len() == 2).await;
    assert_eq!(w.hold("ACChgSOCLimit"), Some(HoldValue::Int(80)));
    assert_eq!(w.hold("ACChargeType"), Some(HoldValue::Int(2)));
    w.sim.set_fault(Fault::RejectWrites);
    w.clock.advance(SEC);
    let s = w.wait_sim(|s| s.writes.len() == 3).await;
    assert_eq!(s.writes[2].setting, "ACChgStart");
    assert!(matches!(s.writes[2].reply, Reply::Error(_)));

    let (code, body) = answer(enable).await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["is_charging"], false, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("ACChgStart") && message.contains("error"),
        "says which write failed and how: {message}"
    );

    w.sim.set_fault(Fault::None);
    let s = run_to_the_end(&w, MIN).await;
    assert_eq!(writes_of(&s, "ACCharge"), 0, "{:?}", written(&s));
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "write_failed").await;
    assert!(entry.get("restore_failures").is_none(), "{entry:#}");
}

#[tokio::test]
async fn a_dongle_refusing_every_write_fails_the_start_and_changes_nothing() {
    let (w, before) = world(Knobs::default()).await;
    w.sim.set_fault(Fault::RejectWrites);
    let (code, body) = w
        .post("/api/charging/enable", json!({"target_soc": 80}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["is_charging"], false, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("ACChgSOCLimit"),
        "{body}"
    );
    // The rollback of the refused write is tried a few times, then given up.
    run_to_the_end(&w, 5 * MIN).await;
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "write_failed").await;
    assert!(entry["detail"].as_str().unwrap().contains("ACChgSOCLimit"));
}

// --- every stop reason ---

#[tokio::test]
async fn a_charge_stopped_through_the_api_is_recorded_as_cancelled() {
    let (w, before) = world(Knobs::default()).await;
    charge_now(&w, 90).await;
    minutes(&w, 5).await;
    let (code, body) = w.post("/api/charging/disable", json!({})).await;
    assert_eq!(code, 200);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["stopped_at"], "2026-01-15T01:05:00.000000");
    assert!(!ac_on(&w.sim.state().borrow()), "off when the answer comes");
    w.wait_status(|s| s.session.is_none()).await;
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "cancelled").await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched, Value::Null);
}

#[tokio::test]
async fn deleting_the_schedule_stops_its_running_charge_as_cancelled() {
    let (w, before) = world(Knobs::default()).await;
    let (code, _) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 90, "start_time": "01:30"}),
        )
        .await;
    assert_eq!(code, 200);
    w.tick(30 * MIN).await;
    w.wait_sim(ac_on).await;
    minutes(&w, 2).await;
    let (code, body) = w.delete("/api/charge/schedule").await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"success": true, "message": "Schedule cancelled"})
    );
    assert!(!ac_on(&w.sim.state().borrow()));
    w.wait_status(|s| s.session.is_none()).await;
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "cancelled").await;
    let (_, sched) = w.get("/api/charge/schedule").await;
    assert_eq!(sched, Value::Null);
}

/// A charge that loses its dongle (`fault`) stops for stale data; the dongle comes back while
/// the stop write waits for its answer, and the stop and restore then go through.
async fn stale_stop(fault: Fault, silence: Duration, why: &str) {
    let (w, before) = world(Knobs {
        max_charge_w: 1000.0,
        ..Knobs::default()
    })
    .await;
    charge_now(&w, 90).await;
    minutes(&w, 5).await;
    w.sim.set_fault(fault);
    if !silence.is_zero() {
        // What the dongle sent just before it fell silent may still be on its way; a message
        // that arrives after the clock moved counts as news, so the clock moves on again.
        for _ in 0..5 {
            w.clock.advance(silence);
            let now = w.clock.clock().now();
            let st = w
                .wait_status(|s| phase(s) != Some(Phase::Charging) || s.last_message == Some(now))
                .await;
            if phase(&st) != Some(Phase::Charging) {
                break;
            }
        }
    }
    w.wait_status(|s| phase(s) == Some(Phase::Stopping)).await;
    let s = w
        .wait_sim(|s| {
            s.writes
                .last()
                .is_some_and(|r| r.setting == "ACCharge" && r.value == json!(0))
        })
        .await;
    assert_eq!(s.writes.last().unwrap().reply, Reply::NoReply);
    assert!(ac_on(&s), "the stop did not reach the inverter yet");

    // The dongle is back while the stop waits for an answer: the write times out, reads back
    // as still on, and is sent again.
    w.sim.set_fault(Fault::None);
    run_to_the_end(&w, 10 * MIN).await;
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "stale_data").await;
    assert!(entry["detail"].as_str().unwrap().contains(why), "{entry:#}");
}

#[tokio::test]
async fn a_charge_stops_for_stale_data_when_the_dongle_goes_silent() {
    stale_stop(Fault::Silent, 91 * SEC, "no message from the dongle").await;
}

#[tokio::test]
async fn a_charge_stops_for_stale_data_as_soon_as_the_dongle_says_it_is_offline() {
    stale_stop(Fault::Offline, Duration::ZERO, "reported itself offline").await;
}

#[tokio::test]
async fn a_charge_to_100_ends_by_taper_when_the_battery_tops_out_below_100() {
    let (w, before) = world(Knobs {
        soc: 95.0,
        ..Knobs::default()
    })
    .await;
    charge_now(&w, 100).await;
    let end = run_to_the_end(&w, 3 * HOUR).await;
    assert_eq!(end.reported_soc, 99, "the battery never reports 100");
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "taper").await;
    assert!(
        entry["detail"]
            .as_str()
            .unwrap()
            .contains("the battery is full"),
        "{entry:#}"
    );
}

#[tokio::test]
async fn a_charge_whose_soc_stops_rising_ends_as_stalled() {
    let (w, before) = world(Knobs {
        max_charge_w: 1000.0,
        ..Knobs::default()
    })
    .await;
    charge_now(&w, 80).await;
    w.sim.set_fault(Fault::SocFrozen);
    let end = run_to_the_end(&w, HOUR).await;
    assert_eq!(end.reported_soc, 50);
    assert!(end.soc > 54.0, "the battery itself charged on: {}", end.soc);
    w.sim.set_fault(Fault::None);
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "stalled").await;
    assert!(
        entry["detail"].as_str().unwrap().contains("50%"),
        "{entry:#}"
    );
}

#[tokio::test]
async fn another_app_switching_ac_charge_off_ends_the_charge_without_a_fight() {
    let (w, before) = world(Knobs::default()).await;
    let peer = Peer::connect(&w).await;
    charge_now(&w, 90).await;
    minutes(&w, 5).await;
    let writes_before = w.sim.state().borrow().writes.len();

    peer.write("ACCharge", json!(0)).await;
    w.wait_status(|s| !s.is_charging()).await;
    run_to_the_end(&w, MIN).await;
    w.tick(MIN).await;
    let s = w.sim.state().borrow().clone();
    let since: Vec<_> = s.writes[writes_before..]
        .iter()
        .map(|r| (r.setting.as_str(), r.value.to_string()))
        .collect();
    assert_eq!(
        since.iter().filter(|(n, _)| *n == "ACCharge").count(),
        1,
        "only the other app's ACCharge write: {since:?}"
    );
    assert_eq!(since[0], ("ACCharge", "0".to_string()));
    assert!(!w.status().is_charging());
    assert_left_as_found(&w, &before);
    let entry = the_one_session_ended_for(&w, "external_override").await;
    assert!(
        entry["detail"].as_str().unwrap().contains("ACCharge"),
        "{entry:#}"
    );
}

#[tokio::test]
async fn an_inverter_that_had_ac_charge_on_gets_it_back_on_after_the_charge() {
    let (w, before) = world(Knobs {
        ac_charge_before: true,
        ..Knobs::default()
    })
    .await;
    let idle = w.sim.state().borrow().clone();
    assert!(
        ac_on(&idle) && !idle.charging,
        "on, for its own 05:00 window"
    );
    charge_now(&w, 60).await;
    assert_eq!(
        writes_of(&w.sim.state().borrow(), "ACCharge"),
        0,
        "already on, so not written"
    );
    let end = run_to_the_end(&w, HOUR).await;
    let settings: Vec<_> = end.writes.iter().map(|r| r.setting.as_str()).collect();
    assert_eq!(settings[4], "ACCharge", "switched off first: {settings:?}");
    assert_eq!(settings.last(), Some(&"ACCharge"), "and back on last");
    assert!(!end.charging, "not charging outside its own window");
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

// --- firmware generations ---

/// The plain scheduled charge on either firmware, with the inverter's own settings restored.
async fn scheduled_charge(firmware: Firmware) {
    let (w, before) = world(Knobs {
        firmware,
        ..Knobs::default()
    })
    .await;
    let (code, _) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 60, "start_time": "01:30", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200);
    w.tick(29 * MIN).await;
    w.tick(MIN).await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        written(&on),
        [
            ("ACChgSOCLimit".to_string(), "60".to_string()),
            ("ACChargeType".to_string(), "2".to_string()),
            ("ACChgStart".to_string(), "\"01:30:00\"".to_string()),
            ("ACChgEnd".to_string(), "\"09:30:00\"".to_string()),
            ("ACCharge".to_string(), "1".to_string()),
        ],
        "the inverter's settings were read first: those already right are skipped"
    );
    let end = run_to_the_end(&w, 2 * HOUR).await;
    assert!((60..=61).contains(&end.reported_soc));
    assert_left_as_found(&w, &before);
    the_one_session_ended_for(&w, "target_reached").await;
}

#[tokio::test]
async fn a_scheduled_charge_restores_the_inverter_on_firmware_4_3() {
    scheduled_charge(Firmware::V43).await;
}

#[tokio::test]
async fn a_scheduled_charge_restores_the_inverter_on_legacy_firmware_from_its_hold_banks() {
    scheduled_charge(Firmware::Legacy).await;
}

#[tokio::test]
async fn without_readable_settings_the_stop_switches_the_windows_and_ac_charge_off_and_says_so() {
    let (logs, _guard) = Logs::capture();
    let (w, before) = world(Knobs {
        firmware: Firmware::Legacy,
        hold_interval: None,
        ..Knobs::default()
    })
    .await;
    let enable = post_later(&w, "/api/charging/enable", json!({"target_soc": 60}));
    // The service waits for hold banks that never come, then charges anyway.
    // (The snapshot command reaches the dongle client before the status shows the session, so
    // its wait is running when the clock moves.)
    w.wait_status(|s| phase(s) == Some(Phase::Preparing)).await;
    w.clock.advance(10 * SEC);
    w.wait_sim(ac_on).await;
    let (_, body) = answer(enable).await;
    assert_eq!(body["success"], true, "{body}");
    let on = w.sim.state().borrow().clone();
    assert_eq!(
        on.writes.len(),
        10,
        "nothing is known, so every setting is written: {:?}",
        written(&on)
    );

    run_to_the_end(&w, HOUR).await;
    // Not the settings as found, which were never known: AC charging and every window off, the
    // rest as the charge set it.
    let mut expected = before.clone();
    for window in [
        "ACChgStart",
        "ACChgEnd",
        "ACChgStart1",
        "ACChgEnd1",
        "ACChgStart2",
        "ACChgEnd2",
    ] {
        expected.insert(window.into(), HoldValue::Time(0, 0));
    }
    expected.insert("ACChgSOCLimit".into(), HoldValue::Int(60));
    expected.insert("ACChargeType".into(), HoldValue::Int(2));
    assert_eq!(w.sim.state().borrow().holds, expected);
    the_one_session_ended_for(&w, "target_reached").await;
    let text = logs.text();
    assert!(
        text.contains("could not be read"),
        "the missing snapshot is logged:\n{text}"
    );
    assert!(
        text.contains("windows off"),
        "the fallback stop is logged:\n{text}"
    );
}
