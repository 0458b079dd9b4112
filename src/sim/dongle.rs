//! The simulated Monitor My Solar dongle: speaks the dongle side of the MQTT protocol in front of
//! an [`Inverter`] model, with faults that can be switched on at any time.
//!
//! Two tasks run per dongle:
//! * the transport task drives rumqttc's event loop and only forwards connection changes and
//!   incoming publishes (it never awaits the client, which would deadlock the bounded request
//!   channel), reconnecting with a capped backoff;
//! * the driver task steps the physics every second of [`Clock`] time, publishes telemetry and
//!   heartbeats on schedule and answers requests.
//!
//! All dongle state lives in one `Core` behind a mutex that is only held for synchronous work
//! (publishing uses `try_publish`), so [`SimHandle`] methods take effect immediately and in
//! order with the protocol traffic. Periodic schedules run on the injected clock, so a test
//! with a `ManualClock` decides exactly when telemetry, physics and late writes happen; only the
//! reconnect backoff uses real time, because reconnecting is real network I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use super::inverter::HoldValue;
use super::inverter::Inverter;
use crate::clock::{Clock, Mono};

/// Which generation of dongle firmware to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Before 4.3: full `inputbankN` / `holdbankN` banks on a timer, no snapshot request.
    Legacy,
    /// 4.3 and later: `input` / `hold` deltas, `snap/*` on request, `setting/updated`.
    V43,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Topic prefix, the dongle ID exactly as on the broker.
    pub prefix: String,
    pub firmware: Firmware,
    /// Telemetry period (at least 1 s).
    pub input_interval: Duration,
    /// Legacy `holdbank1` period; `None` turns hold polling off as a user can.
    pub hold_interval: Option<Duration>,
    pub status_interval: Duration,
    /// Physics time multiplier; charge windows still follow the wall clock.
    pub speed: f64,
    pub initial_soc: f64,
    pub capacity_wh: f64,
    pub max_charge_w: f64,
    /// Battery drain while not charging (house load), 0 keeps SOC still.
    pub idle_discharge_w: f64,
    /// The inverter's local time zone, which its charge windows are in.
    pub tz: TimeZone,
    pub fw_code: String,
    pub serial: String,
    /// Broker username and password, for brokers that require them.
    pub credentials: Option<(String, String)>,
    /// Registers a legacy `holdbank1` leaves out (real firmware spreads its registers over
    /// several banks, and some publish only the first).
    pub bank_omits: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            prefix: "dongle-40:4C:CA:00:00:01".to_string(),
            firmware: Firmware::V43,
            input_interval: Duration::from_secs(5),
            hold_interval: Some(Duration::from_secs(60)),
            status_interval: Duration::from_secs(30),
            speed: 1.0,
            initial_soc: 50.0,
            capacity_wh: 10_000.0,
            max_charge_w: 5_000.0,
            idle_discharge_w: 0.0,
            tz: TimeZone::system(),
            fw_code: "FAAB".to_string(),
            serial: "BA00000001".to_string(),
            credentials: None,
            bank_omits: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Publishes nothing and answers nothing (still connected).
    Silent,
    /// Answers every write with `{"status":"error", ...}` and applies nothing.
    RejectWrites,
    /// Sends no response; applies the write after `delay` (then sends `setting/updated` on 4.3).
    LateApply {
        delay: Duration,
    },
    /// Publishes availability "offline" (retained), then nothing, ignores writes; `set_fault(None)`
    /// brings it back "online".
    Offline,
    /// Telemetry keeps flowing but SOC stays at its current reported value. The battery itself
    /// keeps charging: [`SimState::soc`] moves, [`SimState::reported_soc`] does not.
    SocFrozen,
    /// Publishes garbage (non-UTF-8, non-JSON, huge, wrong types) on its telemetry topics.
    Garbage,
}

impl Fault {
    /// Whether the dongle publishes and answers anything at all.
    fn talks(&self) -> bool {
        !matches!(self, Fault::Silent | Fault::Offline)
    }
}

