use std::collections::BTreeSet;

use super::*;
use crate::domain::schedule::Schedule;
use crate::domain::session::{Origin, Phase};
use crate::domain::units::Soc;
use crate::engine::SessionView;

const STALE: std::time::Duration = std::time::Duration::from_secs(90);

fn tz() -> TimeZone {
    TimeZone::get("America/Los_Angeles").unwrap()
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn topics() -> Topics {
    Topics::new("homeassistant", "solar_dongle-1")
}

fn device() -> DeviceInfo {
    DeviceInfo {
        sw_version: "1.2.3".into(),
        configuration_url: Some("http://pi:8088/".into()),
    }
}

fn idle(now: Timestamp) -> Status {
    Status {
        mqtt_connected: true,
        ..Status::new(now)
    }
}

fn target(p: u8) -> TargetSoc {
    TargetSoc::new(p).unwrap()
}

fn schedule(p: u8, time: &str, mode: Mode, enabled: bool, now: Timestamp) -> Schedule {
    Schedule::new(
        target(p),
        LocalTime::parse_hhmm(time).unwrap(),
        mode,
        enabled,
        None,
        None,
        now,
        &tz(),
    )
    .unwrap()
}

fn charging(p: u8, energy: Option<f64>, now: Timestamp) -> SessionView {
    SessionView {
        origin: Origin::ChargeNow,
        target: target(p),
        active_target: Some(target(p)),
        started_at: now,
        deadline: now,
        phase: Phase::Charging,
        charging: true,
        start_soc: Soc::new(40),
        energy_wh: energy,
    }
}

fn parsed(configs: &[(String, Vec<u8>)]) -> Vec<(String, Value)> {
    configs
        .iter()
        .map(|(t, p)| (t.clone(), serde_json::from_slice(p).unwrap()))
        .collect()
}

fn doc(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn there_is_one_config_per_entity_on_its_discovery_topic() {
    let configs = parsed(&configs(&topics(), &device()));
    let found: Vec<(String, String)> = configs
        .iter()
        .map(|(t, _)| {
            let parts: Vec<&str> = t.split('/').collect();
            assert_eq!(parts.len(), 5, "{t}");
            assert_eq!(
                (parts[0], parts[2], parts[4]),
                ("homeassistant", "solar_dongle-1", "config")
            );
            (parts[1].to_string(), parts[3].to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [
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
    ]
    .iter()
    .map(|(c, o)| (c.to_string(), o.to_string()))
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn every_config_names_the_device_availability_and_a_unique_id() {
    let configs = parsed(&configs(&topics(), &device()));
    let mut ids = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (topic, c) in &configs {
        for key in [
            "name",
            "unique_id",
            "device",
            "origin",
            "availability_topic",
            "payload_available",
            "payload_not_available",
        ] {
            assert!(c.get(key).is_some(), "{topic} lacks {key}: {c}");
        }
        assert!(ids.insert(c["unique_id"].as_str().unwrap().to_string()));
        assert!(names.insert(c["name"].as_str().unwrap().to_string()));
        let d = &c["device"];
        assert_eq!(
            d["identifiers"],
            json!(["solar-charging-backend_solar_dongle-1"])
        );
        assert_eq!(d["name"], "Solar charge scheduler");
        assert_eq!(d["sw_version"], "1.2.3");
        assert_eq!(d["configuration_url"], "http://pi:8088/");
        for key in ["manufacturer", "model"] {
            assert!(d[key].is_string(), "{topic}: device.{key}");
        }
        assert_eq!(c["availability_topic"], topics().availability);
        assert_eq!(
            (&c["payload_available"], &c["payload_not_available"]),
            (&json!("online"), &json!("offline"))
        );
        // Deprecated by Home Assistant 2025.10 and removed in 2026.4.
        assert!(c.get("object_id").is_none(), "{topic}");
    }
    assert_eq!(ids.len(), ENTITIES.len());
}

#[test]
fn the_unique_ids_differ_between_nodes() {
    let a = parsed(&configs(
        &Topics::new("homeassistant", "solar_a"),
        &device(),
    ));
    let b = parsed(&configs(
        &Topics::new("homeassistant", "solar_b"),
        &device(),
    ));
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        assert_ne!(x["unique_id"], y["unique_id"]);
        assert_ne!(x["device"]["identifiers"], y["device"]["identifiers"]);
    }
}

#[test]
fn readers_have_a_state_topic_and_template_and_controls_a_command_topic() {
    let t = topics();
    for (topic, c) in parsed(&configs(&t, &device())) {
        let component = topic.split('/').nth(1).unwrap();
        let object = topic.split('/').nth(3).unwrap();
        if component == "button" {
            assert!(c.get("state_topic").is_none(), "{topic}");
            assert_eq!(c["payload_press"], "PRESS");
        } else {
            assert_eq!(c["state_topic"], t.state, "{topic}");
            let template = c["value_template"].as_str().unwrap();
            assert!(template.contains("value_json."), "{topic}: {template}");
        }
        let is_control = matches!(
            component,
            "number" | "text" | "select" | "switch" | "button"
        );
        assert_eq!(c.get("command_topic").is_some(), is_control, "{topic}");
        if is_control {
            assert_eq!(c["command_topic"], t.command(object));
            assert_eq!(
                t.command_object(c["command_topic"].as_str().unwrap()),
                Some(object)
            );
        }
    }
}

#[test]
fn each_kind_carries_its_own_keys() {
    let by_object: std::collections::BTreeMap<String, Value> =
        parsed(&configs(&topics(), &device()))
            .into_iter()
            .map(|(t, c)| (t.split('/').nth(3).unwrap().to_string(), c))
            .collect();
    let soc = &by_object["soc"];
    assert_eq!(
        (
            &soc["device_class"],
            &soc["unit_of_measurement"],
            &soc["state_class"]
        ),
        (&json!("battery"), &json!("%"), &json!("measurement"))
    );
    let power = &by_object["battery_power"];
    assert_eq!(
        (&power["device_class"], &power["unit_of_measurement"]),
        (&json!("power"), &json!("W"))
    );
    let next = &by_object["next_run"];
    assert_eq!(next["device_class"], "timestamp");
    assert!(next.get("unit_of_measurement").is_none() && next.get("state_class").is_none());
    let energy = &by_object["charge_energy"];
    assert_eq!(
        (
            &energy["device_class"],
            &energy["unit_of_measurement"],
            &energy["state_class"]
        ),
        (&json!("energy"), &json!("Wh"), &json!("total_increasing"))
    );
    assert_eq!(by_object["charging"]["device_class"], "battery_charging");
    assert_eq!(by_object["dongle_online"]["device_class"], "connectivity");
    let number = &by_object["target_soc"];
    assert_eq!(
        (&number["min"], &number["max"], &number["step"]),
        (&json!(10), &json!(100), &json!(1))
    );
    let text = &by_object["start_time"];
    assert_eq!(text["pattern"], HHMM_PATTERN);
    assert!(
        text.get("min")
            .is_none_or(|m| m.as_u64() < text["max"].as_u64())
    );
    assert_eq!(by_object["mode"]["options"], json!(["once", "recurring"]));
    let switch = &by_object["schedule_enabled"];
    assert_eq!(
        (&switch["payload_on"], &switch["payload_off"]),
        (&json!("ON"), &json!("OFF"))
    );
}

#[test]
fn every_topic_segment_is_one_home_assistant_accepts() {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    for (topic, _) in configs(&topics(), &device()) {
        let parts: Vec<&str> = topic.split('/').collect();
        assert!(ok(parts[2]) && ok(parts[3]), "{topic}");
    }
}

#[test]
fn without_a_known_address_the_configuration_url_is_left_out() {
    let d = DeviceInfo {
        sw_version: "1".into(),
        configuration_url: None,
    };
    for (_, c) in parsed(&configs(&topics(), &d)) {
        assert!(c["device"].get("configuration_url").is_none());
    }
}

#[test]
fn removal_empties_every_config_the_state_and_the_availability() {
    let t = topics();
    let owned = t.owned();
    assert_eq!(owned.len(), ENTITIES.len() + 2);
    assert!(owned.contains(&t.state) && owned.contains(&t.availability));
    let empties = removals(owned.clone());
    assert_eq!(
        empties.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        owned
    );
    assert!(empties.iter().all(|(_, p)| p.is_empty()));
}

#[test]
fn command_topics_are_recognised_only_under_the_node() {
    let t = topics();
    assert_eq!(
        t.command_filter(),
        "solar-charging-backend/solar_dongle-1/set/+"
    );
    assert_eq!(
        t.command_object("solar-charging-backend/solar_dongle-1/set/stop"),
        Some("stop")
    );
    assert_eq!(
        t.command_object("solar-charging-backend/solar_dongle-1/set/"),
        None
    );
    assert_eq!(
        t.command_object("solar-charging-backend/solar_dongle-1/set/a/b"),
        None
    );
    assert_eq!(
        t.command_object("solar-charging-backend/other/set/stop"),
        None
    );
    assert_eq!(t.ha_status, "homeassistant/status");
}

#[test]
fn the_state_of_an_idle_service_with_nothing_known_shows_nulls_and_the_defaults() {
    let now = at("2026-01-15T09:00:00Z");
    let d = doc(&state(
        &idle(now),
        &Remembered::default(),
        &LastCharge::default(),
        now,
        &tz(),
    ));
    assert_eq!(
        d,
        json!({
            "soc": null, "battery_power": null, "charging": false, "dongle_online": false,
            "next_run": null, "last_stop_reason": null, "charge_energy_wh": null,
            "target_soc": 80, "start_time": "02:30", "mode": "recurring", "schedule_enabled": false,
        })
    );
}

#[test]
fn the_state_during_a_charge_shows_the_session_and_the_schedule() {
    let now = at("2026-01-15T09:00:00Z");
    let mut st = idle(now);
    st.soc = Soc::new(52);
    st.battery_power = Some(3500.0);
    st.last_telemetry = Some(now);
    st.last_message = Some(now);
    st.dongle_online = Some(true);
    st.schedule = Some(schedule(90, "02:30", Mode::Recurring, true, now));
    st.session = Some(charging(90, Some(1234.56), now));
    let last = LastCharge {
        stop_reason: Some(StopReason::Cutoff),
        energy_wh: Some(9.0),
    };
    let d = doc(&state(&st, &Remembered::default(), &last, now, &tz()));
    assert_eq!(d["soc"], 52);
    assert_eq!(d["battery_power"], 3500.0);
    assert_eq!(d["charging"], true);
    assert_eq!(d["dongle_online"], true);
    assert_eq!(d["next_run"], "2026-01-15T02:30:00-08:00");
    assert_eq!(
        d["charge_energy_wh"], 1234.6,
        "the running charge, not the last one"
    );
    assert_eq!(d["last_stop_reason"], "cutoff");
    assert_eq!(
        (&d["target_soc"], &d["start_time"]),
        (&json!(90), &json!("02:30"))
    );
    assert_eq!(
        (&d["mode"], &d["schedule_enabled"]),
        (&json!("recurring"), &json!(true))
    );
}

#[test]
fn a_charge_that_has_counted_nothing_yet_shows_zero_energy_and_after_it_the_last_charge() {
    let now = at("2026-01-15T09:00:00Z");
    let mut st = idle(now);
    st.session = Some(charging(80, None, now));
    let last = LastCharge {
        stop_reason: None,
        energy_wh: Some(4120.5),
    };
    let d = doc(&state(&st, &Remembered::default(), &last, now, &tz()));
    assert_eq!(d["charge_energy_wh"], 0.0);
    st.session = None;
    st.last_stop = Some((StopReason::TargetReached, now, "done".into()));
    let d = doc(&state(&st, &Remembered::default(), &last, now, &tz()));
    assert_eq!(d["charge_energy_wh"], 4120.5);
    assert_eq!(
        d["last_stop_reason"], "target_reached",
        "the status's stop wins"
    );
}

#[test]
fn the_dongle_goes_offline_in_the_state_once_its_last_message_is_too_old() {
    let now = at("2026-01-15T09:00:00Z");
    let mut st = idle(now);
    st.stale_after = STALE;
    st.dongle_online = Some(true);
    st.last_telemetry = Some(now);
    st.last_message = Some(now);
    let deadline = st.online_until().unwrap();
    assert_eq!(deadline, at("2026-01-15T09:01:30Z"));
    let shown = |st: &Status, t| {
        doc(&state(
            st,
            &Remembered::default(),
            &LastCharge::default(),
            t,
            &tz(),
        ))["dongle_online"]
            .clone()
    };
    assert_eq!(shown(&st, at("2026-01-15T09:01:29Z")), true);
    assert_eq!(shown(&st, deadline), false);
    st.dongle_online = Some(false);
    assert_eq!(shown(&st, now), false);
    assert_eq!(st.online_until(), None, "no deadline while offline");
}

#[test]
fn home_assistant_and_the_api_agree_on_a_dongle_heard_only_by_its_heartbeat() {
    // Telemetry an hour old, but a heartbeat a moment ago: the API counts the dongle online
    // (the stale stop of a charge counts every message too), and so does Home Assistant.
    let now = at("2026-01-15T09:00:00Z");
    let mut st = idle(now);
    st.stale_after = STALE;
    st.dongle_online = Some(true);
    st.last_telemetry = Some(at("2026-01-15T08:00:00Z"));
    st.last_message = Some(at("2026-01-15T08:59:50Z"));
    let d = doc(&state(
        &st,
        &Remembered::default(),
        &LastCharge::default(),
        now,
        &tz(),
    ));
    assert!(st.dongle_online_at(now));
    assert_eq!(d["dongle_online"], true);
    assert_eq!(st.online_until(), Some(at("2026-01-15T09:01:20Z")));
}

#[test]
fn controls_show_the_running_target_then_the_schedule_then_what_was_remembered() {
    let now = at("2026-01-15T09:00:00Z");
    let mut st = idle(now);
    let mut memory = Remembered::default();
    assert_eq!(controls(&st, &memory).target, default_target());
    st.schedule = Some(schedule(70, "01:15", Mode::Once, false, now));
    memory.update(&st);
    let c = controls(&st, &memory);
    assert_eq!(
        (c.target.get(), c.time.to_string(), c.mode, c.enabled),
        (70, "01:15".into(), Mode::Once, false)
    );
    st.session = Some(charging(95, None, now));
    assert_eq!(controls(&st, &memory).target.get(), 95);
    st.schedule = None;
    st.session = None;
    let c = controls(&st, &memory);
    assert_eq!(
        (c.target.get(), c.time.to_string(), c.mode, c.enabled),
        (70, "01:15".into(), Mode::Once, false),
        "the schedule is gone; the controls keep its values"
    );
}

#[test]
fn the_dashboard_url_uses_the_host_name_when_the_server_listens_everywhere() {
    assert_eq!(
        dashboard_url("192.168.1.5", 8088, Some("pi")).as_deref(),
        Some("http://192.168.1.5:8088/")
    );
    assert_eq!(
        dashboard_url("0.0.0.0", 8088, Some("pi\n")).as_deref(),
        Some("http://pi:8088/")
    );
    assert_eq!(
        dashboard_url("::", 9000, Some("nas")).as_deref(),
        Some("http://nas:9000/")
    );
    assert_eq!(dashboard_url("0.0.0.0", 8088, None), None);
    assert_eq!(
        dashboard_url("fe80::1", 8088, None).as_deref(),
        Some("http://[fe80::1]:8088/")
    );
}
