//! Cheapest hours: which stretches of a charge window to grid-charge in, so the battery holds
//! a target SOC by a deadline ("80 % by 07:00") at the lowest price.
//!
//! Pure: prices, the battery's figures and the time come in as arguments, a [`Plan`] comes out.
//! Everything works on [`Timestamp`]s, so a night with a DST change is simply one hour longer
//! or shorter (50 or 46 half-hour slots); local times are the caller's business.
//!
//! # Use
//!
//! ```text
//! let plan = plan(&Request { now, earliest, ready_by, soc_now, target, capacity_kwh, charge_kw },
//!                 &prices);
//! plan.runs()                 // [(start, end)]: when AC charging is on, adjacent slots merged
//! plan.is_planned_at(now)     // should it be on now?
//! plan.next_boundary(now)     // when to look again (a run starts or ends)
//! plan.behind(now, soc)       // SOC fell behind the expected curve: re-plan
//! ```
//!
//! # The model
//!
//! * **Rate.** `charge_kw` is the AC charge power into the battery; with `capacity_kwh` it makes
//!   a rate in SOC points per hour. Above [`TAPER_SOC`] (95 %) the rate is halved: a cell
//!   balancing taper modelled as one step, so the last five points take twice as long as five
//!   points lower down. Energy and cost are of what goes into the battery (conversion losses
//!   are not modelled).
//! * **Margin.** The time planned is the charge time plus [`MARGIN_FRACTION`] (10 %) of it, and at
//!   least [`MIN_MARGIN`] (10 minutes): SOC readings are whole percent and lag, the real rate
//!   moves with temperature and house load, and toggling at slot boundaries takes a few
//!   seconds. The engine stops a charge at its target anyway, so unused margin costs nothing.
//! * **Window.** Planning covers `[max(now, earliest), ready_by)`. A slot partly in the past, or
//!   sticking out of the window, counts only for its part inside; overlapping slots keep the
//!   earlier-starting one; prices that are not finite are ignored (a gap).
//! * **Choice.** The cheapest slot time is taken first, ties to the earlier slot (finishing early
//!   leaves room to catch up), until the time needed is covered; the fractional knapsack this is
//!   makes the greedy choice optimal. Only the last slot taken may be used in part: its planned
//!   part sits against a planned neighbour, so it joins that run instead of adding a toggle
//!   (after the neighbour when one precedes it, before the one that follows otherwise), and at
//!   the slot's start when no neighbour is planned. Such a slot appears in
//!   [`Plan::slots`] as two entries of the same price, one planned and one not.
//!   Negative prices are simply the cheapest: the plan never charges beyond the target.
//! * **Fallback.** A price-based plan is made only when the window's priced time covers the
//!   time needed. Otherwise ([`Fallback`]) the plan charges continuously from the start of the
//!   window for the time needed (or the whole window when that is shorter), time without prices
//!   included: it is never chosen for its price, but a charge must not wait for prices that are
//!   not there. [`Plan::feasible`] is false when even that cannot reach the target by
//!   `ready_by` at the given rate. With no prices at all, [`fallback_start`] offers the latest
//!   fixed start that still finishes with the margin instead.
//! * **Re-planning.** Nothing here is stateful: to re-plan, call [`plan`] again with the current
//!   time and SOC. The engine does so when [`Plan::behind`] says the SOC trails the expected
//!   curve by more than [`BEHIND_TOLERANCE`] points (allowing the reading [`BEHIND_LAG`] of
//!   delay), passing the rate the charge actually shows
//!   (e.g. [`learned_charge_kw`] over the current session so far) so the new plan does not
//!   fall behind again; the new plan then has its own margin from that moment. When a plan
//!   becomes infeasible this way, the engine should charge continuously, as the plan then says.
//! * **Learned rate.** [`learned_rate`] is the median SOC points per hour of the last
//!   [`LEARN_FROM_LAST`] past charges that ran at full rate: at least [`MIN_LEARN_DURATION`]
//!   long, at least [`MIN_LEARN_GAIN`] points gained, ending at or below [`TAPER_SOC`]. The
//!   median ignores one odd night (a charge throttled by house load).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// Above this SOC the battery charges at half rate.
pub const TAPER_SOC: f64 = 95.0;
/// The share of the charge time added as margin.
pub const MARGIN_FRACTION: f64 = 0.10;
/// The least margin added to a charge.
pub const MIN_MARGIN: SignedDuration = SignedDuration::from_mins(10);
/// How many SOC points a reading may trail the expected curve before [`Plan::behind`] says so:
/// readings are whole percent.
pub const BEHIND_TOLERANCE: f64 = 3.0;
/// How far behind in time a reading is compared with the curve: SOC reports come late and the
/// charger takes a while to ramp up after each switch-on. Shorter than [`MIN_MARGIN`], so a
/// charge that will miss its target is still noticed before the deadline.
pub const BEHIND_LAG: SignedDuration = SignedDuration::from_mins(5);
/// How many recent usable charges [`learned_rate`] takes the median of.
pub const LEARN_FROM_LAST: usize = 5;
/// A past charge shorter than this says little about the rate.
pub const MIN_LEARN_DURATION: Duration = Duration::from_secs(20 * 60);
/// A past charge that gained fewer SOC points than this says little about the rate.
pub const MIN_LEARN_GAIN: f64 = 5.0;

