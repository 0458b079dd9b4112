//! The engine's decisions as a pure state machine: [`EngineCore::handle`] takes one
//! [`Input`] and the time, and returns the [`Effect`]s to carry out, as plain data. No IO, no
//! clock reads, no tasks: the tokio engine ([`crate::engine`]) is a thin loop that feeds it
//! inputs and performs its effects, and a simulator can drive it through whole nights.
//!
//! It owns the schedule, the charge session and what the service knows of the dongle. After
//! every input it: fires a due schedule, begins a charge that waited for the previous one's
//! restore, asks for the inverter's settings (for a start, or a minute ahead of one), hands
//! out the next write, ends a finished session, drops a spent once schedule, saves what
//! changed, and answers the API calls waiting for an outcome.
//!
//! Contract with the driver:
//! * effects are carried out in the order given;
//! * every [`Effect::Write`] is answered by exactly one [`Input::WriteDone`], every
//!   [`Effect::Snapshot`] by one [`Input::SnapshotDone`], and an [`Effect::Save`] with a
//!   ticket by one [`Input::SaveDone`] before any other input;
//! * [`EngineCore::next_wake`] says when to feed [`Input::Tick`] at the latest.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tracing::{debug, info, warn};

use crate::domain::event::{Event, EventKind};
use crate::domain::night::{self, Battery, Decision, Night, PlanView, PriceBook};
use crate::domain::schedule::Strategy;
use crate::domain::schedule::{Due, Schedule, ScheduleError};
use crate::domain::session::{
    AC_CHARGE, BAT_CHG_CONTROL, ChargeParams, Now, Origin, Phase, Report, SOC_LIMIT, Sabotage,
    Session, StopReason, WINDOWS, Write, WriteResult,
};
use crate::domain::soc_filter::{SocFilter, SocRule, Verdict};
use crate::domain::state::{FORMAT_VERSION, SessionRecord, State};
use crate::domain::throttle::Throttle;
use crate::domain::units::{Days, LocalTime, Mode, SettingValue, Soc, TargetSoc};

/// How far ahead of a scheduled start the inverter's settings are read.
pub const PREFETCH_AHEAD: Duration = Duration::from_secs(60);
/// How old settings read ahead may be and still serve a start (a clock jump or a late fire
/// makes them stale).
const PREFETCH_VALID: Duration = Duration::from_secs(180);
/// How long a start waits for the broker connection before its first write (see
/// `EngineCore::connect_grace`).
const BOOT_CONNECT_GRACE: Duration = Duration::from_secs(15);
/// How often a reading that settles a doubtful SOC may be asked for.
const SOC_CHECK_INTERVAL: Duration = Duration::from_secs(60);
/// How long the dongle must stay unreachable (beyond the stale limit, for silence) before the
/// owner is told: a WiFi blip or a broker restart is not news.
pub const DONGLE_OFFLINE_DEBOUNCE: Duration = Duration::from_secs(60);

/// A cheapest-hours run shorter than this is not started: its writes would take much of it.
const MIN_RUN_S: i64 = 120;

/// What the core needs from config.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub params: ChargeParams,
    pub tz: TimeZone,
    /// The longest the engine sleeps before re-reading the wall clock.
    pub check_interval: Duration,
    /// Which SOC readings are believed at once.
    pub soc_rule: SocRule,
    /// The battery's figures, for cheapest hours.
    pub battery: Battery,
}

/// A schedule as the API sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleInput {
    pub target: TargetSoc,
    pub time: LocalTime,
    pub mode: Mode,
    pub enabled: bool,
    pub days: Option<Days>,
    /// An exact first run (ISO-8601 start with offset).
    pub first_run: Option<Timestamp>,
    /// Cheapest hours: the local time the target must be reached by (`time` is then the
    /// earliest start). None: a fixed start.
    pub ready_by: Option<LocalTime>,
}

/// The outcome of "charge now".
#[derive(Debug, Clone, PartialEq)]
pub struct StartOutcome {
    pub success: bool,
    pub message: String,
    pub status: Status,
}

/// The outcome of a stop request.
#[derive(Debug, Clone, PartialEq)]
pub struct StopOutcome {
    pub success: bool,
    pub message: String,
    pub stopped_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("the state could not be saved: {0}")]
    Store(String),
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// What a running session looks like from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub origin: Origin,
    pub target: TargetSoc,
    pub active_target: Option<TargetSoc>,
    pub started_at: Timestamp,
    pub deadline: Timestamp,
    pub phase: Phase,
    pub charging: bool,
    pub start_soc: Option<Soc>,
    /// Energy into the battery so far (Wh), when the dongle reports charge power.
    pub energy_wh: Option<f64>,
}

/// Everything the API shows, current after every input.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub started_at: Timestamp,
    pub mqtt_connected: bool,
    pub soc: Option<Soc>,
    /// Battery power in W, positive = charging.
    pub battery_power: Option<f64>,
    pub last_telemetry: Option<Timestamp>,
    pub last_message: Option<Timestamp>,
    pub dongle_online: Option<bool>,
    pub firmware_code: Option<String>,
    pub schedule: Option<Schedule>,
    pub session: Option<SessionView>,
    /// Why the last charge ended, and when.
    pub last_stop: Option<(StopReason, Timestamp, String)>,
    /// How long the dongle may say nothing before it counts as silent (the stale limit that
    /// also ends a charge).
    pub stale_after: Duration,
    /// The inverter's AC-charge settings as last reported, and when they last were.
    pub inverter: BTreeMap<String, SettingValue>,
    pub inverter_read_at: Option<Timestamp>,
    /// The charge-type setting's name (configurable; `ACChargeType` by default).
    pub charge_type_setting: String,
    /// The cheapest-hours plan of the night under way, or of the next one.
    pub plan: Option<std::sync::Arc<PlanView>>,
}

impl Status {
    /// Nothing known yet: the service started at `started_at`.
    pub fn new(started_at: Timestamp) -> Status {
        Status {
            started_at,
            mqtt_connected: false,
            soc: None,
            battery_power: None,
            last_telemetry: None,
            last_message: None,
            dongle_online: None,
            firmware_code: None,
            schedule: None,
            session: None,
            last_stop: None,
            stale_after: ChargeParams::default().stale_after,
            inverter: BTreeMap::new(),
            inverter_read_at: None,
            charge_type_setting: ChargeParams::default().charge_type_setting,
            plan: None,
        }
    }

    /// Whether the dongle counts as online at `now`: it has not said it is offline, and it
    /// was heard (any message) within the stale limit.
    pub fn dongle_online_at(&self, now: Timestamp) -> bool {
        self.online_until().is_some_and(|until| now < until)
    }

    /// While the dongle counts as online, when it stops doing so if nothing more is heard: its
    /// last message plus the stale limit. `None` once it said it is offline, or before anything
    /// was heard.
    pub fn online_until(&self) -> Option<Timestamp> {
        let limit = jiff::SignedDuration::try_from(self.stale_after).ok()?;
        self.last_message
            .filter(|_| self.dongle_online != Some(false))
            .and_then(|t| t.checked_add(limit).ok())
    }

    /// The running charge, if it is a "charge now" still starting or charging.
    pub fn charge_now_target(&self) -> Option<TargetSoc> {
        self.session
            .as_ref()
            .filter(|s| s.origin == Origin::ChargeNow)
            .and_then(|s| s.active_target)
    }

    /// The mode the app is shown: a "charge now" running beside a recurring schedule shows
    /// as the one-shot charge it is, as the old backend did; else the schedule's.
    pub fn mode(&self) -> Option<Mode> {
        if self.charge_now_target().is_some() {
            return Some(Mode::Once);
        }
        self.schedule.as_ref().map(|s| s.mode)
    }

    pub fn is_charging(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.charging)
    }
    /// The target of a "charge now" that is starting or charging, else the schedule's, else that
    /// of a scheduled charge that is starting or charging.
    pub fn target_soc(&self) -> Option<TargetSoc> {
        self.charge_now_target()
            .or_else(|| self.schedule.as_ref().map(|s| s.target))
            .or_else(|| self.session.as_ref().and_then(|s| s.active_target))
    }
    pub fn next_run(&self) -> Option<Timestamp> {
        self.schedule.as_ref().and_then(|s| s.next_run)
    }
}

/// Names one API call waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// What the API asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    SetSchedule(ScheduleInput),
    /// Cancels the schedule and stops any charge.
    CancelSchedule,
    /// Stops any charge; the schedule stays (an occurrence was consumed when it fired).
    StopCharge,
    /// Charges now: beside a recurring schedule, which stays; a once schedule is replaced.
    ChargeNow(TargetSoc),
}

