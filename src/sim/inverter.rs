//! A pure model of a LuxPower/EG4 hybrid inverter and its battery: holding registers with the
//! validation a real dongle applies to writes, and grid-charge physics. No IO and no clock: the
//! caller passes elapsed time and the inverter's local time of day.
//!
//! Physics invariants:
//! * AC charging happens only while `ACCharge == 1`, the local time is inside an enabled window
//!   and the reported SOC is below `ACChgSOCLimit` (the inverter's own "second stop").
//! * Power is the maximum charge power up to 90 % and tapers linearly to 0 W at 100 %, so the true
//!   SOC approaches 100 asymptotically. The reported SOC is the floor of the true SOC and never
//!   exceeds 99 (LuxPower never reports 100 %).
//! * Integration inside a step is exact (linear, then exponential), so the result does not depend
//!   on how time is sliced, and the SOC limit is met exactly instead of being overshot.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

/// The value of one holding setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldValue {
    Int(i64),
    /// Hour and minute: the inverter stores windows with minute precision.
    Time(u8, u8),
    Text(String),
}

impl HoldValue {
    /// The form used in hold maps (`holdbankN`, `hold`, `snap/hold`): numbers as JSON numbers,
    /// times as `"HH:MM"`.
    pub fn to_json(&self) -> Value {
        match self {
            HoldValue::Int(i) => Value::from(*i),
            HoldValue::Time(h, m) => Value::from(format!("{h:02}:{m:02}")),
            HoldValue::Text(s) => Value::from(s.clone()),
        }
    }

    /// The string form firmware 4.3 sends on `setting/updated` (integers as `"1.00"`).
    pub fn to_update_string(&self) -> String {
        match self {
            HoldValue::Int(i) => format!("{i}.00"),
            HoldValue::Time(h, m) => format!("{h:02}:{m:02}"),
            HoldValue::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Int { min: i64, max: i64 },
    Time,
    ReadOnlyText,
}

/// Every setting the model knows, with its canonical spelling.
const SETTINGS: &[(&str, Kind)] = &[
    ("ACCharge", Kind::Int { min: 0, max: 1 }),
    ("ACChgSOCLimit", Kind::Int { min: 0, max: 100 }),
    ("ACChargeType", Kind::Int { min: 0, max: 2 }),
    ("ubBatChgcontrol", Kind::Int { min: 0, max: 1 }),
    ("ACChgStart", Kind::Time),
    ("ACChgEnd", Kind::Time),
    ("ACChgStart1", Kind::Time),
    ("ACChgEnd1", Kind::Time),
    ("ACChgStart2", Kind::Time),
    ("ACChgEnd2", Kind::Time),
    ("ACChgStartSOC", Kind::Int { min: 0, max: 90 }),
    ("ACChgMode", Kind::Int { min: 0, max: 10 }),
    ("FWCode", Kind::ReadOnlyText),
];

const WINDOWS: [(&str, &str); 3] = [
    ("ACChgStart", "ACChgEnd"),
    ("ACChgStart1", "ACChgEnd1"),
    ("ACChgStart2", "ACChgEnd2"),
];

/// SOC above which charge power tapers linearly to zero at 100 %.
const TAPER_START: f64 = 90.0;

fn lookup(name: &str) -> Option<(&'static str, Kind)> {
    SETTINGS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .copied()
}

/// Resolves a setting name (any case) to its canonical spelling.
pub fn canonical_name(name: &str) -> Option<&'static str> {
    lookup(name).map(|(n, _)| n)
}

fn parse_int(name: &str, value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let n = match value {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i as f64,
            None => n.as_f64().unwrap_or(f64::NAN),
        },
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{name}: '{s}' is not a number"))?,
        Value::Bool(b) => f64::from(u8::from(*b)),
        other => return Err(format!("{name}: expected a number, got {other}")),
    };
    if !n.is_finite() || n.fract() != 0.0 {
        return Err(format!("{name}: {n} is not a whole number"));
    }
    if n < min as f64 || n > max as f64 {
        return Err(format!("{name}: {n} is out of range {min}..={max}"));
    }
    Ok(n as i64)
}

