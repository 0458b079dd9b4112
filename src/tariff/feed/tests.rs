//! The feed against a local stand-in for Octopus whose answers each test switches, on a manual
//! clock: nothing waits on real time except the guard against a feed that never publishes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::*;
use crate::clock::ManualClock;
use crate::tariff::FixedRate;
use crate::tariff::tests::ts;

/// The longest a test waits, in real time, for the feed to publish.
const GUARD: Duration = Duration::from_secs(30);
const HALF_HOUR: SignedDuration = SignedDuration::from_mins(30);

/// What the stand-in answers.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// The half hours of the asked period up to this instant (none: "not published yet").
    PublishedUntil(Timestamp),
    Status(u16),
}

/// A stand-in for Octopus's unit-rates endpoint, and the (manual) times it was asked at.
struct Agile {
    base: String,
    answer: Arc<Mutex<Answer>>,
    asked_at: Arc<Mutex<Vec<Timestamp>>>,
}

impl Agile {
    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn asked_at(&self) -> Vec<Timestamp> {
        self.asked_at.lock().unwrap().clone()
    }
}

/// A price for each half hour that tells slots apart: pence from the hour of day.
fn pence(start: Timestamp) -> f64 {
    10.0 + f64::from(TimeZone::UTC.to_datetime(start).hour())
}

