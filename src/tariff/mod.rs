//! Electricity prices for cheapest-hours charging: where to fetch them and how to read them.
//!
//! Each source is a pair of pure functions, so every quirk is tested on recorded answers
//! without a network:
//! * [`PriceSource::request`]: the URLs to fetch for a window (the `base_url` override
//!   replaces the source's host, for tests and proxies);
//! * [`PriceSource::parse`]: an HTTP answer (status, content type, body) into [`PriceSlot`]s in
//!   currency units per kWh, plus the next page's URL where the source paginates (Octopus).
//!
//! [`fetch`] is the thin async loop around them: every URL, every page, then the slots sorted,
//! without duplicates, cut to the window. [`cache`] keeps the last fetch on disk and says when
//! to fetch again. [`feed`] is the background task that does so and publishes the prices the
//! engine and the API read; [`sample`] is a made-up day of prices for the demo.
//!
//! Failures a caller must tell apart ([`PriceError`]): prices not published yet (Nord Pool's
//! 204, an empty list), an answer that is not what the source sends (an HTML error page with
//! status 200, broken JSON, an unknown unit), an HTTP error status (a retired Octopus product is
//! a 404), and a request that got no answer at all. An empty result is always
//! [`PriceError::NotPublished`], never an empty success, so the planner's fallback is taken for
//! the right reason.
//!
//! Sources: [`octopus_agile`] (UK), [`awattar`] (DE, AT), [`energy_charts`] (EU bidding zones),
//! [`nordpool`] (Nordic and Baltic areas and more), [`elering`] (EE, FI, LV, LT) and [`fixed`]
//! (a time-of-use table from config, expanded locally). Config reads into [`TariffConfig`];
//! [`TariffConfig::source`] checks it and builds the source.

pub mod awattar;
pub mod cache;
pub mod elering;
pub mod energy_charts;
pub mod feed;
pub mod fixed;
pub mod nordpool;
pub mod octopus_agile;
pub mod sample;

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

pub use crate::domain::plan::PriceSlot;
pub use feed::PriceFeed;

/// How many pages one URL may lead through before the answer is taken as a loop.
pub const MAX_PAGES: usize = 20;
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no prices came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    /// The source has no prices for the window yet (day-ahead prices appear in the afternoon).
    #[error("prices are not published yet")]
    NotPublished,
    /// The answer is not what the source sends: an HTML page, broken JSON, an unknown unit.
    #[error("unexpected answer: {0}")]
    Malformed(String),
    /// An HTTP error status (a retired Octopus product answers 404).
    #[error("HTTP status {0}")]
    Http(u16),
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("request failed: {0}")]
    Transport(String),
}

/// One parsed answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Page {
    pub slots: Vec<PriceSlot>,
    /// The URL of the next page (already on the configured host), when there is one.
    pub next: Option<String>,
}

impl Page {
    /// The only (or last) page of an answer: its slots in time order, or "not published" when
    /// it has none.
    pub(crate) fn last(mut slots: Vec<PriceSlot>) -> Result<Page, PriceError> {
        slots.sort_by_key(|s| s.start);
        Ok(Page {
            slots: non_empty(slots)?,
            next: None,
        })
    }
}

/// The `tariff:` config section, as read (checked by [`TariffConfig::source`]).
#[derive(Debug, Clone, PartialEq, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct TariffConfig {
    /// `octopus_agile`, `awattar`, `energy_charts`, `nordpool`, `elering` or `fixed`; None turns
    /// cheapest hours' prices off.
    pub source: Option<String>,
    /// Replaces the source's scheme and host, e.g. `http://127.0.0.1:8080`.
    pub base_url: Option<String>,
    /// octopus_agile: the product code, e.g. `AGILE-24-10-01`.
    pub product: Option<String>,
    /// octopus_agile: the region letter `A`..`P`; elering: `ee`, `fi`, `lv` or `lt`.
    pub region: Option<String>,
    /// awattar: `de` (default) or `at`.
    pub country: Option<String>,
    /// energy_charts: the bidding zone (default `DE-LU`); nordpool: the delivery area, e.g. `SE3`.
    pub zone: Option<String>,
    /// nordpool: the currency asked for (default `EUR`); fixed: the table's currency (required).
    pub currency: Option<String>,
    /// fixed: the time-of-use table.
    pub fixed: Vec<FixedRate>,
}

