//! What Home Assistant reads, built from plain values: the topics, the retained discovery
//! configs of the one device and its entities, and the state document they all read from.
//!
//! Pure: no IO and no clock. The task in [`super`] publishes what these return.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};

use crate::domain::session::StopReason;
use crate::domain::units::{LocalTime, Mode, TargetSoc};
use crate::engine::Status;

/// The root of the service's own topics: `solar-charging-backend/<node_id>/...`.
pub const TOPIC_ROOT: &str = "solar-charging-backend";
/// Availability payloads (Home Assistant's defaults, also written into every config).
pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";
/// What Home Assistant publishes on `<discovery_prefix>/status` when it (re)starts.
pub const HA_BIRTH: &str = "online";
/// The device's name as Home Assistant lists it.
pub const DEVICE_NAME: &str = "Solar charge scheduler";

/// What the controls show, and what a schedule created from Home Assistant starts from, when
/// there is no schedule and nothing to remember: the contract's example values.
pub const DEFAULT_TARGET_PERCENT: u8 = 80;
pub const DEFAULT_START: LocalTime = match LocalTime::new(2, 30) {
    Some(t) => t,
    None => panic!("02:30 is a valid time"),
};
pub const DEFAULT_MODE: Mode = Mode::Recurring;

pub fn default_target() -> TargetSoc {
    TargetSoc::new(DEFAULT_TARGET_PERCENT).expect("the default target is in range")
}

/// The `HH:MM` rule the start-time text entity enforces in Home Assistant's UI (the service
/// checks again, with the HTTP API's validation).
pub const HHMM_PATTERN: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";

/// Every topic of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub discovery_prefix: String,
    pub node_id: String,
    /// The one retained JSON document every entity reads.
    pub state: String,
    /// `online` / `offline` (retained; `offline` is the connection's last will).
    pub availability: String,
    /// Home Assistant's birth and last-will topic.
    pub ha_status: String,
    /// `<root>/<node>/set/`; a control's command topic is this plus its object id.
    command_base: String,
}

impl Topics {
    pub fn new(discovery_prefix: &str, node_id: &str) -> Topics {
        let base = format!("{TOPIC_ROOT}/{node_id}");
        Topics {
            discovery_prefix: discovery_prefix.to_string(),
            node_id: node_id.to_string(),
            state: format!("{base}/state"),
            availability: format!("{base}/availability"),
            ha_status: format!("{discovery_prefix}/status"),
            command_base: format!("{base}/set/"),
        }
    }

    pub fn config(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.discovery_prefix, self.node_id
        )
    }

    pub fn command(&self, object_id: &str) -> String {
        format!("{}{object_id}", self.command_base)
    }

    /// The filter every command topic matches.
    pub fn command_filter(&self) -> String {
        format!("{}+", self.command_base)
    }

    /// The object id a command topic is for, if `topic` is one of ours.
    pub fn command_object<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(&self.command_base)
            .filter(|o| !o.is_empty() && !o.contains('/'))
    }

    /// Every retained topic the service publishes for this node: what must be emptied to
    /// remove it from Home Assistant and from the broker.
    pub fn owned(&self) -> Vec<String> {
        let mut all: Vec<String> = ENTITIES
            .iter()
            .map(|e| self.config(e.component, e.object_id))
            .collect();
        all.push(self.state.clone());
        all.push(self.availability.clone());
        all
    }
}

/// One entity of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entity {
    pub component: &'static str,
    pub object_id: &'static str,
    /// The entity's name; Home Assistant shows it after the device's name.
    pub name: &'static str,
}

const fn entity(component: &'static str, object_id: &'static str, name: &'static str) -> Entity {
    Entity {
        component,
        object_id,
        name,
    }
}

/// The device's entities, in the order Home Assistant lists them by kind.
pub const ENTITIES: [Entity; 13] = [
    entity("sensor", "soc", "Battery SOC"),
    entity("sensor", "battery_power", "Battery power"),
    entity("sensor", "next_run", "Next run"),
    entity("sensor", "last_stop_reason", "Last stop reason"),
    entity("sensor", "charge_energy", "Charge energy"),
    entity("binary_sensor", "charging", "Charging"),
    entity("binary_sensor", "dongle_online", "Dongle online"),
    entity("number", "target_soc", "Target SOC"),
    entity("text", "start_time", "Start time"),
    entity("select", "mode", "Mode"),
    entity("switch", "schedule_enabled", "Schedule enabled"),
    entity("button", "charge_now", "Charge now"),
    entity("button", "stop", "Stop charging"),
];

