//! Home Assistant: the scheduler as one device with sensors and controls, through MQTT
//! discovery on the dongle's own broker connection.
//!
//! * **Discovery**: a retained config per entity under `<discovery_prefix>/<component>/<node>/`,
//!   published on every (re)connect and again whenever Home Assistant announces `online` on
//!   `<discovery_prefix>/status` (it restarted, or its retained configs were lost).
//! * **State**: one retained JSON document, published when what it shows changes (the engine's
//!   status watch), never on a timer. The only instant that changes it without an event, the
//!   dongle's last report growing too old, is waited for as a deadline.
//! * **Availability**: `online` after every ConnAck; `offline` is the connection's last will,
//!   which the broker publishes when the service dies or loses the network.
//! * **Commands**: through the engine's own commands with the HTTP API's validation
//!   ([`commands`]). A refused value is logged with the reason and the state published again,
//!   so that Home Assistant shows the real value again.
//! * **Removal**: what was announced is recorded in the data directory (`home_assistant.json`:
//!   the prefix, the node and every retained topic). A start with the section disabled empties
//!   those topics, which removes the entities, and deletes the record; a start with another
//!   node id or prefix empties the old topics. The record, not the config, says what to remove,
//!   because the node id that was announced may no longer be derivable from the config.
//!
//! The broker's ACLs are the security boundary: a command from Home Assistant needs no API key.

pub mod commands;
pub mod discovery;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use jiff::tz::TimeZone;
use rumqttc::{AsyncClient, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::session::StopReason;
use crate::dongle::client::{ExtraMessage, ExtraMqtt, ExtraPublish};
use crate::engine::{CommandError, EngineHandle};
use crate::store::Store;

use commands::Action;
use discovery::{DeviceInfo, LastCharge, Remembered, Topics};

/// The record of what was announced, in the data directory.
pub const RECORD_FILE: &str = "home_assistant.json";

/// The longest the task sleeps towards the stale deadline before looking at the clock again
/// (timers are monotonic; the deadline is wall-clock).
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// What was announced, so that it can be removed later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    discovery_prefix: String,
    node_id: String,
    topics: Vec<String>,
}

/// What the task does this run.
enum Job {
    /// Announce the device and serve it; empty `stale` topics of an earlier announcement first.
    Serve {
        messages: mpsc::Receiver<ExtraMessage>,
        stale: Vec<String>,
    },
    /// The section is disabled but something was announced: empty it, then idle.
    Remove(Record),
}

/// The Home Assistant task, before it runs.
pub struct Integration {
    job: Job,
    topics: Topics,
    device: DeviceInfo,
    record_path: PathBuf,
    tz: TimeZone,
}

/// The parts of the running service the task talks to.
pub struct Links {
    /// The dongle connection's client, for publishing (never from the task that polls it).
    pub mqtt: AsyncClient,
    pub connected: watch::Receiver<bool>,
    pub engine: EngineHandle,
    pub store: Store,
    pub clock: Clock,
}

/// Decides what this run does: with the section enabled, the task and what it adds to the
/// broker connection; disabled, a task only if an earlier announcement must be removed; else
/// nothing. `http_port` is the port the dashboard is served on.
pub fn prepare(
    config: &Config,
    data_dir: &Path,
    http_port: u16,
) -> Option<(Option<ExtraMqtt>, Integration)> {
    let ha = &config.home_assistant;
    let record_path = data_dir.join(RECORD_FILE);
    let recorded = read_record(&record_path);
    let topics = Topics::new(&ha.discovery_prefix, &ha.node_id);
    let device = DeviceInfo {
        sw_version: env!("CARGO_PKG_VERSION").to_string(),
        configuration_url: ha.configuration_url.clone().or_else(|| {
            discovery::dashboard_url(&config.server.host, http_port, host_name().as_deref())
        }),
    };
    let (extra, job) = if ha.enabled {
        let owned = topics.owned();
        let stale: Vec<String> = recorded
            .iter()
            .flat_map(|r| r.topics.iter())
            .filter(|t| !owned.contains(t))
            .cloned()
            .collect();
        // Recorded before anything is published: a crash right after announcing still
        // leaves the record that removes it.
        let mut all = owned;
        all.extend(stale.iter().cloned());
        write_record(&record_path, &ha.discovery_prefix, &ha.node_id, all);
        let (tx, rx) = mpsc::channel(64);
        let extra = ExtraMqtt {
            filters: vec![topics.ha_status.clone(), topics.command_filter()],
            last_will: Some(ExtraPublish {
                topic: topics.availability.clone(),
                payload: discovery::OFFLINE.into(),
                retain: true,
            }),
            on_connect: vec![ExtraPublish {
                topic: topics.availability.clone(),
                payload: discovery::ONLINE.into(),
                retain: true,
            }],
            messages: tx,
        };
        info!(discovery_prefix = %ha.discovery_prefix, node = %ha.node_id,
            "Home Assistant discovery is on");
        (
            Some(extra),
            Job::Serve {
                messages: rx,
                stale,
            },
        )
    } else {
        let record = recorded?;
        info!(discovery_prefix = %record.discovery_prefix, node = %record.node_id,
            "Home Assistant is disabled: removing the device announced earlier");
        (None, Job::Remove(record))
    };
    Some((
        extra,
        Integration {
            job,
            topics,
            device,
            record_path,
            tz: config.timezone.clone(),
        },
    ))
}