/// One row of a fixed time-of-use table: `price` from `from` to `to` local time, on `days`
/// (every day when None). `to` `"00:00"` or `"24:00"` is midnight at the end of the day; a `to`
/// not after `from` runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct FixedRate {
    pub from: String,
    pub to: String,
    /// Currency per kWh.
    pub price: f64,
    #[serde(default)]
    pub days: Option<Vec<String>>,
}

impl TariffConfig {
    /// The problems with this section, one sentence each; empty when it is usable.
    pub fn validate(&self) -> Vec<String> {
        match self.source(&TimeZone::UTC) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }

    /// The configured source, None when `source` is not set. `tz` is the local zone a fixed
    /// table is read in.
    pub fn source(&self, tz: &TimeZone) -> Result<Option<PriceSource>, Vec<String>> {
        let Some(name) = self.source.as_deref() else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        if let Some(base) = &self.base_url
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            problems.push(format!(
                "tariff.base_url {base:?} must start with http:// or https://"
            ));
        }
        let source = match name {
            "octopus_agile" => {
                octopus_agile::OctopusAgile::new(self, &mut problems).map(PriceSource::OctopusAgile)
            }
            "awattar" => awattar::Awattar::new(self, &mut problems).map(PriceSource::Awattar),
            "energy_charts" => Some(PriceSource::EnergyCharts(energy_charts::EnergyCharts::new(
                self,
            ))),
            "nordpool" => nordpool::NordPool::new(self, &mut problems).map(PriceSource::NordPool),
            "elering" => elering::Elering::new(self, &mut problems).map(PriceSource::Elering),
            "fixed" => fixed::FixedTariff::new(self, tz, &mut problems).map(PriceSource::Fixed),
            other => {
                problems.push(format!(
                    "tariff.source {other:?} is not one of octopus_agile, awattar, \
                     energy_charts, nordpool, elering, fixed"
                ));
                None
            }
        };
        match source {
            Some(source) if problems.is_empty() => Ok(Some(source)),
            _ => Err(problems),
        }
    }
}

/// A configured price source.
#[derive(Debug, Clone, PartialEq)]
pub enum PriceSource {
    OctopusAgile(octopus_agile::OctopusAgile),
    Awattar(awattar::Awattar),
    EnergyCharts(energy_charts::EnergyCharts),
    NordPool(nordpool::NordPool),
    Elering(elering::Elering),
    Fixed(fixed::FixedTariff),
}

/// When a source publishes the next day's prices: a local time in the market's zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub zone: TimeZone,
    pub hour: i8,
    pub minute: i8,
}

