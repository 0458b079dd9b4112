//! The last fetched prices, kept on disk so a restart does not lose them, and when to fetch
//! again.
//!
//! The file is JSON `{"source", "fetched_at", "slots": [{"start", "end", "price"}]}`; `source`
//! is [`PriceSource::key`](super::PriceSource::key), so prices of another product, region or
//! zone are never reused. A file that does not decode is simply not a cache: fetch again.
//!
//! Day-ahead prices for tomorrow appear once a day ([`super::Publication`]: ~16:00 UK time for
//! Octopus, ~13:00 CET for the EPEX and Nord Pool based sources). [`next_fetch`] waits for that
//! moment once tomorrow's prices are missing, then retries every [`RETRY`] until they appear,
//! and never sooner than [`RETRY`] after the last attempt, so a failing source is not hammered.

use jiff::civil::Time;
use jiff::{SignedDuration, Timestamp};

use super::{PriceSlot, PriceSource};

/// How often a fetch is retried while prices are due but missing (or the source fails).
pub const RETRY: SignedDuration = SignedDuration::from_mins(15);
/// Tomorrow's prices count as present once they reach this local time of tomorrow in the
/// market's zone (Agile's day ends at 23:00 UK time, the EPEX day at midnight CET).
const TOMORROW_UNTIL: Time = Time::constant(23, 0, 0, 0);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CachedPrices {
    /// [`PriceSource::key`] of the source the prices came from.
    pub source: String,
    pub fetched_at: Timestamp,
    /// In time order.
    pub slots: Vec<PriceSlot>,
}

pub fn encode(cache: &CachedPrices) -> Vec<u8> {
    serde_json::to_vec_pretty(cache).expect("prices always serialize")
}

pub fn decode(bytes: &[u8]) -> Result<CachedPrices, serde_json::Error> {
    let mut cache: CachedPrices = serde_json::from_slice(bytes)?;
    cache.slots.sort_by_key(|s| (s.start, s.end));
    Ok(cache)
}

impl CachedPrices {
    /// Whether these prices came from `source` as now configured.
    pub fn is_from(&self, source: &PriceSource) -> bool {
        self.source == source.key()
    }
}

/// The end of the stretch of back-to-back slots that contains `at`; None when no slot does.
pub fn covered_until(slots: &[PriceSlot], at: Timestamp) -> Option<Timestamp> {
    let mut sorted: Vec<&PriceSlot> = slots.iter().collect();
    sorted.sort_by_key(|s| s.start);
    let mut until: Option<Timestamp> = None;
    for s in sorted {
        match until {
            None if s.start <= at && at < s.end => until = Some(s.end),
            Some(u) if s.start <= u => until = Some(u.max(s.end)),
            Some(_) => break,
            None => {}
        }
    }
    until
}

/// Whether `slots` price every instant of `[from, to)`.
pub fn covers(slots: &[PriceSlot], from: Timestamp, to: Timestamp) -> bool {
    from >= to || covered_until(slots, from).is_some_and(|u| u >= to)
}

