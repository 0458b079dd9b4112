//! Tests of the engine core's decisions, driven input by input with no IO.

use super::*;

use crate::domain::event::{Event, EventKind};
use crate::domain::session::SOC_LIMIT;

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);

fn tz() -> TimeZone {
    TimeZone::get("America/Los_Angeles").unwrap()
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

/// The inverter as found: everything the start writes differs, AC charging off.
fn found() -> Settings {
    let mut m = BTreeMap::new();
    m.insert(SOC_LIMIT.into(), SettingValue::Int(100));
    m.insert("ACChargeType".into(), SettingValue::Int(0));
    m.insert("ubBatChgcontrol".into(), SettingValue::Int(1));
    let t = |s: &str| SettingValue::Time(LocalTime::parse_hhmm(s).unwrap());
    m.insert("ACChgStart".into(), t("23:00"));
    m.insert("ACChgEnd".into(), t("05:00"));
    for s in ["ACChgStart1", "ACChgEnd1", "ACChgStart2", "ACChgEnd2"] {
        m.insert(s.into(), t("00:00"));
    }
    m.insert(AC_CHARGE.into(), SettingValue::Int(0));
    m
}

/// A core and a clock, fed one input at a time; remembers every effect.
struct Rig {
    core: EngineCore,
    now: Now,
    /// Writes handed out and not yet answered by the test.
    writes: Vec<Write>,
    snapshots: Vec<Freshness>,
    saves: usize,
    history: Vec<SessionRecord>,
    replies: Vec<(RequestId, Reply)>,
    /// The answer every ticketed save gets.
    save_result: Result<(), String>,
    next_id: u64,
    /// Every event the outbox took, in order (each id once, as the outbox keeps them).
    events: Vec<Event>,
    /// The answer the outbox gives.
    notify_result: Result<(), String>,
    /// The state of the last save, and whether a Notify came before any save holding its
    /// events (which would lose them in a crash).
    last_saved: Option<State>,
    notified_unsaved: bool,
    /// Ids the outbox took before this process started.
    seen: Vec<String>,
}

impl Rig {
    fn new(state: State) -> Rig {
        Rig::with_outbox(state, Vec::new())
    }

    /// The process started again from what the last one saved, with the outbox (which keeps
    /// the ids it has taken) as that one left it.
    fn restarted(&self) -> Rig {
        let mut seen = self.seen.clone();
        seen.extend(self.events.iter().map(|e| e.id.clone()));
        Rig::with_outbox(self.last_saved.clone().expect("something was saved"), seen)
    }

    fn with_outbox(state: State, seen: Vec<String>) -> Rig {
        let cfg = CoreConfig {
            params: ChargeParams::default(),
            tz: tz(),
            check_interval: Duration::from_secs(30),
            soc_rule: SocRule::default(),
            battery: Default::default(),
        };
        let wall = local("2026-01-15T01:00");
        let mut rig = Rig {
            core: EngineCore::new(cfg, state, wall),
            now: Now {
                wall,
                mono: Duration::from_secs(1000),
            },
            writes: Vec::new(),
            snapshots: Vec::new(),
            saves: 0,
            history: Vec::new(),
            replies: Vec::new(),
            save_result: Ok(()),
            next_id: 0,
            events: Vec::new(),
            notify_result: Ok(()),
            last_saved: None,
            notified_unsaved: false,
            seen,
        };
        rig.feed(Input::Boot { connected: true });
        rig
    }

    /// A booted core that has heard the dongle report `soc`.
    fn with_soc(soc: u8) -> Rig {
        let mut rig = Rig::new(State::default());
        rig.telemetry(soc);
        rig
    }

    fn feed(&mut self, input: Input) {
        let mut queue: std::collections::VecDeque<Effect> =
            self.core.handle(input, self.now).into();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Write(w) => self.writes.push(w),
                Effect::Snapshot { fresh, .. } => self.snapshots.push(fresh),
                Effect::Refresh => {}
                Effect::Save { ticket, state } => {
                    self.saves += 1;
                    self.last_saved = Some(*state);
                    if let Some(ticket) = ticket {
                        let more = self.core.handle(
                            Input::SaveDone {
                                ticket,
                                result: self.save_result.clone(),
                            },
                            self.now,
                        );
                        for m in more.into_iter().rev() {
                            queue.push_front(m);
                        }
                    }
                }
                Effect::History(r) => self.history.push(r),
                Effect::Notify(events) => {
                    let saved = self.last_saved.as_ref().map(|s| &s.events);
                    if events.iter().any(|e| saved.is_none_or(|s| !s.contains(e))) {
                        self.notified_unsaved = true;
                    }
                    let ids = events.iter().map(|e| e.id.clone()).collect();
                    if self.notify_result.is_ok() {
                        for e in events {
                            if !self.events.iter().any(|x| x.id == e.id)
                                && !self.seen.contains(&e.id)
                            {
                                self.events.push(e);
                            }
                        }
                    }
                    let more = self.core.handle(
                        Input::Notified {
                            ids,
                            result: self.notify_result.clone(),
                        },
                        self.now,
                    );
                    for m in more.into_iter().rev() {
                        queue.push_front(m);
                    }
                }
                Effect::Reply(id, r) => self.replies.push((id, *r)),
            }
        }
    }

    fn command(&mut self, cmd: Command) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.feed(Input::Command(id, cmd));
        id
    }

    fn reply(&self, id: RequestId) -> Option<&Reply> {
        self.replies.iter().find(|(i, _)| *i == id).map(|(_, r)| r)
    }

    /// Lets `d` pass, the dongle sending its heartbeat at the end of it.
    fn advance(&mut self, d: Duration) {
        self.now.wall += d;
        self.now.mono += d;
        self.feed(Input::Dongle(DongleInput::Other));
    }

    /// Lets `d` pass with nothing heard from the dongle.
    fn advance_quiet(&mut self, d: Duration) {
        self.now.wall += d;
        self.now.mono += d;
        self.feed(Input::Tick);
    }

    fn telemetry(&mut self, soc: u8) {
        self.feed(Input::Dongle(DongleInput::Telemetry {
            soc: Soc::new(soc),
            battery_power_w: Some(3000.0),
            charge_power_w: Some(3000.0),
        }));
    }

    /// Answers the pending snapshot with `found()`.
    fn answer_snapshot(&mut self) {
        assert!(!self.snapshots.is_empty(), "a snapshot was asked for");
        self.feed(Input::SnapshotDone(Some(found())));
    }

    /// Confirms every write, one at a time, as the driver would; returns them.
    fn confirm_writes(&mut self) -> Vec<Write> {
        let mut done = Vec::new();
        while !self.writes.is_empty() {
            let w = self.writes.remove(0);
            assert!(self.writes.is_empty(), "never two writes in flight");
            done.push(w);
            self.feed(Input::WriteDone(WriteResult::Confirmed));
        }
        done
    }

    fn schedule(&mut self, body: ScheduleInput) -> RequestId {
        self.command(Command::SetSchedule(body))
    }
}

