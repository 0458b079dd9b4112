//! The charge session: one charge from the first inverter write to the last restore.
//!
//! A [`Session`] is a durable record *and* a state machine. The engine persists it before the
//! first write and after every step, feeds it what happens (write outcomes, telemetry, ticks,
//! user commands) and asks it for the next write. Every decision lives here, with the time
//! passed in, so the rules can be tested across clock jumps and restarts without IO.
//!
//! Phases: `Preparing` (taking the snapshot of the settings it will change) -> `Starting` (the
//! start writes, `ACCharge = 1` last) -> `Charging` (watching SOC) -> `Stopping` (`ACCharge = 0`
//! first, then the snapshot written back) -> `Done`. A failed start goes to `Stopping` too and
//! rolls back what it wrote.
//!
//! Invariants:
//! * at most one write is in flight, and only the session decides the next one;
//! * once `Stopping` begins, `ACCharge = 0` is retried until it is confirmed or sent with an
//!   unknown outcome: a stop is never abandoned;
//! * every setting the session may have changed (a write sent, whatever its outcome) is
//!   restored from the snapshot, or switched off when there is none.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::domain::units::{LocalTime, SettingValue, Soc, TargetSoc};

/// The two clocks as the engine read them for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall-clock instant: deadlines that must survive a restart.
    pub wall: Timestamp,
    /// Monotonic time since an arbitrary origin: durations that must not jump with the clock.
    pub mono: Duration,
}

pub const AC_CHARGE: &str = "ACCharge";
pub const SOC_LIMIT: &str = "ACChgSOCLimit";
pub const BAT_CHG_CONTROL: &str = "ubBatChgcontrol";
/// The three charge windows, (start, end) each; start == end means off.
pub const WINDOWS: [(&str, &str); 3] = [
    ("ACChgStart", "ACChgEnd"),
    ("ACChgStart1", "ACChgEnd1"),
    ("ACChgStart2", "ACChgEnd2"),
];
const MIDNIGHT: LocalTime = match LocalTime::new(0, 0) {
    Some(t) => t,
    None => unreachable!(),
};
const LAST_MINUTE: LocalTime = match LocalTime::new(23, 59) {
    Some(t) => t,
    None => unreachable!(),
};
/// Charge power at or below this counts as "no power" for the taper rule.
const TAPER_POWER_W: f64 = 50.0;
/// How long a failed stop or restore write waits before it is tried again.
pub const STOP_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// How often a restore write is tried before it is given up (the stop itself never is).
const RESTORE_ATTEMPTS: u32 = 3;
/// A polled report of the settings (a hold bank, a snapshot) may have been read from the
/// inverter before a write the session made a moment ago: for this long after the session sent
/// a setting, such a report of it is not taken as another app's change.
pub const ECHO_GRACE: Duration = Duration::from_secs(20);

/// A safety rule switched off on purpose, so that the night simulator can show that its
/// checks catch the loss. Never set by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sabotage {
    #[default]
    None,
    /// The safety cutoff never stops a charge.
    IgnoreCutoff,
    /// The stop switches AC charging off and puts nothing back.
    SkipRestore,
    /// A scheduled occurrence is not consumed when it fires.
    DoubleFire,
    /// A silent dongle never stops a charge.
    IgnoreStale,
    /// A charge that ends short of its target is not told to the owner.
    SilentFailure,
}