/// What the dongle answered to a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Success,
    Error(String),
    /// No response was published (silent, offline or late-applying dongle).
    NoReply,
}

impl Reply {
    /// `"success"`, `"error"` or `"none"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reply::Success => "success",
            Reply::Error(_) => "error",
            Reply::NoReply => "none",
        }
    }
}

/// One write received on `update`, as it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRecord {
    /// The `setting` field as sent (empty if missing).
    pub setting: String,
    /// The `value` field as sent (`Null` if missing or unparseable).
    pub value: Value,
    pub reply: Reply,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimState {
    pub connected: bool,
    /// True state of charge.
    pub soc: f64,
    /// The SOC the dongle publishes (frozen under [`Fault::SocFrozen`]).
    pub reported_soc: u8,
    pub charge_power_w: f64,
    pub charging: bool,
    pub holds: BTreeMap<String, HoldValue>,
    /// Every write received, in order, with what was answered.
    pub writes: Vec<WriteRecord>,
    /// Messages published on the telemetry topic (`inputbank1` / `input`), garbage included.
    pub telemetry_sent: u64,
}

const TICK: Duration = Duration::from_secs(1);
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_PACKET: usize = 4 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the DISCONNECT to reach the broker.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

const V43_VERSION: &str = "4.3.0.111S3";
const LEGACY_VERSION: &str = "4.2.1.98S3";

/// What the transport task reports to the driver.
enum Net {
    Connected,
    Disconnected,
    Publish(rumqttc::Publish),
}

struct LateWrite {
    due: Mono,
    setting: String,
    value: Value,
}

struct Core {
    cfg: SimConfig,
    clock: Clock,
    client: AsyncClient,
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
    late: Vec<LateWrite>,
    /// Physics has been integrated up to this monotonic instant.
    stepped_to: Mono,
    started: Mono,
    next_tick: Mono,
    next_input: Mono,
    next_hold: Mono,
    next_status: Mono,
    state_tx: watch::Sender<SimState>,
}

fn topic(prefix: &str, suffix: &str) -> String {
    format!("{prefix}/{suffix}")
}