fn once_at(t: &str, soc: u8) -> ScheduleInput {
    ScheduleInput {
        target: target(soc),
        time: LocalTime::parse_hhmm(t).unwrap(),
        mode: Mode::Once,
        enabled: true,
        days: None,
        first_run: None,
        ready_by: None,
    }
}

fn start_reply(r: Option<&Reply>) -> &StartOutcome {
    match r {
        Some(Reply::Start(o)) => o,
        other => panic!("expected a start answer, got {other:?}"),
    }
}

#[test]
fn charge_now_is_answered_once_ac_charging_is_on_and_not_before() {
    let mut rig = Rig::with_soc(40);
    let id = rig.command(Command::ChargeNow(target(80)));
    assert!(rig.reply(id).is_none(), "waits for the start");
    assert_eq!(rig.snapshots, [Freshness::Read]);
    rig.answer_snapshot();
    let writes = rig.confirm_writes();
    assert_eq!(writes.last().unwrap().setting, AC_CHARGE);
    let o = start_reply(rig.reply(id));
    assert!(o.success);
    assert_eq!(o.message, "Charging enabled to 80%");
    assert!(o.status.is_charging());
}

#[test]
fn charge_now_at_or_above_the_target_is_answered_at_once_without_a_write() {
    let mut rig = Rig::with_soc(85);
    let id = rig.command(Command::ChargeNow(target(80)));
    let o = start_reply(rig.reply(id));
    assert!(o.success);
    assert!(o.message.contains("already at 85%"), "{}", o.message);
    assert!(rig.writes.is_empty() && rig.snapshots.is_empty());
    assert!(rig.core.session().is_none());
}

