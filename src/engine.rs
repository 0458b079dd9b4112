//! The engine: the one task that drives the pure core ([`crate::domain::core`]).
//!
//! It `select!`s over API commands, dongle events, the answer to the write (or snapshot) in
//! flight, the core's next wake-up and shutdown; turns each into an [`Input`] for the core
//! and carries out the [`Effect`]s it returns: dongle writes and reads, state-file saves,
//! history records and the answers to waiting API calls. After every input it publishes the
//! core's [`Status`], which HTTP handlers read without a round trip.
//!
//! It never waits on the wall clock: it sleeps on the monotonic clock for at most
//! `soc_check_interval` and re-reads the wall clock on every wake, so NTP corrections and
//! manual clock changes are noticed within that interval.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use jiff::tz::TimeZone;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::domain::core::{
    self as core, CoreConfig, DongleInput, Effect, EngineCore, Input, Reply, RequestId,
};
pub use crate::domain::core::{
    CommandError, ScheduleInput, SessionView, StartOutcome, Status, StopOutcome,
};
use crate::domain::session::{ChargeParams, Now, Write, WriteResult};
use crate::domain::soc_filter::SocRule;
use crate::domain::units::TargetSoc;
use crate::dongle::client::{DongleEvent, DongleHandle};
use crate::logging::Throttle;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::store::{State, Store};

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
    /// The battery's figures, for cheapest hours.
    pub battery: crate::domain::night::Battery,
    /// Prices for cheapest hours, when a tariff is configured.
    pub prices: Option<crate::tariff::PriceFeed>,
}

pub enum Command {
    SetSchedule {
        input: ScheduleInput,
        reply: oneshot::Sender<Result<Status, CommandError>>,
    },
    /// Cancels the schedule and stops any charge.
    CancelSchedule { reply: oneshot::Sender<StopOutcome> },
    /// Stops any charge and keeps the schedule.
    StopCharge { reply: oneshot::Sender<StopOutcome> },
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

    /// Stops a running charge; the schedule stays (its running occurrence is consumed).
    pub async fn stop_charge(&self) -> Result<StopOutcome, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::StopCharge { reply }).await?;
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

/// Where an API call waits for its answer.
enum Waiting {
    Schedule(oneshot::Sender<Result<Status, CommandError>>),
    Start(oneshot::Sender<StartOutcome>),
    Stop(oneshot::Sender<StopOutcome>),
}

type SnapshotReply = oneshot::Receiver<Option<core::Settings>>;

pub struct Engine {
    cfg: EngineConfig,
    clock: Clock,
    store: Store,
    dongle: DongleHandle,
    core: EngineCore,
    status: watch::Sender<Status>,
    pending_write: Option<(Write, oneshot::Receiver<WriteResult>)>,
    pending_snapshot: Option<SnapshotReply>,
    waiting: HashMap<RequestId, Waiting>,
    next_request: u64,
    /// Once shutting down, nothing new is sent to the dongle.
    stopping: bool,
    bad_values: Throttle,
    metrics: Metrics,
    /// Where events go once saved with the state.
    notifier: Notifier,
    /// Prices for cheapest hours, when a tariff is configured.
    prices: Option<tokio::sync::watch::Receiver<Option<crate::domain::night::PriceBook>>>,
}

