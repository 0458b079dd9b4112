//! Tests of the cheapest-hours planner: worked examples, DST nights, and properties checked
//! against a charge simulated here and against brute force.
use super::*;

use jiff::civil::date;
use jiff::tz::TimeZone;
use proptest::prelude::*;

/// 2026-01-10 at `h:m` UTC (a winter night in London: local time is UTC).
fn t(h: i8, m: i8) -> Timestamp {
    date(2026, 1, 10)
        .at(h, m, 0, 0)
        .to_zoned_datetime(TimeZone::UTC)
        .unwrap()
        .timestamp()
}

fn mins(n: i64) -> SignedDuration {
    SignedDuration::from_mins(n)
}

/// Back-to-back slots of `len` minutes from `start`, one per price.
fn slots(start: Timestamp, len: i64, prices: &[f64]) -> Vec<PriceSlot> {
    prices
        .iter()
        .enumerate()
        .map(|(i, &price)| PriceSlot {
            start: start + mins(len * i as i64),
            end: start + mins(len * (i as i64 + 1)),
            price,
        })
        .collect()
}

/// 10 kWh charged at 5 kW: 50 points an hour, so 0.1 h (6 minutes) per 5 points.
fn request(soc_now: f64, target: f64, earliest: Timestamp, ready_by: Timestamp) -> Request {
    Request {
        now: earliest,
        earliest,
        ready_by,
        soc_now,
        target,
        capacity_kwh: 10.0,
        charge_kw: 5.0,
    }
}

fn planned_minutes(plan: &Plan) -> i64 {
    plan.slots
        .iter()
        .filter(|s| s.planned)
        .map(|s| s.end.duration_since(s.start).as_secs())
        .sum::<i64>()
        / 60
}

// ---------------------------------------------------------------------------------------------
// The charge model
// ---------------------------------------------------------------------------------------------

#[test]
fn the_margin_is_ten_percent_and_at_least_ten_minutes() {
    // 50 points at 50 points/h: one hour, so the floor of 10 minutes applies (10 % is 6).
    let r = request(30.0, 80.0, t(0, 0), t(8, 0));
    assert_eq!(r.charge_time(), Some(mins(60)));
    assert_eq!(r.time_needed(), Some(mins(70)));
    // Four hours: 10 % (24 minutes) is more than the floor.
    let r = Request {
        charge_kw: 1.25,
        ..r
    };
    assert_eq!(r.charge_time(), Some(mins(240)));
    assert_eq!(r.time_needed(), Some(mins(264)));
    // Nothing to charge: no margin either.
    let r = request(80.0, 80.0, t(0, 0), t(8, 0));
    assert_eq!(r.time_needed(), Some(SignedDuration::ZERO));
}

#[test]
fn the_taper_above_95_percent_charges_at_half_rate() {
    // 85 -> 95 at 50/h: 12 minutes; 95 -> 100 at 25/h: 12 minutes.
    let r = request(85.0, 100.0, t(0, 0), t(8, 0));
    assert_eq!(r.charge_time(), Some(mins(24)));
    // Starting inside the taper.
    let r = request(97.5, 100.0, t(0, 0), t(8, 0));
    assert_eq!(r.charge_time(), Some(mins(6)));
    // The expected curve bends at 95.
    let p = plan(
        &request(85.0, 100.0, t(0, 0), t(1, 0)),
        &slots(t(0, 0), 60, &[0.1]),
    );
    assert!(
        p.expected_soc.contains(&(t(0, 12), 95.0)),
        "{:?}",
        p.expected_soc
    );
    assert!(
        p.expected_soc.contains(&(t(0, 24), 100.0)),
        "{:?}",
        p.expected_soc
    );
    assert_eq!(p.expected_soc_at(t(0, 18)), 97.5);
}

#[test]
fn energy_and_hours_needed_are_reported_without_the_margin() {
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(8, 0)),
        &slots(t(0, 0), 60, &[0.2; 8]),
    );
    assert_eq!(p.energy_needed_kwh, 5.0);
    assert_eq!(p.hours_needed, 1.0);
    assert_eq!(p.margin, mins(10));
}

// ---------------------------------------------------------------------------------------------
// Choosing slots
// ---------------------------------------------------------------------------------------------