#[test]
fn a_refused_start_is_answered_with_the_reason_and_frees_the_inverter_at_once() {
    let mut rig = Rig::with_soc(40);
    let id = rig.command(Command::ChargeNow(target(80)));
    rig.answer_snapshot();
    assert_eq!(rig.writes.len(), 1);
    rig.writes.clear();
    rig.feed(Input::WriteDone(WriteResult::Rejected(
        "status error".into(),
    )));
    let o = start_reply(rig.reply(id));
    assert!(!o.success);
    assert!(o.message.contains("status error"), "{}", o.message);
    assert!(rig.writes.is_empty(), "nothing to restore");
    assert!(rig.core.session().is_none());
    assert_eq!(rig.history.len(), 1);
    // The next charge now starts straight away.
    rig.command(Command::ChargeNow(target(80)));
    assert!(rig.core.session().is_some());
}

#[test]
fn a_schedule_is_applied_only_once_it_is_saved() {
    let mut rig = Rig::with_soc(40);
    rig.save_result = Err("disk full".into());
    let id = rig.schedule(once_at("02:30", 80));
    match rig.reply(id) {
        Some(Reply::Schedule(Err(CommandError::Store(e)))) => assert_eq!(e, "disk full"),
        other => panic!("{other:?}"),
    }
    assert!(rig.core.schedule().is_none(), "nothing changed");
    rig.save_result = Ok(());
    let id = rig.schedule(once_at("02:30", 80));
    match rig.reply(id) {
        Some(Reply::Schedule(Ok(st))) => {
            assert_eq!(st.next_run(), Some(local("2026-01-15T02:30")))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_settings_are_read_a_minute_ahead_and_the_start_uses_them_at_the_minute() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(once_at("01:30", 80));
    rig.advance(28 * MIN);
    assert!(rig.snapshots.is_empty());
    rig.advance(MIN);
    assert_eq!(rig.snapshots, [Freshness::Read], "read ahead at 01:29");
    rig.answer_snapshot();
    rig.advance(MIN);
    assert_eq!(
        rig.snapshots,
        [Freshness::Read, Freshness::Cached],
        "the start takes the cache, at once"
    );
    rig.answer_snapshot();
    assert_eq!(rig.writes.len(), 1, "the first write goes out at 01:30");
}

#[test]
fn a_restart_resumes_a_charge_without_writing_again_and_stops_at_the_target() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(45)));
    rig.answer_snapshot();
    rig.confirm_writes();
    let state = State {
        version: FORMAT_VERSION,
        schedule: rig.core.schedule().cloned(),
        session: rig.core.session().cloned(),
        ..State::default()
    };

    let mut after = Rig::new(state);
    assert!(after.writes.is_empty(), "resuming writes nothing");
    assert!(after.core.status().is_charging());
    after.telemetry(44);
    assert!(after.writes.is_empty());
    after.telemetry(45);
    assert_eq!(after.writes[0], Write::new(AC_CHARGE, SettingValue::Int(0)));
    after.confirm_writes();
    assert_eq!(after.history.len(), 1);
    assert_eq!(
        after.history[0].stop_reason,
        Some(StopReason::TargetReached)
    );
    assert!(
        after.core.schedule().is_none(),
        "the once schedule is spent"
    );
}

