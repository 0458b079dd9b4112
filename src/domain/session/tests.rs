//! Tests of the charge-session state machine.
use super::*;

use jiff::SignedDuration;
use jiff::civil::date;

const CHARGE_TYPE: &str = "ACChargeType";

fn la() -> TimeZone {
    TimeZone::get("America/Los_Angeles").unwrap()
}

/// A wall-clock instant given as Los Angeles local time.
fn la_time(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> Timestamp {
    date(y, mo, d)
        .at(h, mi, 0, 0)
        .to_zoned_datetime(la())
        .unwrap()
        .timestamp()
}

fn mins(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// 02:30 local on a winter night; the monotonic origin is arbitrary on purpose.
fn t0() -> Now {
    Now {
        wall: la_time(2026, 1, 10, 2, 30),
        mono: Duration::from_secs(5_000),
    }
}

/// Real time passing: both clocks move.
fn after(now: Now, d: Duration) -> Now {
    Now {
        wall: now.wall + d,
        mono: now.mono + d,
    }
}

fn soc(p: u8) -> Option<Soc> {
    Some(Soc::new(p).unwrap())
}

fn target(p: u8) -> TargetSoc {
    TargetSoc::new(p).unwrap()
}

fn hhmm(s: &str) -> LocalTime {
    LocalTime::parse_hhmm(s).unwrap()
}

fn set(setting: &str, value: i64) -> Write {
    Write::new(setting, SettingValue::Int(value))
}

fn set_time(setting: &str, t: &str) -> Write {
    Write::new(setting, SettingValue::Time(hhmm(t)))
}

/// The inverter as found: SOC limit 100, time-only charging, voltage control, an off-peak
/// window 23:00-05:00 in the first slot, the other two off, AC charging off.
fn found() -> BTreeMap<String, SettingValue> {
    let mut m = BTreeMap::new();
    m.insert(SOC_LIMIT.into(), SettingValue::Int(100));
    m.insert(CHARGE_TYPE.into(), SettingValue::Int(0));
    m.insert(BAT_CHG_CONTROL.into(), SettingValue::Int(1));
    m.insert("ACChgStart".into(), SettingValue::Time(hhmm("23:00")));
    m.insert("ACChgEnd".into(), SettingValue::Time(hhmm("05:00")));
    for s in ["ACChgStart1", "ACChgEnd1", "ACChgStart2", "ACChgEnd2"] {
        m.insert(s.into(), SettingValue::Time(MIDNIGHT));
    }
    m.insert(AC_CHARGE.into(), SettingValue::Int(0));
    m
}

/// Hands out writes and answers each with `f` until none is due at `now`.
fn run_writes(s: &mut Session, now: Now, f: impl Fn(&Write) -> WriteResult) -> Vec<Write> {
    let mut sent = Vec::new();
    while let Some(w) = s.next_write(now) {
        assert_eq!(
            s.next_write(now),
            None,
            "a second write while {w:?} is in flight"
        );
        let result = f(&w);
        sent.push(w);
        s.on_write_result(now, result);
        assert!(sent.len() < 50, "runaway writes: {sent:?}");
    }
    sent
}

fn confirm_all(_: &Write) -> WriteResult {
    WriteResult::Confirmed
}

/// The start writes for `found()` at `t0()` with the default eight-hour cutoff.
fn expected_start(target: i64) -> Vec<Write> {
    vec![
        set(SOC_LIMIT, target),
        set(CHARGE_TYPE, 2),
        set(BAT_CHG_CONTROL, 0),
        set_time("ACChgStart", "02:30"),
        set_time("ACChgEnd", "10:30"),
        set(AC_CHARGE, 1),
    ]
}

/// The stop writes that undo `expected_start` on the `found()` inverter.
fn expected_stop() -> Vec<Write> {
    vec![
        set(AC_CHARGE, 0),
        set(SOC_LIMIT, 100),
        set(CHARGE_TYPE, 0),
        set(BAT_CHG_CONTROL, 1),
        set_time("ACChgStart", "23:00"),
        set_time("ACChgEnd", "05:00"),
    ]
}

fn new_session(target_soc: u8, start_soc: u8) -> Session {
    Session::new(
        Origin::Schedule,
        target(target_soc),
        t0(),
        &ChargeParams::default(),
        soc(start_soc),
    )
}

/// A session from 40 % to `target_soc`, started at `t0()` with every write confirmed.
fn charging(target_soc: u8) -> Session {
    let mut s = new_session(target_soc, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    let sent = run_writes(&mut s, t0(), confirm_all);
    let mut expected = expected_start(target_soc.into());
    expected.retain(|w| found().get(&w.setting) != Some(&w.value));
    assert_eq!(sent, expected);
    assert_eq!(s.phase, Phase::Charging);
    s
}

/// Telemetry at 2 kW once a minute, `minutes` after `base`; returns when the last came.
fn each_minute(
    s: &mut Session,
    base: Now,
    minutes: std::ops::RangeInclusive<u64>,
    soc_at: impl Fn(u64) -> u8,
) -> Now {
    let mut now = base;
    for m in minutes {
        now = after(base, mins(m));
        s.on_telemetry(now, soc(soc_at(m)), Some(2000.0));
    }
    now
}

fn assert_stopped_for(s: &Session, reason: StopReason) {
    assert_eq!(s.stop_reason, Some(reason), "detail: {:?}", s.detail);
    assert_eq!(s.phase, Phase::Stopping);
    assert_eq!(s.active_target(), None);
}

// --- charge_windows ---

#[test]
fn a_charge_within_one_day_takes_the_first_window_and_switches_the_others_off() {
    let w = charge_windows(
        la_time(2026, 1, 10, 2, 30),
        la_time(2026, 1, 10, 10, 30),
        &la(),
    );
    let off = (MIDNIGHT, MIDNIGHT);
    assert_eq!(w, [(hhmm("02:30"), hhmm("10:30")), off, off]);
}

#[test]
fn a_charge_crossing_midnight_is_split_at_23_59_and_00_00() {
    let w = charge_windows(
        la_time(2026, 1, 10, 22, 15),
        la_time(2026, 1, 11, 6, 15),
        &la(),
    );
    assert_eq!(
        w,
        [
            (hhmm("22:15"), hhmm("23:59")),
            (MIDNIGHT, hhmm("06:15")),
            (MIDNIGHT, MIDNIGHT)
        ]
    );
}

#[test]
fn a_charge_ending_exactly_at_midnight_needs_only_one_window() {
    let w = charge_windows(
        la_time(2026, 1, 10, 16, 0),
        la_time(2026, 1, 11, 0, 0),
        &la(),
    );
    let off = (MIDNIGHT, MIDNIGHT);
    assert_eq!(w, [(hhmm("16:00"), hhmm("23:59")), off, off]);
}

#[test]
fn windows_are_local_minutes_and_follow_the_spring_forward() {
    // 01:30:45 PST plus eight real hours is 10:30:45 PDT: the clock skips 02:00-03:00.
    let now = la_time(2026, 3, 8, 1, 30) + Duration::from_secs(45);
    let w = charge_windows(now, now + hours(8), &la());
    assert_eq!(w[0], (hhmm("01:30"), hhmm("10:30")));
}

#[test]
fn a_charge_longer_than_the_spring_forward_night_still_ends_on_the_next_day() {
    // 00:10 PST plus 23.5 real hours is 00:40 PDT the next day: later in the day than the
    // start, yet past midnight.
    let now = la_time(2026, 3, 8, 0, 10);
    let w = charge_windows(now, now + Duration::from_secs(23 * 3600 + 1800), &la());
    assert_eq!(w[0], (hhmm("00:10"), hhmm("23:59")));
    assert_eq!(w[1], (MIDNIGHT, hhmm("00:40")));
}

// --- stop_plan ---

fn touched(settings: &[&str]) -> Vec<String> {
    settings.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_stop_plan_switches_ac_charge_off_first_then_restores_every_touched_setting() {
    let plan = stop_plan(
        &touched(&[SOC_LIMIT, CHARGE_TYPE, "ACChgStart", "ACChgEnd", AC_CHARGE]),
        Some(&found()),
        true,
    );
    assert_eq!(
        plan,
        [
            set(AC_CHARGE, 0),
            set(SOC_LIMIT, 100),
            set(CHARGE_TYPE, 0),
            set_time("ACChgStart", "23:00"),
            set_time("ACChgEnd", "05:00"),
        ]
    );
}

#[test]
fn without_a_snapshot_the_stop_plan_switches_the_windows_off_and_leaves_the_rest() {
    let plan = stop_plan(
        &touched(&[SOC_LIMIT, CHARGE_TYPE, "ACChgStart", "ACChgEnd", AC_CHARGE]),
        None,
        true,
    );
    assert_eq!(
        plan,
        [
            set(AC_CHARGE, 0),
            set_time("ACChgStart", "00:00"),
            set_time("ACChgEnd", "00:00"),
        ]
    );
}

#[test]
fn the_stop_plan_turns_ac_charge_back_on_last_when_it_was_on_before() {
    let mut snap = found();
    snap.insert(AC_CHARGE.into(), SettingValue::Int(1));
    // `ACCharge` was skipped (already on), so only `charging` says it is ours to stop.
    let plan = stop_plan(&touched(&["ACChgEnd"]), Some(&snap), true);
    assert_eq!(
        plan,
        [
            set(AC_CHARGE, 0),
            set_time("ACChgEnd", "05:00"),
            set(AC_CHARGE, 1)
        ]
    );
}

#[test]
fn a_stop_that_never_switched_ac_charge_leaves_it_alone() {
    let mut snap = found();
    snap.insert(AC_CHARGE.into(), SettingValue::Int(1));
    assert_eq!(
        stop_plan(&touched(&[SOC_LIMIT]), Some(&snap), false),
        [set(SOC_LIMIT, 100)]
    );
    assert_eq!(stop_plan(&[], Some(&snap), false), []);
}

// --- starting ---

#[test]
fn a_session_writes_soc_limit_charge_type_and_window_then_ac_charge_last() {
    let mut s = new_session(80, 40);
    assert_eq!(s.phase, Phase::Preparing);
    assert_eq!(
        s.next_write(t0()),
        None,
        "nothing is written before the snapshot"
    );
    assert_eq!(s.active_target(), Some(target(80)));

    s.on_snapshot(t0(), Some(found()), &la());
    assert_eq!(s.phase, Phase::Starting);
    // The two unused windows are already off on this inverter: those writes are skipped.
    assert_eq!(run_writes(&mut s, t0(), confirm_all), expected_start(80));
    assert_eq!(s.phase, Phase::Charging);
    assert!(s.is_charging());
    assert_eq!(s.active_target(), Some(target(80)));
    assert_eq!(s.deadline, t0().wall + hours(8));
    assert_eq!(s.next_wall_deadline(), Some(s.deadline));
}

#[test]
fn start_writes_the_inverter_already_has_are_skipped() {
    let mut snap = found();
    snap.insert(SOC_LIMIT.into(), SettingValue::Int(80));
    snap.insert(CHARGE_TYPE.into(), SettingValue::Int(2));
    snap.insert("ACChgStart".into(), SettingValue::Time(hhmm("02:30")));
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(snap), &la());
    assert_eq!(
        run_writes(&mut s, t0(), confirm_all),
        [
            set(BAT_CHG_CONTROL, 0),
            set_time("ACChgEnd", "10:30"),
            set(AC_CHARGE, 1)
        ]
    );
    s.cancel(after(t0(), mins(5)), "stopped by the user");
    // Skipped settings were never changed, so there is nothing to restore for them.
    assert_eq!(
        run_writes(&mut s, after(t0(), mins(5)), confirm_all),
        [
            set(AC_CHARGE, 0),
            set(BAT_CHG_CONTROL, 1),
            set_time("ACChgEnd", "05:00")
        ]
    );
}

#[test]
fn without_a_snapshot_every_start_write_is_made_including_unused_windows_off() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), None, &la());
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(
        sent,
        [
            set(SOC_LIMIT, 80),
            set(CHARGE_TYPE, 2),
            set(BAT_CHG_CONTROL, 0),
            set_time("ACChgStart", "02:30"),
            set_time("ACChgEnd", "10:30"),
            set_time("ACChgStart1", "00:00"),
            set_time("ACChgEnd1", "00:00"),
            set_time("ACChgStart2", "00:00"),
            set_time("ACChgEnd2", "00:00"),
            set(AC_CHARGE, 1),
        ]
    );
}

