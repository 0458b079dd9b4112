//! Tests of `src/sim/dongle.rs`.

use super::model::parse_write;
use super::*;
use crate::clock::ManualClock;
use crate::sim::broker::start_embedded_broker;
use rumqttc::Publish;
use serde_json::json;

/// A failure guard only: every wait below ends as soon as the awaited event happens.
const WAIT: Duration = Duration::from_secs(10);
const PREFIX: &str = "dongle-40:4C:CA:00:00:01";

/// A plain MQTT client playing the service's side.
struct Peer {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Packet>,
}

impl Peer {
    async fn connect(port: u16, id: &str) -> Peer {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    // A connection refused or dropped under load: the next poll connects
                    // again (after a pause, not to spin on a refusal).
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                }
            }
        });
        let mut peer = Peer { client, rx };
        // One filter only: the broker keeps one ordered log per filter, so everything the
        // dongle publishes arrives in the order it was published.
        peer.client
            .subscribe(format!("{PREFIX}/#"), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(WAIT, async {
            while !matches!(peer.rx.recv().await, Some(Packet::SubAck(_))) {}
        })
        .await
        .expect("subscribed");
        peer
    }

    async fn send(&self, suffix: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic(PREFIX, suffix), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn send_json(&self, suffix: &str, v: Value) {
        self.send(suffix, v.to_string()).await;
    }

    async fn next(&mut self) -> Publish {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.rx.recv().await {
                    Some(Packet::Publish(p)) => return p,
                    Some(_) => {}
                    None => panic!("peer connection ended"),
                }
            }
        })
        .await
        .expect("a message from the dongle in time")
    }

    /// Skips messages on other topics; returns the next one on `suffix`.
    async fn expect(&mut self, suffix: &str) -> Publish {
        let want = topic(PREFIX, suffix);
        loop {
            let p = self.next().await;
            if p.topic == want {
                return p;
            }
        }
    }

    async fn expect_json(&mut self, suffix: &str) -> Value {
        let p = self.expect(suffix).await;
        serde_json::from_slice(&p.payload).expect("JSON payload")
    }

    /// Everything the dongle publishes until it answers a firmware-code request sent now.
    /// The dongle handles requests in order, so whatever it would have published for
    /// earlier requests is in the returned list.
    async fn until_sentinel(&mut self) -> Vec<Publish> {
        self.send_json("firmwarecode/request", json!({})).await;
        let sentinel = topic(PREFIX, "firmwarecode/response");
        let mut seen = Vec::new();
        loop {
            let p = self.next().await;
            if p.topic == sentinel {
                return seen;
            }
            seen.push(p);
        }
    }
}

fn topics(msgs: &[Publish]) -> Vec<&str> {
    msgs.iter().map(|p| p.topic.as_str()).collect()
}