/// Parses `"HH:MM"` or `"HH:MM:SS"`; seconds are validated and dropped.
fn parse_time(name: &str, value: &Value) -> Result<(u8, u8), String> {
    let Value::String(s) = value else {
        return Err(format!("{name}: expected a time \"HH:MM\", got {value}"));
    };
    let parts: Vec<&str> = s.split(':').collect();
    let field = |p: &str, max: u8| -> Option<u8> {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u8>().ok().filter(|v| *v <= max)
    };
    let parsed = match parts.as_slice() {
        [h, m] => field(h, 23).zip(field(m, 59)),
        [h, m, sec] => field(h, 23)
            .zip(field(m, 59))
            .filter(|_| field(sec, 59).is_some()),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{name}: '{s}' is not a valid time \"HH:MM\" or \"HH:MM:SS\""))
}

/// Whether `t` lies in the window `start..end` (minutes since midnight). `start == end` is off;
/// `start > end` spans midnight.
fn in_window(start: u16, end: u16, t: u16) -> bool {
    match start.cmp(&end) {
        std::cmp::Ordering::Equal => false,
        std::cmp::Ordering::Less => start <= t && t < end,
        std::cmp::Ordering::Greater => t >= start || t < end,
    }
}

/// The inverter and its battery.
#[derive(Debug, Clone)]
pub struct Inverter {
    /// True state of charge, 0..=100 %.
    soc: f64,
    capacity_wh: f64,
    max_charge_w: f64,
    /// Drain while not charging (house load the battery covers); 0 keeps SOC still.
    idle_discharge_w: f64,
    /// Instantaneous power at the end of the last step.
    charge_power_w: f64,
    discharge_power_w: f64,
    /// Whether the AC-charge conditions held at the end of the last step.
    charging: bool,
    /// Keyed by canonical name; always holds every setting in `SETTINGS`.
    holds: BTreeMap<&'static str, HoldValue>,
}

impl Inverter {
    /// An inverter with AC charging off, all windows off and the SOC limit at 100.
    pub fn new(initial_soc: f64, capacity_wh: f64, max_charge_w: f64, fw_code: &str) -> Self {
        let mut holds = BTreeMap::new();
        for (name, kind) in SETTINGS {
            let v = match kind {
                Kind::Int { .. } if *name == "ACChgSOCLimit" => HoldValue::Int(100),
                Kind::Int { .. } => HoldValue::Int(0),
                Kind::Time => HoldValue::Time(0, 0),
                Kind::ReadOnlyText => HoldValue::Text(fw_code.to_string()),
            };
            holds.insert(*name, v);
        }
        Inverter {
            soc: clamp_soc(initial_soc),
            capacity_wh: capacity_wh.max(1.0),
            max_charge_w: max_charge_w.max(0.0),
            idle_discharge_w: 0.0,
            charge_power_w: 0.0,
            discharge_power_w: 0.0,
            charging: false,
            holds,
        }
    }

    pub fn soc(&self) -> f64 {
        self.soc
    }

    /// What the BMS reports: the floor of the true SOC, at most 99.
    pub fn reported_soc(&self) -> u8 {
        (self.soc.floor() as u8).min(99)
    }

    pub fn charge_power_w(&self) -> f64 {
        self.charge_power_w
    }

    pub fn discharge_power_w(&self) -> f64 {
        self.discharge_power_w
    }

    pub fn charging(&self) -> bool {
        self.charging
    }

    pub fn set_soc(&mut self, soc: f64) {
        self.soc = clamp_soc(soc);
    }

    pub fn set_max_charge_w(&mut self, w: f64) {
        self.max_charge_w = if w.is_finite() { w.max(0.0) } else { 0.0 };
    }

    pub fn set_idle_discharge_w(&mut self, w: f64) {
        self.idle_discharge_w = if w.is_finite() { w.max(0.0) } else { 0.0 };
    }

    pub fn hold(&self, name: &str) -> Option<&HoldValue> {
        self.holds.get(canonical_name(name)?)
    }