#[test]
fn a_charge_starting_late_evening_splits_its_window_over_midnight() {
    let evening = Now {
        wall: la_time(2026, 1, 10, 22, 15),
        mono: Duration::from_secs(1),
    };
    let mut s = Session::new(
        Origin::ChargeNow,
        target(90),
        evening,
        &ChargeParams::default(),
        soc(30),
    );
    s.on_snapshot(evening, Some(found()), &la());
    let sent = run_writes(&mut s, evening, confirm_all);
    assert_eq!(
        sent[3..],
        [
            set_time("ACChgStart", "22:15"),
            set_time("ACChgEnd", "23:59"),
            set_time("ACChgEnd1", "06:15"),
            set(AC_CHARGE, 1),
        ],
        "ACChgStart1 is already 00:00 and is skipped"
    );
}

#[test]
fn a_configured_charge_mode_replaces_the_charge_type_and_skips_ubbatchgcontrol() {
    let params = ChargeParams {
        charge_type_setting: "ACChgMode".into(),
        charge_type_value: 4,
        ..ChargeParams::default()
    };
    assert!(!params.settings().iter().any(|s| s == BAT_CHG_CONTROL));
    let plan = start_plan(target(80), t0().wall, t0().wall + hours(8), &params, &la());
    assert_eq!(plan[..2], [set(SOC_LIMIT, 80), set("ACChgMode", 4)]);
    assert_eq!(plan[2], set_time("ACChgStart", "02:30"));
    assert_eq!(plan.last(), Some(&set(AC_CHARGE, 1)));
}