/// What the dongle said, already decoded and range-checked by the adapter.
#[derive(Debug, Clone, PartialEq)]
pub enum DongleInput {
    /// The broker connection came up or went down.
    Connected(bool),
    Telemetry {
        soc: Option<Soc>,
        /// Positive = charging.
        battery_power_w: Option<f64>,
        charge_power_w: Option<f64>,
    },
    Availability(bool),
    /// Setting values as reported (`None`: present but unreadable).
    Settings {
        values: Vec<(String, Option<SettingValue>)>,
        report: Report,
        firmware_code: Option<String>,
    },
    FirmwareCode(String),
    /// Any other message (a write reply, a heartbeat, an undecodable one): it is alive.
    Other,
}

/// How fresh a snapshot of the settings must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Read now: a snapshot request where the firmware has one, else the next hold banks
    /// (bounded by the read-back timeout).
    Read,
    /// The adapter's cache as it stands (kept current by every hold message), for a start
    /// right after a [`Freshness::Read`] made ahead of it. Answers at once.
    Cached,
}

/// Which save an [`Input::SaveDone`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveTicket {
    /// A new schedule, applied only once it is on disk.
    Schedule(RequestId),
    /// A cancelled schedule; the stop's answer says if it could not be saved.
    Cancel(RequestId),
}

pub type Settings = BTreeMap<String, SettingValue>;

/// Everything that can happen to the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The service started with the stored state (`connected`: the broker is already up).
    Boot {
        connected: bool,
    },
    Command(RequestId, Command),
    Dongle(DongleInput),
    /// The answer to the last [`Effect::Write`].
    WriteDone(WriteResult),
    /// The answer to the last [`Effect::Snapshot`].
    SnapshotDone(Option<Settings>),
    SaveDone {
        ticket: SaveTicket,
        result: Result<(), String>,
    },
    /// The answer to an [`Effect::Notify`]: these events are safely in the outbox (or not).
    Notified {
        ids: Vec<String>,
        result: Result<(), String>,
    },
    /// The price feed has new prices (or lost them).
    Prices(Option<PriceBook>),
    /// Time passed (a wake-up at [`EngineCore::next_wake`], or a clock check).
    Tick,
    /// The service is stopping: save what is unsaved.
    Flush,
}

/// An API call's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Schedule(Result<Status, CommandError>),
    Start(StartOutcome),
    Stop(StopOutcome),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Write one setting, verified; answered by [`Input::WriteDone`].
    Write(Write),
    /// Read these settings; answered by [`Input::SnapshotDone`].
    Snapshot {
        settings: Vec<String>,
        fresh: Freshness,
    },
    /// Ask the dongle to report all its settings again (no answer expected).
    Refresh,
    /// Write the state to disk (atomically). With a ticket, answered by [`Input::SaveDone`].
    Save {
        state: Box<State>,
        ticket: Option<SaveTicket>,
    },
    /// Append a finished charge to the history.
    History(SessionRecord),
    /// Hand these events (already saved with the state) to the outbox; answered by
    /// [`Input::Notified`] before any other input. The outbox drops ids it has seen.
    Notify(Vec<Event>),
    /// Boxed: a reply carries the whole status, many times the size of the other effects.
    Reply(RequestId, Box<Reply>),
}

impl Effect {
    fn reply(id: RequestId, reply: Reply) -> Effect {
        Effect::Reply(id, Box::new(reply))
    }
}

/// What a save the core waits on is for.
#[derive(Debug)]
enum Awaiting {
    /// A new schedule, applied once on disk, with the session as it would be with it.
    Schedule(Schedule, Box<Option<Session>>),
    /// A cancellation: the stop follows the save, whatever its result.
    Cancel,
}

/// The engine's state and rules. See the module docs.
#[derive(Debug)]
pub struct EngineCore {
    cfg: CoreConfig,
    schedule: Option<Schedule>,
    session: Option<Session>,
    status: Status,
    /// A write was handed out and its answer has not come yet.
    write_in_flight: bool,
    /// A snapshot was asked for and its answer has not come yet.
    snapshot_in_flight: bool,
    /// A preparing session needs the inverter's settings and they have not been asked for yet.
    snapshot_wanted: bool,
    /// Set at boot until the broker connection first comes up (at most until this monotonic
    /// instant): no snapshot request or write goes out before, because the client is still
    /// connecting and would report a write as not sent, which rolls back a resumed start.
    connect_grace: Option<Duration>,
    start_waiters: Vec<RequestId>,
    /// Stop requests waiting for AC charge to go off: when asked, and a problem to report.
    stop_waiters: Vec<(RequestId, Timestamp, Option<String>)>,
    /// A save the core waits on before it does anything else.
    awaiting_save: Option<Awaiting>,
    /// What was last handed to the disk, to save only on change.
    saved: Option<State>,
    soc_filter: SocFilter,
    /// A charge asked for while the previous one still restores settings: it begins once that
    /// session has no write in flight, taking over what it had left to restore.
    queued_start: Option<(Origin, TargetSoc)>,
    /// The settings read ahead of a scheduled start (monotonic instant of the answer), so the
    /// first write goes out at the minute instead of after a read.
    prefetched: Option<(Duration, Option<Settings>)>,
    /// The occurrence a read ahead was made for, so it is made once.
    prefetch_for: Option<Timestamp>,
    /// The snapshot in flight is a read ahead, not a session's.
    snapshot_is_prefetch: bool,
    /// When the dongle was last heard, and last asked for its settings (monotonic).
    last_heard: Option<Duration>,
    last_refresh: Option<Duration>,
    /// When a reading that settles a doubtful SOC was last asked for (monotonic).
    last_soc_check: Option<Duration>,
    held_soc: Throttle,
    /// See [`State::ac_maybe_left_on`].
    ac_maybe_left_on: bool,
    /// Scheduled occurrences that charged nothing (skipped, missed), recorded in the history
    /// once the consumed schedule has been handed to the disk.
    occurrence_records: Vec<SessionRecord>,
    /// A due occurrence waiting for the dongle, and why.
    awaiting_dongle: Option<(Timestamp, String)>,
    /// Events saved with the state and not yet in the outbox.
    events: Vec<Event>,
    /// `events` changed since they were last handed to the outbox.
    notify_pending: bool,
    /// The events handed over are those the state file held at boot.
    handing_saved_events: bool,
    /// The owner was told the dongle is offline, and not yet that it is back.
    dongle_reported_offline: bool,
    /// Since when (monotonic) the broker connection is down, or the dongle says it is offline.
    broker_down_since: Option<Duration>,
    offline_said_since: Option<Duration>,
    /// When the core booted (monotonic): silence is counted from here until the dongle is heard.
    booted_at: Option<Duration>,
    /// A cheapest-hours charge in progress.
    night: Option<Night>,
    /// The latest start of any session, and how many ids were made unique after the clock went
    /// back (see [`EngineCore::unique_id`]).
    last_session_start: Option<Timestamp>,
    session_seq: u64,
    /// When the night's next run begins (or its ready-by time).
    night_wake: Option<Timestamp>,
    prices: Option<PriceBook>,
    /// What the plan shown was made from, to make it again only when that changes.
    plan_key: Option<PlanKey>,
}

impl EngineCore {
    /// The core over the stored state; nothing happens until [`Input::Boot`].
    pub fn new(cfg: CoreConfig, state: State, started_at: Timestamp) -> EngineCore {
        let soc_filter = SocFilter::new(cfg.soc_rule);
        let ac_maybe_left_on = state.ac_maybe_left_on;
        let stale_after = cfg.params.stale_after;
        let charge_type_setting = cfg.params.charge_type_setting.clone();
        EngineCore {
            ac_maybe_left_on,
            cfg,
            schedule: state.schedule,
            session: state.session,
            status: Status {
                stale_after,
                charge_type_setting,
                ..Status::new(started_at)
            },
            write_in_flight: false,
            snapshot_in_flight: false,
            snapshot_wanted: false,
            connect_grace: None,
            start_waiters: Vec::new(),
            stop_waiters: Vec::new(),
            awaiting_save: None,
            saved: None,
            soc_filter,
            queued_start: None,
            occurrence_records: Vec::new(),
            awaiting_dongle: None,
            notify_pending: !state.events.is_empty(),
            handing_saved_events: !state.events.is_empty(),
            events: state.events,
            dongle_reported_offline: state.dongle_reported_offline,
            broker_down_since: None,
            offline_said_since: None,
            booted_at: None,
            night: state.night,
            last_session_start: state.last_session_start,
            session_seq: state.session_seq,
            night_wake: None,
            prices: None,
            plan_key: None,
            prefetched: None,
            prefetch_for: None,
            snapshot_is_prefetch: false,
            last_heard: None,
            last_refresh: None,
            last_soc_check: None,
            held_soc: Throttle::per_minute(),
        }
    }

