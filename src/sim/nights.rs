//! A deterministic simulator of charge nights: the real engine core ([`EngineCore`]), the real
//! verified-write protocol ([`WriteProtocol`]), the real message routing and decoding of the
//! dongle client and the real state-file encoding, against the simulated dongle
//! ([`DongleModel`], the one the MQTT tests talk to) through a simulated broker, on a virtual
//! clock, with every misbehaviour drawn from one seeded generator.
//!
//! Each night draws a time zone and a date (DST nights included), a battery, a dongle (legacy
//! or >= 4.3 firmware; answers late, never, rejects, applies late, goes silent, reboots with
//! AC charging off; SOC outliers), a schedule and user commands at random instants, broker
//! drops, message latency, process crashes and graceful restarts at any step (the core rebuilt
//! from the saved bytes and nothing else), clock jumps of +-1 h and NTP steps, and another app
//! switching AC charging off. After every step the named invariants are checked; the first
//! violation ends the night with a trace that [`run_night`] with `trace` replays exactly.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::ManualClock;
use crate::config::ChargingConfig;
use crate::domain::core::{
    Command, CoreConfig, DongleInput, Effect, EngineCore, Input, RequestId, ScheduleInput,
};
use crate::domain::event::{Event, EventKind};
use crate::domain::night::{Battery, PriceBook};
use crate::domain::plan::PriceSlot;
use crate::domain::schedule::{MISSED_GRACE, next_occurrence};
use crate::domain::session::{
    AC_CHARGE, ChargeParams, Now, Origin, Phase, Sabotage, Session, StopReason, Write, WriteResult,
};
use crate::domain::state::{SessionRecord, State};
use crate::domain::units::{Days, LocalTime, Mode, SettingValue, TargetSoc};
use crate::dongle::codec;
use crate::dongle::input;
use crate::dongle::protocol::{Inbound, Out, ProtocolConfig, Request, WriteProtocol};
use crate::sim::dongle::model::DongleModel;
use crate::sim::dongle::{Fault, Firmware, SimConfig};
use crate::sim::inverter::HoldValue;
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
const PREFIX: &str = "dongle-40:4C:CA:00:00:01";
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
    Crash {
        down: Duration,
    },
    Restart {
        down: Duration,
    },
    ClockJump(SignedDuration),
    Silent(Duration),
    /// The dongle talks again after [`Action::Silent`].
    Talks,
    RebootAcOff(Duration),
    /// The dongle is back from [`Action::RebootAcOff`].
    DongleBack,
    BrokerDrop(Duration),
    BrokerBack,
    SocOutlier(u8),
    OtherAppAcOff,
}

impl Action {
    fn is_fault(&self) -> bool {
        !matches!(
            self,
            Action::SetSchedule(_)
                | Action::Cancel
                | Action::ChargeNow(_)
                | Action::BrokerBack
                | Action::Talks
                | Action::DongleBack
        )
    }
}

/// Which side of the broker a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Service,
    Dongle,
}

/// A message on its way through the broker.
struct InFlight {
    at: Duration,
    to: Peer,
    topic: String,
    payload: Vec<u8>,
    retained: bool,
}

/// A schedule as it was set, to judge its occurrences at the end of the night.
struct Instance {
    created_at: Timestamp,
    mode: Mode,
    enabled: bool,
    time: LocalTime,
    days: Option<Days>,
    /// Its first armed occurrence.
    first: Option<Timestamp>,
    /// The latest wall time the running service held it at.
    until: Timestamp,
}