#[test]
fn the_snapshot_covers_every_setting_the_session_may_write() {
    let params = ChargeParams::default();
    let settings = params.settings();
    let plan = start_plan(target(80), t0().wall, t0().wall + hours(8), &params, &la());
    for w in plan {
        assert!(
            settings.contains(&w.setting),
            "{} is not snapshotted",
            w.setting
        );
    }
}

#[test]
fn is_charging_runs_from_handing_out_ac_charge_on_until_ac_charge_off_is_confirmed() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    while let Some(w) = s.next_write(t0()) {
        if w.setting == AC_CHARGE {
            assert!(s.is_charging(), "ACCharge = 1 has been handed out");
            break;
        }
        assert!(!s.is_charging(), "{w:?} is not yet a charge");
        s.on_write_result(t0(), WriteResult::Confirmed);
    }
    s.on_write_result(t0(), WriteResult::Confirmed);
    s.cancel(after(t0(), mins(1)), "stopped by the user");
    assert!(s.is_charging(), "ACCharge = 0 is not written yet");
    assert_eq!(s.next_write(after(t0(), mins(1))), Some(set(AC_CHARGE, 0)));
    assert!(s.is_charging(), "ACCharge = 0 is not confirmed yet");
    s.on_write_result(after(t0(), mins(1)), WriteResult::Confirmed);
    assert!(!s.is_charging(), "restoring settings is not charging");
    assert_eq!(s.phase, Phase::Stopping);
}

// --- stop reasons ---

#[test]
fn charge_stops_when_soc_reaches_the_target_and_restores_the_inverter() {
    let mut s = charging(80);
    let t1 = after(t0(), hours(2));
    s.on_telemetry(t1, soc(79), Some(3000.0));
    assert_eq!(s.phase, Phase::Charging);
    let t2 = after(t1, mins(1));
    s.on_telemetry(t2, soc(80), Some(3000.0));
    assert_stopped_for(&s, StopReason::TargetReached);
    assert_eq!(s.ended_at, Some(t2.wall));
    assert_eq!(run_writes(&mut s, t2, confirm_all), expected_stop());
    assert!(s.is_finished());
    assert!(!s.is_charging());
    assert!(s.restore_failures.is_empty());
    assert_eq!(s.next_write(after(t2, hours(1))), None);
}

#[test]
fn charge_stops_at_the_safety_cutoff() {
    let mut s = charging(80);
    // Alive and slowly rising, so only the cutoff can end it.
    let last = each_minute(&mut s, t0(), 1..=479, |m| 40 + (m / 20) as u8);
    s.on_tick(after(last, Duration::from_secs(59)));
    assert_eq!(s.phase, Phase::Charging, "not yet at 02:30 + 8 h");
    s.on_tick(after(t0(), hours(8)));
    assert_stopped_for(&s, StopReason::Cutoff);
    assert_eq!(s.ended_at, Some(s.deadline));
}

#[test]
fn the_wall_deadline_stops_a_charge_when_the_clock_jumps_forward() {
    let mut s = charging(80);
    let jumped = Now {
        wall: s.deadline,
        mono: t0().mono + mins(2),
    };
    s.on_tick(jumped);
    assert_stopped_for(&s, StopReason::Cutoff);
}

#[test]
fn the_monotonic_cutoff_stops_a_charge_when_the_wall_clock_is_set_back() {
    let mut s = charging(80);
    // Right after the start the wall clock goes two hours back and stays there.
    let set_back = Now {
        wall: t0().wall - SignedDuration::from_hours(2),
        mono: t0().mono,
    };
    each_minute(&mut s, set_back, 1..=479, |m| 40 + (m / 20) as u8);
    assert_eq!(s.phase, Phase::Charging);
    let eight_hours_later = after(set_back, hours(8));
    assert!(eight_hours_later.wall < s.deadline);
    s.on_tick(eight_hours_later);
    assert_stopped_for(&s, StopReason::Cutoff);
}

#[test]
fn a_cancelled_charge_stops_and_restores_the_inverter() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(10));
    s.cancel(t1, "stopped by the user");
    assert_stopped_for(&s, StopReason::Cancelled);
    assert_eq!(s.detail.as_deref(), Some("stopped by the user"));
    assert_eq!(run_writes(&mut s, t1, confirm_all), expected_stop());
    assert!(s.is_finished());
    s.cancel(after(t1, mins(1)), "again");
    assert_eq!(s.stop_reason, Some(StopReason::Cancelled));
    assert_eq!(s.detail.as_deref(), Some("stopped by the user"));
}

#[test]
fn cancelling_while_preparing_ends_without_a_single_write() {
    let mut s = new_session(80, 40);
    s.cancel(t0(), "stopped by the user");
    assert!(s.is_finished());
    assert_eq!(s.stop_reason, Some(StopReason::Cancelled));
    s.on_snapshot(t0(), Some(found()), &la());
    assert_eq!(run_writes(&mut s, t0(), confirm_all), []);
}