/// When to fetch prices next, given the slots at hand (`slots`, possibly none) and the last
/// attempt. None for a source without publications (a fixed table).
///
/// * Tomorrow's prices present: at the next publication (tomorrow's).
/// * Prices for now present, tomorrow's not, before today's publication: at the publication.
/// * Otherwise (nothing for now, or past the publication without tomorrow's): now, retried
///   every [`RETRY`].
///
/// Never earlier than [`RETRY`] after `last_attempt`.
pub fn next_fetch(
    now: Timestamp,
    source: &PriceSource,
    slots: &[PriceSlot],
    last_attempt: Option<Timestamp>,
) -> Option<Timestamp> {
    let p = source.publication()?;
    let today = p.zone.to_datetime(now).date();
    let local = |date: jiff::civil::Date, time: Time| {
        p.zone
            .to_ambiguous_timestamp(date.to_datetime(time))
            .compatible()
            .unwrap_or(now)
    };
    let publish_time = Time::new(p.hour, p.minute, 0, 0).unwrap_or(Time::midnight());
    let published_today = local(today, publish_time);
    let tomorrow = today.tomorrow().unwrap_or(today);
    let have_until = covered_until(slots, now);
    let wanted = if have_until.is_some_and(|u| u >= local(tomorrow, TOMORROW_UNTIL)) {
        if now < published_today {
            published_today
        } else {
            local(tomorrow, publish_time)
        }
    } else if have_until.is_some() && now < published_today {
        published_today
    } else {
        now
    };
    let earliest = last_attempt.map_or(wanted, |last| last + RETRY);
    Some(wanted.max(earliest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::TariffConfig;
    use crate::tariff::tests::ts;
    use jiff::tz::TimeZone;

    fn source(name: &str) -> PriceSource {
        let config = TariffConfig {
            source: Some(name.into()),
            product: Some("AGILE-24-10-01".into()),
            region: Some("C".into()),
            zone: Some("SE3".into()),
            currency: Some("EUR".into()),
            fixed: vec![crate::tariff::FixedRate {
                from: "00:00".into(),
                to: "00:00".into(),
                price: 0.2,
                days: None,
            }],
            ..TariffConfig::default()
        };
        config.source(&TimeZone::UTC).unwrap().unwrap()
    }

    /// Half-hour slots from `from` to `to`.
    fn prices(from: &str, to: &str) -> Vec<PriceSlot> {
        let (mut at, to) = (ts(from), ts(to));
        let mut out = Vec::new();
        while at < to {
            out.push(PriceSlot {
                start: at,
                end: at + SignedDuration::from_mins(30),
                price: 0.1,
            });
            at += SignedDuration::from_mins(30);
        }
        out
    }

    #[test]
    fn a_cache_round_trips_and_knows_its_source() {
        let cache = CachedPrices {
            source: source("octopus_agile").key(),
            fetched_at: ts("2026-01-14T16:05:12Z"),
            slots: prices("2026-01-14T23:00:00Z", "2026-01-15T01:00:00Z"),
        };
        let bytes = encode(&cache);
        assert_eq!(decode(&bytes).unwrap(), cache);
        assert!(cache.is_from(&source("octopus_agile")));
        assert!(!cache.is_from(&source("nordpool")));
        assert_eq!(cache.source, "octopus_agile:AGILE-24-10-01:C");
        assert!(decode(b"{\"source\": 1}").is_err());
        assert!(decode(b"<html>").is_err());
    }

    #[test]
    fn covers_needs_every_instant_of_the_window() {
        let mut slots = prices("2026-01-14T23:00:00Z", "2026-01-15T07:00:00Z");
        assert!(covers(
            &slots,
            ts("2026-01-14T23:00:00Z"),
            ts("2026-01-15T07:00:00Z")
        ));
        assert!(covers(
            &slots,
            ts("2026-01-15T02:10:00Z"),
            ts("2026-01-15T06:00:00Z")
        ));
        assert!(!covers(
            &slots,
            ts("2026-01-14T22:59:00Z"),
            ts("2026-01-15T07:00:00Z")
        ));
        assert!(!covers(
            &slots,
            ts("2026-01-15T00:00:00Z"),
            ts("2026-01-15T07:01:00Z")
        ));
        slots.remove(4);
        assert!(!covers(
            &slots,
            ts("2026-01-14T23:00:00Z"),
            ts("2026-01-15T07:00:00Z")
        ));
        assert_eq!(
            covered_until(&slots, ts("2026-01-14T23:10:00Z")),
            Some(ts("2026-01-15T01:00:00Z"))
        );
        assert!(covers(
            &[],
            ts("2026-01-15T00:00:00Z"),
            ts("2026-01-15T00:00:00Z")
        ));
    }

    #[test]
    fn octopus_is_fetched_at_four_uk_time_then_every_quarter_hour_until_tomorrow_appears() {
        let s = source("octopus_agile");
        // Summer: 16:00 BST is 15:00 UTC. Today's prices (until 23:00 tonight) at hand at 10:00.
        let today = prices("2026-07-14T22:00:00Z", "2026-07-15T22:00:00Z");
        assert_eq!(
            next_fetch(ts("2026-07-15T09:00:00Z"), &s, &today, None),
            Some(ts("2026-07-15T15:00:00Z"))
        );
        // Past 16:00 without tomorrow's: now, and then a quarter of an hour after each attempt.
        let now = ts("2026-07-15T15:02:00Z");
        assert_eq!(next_fetch(now, &s, &today, None), Some(now));
        assert_eq!(
            next_fetch(now, &s, &today, Some(ts("2026-07-15T15:00:00Z"))),
            Some(ts("2026-07-15T15:15:00Z"))
        );
        // Tomorrow's are in: next at tomorrow's publication.
        let both = prices("2026-07-14T22:00:00Z", "2026-07-16T22:00:00Z");
        assert_eq!(
            next_fetch(now, &s, &both, Some(ts("2026-07-15T15:00:00Z"))),
            Some(ts("2026-07-16T15:00:00Z"))
        );
    }

    #[test]
    fn epex_sources_are_fetched_at_one_cet_and_at_once_when_nothing_is_at_hand() {
        let s = source("nordpool");
        // Winter: 13:00 CET is 12:00 UTC.
        let today = prices("2026-01-14T23:00:00Z", "2026-01-15T23:00:00Z");
        assert_eq!(
            next_fetch(ts("2026-01-15T08:00:00Z"), &s, &today, None),
            Some(ts("2026-01-15T12:00:00Z"))
        );
        let now = ts("2026-01-15T08:00:00Z");
        assert_eq!(next_fetch(now, &s, &[], None), Some(now));
        assert_eq!(next_fetch(now, &s, &[], Some(now)), Some(now + RETRY));
        // A fixed table is never fetched.
        assert_eq!(next_fetch(now, &source("fixed"), &[], None), None);
    }
}
