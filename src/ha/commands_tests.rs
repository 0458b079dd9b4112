use super::*;
use crate::domain::schedule::Schedule;
use crate::domain::session::{Origin, Phase};
use crate::domain::units::{Days, LocalTime, Mode};
use crate::engine::SessionView;

fn tz() -> TimeZone {
    TimeZone::get("America/Los_Angeles").unwrap()
}

/// 2026-01-15 01:00 in Los Angeles.
fn now() -> Timestamp {
    "2026-01-15T09:00:00Z".parse().unwrap()
}

fn t(p: u8) -> TargetSoc {
    TargetSoc::new(p).unwrap()
}

fn hhmm(s: &str) -> LocalTime {
    LocalTime::parse_hhmm(s).unwrap()
}

fn idle() -> Status {
    Status {
        mqtt_connected: true,
        dongle_online: Some(true),
        ..Status::new(now())
    }
}

fn with_schedule(s: Schedule) -> Status {
    Status {
        schedule: Some(s),
        ..idle()
    }
}

fn schedule(p: u8, time: &str, mode: Mode, enabled: bool) -> Schedule {
    Schedule::new(t(p), hhmm(time), mode, enabled, None, None, now(), &tz()).unwrap()
}

fn session(p: u8) -> SessionView {
    SessionView {
        origin: Origin::ChargeNow,
        target: t(p),
        active_target: Some(t(p)),
        started_at: now(),
        deadline: now(),
        phase: Phase::Charging,
        charging: true,
        start_soc: None,
        energy_wh: None,
    }
}

fn run(object: &str, payload: &str, status: &Status) -> Result<Action, String> {
    decide(
        object,
        payload,
        status,
        &Remembered::default(),
        now(),
        &tz(),
    )
}

fn input(a: Result<Action, String>) -> ScheduleInput {
    match a {
        Ok(Action::SetSchedule(i)) => i,
        other => panic!("expected a schedule, got {other:?}"),
    }
}

#[test]
fn a_target_without_a_schedule_creates_a_disabled_one_from_the_defaults() {
    let i = input(run("target_soc", "85", &idle()));
    assert_eq!(
        i,
        ScheduleInput {
            target: t(85),
            time: hhmm("02:30"),
            mode: Mode::Recurring,
            enabled: false,
            days: None,
            first_run: None,
            ready_by: None,
        }
    );
}

#[test]
fn the_switch_without_a_schedule_creates_an_enabled_one() {
    let i = input(run("schedule_enabled", "ON", &idle()));
    assert!(i.enabled);
    assert_eq!(
        (i.target, i.time, i.mode),
        (t(80), hhmm("02:30"), Mode::Recurring)
    );
}

#[test]
fn a_created_schedule_takes_what_the_controls_remember() {
    let memory = Remembered {
        target: Some(t(65)),
        time: Some(hhmm("23:45")),
        mode: Some(Mode::Once),
    };
    let a = decide("start_time", "00:15", &idle(), &memory, now(), &tz());
    let i = input(a);
    assert_eq!(
        (i.target, i.time, i.mode, i.enabled),
        (t(65), hhmm("00:15"), Mode::Once, false)
    );
}

#[test]
fn each_control_changes_only_its_own_field_of_the_schedule() {
    let days = Days::from_names(["mon", "fri"]);
    let s = Schedule::new(
        t(70),
        hhmm("01:30"),
        Mode::Recurring,
        true,
        days,
        None,
        now(),
        &tz(),
    );
    let st = with_schedule(s.unwrap());
    let base = ScheduleInput {
        target: t(70),
        time: hhmm("01:30"),
        mode: Mode::Recurring,
        enabled: true,
        days: Days::from_names(["mon", "fri"]),
        first_run: None,
        ready_by: None,
    };
    assert_eq!(
        input(run("target_soc", "90", &st)),
        ScheduleInput {
            target: t(90),
            ..base.clone()
        }
    );
    assert_eq!(
        input(run("start_time", "04:05", &st)),
        ScheduleInput {
            time: hhmm("04:05"),
            ..base.clone()
        }
    );
    assert_eq!(
        input(run("mode", "once", &st)),
        ScheduleInput {
            mode: Mode::Once,
            ..base.clone()
        }
    );
    assert_eq!(
        input(run("schedule_enabled", "OFF", &st)),
        ScheduleInput {
            enabled: false,
            ..base.clone()
        }
    );
}

