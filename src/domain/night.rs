//! A cheapest-hours charge: from the schedule's `start_time` (the earliest start) to its
//! `ready_by`, the battery is charged in the cheapest slots so that it holds the target by
//! then. Pure: the core ([`crate::domain::core`]) keeps a [`Night`] in its state and asks
//! [`decide`] after every input whether AC charging should run now.
//!
//! # How it is carried out
//!
//! Each planned run is an ordinary charge session whose safety cutoff is the run's end: the
//! session reads the inverter's settings, writes the SOC limit, the charge type and a window
//! from now to the run's end, then `ACCharge = 1`, watches SOC, and at the run's end stops and
//! puts every setting back. So the inverter's own window ends the run even if this service
//! dies, the verified writes and the restore are the ones every charge uses, and between runs
//! the inverter is exactly as the owner had it. (Programming all runs into the inverter's
//! three windows at once would need fewer writes, but a plan may have more than three runs,
//! and re-planning would rewrite windows while charging.)
//!
//! Re-planning is built in: before each run the plan is made again from the SOC and the time
//! at that moment, so a run that charged less than planned makes the later ones longer, and
//! when the time left only just suffices the plan becomes one continuous run to `ready_by`.
//! With no prices for the window, the charge starts at the latest fixed start that still
//! reaches the target ([`plan::fallback_start`]), and the plan says so.

use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::domain::plan::{self, Plan, PriceSlot, Request};
use crate::domain::units::{LocalTime, TargetSoc};

/// A cheapest-hours charge in progress, kept in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Night {
    /// The schedule's occurrence: the earliest start.
    pub occurrence: Timestamp,
    /// The target must be reached by then.
    pub ready_by: Timestamp,
    pub target: TargetSoc,
    /// Runs begun so far.
    #[serde(default)]
    pub runs: u32,
    /// The owner has been told the charge began (once per night, not per run).
    #[serde(default)]
    pub announced: bool,
    /// The last run ended at its slots' end, which is told to nobody: if the night ends
    /// short of the target after it, that is.
    #[serde(default)]
    pub untold: bool,
}

/// The battery's figures for planning.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Battery {
    pub capacity_kwh: Option<f64>,
    /// Configured AC charge power into the battery.
    pub charge_kw: Option<f64>,
    /// Learned from past charges, when not configured.
    pub learned_kw: Option<f64>,
}

impl Battery {
    /// The charge power planned with, and where it comes from (`config` or `learned`).
    pub fn rate(&self) -> Option<(f64, &'static str)> {
        self.charge_kw
            .map(|k| (k, "config"))
            .or(self.learned_kw.map(|k| (k, "learned")))
    }
}

/// Prices as the feed last had them: what the feed publishes and the core plans with.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceBook {
    /// The source's config name, e.g. `octopus_agile`.
    pub source: String,
    /// The currency of the prices (per kWh), e.g. `GBP`.
    pub currency: String,
    /// When the slots were fetched; while there are none, when that was last tried (or the
    /// cache found unreadable).
    pub fetched_at: Timestamp,
    /// In time order, without overlaps; possibly empty.
    pub slots: Arc<Vec<PriceSlot>>,
    /// Why the prices are stale or incomplete (`octopus_agile: HTTP 503`, `octopus_agile: not
    /// published yet`); None when the last fetch brought everything due.
    pub problem: Option<String>,
}

/// The plan of a night (or of the next one), with what it was made from: what the API shows.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanView {
    pub plan: Plan,
    pub target: TargetSoc,
    pub soc_at_planning: f64,
    pub charge_kw: Option<f64>,
    pub charge_kw_source: Option<&'static str>,
    pub currency: Option<String>,
    pub price_source: Option<String>,
    pub prices_fetched_at: Option<Timestamp>,
    /// Why the plan is not price-based, and what it does instead.
    pub fallback: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Charge until this instant (a run's end, or `ready_by`).
    Charge { until: Timestamp },
    /// Nothing to do until this instant (the next run's start).
    Wait { until: Timestamp },
}