/// This machine's host name, for a dashboard link when the server listens on every address.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn read_record(path: &Path) -> Option<Record> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), "could not read what was announced to Home Assistant: {e}");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(path = %path.display(), "ignoring a damaged record of what was announced to Home Assistant: {e}");
            None
        }
    }
}

/// Replaces the record atomically (temp file, fsync, rename); a failure only means an old
/// announcement may have to be removed by hand later, so it is logged and not fatal.
fn write_record(path: &Path, discovery_prefix: &str, node_id: &str, topics: Vec<String>) {
    let record = Record {
        discovery_prefix: discovery_prefix.to_string(),
        node_id: node_id.to_string(),
        topics,
    };
    if read_record(path).as_ref() == Some(&record) {
        return;
    }
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(&mut tmp, &record)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        warn!(path = %path.display(), "could not record what is announced to Home Assistant (disabling the section later will not remove the device by itself): {e}");
    }
}

/// A reply from the engine being awaited alongside everything else; `true` asks for the state
/// to be published again (the command did not take effect).
type Pending = Pin<Box<dyn Future<Output = bool> + Send>>;

impl Integration {
    /// Runs until `shutdown`; never ends before (the app treats the end of a task as a failure).
    pub async fn run(self, links: Links, shutdown: CancellationToken) {
        let Integration {
            job,
            topics,
            device,
            record_path,
            tz,
        } = self;
        match job {
            Job::Remove(record) => remove(record, &record_path, links, shutdown).await,
            Job::Serve { messages, stale } => {
                let server = Server {
                    topics,
                    device,
                    record_path,
                    tz,
                    stale,
                    memory: Remembered::default(),
                    last_charge: None,
                    seen_last_stop: None,
                    sent_state: None,
                    warned_retained: false,
                };
                server.run(messages, links, shutdown).await;
            }
        }
    }
}

/// Empties every recorded topic once connected, then deletes the record.
async fn remove(record: Record, path: &Path, mut links: Links, shutdown: CancellationToken) {
    loop {
        if *links.connected.borrow_and_update() {
            for (topic, payload) in discovery::removals(record.topics.clone()) {
                publish(&links.mqtt, topic, payload).await;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(path = %path.display(), "could not delete the record of what was announced to Home Assistant: {e}")
                }
            }
            info!(node = %record.node_id, topics = record.topics.len(),
                "removed the device from Home Assistant");
            break;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = links.connected.changed() => if changed.is_err() { break },
        }
    }
    shutdown.cancelled().await;
}

/// Publishes one retained message (QoS 1). Only fails when the connection task is gone,
/// which the app reports on its own.
async fn publish(mqtt: &AsyncClient, topic: String, payload: Vec<u8>) {
    if let Err(e) = mqtt.publish(&topic, QoS::AtLeastOnce, true, payload).await {
        debug!(%topic, "not published: {e}");
    }
}

