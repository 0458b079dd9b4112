//! Energy-Charts (Fraunhofer ISE): day-ahead prices of European bidding zones.
//!
//! `GET /price?bzn=<zone>&start=<date>&end=<date>` answers `{"unix_seconds": [...],
//! "price": [...], "unit": "EUR / MWh"}`: slot starts only. The slot length follows from the
//! starts (15 minutes since the day-ahead market moved to quarter hours, an hour before it), so
//! nothing assumes 3600 s. The dates are market (CET) dates, the end one included.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Page, PriceError, TariffConfig, base, dates, json, per_kwh_factor, slots_from_starts};

pub const DEFAULT_BASE: &str = "https://api.energy-charts.info";
pub const DEFAULT_ZONE: &str = "DE-LU";

#[derive(Debug, Clone, PartialEq)]
pub struct EnergyCharts {
    pub base_url: String,
    /// The bidding zone, e.g. `DE-LU`, `AT`, `NL`.
    pub zone: String,
}

#[derive(serde::Deserialize)]
struct Answer {
    unix_seconds: Vec<i64>,
    price: Vec<Option<f64>>,
    unit: String,
}

impl EnergyCharts {
    pub(super) fn new(config: &TariffConfig) -> EnergyCharts {
        EnergyCharts {
            base_url: base(config, DEFAULT_BASE),
            zone: config
                .zone
                .as_deref()
                .map(str::trim)
                .filter(|z| !z.is_empty())
                .unwrap_or(DEFAULT_ZONE)
                .to_string(),
        }
    }

    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        let cet = TimeZone::get("Europe/Berlin").expect("the bundled tzdb has Europe/Berlin");
        let days = dates(from, to, &cet);
        let (first, last) = (days[0], days[days.len() - 1]);
        vec![format!(
            "{}/price?bzn={}&start={first}&end={last}",
            self.base_url, self.zone
        )]
    }

    pub fn parse(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Page, PriceError> {
        let answer: Answer = json(status, content_type, body)?;
        if answer.unix_seconds.len() != answer.price.len() {
            return Err(PriceError::Malformed(format!(
                "{} timestamps but {} prices",
                answer.unix_seconds.len(),
                answer.price.len()
            )));
        }
        let factor = per_kwh_factor(&answer.unit)?;
        let points = answer
            .unix_seconds
            .iter()
            .zip(&answer.price)
            .map(|(&s, p)| {
                Timestamp::from_second(s)
                    .map(|t| (t, p.map(|p| p * factor)))
                    .map_err(|_| PriceError::Malformed(format!("timestamp {s} out of range")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slots = slots_from_starts(points);
        Page::last(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::tests::{fixture, ts};
    use jiff::SignedDuration;

    fn source() -> EnergyCharts {
        EnergyCharts::new(&TariffConfig::default())
    }

    #[test]
    fn the_request_names_the_zone_and_the_market_dates() {
        // 23:00 UTC on the 14th is midnight of the 15th in CET.
        assert_eq!(
            source().request(ts("2026-01-14T23:00:00Z"), ts("2026-01-16T06:00:00Z")),
            ["https://api.energy-charts.info/price?bzn=DE-LU&start=2026-01-15&end=2026-01-16"]
        );
    }

    #[test]
    fn the_spring_forward_day_has_92_quarter_hours() {
        let page = source()
            .parse(
                200,
                Some("application/json"),
                &fixture("energy_charts_de-lu_2026-03-29.json"),
            )
            .unwrap();
        assert_eq!(page.slots.len(), 92);
        assert_eq!(page.slots[0].start, ts("2026-03-28T23:00:00Z"));
        assert_eq!(page.slots[91].end, ts("2026-03-29T22:00:00Z"));
        assert!(
            page.slots
                .iter()
                .all(|s| s.end.duration_since(s.start) == SignedDuration::from_mins(15))
        );
        assert!(
            (page.slots[0].price - 0.09541).abs() < 1e-12,
            "{}",
            page.slots[0].price
        );
    }

    #[test]
    fn slot_lengths_follow_the_starts_across_a_market_change_and_gaps_stay_gaps() {
        // Two hourly slots, then quarter hours, a missing price, and a missing start.
        let body = br#"{"unix_seconds":[1768431600,1768435200,1768438800,1768439700,1768440600,
            1768442400],"price":[80.0,70.0,60.0,null,50.0,40.0],"unit":"EUR / MWh"}"#;
        let page = source().parse(200, Some("application/json"), body).unwrap();
        let lens: Vec<i64> = page
            .slots
            .iter()
            .map(|s| s.end.duration_since(s.start).as_mins())
            .collect();
        // 60, 60, 15, (gap), 30 (up to the next start), 30 (as the one before).
        assert_eq!(lens, [60, 60, 15, 30, 30]);
        assert_eq!(page.slots[3].start, ts("2026-01-15T01:30:00Z"));
    }

    #[test]
    fn empty_arrays_are_not_published_and_mismatched_ones_malformed() {
        let s = source();
        let body = br#"{"unix_seconds":[],"price":[],"unit":"EUR / MWh"}"#;
        assert_eq!(
            s.parse(200, Some("application/json"), body),
            Err(PriceError::NotPublished)
        );
        let body = br#"{"unix_seconds":[1768431600,1768435200],"price":[1.0],"unit":"EUR / MWh"}"#;
        assert!(matches!(
            s.parse(200, Some("application/json"), body),
            Err(PriceError::Malformed(_))
        ));
        assert!(matches!(
            s.parse(200, Some("text/html"), &fixture("error_page.html")),
            Err(PriceError::Malformed(_))
        ));
    }
}