fn query_param(uri: &Uri, name: &str) -> Option<Timestamp> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Octopus's answer to `uri`: rates newest first, in pence including VAT.
fn answer(uri: &Uri, answer: Answer) -> Response {
    let until = match answer {
        Answer::Status(code) => {
            return (
                StatusCode::from_u16(code).unwrap(),
                [(header::CONTENT_TYPE, "text/html")],
                "<html>unavailable</html>",
            )
                .into_response();
        }
        Answer::PublishedUntil(until) => until,
    };
    let (Some(from), Some(to)) = (
        query_param(uri, "period_from"),
        query_param(uri, "period_to"),
    ) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut results = Vec::new();
    // Half hours on the clock, from the one running at `from`.
    let mut at = Timestamp::from_second(from.as_second() - from.as_second().rem_euclid(1800))
        .expect("in range");
    while at < to.min(until) {
        let end = at + HALF_HOUR;
        let p = pence(at);
        results.push(serde_json::json!({
            "value_exc_vat": p / 1.05, "value_inc_vat": p,
            "valid_from": at.to_string(), "valid_to": end.to_string(),
            "payment_method": null
        }));
        at = end;
    }
    results.reverse();
    let body = serde_json::json!({
        "count": results.len(), "next": null, "previous": null, "results": results
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn agile(clock: &ManualClock, first: Answer) -> Agile {
    let state = Arc::new(Mutex::new(first));
    let asked_at = Arc::new(Mutex::new(Vec::new()));
    let (a, log, clock) = (state.clone(), asked_at.clone(), clock.clone());
    let app = Router::new().fallback(move |uri: Uri| {
        let (a, log, clock) = (a.clone(), log.clone(), clock.clone());
        async move {
            log.lock().unwrap().push(clock.clock().now());
            let current = *a.lock().unwrap();
            answer(&uri, current)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Agile {
        base: format!("http://{addr}"),
        answer: state,
        asked_at,
    }
}

fn octopus(server: &Agile) -> TariffConfig {
    TariffConfig {
        source: Some("octopus_agile".into()),
        base_url: Some(server.base.clone()),
        product: Some("AGILE-24-10-01".into()),
        region: Some("C".into()),
        ..TariffConfig::default()
    }
}

fn source_key(config: &TariffConfig) -> String {
    config.source(&TimeZone::UTC).unwrap().unwrap().key()
}

/// Half hours from `from` to `to` at `price`.
fn slots(from: &str, to: &str, price: f64) -> Vec<PriceSlot> {
    let (mut at, to) = (ts(from), ts(to));
    let mut out = Vec::new();
    while at < to {
        out.push(PriceSlot {
            start: at,
            end: at + HALF_HOUR,
            price,
        });
        at += HALF_HOUR;
    }
    out
}

struct Setup {
    clock: ManualClock,
    dir: tempfile::TempDir,
    store: Store,
}

fn setup(now: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    Setup {
        clock: ManualClock::new(ts(now)),
        dir,
        store,
    }
}

impl Setup {
    fn spawn(&self, config: &TariffConfig, shutdown: &CancellationToken) -> PriceFeed {
        spawn(
            config,
            TimeZone::get("Europe/London").unwrap(),
            self.store.clone(),
            self.clock.clock(),
            shutdown.clone(),
        )
        .expect("a feed")
    }

    fn write_cache(&self, cache: &CachedPrices) {
        self.store
            .write_atomic(CACHE_FILE, &cache::encode(cache))
            .unwrap();
    }

    fn read_cache(&self) -> CachedPrices {
        cache::decode(&std::fs::read(self.dir.path().join(CACHE_FILE)).unwrap()).unwrap()
    }

    /// Lets `total` pass a minute at a time, giving the feed its turn after each minute.
    async fn minutes(&self, total: i64) {
        for _ in 0..total {
            self.clock.advance(Duration::from_secs(60));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The first published prices `pred` accepts (at most [`GUARD`] of real time).
async fn published(feed: &PriceFeed, pred: impl Fn(&PriceBook) -> bool) -> PriceBook {
    let mut rx = feed.watch();
    let found = tokio::time::timeout(GUARD, rx.wait_for(|p| p.as_ref().is_some_and(&pred))).await;
    match found {
        Ok(Ok(p)) => p.clone().unwrap(),
        _ => panic!("never published as expected; last: {:#?}", feed.current()),
    }
}

/// Waits until the stand-in has been asked `n` times (at most [`GUARD`] of real time).
async fn asked(server: &Agile, n: usize) {
    let waited = tokio::time::timeout(GUARD, async {
        while server.asked_at().len() < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "asked at {:?}, not {n} times",
        server.asked_at()
    );
}

/// Waits until the feed's task has ended.
async fn ended(feed: &PriceFeed) {
    let mut rx = feed.watch();
    tokio::time::timeout(GUARD, async { while rx.changed().await.is_ok() {} })
        .await
        .expect("the feed ends on shutdown");
}

#[tokio::test]
async fn cached_prices_are_published_at_start_before_any_fetch_then_merged_with_the_fetch() {
    // 10:00 UK time in winter, with prices cached only until now: fetch at once.
    let s = setup("2026-01-15T10:00:00Z");
    let server = agile(&s.clock, Answer::PublishedUntil(ts("2026-01-15T23:00:00Z"))).await;
    let config = octopus(&server);
    let cached_at = ts("2026-01-14T16:05:00Z");
    let mut old = slots("2026-01-14T06:00:00Z", "2026-01-14T08:00:00Z", 0.5);
    old.extend(slots("2026-01-15T00:00:00Z", "2026-01-15T10:00:00Z", 0.2));
    s.write_cache(&CachedPrices {
        source: source_key(&config),
        fetched_at: cached_at,
        slots: old,
    });
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    // Published before the task ran at all, with the time they were fetched; slots that
    // ended over a day ago are gone.
    let first = feed.current().expect("the cache is published at start");
    assert_eq!(server.asked_at(), []);
    assert_eq!(
        (first.source.as_str(), first.currency.as_str()),
        ("octopus_agile", "GBP")
    );
    assert_eq!(first.fetched_at, cached_at);
    assert_eq!(first.problem, None);
    assert_eq!(first.slots.len(), 20);
    assert_eq!(first.slots[0].start, ts("2026-01-15T00:00:00Z"));

    let fetched = published(&feed, |p| p.fetched_at == s.clock.clock().now()).await;
    assert_eq!(server.asked_at(), [ts("2026-01-15T10:00:00Z")]);
    assert_eq!(fetched.problem, None);
    // From 09:00 on the fetch won; before, the cached slots stayed.
    let price_at = |at: &str| {
        fetched
            .slots
            .iter()
            .find(|p| p.start == ts(at))
            .map(|p| p.price)
    };
    assert_eq!(price_at("2026-01-15T08:30:00Z"), Some(0.2));
    assert_eq!(price_at("2026-01-15T09:00:00Z"), Some(0.19));
    assert_eq!(price_at("2026-01-15T22:30:00Z"), Some(0.32));
    assert_eq!(fetched.slots.len(), 46);
    assert!(fetched.slots.windows(2).all(|w| w[0].end == w[1].start));
    // And saved: the cache now holds the merged prices with this fetch's time.
    let saved = s.read_cache();
    assert_eq!(saved.fetched_at, ts("2026-01-15T10:00:00Z"));
    assert_eq!(saved.slots, *fetched.slots);
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn prices_at_hand_for_today_are_not_fetched_again_before_tomorrows_are_out() {
    // 10:00 UK time with today's prices cached: the next ask is at 16:00, when tomorrow's
    // usually appear.
    let s = setup("2026-01-15T10:00:00Z");
    let server = agile(&s.clock, Answer::PublishedUntil(ts("2026-01-16T23:00:00Z"))).await;
    let config = octopus(&server);
    s.write_cache(&CachedPrices {
        source: source_key(&config),
        fetched_at: ts("2026-01-14T16:05:00Z"),
        slots: slots("2026-01-14T23:00:00Z", "2026-01-15T23:00:00Z", 0.2),
    });
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    s.minutes(6 * 60).await;
    let p = published(&feed, |p| p.fetched_at == ts("2026-01-15T16:00:00Z")).await;
    assert_eq!(server.asked_at(), [ts("2026-01-15T16:00:00Z")]);
    assert_eq!(p.slots.last().unwrap().end, ts("2026-01-16T23:00:00Z"));
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn not_published_is_asked_again_every_quarter_hour_until_tomorrow_is_there() {
    // 16:05 UK time: tomorrow's prices are due, and the cache is empty.
    let s = setup("2026-01-15T16:05:00Z");
    let server = agile(&s.clock, Answer::PublishedUntil(ts("2026-01-01T00:00:00Z"))).await;
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&octopus(&server), &shutdown);
    assert_eq!(feed.current(), None);
    let p = published(&feed, |p| p.problem.is_some()).await;
    assert_eq!(
        p.problem.as_deref(),
        Some("octopus_agile: not published yet")
    );
    assert!(p.slots.is_empty());

    // Today's come out, then tomorrow's: each is picked up a quarter of an hour after the
    // attempt before, and not sooner.
    server.set(Answer::PublishedUntil(ts("2026-01-15T23:00:00Z")));
    s.minutes(15).await;
    let p = published(&feed, |p| !p.slots.is_empty()).await;
    assert_eq!(p.fetched_at, ts("2026-01-15T16:20:00Z"));
    assert_eq!(
        p.problem.as_deref(),
        Some("octopus_agile: tomorrow's prices are not published yet")
    );
    assert_eq!(p.slots.last().unwrap().end, ts("2026-01-15T23:00:00Z"));

    server.set(Answer::PublishedUntil(ts("2026-01-16T23:00:00Z")));
    s.minutes(15).await;
    let p = published(&feed, |p| p.problem.is_none()).await;
    assert_eq!(p.fetched_at, ts("2026-01-15T16:35:00Z"));
    assert_eq!(p.slots.first().unwrap().start, ts("2026-01-15T15:00:00Z"));
    assert_eq!(p.slots.last().unwrap().end, ts("2026-01-16T23:00:00Z"));
    assert!(cache::covers(
        &p.slots,
        ts("2026-01-15T16:35:00Z"),
        ts("2026-01-16T23:00:00Z")
    ));
    assert_eq!(
        server.asked_at(),
        [
            ts("2026-01-15T16:05:00Z"),
            ts("2026-01-15T16:20:00Z"),
            ts("2026-01-15T16:35:00Z")
        ]
    );
    // With tomorrow's at hand nothing more is asked today.
    s.minutes(60).await;
    assert_eq!(server.asked_at().len(), 3);
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn a_failing_source_keeps_the_prices_at_hand_and_says_why() {
    let s = setup("2026-01-15T17:00:00Z");
    let server = agile(&s.clock, Answer::Status(503)).await;
    let config = octopus(&server);
    let cached_at = ts("2026-01-15T12:00:00Z");
    let cached = slots("2026-01-15T00:00:00Z", "2026-01-15T23:00:00Z", 0.2);
    s.write_cache(&CachedPrices {
        source: source_key(&config),
        fetched_at: cached_at,
        slots: cached.clone(),
    });
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let p = published(&feed, |p| p.problem.is_some()).await;
    assert_eq!(p.problem.as_deref(), Some("octopus_agile: HTTP 503"));
    assert_eq!(*p.slots, cached);
    assert_eq!(p.fetched_at, cached_at);
    // The cache is left as it was.
    assert_eq!(s.read_cache().fetched_at, cached_at);
    // Asked again a quarter of an hour later, still failing; then back.
    s.minutes(15).await;
    asked(&server, 2).await;
    assert_eq!(server.asked_at()[1], ts("2026-01-15T17:15:00Z"));
    server.set(Answer::PublishedUntil(ts("2026-01-16T23:00:00Z")));
    s.minutes(15).await;
    let p = published(&feed, |p| p.problem.is_none()).await;
    assert_eq!(p.fetched_at, ts("2026-01-15T17:30:00Z"));
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn a_source_that_does_not_answer_is_a_stale_reason_too() {
    let s = setup("2026-01-15T17:00:00Z");
    // A port that was free a moment ago and has no listener now.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let config = TariffConfig {
        source: Some("octopus_agile".into()),
        base_url: Some(format!("http://{addr}")),
        product: Some("AGILE-24-10-01".into()),
        region: Some("C".into()),
        ..TariffConfig::default()
    };
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let p = published(&feed, |p| p.problem.is_some()).await;
    let why = p.problem.unwrap();
    assert!(why.starts_with("octopus_agile: no answer: "), "{why}");
    // The cause is told, not only that sending failed.
    assert!(why.to_lowercase().contains("connect"), "{why}");
    assert!(p.slots.is_empty());
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn a_fixed_table_needs_no_network_and_keeps_reaching_two_days_ahead() {
    let s = setup("2026-01-15T10:10:00Z");
    let config = TariffConfig {
        source: Some("fixed".into()),
        currency: Some("gbp".into()),
        fixed: vec![
            FixedRate {
                from: "00:00".into(),
                to: "07:00".into(),
                price: 0.09,
                days: None,
            },
            FixedRate {
                from: "07:00".into(),
                to: "24:00".into(),
                price: 0.27,
                days: None,
            },
        ],
        ..TariffConfig::default()
    };
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let p = published(&feed, |_| true).await;
    assert_eq!((p.source.as_str(), p.currency.as_str()), ("fixed", "GBP"));
    assert_eq!(p.problem, None);
    let now = ts("2026-01-15T10:10:00Z");
    assert!(cache::covers(&p.slots, now - LOOK_BACK, now + LOOK_AHEAD));
    assert_eq!(p.slots[0].price, 0.27);
    assert_eq!(p.slots[1].price, 0.09);
    // An hour on, the table is expanded again.
    s.minutes(60).await;
    let p = published(&feed, |p| p.fetched_at == ts("2026-01-15T11:10:00Z")).await;
    assert_eq!(
        p.slots.last().unwrap().end,
        now + LOOK_AHEAD + FIXED_REFRESH
    );
    // Nothing is cached for a table.
    assert!(!s.dir.path().join(CACHE_FILE).exists());
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn the_cache_survives_a_restart_and_a_corrupt_one_is_set_aside_and_reported() {
    // Today's prices only: tomorrow's are due, so the restarted feed asks at once.
    let s = setup("2026-01-15T16:30:00Z");
    let server = agile(&s.clock, Answer::PublishedUntil(ts("2026-01-15T23:00:00Z"))).await;
    let config = octopus(&server);
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let first = published(&feed, |p| !p.slots.is_empty()).await;
    shutdown.cancel();
    ended(&feed).await;

    // Restarted an hour later with the source down: the saved prices are back at once.
    s.clock.advance(Duration::from_secs(3600));
    server.set(Answer::Status(502));
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let again = feed.current().expect("the saved prices");
    assert_eq!(again.fetched_at, ts("2026-01-15T16:30:00Z"));
    assert_eq!(again.slots, first.slots);
    let failed = published(&feed, |p| p.problem.is_some()).await;
    assert_eq!(failed.problem.as_deref(), Some("octopus_agile: HTTP 502"));
    assert_eq!(failed.slots, first.slots);
    shutdown.cancel();
    ended(&feed).await;

    // A cache that cannot be read is set aside, not replaced, and said so.
    std::fs::write(s.dir.path().join(CACHE_FILE), b"{\"source\": \"octopus").unwrap();
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&config, &shutdown);
    let broken = feed.current().expect("the problem is published");
    let why = broken.problem.unwrap();
    assert!(
        why.contains(CACHE_FILE) && why.contains("corrupt-"),
        "{why}"
    );
    assert!(broken.slots.is_empty());
    let names: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("prices.json.corrupt-")),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n == CACHE_FILE), "{names:?}");
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn prices_of_another_source_in_the_cache_are_not_used() {
    let s = setup("2026-01-15T10:00:00Z");
    let server = agile(&s.clock, Answer::Status(503)).await;
    s.write_cache(&CachedPrices {
        source: "octopus_agile:AGILE-18-02-21:C".into(),
        fetched_at: ts("2026-01-15T09:00:00Z"),
        slots: slots("2026-01-15T00:00:00Z", "2026-01-15T23:00:00Z", 0.2),
    });
    let shutdown = CancellationToken::new();
    let feed = s.spawn(&octopus(&server), &shutdown);
    assert_eq!(feed.current(), None);
    shutdown.cancel();
    ended(&feed).await;
}

#[tokio::test]
async fn a_fixed_feed_publishes_what_it_is_given() {
    let prices = PriceBook {
        source: "octopus_agile".into(),
        currency: "GBP".into(),
        fetched_at: ts("2026-01-15T16:05:00Z"),
        slots: Arc::new(crate::tariff::sample::sample_day(
            ts("2026-01-15T00:00:00Z"),
            Duration::from_secs(1800),
        )),
        problem: None,
    };
    let feed = PriceFeed::fixed(prices.clone());
    assert_eq!(feed.current(), Some(prices.clone()));
    assert_eq!(feed.clone().watch().borrow().clone(), Some(prices));
}

#[test]
fn the_newer_fetch_wins_where_slots_overlap_and_old_slots_are_dropped() {
    let mut old = slots("2026-01-14T08:00:00Z", "2026-01-14T09:00:00Z", 0.5);
    old.extend(slots("2026-01-15T00:00:00Z", "2026-01-15T02:00:00Z", 0.2));
    // Fresh hour-long slots from 01:15: they replace every half hour they touch.
    let fresh = vec![PriceSlot {
        start: ts("2026-01-15T01:15:00Z"),
        end: ts("2026-01-15T02:15:00Z"),
        price: 0.1,
    }];
    let merged = merge(&old, fresh, ts("2026-01-14T08:30:00Z"));
    let spans: Vec<(Timestamp, f64)> = merged.iter().map(|s| (s.start, s.price)).collect();
    assert_eq!(
        spans,
        [
            (ts("2026-01-14T08:30:00Z"), 0.5),
            (ts("2026-01-15T00:00:00Z"), 0.2),
            (ts("2026-01-15T00:30:00Z"), 0.2),
            (ts("2026-01-15T01:15:00Z"), 0.1),
        ]
    );
}

#[test]
fn each_kind_of_failure_is_logged_once_until_prices_come_again() {
    let mut f = Failures::default();
    assert!(f.first(Failure::of(&PriceError::Http(503))));
    assert!(!f.first(Failure::of(&PriceError::Http(503))));
    assert!(f.first(Failure::of(&PriceError::Http(500))));
    assert!(f.first(Failure::of(&PriceError::Transport("refused".into()))));
    assert!(!f.first(Failure::of(&PriceError::Transport("timed out".into()))));
    assert!(f.first(Failure::NotPublished));
    assert!(f.recovered());
    // "Not published yet" is kept until the prices are complete.
    assert!(!f.first(Failure::NotPublished));
    assert!(f.first(Failure::of(&PriceError::Http(503))));
    f.clear();
    assert!(!f.recovered());
    assert!(f.first(Failure::NotPublished));
}

#[test]
fn spawning_without_a_usable_source_is_refused() {
    let s = setup("2026-01-15T10:00:00Z");
    let refused = |config: TariffConfig| {
        spawn(
            &config,
            TimeZone::UTC,
            s.store.clone(),
            s.clock.clock(),
            CancellationToken::new(),
        )
        .expect_err("refused")
    };
    assert!(refused(TariffConfig::default()).contains("tariff.source"));
    let why = refused(TariffConfig {
        source: Some("octopus_agile".into()),
        ..TariffConfig::default()
    });
    assert!(why.contains("tariff.product"), "{why}");
}
