//! A deterministic simulator of charge nights: the real engine core ([`EngineCore`]) and the
//! real state-file encoding, against the simulated inverter ([`Inverter`]) and a dongle whose
//! every misbehaviour is drawn from one seeded generator, on a virtual clock.
//!
//! Each night draws a time zone and a date (DST nights included), a battery, a dongle (legacy
//! or >= 4.3 firmware; answers late, never, rejects, applies late, goes silent, reboots with
//! AC charging off; SOC outliers), a schedule and user commands at random instants, broker
//! drops, process crashes and graceful restarts at any step (the core rebuilt from the saved
//! bytes and nothing else), clock jumps of +-1 h and NTP steps, and another app switching AC
//! charging off. After every step the named invariants are checked; the first violation ends
//! the night with a trace that [`run_night`] with `trace` replays exactly.
//!
//! The write layer here models what the dongle client reports (a write confirmed, refused,
//! unanswered and read back, or not sent) with the spacing and timeouts of the real one.

use std::collections::HashMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::domain::core::{
    Command, CoreConfig, DongleInput, Effect, EngineCore, Freshness, Input, RequestId,
    ScheduleInput, Settings,
};
use crate::domain::session::{
    AC_CHARGE, ChargeParams, Now, Origin, Phase, Report, Sabotage, Session, StopReason, Write,
    WriteResult,
};
use crate::domain::soc_filter::SocRule;
use crate::domain::state::{SessionRecord, State};
use crate::domain::units::{LocalTime, Mode, SettingValue, Soc, TargetSoc};
use crate::sim::inverter::{HoldValue, Inverter};
use crate::store::{decode_state, encode_state};

/// Zones with a DST gap or fold (Lord Howe moves by 30 minutes), and two without.
const ZONES: [&str; 6] = [
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "UTC",
];
/// Evenings before a DST change somewhere in [`ZONES`], mixed with ordinary ones.
const DATES: [&str; 8] = [
    "2026-03-07",
    "2026-03-28",
    "2026-04-04",
    "2026-10-03",
    "2026-10-24",
    "2026-10-31",
    "2026-01-15",
    "2026-06-20",
];
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
const READBACK: Duration = Duration::from_secs(10);
const WRITE_SPACING: Duration = Duration::from_secs(1);
const SEC: Duration = Duration::from_secs(1);

/// One broken rule, with what shows it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// What one night came to.
#[derive(Debug, Clone, Default)]
pub struct NightResult {
    pub seed: u64,
    pub charges: u64,
    pub faults: u64,
    pub violation: Option<Violation>,
    /// Step by step, when asked for.
    pub trace: Vec<String>,
}

/// What a batch of nights came to.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub nights: u64,
    pub charges: u64,
    pub faults: u64,
    pub violations: u64,
    /// The first night that broke a rule, replayed with its trace.
    pub first: Option<NightResult>,
}

/// The seed of night `i` of a batch seeded `seed`.
pub fn night_seed(seed: u64, i: u64) -> u64 {
    // SplitMix64 of (seed, i): neighbouring nights share nothing.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `nights` nights; the first that breaks a rule is run again with its trace.
pub fn run(nights: u64, seed: u64, sabotage: Sabotage) -> Summary {
    let mut sum = Summary::default();
    for i in 0..nights {
        let r = run_night(night_seed(seed, i), sabotage, false);
        sum.nights += 1;
        sum.charges += r.charges;
        sum.faults += r.faults;
        if r.violation.is_some() {
            sum.violations += 1;
            if sum.first.is_none() {
                sum.first = Some(run_night(r.seed, sabotage, true));
            }
        }
    }
    sum
}

/// A user's or the world's doing at a given instant.
#[derive(Debug, Clone)]
enum Action {
    SetSchedule(ScheduleInput),
    Cancel,
    ChargeNow(TargetSoc),
    Crash { down: Duration },
    Restart { down: Duration },
    ClockJump(SignedDuration),
    Silent(Duration),
    RebootAcOff(Duration),
    BrokerDrop(Duration),
    BrokerBack,
    SocOutlier(u8),
    OtherAppAcOff,
}

impl Action {
    fn is_fault(&self) -> bool {
        !matches!(
            self,
            Action::SetSchedule(_) | Action::Cancel | Action::ChargeNow(_) | Action::BrokerBack
        )
    }
}

/// How the dongle treats one write.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Treatment {
    Answers,
    Refuses,
    /// No answer; it applies `after` anyway.
    AppliesLate(Duration),
    /// No answer, nothing applied.
    Never,
}