async fn wait_state(sim: &SimHandle, what: &str, pred: impl FnMut(&SimState) -> bool) -> SimState {
    let mut rx = sim.state();
    let r = tokio::time::timeout(WAIT, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    r.expect("dongle state channel open").clone()
}

struct Rig {
    clock: ManualClock,
    sim: SimHandle,
    peer: Peer,
    port: u16,
    /// The telemetry message sent on connecting.
    first_input: Value,
}

fn config(firmware: Firmware) -> SimConfig {
    SimConfig {
        prefix: PREFIX.to_string(),
        firmware,
        tz: TimeZone::UTC,
        ..SimConfig::default()
    }
}

/// A broker, a service-side peer listening to everything, and a connected dongle whose
/// connect-time telemetry has been read.
async fn rig(cfg: SimConfig) -> Rig {
    let port = start_embedded_broker(0).unwrap().port;
    let mut peer = Peer::connect(port, "service").await;
    let clock = ManualClock::new("2026-01-10T02:00:00Z".parse().unwrap());
    let input_topic = match cfg.firmware {
        Firmware::Legacy => "inputbank1",
        Firmware::V43 => "input",
    };
    let sim = spawn("127.0.0.1", port, cfg, clock.clock());
    let online = peer.expect("availability").await;
    assert_eq!(&online.payload[..], b"online");
    let first_input = peer.expect_json(input_topic).await;
    Rig {
        clock,
        sim,
        peer,
        port,
        first_input,
    }
}

fn hold(state: &SimState, name: &str) -> HoldValue {
    state.holds[name].clone()
}

#[test]
fn a_write_request_is_read_with_keys_in_any_case_and_malformed_ones_are_explained() {
    let ok = parse_write(br#"{"Setting":"ACCharge","VALUE":"1","from":"x"}"#);
    assert_eq!(
        (ok.setting.as_str(), ok.value, ok.problem),
        ("ACCharge", json!("1"), None)
    );
    let no_value = parse_write(br#"{"setting":"ACCharge"}"#);
    assert_eq!(no_value.setting, "ACCharge");
    assert!(no_value.problem.unwrap().contains("value"));
    for bad in [&b"[1]"[..], b"\xff\xfe", b"", br#"{"setting":5,"value":1}"#] {
        assert!(parse_write(bad).problem.is_some(), "{bad:?}");
    }
}

#[tokio::test]
async fn a_write_is_answered_with_success_confirmed_on_4_3_and_changes_the_holds() {
    let mut r = rig(config(Firmware::V43)).await;
    r.peer
        .send_json(
            "update",
            json!({"setting": "ACChgSOCLimit", "value": 90, "from": "test"}),
        )
        .await;
    let response = r.peer.expect_json("response").await;
    assert_eq!(
        response,
        json!({"status": "success", "setting": "ACChgSOCLimit", "value": 90})
    );
    let updated = r.peer.expect_json("setting/updated").await;
    assert_eq!(
        updated,
        json!({"setting": "ACChgSOCLimit", "value": "90.00"})
    );
    let delta = r.peer.expect_json("hold").await;
    assert_eq!(delta["event"], "hold_delta");
    assert_eq!(delta["payload"], json!({"ACChgSOCLimit": 90}));

    let state = wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    assert_eq!(hold(&state, "ACChgSOCLimit"), HoldValue::Int(90));
    assert_eq!(
        state.writes[0],
        WriteRecord {
            setting: "ACChgSOCLimit".into(),
            value: json!(90),
            reply: Reply::Success,
        }
    );
}

#[tokio::test]
async fn invalid_writes_are_answered_with_an_error_naming_the_reason() {
    let mut r = rig(config(Firmware::V43)).await;
    r.peer
        .send_json("update", json!({"setting": "ACChgSOCLimit", "value": 150}))
        .await;
    let response = r.peer.expect_json("response").await;
    assert_eq!(response["status"], "error");
    assert_eq!(response["setting"], "ACChgSOCLimit");
    assert!(
        response["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{response}"
    );

    r.peer
        .send_json("update", json!({"setting": "ACChargeMagic", "value": 1}))
        .await;
    let response = r.peer.expect_json("response").await;
    assert!(
        response["message"]
            .as_str()
            .unwrap()
            .contains("unknown setting")
    );

    r.peer.send("update", "not json at all").await;
    let response = r.peer.expect_json("response").await;
    assert_eq!(response["status"], "error");

    let state = wait_state(&r.sim, "three writes", |s| s.writes.len() == 3).await;
    assert_eq!(hold(&state, "ACChgSOCLimit"), HoldValue::Int(100));
    assert!(state.writes.iter().all(|w| w.reply.as_str() == "error"));
    // No confirmation for a write that did not happen.
    let later = r.peer.until_sentinel().await;
    assert!(
        !topics(&later)
            .iter()
            .any(|t| t.ends_with("/setting/updated"))
    );
}

#[tokio::test]
async fn under_reject_writes_every_write_gets_an_error_and_nothing_changes() {
    let mut r = rig(config(Firmware::V43)).await;
    r.sim.set_fault(Fault::RejectWrites);
    r.peer
        .send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    let response = r.peer.expect_json("response").await;
    assert_eq!(response["status"], "error");
    assert_eq!(response["setting"], "ACCharge");
    let state = wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    assert_eq!(hold(&state, "ACCharge"), HoldValue::Int(0));
    assert_eq!(state.writes[0].reply.as_str(), "error");
    let later = r.peer.until_sentinel().await;
    assert!(
        !topics(&later)
            .iter()
            .any(|t| t.ends_with("/setting/updated"))
    );
}

#[tokio::test]
async fn under_late_apply_a_write_gets_no_response_and_takes_effect_only_after_the_delay() {
    let mut r = rig(SimConfig {
        // A slow drain makes every physics step visible in the state.
        idle_discharge_w: 1_000.0,
        ..config(Firmware::V43)
    })
    .await;
    r.sim.set_fault(Fault::LateApply {
        delay: Duration::from_secs(15),
    });
    r.peer
        .send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    let state = wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    assert_eq!(state.writes[0].reply, Reply::NoReply);
    let before = r.peer.until_sentinel().await;
    assert!(
        !topics(&before)
            .iter()
            .any(|t| t.ends_with("/response") || t.ends_with("/setting/updated")),
        "{:?}",
        topics(&before)
    );

    r.clock.advance(Duration::from_secs(14));
    // 14 s of 1 kW from 10 kWh: the model has run up to the new time...
    let drained = 50.0 - 14.0 * 1_000.0 / 10_000.0 * 100.0 / 3600.0;
    let state = wait_state(&r.sim, "physics to reach 14 s", |s| s.soc <= drained + 1e-9).await;
    // ...and the write is still pending.
    assert_eq!(hold(&state, "ACCharge"), HoldValue::Int(0));

    r.clock.advance(Duration::from_secs(1));
    let state = wait_state(&r.sim, "the late write to apply", |s| {
        s.holds["ACCharge"] == HoldValue::Int(1)
    })
    .await;
    assert_eq!(state.writes.len(), 1);
    let after = r.peer.until_sentinel().await;
    let seen = topics(&after);
    assert!(!seen.iter().any(|t| t.ends_with("/response")), "{seen:?}");
    let updated = after
        .iter()
        .find(|p| p.topic.ends_with("/setting/updated"))
        .expect("setting/updated after the late apply");
    assert_eq!(
        serde_json::from_slice::<Value>(&updated.payload).unwrap(),
        json!({"setting": "ACCharge", "value": "1.00"})
    );
}

#[tokio::test]
async fn a_late_write_takes_effect_at_its_own_instant_even_when_the_clock_jumps_past_it() {
    let r = rig(config(Firmware::V43)).await;
    r.sim.set_hold("ACChgStart", HoldValue::Time(2, 0)).unwrap();
    r.sim.set_hold("ACChgEnd", HoldValue::Time(4, 0)).unwrap();
    r.sim.set_fault(Fault::LateApply {
        delay: Duration::from_secs(15),
    });
    r.peer
        .send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    r.clock.advance(Duration::from_secs(75));
    let state = wait_state(&r.sim, "the late write to apply", |s| {
        s.holds["ACCharge"] == HoldValue::Int(1)
    })
    .await;
    // Charging ran for the 60 s after the write took effect, not the whole 75 s.
    let expected = 50.0 + 60.0 * 5_000.0 / 10_000.0 * 100.0 / 3600.0;
    assert!((state.soc - expected).abs() < 1e-9, "soc {}", state.soc);
    assert!(state.charging);
}

#[tokio::test]
async fn a_snapshot_request_on_4_3_returns_snap_hold_with_the_written_values() {
    let mut r = rig(config(Firmware::V43)).await;
    for (setting, value) in [
        ("ACChgStart", json!("02:30:00")),
        ("acchgsoclimit", json!("80")),
    ] {
        r.peer
            .send_json("update", json!({"setting": setting, "value": value}))
            .await;
        assert_eq!(r.peer.expect_json("response").await["status"], "success");
    }
    r.peer
        .send_json("snapshot/request", json!({"what": "all"}))
        .await;
    let input = r.peer.expect_json("snap/input").await;
    assert_eq!(input["event"], "input_state");
    assert_eq!(input["payload"]["SOC"], 50);
    let hold = r.peer.expect_json("snap/hold").await;
    assert_eq!(hold["event"], "hold_state");
    assert_eq!(hold["ts"], json!(1_768_010_400));
    let p = &hold["payload"];
    assert_eq!(p["ACChgStart"], "02:30");
    assert_eq!(p["ACChgSOCLimit"], 80);
    assert_eq!(p["ACCharge"], 0);
    assert_eq!(p["FWCode"], "FAAB");
}

#[tokio::test]
async fn the_legacy_dongle_publishes_full_banks_in_the_serial_envelope_and_has_no_read_request() {
    let cfg = SimConfig {
        serial: "BA12345678".into(),
        ..config(Firmware::Legacy)
    };
    let mut r = rig(cfg).await;
    let input = &r.first_input;
    assert_eq!(input["Serialnumber"], "BA12345678");
    assert_eq!(input["events"], json!({}));
    assert_eq!(
        input["payload"],
        json!({"SOC": 50, "Pcharge": 0, "Pdischarge": 0, "Vbat": 50.5})
    );
    let hold = r.peer.expect_json("holdbank1").await;
    assert_eq!(hold["Serialnumber"], "BA12345678");
    assert_eq!(hold["payload"]["ACChgSOCLimit"], 100);
    assert_eq!(hold["payload"]["ACChgEnd2"], "00:00");

    r.peer
        .send_json("update", json!({"setting": "ACChgSOCLimit", "value": 70}))
        .await;
    assert_eq!(r.peer.expect_json("response").await["status"], "success");
    r.peer
        .send_json("snapshot/request", json!({"what": "all"}))
        .await;
    let replies = r.peer.until_sentinel().await;
    assert!(
        !topics(&replies)
            .iter()
            .any(|t| t.contains("/snap/") || t.ends_with("/setting/updated")),
        "{:?}",
        topics(&replies)
    );

    // Banks keep coming on their own timers; the next holdbank shows the write.
    r.clock.advance(Duration::from_secs(5));
    let input = r.peer.expect_json("inputbank1").await;
    assert_eq!(input["payload"]["SOC"], 50);
    r.clock.advance(Duration::from_secs(55));
    let hold = r.peer.expect_json("holdbank1").await;
    assert_eq!(hold["payload"]["ACChgSOCLimit"], 70);
}

#[tokio::test]
async fn a_firmware_code_request_is_answered_with_the_fw_code() {
    let mut r = rig(SimConfig {
        fw_code: "EAAB".into(),
        ..config(Firmware::Legacy)
    })
    .await;
    r.peer.send_json("firmwarecode/request", json!({})).await;
    let fw = r.peer.expect_json("firmwarecode/response").await;
    assert_eq!(fw, json!({"FWCode": "EAAB"}));
}

#[tokio::test]
async fn availability_is_online_on_connect_and_offline_under_the_offline_fault() {
    let mut r = rig(config(Firmware::V43)).await;
    r.sim.set_fault(Fault::Offline);
    let off = r.peer.expect("availability").await;
    assert_eq!(&off.payload[..], b"offline");

    // Retained: a service connecting now learns it at once.
    let mut late = Peer::connect(r.port, "late-service").await;
    let retained = late.expect("availability").await;
    assert_eq!(&retained.payload[..], b"offline");

    // Offline ignores writes and requests.
    r.peer
        .send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    let state = wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    assert_eq!(state.writes[0].reply, Reply::NoReply);
    assert_eq!(hold(&state, "ACCharge"), HoldValue::Int(0));

    r.sim.set_fault(Fault::None);
    let on = r.peer.expect("availability").await;
    assert_eq!(&on.payload[..], b"online");
    let input = r.peer.expect_json("input").await;
    assert_eq!(input["event"], "input_state");
}

#[tokio::test]
async fn a_charge_write_shows_in_telemetry_at_once_and_the_soc_rises_with_the_clock() {
    let mut r = rig(config(Firmware::V43)).await;
    let first = &r.first_input;
    assert_eq!(first["event"], "input_state");
    assert_eq!(
        first["payload"],
        json!({"SOC": 50, "Pcharge": 0, "Pdischarge": 0, "Vbat": 50.5})
    );
    for (setting, value) in [
        ("ACChgStart", json!("02:00:00")),
        ("ACChgEnd", json!("03:00:00")),
        ("ACChgSOCLimit", json!(90)),
        ("ACCharge", json!(1)),
    ] {
        r.peer
            .send_json("update", json!({"setting": setting, "value": value}))
            .await;
        assert_eq!(r.peer.expect_json("response").await["status"], "success");
    }
    // Only what changed: the charger came on, nothing has moved yet.
    let delta = r.peer.expect_json("input").await;
    assert_eq!(delta["event"], "input_delta");
    assert_eq!(delta["payload"], json!({"Pcharge": 5000}));
    assert!(r.sim.state().borrow().charging);

    // 6 minutes at 5 kW into 10 kWh is 5 %.
    r.clock.advance(Duration::from_secs(360));
    let delta = r.peer.expect_json("input").await;
    assert_eq!(delta["payload"]["SOC"], 55);
    let state = r.sim.state().borrow().clone();
    assert!((state.soc - 55.0).abs() < 1e-6, "soc {}", state.soc);
    assert_eq!(state.reported_soc, 55);
    assert_eq!(state.charge_power_w, 5_000.0);

    // The window closes at 03:00 wall time: SOC stops at 50 + 50 % * 1 h, capped by the
    // 90 % limit -> 90, reached at 02:48.
    r.clock.advance(Duration::from_secs(3600));
    let state = wait_state(&r.sim, "the charge to stop", |s| !s.charging).await;
    assert_eq!(state.soc, 90.0);
    assert_eq!(state.charge_power_w, 0.0);
}

#[tokio::test]
async fn soc_frozen_keeps_reporting_the_same_soc_while_the_battery_charges() {
    let mut r = rig(config(Firmware::V43)).await;
    r.sim.set_hold("ACChgStart", HoldValue::Time(2, 0)).unwrap();
    r.sim.set_hold("ACChgEnd", HoldValue::Time(4, 0)).unwrap();
    r.sim.set_hold("ACCharge", HoldValue::Int(1)).unwrap();
    r.sim.set_fault(Fault::SocFrozen);
    r.clock.advance(Duration::from_secs(360));
    let state = wait_state(&r.sim, "the battery to charge", |s| s.soc > 54.9).await;
    assert_eq!(state.reported_soc, 50);
    r.sim.publish_telemetry_now();
    let full = loop {
        let m = r.peer.expect_json("input").await;
        if m["event"] == "input_state" {
            break m;
        }
    };
    assert_eq!(full["ts"], json!(1_768_010_760));
    assert_eq!(full["payload"]["SOC"], 50);
    assert_eq!(full["payload"]["Pcharge"], 5000);

    r.sim.set_fault(Fault::None);
    r.sim.publish_telemetry_now();
    let full = r.peer.expect_json("input").await;
    assert_eq!(full["payload"]["SOC"], 55);
}

#[tokio::test]
async fn the_garbage_fault_sends_undecodable_telemetry_and_the_dongle_recovers() {
    let mut r = rig(config(Firmware::V43)).await;
    r.sim.set_fault(Fault::Garbage);
    let before = r.sim.state().borrow().telemetry_sent;
    for _ in 0..7 {
        r.sim.publish_telemetry_now();
    }
    let mut junk = Vec::new();
    while junk.len() < 7 {
        let p = r.peer.expect("input").await;
        junk.push(p.payload.to_vec());
    }
    assert!(junk.iter().any(|j| std::str::from_utf8(j).is_err()));
    assert!(junk.iter().any(|j| j.len() >= 1_000_000));
    let parsed: Vec<Option<Value>> = junk
        .iter()
        .map(|j| serde_json::from_slice(j).ok())
        .collect();
    assert!(parsed.iter().filter(|p| p.is_none()).count() >= 4);
    assert!(
        parsed
            .iter()
            .flatten()
            .any(|v| v["payload"]["SOC"].is_string()),
        "a wrongly typed SOC"
    );
    assert!(
        parsed
            .iter()
            .flatten()
            .any(|v| v["payload"]["SOC"].as_i64().is_some_and(|s| s > 100)),
        "an impossible SOC"
    );
    assert_eq!(r.sim.state().borrow().telemetry_sent, before + 7);

    r.sim.set_fault(Fault::None);
    r.sim.publish_telemetry_now();
    let good = r.peer.expect_json("input").await;
    assert_eq!(good["payload"]["SOC"], 50);
}

#[tokio::test]
async fn a_silent_dongle_publishes_and_answers_nothing_until_the_fault_clears() {
    let mut r = rig(SimConfig {
        idle_discharge_w: 1_000.0,
        ..config(Firmware::V43)
    })
    .await;
    let sent_before = r.sim.state().borrow().telemetry_sent;
    r.sim.set_fault(Fault::Silent);
    r.peer.send_json("firmwarecode/request", json!({})).await;
    r.peer
        .send_json("snapshot/request", json!({"what": "all"}))
        .await;
    r.peer
        .send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    // The write comes last, so once it is recorded the requests were handled too.
    let state = wait_state(&r.sim, "the write to be recorded", |s| s.writes.len() == 1).await;
    assert_eq!(state.writes[0].reply, Reply::NoReply);
    assert_eq!(hold(&state, "ACCharge"), HoldValue::Int(0));
    r.sim.publish_telemetry_now();
    // A minute passes (telemetry and heartbeat fall due) while the battery keeps draining.
    r.clock.advance(Duration::from_secs(60));
    let drained = 50.0 - 60.0 * 1_000.0 / 10_000.0 * 100.0 / 3600.0;
    let state = wait_state(&r.sim, "a silent minute", |s| s.soc <= drained + 1e-9).await;
    assert_eq!(state.telemetry_sent, sent_before);

    r.sim.set_fault(Fault::None);
    // Coming back, the dongle sends full telemetry; nothing from the silent minute may
    // precede it (the one heartbeat is the one sent on connecting).
    let mut between = Vec::new();
    let input = topic(PREFIX, "input");
    loop {
        let p = r.peer.next().await;
        if p.topic == input {
            break;
        }
        between.push(p);
    }
    let seen = topics(&between);
    assert!(
        !seen.iter().any(|t| t.ends_with("/firmwarecode/response")
            || t.contains("/snap/")
            || t.ends_with("/response")
            || t.ends_with("/setting/updated")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|t| t.ends_with("/status")).count(),
        1,
        "{seen:?}"
    );
    assert_eq!(r.sim.state().borrow().telemetry_sent, sent_before + 1);
}

#[tokio::test]
async fn falling_silent_sends_its_marker_last_and_then_nothing() {
    let mut r = rig(config(Firmware::V43)).await;
    r.sim.publish_telemetry_now();
    let sent_before = r.sim.state().borrow().telemetry_sent;
    let marker = r.sim.fall_silent();
    let response = topic(PREFIX, "firmwarecode/response");
    let mut before = Vec::new();
    let answer = loop {
        let p = r.peer.next().await;
        if p.topic == response {
            break p;
        }
        before.push(p);
    };
    let body: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(body, json!({"FWCode": marker}));
    // The report sent before it arrived before it.
    assert!(
        topics(&before).contains(&topic(PREFIX, "input").as_str()),
        "{:?}",
        topics(&before)
    );
    // A minute later (telemetry and heartbeat due), nothing was sent, and the next message
    // is the full report of coming back.
    r.clock.advance(Duration::from_secs(60));
    r.sim.publish_telemetry_now();
    assert_eq!(r.sim.state().borrow().telemetry_sent, sent_before);
    r.sim.set_fault(Fault::None);
    let input = topic(PREFIX, "input");
    loop {
        let p = r.peer.next().await;
        assert_ne!(p.topic, response, "no second marker");
        if p.topic == input {
            break;
        }
    }
    assert_eq!(r.sim.state().borrow().telemetry_sent, sent_before + 1);
    assert_ne!(r.sim.fall_silent(), marker, "each marker is new");
}

/// A TCP relay to the broker whose connections can be cut, as a network outage does.
struct Relay {
    port: u16,
    cut: watch::Sender<u64>,
}

impl Relay {
    async fn start(broker_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Relay { port, cut }
    }

    /// Drops every relayed connection without an MQTT DISCONNECT.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn after_losing_the_broker_the_dongle_reconnects_resubscribes_and_is_online_again() {
    let port = start_embedded_broker(0).unwrap().port;
    let relay = Relay::start(port).await;
    let mut peer = Peer::connect(port, "service").await;
    let clock = ManualClock::new("2026-01-10T02:00:00Z".parse().unwrap());
    let sim = spawn(
        "127.0.0.1",
        relay.port,
        config(Firmware::V43),
        clock.clock(),
    );
    assert_eq!(&peer.expect("availability").await.payload[..], b"online");

    relay.cut();
    // The broker publishes the last will for the dropped connection...
    assert_eq!(&peer.expect("availability").await.payload[..], b"offline");
    // ...and the dongle comes back by itself, announces itself and starts over with a
    // full telemetry message.
    assert_eq!(&peer.expect("availability").await.payload[..], b"online");
    let input = peer.expect_json("input").await;
    assert_eq!(input["event"], "input_state");
    wait_state(&sim, "connected again", |s| s.connected).await;

    // It listens again: a write is answered.
    peer.send_json("update", json!({"setting": "ACCharge", "value": 1}))
        .await;
    assert_eq!(peer.expect_json("response").await["status"], "success");
}

#[tokio::test]
async fn shutdown_disconnects_cleanly_so_the_broker_keeps_availability_online() {
    let r = rig(config(Firmware::V43)).await;
    let state = r.sim.state();
    assert!(state.borrow().connected);
    r.sim.clone().shutdown().await;
    assert!(!state.borrow().connected);

    let mut late = Peer::connect(r.port, "late-service").await;
    let retained = late.expect("availability").await;
    assert_eq!(&retained.payload[..], b"online");
    // A marker published after the shutdown arrives with no "offline" before it.
    late.send("marker", "x").await;
    loop {
        let p = late.next().await;
        assert_ne!(&p.payload[..], b"offline", "the last will was published");
        if p.topic.ends_with("/marker") {
            break;
        }
    }
}