/// One price interval from a price source, in currency units per kWh.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PriceSlot {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Currency per kWh; may be negative.
    pub price: f64,
}

/// What a plan is made from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub now: Timestamp,
    /// The earliest instant charging may start (the schedule's `start_time`).
    pub earliest: Timestamp,
    /// The deadline: the target must be reached by then.
    pub ready_by: Timestamp,
    /// The SOC now, percent.
    pub soc_now: f64,
    /// The target SOC, percent.
    pub target: f64,
    /// Usable battery capacity.
    pub capacity_kwh: f64,
    /// AC charge power into the battery (configured or learned).
    pub charge_kw: f64,
}

impl Request {
    /// The start of the part of the window still ahead: `max(now, earliest)`.
    pub fn window_start(&self) -> Timestamp {
        self.now.max(self.earliest)
    }

    /// The full-rate charge speed in SOC points per hour, when the battery's figures make one.
    pub fn rate(&self) -> Option<f64> {
        let rate = self.charge_kw / self.capacity_kwh * 100.0;
        (rate.is_finite() && rate > 0.0).then_some(rate)
    }

    /// Charging time from `soc_now` to `target` at [`Request::rate`] with the taper, without
    /// margin; zero when the target is already reached, None without a usable rate.
    pub fn charge_time(&self) -> Option<SignedDuration> {
        let (from, to) = (clamp_soc(self.soc_now), clamp_soc(self.target));
        if to <= from {
            return Some(SignedDuration::ZERO);
        }
        let rate = self.rate()?;
        let full = (to.min(TAPER_SOC) - from).max(0.0);
        let tapered = (to - from.max(TAPER_SOC)).max(0.0);
        let hours = (full + 2.0 * tapered) / rate;
        // Whole seconds, rounded up so the time is never short.
        let secs = (hours * 3600.0).ceil();
        // Beyond a year no window can hold it; that also keeps the arithmetic in range.
        (secs <= 366.0 * 86_400.0).then(|| SignedDuration::from_secs(secs as i64))
    }

    /// [`Request::charge_time`] with the margin: 10 % more, at least 10 minutes more.
    pub fn time_needed(&self) -> Option<SignedDuration> {
        self.charge_time().map(with_margin)
    }
}

fn with_margin(charge: SignedDuration) -> SignedDuration {
    if charge.is_zero() {
        return charge;
    }
    let share = SignedDuration::from_secs((charge.as_secs_f64() * MARGIN_FRACTION).ceil() as i64);
    charge + share.max(MIN_MARGIN)
}

fn clamp_soc(soc: f64) -> f64 {
    if soc.is_nan() {
        0.0
    } else {
        soc.clamp(0.0, 100.0)
    }
}