impl Sabotage {
    pub const ALL: [Sabotage; 5] = [
        Sabotage::IgnoreCutoff,
        Sabotage::SkipRestore,
        Sabotage::DoubleFire,
        Sabotage::IgnoreStale,
        Sabotage::SilentFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sabotage::None => "none",
            Sabotage::IgnoreCutoff => "ignore-cutoff",
            Sabotage::SkipRestore => "skip-restore",
            Sabotage::DoubleFire => "double-fire",
            Sabotage::IgnoreStale => "ignore-stale",
            Sabotage::SilentFailure => "silent-failure",
        }
    }

    pub fn parse(name: &str) -> Option<Sabotage> {
        Sabotage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What the session needs to know about the inverter and the rules, from config.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeParams {
    pub charge_type_setting: String,
    pub charge_type_value: i64,
    pub cutoff: Duration,
    pub stale_after: Duration,
    pub taper_after: Duration,
    pub stall_after: Duration,
    /// See [`Sabotage`]; `None` in the service.
    pub sabotage: Sabotage,
}

impl Default for ChargeParams {
    fn default() -> Self {
        ChargeParams {
            charge_type_setting: "ACChargeType".into(),
            charge_type_value: 2,
            cutoff: Duration::from_secs(8 * 3600),
            stale_after: Duration::from_secs(90),
            taper_after: Duration::from_secs(600),
            stall_after: Duration::from_secs(1800),
            sabotage: Sabotage::None,
        }
    }
}

impl ChargeParams {
    /// Every setting a session may change, so the snapshot covers them all.
    pub fn settings(&self) -> Vec<String> {
        let mut v = vec![SOC_LIMIT.to_string(), self.charge_type_setting.clone()];
        if self.writes_bat_chg_control() {
            v.push(BAT_CHG_CONTROL.into());
        }
        for (s, e) in WINDOWS {
            v.push(s.into());
            v.push(e.into());
        }
        v.push(AC_CHARGE.into());
        v
    }

    /// `ubBatChgcontrol = 0` selects SOC (not voltage) for the EG4 charge-type setting.
    fn writes_bat_chg_control(&self) -> bool {
        self.charge_type_setting
            .eq_ignore_ascii_case("ACChargeType")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Schedule,
    ChargeNow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    TargetReached,
    Cutoff,
    Cancelled,
    StaleData,
    Taper,
    Stalled,
    WriteFailed,
    ExternalOverride,
    /// A scheduled occurrence that charged nothing: SOC was already at the target.
    Skipped,
    /// A scheduled occurrence that did not run: the service was down or the clock moved past
    /// it, or another charge was running.
    Missed,
    /// A scheduled occurrence that could not start: the dongle was offline, silent or had
    /// sent no SOC for the whole grace period.
    ChargeFailed,
    /// A run of a cheapest-hours charge reached the end of its planned slots; the charge goes
    /// on in the next ones.
    SlotEnd,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::TargetReached => "target_reached",
            StopReason::Cutoff => "cutoff",
            StopReason::Cancelled => "cancelled",
            StopReason::StaleData => "stale_data",
            StopReason::Taper => "taper",
            StopReason::Stalled => "stalled",
            StopReason::WriteFailed => "write_failed",
            StopReason::ExternalOverride => "external_override",
            StopReason::Skipped => "skipped",
            StopReason::Missed => "missed",
            StopReason::ChargeFailed => "charge_failed",
            StopReason::SlotEnd => "slot_end",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Preparing,
    Starting,
    Charging,
    Stopping,
    Done,
}

/// One setting write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub setting: String,
    pub value: SettingValue,
}

impl Write {
    pub fn new(setting: &str, value: SettingValue) -> Write {
        Write {
            setting: setting.to_string(),
            value,
        }
    }
}

/// How a setting's value reached the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `setting/updated`: the dongle confirms a write that was just made.
    Confirmed,
    /// A hold bank, hold delta or snapshot: the register as the dongle last read it.
    Polled,
}

/// What became of a write, as the dongle client reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// The dongle answered success, or the value was read back.
    Confirmed,
    /// The dongle refused it.
    Rejected(String),
    /// Sent, but neither answered nor read back (it may still apply).
    Unknown(String),
    /// Not sent: no broker connection.
    NotSent(String),
}

/// A charge session. Serialized as the durable record; `#[serde(skip)]` fields are runtime
/// tracking that restarts from the moment the service does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub origin: Origin,
    pub target: TargetSoc,
    pub started_at: Timestamp,
    /// The absolute safety cutoff. Persisted, so a restart keeps the original deadline.
    pub deadline: Timestamp,
    pub phase: Phase,
    pub start_soc: Option<Soc>,
    pub last_soc: Option<Soc>,
    /// Settings as found before the first write, `None` when they could not be read.
    pub snapshot: Option<BTreeMap<String, SettingValue>>,
    /// The start writes in order, and how many of them are done (confirmed, or skipped).
    pub start_plan: Vec<Write>,
    pub start_done: usize,
    /// Settings a start write was sent for (confirmed or unknown): what the stop restores.
    pub touched: Vec<String>,
    /// `ACCharge = 1` was sent (or was already on), `ACCharge = 0` not yet.
    pub charging: bool,
    /// Writes to make while charging (a new target's SOC limit).
    pub extra_writes: Vec<Write>,
    pub stop_plan: Vec<Write>,
    pub stop_done: usize,
    pub stop_reason: Option<StopReason>,
    /// A plain sentence on why it stopped or what failed.
    pub detail: Option<String>,
    /// Restore writes that could not be made.
    pub restore_failures: Vec<String>,
    pub ended_at: Option<Timestamp>,
    /// Energy into the battery while charging, when the dongle reports charge power.
    pub energy_wh: Option<f64>,
    /// The write handed out and not yet answered. Persisted so a restart re-sends it.
    pub in_flight: Option<Write>,
    /// Values from before an earlier charge that this one took over while that charge was
    /// still putting them back: the stop restores these instead of what this session found.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inherited: BTreeMap<String, SettingValue>,
    /// `ACCharge = 0` went out with no answer and no read-back (see
    /// [`Session::may_have_left_ac_on`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop_unconfirmed: bool,
    /// The start writes all went through: AC charging was on at some point.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub began_charging: bool,
    /// The owner has been told the charge began (the event is made once per session).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub start_announced: bool,
    /// A run of a cheapest-hours charge: its deadline is the run's end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cheapest: bool,
    /// That run ends at a slot boundary before the ready-by time (`slot_end`, not `cutoff`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub slot_end: bool,

    #[serde(skip)]
    rt: Runtime,
}