#[test]
fn a_stop_is_answered_once_ac_charging_is_off() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(80)));
    rig.answer_snapshot();
    rig.confirm_writes();
    let id = rig.command(Command::CancelSchedule);
    assert!(rig.reply(id).is_none(), "ACCharge = 0 is not confirmed yet");
    assert_eq!(rig.writes[0], Write::new(AC_CHARGE, SettingValue::Int(0)));
    rig.writes.remove(0);
    rig.feed(Input::WriteDone(WriteResult::Confirmed));
    match rig.reply(id) {
        Some(Reply::Stop(o)) => assert!(o.success, "{o:?}"),
        other => panic!("{other:?}"),
    }
    assert!(!rig.core.status().is_charging());
    assert_eq!(rig.core.status().target_soc(), None);
}

#[test]
fn a_charge_asked_for_during_a_restore_waits_for_the_write_in_flight_then_takes_over() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(45)));
    rig.answer_snapshot();
    rig.confirm_writes();
    rig.telemetry(45);
    // ACCharge = 0 confirmed, the first restore write out.
    rig.writes.remove(0);
    rig.feed(Input::WriteDone(WriteResult::Confirmed));
    assert_eq!(rig.writes.len(), 1);
    let id = rig.command(Command::ChargeNow(target(60)));
    assert!(rig.reply(id).is_none());
    assert_eq!(rig.core.session().unwrap().target, target(45), "not yet");
    rig.writes.remove(0);
    rig.feed(Input::WriteDone(WriteResult::Rejected("busy".into())));
    assert_eq!(rig.history.len(), 1, "the first charge ends, handing over");
    let s = rig.core.session().unwrap();
    assert_eq!(s.target, target(60));
    assert!(!s.inherited.is_empty());
    assert_eq!(rig.snapshots.len(), 2, "the new charge reads the settings");
}

#[test]
fn a_once_schedule_and_the_target_are_gone_from_the_status_once_ac_charging_is_off() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(once_at("01:30", 45));
    rig.advance(29 * MIN);
    rig.answer_snapshot();
    rig.advance(MIN);
    rig.answer_snapshot();
    rig.confirm_writes();
    assert_eq!(rig.core.status().target_soc(), Some(target(45)));
    rig.telemetry(45);
    rig.writes.remove(0);
    rig.feed(Input::WriteDone(WriteResult::Confirmed));
    assert!(rig.core.session().is_some(), "restores still to come");
    assert_eq!(rig.core.status().schedule, None);
    assert_eq!(rig.core.status().target_soc(), None);
}

#[test]
fn no_write_goes_out_before_the_first_broker_connection_after_a_boot() {
    let mut rig = Rig::new(State::default());
    rig.feed(Input::Dongle(DongleInput::Connected(false)));
    let mut rig2 = Rig {
        core: EngineCore::new(rig.core.cfg.clone(), State::default(), rig.now.wall),
        ..rig
    };
    rig2.feed(Input::Boot { connected: false });
    rig2.telemetry(40);
    rig2.command(Command::ChargeNow(target(80)));
    assert!(rig2.snapshots.is_empty(), "waits for the broker");
    rig2.feed(Input::Dongle(DongleInput::Connected(true)));
    assert_eq!(rig2.snapshots, [Freshness::Read]);
}

#[test]
fn next_wake_is_the_earliest_of_the_start_and_the_check_interval() {
    let mut rig = Rig::with_soc(40);
    assert_eq!(rig.core.next_wake(rig.now), Duration::from_secs(30));
    rig.schedule(once_at("01:01", 80));
    assert_eq!(
        rig.snapshots,
        [Freshness::Read],
        "the start is a minute away"
    );
    rig.answer_snapshot();
    rig.advance(50 * SEC);
    assert_eq!(rig.core.next_wake(rig.now), Duration::from_secs(10));
    rig.advance(10 * SEC);
    assert!(rig.core.session().is_some(), "fired at 01:01");
}

