//! The charge schedule: a local time of day (optionally on chosen weekdays) turned into concrete
//! instants in an IANA zone, and the bookkeeping that makes each instant fire at most once.
//!
//! Local times are resolved with the "compatible" rule (RFC 5545, as jiff and Temporal name it):
//! a time that a spring-forward gap skips moves forward by the gap's length, and a time that a
//! fall-back fold repeats takes its earlier instant, so it fires once, on its first pass.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp, civil::Date, tz::TimeZone};

use crate::domain::units::{Days, LocalTime, Mode, TargetSoc};

/// How late a missed occurrence may still fire.
pub const MISSED_GRACE: Duration = Duration::from_secs(10 * 60);

/// [`MISSED_GRACE`] in the signed form that timestamp differences come in.
const MISSED_GRACE_SIGNED: SignedDuration =
    SignedDuration::from_secs(MISSED_GRACE.as_secs() as i64);

/// How many civil dates [`next_occurrence`] tries: the day before `after` (see there), the day of
/// `after`, and seven more, so every weekday is reached at least once after `after`'s date.
const CANDIDATE_DAYS: usize = 9;

/// The next local occurrence of `time` (on a day in `days`, every day if None), strictly after
/// `after`, in zone `tz`.
///
/// `days` filters by the civil date the time belongs to, even when a gap pushes the instant into
/// the next day. Only at the very end of jiff's supported range (year 9999) can no occurrence
/// exist; the answer is then [`Timestamp::MAX`], an instant that never comes.
pub fn next_occurrence(
    time: LocalTime,
    days: Option<Days>,
    after: Timestamp,
    tz: &TimeZone,
) -> Timestamp {
    let after_date = tz.to_datetime(after).date();
    // Start one day early: in a zone whose gap straddles midnight, the previous date's time can
    // resolve to an instant on `after`'s date, and it may still lie ahead of `after`.
    let mut date = after_date.yesterday().unwrap_or(after_date);
    for _ in 0..CANDIDATE_DAYS {
        let allowed = days.is_none_or(|d| d.contains(date.weekday()));
        if let Some(instant) = resolve(date, time, tz).filter(|&i| allowed && i > after) {
            return instant;
        }
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    Timestamp::MAX
}

/// `time` on `date` in `tz`, disambiguated with the "compatible" rule. None only when the result
/// falls outside jiff's timestamp range.
fn resolve(date: Date, time: LocalTime, tz: &TimeZone) -> Option<Timestamp> {
    tz.to_ambiguous_timestamp(date.to_datetime(time.to_civil()))
        .compatible()
        .ok()
}

/// The local time of day (truncated to the minute) of `ts` in `tz`. A schedule created from a
/// first-run instant repeats at this time.
pub fn local_time_of(ts: Timestamp, tz: &TimeZone) -> LocalTime {
    let dt = tz.to_datetime(ts);
    LocalTime::new(dt.hour() as u8, dt.minute() as u8)
        .expect("a civil time's hour and minute are always in range")
}

/// The one charge schedule, as persisted in the state file.
///
/// Invariants kept by the methods below: `next_run` is None whenever `enabled` is false or a
/// `once` schedule is spent, and an armed `next_run` is always later than `last_run`, so no
/// occurrence is handed out twice.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// The SOC to charge to, persisted as a plain integer.
    pub target: TargetSoc,
    /// The local time of day the charge starts, persisted as `"HH:MM"`.
    pub time: LocalTime,
    pub mode: Mode,
    pub enabled: bool,
    /// The weekdays the schedule runs on; None is every day.
    #[serde(default)]
    pub days: Option<Days>,
    /// The armed occurrence; None when disabled or when a `once` schedule has fired.
    #[serde(default)]
    pub next_run: Option<Timestamp>,
    /// The last occurrence that was consumed (fired or skipped as missed).
    #[serde(default)]
    pub last_run: Option<Timestamp>,
    pub created_at: Timestamp,
    /// `fixed` starts at `time`; `cheapest` charges in the cheapest slots between `time` and
    /// `ready_by`.
    #[serde(default, skip_serializing_if = "Strategy::is_fixed")]
    pub strategy: Strategy,
    /// With `cheapest`: the local time the target must be reached by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_by: Option<LocalTime>,
}