#[test]
fn the_cheapest_slots_are_chosen_and_merged_into_runs() {
    // Need 70 minutes (one hour plus margin) in half-hour slots 00:00..04:00.
    let prices = [0.30, 0.25, 0.10, 0.08, 0.12, 0.28, 0.05, 0.30];
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(4, 0)),
        &slots(t(0, 0), 30, &prices),
    );
    assert_eq!(p.fallback, None);
    assert!(p.feasible);
    // 0.05 (03:00), 0.08 (01:30), and 10 minutes of 0.10 (01:00), placed against 01:30.
    assert_eq!(p.runs(), vec![(t(1, 20), t(2, 0)), (t(3, 0), t(3, 30))]);
    assert_eq!(planned_minutes(&p), 70);
    assert!(p.is_planned_at(t(1, 20)));
    assert!(!p.is_planned_at(t(2, 0)));
    assert!(p.is_planned_at(t(3, 29)));
}

#[test]
fn a_partial_slot_follows_a_planned_run_when_one_precedes_it() {
    // 00:00 cheapest, 00:30 next: the 10 extra minutes go at the start of 00:30.
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(3, 0)),
        &slots(t(0, 0), 60, &[0.05, 0.10, 0.30]),
    );
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 10))]);
    // The split slot shows as two entries of the same price.
    assert_eq!(
        &p.slots[1..3],
        &[
            PlannedSlot {
                start: t(1, 0),
                end: t(1, 10),
                price: Some(0.10),
                planned: true
            },
            PlannedSlot {
                start: t(1, 10),
                end: t(2, 0),
                price: Some(0.10),
                planned: false
            },
        ]
    );
}

#[test]
fn a_partial_slot_without_planned_neighbours_charges_at_its_start() {
    // 30 points at 50/h = 36 min, + 10 = 46 min: the 0.05 hour's first 46 minutes.
    let p = plan(
        &request(50.0, 80.0, t(0, 0), t(3, 0)),
        &slots(t(0, 0), 60, &[0.30, 0.05, 0.30]),
    );
    assert_eq!(p.runs(), vec![(t(1, 0), t(1, 46))]);
}

#[test]
fn equal_prices_favour_earlier_slots() {
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(6, 0)),
        &slots(t(0, 0), 30, &[0.1; 12]),
    );
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 10))]);
    // Ties only among the cheapest: 02:00 and 04:00 are equal and cheapest.
    let mut prices = [0.2; 12];
    prices[4] = 0.1;
    prices[8] = 0.1;
    prices[9] = 0.1;
    let p = plan(
        &request(40.0, 80.0, t(0, 0), t(6, 0)),
        &slots(t(0, 0), 30, &prices),
    );
    // 48 min + 10 = 58: 02:00 whole, then 28 minutes of 04:00, the earlier of the two left.
    assert_eq!(p.runs(), vec![(t(2, 0), t(2, 30)), (t(4, 0), t(4, 28))]);
}

#[test]
fn mixed_slot_lengths_are_planned_by_time_not_by_count() {
    // An hourly slot at 0.10 then four quarter hours at 0.05 (a market moving to 15 minutes).
    let mut prices = slots(t(0, 0), 60, &[0.10]);
    prices.extend(slots(t(1, 0), 15, &[0.05, 0.05, 0.05, 0.05]));
    let p = plan(&request(30.0, 80.0, t(0, 0), t(2, 0)), &prices);
    // 70 minutes: the four quarters (60) and 10 minutes of the hour, against them.
    assert_eq!(p.runs(), vec![(t(0, 50), t(2, 0))]);
    let cost = p.planned_cost.unwrap();
    // The charge's 5 kWh: the first 10 minutes would be margin, but the charge runs in time
    // order, so 50 points (60 minutes) spread over 0:50..1:50: 10 minutes at 0.10, 50 at 0.05.
    let expected = 5.0 * (10.0 / 60.0) * 0.10 + 5.0 * (50.0 / 60.0) * 0.05;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
}

#[test]
fn slots_partly_in_the_past_count_only_for_their_remaining_part() {
    // At 00:40 the 00:00 hour (cheapest) has 20 minutes left.
    let r = Request {
        now: t(0, 40),
        ..request(30.0, 80.0, t(0, 0), t(3, 0))
    };
    let p = plan(&r, &slots(t(0, 0), 60, &[0.05, 0.10, 0.30]));
    assert_eq!(p.from, t(0, 40));
    assert_eq!(p.slots.first().unwrap().start, t(0, 40));
    assert_eq!(p.runs(), vec![(t(0, 40), t(1, 50))]);
}

#[test]
fn slots_outside_the_window_are_clipped_to_it() {
    // Prices for the whole day; the window is 01:00..03:00.
    let p = plan(
        &request(50.0, 80.0, t(1, 0), t(3, 0)),
        &slots(t(0, 0), 60, &[0.01, 0.20, 0.10, 0.01, 0.01]),
    );
    assert_eq!(p.slots.first().unwrap().start, t(1, 0));
    assert_eq!(p.slots.last().unwrap().end, t(3, 0));
    assert_eq!(p.runs(), vec![(t(2, 0), t(2, 46))]);
}