struct World {
    rng: ChaCha8Rng,
    trace: Option<Vec<String>>,
    tz: TimeZone,
    cfg: CoreConfig,
    proto_cfg: ProtocolConfig,
    clock: ManualClock,
    end: Duration,
    dongle: DongleModel,
    p_refuse: f64,
    p_late: f64,
    p_never: f64,
    core: Option<EngineCore>,
    proto: Option<WriteProtocol>,
    /// The service is in its ordered stop: what the core asks of the dongle is not carried out.
    stopping: bool,
    /// Inputs for the core, fed in order once the effects of the one before are carried out.
    inbox: VecDeque<Input>,
    feeding: bool,
    /// The state file, as the store writes it.
    disk: Option<Vec<u8>>,
    /// The last charge that ended (occurrence records aside).
    last_charge: Option<SessionRecord>,
    charge_ids: HashSet<String>,
    /// The events the outbox accepted (each id once, as the outbox keeps them).
    outbox_ids: HashSet<String>,
    outbox: Vec<Event>,
    /// The ids of every occurrence record (missed, skipped, could not start).
    occurrence_ids: Vec<String>,
    /// Charges that were cheapest-hours runs ending at their slots' end.
    slot_end_ids: HashSet<String>,
    /// Messages between the broker and its clients, by delivery instant (in order per peer).
    wire: Vec<InFlight>,
    last_at: [Duration; 2],
    retained: BTreeMap<String, Vec<u8>>,
    broker_up: bool,
    service_connected: bool,
    /// The dongle is rebooting until then.
    dongle_off_until: Duration,
    actions: Vec<(Duration, Action)>,
    down_until: Option<Duration>,
    next_request: u64,
    /// The write the core handed out, until its outcome comes back.
    write_pending: Option<Write>,
    last_update_sent: Option<Duration>,
    instances: Vec<Instance>,
    /// Outcomes per (instance, occurrence): a charge started, or the skip recorded.
    outcomes: HashMap<(usize, Timestamp), u32>,
    /// Missed records per instance: every occurrence from the first to the second instant.
    missed: Vec<(usize, Timestamp, Timestamp)>,
    /// Occurrence records of the last feed, judged once the schedule they belong to is known.
    new_records: Vec<SessionRecord>,
    once_fires: HashMap<usize, u32>,
    /// The last occurrence each schedule instance was seen to consume.
    consumed: HashMap<usize, Timestamp>,
    /// The session as last seen, to judge it when its record comes.
    last_session: Option<Session>,
    /// The core held a session still charging (or starting) after the last input it took.
    active_before: bool,
    /// Prices the feed hands the core at every start (None: a night without prices).
    prices: Option<PriceBook>,
    /// The owner's schedule is a cheapest-hours one, ready this many hours after its start.
    ready_by_hours: Option<i64>,
    /// The occurrence of the last cheapest night seen to begin.
    last_night: Option<Timestamp>,
    /// The SOC the battery truly had when the last session began.
    start_soc: u8,
    /// AC charging as the owner (or another app) wants it when no charge runs.
    ac_wanted: i64,
    charges: u64,
    faults: u64,
    /// A rule broken in the middle of a step, reported after it.
    pending_violation: Option<Violation>,
    /// AC charging was switched by someone else and no report of the settings has reached
    /// the service since: it cannot know (a legacy dongle with hold polling off, say).
    ac_change_unreported: bool,
    /// A charge's record says AC charging was not put back as found, and nobody has set it
    /// since.
    ac_lost: bool,
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

/// Whether a charge's record says AC charging may not be back as found.
fn ac_failure_recorded(r: &SessionRecord) -> bool {
    r.stop_reason == Some(StopReason::WriteFailed)
        || !r.restore_failures.is_empty()
        || r.detail.as_deref().is_some_and(|d| d.contains("unknown"))
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
        let legacy = rng.random_bool(0.5);
        let hold_every = if legacy && rng.random_bool(0.8) {
            Some(Duration::from_secs(rng.random_range(10..=300)))
        } else {
            None
        };
        let mono0 = Duration::from_secs(10_000);
        let clock = ManualClock::new(
            evening
                .checked_sub(SignedDuration::try_from(mono0).expect("mono0"))
                .expect("origin"),
        );
        clock.advance(mono0);
        let mut dongle = DongleModel::new(
            SimConfig {
                prefix: PREFIX.into(),
                firmware: if legacy {
                    Firmware::Legacy
                } else {
                    Firmware::V43
                },
                input_interval: tel_every,
                hold_interval: hold_every,
                status_interval: Duration::from_secs(300),
                speed: 1.0,
                initial_soc: soc,
                capacity_wh: capacity,
                max_charge_w: power,
                idle_discharge_w: 0.0,
                tz: tz.clone(),
                ..SimConfig::default()
            },
            clock.clock(),
        );
        let ac_before = rng.random_bool(0.15);
        for (name, value) in [
            ("ACChgSOCLimit", HoldValue::Int(rng.random_range(10..=100))),
            ("ACChargeType", HoldValue::Int(rng.random_range(0..=2))),
            ("ACChgStart", HoldValue::Time(rng.random_range(0..24), 0)),
            ("ACChgEnd", HoldValue::Time(rng.random_range(0..24), 30)),
            ("ACCharge", HoldValue::Int(ac_before.into())),
        ] {
            dongle
                .set_hold(name, value)
                .expect("a register the model has");
        }
        // Everything as a fresh config has it, but the cutoff.
        let defaults = ChargingConfig::default();
        let cutoff = Duration::from_secs(rng.random_range(1..=8) * 3600);
        let params = ChargeParams {
            cutoff,
            sabotage,
            ..ChargeParams::default()
        };
        // Cheapest hours from a generator of its own, so that the rest of each night is as
        // it was drawn before: the planner's idea of the charge power is off by up to 40 %
        // (re-planning must catch a slow charge), and most nights have prices.
        let mut extra = ChaCha8Rng::seed_from_u64(seed ^ 0x00C4_EA9E_57C4_EA9E);
        let battery = Battery {
            capacity_kwh: Some(capacity / 1000.0),
            charge_kw: Some(power / 1000.0 * extra.random_range(0.6..1.4)),
            learned_kw: None,
        };
        let prices = extra.random_bool(0.8).then(|| {
            let mut slots = Vec::new();
            let mut t = evening - SignedDuration::from_hours(2);
            let mut price: f64 = extra.random_range(0.05..0.4);
            while t < evening + SignedDuration::from_hours(40) {
                let end = t + SignedDuration::from_mins(30);
                price = (price + extra.random_range(-0.08..0.08)).clamp(-0.05, 0.6);
                slots.push(PriceSlot {
                    start: t,
                    end,
                    price,
                });
                t = end;
            }
            PriceBook {
                source: "sim".into(),
                currency: "GBP".into(),
                fetched_at: evening,
                slots: std::sync::Arc::new(slots),
                problem: None,
            }
        });
        let ready_by_hours = extra
            .random_bool(0.35)
            .then(|| extra.random_range(1..=9_i64));
        let cfg = CoreConfig {
            params,
            tz: tz.clone(),
            check_interval: defaults.soc_check_interval,
            soc_rule: defaults.soc_rule,
            battery,
        };
        let end = mono0 + cutoff + Duration::from_secs(6 * 3600);
        let mut w = World {
            rng,
            trace: trace.then(Vec::new),
            tz,
            cfg,
            proto_cfg: ProtocolConfig {
                write_timeout: defaults.write_timeout,
                min_write_interval: defaults.min_write_interval,
                readback_timeout: defaults.readback_timeout,
                max_retries: if defaults.retry_on_failure {
                    defaults.max_retries
                } else {
                    0
                },
                time_format: defaults.time_format,
            },
            clock,
            end,
            dongle,
            p_refuse: 0.0,
            p_late: 0.0,
            p_never: 0.0,
            core: None,
            proto: None,
            stopping: false,
            inbox: VecDeque::new(),
            feeding: false,
            disk: None,
            last_charge: None,
            charge_ids: HashSet::new(),
            outbox_ids: HashSet::new(),
            outbox: Vec::new(),
            occurrence_ids: Vec::new(),
            slot_end_ids: HashSet::new(),
            wire: Vec::new(),
            last_at: [Duration::ZERO; 2],
            retained: BTreeMap::new(),
            broker_up: true,
            service_connected: false,
            dongle_off_until: Duration::ZERO,
            actions: Vec::new(),
            down_until: None,
            next_request: 0,
            write_pending: None,
            last_update_sent: None,
            instances: Vec::new(),
            outcomes: HashMap::new(),
            missed: Vec::new(),
            new_records: Vec::new(),
            once_fires: HashMap::new(),
            consumed: HashMap::new(),
            last_session: None,
            active_before: false,
            prices,
            ready_by_hours,
            last_night: None,
            start_soc: 0,
            ac_wanted: ac_before.into(),
            charges: 0,
            faults: 0,
            pending_violation: None,
            ac_change_unreported: false,
            ac_lost: false,
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
            .wall()
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
            ready_by: self.ready_by_hours.map(|h| {
                let r = time
                    .checked_add(SignedDuration::from_hours(h))
                    .expect("ready by");
                LocalTime::new(r.hour() as u8, r.minute() as u8).expect("time")
            }),
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
                    ready_by: None,
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
            let now = self.clock.clock().now();
            let local = now.to_zoned_datetime(self.tz.clone());
            let mono = self.clock.clock().mono().0;
            t.push(format!(
                "{} {}.{:03} | {}",
                local.strftime("%Y-%m-%d %H:%M:%S %Z"),
                mono.as_secs(),
                mono.subsec_millis(),
                what()
            ));
        }
    }

