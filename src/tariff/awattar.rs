//! aWATTar (Germany, Austria): day-ahead market prices.
//!
//! `GET /v1/marketdata?start=<ms>&end=<ms>` on `api.awattar.de` or `api.awattar.at` answers
//! `{"object": "list", "data": [{"start_timestamp", "end_timestamp", "marketprice", "unit"}]}`
//! with millisecond timestamps and prices in EUR/MWh.

use jiff::Timestamp;

use super::{Page, PriceError, PriceSlot, TariffConfig, base, json, per_kwh_factor};

#[derive(Debug, Clone, PartialEq)]
pub struct Awattar {
    pub base_url: String,
    /// `de` or `at`.
    pub country: String,
}

#[derive(serde::Deserialize)]
struct Answer {
    data: Vec<Entry>,
}

#[derive(serde::Deserialize)]
struct Entry {
    start_timestamp: i64,
    end_timestamp: i64,
    marketprice: f64,
    unit: String,
}

impl Awattar {
    pub(super) fn new(config: &TariffConfig, problems: &mut Vec<String>) -> Option<Awattar> {
        let country = config
            .country
            .as_deref()
            .unwrap_or("de")
            .trim()
            .to_ascii_lowercase();
        if country != "de" && country != "at" {
            problems.push(format!(
                "tariff.country {country:?} must be de or at for awattar"
            ));
        }
        let default = format!("https://api.awattar.{country}");
        Some(Awattar {
            base_url: base(config, &default),
            country,
        })
    }

    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        vec![format!(
            "{}/v1/marketdata?start={}&end={}",
            self.base_url,
            from.as_millisecond(),
            to.as_millisecond()
        )]
    }

    pub fn parse(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Page, PriceError> {
        let answer: Answer = json(status, content_type, body)?;
        let mut slots = Vec::with_capacity(answer.data.len());
        for e in answer.data {
            let at = |ms: i64| {
                Timestamp::from_millisecond(ms)
                    .map_err(|_| PriceError::Malformed(format!("timestamp {ms} out of range")))
            };
            let (start, end) = (at(e.start_timestamp)?, at(e.end_timestamp)?);
            let price = e.marketprice * per_kwh_factor(&e.unit)?;
            if start < end && price.is_finite() {
                slots.push(PriceSlot { start, end, price });
            }
        }
        Page::last(slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::tests::{fixture, ts};

    fn source(country: Option<&str>) -> Awattar {
        let config = TariffConfig {
            country: country.map(Into::into),
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let s = Awattar::new(&config, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        s
    }

    #[test]
    fn the_request_is_in_milliseconds_on_the_countrys_host() {
        let (from, to) = (ts("2026-01-14T23:00:00Z"), ts("2026-01-15T23:00:00Z"));
        assert_eq!(
            source(None).request(from, to),
            ["https://api.awattar.de/v1/marketdata?start=1768431600000&end=1768518000000"]
        );
        assert!(source(Some("AT")).request(from, to)[0].starts_with("https://api.awattar.at/"));
    }

    #[test]
    fn market_prices_in_eur_per_mwh_become_eur_per_kwh() {
        let page = source(None)
            .parse(
                200,
                Some("application/json"),
                &fixture("awattar_de_2026-01-15.json"),
            )
            .unwrap();
        assert_eq!(page.slots.len(), 24);
        assert_eq!(page.slots[0].start, ts("2026-01-14T23:00:00Z"));
        assert_eq!(page.slots[0].end, ts("2026-01-15T00:00:00Z"));
        assert!((page.slots[0].price - 0.08912).abs() < 1e-12);
        assert!(page.slots.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn empty_data_is_not_published_yet_and_an_unknown_unit_is_malformed() {
        let s = source(None);
        let e = s.parse(
            200,
            Some("application/json"),
            &fixture("awattar_empty.json"),
        );
        assert_eq!(e, Err(PriceError::NotPublished));
        let body = br#"{"object":"list","data":[{"start_timestamp":1768431600000,
            "end_timestamp":1768435200000,"marketprice":89.12,"unit":"Eur/therm"}]}"#;
        assert!(matches!(
            s.parse(200, Some("application/json"), body),
            Err(PriceError::Malformed(_))
        ));
        let e = s.parse(200, Some("text/html"), &fixture("error_page.html"));
        assert!(matches!(e, Err(PriceError::Malformed(_))), "{e:?}");
    }

    #[test]
    fn only_de_and_at_are_countries() {
        let mut problems = Vec::new();
        let config = TariffConfig {
            country: Some("ch".into()),
            ..TariffConfig::default()
        };
        Awattar::new(&config, &mut problems);
        assert_eq!(problems.len(), 1);
    }
}