    pub fn holds(&self) -> &BTreeMap<&'static str, HoldValue> {
        &self.holds
    }

    /// Applies a write as received from `update`. Returns the canonical name and the stored
    /// value, or the reason it was rejected (nothing is changed then).
    pub fn write(
        &mut self,
        name: &str,
        value: &Value,
    ) -> Result<(&'static str, HoldValue), String> {
        let (canonical, kind) = lookup(name).ok_or_else(|| format!("unknown setting '{name}'"))?;
        let v = match kind {
            Kind::Int { min, max } => HoldValue::Int(parse_int(canonical, value, min, max)?),
            Kind::Time => {
                let (h, m) = parse_time(canonical, value)?;
                HoldValue::Time(h, m)
            }
            Kind::ReadOnlyText => return Err(format!("{canonical} is read-only")),
        };
        self.holds.insert(canonical, v.clone());
        Ok((canonical, v))
    }

    /// Sets a register directly, as a test or demo setup does; read-only settings may be set.
    pub fn set_hold(&mut self, name: &str, value: HoldValue) -> Result<&'static str, String> {
        let (canonical, kind) = lookup(name).ok_or_else(|| format!("unknown setting '{name}'"))?;
        match (kind, &value) {
            (Kind::Int { min, max }, HoldValue::Int(i)) if (min..=max).contains(i) => {}
            (Kind::Int { min, max }, HoldValue::Int(i)) => {
                return Err(format!("{canonical}: {i} is out of range {min}..={max}"));
            }
            (Kind::Time, HoldValue::Time(h, m)) if *h < 24 && *m < 60 => {}
            (Kind::ReadOnlyText, HoldValue::Text(_)) => {}
            _ => return Err(format!("{canonical}: {value:?} is not a valid value")),
        }
        self.holds.insert(canonical, value);
        Ok(canonical)
    }

    fn int(&self, name: &str) -> i64 {
        match self.holds.get(name) {
            Some(HoldValue::Int(i)) => *i,
            _ => 0,
        }
    }

    fn minutes(&self, name: &str) -> u16 {
        match self.holds.get(name) {
            Some(HoldValue::Time(h, m)) => u16::from(*h) * 60 + u16::from(*m),
            _ => 0,
        }
    }

    /// Whether the local time lies inside any enabled charge window.
    pub fn in_any_window(&self, (hour, minute): (u8, u8)) -> bool {
        let t = u16::from(hour) * 60 + u16::from(minute);
        WINDOWS
            .iter()
            .any(|(s, e)| in_window(self.minutes(s), self.minutes(e), t))
    }

    fn soc_limit(&self) -> i64 {
        self.int("ACChgSOCLimit")
    }

    /// Whether the inverter AC-charges at this moment.
    fn should_charge(&self, local: (u8, u8)) -> bool {
        self.int("ACCharge") == 1
            && self.in_any_window(local)
            && i64::from(self.reported_soc()) < self.soc_limit()
    }

    /// Charge power at the current SOC while charging.
    fn power_at(&self, soc: f64) -> f64 {
        if soc <= TAPER_START {
            self.max_charge_w
        } else {
            self.max_charge_w * ((100.0 - soc) / (100.0 - TAPER_START)).max(0.0)
        }
    }

    /// Advances the model by `dt` at local time `local` (the time at the start of the step,
    /// assumed constant across it). `dt == 0` just re-evaluates the charge conditions.
    pub fn step(&mut self, dt: Duration, local: (u8, u8)) {
        let secs = dt.as_secs_f64();
        if !self.should_charge(local) {
            self.charging = false;
            self.charge_power_w = 0.0;
            let drain = self.idle_discharge_w * secs / 3600.0 / self.capacity_wh * 100.0;
            self.soc = clamp_soc(self.soc - drain);
            self.discharge_power_w = if self.soc > 0.0 {
                self.idle_discharge_w
            } else {
                0.0
            };
            return;
        }
        self.discharge_power_w = 0.0;
        // SOC percentage points per second at full power.
        let rate = self.max_charge_w / self.capacity_wh * 100.0 / 3600.0;
        // The charge stops once the reported SOC reaches the limit, i.e. when the true SOC
        // reaches it (a limit of 100 is never reached: the reported SOC tops out at 99).
        let cap = (self.soc_limit() < 100).then(|| self.soc_limit() as f64);
        let mut remaining = secs;
        let mut reached_cap = false;
        if rate > 0.0 {
            if self.soc < TAPER_START {
                let linear_end = cap.map_or(TAPER_START, |c| c.min(TAPER_START));
                let needed = (linear_end - self.soc) / rate;
                if remaining < needed {
                    self.soc += rate * remaining;
                    remaining = 0.0;
                } else {
                    self.soc = linear_end;
                    remaining -= needed;
                    reached_cap = cap == Some(linear_end);
                }
            }
            if remaining > 0.0 && !reached_cap {
                // In the taper, d(100 - soc)/dt = -(rate / 10) * (100 - soc).
                let k = rate / (100.0 - TAPER_START);
                let gap = 100.0 - self.soc;
                let needed = cap.map(|c| ((gap / (100.0 - c)).ln() / k).max(0.0));
                match (cap, needed) {
                    (Some(c), Some(n)) if remaining >= n => {
                        self.soc = c;
                        reached_cap = true;
                    }
                    _ => self.soc = clamp_soc(100.0 - gap * (-k * remaining).exp()),
                }
            }
        }
        if reached_cap {
            self.charging = false;
            self.charge_power_w = 0.0;
        } else {
            self.charging = true;
            self.charge_power_w = self.power_at(self.soc);
        }
    }

    /// Runs the model for `elapsed` of wall time starting at `from`, with physics time scaled by
    /// `speed`. The charge windows are judged by the wall clock in `tz`, so the run is split at
    /// local minute boundaries: each slice sees one constant local time, which makes the result
    /// exact for the minute-precision windows however long the run.
    pub fn run_for(&mut self, from: Timestamp, elapsed: Duration, speed: f64, tz: &TimeZone) {
        const MINUTE_NS: i128 = 60_000_000_000;
        let speed = if speed.is_finite() {
            speed.max(0.0)
        } else {
            1.0
        };
        let mut at = from.as_nanosecond();
        let end = at.saturating_add(elapsed.as_nanos() as i128);
        loop {
            let next_minute = (at.div_euclid(MINUTE_NS) + 1) * MINUTE_NS;
            let slice_end = next_minute.min(end);
            let wall = Duration::from_nanos((slice_end - at).max(0) as u64);
            let local = Timestamp::from_nanosecond(at)
                .map(|ts| {
                    let dt = tz.to_datetime(ts);
                    (dt.hour() as u8, dt.minute() as u8)
                })
                .unwrap_or((0, 0));
            self.step(wall.mul_f64(speed), local);
            if slice_end >= end {
                break;
            }
            at = slice_end;
        }
    }

    /// The telemetry the dongle publishes (`inputbankN` / `input`).
    pub fn telemetry(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("SOC".into(), Value::from(self.reported_soc()));
        m.insert(
            "Pcharge".into(),
            Value::from(self.charge_power_w.round() as i64),
        );
        m.insert(
            "Pdischarge".into(),
            Value::from(self.discharge_power_w.round() as i64),
        );
        let vbat = ((48.0 + self.soc / 20.0) * 10.0).round() / 10.0;
        m.insert("Vbat".into(), Value::from(vbat));
        m
    }

    /// Every setting in its hold-map form.
    pub fn hold_map(&self) -> Map<String, Value> {
        self.holds
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.to_json()))
            .collect()
    }
}

