//! The simulated dongle without a network: the Monitor My Solar firmware's side of the
//! protocol in front of an [`Inverter`] model, as plain calls. Messages come in through
//! [`DongleModel::receive`]; what it publishes collects in an outbox the caller drains; time is
//! read from the [`Clock`] it was given, so a driver decides when things happen. The MQTT
//! driver in [`super`] and the night simulator both run it.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Fault, Firmware, Reply, SimConfig, SimState, WriteRecord};
use crate::clock::{Clock, Mono};
use crate::sim::inverter::{HoldValue, Inverter};

/// How often the MQTT driver steps the physics (for its state watchers).
const TICK: Duration = Duration::from_secs(1);
/// The shortest period of anything the dongle sends by itself.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

const V43_VERSION: &str = "4.3.0.111S3";
const LEGACY_VERSION: &str = "4.2.1.98S3";

/// The topics (under the prefix) the dongle listens to.
pub const SUBSCRIPTIONS: [&str; 3] = ["update", "snapshot/request", "firmwarecode/request"];

/// One message the dongle publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

struct LateWrite {
    due: Mono,
    setting: String,
    value: Value,
}

/// The dongle and the inverter behind it, without a network: messages in through
/// [`DongleModel::receive`], out through [`DongleModel::take_outbox`], time read from the
/// clock it was given.
pub struct DongleModel {
    cfg: SimConfig,
    clock: Clock,
    /// What to publish, in order.
    outbox: Vec<Outgoing>,
    /// How the next write is treated, whatever the standing fault.
    write_fault: Option<Fault>,
    /// A SOC the next telemetry reports instead of the model's (a glitch).
    outlier: Option<u8>,
    model: Inverter,
    fault: Fault,
    connected: bool,
    /// The SOC reported while [`Fault::SocFrozen`] is on.
    frozen_soc: Option<u8>,
    /// Last full telemetry sent on 4.3, to compute deltas; `None` makes the next one full.
    last_input: Option<Map<String, Value>>,
    garbage_next: usize,
    writes: Vec<WriteRecord>,
    telemetry_sent: u64,
    snapshots_answered: u64,
    late: Vec<LateWrite>,
    /// Physics has been integrated up to this monotonic instant.
    stepped_to: Mono,
    started: Mono,
    next_tick: Mono,
    next_input: Mono,
    next_hold: Mono,
    next_status: Mono,
}

pub(super) fn topic(prefix: &str, suffix: &str) -> String {
    format!("{prefix}/{suffix}")
}

impl DongleModel {
    pub fn new(cfg: SimConfig, clock: Clock) -> DongleModel {
        let mut model = Inverter::new(
            cfg.initial_soc,
            cfg.capacity_wh,
            cfg.max_charge_w,
            &cfg.fw_code,
        );
        model.set_idle_discharge_w(cfg.idle_discharge_w);
        let now = clock.mono();
        let mut m = DongleModel {
            cfg,
            clock,
            outbox: Vec::new(),
            write_fault: None,
            outlier: None,
            model,
            fault: Fault::None,
            connected: false,
            frozen_soc: None,
            last_input: None,
            garbage_next: 0,
            writes: Vec::new(),
            telemetry_sent: 0,
            snapshots_answered: 0,
            late: Vec::new(),
            stepped_to: now,
            started: now,
            next_tick: now + TICK,
            next_input: now,
            next_hold: now,
            next_status: now,
        };
        m.refresh();
        m
    }

