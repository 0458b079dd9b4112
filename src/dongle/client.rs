//! The MQTT side of the dongle: two tasks.
//!
//! * The **connection task** drives rumqttc's event loop: it subscribes to `prefix/#` on every
//!   ConnAck (rumqttc does not re-subscribe by itself), reconnects forever with backoff,
//!   decodes each message and hands it to the engine and to the writer.
//! * The **writer task** makes verified writes, one at a time and at least
//!   `min_write_interval` apart (the dongle handles one write in flight): publish `update`,
//!   wait for the matching `response` (or a `setting/updated` with the value), and on a
//!   timeout read the value back before deciding whether to retry, because a write that timed
//!   out has been seen to apply 15 s later (the read-back waits its full time for that before
//!   a retry). It also keeps the hold-register cache from which the pre-charge snapshot is
//!   taken.
//!
//! Publishing happens from the writer task, never from the task that polls the event loop:
//! awaiting a publish there would deadlock on rumqttc's bounded request channel.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::{Clock, Mono};
use crate::config::Secret;
use crate::domain::session::{WriteResult, value_like};
use crate::domain::units::SettingValue;
use crate::dongle::codec::{
    self, Fields, Message, TimeFormat, encode_snapshot_request, encode_update, read_back_matches,
};

/// Everything the client needs from config.
#[derive(Debug, Clone)]
pub struct DongleSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub prefix: String,
    pub client_id: String,
    pub keep_alive: Duration,
    pub write_timeout: Duration,
    pub min_write_interval: Duration,
    pub readback_timeout: Duration,
    /// Retries of a write whose read-back differs (0 = no retry).
    pub max_retries: u32,
    pub time_format: TimeFormat,
}

/// What the engine hears from the dongle.
#[derive(Debug, Clone, PartialEq)]
pub enum DongleEvent {
    /// The broker connection came up or went down.
    Connected(bool),
    /// A decoded message from the dongle.
    Message(Message),
    /// A message on the dongle's topics that could not be decoded (logged and dropped; it
    /// still shows that the dongle is alive).
    Undecodable,
}

/// Firmware generation, learnt from the topics the dongle publishes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Unknown,
    /// < 4.3: `inputbankN`/`holdbankN`, no read request.
    Legacy,
    /// >= 4.3: `input`/`hold` deltas, `snapshot/request`, `setting/updated`.
    Modern,
}

enum Command {
    Write {
        setting: String,
        value: SettingValue,
        reply: oneshot::Sender<WriteResult>,
    },
    Snapshot {
        settings: Vec<String>,
        fresh: Freshness,
        reply: oneshot::Sender<Option<BTreeMap<String, SettingValue>>>,
    },
    /// Asks a >= 4.3 dongle for a full dump; the answer arrives as ordinary hold messages.
    Refresh,
}

pub use crate::domain::core::Freshness;

/// A message as the writer sees it: with its topic and retained flag.
struct Inbound {
    suffix: String,
    retained: bool,
    message: Message,
}

/// The engine's handle on the dongle.
#[derive(Clone)]
pub struct DongleHandle {
    cmds: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
}

