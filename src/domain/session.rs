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

/// What the session needs to know about the inverter and the rules, from config.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeParams {
    pub charge_type_setting: String,
    pub charge_type_value: i64,
    pub cutoff: Duration,
    pub stale_after: Duration,
    pub taper_after: Duration,
    pub stall_after: Duration,
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
    fn new(setting: &str, value: SettingValue) -> Write {
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
        self.inherited = pending;
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
            self.begin_stop(
                now,
                StopReason::Cutoff,
                "the safety cutoff was reached".into(),
            );
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
        self.stop_done = 0;
        self.rt.attempts = 0;
        self.rt.retry_at = None;
        self.phase = if self.stop_plan.is_empty() {
            Phase::Done
        } else {
            Phase::Stopping
        };
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
mod tests {
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
}