impl Core {
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
    fn publish(&self, suffix: &str, payload: impl Into<Vec<u8>>, retain: bool) -> bool {
        if !self.connected {
            tracing::debug!(suffix, "not connected, dropping publish");
            return false;
        }
        let t = topic(&self.cfg.prefix, suffix);
        match self
            .client
            .try_publish(&t, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic = %t, error = %e, "simulated dongle could not queue a publish");
                false
            }
        }
    }

    fn publish_json(&self, suffix: &str, v: &Value) -> bool {
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
        let now = self.telemetry();
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

    fn publish_holdbank(&self) {
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

    fn publish_status(&self) {
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

    fn on_connected(&mut self) {
        self.connected = true;
        let p = &self.cfg.prefix;
        let filters = ["update", "snapshot/request", "firmwarecode/request"]
            .map(|s| rumqttc::SubscribeFilter::new(topic(p, s), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::warn!(error = %e, "simulated dongle could not queue its subscription");
        }
        // Queued after the subscription on the same connection, so whoever sees "online" can
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

    fn on_publish(&mut self, p: rumqttc::Publish) {
        let Some(suffix) = p
            .topic
            .strip_prefix(self.cfg.prefix.as_str())
            .and_then(|s| s.strip_prefix('/'))
        else {
            tracing::debug!(topic = %p.topic, "ignoring a publish outside the dongle prefix");
            return;
        };
        match suffix {
            "update" => self.on_update(&p.payload),
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

    fn on_snapshot_request(&self) {
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
    }

    fn on_update(&mut self, payload: &[u8]) {
        let ParsedWrite {
            setting,
            value,
            problem,
        } = parse_write(payload);
        tracing::debug!(setting, %value, fault = ?self.fault, "simulated dongle received a write");

        let reply = match (&self.fault, problem) {
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

    fn answer_error(&self, setting: &str, message: &str) {
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

    fn next_deadline(&self) -> Mono {
        let mut d = self.next_tick.min(self.next_input).min(self.next_status);
        if self.hold_interval().is_some() {
            d = d.min(self.next_hold);
        }
        self.late.iter().map(|l| l.due).fold(d, Mono::min)
    }

    fn on_timer(&mut self) {
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

    fn set_fault(&mut self, fault: Fault) {
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

    fn snapshot(&self) -> SimState {
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
        }
    }

    fn publish_state(&self) {
        let next = self.snapshot();
        self.state_tx.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }
}

/// An `update` request, as far as it could be read.
struct ParsedWrite {
    /// Empty if missing.
    setting: String,
    /// `Null` if missing.
    value: Value,
    /// Why the request is malformed, if it is.
    problem: Option<String>,
}

/// Reads `{"setting": "X", "value": V, ...}`; keys in any case, other fields ignored.
fn parse_write(payload: &[u8]) -> ParsedWrite {
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

struct Shared {
    core: Mutex<Core>,
    state_tx: watch::Sender<SimState>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Controls one running simulated dongle. Cheap to clone; all clones control the same dongle.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").finish_non_exhaustive()
    }
}

impl SimHandle {
    fn core(&self) -> MutexGuard<'_, Core> {
        // Core methods never panic while holding the lock; if one ever did, the state is
        // still usable for a simulator.
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut Core) -> R) -> R {
        let mut core = self.core();
        let r = f(&mut core);
        core.publish_state();
        r
    }

    /// The dongle's state, updated on every change.
    pub fn state(&self) -> watch::Receiver<SimState> {
        self.shared.state_tx.subscribe()
    }

    pub fn set_fault(&self, f: Fault) {
        self.with_core(|c| c.set_fault(f));
    }

    /// Sets the true SOC (clamped to 0..=100).
    pub fn set_soc(&self, soc: f64) {
        self.with_core(|c| {
            c.step_to_now();
            c.model.set_soc(soc);
            c.refresh();
        });
    }

    /// Sets a register directly, as another app or the installer would. On 4.3 the change is
    /// announced like any other.
    pub fn set_hold(&self, name: &str, value: HoldValue) -> Result<(), String> {
        self.with_core(|c| {
            c.step_to_now();
            let before = c.model.hold(name).cloned();
            let canonical = c.model.set_hold(name, value.clone())?;
            c.after_change(canonical, &value, before.as_ref() != Some(&value));
            Ok(())
        })
    }

    pub fn set_charge_power(&self, max_w: f64) {
        self.with_core(|c| {
            c.step_to_now();
            c.model.set_max_charge_w(max_w);
            c.refresh();
        });
    }

    /// Publishes one telemetry message now (a full `input_state` on 4.3).
    pub fn publish_telemetry_now(&self) {
        self.with_core(|c| {
            c.step_to_now();
            c.refresh();
            c.publish_telemetry(true);
        });
    }

    /// Disconnects cleanly (the broker does not publish the last will) and stops the tasks.
    pub async fn shutdown(self) {
        let connected = self.with_core(|c| {
            c.late.clear();
            c.connected
        });
        let tasks: Vec<JoinHandle<()>> = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let mut tasks = tasks.into_iter();
        let transport = tasks.next();
        let rest: Vec<_> = tasks.collect();
        let disconnecting = connected && self.with_core(|c| c.client.try_disconnect().is_ok());
        if disconnecting {
            // The transport task ends by itself once the DISCONNECT has been written.
            if let Some(t) = transport {
                let abort = t.abort_handle();
                if tokio::time::timeout(DISCONNECT_GRACE, t).await.is_err() {
                    tracing::warn!("simulated dongle did not disconnect in time");
                    abort.abort();
                }
            }
        } else if let Some(t) = transport {
            t.abort();
            let _ = t.await;
        }
        self.shared.stop.cancel();
        for t in rest {
            let _ = t.await;
        }
        self.with_core(|c| c.connected = false);
    }
}

/// Starts a simulated dongle connecting to the broker at `host:port`. Must be called inside a
/// tokio runtime.
pub fn spawn(host: &str, port: u16, cfg: SimConfig, clock: Clock) -> SimHandle {
    let mut opts = MqttOptions::new(format!("sim-{}", cfg.prefix), host, port);
    opts.set_last_will(LastWill::new(
        topic(&cfg.prefix, "availability"),
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    if let Some((user, pass)) = &cfg.credentials {
        opts.set_credentials(user.clone(), pass.clone());
    }
    let (client, eventloop) = AsyncClient::new(opts, 1024);

    let mut model = Inverter::new(
        cfg.initial_soc,
        cfg.capacity_wh,
        cfg.max_charge_w,
        &cfg.fw_code,
    );
    model.set_idle_discharge_w(cfg.idle_discharge_w);
    let now = clock.mono();
    let (state_tx, _) = watch::channel(empty_state());
    let mut core = Core {
        cfg,
        clock: clock.clone(),
        client,
        model,
        fault: Fault::None,
        connected: false,
        frozen_soc: None,
        last_input: None,
        garbage_next: 0,
        writes: Vec::new(),
        telemetry_sent: 0,
        late: Vec::new(),
        stepped_to: now,
        started: now,
        next_tick: now + TICK,
        next_input: now,
        next_hold: now,
        next_status: now,
        state_tx: state_tx.clone(),
    };
    core.refresh();
    core.publish_state();

    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        state_tx,
        stop: CancellationToken::new(),
        tasks: Mutex::new(Vec::new()),
    });
    let handle = SimHandle {
        shared: shared.clone(),
    };
    let (net_tx, net_rx) = mpsc::unbounded_channel();
    let transport = tokio::spawn(run_transport(eventloop, net_tx, shared.stop.clone()));
    let driver = tokio::spawn(run_driver(handle.clone(), net_rx, clock));
    *shared
        .tasks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = vec![transport, driver];
    handle
}

fn empty_state() -> SimState {
    SimState {
        connected: false,
        soc: 0.0,
        reported_soc: 0,
        charge_power_w: 0.0,
        charging: false,
        holds: BTreeMap::new(),
        writes: Vec::new(),
        telemetry_sent: 0,
    }
}

/// Drives the MQTT connection and forwards what matters. Never awaits the client.
async fn run_transport(
    mut eventloop: rumqttc::EventLoop,
    net: mpsc::UnboundedSender<Net>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = BACKOFF_MIN;
                Some(Net::Connected)
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Some(Net::Publish(p)),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = net.send(Net::Disconnected);
                return;
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "simulated dongle lost the broker");
                if net.send(Net::Disconnected).is_err() {
                    return;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                None
            }
        };
        if let Some(msg) = forward
            && net.send(msg).is_err()
        {
            return;
        }
    }
}

/// Runs physics, schedules and request handling until stopped.
async fn run_driver(handle: SimHandle, mut net: mpsc::UnboundedReceiver<Net>, clock: Clock) {
    let stop = handle.shared.stop.clone();
    loop {
        let deadline = handle.core().next_deadline();
        let timer = clock.sleep_until(deadline);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            msg = net.recv() => match msg {
                Some(Net::Connected) => handle.with_core(Core::on_connected),
                Some(Net::Disconnected) => handle.with_core(|c| c.connected = false),
                Some(Net::Publish(p)) => handle.with_core(|c| c.on_publish(p)),
                None => {
                    // The transport ended (clean disconnect); keep the clock-driven model alive
                    // until shutdown completes.
                    stop.cancelled().await;
                    return;
                }
            },
            _ = timer => handle.with_core(Core::on_timer),
        }
    }
}

#[cfg(test)]
mod tests;