#[test]
fn a_charge_running_into_the_minute_before_a_scheduled_start_does_not_wake_the_engine_without_pause()
 {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(80)));
    rig.answer_snapshot();
    rig.confirm_writes();
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:02", 90)
    });
    rig.advance(90 * SEC);
    // 01:01:30, the charge running: no read ahead, and no deadline in the past.
    assert!(rig.core.next_wake(rig.now) >= Duration::from_secs(1));
}

#[test]
fn a_recurring_schedule_stays_beside_a_charge_now_and_a_once_schedule_is_replaced() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("02:30", 85)
    });
    let id = rig.command(Command::ChargeNow(target(50)));
    rig.answer_snapshot();
    rig.confirm_writes();
    assert!(matches!(rig.reply(id), Some(Reply::Start(o)) if o.success));
    let sched = rig.core.schedule().expect("kept");
    assert_eq!((sched.mode, sched.target), (Mode::Recurring, target(85)));
    // The status shows the charge now, as the app expects.
    assert_eq!(rig.core.status().target_soc(), Some(target(50)));
    assert_eq!(rig.core.status().mode(), Some(Mode::Once));

    let mut rig = Rig::with_soc(40);
    rig.schedule(once_at("02:30", 85));
    rig.command(Command::ChargeNow(target(50)));
    let sched = rig.core.schedule().expect("a one-shot for now");
    assert_eq!((sched.mode, sched.target), (Mode::Once, target(50)));
}

#[test]
fn stopping_with_the_schedule_kept_leaves_a_recurring_schedule_armed() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:30", 85)
    });
    rig.advance(29 * MIN);
    rig.answer_snapshot();
    rig.advance(MIN);
    rig.answer_snapshot();
    rig.confirm_writes();
    assert!(rig.core.status().is_charging());
    let id = rig.command(Command::StopCharge);
    rig.confirm_writes();
    assert!(matches!(rig.reply(id), Some(Reply::Stop(o)) if o.success));
    assert!(!rig.core.status().is_charging());
    let sched = rig.core.schedule().expect("kept");
    assert_eq!(
        sched.next_run,
        Some(local("2026-01-16T01:30")),
        "tonight's is consumed"
    );
}

#[test]
fn charge_now_is_refused_at_once_when_the_dongle_has_sent_nothing() {
    let mut rig = Rig::new(State::default());
    let id = rig.command(Command::ChargeNow(target(80)));
    match rig.reply(id) {
        Some(Reply::Start(o)) => {
            assert!(!o.success);
            assert!(o.message.contains("mqtt.dongle_prefix"), "{}", o.message);
        }
        other => panic!("answered at once: {other:?}"),
    }
    assert!(rig.writes.is_empty() && rig.core.session().is_none());
}

#[test]
fn a_scheduled_start_waits_for_a_silent_dongle_within_the_grace_then_records_the_failure() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:30", 80)
    });
    rig.advance_quiet(30 * MIN);
    assert!(
        rig.core.session().is_none(),
        "no start with the dongle silent"
    );
    assert!(rig.history.is_empty(), "still within the grace");
    // Heard again within the grace: the charge starts, late.
    rig.advance(5 * MIN);
    rig.telemetry(40);
    assert!(rig.core.session().is_some(), "started within the grace");

    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:30", 80)
    });
    rig.advance_quiet(30 * MIN);
    rig.advance_quiet(11 * MIN);
    assert!(rig.core.session().is_none());
    assert_eq!(rig.history.len(), 1);
    assert_eq!(rig.history[0].stop_reason, Some(StopReason::ChargeFailed));
    let detail = rig.history[0].detail.as_deref().unwrap_or_default();
    assert!(
        detail.contains("nothing has been heard from the dongle"),
        "{detail}"
    );
}

