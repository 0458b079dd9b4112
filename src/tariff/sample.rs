//! A made-up but plausible day of a dynamic tariff, for the demo: half-hourly prices in GBP per
//! kWh with a cheap trough in the small hours, a morning bump, a dip around midday and the
//! evening peak.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::PriceSlot;

/// The sample day's prices in GBP per kWh, one per half hour from midnight.
pub const SAMPLE_DAY: [f64; 48] = [
    // 00:00 .. 05:30: falling into the overnight trough.
    0.162, 0.151, 0.139, 0.128, 0.117, 0.106, 0.094, 0.087, 0.085, 0.091, 0.104, 0.121,
    // 06:00 .. 11:30: the morning bump, easing off.
    0.153, 0.188, 0.224, 0.257, 0.268, 0.249, 0.221, 0.198, 0.181, 0.169, 0.158, 0.149,
    // 12:00 .. 17:30: the midday dip, then rising into the peak.
    0.141, 0.137, 0.146, 0.159, 0.177, 0.201, 0.232, 0.271, 0.328, 0.371, 0.398, 0.412,
    // 18:00 .. 23:30: the peak fading through the evening.
    0.389, 0.352, 0.301, 0.263, 0.238, 0.219, 0.207, 0.196, 0.186, 0.178, 0.171, 0.165,
];

/// The half hours of the overnight trough (03:00 to 05:00) in [`SAMPLE_DAY`].
pub const TROUGH: std::ops::Range<usize> = 6..10;
/// The half hours of the evening peak (16:00 to 19:00) in [`SAMPLE_DAY`].
pub const PEAK: std::ops::Range<usize> = 32..38;

/// The sample day as 48 back-to-back slots of `slot` each from `start` (slot 0 is the half
/// hour after midnight): a demo running at a higher speed passes a shorter slot and lives
/// through the day faster.
pub fn sample_day(start: Timestamp, slot: Duration) -> Vec<PriceSlot> {
    sample_day_from(start, slot, 0)
}

/// [`sample_day`] beginning at the half hour `first` of the day (wrapping round midnight), so
/// that slot 0 has the price of `SAMPLE_DAY[first % 48]`: a day from 16:00 opens with the
/// evening peak and has the overnight trough in its middle.
pub fn sample_day_from(start: Timestamp, slot: Duration, first: usize) -> Vec<PriceSlot> {
    let len = SignedDuration::try_from(slot).unwrap_or(SignedDuration::from_mins(30));
    let mut at = start;
    (0..SAMPLE_DAY.len())
        .map(|i| SAMPLE_DAY[(first + i) % SAMPLE_DAY.len()])
        .map(|price| {
            let end = at.checked_add(len).unwrap_or(at);
            let s = PriceSlot {
                start: at,
                end,
                price,
            };
            at = end;
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_day_is_48_back_to_back_slots_cheap_at_night_and_dear_in_the_evening() {
        let start: Timestamp = "2026-01-15T00:00:00Z".parse().unwrap();
        let day = sample_day(start, Duration::from_secs(30 * 60));
        assert_eq!(day.len(), 48);
        assert_eq!(day[0].start, start);
        assert_eq!(day[47].end, start + SignedDuration::from_hours(24));
        assert!(day.windows(2).all(|w| w[0].end == w[1].start));
        let dearest_trough = day[TROUGH].iter().map(|s| s.price).fold(f64::MIN, f64::max);
        let cheapest_peak = day[PEAK].iter().map(|s| s.price).fold(f64::MAX, f64::min);
        assert!(dearest_trough < cheapest_peak);
        // The trough holds the day's cheapest slot, the peak its dearest.
        let cheapest = day
            .iter()
            .min_by(|a, b| a.price.total_cmp(&b.price))
            .unwrap();
        let dearest = day
            .iter()
            .max_by(|a, b| a.price.total_cmp(&b.price))
            .unwrap();
        assert!(day[TROUGH].contains(cheapest) && day[PEAK].contains(dearest));
        // A demo at 60 times speed lives through the day in 24 minutes.
        let fast = sample_day(start, Duration::from_secs(30 * 60) / 60);
        assert_eq!(fast[47].end, start + SignedDuration::from_mins(24));
        assert!(fast.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn a_sample_day_from_the_evening_peak_has_the_same_prices_in_turn_from_there() {
        let start: Timestamp = "2026-01-15T16:00:00Z".parse().unwrap();
        let slot = Duration::from_secs(30);
        let day = sample_day_from(start, slot, PEAK.start);
        assert_eq!(day.len(), 48);
        assert_eq!(day[0].start, start);
        assert_eq!(day[47].end, start + SignedDuration::from_mins(24));
        assert!(day.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(day[0].price, SAMPLE_DAY[PEAK.start]);
        // Midnight is the 17th slot, and the day ends just before the next 16:00.
        assert_eq!(day[48 - PEAK.start].price, SAMPLE_DAY[0]);
        assert_eq!(day[47].price, SAMPLE_DAY[PEAK.start - 1]);
        assert_eq!(sample_day_from(start, slot, 0), sample_day(start, slot));
        assert_eq!(sample_day_from(start, slot, 48), sample_day(start, slot));
    }
}
