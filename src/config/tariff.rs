//! The `battery:` section (what cheapest-hours planning needs to know of the battery) and the
//! `tariff:` section (where prices come from).
//!
//! Both are optional. Values out of range and a tariff the chosen source cannot use are errors
//! with their key paths (the source's own rules are [`TariffConfig::validate`]'s); unknown keys,
//! and keys the chosen source does not read, are warnings.

use serde_json::{Map, Value};

use super::{Checker, kind};
pub use crate::tariff::{FixedRate, TariffConfig};

/// The `battery:` section.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BatteryConfig {
    /// Usable capacity in kWh; cheapest hours needs it to turn SOC into energy.
    pub capacity_kwh: Option<f64>,
    /// AC charge power in kW; None: learned from past charges.
    pub charge_kw: Option<f64>,
}

impl BatteryConfig {
    pub const CAPACITY_KWH: (f64, f64) = (0.5, 1000.0);
    pub const CHARGE_KW: (f64, f64) = (0.1, 100.0);
}

/// The keys of `tariff:`, with the sources that read each (None: every source).
const TARIFF_KEYS: [(&str, Option<&[&str]>); 8] = [
    ("source", None),
    (
        "base_url",
        Some(&[
            "octopus_agile",
            "awattar",
            "energy_charts",
            "nordpool",
            "elering",
        ]),
    ),
    ("product", Some(&["octopus_agile"])),
    ("region", Some(&["octopus_agile", "elering"])),
    ("country", Some(&["awattar"])),
    ("zone", Some(&["energy_charts", "nordpool"])),
    ("currency", Some(&["nordpool", "fixed"])),
    ("fixed", Some(&["fixed"])),
];

pub(super) fn battery_section(c: &mut Checker, root: &Map<String, Value>) -> BatteryConfig {
    let b = c.section(root, "battery");
    c.unknown_keys("battery", &b, &["capacity_kwh", "charge_kw"]);
    BatteryConfig {
        capacity_kwh: in_range(c, &b, "battery.capacity_kwh", BatteryConfig::CAPACITY_KWH),
        charge_kw: in_range(c, &b, "battery.charge_kw", BatteryConfig::CHARGE_KW),
    }
}

/// An optional number within `[min, max]`.
fn in_range(
    c: &mut Checker,
    map: &Map<String, Value>,
    path: &str,
    (min, max): (f64, f64),
) -> Option<f64> {
    let v = c.number(map, path)?;
    if v.is_finite() && (min..=max).contains(&v) {
        Some(v)
    } else {
        c.error(
            path,
            format!("expected a number from {min} to {max}, found {v}"),
        );
        None
    }
}

/// The `tariff:` section; None when it is absent or names no source.
pub(super) fn tariff_section(c: &mut Checker, root: &Map<String, Value>) -> Option<TariffConfig> {
    let t = c.section(root, "tariff");
    let known: Vec<&str> = TARIFF_KEYS.iter().map(|(k, _)| *k).collect();
    c.unknown_keys("tariff", &t, &known);
    let errors_before = c.errors.len();
    let source = c.opt_string(&t, "tariff.source")?;
    for (key, used_by) in TARIFF_KEYS {
        let set = t.get(key).is_some_and(|v| match v {
            Value::Null => false,
            Value::Array(items) => !items.is_empty(),
            _ => true,
        });
        if set && used_by.is_some_and(|sources| !sources.contains(&source.as_str())) {
            c.warn(
                &format!("tariff.{key}"),
                format!("is not used by source {source:?}, ignored"),
            );
        }
    }
    let config = TariffConfig {
        source: Some(source),
        base_url: c.opt_string(&t, "tariff.base_url"),
        product: c.opt_string(&t, "tariff.product"),
        region: c.opt_string(&t, "tariff.region"),
        country: c.opt_string(&t, "tariff.country"),
        zone: c.opt_string(&t, "tariff.zone"),
        currency: c.opt_string(&t, "tariff.currency"),
        fixed: fixed_rows(c, &t),
    };
    // The source's own rules, once every value had the right type (else they would repeat
    // what was said already as "missing").
    if c.errors.len() == errors_before {
        for problem in config.validate() {
            let (path, message) = split_problem(&problem);
            c.error(path, message);
        }
    }
    if c.errors.len() == errors_before {
        uncovered_hours_warning(c, &config);
    }
    Some(config)
}

/// `tariff.fixed`: a list of `{from, to, price, days}`.
fn fixed_rows(c: &mut Checker, t: &Map<String, Value>) -> Vec<FixedRate> {
    let items = match t.get("fixed") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            c.error(
                "tariff.fixed",
                format!(
                    "expected a list of {{from, to, price}} rows, found {}",
                    kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut rows = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("tariff.fixed[{i}]");
        let Value::Object(m) = item else {
            c.error(
                &path,
                format!(
                    "expected a mapping {{from, to, price}}, found {}",
                    kind(item)
                ),
            );
            continue;
        };
        c.unknown_keys(&path, m, &["from", "to", "price", "days"]);
        let from = hhmm(c, m, &format!("{path}.from"));
        let to = hhmm(c, m, &format!("{path}.to"));
        let price = c.number(m, &format!("{path}.price"));
        if price.is_none() && !m.contains_key("price") {
            c.error(&format!("{path}.price"), "is required but missing");
        }
        let days = c.string_list(m, &format!("{path}.days"));
        if let (Some(from), Some(to), Some(price)) = (from, to, price) {
            rows.push(FixedRate {
                from,
                to,
                price,
                days,
            });
        }
    }
    rows
}

/// A required `HH:MM` (unquoted is fine: YAML 1.2 reads `07:00` as a string). A number such as
/// `7` is answered with how to write a time.
fn hhmm(c: &mut Checker, m: &Map<String, Value>, path: &str) -> Option<String> {
    let key = path.rsplit('.').next().unwrap_or(path);
    if let Some(Value::Number(n)) = m.get(key) {
        c.error(
            path,
            format!("expected a time \"HH:MM\", found the number {n}"),
        );
        return None;
    }
    c.req_string(m, path)
}

/// `tariff.region must be ...` as (`tariff.region`, `must be ...`).
fn split_problem(problem: &str) -> (&str, &str) {
    match problem.split_once(' ') {
        Some((path, rest)) if path.starts_with("tariff.") => (path, rest),
        _ => ("tariff", problem),
    }
}

/// A fixed table that leaves hours of the week without a price: those are never planned, which
/// is allowed but rarely meant.
fn uncovered_hours_warning(c: &mut Checker, config: &TariffConfig) {
    let Ok(Some(crate::tariff::PriceSource::Fixed(table))) =
        config.source(&jiff::tz::TimeZone::UTC)
    else {
        return;
    };
    // 2026-01-05 is a Monday; a week of a zone without DST.
    let from: jiff::Timestamp = "2026-01-05T00:00:00Z".parse().expect("a valid instant");
    let to = from + jiff::SignedDuration::from_hours(7 * 24);
    if !crate::tariff::cache::covers(&table.expand(from, to), from, to) {
        c.warn(
            "tariff.fixed",
            "leaves some hours of the week without a price; cheapest hours never charges in them",
        );
    }
}
