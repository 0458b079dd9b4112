//! A fixed time-of-use tariff from config: rows of `{from: "HH:MM", to: "HH:MM", price, days}`
//! expanded into price slots for a window, in the local zone.
//!
//! Each row applies on each civil date whose weekday is in `days` (every day without), from
//! `from` that date to `to`: the same date when `to` is later, else the next date (`"00:00"` and
//! `"24:00"` both mean the midnight ending the day). Local times become instants as a meter
//! following the wall clock sees them: a DST day's off-peak "00:00-07:00" is simply an hour
//! shorter or longer, a row inside a skipped hour is empty, and a repeated time is its first
//! pass. Where rows overlap, the one listed first
//! wins, so a general row may follow the exceptions it leaves to them.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};

use super::{PriceSlot, TariffConfig};
use crate::domain::units::{Days, LocalTime};

/// A day in minutes: the `to` of a row ending at midnight.
const DAY_MINUTES: u16 = 24 * 60;

#[derive(Debug, Clone, PartialEq)]
pub struct FixedTariff {
    pub rows: Vec<Row>,
    pub tz: TimeZone,
    pub currency: String,
}

/// One checked row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Minutes after midnight, 0..1440.
    pub from: u16,
    /// Minutes after midnight, 1..=1440 (1440 is the midnight ending the day); a value not
    /// after `from` ends on the next day.
    pub to: u16,
    pub price: f64,
    pub days: Option<Days>,
}

/// `HH:MM` in minutes; `24:00` too when `end` is set.
fn minutes(s: &str, end: bool) -> Option<u16> {
    if end && s == "24:00" {
        return Some(DAY_MINUTES);
    }
    LocalTime::parse_hhmm(s).map(|t| t.hour() as u16 * 60 + t.minute() as u16)
}

impl FixedTariff {
    pub(super) fn new(
        config: &TariffConfig,
        tz: &TimeZone,
        problems: &mut Vec<String>,
    ) -> Option<FixedTariff> {
        let currency = config
            .currency
            .as_deref()
            .unwrap_or("")
            .trim()
            .to_ascii_uppercase();
        if currency.is_empty() {
            problems.push("tariff.currency is required for a fixed table, e.g. GBP".to_string());
        } else if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
            problems.push(format!(
                "tariff.currency {currency:?} must be a three-letter currency code, e.g. GBP"
            ));
        }
        if config.fixed.is_empty() {
            problems.push("tariff.fixed must list at least one {from, to, price} row".to_string());
        }
        let mut rows = Vec::with_capacity(config.fixed.len());
        for (i, r) in config.fixed.iter().enumerate() {
            let from = minutes(&r.from, false);
            let to = minutes(&r.to, true).map(|m| if m == 0 { DAY_MINUTES } else { m });
            if from.is_none() {
                problems.push(format!("tariff.fixed[{i}].from {:?} is not HH:MM", r.from));
            }
            if to.is_none() {
                problems.push(format!("tariff.fixed[{i}].to {:?} is not HH:MM", r.to));
            }
            if !r.price.is_finite() {
                problems.push(format!("tariff.fixed[{i}].price is not a number"));
            }
            let days = match &r.days {
                None => Some(None),
                Some(names) => Days::from_names(names.iter().map(String::as_str)).map(Some),
            };
            if days.is_none() {
                problems.push(format!(
                    "tariff.fixed[{i}].days must be a non-empty list of mon..sun"
                ));
            }
            if let (Some(from), Some(to), Some(days)) = (from, to, days) {
                rows.push(Row {
                    from,
                    to,
                    price: r.price,
                    days,
                });
            }
        }
        Some(FixedTariff {
            rows,
            tz: tz.clone(),
            currency,
        })
    }

    /// The table's slots over `[from, to)`, in time order, clipped to the window.
    pub fn expand(&self, from: Timestamp, to: Timestamp) -> Vec<PriceSlot> {
        if from >= to {
            return Vec::new();
        }
        // A row that began the day before `from` may still run into the window.
        let first = self.tz.to_datetime(from).date().yesterday().ok();
        let last = self.tz.to_datetime(to).date();
        let mut taken: Vec<PriceSlot> = Vec::new();
        for row in &self.rows {
            let mut date = first.unwrap_or(last);
            while date <= last {
                if row.days.is_none_or(|d| d.contains(date.weekday()))
                    && let Some((start, end)) = self.occurrence(row, date)
                {
                    let (start, end) = (start.max(from), end.min(to));
                    if start < end {
                        paint(&mut taken, start, end, row.price);
                    }
                }
                match date.tomorrow() {
                    Ok(next) => date = next,
                    Err(_) => break,
                }
            }
        }
        taken.sort_by_key(|s| s.start);
        taken
    }

    /// The row's instants on `date`.
    fn occurrence(&self, row: &Row, date: Date) -> Option<(Timestamp, Timestamp)> {
        let at = |date: Date, mins: u16| -> Option<Timestamp> {
            let (date, mins) = if mins >= DAY_MINUTES {
                (date.tomorrow().ok()?, mins - DAY_MINUTES)
            } else {
                (date, mins)
            };
            let time = Time::new((mins / 60) as i8, (mins % 60) as i8, 0, 0).ok()?;
            instant(&self.tz, DateTime::from_parts(date, time))
        };
        let end_date = if row.to > row.from {
            date
        } else {
            date.tomorrow().ok()?
        };
        let start = at(date, row.from)?;
        let end = at(end_date, row.to)?;
        (start < end).then_some((start, end))
    }
}