    fn wall(&self) -> Timestamp {
        self.clock.clock().now()
    }

    fn mono(&self) -> Duration {
        self.clock.clock().mono().0
    }

    fn now(&self) -> Now {
        Now {
            wall: self.wall(),
            mono: self.mono(),
        }
    }

    fn advance_to(&mut self, t: Duration) {
        let now = self.mono();
        if t > now {
            self.clock.advance(t - now);
        }
    }

    fn charging_phase(&self) -> bool {
        self.core.as_ref().is_some_and(|c| {
            c.session()
                .is_some_and(|s| matches!(s.phase, Phase::Starting | Phase::Charging))
        })
    }

    fn run(&mut self) -> Option<Violation> {
        self.dongle_connect();
        self.boot();
        let mut steps = 0u32;
        let mut same_instant = 0u32;
        loop {
            steps += 1;
            if steps > 400_000 || same_instant > 1_000 {
                let now = self.now();
                let why = self.core.as_ref().map(|c| {
                    (
                        c.next_wake(now),
                        c.session()
                            .map(|s| (s.phase, s.next_mono_deadline(), s.in_flight.clone())),
                        now.mono,
                        self.proto.as_ref().and_then(WriteProtocol::next_deadline),
                        self.dongle.next_event(),
                    )
                });
                return Some(Violation {
                    invariant: "progress",
                    detail: format!(
                        "{steps} steps, {same_instant} at one instant: the engine spins; (wake, session, now, protocol, dongle) = {why:?}"
                    ),
                });
            }
            if let Some(v) = self.check() {
                self.log(|| format!("VIOLATION {}: {}", v.invariant, v.detail));
                return Some(v);
            }
            let horizon = self.wall() + SignedDuration::from_hours(12);
            let done = self.mono() >= self.end
                || (self.actions.is_empty()
                    && self.dongle.late_writes() == 0
                    && self.core.as_ref().is_some_and(|c| {
                        c.session().is_none()
                            && c.schedule()
                                .is_none_or(|s| s.next_run.is_none_or(|t| t > horizon))
                    }));
            if done {
                let v = self
                    .pending_violation
                    .take()
                    .or_else(|| self.judge_occurrences())
                    .or_else(|| self.judge_events());
                if let Some(v) = &v {
                    self.log(|| format!("VIOLATION {}: {}", v.invariant, v.detail));
                }
                return v;
            }
            let next = self.next_instant();
            same_instant = if next == self.mono() {
                same_instant + 1
            } else {
                0
            };
            self.advance_to(next);
            self.step();
        }
    }

    fn next_instant(&self) -> Duration {
        let mono = self.mono();
        let mut t = self.end;
        let mut consider = |x: Duration| t = t.min(x);
        if !self.stopping
            && let Some((a, _)) = self.actions.first()
        {
            consider(*a);
        }
        consider(self.dongle.next_event().0);
        if let Some(m) = self.wire.first() {
            consider(m.at);
        }
        if let Some(d) = self.down_until {
            consider(d);
        }
        if let Some(core) = &self.core {
            consider(mono + core.next_wake(self.now()));
        }
        if let Some(d) = self.proto.as_ref().and_then(WriteProtocol::next_deadline) {
            consider(d);
        }
        t.max(mono)
    }

