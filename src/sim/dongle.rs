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

use jiff::tz::TimeZone;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use super::inverter::HoldValue;
use crate::clock::Clock;

pub mod model;
use model::{DongleModel, SUBSCRIPTIONS, topic};

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
    /// The fault it has from the start, before it first connects (so that nothing it would
    /// send without the fault goes out first).
    pub fault: Fault,
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
            fault: Fault::None,
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
    pub(crate) fn talks(&self) -> bool {
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
    /// Snapshot requests answered (4.3 firmware).
    pub snapshots_answered: u64,
}

const MAX_PACKET: usize = 4 * 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `shutdown` waits for the DISCONNECT to reach the broker.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// What the transport task reports to the driver.
enum Net {
    Connected,
    Disconnected,
    Publish(rumqttc::Publish),
}

struct Shared {
    core: Mutex<DongleModel>,
    client: AsyncClient,
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
    fn core(&self) -> MutexGuard<'_, DongleModel> {
        // Core methods never panic while holding the lock; if one ever did, the state is
        // still usable for a simulator.
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the model, then queues what it published (in order, under the lock, so
    /// publishes from concurrent calls never interleave out of order) and updates the state.
    fn with_core<R>(&self, f: impl FnOnce(&mut DongleModel) -> R) -> R {
        let mut core = self.core();
        let r = f(&mut core);
        for m in core.take_outbox() {
            if let Err(e) =
                self.shared
                    .client
                    .try_publish(&m.topic, QoS::AtLeastOnce, m.retain, m.payload)
            {
                tracing::warn!(topic = %m.topic, error = %e, "simulated dongle could not queue a publish");
            }
        }
        let next = core.snapshot();
        drop(core);
        self.shared.state_tx.send_if_modified(|s| {
            if *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
        r
    }

    /// Subscribes (queued before anything the dongle then publishes) and comes online.
    fn on_connected(&self) {
        let prefix = self.core().cfg_prefix().to_string();
        let filters = SUBSCRIPTIONS
            .map(|s| rumqttc::SubscribeFilter::new(topic(&prefix, s), QoS::AtLeastOnce));
        if let Err(e) = self.shared.client.try_subscribe_many(filters) {
            tracing::warn!(error = %e, "simulated dongle could not queue its subscription");
        }
        self.with_core(DongleModel::on_connected);
    }

    /// The dongle's state, updated on every change.
    pub fn state(&self) -> watch::Receiver<SimState> {
        self.shared.state_tx.subscribe()
    }

    pub fn set_fault(&self, f: Fault) {
        self.with_core(|c| c.set_fault(f));
    }

    /// Falls silent as under [`Fault::Silent`], after one last message: a firmware-code answer
    /// with a marker of its own, which this returns. Everything goes out on one connection at
    /// one QoS, so the broker keeps the order: once the service shows the marker as the
    /// firmware code, it has taken in everything the dongle sent before, and nothing of the
    /// dongle's is still on its way.
    pub fn fall_silent(&self) -> String {
        static MARKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = MARKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("QUIET{n}");
        self.with_core(|c| c.fall_silent_after(&marker));
        marker
    }

    /// Sets the true SOC (clamped to 0..=100).
    pub fn set_soc(&self, soc: f64) {
        self.with_core(|c| c.set_soc(soc));
    }

    /// Sets a register directly, as another app or the installer would. On 4.3 the change is
    /// announced like any other.
    pub fn set_hold(&self, name: &str, value: HoldValue) -> Result<(), String> {
        self.with_core(|c| c.set_hold(name, value))
    }

    pub fn set_charge_power(&self, max_w: f64) {
        self.with_core(|c| c.set_charge_power(max_w));
    }

    /// The next telemetry reports `soc`, once, whatever the battery holds (a glitch).
    pub fn glitch_soc(&self, soc: u8) {
        self.with_core(|c| c.glitch_soc(soc));
    }

    /// Publishes one telemetry message now (a full `input_state` on 4.3).
    pub fn publish_telemetry_now(&self) {
        self.with_core(DongleModel::publish_telemetry_now);
    }

    /// Disconnects cleanly (the broker does not publish the last will) and stops the tasks.
    pub async fn shutdown(self) {
        let connected = self.with_core(|c| {
            c.drop_late_writes();
            c.connected()
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
        let disconnecting = connected && self.shared.client.try_disconnect().is_ok();
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
        self.with_core(DongleModel::on_disconnected);
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

    let (state_tx, _) = watch::channel(empty_state());
    let fault = cfg.fault.clone();
    let mut core = DongleModel::new(cfg, clock.clone());
    core.set_fault(fault);
    state_tx.send_replace(core.snapshot());

    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        client,
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
        snapshots_answered: 0,
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
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
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
                Some(Net::Connected) => handle.on_connected(),
                Some(Net::Disconnected) => handle.with_core(DongleModel::on_disconnected),
                Some(Net::Publish(p)) => handle.with_core(|c| c.receive(&p.topic, &p.payload)),
                None => {
                    // The transport ended (clean disconnect); keep the clock-driven model alive
                    // until shutdown completes.
                    stop.cancelled().await;
                    return;
                }
            },
            _ = timer => handle.with_core(DongleModel::on_timer),
        }
    }
}

#[cfg(test)]
mod tests;