#[test]
fn a_nightly_occurrence_that_fires_during_a_charge_now_raises_it_to_the_schedules_target() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:30", 85)
    });
    rig.command(Command::ChargeNow(target(50)));
    rig.answer_snapshot();
    rig.confirm_writes();
    assert_eq!(rig.core.session().unwrap().target, target(50));
    for soc in 41..47 {
        rig.advance(5 * MIN);
        rig.telemetry(soc);
    }
    rig.confirm_writes();
    let s = rig.core.session().expect("the same charge goes on");
    assert_eq!(s.origin, Origin::ChargeNow);
    assert_eq!(s.target, target(85), "it now charges to the nightly target");
    assert!(rig.history.is_empty(), "no second charge, nothing missed");
    assert_eq!(
        rig.core.schedule().unwrap().next_run,
        Some(local("2026-01-16T01:30")),
        "tonight's occurrence is consumed"
    );
}

// ---- events: what the owner is told ------------------------------------------------------

fn kinds(rig: &Rig) -> Vec<EventKind> {
    rig.events.iter().map(|e| e.kind).collect()
}

#[test]
fn a_charge_tells_its_start_once_and_its_end_once_each_saved_before_it_is_handed_over() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(45)));
    rig.answer_snapshot();
    rig.confirm_writes();
    assert_eq!(kinds(&rig), [EventKind::ChargeStarted]);
    let started = &rig.events[0];
    assert_eq!(started.soc.map(Soc::get), Some(40));
    assert_eq!(started.target_soc, Some(target(45)));
    rig.telemetry(44);
    rig.telemetry(45);
    rig.confirm_writes();
    assert_eq!(
        kinds(&rig),
        [EventKind::ChargeStarted, EventKind::ChargeComplete]
    );
    let sid = &rig.history[0].id;
    assert_eq!(rig.events[1].id, format!("{sid}-charge_complete"));
    assert_eq!(rig.events[1].soc.map(Soc::get), Some(45));
    assert!(
        !rig.notified_unsaved,
        "every event is on disk before the outbox gets it"
    );
    let after = rig.restarted();
    assert!(
        after.events.is_empty(),
        "what the state file still lists is handed over again and dropped by the outbox"
    );
    assert!(
        after.last_saved.as_ref().unwrap().events.is_empty(),
        "and gone from the state file"
    );
}

#[test]
fn events_still_unhanded_at_a_crash_are_handed_over_at_the_next_start() {
    let mut rig = Rig::with_soc(40);
    rig.notify_result = Err("disk full".into());
    rig.command(Command::ChargeNow(target(45)));
    rig.answer_snapshot();
    rig.confirm_writes();
    assert!(rig.events.is_empty(), "the outbox refused it");
    let saved = rig.last_saved.clone().unwrap();
    assert_eq!(saved.events.len(), 1, "kept in the state file");

    let after = rig.restarted();
    assert_eq!(kinds(&after), [EventKind::ChargeStarted]);
    assert_eq!(saved.events.len(), 1);
}

#[test]
fn a_restart_in_the_middle_of_a_charge_announces_nothing_again() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(45)));
    rig.answer_snapshot();
    rig.confirm_writes();
    let mut after = rig.restarted();
    assert!(
        after.events.is_empty(),
        "the start was told before the restart"
    );
    after.telemetry(45);
    after.confirm_writes();
    assert_eq!(kinds(&after), [EventKind::ChargeComplete]);
}

#[test]
fn a_start_that_never_switched_ac_charging_on_is_a_failure_not_a_stop() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(80)));
    rig.answer_snapshot();
    // Every start write fails for good: the session gives up and restores.
    for _ in 0..20 {
        if rig.writes.is_empty() {
            break;
        }
        rig.writes.remove(0);
        rig.feed(Input::WriteDone(WriteResult::Rejected("refused".into())));
        rig.advance(MIN);
    }
    rig.confirm_writes();
    assert!(rig.core.session().is_none());
    assert_eq!(kinds(&rig), [EventKind::ChargeFailed]);
    assert!(rig.events[0].detail.is_some());
}

