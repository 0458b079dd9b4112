//! Finding the dongles on a broker: which prefixes publish the dongle's topics, with what
//! firmware, SOC and firmware code.
//!
//! Three layers:
//! * [`Collector`] (pure): fed `(topic, payload, retained)` messages, it decides which topics
//!   are a dongle's and what they say, through the same codec the service uses.
//! * [`Listener`]: a separate MQTT connection subscribed to `#` that feeds a collector for a
//!   window of [`Clock`] time. The `discover` command runs it for as long as asked; the
//!   service runs it briefly in [`spawn_watch`].
//! * [`watch_prefix`]: the service's check that something arrives under the configured
//!   prefix; when nothing has a minute after the first broker connection (and every hour after
//!   that), it listens and tells the owner in the log which prefixes do publish.
//!
//! The listening is passive: nothing is published, so running it never disturbs a dongle or
//! another program on the broker.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::{MqttConfig, Secret};
use crate::domain::units::Soc;
use crate::dongle::codec::{self, DecodeError, Message};
use crate::engine::Status;

/// The most prefixes one collector keeps apart: a broker with thousands of devices cannot
/// make a listen grow without bound. Messages under further prefixes are counted as others'.
const MAX_PREFIXES: usize = 1024;

/// Which firmware generation a dongle's topics show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Before 4.3: `inputbankN` / `holdbankN`.
    Legacy,
    /// 4.3 and later: `input` / `hold` deltas, `snap/*`, `setting/updated`.
    Modern,
    /// Only topics every generation uses (`status`, `response`, ...), and no version.
    Unknown,
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Generation::Legacy => "legacy firmware (inputbankN/holdbankN)",
            Generation::Modern => "firmware 4.3+ (input/hold/status)",
            Generation::Unknown => "firmware generation unknown",
        })
    }
}

/// One prefix that published the dongle's topics.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub prefix: String,
    pub generation: Generation,
    /// From a `status` heartbeat, e.g. "4.3.0.111S3".
    pub version: Option<String>,
    /// The last SOC seen (a 4.3 delta without SOC leaves the earlier one).
    pub soc: Option<Soc>,
    /// FWCode, from `firmwarecode/response` or hold data.
    pub firmware_code: Option<String>,
    /// The last `availability` seen.
    pub online: Option<bool>,
    /// Messages on the dongle's topics under this prefix, undecodable ones included.
    pub messages: u64,
    /// Every message was retained: the broker kept them from earlier, maybe from a dongle
    /// since renamed or gone.
    pub retained_only: bool,
    /// This is `mqtt.dongle_prefix`.
    pub configured: bool,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  {}", self.prefix, self.generation)?;
        if let Some(v) = &self.version {
            write!(f, ", version {v}")?;
        }
        match self.soc {
            Some(soc) => write!(f, ", SOC {} %", soc.get())?,
            None => write!(f, ", no SOC seen")?,
        }
        if let Some(code) = &self.firmware_code {
            write!(f, ", FWCode {code}")?;
        }
        if self.online == Some(false) {
            write!(f, ", says it is offline")?;
        }
        let plural = if self.messages == 1 { "" } else { "s" };
        write!(f, ", {} message{plural}", self.messages)?;
        if self.retained_only {
            write!(f, " (all retained: kept by the broker from earlier)")?;
        }
        if self.configured {
            write!(f, "  <- mqtt.dongle_prefix")?;
        }
        Ok(())
    }
}

impl Found {
    /// A short description for a log line: "dongle-X (firmware 4.3.0.111S3, SOC 57 %)".
    fn brief(&self) -> String {
        let mut parts = Vec::new();
        match (&self.version, self.generation) {
            (Some(v), _) => parts.push(format!("firmware {v}")),
            (None, Generation::Legacy) => parts.push("legacy firmware".into()),
            (None, Generation::Modern) => parts.push("firmware 4.3+".into()),
            (None, Generation::Unknown) => {}
        }
        if let Some(soc) = self.soc {
            parts.push(format!("SOC {} %", soc.get()));
        }
        if parts.is_empty() {
            self.prefix.clone()
        } else {
            format!("{} ({})", self.prefix, parts.join(", "))
        }
    }
}