/// How a schedule's charge is placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// At the start time, until the target (the old backend's behaviour).
    #[default]
    Fixed,
    /// In the cheapest slots between the start time and `ready_by`.
    Cheapest,
}

impl Strategy {
    pub fn is_fixed(&self) -> bool {
        *self == Strategy::Fixed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fixed => "fixed",
            Strategy::Cheapest => "cheapest",
        }
    }
}

/// What the scheduler must do with a schedule at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing armed (disabled, or a `once` schedule already consumed).
    Idle,
    /// Armed for this instant, still in the future.
    Wait(Timestamp),
    /// The armed occurrence is due: now >= occurrence and now - occurrence < MISSED_GRACE.
    Fire(Timestamp),
    /// The armed occurrence was missed by MISSED_GRACE or more (service down, clock jumped).
    Missed(Timestamp),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("the first run {0} is not in the future")]
    FirstRunInPast(Timestamp),
}

impl Schedule {
    /// A new schedule armed at `first_run` if given (it must be later than `now`), else at the
    /// next occurrence of `time` after `now`. A disabled schedule is not armed, but a `first_run`
    /// in the past is rejected all the same, since the request that carried it is invalid.
    ///
    /// When `first_run` is given, `time` must be [`local_time_of`] that instant in `tz`, so later
    /// occurrences repeat at the same local time of day.
    // The argument list is the request's fields plus the time context; a builder would only
    // spread the same validation over more code.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: TargetSoc,
        time: LocalTime,
        mode: Mode,
        enabled: bool,
        days: Option<Days>,
        first_run: Option<Timestamp>,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Result<Schedule, ScheduleError> {
        if let Some(first) = first_run.filter(|&first| first <= now) {
            return Err(ScheduleError::FirstRunInPast(first));
        }
        let next_run =
            enabled.then(|| first_run.unwrap_or_else(|| next_occurrence(time, days, now, tz)));
        Ok(Schedule {
            target,
            time,
            mode,
            enabled,
            days,
            next_run,
            last_run: None,
            created_at: now,
            strategy: Strategy::Fixed,
            ready_by: None,
        })
    }

    /// What the scheduler must do at `now`.
    pub fn due(&self, now: Timestamp) -> Due {
        let Some(occurrence) = self.next_run.filter(|_| self.enabled) else {
            return Due::Idle;
        };
        if now < occurrence {
            Due::Wait(occurrence)
        } else if now.duration_since(occurrence) < MISSED_GRACE_SIGNED {
            Due::Fire(occurrence)
        } else {
            Due::Missed(occurrence)
        }
    }

    /// Consumes the armed occurrence `occurrence` (fired or skipped): records it in `last_run`;
    /// a recurring schedule re-arms at the next occurrence strictly after both `occurrence` and
    /// `now` (so a long outage skips every missed occurrence at once); a `once` schedule disarms.
    ///
    /// `last_run` never moves backwards, and the next occurrence is always taken after it, so a
    /// wall clock that later steps back cannot re-arm an occurrence already consumed.
    pub fn consume(&mut self, occurrence: Timestamp, now: Timestamp, tz: &TimeZone) {
        let last = self.last_run.map_or(occurrence, |l| l.max(occurrence));
        self.last_run = Some(last);
        self.next_run = (self.enabled && self.mode == Mode::Recurring)
            .then(|| next_occurrence(self.time, self.days, last.max(now), tz));
    }

    /// Re-arms after loading from disk or after a change of timezone.
    ///
    /// The rule:
    /// * disabled, or a spent `once` schedule: disarmed (`next_run` None);
    /// * otherwise the stored `next_run` is kept when it is still an occurrence of `time` on one
    ///   of `days` in `tz` and is later than `last_run`. A stored instant may be in the past: a
    ///   restart within [`MISSED_GRACE`] then still fires it, and a later one reports it missed,
    ///   so the skip is recorded instead of silently dropped;
    /// * otherwise (None, or made for another zone or other rules) it becomes the next
    ///   occurrence strictly after the later of `last_run` and `now - MISSED_GRACE`, so an
    ///   occurrence that passed moments ago still fires and a consumed one never comes back.
    pub fn rearm(&mut self, now: Timestamp, tz: &TimeZone) {
        if !self.enabled || self.is_spent() {
            self.next_run = None;
            return;
        }
        let keep = self.next_run.is_some_and(|stored| {
            self.is_occurrence(stored, tz) && self.last_run.is_none_or(|last| stored > last)
        });
        if keep {
            return;
        }
        let floor = now
            .checked_sub(MISSED_GRACE_SIGNED)
            .unwrap_or(Timestamp::MIN);
        let after = self.last_run.map_or(floor, |last| last.max(floor));
        self.next_run = Some(next_occurrence(self.time, self.days, after, tz));
    }

