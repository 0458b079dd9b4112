//! The price feed: a background task that keeps prices current, off the engine's path. The
//! engine and the API only ever read what it last published ([`PriceFeed::current`]), so a slow
//! or failing price source never delays a charge decision.
//!
//! At start the task publishes the cached prices (`prices.json` in the data directory, with
//! the time they were fetched; a file that cannot be read is set aside and reported), then
//! fetches the window from an hour ago to 48 hours ahead, merges it with what it has (the newer
//! fetch wins wherever slots overlap; slots that ended over a day ago are dropped), saves the
//! result atomically and publishes it. It fetches again when [`cache::next_fetch`] says so: at
//! the next publication, and every quarter of an hour while tomorrow's prices are missing or the
//! source fails. Each kind of failure is logged once, not at every retry; [`PriceBook::problem`]
//! says why the prices are stale. A fixed table is expanded locally, hourly, and not cached.
//!
//! Waits are at most a minute and the wall clock is read again after each, so a clock that jumps
//! (NTP after a boot) is followed within a minute.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::cache::{self, CachedPrices};
use super::{PriceError, PriceSlot, PriceSource, TariffConfig};
use crate::clock::Clock;
use crate::domain::night::PriceBook;
use crate::store::Store;

/// The cache file in the data directory.
pub const CACHE_FILE: &str = "prices.json";
/// How far back a fetch reaches (the slot running now, and a little before).
pub const LOOK_BACK: SignedDuration = SignedDuration::from_hours(1);
/// How far ahead a fetch reaches (tomorrow's prices, whatever the hour).
pub const LOOK_AHEAD: SignedDuration = SignedDuration::from_hours(48);
/// Slots that ended longer ago than this are dropped.
pub const KEEP_PAST: SignedDuration = SignedDuration::from_hours(24);
/// The longest wait before the wall clock is read again.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a fixed table is expanded again, so the window keeps reaching 48 hours ahead.
pub const FIXED_REFRESH: SignedDuration = SignedDuration::from_hours(1);

/// A handle on the published prices; cloning shares them.
#[derive(Debug, Clone)]
pub struct PriceFeed {
    rx: watch::Receiver<Option<PriceBook>>,
}

impl PriceFeed {
    /// A feed of the given prices that never changes and runs no task (the demo, tests).
    pub fn fixed(prices: PriceBook) -> PriceFeed {
        let (_, rx) = watch::channel(Some(prices));
        PriceFeed { rx }
    }

    /// The prices last published; None before there is anything to tell.
    pub fn current(&self) -> Option<PriceBook> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes at each publication (its `changed` fails once the feed has ended).
    pub fn watch(&self) -> watch::Receiver<Option<PriceBook>> {
        self.rx.clone()
    }
}