/// The device as Home Assistant's device page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub sw_version: String,
    /// The dashboard; left out when no reachable address is known.
    pub configuration_url: Option<String>,
}

/// The retained discovery config of every entity, as (topic, JSON) pairs.
pub fn configs(topics: &Topics, device: &DeviceInfo) -> Vec<(String, Vec<u8>)> {
    let mut dev = json!({
        "identifiers": [format!("{TOPIC_ROOT}_{}", topics.node_id)],
        "name": DEVICE_NAME,
        "manufacturer": "solar-charging-backend",
        "model": "Charge scheduler for LuxPower/EG4 inverters",
        "sw_version": device.sw_version,
    });
    if let Some(url) = &device.configuration_url {
        dev["configuration_url"] = json!(url);
    }
    ENTITIES
        .iter()
        .map(|e| {
            let mut config = Map::new();
            config.insert("name".into(), json!(e.name));
            config.insert(
                "unique_id".into(),
                json!(format!("{}_{}", topics.node_id, e.object_id)),
            );
            config.insert("device".into(), dev.clone());
            config.insert(
                "origin".into(),
                json!({"name": "solar-charging-backend", "sw_version": device.sw_version}),
            );
            config.insert("availability_topic".into(), json!(topics.availability));
            config.insert("payload_available".into(), json!(ONLINE));
            config.insert("payload_not_available".into(), json!(OFFLINE));
            config.insert("qos".into(), json!(1));
            if let Value::Object(own) = specifics(e.object_id, topics) {
                config.extend(own);
            }
            let payload = serde_json::to_vec(&Value::Object(config))
                .expect("a JSON object always serialises");
            (topics.config(e.component, e.object_id), payload)
        })
        .collect()
}

/// Each entity's own keys: where it reads its value in the state document and, for controls,
/// where it sends commands.
fn specifics(object_id: &str, t: &Topics) -> Value {
    let state = &t.state;
    let read = |field: &str| format!("{{{{ value_json.{field} }}}}");
    let on_off = |field: &str| format!("{{{{ 'ON' if value_json.{field} else 'OFF' }}}}");
    match object_id {
        "soc" => json!({
            "state_topic": state, "value_template": read("soc"),
            "device_class": "battery", "unit_of_measurement": "%", "state_class": "measurement",
        }),
        "battery_power" => json!({
            "state_topic": state, "value_template": read("battery_power"),
            "device_class": "power", "unit_of_measurement": "W", "state_class": "measurement",
        }),
        "next_run" => json!({
            "state_topic": state, "value_template": read("next_run"),
            "device_class": "timestamp",
        }),
        "last_stop_reason" => json!({
            "state_topic": state, "value_template": read("last_stop_reason"),
            "icon": "mdi:battery-clock-outline",
        }),
        "charge_energy" => json!({
            "state_topic": state, "value_template": read("charge_energy_wh"),
            "device_class": "energy", "unit_of_measurement": "Wh",
            // Each charge counts up from zero: a drop is a new charge, which is what
            // total_increasing means to Home Assistant's statistics.
            "state_class": "total_increasing",
        }),
        "charging" => json!({
            "state_topic": state, "value_template": on_off("charging"),
            "payload_on": "ON", "payload_off": "OFF", "device_class": "battery_charging",
        }),
        "dongle_online" => json!({
            "state_topic": state, "value_template": on_off("dongle_online"),
            "payload_on": "ON", "payload_off": "OFF", "device_class": "connectivity",
            "entity_category": "diagnostic",
        }),
        "target_soc" => json!({
            "state_topic": state, "value_template": read("target_soc"),
            "command_topic": t.command("target_soc"),
            "min": TargetSoc::MIN, "max": TargetSoc::MAX, "step": 1, "mode": "slider",
            "unit_of_measurement": "%", "icon": "mdi:battery-charging-high",
        }),
        "start_time" => json!({
            "state_topic": state, "value_template": read("start_time"),
            "command_topic": t.command("start_time"),
            // Home Assistant refuses min >= max, so only the upper bound is given.
            "pattern": HHMM_PATTERN, "max": 5, "icon": "mdi:clock-start",
        }),
        "mode" => json!({
            "state_topic": state, "value_template": read("mode"),
            "command_topic": t.command("mode"),
            "options": [Mode::Once.as_str(), Mode::Recurring.as_str()],
            "icon": "mdi:calendar-sync",
        }),
        "schedule_enabled" => json!({
            "state_topic": state, "value_template": on_off("schedule_enabled"),
            "command_topic": t.command("schedule_enabled"),
            "payload_on": "ON", "payload_off": "OFF", "icon": "mdi:calendar-clock",
        }),
        "charge_now" => json!({
            "command_topic": t.command("charge_now"), "payload_press": "PRESS",
            "icon": "mdi:battery-charging",
        }),
        "stop" => json!({
            "command_topic": t.command("stop"), "payload_press": "PRESS",
            "icon": "mdi:battery-off-outline",
        }),
        _ => json!({}),
    }
}