    /// What the API shows now.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The running session, if any (for the driver's logs and for checks).
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The cheapest-hours charge in progress, if any.
    pub fn night(&self) -> Option<&Night> {
        self.night.as_ref()
    }

    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// Whether a write is out and unanswered.
    pub fn write_in_flight(&self) -> bool {
        self.write_in_flight
    }

    /// Takes one input at `now` and returns what to do.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::Boot { connected } => self.boot(now, connected, &mut fx),
            Input::Command(id, cmd) => self.on_command(id, cmd, now, &mut fx),
            Input::Dongle(d) => self.on_dongle(d, now, &mut fx),
            Input::WriteDone(result) => self.on_write_result(result, now),
            Input::SnapshotDone(snap) => self.on_snapshot(snap, now),
            Input::SaveDone { ticket, result } => self.on_saved(ticket, result, now, &mut fx),
            Input::Notified { ids, result } => match result {
                Ok(()) => {
                    self.events.retain(|e| !ids.contains(&e.id));
                    // No save of its own while running (the charge's saves are the ones
                    // that matter): until the next one the state file still lists them, and
                    // a restart hands them over again, which the outbox drops. At boot the
                    // file is tidied at once.
                    if !std::mem::take(&mut self.handing_saved_events)
                        && let Some(saved) = &mut self.saved
                    {
                        saved.events.retain(|e| !ids.contains(&e.id));
                    }
                }
                // Kept, saved with the state: handed again with the next event or at the next
                // start.
                Err(e) => warn!(
                    "{} notification(s) could not be put in the outbox (they are kept and handed over again): {e}",
                    ids.len()
                ),
            },
            Input::Prices(p) => {
                if let Some(p) = &p {
                    info!(source = %p.source, slots = p.slots.len(), problem = ?p.problem, "prices updated");
                }
                self.prices = p;
                self.plan_key = None;
            }
            Input::Tick => {}
            Input::Flush => {
                self.persist(&mut fx);
                if let Some(s) = &self.session {
                    info!(phase = ?s.phase, target = %s.target, "a charge session is saved and will be resumed at the next start");
                }
                return fx;
            }
        }
        // A schedule waiting for its save is applied (or not) first.
        if self.awaiting_save.is_none() {
            self.step(now, &mut fx);
        }
        fx
    }

    /// The longest the driver may wait before the next [`Input::Tick`].
    pub fn next_wake(&self, now: Now) -> Duration {
        let mut d = self.cfg.check_interval;
        let until =
            |t: Timestamp| Duration::try_from(t.duration_since(now.wall)).unwrap_or(Duration::ZERO);
        if let Some(Due::Wait(t)) = self.schedule.as_ref().map(|s| s.due(now.wall)) {
            d = d.min(until(t));
            // The read ahead is due a minute before, but only happens with no charge running
            // (and no read in flight): otherwise its instant, once past, would wake the
            // engine without pause.
            let can_prefetch = self.session.is_none() && !self.snapshot_in_flight;
            if can_prefetch && self.prefetch_for != Some(t) {
                d = d.min(until(t).saturating_sub(PREFETCH_AHEAD));
            }
        }
        if let Some(t) = self.connect_grace {
            d = d.min(t.saturating_sub(now.mono));
        }
        if let Some(t) = self.night_wake {
            d = d.min(until(t));
        }
        if !self.dongle_reported_offline {
            // When the owner is told of a dongle unreachable now, or silent from the stale limit.
            let since = self.unreachable(now).map(|(since, _)| since).or_else(|| {
                let heard = self.last_heard.or(self.booted_at)?;
                Some(heard + self.cfg.params.stale_after)
            });
            if let Some(since) = since {
                d = d.min((since + DONGLE_OFFLINE_DEBOUNCE).saturating_sub(now.mono));
            }
        }
        if let Some(s) = &self.session {
            if let Some(t) = s.next_wall_deadline() {
                d = d.min(until(t));
            }
            if let Some(m) = s.next_mono_deadline() {
                d = d.min(m.saturating_sub(now.mono));
            }
        }
        d
    }

    /// Reconciles the stored state with the present: re-arms the schedule and resumes a
    /// session that was running when the process stopped.
    fn boot(&mut self, now: Now, connected: bool, fx: &mut Vec<Effect>) {
        self.status.mqtt_connected = connected;
        self.booted_at = Some(now.mono);
        if !connected {
            self.connect_grace = Some(now.mono + BOOT_CONNECT_GRACE);
            self.broker_down_since = Some(now.mono);
        }
        if let Some(s) = &mut self.schedule {
            s.rearm(now.wall, &self.cfg.tz);
        }
        if let Some(s) = &mut self.session {
            s.resume(now, &self.cfg.params);
            warn!(
                phase = ?s.phase,
                target = %s.target,
                deadline = %s.deadline,
                "resuming a charge session that was running when the service stopped"
            );
            if s.phase == Phase::Preparing {
                self.snapshot_wanted = true;
            }
        }
        self.persist(fx);
    }

    /// After every input: fire a due schedule, finish a done session, send the next write,
    /// save, answer waiters and refresh the status.
    fn step(&mut self, now: Now, fx: &mut Vec<Effect>) {
        if let Some(s) = &mut self.session {
            s.on_tick(now);
        }
        self.check_schedule(now, fx);
        self.begin_queued_start(now, fx);
        self.step_night(now, fx);
        if self.dongle_ready(now) {
            self.request_snapshot(now, fx);
            self.dispatch(now, fx);
        }
        self.announce_start(now);
        self.finish_session(now, fx);
        self.drop_spent_schedule();
        self.watch_dongle(now);
        self.refresh_plan(now);
        self.persist(fx);
        // After the save that consumed the occurrence: a crash in between leaves the
        // occurrence armed, to be judged again, rather than recorded twice.
        fx.extend(self.occurrence_records.drain(..).map(Effect::History));
        // After the save that holds them: a crash in between hands them over at the next
        // start.
        if self.notify_pending && !self.events.is_empty() {
            self.notify_pending = false;
            fx.push(Effect::Notify(self.events.clone()));
        }
        self.refresh_status();
        self.answer_waiters(now, fx);
    }

    fn check_schedule(&mut self, now: Now, fx: &mut Vec<Effect>) {
        let problem = self.dongle_problem(now);
        let Some(schedule) = &mut self.schedule else {
            return;
        };
        match schedule.due(now.wall) {
            Due::Fire(occurrence)
                if schedule.strategy == Strategy::Cheapest && self.session.is_none() =>
            {
                // The night begins: its runs start when the plan says, each waiting for the
                // dongle then.
                schedule.consume(occurrence, now.wall, &self.cfg.tz);
                let target = schedule.target;
                let ready_by = night::ready_by_after(
                    occurrence,
                    schedule.ready_by.unwrap_or(schedule.time),
                    &self.cfg.tz,
                );
                if let Some(msg) = self.already_reached(target) {
                    info!(%target, "cheapest-hours charge skipped: SOC already at or above the target");
                    self.record_occurrence(StopReason::Skipped, target, occurrence, msg, now);
                    self.drop_spent_schedule();
                    return;
                }
                info!(%occurrence, %ready_by, %target, "cheapest-hours charge begins: charging in the cheapest slots until the ready-by time");
                self.night = Some(Night {
                    occurrence,
                    ready_by,
                    target,
                    runs: 0,
                    announced: false,
                    untold: false,
                });
                self.plan_key = None;
            }
            Due::Fire(occurrence) => {
                if self.session.is_none()
                    && let Some(why) = problem
                {
                    // Within the grace the start waits for the dongle; past it the
                    // occurrence is recorded as failed, with this reason.
                    if self
                        .awaiting_dongle
                        .as_ref()
                        .is_none_or(|(o, _)| *o != occurrence)
                    {
                        warn!(%occurrence, "the scheduled charge waits for the dongle: {why}");
                    }
                    self.awaiting_dongle = Some((occurrence, why));
                    return;
                }
                if self.cfg.params.sabotage != Sabotage::DoubleFire {
                    schedule.consume(occurrence, now.wall, &self.cfg.tz);
                }
                let target = schedule.target;
                let next = schedule.next_run;
                info!(%occurrence, target = %target, next_run = ?next, "schedule fired");
                match &self.session {
                    Some(s) if s.has_stopped_charging() => {
                        info!(
                            "the previous charge is still restoring settings; this one begins as soon as its write in flight is done"
                        );
                        self.queued_start = Some((Origin::Schedule, target));
                    }
                    Some(_) => {
                        // A charge (a charge now, say) is running: it takes this occurrence
                        // over, charging on to the schedule's target if that is higher.
                        if let Some(s) = &mut self.session
                            && let Some(running) = s.active_target()
                            && running < target
                        {
                            info!(%running, %target, "the scheduled charge joins the running one, which now charges to the schedule's target");
                            s.set_target(now, target);
                        } else {
                            info!(
                                "a charge to at least the schedule's target is running; it covers this occurrence"
                            );
                        }
                    }
                    None => {
                        if let Some(msg) = self.start(Origin::Schedule, target, now, fx) {
                            self.record_occurrence(
                                StopReason::Skipped,
                                target,
                                occurrence,
                                msg,
                                now,
                            );
                        }
                    }
                }
            }
            Due::Missed(occurrence) => {
                schedule.consume(occurrence, now.wall, &self.cfg.tz);
                let target = schedule.target;
                warn!(%occurrence, now = %now.wall, next_run = ?schedule.next_run,
                    "the scheduled charge was missed by more than 10 minutes (service down or clock moved); skipped");
                let late = now.wall.duration_since(occurrence);
                match self.awaiting_dongle.take() {
                    Some((o, why)) if o == occurrence => {
                        let detail = format!(
                            "could not start: {why} from the scheduled time until the 10-minute grace ran out"
                        );
                        self.record_occurrence(
                            StopReason::ChargeFailed,
                            target,
                            occurrence,
                            detail,
                            now,
                        );
                    }
                    _ => {
                        let detail = format!(
                            "missed by {} minutes: the service was not running or the clock moved past it",
                            late.as_secs().max(0) / 60
                        );
                        self.record_occurrence(StopReason::Missed, target, occurrence, detail, now);
                    }
                }
                self.drop_spent_schedule();
            }
            Due::Idle | Due::Wait(_) => {}
        }
    }

    /// A spent once schedule is gone as soon as its charge has stopped charging (`ACCharge = 0`
    /// written), not only once the restore writes after it are done.
    fn drop_spent_schedule(&mut self) {
        let charging = self.queued_start.is_some()
            || self
                .session
                .as_ref()
                .is_some_and(|s| !s.has_stopped_charging());
        if !charging && self.schedule.as_ref().is_some_and(Schedule::is_spent) {
            self.schedule = None;
        }
    }

    /// Begins a charge that waited for the previous one's restore: once no write is in
    /// flight, the old session ends and hands what it still had to restore to the new one.
    fn begin_queued_start(&mut self, now: Now, fx: &mut Vec<Effect>) {
        let Some((origin, target)) = self.queued_start else {
            return;
        };
        if let Some(msg) = self.already_reached(target) {
            // Nothing to charge: the previous session finishes its restore undisturbed.
            self.queued_start = None;
            if origin == Origin::Schedule
                && let Some(occurrence) = self.schedule.as_ref().and_then(|s| s.last_run)
            {
                self.record_occurrence(StopReason::Skipped, target, occurrence, msg.clone(), now);
            }
            self.answer_starts(true, msg, fx);
            return;
        }
        if self.write_in_flight {
            return;
        }
        let inherited = match &mut self.session {
            Some(s) => match s.hand_over(now) {
                Some(pending) => pending,
                None => return,
            },
            None => Default::default(),
        };
        self.queued_start = None;
        if !inherited.is_empty() {
            info!(settings = ?inherited.keys().collect::<Vec<_>>(), "a new charge takes over the settings the previous one had still to restore");
        }
        self.finish_session(now, fx);
        self.start(origin, target, now, fx);
        if let Some(s) = &mut self.session {
            s.inherit(inherited);
        }
    }

    /// Why a charge cannot start now, if the dongle is the reason: it said it is offline, it
    /// has sent no SOC since the service started, or nothing has been heard from it within
    /// the stale limit. (A broker that is down is left to the first write, which says so.)
    fn dongle_problem(&self, now: Now) -> Option<String> {
        if !self.status.mqtt_connected {
            return None;
        }
        let stale = self.cfg.params.stale_after;
        if self.status.dongle_online == Some(false) {
            return Some(
                "the dongle is offline (it says so on its availability topic): check its power and WiFi"
                    .into(),
            );
        }
        let Some(heard) = self.last_heard else {
            return Some(
                "nothing has been heard from the dongle since the service started: check that mqtt.dongle_prefix is the dongle's ID as it appears on the broker (`solar-charging-backend discover` lists the dongles publishing there)"
                    .into(),
            );
        };
        let quiet = now.mono.saturating_sub(heard);
        if quiet >= stale {
            return Some(format!(
                "nothing has been heard from the dongle for {} s: check its power and WiFi",
                quiet.as_secs()
            ));
        }
        if self.status.soc.is_none() {
            return Some(
                "the dongle has sent no SOC reading yet: wait a minute for its first report".into(),
            );
        }
        None
    }

    /// A cheapest-hours charge between its runs: ends it when the target is reached or the
    /// ready-by time has passed, starts the run the plan has for now, or notes when to look
    /// again.
    fn step_night(&mut self, now: Now, fx: &mut Vec<Effect>) {
        self.night_wake = None;
        let Some(night) = self.night.clone() else {
            return;
        };
        if self.session.is_some() || self.queued_start.is_some() {
            return;
        }
        if let Some(msg) = self.already_reached(night.target) {
            if night.runs == 0 {
                self.record_occurrence(
                    StopReason::Skipped,
                    night.target,
                    night.occurrence,
                    msg,
                    now,
                );
            }
            info!(target = %night.target, "cheapest-hours charge done: the target is reached");
            self.end_night();
            return;
        }
        if now.wall >= night.ready_by {
            if night.runs == 0 || night.untold {
                let soc = self
                    .status
                    .soc
                    .map_or("unknown".to_string(), |s| s.to_string());
                let detail = format!(
                    "the target {} was not reached by the ready-by time: SOC {soc}",
                    night.target
                );
                warn!("cheapest-hours charge: {detail}");
                self.record_occurrence(
                    StopReason::ChargeFailed,
                    night.target,
                    night.occurrence,
                    detail,
                    now,
                );
            }
            self.end_night();
            return;
        }
        let Some(soc) = self.status.soc.map(|s| f64::from(s.get())) else {
            // No SOC yet (the dongle is silent): look again in a minute.
            self.night_wake = Some(add_wall(now.wall, Duration::from_secs(60)));
            return;
        };
        let view = night::plan_view(
            night.occurrence,
            night.ready_by,
            night.target,
            soc,
            now.wall,
            &self.cfg.battery,
            self.prices.as_ref(),
        );
        match night::decide(&view, now.wall, night.ready_by) {
            Decision::Wait { until } => self.night_wake = Some(until),
            Decision::Charge { until }
                if until.duration_since(now.wall) < jiff::SignedDuration::from_secs(MIN_RUN_S) =>
            {
                // Too little of the stretch is left to be worth the writes of a run.
                self.night_wake = Some(until);
            }
            Decision::Charge { until } => {
                if let Some(why) = self.dongle_problem(now) {
                    warn!("the cheapest-hours run waits for the dongle: {why}");
                    self.night_wake = Some(add_wall(now.wall, Duration::from_secs(60)));
                    return;
                }
                self.start_run(night, until, now, fx);
            }
        }
    }

    /// A session's id is its start time; after the clock was set back, that time may have been
    /// another session's already, and its events (named after it) would be taken for repeats.
    fn unique_id(&mut self, s: &mut Session) {
        if self
            .last_session_start
            .is_some_and(|last| s.started_at <= last)
        {
            self.session_seq += 1;
            s.id = format!("{}-{}", s.id, self.session_seq);
        }
        self.last_session_start = Some(
            self.last_session_start
                .map_or(s.started_at, |l| l.max(s.started_at)),
        );
    }

    /// Starts one run of the night: an ordinary charge whose cutoff is the run's end.
    fn start_run(&mut self, mut night: Night, until: Timestamp, now: Now, fx: &mut Vec<Effect>) {
        let len = Duration::try_from(until.duration_since(now.wall))
            .unwrap_or(Duration::ZERO)
            .min(self.cfg.params.cutoff);
        let mut params = self.cfg.params.clone();
        params.cutoff = len;
        let soc = self.status.soc;
        info!(target = %night.target, %until, run = night.runs + 1, soc = ?soc.map(Soc::get), "cheapest-hours run starts");
        let mut session = Session::new(Origin::Schedule, night.target, now, &params, soc);
        self.unique_id(&mut session);
        session.cheapest = true;
        session.slot_end = session.deadline < night.ready_by;
        session.start_announced = night.announced;
        if self.ac_maybe_left_on {
            let mut owner = Settings::new();
            owner.insert(AC_CHARGE.to_string(), SettingValue::Int(0));
            session.inherit(owner);
        }
        night.runs += 1;
        night.announced = true;
        night.untold = false;
        self.session = Some(session);
        self.night = Some(night);
        self.persist(fx);
        self.snapshot_wanted = true;
    }

    /// The owner stopped charging or cancelled the schedule: tonight's cheapest-hours charge
    /// runs no more.
    fn call_off_night(&mut self) {
        if self.night.is_some() {
            info!("the cheapest-hours charge is called off");
            self.end_night();
        }
    }

    fn end_night(&mut self) {
        self.night = None;
        self.night_wake = None;
        self.plan_key = None;
        self.drop_spent_schedule();
    }

    /// Makes the plan the API shows again when what it is made from changed (at most once a
    /// minute otherwise): the night under way, or the next cheapest occurrence.
    fn refresh_plan(&mut self, now: Now) {
        let window = match (&self.night, &self.schedule) {
            (Some(n), _) => Some((n.occurrence, n.ready_by, n.target)),
            (None, Some(s)) if s.strategy == Strategy::Cheapest && s.enabled => {
                s.next_run.map(|occ| {
                    let ready_by =
                        night::ready_by_after(occ, s.ready_by.unwrap_or(s.time), &self.cfg.tz);
                    (occ, ready_by, s.target)
                })
            }
            _ => None,
        };
        let Some((from, until, target)) = window else {
            self.status.plan = None;
            self.plan_key = None;
            return;
        };
        let soc = self.status.soc.map(Soc::get);
        let key = PlanKey {
            from,
            until,
            target: target.get(),
            soc,
            prices: self.prices.as_ref().map(|p| p.fetched_at),
            minute: now.wall.as_second() / 60,
        };
        if self.plan_key.as_ref() == Some(&key) {
            return;
        }
        self.plan_key = Some(key);
        let view = night::plan_view(
            from,
            until,
            target,
            soc.map_or(0.0, f64::from),
            now.wall,
            &self.cfg.battery,
            self.prices.as_ref(),
        );
        self.status.plan = Some(std::sync::Arc::new(view));
    }

    /// Adds an event, to be saved with the state and then handed to the outbox.
    fn emit(&mut self, event: Event) {
        info!(event = %event.kind, id = %event.id, "notifying: {}", event.body());
        self.events.push(event);
        self.notify_pending = true;
    }

    /// Tells the owner once per session that AC charging is on.
    fn announce_start(&mut self, now: Now) {
        let Some(s) = &mut self.session else { return };
        if !s.began_charging || s.start_announced {
            return;
        }
        s.start_announced = true;
        let mut event = Event::new(
            format!("{}-{}", s.id, EventKind::ChargeStarted),
            EventKind::ChargeStarted,
            now.wall,
        );
        event.origin = Some(s.origin);
        event.target_soc = Some(s.target);
        event.soc = s.last_soc.or(s.start_soc);
        event.start_soc = s.start_soc;
        event.started_at = Some(s.started_at);
        self.emit(event);
    }

    /// Since when (monotonic) the dongle cannot be reached, and why: the broker is down, the
    /// dongle says it is offline, or it has been silent for the stale limit.
    fn unreachable(&self, now: Now) -> Option<(Duration, String)> {
        if !self.status.mqtt_connected {
            let since = self.broker_down_since.or(self.booted_at)?;
            return Some((
                since,
                "the MQTT broker cannot be reached, so neither can the dongle: check that the broker is running".into(),
            ));
        }
        if self.status.dongle_online == Some(false) {
            let since = self.offline_said_since.or(self.booted_at)?;
            return Some((
                since,
                "the dongle says it is offline: check its power and WiFi".into(),
            ));
        }
        let stale = self.cfg.params.stale_after;
        let heard = self.last_heard.or(self.booted_at)?;
        let silent_from = heard + stale;
        (now.mono >= silent_from).then(|| {
            let what = if self.last_heard.is_some() {
                "nothing has been heard from the dongle"
            } else {
                "nothing has been heard from the dongle since the service started"
            };
            (
                silent_from,
                format!(
                    "{what} for {} s: check its power and WiFi",
                    now.mono.saturating_sub(heard).as_secs()
                ),
            )
        })
    }

    /// Tells the owner when the dongle has been unreachable for a while, and when it is back.
    fn watch_dongle(&mut self, now: Now) {
        let (kind, detail) = match self.unreachable(now) {
            Some((since, why))
                if !self.dongle_reported_offline && now.mono >= since + DONGLE_OFFLINE_DEBOUNCE =>
            {
                (EventKind::DongleOffline, why)
            }
            None if self.dongle_reported_offline && self.last_heard.is_some() => (
                EventKind::DongleOnline,
                "the dongle is heard again".to_string(),
            ),
            _ => return,
        };
        self.dongle_reported_offline = kind == EventKind::DongleOffline;
        let mut event = Event::new(
            format!("{}-{kind}", now.wall.strftime("%Y%m%dT%H%M%S%.3fZ")),
            kind,
            now.wall,
        );
        event.soc = self.status.soc;
        event.detail = Some(detail);
        self.emit(event);
    }

    /// Notes a scheduled occurrence that charged nothing, for the history.
    fn record_occurrence(
        &mut self,
        reason: StopReason,
        target: TargetSoc,
        occurrence: Timestamp,
        detail: String,
        now: Now,
    ) {
        let soc = self.status.soc;
        let id = format!(
            "{}-{}",
            occurrence.strftime("%Y%m%dT%H%M%SZ"),
            reason.as_str()
        );
        let kind = match reason {
            StopReason::Skipped => EventKind::ChargeSkipped,
            StopReason::ChargeFailed => EventKind::ChargeFailed,
            _ => EventKind::ScheduleMissed,
        };
        let mut event = Event::new(format!("{id}-{kind}"), kind, now.wall);
        event.origin = Some(Origin::Schedule);
        event.target_soc = Some(target);
        event.soc = soc;
        event.started_at = Some(occurrence);
        event.stop_reason = Some(reason);
        event.detail = Some(detail.clone());
        self.emit(event);
        self.occurrence_records.push(SessionRecord {
            id,
            origin: Origin::Schedule,
            target_soc: target,
            started_at: occurrence,
            ended_at: now.wall,
            start_soc: soc,
            end_soc: soc,
            stop_reason: Some(reason),
            detail: Some(detail),
            energy_wh: None,
            restore_failures: Vec::new(),
            cost: None,
            currency: None,
        });
    }

    /// Answers every waiting "charge now" at once.
    fn answer_starts(&mut self, success: bool, message: String, fx: &mut Vec<Effect>) {
        self.refresh_status();
        for id in self.start_waiters.drain(..) {
            fx.push(Effect::reply(
                id,
                Reply::Start(StartOutcome {
                    success,
                    message: message.clone(),
                    status: self.status.clone(),
                }),
            ));
        }
    }

    /// The sentence for a charge that is not needed: SOC already at or above `target`.
    fn already_reached(&self, target: TargetSoc) -> Option<String> {
        let soc = self.status.soc?;
        target.reached_by(soc).then(|| {
            format!(
                "Battery is already at {soc}, at or above the target {target}: nothing to charge"
            )
        })
    }

    /// The one start path, used by the schedule and by "charge now". Returns the sentence
    /// saying why nothing starts when SOC is already at the target.
    fn start(
        &mut self,
        origin: Origin,
        target: TargetSoc,
        now: Now,
        fx: &mut Vec<Effect>,
    ) -> Option<String> {
        if let Some(msg) = self.already_reached(target) {
            info!(%target, "charge skipped: SOC already at or above the target");
            self.drop_spent_schedule();
            return Some(msg);
        }
        let soc = self.status.soc;
        info!(?origin, %target, soc = ?soc.map(Soc::get), cutoff_h = self.cfg.params.cutoff.as_secs_f64() / 3600.0, "starting a charge");
        let mut session = Session::new(origin, target, now, &self.cfg.params, soc);
        self.unique_id(&mut session);
        if self.ac_maybe_left_on {
            // What it finds on may be an earlier charge's leftover: it ends with AC off.
            let mut owner = Settings::new();
            owner.insert(AC_CHARGE.to_string(), SettingValue::Int(0));
            session.inherit(owner);
        }
        self.session = Some(session);
        // Saved before anything is written to the inverter.
        self.persist(fx);
        self.snapshot_wanted = true;
        None
    }

    /// Whether snapshot requests and writes may go out: not while the boot still waits for the
    /// first broker connection.
    fn dongle_ready(&mut self, now: Now) -> bool {
        match self.connect_grace {
            Some(until) if !self.status.mqtt_connected && now.mono < until => false,
            Some(_) => {
                self.connect_grace = None;
                true
            }
            None => true,
        }
    }

    /// Asks for the inverter's settings: for a preparing session, or a minute ahead of a
    /// scheduled start so that its first write is not held up by the read (a legacy dongle may
    /// publish its hold banks only every few minutes, and some registers not at all).
    fn request_snapshot(&mut self, now: Now, fx: &mut Vec<Effect>) {
        if self.snapshot_in_flight {
            return;
        }
        if self.snapshot_wanted {
            self.snapshot_wanted = false;
            let recent = self.prefetched.as_ref().is_some_and(|(at, snap)| {
                snap.is_some() && now.mono.saturating_sub(*at) <= PREFETCH_VALID
            });
            let fresh = if recent {
                Freshness::Cached
            } else {
                Freshness::Read
            };
            self.prefetched = None;
            self.snapshot_is_prefetch = false;
            self.snapshot_in_flight = true;
            fx.push(Effect::Snapshot {
                settings: self.cfg.params.settings(),
                fresh,
            });
            return;
        }
        if self.session.is_some() {
            return;
        }
        let Some(Due::Wait(at)) = self.schedule.as_ref().map(|s| s.due(now.wall)) else {
            return;
        };
        let ahead = Duration::try_from(at.duration_since(now.wall)).unwrap_or(Duration::ZERO);
        if ahead <= PREFETCH_AHEAD && self.prefetch_for != Some(at) {
            debug!(start = %at, "reading the inverter's settings ahead of the scheduled start");
            self.prefetch_for = Some(at);
            self.snapshot_is_prefetch = true;
            self.snapshot_in_flight = true;
            fx.push(Effect::Snapshot {
                settings: self.cfg.params.settings(),
                fresh: Freshness::Read,
            });
        }
    }

    fn on_snapshot(&mut self, snap: Option<Settings>, now: Now) {
        self.snapshot_in_flight = false;
        if let Some(values) = &snap {
            self.note_inverter(values.iter().map(|(k, v)| (k.as_str(), *v)), now);
        }
        let preparing = self
            .session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Preparing);
        if std::mem::take(&mut self.snapshot_is_prefetch) {
            // Kept for the start: when it begins (or now, if it fired while this read was in
            // flight) the session asks the adapter's cache, kept current by every hold message
            // since, or reads afresh if this read found nothing.
            self.prefetched = Some((now.mono, snap));
            if preparing {
                self.snapshot_wanted = true;
            }
            return;
        }
        if snap.is_none() {
            warn!(
                "the inverter's settings could not be read: the charge goes ahead, and at its end the windows are switched off and AC charging disabled instead of restoring earlier values"
            );
        }
        if let Some(s) = &mut self.session {
            s.on_snapshot(now, snap, &self.cfg.tz);
        }
    }

    fn dispatch(&mut self, now: Now, fx: &mut Vec<Effect>) {
        if self.write_in_flight {
            return;
        }
        let Some(s) = &mut self.session else { return };
        let Some(w) = s.next_write(now) else { return };
        let is_stop = w.setting == AC_CHARGE && w.value == SettingValue::Int(0);
        if !is_stop {
            // A start or restore write is recorded before it is sent, so that a crash leaves a
            // record of what may have changed. The stop goes out first and is saved after:
            // it is the one that must be fast.
            self.persist(fx);
        }
        debug!(setting = %w.setting, value = %w.value, "writing");
        self.write_in_flight = true;
        fx.push(Effect::Write(w));
    }

    fn on_write_result(&mut self, result: WriteResult, now: Now) {
        self.write_in_flight = false;
        if result == WriteResult::Confirmed
            && let Some(w) = self.session.as_ref().and_then(|s| s.in_flight.clone())
        {
            self.note_inverter(std::iter::once((w.setting.as_str(), w.value)), now);
        }
        let Some(s) = &mut self.session else { return };
        let before = s.phase;
        let was_charging = s.is_charging();
        s.on_write_result(now, result);
        if before == Phase::Starting && s.phase == Phase::Charging {
            info!(target = %s.target, deadline = %s.deadline, "charging: AC charge is on; watching SOC");
        }
        if before == Phase::Stopping && was_charging && !s.is_charging() {
            info!("AC charge is off");
        }
    }

    fn finish_session(&mut self, now: Now, fx: &mut Vec<Effect>) {
        let Some(s) = &self.session else { return };
        if !s.is_finished() {
            return;
        }
        let mut record = SessionRecord::of(s, now.wall);
        let reason = s.stop_reason.unwrap_or(StopReason::Cancelled);
        if s.cheapest
            && let Some(p) = &self.prices
        {
            record.cost = s
                .energy_wh
                .and_then(|e| night::cost(e, s.started_at, record.ended_at, &p.slots));
            record.currency = record.cost.map(|_| p.currency.clone());
        }
        if s.cheapest
            && let Some(n) = &mut self.night
        {
            match reason {
                StopReason::SlotEnd => n.untold = true,
                StopReason::TargetReached | StopReason::Cutoff => n.untold = false,
                _ => {
                    // A fault or the owner ended the run: the night ends with it (its stop
                    // is told), rather than starting again into the same trouble.
                    info!("the cheapest-hours charge ends with its run");
                    self.night = None;
                }
            }
        }
        let Some(s) = &self.session else { return };
        let detail = s.detail.clone().unwrap_or_default();
        if s.restore_failures.is_empty() {
            info!(reason = reason.as_str(), soc = ?s.last_soc.map(Soc::get), "charge session ended: {detail}");
        } else {
            warn!(reason = reason.as_str(), failures = ?s.restore_failures, "charge session ended, but some settings could not be restored: {detail}");
        }
        if s.snapshot.is_none() && !s.touched.is_empty() {
            warn!(
                "the inverter's settings from before the charge were unknown, so they were not restored: the stop switched AC charging off and the charge windows off instead (SOC limit and charge type stay as the charge set them)"
            );
        }
        fx.push(Effect::History(record));
        for event in session_end_events(s, now.wall) {
            if self.cfg.params.sabotage == Sabotage::SilentFailure
                && event.kind != EventKind::ChargeComplete
            {
                continue;
            }
            self.emit(event);
        }
        let Some(s) = &self.session else { return };
        self.ac_maybe_left_on = s.may_have_left_ac_on();
        if self.ac_maybe_left_on {
            warn!(
                "AC charging may still be on: switching it off was never confirmed. The inverter's own SOC limit and window are back as the owner had them; the next charge switches AC charging off at its end"
            );
        }
        self.status.last_stop = Some((reason, now.wall, detail));
        self.session = None;
        self.drop_spent_schedule();
    }

    fn on_dongle(&mut self, d: DongleInput, now: Now, fx: &mut Vec<Effect>) {
        if !matches!(
            d,
            DongleInput::Connected(_) | DongleInput::Availability(false)
        ) {
            self.heard_dongle(now, fx);
        }
        if !matches!(d, DongleInput::Connected(_)) {
            self.status.last_message = Some(now.wall);
        }
        match d {
            DongleInput::Connected(up) => {
                if !up && self.status.mqtt_connected {
                    self.broker_down_since = Some(now.mono);
                }
                self.status.mqtt_connected = up;
            }
            DongleInput::Telemetry {
                mut soc,
                battery_power_w,
                charge_power_w,
            } => {
                if let Some(reading) = soc {
                    let verdict = self.soc_filter.offer(reading, now.mono);
                    if let Verdict::Hold { reading, last } = verdict {
                        soc = None;
                        if let Some(more) = self.held_soc.allow(now.mono) {
                            warn!(%reading, %last, more_since_last_warning = more,
                                "held back an implausible SOC reading until the next one confirms it");
                        }
                    }
                    if matches!(verdict, Verdict::Hold { .. }) || self.soc_filter.unconfirmed() {
                        // Firmware >= 4.3 repeats no unchanged SOC: ask for the reading that
                        // settles it rather than wait for the battery to move.
                        self.ask_soc_again(now, fx);
                    }
                }
                if soc.is_some() {
                    self.status.soc = soc;
                }
                if battery_power_w.is_some() {
                    self.status.battery_power = battery_power_w;
                }
                self.status.last_telemetry = Some(now.wall);
                self.status.dongle_online = Some(true);
                if let Some(s) = &mut self.session {
                    s.on_telemetry(now, soc, charge_power_w);
                }
            }
            DongleInput::Availability(online) => {
                if !online {
                    warn!("the dongle reports itself offline");
                    if self.status.dongle_online != Some(false) {
                        self.offline_said_since = Some(now.mono);
                    }
                }
                self.status.dongle_online = Some(online);
                if let Some(s) = &mut self.session {
                    s.on_availability(now, online);
                }
            }
            DongleInput::Settings {
                values,
                report,
                firmware_code,
            } => {
                if let Some(code) = firmware_code {
                    self.note_firmware(code);
                }
                self.note_inverter(
                    values.iter().filter_map(|(k, v)| Some((k.as_str(), (*v)?))),
                    now,
                );
                if let Some(s) = &mut self.session {
                    s.on_dongle_message(now);
                    let before = s.stop_reason;
                    for (name, value) in values {
                        s.on_setting_reported(now, &name, value, report);
                    }
                    if before.is_none() && s.stop_reason == Some(StopReason::ExternalOverride) {
                        warn!("{}", s.detail.clone().unwrap_or_default());
                    }
                }
            }
            DongleInput::FirmwareCode(code) => self.note_firmware(code),
            DongleInput::Other => {
                if let Some(s) = &mut self.session {
                    s.on_dongle_message(now);
                }
            }
        }
    }

    /// Keeps the AC-charge settings among reported values, for the API.
    fn note_inverter<'a>(
        &mut self,
        values: impl Iterator<Item = (&'a str, SettingValue)>,
        now: Now,
    ) {
        let mut any = false;
        for (name, value) in values {
            let wanted = name == AC_CHARGE
                || name == SOC_LIMIT
                || name == BAT_CHG_CONTROL
                || name == self.cfg.params.charge_type_setting
                || WINDOWS.iter().any(|(a, b)| name == *a || name == *b);
            if wanted {
                self.status.inverter.insert(name.to_string(), value);
                any = true;
            }
        }
        if any {
            self.status.inverter_read_at = Some(now.wall);
        }
    }

    /// The inverter's firmware code, from its own answer or from hold data, whichever comes
    /// first: logged once each time it changes.
    fn note_firmware(&mut self, code: String) {
        if self.status.firmware_code.as_deref() != Some(code.as_str()) {
            info!(%code, "inverter firmware code");
        }
        self.status.firmware_code = Some(code);
    }

    /// Notes that the dongle was heard. One heard again after a silence of half the stale
    /// limit or more (shorter than a reboot, longer than its reports are apart), or back
    /// online, may have come back with other settings: during a charge they are asked for
    /// again (at most once per stale limit), so that a change made meanwhile is seen, and ends
    /// the charge as an override, within one report.
    fn heard_dongle(&mut self, now: Now, fx: &mut Vec<Effect>) {
        let quiet_for = self.last_heard.map(|t| now.mono.saturating_sub(t));
        let was_offline = self.status.dongle_online == Some(false);
        self.last_heard = Some(now.mono);
        let stale = self.cfg.params.stale_after;
        let came_back = was_offline || quiet_for.is_some_and(|q| q >= stale / 2);
        let asked_lately = self
            .last_refresh
            .is_some_and(|t| now.mono.saturating_sub(t) < stale);
        if self.session.is_some() && came_back && !asked_lately {
            info!(
                quiet_s = quiet_for.map(|q| q.as_secs()),
                "the dongle is heard again; asking for its settings"
            );
            self.last_refresh = Some(now.mono);
            fx.push(Effect::Refresh);
        }
    }

    /// Asks the dongle for its readings (at most once a minute).
    fn ask_soc_again(&mut self, now: Now, fx: &mut Vec<Effect>) {
        if self
            .last_soc_check
            .is_some_and(|t| now.mono.saturating_sub(t) < SOC_CHECK_INTERVAL)
        {
            return;
        }
        self.last_soc_check = Some(now.mono);
        fx.push(Effect::Refresh);
    }

    fn on_command(&mut self, id: RequestId, cmd: Command, now: Now, fx: &mut Vec<Effect>) {
        match cmd {
            Command::SetSchedule(input) => self.set_schedule(id, input, now, fx),
            Command::CancelSchedule => {
                if self.schedule.take().is_some() {
                    info!("schedule cancelled");
                }
                self.call_off_night();
                fx.push(Effect::Save {
                    state: Box::new(self.state()),
                    ticket: Some(SaveTicket::Cancel(id)),
                });
                // Nothing else happens until the save is answered.
                self.awaiting_save = Some(Awaiting::Cancel);
            }
            Command::StopCharge => {
                self.call_off_night();
                self.stop(
                    id,
                    now,
                    "stopped through the API; the schedule is kept",
                    None,
                    fx,
                );
            }
            Command::ChargeNow(target) => self.charge_now(id, target, now, fx),
        }
    }

    fn charge_now(&mut self, id: RequestId, target: TargetSoc, now: Now, fx: &mut Vec<Effect>) {
        if let Some(s) = &mut self.session {
            let answer = if s.active_target().is_some() {
                s.set_target(now, target);
                Some((true, format!("Already charging; target set to {target}")))
            } else if !s.has_stopped_charging() {
                Some((
                    false,
                    "The previous charge is still switching AC charging off; try again in a minute"
                        .to_string(),
                ))
            } else {
                // Only restoring: the new charge takes over after one write at most.
                None
            };
            if let Some((success, message)) = answer {
                self.step(now, fx);
                fx.push(Effect::reply(
                    id,
                    Reply::Start(StartOutcome {
                        success,
                        message,
                        status: self.status.clone(),
                    }),
                ));
                return;
            }
        }
        if self.session.is_none()
            && let Some(why) = self.dongle_problem(now)
        {
            // Answered at once: waiting for writes that cannot be confirmed helps nobody.
            info!("charge now refused: {why}");
            self.step(now, fx);
            fx.push(Effect::reply(
                id,
                Reply::Start(StartOutcome {
                    success: false,
                    message: format!("Charging could not be started: {why}"),
                    status: self.status.clone(),
                }),
            ));
            return;
        }
        // Charging now leaves a one-shot schedule for "now", as the app expects, in place of
        // a once schedule or none. A recurring schedule stays and runs on its next occurrence.
        let keeps_recurring = self
            .schedule
            .as_ref()
            .is_some_and(|s| s.mode == Mode::Recurring);
        let time = crate::domain::schedule::local_time_of(now.wall, &self.cfg.tz);
        let once = (!keeps_recurring).then_some(Schedule {
            target,
            time,
            mode: Mode::Once,
            enabled: true,
            days: None,
            next_run: None,
            last_run: Some(now.wall),
            created_at: now.wall,
            strategy: Strategy::Fixed,
            ready_by: None,
        });
        if let Some(once) = once {
            self.schedule = Some(once);
        }
        if self.session.is_some() {
            if let Some((Origin::Schedule, scheduled)) = self.queued_start
                && let Some(occurrence) = self.schedule.as_ref().and_then(|s| s.last_run)
            {
                let detail = format!("a charge now to {target} took the place of this one");
                self.record_occurrence(StopReason::Missed, scheduled, occurrence, detail, now);
            }
            self.queued_start = Some((Origin::ChargeNow, target));
            self.start_waiters.push(id);
            return;
        }
        match self.start(Origin::ChargeNow, target, now, fx) {
            Some(msg) => {
                self.step(now, fx);
                fx.push(Effect::reply(
                    id,
                    Reply::Start(StartOutcome {
                        success: true,
                        message: msg,
                        status: self.status.clone(),
                    }),
                ));
            }
            None => self.start_waiters.push(id),
        }
    }

    fn set_schedule(
        &mut self,
        id: RequestId,
        input: ScheduleInput,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let mut schedule = match Schedule::new(
            input.target,
            input.time,
            input.mode,
            input.enabled,
            input.days,
            input.first_run,
            now.wall,
            &self.cfg.tz,
        ) {
            Ok(s) => s,
            Err(e) => {
                fx.push(Effect::reply(id, Reply::Schedule(Err(e.into()))));
                return;
            }
        };
        if let Some(ready_by) = input.ready_by {
            schedule.strategy = Strategy::Cheapest;
            schedule.ready_by = Some(ready_by);
        }
        info!(target = %schedule.target, time = %schedule.time, mode = schedule.mode.as_str(),
            enabled = schedule.enabled, next_run = ?schedule.next_run,
            strategy = schedule.strategy.as_str(), ready_by = ?schedule.ready_by, "schedule set");
        let mut session = self.session.clone();
        if let Some(s) = &mut session {
            if schedule.enabled {
                s.set_target(now, schedule.target);
            } else {
                s.cancel(now, "the schedule was disabled");
            }
        }
        // Persisted before the answer: if it cannot be saved, nothing changes.
        let state = State {
            version: FORMAT_VERSION,
            schedule: Some(schedule.clone()),
            session: session.clone(),
            // A new schedule replaces tonight's cheapest-hours charge (a run under way goes on
            // to its end, with the new target).
            night: None,
            ..self.state()
        };
        fx.push(Effect::Save {
            state: Box::new(state),
            ticket: Some(SaveTicket::Schedule(id)),
        });
        self.awaiting_save = Some(Awaiting::Schedule(schedule, Box::new(session)));
    }

    fn on_saved(
        &mut self,
        ticket: SaveTicket,
        result: Result<(), String>,
        now: Now,
        fx: &mut Vec<Effect>,
    ) {
        let Some(awaiting) = self.awaiting_save.take() else {
            return;
        };
        match (ticket, awaiting) {
            (SaveTicket::Schedule(id), Awaiting::Schedule(schedule, session)) => match result {
                Ok(()) => {
                    self.schedule = Some(schedule);
                    self.session = *session;
                    self.night = None;
                    self.plan_key = None;
                    self.saved = Some(self.state());
                    self.step(now, fx);
                    fx.push(Effect::reply(id, Reply::Schedule(Ok(self.status.clone()))));
                }
                Err(e) => {
                    fx.push(Effect::reply(
                        id,
                        Reply::Schedule(Err(CommandError::Store(e))),
                    ));
                }
            },
            (SaveTicket::Cancel(id), Awaiting::Cancel) => {
                if result.is_ok() {
                    self.saved = Some(self.state());
                }
                let unsaved = result.err().map(|e| {
                    format!("the cancellation could not be saved ({e}), so the schedule may return after a restart: check that the data directory is writable and not full")
                });
                self.stop(id, now, "stopped through the API", unsaved, fx);
            }
            (ticket, awaiting) => {
                debug_assert!(false, "{ticket:?} answers a save for {awaiting:?}");
            }
        }
    }

    fn stop(
        &mut self,
        id: RequestId,
        now: Now,
        why: &str,
        note: Option<String>,
        fx: &mut Vec<Effect>,
    ) {
        if self.queued_start.take().is_some() {
            self.answer_starts(
                false,
                format!("Charging was stopped before it began ({why})"),
                fx,
            );
        }
        match &mut self.session {
            Some(s)
                if s.is_charging()
                    || matches!(
                        s.phase,
                        Phase::Preparing | Phase::Starting | Phase::Charging
                    ) =>
            {
                s.cancel(now, why);
                self.stop_waiters.push((id, now.wall, note));
            }
            _ => fx.push(Effect::reply(
                id,
                Reply::Stop(stop_outcome(
                    true,
                    "Charging disabled".into(),
                    note,
                    now.wall,
                )),
            )),
        }
        self.step(now, fx);
    }

    fn answer_waiters(&mut self, _now: Now, fx: &mut Vec<Effect>) {
        if !self.start_waiters.is_empty() && self.queued_start.is_none() {
            let status = &self.status;
            let outcome = match &self.session {
                Some(s) if s.phase == Phase::Charging => Some(StartOutcome {
                    success: true,
                    message: format!("Charging enabled to {}", s.target),
                    status: status.clone(),
                }),
                Some(s) if matches!(s.phase, Phase::Preparing | Phase::Starting) => None,
                Some(s) => Some(StartOutcome {
                    success: false,
                    message: format!(
                        "Charging could not be started: {}",
                        s.detail.clone().unwrap_or_else(|| "it was stopped".into())
                    ),
                    status: status.clone(),
                }),
                None => Some(StartOutcome {
                    success: false,
                    message: status
                        .last_stop
                        .as_ref()
                        .map(|(_, _, d)| format!("Charging could not be started: {d}"))
                        .unwrap_or_else(|| "Charging could not be started".into()),
                    status: status.clone(),
                }),
            };
            if let Some(o) = outcome {
                for id in self.start_waiters.drain(..) {
                    fx.push(Effect::reply(id, Reply::Start(o.clone())));
                }
            }
        }
        if !self.stop_waiters.is_empty() {
            let outcome = match &self.session {
                Some(s) if s.stop_is_retrying() => Some((
                    false,
                    format!(
                        "Could not switch AC charging off yet ({}); retrying. The inverter's own SOC limit and window end remain in force",
                        s.detail.clone().unwrap_or_default()
                    ),
                )),
                Some(s) if s.is_charging() => None,
                _ => Some((true, "Charging disabled".to_string())),
            };
            if let Some((success, message)) = outcome {
                for (id, at, note) in self.stop_waiters.drain(..) {
                    fx.push(Effect::reply(
                        id,
                        Reply::Stop(stop_outcome(success, message.clone(), note, at)),
                    ));
                }
            }
        }
    }

    fn state(&self) -> State {
        State {
            version: FORMAT_VERSION,
            schedule: self.schedule.clone(),
            session: self.session.clone(),
            ac_maybe_left_on: self.ac_maybe_left_on,
            events: self.events.clone(),
            dongle_reported_offline: self.dongle_reported_offline,
            night: self.night.clone(),
            last_session_start: self.last_session_start,
            session_seq: self.session_seq,
        }
    }

    /// Hands the state to the disk if what must survive a restart changed.
    fn persist(&mut self, fx: &mut Vec<Effect>) {
        let state = self.state();
        if self
            .saved
            .as_ref()
            .is_some_and(|s| same_durable_state(s, &state))
        {
            return;
        }
        self.saved = Some(state.clone());
        fx.push(Effect::Save {
            state: Box::new(state),
            ticket: None,
        });
    }

    /// A routine save failed: the next step tries again.
    pub fn save_failed(&mut self) {
        self.saved = None;
    }

    fn refresh_status(&mut self) {
        self.status.schedule = self.schedule.clone();
        self.status.session = self.session.as_ref().map(|s| SessionView {
            origin: s.origin,
            target: s.target,
            active_target: s.active_target(),
            started_at: s.started_at,
            deadline: s.deadline,
            phase: s.phase,
            charging: s.is_charging(),
            start_soc: s.start_soc,
            energy_wh: s.energy_wh,
        });
    }
}