/// One stretch of the window and whether it is charged in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedSlot {
    pub start: Timestamp,
    pub end: Timestamp,
    /// None where the source gave no price for this time.
    pub price: Option<f64>,
    /// AC charging is on for the whole of `[start, end)`.
    pub planned: bool,
}

/// Why a plan is not price-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The window is shorter than the charge with its margin: charging runs from the start.
    TightWindow,
    /// The priced time in the window is shorter than the time needed (prices not published yet,
    /// or the source failing): charging runs from the start.
    MissingPrices,
    /// The battery's figures give no charge rate (capacity or power missing or zero).
    NoRate,
}

impl Fallback {
    /// A sentence for the API's `fallback` field.
    pub fn describe(self) -> &'static str {
        match self {
            Fallback::TightWindow => {
                "the window is too short to choose slots: charging continuously from its start"
            }
            Fallback::MissingPrices => {
                "prices for the window are missing: charging continuously from its start"
            }
            Fallback::NoRate => {
                "the battery's capacity or charge power is unknown: charging continuously from \
                 the start of the window"
            }
        }
    }
}

/// The outcome of [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The start of the planned window: `max(now, earliest)`.
    pub from: Timestamp,
    /// The deadline, `ready_by`.
    pub until: Timestamp,
    /// In time order, without overlap, covering `[from, until)` exactly (empty when the window
    /// is).
    pub slots: Vec<PlannedSlot>,
    /// Energy into the battery from `soc_now` to `target`.
    pub energy_needed_kwh: f64,
    /// Charge time at the given rate with the taper, without margin (infinite without a rate).
    pub hours_needed: f64,
    /// The margin included in the planned time.
    pub margin: SignedDuration,
    /// What the expected charge costs, its energy at each slot's price; None when a part of it
    /// falls in time without a price.
    pub planned_cost: Option<f64>,
    /// What the same charge would cost starting at `from` and running continuously; None when a
    /// part of it falls in time without a price.
    pub fixed_start_cost: Option<f64>,
    /// The SOC expected when the plan runs at the given rate, as points of a piecewise linear
    /// curve from `(from, soc_now)` to `until`; it stays at the target once reached.
    pub expected_soc: Vec<(Timestamp, f64)>,
    /// The last instant a continuous charge (at the given rate, without margin) still reaches
    /// the target by `until`; may lie before `from` (then the plan is not feasible).
    pub latest_start: Timestamp,
    /// Following the plan at the given rate reaches the target by `until`.
    pub feasible: bool,
    /// None for a price-based plan, else why it charges from the start instead.
    pub fallback: Option<Fallback>,
}