#[test]
fn a_cancelled_charge_is_told_as_stopped_with_the_reason() {
    let mut rig = Rig::with_soc(40);
    rig.command(Command::ChargeNow(target(80)));
    rig.answer_snapshot();
    rig.confirm_writes();
    rig.command(Command::StopCharge);
    rig.confirm_writes();
    assert_eq!(
        kinds(&rig),
        [EventKind::ChargeStarted, EventKind::ChargeStopped]
    );
    assert_eq!(rig.events[1].stop_reason, Some(StopReason::Cancelled));
}

#[test]
fn a_scheduled_charge_that_could_not_start_is_told_once() {
    let mut rig = Rig::with_soc(40);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..once_at("01:30", 80)
    });
    rig.advance_quiet(30 * MIN);
    rig.advance_quiet(11 * MIN);
    let failed: Vec<_> = rig
        .events
        .iter()
        .filter(|e| e.kind == EventKind::ChargeFailed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("nothing has been heard")
    );
    assert_eq!(failed[0].id, format!("{}-charge_failed", rig.history[0].id));
}

#[test]
fn a_scheduled_charge_already_at_the_target_is_told_as_skipped() {
    let mut rig = Rig::with_soc(85);
    rig.schedule(once_at("01:30", 80));
    rig.advance(30 * MIN);
    assert_eq!(kinds(&rig), [EventKind::ChargeSkipped]);
    assert_eq!(rig.events[0].soc.map(Soc::get), Some(85));
}

#[test]
fn a_silent_dongle_is_told_once_after_the_stale_limit_and_a_minute_and_again_when_back() {
    let mut rig = Rig::with_soc(50);
    let stale = ChargeParams::default().stale_after;
    rig.advance_quiet(stale);
    rig.advance_quiet(DONGLE_OFFLINE_DEBOUNCE - SEC);
    assert!(rig.events.is_empty(), "a blip is not news");
    rig.advance_quiet(SEC);
    assert_eq!(kinds(&rig), [EventKind::DongleOffline]);
    rig.advance_quiet(30 * MIN);
    assert_eq!(rig.events.len(), 1, "told once");

    // A restart while it is still silent tells nothing new.
    let mut after = rig.restarted();
    after.advance_quiet(30 * MIN);
    assert!(after.events.is_empty());
    after.telemetry(50);
    assert_eq!(kinds(&after), [EventKind::DongleOnline]);
}

#[test]
fn the_engine_wakes_in_time_to_tell_of_a_silent_dongle() {
    let mut rig = Rig::with_soc(50);
    let stale = ChargeParams::default().stale_after;
    // 5 s before the notice is due: the wake-up is then, not a whole check interval later.
    rig.advance_quiet(stale + DONGLE_OFFLINE_DEBOUNCE - 5 * SEC);
    assert!(rig.events.is_empty());
    assert_eq!(rig.core.next_wake(rig.now), 5 * SEC);
}

#[test]
fn a_lost_broker_is_told_as_the_dongle_unreachable() {
    let mut rig = Rig::with_soc(50);
    rig.feed(Input::Dongle(DongleInput::Connected(false)));
    rig.advance_quiet(DONGLE_OFFLINE_DEBOUNCE);
    assert_eq!(kinds(&rig), [EventKind::DongleOffline]);
    assert!(rig.events[0].detail.as_deref().unwrap().contains("broker"));
    rig.feed(Input::Dongle(DongleInput::Connected(true)));
    rig.telemetry(50);
    assert_eq!(
        kinds(&rig),
        [EventKind::DongleOffline, EventKind::DongleOnline]
    );
}

// ---- cheapest hours -------------------------------------------------------------------------

fn cheapest_rig(soc: u8) -> Rig {
    use crate::domain::night::{Battery, PriceBook};
    use crate::domain::plan::PriceSlot;
    let mut rig = Rig::with_soc(soc);
    rig.core.cfg.battery = Battery {
        capacity_kwh: Some(10.0),
        charge_kw: Some(6.0),
        learned_kw: None,
    };
    // Dear until 03:00, cheap 03:00-04:00, dear after.
    let slot = |from: &str, to: &str, price| PriceSlot {
        start: local(from),
        end: local(to),
        price,
    };
    let slots = vec![
        slot("2026-01-15T00:00", "2026-01-15T03:00", 0.30),
        slot("2026-01-15T03:00", "2026-01-15T04:00", 0.05),
        slot("2026-01-15T04:00", "2026-01-15T12:00", 0.30),
    ];
    rig.feed(Input::Prices(Some(PriceBook {
        source: "fixed".into(),
        currency: "GBP".into(),
        fetched_at: local("2026-01-15T00:00"),
        slots: std::sync::Arc::new(slots),
        problem: None,
    })));
    rig
}