impl DongleHandle {
    /// Writes one setting, verified. The result comes through the returned receiver.
    pub fn write(&self, setting: &str, value: SettingValue) -> oneshot::Receiver<WriteResult> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Write {
            setting: setting.to_string(),
            value,
            reply,
        };
        if let Err(
            mpsc::error::TrySendError::Full(Command::Write { reply, .. })
            | mpsc::error::TrySendError::Closed(Command::Write { reply, .. }),
        ) = self.cmds.try_send(cmd)
        {
            let _ = reply.send(WriteResult::NotSent(
                "the dongle client is not running".into(),
            ));
        }
        rx
    }

    /// The current values of `settings`, as fresh as `fresh` asks.
    pub fn snapshot(
        &self,
        settings: Vec<String>,
        fresh: Freshness,
    ) -> oneshot::Receiver<Option<BTreeMap<String, SettingValue>>> {
        let (reply, rx) = oneshot::channel();
        if let Err(
            mpsc::error::TrySendError::Full(Command::Snapshot { reply, .. })
            | mpsc::error::TrySendError::Closed(Command::Snapshot { reply, .. }),
        ) = self.cmds.try_send(Command::Snapshot {
            settings,
            fresh,
            reply,
        }) {
            let _ = reply.send(None);
        }
        rx
    }

    /// Asks the dongle to report all its settings again (>= 4.3; older firmware reports its
    /// hold banks on its own timer). Best effort: nothing waits for the answer.
    pub fn refresh(&self) {
        let _ = self.cmds.try_send(Command::Refresh);
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

/// Starts the client's tasks. They run until `shutdown` is cancelled. `extra` adds an
/// integration's traffic to the same broker connection; the returned client publishes it.
pub fn spawn(
    settings: DongleSettings,
    clock: Clock,
    events: mpsc::Sender<DongleEvent>,
    shutdown: CancellationToken,
    extra: Option<ExtraMqtt>,
) -> (DongleHandle, AsyncClient, Vec<tokio::task::JoinHandle<()>>) {
    let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    if let Some(will) = extra.as_ref().and_then(|x| x.last_will.clone()) {
        opts.set_last_will(LastWill::new(
            will.topic,
            will.payload,
            QoS::AtLeastOnce,
            will.retain,
        ));
    }
    opts.set_keep_alive(settings.keep_alive);
    // Payloads above the codec's limit are dropped by the codec; a larger packet limit keeps
    // one oversized message from tearing the connection down.
    opts.set_max_packet_size(4 * 1024 * 1024, 256 * 1024);
    opts.set_clean_session(true);
    if let Some(user) = &settings.username {
        let pw = settings
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        opts.set_credentials(user.clone(), pw);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    // The stop write is one small packet that often follows our own PUBACKs; with Nagle's
    // algorithm it would wait for the broker's delayed ACK (40 ms and more).
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (connected_tx, connected_rx) = watch::channel(false);
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    let (inbound_tx, inbound_rx) = mpsc::channel(256);

    let conn = tokio::spawn(connection_task(
        settings.clone(),
        clock.clone(),
        client.clone(),
        eventloop,
        events,
        inbound_tx,
        connected_tx,
        shutdown.clone(),
        extra,
    ));
    let extra_client = client.clone();
    let writer = Writer {
        settings,
        clock,
        client,
        connected: connected_rx.clone(),
        inbound: inbound_rx,
        cache: Fields::default(),
        firmware: Firmware::Unknown,
        last_write: None,
    };
    let writer = tokio::spawn(writer.run(cmd_rx, shutdown));
    (
        DongleHandle {
            cmds: cmd_tx,
            connected: connected_rx,
        },
        extra_client,
        vec![conn, writer],
    )
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[allow(clippy::too_many_arguments)]
async fn connection_task(
    settings: DongleSettings,
    clock: Clock,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    events: mpsc::Sender<DongleEvent>,
    inbound: mpsc::Sender<Inbound>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
    extra: Option<ExtraMqtt>,
) {
    let prefix = settings.prefix.clone();
    let filter = format!("{prefix}/#");
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    let mut bad_messages = crate::logging::Throttle::per_minute();
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = eventloop.poll() => p,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Subscribing again on every ConnAck: the session is clean, so the broker has
                // forgotten the subscription.
                if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    warn!(error = %e, "could not subscribe to {filter}");
                }
                // Firmware >= 4.3 publishes only changes: without a snapshot, an idle battery's
                // SOC might not be heard for hours after a (re)connect. Older firmware ignores
                // the request and reports periodically anyway. Queued after the subscription,
                // so the answer is not missed.
                let _ = client.try_publish(
                    format!("{prefix}/snapshot/request"),
                    QoS::AtLeastOnce,
                    false,
                    encode_snapshot_request(),
                );
                let _ = client.try_publish(
                    format!("{prefix}/firmwarecode/request"),
                    QoS::AtLeastOnce,
                    false,
                    b"{}".to_vec(),
                );
                if let Some(x) = &extra {
                    x.on_conn_ack(&client);
                }
                info!(host = %settings.host, port = settings.port, "connected to the MQTT broker; listening to {filter}");
                connected.send_replace(true);
                let _ = events.send(DongleEvent::Connected(true)).await;
                backoff = BACKOFF_MIN;
                failures = 0;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = p.topic.as_str();
                let Some(suffix) = topic
                    .strip_prefix(&prefix)
                    .and_then(|s| s.strip_prefix('/'))
                else {
                    if let Some(x) = &extra {
                        x.forward(&p);
                    }
                    continue;
                };
                match codec::decode(&prefix, topic, &p.payload) {
                    Ok(Message::Ignored) => {}
                    Ok(message) => {
                        if wanted_by_writer(&message) {
                            // Dropping when the writer is behind only costs a read-back later.
                            let _ = inbound.try_send(Inbound {
                                suffix: suffix.to_string(),
                                retained: p.retain,
                                message: message.clone(),
                            });
                        } else if matches!(message, Message::Telemetry(_)) {
                            let _ = inbound.try_send(Inbound {
                                suffix: suffix.to_string(),
                                retained: p.retain,
                                message: Message::Ignored,
                            });
                        }
                        if p.retain && matches!(message, Message::WriteResponse { .. }) {
                            continue;
                        }
                        if events.send(DongleEvent::Message(message)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if let Some(held) = bad_messages.allow(clock.mono().0) {
                            warn!(topic = %topic, more_since_last_warning = held, "dropped a dongle message: {e}");
                        }
                        let _ = events.send(DongleEvent::Undecodable).await;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected.send_replace(false) {
                    let _ = events.send(DongleEvent::Connected(false)).await;
                }
                failures += 1;
                if failures == 1 {
                    warn!(host = %settings.host, port = settings.port, error = %e,
                        "MQTT broker unreachable; retrying with backoff (check mqtt.host/port and credentials)");
                } else {
                    debug!(error = %e, attempt = failures, "MQTT reconnect failed");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = clock.sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let _ = client.try_disconnect();
    connected.send_replace(false);
}

// ---- Extra traffic on the dongle's connection, for integrations (Home Assistant) ----------
//
// Integrations that live on the same broker share this one connection rather than opening
// their own: one client id, one set of credentials, one reconnect loop. They bring topic
// filters (subscribed on every ConnAck, like the dongle's), a last will, messages to publish
// after every ConnAck, and a channel for what arrives on their filters. Their own publishes
// go through the `AsyncClient` that `spawn` returns, from their own task.

/// A message to publish on a topic that is not the dongle's (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraPublish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A message that arrived on one of [`ExtraMqtt::filters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub retained: bool,
}

/// What an integration adds to the broker connection.
#[derive(Debug, Clone)]
pub struct ExtraMqtt {
    /// Subscribed (QoS 1) after every ConnAck.
    pub filters: Vec<String>,
    /// Set on the connection: the broker publishes it when the connection drops without a
    /// goodbye (a crash, a power cut, a network failure).
    pub last_will: Option<ExtraPublish>,
    /// Published after every ConnAck, after the subscriptions (e.g. "online").
    pub on_connect: Vec<ExtraPublish>,
    /// Where messages on `filters` go. Dropped when the receiver lags: the connection task
    /// never waits for an integration.
    pub messages: mpsc::Sender<ExtraMessage>,
}

impl ExtraMqtt {
    /// Queues the subscriptions and the connect messages. Never waits (this runs in the task
    /// that polls the event loop).
    fn on_conn_ack(&self, client: &AsyncClient) {
        for f in &self.filters {
            if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                warn!(error = %e, "could not subscribe to {f}");
            }
        }
        for m in &self.on_connect {
            let _ = client.try_publish(&m.topic, QoS::AtLeastOnce, m.retain, m.payload.clone());
        }
    }

    /// Hands a message on one of the filters to the integration.
    fn forward(&self, p: &rumqttc::Publish) {
        if self.filters.iter().any(|f| rumqttc::matches(&p.topic, f)) {
            let _ = self.messages.try_send(ExtraMessage {
                topic: p.topic.clone(),
                payload: p.payload.clone(),
                retained: p.retain,
            });
        }
    }
}

// ---- end of the extra traffic ----------------------------------------------------------------

fn wanted_by_writer(m: &Message) -> bool {
    matches!(
        m,
        Message::WriteResponse { .. }
            | Message::Settings(_)
            | Message::SettingUpdated(_)
            | Message::Status { .. }
    )
}

struct Writer {
    settings: DongleSettings,
    clock: Clock,
    client: AsyncClient,
    connected: watch::Receiver<bool>,
    inbound: mpsc::Receiver<Inbound>,
    /// Hold registers as last reported (merged from banks, deltas, snapshots and confirmed
    /// writes).
    cache: Fields,
    firmware: Firmware,
    last_write: Option<Mono>,
}

enum ReadBack {
    Matches,
    Differs(String),
    Unavailable,
}

impl Writer {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.inbound.recv() => match msg {
                    Some(m) => self.absorb(&m),
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(Command::Write { setting, value, reply }) => {
                        let began = self.clock.mono();
                        let result = self.write(&setting, value).await;
                        crate::metrics::write_done(
                            match &result {
                                WriteResult::Confirmed => "confirmed",
                                WriteResult::Rejected(_) => "rejected",
                                WriteResult::Unknown(_) => "unknown",
                                WriteResult::NotSent(_) => "not_sent",
                            },
                            self.clock.mono().saturating_since(began),
                        );
                        let _ = reply.send(result);
                    }
                    Some(Command::Snapshot { settings, fresh, reply }) => {
                        let snap = self.snapshot(&settings, fresh).await;
                        let _ = reply.send(snap);
                    }
                    Some(Command::Refresh) => {
                        if self.firmware != Firmware::Legacy {
                            let _ = self.publish("snapshot/request", encode_snapshot_request()).await;
                        }
                    }
                    None => break,
                },
            }
        }
    }

    fn absorb(&mut self, m: &Inbound) {
        let s = m.suffix.as_str();
        if s.starts_with("inputbank") || s.starts_with("holdbank") {
            self.firmware = Firmware::Legacy;
        } else if matches!(s, "input" | "hold" | "setting/updated") || s.starts_with("snap/") {
            self.firmware = Firmware::Modern;
        }
        match &m.message {
            Message::Settings(f) | Message::SettingUpdated(f) => self.cache.merge(f),
            Message::Status { version: Some(v) } if version_at_least_4_3(v) => {
                self.firmware = Firmware::Modern
            }
            _ => {}
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.settings.prefix)
    }

    async fn publish(&mut self, suffix: &str, payload: Vec<u8>) -> Result<(), String> {
        if !*self.connected.borrow() {
            return Err("not connected to the MQTT broker".into());
        }
        self.client
            .publish(self.topic(suffix), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| format!("publish failed: {e}"))
    }

    /// One verified write (see the module docs).
    async fn write(&mut self, setting: &str, value: SettingValue) -> WriteResult {
        let attempts = 1 + self.settings.max_retries;
        let mut why = String::new();
        for attempt in 1..=attempts {
            if let Some(last) = self.last_write {
                self.clock
                    .sleep_until(last + self.settings.min_write_interval)
                    .await;
            }
            let payload = encode_update(setting, value, self.settings.time_format);
            if let Err(e) = self.publish("update", payload).await {
                return WriteResult::NotSent(e);
            }
            self.last_write = Some(self.clock.mono());
            debug!(setting, %value, attempt, "write sent");
            let deadline = self.clock.mono() + self.settings.write_timeout;
            loop {
                tokio::select! {
                    msg = self.inbound.recv() => {
                        let Some(m) = msg else { return WriteResult::NotSent("shutting down".into()) };
                        self.absorb(&m);
                        match &m.message {
                            Message::WriteResponse { setting: s, success, status }
                                if !m.retained && s.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(setting)) =>
                            {
                                return if *success {
                                    self.remember(setting, value);
                                    WriteResult::Confirmed
                                } else {
                                    WriteResult::Rejected(format!("the dongle answered {status:?}"))
                                };
                            }
                            Message::SettingUpdated(f)
                                if f.get(setting).is_some_and(|v| read_back_matches(value, v)) =>
                            {
                                return WriteResult::Confirmed;
                            }
                            _ => {}
                        }
                    }
                    _ = self.clock.sleep_until(deadline) => break,
                }
            }
            let waited = self.settings.write_timeout.as_secs();
            match self.read_back(setting, value).await {
                ReadBack::Matches => {
                    info!(setting, %value, "write confirmed by read-back after {waited} s without an answer");
                    return WriteResult::Confirmed;
                }
                ReadBack::Differs(now) => {
                    why = format!("no answer within {waited} s and it reads back as {now}");
                    warn!(setting, %value, attempt, "{why}");
                }
                ReadBack::Unavailable => {
                    return WriteResult::Unknown(format!(
                        "no answer within {waited} s and the value could not be read back"
                    ));
                }
            }
        }
        WriteResult::Unknown(why)
    }

    fn remember(&mut self, setting: &str, value: SettingValue) {
        let raw = match value {
            SettingValue::Int(v) => codec::RawValue::Num(v as f64),
            SettingValue::Time(t) => codec::RawValue::Text(t.to_string()),
        };
        self.cache.insert(setting, raw);
    }

    /// Reads a setting back: on >= 4.3 by asking for a snapshot, on older firmware by waiting
    /// for the next hold bank (bounded by `readback_timeout`).
    ///
    /// A read that still shows the old value is not the last word: a write that timed out has
    /// been seen to apply seconds later, and retrying it at once would send it twice. So the
    /// read-back keeps listening until its deadline for the value to appear (in a
    /// `setting/updated`, a hold delta or a bank), and only then reports the difference.
    async fn read_back(&mut self, setting: &str, value: SettingValue) -> ReadBack {
        if self.firmware != Firmware::Legacy {
            let _ = self
                .publish("snapshot/request", encode_snapshot_request())
                .await;
        }
        let deadline = self.clock.mono() + self.settings.readback_timeout;
        let mut differs: Option<String> = None;
        loop {
            tokio::select! {
                msg = self.inbound.recv() => {
                    let Some(m) = msg else {
                        return differs.map_or(ReadBack::Unavailable, ReadBack::Differs);
                    };
                    self.absorb(&m);
                    match &m.message {
                        Message::WriteResponse { setting: s, success: true, .. }
                            if !m.retained && s.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(setting)) =>
                        {
                            return ReadBack::Matches;
                        }
                        Message::Settings(f) | Message::SettingUpdated(f) => {
                            if let Some(read) = f.get(setting) {
                                if read_back_matches(value, read) {
                                    return ReadBack::Matches;
                                }
                                differs = Some(format!("{read:?}"));
                            }
                        }
                        _ => {}
                    }
                }
                _ = self.clock.sleep_until(deadline) => {
                    return differs.map_or(ReadBack::Unavailable, ReadBack::Differs);
                }
            }
        }
    }

    /// The current values of `settings`: on >= 4.3 (or unknown firmware) a fresh snapshot is
    /// requested; on older firmware the cache is used when it holds them all, else the next
    /// hold banks are awaited (bounded). [`Freshness::Cached`] answers from the cache at once.
    async fn snapshot(
        &mut self,
        settings: &[String],
        fresh: Freshness,
    ) -> Option<BTreeMap<String, SettingValue>> {
        let have_all = |cache: &Fields| settings.iter().all(|s| cache.get(s).is_some());
        if fresh == Freshness::Cached {
            while let Ok(m) = self.inbound.try_recv() {
                self.absorb(&m);
            }
            return self.snapshot_from_cache(settings);
        }
        let fresh_needed = self.firmware != Firmware::Legacy;
        if fresh_needed
            && let Err(e) = self
                .publish("snapshot/request", encode_snapshot_request())
                .await
        {
            debug!("snapshot request not sent: {e}");
        }
        let deadline = self.clock.mono() + self.settings.readback_timeout;
        let mut got_fresh = !fresh_needed;
        while !(got_fresh && have_all(&self.cache)) {
            tokio::select! {
                msg = self.inbound.recv() => {
                    let Some(m) = msg else { break };
                    self.absorb(&m);
                    if matches!(m.message, Message::Settings(_)) {
                        got_fresh = true;
                    }
                }
                _ = self.clock.sleep_until(deadline) => break,
            }
        }
        self.snapshot_from_cache(settings)
    }

    fn snapshot_from_cache(&self, settings: &[String]) -> Option<BTreeMap<String, SettingValue>> {
        let snap: BTreeMap<String, SettingValue> = settings
            .iter()
            .filter_map(|s| {
                let raw = self.cache.get(s)?;
                Some((s.clone(), codec::setting_value(raw, value_like(s))?))
            })
            .collect();
        if snap.len() < settings.len() {
            let missing: Vec<&str> = settings
                .iter()
                .filter(|s| !snap.contains_key(*s))
                .map(String::as_str)
                .collect();
            warn!(
                ?missing,
                "some inverter settings could not be read before the charge"
            );
        }
        (!snap.is_empty()).then_some(snap)
    }
}

fn version_at_least_4_3(v: &str) -> bool {
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (4, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_versions_from_4_3_on_are_modern() {
        assert!(version_at_least_4_3("4.3.0.111S3"));
        assert!(version_at_least_4_3("5.0"));
        assert!(!version_at_least_4_3("4.2.9"));
        assert!(!version_at_least_4_3("garbage"));
    }
}
