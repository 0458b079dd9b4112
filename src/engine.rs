//! The engine: the single owner of the schedule, the charge session and the latest telemetry.
//!
//! One task `select!`s over API commands, dongle events, the answer to the write (or snapshot)
//! in flight, its next deadline and shutdown. Decisions are made by the pure core
//! ([`crate::domain`]); the engine turns them into dongle writes, state-file saves and a
//! [`Status`] snapshot that HTTP handlers read without a round trip.
//!
//! It never waits on the wall clock: it sleeps on the monotonic clock for at most
//! `soc_check_interval` and re-reads the wall clock on every wake, so NTP corrections and
//! manual clock changes are noticed within that interval.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::domain::schedule::{Due, Schedule, ScheduleError};
use crate::domain::session::{
    AC_CHARGE, ChargeParams, Now, Origin, Phase, Report, Session, StopReason, Write, WriteResult,
    value_like,
};
use crate::domain::soc_filter::{SocFilter, SocRule, Verdict};
use crate::domain::units::{Days, LocalTime, Mode, SettingValue, Soc, TargetSoc};
use crate::dongle::client::{DongleEvent, DongleHandle, Freshness};
use crate::dongle::codec::{self, Message};
use crate::store::{SessionRecord, State, Store};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub params: ChargeParams,
    pub tz: TimeZone,
    /// The longest the engine sleeps before re-reading the wall clock.
    pub check_interval: Duration,
    /// Which SOC readings are believed at once.
    pub soc_rule: SocRule,
    /// How long a write waits for its answer: what a stop waits for the write in flight.
    pub write_timeout: Duration,
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

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("the state could not be saved: {0}")]
    Store(String),
    #[error("the service is shutting down")]
    ShuttingDown,
}

pub enum Command {
    SetSchedule {
        input: ScheduleInput,
        reply: oneshot::Sender<Result<Status, CommandError>>,
    },
    /// Cancels the schedule and stops any charge.
    CancelSchedule { reply: oneshot::Sender<StopOutcome> },
    ChargeNow {
        target: TargetSoc,
        reply: oneshot::Sender<StartOutcome>,
    },
    /// Answered at once: proves the engine loop is running (the service manager's watchdog).
    Ping { reply: oneshot::Sender<()> },
    /// Breaks the engine on purpose, for tests of the supervision around it.
    Inject(EngineFault),
}

/// A failure the engine can be made to have (see [`EngineHandle::inject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFault {
    /// The loop stops answering anything, as if stuck on a lock or a hung disk.
    Hang,
    /// The engine task panics.
    Panic,
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

/// Everything the API shows, refreshed by the engine after every change.
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
}

impl Status {
    pub fn is_charging(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.charging)
    }
    /// The schedule's target, else that of a charge that is starting or charging.
    pub fn target_soc(&self) -> Option<TargetSoc> {
        self.schedule
            .as_ref()
            .map(|s| s.target)
            .or_else(|| self.session.as_ref().and_then(|s| s.active_target))
    }
    pub fn next_run(&self) -> Option<Timestamp> {
        self.schedule.as_ref().and_then(|s| s.next_run)
    }
}

/// The API's handle on the engine.
#[derive(Clone)]
pub struct EngineHandle {
    cmds: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
}

impl EngineHandle {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub async fn set_schedule(&self, input: ScheduleInput) -> Result<Status, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::SetSchedule { input, reply }).await?;
        rx.await.map_err(|_| CommandError::ShuttingDown)?
    }

    pub async fn cancel_schedule(&self) -> Result<StopOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::CancelSchedule { reply }).await?;
        rx.await.map_err(|_| CommandError::ShuttingDown)
    }

    pub async fn charge_now(&self, target: TargetSoc) -> Result<StartOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ChargeNow { target, reply }).await?;
        rx.await.map_err(|_| CommandError::ShuttingDown)
    }

    /// Whether the engine loop answers within `within` of `clock`'s time (a full command
    /// queue counts as not answering).
    pub async fn ping(&self, within: Duration, clock: &Clock) -> bool {
        let asked = async {
            let (reply, rx) = oneshot::channel();
            self.send(Command::Ping { reply }).await.is_ok() && rx.await.is_ok()
        };
        tokio::select! {
            answered = asked => answered,
            _ = clock.sleep(within) => false,
        }
    }

    /// Makes the engine fail as `fault` says. Only for tests of health reporting and
    /// supervision: nothing in the service calls it.
    #[doc(hidden)]
    pub async fn inject(&self, fault: EngineFault) {
        let _ = self.send(Command::Inject(fault)).await;
    }

    async fn send(&self, cmd: Command) -> Result<(), CommandError> {
        self.cmds
            .send(cmd)
            .await
            .map_err(|_| CommandError::ShuttingDown)
    }
}