impl PriceSource {
    /// The config name, as the API's `price_source` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            PriceSource::OctopusAgile(_) => "octopus_agile",
            PriceSource::Awattar(_) => "awattar",
            PriceSource::EnergyCharts(_) => "energy_charts",
            PriceSource::NordPool(_) => "nordpool",
            PriceSource::Elering(_) => "elering",
            PriceSource::Fixed(_) => "fixed",
        }
    }

    /// The name with what selects the prices (product, region, zone...): cached prices are only
    /// reused for the same key.
    pub fn key(&self) -> String {
        let detail = match self {
            PriceSource::OctopusAgile(s) => format!("{}:{}", s.product, s.region),
            PriceSource::Awattar(s) => s.country.clone(),
            PriceSource::EnergyCharts(s) => s.zone.clone(),
            PriceSource::NordPool(s) => format!("{}:{}", s.area, s.currency),
            PriceSource::Elering(s) => s.region.clone(),
            PriceSource::Fixed(_) => String::new(),
        };
        format!("{}:{detail}", self.name())
    }

    /// The currency the prices are in (per kWh).
    pub fn currency(&self) -> &str {
        match self {
            PriceSource::OctopusAgile(_) => "GBP",
            PriceSource::NordPool(s) => &s.currency,
            PriceSource::Fixed(s) => &s.currency,
            PriceSource::Awattar(_) | PriceSource::EnergyCharts(_) | PriceSource::Elering(_) => {
                "EUR"
            }
        }
    }

    /// When the next day's prices usually appear; None for a fixed table (nothing to fetch).
    pub fn publication(&self) -> Option<Publication> {
        let (zone, hour) = match self {
            // Agile's next-day rates follow the day-ahead auction, around 16:00 UK time.
            PriceSource::OctopusAgile(_) => ("Europe/London", 16),
            // EPEX and Nord Pool's day-ahead auction closes at noon CET; results ~12:45-13:00.
            PriceSource::Awattar(_)
            | PriceSource::EnergyCharts(_)
            | PriceSource::NordPool(_)
            | PriceSource::Elering(_) => ("Europe/Berlin", 13),
            PriceSource::Fixed(_) => return None,
        };
        let zone = TimeZone::get(zone).expect("the bundled tzdb has the market zones");
        Some(Publication {
            zone,
            hour,
            minute: 0,
        })
    }

    /// The URLs to fetch for `[from, to)` (none for a fixed table).
    pub fn request(&self, from: Timestamp, to: Timestamp) -> Vec<String> {
        match self {
            PriceSource::OctopusAgile(s) => s.request(from, to),
            PriceSource::Awattar(s) => s.request(from, to),
            PriceSource::EnergyCharts(s) => s.request(from, to),
            PriceSource::NordPool(s) => s.request(from, to),
            PriceSource::Elering(s) => s.request(from, to),
            PriceSource::Fixed(_) => Vec::new(),
        }
    }

    /// Reads one answer to a URL from [`PriceSource::request`] (or a [`Page::next`]).
    pub fn parse(
        &self,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Page, PriceError> {
        match self {
            PriceSource::OctopusAgile(s) => s.parse(status, content_type, body),
            PriceSource::Awattar(s) => s.parse(status, content_type, body),
            PriceSource::EnergyCharts(s) => s.parse(status, content_type, body),
            PriceSource::NordPool(s) => s.parse(status, content_type, body),
            PriceSource::Elering(s) => s.parse(status, content_type, body),
            PriceSource::Fixed(_) => Err(PriceError::Malformed(
                "a fixed table is not fetched".to_string(),
            )),
        }
    }
}

/// Fetches the prices for `[from, to)`: every URL of [`PriceSource::request`] and every page,
/// then sorted, without duplicates, and cut to the window. A URL answering "not published"
/// contributes nothing; any other failure fails the whole fetch. A fixed table is expanded
/// without a request.
pub async fn fetch(
    client: &reqwest::Client,
    source: &PriceSource,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<PriceSlot>, PriceError> {
    if let PriceSource::Fixed(table) = source {
        return non_empty(table.expand(from, to));
    }
    let mut slots = Vec::new();
    for first in source.request(from, to) {
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(PriceError::Malformed(format!(
                    "more than {MAX_PAGES} pages of prices"
                )));
            }
            let response = client
                .get(&url)
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(transport)?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.bytes().await.map_err(transport)?;
            match source.parse(status, content_type.as_deref(), &body) {
                Ok(page) => {
                    slots.extend(page.slots);
                    next = page.next;
                }
                Err(PriceError::NotPublished) => {}
                Err(e) => return Err(e),
            }
        }
    }
    non_empty(tidy(slots, from, to))
}

/// A request without an answer, with its causes ("connection refused", "timed out"): reqwest's
/// own message says only that sending failed. The URL is left out; it is known to the caller.
fn transport(e: reqwest::Error) -> PriceError {
    PriceError::Transport(crate::notify::https::error_chain(&e.without_url()))
}

/// The slots, or "not published" when there are none.
pub(crate) fn non_empty(slots: Vec<PriceSlot>) -> Result<Vec<PriceSlot>, PriceError> {
    if slots.is_empty() {
        Err(PriceError::NotPublished)
    } else {
        Ok(slots)
    }
}