struct DongleWrite {
    write: Write,
    /// When the client reports the outcome.
    due: Duration,
    result: WriteResult,
    /// When the inverter takes the value (if ever).
    applies_at: Option<Duration>,
}

struct World {
    rng: ChaCha8Rng,
    trace: Option<Vec<String>>,
    tz: TimeZone,
    cfg: CoreConfig,
    wall: Timestamp,
    mono: Duration,
    end: Duration,
    inv: Inverter,
    legacy: bool,
    tel_every: Duration,
    hold_every: Option<Duration>,
    p_refuse: f64,
    p_late: f64,
    p_never: f64,
    core: Option<EngineCore>,
    /// The state file, as the store writes it.
    disk: Option<Vec<u8>>,
    history: Vec<SessionRecord>,
    write: Option<DongleWrite>,
    /// Writes the dongle will still apply though their answer is long gone.
    late: Vec<(Duration, Write)>,
    last_sent: Option<Duration>,
    snapshot: Option<(Duration, Freshness)>,
    /// A report of the settings to deliver (`setting/updated` or a snapshot's answer).
    reports: Vec<(Duration, Report)>,
    next_tel: Duration,
    next_hold: Option<Duration>,
    actions: Vec<(Duration, Action)>,
    down_until: Option<Duration>,
    silent_until: Duration,
    broker_down_until: Duration,
    outlier: Option<u8>,
    next_request: u64,
    /// Once schedules (by creation instant) that started a charge, and recurring ones by
    /// (creation instant, local date).
    fired_once: HashMap<Timestamp, u32>,
    fired_daily: HashMap<(Timestamp, jiff::civil::Date), u32>,
    /// The session as last seen, to judge it when its record comes.
    last_session: Option<Session>,
    /// AC charging as the owner (or another app) wants it when no charge runs.
    ac_wanted: i64,
    charges: u64,
    faults: u64,
    /// A rule broken in the middle of a step, reported after it.
    pending_violation: Option<Violation>,
    /// AC charging was switched by someone else and no report of the settings has reached
    /// the service since: it cannot know (a legacy dongle with hold polling off, say).
    ac_change_unreported: bool,
    /// A write landed after the client had given up on it and its session was over (the
    /// dongle applied it more than the read-back window late): nothing watches for that yet.
    stray_write: bool,
}

/// Runs the night drawn from `seed`.
pub fn run_night(seed: u64, sabotage: Sabotage, trace: bool) -> NightResult {
    let mut w = World::draw(seed, sabotage, trace);
    let violation = w.run();
    NightResult {
        seed,
        charges: w.charges,
        faults: w.faults,
        violation,
        trace: w.trace.unwrap_or_default(),
    }
}

fn setting_of(h: &HoldValue) -> Option<SettingValue> {
    match h {
        HoldValue::Int(i) => Some(SettingValue::Int(*i)),
        HoldValue::Time(hh, mm) => LocalTime::new(*hh, *mm).map(SettingValue::Time),
        HoldValue::Text(_) => None,
    }
}

fn json_of(v: SettingValue) -> Value {
    match v {
        SettingValue::Int(n) => Value::from(n),
        SettingValue::Time(t) => Value::from(format!("{t}:00")),
    }
}