pub struct Engine {
    cfg: EngineConfig,
    clock: Clock,
    store: Store,
    dongle: DongleHandle,
    schedule: Option<Schedule>,
    session: Option<Session>,
    status: watch::Sender<Status>,
    pending_write: Option<(Write, oneshot::Receiver<WriteResult>)>,
    pending_snapshot:
        Option<oneshot::Receiver<Option<std::collections::BTreeMap<String, SettingValue>>>>,
    /// A preparing session needs the inverter's settings and they have not been asked for yet.
    snapshot_wanted: bool,
    /// Set at boot until the broker connection first comes up (at most until this monotonic
    /// instant): no snapshot request or write goes out before, because the client is still
    /// connecting and would report a write as not sent, which rolls back a resumed start.
    connect_grace: Option<Duration>,
    start_waiters: Vec<oneshot::Sender<StartOutcome>>,
    /// Stop requests waiting for AC charge to go off, with a problem to report, if any.
    stop_waiters: Vec<(Timestamp, Option<String>, oneshot::Sender<StopOutcome>)>,
    /// What was last written to disk, to save only on change.
    saved: Option<State>,
    bad_values: crate::logging::Throttle,
    soc_filter: SocFilter,
    held_soc: crate::logging::Throttle,
    /// A charge asked for while the previous one still restores settings: it begins once that
    /// session has no write in flight, taking over what it had left to restore.
    queued_start: Option<(Origin, TargetSoc)>,
    /// The settings read ahead of a scheduled start (monotonic instant of the answer), so the
    /// first write goes out at the minute instead of after a read.
    prefetched: Option<(
        Duration,
        Option<std::collections::BTreeMap<String, SettingValue>>,
    )>,
    /// The occurrence a read ahead was made for, so it is made once.
    prefetch_for: Option<Timestamp>,
    /// The snapshot in flight is a read ahead, not a session's.
    snapshot_is_prefetch: bool,
    /// When the dongle was last heard, and last asked for its settings (monotonic).
    last_heard: Option<Duration>,
    last_refresh: Option<Duration>,
}

/// Builds the engine from the stored state and returns it with its handle. Nothing runs until
/// [`Engine::run`] is awaited.
pub fn new(
    cfg: EngineConfig,
    clock: Clock,
    store: Store,
    dongle: DongleHandle,
    state: State,
) -> (Engine, EngineHandle, mpsc::Receiver<Command>) {
    let now = clock.now();
    let (status_tx, status_rx) = watch::channel(Status {
        started_at: now,
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
    });
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let cfg_soc_rule = cfg.soc_rule;
    let engine = Engine {
        cfg,
        clock,
        store,
        dongle,
        schedule: state.schedule,
        session: state.session,
        status: status_tx,
        pending_write: None,
        pending_snapshot: None,
        snapshot_wanted: false,
        connect_grace: None,
        start_waiters: Vec::new(),
        stop_waiters: Vec::new(),
        saved: None,
        bad_values: crate::logging::Throttle::per_minute(),
        soc_filter: SocFilter::new(cfg_soc_rule),
        held_soc: crate::logging::Throttle::per_minute(),
        queued_start: None,
        prefetched: None,
        prefetch_for: None,
        snapshot_is_prefetch: false,
        last_heard: None,
        last_refresh: None,
    };
    let handle = EngineHandle {
        cmds: cmd_tx,
        status: status_rx,
    };
    (engine, handle, cmd_rx)
}