/// Plans the charge for `req` from `prices` (any order, any slot lengths, gaps allowed).
pub fn plan(req: &Request, prices: &[PriceSlot]) -> Plan {
    let from = req.window_start();
    let until = req.ready_by;
    let window = if until > from {
        until.duration_since(from)
    } else {
        SignedDuration::ZERO
    };
    let timeline = timeline(from, until, prices);
    let charge = req.charge_time();
    let needed = charge.map(with_margin);
    let priced = timeline
        .iter()
        .filter(|s| s.price.is_some())
        .fold(SignedDuration::ZERO, |sum, s| {
            sum + s.end.duration_since(s.start)
        });

    let (slots, fallback) = match needed {
        Some(n) if n.is_zero() => (timeline, None),
        Some(n) if n > window => (charge_from_start(timeline, n), Some(Fallback::TightWindow)),
        Some(n) if n > priced => (
            charge_from_start(timeline, n),
            Some(Fallback::MissingPrices),
        ),
        Some(n) => (choose_cheapest(timeline, n), None),
        None => (charge_from_start(timeline, window), Some(Fallback::NoRate)),
    };

    let rate = req.rate().unwrap_or(0.0);
    let planned = simulate(
        req,
        rate,
        from,
        slots
            .iter()
            .filter(|s| s.planned)
            .map(|s| (s.start, s.end, s.price)),
    );
    let continuous = simulate(
        req,
        rate,
        from,
        slots.iter().map(|s| (s.start, s.end, s.price)),
    );
    let mut expected_soc = planned.points;
    if expected_soc.last().is_some_and(|&(t, _)| t < until) {
        expected_soc.push((until, planned.soc));
    }

    let latest_start = match charge {
        Some(c) => until.checked_sub(c).unwrap_or(Timestamp::MIN),
        None => Timestamp::MIN,
    };
    let feasible = charge.is_some_and(|c| c.is_zero() || c <= window);
    // Without a rate nothing can be said of what the charge costs.
    let costs_known = req.rate().is_some() || charge.is_some_and(|c| c.is_zero());
    let energy = (clamp_soc(req.target) - clamp_soc(req.soc_now)).max(0.0) / 100.0
        * req.capacity_kwh.max(0.0);
    Plan {
        from,
        until,
        slots,
        energy_needed_kwh: if energy.is_finite() { energy } else { 0.0 },
        hours_needed: charge.map_or(f64::INFINITY, |c| c.as_secs_f64() / 3600.0),
        margin: match (charge, needed) {
            (Some(c), Some(n)) => n - c,
            _ => SignedDuration::ZERO,
        },
        planned_cost: planned.cost.filter(|_| costs_known),
        fixed_start_cost: continuous.cost.filter(|_| costs_known),
        expected_soc,
        latest_start,
        feasible,
        fallback,
    }
}

/// With no prices at all: the latest fixed start from which a continuous charge still reaches
/// the target by `ready_by` with the margin, but not before `max(now, earliest)`. A charge that
/// does not fit (or without a rate) starts at `max(now, earliest)`.
pub fn fallback_start(req: &Request) -> Timestamp {
    let from = req.window_start();
    match req.time_needed() {
        Some(n) => req
            .ready_by
            .checked_sub(n)
            .map_or(from, |start| start.max(from)),
        None => from,
    }
}

impl Plan {
    /// The planned stretches merged where they touch: when AC charging is on.
    pub fn runs(&self) -> Vec<(Timestamp, Timestamp)> {
        let mut runs: Vec<(Timestamp, Timestamp)> = Vec::new();
        for s in self.slots.iter().filter(|s| s.planned) {
            match runs.last_mut() {
                Some(last) if last.1 == s.start => last.1 = s.end,
                _ => runs.push((s.start, s.end)),
            }
        }
        runs
    }

    /// Whether AC charging should be on at `t` (runs include their start, exclude their end).
    pub fn is_planned_at(&self, t: Timestamp) -> bool {
        self.runs().iter().any(|&(s, e)| s <= t && t < e)
    }

    /// The first instant after `t` at which a run starts or ends: when the engine must look at
    /// the plan again. None once the last run has ended.
    pub fn next_boundary(&self, t: Timestamp) -> Option<Timestamp> {
        self.runs()
            .iter()
            .flat_map(|&(s, e)| [s, e])
            .find(|&b| b > t)
    }

    /// The expected SOC at `t`: the curve of [`Plan::expected_soc`] interpolated, its first value
    /// before it starts and its last after it ends.
    pub fn expected_soc_at(&self, t: Timestamp) -> f64 {
        let points = &self.expected_soc;
        let Some(&(first_t, first_soc)) = points.first() else {
            return 0.0;
        };
        if t <= first_t {
            return first_soc;
        }
        for pair in points.windows(2) {
            let ((t0, s0), (t1, s1)) = (pair[0], pair[1]);
            if t < t1 {
                let span = t1.duration_since(t0).as_secs_f64();
                let part = t.duration_since(t0).as_secs_f64();
                return if span > 0.0 {
                    s0 + (s1 - s0) * part / span
                } else {
                    s1
                };
            }
        }
        points.last().map_or(first_soc, |&(_, s)| s)
    }