    fn step(&mut self) {
        let now = self.mono();
        self.dongle.catch_up();
        // The dongle lives on whatever the service is doing; late writes land.
        if self.dongle.next_event().0 <= now {
            let late = self.dongle.late_writes();
            self.dongle.on_timer();
            if self.dongle.late_writes() < late && !self.charging_phase() {
                self.stray_write = true;
                self.log(|| "a late write lands after its charge".into());
            }
            self.flush_dongle();
        }
        if self.down_until.is_some_and(|d| d <= now) {
            self.down_until = None;
            self.boot();
        }
        while !self.stopping && self.actions.first().is_some_and(|(t, _)| *t <= now) {
            let (_, a) = self.actions.remove(0);
            self.act(a);
        }
        while self.wire.first().is_some_and(|m| m.at <= now) {
            let m = self.wire.remove(0);
            self.deliver(m);
        }
        if let Some(p) = &mut self.proto
            && p.next_deadline().is_some_and(|d| d <= now)
        {
            let out = p.on_timer(now);
            self.carry_out(out);
        }
        self.feed(Input::Tick);
    }

    // ---- the broker --------------------------------------------------------------------------

    /// Hands a message to the broker for `to`, after a latency; in order per client.
    fn send(&mut self, to: Peer, topic: String, payload: Vec<u8>, retained: bool) {
        let i = to as usize;
        let latency = Duration::from_millis(self.rng.random_range(2..300));
        let at = (self.mono() + latency).max(self.last_at[i]);
        self.last_at[i] = at;
        let pos = self.wire.partition_point(|m| m.at <= at);
        self.wire.insert(
            pos,
            InFlight {
                at,
                to,
                topic,
                payload,
                retained,
            },
        );
    }

    /// What the dongle published goes to the broker.
    fn flush_dongle(&mut self) {
        for m in self.dongle.take_outbox() {
            if !self.broker_up {
                continue;
            }
            if m.retain {
                self.retained.insert(m.topic.clone(), m.payload.clone());
            }
            if self.service_connected {
                self.send(Peer::Service, m.topic, m.payload, false);
            }
        }
    }

    fn deliver(&mut self, m: InFlight) {
        match m.to {
            Peer::Dongle => {
                if !self.dongle.connected() {
                    return;
                }
                if m.topic.ends_with("/update") {
                    self.plan_write_treatment();
                }
                self.dongle.receive(&m.topic, &m.payload);
                self.flush_dongle();
            }
            Peer::Service => {
                if self.service_connected && self.core.is_some() {
                    self.hear_at_service(&m.topic, &m.payload, m.retained);
                }
            }
        }
    }

    /// How the dongle takes the write that is arriving.
    fn plan_write_treatment(&mut self) {
        let x: f64 = self.rng.random();
        let fault = if x < self.p_refuse {
            Fault::RejectWrites
        } else if x < self.p_refuse + self.p_late {
            Fault::LateApply {
                delay: Duration::from_secs(self.rng.random_range(5..40)),
            }
        } else if x < self.p_refuse + self.p_late + self.p_never {
            Fault::Silent
        } else {
            return;
        };
        self.log(|| format!("the dongle will take the next write as {fault:?}"));
        self.dongle.treat_next_write(fault);
    }

    /// A message reaches the service: decoded and routed as the MQTT client does, the write
    /// protocol and the engine hearing it in either order.
    fn hear_at_service(&mut self, topic: &str, payload: &[u8], retained: bool) {
        self.log(|| {
            let text = String::from_utf8_lossy(payload);
            format!(
                "heard {topic}{}: {:.160}",
                if retained { " (retained)" } else { "" },
                text
            )
        });
        let suffix = topic
            .strip_prefix(PREFIX)
            .and_then(|s| s.strip_prefix('/'))
            .unwrap_or_default()
            .to_string();
        let (for_protocol, for_core) = match codec::decode(PREFIX, topic, payload) {
            Ok(message) => {
                let r = input::route(message, retained);
                (r.protocol, r.engine.map(|m| input::to_core(m).0))
            }
            Err(_) => (None, Some(DongleInput::Other)),
        };
        let protocol_first = self.rng.random_bool(0.5);
        if !protocol_first && let Some(i) = for_core.clone() {
            self.hear_at_core(i);
        }
        let now = self.mono();
        if let Some(message) = for_protocol
            && let Some(p) = &mut self.proto
        {
            let out = p.on_message(
                Inbound {
                    suffix: &suffix,
                    retained,
                    message: &message,
                },
                now,
            );
            self.carry_out(out);
        }
        if protocol_first && let Some(i) = for_core {
            self.hear_at_core(i);
        }
    }

    fn hear_at_core(&mut self, input: DongleInput) {
        if matches!(input, DongleInput::Settings { .. }) && self.charging_phase() {
            // Seen where the core acts on it: while a charge starts or runs (a stop's own
            // restore is not another app's change).
            self.ac_change_unreported = false;
        }
        self.feed(Input::Dongle(input));
    }