/// What a listen found.
#[derive(Debug, Clone, PartialEq)]
pub struct Findings {
    /// The configured prefix.
    pub configured: String,
    /// The dongles, by prefix; the configured prefix is among them when anything arrived under
    /// it.
    pub dongles: Vec<Found>,
    /// Messages on topics that are no dongle's (Home Assistant, other devices, this service).
    pub other_messages: u64,
    /// Why the listen ended before its time, when the broker connection dropped.
    pub cut_short: Option<String>,
}

impl Findings {
    /// Whether anything arrived under the configured prefix.
    pub fn configured_seen(&self) -> bool {
        self.dongles.iter().any(|d| d.configured)
    }

    /// The dongle the configured prefix most likely meant: the same ID in another case, else
    /// the closest spelling. Live dongles come before ones known only from retained messages.
    pub fn suggestion(&self) -> Option<&Found> {
        let wanted = self.configured.to_lowercase();
        self.dongles
            .iter()
            .filter(|d| !d.configured)
            .min_by_key(|d| {
                let distance = edit_distance(&wanted, &d.prefix.to_lowercase());
                (d.retained_only, distance, u64::MAX - d.messages)
            })
    }

    /// Found by prefix.
    pub fn get(&self, prefix: &str) -> Option<&Found> {
        self.dongles.iter().find(|d| d.prefix == prefix)
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// What the messages under one prefix said so far.
#[derive(Debug, Clone, Default)]
struct Seen {
    messages: u64,
    live: u64,
    /// A message only a dongle sends: telemetry, settings, a write answer, a firmware code, a
    /// heartbeat with a version. `availability` (many devices have one) or an undecodable
    /// message alone does not make a prefix a dongle.
    evidence: bool,
    legacy: bool,
    modern: bool,
    version: Option<String>,
    soc: Option<Soc>,
    firmware_code: Option<String>,
    online: Option<bool>,
}

impl Seen {
    fn generation(&self) -> Generation {
        if self.legacy {
            Generation::Legacy
        } else if self.modern {
            Generation::Modern
        } else {
            self.version
                .as_deref()
                .and_then(version_generation)
                .unwrap_or(Generation::Unknown)
        }
    }
}

/// The generation a version like "4.3.0.111S3" or "4.2.1" belongs to.
fn version_generation(version: &str) -> Option<Generation> {
    let mut parts = version.trim().trim_start_matches(['v', 'V']).split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts
        .next()
        .and_then(|m| {
            let digits: String = m.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0);
    Some(if (major, minor) >= (4, 3) {
        Generation::Modern
    } else {
        Generation::Legacy
    })
}

/// A dongle topic split at its prefix, with what the codec made of the payload.
struct DongleTopic<'a> {
    prefix: &'a str,
    suffix: &'a str,
    decoded: Result<Message, DecodeError>,
}

/// Splits `topic` into a prefix and one of the dongle's inbound topics (`inputbank1`,
/// `snap/hold`, `status`, ...), as the codec knows them. The longest known suffix wins, so
/// `x/snap/input` is prefix `x`. Topics we publish ourselves (`update`, `snapshot/request`)
/// and every other topic give `None`.
fn dongle_topic<'a>(topic: &'a str, payload: &[u8]) -> Option<DongleTopic<'a>> {
    topic.match_indices('/').find_map(|(at, _)| {
        let prefix = &topic[..at];
        let suffix = &topic[at + 1..];
        if prefix.is_empty() || suffix.is_empty() {
            return None;
        }
        match codec::decode(prefix, topic, payload) {
            Ok(Message::Ignored) => None,
            decoded => Some(DongleTopic {
                prefix,
                suffix,
                decoded,
            }),
        }
    })
}

/// Decides, message by message, which prefixes are dongles and what they report.
#[derive(Debug, Clone)]
pub struct Collector {
    configured: String,
    seen: BTreeMap<String, Seen>,
    other_messages: u64,
}