#[test]
fn charge_stops_as_stale_after_stale_after_without_a_dongle_message() {
    let mut s = charging(80);
    let t1 = after(t0(), Duration::from_secs(60));
    s.on_dongle_message(t1);
    s.on_tick(after(t1, Duration::from_secs(89)));
    assert_eq!(s.phase, Phase::Charging, "a message 89 s ago is fresh");
    assert_eq!(
        s.next_mono_deadline(),
        Some(t1.mono + Duration::from_secs(90))
    );
    s.on_tick(after(t1, Duration::from_secs(90)));
    assert_stopped_for(&s, StopReason::StaleData);
    assert_eq!(
        run_writes(&mut s, after(t1, Duration::from_secs(90)), confirm_all),
        expected_stop()
    );
}

#[test]
fn charge_stops_as_stale_when_the_dongle_reports_itself_offline() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(1));
    s.on_availability(t1, true);
    assert_eq!(s.phase, Phase::Charging);
    s.on_availability(t1, false);
    assert_stopped_for(&s, StopReason::StaleData);
    assert!(s.detail.as_deref().unwrap().contains("offline"));
}

/// Target 100 from SOC 97 with the given charge power each minute for `minutes`.
fn tapering(target_soc: u8, soc_now: u8, power: impl Fn(u64) -> f64, minutes: u64) -> Session {
    let mut s = charging(target_soc);
    for m in 0..=minutes {
        s.on_telemetry(after(t0(), mins(60 + m)), soc(soc_now), Some(power(m)));
    }
    s
}

#[test]
fn a_full_battery_tapering_to_no_power_stops_as_taper_after_taper_after() {
    let s = tapering(100, 97, |_| 20.0, 9);
    assert_eq!(
        s.phase,
        Phase::Charging,
        "nine minutes of ~0 W is not yet a taper"
    );
    let s = tapering(100, 97, |_| 20.0, 10);
    assert_stopped_for(&s, StopReason::Taper);
}

#[test]
fn near_the_top_a_flat_soc_ends_as_taper_and_not_as_a_stall() {
    // SOC 99 from minute 60: the power falls below 50 W only 25 minutes later, by when
    // the SOC has been flat for longer than a stall takes.
    let power = |m: u64| {
        if m < 25 {
            400.0 - 14.0 * m as f64
        } else {
            20.0
        }
    };
    let s = tapering(100, 99, power, 34);
    assert_eq!(s.phase, Phase::Charging, "{:?}", s.detail);
    let s = tapering(100, 99, power, 35);
    assert_stopped_for(&s, StopReason::Taper);
    // Below the taper zone a flat SOC is still a stall.
    let s = tapering(100, 96, |_| 2000.0, 30);
    assert_stopped_for(&s, StopReason::Stalled);
}

#[test]
fn taper_needs_soc_97_and_low_power_throughout() {
    let s = tapering(98, 96, |_| 0.0, 15);
    assert_eq!(s.phase, Phase::Charging, "SOC below 97");
    let s = tapering(100, 97, |m| if m == 5 { 800.0 } else { 0.0 }, 14);
    assert_eq!(s.phase, Phase::Charging, "power came back at minute 5");
    let s = tapering(100, 97, |m| if m == 5 { 800.0 } else { 0.0 }, 16);
    assert_stopped_for(&s, StopReason::Taper);
}

#[test]
fn charge_stops_as_stalled_when_soc_does_not_rise_for_stall_after() {
    let mut s = charging(80);
    each_minute(&mut s, t0(), 1..=29, |_| 40);
    assert_eq!(s.phase, Phase::Charging);
    // Only the monotonic deadline may wake the engine: no telemetry at minute 30.
    s.on_dongle_message(after(t0(), mins(29)));
    s.on_tick(after(t0(), mins(30)));
    assert_stopped_for(&s, StopReason::Stalled);
    assert!(s.detail.as_deref().unwrap().contains("40%"));
}

#[test]
fn a_rising_soc_restarts_the_stall_clock_but_a_dip_and_recovery_does_not() {
    let mut s = charging(80);
    let soc_at = |m| match m {
        0..20 => 40,
        20..25 => 41,
        25..35 => 39,
        _ => 41,
    };
    each_minute(&mut s, t0(), 1..=49, soc_at);
    assert_eq!(s.phase, Phase::Charging, "41 % was first seen at minute 20");
    each_minute(&mut s, t0(), 50..=50, soc_at);
    assert_stopped_for(&s, StopReason::Stalled);
}

#[test]
fn a_failed_start_write_rolls_back_only_what_may_have_changed() {
    for (failure, may_have_applied) in [
        (WriteResult::Rejected("status: fail".into()), false),
        (WriteResult::Unknown("no reply in 15 s".into()), true),
        (WriteResult::NotSent("broker down".into()), false),
    ] {
        let mut s = new_session(80, 40);
        s.on_snapshot(t0(), Some(found()), &la());
        let window_start = set_time("ACChgStart", "02:30");
        let sent = run_writes(&mut s, t0(), |w| {
            if *w == window_start {
                failure.clone()
            } else {
                WriteResult::Confirmed
            }
        });
        let mut expected = vec![
            set(SOC_LIMIT, 80),
            set(CHARGE_TYPE, 2),
            set(BAT_CHG_CONTROL, 0),
            window_start.clone(),
            set(SOC_LIMIT, 100),
            set(CHARGE_TYPE, 0),
            set(BAT_CHG_CONTROL, 1),
        ];
        // A write that timed out may still apply, so it is restored too; one refused or
        // never sent left the setting as it was.
        if may_have_applied {
            expected.push(set_time("ACChgStart", "23:00"));
        }
        assert_eq!(sent, expected, "{failure:?}");
        assert_eq!(s.stop_reason, Some(StopReason::WriteFailed));
        assert!(s.detail.as_deref().unwrap().contains("ACChgStart"));
        assert!(s.is_finished());
        assert!(!s.is_charging());
    }
}

#[test]
fn an_unanswered_ac_charge_on_is_rolled_back_with_ac_charge_off_first() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    let sent = run_writes(&mut s, t0(), |w| {
        if *w == set(AC_CHARGE, 1) {
            WriteResult::Unknown("no reply in 15 s".into())
        } else {
            WriteResult::Confirmed
        }
    });
    assert_eq!(sent[..6], expected_start(80));
    assert_eq!(sent[6..], expected_stop());
    assert_eq!(s.stop_reason, Some(StopReason::WriteFailed));
}

// --- external override ---

