use super::*;

fn tz() -> TimeZone {
    TimeZone::get("Europe/London").unwrap()
}

fn local(s: &str) -> Timestamp {
    s.parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned_datetime(tz())
        .unwrap()
        .timestamp()
}

fn target(p: u8) -> TargetSoc {
    TargetSoc::new(p).unwrap()
}

/// Half-hour slots from 23:00 to 07:00, dear except 02:00-03:00.
fn prices() -> PriceBook {
    let mut slots = Vec::new();
    let mut t = local("2026-01-14T23:00");
    while t < local("2026-01-15T07:00") {
        let end = t + SignedDuration::from_mins(30);
        let cheap = t >= local("2026-01-15T02:00") && t < local("2026-01-15T03:00");
        slots.push(PriceSlot {
            start: t,
            end,
            price: if cheap { 0.05 } else { 0.30 },
        });
        t = end;
    }
    PriceBook {
        source: "fixed".into(),
        currency: "GBP".into(),
        fetched_at: local("2026-01-14T16:00"),
        slots: Arc::new(slots),
        problem: None,
    }
}

fn battery() -> Battery {
    Battery {
        capacity_kwh: Some(10.0),
        charge_kw: Some(5.0),
        learned_kw: None,
    }
}

#[test]
fn ready_by_is_the_next_such_time_after_the_start() {
    let start = local("2026-01-14T23:00");
    let t = |h, m| LocalTime::new(h, m).unwrap();
    assert_eq!(
        ready_by_after(start, t(7, 0), &tz()),
        local("2026-01-15T07:00")
    );
    assert_eq!(
        ready_by_after(start, t(23, 30), &tz()),
        local("2026-01-14T23:30")
    );
    // A night of 25 hours: the clocks go back at 02:00 on 2026-10-25.
    let autumn = local("2026-10-24T23:00");
    assert_eq!(
        ready_by_after(autumn, t(7, 0), &tz()).duration_since(autumn),
        SignedDuration::from_hours(9)
    );
}

#[test]
fn the_night_charges_in_the_cheap_hour_and_waits_before_it() {
    let (from, until) = (local("2026-01-14T23:00"), local("2026-01-15T07:00"));
    // 40 -> 80 % of 10 kWh at 5 kW: 48 minutes, with the margin under an hour.
    let view = plan_view(
        from,
        until,
        target(80),
        40.0,
        from,
        &battery(),
        Some(&prices()),
    );
    assert_eq!(view.fallback, None);
    assert_eq!(view.charge_kw_source, Some("config"));
    assert_eq!(
        decide(&view, from, until),
        Decision::Wait {
            until: local("2026-01-15T02:00")
        }
    );
    let at_two = local("2026-01-15T02:00");
    let view = plan_view(
        from,
        until,
        target(80),
        40.0,
        at_two,
        &battery(),
        Some(&prices()),
    );
    assert_eq!(
        decide(&view, at_two, until),
        Decision::Charge {
            // 48 minutes and the 10-minute margin.
            until: local("2026-01-15T02:58")
        }
    );
}

#[test]
fn a_run_that_fell_short_makes_the_next_plan_charge_on() {
    let (from, until) = (local("2026-01-14T23:00"), local("2026-01-15T07:00"));
    // At 03:00 only 50 %: the cheap hour is over, the rest is charged at once or later, but
    // the target is still planned to be reached by 07:00.
    let at_three = local("2026-01-15T03:00");
    let view = plan_view(
        from,
        until,
        target(80),
        50.0,
        at_three,
        &battery(),
        Some(&prices()),
    );
    assert!(view.plan.feasible);
    let planned: f64 = view
        .plan
        .runs()
        .iter()
        .map(|(s, e)| e.duration_since(*s).as_secs_f64())
        .sum();
    assert!(planned >= 36.0 * 60.0, "30 points at 50 %/h: {planned} s");
}

#[test]
fn without_prices_it_starts_at_the_latest_time_that_still_reaches_the_target() {
    let (from, until) = (local("2026-01-14T23:00"), local("2026-01-15T07:00"));
    let none = PriceBook {
        slots: Arc::new(Vec::new()),
        problem: Some("octopus_agile: not published yet".into()),
        ..prices()
    };
    let view = plan_view(from, until, target(80), 40.0, from, &battery(), Some(&none));
    let why = view.fallback.clone().unwrap();
    assert!(
        why.contains("not published yet") && why.contains("latest start"),
        "{why}"
    );
    let runs = view.plan.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].1, until);
    assert!(runs[0].0 > from && runs[0].0 < until, "{runs:?}");
    assert!(matches!(decide(&view, from, until), Decision::Wait { .. }));
    assert!(matches!(
        decide(&view, runs[0].0, until),
        Decision::Charge { until: u } if u == until
    ));
}

#[test]
fn without_a_charge_rate_it_charges_from_the_start() {
    let (from, until) = (local("2026-01-14T23:00"), local("2026-01-15T07:00"));
    let unknown = Battery {
        charge_kw: None,
        ..battery()
    };
    let view = plan_view(
        from,
        until,
        target(80),
        40.0,
        from,
        &unknown,
        Some(&prices()),
    );
    assert!(view.fallback.is_some());
    assert_eq!(decide(&view, from, until), Decision::Charge { until });
}

#[test]
fn a_charges_cost_is_its_energy_at_the_mean_price_of_its_time() {
    let p = prices();
    let c = cost(
        4000.0,
        local("2026-01-15T02:00"),
        local("2026-01-15T03:00"),
        &p.slots,
    );
    assert_eq!(c, Some(0.2));
    assert_eq!(
        cost(
            4000.0,
            local("2026-01-15T06:30"),
            local("2026-01-15T08:00"),
            &p.slots
        ),
        None,
        "not all of it is priced"
    );
}