/// The next `ready_by` local time after `occurrence` (the next day when it is earlier in the
/// day); a time in a DST gap moves forward by the gap.
pub fn ready_by_after(occurrence: Timestamp, ready_by: LocalTime, tz: &TimeZone) -> Timestamp {
    let start = occurrence.to_zoned_datetime(tz.clone());
    let mut date = start.date();
    for _ in 0..3 {
        let t = date
            .at(ready_by.hour() as i8, ready_by.minute() as i8, 0, 0)
            .to_zoned_datetime(tz.clone())
            .map(|z| z.timestamp());
        if let Ok(t) = t
            && t > occurrence
        {
            return t;
        }
        date = date.tomorrow().unwrap_or(date);
    }
    occurrence + SignedDuration::from_hours(24)
}

/// Plans the window `[max(now, earliest), ready_by)` from `soc` with what is known of prices
/// and the battery; the view says why it is not price-based when it is not.
pub fn plan_view(
    earliest: Timestamp,
    ready_by: Timestamp,
    target: TargetSoc,
    soc: f64,
    now: Timestamp,
    battery: &Battery,
    prices: Option<&PriceBook>,
) -> PlanView {
    let rate = battery.rate();
    let req = Request {
        now,
        earliest,
        ready_by,
        soc_now: soc,
        target: f64::from(target.get()),
        capacity_kwh: battery.capacity_kwh.unwrap_or(0.0),
        charge_kw: rate.map_or(0.0, |r| r.0),
    };
    let slots: &[PriceSlot] = prices.map_or(&[], |p| p.slots.as_slice());
    let window = req.window_start();
    let priced = slots.iter().any(|s| s.end > window && s.start < ready_by);
    let mut plan = plan::plan(&req, slots);
    let mut fallback = plan.fallback.map(|f| f.describe().to_string());
    if !priced && plan.fallback.is_some() && req.rate().is_some() {
        // No prices at all for the window: the latest fixed start that still makes it.
        let start = plan::fallback_start(&req);
        plan = continuous(plan, start, ready_by);
        let why = prices
            .and_then(|p| p.problem.clone())
            .unwrap_or_else(|| "no prices are known for the window".into());
        fallback = Some(format!(
            "{why}: charging continuously from the latest start that still reaches the target"
        ));
    }
    PlanView {
        plan,
        target,
        soc_at_planning: soc,
        charge_kw: rate.map(|r| r.0),
        charge_kw_source: rate.map(|r| r.1),
        currency: prices.map(|p| p.currency.clone()),
        price_source: prices.map(|p| p.source.clone()),
        prices_fetched_at: prices.map(|p| p.fetched_at),
        fallback,
    }
}

/// `plan` with its slots replaced by one run `[start, until)` (the rest unplanned).
fn continuous(mut plan: Plan, start: Timestamp, until: Timestamp) -> Plan {
    let from = plan.from;
    let mut slots = Vec::new();
    if start > from {
        slots.push(plan::PlannedSlot {
            start: from,
            end: start,
            price: None,
            planned: false,
        });
    }
    if until > start.max(from) {
        slots.push(plan::PlannedSlot {
            start: start.max(from),
            end: until,
            price: None,
            planned: true,
        });
    }
    plan.slots = slots;
    plan.planned_cost = None;
    plan
}

/// Whether AC charging should run now for `night`, and until when. Without a charge rate
/// (capacity or power unknown) it charges from the earliest start until `ready_by`.
pub fn decide(view: &PlanView, now: Timestamp, ready_by: Timestamp) -> Decision {
    let runs = view.plan.runs();
    if let Some(&(_, end)) = runs.iter().find(|&&(s, e)| s <= now && now < e) {
        return Decision::Charge {
            until: end.min(ready_by),
        };
    }
    match runs.iter().find(|&&(s, _)| s > now) {
        Some(&(s, _)) => Decision::Wait { until: s },
        None => Decision::Wait { until: ready_by },
    }
}

/// What a charge cost: its energy at the mean price over its time (time-weighted), in the
/// prices' currency; None without prices covering it.
pub fn cost(energy_wh: f64, from: Timestamp, until: Timestamp, slots: &[PriceSlot]) -> Option<f64> {
    let total = until.duration_since(from).as_secs_f64();
    if total <= 0.0 || !energy_wh.is_finite() {
        return None;
    }
    let mut weighted = 0.0;
    let mut covered = 0.0;
    for s in slots {
        let a = s.start.max(from);
        let b = s.end.min(until);
        if b > a {
            let d = b.duration_since(a).as_secs_f64();
            weighted += s.price * d;
            covered += d;
        }
    }
    (covered >= total * 0.99)
        .then(|| (energy_wh / 1000.0 * weighted / covered * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests;