#[test]
fn another_app_switching_ac_charge_off_ends_the_session_and_the_rest_is_put_back() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(20));
    s.on_setting_changed(t1, "accharge", Some(SettingValue::Int(0)));
    assert_stopped_for(&s, StopReason::ExternalOverride);
    assert!(
        s.detail
            .as_deref()
            .unwrap()
            .starts_with("ACCharge was changed to 0")
    );
    assert_eq!(s.ended_at, Some(t1.wall));
    assert!(!s.is_charging());
    assert_eq!(
        run_writes(&mut s, t1, confirm_all),
        expected_stop()[1..],
        "no ACCharge write of its own, the other settings as found"
    );
    assert!(s.is_finished());
}

#[test]
fn another_app_moving_our_window_keeps_its_window_and_gets_the_rest_back() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(20));
    s.on_setting_changed(t1, "ACChgEnd", Some(SettingValue::Time(hhmm("06:00"))));
    assert_eq!(s.stop_reason, Some(StopReason::ExternalOverride));
    assert!(s.detail.as_deref().unwrap().contains("06:00"));
    assert_eq!(
        run_writes(&mut s, t1, confirm_all),
        [
            set(SOC_LIMIT, 100),
            set(CHARGE_TYPE, 0),
            set(BAT_CHG_CONTROL, 1)
        ],
        "neither end of the moved window, nor ACCharge"
    );
}

#[test]
fn switching_off_an_ac_charge_that_was_already_on_is_an_override_too() {
    let mut snap = found();
    snap.insert(AC_CHARGE.into(), SettingValue::Int(1));
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(snap), &la());
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(sent.last(), Some(&set_time("ACChgEnd", "10:30")));
    assert!(s.is_charging());
    s.on_setting_changed(after(t0(), mins(5)), AC_CHARGE, Some(SettingValue::Int(0)));
    assert_eq!(s.stop_reason, Some(StopReason::ExternalOverride));
    let restore = run_writes(&mut s, after(t0(), mins(5)), confirm_all);
    assert_eq!(restore, expected_stop()[1..]);
    assert!(
        restore.iter().all(|w| w.setting != AC_CHARGE),
        "not switched back on against the other app"
    );
}

#[test]
fn an_override_during_the_start_puts_back_what_the_start_wrote() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    for _ in 0..2 {
        s.next_write(t0()).unwrap();
        s.on_write_result(t0(), WriteResult::Confirmed);
    }
    // The charge-type write is done; another app sets it back while the next is in flight.
    assert_eq!(s.next_write(t0()), Some(set(BAT_CHG_CONTROL, 0)));
    s.on_setting_changed(t0(), CHARGE_TYPE, Some(SettingValue::Int(0)));
    assert_eq!(s.stop_reason, Some(StopReason::ExternalOverride));
    assert_eq!(
        run_writes(&mut s, t0(), confirm_all),
        [set(SOC_LIMIT, 100), set(BAT_CHG_CONTROL, 1)]
    );
    assert!(s.is_finished());
}

#[test]
fn echoes_of_the_sessions_own_writes_are_not_an_override() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    while let Some(w) = s.next_write(t0()) {
        // The echo may come before the reply (in flight) or after it.
        s.on_setting_changed(t0(), &w.setting, Some(w.value));
        s.on_write_result(t0(), WriteResult::Confirmed);
        s.on_setting_changed(t0(), &w.setting, Some(w.value));
    }
    assert_eq!(s.phase, Phase::Charging);
    // A new target's SOC-limit write, echoed after its reply.
    let t1 = after(t0(), mins(3));
    s.set_target(t1, target(90));
    let sent = run_writes(&mut s, t1, confirm_all);
    assert_eq!(sent, [set(SOC_LIMIT, 90)]);
    s.on_setting_changed(t1, SOC_LIMIT, Some(SettingValue::Int(90)));
    assert_eq!(s.phase, Phase::Charging);
    assert_eq!(s.stop_reason, None);
}

#[test]
fn setting_changes_during_the_stop_are_the_restore_and_not_an_override() {
    let mut s = charging(80);
    s.cancel(after(t0(), mins(1)), "stopped by the user");
    s.on_setting_changed(after(t0(), mins(1)), AC_CHARGE, Some(SettingValue::Int(0)));
    assert_eq!(s.stop_reason, Some(StopReason::Cancelled));
    assert_eq!(
        run_writes(&mut s, after(t0(), mins(1)), confirm_all),
        expected_stop()
    );
}

// --- the stop's retries ---

#[test]
fn a_failing_ac_charge_off_is_retried_every_interval_and_never_abandoned() {
    let mut s = charging(80);
    let mut now = after(t0(), mins(10));
    s.cancel(now, "stopped by the user");
    for _ in 0..10 {
        let sent = run_writes(&mut s, now, |_| WriteResult::NotSent("broker down".into()));
        assert_eq!(sent, [set(AC_CHARGE, 0)]);
        assert!(s.is_charging());
        assert_eq!(s.next_mono_deadline(), Some(now.mono + STOP_RETRY_INTERVAL));
        assert_eq!(
            s.next_write(after(now, STOP_RETRY_INTERVAL - Duration::from_secs(1))),
            None,
            "a retry waits the full interval"
        );
        now = after(now, STOP_RETRY_INTERVAL);
    }
    assert_eq!(run_writes(&mut s, now, confirm_all), expected_stop());
    assert!(s.restore_failures.is_empty());
    assert!(!s.is_charging());
    assert!(s.is_finished());
}

#[test]
fn an_unknown_ac_charge_off_counts_as_sent_and_the_restore_goes_on() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(10));
    s.cancel(t1, "stopped by the user");
    let sent = run_writes(&mut s, t1, |w| {
        if *w == set(AC_CHARGE, 0) {
            WriteResult::Unknown("no reply in 15 s".into())
        } else {
            WriteResult::Confirmed
        }
    });
    assert_eq!(sent, expected_stop());
    assert!(!s.is_charging());
    assert!(s.detail.as_deref().unwrap().contains("unknown"));
    assert!(s.is_finished());
}