#[test]
fn overlapping_slots_keep_the_earlier_starting_one() {
    let mut prices = slots(t(0, 0), 60, &[0.10, 0.20]);
    prices.push(PriceSlot {
        start: t(0, 30),
        end: t(1, 30),
        price: 0.01,
    });
    let p = plan(&request(80.0, 80.0, t(0, 0), t(2, 0)), &prices);
    let spans: Vec<_> = p.slots.iter().map(|s| (s.start, s.end, s.price)).collect();
    assert_eq!(
        spans[..3],
        [
            (t(0, 0), t(1, 0), Some(0.10)),
            (t(1, 0), t(1, 30), Some(0.01)),
            (t(1, 30), t(2, 0), Some(0.20)),
        ]
    );
}

#[test]
fn priced_time_is_enough_even_with_a_gap_in_the_prices() {
    // No price for 01:00..02:00; the 70 minutes fit in the priced hours.
    let mut prices = slots(t(0, 0), 60, &[0.20]);
    prices.extend(slots(t(2, 0), 60, &[0.05, 0.10]));
    let p = plan(&request(30.0, 80.0, t(0, 0), t(4, 0)), &prices);
    assert_eq!(p.fallback, None);
    assert_eq!(p.runs(), vec![(t(2, 0), t(3, 10))]);
    assert_eq!(
        p.slots[1],
        PlannedSlot {
            start: t(1, 0),
            end: t(2, 0),
            price: None,
            planned: false
        }
    );
}

#[test]
fn nothing_is_planned_when_the_battery_is_already_at_target() {
    let p = plan(
        &request(85.0, 80.0, t(0, 0), t(4, 0)),
        &slots(t(0, 0), 60, &[0.1; 4]),
    );
    assert!(p.feasible);
    assert_eq!(p.runs(), vec![]);
    assert_eq!(p.energy_needed_kwh, 0.0);
    assert_eq!(p.planned_cost, Some(0.0));
    assert_eq!(p.latest_start, t(4, 0));
    assert_eq!(p.next_boundary(t(0, 0)), None);
}

// ---------------------------------------------------------------------------------------------
// Fallbacks and feasibility
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_prices_fall_back_to_charging_from_the_start() {
    // Prices only for the first half hour: 70 minutes are needed.
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(4, 0)),
        &slots(t(0, 0), 30, &[0.30]),
    );
    assert_eq!(p.fallback, Some(Fallback::MissingPrices));
    assert!(p.feasible);
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 10))]);
    // Part of the charge falls where no price is known.
    assert_eq!(p.planned_cost, None);
    // With no prices at all, the same.
    let p = plan(&request(30.0, 80.0, t(0, 0), t(4, 0)), &[]);
    assert_eq!(p.fallback, Some(Fallback::MissingPrices));
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 10))]);
    assert_eq!(p.slots.len(), 2);
}

#[test]
fn a_window_too_short_for_the_margin_charges_from_the_start_and_is_still_feasible() {
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(1, 5)),
        &slots(t(0, 0), 15, &[0.3, 0.1, 0.1, 0.1, 0.1]),
    );
    assert_eq!(p.fallback, Some(Fallback::TightWindow));
    assert!(p.feasible);
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 5))]);
}

#[test]
fn a_window_too_short_for_the_charge_is_infeasible_and_charges_throughout() {
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(0, 45)),
        &slots(t(0, 0), 15, &[0.3, 0.1, 0.1]),
    );
    assert_eq!(p.fallback, Some(Fallback::TightWindow));
    assert!(!p.feasible);
    assert_eq!(p.runs(), vec![(t(0, 0), t(0, 45))]);
    assert_eq!(p.latest_start, t(23, 45) - SignedDuration::from_hours(24));
    // It charges what it can: 37.5 points in 45 minutes.
    assert_eq!(p.expected_soc.last(), Some(&(t(0, 45), 67.5)));
    // A deadline already passed: nothing to plan, and not feasible.
    let r = Request {
        now: t(1, 0),
        ..request(30.0, 80.0, t(0, 0), t(0, 45))
    };
    let p = plan(&r, &[]);
    assert!(!p.feasible);
    assert!(p.slots.is_empty());
    assert_eq!(p.runs(), vec![]);
}

#[test]
fn invalid_battery_figures_make_an_infeasible_plan_that_charges_throughout() {
    let r = Request {
        capacity_kwh: 0.0,
        ..request(30.0, 80.0, t(0, 0), t(2, 0))
    };
    let p = plan(&r, &slots(t(0, 0), 60, &[0.1, 0.2]));
    assert_eq!(p.fallback, Some(Fallback::NoRate));
    assert!(!p.feasible);
    assert_eq!(p.runs(), vec![(t(0, 0), t(2, 0))]);
    assert_eq!(p.planned_cost, None);
    let r = Request {
        charge_kw: f64::NAN,
        ..request(30.0, 80.0, t(0, 0), t(2, 0))
    };
    assert_eq!(plan(&r, &[]).fallback, Some(Fallback::NoRate));
}

