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
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::sim::broker::start_embedded_broker;
    use rumqttc::Publish;

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
                while let Ok(event) = eventloop.poll().await {
                    if let Event::Incoming(p) = event
                        && tx.send(p).is_err()
                    {
                        break;
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

    async fn wait_state(
        sim: &SimHandle,
        what: &str,
        pred: impl FnMut(&SimState) -> bool,
    ) -> SimState {
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
    async fn the_legacy_dongle_publishes_full_banks_in_the_serial_envelope_and_has_no_read_request()
    {
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
}