impl Collector {
    /// A collector that marks `configured` (the `mqtt.dongle_prefix`) in its findings.
    pub fn new(configured: &str) -> Collector {
        Collector {
            configured: configured.to_string(),
            seen: BTreeMap::new(),
            other_messages: 0,
        }
    }

    /// Takes one message. Returns the prefix when this message made it count as a dongle for
    /// the first time.
    pub fn offer(&mut self, topic: &str, payload: &[u8], retained: bool) -> Option<String> {
        let Some(t) = dongle_topic(topic, payload) else {
            self.other_messages += 1;
            return None;
        };
        if !self.seen.contains_key(t.prefix) && self.seen.len() >= MAX_PREFIXES {
            self.other_messages += 1;
            return None;
        }
        let seen = self.seen.entry(t.prefix.to_string()).or_default();
        let was_dongle = seen.evidence;
        seen.messages += 1;
        if !retained {
            seen.live += 1;
        }
        if t.suffix.starts_with("inputbank") || t.suffix.starts_with("holdbank") {
            seen.legacy = true;
        } else if matches!(
            t.suffix,
            "input" | "hold" | "snap/input" | "snap/hold" | "setting/updated"
        ) {
            seen.modern = true;
        }
        match t.decoded {
            Ok(Message::Telemetry(fields)) => {
                seen.evidence = true;
                if let Some(soc) = codec::telemetry(&fields).soc {
                    seen.soc = Some(soc);
                }
            }
            Ok(Message::Settings(fields)) => {
                seen.evidence = true;
                if let Some(code) = codec::firmware_code(&fields) {
                    seen.firmware_code = Some(code);
                }
            }
            Ok(Message::FirmwareCode(code)) => {
                seen.evidence = true;
                seen.firmware_code = Some(code);
            }
            Ok(Message::Status { version }) => {
                if let Some(v) = version {
                    seen.evidence = true;
                    seen.version = Some(v);
                }
            }
            Ok(Message::SettingUpdated(_) | Message::WriteResponse { .. }) => {
                seen.evidence = true;
            }
            Ok(Message::Availability { online }) => seen.online = Some(online),
            Ok(Message::Ignored) | Err(_) => {}
        }
        (!was_dongle && seen.evidence).then(|| t.prefix.to_string())
    }

    /// What was found so far: the prefixes that showed they are dongles, and the configured
    /// one when anything at all arrived under it.
    pub fn findings(&self) -> Findings {
        let dongles = self
            .seen
            .iter()
            .filter(|(prefix, s)| s.evidence || **prefix == self.configured)
            .map(|(prefix, s)| Found {
                prefix: prefix.clone(),
                generation: s.generation(),
                version: s.version.clone(),
                soc: s.soc,
                firmware_code: s.firmware_code.clone(),
                online: s.online,
                messages: s.messages,
                retained_only: s.live == 0,
                configured: *prefix == self.configured,
            })
            .collect();
        let not_listed: u64 = self
            .seen
            .iter()
            .filter(|(prefix, s)| !s.evidence && **prefix != self.configured)
            .map(|(_, s)| s.messages)
            .sum();
        Findings {
            configured: self.configured.clone(),
            dongles,
            other_messages: self.other_messages + not_listed,
            cut_short: None,
        }
    }
}

/// The findings of a whole sequence of messages (what a listen does, without a broker).
pub fn collect<'a>(
    configured: &str,
    messages: impl IntoIterator<Item = (&'a str, &'a [u8], bool)>,
) -> Findings {
    let mut c = Collector::new(configured);
    for (topic, payload, retained) in messages {
        c.offer(topic, payload, retained);
    }
    c.findings()
}