    /// What to publish since the last call, in order.
    pub fn take_outbox(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    pub fn cfg_prefix(&self) -> &str {
        &self.cfg.prefix
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    /// The inverter as it is now (physics not brought up to date).
    pub fn inverter(&self) -> &Inverter {
        &self.model
    }

    /// Sets the true SOC (clamped to 0..=100).
    pub fn set_soc(&mut self, soc: f64) {
        self.step_to_now();
        self.model.set_soc(soc);
        self.refresh();
    }

    /// Sets a register directly, as another app or the installer would. On 4.3 the change is
    /// announced like any other.
    pub fn set_hold(&mut self, name: &str, value: HoldValue) -> Result<(), String> {
        self.step_to_now();
        let before = self.model.hold(name).cloned();
        let canonical = self.model.set_hold(name, value.clone())?;
        self.after_change(canonical, &value, before.as_ref() != Some(&value));
        Ok(())
    }

    pub fn set_charge_power(&mut self, max_w: f64) {
        self.step_to_now();
        self.model.set_max_charge_w(max_w);
        self.refresh();
    }

    /// Publishes one telemetry message now (a full `input_state` on 4.3).
    pub fn publish_telemetry_now(&mut self) {
        self.step_to_now();
        self.refresh();
        self.publish_telemetry(true);
    }

    /// Treats the next write received as `fault` would (answers it, rejects it, applies it
    /// late or ignores it), whatever the standing fault.
    pub fn treat_next_write(&mut self, fault: Fault) {
        self.write_fault = Some(fault);
    }

    /// The next telemetry reports `soc`, once, whatever the battery holds.
    pub fn glitch_soc(&mut self, soc: u8) {
        self.outlier = Some(soc);
    }

    /// Writes received without an answer that it will still apply.
    pub fn late_writes(&self) -> usize {
        self.late.len()
    }

    /// Brings the battery up to now without publishing anything.
    pub fn catch_up(&mut self) {
        self.step_to_now();
        self.refresh();
    }

    /// Forgets the writes still to be applied late (the dongle is going away).
    pub fn drop_late_writes(&mut self) {
        self.late.clear();
    }

    fn input_interval(&self) -> Duration {
        self.cfg.input_interval.max(MIN_INTERVAL)
    }

    fn status_interval(&self) -> Duration {
        self.cfg.status_interval.max(MIN_INTERVAL)
    }

    fn hold_interval(&self) -> Option<Duration> {
        match self.cfg.firmware {
            Firmware::Legacy => self.cfg.hold_interval.map(|d| d.max(MIN_INTERVAL)),
            Firmware::V43 => None,
        }
    }

    fn local_now(&self) -> (u8, u8) {
        let dt = self.cfg.tz.to_datetime(self.clock.now());
        (dt.hour() as u8, dt.minute() as u8)
    }

    /// Integrates physics up to `target` (a monotonic instant not after now), judging the
    /// windows by the wall clock of that stretch.
    fn step_to(&mut self, target: Mono) {
        let now = self.clock.mono();
        let target = target.min(now);
        let elapsed = target.saturating_since(self.stepped_to);
        if !elapsed.is_zero() {
            let back = now.saturating_since(self.stepped_to);
            let from = self
                .clock
                .now()
                .saturating_sub(back)
                .unwrap_or(Timestamp::UNIX_EPOCH);
            self.model
                .run_for(from, elapsed, self.cfg.speed, &self.cfg.tz);
            self.stepped_to = target;
        }
    }

    fn step_to_now(&mut self) {
        self.step_to(self.clock.mono());
    }

    /// Re-evaluates the charge conditions at the current local time.
    fn refresh(&mut self) {
        let local = self.local_now();
        self.model.step(Duration::ZERO, local);
    }

    fn reported_soc(&self) -> u8 {
        self.frozen_soc.unwrap_or_else(|| self.model.reported_soc())
    }

    fn telemetry(&self) -> Map<String, Value> {
        let mut t = self.model.telemetry();
        t.insert("SOC".into(), Value::from(self.reported_soc()));
        t
    }

    fn ts(&self) -> i64 {
        self.clock.now().as_second()
    }

    /// Queues a publish; returns whether it was queued. Like a real dongle, nothing is
    /// buffered while the broker is unreachable.
    fn publish(&mut self, suffix: &str, payload: impl Into<Vec<u8>>, retain: bool) -> bool {
        if !self.connected {
            tracing::debug!(suffix, "not connected, dropping publish");
            return false;
        }
        self.outbox.push(Outgoing {
            topic: topic(&self.cfg.prefix, suffix),
            payload: payload.into(),
            retain,
        });
        true
    }

    fn publish_json(&mut self, suffix: &str, v: &Value) -> bool {
        self.publish(suffix, v.to_string(), false)
    }

    fn input_topic(&self) -> &'static str {
        match self.cfg.firmware {
            Firmware::Legacy => "inputbank1",
            Firmware::V43 => "input",
        }
    }

    /// Publishes telemetry; on 4.3 only the changed keys unless `full` (or nothing changed and
    /// `full` is false, in which case nothing is sent, as the real firmware does).
    fn publish_telemetry(&mut self, full: bool) {
        if !self.fault.talks() {
            return;
        }
        if self.fault == Fault::Garbage {
            let payload = self.next_garbage();
            if self.publish(self.input_topic(), payload, false) {
                self.telemetry_sent += 1;
            }
            return;
        }
        let mut now = self.telemetry();
        if let Some(soc) = self.outlier.take() {
            now.insert("SOC".into(), Value::from(soc));
        }
        let msg = match self.cfg.firmware {
            Firmware::Legacy => json!({
                "Serialnumber": self.cfg.serial,
                "payload": now,
                "events": {},
            }),
            Firmware::V43 => {
                let (event, payload) = match &self.last_input {
                    Some(last) if !full => {
                        let delta: Map<String, Value> = now
                            .iter()
                            .filter(|(k, v)| last.get(*k) != Some(*v))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        if delta.is_empty() {
                            return;
                        }
                        ("input_delta", delta)
                    }
                    _ => ("input_state", now.clone()),
                };
                self.last_input = Some(now);
                json!({"event": event, "ts": self.ts(), "payload": payload})
            }
        };
        if self.publish_json(self.input_topic(), &msg) {
            self.telemetry_sent += 1;
        }
    }

    fn publish_holdbank(&mut self) {
        if !self.fault.talks() {
            return;
        }
        let mut bank = self.model.hold_map();
        bank.retain(|k, _| {
            !self
                .cfg
                .bank_omits
                .iter()
                .any(|o| o.eq_ignore_ascii_case(k))
        });
        let msg = json!({
            "Serialnumber": self.cfg.serial,
            "payload": bank,
            "events": {},
        });
        self.publish_json("holdbank1", &msg);
    }

    fn publish_status(&mut self) {
        if !self.fault.talks() {
            return;
        }
        let version = match self.cfg.firmware {
            Firmware::Legacy => LEGACY_VERSION,
            Firmware::V43 => V43_VERSION,
        };
        let uptime = self.clock.mono().saturating_since(self.started).as_secs();
        let msg =
            json!({"version": version, "uptime": uptime, "rssi": -58, "serial": self.cfg.serial});
        self.publish_json("status", &msg);
    }

    /// Cycles through the kinds of junk a broken dongle or a foreign publisher can produce.
    fn next_garbage(&mut self) -> Vec<u8> {
        let kind = self.garbage_next % 7;
        self.garbage_next += 1;
        let envelope = |payload: Value| -> Vec<u8> {
            match self.cfg.firmware {
                Firmware::Legacy => {
                    json!({"Serialnumber": self.cfg.serial, "payload": payload, "events": {}})
                }
                Firmware::V43 => {
                    json!({"event": "input_delta", "ts": self.ts(), "payload": payload})
                }
            }
            .to_string()
            .into_bytes()
        };
        match kind {
            0 => vec![0xFF, 0xFE, 0x00, 0xC3, 0x28, 0x80],
            1 => b"SOC=75;Pcharge=3000".to_vec(),
            2 => {
                // One megabyte of an unterminated JSON string.
                let mut huge = br#"{"SOC":""#.to_vec();
                huge.resize(1_000_000, b'A');
                huge
            }
            3 => envelope(
                json!({"SOC": "full", "Pcharge": [1, 2], "Pdischarge": {"w": 1}, "Vbat": null}),
            ),
            4 => envelope(json!({"SOC": 250, "Pcharge": -5000, "Pdischarge": 1e300, "Vbat": -1})),
            5 => b"[1,2,3]".to_vec(),
            _ => Vec::new(),
        }
    }

    /// The broker accepted the connection: announces itself and sends everything once.
    pub fn on_connected(&mut self) {
        self.connected = true;
        // The driver subscribes first (see [`SUBSCRIPTIONS`]), so whoever sees "online" can
        // rely on the dongle already listening.
        let availability = if self.fault == Fault::Offline {
            "offline"
        } else {
            "online"
        };
        self.publish("availability", availability, true);
        self.last_input = None;
        self.step_to_now();
        self.refresh();
        self.publish_periodic_now();
        tracing::info!(prefix = %self.cfg.prefix, "simulated dongle connected");
    }

    /// Sends telemetry, heartbeat and (legacy) settings now and restarts their timers.
    fn publish_periodic_now(&mut self) {
        let now = self.clock.mono();
        self.publish_telemetry(true);
        self.publish_status();
        if self.hold_interval().is_some() {
            self.publish_holdbank();
        }
        self.next_input = now + self.input_interval();
        self.next_status = now + self.status_interval();
        self.next_hold = now + self.hold_interval().unwrap_or_default();
    }

    /// The connection is gone: nothing is published until [`Self::on_connected`].
    pub fn on_disconnected(&mut self) {
        self.connected = false;
    }

    /// A message on one of [`SUBSCRIPTIONS`].
    pub fn receive(&mut self, topic: &str, payload: &[u8]) {
        let Some(suffix) = topic
            .strip_prefix(self.cfg.prefix.as_str())
            .and_then(|s| s.strip_prefix('/'))
        else {
            tracing::debug!(topic, "ignoring a publish outside the dongle prefix");
            return;
        };
        match suffix {
            "update" => self.on_update(payload),
            "snapshot/request" => self.on_snapshot_request(),
            "firmwarecode/request" => {
                if self.fault.talks() {
                    let fw = self.model.hold("FWCode").map(HoldValue::to_json);
                    self.publish_json("firmwarecode/response", &json!({"FWCode": fw}));
                }
            }
            other => tracing::debug!(topic = other, "ignoring an unexpected topic"),
        }
    }

    fn on_snapshot_request(&mut self) {
        if self.cfg.firmware == Firmware::Legacy || !self.fault.talks() {
            return;
        }
        let ts = self.ts();
        self.publish_json(
            "snap/input",
            &json!({"event": "input_state", "ts": ts, "payload": self.telemetry()}),
        );
        self.publish_json(
            "snap/hold",
            &json!({"event": "hold_state", "ts": ts, "payload": self.model.hold_map()}),
        );
        self.snapshots_answered += 1;
    }

    fn on_update(&mut self, payload: &[u8]) {
        let ParsedWrite {
            setting,
            value,
            problem,
        } = parse_write(payload);
        tracing::debug!(setting, %value, fault = ?self.fault, "simulated dongle received a write");

        // A dongle that is not talking answers nothing, whatever was planned for this write.
        let fault = match self.write_fault.take() {
            Some(f) if self.fault.talks() => f,
            _ => self.fault.clone(),
        };
        let reply = match (&fault, problem) {
            (Fault::Silent | Fault::Offline, _) => Reply::NoReply,
            (Fault::LateApply { delay }, None) => {
                self.late.push(LateWrite {
                    due: self.clock.mono() + *delay,
                    setting: setting.clone(),
                    value: value.clone(),
                });
                Reply::NoReply
            }
            (Fault::LateApply { .. }, Some(problem)) => {
                tracing::warn!(problem, "simulated dongle dropped a malformed write");
                Reply::NoReply
            }
            (Fault::RejectWrites, _) => {
                let msg = "write rejected by the inverter".to_string();
                self.answer_error(&setting, &msg);
                Reply::Error(msg)
            }
            (_, Some(problem)) => {
                tracing::warn!(problem, "simulated dongle rejected a malformed write");
                self.answer_error(&setting, &problem);
                Reply::Error(problem)
            }
            (_, None) => {
                self.step_to_now();
                self.apply(&setting, &value, true)
            }
        };
        self.writes.push(WriteRecord {
            setting,
            value,
            reply,
        });
    }

    fn answer_error(&mut self, setting: &str, message: &str) {
        self.publish_json(
            "response",
            &json!({"status": "error", "setting": setting, "message": message}),
        );
    }

    /// Applies a write to the model, answering on `response` if `respond`. The caller has
    /// brought the physics up to the instant the write takes effect.
    fn apply(&mut self, setting: &str, value: &Value, respond: bool) -> Reply {
        let before = self.model.hold(setting).cloned();
        match self.model.write(setting, value) {
            Ok((canonical, stored)) => {
                if respond {
                    self.publish_json(
                        "response",
                        &json!({"status": "success", "setting": setting, "value": value}),
                    );
                }
                self.after_change(canonical, &stored, before.as_ref() != Some(&stored));
                Reply::Success
            }
            Err(msg) => {
                tracing::warn!(setting, %value, reason = %msg, "simulated inverter rejected a write");
                if respond {
                    self.answer_error(setting, &msg);
                }
                Reply::Error(msg)
            }
        }
    }

    /// Announces a confirmed setting and makes its effect visible promptly.
    fn after_change(&mut self, canonical: &str, stored: &HoldValue, changed: bool) {
        self.refresh();
        if !self.fault.talks() {
            return;
        }
        if self.cfg.firmware == Firmware::V43 {
            self.publish_json(
                "setting/updated",
                &json!({"setting": canonical, "value": stored.to_update_string()}),
            );
            if changed {
                let mut payload = Map::new();
                payload.insert(canonical.to_string(), stored.to_json());
                self.publish_json(
                    "hold",
                    &json!({"event": "hold_delta", "ts": self.ts(), "payload": payload}),
                );
            }
        }
        let affects_charging = canonical == "ACCharge"
            || canonical == "ACChgSOCLimit"
            || (canonical.starts_with("ACChgStart") && canonical != "ACChgStartSOC")
            || canonical.starts_with("ACChgEnd");
        if affects_charging {
            self.publish_telemetry(false);
        }
    }

    /// When [`Self::on_timer`] is next due, the once-a-second physics step included.
    pub fn next_deadline(&self) -> Mono {
        self.next_event().min(self.next_tick)
    }

    /// When the dongle next publishes or applies something by itself. Physics is integrated
    /// up to every such instant, so a driver that only needs the messages can wake here alone.
    pub fn next_event(&self) -> Mono {
        let mut d = self.next_input.min(self.next_status);
        if self.hold_interval().is_some() {
            d = d.min(self.next_hold);
        }
        self.late.iter().map(|l| l.due).fold(d, Mono::min)
    }

    /// Does what is due by now: late writes, physics, periodic messages.
    pub fn on_timer(&mut self) {
        let now = self.clock.mono();
        // Late writes take effect at their own instant, so the physics before and after each
        // one uses the right settings even when the clock jumped far ahead.
        while let Some(i) = self
            .late
            .iter()
            .enumerate()
            .filter(|(_, l)| l.due <= now)
            .min_by_key(|(_, l)| l.due)
            .map(|(i, _)| i)
        {
            let late = self.late.remove(i);
            self.step_to(late.due);
            tracing::debug!(setting = %late.setting, "simulated dongle applies a late write");
            self.apply(&late.setting, &late.value, false);
        }
        self.step_to(now);
        self.refresh();
        if now >= self.next_input {
            self.publish_telemetry(false);
            self.next_input = now + self.input_interval();
        }
        if let Some(every) = self.hold_interval()
            && now >= self.next_hold
        {
            self.publish_holdbank();
            self.next_hold = now + every;
        }
        if now >= self.next_status {
            self.publish_status();
            self.next_status = now + self.status_interval();
        }
        if now >= self.next_tick {
            self.next_tick = now + TICK;
        }
    }

    /// Publishes a firmware-code answer carrying `marker` (not the inverter's code) and falls
    /// silent in the same step (see [`super::SimHandle::fall_silent`]).
    pub fn fall_silent_after(&mut self, marker: &str) {
        self.publish_json("firmwarecode/response", &json!({"FWCode": marker}));
        self.set_fault(Fault::Silent);
    }

    pub fn set_fault(&mut self, fault: Fault) {
        if fault == self.fault {
            return;
        }
        tracing::info!(?fault, "simulated dongle fault");
        let was = std::mem::replace(&mut self.fault, fault);
        self.frozen_soc = match self.fault {
            Fault::SocFrozen => Some(self.frozen_soc.unwrap_or_else(|| self.model.reported_soc())),
            _ => None,
        };
        if self.fault == Fault::Offline {
            self.publish("availability", "offline", true);
        } else if was == Fault::Offline {
            self.publish("availability", "online", true);
        }
        if !was.talks() && self.fault.talks() {
            self.last_input = None;
            self.step_to_now();
            self.refresh();
            self.publish_periodic_now();
        }
    }

    /// What the dongle and the battery are doing.
    pub fn snapshot(&self) -> SimState {
        SimState {
            connected: self.connected,
            soc: self.model.soc(),
            reported_soc: self.reported_soc(),
            charge_power_w: self.model.charge_power_w(),
            charging: self.model.charging(),
            holds: self
                .model
                .holds()
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect(),
            writes: self.writes.clone(),
            telemetry_sent: self.telemetry_sent,
            snapshots_answered: self.snapshots_answered,
        }
    }
}

/// An `update` request, as far as it could be read.
pub(super) struct ParsedWrite {
    /// Empty if missing.
    pub(super) setting: String,
    /// `Null` if missing.
    pub(super) value: Value,
    /// Why the request is malformed, if it is.
    pub(super) problem: Option<String>,
}

/// Reads `{"setting": "X", "value": V, ...}`; keys in any case, other fields ignored.
pub(super) fn parse_write(payload: &[u8]) -> ParsedWrite {
    let object = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return malformed("expected a JSON object".to_string()),
        Err(e) => return malformed(format!("invalid JSON: {e}")),
    };
    let field = |key: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone())
    };
    let (setting, value) = (field("setting"), field("value"));
    let problem = match (&setting, &value) {
        (Some(Value::String(_)), Some(_)) => None,
        (Some(Value::String(_)), None) => Some("missing \"value\"".to_string()),
        _ => Some("missing or non-text \"setting\"".to_string()),
    };
    ParsedWrite {
        setting: match setting {
            Some(Value::String(s)) => s,
            _ => String::new(),
        },
        value: value.unwrap_or(Value::Null),
        problem,
    }
}

fn malformed(problem: String) -> ParsedWrite {
    ParsedWrite {
        setting: String::new(),
        value: Value::Null,
        problem: Some(problem),
    }
}
