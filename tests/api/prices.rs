//! Price sources fetched for real over HTTP: recorded answers (`tests/fixtures/prices/`) served
//! by a small local server, and [`tariff::fetch`] pointed at it through `base_url`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use solar_charging_backend::tariff::{self, FixedRate, PriceError, PriceSource, TariffConfig};
use tokio::net::TcpListener;

/// The local stand-in for every source, and the requests it saw.
struct Server {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/prices")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(name: &str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], fixture(name)).into_response()
}

/// Answers as the real hosts would, chosen by path and query.
fn answer(uri: &Uri) -> Response {
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/v1/products/") {
        let product = rest.split('/').next().unwrap_or("");
        return match product {
            "AGILE-24-10-01" if query.contains("page=2") => {
                json("octopus_agile_2026-10-25_page2.json")
            }
            "AGILE-24-10-01" => json("octopus_agile_2026-10-25_page1.json"),
            "AGILE-EMPTY" => json("octopus_agile_empty.json"),
            // A maintenance page from a proxy in front of the API, with status 200.
            "AGILE-MAINTENANCE" => (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                fixture("error_page.html"),
            )
                .into_response(),
            _ => (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"detail":"No EnergyProduct matches the given query."}"#,
            )
                .into_response(),
        };
    }
    match path {
        "/v1/marketdata" => json("awattar_de_2026-01-15.json"),
        "/price" => json("energy_charts_de-lu_2026-03-29.json"),
        "/api/nps/price" => json("elering_2026-01-15.json"),
        "/api/DayAheadPrices" if query.contains("date=2026-01-15") => {
            json("nordpool_se3_2026-01-15.json")
        }
        "/api/DayAheadPrices" => StatusCode::NO_CONTENT.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn server() -> Server {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().fallback(move |uri: Uri| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(uri.to_string());
            answer(&uri)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base: format!("http://{addr}"),
        seen,
    }
}

fn client() -> reqwest::Client {
    // The build's rustls has no provider chosen by reqwest: install ring's (once per process).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().expect("HTTP client")
}

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn source(server: &Server, config: TariffConfig) -> PriceSource {
    TariffConfig {
        base_url: Some(server.base.clone()),
        ..config
    }
    .source(&TimeZone::UTC)
    .expect("a valid tariff section")
    .expect("a source")
}

fn octopus(server: &Server, product: &str) -> PriceSource {
    source(
        server,
        TariffConfig {
            source: Some("octopus_agile".into()),
            product: Some(product.into()),
            region: Some("C".into()),
            ..TariffConfig::default()
        },
    )
}

#[tokio::test]
async fn octopus_pages_are_followed_on_the_configured_host_through_a_fall_back_day() {
    let s = server().await;
    let (from, to) = (ts("2026-10-24T23:00:00Z"), ts("2026-10-26T00:00:00Z"));
    let slots = tariff::fetch(&client(), &octopus(&s, "AGILE-24-10-01"), from, to)
        .await
        .expect("prices");
    // 25 hours of half hours, in time order, back to back.
    assert_eq!(slots.len(), 50);
    assert_eq!((slots[0].start, slots[49].end), (from, to));
    assert!(slots.windows(2).all(|w| w[0].end == w[1].start));
    assert!(slots.iter().all(|s| s.price > 0.05 && s.price < 0.60));
    // The second page was asked of this server, not of the host in the `next` link.
    let seen = s.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].contains("period_from=2026-10-24T23:00:00Z"),
        "{seen:?}"
    );
    assert!(seen[1].contains("page=2"), "{seen:?}");
}

#[tokio::test]
async fn an_html_page_with_status_200_fails_the_fetch_as_malformed() {
    let s = server().await;
    let got = tariff::fetch(
        &client(),
        &octopus(&s, "AGILE-MAINTENANCE"),
        ts("2026-01-14T23:00:00Z"),
        ts("2026-01-15T23:00:00Z"),
    )
    .await;
    assert!(matches!(got, Err(PriceError::Malformed(_))), "{got:?}");
}

#[tokio::test]
async fn a_retired_product_is_a_404_and_an_empty_answer_is_not_published() {
    let s = server().await;
    let (from, to) = (ts("2026-01-14T23:00:00Z"), ts("2026-01-15T23:00:00Z"));
    let got = tariff::fetch(&client(), &octopus(&s, "AGILE-18-02-21"), from, to).await;
    assert_eq!(got, Err(PriceError::Http(404)));
    let got = tariff::fetch(&client(), &octopus(&s, "AGILE-EMPTY"), from, to).await;
    assert_eq!(got, Err(PriceError::NotPublished));
}