#[test]
fn numbers_as_home_assistant_sends_them_are_accepted() {
    assert_eq!(input(run("target_soc", "85.0", &idle())).target, t(85));
    assert_eq!(input(run("target_soc", " 100 ", &idle())).target, t(100));
}

#[test]
fn out_of_range_and_malformed_values_are_refused_with_the_apis_reasons() {
    let st = with_schedule(schedule(70, "01:30", Mode::Recurring, true));
    let low = run("target_soc", "5", &st).unwrap_err();
    assert!(low.contains("greater than or equal to 10"), "{low}");
    let high = run("target_soc", "101", &st).unwrap_err();
    assert!(high.contains("less than or equal to 100"), "{high}");
    assert!(
        run("target_soc", "lots", &st)
            .unwrap_err()
            .contains("valid integer")
    );
    let time = run("start_time", "25:00", &st).unwrap_err();
    assert!(time.contains("String should match pattern"), "{time}");
    assert!(run("start_time", "2:30", &st).is_err());
    assert!(
        run("mode", "weekly", &st)
            .unwrap_err()
            .contains("'once' or 'recurring'")
    );
    assert!(
        run("schedule_enabled", "maybe", &st)
            .unwrap_err()
            .contains("valid boolean")
    );
    assert!(
        run("colour", "blue", &st)
            .unwrap_err()
            .contains("no control")
    );
}

#[test]
fn an_iso_start_time_sets_an_exact_first_run_as_the_api_does() {
    let i = input(run("start_time", "2026-01-17T03:00:00-08:00", &idle()));
    assert_eq!(i.time, hhmm("03:00"));
    assert_eq!(i.first_run, Some("2026-01-17T11:00:00Z".parse().unwrap()));
}

#[test]
fn an_exact_first_run_survives_a_change_of_target_or_mode_but_not_of_time() {
    let first: Timestamp = "2026-01-18T10:30:00Z".parse().unwrap();
    let s = Schedule::new(
        t(70),
        hhmm("02:30"),
        Mode::Once,
        true,
        None,
        Some(first),
        now(),
        &tz(),
    )
    .unwrap();
    let st = with_schedule(s);
    assert_eq!(input(run("target_soc", "90", &st)).first_run, Some(first));
    assert_eq!(input(run("mode", "recurring", &st)).first_run, Some(first));
    assert_eq!(input(run("start_time", "03:00", &st)).first_run, None);
    let plain = with_schedule(schedule(70, "02:30", Mode::Once, true));
    assert_eq!(
        input(run("target_soc", "90", &plain)).first_run,
        None,
        "nothing to keep"
    );
}

#[test]
fn a_new_target_during_a_charge_now_goes_to_the_charge() {
    // Charging now leaves a spent once schedule (no next run) beside the session.
    let mut spent = schedule(80, "01:00", Mode::Once, true);
    spent.next_run = None;
    let st = Status {
        schedule: Some(spent),
        session: Some(session(80)),
        ..idle()
    };
    assert_eq!(run("target_soc", "95", &st), Ok(Action::ChargeNow(t(95))));
    assert!(
        run("target_soc", "5", &st)
            .unwrap_err()
            .contains("greater than or equal")
    );
    let no_schedule = Status {
        session: Some(session(80)),
        ..idle()
    };
    assert_eq!(
        run("target_soc", "60", &no_schedule),
        Ok(Action::ChargeNow(t(60)))
    );
}

#[test]
fn a_new_target_during_a_scheduled_charge_changes_the_schedule() {
    let st = Status {
        schedule: Some(schedule(80, "01:00", Mode::Recurring, true)),
        session: Some(session(80)),
        ..idle()
    };
    assert_eq!(input(run("target_soc", "90", &st)).target, t(90));
}

#[test]
fn charge_now_charges_to_the_target_the_number_shows() {
    assert_eq!(
        run("charge_now", "PRESS", &idle()),
        Ok(Action::ChargeNow(t(80)))
    );
    let st = with_schedule(schedule(65, "01:00", Mode::Recurring, false));
    assert_eq!(
        run("charge_now", "PRESS", &st),
        Ok(Action::ChargeNow(t(65)))
    );
    let memory = Remembered {
        target: Some(t(72)),
        ..Remembered::default()
    };
    assert_eq!(
        decide("charge_now", "PRESS", &idle(), &memory, now(), &tz()),
        Ok(Action::ChargeNow(t(72)))
    );
}

#[test]
fn stop_is_the_apis_disable() {
    assert_eq!(run("stop", "PRESS", &idle()), Ok(Action::Stop));
}
