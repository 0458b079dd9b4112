//! Telling the owner what happened: the core's events delivered to the iPhone app (APNs),
//! ntfy and webhooks, from a durable outbox, off the engine's path.
//!
//! * The engine hands each batch of events to [`Notifier::accept`] right after the save that
//!   holds them; `accept` fans them out to the channels that want them (and, for the app, to
//!   each registered phone whose preferences allow it), writes `outbox.json` and returns. It
//!   never waits on the network.
//! * [`Notifier::run`] is the delivery task: per channel (and phone) it sends the oldest entry
//!   first, one at a time, retrying with a growing backoff for up to six hours
//!   ([`outbox::GIVE_UP_AFTER`]), and at most [`BURST`] messages at once then one a minute
//!   per channel. A restart picks up where it was: entries are removed only once delivered.
//! * The app's `/api/device/*` endpoints register phones in `devices.json`; a token Apple
//!   calls unregistered (410) or bad is removed with its pending entries.

pub mod apns;
pub mod devices;
pub mod https;
pub mod message;
pub mod outbox;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, Mono};
use crate::config::{ApnsConfig, Config, NtfyConfig, WebhookConfig};
use crate::domain::event::{Event, EventKind};
use crate::store::Store;
use apns::{ApnsClient, ApnsOutcome, ApnsPush, ApnsSettings, PushType};
use devices::{DEVICES_FILE, Devices, parse_token, short_token};
use outbox::{Attempt, OUTBOX_FILE, Outbox, Settled, Target};

/// How many messages a channel may send at once before the rate limit applies.
pub const BURST: u32 = 10;
/// Past the burst, one message per channel per this long.
pub const REFILL: Duration = Duration::from_secs(60);
/// The longest the delivery task sleeps before looking at the wall clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How long a stopping service waits for deliveries in flight to finish.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Whether the app's push notifications can be sent, as the device endpoints report it.
#[derive(Clone)]
pub enum Push {
    /// No `apns:` section, or one that cannot be used (missing keys, a bad key file).
    NotConfigured,
    /// `apns.enabled: false`.
    NotEnabled,
    Ready(Arc<ApnsClient>),
}

#[derive(Debug, Clone)]
enum Kind {
    Apns,
    Ntfy(NtfyConfig),
    Webhook(WebhookConfig),
}

#[derive(Debug, Clone)]
struct Channel {
    id: String,
    /// Shown in the API: no secrets, tokens or full URLs.
    name: String,
    kind: Kind,
    events: Option<Vec<EventKind>>,
}

impl Channel {
    fn wants(&self, kind: EventKind) -> bool {
        kind == EventKind::Test || self.events.as_ref().is_none_or(|l| l.contains(&kind))
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Apns => "apns",
            Kind::Ntfy(_) => "ntfy",
            Kind::Webhook(_) => "webhook",
        }
    }
}

/// A channel's last attempt, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastDelivery {
    pub at: Timestamp,
    pub event: EventKind,
    pub ok: bool,
    pub detail: String,
}

/// A channel as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelState {
    pub kind: &'static str,
    pub name: String,
    pub events: Vec<EventKind>,
    pub last_delivery: Option<LastDelivery>,
    pub pending: usize,
}

/// One channel's answer to a test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What the device endpoints answer: `success` and the old backend's message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAnswer {
    pub success: bool,
    pub message: &'static str,
}

struct Shared {
    outbox: Outbox,
    devices: Devices,
    last: HashMap<String, LastDelivery>,
}

struct Inner {
    store: Store,
    tz: TimeZone,
    push: Push,
    channels: Vec<Channel>,
    http: Option<reqwest::Client>,
    shared: Mutex<Shared>,
    wake: tokio::sync::Notify,
}