/// A stop's answer; a problem noted on the way (an unsaved cancellation) makes it a failure.
fn stop_outcome(
    success: bool,
    message: String,
    note: Option<String>,
    at: Timestamp,
) -> StopOutcome {
    match note {
        Some(note) => StopOutcome {
            success: false,
            message: format!("{message}, but {note}"),
            stopped_at: at,
        },
        None => StopOutcome {
            success,
            message,
            stopped_at: at,
        },
    }
}

/// Whether two states differ only in what need not be saved at once (live telemetry).
fn same_durable_state(a: &State, b: &State) -> bool {
    let key = |s: &State| {
        (
            s.ac_maybe_left_on,
            (
                s.dongle_reported_offline,
                s.night.clone(),
                s.last_session_start,
                s.session_seq,
            ),
            s.events.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            s.schedule.clone(),
            s.session.as_ref().map(|x| {
                (
                    x.phase,
                    x.target,
                    x.start_done,
                    x.stop_done,
                    x.charging,
                    x.in_flight.clone(),
                    x.touched.clone(),
                    x.snapshot.clone(),
                    x.stop_reason,
                    x.extra_writes.clone(),
                    x.inherited.clone(),
                    (
                        x.stop_unconfirmed,
                        x.began_charging,
                        x.start_announced,
                        x.cheapest,
                        x.slot_end,
                    ),
                )
            }),
        )
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests;

/// What the owner is told when a session ends: how it ended, and whether the inverter's
/// settings could not all be put back.
fn session_end_events(s: &Session, now: Timestamp) -> Vec<Event> {
    let reason = s.stop_reason.unwrap_or(StopReason::Cancelled);
    let kind = match reason {
        StopReason::TargetReached => EventKind::ChargeComplete,
        StopReason::Skipped => EventKind::ChargeSkipped,
        StopReason::Missed => EventKind::ScheduleMissed,
        StopReason::ChargeFailed => EventKind::ChargeFailed,
        _ if !s.began_charging => EventKind::ChargeFailed,
        _ => EventKind::ChargeStopped,
    };
    let base = |kind: EventKind| {
        let mut e = Event::new(format!("{}-{kind}", s.id), kind, now);
        e.origin = Some(s.origin);
        e.target_soc = Some(s.target);
        e.soc = s.last_soc;
        e.start_soc = s.start_soc;
        e.stop_reason = Some(reason);
        e.started_at = Some(s.started_at);
        e.energy_wh = s.energy_wh.map(|e| (e * 10.0).round() / 10.0);
        e
    };
    let mut events = Vec::new();
    // A cheapest-hours run that reached its slots' end is no news: the charge goes on.
    if reason != StopReason::SlotEnd {
        let mut end = base(kind);
        end.detail = s.detail.clone();
        events.push(end);
    }
    if !s.restore_failures.is_empty() {
        let mut e = base(EventKind::RestoreFailed);
        e.detail = Some(format!(
            "these settings could not be put back as they were before the charge: {}; check them in the inverter's app",
            s.restore_failures.join(", ")
        ));
        events.push(e);
    }
    events
}

/// What a shown plan was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlanKey {
    from: Timestamp,
    until: Timestamp,
    target: u8,
    soc: Option<u8>,
    prices: Option<Timestamp>,
    minute: i64,
}

fn add_wall(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}