    /// Whether `soc` at `now` trails the expected curve, as it stood [`BEHIND_LAG`] earlier, by
    /// more than [`BEHIND_TOLERANCE`] points: the charge is slower than planned, and it is time
    /// to re-plan.
    pub fn behind(&self, now: Timestamp, soc: f64) -> bool {
        let then = now.checked_sub(BEHIND_LAG).unwrap_or(now);
        soc + BEHIND_TOLERANCE < self.expected_soc_at(then)
    }
}

/// The window `[from, until)` as priced stretches (clipped, overlaps removed) and unpriced gaps.
fn timeline(from: Timestamp, until: Timestamp, prices: &[PriceSlot]) -> Vec<PlannedSlot> {
    let mut sorted: Vec<PriceSlot> = prices
        .iter()
        .filter(|p| p.price.is_finite() && p.start < p.end)
        .copied()
        .collect();
    sorted.sort_by_key(|p| (p.start, p.end));
    let mut out = Vec::new();
    let mut cursor = from;
    for p in sorted {
        let start = p.start.max(cursor);
        let end = p.end.min(until);
        if start >= end {
            continue;
        }
        if start > cursor {
            out.push(PlannedSlot {
                start: cursor,
                end: start,
                price: None,
                planned: false,
            });
        }
        out.push(PlannedSlot {
            start,
            end,
            price: Some(p.price),
            planned: false,
        });
        cursor = end;
    }
    if cursor < until {
        out.push(PlannedSlot {
            start: cursor,
            end: until,
            price: None,
            planned: false,
        });
    }
    out
}

/// Marks `[first start, first start + duration)` of the timeline planned, splitting the slot the
/// end falls in.
fn charge_from_start(timeline: Vec<PlannedSlot>, duration: SignedDuration) -> Vec<PlannedSlot> {
    let Some(first) = timeline.first() else {
        return timeline;
    };
    let stop = first.start.checked_add(duration).unwrap_or(Timestamp::MAX);
    let mut out = Vec::with_capacity(timeline.len() + 1);
    for s in timeline {
        if s.end <= stop {
            out.push(PlannedSlot { planned: true, ..s });
        } else if s.start < stop {
            out.push(PlannedSlot {
                end: stop,
                planned: true,
                ..s
            });
            out.push(PlannedSlot { start: stop, ..s });
        } else {
            out.push(s);
        }
    }
    out
}

