//! Tests of what the sources share: config checks, the JSON gate, slot tidying. Each source's
//! parser is tested in its own module on the recorded answers in `tests/fixtures/prices/`.
use super::*;

/// A recorded answer from `tests/fixtures/prices/`.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prices")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub(crate) fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn config(source: &str) -> TariffConfig {
    TariffConfig {
        source: Some(source.into()),
        ..TariffConfig::default()
    }
}

#[test]
fn no_source_is_no_prices_and_no_problem() {
    assert_eq!(TariffConfig::default().validate(), Vec::<String>::new());
    assert_eq!(TariffConfig::default().source(&TimeZone::UTC), Ok(None));
}

#[test]
fn each_source_says_what_it_is_missing() {
    let problems = |c: TariffConfig| c.validate();
    assert_eq!(problems(config("octopus_agile")).len(), 2);
    assert_eq!(problems(config("nordpool")).len(), 1);
    assert_eq!(problems(config("elering")).len(), 1);
    assert_eq!(problems(config("fixed")).len(), 2);
    // These two have defaults: DE and DE-LU.
    assert_eq!(problems(config("awattar")), Vec::<String>::new());
    assert_eq!(problems(config("energy_charts")), Vec::<String>::new());
    let p = problems(config("tibber"));
    assert!(p[0].contains("tibber"), "{p:?}");
    let p = problems(TariffConfig {
        base_url: Some("127.0.0.1:8080".into()),
        ..config("awattar")
    });
    assert!(p[0].contains("base_url"), "{p:?}");
}

#[test]
fn a_source_has_a_name_a_key_and_a_currency() {
    let s = TariffConfig {
        zone: Some("se3".into()),
        currency: Some("sek".into()),
        ..config("nordpool")
    }
    .source(&TimeZone::UTC)
    .unwrap()
    .unwrap();
    assert_eq!((s.name(), s.currency()), ("nordpool", "SEK"));
    assert_eq!(s.key(), "nordpool:SE3:SEK");
    let s = config("energy_charts")
        .source(&TimeZone::UTC)
        .unwrap()
        .unwrap();
    assert_eq!(
        (s.key().as_str(), s.currency()),
        ("energy_charts:DE-LU", "EUR")
    );
}

#[test]
fn the_section_reads_from_yaml_with_every_key_optional() {
    let c: TariffConfig = serde_saphyr::from_str(
        "source: fixed\ncurrency: GBP\nfixed:\n  - {from: \"00:00\", to: \"07:00\", price: 0.09}\n  \
         - {from: \"07:00\", to: \"24:00\", price: 0.28, days: [mon, tue]}\n",
    )
    .unwrap();
    assert_eq!(c.fixed.len(), 2);
    assert_eq!(
        c.fixed[1].days.as_deref(),
        Some(&["mon".to_string(), "tue".to_string()][..])
    );
    assert_eq!(c.validate(), Vec::<String>::new());
    let empty: TariffConfig = serde_saphyr::from_str("{}").unwrap();
    assert_eq!(empty, TariffConfig::default());
}

#[test]
fn the_json_gate_tells_not_published_from_errors_and_html() {
    type V = serde_json::Value;
    assert_eq!(json::<V>(204, None, b""), Err(PriceError::NotPublished));
    assert_eq!(
        json::<V>(200, Some("application/json"), b"  \n"),
        Err(PriceError::NotPublished)
    );
    assert_eq!(
        json::<V>(500, Some("text/html"), b"<html>"),
        Err(PriceError::Http(500))
    );
    for (ct, body) in [
        (Some("text/html"), &b"{}"[..]),
        (None, &b"\n  <!DOCTYPE html><html></html>"[..]),
        (Some("application/json"), &b"{\"results\": ["[..]),
    ] {
        assert!(
            matches!(json::<V>(200, ct, body), Err(PriceError::Malformed(_))),
            "{ct:?}"
        );
    }
    assert!(json::<V>(200, Some("application/json; charset=utf-8"), b"{}").is_ok());
}

#[test]
fn price_units_convert_to_per_kwh() {
    assert_eq!(per_kwh_factor("EUR / MWh"), Ok(0.001));
    assert_eq!(per_kwh_factor("Eur/MWh"), Ok(0.001));
    assert_eq!(per_kwh_factor("EUR/kWh"), Ok(1.0));
    assert!(per_kwh_factor("EUR").is_err());
}

#[test]
fn tidy_sorts_drops_duplicates_and_keeps_what_reaches_into_the_window() {
    let slot = |s: &str, e: &str, price: f64| PriceSlot {
        start: ts(s),
        end: ts(e),
        price,
    };
    let slots = vec![
        slot("2026-01-15T01:00:00Z", "2026-01-15T02:00:00Z", 0.2),
        slot("2026-01-15T00:00:00Z", "2026-01-15T01:00:00Z", 0.1),
        slot("2026-01-15T01:00:00Z", "2026-01-15T02:00:00Z", 0.2),
        slot("2026-01-14T22:00:00Z", "2026-01-14T23:00:00Z", 0.3),
    ];
    let t = tidy(
        slots,
        ts("2026-01-14T23:00:00Z"),
        ts("2026-01-15T01:30:00Z"),
    );
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].price, 0.1);
}

#[test]
fn a_lone_start_says_nothing_of_its_length() {
    assert_eq!(
        slots_from_starts(vec![(ts("2026-01-15T00:00:00Z"), Some(0.1))]),
        vec![]
    );
}

#[test]
fn market_dates_cover_the_window() {
    let cet = TimeZone::get("Europe/Berlin").unwrap();
    let d = dates(ts("2026-01-14T23:00:00Z"), ts("2026-01-15T23:00:00Z"), &cet);
    assert_eq!(d, [jiff::civil::date(2026, 1, 15)]);
    let d = dates(ts("2026-01-14T22:00:00Z"), ts("2026-01-15T23:00:01Z"), &cet);
    assert_eq!(d.len(), 3);
}