fn clamp_soc(soc: f64) -> f64 {
    if soc.is_nan() {
        0.0
    } else {
        soc.clamp(0.0, 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: Duration = Duration::from_secs(3600);

    /// 10 kWh battery, 5 kW charger: 50 % per hour below the taper.
    fn inverter(soc: f64) -> Inverter {
        Inverter::new(soc, 10_000.0, 5_000.0, "FAAB")
    }

    fn enable(inv: &mut Inverter, start: (u8, u8), end: (u8, u8), limit: i64) {
        inv.set_hold("ACChgStart", HoldValue::Time(start.0, start.1))
            .unwrap();
        inv.set_hold("ACChgEnd", HoldValue::Time(end.0, end.1))
            .unwrap();
        inv.set_hold("ACChgSOCLimit", HoldValue::Int(limit))
            .unwrap();
        inv.set_hold("ACCharge", HoldValue::Int(1)).unwrap();
    }

    #[test]
    fn charges_at_full_power_when_ac_charge_is_on_inside_the_window_and_below_the_limit() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (2, 0), (5, 0), 80);
        inv.step(Duration::from_secs(360), (2, 30));
        assert!(inv.charging());
        assert_eq!(inv.charge_power_w(), 5_000.0);
        assert!((inv.soc() - 25.0).abs() < 1e-9, "soc {}", inv.soc());
        assert_eq!(inv.telemetry()["Pcharge"], json!(5000));
    }

    #[test]
    fn does_not_charge_with_ac_charge_off() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (2, 0), (5, 0), 80);
        inv.set_hold("ACCharge", HoldValue::Int(0)).unwrap();
        inv.step(HOUR, (2, 30));
        assert!(!inv.charging());
        assert_eq!(inv.soc(), 20.0);
        assert_eq!(inv.charge_power_w(), 0.0);
    }

    #[test]
    fn does_not_charge_outside_the_window_and_the_end_minute_is_exclusive() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (2, 0), (5, 0), 80);
        inv.step(HOUR, (1, 59));
        inv.step(HOUR, (5, 0));
        assert_eq!(inv.soc(), 20.0);
        inv.step(Duration::ZERO, (2, 0));
        assert!(inv.charging(), "the start minute is inside the window");
    }

    #[test]
    fn a_window_with_equal_start_and_end_is_off() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (0, 0), (0, 0), 80);
        inv.step(HOUR, (0, 0));
        assert_eq!(inv.soc(), 20.0);
    }

    #[test]
    fn a_window_whose_start_is_after_its_end_spans_midnight() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (23, 0), (1, 0), 80);
        for (t, inside) in [
            ((23, 30), true),
            ((0, 30), true),
            ((1, 0), false),
            ((22, 59), false),
        ] {
            inv.step(Duration::ZERO, t);
            assert_eq!(inv.charging(), inside, "at {t:?}");
        }
    }

    #[test]
    fn the_second_and_third_windows_also_enable_charging() {
        let mut inv = inverter(20.0);
        inv.set_hold("ACCharge", HoldValue::Int(1)).unwrap();
        inv.set_hold("ACChgStart2", HoldValue::Time(13, 0)).unwrap();
        inv.set_hold("ACChgEnd2", HoldValue::Time(14, 0)).unwrap();
        inv.step(Duration::ZERO, (13, 15));
        assert!(inv.charging());
        inv.step(Duration::ZERO, (12, 15));
        assert!(!inv.charging());
    }

    #[test]
    fn stops_exactly_at_the_soc_limit_even_over_a_long_step() {
        let mut inv = inverter(20.0);
        enable(&mut inv, (0, 0), (23, 59), 80);
        inv.step(HOUR * 5, (1, 0));
        assert_eq!(inv.soc(), 80.0);
        assert_eq!(inv.reported_soc(), 80);
        assert!(!inv.charging());
        assert_eq!(inv.charge_power_w(), 0.0);
        inv.step(HOUR, (2, 0));
        assert_eq!(inv.soc(), 80.0, "at the limit it no longer charges");
    }

    #[test]
    fn a_limit_inside_the_taper_is_also_met_exactly() {
        let mut inv = inverter(85.0);
        enable(&mut inv, (0, 0), (23, 59), 95);
        inv.step(HOUR * 10, (1, 0));
        assert_eq!(inv.soc(), 95.0);
        assert!(!inv.charging());
    }

    #[test]
    fn power_tapers_above_90_percent_and_reported_soc_never_reaches_100() {
        let mut inv = inverter(90.0);
        enable(&mut inv, (0, 0), (23, 59), 100);
        inv.step(Duration::ZERO, (1, 0));
        assert_eq!(inv.charge_power_w(), 5_000.0);
        inv.step(Duration::from_secs(60), (1, 0));
        let early = inv.charge_power_w();
        assert!(early < 5_000.0 && early > 4_000.0, "power {early}");
        for _ in 0..48 {
            inv.step(HOUR, (1, 0));
            assert!(inv.reported_soc() <= 99);
        }
        assert_eq!(inv.reported_soc(), 99);
        assert!(inv.charging(), "a limit of 100 is never reached");
        assert!(inv.charge_power_w() < 1.0, "power {}", inv.charge_power_w());
        assert_eq!(inv.telemetry()["SOC"], json!(99));
    }

    #[test]
    fn slicing_time_differently_gives_the_same_soc() {
        let mut once = inverter(50.0);
        enable(&mut once, (0, 0), (23, 59), 100);
        let mut sliced = once.clone();
        once.step(HOUR * 2, (1, 0));
        for _ in 0..7200 {
            sliced.step(Duration::from_secs(1), (1, 0));
        }
        assert!((once.soc() - sliced.soc()).abs() < 1e-6);
        assert!(once.soc() > 95.0 && once.soc() < 100.0);
    }

    #[test]
    fn idle_discharge_drains_only_when_configured_and_not_charging() {
        let mut inv = inverter(50.0);
        inv.step(HOUR, (12, 0));
        assert_eq!(inv.soc(), 50.0);
        assert_eq!(inv.discharge_power_w(), 0.0);
        inv.set_idle_discharge_w(1_000.0);
        inv.step(HOUR, (12, 0));
        assert!((inv.soc() - 40.0).abs() < 1e-9);
        assert_eq!(inv.telemetry()["Pdischarge"], json!(1000));
    }

    #[test]
    fn speed_multiplies_physics_time_while_windows_follow_the_wall_clock() {
        let tz = TimeZone::get("Europe/London").unwrap();
        // 02:00 local in winter (UTC+0).
        let from: Timestamp = "2026-01-10T02:00:00Z".parse().unwrap();
        let mut normal = inverter(20.0);
        enable(&mut normal, (2, 0), (2, 10), 100);
        let mut fast = normal.clone();
        normal.run_for(from, Duration::from_secs(60), 1.0, &tz);
        fast.run_for(from, Duration::from_secs(60), 60.0, &tz);
        // One wall minute: 5 kW for a minute vs for an hour on 10 kWh.
        assert!((normal.soc() - (20.0 + 50.0 / 60.0)).abs() < 1e-9);
        assert!((fast.soc() - 70.0).abs() < 1e-9);
        // The window closes at 02:10 wall time regardless of speed.
        let mut fast_long = inverter(20.0);
        enable(&mut fast_long, (2, 0), (2, 10), 100);
        fast_long.run_for(from, Duration::from_secs(3600), 0.1, &tz);
        let expected = 20.0 + 50.0 * (600.0 * 0.1) / 3600.0;
        assert!((fast_long.soc() - expected).abs() < 1e-9);
    }

    #[test]
    fn run_for_uses_local_time_in_the_given_zone() {
        let tz = TimeZone::get("America/New_York").unwrap();
        // 07:00 UTC = 02:00 in New York in winter.
        let from: Timestamp = "2026-01-10T07:00:00Z".parse().unwrap();
        let mut inv = inverter(20.0);
        enable(&mut inv, (2, 0), (3, 0), 100);
        inv.run_for(from, Duration::from_secs(1800), 1.0, &tz);
        assert!((inv.soc() - 45.0).abs() < 1e-9, "soc {}", inv.soc());
    }

    #[test]
    fn writes_accept_numbers_numeric_strings_and_times_with_or_without_seconds() {
        let mut inv = inverter(50.0);
        assert_eq!(
            inv.write("acchgsoclimit", &json!(90)).unwrap(),
            ("ACChgSOCLimit", HoldValue::Int(90))
        );
        assert_eq!(
            inv.write("ACCharge", &json!("1.00")).unwrap().1,
            HoldValue::Int(1)
        );
        assert_eq!(
            inv.write("ACChgStart", &json!("02:30:00")).unwrap().1,
            HoldValue::Time(2, 30)
        );
        assert_eq!(
            inv.write("ACChgEnd", &json!("05:45")).unwrap().1,
            HoldValue::Time(5, 45)
        );
        assert_eq!(inv.hold("acchgend"), Some(&HoldValue::Time(5, 45)));
        assert_eq!(inv.hold_map()["ACChgStart"], json!("02:30"));
    }

    #[test]
    fn writes_to_unknown_settings_are_rejected_with_a_reason() {
        let mut inv = inverter(50.0);
        let err = inv.write("ACChargeMagic", &json!(1)).unwrap_err();
        assert!(err.contains("unknown setting"), "{err}");
    }

    #[test]
    fn out_of_range_or_malformed_values_are_rejected_and_change_nothing() {
        let mut inv = inverter(50.0);
        let before = inv.hold_map();
        for (name, value) in [
            ("ACChgSOCLimit", json!(101)),
            ("ACCharge", json!(2)),
            ("ACChargeType", json!(3)),
            ("ACChgStartSOC", json!(91)),
            ("ACChgMode", json!(11)),
            ("ACCharge", json!(0.5)),
            ("ACChgSOCLimit", json!("ninety")),
            ("ACChgStart", json!("24:00")),
            ("ACChgStart", json!("2:30")),
            ("ACChgStart", json!(230)),
            ("ACChgEnd", json!("05:60:00")),
            ("FWCode", json!("XXXX")),
        ] {
            assert!(inv.write(name, &value).is_err(), "{name} = {value}");
        }
        assert_eq!(inv.hold_map(), before);
        assert!(
            inv.write("FWCode", &json!("X"))
                .unwrap_err()
                .contains("read-only")
        );
    }

    #[test]
    fn legacy_charge_mode_accepts_the_old_backend_value() {
        let mut inv = inverter(50.0);
        assert!(inv.write("ACChgMode", &json!(4)).is_ok());
    }

    #[test]
    fn setting_updated_strings_use_two_decimals_for_integers() {
        assert_eq!(HoldValue::Int(1).to_update_string(), "1.00");
        assert_eq!(HoldValue::Time(2, 5).to_update_string(), "02:05");
    }
}