/// Marks the cheapest priced time of the timeline planned until `needed` is covered (the caller
/// made sure the priced time suffices).
fn choose_cheapest(timeline: Vec<PlannedSlot>, needed: SignedDuration) -> Vec<PlannedSlot> {
    let mut order: Vec<usize> = (0..timeline.len())
        .filter(|&i| timeline[i].price.is_some())
        .collect();
    // Cheapest first; equal prices in time order (the timeline is sorted), so earlier wins.
    order.sort_by(|&a, &b| {
        let (pa, pb) = (timeline[a].price, timeline[b].price);
        pa.partial_cmp(&pb)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut whole = vec![false; timeline.len()];
    let mut partial: Option<(usize, SignedDuration)> = None;
    let mut left = needed;
    for i in order {
        if !left.is_positive() {
            break;
        }
        let len = timeline[i].end.duration_since(timeline[i].start);
        if len <= left {
            whole[i] = true;
            left -= len;
        } else {
            partial = Some((i, left));
            left = SignedDuration::ZERO;
        }
    }
    let touches = |j: usize, s: &PlannedSlot, before: bool| {
        let n = &timeline[j];
        whole[j]
            && (if before {
                n.end == s.start
            } else {
                n.start == s.end
            })
    };
    let mut out = Vec::with_capacity(timeline.len() + 1);
    for (i, s) in timeline.iter().enumerate() {
        match partial {
            Some((p, len)) if p == i => {
                let after_prev = i > 0 && touches(i - 1, s, true);
                let before_next = i + 1 < timeline.len() && touches(i + 1, s, false);
                if before_next && !after_prev {
                    let cut = s.end - len;
                    out.push(PlannedSlot { end: cut, ..*s });
                    out.push(PlannedSlot {
                        start: cut,
                        planned: true,
                        ..*s
                    });
                } else {
                    let cut = s.start + len;
                    out.push(PlannedSlot {
                        end: cut,
                        planned: true,
                        ..*s
                    });
                    out.push(PlannedSlot { start: cut, ..*s });
                }
            }
            _ => out.push(PlannedSlot {
                planned: whole[i],
                ..*s
            }),
        }
    }
    out
}

/// A charge through stretches in time order.
struct Simulated {
    points: Vec<(Timestamp, f64)>,
    soc: f64,
    cost: Option<f64>,
}

/// Charges from `req.soc_now` at `rate` (points per hour, halved above [`TAPER_SOC`]) through
/// `stretches` until the target, recording the SOC curve and the cost of the energy.
fn simulate(
    req: &Request,
    rate: f64,
    from: Timestamp,
    stretches: impl Iterator<Item = (Timestamp, Timestamp, Option<f64>)>,
) -> Simulated {
    let target = clamp_soc(req.target);
    let kwh_per_point = req.capacity_kwh.max(0.0) / 100.0;
    let mut soc = clamp_soc(req.soc_now);
    let mut points = vec![(from, soc)];
    let mut cost = Some(0.0);
    let push = |points: &mut Vec<(Timestamp, f64)>, t: Timestamp, soc: f64| {
        if points.last().is_some_and(|&(last, _)| last == t) {
            points.pop();
        }
        points.push((t, soc));
    };
    for (start, end, price) in stretches {
        if soc >= target || rate <= 0.0 {
            break;
        }
        push(&mut points, start, soc);
        let before = soc;
        let mut t = start;
        // At most two pieces: up to the taper at full rate, then above it at half rate.
        while soc < target && t < end {
            let (ceiling, speed) = if soc < TAPER_SOC {
                (target.min(TAPER_SOC), rate)
            } else {
                (target, rate / 2.0)
            };
            let left = end.duration_since(t).as_secs_f64();
            let secs = (ceiling - soc) / speed * 3600.0;
            if secs <= left {
                t = t
                    .checked_add(SignedDuration::from_secs_f64(secs))
                    .unwrap_or(end)
                    .min(end);
                soc = ceiling;
            } else {
                t = end;
                soc += speed * left / 3600.0;
            }
            push(&mut points, t, soc);
        }
        cost = match price {
            Some(p) => cost.map(|c| c + p * (soc - before) * kwh_per_point),
            None => None,
        };
    }
    Simulated { points, soc, cost }
}

/// One past charge, for [`learned_rate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PastCharge {
    pub start_soc: f64,
    pub end_soc: f64,
    pub duration: Duration,
}

/// The charge rate in SOC points per hour that recent charges showed: the median over the last
/// [`LEARN_FROM_LAST`] of `sessions` (oldest first) that ran at full rate (see the module
/// docs). None when none qualifies.
pub fn learned_rate(sessions: &[PastCharge]) -> Option<f64> {
    let mut rates: Vec<f64> = sessions
        .iter()
        .filter(|s| {
            s.duration >= MIN_LEARN_DURATION
                && s.end_soc - s.start_soc >= MIN_LEARN_GAIN
                && s.end_soc <= TAPER_SOC
        })
        .map(|s| (s.end_soc - s.start_soc) / (s.duration.as_secs_f64() / 3600.0))
        .filter(|r| r.is_finite())
        .rev()
        .take(LEARN_FROM_LAST)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    Some(if rates.len() % 2 == 1 {
        rates[mid]
    } else {
        (rates[mid - 1] + rates[mid]) / 2.0
    })
}

/// [`learned_rate`] as charge power into a battery of `capacity_kwh`, for [`Request::charge_kw`].
pub fn learned_charge_kw(sessions: &[PastCharge], capacity_kwh: f64) -> Option<f64> {
    learned_rate(sessions).map(|rate| rate * capacity_kwh / 100.0)
}

#[cfg(test)]
mod tests;
