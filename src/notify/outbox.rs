//! The outbox: every event waiting to reach a channel, kept in `outbox.json` so that neither a
//! restart nor a channel that is down loses one.
//!
//! Plain data with the rules for it; the notifier ([`super`]) reads and writes the file and
//! does the sending. One entry per (event, channel, device): a channel (and, for the app, each
//! registered phone) gets its events in order, one at a time, each retried with a growing
//! backoff until it is delivered or [`GIVE_UP_AFTER`] has passed since it happened.
//!
//! The ids of the last [`REMEMBERED_IDS`] accepted events are kept with the entries: the
//! engine hands events over again after a crash between its save and the outbox's, and the
//! outbox takes each id once.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;

pub const OUTBOX_FILE: &str = "outbox.json";
const FORMAT_VERSION: u32 = 1;
/// How many accepted event ids are remembered to drop a repeat.
pub const REMEMBERED_IDS: usize = 500;
/// An event not delivered within this long of happening is dropped, with a log line.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(6 * 3600);
/// The first retry's wait; each further one doubles, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// The most entries kept (a channel down for days with a flapping dongle must not grow the
/// file without bound); the oldest go first.
pub const MAX_ENTRIES: usize = 2000;

/// One event on its way to one channel (and device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Order of acceptance.
    pub seq: u64,
    pub event: Event,
    /// The channel's id (`apns`, `ntfy`, `webhook-1`, ...).
    pub channel: String,
    /// The app's device token, for `apns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// Not to be tried before this instant.
    pub next_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Entry {
    /// Entries with the same key are delivered in order, one at a time.
    pub fn key(&self) -> (String, Option<String>) {
        (self.channel.clone(), self.device.clone())
    }
}

/// Where one event goes: a channel, and for the app a device token.
pub type Target = (String, Option<String>);

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Delivered,
    /// Worth trying again: after `after` when the channel said so, else the backoff.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Refused for good: the entry is dropped.
    Failed(String),
}

/// What became of an entry after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Delivered,
    /// Tried again at this instant.
    Retrying(Timestamp),
    /// Dropped: refused for good, or too old to keep trying.
    Dropped(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    next_seq: u64,
    /// The newest accepted event ids, oldest first.
    #[serde(default)]
    accepted: VecDeque<String>,
    #[serde(default)]
    pub entries: Vec<Entry>,
}

impl Outbox {
    pub fn decode(bytes: &[u8]) -> Result<Outbox, String> {
        let o: Outbox = serde_json::from_slice(bytes).map_err(|e| format!("not valid: {e}"))?;
        if o.version > FORMAT_VERSION {
            return Err(format!(
                "written by a newer version of this service (format {})",
                o.version
            ));
        }
        Ok(o)
    }

    pub fn encode(&self) -> Vec<u8> {
        let o = Outbox {
            version: FORMAT_VERSION,
            ..self.clone()
        };
        serde_json::to_vec_pretty(&o).expect("the outbox serializes")
    }

    pub fn has_seen(&self, id: &str) -> bool {
        self.accepted.iter().any(|a| a == id)
    }

    /// Takes an event for `targets`, once per id; returns whether it was new. An event with
    /// no target (no channel wants it) is remembered all the same.
    pub fn accept(&mut self, event: &Event, targets: Vec<Target>, now: Timestamp) -> bool {
        if self.has_seen(&event.id) {
            return false;
        }
        self.accepted.push_back(event.id.clone());
        while self.accepted.len() > REMEMBERED_IDS {
            self.accepted.pop_front();
        }
        for (channel, device) in targets {
            self.next_seq += 1;
            self.entries.push(Entry {
                seq: self.next_seq,
                event: event.clone(),
                channel,
                device,
                attempts: 0,
                next_at: now,
                last_error: None,
            });
        }
        if self.entries.len() > MAX_ENTRIES {
            let excess = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..excess);
        }
        true
    }

    /// The entries to try now: the first of each key, when it is due and its key is not
    /// `busy`.
    pub fn due(&self, now: Timestamp, busy: &dyn Fn(&Target) -> bool) -> Vec<Entry> {
        let mut heads: Vec<&Entry> = Vec::new();
        for e in &self.entries {
            if !heads.iter().any(|h| h.key() == e.key()) {
                heads.push(e);
            }
        }
        heads
            .into_iter()
            .filter(|e| e.next_at <= now && !busy(&e.key()))
            .cloned()
            .collect()
    }

    /// When the next head entry whose key is not `busy` falls due (`None` when nothing
    /// waits).
    pub fn next_due(&self, busy: &dyn Fn(&Target) -> bool) -> Option<Timestamp> {
        let mut heads: Vec<&Entry> = Vec::new();
        for e in &self.entries {
            if !heads.iter().any(|h| h.key() == e.key()) {
                heads.push(e);
            }
        }
        heads
            .into_iter()
            .filter(|e| !busy(&e.key()))
            .map(|e| e.next_at)
            .min()
    }

    /// Records an attempt's outcome for entry `seq`.
    pub fn settle(&mut self, seq: u64, attempt: Attempt, now: Timestamp) -> Option<Settled> {
        let i = self.entries.iter().position(|e| e.seq == seq)?;
        match attempt {
            Attempt::Delivered => {
                self.entries.remove(i);
                Some(Settled::Delivered)
            }
            Attempt::Failed(why) => {
                self.entries.remove(i);
                Some(Settled::Dropped(why))
            }
            Attempt::Retry { reason, after } => {
                let e = &mut self.entries[i];
                e.attempts += 1;
                let wait = after
                    .unwrap_or_else(|| backoff(e.attempts))
                    .clamp(FIRST_BACKOFF, MAX_BACKOFF);
                let next = add(now, wait);
                if next > add(e.event.at, GIVE_UP_AFTER) {
                    self.entries.remove(i);
                    return Some(Settled::Dropped(format!(
                        "not delivered within {} hours ({reason})",
                        GIVE_UP_AFTER.as_secs() / 3600
                    )));
                }
                e.next_at = next;
                e.last_error = Some(reason);
                Some(Settled::Retrying(next))
            }
        }
    }

    /// Drops every entry for a device token (the app was deleted, Apple says).
    pub fn drop_device(&mut self, token: &str) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.device.as_deref() != Some(token));
        before - self.entries.len()
    }

    /// Drops entries for channels no longer configured; returns how many.
    pub fn retain_channels(&mut self, known: &dyn Fn(&str) -> bool) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| known(&e.channel));
        before - self.entries.len()
    }

    pub fn pending(&self, channel: &str) -> usize {
        self.entries.iter().filter(|e| e.channel == channel).count()
    }
}

/// The wait after the `attempts`-th failure: 10 s, 20 s, 40 s, ... up to 15 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

#[cfg(test)]
mod tests;