/// The notifier's handle: cheap to clone, shared by the engine, the API and the delivery task.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Notifier {
    /// Builds the channels from config and loads the outbox and the registered devices.
    /// Problems (a bad key file, an unreadable outbox) are logged; the service starts anyway.
    pub fn new(config: &Config, store: Store, now: Timestamp) -> Notifier {
        let push = push_setup(config.apns.as_ref());
        let mut channels = Vec::new();
        if let Push::Ready(_) = push {
            channels.push(Channel {
                id: "apns".into(),
                name: "iPhone app".into(),
                kind: Kind::Apns,
                events: None,
            });
        }
        if let Some(n) = &config.notifications.ntfy {
            channels.push(Channel {
                id: "ntfy".into(),
                name: format!("ntfy ({})", host_of(&n.url)),
                kind: Kind::Ntfy(n.clone()),
                events: n.events.clone(),
            });
        }
        for (i, w) in config.notifications.webhooks.iter().enumerate() {
            channels.push(Channel {
                id: format!("webhook-{}", i + 1),
                name: format!("webhook {} ({})", i + 1, host_of(&w.url)),
                kind: Kind::Webhook(w.clone()),
                events: w.events.clone(),
            });
        }
        let http = channels
            .iter()
            .any(|c| !matches!(c.kind, Kind::Apns))
            .then(|| https::client(None, false))
            .and_then(|r| {
                r.map_err(|e| error!("ntfy and webhooks cannot be used: {e}"))
                    .ok()
            });
        let mut outbox = match store.read_or_set_aside(OUTBOX_FILE, now, Outbox::decode) {
            Ok(o) => o.unwrap_or_default(),
            Err(why) => {
                error!("{why}: notifications waiting in it are lost");
                Outbox::default()
            }
        };
        let devices = match store.read_or_set_aside(DEVICES_FILE, now, Devices::decode) {
            Ok(d) => d.unwrap_or_default(),
            Err(why) => {
                error!("{why}: the app must register again (it does at its next launch)");
                Devices::default()
            }
        };
        let known: HashSet<String> = channels.iter().map(|c| c.id.clone()).collect();
        let dropped = outbox.retain_channels(&|c| known.contains(c));
        if dropped > 0 {
            warn!(
                dropped,
                "notifications waiting for channels no longer configured were dropped"
            );
        }
        if !outbox.entries.is_empty() {
            info!(
                pending = outbox.entries.len(),
                "notifications from before the restart are still to be delivered"
            );
        }
        Notifier {
            inner: Arc::new(Inner {
                store,
                tz: config.timezone.clone(),
                push,
                channels,
                http,
                shared: Mutex::new(Shared {
                    outbox,
                    devices,
                    last: HashMap::new(),
                }),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes events into the outbox (each id once) and saves it; the delivery task is woken.
    /// Quick and local: a file write, never the network.
    pub fn accept(&self, events: &[Event], now: Timestamp) -> Result<(), String> {
        let mut shared = self.shared();
        let before = shared.outbox.clone();
        let mut queued = false;
        for e in events {
            let targets = self.targets(e, &shared.devices);
            queued |= !targets.is_empty();
            shared.outbox.accept(e, targets, now);
        }
        if !queued {
            // Nothing to send (no channel wants these): remembered, not written.
            return Ok(());
        }
        if let Err(e) = self
            .inner
            .store
            .write_atomic(OUTBOX_FILE, &shared.outbox.encode())
        {
            shared.outbox = before;
            return Err(e.to_string());
        }
        drop(shared);
        self.inner.wake.notify_one();
        Ok(())
    }

    fn targets(&self, e: &Event, devices: &Devices) -> Vec<Target> {
        let mut out = Vec::new();
        for c in self.inner.channels.iter().filter(|c| c.wants(e.kind)) {
            match c.kind {
                Kind::Apns => out.extend(
                    devices
                        .devices
                        .iter()
                        .filter(|d| d.wants(e.kind))
                        .map(|d| (c.id.clone(), Some(d.token.clone()))),
                ),
                _ => out.push((c.id.clone(), None)),
            }
        }
        out
    }

    // ---- the app's device endpoints ------------------------------------------------------

    /// `POST /api/device/register`.
    pub fn register(
        &self,
        token: &str,
        preferences: Option<Map<String, Value>>,
        now: Timestamp,
    ) -> DeviceAnswer {
        match self.inner.push {
            Push::NotConfigured => {
                return answer(false, "Push notifications not configured on server");
            }
            Push::NotEnabled => return answer(false, "Push notifications not enabled"),
            Push::Ready(_) => {}
        }
        let Some(token) = parse_token(token) else {
            return answer(false, "Invalid device token format");
        };
        let mut shared = self.shared();
        let before = shared.devices.clone();
        shared.devices.register(token.clone(), preferences, now);
        if let Err(e) = self
            .inner
            .store
            .write_atomic(DEVICES_FILE, &shared.devices.encode())
        {
            // Registered for now; the app registers again at its next launch.
            error!("the registered devices could not be saved: {e}");
        }
        if before.devices.len() != shared.devices.devices.len() {
            info!(device = %short_token(&token), "a device registered for push notifications");
        }
        answer(true, "Device registered for push notifications")
    }

    /// `DELETE /api/device/unregister`.
    pub fn unregister(&self, token: &str) -> DeviceAnswer {
        if let Push::NotConfigured = self.inner.push {
            return answer(false, "Push notifications not configured");
        }
        let token = parse_token(token).unwrap_or_else(|| token.to_string());
        let mut shared = self.shared();
        if !shared.devices.unregister(&token) {
            return answer(false, "Device token not found");
        }
        shared.outbox.drop_device(&token);
        self.save_both(&shared);
        info!(device = %short_token(&token), "a device unregistered from push notifications");
        answer(true, "Device unregistered")
    }

    /// `GET /api/device/status`: whether push works, and how many phones are registered.
    pub fn device_status(&self) -> (bool, usize) {
        (
            matches!(self.inner.push, Push::Ready(_)),
            self.shared().devices.devices.len(),
        )
    }

    fn save_both(&self, shared: &Shared) {
        for (name, bytes) in [
            (DEVICES_FILE, shared.devices.encode()),
            (OUTBOX_FILE, shared.outbox.encode()),
        ] {
            if let Err(e) = self.inner.store.write_atomic(name, &bytes) {
                error!("{name} could not be saved: {e}");
            }
        }
    }

    // ---- what the API shows ---------------------------------------------------------------

    pub fn channels(&self) -> Vec<ChannelState> {
        let shared = self.shared();
        self.inner
            .channels
            .iter()
            .map(|c| ChannelState {
                kind: c.kind_name(),
                name: c.name.clone(),
                events: c.events.clone().unwrap_or_else(|| {
                    EventKind::ALL
                        .into_iter()
                        .filter(|k| *k != EventKind::Test)
                        .collect()
                }),
                last_delivery: shared.last.get(&c.id).cloned(),
                pending: shared.outbox.pending(&c.id),
            })
            .collect()
    }

    /// Sends a `test` event to every channel now (the app: every registered phone) and says
    /// how each went. Not queued: the answer is the outcome.
    pub async fn test(&self, now: Timestamp) -> Vec<TestResult> {
        let mut event = Event::new(
            format!("test-{}", now.as_millisecond()),
            EventKind::Test,
            now,
        );
        event.detail = Some("Notifications from the solar charging scheduler work.".into());
        let mut results = Vec::new();
        for c in &self.inner.channels {
            let (ok, detail) = match c.kind {
                Kind::Apns => {
                    let tokens: Vec<String> = self
                        .shared()
                        .devices
                        .devices
                        .iter()
                        .map(|d| d.token.clone())
                        .collect();
                    if tokens.is_empty() {
                        (
                            false,
                            "no device is registered: open the app once to register it".into(),
                        )
                    } else {
                        let mut failures = Vec::new();
                        for token in &tokens {
                            let (attempt, drop) = self.send(c, Some(token), &event, now).await;
                            if drop {
                                self.drop_token(token);
                            }
                            if let Some(why) = failure(&attempt) {
                                failures.push(format!("{}: {why}", short_token(token)));
                            }
                        }
                        if failures.is_empty() {
                            (true, format!("delivered to {} device(s)", tokens.len()))
                        } else {
                            (false, failures.join("; "))
                        }
                    }
                }
                _ => {
                    let (attempt, _) = self.send(c, None, &event, now).await;
                    match failure(&attempt) {
                        None => (true, "delivered".into()),
                        Some(why) => (false, why),
                    }
                }
            };
            self.shared().last.insert(
                c.id.clone(),
                LastDelivery {
                    at: now,
                    event: EventKind::Test,
                    ok,
                    detail: detail.clone(),
                },
            );
            results.push(TestResult {
                name: c.name.clone(),
                ok,
                detail,
            });
        }
        results
    }

    // ---- delivery ---------------------------------------------------------------------------

    /// Delivers what the outbox holds until `shutdown`; then waits briefly for the
    /// deliveries in flight (what is not done stays in the outbox for the next start).
    pub async fn run(self, clock: Clock, shutdown: CancellationToken) {
        let mut inflight: JoinSet<(u64, Target, Attempt, bool)> = JoinSet::new();
        let mut busy: HashSet<Target> = HashSet::new();
        let mut buckets: HashMap<String, Bucket> = HashMap::new();
        loop {
            let now = clock.now();
            let mono = clock.mono();
            let due = self.shared().outbox.due(now, &|k| busy.contains(k));
            let mut limited_until: Option<Mono> = None;
            let mut limited: HashSet<String> = HashSet::new();
            for entry in due {
                let bucket = buckets
                    .entry(entry.channel.clone())
                    .or_insert_with(|| Bucket::new(mono));
                if let Err(at) = bucket.take(mono) {
                    limited_until = Some(limited_until.map_or(at, |l| l.min(at)));
                    limited.insert(entry.channel.clone());
                    continue;
                }
                let Some(channel) = self.channel(&entry.channel).cloned() else {
                    continue;
                };
                busy.insert(entry.key());
                let me = self.clone();
                inflight.spawn(async move {
                    let (attempt, drop) = me
                        .send(&channel, entry.device.as_deref(), &entry.event, now)
                        .await;
                    (entry.seq, entry.key(), attempt, drop)
                });
            }
            let mut wait = MAX_SLEEP;
            // Channels busy or rate-limited are woken by their delivery or by the limit.
            let waiting = |k: &Target| busy.contains(k) || limited.contains(&k.0);
            if let Some(t) = self.shared().outbox.next_due(&waiting) {
                let until = now.duration_until(t);
                wait = wait.min(Duration::try_from(until).unwrap_or(Duration::ZERO));
            }
            if let Some(at) = limited_until {
                wait = wait.min(at.saturating_since(mono).max(Duration::from_millis(1)));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok((seq, key, attempt, drop)) = joined {
                        busy.remove(&key);
                        self.settle(seq, &key, attempt, drop, clock.now());
                    }
                }
                _ = clock.sleep(wait) => {}
            }
        }
        let drain = async {
            while let Some(joined) = inflight.join_next().await {
                if let Ok((seq, key, attempt, drop)) = joined {
                    self.settle(seq, &key, attempt, drop, clock.now());
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            debug!("notifications still being sent are kept for the next start");
        }
    }

    fn channel(&self, id: &str) -> Option<&Channel> {
        self.inner.channels.iter().find(|c| c.id == id)
    }

    fn settle(&self, seq: u64, key: &Target, attempt: Attempt, drop: bool, now: Timestamp) {
        let mut shared = self.shared();
        let Some(entry) = shared.outbox.entries.iter().find(|e| e.seq == seq).cloned() else {
            return;
        };
        let name = self
            .channel(&key.0)
            .map_or(key.0.clone(), |c| c.name.clone());
        let detail = failure(&attempt).unwrap_or_else(|| "delivered".into());
        let ok = matches!(attempt, Attempt::Delivered);
        match shared.outbox.settle(seq, attempt, now) {
            Some(Settled::Delivered) => {
                info!(channel = %name, event = %entry.event.kind, id = %entry.event.id, "notification delivered");
            }
            Some(Settled::Retrying(at)) => {
                warn!(channel = %name, event = %entry.event.kind, attempts = entry.attempts + 1, retry_at = %at, "a notification could not be delivered and is tried again: {detail}");
            }
            Some(Settled::Dropped(why)) => {
                warn!(channel = %name, event = %entry.event.kind, id = %entry.event.id, "a notification was dropped: {why}");
            }
            None => {}
        }
        shared.last.insert(
            key.0.clone(),
            LastDelivery {
                at: now,
                event: entry.event.kind,
                ok,
                detail,
            },
        );
        let forgotten = drop
            && key
                .1
                .as_deref()
                .is_some_and(|token| self.forget_device(&mut shared, token));
        if !forgotten
            && let Err(e) = self
                .inner
                .store
                .write_atomic(OUTBOX_FILE, &shared.outbox.encode())
        {
            error!(
                "the outbox could not be saved (a delivered notification may be sent again after a restart): {e}"
            );
        }
    }

    fn drop_token(&self, token: &str) {
        let mut shared = self.shared();
        self.forget_device(&mut shared, token);
    }

    /// Removes a device Apple says no longer takes notifications, with what waited for it,
    /// and saves both files; false when it was not registered.
    fn forget_device(&self, shared: &mut Shared, token: &str) -> bool {
        if !shared.devices.unregister(token) {
            return false;
        }
        shared.outbox.drop_device(token);
        warn!(device = %short_token(token), "Apple says this device no longer takes notifications from the app: it was unregistered");
        self.save_both(shared);
        true
    }

    /// One attempt to send `event` on `channel`; `true` beside it when Apple says the device
    /// token is no longer valid.
    async fn send(
        &self,
        channel: &Channel,
        device: Option<&str>,
        event: &Event,
        now: Timestamp,
    ) -> (Attempt, bool) {
        let tz = &self.inner.tz;
        match &channel.kind {
            Kind::Apns => {
                let (Push::Ready(client), Some(token)) = (&self.inner.push, device) else {
                    return (Attempt::Failed("push is not set up".into()), false);
                };
                let push = ApnsPush {
                    payload: message::apns_payload(event, tz),
                    push_type: PushType::Alert,
                    apns_id: None,
                    collapse_id: None,
                };
                match client.send(token, &push, now).await {
                    ApnsOutcome::Delivered { .. } => (Attempt::Delivered, false),
                    ApnsOutcome::DropToken { reason } => (Attempt::Failed(reason), true),
                    ApnsOutcome::Retry { reason, after } => {
                        (Attempt::Retry { reason, after }, false)
                    }
                    ApnsOutcome::Failed { status, reason } => (
                        Attempt::Failed(format!("Apple refused it ({status} {reason})")),
                        false,
                    ),
                }
            }
            Kind::Ntfy(cfg) => {
                let Some(http) = &self.inner.http else {
                    return (Attempt::Failed("no HTTP client".into()), false);
                };
                let mut req = http
                    .post(&cfg.url)
                    .header("Title", event.title())
                    .header(
                        "Priority",
                        message::ntfy_priority(event.kind, cfg.priority).to_string(),
                    )
                    .header("Tags", message::ntfy_tags(event.kind))
                    .body(event.body());
                if let Some(token) = &cfg.token {
                    req = req.bearer_auth(token);
                }
                (http_attempt(req.send().await, false).await, false)
            }
            Kind::Webhook(cfg) => {
                let Some(http) = &self.inner.http else {
                    return (Attempt::Failed("no HTTP client".into()), false);
                };
                let body = message::webhook_body(event, tz);
                let mut req = http
                    .post(&cfg.url)
                    .header("Content-Type", "application/json");
                if let Some(secret) = &cfg.secret {
                    req = req.header("X-Solar-Signature", message::signature(secret, &body));
                }
                (http_attempt(req.body(body).send().await, true).await, false)
            }
        }
    }
}

fn answer(success: bool, message: &'static str) -> DeviceAnswer {
    DeviceAnswer { success, message }
}

/// What went wrong in an attempt, if anything did.
fn failure(a: &Attempt) -> Option<String> {
    match a {
        Attempt::Delivered => None,
        Attempt::Retry { reason, .. } => Some(reason.clone()),
        Attempt::Failed(why) => Some(why.clone()),
    }
}

/// A plain HTTP answer as an attempt: 2xx delivered; 429 and 5xx (every non-2xx for a
/// webhook, whose receiver is the owner's own) retried; other 4xx refused for good.
async fn http_attempt(
    result: Result<reqwest::Response, reqwest::Error>,
    retry_every_error: bool,
) -> Attempt {
    let resp = match result {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Retry {
                reason: https::error_chain(&e),
                after: None,
            };
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Delivered;
    }
    let after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    let snippet: String = body.trim().chars().take(200).collect();
    let reason = if snippet.is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {snippet}", status.as_u16())
    };
    if retry_every_error || status.as_u16() == 429 || status.is_server_error() {
        Attempt::Retry { reason, after }
    } else {
        Attempt::Failed(reason)
    }
}

/// The host of a URL, for names shown in the API (never the path: an ntfy topic is a secret).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_string()
}

/// How push is set up, from the `apns:` section.
fn push_setup(cfg: Option<&ApnsConfig>) -> Push {
    let Some(cfg) = cfg else {
        return Push::NotConfigured;
    };
    if !cfg.enabled {
        return Push::NotEnabled;
    }
    if let Some(why) = cfg.unusable() {
        error!("push notifications stay off: {why}");
        return Push::NotConfigured;
    }
    let settings = ApnsSettings {
        key_path: cfg.key_path.clone().unwrap_or_default(),
        key_id: cfg.key_id.clone().unwrap_or_default(),
        team_id: cfg.team_id.clone().unwrap_or_default(),
        bundle_id: cfg.bundle_id.clone().unwrap_or_default(),
        use_sandbox: cfg.use_sandbox,
        endpoint: cfg.endpoint.clone(),
        ca_file: cfg.ca_file.clone(),
    };
    match ApnsClient::new(settings) {
        Ok(client) => {
            info!(host = client.host(), "push notifications to the app are on");
            Push::Ready(Arc::new(client))
        }
        Err(why) => {
            error!("push notifications stay off: {why}");
            Push::NotConfigured
        }
    }
}

/// A token bucket: [`BURST`] at once, then one per [`REFILL`].
struct Bucket {
    tokens: f64,
    at: Mono,
}

impl Bucket {
    fn new(now: Mono) -> Bucket {
        Bucket {
            tokens: f64::from(BURST),
            at: now,
        }
    }

    /// Takes a token, or says when the next one comes.
    fn take(&mut self, now: Mono) -> Result<(), Mono> {
        let earned = now.saturating_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(BURST));
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(self.at + REFILL.mul_f64(1.0 - self.tokens))
    }
}

#[cfg(test)]
mod tests;