    /// Publishes and answers what the write protocol says, as the client does.
    fn carry_out(&mut self, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Publish { suffix, payload } => {
                    let now = self.mono();
                    if suffix == "update" {
                        if let Some(last) = self.last_update_sent
                            && now < last + self.proto_cfg.min_write_interval
                        {
                            self.pending_violation.get_or_insert(Violation {
                                invariant: "one-write-in-flight",
                                detail: format!(
                                    "two writes {:?} apart on the wire",
                                    now.saturating_sub(last)
                                ),
                            });
                        }
                        self.last_update_sent = Some(now);
                    }
                    self.log(|| format!("publish {suffix} {}", String::from_utf8_lossy(&payload)));
                    if self.service_connected {
                        self.send(Peer::Dongle, format!("{PREFIX}/{suffix}"), payload, false);
                    }
                }
                Out::WriteDone(result) => self.write_done(result),
                Out::SnapshotDone(snap) => {
                    self.log(|| format!("snapshot answered: {}", snap.is_some()));
                    self.feed(Input::SnapshotDone(snap));
                }
            }
        }
    }

    fn write_done(&mut self, result: WriteResult) {
        let Some(w) = self.write_pending.take() else {
            return;
        };
        self.log(|| format!("write {}={} -> {result:?}", w.setting, w.value));
        let confirmed = result == WriteResult::Confirmed;
        let session = self.core.as_ref().and_then(|c| c.session().cloned());
        self.feed(Input::WriteDone(result));
        let soc = self.dongle.inverter().reported_soc();
        if confirmed
            && w.setting == AC_CHARGE
            && w.value == SettingValue::Int(0)
            && let Some(s) = session
            && s.stop_reason == Some(StopReason::TargetReached)
            // A target lowered below the SOC, or a start before any SOC was known (the first
            // report then ends it), is no overshoot.
            && !s.detail.as_deref().is_some_and(|d| d.contains("new target"))
            && s.start_soc.is_some_and(|start| start.get() < s.target.get())
            // Above the target or, when the battery truly held more at the start than the
            // service believed, above that.
            && soc > s.target.get().max(self.start_soc) + 1
        {
            self.pending_violation.get_or_insert(Violation {
                invariant: "overshoot-at-most-1",
                detail: format!(
                    "AC charging went off at SOC {soc} for a target of {}",
                    s.target
                ),
            });
        }
    }

    fn dongle_connect(&mut self) {
        if self.broker_up && self.mono() >= self.dongle_off_until && !self.dongle.connected() {
            self.dongle.on_connected();
            self.flush_dongle();
        }
    }

    fn service_connect(&mut self) {
        if !self.broker_up || self.core.is_none() || self.service_connected {
            return;
        }
        self.service_connected = true;
        if let Some(p) = &mut self.proto {
            p.set_connected(true);
        }
        for (suffix, payload) in input::on_connect() {
            self.send(Peer::Dongle, format!("{PREFIX}/{suffix}"), payload, false);
        }
        let retained: Vec<_> = self
            .retained
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        for (topic, payload) in retained {
            self.send(Peer::Service, topic, payload, true);
        }
        self.feed(Input::Dongle(DongleInput::Connected(true)));
    }

    /// The service's connection is gone: what was on its way to it is lost.
    fn service_gone(&mut self) {
        self.service_connected = false;
        if let Some(p) = &mut self.proto {
            p.set_connected(false);
        }
        self.wire.retain(|m| m.to != Peer::Service);
    }

    // ---- the service -------------------------------------------------------------------------

    fn boot(&mut self) {
        let state = match &self.disk {
            Some(bytes) => decode_state(bytes).expect("the saved state reads back"),
            None => State::default(),
        };
        self.log(|| "boot".into());
        self.core = Some(EngineCore::new(self.cfg.clone(), state, self.wall()));
        self.proto = Some(WriteProtocol::new(self.proto_cfg.clone()));
        self.write_pending = None;
        self.stopping = false;
        self.feed(Input::Boot { connected: false });
        self.feed(Input::Prices(self.prices.clone()));
        self.service_connect();
    }

    fn act(&mut self, a: Action) {
        if a.is_fault() {
            self.faults += 1;
        }
        self.log(|| format!("action {a:?}"));
        let up = self.core.is_some();
        let mono = self.mono();
        match a {
            Action::SetSchedule(input) if up => self.command(Command::SetSchedule(input)),
            Action::Cancel if up => self.command(Command::CancelSchedule),
            Action::ChargeNow(t) if up => self.command(Command::ChargeNow(t)),
            Action::SetSchedule(_) | Action::Cancel | Action::ChargeNow(_) => {}
            Action::Crash { down } => {
                if up {
                    // Nothing more is saved; a write already sent may still apply.
                    self.core = None;
                    self.proto = None;
                    self.service_gone();
                    self.write_pending = None;
                    self.inbox.clear();
                    self.down_until = Some(mono + down);
                }
            }
            Action::Restart { down } => {
                if up {
                    self.ordered_stop();
                    self.down_until = Some(self.mono() + down);
                }
            }
            Action::ClockJump(d) => self.clock.jump(d),
            Action::Silent(d) => {
                self.dongle.set_fault(Fault::Silent);
                self.later(d, Action::Talks);
            }
            Action::Talks => {
                self.dongle.set_fault(Fault::None);
                self.flush_dongle();
            }
            Action::RebootAcOff(d) => {
                if self.dongle.connected() {
                    self.dongle.on_disconnected();
                    // The broker publishes the dongle's last will.
                    let topic = format!("{PREFIX}/availability");
                    self.retained.insert(topic.clone(), b"offline".to_vec());
                    if self.service_connected {
                        self.send(Peer::Service, topic, b"offline".to_vec(), false);
                    }
                }
                self.dongle
                    .set_hold(AC_CHARGE, HoldValue::Int(0))
                    .expect("ACCharge");
                self.flush_dongle();
                self.ac_wanted = 0;
                self.ac_lost = false;
                self.ac_change_unreported = true;
                self.dongle_off_until = mono + d;
                self.later(d, Action::DongleBack);
            }
            Action::DongleBack => self.dongle_connect(),
            Action::BrokerDrop(d) => {
                self.broker_up = false;
                self.dongle.on_disconnected();
                if self.service_connected {
                    self.service_gone();
                    self.feed(Input::Dongle(DongleInput::Connected(false)));
                }
                self.wire.clear();
                self.later(d, Action::BrokerBack);
            }
            Action::BrokerBack => {
                self.broker_up = true;
                if self.rng.random_bool(0.5) {
                    self.dongle_connect();
                    self.service_connect();
                } else {
                    self.service_connect();
                    self.dongle_connect();
                }
            }
            Action::SocOutlier(s) => self.dongle.glitch_soc(s),
            Action::OtherAppAcOff => {
                self.dongle
                    .set_hold(AC_CHARGE, HoldValue::Int(0))
                    .expect("ACCharge");
                self.flush_dongle();
                self.ac_wanted = 0;
                self.ac_lost = false;
                self.ac_change_unreported = true;
            }
        }
    }

    fn later(&mut self, after: Duration, a: Action) {
        let at = self.mono() + after;
        let pos = self.actions.partition_point(|(t, _)| *t <= at);
        self.actions.insert(pos, (at, a));
    }

    /// The ordered stop: the write in flight gets its answer or its timeout (the world goes
    /// on meanwhile, no new request goes out), the state is saved, the process ends.
    fn ordered_stop(&mut self) {
        self.stopping = true;
        let limit = self.mono() + self.proto_cfg.write_timeout + SEC;
        // The engine's own wait is bounded by the clock; a core that spins at one instant
        // (which the main loop reports) must not hang the simulator here.
        let mut steps = 0;
        while self.write_pending.is_some() && self.mono() < limit && steps < 10_000 {
            let next = self.next_instant().min(limit);
            self.advance_to(next);
            self.step();
            steps += 1;
        }
        self.feed(Input::Flush);
        self.core = None;
        self.proto = None;
        self.service_gone();
        self.write_pending = None;
        self.stopping = false;
    }

    fn command(&mut self, cmd: Command) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.feed(Input::Command(id, cmd));
    }

    /// Feeds the core one input and carries out its effects, as the engine does; inputs that
    /// arise meanwhile (a write's outcome) wait for the effects before them.
    fn feed(&mut self, input: Input) {
        /// Inputs fed in one go, and effects of one input, beyond which the core runs away.
        const RUNAWAY: u32 = 10_000;
        self.inbox.push_back(input);
        if self.feeding {
            return;
        }
        self.feeding = true;
        let mut inputs = 0u32;
        while let Some(input) = self.inbox.pop_front() {
            inputs += 1;
            if inputs > RUNAWAY {
                self.runaway(format!(
                    "the core and the write protocol answer each other without end (last: {input:?})"
                ));
                break;
            }
            let now = self.now();
            let Some(core) = &mut self.core else {
                self.inbox.clear();
                break;
            };
            let mut queue: VecDeque<Effect> = core.handle(input, now).into();
            let mut effects = 0u32;
            while let Some(e) = queue.pop_front() {
                effects += 1;
                if effects > RUNAWAY {
                    self.runaway(format!(
                        "one input's effects call for more effects without end (last: {e:?})"
                    ));
                    break;
                }
                for more in self.perform(e, now).into_iter().rev() {
                    queue.push_front(more);
                }
            }
            self.observe();
        }
        self.feeding = false;
    }

    /// Stops feeding a core that runs away, as a `progress` violation.
    fn runaway(&mut self, detail: String) {
        self.pending_violation.get_or_insert(Violation {
            invariant: "progress",
            detail,
        });
        self.inbox.clear();
    }

    fn perform(&mut self, e: Effect, now: Now) -> Vec<Effect> {
        match e {
            Effect::Write(w) if !self.stopping => {
                if let Some(p) = &self.write_pending {
                    self.pending_violation.get_or_insert(Violation {
                        invariant: "one-write-in-flight",
                        detail: format!(
                            "{}={} handed out while {}={} is unanswered",
                            w.setting, w.value, p.setting, p.value
                        ),
                    });
                }
                self.write_pending = Some(w.clone());
                self.request(Request::Write {
                    setting: w.setting,
                    value: w.value,
                });
            }
            Effect::Snapshot { settings, fresh } if !self.stopping => {
                self.request(Request::Snapshot { settings, fresh })
            }
            Effect::Refresh if !self.stopping => self.request(Request::Refresh),
            Effect::Write(_) | Effect::Snapshot { .. } | Effect::Refresh => {}
            Effect::Save { state, ticket } => {
                self.disk = Some(encode_state(&state));
                if let Some(ticket) = ticket
                    && let Some(core) = self.core.as_mut()
                {
                    return core.handle(
                        Input::SaveDone {
                            ticket,
                            result: Ok(()),
                        },
                        now,
                    );
                }
            }
            Effect::History(r) => {
                self.log(|| format!("recorded: {:?} {:?}", r.stop_reason, r.detail));
                if matches!(
                    r.stop_reason,
                    Some(StopReason::Missed | StopReason::Skipped | StopReason::ChargeFailed)
                ) {
                    self.occurrence_ids.push(r.id.clone());
                    self.new_records.push(r);
                } else {
                    self.charges += 1;
                    if let Some(v) = self.judge_end(&r) {
                        self.pending_violation.get_or_insert(v);
                    }
                    self.charge_ids.insert(r.id.clone());
                    if r.stop_reason == Some(StopReason::SlotEnd) {
                        self.slot_end_ids.insert(r.id.clone());
                    }
                    if r.restore_failures.iter().any(|f| f.starts_with(AC_CHARGE)) {
                        // The history says AC charging was not put back: from here the
                        // owner's wish is unknown to the service until someone sets it again.
                        self.ac_lost = true;
                    }
                    self.last_charge = Some(r);
                }
            }
            Effect::Notify(events) => {
                let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
                for e in events {
                    if self.outbox_ids.insert(e.id.clone()) {
                        self.outbox.push(e);
                    }
                }
                if let Some(core) = self.core.as_mut() {
                    return core.handle(
                        Input::Notified {
                            ids,
                            result: Ok(()),
                        },
                        now,
                    );
                }
            }
            Effect::Reply(..) => {}
        }
        Vec::new()
    }

    /// Hands a request to the write protocol (carried out once the current effect is done).
    fn request(&mut self, r: Request) {
        let now = self.mono();
        if let Some(p) = &mut self.proto {
            let out = p.request(r, now);
            self.carry_out(out);
        }
    }

    // ---- the rules ---------------------------------------------------------------------------

    /// Notes what the core does after each input: schedules as set, new sessions and records
    /// (to count outcomes per occurrence), and whether what the API shows is what it holds.
    fn observe(&mut self) {
        let wall = self.wall();
        let Some(core) = &self.core else { return };
        if let Some(s) = core.schedule() {
            let same = self.instances.last().is_some_and(|i| {
                i.created_at == s.created_at
                    && i.time == s.time
                    && i.mode == s.mode
                    && i.enabled == s.enabled
                    && i.days == s.days
            });
            if same {
                let i = self.instances.last_mut().expect("instance");
                i.until = i.until.max(wall);
                if i.first.is_none() {
                    i.first = s.next_run;
                }
            } else {
                self.instances.push(Instance {
                    created_at: s.created_at,
                    mode: s.mode,
                    enabled: s.enabled,
                    time: s.time,
                    days: s.days,
                    first: s.next_run,
                    until: wall,
                });
            }
        }
        let instance = self.instances.len().checked_sub(1);
        // An occurrence consumed now, for the schedule as it is now.
        let consumed = core.schedule().and_then(|sched| {
            let last = sched.last_run?;
            let i = instance?;
            (self.consumed.get(&i) != Some(&last)).then_some((i, last))
        });
        // Whether a charge was under way before this input: as the core held it then, not as
        // the last session was last seen (a session that ended is gone from the core, while
        // its last sight may still show it charging).
        let running_before = self.active_before;
        let core_has_active_session = core.session().is_some_and(|s| s.active_target().is_some());
        self.active_before = core_has_active_session;
        let mut fired = None;
        let night = core.night().cloned();
        let night_began = night
            .as_ref()
            .filter(|n| self.last_night != Some(n.occurrence))
            .map(|n| n.occurrence);
        // A run never reaches past the ready-by time (its cutoff, checked as every charge's
        // is, then stops it in time).
        if let Some(n) = &night
            && let Some(s) = core.session().filter(|s| s.cheapest)
            && s.deadline > n.ready_by
        {
            self.pending_violation.get_or_insert(Violation {
                invariant: "cheapest-charges-within-its-window",
                detail: format!(
                    "run {} may charge until {}, after the ready-by time {}",
                    s.id, s.deadline, n.ready_by
                ),
            });
        }
        if let Some(s) = core.session() {
            let new = self.last_session.as_ref().is_none_or(|l| l.id != s.id);
            if new {
                self.ac_change_unreported = false;
                self.start_soc = self.dongle.inverter().reported_soc();
                // A cheapest-hours run is not a firing: its night was, when it began.
                if s.origin == Origin::Schedule
                    && !s.cheapest
                    && let Some(sched) = core.schedule()
                {
                    fired = Some((sched.last_run.unwrap_or(Timestamp::MIN), sched.mode));
                }
            }
            self.last_session = Some(s.clone());
        }
        let st = core.status();
        let charging = core.session().is_some_and(Session::is_charging);
        if st.is_charging() != charging || st.schedule.as_ref() != core.schedule() {
            let detail = format!(
                "the status says charging={} schedule={:?}, the core holds charging={charging} schedule={:?}",
                st.is_charging(),
                st.schedule,
                core.schedule()
            );
            self.pending_violation.get_or_insert(Violation {
                invariant: "api-shows-the-core",
                detail,
            });
        }
        let Some(instance) = instance else {
            self.new_records.clear();
            return;
        };
        if let Some((i, last)) = consumed {
            self.consumed.insert(i, last);
        }
        let recorded = self.new_records.iter().any(|r| {
            consumed.is_some_and(|(_, last)| r.started_at == last) && r.origin == Origin::Schedule
        });
        if let Some((_, last)) = consumed
            && fired.is_none()
            && !recorded
            && running_before
            && core_has_active_session
        {
            self.outcome(instance, last, "joined the running charge");
        }
        if let Some(occurrence) = night_began {
            self.last_night = Some(occurrence);
            self.outcome(instance, occurrence, "began a cheapest-hours night");
        }
        if let Some((occurrence, mode)) = fired {
            self.outcome(instance, occurrence, "started a charge");
            if mode == Mode::Once {
                let n = self.once_fires.entry(instance).or_default();
                *n += 1;
                if *n > 1 {
                    self.pending_violation.get_or_insert(Violation {
                        invariant: "schedule-fires-once-per-occurrence",
                        detail: format!("a once schedule started a charge {n} times"),
                    });
                }
            }
        }
        for r in std::mem::take(&mut self.new_records) {
            if self.last_night == Some(r.started_at) {
                // How a cheapest night that had begun ended (nothing left to charge, or the
                // target not reached by its ready-by time): the same outcome, not another.
                continue;
            }
            if r.stop_reason == Some(StopReason::Missed) {
                self.missed.push((instance, r.started_at, r.ended_at));
            } else {
                self.outcome(instance, r.started_at, "was skipped");
            }
        }
    }

    fn outcome(&mut self, instance: usize, occurrence: Timestamp, what: &str) {
        let n = self.outcomes.entry((instance, occurrence)).or_default();
        *n += 1;
        if *n > 1 {
            let n = *n;
            self.pending_violation.get_or_insert(Violation {
                invariant: "schedule-fires-once-per-occurrence",
                detail: format!("the occurrence at {occurrence} {what}, its outcome number {n}"),
            });
        }
    }

    /// The owner is told of every charge and every occurrence record exactly once: each has
    /// one event that ends it, in the outbox or still in the state file to be handed over at
    /// the next start; none is told twice under different ids.
    fn judge_events(&self) -> Option<Violation> {
        let on_disk: Vec<Event> = self
            .disk
            .as_deref()
            .and_then(|b| decode_state(b).ok())
            .map(|s| s.events)
            .unwrap_or_default();
        let told: Vec<&Event> = self.outbox.iter().chain(on_disk.iter()).collect();
        let ends = [
            EventKind::ChargeComplete,
            EventKind::ChargeStopped,
            EventKind::ChargeFailed,
            EventKind::ChargeSkipped,
            EventKind::ScheduleMissed,
        ];
        // A cheapest-hours run that reached its slots' end is told by how its night ends.
        let mut ids: Vec<&String> = self
            .charge_ids
            .iter()
            .filter(|id| !self.slot_end_ids.contains(*id))
            .collect();
        ids.sort();
        for id in ids.into_iter().chain(self.occurrence_ids.iter()) {
            let mut kinds: Vec<EventKind> = told
                .iter()
                .filter(|e| {
                    ends.contains(&e.kind)
                        && e.id.strip_suffix(e.kind.as_str()) == Some(&format!("{id}-"))
                })
                .map(|e| e.kind)
                .collect();
            kinds.dedup();
            if kinds.len() != 1 {
                return Some(Violation {
                    invariant: "each-outcome-told-once",
                    detail: format!("{id} ended with the events {kinds:?}"),
                });
            }
        }
        None
    }

    /// Every occurrence of a recurring schedule the running service lived past has exactly
    /// one outcome: a charge, a skip or a recorded miss.
    fn judge_occurrences(&self) -> Option<Violation> {
        let settle = SignedDuration::try_from(MISSED_GRACE + SEC).expect("grace");
        for (idx, inst) in self.instances.iter().enumerate() {
            if inst.mode != Mode::Recurring || !inst.enabled {
                continue;
            }
            let Some(mut occ) = inst.first else { continue };
            while occ.checked_add(settle).is_ok_and(|t| t <= inst.until) {
                let charged = self.outcomes.get(&(idx, occ)).copied().unwrap_or(0);
                let missed = self
                    .missed
                    .iter()
                    .filter(|(i, from, to)| *i == idx && *from <= occ && occ <= *to)
                    .count() as u32;
                match charged + missed {
                    1 => {}
                    0 => {
                        return Some(Violation {
                            invariant: "recurring-fires-or-records-each-occurrence",
                            detail: format!(
                                "the occurrence at {} of the schedule set at {} has no charge and no record",
                                occ.to_zoned_datetime(self.tz.clone()),
                                inst.created_at
                            ),
                        });
                    }
                    n => {
                        return Some(Violation {
                            invariant: "schedule-fires-once-per-occurrence",
                            detail: format!("the occurrence at {occ} has {n} outcomes"),
                        });
                    }
                }
                occ = next_occurrence(inst.time, inst.days, occ, &self.tz);
            }
        }
        None
    }

    /// The rules that hold between steps.
    fn check(&mut self) -> Option<Violation> {
        if let Some(v) = self.pending_violation.take() {
            return Some(v);
        }
        let core = self.core.as_ref()?;
        let wall = self.wall();
        if let Some(s) = core.session()
            && matches!(
                s.phase,
                Phase::Preparing | Phase::Starting | Phase::Charging
            )
            && wall > s.deadline + SignedDuration::from_secs(1)
        {
            return Some(Violation {
                invariant: "cutoff-within-1s",
                detail: format!(
                    "still {:?} {} after the safety cutoff at {}",
                    s.phase,
                    wall.duration_since(s.deadline),
                    s.deadline
                ),
            });
        }
        let ac = self.dongle.inverter().hold(AC_CHARGE).cloned();
        let excused = self.ac_change_unreported
            || self.ac_lost
            || self.stray_write
            || self.last_charge.as_ref().is_some_and(ac_failure_recorded);
        let write_on_its_way = self.write_pending.is_some()
            || self.dongle.late_writes() > 0
            || self.wire.iter().any(|m| m.topic.ends_with("/update"));
        if core.session().is_none()
            && !write_on_its_way
            && ac != Some(HoldValue::Int(self.ac_wanted))
            && !excused
            && self.last_charge.is_some()
        {
            return Some(Violation {
                invariant: "ac-charge-as-wanted-after-a-session",
                detail: format!(
                    "no charge runs and ACCharge is {ac:?}, the owner had it at {}; last: {:?}",
                    self.ac_wanted, self.last_charge
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
        if self.charge_ids.contains(&r.id) {
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
            || self.dongle.late_writes() > 0;
        let snapshot = s.snapshot.as_ref()?;
        if excused {
            return None;
        }
        for t in s.touched.iter().filter(|t| *t != AC_CHARGE) {
            let Some(expected) = s.inherited.get(t).or_else(|| snapshot.get(t)) else {
                continue;
            };
            let now = self.dongle.inverter().hold(t).and_then(setting_of);
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