/// What the `discover` command prints, and whether anything arrived under the configured
/// prefix (its exit code: 0 when it did, 1 when not).
pub fn report(findings: &Findings, listened: Duration) -> (Vec<String>, bool) {
    let mut lines: Vec<String> = findings.dongles.iter().map(ToString::to_string).collect();
    if let Some(why) = &findings.cut_short {
        lines.push(format!(
            "the broker connection dropped before the end of the listen: {why}"
        ));
    }
    let secs = listened.as_secs_f64();
    if findings.dongles.is_empty() {
        lines.push(format!(
            "no dongle published on this broker in {secs} s ({}). Check the dongle's MQTT settings on its web page (broker address and port, login); a 4.3+ dongle whose values do not change may only send its status every 30 s: listen longer with --seconds",
            others(findings.other_messages)
        ));
    }
    let configured = &findings.configured;
    let suggestion = findings.suggestion().map(|d| d.prefix.as_str());
    lines.push(match findings.dongles.iter().find(|d| d.configured) {
        Some(d) if !d.retained_only => {
            format!("mqtt.dongle_prefix is {configured:?}: the dongle publishes under it")
        }
        // The broker kept these from an earlier connection of the dongle: the prefix was
        // right then, but the dongle is not publishing now.
        Some(_) => format!(
            "mqtt.dongle_prefix is {configured:?}: the broker keeps retained messages under it, but the dongle published nothing new in {secs} s (is it offline, or renamed{}?)",
            suggestion.map(|p| format!(" to {p:?}")).unwrap_or_default()
        ),
        None => format!(
            "mqtt.dongle_prefix is {configured:?}, which nothing published under{}",
            suggestion
                .map(|p| format!("; did you mean {p:?}?"))
                .unwrap_or_else(|| ".".into())
        ),
    });
    (lines, findings.configured_seen())
}

fn others(n: u64) -> String {
    match n {
        0 => "nothing at all was published".into(),
        1 => "1 message on other topics".into(),
        n => format!("{n} messages on other topics"),
    }
}

// ---- Listening on a broker -------------------------------------------------------------------

/// How to reach the broker for a listen.
#[derive(Debug, Clone)]
pub struct ListenSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Its own client id: a broker drops the older of two connections with the same id.
    pub client_id: String,
    pub keep_alive: Duration,
}

impl ListenSettings {
    /// The service's broker settings, with `id_suffix` appended to its client id.
    pub fn from_config(mqtt: &MqttConfig, id_suffix: &str) -> ListenSettings {
        ListenSettings {
            host: mqtt.host.clone(),
            port: mqtt.port,
            username: mqtt.username.clone(),
            password: mqtt.password.clone(),
            client_id: format!("{}{id_suffix}", mqtt.client_id),
            keep_alive: mqtt.keep_alive,
        }
    }
}

/// How long connecting and subscribing may take before a listen gives up.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// Why a listen could not start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ListenError {
    #[error("cannot connect to the MQTT broker at {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "the MQTT broker at {host}:{port} refused a subscription to every topic (#); its access rules may not allow this login to read all topics"
    )]
    Refused { host: String, port: u16 },
}

/// A connection to the broker subscribed to every topic, ready to listen.
pub struct Listener {
    client: AsyncClient,
    eventloop: EventLoop,
    collector: Collector,
}