fn cheapest_at(t: &str, ready_by: &str, soc: u8) -> ScheduleInput {
    ScheduleInput {
        ready_by: Some(LocalTime::parse_hhmm(ready_by).unwrap()),
        ..once_at(t, soc)
    }
}

#[test]
fn a_cheapest_night_waits_for_its_slot_then_charges_as_one_session_and_tells_it_once() {
    let mut rig = cheapest_rig(50);
    rig.schedule(cheapest_at("01:30", "06:00", 60));
    rig.advance(30 * MIN);
    assert!(
        rig.core.session().is_none(),
        "the night has begun; no run yet"
    );
    assert!(rig.core.night.is_some());
    let plan = rig.core.status().plan.clone().unwrap();
    assert_eq!(plan.plan.runs()[0].0, local("2026-01-15T03:00"));
    for _ in 0..89 {
        rig.advance(MIN);
        assert!(rig.core.session().is_none());
    }
    rig.advance(MIN); // 03:00
    assert!(rig.core.session().is_some_and(|s| s.cheapest));
    rig.answer_snapshot();
    rig.confirm_writes();
    for soc in [52, 54, 56, 58, 60] {
        rig.advance(2 * MIN);
        rig.telemetry(soc);
    }
    rig.confirm_writes();
    assert!(rig.core.session().is_none());
    assert_eq!(rig.history[0].stop_reason, Some(StopReason::TargetReached));
    assert_eq!(rig.history[0].currency.as_deref(), Some("GBP"));
    rig.advance(MIN);
    assert!(rig.core.night.is_none(), "done at the target");
    assert_eq!(
        kinds(&rig),
        [EventKind::ChargeStarted, EventKind::ChargeComplete]
    );
}

#[test]
fn a_cheapest_night_already_at_the_target_is_skipped() {
    let mut rig = cheapest_rig(70);
    rig.schedule(cheapest_at("01:30", "06:00", 60));
    rig.advance(30 * MIN);
    assert!(rig.core.night.is_none());
    assert_eq!(rig.history[0].stop_reason, Some(StopReason::Skipped));
}

#[test]
fn stopping_between_the_runs_calls_the_night_off() {
    let mut rig = cheapest_rig(50);
    rig.schedule(ScheduleInput {
        mode: Mode::Recurring,
        ..cheapest_at("01:30", "06:00", 60)
    });
    rig.advance(30 * MIN);
    assert!(rig.core.night.is_some());
    rig.command(Command::StopCharge);
    assert!(rig.core.night.is_none());
    for _ in 0..120 {
        rig.advance(MIN);
    }
    assert!(rig.core.session().is_none(), "no run after the stop");
    assert!(
        rig.core.schedule().is_some(),
        "the schedule stays for tomorrow"
    );
}

#[test]
fn a_run_ended_by_a_fault_ends_the_night_and_is_told() {
    let mut rig = cheapest_rig(50);
    rig.schedule(cheapest_at("01:30", "06:00", 60));
    rig.advance(30 * MIN);
    for _ in 0..90 {
        rig.advance(MIN);
    }
    rig.answer_snapshot();
    rig.confirm_writes();
    // The dongle goes silent mid-run: the stale stop ends the run, and the night with it.
    rig.advance_quiet(ChargeParams::default().stale_after + SEC);
    rig.confirm_writes();
    assert!(rig.core.session().is_none());
    assert!(rig.core.night.is_none());
    assert!(kinds(&rig).contains(&EventKind::ChargeStopped));
}