    /// True for a `once` schedule whose occurrence has been consumed.
    pub fn is_spent(&self) -> bool {
        self.mode == Mode::Once && self.last_run.is_some()
    }

    /// True if `ts` is exactly one of this schedule's occurrences in `tz`: the first occurrence
    /// after the instant just before it is `ts` itself. Asking [`next_occurrence`] keeps gap,
    /// fold and weekday handling in one place.
    fn is_occurrence(&self, ts: Timestamp, tz: &TimeZone) -> bool {
        ts.checked_sub(SignedDuration::from_nanos(1))
            .is_ok_and(|before| next_occurrence(self.time, self.days, before, tz) == ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn ts(rfc3339: &str) -> Timestamp {
        rfc3339.parse().unwrap()
    }

    fn hm(text: &str) -> LocalTime {
        LocalTime::parse_hhmm(text).unwrap()
    }

    fn days(names: &[&str]) -> Option<Days> {
        Some(Days::from_names(names.iter().copied()).unwrap())
    }

    fn next(time: &str, after: &str, tz: &str) -> Timestamp {
        next_occurrence(hm(time), None, ts(after), &zone(tz))
    }

    fn next_on(time: &str, on: &[&str], after: &str, tz: &str) -> Timestamp {
        next_occurrence(hm(time), days(on), ts(after), &zone(tz))
    }

    fn grace() -> SignedDuration {
        SignedDuration::try_from(MISSED_GRACE).unwrap()
    }

    fn schedule(time: &str, mode: Mode, now: &str, tz: &TimeZone) -> Schedule {
        let target = TargetSoc::new(85).unwrap();
        Schedule::new(target, hm(time), mode, true, None, None, ts(now), tz).unwrap()
    }

    // --- next_occurrence: ordinary days ---

    #[test]
    fn a_time_still_ahead_today_runs_today() {
        assert_eq!(
            next("02:30", "2026-06-10T01:00:00-07:00", "America/Los_Angeles"),
            ts("2026-06-10T02:30:00-07:00")
        );
    }

    #[test]
    fn a_time_already_passed_today_runs_tomorrow() {
        assert_eq!(
            next("02:30", "2026-06-10T02:31:00-07:00", "America/Los_Angeles"),
            ts("2026-06-11T02:30:00-07:00")
        );
    }

    #[test]
    fn exactly_at_the_time_the_next_run_is_tomorrow() {
        assert_eq!(
            next("02:30", "2026-06-10T02:30:00-07:00", "America/Los_Angeles"),
            ts("2026-06-11T02:30:00-07:00")
        );
    }

    #[test]
    fn one_nanosecond_before_the_time_the_next_run_is_today() {
        assert_eq!(
            next(
                "02:30",
                "2026-06-10T02:29:59.999999999-07:00",
                "America/Los_Angeles"
            ),
            ts("2026-06-10T02:30:00-07:00")
        );
    }

    #[test]
    fn midnight_runs_at_the_start_of_the_next_day() {
        assert_eq!(
            next("00:00", "2026-06-10T23:59:00+01:00", "Europe/London"),
            ts("2026-06-11T00:00:00+01:00")
        );
        assert_eq!(
            next("00:00", "2026-06-10T00:00:00+01:00", "Europe/London"),
            ts("2026-06-11T00:00:00+01:00")
        );
    }

    #[test]
    fn the_day_after_a_month_end_is_the_first_of_the_next_month() {
        assert_eq!(
            next("02:30", "2026-04-30T03:00:00-07:00", "America/Los_Angeles"),
            ts("2026-05-01T02:30:00-07:00")
        );
    }

    #[test]
    fn the_day_after_new_years_eve_is_january_first_of_the_next_year() {
        assert_eq!(
            next("02:30", "2026-12-31T03:00:00-08:00", "America/Los_Angeles"),
            ts("2027-01-01T02:30:00-08:00")
        );
    }

    #[test]
    fn in_a_leap_year_february_28_is_followed_by_february_29() {
        assert_eq!(
            next("02:30", "2028-02-28T03:00:00-08:00", "America/Los_Angeles"),
            ts("2028-02-29T02:30:00-08:00")
        );
        assert_eq!(
            next("02:30", "2027-02-28T03:00:00-08:00", "America/Los_Angeles"),
            ts("2027-03-01T02:30:00-08:00")
        );
    }

    #[test]
    fn a_tuesday_only_schedule_lands_on_leap_day_2028() {
        // 2028-02-29 is a Tuesday; the previous Tuesday's run has just passed.
        assert_eq!(
            next_on(
                "02:30",
                &["tue"],
                "2028-02-22T03:00:00-08:00",
                "America/Los_Angeles"
            ),
            ts("2028-02-29T02:30:00-08:00")
        );
    }

    #[test]
    fn the_instant_is_computed_in_the_given_zone() {
        let after = "2026-06-10T00:00:00Z";
        assert_eq!(next("02:30", after, "UTC"), ts("2026-06-10T02:30:00Z"));
        assert_eq!(
            next("02:30", after, "Asia/Tokyo"),
            ts("2026-06-11T02:30:00+09:00")
        );
        assert_eq!(
            next("02:30", after, "America/Los_Angeles"),
            ts("2026-06-10T02:30:00-07:00")
        );
    }

    // --- next_occurrence: weekdays ---

    #[test]
    fn weekdays_skip_to_the_next_allowed_day() {
        // 2026-06-12 is a Friday: its run has passed, and the next allowed day is Monday.
        assert_eq!(
            next_on(
                "02:30",
                &["mon", "tue", "wed", "thu", "fri"],
                "2026-06-12T03:00:00-07:00",
                "America/Los_Angeles"
            ),
            ts("2026-06-15T02:30:00-07:00")
        );
    }

    #[test]
    fn an_allowed_day_still_ahead_runs_today() {
        // 2026-06-10 is a Wednesday.
        assert_eq!(
            next_on(
                "02:30",
                &["wed", "sat"],
                "2026-06-10T01:00:00-07:00",
                "America/Los_Angeles"
            ),
            ts("2026-06-10T02:30:00-07:00")
        );
    }

    #[test]
    fn a_single_weekday_wraps_to_the_same_day_next_week() {
        // 2026-06-10 is a Wednesday and its run has just happened.
        assert_eq!(
            next_on(
                "02:30",
                &["wed"],
                "2026-06-10T02:30:00-07:00",
                "America/Los_Angeles"
            ),
            ts("2026-06-17T02:30:00-07:00")
        );
    }

    #[test]
    fn a_sunday_schedule_seen_from_monday_wraps_into_the_next_week() {
        // 2026-06-15 is a Monday.
        assert_eq!(
            next_on(
                "22:00",
                &["sun"],
                "2026-06-15T09:00:00-07:00",
                "America/Los_Angeles"
            ),
            ts("2026-06-21T22:00:00-07:00")
        );
    }

    // --- next_occurrence: DST ---

    #[test]
    fn a_time_in_the_los_angeles_spring_gap_runs_an_hour_later() {
        // 2026-03-08 02:00 PST jumps to 03:00 PDT: 02:30 does not exist that night.
        assert_eq!(
            next("02:30", "2026-03-08T00:00:00-08:00", "America/Los_Angeles"),
            ts("2026-03-08T03:30:00-07:00")
        );
        // And the next night it is an ordinary 02:30 PDT again.
        assert_eq!(
            next("02:30", "2026-03-08T03:30:00-07:00", "America/Los_Angeles"),
            ts("2026-03-09T02:30:00-07:00")
        );
    }

    #[test]
    fn a_time_in_the_los_angeles_fall_fold_runs_on_its_first_pass() {
        // 2026-11-01 02:00 PDT falls back to 01:00 PST: 01:30 happens twice.
        assert_eq!(
            next("01:30", "2026-11-01T00:00:00-07:00", "America/Los_Angeles"),
            ts("2026-11-01T01:30:00-07:00")
        );
    }

    #[test]
    fn after_the_first_pass_of_a_fold_the_repeat_does_not_run_again() {
        // 01:45 PDT, first pass: 01:30 PST is still ahead, but the occurrence was 01:30 PDT.
        assert_eq!(
            next("01:30", "2026-11-01T01:45:00-07:00", "America/Los_Angeles"),
            ts("2026-11-02T01:30:00-08:00")
        );
        // 01:15 PST, second pass, just before the repeated 01:30.
        assert_eq!(
            next("01:30", "2026-11-01T01:15:00-08:00", "America/Los_Angeles"),
            ts("2026-11-02T01:30:00-08:00")
        );
    }

    #[test]
    fn a_time_in_the_london_spring_gap_runs_at_half_past_two_bst() {
        // 2026-03-29 01:00 GMT jumps to 02:00 BST.
        assert_eq!(
            next("01:30", "2026-03-29T00:00:00+00:00", "Europe/London"),
            ts("2026-03-29T02:30:00+01:00")
        );
    }

    #[test]
    fn a_time_in_the_london_autumn_fold_runs_once_in_bst() {
        // 2026-10-25 02:00 BST falls back to 01:00 GMT.
        assert_eq!(
            next("01:30", "2026-10-25T00:00:00+01:00", "Europe/London"),
            ts("2026-10-25T01:30:00+01:00")
        );
        assert_eq!(
            next("01:30", "2026-10-25T01:30:00+01:00", "Europe/London"),
            ts("2026-10-26T01:30:00+00:00")
        );
    }

    #[test]
    fn lord_howe_half_hour_spring_gap_shifts_times_forward_by_thirty_minutes() {
        // 2026-10-04 02:00 +10:30 jumps to 02:30 +11:00.
        let after = "2026-10-04T00:00:00+10:30";
        assert_eq!(
            next("02:00", after, "Australia/Lord_Howe"),
            ts("2026-10-04T02:30:00+11:00")
        );
        assert_eq!(
            next("02:15", after, "Australia/Lord_Howe"),
            ts("2026-10-04T02:45:00+11:00")
        );
        assert_eq!(
            next("02:30", after, "Australia/Lord_Howe"),
            ts("2026-10-04T02:30:00+11:00")
        );
    }

    #[test]
    fn lord_howe_half_hour_autumn_fold_runs_once() {
        // 2026-04-05 02:00 +11:00 falls back to 01:30 +10:30: 01:30..02:00 happens twice.
        let tz = "Australia/Lord_Howe";
        let first = ts("2026-04-05T01:45:00+11:00");
        assert_eq!(next("01:45", "2026-04-05T00:00:00+11:00", tz), first);
        assert_eq!(
            next("01:45", "2026-04-05T01:45:00+11:00", tz),
            ts("2026-04-06T01:45:00+10:30")
        );
    }

    #[test]
    fn weekdays_follow_the_civil_date_across_a_gap() {
        // 2026-03-08 is a Sunday: the shifted 02:30 still belongs to Sunday.
        assert_eq!(
            next_on(
                "02:30",
                &["sun"],
                "2026-03-07T12:00:00-08:00",
                "America/Los_Angeles"
            ),
            ts("2026-03-08T03:30:00-07:00")
        );
    }

    #[test]
    fn a_time_pushed_past_midnight_by_a_gap_still_runs_on_the_following_date() {
        // A zone whose clocks jump from 23:00 to 00:00 on the last Sunday of March (2026-03-29),
        // so that night's 23:30 happens at 00:30 on Monday.
        let tz = TimeZone::posix("XST0XDT,M3.5.0/23,M10.5.0/24").unwrap();
        let monday_0030 = ts("2026-03-30T00:30:00+01:00");
        let after = ts("2026-03-30T00:10:00+01:00");
        assert_eq!(next_occurrence(hm("23:30"), None, after, &tz), monday_0030);
        // It is still Sunday's occurrence as far as weekdays go.
        assert_eq!(
            next_occurrence(hm("23:30"), days(&["sun"]), after, &tz),
            monday_0030
        );
        assert_eq!(
            next_occurrence(hm("23:30"), days(&["mon"]), after, &tz),
            ts("2026-03-30T23:30:00+01:00")
        );
    }

    // --- due ---

    #[test]
    fn due_waits_until_the_occurrence_then_fires_within_the_grace_then_reports_missed() {
        let tz = zone("America/Los_Angeles");
        let s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        let ns = SignedDuration::from_nanos(1);
        let sec = SignedDuration::from_secs(1);

        assert_eq!(s.due(at - ns), Due::Wait(at));
        assert_eq!(s.due(at), Due::Fire(at));
        assert_eq!(s.due(at + grace() - sec), Due::Fire(at));
        assert_eq!(s.due(at + grace() - ns), Due::Fire(at));
        assert_eq!(s.due(at + grace()), Due::Missed(at));
        assert_eq!(s.due(at + SignedDuration::from_hours(30)), Due::Missed(at));
    }

    #[test]
    fn a_disabled_schedule_is_idle_and_unarmed() {
        let tz = zone("Europe/London");
        let now = ts("2026-06-10T01:00:00+01:00");
        let s = Schedule::new(
            TargetSoc::new(80).unwrap(),
            hm("02:30"),
            Mode::Recurring,
            false,
            None,
            None,
            now,
            &tz,
        )
        .unwrap();
        assert_eq!(s.next_run, None);
        assert_eq!(s.due(now), Due::Idle);
        assert_eq!(s.due(ts("2026-06-10T02:30:00+01:00")), Due::Idle);
    }

    // --- new ---

    #[test]
    fn a_new_schedule_is_armed_at_the_next_occurrence_after_now() {
        let tz = zone("America/Los_Angeles");
        let s = schedule("02:30", Mode::Recurring, "2026-06-10T10:00:00-07:00", &tz);
        assert_eq!(s.next_run, Some(ts("2026-06-11T02:30:00-07:00")));
        assert_eq!(s.last_run, None);
        assert_eq!(s.created_at, ts("2026-06-10T10:00:00-07:00"));
        assert!(!s.is_spent());
    }

    #[test]
    fn a_first_run_in_the_future_arms_exactly_that_instant() {
        let tz = zone("America/Los_Angeles");
        let first = ts("2026-06-20T04:15:00-07:00");
        let time = local_time_of(first, &tz);
        assert_eq!(time, hm("04:15"));
        let s = Schedule::new(
            TargetSoc::new(90).unwrap(),
            time,
            Mode::Recurring,
            true,
            None,
            Some(first),
            ts("2026-06-10T10:00:00-07:00"),
            &tz,
        )
        .unwrap();
        assert_eq!(s.next_run, Some(first));
    }

    #[test]
    fn a_first_run_now_or_in_the_past_is_rejected() {
        let tz = zone("America/Los_Angeles");
        let now = ts("2026-06-10T10:00:00-07:00");
        for first in [now, ts("2026-06-10T09:59:00-07:00")] {
            let result = Schedule::new(
                TargetSoc::new(90).unwrap(),
                local_time_of(first, &tz),
                Mode::Once,
                true,
                None,
                Some(first),
                now,
                &tz,
            );
            assert_eq!(result, Err(ScheduleError::FirstRunInPast(first)));
        }
        let message = ScheduleError::FirstRunInPast(ts("2026-06-10T16:59:00Z")).to_string();
        assert_eq!(
            message,
            "the first run 2026-06-10T16:59:00Z is not in the future"
        );
    }

    #[test]
    fn the_local_time_of_an_instant_is_truncated_to_the_minute_in_the_zone() {
        let instant = ts("2026-06-10T09:45:59Z");
        assert_eq!(local_time_of(instant, &zone("UTC")), hm("09:45"));
        assert_eq!(local_time_of(instant, &zone("Asia/Kolkata")), hm("15:15"));
    }

    // --- consume ---

    #[test]
    fn consuming_a_once_schedule_disarms_it_for_good() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Once, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        let now = at + SignedDuration::from_secs(3);
        assert_eq!(s.due(now), Due::Fire(at));

        s.consume(at, now, &tz);

        assert_eq!(s.next_run, None);
        assert_eq!(s.last_run, Some(at));
        assert!(s.is_spent());
        assert_eq!(s.due(now), Due::Idle);
        assert_eq!(s.due(at + SignedDuration::from_hours(24)), Due::Idle);
    }

    #[test]
    fn consuming_a_recurring_schedule_arms_the_next_day() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        let now = at + SignedDuration::from_secs(3);

        s.consume(at, now, &tz);

        let tomorrow = ts("2026-06-11T02:30:00-07:00");
        assert_eq!(s.last_run, Some(at));
        assert_eq!(s.next_run, Some(tomorrow));
        assert!(!s.is_spent());
        assert_eq!(s.due(now), Due::Wait(tomorrow));
    }