/// Awaits an optional receiver; pends forever when there is none (for `select!`).
async fn maybe<T>(rx: &mut Option<oneshot::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

async fn maybe_write(p: &mut Option<(Write, oneshot::Receiver<WriteResult>)>) -> WriteResult {
    match p {
        Some((_, rx)) => rx
            .await
            .unwrap_or_else(|_| WriteResult::NotSent("the dongle client stopped".into())),
        None => std::future::pending().await,
    }
}

/// How long after its timeout a stop still waits for the answer to the write in flight.
const SHUTDOWN_SLACK: Duration = Duration::from_secs(1);
/// How far ahead of a scheduled start the inverter's settings are read.
const PREFETCH_AHEAD: Duration = Duration::from_secs(60);
/// How old settings read ahead may be and still serve a start (a clock jump or a late fire
/// makes them stale).
const PREFETCH_VALID: Duration = Duration::from_secs(180);
/// How long a start waits for the broker connection before its first write (see
/// `Engine::connect_grace`).
const BOOT_CONNECT_GRACE: Duration = Duration::from_secs(15);

impl Engine {
    fn now(&self) -> Now {
        Now {
            wall: self.clock.now(),
            mono: self.clock.mono().0,
        }
    }

    /// Runs until `shutdown` is cancelled. A running session is saved, not stopped: the next
    /// start resumes it.
    pub async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<DongleEvent>,
        shutdown: CancellationToken,
    ) {
        self.boot();
        loop {
            self.step();
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(ev) = events.recv() => self.on_dongle_event(ev),
                result = maybe_write(&mut self.pending_write) => self.on_write_result(result),
                snap = maybe(&mut self.pending_snapshot) => self.on_snapshot(snap.flatten()),
                Some(cmd) = cmds.recv() => match cmd {
                    Command::Inject(EngineFault::Hang) => {
                        error!("the engine was made to hang");
                        std::future::pending::<()>().await;
                    }
                    Command::Inject(EngineFault::Panic) => panic!("the engine was made to panic"),
                    cmd => self.on_command(cmd),
                },
                _ = self.clock.sleep(wake) => {}
            }
        }
        self.shut_down().await;
    }

    /// The engine's part of an ordered stop: the dongle client is still running, so the write
    /// in flight gets its answer (or its timeout). A clear answer is taken; anything else
    /// leaves the write marked in flight in the saved session, so the next start sends it
    /// again (setting writes are idempotent) and the session goes on as if never stopped.
    async fn shut_down(&mut self) {
        if let Some((w, rx)) = &mut self.pending_write {
            let (setting, value) = (w.setting.clone(), w.value);
            info!(%setting, %value, "finishing the write in flight before exiting");
            let bound = self.clock.sleep(self.cfg.write_timeout + SHUTDOWN_SLACK);
            let result = tokio::select! {
                r = rx => r.ok(),
                _ = bound => None,
            };
            match result {
                Some(r @ (WriteResult::Confirmed | WriteResult::Rejected(_))) => {
                    self.on_write_result(r)
                }
                other => {
                    info!(%setting, outcome = ?other, "the write in flight has no clear answer; it is sent again at the next start");
                }
            }
        }
        self.persist();
        if let Some(s) = &self.session {
            info!(phase = ?s.phase, target = %s.target, "a charge session is saved and will be resumed at the next start");
        }
    }

    /// Reconciles the stored state with the present: re-arms the schedule and resumes a
    /// session that was running when the process stopped.
    fn boot(&mut self) {
        let now = self.now();
        if !self.dongle.is_connected() {
            self.connect_grace = Some(now.mono + BOOT_CONNECT_GRACE);
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
        self.persist();
    }

    /// After every event: fire a due schedule, finish a done session, send the next write,
    /// save, answer waiters and publish the status.
    fn step(&mut self) {
        let now = self.now();
        if let Some(s) = &mut self.session {
            s.on_tick(now);
        }
        self.check_schedule(now);
        self.begin_queued_start(now);
        if self.dongle_ready(now) {
            self.request_snapshot(now);
            self.dispatch(now);
        }
        self.finish_session(now);
        self.drop_spent_schedule();
        self.persist();
        self.publish_status();
        self.answer_waiters(now);
    }

    fn check_schedule(&mut self, now: Now) {
        let Some(schedule) = &mut self.schedule else {
            return;
        };
        match schedule.due(now.wall) {
            Due::Fire(occurrence) => {
                schedule.consume(occurrence, now.wall, &self.cfg.tz);
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
                    Some(_) => info!(
                        "a charge is already running; this occurrence is consumed without a second start"
                    ),
                    None => {
                        self.start(Origin::Schedule, target, now);
                    }
                }
            }
            Due::Missed(occurrence) => {
                schedule.consume(occurrence, now.wall, &self.cfg.tz);
                warn!(%occurrence, now = %now.wall, next_run = ?schedule.next_run,
                    "the scheduled charge was missed by more than 10 minutes (service down or clock moved); skipped");
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
    fn begin_queued_start(&mut self, now: Now) {
        let Some((origin, target)) = self.queued_start else {
            return;
        };
        if let Some(msg) = self.already_reached(target) {
            // Nothing to charge: the previous session finishes its restore undisturbed.
            self.queued_start = None;
            self.answer_starts(true, msg);
            return;
        }
        if self.pending_write.is_some() {
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
        self.finish_session(now);
        self.start(origin, target, now);
        if let Some(s) = &mut self.session {
            s.inherit(inherited);
        }
    }

    /// Answers every waiting "charge now" at once.
    fn answer_starts(&mut self, success: bool, message: String) {
        let status = self.status.borrow().clone();
        for w in self.start_waiters.drain(..) {
            let _ = w.send(StartOutcome {
                success,
                message: message.clone(),
                status: status.clone(),
            });
        }
    }

    /// The sentence for a charge that is not needed: SOC already at or above `target`.
    fn already_reached(&self, target: TargetSoc) -> Option<String> {
        let soc = self.status.borrow().soc?;
        target.reached_by(soc).then(|| {
            format!(
                "Battery is already at {soc}, at or above the target {target}: nothing to charge"
            )
        })
    }

    /// The one start path, used by the schedule and by "charge now". Returns the sentence
    /// saying why nothing starts when SOC is already at the target.
    fn start(&mut self, origin: Origin, target: TargetSoc, now: Now) -> Option<String> {
        if let Some(msg) = self.already_reached(target) {
            info!(%target, "charge skipped: SOC already at or above the target");
            self.drop_spent_schedule();
            return Some(msg);
        }
        let soc = self.status.borrow().soc;
        info!(?origin, %target, soc = ?soc.map(Soc::get), cutoff_h = self.cfg.params.cutoff.as_secs_f64() / 3600.0, "starting a charge");
        self.session = Some(Session::new(origin, target, now, &self.cfg.params, soc));
        // Saved before anything is written to the inverter.
        self.persist();
        self.snapshot_wanted = true;
        None
    }

    /// Whether snapshot requests and writes may go out: not while the boot still waits for the
    /// first broker connection.
    fn dongle_ready(&mut self, now: Now) -> bool {
        match self.connect_grace {
            Some(until) if !self.dongle.is_connected() && now.mono < until => false,
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
    fn request_snapshot(&mut self, now: Now) {
        if self.pending_snapshot.is_some() {
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
            self.pending_snapshot = Some(self.dongle.snapshot(self.cfg.params.settings(), fresh));
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
            self.pending_snapshot = Some(
                self.dongle
                    .snapshot(self.cfg.params.settings(), Freshness::Read),
            );
        }
    }

    fn on_snapshot(&mut self, snap: Option<std::collections::BTreeMap<String, SettingValue>>) {
        self.pending_snapshot = None;
        let now = self.now();
        let preparing = self
            .session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Preparing);
        if std::mem::take(&mut self.snapshot_is_prefetch) {
            // Kept for the start: when it begins (or now, if it fired while this read was in
            // flight) the session asks the client's cache, kept current by every hold message
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

    fn dispatch(&mut self, now: Now) {
        if self.pending_write.is_some() {
            return;
        }
        let Some(s) = &mut self.session else { return };
        let Some(w) = s.next_write(now) else { return };
        let is_stop = w.setting == AC_CHARGE && w.value == SettingValue::Int(0);
        if !is_stop {
            // A start or restore write is recorded before it is sent, so that a crash leaves a
            // record of what may have changed. The stop goes out first and is saved after:
            // it is the one that must be fast.
            self.persist();
        }
        debug!(setting = %w.setting, value = %w.value, "writing");
        let rx = self.dongle.write(&w.setting, w.value);
        self.pending_write = Some((w, rx));
    }

    fn on_write_result(&mut self, result: WriteResult) {
        let Some((w, _)) = self.pending_write.take() else {
            return;
        };
        let now = self.now();
        match &result {
            WriteResult::Confirmed => {
                debug!(setting = %w.setting, value = %w.value, "write confirmed")
            }
            other => {
                warn!(setting = %w.setting, value = %w.value, outcome = ?other, "write not confirmed")
            }
        }
        let Some(s) = &mut self.session else { return };
        let before = s.phase;
        s.on_write_result(now, result);
        if before == Phase::Starting && s.phase == Phase::Charging {
            info!(target = %s.target, deadline = %s.deadline, "charging: AC charge is on; watching SOC");
        }
        if before == Phase::Stopping && w.setting == AC_CHARGE && !s.is_charging() {
            info!("AC charge is off");
        }
    }

    fn finish_session(&mut self, now: Now) {
        let Some(s) = &self.session else { return };
        if !s.is_finished() {
            return;
        }
        let record = SessionRecord::of(s, now.wall);
        let reason = s.stop_reason.unwrap_or(StopReason::Cancelled);
        let detail = s.detail.clone().unwrap_or_default();
        if s.restore_failures.is_empty() {
            info!(reason = reason.as_str(), soc = ?s.last_soc.map(Soc::get), "charge session ended: {detail}");
        } else {
            warn!(reason = reason.as_str(), failures = ?s.restore_failures, "charge session ended, but some settings could not be restored: {detail}");
        }
        crate::metrics::session_ended(reason.as_str());
        if s.snapshot.is_none() && !s.touched.is_empty() {
            warn!(
                "the inverter's settings from before the charge were unknown, so they were not restored: the stop switched AC charging off and the charge windows off instead (SOC limit and charge type stay as the charge set them)"
            );
        }
        if let Err(e) = self.store.append_history(&record) {
            error!("the charge history could not be written: {e}");
        }
        self.status
            .send_modify(|st| st.last_stop = Some((reason, now.wall, detail)));
        self.session = None;
        self.drop_spent_schedule();
    }

    fn on_dongle_event(&mut self, ev: DongleEvent) {
        let now = self.now();
        match ev {
            DongleEvent::Connected(up) => {
                self.status.send_modify(|s| s.mqtt_connected = up);
            }
            DongleEvent::Undecodable => {
                self.heard_dongle(now);
                self.status.send_modify(|s| s.last_message = Some(now.wall));
                if let Some(s) = &mut self.session {
                    s.on_dongle_message(now);
                }
            }
            DongleEvent::Message(m) => self.on_message(now, m),
        }
    }

    /// Notes that the dongle was heard. One heard again after a silence of half the stale
    /// limit or more (shorter than a reboot, longer than its reports are apart), or back
    /// online, may have come back with other settings: during a charge they are asked for
    /// again (at most once per stale limit), so that a change made meanwhile is seen, and ends
    /// the charge as an override, within one report.
    fn heard_dongle(&mut self, now: Now) {
        let quiet_for = self.last_heard.map(|t| now.mono.saturating_sub(t));
        let was_offline = self.status.borrow().dongle_online == Some(false);
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
            self.dongle.refresh();
        }
    }

    fn on_message(&mut self, now: Now, m: Message) {
        if !matches!(m, Message::Availability { online: false }) {
            self.heard_dongle(now);
        }
        self.status.send_modify(|s| s.last_message = Some(now.wall));
        match m {
            Message::Telemetry(fields) => {
                let mut t = codec::telemetry(&fields);
                if !t.rejected.is_empty()
                    && let Some(held) = self.bad_values.allow(now.mono)
                {
                    warn!(values = ?t.rejected, more_since_last_warning = held, "ignored out-of-range telemetry values");
                }
                if let Some(reading) = t.soc
                    && let Verdict::Hold { reading, last } =
                        self.soc_filter.offer(reading, now.mono)
                {
                    t.soc = None;
                    if let Some(more) = self.held_soc.allow(now.mono) {
                        warn!(%reading, %last, more_since_last_warning = more,
                            "held back an implausible SOC reading until the next one confirms it");
                    }
                }
                self.status.send_modify(|s| {
                    if t.soc.is_some() {
                        s.soc = t.soc;
                    }
                    if t.battery_power_w.is_some() {
                        s.battery_power = t.battery_power_w;
                    }
                    s.last_telemetry = Some(now.wall);
                    s.dongle_online = Some(true);
                });
                if let Some(s) = &mut self.session {
                    s.on_telemetry(now, t.soc, t.charge_power_w);
                }
            }
            Message::Availability { online } => {
                if !online {
                    warn!("the dongle reports itself offline");
                }
                self.status.send_modify(|s| s.dongle_online = Some(online));
                if let Some(s) = &mut self.session {
                    s.on_availability(now, online);
                }
            }
            Message::SettingUpdated(fields) => {
                self.on_settings_report(now, &fields, Report::Confirmed);
            }
            Message::FirmwareCode(code) => {
                if self.status.borrow().firmware_code.as_deref() != Some(code.as_str()) {
                    info!(%code, "inverter firmware code");
                }
                self.status.send_modify(|s| s.firmware_code = Some(code));
            }
            Message::Settings(fields) => {
                if let Some(code) = codec::firmware_code(&fields) {
                    self.status.send_modify(|s| s.firmware_code = Some(code));
                }
                if let Some(s) = &mut self.session {
                    s.on_dongle_message(now);
                }
                self.on_settings_report(now, &fields, Report::Polled);
            }
            Message::WriteResponse { .. } | Message::Status { .. } | Message::Ignored => {
                if let Some(s) = &mut self.session {
                    s.on_dongle_message(now);
                }
            }
        }
    }

    /// Settings as the dongle reports them, checked by a running session for another app's
    /// change (on every firmware: hold banks, hold deltas, snapshots and `setting/updated`).
    fn on_settings_report(&mut self, now: Now, fields: &codec::Fields, report: Report) {
        let Some(s) = &mut self.session else { return };
        let before = s.stop_reason;
        for (name, raw) in fields.iter() {
            let value = codec::setting_value(raw, value_like(name));
            s.on_setting_reported(now, name, value, report);
        }
        if before.is_none() && s.stop_reason == Some(StopReason::ExternalOverride) {
            warn!("{}", s.detail.clone().unwrap_or_default());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::SetSchedule { input, reply } => {
                let result = self.set_schedule(input, now);
                self.step();
                let _ = reply.send(result.map(|()| self.status.borrow().clone()));
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
            }
            Command::Inject(_) => {} // handled by the loop
            Command::CancelSchedule { reply } => {
                if self.schedule.take().is_some() {
                    info!("schedule cancelled");
                }
                let unsaved = self.try_persist().err().map(|e| {
                    format!("the cancellation could not be saved ({e}), so the schedule may return after a restart: check that the data directory is writable and not full")
                });
                self.stop(now, "stopped through the API", unsaved, reply);
            }
            Command::ChargeNow { target, reply } => {
                if let Some(s) = &mut self.session {
                    let answer = if s.active_target().is_some() {
                        s.set_target(now, target);
                        Some((true, format!("Already charging; target set to {target}")))
                    } else if !s.has_stopped_charging() {
                        Some((
                            false,
                            "The previous charge is still switching AC charging off; try again in a minute".to_string(),
                        ))
                    } else {
                        // Only restoring: the new charge takes over after one write at most.
                        None
                    };
                    if let Some((success, message)) = answer {
                        self.step();
                        let status = self.status.borrow().clone();
                        let _ = reply.send(StartOutcome {
                            success,
                            message,
                            status,
                        });
                        return;
                    }
                }
                // Charging now leaves a one-shot schedule for "now", as the app expects.
                let time = crate::domain::schedule::local_time_of(now.wall, &self.cfg.tz);
                self.schedule = Some(Schedule {
                    target,
                    time,
                    mode: Mode::Once,
                    enabled: true,
                    days: None,
                    next_run: None,
                    last_run: Some(now.wall),
                    created_at: now.wall,
                });
                if self.session.is_some() {
                    self.queued_start = Some((Origin::ChargeNow, target));
                    self.start_waiters.push(reply);
                    self.step();
                    return;
                }
                match self.start(Origin::ChargeNow, target, now) {
                    Some(msg) => {
                        self.step();
                        let status = self.status.borrow().clone();
                        let _ = reply.send(StartOutcome {
                            success: true,
                            message: msg,
                            status,
                        });
                    }
                    None => self.start_waiters.push(reply),
                }
            }
        }
    }

    fn set_schedule(&mut self, input: ScheduleInput, now: Now) -> Result<(), CommandError> {
        let schedule = Schedule::new(
            input.target,
            input.time,
            input.mode,
            input.enabled,
            input.days,
            input.first_run,
            now.wall,
            &self.cfg.tz,
        )?;
        info!(target = %schedule.target, time = %schedule.time, mode = schedule.mode.as_str(),
            enabled = schedule.enabled, next_run = ?schedule.next_run, "schedule set");
        let mut candidate = State {
            version: crate::store::FORMAT_VERSION,
            schedule: Some(schedule.clone()),
            session: self.session.clone(),
        };
        if let Some(s) = &mut candidate.session {
            if schedule.enabled {
                s.set_target(now, schedule.target);
            } else {
                s.cancel(now, "the schedule was disabled");
            }
        }
        // Persisted before the answer: if it cannot be saved, nothing changes.
        save_off_the_worker(&self.store, &candidate)
            .map_err(|e| CommandError::Store(e.to_string()))?;
        self.saved = Some(candidate.clone());
        self.schedule = candidate.schedule;
        self.session = candidate.session;
        Ok(())
    }

    fn stop(
        &mut self,
        now: Now,
        why: &str,
        note: Option<String>,
        reply: oneshot::Sender<StopOutcome>,
    ) {
        if self.queued_start.take().is_some() {
            self.answer_starts(
                false,
                format!("Charging was stopped before it began ({why})"),
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
                self.stop_waiters.push((now.wall, note, reply));
            }
            _ => {
                let _ = reply.send(stop_outcome(
                    true,
                    "Charging disabled".into(),
                    note,
                    now.wall,
                ));
            }
        }
        self.step();
    }

    fn answer_waiters(&mut self, _now: Now) {
        let status = self.status.borrow().clone();
        if !self.start_waiters.is_empty() && self.queued_start.is_none() {
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
                for w in self.start_waiters.drain(..) {
                    let _ = w.send(o.clone());
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
                for (at, note, w) in self.stop_waiters.drain(..) {
                    let _ = w.send(stop_outcome(success, message.clone(), note, at));
                }
            }
        }
    }

    fn next_wake(&self) -> Duration {
        let now = self.now();
        let mut d = self.cfg.check_interval;
        let until =
            |t: Timestamp| Duration::try_from(t.duration_since(now.wall)).unwrap_or(Duration::ZERO);
        if let Some(Due::Wait(t)) = self.schedule.as_ref().map(|s| s.due(now.wall)) {
            d = d.min(until(t));
            if self.prefetch_for != Some(t) {
                d = d.min(until(t).saturating_sub(PREFETCH_AHEAD));
            }
        }
        if let Some(t) = self.connect_grace {
            d = d.min(t.saturating_sub(now.mono));
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

    fn persist(&mut self) {
        let _ = self.try_persist();
    }

    /// Saves the state if it changed; the error says why it could not be.
    fn try_persist(&mut self) -> Result<(), String> {
        let state = State {
            version: crate::store::FORMAT_VERSION,
            schedule: self.schedule.clone(),
            session: self.session.clone(),
        };
        if self
            .saved
            .as_ref()
            .is_some_and(|s| same_durable_state(s, &state))
        {
            return Ok(());
        }
        match save_off_the_worker(&self.store, &state) {
            Ok(()) => {
                self.saved = Some(state);
                Ok(())
            }
            Err(e) => {
                error!(
                    "the state could not be saved (the charge goes on; fix the data directory): {e}"
                );
                Err(e.to_string())
            }
        }
    }

    fn publish_status(&self) {
        let schedule = self.schedule.clone();
        let session = self.session.as_ref().map(|s| SessionView {
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
        let mqtt = self.dongle.is_connected();
        self.status.send_if_modified(|st| {
            let changed =
                st.schedule != schedule || st.session != session || st.mqtt_connected != mqtt;
            st.schedule = schedule;
            st.session = session;
            st.mqtt_connected = mqtt;
            changed
        });
    }
}

/// Saves the state, letting the runtime move this worker's other tasks to another thread for
/// the duration: an fsync can take hundreds of milliseconds on an SD card, and the write the
/// engine has just handed to the dongle client (a stop, say) must not wait behind it.
fn save_off_the_worker(store: &Store, state: &State) -> Result<(), crate::store::StoreError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let on_multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_multi_thread {
        tokio::task::block_in_place(|| store.save(state))
    } else {
        store.save(state)
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
                )
            }),
        )
    };
    key(a) == key(b)
}
