//! Octopus Energy Agile (UK): half-hourly unit rates, in pence per kWh including VAT, newest
//! first, paginated through `next`.
//!
//! `GET /v1/products/<product>/electricity-tariffs/E-1R-<product>-<region>/standard-unit-rates/
//! ?period_from=<ISO>&period_to=<ISO>` answers `{"count", "next", "previous", "results":
//! [{"value_exc_vat", "value_inc_vat", "valid_from", "valid_to", "payment_method"}]}`.
//! A retired product code answers 404.

use jiff::Timestamp;

use super::{Page, PriceError, PriceSlot, TariffConfig, base, iso, json};

pub const DEFAULT_BASE: &str = "https://api.octopus.energy";

/// The regions (grid supply point groups) a tariff code ends in; there is no I and no O.
const REGIONS: &str = "ABCDEFGHJKLMNP";

#[derive(Debug, Clone, PartialEq)]
pub struct OctopusAgile {
    pub base_url: String,
    pub product: String,
    pub region: String,
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    next: Option<String>,
    results: Vec<Rate>,
}

#[derive(serde::Deserialize)]
struct Rate {
    value_inc_vat: f64,
    valid_from: Timestamp,
    valid_to: Option<Timestamp>,
    #[serde(default)]
    payment_method: Option<String>,
}