impl Listener {
    /// Connects and subscribes to `#`; returns once the broker has confirmed the
    /// subscription, so that everything published from then on is heard. `configured` is
    /// marked in the findings.
    pub async fn connect(
        settings: &ListenSettings,
        configured: &str,
    ) -> Result<Listener, ListenError> {
        let mut opts = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        opts.set_keep_alive(settings.keep_alive);
        opts.set_clean_session(true);
        // Every topic comes in, including other programs' large retained payloads (camera
        // snapshots); a message over the limit would close the connection.
        opts.set_max_packet_size(16 * 1024 * 1024, 64 * 1024);
        if let Some(user) = &settings.username {
            let password = settings
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            opts.set_credentials(user.clone(), password);
        }
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let mut collector = Collector::new(configured);
        let connect_error = |reason: String| ListenError::Connect {
            host: settings.host.clone(),
            port: settings.port,
            reason,
        };
        let subscribed = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // QoS 0: a listener needs no redelivery, and the broker keeps nothing
                        // for it.
                        client
                            .try_subscribe("#", QoS::AtMostOnce)
                            .map_err(|e| connect_error(e.to_string()))?;
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, SubscribeReasonCode::Failure))
                        {
                            return Err(ListenError::Refused {
                                host: settings.host.clone(),
                                port: settings.port,
                            });
                        }
                        return Ok(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        collector.offer(&p.topic, &p.payload, p.retain);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(connect_error(explain(&e))),
                }
            }
        };
        match tokio::time::timeout(CONNECT_LIMIT, subscribed).await {
            Ok(Ok(())) => Ok(Listener {
                client,
                eventloop,
                collector,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(connect_error(format!(
                "no answer within {} s",
                CONNECT_LIMIT.as_secs()
            ))),
        }
    }

    /// Listens for `window` of `clock` time, or until `done` says the collector has what it
    /// needs (checked after every message), then disconnects.
    pub async fn listen(
        mut self,
        clock: &Clock,
        window: Duration,
        mut done: impl FnMut(&Collector) -> bool,
    ) -> Findings {
        let end = clock.sleep(window);
        tokio::pin!(end);
        let mut cut_short = None;
        if !done(&self.collector) {
            loop {
                tokio::select! {
                    _ = &mut end => break,
                    polled = self.eventloop.poll() => match polled {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(prefix) = self.collector.offer(&p.topic, &p.payload, p.retain) {
                                debug!(%prefix, "heard a dongle on the broker");
                            }
                            if done(&self.collector) {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            cut_short = Some(explain(&e));
                            break;
                        }
                    },
                }
            }
        }
        if cut_short.is_none() {
            self.disconnect().await;
        }
        Findings {
            cut_short,
            ..self.collector.findings()
        }
    }

    /// Says goodbye, so that the broker does not log a dropped connection, and waits (a
    /// moment at most) for the broker to close it: a broker may still be tearing down the
    /// old connection when the next listen connects (rumqttd then drops the new one).
    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let closed = async { while self.eventloop.poll().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1), closed).await;
    }
}

/// A connection error in the owner's terms.
fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "the broker refused the user name or password (mqtt.username, mqtt.password)".into()
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            "the broker refused this login (not authorised; check mqtt.username and mqtt.password)"
                .into()
        }
        other => other.to_string(),
    }
}

/// Connects, listens for `window` of `clock` time (or until `done`), and returns what was
/// found: what the `discover` command does.
pub async fn discover(
    settings: &ListenSettings,
    configured: &str,
    clock: &Clock,
    window: Duration,
    done: impl FnMut(&Collector) -> bool,
) -> Result<Findings, ListenError> {
    let listener = Listener::connect(settings, configured).await?;
    Ok(listener.listen(clock, window, done).await)
}

// ---- The service's watch on its prefix -------------------------------------------------------

/// How long after the first broker connection the service looks for its dongle elsewhere when
/// nothing has arrived under its prefix.
pub const FIRST_LOOK: Duration = Duration::from_secs(60);
/// How often it looks again while nothing arrives.
pub const LOOK_AGAIN: Duration = Duration::from_secs(3600);
/// How long the service's own listen lasts: long enough for a legacy dongle's telemetry
/// (every 5 s by default), short enough to be a glance.
pub const PROBE_WINDOW: Duration = Duration::from_secs(5);

/// What one look at the broker gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Listened(Findings),
    /// The listen could not start.
    Failed(String),
}

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEnd {
    /// Something arrived under the configured prefix.
    Heard,
    Shutdown,
    /// The engine is gone (its status channel closed).
    EngineGone,
}

/// Starts the service's watch on its prefix: a task of its own, with its own broker
/// connection for the listens, never on the engine's path. It ends once the dongle is heard.
pub fn spawn_watch(
    mqtt: &MqttConfig,
    clock: Clock,
    status: watch::Receiver<Status>,
    shutdown: CancellationToken,
) -> JoinHandle<WatchEnd> {
    let settings = ListenSettings::from_config(mqtt, "-probe");
    let prefix = mqtt.dongle_prefix.clone();
    tokio::spawn(async move {
        let look = || probe(&settings, &prefix, &clock);
        watch_prefix(&prefix, &clock, status, shutdown, look).await
    })
}

