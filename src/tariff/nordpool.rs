//! Nord Pool's data portal: day-ahead prices per delivery area.
//!
//! `GET /api/DayAheadPrices?date=YYYY-MM-DD&market=DayAhead&deliveryArea=SE3&currency=EUR`
//! answers `{"deliveryDateCET", "multiAreaEntries": [{"deliveryStart", "deliveryEnd",
//! "entryPerArea": {"SE3": <price>}}]}` in currency per MWh, one request per CET delivery
//! date, and **204 No Content** while that date is not published yet.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Page, PriceError, PriceSlot, TariffConfig, base, dates, json};

pub const DEFAULT_BASE: &str = "https://dataportal-api.nordpoolgroup.com";
pub const DEFAULT_CURRENCY: &str = "EUR";

#[derive(Debug, Clone, PartialEq)]
pub struct NordPool {
    pub base_url: String,
    /// The delivery area, e.g. `SE3`, `NO1`, `FI`, `EE`.
    pub area: String,
    /// The currency asked for, e.g. `EUR`, `SEK`, `NOK`, `DKK`.
    pub currency: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    multi_area_entries: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    delivery_start: Timestamp,
    delivery_end: Timestamp,
    entry_per_area: std::collections::HashMap<String, Option<f64>>,
}

impl NordPool {
    pub(super) fn new(config: &TariffConfig, problems: &mut Vec<String>) -> Option<NordPool> {
        let area = config.zone.as_deref().map(str::trim).unwrap_or("");
        if area.is_empty() || !area.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push(
                "tariff.zone must be the Nord Pool delivery area for nordpool, e.g. SE3"
                    .to_string(),
            );
        }
        let currency = config
            .currency
            .as_deref()
            .unwrap_or(DEFAULT_CURRENCY)
            .trim()
            .to_ascii_uppercase();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
            problems.push(format!(
                "tariff.currency {currency:?} must be a three-letter currency code"
            ));
        }
        Some(NordPool {
            base_url: base(config, DEFAULT_BASE),
            area: area.to_ascii_uppercase(),
            currency,
        })
    }

    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        let cet = TimeZone::get("Europe/Berlin").expect("the bundled tzdb has Europe/Berlin");
        dates(from, to, &cet)
            .into_iter()
            .map(|d| {
                format!(
                    "{}/api/DayAheadPrices?date={d}&market=DayAhead&deliveryArea={}&currency={}",
                    self.base_url, self.area, self.currency
                )
            })
            .collect()
    }

    pub fn parse(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Page, PriceError> {
        let answer: Answer = json(status, content_type, body)?;
        let slots: Vec<PriceSlot> = answer
            .multi_area_entries
            .iter()
            .filter_map(|e| {
                let price = (*e.entry_per_area.get(&self.area)?)? / 1000.0;
                (e.delivery_start < e.delivery_end && price.is_finite()).then_some(PriceSlot {
                    start: e.delivery_start,
                    end: e.delivery_end,
                    price,
                })
            })
            .collect();
        Page::last(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::tests::{fixture, ts};

    fn source(area: &str) -> NordPool {
        let config = TariffConfig {
            zone: Some(area.into()),
            currency: Some("eur".into()),
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let s = NordPool::new(&config, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        s
    }

    #[test]
    fn one_request_per_cet_delivery_date() {
        let urls = source("se3").request(ts("2026-01-14T23:00:00Z"), ts("2026-01-16T06:00:00Z"));
        assert_eq!(
            urls,
            [
                "https://dataportal-api.nordpoolgroup.com/api/DayAheadPrices?date=2026-01-15\
                 &market=DayAhead&deliveryArea=SE3&currency=EUR",
                "https://dataportal-api.nordpoolgroup.com/api/DayAheadPrices?date=2026-01-16\
                 &market=DayAhead&deliveryArea=SE3&currency=EUR",
            ]
        );
    }

    #[test]
    fn the_areas_quarter_hours_become_eur_per_kwh() {
        let page = source("SE3")
            .parse(
                200,
                Some("application/json; charset=utf-8"),
                &fixture("nordpool_se3_2026-01-15.json"),
            )
            .unwrap();
        assert_eq!(page.slots.len(), 96);
        assert_eq!(page.slots[0].start, ts("2026-01-14T23:00:00Z"));
        assert_eq!(page.slots[0].end, ts("2026-01-14T23:15:00Z"));
        assert!(
            (page.slots[0].price - 0.03874).abs() < 1e-12,
            "{}",
            page.slots[0].price
        );
        // Another area of the same answer is read the same way; a missing one is not there.
        assert!(
            source("SE4")
                .parse(200, None, &fixture("nordpool_se3_2026-01-15.json"))
                .is_ok()
        );
        assert_eq!(
            source("NO1").parse(200, None, &fixture("nordpool_se3_2026-01-15.json")),
            Err(PriceError::NotPublished)
        );
    }

    #[test]
    fn no_content_is_not_published_yet() {
        assert_eq!(
            source("SE3").parse(204, None, b""),
            Err(PriceError::NotPublished)
        );
        assert_eq!(
            source("SE3").parse(503, None, b""),
            Err(PriceError::Http(503))
        );
        assert!(matches!(
            source("SE3").parse(200, Some("text/html"), &fixture("error_page.html")),
            Err(PriceError::Malformed(_))
        ));
    }
}