/// Sorted by start, exact duplicates dropped (pages and days may overlap), only slots that
/// reach into `[from, to)`.
pub fn tidy(mut slots: Vec<PriceSlot>, from: Timestamp, to: Timestamp) -> Vec<PriceSlot> {
    slots.retain(|s| s.end > from && s.start < to);
    slots.sort_by_key(|s| (s.start, s.end));
    slots.dedup_by(|b, a| a.start == b.start && a.end == b.end);
    slots
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the sources
// ---------------------------------------------------------------------------------------------

/// The base URL without a trailing slash: the override when set, else `default`.
fn base(config: &TariffConfig, default: &str) -> String {
    config
        .base_url
        .as_deref()
        .unwrap_or(default)
        .trim_end_matches('/')
        .to_string()
}

/// Checks status and content type and decodes the JSON body. 204 is "not published"; any other
/// non-2xx status an HTTP error; a non-JSON content type or a body that looks like HTML (error
/// pages often come with status 200) is malformed.
fn json<T: serde::de::DeserializeOwned>(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<T, PriceError> {
    if status == 204 {
        return Err(PriceError::NotPublished);
    }
    if !(200..300).contains(&status) {
        return Err(PriceError::Http(status));
    }
    if let Some(ct) = content_type
        && !ct.to_ascii_lowercase().contains("json")
    {
        return Err(PriceError::Malformed(format!(
            "content type {ct:?}, not JSON"
        )));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') {
        return Err(PriceError::Malformed(
            "an HTML or XML page, not JSON".to_string(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PriceError::NotPublished);
    }
    serde_json::from_slice(body).map_err(|e| PriceError::Malformed(format!("JSON: {e}")))
}

/// The factor from a source's price unit to currency per kWh (`"EUR / MWh"`, `"Eur/MWh"`,
/// `"EUR/kWh"`).
fn per_kwh_factor(unit: &str) -> Result<f64, PriceError> {
    let u: String = unit
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if u.ends_with("/mwh") {
        Ok(0.001)
    } else if u.ends_with("/kwh") {
        Ok(1.0)
    } else {
        Err(PriceError::Malformed(format!(
            "unknown price unit {unit:?}"
        )))
    }
}

/// The longest slot a day-ahead market has: a longer step between two starts is a gap in the
/// data, not a longer slot.
const MAX_SLOT: SignedDuration = SignedDuration::from_hours(1);

/// Slots from start instants alone (Energy-Charts, Elering): each lasts until the next start,
/// at most an hour; the last lasts as long as the one before it. A lone start says nothing of
/// its length and is dropped. A missing price (None) leaves a gap.
fn slots_from_starts(mut points: Vec<(Timestamp, Option<f64>)>) -> Vec<PriceSlot> {
    points.sort_by_key(|p| p.0);
    points.dedup_by_key(|p| p.0);
    let mut out = Vec::with_capacity(points.len());
    let mut last_len = None;
    for (i, &(start, price)) in points.iter().enumerate() {
        let len = match points.get(i + 1) {
            Some(&(next, _)) => Some(next.duration_since(start).min(MAX_SLOT)),
            None => last_len,
        };
        last_len = len;
        if let (Some(len), Some(price)) = (len, price)
            && price.is_finite()
        {
            out.push(PriceSlot {
                start,
                end: start + len,
                price,
            });
        }
    }
    out
}

/// `[from, to)` as the civil dates it touches in `tz` (the last one is the date of the last
/// instant before `to`).
fn dates(from: Timestamp, to: Timestamp, tz: &TimeZone) -> Vec<jiff::civil::Date> {
    let first = tz.to_datetime(from).date();
    let last_instant = to.checked_sub(SignedDuration::from_secs(1)).unwrap_or(to);
    let last = tz.to_datetime(last_instant.max(from)).date();
    let mut out = vec![first];
    let mut d = first;
    while d < last {
        match d.tomorrow() {
            Ok(next) => {
                out.push(next);
                d = next;
            }
            Err(_) => break,
        }
    }
    out
}

/// An instant as `2026-01-15T00:00:00Z`.
fn iso(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests;