/// One short listen by the service.
async fn probe(settings: &ListenSettings, prefix: &str, clock: &Clock) -> Probe {
    let listener = match Listener::connect(settings, prefix).await {
        Ok(l) => l,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    info!(
        "nothing has arrived under mqtt.dongle_prefix {prefix:?} yet: listening to every topic on the broker for {} s to see which dongles publish there",
        PROBE_WINDOW.as_secs()
    );
    Probe::Listened(listener.listen(clock, PROBE_WINDOW, |_| false).await)
}

/// Waits for the first broker connection (from the engine's status), then, while nothing
/// has arrived under `prefix` (`last_message` is None), looks at the broker with `probe`
/// [`FIRST_LOOK`] after that connection and every [`LOOK_AGAIN`] after, and logs what it
/// found. Waits are on `clock`; ends when a message arrives.
pub async fn watch_prefix<F, Fut>(
    prefix: &str,
    clock: &Clock,
    mut status: watch::Receiver<Status>,
    shutdown: CancellationToken,
    mut probe: F,
) -> WatchEnd
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Probe>,
{
    let heard = |s: &Status| s.last_message.is_some();
    let connected = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return WatchEnd::Shutdown,
        r = status.wait_for(|s| s.mqtt_connected || heard(s)) => r.map(|s| heard(&s)),
    };
    match connected {
        Ok(true) => return WatchEnd::Heard,
        Ok(false) => {}
        Err(_) => return WatchEnd::EngineGone,
    }
    let mut at = clock.mono() + FIRST_LOOK;
    let mut since = FIRST_LOOK;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return WatchEnd::Shutdown,
            r = status.wait_for(heard) => return if r.is_ok() { WatchEnd::Heard } else { WatchEnd::EngineGone },
            _ = clock.sleep_until(at) => {}
        }
        let found = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return WatchEnd::Shutdown,
            r = status.wait_for(heard) => return if r.is_ok() { WatchEnd::Heard } else { WatchEnd::EngineGone },
            found = probe() => found,
        };
        match &found {
            Probe::Listened(f) if f.configured_seen() => {
                // The engine hears it on its own connection too.
                debug!(%prefix, "the dongle publishes under the configured prefix");
                return WatchEnd::Heard;
            }
            Probe::Listened(f) => {
                let names: Vec<&str> = f.dongles.iter().map(|d| d.prefix.as_str()).collect();
                warn!(dongle_prefix = %prefix, publishing = ?names, "{}", warning(prefix, since, f));
            }
            Probe::Failed(e) => warn!(
                dongle_prefix = %prefix,
                "nothing has arrived under mqtt.dongle_prefix {prefix:?} in the {} since the service connected to the broker, and looking for dongles on the broker failed: {e}. Run `solar-charging-backend discover` to list the prefixes that publish there",
                minutes(since)
            ),
        }
        at = clock.mono() + LOOK_AGAIN;
        since += LOOK_AGAIN;
    }
}

/// The warning for a prefix nothing arrived under, `since` after the first connection, given
/// what a listen found.
pub fn warning(prefix: &str, since: Duration, findings: &Findings) -> String {
    let lead = format!(
        "nothing has arrived under mqtt.dongle_prefix {prefix:?} in the {} since the service connected to the broker",
        minutes(since)
    );
    let listed: Vec<String> = findings.dongles.iter().map(Found::brief).collect();
    match findings.suggestion() {
        Some(best) => format!(
            "{lead}, but {} on the broker: {}. Set mqtt.dongle_prefix to your dongle's, exactly as shown (did you mean {:?}?); `solar-charging-backend discover` lists them too",
            if listed.len() == 1 {
                "this dongle publishes"
            } else {
                "these dongles publish"
            },
            listed.join(", "),
            best.prefix
        ),
        None => format!(
            "{lead}, and no dongle published on the broker in a {} s listen ({}). Check the dongle's MQTT settings on its web page: the broker address and port (and login) must be this broker's; `solar-charging-backend discover` listens longer",
            PROBE_WINDOW.as_secs(),
            others(findings.other_messages)
        ),
    }
}

fn minutes(d: Duration) -> String {
    match d.as_secs() / 60 {
        1 => "1 minute".into(),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests;
