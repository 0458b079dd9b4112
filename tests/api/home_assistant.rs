//! Home Assistant as a user sees it: a plain MQTT client plays Home Assistant on the broker the
//! service and the dongle share, reads the retained discovery configs and state, and presses
//! the controls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use solar_charging_backend::config::default_node_id;
use solar_charging_backend::sim::dongle::Fault;
use tokio::sync::watch;

use crate::harness::{BrokerKind, GUARD, PREFIX, Setup, World, ac_on};

const MIN: Duration = Duration::from_secs(60);
const ROOT: &str = "solar-charging-backend";

/// The entities the device must have, as (component, object id).
const ENTITIES: [(&str, &str); 13] = [
    ("sensor", "soc"),
    ("sensor", "battery_power"),
    ("sensor", "next_run"),
    ("sensor", "last_stop_reason"),
    ("sensor", "charge_energy"),
    ("binary_sensor", "charging"),
    ("binary_sensor", "dongle_online"),
    ("number", "target_soc"),
    ("text", "start_time"),
    ("select", "mode"),
    ("switch", "schedule_enabled"),
    ("button", "charge_now"),
    ("button", "stop"),
];

fn node() -> String {
    default_node_id(PREFIX)
}

fn config_topic(node: &str, component: &str, object: &str) -> String {
    format!("homeassistant/{component}/{node}/{object}/config")
}

fn state_topic(node: &str) -> String {
    format!("{ROOT}/{node}/state")
}

fn availability_topic(node: &str) -> String {
    format!("{ROOT}/{node}/availability")
}

fn command_topic(object: &str) -> String {
    format!("{ROOT}/{}/set/{object}", node())
}

fn enabled() -> Setup {
    Setup {
        home_assistant: "enabled: true".into(),
        ..Setup::default()
    }
}

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
}