#[tokio::test]
async fn nord_pool_keeps_todays_prices_while_tomorrow_answers_204() {
    let s = server().await;
    let np = source(
        &s,
        TariffConfig {
            source: Some("nordpool".into()),
            zone: Some("SE3".into()),
            ..TariffConfig::default()
        },
    );
    // From 06:00 CET on the 15th to 07:00 CET on the 16th: two delivery dates.
    let (from, to) = (ts("2026-01-15T05:00:00Z"), ts("2026-01-16T06:00:00Z"));
    let slots = tariff::fetch(&client(), &np, from, to)
        .await
        .expect("today's");
    assert_eq!(s.seen.lock().unwrap().len(), 2);
    // 06:00..24:00 CET in quarter hours; tomorrow is not there yet.
    assert_eq!(slots.len(), 18 * 4);
    assert_eq!(slots[0].start, from);
    assert_eq!(slots.last().unwrap().end, ts("2026-01-15T23:00:00Z"));
    // Only tomorrow: not published.
    let got = tariff::fetch(&client(), &np, ts("2026-01-15T23:00:00Z"), to).await;
    assert_eq!(got, Err(PriceError::NotPublished));
}

#[tokio::test]
async fn awattar_energy_charts_and_elering_are_fetched_through_the_base_url() {
    let s = server().await;
    let c = client();
    let get = |name: &str, config: TariffConfig| {
        source(
            &s,
            TariffConfig {
                source: Some(name.into()),
                ..config
            },
        )
    };
    let aw = get("awattar", TariffConfig::default());
    let slots = tariff::fetch(
        &c,
        &aw,
        ts("2026-01-14T23:00:00Z"),
        ts("2026-01-15T23:00:00Z"),
    )
    .await
    .expect("aWATTar");
    assert_eq!(slots.len(), 24);

    let ec = get("energy_charts", TariffConfig::default());
    let slots = tariff::fetch(
        &c,
        &ec,
        ts("2026-03-28T23:00:00Z"),
        ts("2026-03-29T22:00:00Z"),
    )
    .await
    .expect("Energy-Charts");
    assert_eq!(slots.len(), 92);
    // A window inside the day keeps only its part.
    let part = tariff::fetch(
        &c,
        &ec,
        ts("2026-03-29T00:00:00Z"),
        ts("2026-03-29T06:00:00Z"),
    )
    .await
    .expect("Energy-Charts");
    assert_eq!(part.len(), 24);

    let el = get(
        "elering",
        TariffConfig {
            region: Some("fi".into()),
            ..TariffConfig::default()
        },
    );
    let slots = tariff::fetch(
        &c,
        &el,
        ts("2026-01-14T22:00:00Z"),
        ts("2026-01-15T22:00:00Z"),
    )
    .await
    .expect("Elering");
    assert_eq!(slots.len(), 96);
    let seen = s.seen.lock().unwrap().clone();
    assert!(
        seen[0].starts_with("/v1/marketdata?start=1768431600000&end="),
        "{seen:?}"
    );
    assert!(
        seen[1].starts_with("/price?bzn=DE-LU&start=2026-03-29&end=2026-03-29"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_source_that_does_not_answer_is_a_transport_error() {
    // A port that was free a moment ago and has no listener now.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let src = TariffConfig {
        source: Some("awattar".into()),
        base_url: Some(format!("http://{addr}")),
        ..TariffConfig::default()
    }
    .source(&TimeZone::UTC)
    .unwrap()
    .unwrap();
    let got = tariff::fetch(
        &client(),
        &src,
        ts("2026-01-14T23:00:00Z"),
        ts("2026-01-15T23:00:00Z"),
    )
    .await;
    assert!(matches!(got, Err(PriceError::Transport(_))), "{got:?}");
}

#[tokio::test]
async fn a_fixed_table_is_expanded_without_a_request() {
    let london = TimeZone::get("Europe/London").unwrap();
    let src = TariffConfig {
        source: Some("fixed".into()),
        currency: Some("GBP".into()),
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
                price: 0.28,
                days: None,
            },
        ],
        ..TariffConfig::default()
    }
    .source(&london)
    .unwrap()
    .unwrap();
    assert!(
        src.request(ts("2026-10-24T23:00:00Z"), ts("2026-10-25T07:00:00Z"))
            .is_empty()
    );
    // The night of the fall-back: 00:00 BST to 07:00 GMT is eight hours of off-peak.
    let slots = tariff::fetch(
        &client(),
        &src,
        ts("2026-10-24T23:00:00Z"),
        ts("2026-10-25T07:00:00Z"),
    )
    .await
    .expect("a table always has prices");
    assert_eq!(slots.len(), 1);
    assert_eq!(slots[0].price, 0.09);
}