impl OctopusAgile {
    pub(super) fn new(config: &TariffConfig, problems: &mut Vec<String>) -> Option<OctopusAgile> {
        let product = config.product.as_deref().map(str::trim).unwrap_or("");
        if product.is_empty()
            || !product
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            problems.push(
                "tariff.product must be the Agile product code, e.g. AGILE-24-10-01".to_string(),
            );
        }
        let region = config.region.as_deref().map(str::trim).unwrap_or("");
        let region = region.to_ascii_uppercase();
        if region.len() != 1 || !REGIONS.contains(region.as_str()) {
            problems.push(format!(
                "tariff.region must be the Octopus region letter, one of {REGIONS}"
            ));
        }
        Some(OctopusAgile {
            base_url: base(config, DEFAULT_BASE),
            product: product.to_string(),
            region,
        })
    }

    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        let p = &self.product;
        vec![format!(
            "{}/v1/products/{p}/electricity-tariffs/E-1R-{p}-{}/standard-unit-rates/\
             ?period_from={}&period_to={}",
            self.base_url,
            self.region,
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
        let mut slots: Vec<PriceSlot> = answer
            .results
            .iter()
            // Some tariffs list a second, dearer rate for customers not paying by direct debit.
            .filter(|r| r.payment_method.as_deref() != Some("NON_DIRECT_DEBIT"))
            .filter_map(|r| {
                // An open-ended rate is a flat tariff's, not a half-hour slot.
                let end = r.valid_to?;
                (r.valid_from < end && r.value_inc_vat.is_finite()).then_some(PriceSlot {
                    start: r.valid_from,
                    end,
                    price: r.value_inc_vat / 100.0,
                })
            })
            .collect();
        slots.sort_by_key(|s| s.start);
        let next = answer.next.map(|n| self.rebase(&n));
        if slots.is_empty() && next.is_none() {
            return Err(PriceError::NotPublished);
        }
        Ok(Page { slots, next })
    }

    /// The `next` link's path and query on the configured host: a link never leads elsewhere,
    /// and a `base_url` override (a proxy, a test server) is kept across pages.
    fn rebase(&self, next: &str) -> String {
        let path = match next.find("://") {
            Some(i) => next[i + 3..].find('/').map_or("/", |j| &next[i + 3 + j..]),
            None => next,
        };
        format!("{}{path}", self.base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tariff::tests::{fixture, ts};

    fn source(base_url: Option<&str>) -> OctopusAgile {
        let config = TariffConfig {
            source: Some("octopus_agile".into()),
            base_url: base_url.map(Into::into),
            product: Some("AGILE-24-10-01".into()),
            region: Some("c".into()),
            ..TariffConfig::default()
        };
        let mut problems = Vec::new();
        let s = OctopusAgile::new(&config, &mut problems).unwrap();
        assert_eq!(problems, Vec::<String>::new());
        s
    }

    #[test]
    fn the_request_names_the_product_and_region_and_the_window() {
        let urls = source(None).request(ts("2026-01-14T23:00:00Z"), ts("2026-01-15T23:00:00Z"));
        assert_eq!(
            urls,
            [
                "https://api.octopus.energy/v1/products/AGILE-24-10-01/electricity-tariffs/\
              E-1R-AGILE-24-10-01-C/standard-unit-rates/\
              ?period_from=2026-01-14T23:00:00Z&period_to=2026-01-15T23:00:00Z"
            ]
        );
        let urls = source(Some("http://127.0.0.1:9/"))
            .request(ts("2026-01-14T23:00:00Z"), ts("2026-01-15T23:00:00Z"));
        assert!(
            urls[0].starts_with("http://127.0.0.1:9/v1/products/"),
            "{urls:?}"
        );
    }

    #[test]
    fn rates_in_pence_newest_first_become_pounds_in_time_order() {
        let page = source(None)
            .parse(
                200,
                Some("application/json"),
                &fixture("octopus_agile_2026-01-15.json"),
            )
            .unwrap();
        assert_eq!(page.next, None);
        assert_eq!(page.slots.len(), 8);
        let first = page.slots[0];
        assert_eq!(first.start, ts("2026-01-15T00:00:00Z"));
        assert_eq!(first.end, ts("2026-01-15T00:30:00Z"));
        assert!((first.price - 0.1785).abs() < 1e-12, "{}", first.price);
        assert!(page.slots.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn the_fall_back_day_has_fifty_slots_over_two_pages_and_next_stays_on_the_host() {
        let s = source(Some("http://127.0.0.1:9"));
        let one = s
            .parse(
                200,
                Some("application/json"),
                &fixture("octopus_agile_2026-10-25_page1.json"),
            )
            .unwrap();
        assert_eq!(
            one.next.as_deref(),
            Some(
                "http://127.0.0.1:9/v1/products/AGILE-24-10-01/electricity-tariffs/\
                 E-1R-AGILE-24-10-01-C/standard-unit-rates/\
                 ?page=2&period_from=2026-10-24T23%3A00%3A00Z&period_to=2026-10-26T00%3A00%3A00Z"
            )
        );
        let two = s
            .parse(
                200,
                Some("application/json"),
                &fixture("octopus_agile_2026-10-25_page2.json"),
            )
            .unwrap();
        assert_eq!(two.next, None);
        let all = crate::tariff::tidy(
            [one.slots, two.slots].concat(),
            ts("2026-10-24T23:00:00Z"),
            ts("2026-10-26T00:00:00Z"),
        );
        assert_eq!(all.len(), 50);
        assert_eq!(all[0].start, ts("2026-10-24T23:00:00Z"));
        assert_eq!(all[49].end, ts("2026-10-26T00:00:00Z"));
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn an_empty_result_is_not_published_yet() {
        let e = source(None).parse(
            200,
            Some("application/json"),
            &fixture("octopus_agile_empty.json"),
        );
        assert_eq!(e, Err(PriceError::NotPublished));
    }

    #[test]
    fn a_retired_product_is_an_http_error_and_an_html_page_is_malformed() {
        let s = source(None);
        let e = s.parse(
            404,
            Some("application/json"),
            br#"{"detail":"No EnergyProduct matches the given query."}"#,
        );
        assert_eq!(e, Err(PriceError::Http(404)));
        let e = s.parse(
            200,
            Some("text/html; charset=utf-8"),
            &fixture("error_page.html"),
        );
        assert!(matches!(e, Err(PriceError::Malformed(_))), "{e:?}");
        // Without a content type the body still gives it away.
        let e = s.parse(200, None, &fixture("error_page.html"));
        assert!(matches!(e, Err(PriceError::Malformed(_))), "{e:?}");
    }

    #[test]
    fn a_dearer_non_direct_debit_rate_and_open_ended_rates_are_skipped() {
        let body = br#"{"count":3,"next":null,"previous":null,"results":[
          {"value_exc_vat":20.0,"value_inc_vat":21.0,"valid_from":"2026-01-15T00:00:00Z",
           "valid_to":"2026-01-15T00:30:00Z","payment_method":"NON_DIRECT_DEBIT"},
          {"value_exc_vat":19.0,"value_inc_vat":19.95,"valid_from":"2026-01-15T00:00:00Z",
           "valid_to":"2026-01-15T00:30:00Z","payment_method":"DIRECT_DEBIT"},
          {"value_exc_vat":24.0,"value_inc_vat":25.2,"valid_from":"2025-01-01T00:00:00Z",
           "valid_to":null,"payment_method":null}]}"#;
        let page = source(None)
            .parse(200, Some("application/json"), body)
            .unwrap();
        assert_eq!(page.slots.len(), 1);
        assert!((page.slots[0].price - 0.1995).abs() < 1e-12);
    }

    #[test]
    fn the_config_needs_a_product_and_a_region_letter() {
        let mut problems = Vec::new();
        let config = TariffConfig {
            region: Some("I".into()),
            ..TariffConfig::default()
        };
        OctopusAgile::new(&config, &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