/// Builds the engine from the stored state and returns it with its handle. Nothing runs until
/// [`Engine::run`] is awaited.
pub fn new(
    cfg: EngineConfig,
    clock: Clock,
    store: Store,
    dongle: DongleHandle,
    state: State,
    metrics: Metrics,
    notifier: Notifier,
) -> (Engine, EngineHandle, mpsc::Receiver<Command>) {
    let core = EngineCore::new(
        CoreConfig {
            params: cfg.params.clone(),
            tz: cfg.tz.clone(),
            check_interval: cfg.check_interval,
            soc_rule: cfg.soc_rule,
            battery: cfg.battery,
        },
        state,
        clock.now(),
    );
    let (status_tx, status_rx) = watch::channel(core.status().clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let prices = cfg.prices.as_ref().map(|p| p.watch());
    let engine = Engine {
        cfg,
        clock,
        store,
        dongle,
        core,
        status: status_tx,
        pending_write: None,
        pending_snapshot: None,
        waiting: HashMap::new(),
        next_request: 0,
        stopping: false,
        bad_values: Throttle::per_minute(),
        metrics,
        notifier,
        prices,
    };
    let handle = EngineHandle {
        cmds: cmd_tx,
        status: status_rx,
    };
    (engine, handle, cmd_rx)
}

/// The next prices from the feed, as the core takes them; pends forever without a feed (or
/// once it has ended).
async fn prices_changed(
    rx: &mut Option<tokio::sync::watch::Receiver<Option<crate::domain::night::PriceBook>>>,
) -> Option<Option<crate::domain::night::PriceBook>> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return std::future::pending().await;
    }
    Some(r.borrow_and_update().clone())
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
        let connected = self.dongle.is_connected();
        self.apply(Input::Boot { connected });
        if let Some(rx) = &mut self.prices {
            let book = rx.borrow_and_update().clone();
            self.apply(Input::Prices(book));
        }
        loop {
            let wake = self.core.next_wake(self.now());
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(ev) = events.recv() => {
                    let input = self.decode(ev);
                    self.apply(Input::Dongle(input));
                }
                result = maybe_write(&mut self.pending_write) => self.write_done(result),
                snap = maybe(&mut self.pending_snapshot) => {
                    self.pending_snapshot = None;
                    self.apply(Input::SnapshotDone(snap.flatten()));
                }
                Some(cmd) = cmds.recv() => match cmd {
                    Command::Inject(EngineFault::Hang) => {
                        error!("the engine was made to hang");
                        std::future::pending::<()>().await;
                    }
                    Command::Inject(EngineFault::Panic) => panic!("the engine was made to panic"),
                    cmd => self.on_command(cmd),
                },
                Some(book) = prices_changed(&mut self.prices) => self.apply(Input::Prices(book)),
                _ = self.clock.sleep(wake) => self.apply(Input::Tick),
            }
        }
        self.shut_down().await;
    }

    /// The engine's part of an ordered stop: the dongle client is still running, so the write
    /// in flight gets its answer (or its timeout). A clear answer is taken; anything else
    /// leaves the write marked in flight in the saved session, so the next start sends it
    /// again (setting writes are idempotent) and the session goes on as if never stopped.
    async fn shut_down(&mut self) {
        self.stopping = true;
        if let Some((w, rx)) = &mut self.pending_write {
            let (setting, value) = (w.setting.clone(), w.value);
            info!(%setting, %value, "finishing the write in flight before exiting");
            let bound = self.clock.sleep(self.cfg.write_timeout + SHUTDOWN_SLACK);
            let result = tokio::select! {
                r = rx => r.ok(),
                _ = bound => None,
            };
            match result {
                Some(r @ (WriteResult::Confirmed | WriteResult::Rejected(_))) => self.write_done(r),
                other => {
                    info!(%setting, outcome = ?other, "the write in flight has no clear answer; it is sent again at the next start");
                }
            }
        }
        self.apply(Input::Flush);
    }

    fn write_done(&mut self, result: WriteResult) {
        if let Some((w, _)) = self.pending_write.take() {
            match &result {
                WriteResult::Confirmed => {
                    debug!(setting = %w.setting, value = %w.value, "write confirmed")
                }
                other => {
                    warn!(setting = %w.setting, value = %w.value, outcome = ?other, "write not confirmed")
                }
            }
        }
        self.apply(Input::WriteDone(result));
    }

    fn on_command(&mut self, cmd: Command) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let input = match cmd {
            Command::SetSchedule { input, reply } => {
                self.waiting.insert(id, Waiting::Schedule(reply));
                core::Command::SetSchedule(input)
            }
            Command::CancelSchedule { reply } => {
                self.waiting.insert(id, Waiting::Stop(reply));
                core::Command::CancelSchedule
            }
            Command::StopCharge { reply } => {
                self.waiting.insert(id, Waiting::Stop(reply));
                core::Command::StopCharge
            }
            Command::ChargeNow { target, reply } => {
                self.waiting.insert(id, Waiting::Start(reply));
                core::Command::ChargeNow(target)
            }
            Command::Ping { reply } => {
                let _ = reply.send(());
                return;
            }
            Command::Inject(_) => return, // handled by the loop
        };
        self.apply(Input::Command(id, input));
    }

    /// The dongle's message as the core takes it; out-of-range values are dropped here, with
    /// a warning at most once a minute.
    fn decode(&mut self, ev: DongleEvent) -> DongleInput {
        match ev {
            DongleEvent::Connected(up) => DongleInput::Connected(up),
            DongleEvent::Undecodable => DongleInput::Other,
            DongleEvent::Message(m) => {
                let (input, rejected) = crate::dongle::input::to_core(m);
                if !rejected.is_empty() {
                    self.metrics.values_rejected(rejected.len());
                }
                if !rejected.is_empty()
                    && let Some(held) = self.bad_values.allow(self.clock.mono().0)
                {
                    warn!(values = ?rejected, more_since_last_warning = held, "ignored out-of-range telemetry values");
                }
                input
            }
        }
    }

    /// Feeds one input to the core, carries out its effects in order and publishes the
    /// status.
    fn apply(&mut self, input: Input) {
        let now = self.now();
        let mut queue: VecDeque<Effect> = self.core.handle(input, now).into();
        while let Some(effect) = queue.pop_front() {
            for follow_up in self.perform(effect, now).into_iter().rev() {
                queue.push_front(follow_up);
            }
        }
        let status = self.core.status();
        self.status.send_if_modified(|st| {
            let changed = st != status;
            if changed {
                *st = status.clone();
            }
            changed
        });
    }

    /// Carries out one effect; a save the core waits on is answered at once, and the core's
    /// answer to that comes back to be carried out next.
    fn perform(&mut self, effect: Effect, now: Now) -> Vec<Effect> {
        match effect {
            Effect::Write(w) => {
                if self.stopping {
                    return Vec::new(); // sent at the next start: the session records it in flight
                }
                debug!(setting = %w.setting, value = %w.value, "writing");
                let rx = self.dongle.write(&w.setting, w.value);
                self.pending_write = Some((w, rx));
            }
            Effect::Snapshot { settings, fresh } => {
                if !self.stopping {
                    self.pending_snapshot = Some(self.dongle.snapshot(settings, fresh));
                }
            }
            Effect::Refresh => {
                if !self.stopping {
                    self.dongle.refresh();
                }
            }
            Effect::Save { state, ticket } => {
                let result = save_off_the_worker(&self.store, &state).map_err(|e| e.to_string());
                match ticket {
                    Some(ticket) => {
                        return self.core.handle(Input::SaveDone { ticket, result }, now);
                    }
                    None => {
                        if let Err(e) = result {
                            error!(
                                "the state could not be saved (the charge goes on; fix the data directory): {e}"
                            );
                            self.core.save_failed();
                        }
                    }
                }
            }
            Effect::History(record) => {
                self.metrics
                    .session_ended(record.stop_reason.map_or("cancelled", |r| r.as_str()));
                if let Err(e) = self.store.append_history(&record) {
                    error!("the charge history could not be written: {e}");
                }
            }
            Effect::Notify(events) => {
                let ids = events.iter().map(|e| e.id.clone()).collect();
                let result = off_the_worker(|| self.notifier.accept(&events, now.wall));
                return self.core.handle(Input::Notified { ids, result }, now);
            }
            Effect::Reply(id, reply) => match (self.waiting.remove(&id), *reply) {
                (Some(Waiting::Schedule(tx)), Reply::Schedule(r)) => {
                    let _ = tx.send(r);
                }
                (Some(Waiting::Start(tx)), Reply::Start(r)) => {
                    let _ = tx.send(r);
                }
                (Some(Waiting::Stop(tx)), Reply::Stop(r)) => {
                    let _ = tx.send(r);
                }
                (waiting, reply) => {
                    debug_assert!(waiting.is_none(), "a reply of the wrong kind: {reply:?}");
                }
            },
        }
        Vec::new()
    }
}

/// Saves the state, letting the runtime move this worker's other tasks to another thread for
/// the duration: an fsync can take hundreds of milliseconds on an SD card, and the write the
/// engine has just handed to the dongle client (a stop, say) must not wait behind it.
fn save_off_the_worker(store: &Store, state: &State) -> Result<(), crate::store::StoreError> {
    off_the_worker(|| store.save(state))
}

/// Runs a blocking file write, letting the runtime move this worker's other tasks elsewhere.
fn off_the_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let on_multi_thread =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}
