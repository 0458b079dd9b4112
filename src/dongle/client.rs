//! The MQTT side of the dongle: two tasks.
//!
//! * The **connection task** drives rumqttc's event loop: it subscribes to `prefix/#` on every
//!   ConnAck (rumqttc does not re-subscribe by itself), reconnects forever with backoff,
//!   decodes each message and hands it to the engine and to the writer.
//! * The **writer task** drives the verified-write protocol ([`crate::dongle::protocol`], a
//!   pure state machine): one write at a time, at least `min_write_interval` apart, each
//!   confirmed by its answer or read back before a retry, and the snapshots of the settings
//!   from the hold-register cache it keeps.
//!
//! Publishing happens from the writer task, never from the task that polls the event loop:
//! awaiting a publish there would deadlock on rumqttc's bounded request channel.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::{Clock, Mono};
use crate::config::Secret;
use crate::domain::session::WriteResult;
use crate::domain::units::SettingValue;
use crate::dongle::codec::{self, Message, TimeFormat};
use crate::dongle::protocol::{self, Out, ProtocolConfig, Request, WriteProtocol};
use crate::metrics::Metrics;

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
    metrics: Metrics,
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
    let protocol = WriteProtocol::new(ProtocolConfig {
        write_timeout: settings.write_timeout,
        min_write_interval: settings.min_write_interval,
        readback_timeout: settings.readback_timeout,
        max_retries: settings.max_retries,
        time_format: settings.time_format,
    });
    let writer = Writer {
        settings,
        clock,
        client,
        connected: connected_rx.clone(),
        inbound: inbound_rx,
        protocol,
        replies: VecDeque::new(),
        metrics,
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
                // Queued after the subscription, so the answers are not missed.
                for (suffix, payload) in crate::dongle::input::on_connect() {
                    let _ = client.try_publish(
                        format!("{prefix}/{suffix}"),
                        QoS::AtLeastOnce,
                        false,
                        payload,
                    );
                }
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
                    Ok(message) => {
                        let route = crate::dongle::input::route(message, p.retain);
                        if let Some(message) = route.protocol {
                            // Dropping when the writer is behind only costs a read-back later.
                            let _ = inbound.try_send(Inbound {
                                suffix: suffix.to_string(),
                                retained: p.retain,
                                message,
                            });
                        }
                        if let Some(message) = route.engine
                            && events.send(DongleEvent::Message(message)).await.is_err()
                        {
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

/// Drives the verified-write protocol ([`crate::dongle::protocol`]): hands it requests,
/// messages and the time, and publishes and answers what it says.
struct Writer {
    settings: DongleSettings,
    clock: Clock,
    client: AsyncClient,
    connected: watch::Receiver<bool>,
    inbound: mpsc::Receiver<Inbound>,
    protocol: WriteProtocol,
    /// Answers owed, oldest first (the protocol finishes requests in order).
    replies: VecDeque<Owed>,
    metrics: Metrics,
}

enum Owed {
    Write(oneshot::Sender<WriteResult>, Mono),
    Snapshot(oneshot::Sender<Option<BTreeMap<String, SettingValue>>>),
}

impl Writer {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let deadline = self.protocol.next_deadline();
            let timer = {
                let clock = self.clock.clone();
                async move {
                    match deadline {
                        Some(at) => clock.sleep_until(Mono(at)).await,
                        None => std::future::pending().await,
                    }
                }
            };
            let out = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.inbound.recv() => match msg {
                    Some(m) => {
                        let now = self.now();
                        self.protocol.set_connected(*self.connected.borrow());
                        self.protocol.on_message(
                            protocol::Inbound { suffix: &m.suffix, retained: m.retained, message: &m.message },
                            now,
                        )
                    }
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = timer => {
                    let now = self.now();
                    self.protocol.on_timer(now)
                }
            };
            self.carry_out(out).await;
        }
    }

    fn now(&self) -> Duration {
        self.clock.mono().0
    }

    fn on_command(&mut self, cmd: Command) -> Vec<Out> {
        let request = match cmd {
            Command::Write {
                setting,
                value,
                reply,
            } => {
                self.replies
                    .push_back(Owed::Write(reply, self.clock.mono()));
                Request::Write { setting, value }
            }
            Command::Snapshot {
                settings,
                fresh,
                reply,
            } => {
                self.replies.push_back(Owed::Snapshot(reply));
                Request::Snapshot { settings, fresh }
            }
            Command::Refresh => Request::Refresh,
        };
        let now = self.now();
        self.protocol.set_connected(*self.connected.borrow());
        self.protocol.request(request, now)
    }

    /// Publishes and answers what the protocol says, feeding back a publish that failed.
    async fn carry_out(&mut self, out: Vec<Out>) {
        let mut queue: VecDeque<Out> = out.into();
        while let Some(o) = queue.pop_front() {
            match o {
                Out::Publish { suffix, payload } => {
                    let topic = format!("{}/{suffix}", self.settings.prefix);
                    if let Err(e) = self
                        .client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        let now = self.now();
                        queue.extend(
                            self.protocol
                                .publish_failed(format!("publish failed: {e}"), now),
                        );
                    }
                }
                Out::WriteDone(result) => {
                    if let Some(Owed::Write(reply, began)) = self.replies.pop_front() {
                        self.metrics.write_done(
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
                }
                Out::SnapshotDone(snap) => {
                    if let Some(Owed::Snapshot(reply)) = self.replies.pop_front() {
                        let _ = reply.send(snap);
                    }
                }
            }
        }
    }
}