#[test]
fn a_restore_write_that_keeps_failing_is_given_up_after_a_few_tries_and_recorded() {
    let mut s = charging(80);
    let mut now = after(t0(), mins(10));
    s.cancel(now, "stopped by the user");
    let refuse_soc_limit = |w: &Write| {
        if w.setting == SOC_LIMIT {
            WriteResult::Rejected("status: fail".into())
        } else {
            WriteResult::Confirmed
        }
    };
    let mut sent = run_writes(&mut s, now, refuse_soc_limit);
    for _ in 1..RESTORE_ATTEMPTS {
        now = after(now, STOP_RETRY_INTERVAL);
        sent.extend(run_writes(&mut s, now, refuse_soc_limit));
    }
    let mut expected = expected_stop();
    for _ in 1..RESTORE_ATTEMPTS {
        expected.insert(1, set(SOC_LIMIT, 100));
    }
    assert_eq!(sent, expected);
    assert!(s.is_finished());
    assert_eq!(s.restore_failures.len(), 1);
    assert!(s.restore_failures[0].starts_with("ACChgSOCLimit = 100"));
}

// --- a new target ---

#[test]
fn a_new_target_already_reached_while_charging_stops_at_once() {
    let mut s = charging(90);
    let t1 = after(t0(), hours(1));
    s.on_telemetry(t1, soc(72), Some(3000.0));
    s.set_target(t1, target(70));
    assert_stopped_for(&s, StopReason::TargetReached);
    assert_eq!(s.target, target(70));
    let sent = run_writes(&mut s, t1, confirm_all);
    assert_eq!(
        sent,
        expected_stop(),
        "no SOC-limit write for the new target"
    );
}

#[test]
fn a_new_target_already_reached_while_starting_rolls_back_at_once() {
    let mut s = new_session(80, 72);
    s.on_snapshot(t0(), Some(found()), &la());
    assert_eq!(s.next_write(t0()), Some(set(SOC_LIMIT, 80)));
    s.on_write_result(t0(), WriteResult::Confirmed);
    s.set_target(t0(), target(70));
    assert_stopped_for(&s, StopReason::TargetReached);
    assert_eq!(run_writes(&mut s, t0(), confirm_all), [set(SOC_LIMIT, 100)]);

    let mut s = new_session(80, 72);
    s.set_target(t0(), target(70));
    assert!(s.is_finished(), "nothing was written while preparing");
    assert_eq!(s.stop_reason, Some(StopReason::TargetReached));
}

#[test]
fn a_new_target_above_soc_moves_the_inverters_soc_limit_and_keeps_charging() {
    let mut s = charging(80);
    let t1 = after(t0(), hours(1));
    s.on_telemetry(t1, soc(60), Some(3000.0));
    s.set_target(t1, target(95));
    assert_eq!(s.phase, Phase::Charging);
    assert_eq!(s.active_target(), Some(target(95)));
    assert_eq!(run_writes(&mut s, t1, confirm_all), [set(SOC_LIMIT, 95)]);
    s.on_telemetry(after(t1, mins(30)), soc(80), Some(3000.0));
    assert_eq!(s.phase, Phase::Charging, "80 % is no longer the target");
    s.on_telemetry(after(t1, mins(60)), soc(95), Some(3000.0));
    assert_stopped_for(&s, StopReason::TargetReached);
    assert_eq!(
        run_writes(&mut s, after(t1, mins(60)), confirm_all),
        expected_stop()
    );
}

#[test]
fn a_new_target_before_the_soc_limit_write_goes_out_changes_that_write() {
    let mut s = new_session(80, 40);
    s.set_target(t0(), target(85));
    s.on_snapshot(t0(), Some(found()), &la());
    assert_eq!(s.next_write(t0()), Some(set(SOC_LIMIT, 85)));
    s.on_write_result(t0(), WriteResult::Confirmed);
    assert_eq!(s.next_write(t0()), Some(set(CHARGE_TYPE, 2)));
    s.set_target(t0(), target(75));
    s.on_write_result(t0(), WriteResult::Confirmed);
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(sent[..3], expected_start(75)[2..5]);
    assert_eq!(sent[3..], [set(AC_CHARGE, 1), set(SOC_LIMIT, 75)]);
}

#[test]
fn a_new_target_while_the_soc_limit_write_is_in_flight_is_written_after_the_start() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    assert_eq!(s.next_write(t0()), Some(set(SOC_LIMIT, 80)));
    s.set_target(t0(), target(90));
    s.on_write_result(t0(), WriteResult::Confirmed);
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(sent.last(), Some(&set(SOC_LIMIT, 90)));
    assert_eq!(s.phase, Phase::Charging);
}

#[test]
fn a_new_target_is_written_even_when_the_old_one_matched_the_inverter() {
    let mut snap = found();
    snap.insert(SOC_LIMIT.into(), SettingValue::Int(80));
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(snap), &la());
    assert_eq!(s.next_write(t0()), Some(set(CHARGE_TYPE, 2)));
    s.set_target(t0(), target(90));
    s.on_write_result(t0(), WriteResult::Confirmed);
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(sent.last(), Some(&set(SOC_LIMIT, 90)));
    s.cancel(after(t0(), mins(1)), "stopped by the user");
    let stop = run_writes(&mut s, after(t0(), mins(1)), confirm_all);
    assert!(stop.contains(&set(SOC_LIMIT, 80)), "restored: {stop:?}");
}

#[test]
fn a_target_reached_while_the_start_writes_go_out_stops_when_they_are_done() {
    let mut s = new_session(80, 75);
    s.on_snapshot(t0(), Some(found()), &la());
    assert!(s.next_write(t0()).is_some());
    s.on_telemetry(t0(), soc(80), None);
    s.on_write_result(t0(), WriteResult::Confirmed);
    let sent = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(s.stop_reason, Some(StopReason::TargetReached));
    assert_eq!(sent[..5], expected_start(80)[1..]);
    assert_eq!(sent[5..], expected_stop());
}

// --- restart ---

fn restarted(s: &Session, now: Now) -> Session {
    let json = serde_json::to_string(s).unwrap();
    let mut back: Session = serde_json::from_str(&json).unwrap();
    back.resume(now, &ChargeParams::default());
    back
}

/// The process comes back with a fresh monotonic origin.
fn after_restart(wall: Timestamp) -> Now {
    Now {
        wall,
        mono: Duration::from_secs(3),
    }
}

#[test]
fn a_session_mid_charge_survives_a_serde_round_trip() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(30));
    s.on_telemetry(t1, soc(50), Some(2000.0));
    s.on_telemetry(after(t1, mins(30)), soc(60), Some(2000.0));
    s.set_target(after(t1, mins(30)), target(85));
    assert_eq!(s.next_write(after(t1, mins(30))), Some(set(SOC_LIMIT, 85)));

    let json = serde_json::to_value(&s).unwrap();
    assert!(
        json.get("rt").is_none(),
        "runtime tracking is not persisted"
    );
    assert_eq!(json["phase"], "charging");
    assert_eq!(json["target"], 85);
    assert_eq!(json["in_flight"]["value"], 85);
    assert_eq!(json["snapshot"]["ACChgStart"], "23:00");
    let back: Session = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
    assert_eq!(back.energy_wh, Some(1000.0));
    assert_eq!(back.deadline, s.deadline);
}