struct Server {
    topics: Topics,
    device: DeviceInfo,
    record_path: PathBuf,
    tz: TimeZone,
    /// Topics of an earlier announcement (another node id or prefix) still to be emptied.
    stale: Vec<String>,
    memory: Remembered,
    /// The history's newest record, read at start and after each charge.
    last_charge: Option<LastCharge>,
    /// The status's last stop when `last_charge` was read: a new one means a new record.
    seen_last_stop: Option<Option<(StopReason, jiff::Timestamp, String)>>,
    /// The state document last published, to publish only changes.
    sent_state: Option<Vec<u8>>,
    warned_retained: bool,
}

impl Server {
    async fn run(
        mut self,
        mut messages: mpsc::Receiver<ExtraMessage>,
        mut links: Links,
        shutdown: CancellationToken,
    ) {
        let mut status = links.engine.watch();
        let mut pending: Vec<Pending> = Vec::new();
        let (mut status_open, mut conn_open, mut messages_open) = (true, true, true);
        if *links.connected.borrow_and_update() {
            self.announce(&links).await;
        }
        loop {
            let stale_in = {
                let st = status.borrow();
                // The one instant at which the state changes without any event.
                st.online_until().map(|at| {
                    let left = at.duration_since(links.clock.now());
                    Duration::try_from(left)
                        .unwrap_or(Duration::ZERO)
                        .min(MAX_SLEEP)
                })
            };
            let stale_sleep = links.clock.sleep(stale_in.unwrap_or(MAX_SLEEP));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = links.connected.changed(), if conn_open => match changed {
                    Ok(()) => if *links.connected.borrow_and_update() {
                        self.announce(&links).await;
                    },
                    Err(_) => conn_open = false,
                },
                changed = status.changed(), if status_open => match changed {
                    Ok(()) => self.publish_state(&links, false).await,
                    Err(_) => status_open = false,
                },
                m = messages.recv(), if messages_open => match m {
                    Some(m) => {
                        if let Some(p) = self.on_message(m, &links).await {
                            pending.push(p);
                        }
                    }
                    None => messages_open = false,
                },
                republish = next_done(&mut pending), if !pending.is_empty() => {
                    if republish {
                        self.publish_state(&links, true).await;
                    }
                }
                _ = stale_sleep, if stale_in.is_some() => self.publish_state(&links, false).await,
            }
        }
    }

    /// Every config (after emptying stale ones) and the state.
    async fn announce(&mut self, links: &Links) {
        for (topic, payload) in discovery::removals(self.stale.clone()) {
            publish(&links.mqtt, topic, payload).await;
        }
        for (topic, payload) in discovery::configs(&self.topics, &self.device) {
            publish(&links.mqtt, topic, payload).await;
        }
        self.publish_state(links, true).await;
        if !self.stale.is_empty() {
            info!(
                topics = self.stale.len(),
                "removed the entities of an earlier Home Assistant node"
            );
            self.stale.clear();
            write_record(
                &self.record_path,
                &self.topics.discovery_prefix,
                &self.topics.node_id,
                self.topics.owned(),
            );
        }
        debug!(node = %self.topics.node_id, "announced to Home Assistant");
    }

    /// Publishes the state document when it differs from the last one published (or always,
    /// with `force`). Nothing goes out while disconnected: the next connect publishes it.
    async fn publish_state(&mut self, links: &Links, force: bool) {
        let status = links.engine.status();
        self.memory.update(&status);
        if self.seen_last_stop.as_ref() != Some(&status.last_stop) {
            self.seen_last_stop = Some(status.last_stop.clone());
            self.last_charge = None;
        }
        if self.last_charge.is_none() {
            self.last_charge = Some(read_last_charge(&links.store));
        }
        let doc = discovery::state(
            &status,
            &self.memory,
            self.last_charge.as_ref().unwrap_or(&LastCharge::default()),
            links.clock.now(),
            &self.tz,
        );
        if !*links.connected.borrow() || (!force && self.sent_state.as_ref() == Some(&doc)) {
            return;
        }
        publish(&links.mqtt, self.topics.state.clone(), doc.clone()).await;
        self.sent_state = Some(doc);
    }

    /// Home Assistant's birth message, or a command. A command whose answer takes time
    /// (starting or stopping a charge) comes back as a [`Pending`] to await alongside the rest.
    async fn on_message(&mut self, m: ExtraMessage, links: &Links) -> Option<Pending> {
        let payload = String::from_utf8_lossy(&m.payload).into_owned();
        if m.topic == self.topics.ha_status {
            if payload.trim() == discovery::HA_BIRTH {
                info!("Home Assistant is online; announcing the device again");
                self.announce(links).await;
            }
            return None;
        }
        let object_id = self.topics.command_object(&m.topic)?.to_string();
        if m.retained {
            // A retained command would be carried out again after every reconnect.
            if !self.warned_retained {
                self.warned_retained = true;
                warn!(topic = %m.topic, "ignoring a retained command: publish commands without the retain flag");
            }
            return None;
        }
        let status = links.engine.status();
        let decided = commands::decide(
            &object_id,
            &payload,
            &status,
            &self.memory,
            links.clock.now(),
            &self.tz,
        );
        match decided {
            Err(reason) => {
                warn!(command = %object_id, value = %payload,
                    "refused a command from Home Assistant: {reason}; showing the current value again");
                self.publish_state(links, true).await;
                None
            }
            Ok(Action::SetSchedule(input)) => {
                // Answered as soon as it is saved, so awaited here: the next command then
                // starts from the schedule this one set.
                match links.engine.set_schedule(input).await {
                    Ok(st) => {
                        info!(command = %object_id, value = %payload, schedule = ?st.schedule.as_ref().map(|s| (s.target.get(), s.time.to_string(), s.mode.as_str(), s.enabled)),
                            "schedule changed from Home Assistant");
                    }
                    Err(e) => {
                        log_failure(&object_id, &payload, &e);
                        self.publish_state(links, true).await;
                    }
                }
                None
            }
            Ok(Action::ChargeNow(target)) => {
                let engine = links.engine.clone();
                let command = object_id.clone();
                started(async move {
                    match engine.charge_now(target).await {
                        Ok(o) if o.success => {
                            info!(command = %command, target = target.get(), "{} (from Home Assistant)", o.message);
                            false
                        }
                        Ok(o) => {
                            warn!(command = %command, target = target.get(), "charge from Home Assistant not started: {}", o.message);
                            true
                        }
                        Err(e) => {
                            log_failure(&command, &target.to_string(), &e);
                            true
                        }
                    }
                })
                .await
            }
            Ok(Action::Stop) => {
                let engine = links.engine.clone();
                started(async move {
                    match engine.cancel_schedule().await {
                        Ok(o) if o.success => {
                            info!(
                                "{} (from Home Assistant; the schedule is cancelled)",
                                o.message
                            );
                            false
                        }
                        Ok(o) => {
                            warn!("stop from Home Assistant: {}", o.message);
                            true
                        }
                        Err(e) => {
                            log_failure("stop", "PRESS", &e);
                            true
                        }
                    }
                })
                .await
            }
        }
    }
}