impl World {
    fn draw(seed: u64, sabotage: Sabotage, trace: bool) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let tz = TimeZone::get(ZONES[rng.random_range(0..ZONES.len())]).expect("zone");
        let date: jiff::civil::Date = DATES[rng.random_range(0..DATES.len())]
            .parse()
            .expect("date");
        let evening = date
            .at(rng.random_range(19..23), rng.random_range(0..60), 0, 0)
            .to_zoned_datetime(tz.clone())
            .expect("evening")
            .timestamp();
        let capacity = rng.random_range(5_000.0..20_000.0);
        // At most about 1 % of SOC between two reports, as the overshoot rule assumes.
        let tel_every = Duration::from_secs(rng.random_range(10..=120));
        let max_pct_per_report = 1.0;
        let power_cap = capacity * max_pct_per_report / 100.0 * 3600.0 / tel_every.as_secs_f64();
        let power = rng.random_range(1_000.0..8_000.0_f64).min(power_cap);
        let soc = rng.random_range(5.0..95.0);
        let mut inv = Inverter::new(soc, capacity, power, "FAAB");
        let ac_before = rng.random_bool(0.15);
        let _ = inv.set_hold("ACChgSOCLimit", HoldValue::Int(rng.random_range(10..=100)));
        let _ = inv.set_hold("ACChargeType", HoldValue::Int(rng.random_range(0..=2)));
        let _ = inv.set_hold("ACChgStart", HoldValue::Time(rng.random_range(0..24), 0));
        let _ = inv.set_hold("ACChgEnd", HoldValue::Time(rng.random_range(0..24), 30));
        let _ = inv.set_hold("ACCharge", HoldValue::Int(ac_before.into()));
        let legacy = rng.random_bool(0.5);
        let hold_every = if legacy && rng.random_bool(0.8) {
            Some(Duration::from_secs(rng.random_range(10..=300)))
        } else {
            None
        };
        let cutoff = Duration::from_secs(rng.random_range(1..=8) * 3600);
        let params = ChargeParams {
            cutoff,
            sabotage,
            ..ChargeParams::default()
        };
        let cfg = CoreConfig {
            params,
            tz: tz.clone(),
            check_interval: Duration::from_secs(30),
            soc_rule: SocRule::default(),
        };
        let mono0 = Duration::from_secs(10_000);
        let end = mono0 + cutoff + Duration::from_secs(6 * 3600);
        let mut w = World {
            rng,
            trace: trace.then(Vec::new),
            tz,
            cfg,
            wall: evening,
            mono: mono0,
            end,
            inv,
            legacy,
            tel_every,
            hold_every,
            p_refuse: 0.0,
            p_late: 0.0,
            p_never: 0.0,
            core: None,
            disk: None,
            history: Vec::new(),
            write: None,
            late: Vec::new(),
            last_sent: None,
            snapshot: None,
            reports: Vec::new(),
            next_tel: mono0,
            next_hold: hold_every.map(|_| mono0),
            actions: Vec::new(),
            down_until: None,
            silent_until: Duration::ZERO,
            broker_down_until: Duration::ZERO,
            outlier: None,
            next_request: 0,
            fired_once: HashMap::new(),
            fired_daily: HashMap::new(),
            last_session: None,
            ac_wanted: ac_before.into(),
            charges: 0,
            faults: 0,
            pending_violation: None,
            ac_change_unreported: false,
            stray_write: false,
        };
        // A dongle that mostly behaves, with a taste of every fault.
        if w.rng.random_bool(0.3) {
            w.p_refuse = w.rng.random_range(0.0..0.2);
            w.p_late = w.rng.random_range(0.0..0.2);
            w.p_never = w.rng.random_range(0.0..0.2);
        }
        w.script(mono0);
        w
    }

    fn script(&mut self, t0: Duration) {
        let span = (self.end - t0).as_secs();
        let at = |rng: &mut ChaCha8Rng, within: u64| {
            t0 + Duration::from_secs(rng.random_range(0..within.max(1)))
        };
        // The owner's schedule, set in the first hour, for a start within the next six.
        let time = self
            .wall
            .checked_add(SignedDuration::from_secs(
                self.rng.random_range(60..6 * 3600),
            ))
            .expect("time")
            .to_zoned_datetime(self.tz.clone());
        let input = ScheduleInput {
            target: TargetSoc::new(self.rng.random_range(10..=100)).expect("target"),
            time: LocalTime::new(time.hour() as u8, time.minute() as u8).expect("time"),
            mode: if self.rng.random_bool(0.5) {
                Mode::Once
            } else {
                Mode::Recurring
            },
            enabled: true,
            days: None,
            first_run: None,
        };
        let set_at = at(&mut self.rng, 60);
        self.actions.push((set_at, Action::SetSchedule(input)));
        for _ in 0..self.rng.random_range(0..=4) {
            let when = at(&mut self.rng, span);
            let a = match self.rng.random_range(0..13) {
                0 => Action::ChargeNow(TargetSoc::new(self.rng.random_range(10..=100)).unwrap()),
                1 => Action::Cancel,
                2 => Action::SetSchedule(ScheduleInput {
                    target: TargetSoc::new(self.rng.random_range(10..=100)).unwrap(),
                    time: LocalTime::new(
                        self.rng.random_range(0..24),
                        self.rng.random_range(0..60),
                    )
                    .unwrap(),
                    mode: Mode::Recurring,
                    enabled: self.rng.random_bool(0.8),
                    days: None,
                    first_run: None,
                }),
                3 => Action::Crash {
                    down: Duration::from_secs(self.rng.random_range(1..600)),
                },
                4 => Action::Restart {
                    down: Duration::from_secs(self.rng.random_range(1..60)),
                },
                5 => Action::ClockJump(SignedDuration::from_hours(if self.rng.random_bool(0.5) {
                    1
                } else {
                    -1
                })),
                6 => Action::ClockJump(SignedDuration::from_secs(self.rng.random_range(-120..120))),
                7 => Action::Silent(Duration::from_secs(self.rng.random_range(10..300))),
                8 => Action::RebootAcOff(Duration::from_secs(self.rng.random_range(20..80))),
                9 => Action::BrokerDrop(Duration::from_secs(self.rng.random_range(1..200))),
                10 => Action::SocOutlier(self.rng.random_range(0..=100)),
                11 => Action::OtherAppAcOff,
                _ => Action::Restart {
                    down: Duration::from_secs(1),
                },
            };
            self.actions.push((when, a));
        }
        self.actions.sort_by_key(|(t, _)| *t);
    }

    fn log(&mut self, what: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let local = self.wall.to_zoned_datetime(self.tz.clone());
            t.push(format!(
                "{} {} | {}",
                local.strftime("%Y-%m-%d %H:%M:%S %Z"),
                (self.mono.as_secs()),
                what()
            ));
        }
    }

    fn now(&self) -> Now {
        Now {
            wall: self.wall,
            mono: self.mono,
        }
    }

    fn talks(&self) -> bool {
        self.mono >= self.silent_until && self.mono >= self.broker_down_until
    }

    /// Lets time pass to `t`, the battery with it.
    fn advance_to(&mut self, t: Duration) {
        if t > self.mono {
            let dt = t - self.mono;
            self.inv.run_for(self.wall, dt, 1.0, &self.tz);
            self.wall = self
                .wall
                .checked_add(SignedDuration::try_from(dt).expect("dt"))
                .expect("wall");
            self.mono = t;
        }
    }

    fn run(&mut self) -> Option<Violation> {
        self.boot();
        let mut steps = 0u32;
        let mut same_instant = 0u32;
        loop {
            steps += 1;
            if steps > 200_000 || same_instant > 1_000 {
                let why = self.core.as_ref().map(|c| {
                    (
                        c.next_wake(self.now()),
                        c.session()
                            .map(|s| (s.phase, s.next_mono_deadline(), s.in_flight.clone())),
                        self.mono,
                        self.write.as_ref().map(|w| w.due),
                    )
                });
                return Some(Violation {
                    invariant: "progress",
                    detail: format!(
                        "{steps} steps, {same_instant} at one instant: the engine spins; (wake, session, now, write due) = {why:?}"
                    ),
                });
            }
            if let Some(v) = self.check() {
                self.log(|| format!("VIOLATION {}: {}", v.invariant, v.detail));
                return Some(v);
            }
            let horizon = self.wall + SignedDuration::from_hours(12);
            let done = self.mono >= self.end
                || (self.actions.is_empty()
                    && self.late.is_empty()
                    && self.core.as_ref().is_some_and(|c| {
                        c.session().is_none()
                            && c.schedule()
                                .is_none_or(|s| s.next_run.is_none_or(|t| t > horizon))
                    }));
            if done {
                return None;
            }
            let next = self.next_instant();
            same_instant = if next == self.mono {
                same_instant + 1
            } else {
                0
            };
            self.advance_to(next);
            self.step();
        }
    }

    fn next_instant(&self) -> Duration {
        let mut t = self.end;
        let mut consider = |x: Duration| t = t.min(x);
        if let Some((a, _)) = self.actions.first() {
            consider(*a);
        }
        if let Some(d) = self.down_until {
            consider(d);
        } else if let Some(core) = &self.core {
            consider(self.mono + core.next_wake(self.now()));
            consider(self.next_tel);
            if let Some(h) = self.next_hold {
                consider(h);
            }
            if let Some(w) = &self.write {
                consider(w.due);
            }
            if let Some((s, _)) = self.snapshot {
                consider(s);
            }
            for (r, _) in &self.reports {
                consider(*r);
            }
        }
        for (l, _) in &self.late {
            consider(*l);
        }
        t.max(self.mono)
    }

    fn step(&mut self) {
        let now = self.mono;
        // Late writes land whatever the service is doing.
        let (due, later): (Vec<_>, Vec<_>) = self.late.drain(..).partition(|(t, _)| *t <= now);
        self.late = later;
        for (_, w) in due {
            let over = self.core.as_ref().is_none_or(|c| {
                c.session()
                    .is_none_or(|s| !matches!(s.phase, Phase::Starting | Phase::Charging))
            });
            if over {
                self.stray_write = true;
                self.log(|| {
                    format!(
                        "a late write lands after its charge: {}={}",
                        w.setting, w.value
                    )
                });
            }
            self.apply(&w);
        }
        if self.down_until.is_some_and(|d| d <= now) {
            self.down_until = None;
            self.boot();
        }
        while self.actions.first().is_some_and(|(t, _)| *t <= now) {
            let (_, a) = self.actions.remove(0);
            self.act(a);
        }
        if self.core.is_none() {
            return;
        }
        if self.write.as_ref().is_some_and(|w| w.due <= now) {
            let w = self.write.take().expect("write");
            if w.applies_at.is_some_and(|t| t <= now) {
                self.apply(&w.write);
            } else if let Some(t) = w.applies_at {
                self.late.push((t, w.write.clone()));
            }
            self.log(|| {
                format!(
                    "write {}={} -> {:?}",
                    w.write.setting, w.write.value, w.result
                )
            });
            let result = w.result.clone();
            let confirmed = result == WriteResult::Confirmed;
            let session = self.core.as_ref().and_then(|c| c.session().cloned());
            self.feed(Input::WriteDone(result));
            if confirmed && !self.legacy {
                self.reports.push((self.mono, Report::Confirmed));
            }
            if confirmed
                && w.write.setting == AC_CHARGE
                && w.write.value == SettingValue::Int(0)
                && let Some(s) = session
                && s.stop_reason == Some(StopReason::TargetReached)
                // A target lowered below the SOC, or a start before any SOC was known (the
                // first report then ends it), is no overshoot.
                && !s.detail.as_deref().is_some_and(|d| d.contains("new target"))
                && s.start_soc.is_some_and(|soc| soc.get() < s.target.get())
                && self.inv.reported_soc() > s.target.get() + 1
            {
                self.pending_violation.get_or_insert(Violation {
                    invariant: "overshoot-at-most-1",
                    detail: format!(
                        "AC charging went off at SOC {} for a target of {}",
                        self.inv.reported_soc(),
                        s.target
                    ),
                });
            }
        }
        if let Some((t, fresh)) = self.snapshot
            && t <= now
        {
            self.snapshot = None;
            let snap = (self.talks() || fresh == Freshness::Cached).then(|| self.settings());
            self.log(|| format!("snapshot ({fresh:?}) answered: {}", snap.is_some()));
            self.feed(Input::SnapshotDone(snap));
        }
        let (due, later): (Vec<_>, Vec<_>) = self.reports.drain(..).partition(|(t, _)| *t <= now);
        self.reports = later;
        for (_, report) in due {
            if self.talks() {
                self.report_settings(report);
            }
        }
        if self.next_hold.is_some_and(|h| h <= now) {
            self.next_hold = self.hold_every.map(|e| now + e);
            if self.talks() {
                self.report_settings(Report::Polled);
            }
        }
        if self.next_tel <= now {
            self.next_tel = now + self.tel_every;
            if self.talks() {
                let soc = self.outlier.take().unwrap_or(self.inv.reported_soc());
                let p = self.inv.charge_power_w();
                self.feed(Input::Dongle(DongleInput::Telemetry {
                    soc: Soc::new(soc),
                    battery_power_w: Some(p),
                    charge_power_w: Some(p),
                }));
            }
        }
        self.feed(Input::Tick);
    }

    fn settings(&self) -> Settings {
        self.cfg
            .params
            .settings()
            .iter()
            .filter_map(|s| Some((s.clone(), setting_of(self.inv.hold(s)?)?)))
            .collect()
    }

    fn report_settings(&mut self, report: Report) {
        // A report counts as seen only where the core acts on it: while a charge starts or
        // runs (a stop's own restore is not another app's change).
        let heeded = self.core.as_ref().is_some_and(|c| {
            c.session()
                .is_some_and(|s| matches!(s.phase, Phase::Starting | Phase::Charging))
        });
        if heeded {
            self.ac_change_unreported = false;
        }
        let values = self
            .settings()
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect();
        self.feed(Input::Dongle(DongleInput::Settings {
            values,
            report,
            firmware_code: None,
        }));
    }

    fn apply(&mut self, w: &Write) {
        let _ = self.inv.write(&w.setting, &json_of(w.value));
    }

    fn boot(&mut self) {
        let state = match &self.disk {
            Some(bytes) => decode_state(bytes).expect("the saved state reads back"),
            None => State::default(),
        };
        self.log(|| "boot".into());
        self.core = Some(EngineCore::new(self.cfg.clone(), state, self.wall));
        self.write = None;
        self.snapshot = None;
        self.reports.clear();
        let connected = self.mono >= self.broker_down_until;
        self.feed(Input::Boot { connected });
    }

    fn act(&mut self, a: Action) {
        if a.is_fault() {
            self.faults += 1;
        }
        self.log(|| format!("action {a:?}"));
        let up = self.core.is_some();
        match a {
            Action::SetSchedule(input) if up => self.command(Command::SetSchedule(input)),
            Action::Cancel if up => self.command(Command::CancelSchedule),
            Action::ChargeNow(t) if up => self.command(Command::ChargeNow(t)),
            Action::SetSchedule(_) | Action::Cancel | Action::ChargeNow(_) => {}
            Action::Crash { down } => {
                if up {
                    // Nothing more is saved; a write already sent may still apply.
                    if let Some(w) = self.write.take()
                        && let Some(t) = w.applies_at
                    {
                        self.late.push((t, w.write));
                    }
                    self.core = None;
                    self.down_until = Some(self.mono + down);
                }
            }
            Action::Restart { down } => {
                if up {
                    // The ordered stop: the write in flight gets its answer or its timeout.
                    if let Some(w) = self.write.as_ref() {
                        let until = w.due.min(self.mono + WRITE_TIMEOUT + SEC);
                        self.advance_to(until);
                        let w = self.write.take().expect("write");
                        if w.due <= self.mono
                            && matches!(w.result, WriteResult::Confirmed | WriteResult::Rejected(_))
                        {
                            if w.applies_at.is_some_and(|t| t <= self.mono) {
                                self.apply(&w.write);
                            }
                            self.feed_stopping(Input::WriteDone(w.result.clone()));
                        } else if let Some(t) = w.applies_at {
                            self.late.push((t, w.write));
                        }
                    }
                    self.feed_stopping(Input::Flush);
                    self.core = None;
                    self.down_until = Some(self.mono + down);
                }
            }
            Action::ClockJump(d) => {
                self.wall = self.wall.checked_add(d).expect("jump");
            }
            Action::Silent(d) => self.silent_until = self.mono + d,
            Action::RebootAcOff(d) => {
                self.silent_until = self.mono + d;
                let _ = self.inv.set_hold("ACCharge", HoldValue::Int(0));
                self.ac_wanted = 0;
                self.ac_change_unreported = true;
            }
            Action::BrokerDrop(d) => {
                self.broker_down_until = self.mono + d;
                if up {
                    self.feed(Input::Dongle(DongleInput::Connected(false)));
                }
                self.actions.push((self.mono + d, Action::BrokerBack));
                self.actions.sort_by_key(|(t, _)| *t);
            }
            Action::BrokerBack => {
                if up {
                    self.feed(Input::Dongle(DongleInput::Connected(true)));
                }
            }
            Action::SocOutlier(s) => self.outlier = Some(s),
            Action::OtherAppAcOff => {
                let _ = self.inv.set_hold("ACCharge", HoldValue::Int(0));
                self.ac_wanted = 0;
                self.ac_change_unreported = true;
                if !self.legacy && self.talks() {
                    self.reports.push((self.mono, Report::Confirmed));
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.feed(Input::Command(id, cmd));
    }

    /// Feeds the core during an ordered stop: what it asks of the dongle is not carried out.
    fn feed_stopping(&mut self, input: Input) {
        let Some(core) = &mut self.core else { return };
        let now = Now {
            wall: self.wall,
            mono: self.mono,
        };
        let fx = core.handle(input, now);
        for e in fx {
            if let Effect::Save { state, .. } = e {
                self.disk = Some(encode_state(&state));
            }
        }
    }

    fn feed(&mut self, input: Input) {
        let now = self.now();
        let Some(core) = &mut self.core else { return };
        let mut queue: std::collections::VecDeque<Effect> = core.handle(input, now).into();
        while let Some(e) = queue.pop_front() {
            match e {
                Effect::Write(w) => self.send(w),
                Effect::Snapshot { fresh, .. } => {
                    let due = match fresh {
                        Freshness::Cached => self.mono,
                        Freshness::Read if self.legacy => {
                            self.mono + READBACK.min(self.hold_every.unwrap_or(READBACK))
                        }
                        Freshness::Read => self.mono + SEC,
                    };
                    self.snapshot = Some((due, fresh));
                }
                Effect::Refresh => {
                    if !self.legacy {
                        self.reports.push((self.mono + SEC, Report::Polled));
                    }
                }
                Effect::Save { state, ticket } => {
                    self.disk = Some(encode_state(&state));
                    if let Some(ticket) = ticket {
                        let core = self.core.as_mut().expect("up");
                        let more = core.handle(
                            Input::SaveDone {
                                ticket,
                                result: Ok(()),
                            },
                            now,
                        );
                        for m in more.into_iter().rev() {
                            queue.push_front(m);
                        }
                    }
                }
                Effect::History(r) => {
                    self.charges += 1;
                    self.log(|| format!("ended: {:?} {:?}", r.stop_reason, r.detail));
                    if let Some(v) = self.judge_end(&r) {
                        self.pending_violation.get_or_insert(v);
                    }
                    self.history.push(r);
                }
                Effect::Reply(..) => {}
            }
        }
        self.observe();
    }

    fn send(&mut self, w: Write) {
        if self.write.is_some() {
            self.pending_violation.get_or_insert(Violation {
                invariant: "one-write-in-flight",
                detail: format!(
                    "{}={} handed out while another write is unanswered",
                    w.setting, w.value
                ),
            });
            return;
        }
        let sent = self
            .last_sent
            .map_or(self.mono, |l| self.mono.max(l + WRITE_SPACING));
        self.log(|| format!("send {}={}", w.setting, w.value));
        if self.mono < self.broker_down_until {
            self.write = Some(DongleWrite {
                write: w,
                due: self.mono,
                result: WriteResult::NotSent("not connected to the MQTT broker".into()),
                applies_at: None,
            });
            return;
        }
        self.last_sent = Some(sent);
        let silent = sent < self.silent_until;
        let treatment = if silent {
            Treatment::Never
        } else {
            let x: f64 = self.rng.random();
            if x < self.p_refuse {
                Treatment::Refuses
            } else if x < self.p_refuse + self.p_late {
                Treatment::AppliesLate(Duration::from_secs(self.rng.random_range(5..40)))
            } else if x < self.p_refuse + self.p_late + self.p_never {
                Treatment::Never
            } else {
                Treatment::Answers
            }
        };
        let latency = Duration::from_millis(self.rng.random_range(20..2000));
        let valid = self
            .inv
            .clone()
            .write(&w.setting, &json_of(w.value))
            .is_ok();
        let unanswered = sent + WRITE_TIMEOUT + READBACK;
        let (due, result, applies_at) = match treatment {
            Treatment::Answers if valid => {
                (sent + latency, WriteResult::Confirmed, Some(sent + latency))
            }
            Treatment::Answers | Treatment::Refuses => (
                sent + latency,
                WriteResult::Rejected("the dongle answered \"error\"".into()),
                None,
            ),
            Treatment::AppliesLate(after) if valid => {
                let at = sent + after;
                // The client reads it back after its timeout: seen in time, it is confirmed.
                if at <= unanswered {
                    (
                        at.max(sent + WRITE_TIMEOUT),
                        WriteResult::Confirmed,
                        Some(at),
                    )
                } else {
                    (
                        unanswered,
                        WriteResult::Unknown("no answer and no read-back".into()),
                        Some(at),
                    )
                }
            }
            Treatment::AppliesLate(_) | Treatment::Never => (
                unanswered,
                WriteResult::Unknown("no answer and no read-back".into()),
                None,
            ),
        };
        self.write = Some(DongleWrite {
            write: w,
            due,
            result,
            applies_at,
        });
    }

    /// Notes what the core does after each input: new sessions (to count fires) and whether
    /// what the API shows is what the core holds.
    fn observe(&mut self) {
        let Some(core) = &self.core else { return };
        if let Some(s) = core.session() {
            let new = self.last_session.as_ref().is_none_or(|l| l.id != s.id);
            if new {
                self.ac_change_unreported = false;
            }
            if new
                && s.origin == Origin::Schedule
                && let Some(sched) = core.schedule()
            {
                let fired = match sched.mode {
                    Mode::Once => self.fired_once.entry(sched.created_at).or_default(),
                    Mode::Recurring => {
                        let day = s.started_at.to_zoned_datetime(self.tz.clone()).date();
                        self.fired_daily.entry((sched.created_at, day)).or_default()
                    }
                };
                *fired += 1;
                if *fired > 1 {
                    let v = Violation {
                        invariant: "schedule-fires-once-per-occurrence",
                        detail: format!(
                            "a {} schedule started a charge {} times",
                            sched.mode.as_str(),
                            fired
                        ),
                    };
                    self.pending_violation.get_or_insert(v);
                }
            }
            self.last_session = Some(s.clone());
        }
        let st = core.status();
        let charging = core.session().is_some_and(Session::is_charging);
        if st.is_charging() != charging || st.schedule.as_ref() != core.schedule() {
            self.pending_violation.get_or_insert(Violation {
                invariant: "api-shows-the-core",
                detail: format!(
                    "the status says charging={} schedule={:?}, the core holds charging={charging} schedule={:?}",
                    st.is_charging(),
                    st.schedule,
                    core.schedule()
                ),
            });
        }
    }

    /// The rules that hold between steps.
    fn check(&mut self) -> Option<Violation> {
        if let Some(v) = self.pending_violation.take() {
            return Some(v);
        }
        let core = self.core.as_ref()?;
        if let Some(s) = core.session()
            && matches!(
                s.phase,
                Phase::Preparing | Phase::Starting | Phase::Charging
            )
            && self.wall > s.deadline + SignedDuration::from_secs(1)
        {
            return Some(Violation {
                invariant: "cutoff-within-1s",
                detail: format!(
                    "still {:?} {} after the safety cutoff at {}",
                    s.phase,
                    self.wall.duration_since(s.deadline),
                    s.deadline
                ),
            });
        }
        let ac = self.inv.hold(AC_CHARGE).cloned();
        let excused = self.ac_change_unreported
            || self.stray_write
            || self.history.last().is_some_and(|r| {
                r.stop_reason == Some(StopReason::WriteFailed)
                    || !r.restore_failures.is_empty()
                    || r.detail.as_deref().is_some_and(|d| d.contains("unknown"))
            });
        if core.session().is_none()
            && self.write.is_none()
            && self.late.is_empty()
            && ac != Some(HoldValue::Int(self.ac_wanted))
            && !excused
            && !self.history.is_empty()
        {
            return Some(Violation {
                invariant: "ac-charge-as-wanted-after-a-session",
                detail: format!(
                    "no charge runs and ACCharge is {ac:?}, the owner had it at {}; last: {:?}",
                    self.ac_wanted,
                    self.history.last()
                ),
            });
        }
        None
    }

    /// The rules for a charge that has just ended.
    fn judge_end(&self, r: &SessionRecord) -> Option<Violation> {
        if r.stop_reason.is_none() {
            return Some(Violation {
                invariant: "one-record-per-session",
                detail: format!("{} ended without a reason", r.id),
            });
        }
        if self.history.iter().any(|h| h.id == r.id) {
            return Some(Violation {
                invariant: "one-record-per-session",
                detail: format!("{} was recorded twice", r.id),
            });
        }
        let s = self.last_session.as_ref().filter(|s| s.id == r.id)?;
        let detail = r.detail.as_deref().unwrap_or_default();
        let excused = r.stop_reason == Some(StopReason::ExternalOverride)
            || !r.restore_failures.is_empty()
            || detail.contains("restores them at its end")
            || detail.contains("unknown")
            || self.stray_write
            || !self.late.is_empty();
        let snapshot = s.snapshot.as_ref()?;
        if excused {
            return None;
        }
        for t in s.touched.iter().filter(|t| *t != AC_CHARGE) {
            let Some(expected) = s.inherited.get(t).or_else(|| snapshot.get(t)) else {
                continue;
            };
            let now = self.inv.hold(t).and_then(setting_of);
            if now != Some(*expected) {
                return Some(Violation {
                    invariant: "settings-restored",
                    detail: format!(
                        "{t} is {now:?} after the charge, it was {expected} before ({:?}: {detail})",
                        r.stop_reason
                    ),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