#[test]
fn a_resumed_session_rebuilds_its_watch_from_the_restart() {
    let mut s = charging(80);
    s.on_telemetry(after(t0(), hours(1)), soc(60), Some(2000.0));
    let now = after_restart(t0().wall + hours(2));
    let mut back = restarted(&s, now);
    assert_eq!(back.phase, Phase::Charging);
    // Stale counts from the restart, not from the last message before it.
    back.on_tick(after(now, Duration::from_secs(89)));
    assert_eq!(back.phase, Phase::Charging);
    // Stall counts from the restart at the persisted SOC.
    each_minute(&mut back, now, 1..=29, |_| 60);
    assert_eq!(back.phase, Phase::Charging);
    each_minute(&mut back, now, 30..=30, |_| 60);
    assert_stopped_for(&back, StopReason::Stalled);
}

#[test]
fn a_resumed_session_keeps_the_persisted_deadline() {
    let s = charging(80);
    let now = after_restart(t0().wall + hours(7));
    let mut back = restarted(&s, now);
    assert_eq!(back.deadline, s.deadline);
    assert_eq!(back.next_wall_deadline(), Some(s.deadline));
    back.on_telemetry(after(now, mins(59)), soc(70), Some(2000.0));
    assert_eq!(back.phase, Phase::Charging);
    back.on_tick(after(now, hours(1)));
    assert_stopped_for(&back, StopReason::Cutoff);
}

#[test]
fn a_session_resumed_after_its_deadline_stops_at_once() {
    let s = charging(80);
    let mut back = restarted(&s, after_restart(t0().wall + hours(9)));
    assert_stopped_for(&back, StopReason::Cutoff);
    assert_eq!(
        run_writes(&mut back, after_restart(t0().wall + hours(9)), confirm_all),
        expected_stop()
    );
}

#[test]
fn a_resumed_session_sends_the_write_that_was_in_flight_again() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    for _ in 0..3 {
        s.next_write(t0()).unwrap();
        s.on_write_result(t0(), WriteResult::Confirmed);
    }
    assert_eq!(s.next_write(t0()), Some(set_time("ACChgStart", "02:30")));
    let now = after_restart(t0().wall + mins(1));
    let mut back = restarted(&s, now);
    assert_eq!(back.in_flight, None);
    assert_eq!(
        run_writes(&mut back, now, confirm_all),
        expected_start(80)[3..]
    );

    // The same during the stop: the unanswered ACCharge = 0 goes out first.
    let mut s = charging(80);
    s.cancel(after(t0(), mins(5)), "stopped by the user");
    assert_eq!(s.next_write(after(t0(), mins(5))), Some(set(AC_CHARGE, 0)));
    let mut back = restarted(&s, now);
    assert!(back.is_charging());
    assert_eq!(run_writes(&mut back, now, confirm_all), expected_stop());
}

// --- bookkeeping ---

#[test]
fn energy_is_counted_from_charge_power_while_charging() {
    let mut s = new_session(80, 40);
    s.on_telemetry(t0(), soc(40), Some(5000.0));
    assert_eq!(s.energy_wh, None, "nothing counts before the charge");
    s.on_snapshot(t0(), Some(found()), &la());
    run_writes(&mut s, t0(), confirm_all);
    s.on_telemetry(t0(), soc(40), Some(2000.0));
    s.on_telemetry(after(t0(), mins(30)), soc(50), Some(-300.0));
    s.on_telemetry(after(t0(), mins(60)), soc(50), Some(0.0));
    // 30 min at 2 kW, then 30 min discharging, which adds nothing.
    let wh = s.energy_wh.unwrap();
    assert!((wh - 1000.0).abs() < 1e-6, "{wh}");
}

#[test]
fn the_session_id_is_its_start_time_in_utc() {
    let s = new_session(80, 40);
    assert_eq!(s.id, "20260110T103000.000Z");
    assert_eq!(s.started_at, t0().wall);
    assert_eq!(s.start_soc, soc(40));
}

#[test]
fn the_next_monotonic_deadline_is_the_earliest_rule_while_charging() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(20));
    s.on_telemetry(t1, soc(45), Some(1000.0));
    // Stale (t1 + 90 s) comes before stall (t1 + 30 min) and the cutoff (t0 + 8 h).
    assert_eq!(
        s.next_mono_deadline(),
        Some(t1.mono + Duration::from_secs(90))
    );
    s.cancel(t1, "stopped by the user");
    assert_eq!(s.next_wall_deadline(), None);
    assert_eq!(
        s.next_mono_deadline(),
        None,
        "the stop waits on write replies"
    );
}

// --- what needs restoring ---

#[test]
fn a_refused_ac_charge_on_needs_no_ac_charge_off() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    let sent = run_writes(&mut s, t0(), |w| {
        if *w == set(AC_CHARGE, 1) {
            WriteResult::Rejected("status: fail".into())
        } else {
            WriteResult::Confirmed
        }
    });
    assert_eq!(sent[..6], expected_start(80));
    assert_eq!(
        sent[6..],
        expected_stop()[1..],
        "the refused switch was never on: only the other settings go back"
    );
    assert!(s.is_finished());
    assert!(!s.is_charging());
}

#[test]
fn a_first_write_that_was_refused_leaves_nothing_to_restore() {
    let mut s = new_session(80, 40);
    s.on_snapshot(t0(), Some(found()), &la());
    let sent = run_writes(&mut s, t0(), |_| WriteResult::Rejected("no".into()));
    assert_eq!(sent, [set(SOC_LIMIT, 80)]);
    assert!(s.is_finished(), "done at once, free for the next charge");
    assert_eq!(s.stop_reason, Some(StopReason::WriteFailed));
}

