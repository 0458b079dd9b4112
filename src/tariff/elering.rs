//! Elering (Estonia's grid operator): Nord Pool day-ahead prices for Estonia, Finland, Latvia
//! and Lithuania.
//!
//! `GET /api/nps/price?start=<ISO>&end=<ISO>` answers `{"success": true, "data": {"ee":
//! [{"timestamp": <unix s>, "price": <EUR/MWh>}], "fi": [...], "lv": [...], "lt": [...]}}`:
//! slot starts only, so the length follows from consecutive starts, as for Energy-Charts.

use jiff::Timestamp;

use super::{Page, PriceError, TariffConfig, base, iso, json, slots_from_starts};

pub const DEFAULT_BASE: &str = "https://dashboard.elering.ee";
const REGIONS: [&str; 4] = ["ee", "fi", "lv", "lt"];

#[derive(Debug, Clone, PartialEq)]
pub struct Elering {
    pub base_url: String,
    /// `ee`, `fi`, `lv` or `lt`.
    pub region: String,
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default = "yes")]
    success: bool,
    data: std::collections::HashMap<String, Vec<Entry>>,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize)]
struct Entry {
    timestamp: i64,
    price: Option<f64>,
}

impl Elering {
    pub(super) fn new(config: &TariffConfig, problems: &mut Vec<String>) -> Option<Elering> {
        let region = config
            .region
            .as_deref()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !REGIONS.contains(&region.as_str()) {
            problems.push("tariff.region must be ee, fi, lv or lt for elering".to_string());
        }
        Some(Elering {
            base_url: base(config, DEFAULT_BASE),
            region,
        })
    }

    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        vec![format!(
            "{}/api/nps/price?start={}&end={}",
            self.base_url,
            iso(from),
            iso(to)
        )]
    }

    pub fn parse(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Page, PriceError> {
        let answer: Answer = json(status, content_type, body)?;
        if !answer.success {
            return Err(PriceError::Malformed("success: false".to_string()));
        }
        let entries = answer.data.get(&self.region).map_or(&[][..], Vec::as_slice);
        let points = entries
            .iter()
            .map(|e| {
                Timestamp::from_second(e.timestamp)
                    .map(|t| (t, e.price.map(|p| p / 1000.0)))
                    .map_err(|_| {
                        PriceError::Malformed(format!("timestamp {} out of range", e.timestamp))
                    })
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

    fn source(region: &str) -> Elering {
        let config = TariffConfig {
            region: Some(region.into()),
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let s = Elering::new(&config, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        s
    }

    #[test]
    fn the_request_is_the_window_in_utc() {
        assert_eq!(
            source("ee").request(ts("2026-01-14T22:00:00Z"), ts("2026-01-15T22:00:00Z")),
            ["https://dashboard.elering.ee/api/nps/price\
              ?start=2026-01-14T22:00:00Z&end=2026-01-15T22:00:00Z"]
        );
    }

    #[test]
    fn each_region_reads_its_own_list_and_lengths_come_from_the_starts() {
        let body = fixture("elering_2026-01-15.json");
        let ee = source("ee")
            .parse(200, Some("application/json"), &body)
            .unwrap();
        // Quarter hours, as the day-ahead market has had since October 2025.
        assert_eq!(ee.slots.len(), 96);
        assert_eq!(ee.slots[0].start, ts("2026-01-14T22:00:00Z"));
        assert_eq!(ee.slots[0].end, ts("2026-01-14T22:15:00Z"));
        assert_eq!(ee.slots[95].end, ts("2026-01-15T22:00:00Z"));
        assert!(
            (ee.slots[0].price - 0.08211).abs() < 1e-12,
            "{}",
            ee.slots[0].price
        );
        let fi = source("FI")
            .parse(200, Some("application/json"), &body)
            .unwrap();
        assert_ne!(fi.slots[0].price, ee.slots[0].price);
    }

    #[test]
    fn an_empty_list_is_not_published_and_a_failure_flag_is_malformed() {
        let s = source("lv");
        let body = br#"{"success":true,"data":{"ee":[],"fi":[],"lv":[],"lt":[]}}"#;
        assert_eq!(
            s.parse(200, Some("application/json"), body),
            Err(PriceError::NotPublished)
        );
        let body = br#"{"success":false,"data":{}}"#;
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