    #[test]
    fn consuming_a_long_missed_occurrence_skips_every_other_missed_one() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        let now = ts("2026-06-13T12:00:00-07:00");
        assert_eq!(s.due(now), Due::Missed(at));

        s.consume(at, now, &tz);

        assert_eq!(s.last_run, Some(at));
        assert_eq!(s.next_run, Some(ts("2026-06-14T02:30:00-07:00")));
    }

    #[test]
    fn a_wall_clock_stepping_back_an_hour_after_a_fire_does_not_fire_again() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        s.consume(at, at + SignedDuration::from_secs(1), &tz);

        // The clock steps back to 01:30, then runs forward through 02:30 again.
        let tomorrow = ts("2026-06-11T02:30:00-07:00");
        for now in ["01:30:01", "02:30:00", "02:31:00", "02:39:59"] {
            let now = ts(&format!("2026-06-10T{now}-07:00"));
            assert_eq!(s.due(now), Due::Wait(tomorrow), "at {now}");
        }

        // A restart during the replayed hour keeps the armed run.
        s.rearm(ts("2026-06-10T02:31:00-07:00"), &tz);
        assert_eq!(s.next_run, Some(tomorrow));
        // Even with the armed run lost, re-arming never returns to the consumed one.
        s.next_run = None;
        s.rearm(ts("2026-06-10T02:31:00-07:00"), &tz);
        assert_eq!(s.next_run, Some(tomorrow));
    }

    #[test]
    fn consuming_while_the_clock_reads_earlier_than_the_occurrence_arms_after_the_occurrence() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");

        s.consume(at, ts("2026-06-10T01:00:00-07:00"), &tz);

        assert_eq!(s.next_run, Some(ts("2026-06-11T02:30:00-07:00")));
    }

    #[test]
    fn consuming_the_fold_occurrence_does_not_arm_its_repeat() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("01:30", Mode::Recurring, "2026-11-01T00:00:00-07:00", &tz);
        let at = ts("2026-11-01T01:30:00-07:00");
        assert_eq!(s.next_run, Some(at));

        s.consume(at, at + SignedDuration::from_secs(2), &tz);

        assert_eq!(s.next_run, Some(ts("2026-11-02T01:30:00-08:00")));
    }

    // --- rearm ---

    #[test]
    fn rearm_keeps_a_stored_run_that_is_still_an_occurrence() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");

        // Restarted five minutes after the run was due: it still fires.
        let now = at + SignedDuration::from_mins(5);
        s.rearm(now, &tz);
        assert_eq!(s.next_run, Some(at));
        assert_eq!(s.due(now), Due::Fire(at));

        // Restarted hours later: still kept, and reported as missed so the skip is recorded.
        let later = at + SignedDuration::from_hours(5);
        s.rearm(later, &tz);
        assert_eq!(s.due(later), Due::Missed(at));
    }

    #[test]
    fn rearm_keeps_a_stored_gap_shifted_run() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-03-08T00:00:00-08:00", &tz);
        let shifted = ts("2026-03-08T03:30:00-07:00");
        assert_eq!(s.next_run, Some(shifted));

        s.rearm(ts("2026-03-08T01:00:00-08:00"), &tz);

        assert_eq!(s.next_run, Some(shifted));
    }

    #[test]
    fn rearm_recomputes_the_run_after_a_zone_change() {
        let london = zone("Europe/London");
        let mut s = schedule(
            "02:30",
            Mode::Recurring,
            "2026-06-10T01:00:00+01:00",
            &london,
        );
        assert_eq!(s.next_run, Some(ts("2026-06-10T02:30:00+01:00")));

        s.rearm(ts("2026-06-10T01:00:00+01:00"), &zone("America/New_York"));

        assert_eq!(s.next_run, Some(ts("2026-06-10T02:30:00-04:00")));
    }

    #[test]
    fn rearm_arms_an_unarmed_schedule_and_fires_an_occurrence_missed_moments_ago() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-09T12:00:00-07:00", &tz);
        s.next_run = None;

        s.rearm(ts("2026-06-10T02:35:00-07:00"), &tz);

        let at = ts("2026-06-10T02:30:00-07:00");
        assert_eq!(s.next_run, Some(at));
        assert_eq!(s.due(ts("2026-06-10T02:35:00-07:00")), Due::Fire(at));

        // Past the grace, recomputing moves on to the next day instead.
        s.next_run = None;
        s.rearm(at + grace(), &tz);
        assert_eq!(s.next_run, Some(ts("2026-06-11T02:30:00-07:00")));
    }

    #[test]
    fn rearm_replaces_a_stored_run_already_consumed() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        s.consume(at, at, &tz);
        // A state file where next_run was never advanced past the consumed run.
        s.next_run = Some(at);

        s.rearm(at + SignedDuration::from_mins(1), &tz);

        assert_eq!(s.next_run, Some(ts("2026-06-11T02:30:00-07:00")));
    }

    #[test]
    fn rearm_replaces_a_stored_run_on_a_day_no_longer_allowed() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        // 2026-06-10 is a Wednesday.
        s.days = days(&["fri"]);

        s.rearm(ts("2026-06-10T01:00:00-07:00"), &tz);

        assert_eq!(s.next_run, Some(ts("2026-06-12T02:30:00-07:00")));
    }

    #[test]
    fn rearm_leaves_disabled_and_spent_schedules_unarmed() {
        let tz = zone("America/Los_Angeles");
        let now = ts("2026-06-10T01:00:00-07:00");

        let mut disabled = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        disabled.enabled = false;
        disabled.rearm(now, &tz);
        assert_eq!(disabled.next_run, None);
        assert_eq!(disabled.due(now), Due::Idle);

        let mut spent = schedule("02:30", Mode::Once, "2026-06-10T01:00:00-07:00", &tz);
        let at = ts("2026-06-10T02:30:00-07:00");
        spent.consume(at, at, &tz);
        spent.rearm(at + SignedDuration::from_mins(1), &tz);
        assert_eq!(spent.next_run, None);
        assert!(spent.is_spent());
    }

    #[test]
    fn rearm_arms_a_once_schedule_that_never_ran() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Once, "2026-06-10T01:00:00-07:00", &tz);
        s.next_run = None;

        s.rearm(ts("2026-06-10T03:00:00-07:00"), &tz);

        assert_eq!(s.next_run, Some(ts("2026-06-11T02:30:00-07:00")));
        assert!(!s.is_spent());
    }

    // --- serde ---

    #[test]
    fn a_schedule_survives_a_json_round_trip() {
        let tz = zone("America/Los_Angeles");
        let mut s = schedule("02:30", Mode::Recurring, "2026-06-10T01:00:00-07:00", &tz);
        s.days = days(&["mon", "fri"]);
        s.consume(
            ts("2026-06-10T02:30:00-07:00"),
            ts("2026-06-10T02:30:01-07:00"),
            &tz,
        );

        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "target": 85,
                "time": "02:30",
                "mode": "recurring",
                "enabled": true,
                "days": ["mon", "fri"],
                "next_run": "2026-06-12T09:30:00Z",
                "last_run": "2026-06-10T09:30:00Z",
                "created_at": "2026-06-10T08:00:00Z",
            })
        );
        let back: Schedule = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn missing_optional_fields_load_as_none() {
        let s: Schedule = serde_json::from_str(
            r#"{"target": 50, "time": "00:00", "mode": "once", "enabled": false,
                "created_at": "2026-06-10T08:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(s.target, TargetSoc::new(50).unwrap());
        assert_eq!(s.time, hm("00:00"));
        assert_eq!((s.days, s.next_run, s.last_run), (None, None, None));
    }

    #[test]
    fn out_of_range_targets_and_malformed_times_fail_to_load() {
        let load = |target: &str, time: &str| {
            serde_json::from_str::<Schedule>(&format!(
                r#"{{"target": {target}, "time": {time}, "mode": "once", "enabled": true,
                    "created_at": "2026-06-10T08:00:00Z"}}"#
            ))
        };
        assert!(load("85", r#""02:30""#).is_ok());
        for target in ["9", "101", "256", "-1", "85.5", r#""85""#] {
            assert!(load(target, r#""02:30""#).is_err(), "target {target}");
        }
        for time in [
            r#""24:00""#,
            r#""2:30""#,
            r#""02:60""#,
            r#""02:30:00""#,
            "230",
        ] {
            assert!(load("85", time).is_err(), "time {time}");
        }
        let err = load("101", r#""02:30""#).unwrap_err().to_string();
        assert!(err.contains("target 101 is outside 10..=100"), "{err}");
    }
}