/// The instant of a local time: a time the clocks skip is the moment they change (so a row
/// inside a skipped hour is empty, and one reaching into it ends at the change); a time they
/// repeat is its first pass.
fn instant(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(dt);
    match ambiguous.offset() {
        AmbiguousOffset::Gap { after, .. } => {
            // Read with the offset that follows the gap, the time lies just before the change.
            let before_change = after.to_timestamp(dt).ok()?;
            tz.following(before_change).next().map(|t| t.timestamp())
        }
        _ => ambiguous.compatible().ok(),
    }
}

/// Adds `[start, end)` at `price` where no slot in `taken` is yet: earlier rows win.
fn paint(taken: &mut Vec<PriceSlot>, start: Timestamp, end: Timestamp, price: f64) {
    let mut free = vec![(start, end)];
    for t in taken.iter() {
        free = free
            .into_iter()
            .flat_map(|(s, e)| {
                if t.end <= s || e <= t.start {
                    vec![(s, e)]
                } else {
                    [(s, t.start), (t.end, e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    taken.extend(
        free.into_iter()
            .map(|(start, end)| PriceSlot { start, end, price }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::FixedRate;
    use jiff::SignedDuration;
    use jiff::civil::date;

    fn row(from: &str, to: &str, price: f64, days: Option<&[&str]>) -> FixedRate {
        FixedRate {
            from: from.into(),
            to: to.into(),
            price,
            days: days.map(|d| d.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn table(rows: Vec<FixedRate>, zone: &str) -> FixedTariff {
        let config = TariffConfig {
            source: Some("fixed".into()),
            currency: Some("GBP".into()),
            fixed: rows,
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let t = FixedTariff::new(&config, &TimeZone::get(zone).unwrap(), &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        t
    }

    fn local(zone: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Timestamp {
        date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned_datetime(TimeZone::get(zone).unwrap())
            .unwrap()
            .timestamp()
    }

    /// How long slots add up to (a table need not cover the day).
    fn covered(slots: &[PriceSlot]) -> SignedDuration {
        slots.iter().fold(SignedDuration::ZERO, |a, s| {
            a + s.end.duration_since(s.start)
        })
    }

    fn off_peak() -> Vec<FixedRate> {
        vec![
            row("00:00", "07:00", 0.09, None),
            row("07:00", "00:00", 0.27, None),
        ]
    }

    #[test]
    fn a_day_expands_into_its_rows_with_midnight_as_00_00() {
        let t = table(off_peak(), "Europe/London");
        let z = "Europe/London";
        let slots = t.expand(local(z, 2026, 1, 15, 0, 0), local(z, 2026, 1, 16, 0, 0));
        assert_eq!(
            slots,
            [
                PriceSlot {
                    start: local(z, 2026, 1, 15, 0, 0),
                    end: local(z, 2026, 1, 15, 7, 0),
                    price: 0.09
                },
                PriceSlot {
                    start: local(z, 2026, 1, 15, 7, 0),
                    end: local(z, 2026, 1, 16, 0, 0),
                    price: 0.27
                },
            ]
        );
    }

    #[test]
    fn dst_days_make_the_night_shorter_or_longer() {
        let z = "Europe/London";
        let t = table(off_peak(), z);
        let night = |d: i8, mo: i8| {
            let s = t.expand(local(z, 2026, mo, d, 0, 0), local(z, 2026, mo, d, 12, 0));
            s[0].end.duration_since(s[0].start)
        };
        assert_eq!(night(29, 3), SignedDuration::from_hours(6));
        assert_eq!(night(25, 10), SignedDuration::from_hours(8));
        assert_eq!(night(15, 1), SignedDuration::from_hours(7));
        // A whole local day is 23 or 25 hours.
        let day = t.expand(local(z, 2026, 10, 25, 0, 0), local(z, 2026, 10, 26, 0, 0));
        assert_eq!(covered(&day), SignedDuration::from_hours(25));
        // In Los Angeles a row inside the skipped hour is empty.
        let z = "America/Los_Angeles";
        let t = table(vec![row("02:00", "02:30", 0.01, None)], z);
        assert!(
            t.expand(local(z, 2026, 3, 8, 0, 0), local(z, 2026, 3, 8, 6, 0))
                .is_empty()
        );
        assert_eq!(
            covered(&t.expand(local(z, 2026, 3, 9, 0, 0), local(z, 2026, 3, 9, 6, 0))),
            SignedDuration::from_mins(30)
        );
        // Rows reaching into it end, or begin, at the change (03:00 PDT).
        let t = table(
            vec![
                row("01:00", "02:30", 0.05, None),
                row("02:30", "04:00", 0.07, None),
            ],
            z,
        );
        let slots = t.expand(local(z, 2026, 3, 8, 0, 0), local(z, 2026, 3, 8, 6, 0));
        assert_eq!(
            slots.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            [
                (local(z, 2026, 3, 8, 1, 0), local(z, 2026, 3, 8, 3, 0)),
                (local(z, 2026, 3, 8, 3, 0), local(z, 2026, 3, 8, 4, 0)),
            ]
        );
        assert_eq!(covered(&slots), SignedDuration::from_hours(2));
    }

    #[test]
    fn rows_cross_midnight_and_a_window_starting_in_one_gets_its_rest() {
        let z = "Europe/Berlin";
        let t = table(
            vec![
                row("23:00", "06:00", 0.10, None),
                row("06:00", "24:00", 0.30, None),
            ],
            z,
        );
        let slots = t.expand(local(z, 2026, 1, 15, 2, 0), local(z, 2026, 1, 15, 23, 30));
        assert_eq!(
            slots
                .iter()
                .map(|s| (s.start, s.end, s.price))
                .collect::<Vec<_>>(),
            [
                (
                    local(z, 2026, 1, 15, 2, 0),
                    local(z, 2026, 1, 15, 6, 0),
                    0.10
                ),
                (
                    local(z, 2026, 1, 15, 6, 0),
                    local(z, 2026, 1, 15, 23, 0),
                    0.30
                ),
                (
                    local(z, 2026, 1, 15, 23, 0),
                    local(z, 2026, 1, 15, 23, 30),
                    0.10
                ),
            ]
        );
    }

    #[test]
    fn days_select_weekdays_and_earlier_rows_win_overlaps() {
        let z = "Europe/London";
        // Weekend nights cheaper; the general row only fills what is left.
        let t = table(
            vec![
                row("00:00", "08:00", 0.05, Some(&["sat", "sun"])),
                row("00:00", "24:00", 0.25, None),
            ],
            z,
        );
        // 2026-01-17 is a Saturday.
        let sat = t.expand(local(z, 2026, 1, 17, 0, 0), local(z, 2026, 1, 18, 0, 0));
        assert_eq!(sat.len(), 2);
        assert_eq!((sat[0].price, sat[1].price), (0.05, 0.25));
        assert_eq!(sat[0].end, local(z, 2026, 1, 17, 8, 0));
        let fri = t.expand(local(z, 2026, 1, 16, 0, 0), local(z, 2026, 1, 17, 0, 0));
        assert_eq!(fri.len(), 1);
        assert_eq!(covered(&fri), SignedDuration::from_hours(24));
    }

    #[test]
    fn the_currency_is_a_three_letter_code_in_capitals() {
        let with = |currency: &str| TariffConfig {
            source: Some("fixed".into()),
            currency: Some(currency.into()),
            fixed: off_peak(),
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let t = FixedTariff::new(&with(" gbp "), &TimeZone::UTC, &mut problems).unwrap();
        assert_eq!((t.currency.as_str(), problems.len()), ("GBP", 0));
        let problems = with("pounds").validate();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("tariff.currency"), "{problems:?}");
    }

    #[test]
    fn a_bad_table_lists_every_problem() {
        let config = TariffConfig {
            source: Some("fixed".into()),
            fixed: vec![
                row("7:00", "25:00", f64::NAN, Some(&["funday"])),
                row("00:00", "07:00", 0.1, None),
            ],
            ..TariffConfig::default()
        };
        let problems = config.validate();
        // currency, from, to, price, days.
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}