#[test]
fn has_stopped_charging_once_ac_charge_off_is_confirmed_and_not_before() {
    let mut s = charging(80);
    assert!(!s.has_stopped_charging());
    let t1 = after(t0(), mins(30));
    s.cancel(t1, "stopped by the user");
    assert!(!s.has_stopped_charging(), "ACCharge = 0 not written yet");
    assert_eq!(s.next_write(t1), Some(set(AC_CHARGE, 0)));
    assert!(!s.has_stopped_charging(), "in flight");
    s.on_write_result(t1, WriteResult::Confirmed);
    assert!(s.has_stopped_charging());
    assert_eq!(s.phase, Phase::Stopping, "the restore is still to come");
}

// --- handing a restore over to the next charge ---

#[test]
fn a_restore_is_handed_over_only_between_writes_and_only_once_charging_has_stopped() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(30));
    assert_eq!(s.hand_over(t1), None, "still charging");
    s.cancel(t1, "stopped by the user");
    s.next_write(t1).unwrap();
    s.on_write_result(t1, WriteResult::Confirmed);
    assert_eq!(s.next_write(t1), Some(set(SOC_LIMIT, 100)));
    assert_eq!(s.hand_over(t1), None, "a write is in flight");
    s.on_write_result(t1, WriteResult::Rejected("busy".into()));
    let pending = s.hand_over(t1).expect("between writes");
    let expected: BTreeMap<String, SettingValue> = expected_stop()[1..]
        .iter()
        .map(|w| (w.setting.clone(), w.value))
        .collect();
    assert_eq!(pending, expected);
    assert!(s.is_finished());
    assert!(
        s.detail
            .as_deref()
            .unwrap()
            .contains("restores them at its end")
    );
    assert_eq!(s.next_write(t1), None);
}

#[test]
fn the_next_charge_restores_what_it_inherited_and_not_what_it_found() {
    // The first charge set the SOC limit to 80 and could not put it back to 100.
    let mut inherited = BTreeMap::new();
    inherited.insert(SOC_LIMIT.to_string(), SettingValue::Int(100));
    let mut now_found = found();
    now_found.insert(SOC_LIMIT.into(), SettingValue::Int(80));

    let mut s = new_session(90, 40);
    s.inherit(inherited);
    s.on_snapshot(t0(), Some(now_found), &la());
    let start = run_writes(&mut s, t0(), confirm_all);
    assert_eq!(start, expected_start(90));
    s.cancel(after(t0(), mins(5)), "done");
    let stop = run_writes(&mut s, after(t0(), mins(5)), confirm_all);
    assert_eq!(
        stop,
        expected_stop(),
        "back to 100, as before the first charge"
    );
}

#[test]
fn an_inherited_setting_the_new_charge_does_not_write_is_still_restored() {
    let mut inherited = BTreeMap::new();
    inherited.insert("ACChgStart1".to_string(), SettingValue::Time(hhmm("01:00")));
    let mut s = new_session(80, 40);
    s.inherit(inherited);
    s.on_snapshot(t0(), Some(found()), &la());
    run_writes(&mut s, t0(), confirm_all);
    s.cancel(after(t0(), mins(5)), "done");
    let stop = run_writes(&mut s, after(t0(), mins(5)), confirm_all);
    assert!(stop.contains(&set_time("ACChgStart1", "01:00")), "{stop:?}");
}

// --- overrides seen in polled reports ---

#[test]
fn a_polled_report_of_a_setting_just_written_is_not_an_override() {
    let mut s = charging(80);
    // A hold bank read before ACCharge = 1 applied, published a moment after.
    let soon = after(t0(), Duration::from_secs(5));
    s.on_setting_reported(soon, AC_CHARGE, Some(SettingValue::Int(0)), Report::Polled);
    assert_eq!(s.phase, Phase::Charging);
    // The same report well after the write is the inverter's word.
    let later = after(t0(), ECHO_GRACE + Duration::from_secs(1));
    s.on_setting_reported(later, AC_CHARGE, Some(SettingValue::Int(0)), Report::Polled);
    assert_stopped_for_override(&s);
}

fn assert_stopped_for_override(s: &Session) {
    assert_eq!(
        s.stop_reason,
        Some(StopReason::ExternalOverride),
        "{:?}",
        s.detail
    );
    assert!(!s.is_charging());
}

#[test]
fn an_unreadable_polled_value_is_not_an_override() {
    let mut s = charging(80);
    s.on_setting_reported(after(t0(), mins(5)), AC_CHARGE, None, Report::Polled);
    assert_eq!(s.phase, Phase::Charging);
}

#[test]
fn another_app_changing_the_soc_limit_is_an_override() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(10));
    s.on_setting_reported(t1, SOC_LIMIT, Some(SettingValue::Int(95)), Report::Polled);
    assert_stopped_for_override(&s);
    let restore = run_writes(&mut s, t1, confirm_all);
    assert!(
        restore.iter().all(|w| w.setting != SOC_LIMIT),
        "their SOC limit stays: {restore:?}"
    );
}

#[test]
fn the_old_soc_limit_reported_after_a_target_change_is_not_an_override() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(10));
    s.set_target(t1, target(90));
    assert_eq!(run_writes(&mut s, t1, confirm_all), [set(SOC_LIMIT, 90)]);
    let t2 = after(t1, mins(2));
    // A late echo of the first limit, and the new one: both the session's own.
    s.on_setting_reported(
        t2,
        SOC_LIMIT,
        Some(SettingValue::Int(80)),
        Report::Confirmed,
    );
    s.on_setting_reported(t2, SOC_LIMIT, Some(SettingValue::Int(90)), Report::Polled);
    assert_eq!(s.phase, Phase::Charging);
    // But a limit the session never wrote is someone else's.
    s.on_setting_reported(t2, SOC_LIMIT, Some(SettingValue::Int(70)), Report::Polled);
    assert_stopped_for_override(&s);
}

#[test]
fn a_retry_in_flight_leaves_no_deadline_in_the_past() {
    let mut s = charging(80);
    let t1 = after(t0(), mins(10));
    s.cancel(t1, "stopped by the user");
    s.next_write(t1).unwrap();
    s.on_write_result(t1, WriteResult::Rejected("busy".into()));
    let retry = after(t1, STOP_RETRY_INTERVAL);
    assert_eq!(s.next_mono_deadline(), Some(retry.mono));
    assert_eq!(s.next_write(retry), Some(set(AC_CHARGE, 0)));
    // While the retry waits for its answer, nothing is due before the next rule's deadline.
    let later = after(retry, Duration::from_secs(5));
    assert!(
        s.next_mono_deadline().is_none_or(|d| d > later.mono),
        "{:?}",
        s.next_mono_deadline()
    );
}