/// Plays Home Assistant: subscribed to the discovery prefix and the service's topics, keeping
/// every message it receives, in order.
struct FakeHa {
    client: AsyncClient,
    log: watch::Receiver<Vec<Msg>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

static IDS: AtomicU32 = AtomicU32::new(0);

impl FakeHa {
    async fn connect(port: u16) -> FakeHa {
        let id = format!("fake-ha-{}", IDS.fetch_add(1, Ordering::Relaxed));
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (log_tx, log) = watch::channel(Vec::new());
        let (acks_tx, mut acks) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            while let Ok(ev) = eventloop.poll().await {
                match ev {
                    Event::Incoming(Packet::Publish(p)) => log_tx.send_modify(|v| {
                        v.push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                        })
                    }),
                    Event::Incoming(Packet::SubAck(_)) => acks_tx.send_modify(|n| *n += 1),
                    _ => {}
                }
            }
        });
        for filter in ["homeassistant/#", &format!("{ROOT}/#")] {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        }
        tokio::time::timeout(GUARD, acks.wait_for(|n| *n == 2))
            .await
            .expect("the broker acknowledges the subscriptions")
            .unwrap();
        FakeHa { client, log, task }
    }

    async fn send(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    async fn press(&self, object: &str, payload: &str) {
        self.send(&command_topic(object), payload, false).await;
    }

    fn seen(&self) -> usize {
        self.log.borrow().len()
    }

    /// Waits until the messages received satisfy `pred`; `what` names it in the failure.
    async fn wait(&self, what: &str, pred: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
        let mut rx = self.log.clone();
        let found = tokio::time::timeout(GUARD, rx.wait_for(|v| pred(v)))
            .await
            .map(|r| r.map(|v| v.clone()));
        match found {
            Ok(Ok(v)) => v,
            _ => panic!(
                "Home Assistant never saw {what}; it saw:\n{}",
                rx.borrow()
                    .iter()
                    .map(|m| format!("  {} {}", m.topic, String::from_utf8_lossy(&m.payload)))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    /// Waits until the latest message on `topic` satisfies `pred`, and returns it.
    async fn wait_latest(&self, topic: &str, what: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let msgs = self
            .wait(what, |v| latest(v, topic).is_some_and(&pred))
            .await;
        latest(&msgs, topic).unwrap().to_vec()
    }

    /// Waits for a state document published after the first `after` messages that satisfies
    /// `pred`, and returns it.
    async fn wait_state_after(
        &self,
        after: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let topic = state_topic(&node());
        let msgs = self
            .wait(what, |v| {
                v.iter()
                    .skip(after)
                    .any(|m| m.topic == topic && pred(&json_of(&m.payload)))
            })
            .await;
        msgs.iter()
            .skip(after)
            .filter(|m| m.topic == topic)
            .map(|m| json_of(&m.payload))
            .find(|d| pred(d))
            .unwrap()
    }

    async fn wait_state(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let p = self
            .wait_latest(&state_topic(&node()), what, |p| {
                !p.is_empty() && pred(&json_of(p))
            })
            .await;
        json_of(&p)
    }

    /// Publishes a marker and waits for it to come back: everything the broker had queued for
    /// this client before it (retained messages included) has then arrived.
    async fn settle(&self) -> Vec<Msg> {
        let marker = format!("{ROOT}/test-marker/{}", IDS.fetch_add(1, Ordering::Relaxed));
        self.send(&marker, "x", false).await;
        self.wait("its own marker", |v| v.iter().any(|m| m.topic == marker))
            .await
    }
}

fn latest<'a>(msgs: &'a [Msg], topic: &str) -> Option<&'a [u8]> {
    msgs.iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(|m| m.payload.as_slice())
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or(Value::Null)
}

/// The latest payload of every topic (what a subscriber arriving now would be sent, for
/// retained topics).
fn last_of_each(msgs: &[Msg]) -> BTreeMap<String, Vec<u8>> {
    msgs.iter()
        .map(|m| (m.topic.clone(), m.payload.clone()))
        .collect()
}

fn all_configs_present(msgs: &[Msg], node: &str) -> bool {
    ENTITIES
        .iter()
        .all(|(c, o)| latest(msgs, &config_topic(node, c, o)).is_some_and(|p| !p.is_empty()))
}

fn all_removed(msgs: &[Msg], node: &str) -> bool {
    let mut topics: Vec<String> = ENTITIES
        .iter()
        .map(|(c, o)| config_topic(node, c, o))
        .collect();
    topics.push(state_topic(node));
    topics.push(availability_topic(node));
    topics
        .iter()
        .all(|t| latest(msgs, t).is_some_and(|p| p.is_empty()))
}

#[tokio::test]
async fn home_assistant_discovers_one_device_with_exactly_the_documented_entities() {
    let w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let node = node();
    let msgs = ha
        .wait("every discovery config", |v| all_configs_present(v, &node))
        .await;
    let configs: BTreeMap<String, Value> = last_of_each(&msgs)
        .into_iter()
        .filter(|(t, p)| t.starts_with("homeassistant/") && !p.is_empty())
        .map(|(t, p)| (t, json_of(&p)))
        .collect();
    let found: BTreeSet<(String, String)> = configs
        .keys()
        .map(|t| {
            let parts: Vec<&str> = t.split('/').collect();
            assert_eq!(
                (parts.len(), parts[2], parts[4]),
                (5, node.as_str(), "config"),
                "{t}"
            );
            (parts[1].to_string(), parts[3].to_string())
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ENTITIES
        .iter()
        .map(|(c, o)| (c.to_string(), o.to_string()))
        .collect();
    assert_eq!(
        found, expected,
        "exactly the documented entities, nothing more"
    );

    let mut unique_ids = BTreeSet::new();
    for (topic, c) in &configs {
        for key in ["name", "unique_id", "device", "availability_topic"] {
            assert!(c.get(key).is_some(), "{topic} has no {key}: {c}");
        }
        assert!(
            unique_ids.insert(c["unique_id"].to_string()),
            "{topic}: unique_id repeats"
        );
        let device = &c["device"];
        for key in [
            "identifiers",
            "name",
            "manufacturer",
            "model",
            "sw_version",
            "configuration_url",
        ] {
            assert!(
                device.get(key).is_some(),
                "{topic}: device has no {key}: {device}"
            );
        }
        assert_eq!(device["name"], "Solar charge scheduler");
        assert!(
            device["identifiers"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        );
        assert_eq!(device["sw_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            device["configuration_url"],
            format!("{}/", w.base),
            "the dashboard"
        );
        assert_eq!(c["availability_topic"], availability_topic(&node));
        let component = topic.split('/').nth(1).unwrap();
        if component == "button" {
            assert!(c["command_topic"].is_string(), "{topic}");
        } else {
            assert_eq!(c["state_topic"], state_topic(&node), "{topic}");
            assert!(c["value_template"].is_string(), "{topic}");
        }
        if matches!(component, "number" | "text" | "select" | "switch") {
            assert!(c["command_topic"].is_string(), "{topic}");
        }
    }
    let device_ids: BTreeSet<String> = configs
        .values()
        .map(|c| c["device"]["identifiers"].to_string())
        .collect();
    assert_eq!(device_ids.len(), 1, "one device");

    let online = ha
        .wait_latest(&availability_topic(&node), "availability online", |p| {
            p == b"online"
        })
        .await;
    assert_eq!(online, b"online");
    let state = ha.wait_state("the state", |d| d["soc"] == 50).await;
    assert_eq!(state["charging"], false);
    assert_eq!(state["dongle_online"], true);
    assert_eq!(state["schedule_enabled"], false);
    assert_eq!(state["next_run"], Value::Null);
}

#[tokio::test]
async fn a_target_and_charge_now_from_home_assistant_reach_the_api_and_the_inverter() {
    let w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    ha.wait_state("the state", |d| d["target_soc"] == 80).await;

    ha.press("target_soc", "90").await;
    w.wait_status(|s| s.target_soc().map(|t| t.get()) == Some(90))
        .await;
    let (_, api) = w.get("/api/charging/status").await;
    assert_eq!(api["target_soc"], 90);
    assert_eq!(
        api["is_enabled"], false,
        "a schedule created from a control stays off until switched on"
    );
    ha.wait_state("target 90", |d| d["target_soc"] == 90).await;

    ha.press("charge_now", "PRESS").await;
    let on = w.wait_sim(ac_on).await;
    assert_eq!(
        on.holds.get("ACChgSOCLimit"),
        Some(&solar_charging_backend::sim::dongle::HoldValue::Int(90)),
        "the charge goes to the number's target"
    );
    let (_, api) = w.get("/api/charging/status").await;
    assert_eq!(
        (api["is_charging"].clone(), api["target_soc"].clone()),
        (json!(true), json!(90))
    );
    ha.wait_state("charging", |d| d["charging"] == true).await;

    w.tick(MIN).await;
    w.tick(MIN).await;
    let charging = ha
        .wait_state("energy counted", |d| {
            d["charge_energy_wh"].as_f64().is_some_and(|e| e > 0.0)
        })
        .await;
    assert!(
        charging["battery_power"].as_f64().is_some_and(|p| p > 0.0),
        "{charging}"
    );

    ha.press("stop", "PRESS").await;
    w.wait_sim(|s| !ac_on(s)).await;
    let stopped = ha
        .wait_state("stopped", |d| {
            d["charging"] == false && d["last_stop_reason"] == "cancelled"
        })
        .await;
    assert_eq!(stopped["schedule_enabled"], false);
    let (_, schedule) = w.get("/api/charge/schedule").await;
    assert_eq!(
        schedule,
        Value::Null,
        "stop cancels the schedule, as /api/charging/disable does"
    );
    assert!(
        stopped["charge_energy_wh"]
            .as_f64()
            .is_some_and(|e| e > 0.0),
        "the last charge's energy: {stopped}"
    );
}

#[tokio::test]
async fn the_schedule_controls_change_the_schedule_the_api_shows() {
    let w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    ha.wait_state("the state", |_| true).await;
    ha.press("start_time", "03:15").await;
    ha.press("mode", "once").await;
    ha.press("schedule_enabled", "ON").await;
    w.wait_status(|s| s.schedule.as_ref().is_some_and(|s| s.enabled))
        .await;
    let (_, schedule) = w.get("/api/charge/schedule").await;
    assert_eq!(
        (
            &schedule["start_time"],
            &schedule["mode"],
            &schedule["enabled"],
            &schedule["target_soc"]
        ),
        (&json!("03:15"), &json!("once"), &json!(true), &json!(80))
    );
    assert_eq!(schedule["next_run"], "2026-01-15T03:15:00");
    let state = ha
        .wait_state("the schedule", |d| d["schedule_enabled"] == true)
        .await;
    assert_eq!(state["next_run"], "2026-01-15T03:15:00-08:00");
    assert_eq!(
        (&state["start_time"], &state["mode"]),
        (&json!("03:15"), &json!("once"))
    );
}

#[tokio::test]
async fn bad_values_from_home_assistant_are_refused_and_the_real_values_shown_again() {
    let w = World::start(enabled()).await;
    let (code, _) = w
        .post(
            "/api/charge/schedule",
            json!({"target_soc": 70, "start_time": "03:00", "mode": "recurring"}),
        )
        .await;
    assert_eq!(code, 200);
    let ha = FakeHa::connect(w.broker.port).await;
    ha.wait_state("the schedule", |d| d["target_soc"] == 70)
        .await;

    for (object, bad) in [
        ("target_soc", "5"),
        ("start_time", "25:00"),
        ("mode", "weekly"),
        ("target_soc", "abc"),
    ] {
        let before = ha.seen();
        ha.press(object, bad).await;
        let shown = ha
            .wait_state_after(
                before,
                &format!("the state again after {object} = {bad}"),
                |_| true,
            )
            .await;
        assert_eq!(
            (&shown["target_soc"], &shown["start_time"], &shown["mode"]),
            (&json!(70), &json!("03:00"), &json!("recurring")),
            "{object} = {bad} is refused and the real values shown"
        );
    }
    let (_, schedule) = w.get("/api/charge/schedule").await;
    assert_eq!(
        (
            &schedule["target_soc"],
            &schedule["start_time"],
            &schedule["mode"]
        ),
        (&json!(70), &json!("03:00"), &json!("recurring"))
    );
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing reached the inverter"
    );
}

#[tokio::test]
async fn a_killed_service_is_shown_offline_through_its_last_will() {
    let mut w = World::start(Setup {
        broker: BrokerKind::Mosquitto,
        ..enabled()
    })
    .await;
    let ha = FakeHa::connect(w.broker.port).await;
    let topic = availability_topic(&node());
    ha.wait_latest(&topic, "online", |p| p == b"online").await;
    w.kill();
    ha.wait_latest(&topic, "the last will", |p| p == b"offline")
        .await;

    // A Home Assistant that starts only now still learns it from the retained message.
    let late = FakeHa::connect(w.broker.port).await;
    let msgs = late.settle().await;
    assert_eq!(latest(&msgs, &topic), Some(&b"offline"[..]));

    w.boot().await;
    ha.wait_latest(&topic, "online again after a restart", |p| p == b"online")
        .await;
}

#[tokio::test]
async fn the_embedded_broker_also_delivers_the_last_will() {
    let mut w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let topic = availability_topic(&node());
    ha.wait_latest(&topic, "online", |p| p == b"online").await;
    w.kill();
    ha.wait_latest(&topic, "the last will", |p| p == b"offline")
        .await;
}

#[tokio::test]
async fn a_graceful_stop_also_leaves_the_device_offline() {
    let mut w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let topic = availability_topic(&node());
    ha.wait_latest(&topic, "online", |p| p == b"online").await;
    w.shutdown().await;
    ha.wait_latest(&topic, "offline after a stop", |p| p == b"offline")
        .await;
}

#[tokio::test]
async fn home_assistant_coming_online_brings_the_configs_back() {
    let w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let node = node();
    ha.wait("every config", |v| all_configs_present(v, &node))
        .await;
    // The configs are lost (a broker without persistence restarted, say) ...
    for (c, o) in ENTITIES {
        ha.send(&config_topic(&node, c, o), "", true).await;
    }
    ha.wait("the configs gone", |v| {
        ENTITIES
            .iter()
            .all(|(c, o)| latest(v, &config_topic(&node, c, o)).is_some_and(|p| p.is_empty()))
    })
    .await;
    // ... and Home Assistant restarts.
    ha.send("homeassistant/status", "online", false).await;
    ha.wait("every config again", |v| all_configs_present(v, &node))
        .await;
    let late = FakeHa::connect(w.broker.port).await;
    assert!(
        all_configs_present(&late.settle().await, &node),
        "retained again"
    );
}

#[tokio::test]
async fn the_dongle_shows_offline_once_its_reports_stop() {
    let w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    ha.wait_state("dongle online", |d| d["dongle_online"] == true)
        .await;
    w.silence_dongle().await;
    // Nothing else changes: only the stale deadline can publish this.
    w.clock.advance(Duration::from_secs(91));
    ha.wait_state("dongle offline", |d| d["dongle_online"] == false)
        .await;
    w.sim.set_fault(Fault::None);
    w.tick(Duration::from_secs(5)).await;
    ha.wait_state("dongle online again", |d| d["dongle_online"] == true)
        .await;
}

#[tokio::test]
async fn disabling_the_section_removes_the_device_from_home_assistant() {
    let mut w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let node = node();
    ha.wait("every config", |v| all_configs_present(v, &node))
        .await;
    ha.wait_state("the state", |_| true).await;
    assert!(w.data_path("home_assistant.json").exists());

    w.shutdown().await;
    w.config.home_assistant.enabled = false;
    w.boot().await;
    ha.wait("every entity removed", |v| all_removed(v, &node))
        .await;

    let late = FakeHa::connect(w.broker.port).await;
    let retained: Vec<String> = late
        .settle()
        .await
        .iter()
        .filter(|m| !m.topic.contains("test-marker"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(
        retained.is_empty(),
        "nothing is left on the broker: {retained:?}"
    );

    // The next start has nothing left to remove and publishes nothing.
    w.shutdown().await;
    assert!(
        !w.data_path("home_assistant.json").exists(),
        "the record goes once the device is removed"
    );
    let before = ha.seen();
    w.boot().await;
    let after: Vec<String> = ha.settle().await[before..]
        .iter()
        .filter(|m| !m.topic.contains("test-marker"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test]
async fn a_new_node_id_removes_the_entities_of_the_old_one() {
    let mut w = World::start(enabled()).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let old = node();
    ha.wait("the first node's configs", |v| all_configs_present(v, &old))
        .await;
    w.shutdown().await;
    w.config.home_assistant.node_id = "garage".into();
    w.boot().await;
    ha.wait("the old node removed and the new one announced", |v| {
        all_removed(v, &old) && all_configs_present(v, "garage")
    })
    .await;
}

#[tokio::test]
async fn without_the_section_nothing_is_published_for_home_assistant() {
    let w = World::start(Setup::default()).await;
    w.tick(MIN).await;
    let ha = FakeHa::connect(w.broker.port).await;
    let seen: Vec<String> = ha
        .settle()
        .await
        .iter()
        .filter(|m| !m.topic.contains("test-marker"))
        .map(|m| m.topic.clone())
        .collect();
    assert!(seen.is_empty(), "{seen:?}");
    assert!(!w.data_path("home_assistant.json").exists());
}

#[test]
fn check_config_names_the_home_assistant_node() {
    const BIN: &str = env!("CARGO_BIN_EXE_solar-charging-backend");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let run = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on = run(
        "mqtt: {host: h, dongle_prefix: 'dongle-40:4C:CA:AB:CD:EF'}\nhome_assistant: {enabled: true}\n",
    );
    assert!(
        on.contains("integrations: home assistant (discovery prefix homeassistant, node solar_dongle-40_4C_CA_AB_CD_EF)"),
        "{on}"
    );
    let off = run("mqtt: {host: h, dongle_prefix: d}\n");
    assert!(off.contains("integrations: none"), "{off}");
}