/// Starts the feed for `cfg` (a fixed table is read in `tz`). The cached prices, if any, are
/// published before this returns; fetching happens in a task on the current tokio runtime,
/// which ends on `shutdown`. Fails when the section names no usable source or the HTTP client
/// cannot be built.
pub fn spawn(
    cfg: &TariffConfig,
    tz: TimeZone,
    store: Store,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<PriceFeed, String> {
    let source = match cfg.source(&tz) {
        Ok(Some(source)) => source,
        Ok(None) => return Err("tariff.source is not set: there are no prices to fetch".into()),
        Err(problems) => return Err(problems.join("; ")),
    };
    let client = match source {
        PriceSource::Fixed(_) => None,
        _ => Some(crate::notify::https::client(None, false)?),
    };
    let (tx, rx) = watch::channel(None);
    let mut feed = Feed {
        source,
        client,
        store,
        clock,
        tx,
        slots: Arc::new(Vec::new()),
        fetched_at: None,
        last_attempt: None,
        logged: Failures::default(),
        save_failing: false,
    };
    feed.load_cache();
    tokio::spawn(feed.run(shutdown));
    Ok(PriceFeed { rx })
}

struct Feed {
    source: PriceSource,
    /// None for a fixed table, which needs no network.
    client: Option<reqwest::Client>,
    store: Store,
    clock: Clock,
    tx: watch::Sender<Option<PriceBook>>,
    slots: Arc<Vec<PriceSlot>>,
    fetched_at: Option<Timestamp>,
    last_attempt: Option<Timestamp>,
    logged: Failures,
    save_failing: bool,
}

impl Feed {
    fn caches(&self) -> bool {
        !matches!(self.source, PriceSource::Fixed(_))
    }

    fn load_cache(&mut self) {
        if !self.caches() {
            return;
        }
        let now = self.clock.now();
        let read = self.store.read_or_set_aside(CACHE_FILE, now, |bytes| {
            cache::decode(bytes).map_err(|e| e.to_string())
        });
        match read {
            Ok(None) => {}
            Ok(Some(cached)) if cached.is_from(&self.source) => {
                self.slots = Arc::new(merge(&[], cached.slots, now - KEEP_PAST));
                self.fetched_at = Some(cached.fetched_at);
                self.publish(cached.fetched_at, None);
            }
            Ok(Some(cached)) => tracing::info!(
                cached = %cached.source,
                configured = %self.source.key(),
                "the cached prices are another source's: fetching anew"
            ),
            Err(why) => {
                tracing::warn!(error = %why, "the price cache could not be used");
                self.publish(now, Some(why));
            }
        }
    }

    fn publish(&self, fetched_at: Timestamp, problem: Option<String>) {
        self.tx.send_replace(Some(PriceBook {
            source: self.source.name().to_string(),
            currency: self.source.currency().to_string(),
            fetched_at,
            slots: self.slots.clone(),
            problem,
        }));
    }

    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let now = self.clock.now();
            let due = self.due(now);
            if now >= due {
                let result = tokio::select! {
                    r = self.fetch(now) => r,
                    () = shutdown.cancelled() => return,
                };
                self.last_attempt = Some(now);
                self.settle(now, result).await;
                continue;
            }
            let wait = Duration::try_from(due.duration_since(now))
                .unwrap_or(Duration::ZERO)
                .min(MAX_WAIT);
            tokio::select! {
                () = self.clock.sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// When to fetch next.
    fn due(&self, now: Timestamp) -> Timestamp {
        // After the clock went back, the last attempt counts as just now.
        let last = self.last_attempt.map(|t| t.min(now));
        if self.source.publication().is_some() {
            cache::next_fetch(now, &self.source, &self.slots, last).unwrap_or(now)
        } else {
            last.map_or(now, |t| t + FIXED_REFRESH)
        }
    }

    async fn fetch(&self, now: Timestamp) -> Result<Vec<PriceSlot>, PriceError> {
        let (from, to) = (now - LOOK_BACK, now + LOOK_AHEAD);
        match (&self.source, &self.client) {
            (PriceSource::Fixed(table), _) => super::non_empty(table.expand(from, to)),
            (source, Some(client)) => super::fetch(client, source, from, to).await,
            (_, None) => Err(PriceError::Transport("no HTTP client".into())),
        }
    }

    /// Takes in an attempt's outcome: merge, save and publish, or publish why it failed.
    async fn settle(&mut self, now: Timestamp, result: Result<Vec<PriceSlot>, PriceError>) {
        let name = self.source.name();
        match result {
            Ok(fresh) => {
                self.slots = Arc::new(merge(&self.slots, fresh, now - KEEP_PAST));
                self.fetched_at = Some(now);
                // Still due at once: tomorrow's prices are not out although they should be.
                let incomplete = self.source.publication().is_some()
                    && cache::next_fetch(now, &self.source, &self.slots, None)
                        .is_some_and(|t| t <= now);
                if self.logged.recovered() {
                    tracing::info!(source = name, "prices fetched again");
                }
                let problem = if incomplete {
                    if self.logged.first(Failure::NotPublished) {
                        tracing::info!(
                            source = name,
                            "tomorrow's prices are not published yet; asking again every {} minutes",
                            cache::RETRY.as_mins()
                        );
                    }
                    Some(format!("{name}: tomorrow's prices are not published yet"))
                } else {
                    self.logged.clear();
                    None
                };
                self.save(now).await;
                self.publish(now, problem);
            }
            Err(e) => {
                let kind = Failure::of(&e);
                if self.logged.first(kind) {
                    if kind == Failure::NotPublished {
                        tracing::info!(
                            source = name,
                            "prices are not published yet; asking again every {} minutes",
                            cache::RETRY.as_mins()
                        );
                    } else {
                        tracing::warn!(
                            source = name,
                            error = %e,
                            "prices could not be fetched; keeping those at hand and trying again"
                        );
                    }
                }
                self.publish(self.fetched_at.unwrap_or(now), Some(describe(name, &e)));
            }
        }
    }

    async fn save(&mut self, now: Timestamp) {
        if !self.caches() {
            return;
        }
        let bytes = cache::encode(&CachedPrices {
            source: self.source.key(),
            fetched_at: now,
            slots: self.slots.to_vec(),
        });
        let store = self.store.clone();
        let saved = tokio::task::spawn_blocking(move || store.write_atomic(CACHE_FILE, &bytes))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match saved {
            Ok(()) => self.save_failing = false,
            Err(why) if !self.save_failing => {
                self.save_failing = true;
                tracing::warn!(error = %why, "the price cache could not be saved");
            }
            Err(_) => {}
        }
    }
}

/// Why prices are missing, for [`PriceBook::problem`].
fn describe(source: &str, e: &PriceError) -> String {
    match e {
        PriceError::NotPublished => format!("{source}: not published yet"),
        PriceError::Http(status) => format!("{source}: HTTP {status}"),
        PriceError::Malformed(why) => format!("{source}: unexpected answer: {why}"),
        PriceError::Transport(why) => format!("{source}: no answer: {why}"),
    }
}

/// A kind of failure, as logged: once each until prices come again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Failure {
    NotPublished,
    Malformed,
    Http(u16),
    Transport,
}

impl Failure {
    fn of(e: &PriceError) -> Failure {
        match e {
            PriceError::NotPublished => Failure::NotPublished,
            PriceError::Malformed(_) => Failure::Malformed,
            PriceError::Http(status) => Failure::Http(*status),
            PriceError::Transport(_) => Failure::Transport,
        }
    }
}

/// The kinds of failure already logged.
#[derive(Debug, Default)]
struct Failures(BTreeSet<Failure>);

impl Failures {
    /// Whether `kind` is new (and so to be logged).
    fn first(&mut self, kind: Failure) -> bool {
        self.0.insert(kind)
    }

    /// After a fetch that worked: whether the source had been failing (beyond "not published
    /// yet"). Forgets those failures, so a later one is logged again.
    fn recovered(&mut self) -> bool {
        let failed = self.0.iter().any(|k| *k != Failure::NotPublished);
        self.0.retain(|k| *k == Failure::NotPublished);
        failed
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// `fresh` with the slots of `old` that no fresh slot overlaps, in time order, without those
/// that ended at or before `keep_after`.
fn merge(old: &[PriceSlot], fresh: Vec<PriceSlot>, keep_after: Timestamp) -> Vec<PriceSlot> {
    let mut out: Vec<PriceSlot> = old
        .iter()
        .filter(|o| !fresh.iter().any(|f| f.start < o.end && o.start < f.end))
        .copied()
        .collect();
    out.extend(fresh);
    out.retain(|s| s.end > keep_after && s.start < s.end);
    out.sort_by_key(|s| (s.start, s.end));
    // Overlaps within one fetch (a source's own duplicates): the first of them stays.
    let mut tidy: Vec<PriceSlot> = Vec::with_capacity(out.len());
    for s in out {
        if tidy.last().is_none_or(|last| last.end <= s.start) {
            tidy.push(s);
        }
    }
    tidy
}

#[cfg(test)]
mod tests;