/// Empty retained payloads for `topics`: each removes an entity from Home Assistant (for a
/// config topic) or a retained value from the broker.
pub fn removals(topics: impl IntoIterator<Item = String>) -> Vec<(String, Vec<u8>)> {
    topics.into_iter().map(|t| (t, Vec::new())).collect()
}

/// Values the service remembers for the controls while there is no schedule, so that they keep
/// showing what the user last chose (in memory only: a restart forgets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    pub target: Option<TargetSoc>,
    pub time: Option<LocalTime>,
    pub mode: Option<Mode>,
}

impl Remembered {
    pub fn update(&mut self, status: &Status) {
        if let Some(s) = &status.schedule {
            self.target = Some(s.target);
            self.time = Some(s.time);
            self.mode = Some(s.mode);
        }
        if let Some(t) = status.session.as_ref().and_then(|s| s.active_target) {
            self.target = Some(t);
        }
    }
}

/// What the four schedule controls show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// The running charge's target, else the schedule's, else the last one seen, else 80.
    /// "Charge now" charges to this.
    pub target: TargetSoc,
    pub time: LocalTime,
    pub mode: Mode,
    /// The schedule's `enabled`; off when there is none.
    pub enabled: bool,
}

pub fn controls(status: &Status, memory: &Remembered) -> Controls {
    let schedule = status.schedule.as_ref();
    Controls {
        target: status
            .session
            .as_ref()
            .and_then(|s| s.active_target)
            .or(schedule.map(|s| s.target))
            .or(memory.target)
            .unwrap_or_else(default_target),
        time: schedule
            .map(|s| s.time)
            .or(memory.time)
            .unwrap_or(DEFAULT_START),
        mode: schedule
            .map(|s| s.mode)
            .or(memory.mode)
            .unwrap_or(DEFAULT_MODE),
        enabled: schedule.is_some_and(|s| s.enabled),
    }
}

/// The last finished charge, from the history (it survives restarts; the status does not).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastCharge {
    pub stop_reason: Option<StopReason>,
    pub energy_wh: Option<f64>,
}

/// The retained state document every entity reads.
pub fn state(
    status: &Status,
    memory: &Remembered,
    last: &LastCharge,
    now: Timestamp,
    tz: &TimeZone,
) -> Vec<u8> {
    let c = controls(status, memory);
    let energy = match &status.session {
        // A running charge counts from zero.
        Some(s) => Some(s.energy_wh.unwrap_or(0.0)),
        None => last.energy_wh,
    };
    let doc = json!({
        "soc": status.soc.map(|s| s.get()),
        "battery_power": status.battery_power,
        "charging": status.is_charging(),
        // The API's own answer, so that both always agree.
        "dongle_online": status.dongle_online_at(now),
        "next_run": status.next_run().map(|t| offset_datetime(t, tz)),
        "last_stop_reason": status
            .last_stop
            .as_ref()
            .map(|(r, _, _)| *r)
            .or(last.stop_reason)
            .map(StopReason::as_str),
        "charge_energy_wh": energy.map(|e| (e * 10.0).round() / 10.0),
        "target_soc": c.target.get(),
        "start_time": c.time.to_string(),
        "mode": c.mode.as_str(),
        "schedule_enabled": c.enabled,
    });
    serde_json::to_vec(&doc).expect("a JSON object always serialises")
}

/// ISO 8601 with the zone's offset, as a timestamp sensor needs (`2026-01-15T02:30:00-08:00`).
fn offset_datetime(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned_datetime(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The dashboard's address for the device page: `server.host` when it names this machine's
/// address, else this machine's host name (a wildcard bind address is not reachable).
pub fn dashboard_url(host: &str, port: u16, hostname: Option<&str>) -> Option<String> {
    let wildcard = matches!(host, "" | "0.0.0.0" | "::" | "[::]");
    let host = if wildcard {
        hostname.map(str::trim).filter(|h| !h.is_empty())?
    } else {
        host
    };
    if host.contains(':') && !host.starts_with('[') {
        Some(format!("http://[{host}]:{port}/"))
    } else {
        Some(format!("http://{host}:{port}/"))
    }
}

#[cfg(test)]
#[path = "discovery_tests.rs"]
mod tests;