/// Runtime tracking (monotonic), reset on restart.
#[derive(Debug, Clone, PartialEq, Default)]
struct Runtime {
    params: ChargeParams,
    started: Option<Duration>,
    last_message: Option<Duration>,
    dongle_offline: bool,
    low_power_since: Option<Duration>,
    best_soc: Option<(Soc, Duration)>,
    last_power: Option<(f64, Duration)>,
    /// A failed stop/restore write may be retried from this instant.
    retry_at: Option<Duration>,
    attempts: u32,
    /// When the session last sent each setting (lower-case name), for [`ECHO_GRACE`].
    sent_at: BTreeMap<String, Duration>,
    /// Every value the session sent while starting or charging: a report of one of them is
    /// an echo of its own write, never another app's change.
    sent: Vec<Write>,
}

impl Session {
    /// A new session, `Preparing`: the engine takes the snapshot next.
    pub fn new(
        origin: Origin,
        target: TargetSoc,
        now: Now,
        params: &ChargeParams,
        soc: Option<Soc>,
    ) -> Session {
        let cutoff = jiff::SignedDuration::try_from(params.cutoff)
            .unwrap_or(jiff::SignedDuration::from_hours(8));
        let deadline = now.wall.checked_add(cutoff).unwrap_or(now.wall);
        Session {
            id: now.wall.strftime("%Y%m%dT%H%M%S%.3fZ").to_string(),
            origin,
            target,
            started_at: now.wall,
            deadline,
            phase: Phase::Preparing,
            start_soc: soc,
            last_soc: soc,
            snapshot: None,
            start_plan: Vec::new(),
            start_done: 0,
            touched: Vec::new(),
            charging: false,
            extra_writes: Vec::new(),
            stop_plan: Vec::new(),
            stop_done: 0,
            stop_reason: None,
            detail: None,
            restore_failures: Vec::new(),
            ended_at: None,
            energy_wh: None,
            in_flight: None,
            inherited: BTreeMap::new(),
            stop_unconfirmed: false,
            began_charging: false,
            start_announced: false,
            cheapest: false,
            slot_end: false,
            rt: Runtime {
                params: params.clone(),
                started: Some(now.mono),
                last_message: Some(now.mono),
                ..Runtime::default()
            },
        }
    }

    /// Picks the session up after a restart: runtime tracking starts again from `now`, and a
    /// write that was in flight when the process died is sent again (setting writes are
    /// idempotent). A session still preparing has written nothing and simply prepares again.
    pub fn resume(&mut self, now: Now, params: &ChargeParams) {
        self.rt = Runtime {
            params: params.clone(),
            started: Some(now.mono),
            last_message: Some(now.mono),
            ..Runtime::default()
        };
        self.in_flight = None;
        if !self.began_charging
            && !matches!(self.phase, Phase::Preparing | Phase::Starting)
            && !self.start_plan.is_empty()
            && self.start_done == self.start_plan.len()
        {
            // Saved by a version that did not record it: a charge this far along has charged,
            // and the owner was not told then, so no start is announced now.
            self.began_charging = true;
            self.start_announced = true;
        }
        if self.phase == Phase::Charging {
            self.rt.best_soc = self.last_soc.map(|s| (s, now.mono));
        }
        self.check_cutoff(now);
    }

    /// The stop write has failed at least once and waits to be tried again.
    pub fn stop_is_retrying(&self) -> bool {
        self.phase == Phase::Stopping && self.charging && self.rt.retry_at.is_some()
    }

    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The charge is over from the user's point of view: `ACCharge = 0` is written (or was
    /// never needed) and only restore writes, if any, remain.
    pub fn has_stopped_charging(&self) -> bool {
        !self.charging
            && !matches!(
                self.phase,
                Phase::Preparing | Phase::Starting | Phase::Charging
            )
    }