fn log_failure(command: &str, value: &str, e: &CommandError) {
    match e {
        CommandError::ShuttingDown => {
            debug!(command, value, "command from Home Assistant not run: {e}")
        }
        _ => warn!(command, value, "command from Home Assistant failed: {e}"),
    }
}

/// Polls `fut` once, here, so that its command reaches the engine before the next message is
/// handled (the engine's queue has room unless the engine is stuck); what is left is the wait
/// for the answer, returned to be awaited alongside the rest.
async fn started(fut: impl Future<Output = bool> + Send + 'static) -> Option<Pending> {
    let mut fut: Pending = Box::pin(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(false) => None,
        Poll::Ready(true) => Some(Box::pin(std::future::ready(true))),
        Poll::Pending => Some(fut),
    }
}

/// The first of `pending` to finish (removed from the list).
fn next_done(pending: &mut Vec<Pending>) -> impl Future<Output = bool> + '_ {
    std::future::poll_fn(move |cx| {
        for i in 0..pending.len() {
            if let Poll::Ready(r) = pending[i].as_mut().poll(cx) {
                drop(pending.swap_remove(i));
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
}

/// The newest history record's stop reason and energy (nothing when there is no history).
fn read_last_charge(store: &Store) -> LastCharge {
    match store.history(1) {
        Ok(records) => records
            .first()
            .map(|r| LastCharge {
                stop_reason: r.stop_reason,
                energy_wh: r.energy_wh,
            })
            .unwrap_or_default(),
        Err(e) => {
            debug!("the charge history could not be read for Home Assistant: {e}");
            LastCharge::default()
        }
    }
}