#[test]
fn latest_start_is_the_deadline_minus_the_charge_time() {
    let p = plan(&request(30.0, 80.0, t(0, 0), t(7, 0)), &[]);
    assert_eq!(p.latest_start, t(6, 0));
}

#[test]
fn fallback_start_is_the_latest_safe_start_clamped_to_the_window() {
    // One hour + 10 minutes before 07:00.
    assert_eq!(
        fallback_start(&request(30.0, 80.0, t(0, 0), t(7, 0))),
        t(5, 50)
    );
    // Not before earliest...
    assert_eq!(
        fallback_start(&request(30.0, 80.0, t(6, 0), t(7, 0))),
        t(6, 0)
    );
    // ...nor before now.
    let r = Request {
        now: t(6, 30),
        ..request(30.0, 80.0, t(0, 0), t(7, 0))
    };
    assert_eq!(fallback_start(&r), t(6, 30));
    // Already at target: as late as the deadline.
    assert_eq!(
        fallback_start(&request(90.0, 80.0, t(0, 0), t(7, 0))),
        t(7, 0)
    );
}

#[test]
fn costs_count_the_energy_in_each_slot_at_its_price() {
    // 5 kWh. Planned: 00:00..01:10 in the 0.05 and 0.10 hours; the charge itself takes the
    // first hour, all at 0.05. Continuously from 23:00 instead: the whole hour at 0.30.
    let prices = [0.30, 0.05, 0.10];
    let p = plan(
        &request(30.0, 80.0, t(0, 0) - mins(60), t(2, 0)),
        &slots(t(0, 0) - mins(60), 60, &prices),
    );
    assert_eq!(p.runs(), vec![(t(0, 0), t(1, 10))]);
    assert!((p.planned_cost.unwrap() - 0.25).abs() < 1e-9);
    assert!((p.fixed_start_cost.unwrap() - 1.5).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Execution: runs, boundaries, falling behind
// ---------------------------------------------------------------------------------------------

#[test]
fn next_boundary_and_is_planned_at_follow_the_runs() {
    let prices = [0.1, 0.3, 0.1, 0.3];
    let p = plan(
        &request(40.0, 80.0, t(0, 0), t(2, 0)),
        &slots(t(0, 0), 30, &prices),
    );
    // 48 + 10 = 58 minutes: 00:00..00:30 and 01:00..01:28.
    assert_eq!(p.runs(), vec![(t(0, 0), t(0, 30)), (t(1, 0), t(1, 28))]);
    assert_eq!(p.next_boundary(t(0, 0) - mins(5)), Some(t(0, 0)));
    assert_eq!(p.next_boundary(t(0, 0)), Some(t(0, 30)));
    assert_eq!(p.next_boundary(t(0, 45)), Some(t(1, 0)));
    assert_eq!(p.next_boundary(t(1, 0)), Some(t(1, 28)));
    assert_eq!(p.next_boundary(t(1, 28)), None);
    assert!(!p.is_planned_at(t(0, 0) - mins(1)));
    assert!(p.is_planned_at(t(0, 0)));
    assert!(!p.is_planned_at(t(0, 30)));
    assert!(p.is_planned_at(t(1, 27)));
    assert!(!p.is_planned_at(t(1, 28)));
}

#[test]
fn behind_compares_soc_with_the_expected_curve() {
    let p = plan(
        &request(30.0, 80.0, t(0, 0), t(4, 0)),
        &slots(t(0, 0), 60, &[0.3, 0.1, 0.2, 0.3]),
    );
    assert_eq!(p.runs(), vec![(t(1, 0), t(2, 10))]);
    // Flat before the run, 50 points an hour in it, flat at the target after it.
    assert_eq!(p.expected_soc_at(t(0, 30)), 30.0);
    assert_eq!(p.expected_soc_at(t(1, 30)), 55.0);
    assert_eq!(p.expected_soc_at(t(3, 0)), 80.0);
    // Readings are allowed five minutes of delay: at 01:35 the curve of 01:30 counts.
    assert!(!p.behind(t(1, 35), 53.0));
    assert!(p.behind(t(1, 35), 51.0));
    assert!(!p.behind(t(0, 30), 30.0));
    // Just after a run starts, a reading that has not moved yet is fine.
    assert!(!p.behind(t(1, 4), 30.0));
}

#[test]
fn learned_rate_is_the_median_of_recent_full_rate_sessions() {
    let h = |m: u64| Duration::from_secs(m * 60);
    let s = |a: f64, b: f64, d: Duration| PastCharge {
        start_soc: a,
        end_soc: b,
        duration: d,
    };
    assert_eq!(learned_rate(&[]), None);
    let sessions = [
        s(20.0, 60.0, h(60)),  // 40/h, but older than the last five usable
        s(20.0, 80.0, h(60)),  // 60/h
        s(50.0, 52.0, h(30)),  // too little gained
        s(30.0, 40.0, h(10)),  // too short
        s(80.0, 100.0, h(60)), // tapering
        s(10.0, 60.0, h(60)),  // 50/h
        s(10.0, 40.0, h(60)),  // 30/h: a night with a big house load
        s(40.0, 90.0, h(60)),  // 50/h
        s(30.0, 85.0, h(60)),  // 55/h
    ];
    // The last five usable: 60, 50, 30, 50, 55 -> median 50.
    assert_eq!(learned_rate(&sessions), Some(50.0));
    assert_eq!(learned_charge_kw(&sessions, 10.0), Some(5.0));
    // An even count takes the mean of the middle two.
    assert_eq!(
        learned_rate(&[s(0.0, 40.0, h(60)), s(0.0, 50.0, h(60))]),
        Some(45.0)
    );
    assert_eq!(learned_rate(&[s(80.0, 100.0, h(60))]), None);
}

// ---------------------------------------------------------------------------------------------
// DST nights
// ---------------------------------------------------------------------------------------------

fn local(tz: &TimeZone, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Timestamp {
    date(y, mo, d)
        .at(h, mi, 0, 0)
        .to_zoned_datetime(tz.clone())
        .unwrap()
        .timestamp()
}

/// Half-hour slots over the local day `y-mo-d` in `tz`: 0.05 from 01:00 to 03:00 on the local
/// clock (so a repeated hour is cheap twice, a skipped one not at all), 0.30 otherwise.
fn local_day(tz: &TimeZone, y: i16, mo: i8, d: i8) -> Vec<PriceSlot> {
    let start = local(tz, y, mo, d, 0, 0);
    let next = date(y, mo, d).tomorrow().unwrap();
    let end = local(tz, next.year(), next.month(), next.day(), 0, 0);
    let n = end.duration_since(start).as_mins() / 30;
    (0..n)
        .map(|i| {
            let at = start + mins(30 * i);
            let hour = tz.to_datetime(at).hour();
            PriceSlot {
                start: at,
                end: at + mins(30),
                price: if (1..3).contains(&hour) { 0.05 } else { 0.30 },
            }
        })
        .collect()
}

fn cheap_time(p: &Plan) -> SignedDuration {
    p.slots
        .iter()
        .filter(|s| s.price == Some(0.05))
        .fold(SignedDuration::ZERO, |a, s| {
            a + s.end.duration_since(s.start)
        })
}

#[test]
fn a_london_fall_back_day_has_fifty_slots_and_its_night_an_hour_more() {
    let london = TimeZone::get("Europe/London").unwrap();
    let day = local_day(&london, 2026, 10, 25);
    assert_eq!(day.len(), 50);
    let (from, until) = (
        local(&london, 2026, 10, 25, 0, 0),
        local(&london, 2026, 10, 25, 7, 0),
    );
    assert_eq!(until.duration_since(from), SignedDuration::from_hours(8));
    // 7.5 hours of charge (46.875 points at 6.25 an hour) fit in this night's eight hours,
    // though not with the whole margin; an ordinary night's seven would not hold them.
    let r = Request {
        charge_kw: 0.625,
        ..request(33.125, 80.0, from, until)
    };
    assert_eq!(r.charge_time(), Some(mins(450)));
    let p = plan(&r, &day);
    assert!(p.feasible);
    assert_eq!(p.fallback, Some(Fallback::TightWindow));
    assert_eq!(p.runs(), vec![(from, until)]);
    assert_eq!(p.slots.len(), 16);
    // The repeated 01:00 hour makes three real hours of cheap slots; 70 minutes of charge take
    // the first of them, across the change from BST to GMT.
    let p = plan(&request(30.0, 80.0, from, until), &day);
    assert_eq!(cheap_time(&p), SignedDuration::from_hours(3));
    let one_bst = local(&london, 2026, 10, 25, 1, 0);
    assert_eq!(p.runs(), vec![(one_bst, one_bst + mins(70))]);
    let end = (one_bst + mins(70)).to_zoned_datetime(london.clone());
    assert_eq!(
        (end.hour(), end.minute(), end.offset().seconds()),
        (1, 10, 0)
    );
}

#[test]
fn a_london_spring_forward_day_has_forty_six_slots_and_its_night_an_hour_less() {
    let london = TimeZone::get("Europe/London").unwrap();
    let day = local_day(&london, 2026, 3, 29);
    assert_eq!(day.len(), 46);
    let (from, until) = (
        local(&london, 2026, 3, 29, 0, 0),
        local(&london, 2026, 3, 29, 7, 0),
    );
    assert_eq!(until.duration_since(from), SignedDuration::from_hours(6));
    // 6.5 hours of charge do not fit in this night's six: charge throughout.
    let r = Request {
        charge_kw: 10.0 * 0.5 / 6.5,
        ..request(30.0, 80.0, from, until)
    };
    let p = plan(&r, &day);
    assert!(!p.feasible);
    assert_eq!(p.runs(), vec![(from, until)]);
    assert_eq!(p.slots.len(), 12);
    // 01:00..02:00 does not exist: one cheap hour, 02:00..03:00 BST; the ten minutes more go
    // to the earliest of the equally priced rest.
    let p = plan(&request(30.0, 80.0, from, until), &day);
    assert_eq!(cheap_time(&p), SignedDuration::from_hours(1));
    let two_bst = local(&london, 2026, 3, 29, 2, 0);
    assert_eq!(
        p.runs(),
        vec![(from, from + mins(10)), (two_bst, two_bst + mins(60))]
    );
}

#[test]
fn los_angeles_dst_nights_plan_on_real_hours() {
    let la = TimeZone::get("America/Los_Angeles").unwrap();
    // 2026-03-08: 02:00 becomes 03:00. 23:00 the day before to 07:00: seven real hours, and
    // only 01:00..02:00 PST of the cheap local hours exists.
    let mut spring = local_day(&la, 2026, 3, 7);
    spring.extend(local_day(&la, 2026, 3, 8));
    assert_eq!(spring.len(), 48 + 46);
    let (from, until) = (local(&la, 2026, 3, 7, 23, 0), local(&la, 2026, 3, 8, 7, 0));
    let p = plan(&request(30.0, 80.0, from, until), &spring);
    assert_eq!(until.duration_since(from), SignedDuration::from_hours(7));
    assert_eq!(cheap_time(&p), SignedDuration::from_hours(1));
    // 14 slots, one of them split.
    assert_eq!(p.slots.len(), 15);
    let one = local(&la, 2026, 3, 8, 1, 0);
    assert_eq!(
        p.runs(),
        vec![(from, from + mins(10)), (one, one + mins(60))]
    );
    // 2026-11-01: 02:00 falls back to 01:00. Nine real hours, three of them cheap: a charge
    // of 2.5 hours (at 2 kW) with its 15 minutes of margin fits in them, across the change.
    let mut fall = local_day(&la, 2026, 10, 31);
    fall.extend(local_day(&la, 2026, 11, 1));
    assert_eq!(fall.len(), 48 + 50);
    let (from, until) = (
        local(&la, 2026, 10, 31, 23, 0),
        local(&la, 2026, 11, 1, 7, 0),
    );
    let r = Request {
        charge_kw: 2.0,
        ..request(30.0, 80.0, from, until)
    };
    let p = plan(&r, &fall);
    assert_eq!(until.duration_since(from), SignedDuration::from_hours(9));
    assert_eq!(cheap_time(&p), SignedDuration::from_hours(3));
    assert!(p.feasible);
    let one_pdt = local(&la, 2026, 11, 1, 1, 0);
    assert_eq!(p.runs(), vec![(one_pdt, one_pdt + mins(165))]);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The instant following the plan's runs at `rate` points/h (halved above 95) from `soc0`
/// reaches `target`, computed here from time already charged rather than from the plan's curve.
fn reached_at(
    runs: &[(Timestamp, Timestamp)],
    rate: f64,
    soc0: f64,
    target: f64,
) -> Option<Timestamp> {
    let hours = hours_between(soc0, target, rate);
    let mut left = hours * 3600.0;
    if left <= 0.0 {
        return Some(Timestamp::MIN);
    }
    for &(s, e) in runs {
        let len = e.duration_since(s).as_secs_f64();
        if len >= left - 1e-6 {
            return Some(s + SignedDuration::from_secs_f64(left.max(0.0)));
        }
        left -= len;
    }
    None
}

fn hours_between(a: f64, b: f64, rate: f64) -> f64 {
    if b <= a {
        return 0.0;
    }
    ((b.min(95.0) - a).max(0.0) + 2.0 * (b - a.max(95.0)).max(0.0)) / rate
}

/// The SOC after charging `secs` at `rate` from `soc0`, stopping at `target`.
fn soc_after(soc0: f64, secs: f64, rate: f64, target: f64) -> f64 {
    let h = secs / 3600.0;
    let to_taper = ((95.0 - soc0).max(0.0)) / rate;
    let soc = if h <= to_taper {
        soc0 + rate * h
    } else {
        soc0.max(95.0) + rate / 2.0 * (h - to_taper)
    };
    soc.min(target).max(soc0)
}

/// Charged time within the runs up to `at`.
fn charged_secs(runs: &[(Timestamp, Timestamp)], at: Timestamp) -> f64 {
    runs.iter()
        .filter(|r| r.0 < at)
        .map(|&(s, e)| e.min(at).duration_since(s).as_secs_f64())
        .sum()
}

/// A random night: slots of 15, 30 or 60 minutes (mixed), sometimes with gaps, over a few hours
/// around the window.
#[derive(Debug, Clone)]
struct Case {
    req: Request,
    prices: Vec<PriceSlot>,
}

fn case(max_slots: usize) -> impl Strategy<Value = Case> {
    // Few distinct prices, so ties are common.
    let slot = (
        prop_oneof![Just(15i64), Just(30), Just(60)],
        prop_oneof![4 => Just(0i64), 1 => Just(15), 1 => Just(60)],
        prop_oneof![2 => Just(10i32), 2 => Just(20), 3 => -5i32..40].prop_map(|p| p as f64 / 100.0),
    );
    (
        proptest::collection::vec(slot, 1..=max_slots),
        0i64..120,   // slots start this many minutes before `earliest`
        0i64..180,   // now is this many minutes after `earliest` (0: at it)
        60i64..600,  // window length, minutes
        0u32..100,   // soc
        10u32..=100, // target
        5u32..=30,   // capacity kWh
        10u32..=80,  // charge kW * 10
    )
        .prop_map(|(raw, lead, late, window, soc, target, cap, kw)| {
            let earliest = t(22, 0) - SignedDuration::from_hours(24);
            let mut at = earliest - mins(lead);
            let prices = raw
                .into_iter()
                .map(|(len, gap, price)| {
                    at += mins(gap);
                    let s = PriceSlot {
                        start: at,
                        end: at + mins(len),
                        price,
                    };
                    at += mins(len);
                    s
                })
                .collect();
            let now = earliest + mins(if late % 3 == 0 { 0 } else { late });
            Case {
                req: Request {
                    now,
                    earliest,
                    ready_by: earliest + mins(window),
                    soc_now: soc as f64,
                    target: target as f64,
                    capacity_kwh: cap as f64,
                    charge_kw: kw as f64 / 10.0,
                },
                prices,
            }
        })
}

/// The least price-weighted time (price x hours) of `need` within the window's priced slots,
/// over every subset with at most one slot used in part; None when no subset covers it.
fn brute_force(req: &Request, prices: &[PriceSlot], need: SignedDuration) -> Option<f64> {
    let from = req.window_start();
    let clipped: Vec<(f64, f64)> = prices
        .iter()
        .filter_map(|p| {
            let (s, e) = (p.start.max(from), p.end.min(req.ready_by));
            (s < e).then(|| (e.duration_since(s).as_secs_f64() / 3600.0, p.price))
        })
        .collect();
    let need = need.as_secs_f64() / 3600.0;
    let mut best: Option<f64> = None;
    for mask in 1u32..(1 << clipped.len()) {
        let chosen: Vec<_> = (0..clipped.len())
            .filter(|i| mask & (1 << i) != 0)
            .collect();
        let total: f64 = chosen.iter().map(|&i| clipped[i].0).sum();
        if total < need - 1e-9 {
            continue;
        }
        for &f in &chosen {
            let rest: f64 = chosen
                .iter()
                .filter(|&&i| i != f)
                .map(|&i| clipped[i].0)
                .sum();
            if rest >= need - 1e-9 {
                continue;
            }
            let cost: f64 = chosen
                .iter()
                .filter(|&&i| i != f)
                .map(|&i| clipped[i].0 * clipped[i].1)
                .sum::<f64>()
                + (need - rest) * clipped[f].1;
            best = Some(best.map_or(cost, |b: f64| b.min(cost)));
        }
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn prop_slots_cover_the_window_in_order_without_overlap(c in case(14)) {
        let p = plan(&c.req, &c.prices);
        if p.until > p.from {
            prop_assert_eq!(p.slots.first().map(|s| s.start), Some(p.from));
            prop_assert_eq!(p.slots.last().map(|s| s.end), Some(p.until));
        } else {
            prop_assert!(p.slots.is_empty());
        }
        for w in p.slots.windows(2) {
            prop_assert_eq!(w[0].end, w[1].start);
        }
        for s in &p.slots {
            prop_assert!(s.start < s.end);
        }
        for w in p.runs().windows(2) {
            prop_assert!(w[0].1 < w[1].0, "runs touch: {:?}", p.runs());
        }
    }

    #[test]
    fn prop_the_deadline_is_met_whenever_the_plan_is_feasible(c in case(14)) {
        let p = plan(&c.req, &c.prices);
        let rate = c.req.rate().unwrap();
        // Feasible exactly when a continuous charge from the window's start fits (give or take
        // the second the charge time is rounded up to).
        let charge = hours_between(c.req.soc_now, c.req.target, rate) * 3600.0;
        let window = p.until.duration_since(p.from).as_secs_f64().max(0.0);
        if charge <= window - 1.0 {
            prop_assert!(p.feasible);
        } else if charge > window {
            prop_assert!(!p.feasible);
        }
        if p.feasible {
            let done = reached_at(&p.runs(), rate, c.req.soc_now, c.req.target);
            prop_assert!(done.is_some_and(|d| d <= p.until), "{:?} vs {}", done, p.until);
            prop_assert!(p.expected_soc_at(p.until) >= c.req.target.min(100.0) - 1e-6
                || c.req.soc_now >= c.req.target);
        }
        // Nothing is ever planned outside the window.
        for (s, e) in p.runs() {
            prop_assert!(p.from <= s && e <= p.until);
        }
        // A price-based plan carries the whole margin.
        if p.fallback.is_none() {
            let planned = p.slots.iter().filter(|s| s.planned)
                .fold(SignedDuration::ZERO, |a, s| a + s.end.duration_since(s.start));
            prop_assert_eq!(planned, c.req.time_needed().unwrap());
            prop_assert!(p.feasible);
        }
    }

    #[test]
    fn prop_the_cost_equals_brute_force_on_small_cases(c in case(10)) {
        let p = plan(&c.req, &c.prices);
        let need = c.req.time_needed().unwrap();
        if need.is_zero() {
            return Ok(());
        }
        let window = p.until.duration_since(p.from);
        let best = brute_force(&c.req, &c.prices, need);
        match p.fallback {
            None => {
                let got: f64 = p.slots.iter().filter(|s| s.planned).map(|s| {
                    s.end.duration_since(s.start).as_secs_f64() / 3600.0 * s.price.unwrap()
                }).sum();
                let best = best.expect("a price plan means some subset covers the need");
                prop_assert!((got - best).abs() < 1e-6, "planned {} brute {}", got, best);
            }
            Some(Fallback::MissingPrices) => prop_assert!(best.is_none() && need <= window),
            Some(Fallback::TightWindow) => prop_assert!(need > window),
            Some(Fallback::NoRate) => prop_assert!(false, "the cases always have a rate"),
        }
    }

    #[test]
    fn prop_a_slower_charge_is_detected_and_a_replan_meets_the_deadline_when_feasible(
        c in case(14),
        slowdown in 40u32..95,
    ) {
        let p = plan(&c.req, &c.prices);
        let rate = c.req.rate().unwrap();
        let real = rate * slowdown as f64 / 100.0;
        let runs = p.runs();
        let soc_at = |at: Timestamp| soc_after(c.req.soc_now, charged_secs(&runs, at), real, c.req.target);
        // The engine checks each minute; the dongle reports whole percent, rounded down.
        let mut detected = None;
        let mut at = p.from;
        while at <= p.until {
            if p.behind(at, soc_at(at).floor()) {
                detected = Some(at);
                break;
            }
            at += mins(1);
        }
        // A charge that ends well short of the target is noticed by the deadline (a price-based
        // plan's margin is longer than the delay readings are allowed).
        if p.fallback.is_none() && soc_at(p.until) < c.req.target - BEHIND_TOLERANCE - 1.0 {
            prop_assert!(detected.is_some());
        }
        if let Some(d) = detected {
            let soc = soc_at(d).floor();
            let replan = plan(&Request {
                now: d,
                soc_now: soc,
                charge_kw: real * c.req.capacity_kwh / 100.0,
                ..c.req
            }, &c.prices);
            if replan.feasible {
                let done = reached_at(&replan.runs(), real, soc, c.req.target);
                prop_assert!(done.is_some_and(|t| t <= p.until), "{:?} {:?}", done, replan);
            }
            // The new plan is feasible whenever charging at the real rate from then on fits.
            let charge = hours_between(soc, c.req.target, real) * 3600.0;
            let window = p.until.duration_since(d).as_secs_f64();
            if charge <= window - 1.0 {
                prop_assert!(replan.feasible);
            } else if charge > window {
                prop_assert!(!replan.feasible);
            }
        }
    }
}