    /// A new charge wants the inverter while this one is still putting settings back: when no
    /// write is in flight, this session ends here and hands over what it had still to restore
    /// (setting -> value from before it), so the new charge restores those at its own end and
    /// the inverter is still left as this one found it. `None` while a write is in flight or
    /// when the session is not only restoring.
    pub fn hand_over(&mut self, now: Now) -> Option<BTreeMap<String, SettingValue>> {
        if !self.has_stopped_charging() || self.in_flight.is_some() {
            return None;
        }
        let pending: BTreeMap<String, SettingValue> = self
            .stop_plan
            .get(self.stop_done..)
            .unwrap_or_default()
            .iter()
            .map(|w| (w.setting.clone(), w.value))
            .collect();
        if !pending.is_empty() {
            let names: Vec<&str> = pending.keys().map(String::as_str).collect();
            let note = format!(
                "a new charge began before {} were put back; it restores them at its end",
                names.join(", ")
            );
            self.detail = Some(match self.detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
        self.stop_done = self.stop_plan.len();
        self.rt.retry_at = None;
        self.ended_at.get_or_insert(now.wall);
        self.phase = Phase::Done;
        Some(pending)
    }

    /// Takes over what an earlier charge still had to restore (see [`Session::hand_over`]).
    pub fn inherit(&mut self, pending: BTreeMap<String, SettingValue>) {
        for setting in pending.keys() {
            if setting != AC_CHARGE && !self.touched.contains(setting) {
                self.touched.push(setting.clone());
            }
        }
        self.inherited.extend(pending);
    }

    /// AC charging may still be on because of this session: its `ACCharge = 0` went out but
    /// was never confirmed, and the inverter did not have AC charging on before.
    pub fn may_have_left_ac_on(&self) -> bool {
        self.stop_unconfirmed
            && self
                .restore_values()
                .and_then(|r| r.get(AC_CHARGE).copied())
                != Some(SettingValue::Int(1))
    }

    /// What the stop writes back: the snapshot, with values inherited from an earlier charge
    /// taking precedence (they are older).
    fn restore_values(&self) -> Option<BTreeMap<String, SettingValue>> {
        if self.inherited.is_empty() {
            return self.snapshot.clone();
        }
        let mut merged = self.snapshot.clone().unwrap_or_default();
        merged.extend(self.inherited.iter().map(|(k, v)| (k.clone(), *v)));
        Some(merged)
    }

    /// True from when `ACCharge = 1` is sent until `ACCharge = 0` is.
    pub fn is_charging(&self) -> bool {
        self.charging
    }

    /// The target a status should show: none once the stop has begun.
    pub fn active_target(&self) -> Option<TargetSoc> {
        matches!(
            self.phase,
            Phase::Preparing | Phase::Starting | Phase::Charging
        )
        .then_some(self.target)
    }

    /// The snapshot arrived (or could not be had): plans the start writes.
    pub fn on_snapshot(
        &mut self,
        now: Now,
        snapshot: Option<BTreeMap<String, SettingValue>>,
        tz: &TimeZone,
    ) {
        if self.phase != Phase::Preparing {
            return;
        }
        self.snapshot = snapshot;
        self.start_plan = start_plan(self.target, now.wall, self.deadline, &self.rt.params, tz);
        self.phase = Phase::Starting;
        self.skip_satisfied_start_writes(now);
        self.check_cutoff(now);
    }

    /// Skips start writes whose setting already has the wanted value, so a start makes as few
    /// writes as it can (each costs a second and a chance of failure).
    fn skip_satisfied_start_writes(&mut self, now: Now) {
        while let Some(w) = self.start_plan.get(self.start_done) {
            let already = self
                .snapshot
                .as_ref()
                .and_then(|s| s.get(&w.setting))
                .is_some_and(|v| *v == w.value);
            if !already {
                break;
            }
            if w.setting == AC_CHARGE {
                self.charging = true;
            }
            self.start_done += 1;
        }
        if self.phase == Phase::Starting && self.start_done == self.start_plan.len() {
            self.enter_charging(now);
        }
    }

    /// The last start write is done: the watch begins. The target is checked at once because
    /// firmware >= 4.3 sends SOC only when it changes: a SOC that reached the target while the
    /// start writes went out may not be reported again.
    fn enter_charging(&mut self, now: Now) {
        self.phase = Phase::Charging;
        self.began_charging = true;
        self.rt.best_soc = self.last_soc.map(|s| (s, now.mono));
        self.rt.last_message = self.rt.last_message.max(Some(now.mono));
        if let Some(soc) = self.last_soc
            && self.target.reached_by(soc)
        {
            self.begin_stop(
                now,
                StopReason::TargetReached,
                format!("SOC {soc} reached the target {}", self.target),
            );
        }
    }

    /// The next write to send, if one is due and none is in flight. Marks it in flight.
    pub fn next_write(&mut self, now: Now) -> Option<Write> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.rt.retry_at.is_some_and(|t| now.mono < t) {
            return None;
        }
        let w = match self.phase {
            Phase::Starting => self.start_plan.get(self.start_done).cloned(),
            Phase::Charging => self.extra_writes.first().cloned(),
            Phase::Stopping => self.stop_plan.get(self.stop_done).cloned(),
            Phase::Preparing | Phase::Done => None,
        }?;
        // The retry is under way: its instant, now past, must not stay a deadline (the
        // engine would wake at once, again and again, until the write is answered).
        self.rt.retry_at = None;
        if self.phase == Phase::Starting {
            if !self.touched.contains(&w.setting) {
                self.touched.push(w.setting.clone());
            }
            if w.setting == AC_CHARGE && w.value == SettingValue::Int(1) {
                self.charging = true;
            }
        }
        if matches!(self.phase, Phase::Starting | Phase::Charging) {
            self.rt.sent.push(w.clone());
        }
        self.rt
            .sent_at
            .insert(w.setting.to_ascii_lowercase(), now.mono);
        self.in_flight = Some(w.clone());
        Some(w)
    }

    /// The outcome of the write in flight.
    pub fn on_write_result(&mut self, now: Now, result: WriteResult) {
        let Some(w) = self.in_flight.take() else {
            return;
        };
        match self.phase {
            Phase::Starting => match result {
                WriteResult::Confirmed => {
                    self.start_done += 1;
                    self.rt.attempts = 0;
                    self.skip_satisfied_start_writes(now);
                }
                WriteResult::Rejected(why) | WriteResult::NotSent(why) => {
                    // Refused or never sent: the inverter kept its value, so there is nothing
                    // of this write to put back (restoring it could only fail the same way).
                    self.touched.retain(|t| *t != w.setting);
                    if w.setting == AC_CHARGE {
                        self.charging = false;
                    }
                    let detail = format!("could not set {} to {}: {why}", w.setting, w.value);
                    self.begin_stop(now, StopReason::WriteFailed, detail);
                }
                WriteResult::Unknown(why) => {
                    let detail = format!("could not set {} to {}: {why}", w.setting, w.value);
                    self.begin_stop(now, StopReason::WriteFailed, detail);
                }
            },
            Phase::Charging => {
                if self.extra_writes.first() == Some(&w) {
                    self.extra_writes.remove(0);
                }
                if result == WriteResult::Confirmed {
                    // What the inverter now holds, for telling another app's change from ours.
                    if let Some(planned) =
                        self.start_plan.iter_mut().find(|p| p.setting == w.setting)
                    {
                        planned.value = w.value;
                    }
                } else {
                    // The inverter keeps the old SOC limit; the backend's own watch still stops
                    // at the new target, so this is worth a note, not a stop.
                    self.detail = Some(format!("could not update {} to {}", w.setting, w.value));
                }
            }
            Phase::Stopping => self.on_stop_write_result(now, &w, result),
            Phase::Preparing | Phase::Done => {}
        }
    }

    fn on_stop_write_result(&mut self, now: Now, w: &Write, result: WriteResult) {
        let is_stop = w.setting == AC_CHARGE && w.value == SettingValue::Int(0);
        match result {
            WriteResult::Confirmed => {
                if is_stop {
                    self.charging = false;
                }
                self.advance_stop();
            }
            WriteResult::Unknown(why) if is_stop => {
                // Sent; the inverter's own SOC limit and window end remain as a second stop.
                self.charging = false;
                self.stop_unconfirmed = true;
                self.detail = Some(format!("the stop write's outcome is unknown: {why}"));
                self.advance_stop();
            }
            WriteResult::Rejected(why) | WriteResult::Unknown(why) | WriteResult::NotSent(why) => {
                self.rt.attempts += 1;
                if !is_stop && self.rt.attempts >= RESTORE_ATTEMPTS {
                    self.restore_failures
                        .push(format!("{} = {}: {why}", w.setting, w.value));
                    self.advance_stop();
                } else {
                    self.rt.retry_at = Some(now.mono + STOP_RETRY_INTERVAL);
                }
            }
        }
    }

    fn advance_stop(&mut self) {
        self.stop_done += 1;
        self.rt.attempts = 0;
        self.rt.retry_at = None;
        if self.stop_done >= self.stop_plan.len() {
            self.phase = Phase::Done;
        }
    }

    /// Telemetry from the dongle: SOC and charge power, when present.
    pub fn on_telemetry(&mut self, now: Now, soc: Option<Soc>, charge_power_w: Option<f64>) {
        self.on_dongle_message(now);
        if let Some(p) = charge_power_w {
            if self.phase == Phase::Charging
                && let Some((prev, at)) = self.rt.last_power
            {
                let hours = now.mono.saturating_sub(at).as_secs_f64() / 3600.0;
                *self.energy_wh.get_or_insert(0.0) += prev.max(0.0) * hours;
            }
            self.rt.last_power = Some((p, now.mono));
        }
        if let Some(soc) = soc {
            self.last_soc = Some(soc);
            if self.start_soc.is_none() {
                self.start_soc = Some(soc);
            }
            if self.rt.best_soc.is_none_or(|(best, _)| soc > best) {
                self.rt.best_soc = Some((soc, now.mono));
            }
        }
        if self.phase != Phase::Charging {
            return;
        }
        let soc = self.last_soc;
        if let Some(soc) = soc
            && self.target.reached_by(soc)
        {
            self.begin_stop(
                now,
                StopReason::TargetReached,
                format!("SOC {soc} reached the target {}", self.target),
            );
            return;
        }
        // LuxPower never reports 100 %: near the top the BMS tapers the power to ~0.
        let tapering =
            self.near_the_top() && self.rt.last_power.is_some_and(|(p, _)| p <= TAPER_POWER_W);
        if tapering {
            self.rt.low_power_since.get_or_insert(now.mono);
        } else {
            self.rt.low_power_since = None;
        }
        self.on_tick(now);
    }

    /// A charge to 98-100 % whose SOC is at 97 or more: where the BMS tapers the power and the
    /// SOC creeps (or sits at 99, which is as high as LuxPower reports). The taper rule ends
    /// such a charge; the stall rule does not apply, because a flat SOC is what a full battery
    /// looks like there.
    fn near_the_top(&self) -> bool {
        self.target.get() >= 98 && self.last_soc.is_some_and(|s| s.get() >= 97)
    }

    /// Any message from the dongle: it is alive.
    pub fn on_dongle_message(&mut self, now: Now) {
        self.rt.last_message = Some(now.mono);
        self.rt.dongle_offline = false;
    }

    /// The dongle's `availability` (its last will says `offline`).
    pub fn on_availability(&mut self, now: Now, online: bool) {
        self.rt.dongle_offline = !online;
        if online {
            self.rt.last_message = Some(now.mono);
        } else {
            self.on_tick(now);
        }
    }

    /// A confirmed change of a setting (`setting/updated`, sent after every write, whoever
    /// made it). See [`Session::on_setting_reported`].
    pub fn on_setting_changed(&mut self, now: Now, setting: &str, value: Option<SettingValue>) {
        self.on_setting_reported(now, setting, value, Report::Confirmed);
    }

    /// A setting's value as the dongle reports it. If another app switched AC charging off,
    /// moved the window or changed the SOC limit while this session starts or charges, the
    /// user has taken over and the session ends without fighting them: their change stays, the
    /// session's other changes are put back.
    ///
    /// Not an override: a value the session itself sent (a late echo, or the old SOC limit of
    /// a target it has since changed), a setting whose write is in flight or queued, and a
    /// [`Report::Polled`] value within [`ECHO_GRACE`] of the session sending that setting (the
    /// bank may have been read before the write applied) or that could not be read.
    pub fn on_setting_reported(
        &mut self,
        now: Now,
        setting: &str,
        value: Option<SettingValue>,
        report: Report,
    ) {
        if !matches!(self.phase, Phase::Starting | Phase::Charging) {
            return;
        }
        let same = |w: &Write| w.setting.eq_ignore_ascii_case(setting);
        if self.in_flight.as_ref().is_some_and(same) || self.extra_writes.iter().any(same) {
            return; // our own write being made
        }
        if report == Report::Polled {
            let recent = self
                .rt
                .sent_at
                .get(&setting.to_ascii_lowercase())
                .is_some_and(|at| now.mono.saturating_sub(*at) < ECHO_GRACE);
            if recent || value.is_none() {
                return;
            }
        }
        if self
            .rt
            .sent
            .iter()
            .any(|w| same(w) && Some(w.value) == value)
        {
            return;
        }
        // What the charge relies on: the start writes done, whether confirmed or skipped because
        // the inverter already had the value (an `ACCharge` that was on before counts too), with
        // the SOC limit of the latest confirmed target.
        let ours = self.start_plan[..self.start_done].iter().find(|w| same(w));
        let Some(ours) = ours.filter(|w| value != Some(w.value)).cloned() else {
            return;
        };
        let shown = value.map_or("an unreadable value".to_string(), |v| v.to_string());
        // The other app's setting is theirs now (both ends of a window it moved), and so is
        // the master switch: `ACCharge` is neither switched off nor back on. What else the
        // session changed is its own leftover and is put back, so that the inverter is left
        // as found apart from what the other app chose.
        let theirs: Vec<&str> = WINDOWS
            .iter()
            .find(|(s, e)| *s == ours.setting || *e == ours.setting)
            .map_or(vec![ours.setting.as_str()], |(s, e)| vec![*s, *e]);
        let mut restore: Vec<String> = self
            .touched
            .iter()
            .filter(|t| *t != AC_CHARGE && !theirs.contains(&t.as_str()))
            .cloned()
            .collect();
        if let Some(w) = self.in_flight.take()
            && w.setting != AC_CHARGE
            && !theirs.contains(&w.setting.as_str())
            && !restore.contains(&w.setting)
        {
            restore.push(w.setting);
        }
        self.stop_reason = Some(StopReason::ExternalOverride);
        self.detail = Some(format!(
            "{} was changed to {shown} by another app; the charge ended without undoing that",
            ours.setting
        ));
        self.charging = false;
        self.ended_at = Some(now.wall);
        self.extra_writes.clear();
        self.stop_plan = stop_plan(&restore, self.restore_values().as_ref(), false);
        self.note_unknown_before(&restore, false);
        self.stop_done = 0;
        self.rt.attempts = 0;
        self.rt.retry_at = None;
        self.phase = if self.stop_plan.is_empty() {
            Phase::Done
        } else {
            Phase::Stopping
        };
    }

    /// Time passed: checks the cutoff, stale data, taper and stall.
    pub fn on_tick(&mut self, now: Now) {
        self.check_cutoff(now);
        if self.phase != Phase::Charging {
            return;
        }
        let since = |t: Option<Duration>| t.map(|t| now.mono.saturating_sub(t));
        if let Some(silent) = since(self.rt.last_message)
            && self.rt.params.sabotage != Sabotage::IgnoreStale
            && (silent >= self.rt.params.stale_after || self.rt.dongle_offline)
        {
            let why = if self.rt.dongle_offline {
                "the dongle reported itself offline".to_string()
            } else {
                format!("no message from the dongle for {} s", silent.as_secs())
            };
            self.begin_stop(now, StopReason::StaleData, why);
            return;
        }
        if let Some(low) = since(self.rt.low_power_since)
            && low >= self.rt.params.taper_after
        {
            self.begin_stop(
                now,
                StopReason::Taper,
                format!(
                    "SOC {} with ~0 W for {} min: the battery is full",
                    self.last_soc.map_or(0, Soc::get),
                    low.as_secs() / 60
                ),
            );
            return;
        }
        if let Some((best, at)) = self.rt.best_soc
            && !self.near_the_top()
            && now.mono.saturating_sub(at) >= self.rt.params.stall_after
        {
            self.begin_stop(
                now,
                StopReason::Stalled,
                format!(
                    "SOC has stayed at {best} for {} min",
                    now.mono.saturating_sub(at).as_secs() / 60
                ),
            );
        }
    }

    fn check_cutoff(&mut self, now: Now) {
        if self.rt.params.sabotage == Sabotage::IgnoreCutoff {
            return;
        }
        if !matches!(
            self.phase,
            Phase::Preparing | Phase::Starting | Phase::Charging
        ) {
            return;
        }
        let mono_elapsed = self.rt.started.map(|s| now.mono.saturating_sub(s));
        // The wall deadline survives restarts; the monotonic one survives the clock being set
        // back while charging. Whichever comes first stops the charge.
        if now.wall >= self.deadline || mono_elapsed.is_some_and(|e| e >= self.rt.params.cutoff) {
            let (reason, why) = match (self.cheapest, self.slot_end) {
                (true, true) => (
                    StopReason::SlotEnd,
                    "the planned cheap slots ended; the charge goes on in the next ones",
                ),
                (true, false) => (StopReason::Cutoff, "the ready-by time was reached"),
                _ => (StopReason::Cutoff, "the safety cutoff was reached"),
            };
            self.begin_stop(now, reason, why.into());
        }
    }

    /// The user stopped it.
    pub fn cancel(&mut self, now: Now, why: &str) {
        if matches!(
            self.phase,
            Phase::Preparing | Phase::Starting | Phase::Charging
        ) {
            self.begin_stop(now, StopReason::Cancelled, why.to_string());
        }
    }

    /// A new target while running (the schedule was replaced): stop at once if it is already
    /// reached, else move the inverter's SOC limit too.
    pub fn set_target(&mut self, now: Now, target: TargetSoc) {
        if target == self.target
            || !matches!(
                self.phase,
                Phase::Preparing | Phase::Starting | Phase::Charging
            )
        {
            return;
        }
        self.target = target;
        if let Some(soc) = self.last_soc
            && target.reached_by(soc)
        {
            self.begin_stop(
                now,
                StopReason::TargetReached,
                format!("SOC {soc} is already at the new target {target}"),
            );
            return;
        }
        let value = SettingValue::Int(target.get().into());
        // A SOC-limit start write not yet handed out just takes the new value. One in flight
        // carries the old value, and one skipped because the inverter already had the old
        // target wrote nothing: both need a write of their own once the start is done.
        let unsent_from = self.start_done + usize::from(self.in_flight.is_some());
        if let Some(w) = self
            .start_plan
            .iter_mut()
            .skip(unsent_from)
            .find(|w| w.setting == SOC_LIMIT)
        {
            w.value = value;
        } else if matches!(self.phase, Phase::Starting | Phase::Charging) {
            self.extra_writes.retain(|w| w.setting != SOC_LIMIT);
            self.extra_writes.push(Write::new(SOC_LIMIT, value));
            if !self.touched.iter().any(|s| s == SOC_LIMIT) {
                self.touched.push(SOC_LIMIT.into());
            }
        }
    }

    /// Begins the stop: `ACCharge = 0` first (the fast stop), then the snapshot written back.
    fn begin_stop(&mut self, now: Now, reason: StopReason, detail: String) {
        if !matches!(
            self.phase,
            Phase::Preparing | Phase::Starting | Phase::Charging
        ) {
            return;
        }
        self.stop_reason = Some(reason);
        self.detail = Some(detail);
        self.ended_at = Some(now.wall);
        self.extra_writes.clear();
        // A start write still in flight may apply: count it as touched. Its answer, when it
        // comes, is taken as the answer to nothing (the stop plan starts fresh).
        if let Some(w) = self.in_flight.take()
            && !self.touched.contains(&w.setting)
        {
            self.touched.push(w.setting);
        }
        self.stop_plan = stop_plan(&self.touched, self.restore_values().as_ref(), self.charging);
        let touched = self.touched.clone();
        self.note_unknown_before(&touched, self.charging);
        if self.rt.params.sabotage == Sabotage::SkipRestore {
            self.stop_plan.retain(|w| w.setting == AC_CHARGE);
        }
        self.stop_done = 0;
        self.rt.attempts = 0;
        self.rt.retry_at = None;
        self.phase = if self.stop_plan.is_empty() {
            Phase::Done
        } else {
            Phase::Stopping
        };
    }

    /// Records, as restore failures, the settings this stop cannot put back because their
    /// value before the charge was never read (the dongle sent no settings in time): the
    /// windows go to 00:00 and AC charging stays off, which may not be how the owner had them.
    fn note_unknown_before(&mut self, touched: &[String], charging: bool) {
        let known = self.restore_values();
        let switches_off = charging || touched.iter().any(|t| t == AC_CHARGE);
        let unknown = touched
            .iter()
            .filter(|t| *t != AC_CHARGE)
            .chain(switches_off.then_some(&AC_CHARGE.to_string()))
            .filter(|t| known.as_ref().is_none_or(|k| !k.contains_key(*t)))
            .cloned()
            .collect::<Vec<_>>();
        for t in unknown {
            let left = if t == AC_CHARGE {
                "off".to_string()
            } else if is_window_setting(&t) {
                "00:00".to_string()
            } else {
                "as the charge set it".to_string()
            };
            self.restore_failures.push(format!(
                "{t}: its value before the charge was never read (the dongle sent no settings); left {left}"
            ));
        }
    }

    /// When the engine must look again at the latest (wall clock), besides new messages.
    pub fn next_wall_deadline(&self) -> Option<Timestamp> {
        matches!(
            self.phase,
            Phase::Preparing | Phase::Starting | Phase::Charging
        )
        .then_some(self.deadline)
    }

    /// When the engine must look again at the latest (monotonic), besides new messages.
    pub fn next_mono_deadline(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        match self.phase {
            Phase::Charging => {
                consider(self.rt.started.map(|s| s + self.rt.params.cutoff));
                consider(self.rt.last_message.map(|t| t + self.rt.params.stale_after));
                consider(
                    self.rt
                        .low_power_since
                        .map(|t| t + self.rt.params.taper_after),
                );
                if !self.near_the_top() {
                    consider(
                        self.rt
                            .best_soc
                            .map(|(_, t)| t + self.rt.params.stall_after),
                    );
                }
            }
            Phase::Stopping => consider(self.rt.retry_at),
            _ => consider(self.rt.started.map(|s| s + self.rt.params.cutoff)),
        }
        next
    }
}

/// The start writes, in order: SOC limit, charge type, the window `now .. deadline` (split over
/// two windows when it crosses midnight; unused windows off), `ACCharge = 1` last.
pub fn start_plan(
    target: TargetSoc,
    now: Timestamp,
    deadline: Timestamp,
    params: &ChargeParams,
    tz: &TimeZone,
) -> Vec<Write> {
    let mut plan = vec![
        Write::new(SOC_LIMIT, SettingValue::Int(target.get().into())),
        Write::new(
            &params.charge_type_setting,
            SettingValue::Int(params.charge_type_value),
        ),
    ];
    if params.writes_bat_chg_control() {
        plan.push(Write::new(BAT_CHG_CONTROL, SettingValue::Int(0)));
    }
    for (i, (start, end)) in charge_windows(now, deadline, tz).into_iter().enumerate() {
        let (s, e) = WINDOWS[i];
        plan.push(Write::new(s, SettingValue::Time(start)));
        plan.push(Write::new(e, SettingValue::Time(end)));
    }
    plan.push(Write::new(AC_CHARGE, SettingValue::Int(1)));
    plan
}

/// The three windows for a charge from `now` to `deadline`, in the inverter's local time at
/// minute precision. A charge that crosses midnight takes two windows (`start..23:59` and
/// `00:00..end`) because a window cannot span midnight on every firmware; unused ones are off
/// (start == end == 00:00).
pub fn charge_windows(
    now: Timestamp,
    deadline: Timestamp,
    tz: &TimeZone,
) -> [(LocalTime, LocalTime); 3] {
    let local = |t: Timestamp| {
        let dt = t.to_zoned_datetime(tz.clone()).datetime();
        (
            dt.date(),
            LocalTime::new(dt.hour() as u8, dt.minute() as u8).unwrap_or(MIDNIGHT),
        )
    };
    let (start_date, start) = local(now);
    let (end_date, end) = local(deadline);
    let off = (MIDNIGHT, MIDNIGHT);
    if end_date == start_date && end > start {
        [(start, end), off, off]
    } else {
        let second = if end == MIDNIGHT {
            off
        } else {
            (MIDNIGHT, end)
        };
        [(start, LAST_MINUTE), second, off]
    }
}

/// The stop writes: `ACCharge = 0` first when it may be on because of us, then every touched
/// setting back to its snapshot value (or windows off without a snapshot), and `ACCharge = 1`
/// last only if it was on before the session and this plan switched it off.
pub fn stop_plan(
    touched: &[String],
    snapshot: Option<&BTreeMap<String, SettingValue>>,
    charging: bool,
) -> Vec<Write> {
    let mut plan = Vec::new();
    let switches_off = charging || touched.iter().any(|s| s == AC_CHARGE);
    if switches_off {
        plan.push(Write::new(AC_CHARGE, SettingValue::Int(0)));
    }
    for setting in touched.iter().filter(|s| *s != AC_CHARGE) {
        match snapshot.and_then(|s| s.get(setting)) {
            Some(v) => plan.push(Write::new(setting, *v)),
            None if is_window_setting(setting) => {
                plan.push(Write::new(setting, SettingValue::Time(MIDNIGHT)))
            }
            None => {}
        }
    }
    // Only after switching it off: a stop that never touched `ACCharge` leaves it alone, even
    // if the user changed it meanwhile.
    if switches_off && snapshot.and_then(|s| s.get(AC_CHARGE)) == Some(&SettingValue::Int(1)) {
        plan.push(Write::new(AC_CHARGE, SettingValue::Int(1)));
    }
    plan
}

/// The kind of value a setting holds (a time for the windows, a number otherwise), for
/// reading raw dongle values into [`SettingValue`]s.
pub fn value_like(setting: &str) -> SettingValue {
    if is_window_setting(setting) {
        SettingValue::Time(MIDNIGHT)
    } else {
        SettingValue::Int(0)
    }
}

fn is_window_setting(setting: &str) -> bool {
    WINDOWS
        .iter()
        .any(|(s, e)| s.eq_ignore_ascii_case(setting) || e.eq_ignore_ascii_case(setting))
}

#[cfg(test)]
mod tests;
