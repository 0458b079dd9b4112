//! Small value types parsed at the edges, so the core never sees an invalid value.

use std::fmt;

/// A battery state of charge as the dongle reports it, 0..=100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Soc(u8);

impl Soc {
    pub fn new(percent: u8) -> Option<Soc> {
        (percent <= 100).then_some(Soc(percent))
    }
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Soc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A charge target, 10..=100 % (the contract's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetSoc(u8);

impl TargetSoc {
    pub const MIN: u8 = 10;
    pub const MAX: u8 = 100;

    pub fn new(percent: u8) -> Option<TargetSoc> {
        (Self::MIN..=Self::MAX)
            .contains(&percent)
            .then_some(TargetSoc(percent))
    }
    pub fn get(self) -> u8 {
        self.0
    }
    /// True once `soc` has reached this target.
    pub fn reached_by(self, soc: Soc) -> bool {
        soc.0 >= self.0
    }
}

impl fmt::Display for TargetSoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// A local time of day with minute precision, written `HH:MM` (24 h, two digits each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    hour: u8,
    minute: u8,
}

impl LocalTime {
    pub const fn new(hour: u8, minute: u8) -> Option<LocalTime> {
        if hour < 24 && minute < 60 {
            Some(LocalTime { hour, minute })
        } else {
            None
        }
    }
    pub fn hour(self) -> u8 {
        self.hour
    }
    pub fn minute(self) -> u8 {
        self.minute
    }

    /// Parses exactly `HH:MM`, `00:00`..=`23:59`.
    pub fn parse_hhmm(s: &str) -> Option<LocalTime> {
        let b = s.as_bytes();
        if b.len() != 5
            || b[2] != b':'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 2 || c.is_ascii_digit())
        {
            return None;
        }
        let hour = (b[0] - b'0') * 10 + (b[1] - b'0');
        let minute = (b[3] - b'0') * 10 + (b[4] - b'0');
        LocalTime::new(hour, minute)
    }

    pub fn to_civil(self) -> jiff::civil::Time {
        jiff::civil::time(self.hour as i8, self.minute as i8, 0, 0)
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

/// A value written to (or read from) one inverter setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    /// Numbers, switches (1/0) and enum indices.
    Int(i64),
    /// A time of day (windows), minute precision.
    Time(LocalTime),
}

impl fmt::Display for SettingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingValue::Int(v) => write!(f, "{v}"),
            SettingValue::Time(t) => write!(f, "{t}"),
        }
    }
}

impl serde::Serialize for LocalTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LocalTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        LocalTime::parse_hhmm(&s).ok_or_else(|| serde::de::Error::custom("expected \"HH:MM\""))
    }
}

impl serde::Serialize for TargetSoc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TargetSoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: u8 = serde::Deserialize::deserialize(d)?;
        TargetSoc::new(v)
            .ok_or_else(|| serde::de::Error::custom(format!("target {v} is outside 10..=100")))
    }
}

impl serde::Serialize for Soc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Soc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: u8 = serde::Deserialize::deserialize(d)?;
        Soc::new(v).ok_or_else(|| serde::de::Error::custom(format!("SOC {v} is outside 0..=100")))
    }
}

/// How a schedule repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Once,
    Recurring,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Once => "once",
            Mode::Recurring => "recurring",
        }
    }
}

/// A non-empty set of weekdays, on the wire as `["mon","tue",...]` in week order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Days(u8);

impl Days {
    pub const NAMES: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Builds a set from day names (`"mon"`..`"sun"`, any case). `None` if a name is unknown
    /// or the list is empty.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Days> {
        let mut bits = 0u8;
        for name in names {
            let i = Self::NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))?;
            bits |= 1 << i;
        }
        (bits != 0).then_some(Days(bits))
    }

    pub fn contains(self, day: jiff::civil::Weekday) -> bool {
        let i = day.to_monday_zero_offset() as u8;
        self.0 & (1 << i) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..7)
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| Self::NAMES[i as usize])
            .collect()
    }
}

impl serde::Serialize for Days {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> serde::Deserialize<'de> for Days {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names: Vec<String> = serde::Deserialize::deserialize(d)?;
        Days::from_names(names.iter().map(String::as_str))
            .ok_or_else(|| serde::de::Error::custom("expected a non-empty list of mon..sun"))
    }
}

/// How times are written in `update`: the vendor's `HH:MM:SS`, or the `HH:MM` an older
/// backend sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
pub enum TimeFormat {
    #[default]
    #[serde(rename = "HH:MM:SS")]
    HhMmSs,
    #[serde(rename = "HH:MM")]
    HhMm,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hhmm_accepts_only_two_digit_24_hour_times() {
        assert_eq!(LocalTime::parse_hhmm("02:30"), LocalTime::new(2, 30));
        assert_eq!(LocalTime::parse_hhmm("00:00"), LocalTime::new(0, 0));
        assert_eq!(LocalTime::parse_hhmm("23:59"), LocalTime::new(23, 59));
        for bad in [
            "24:00", "2:30", "02:60", "02:3", "0230", "02-30", "02:30:00", "", "ab:cd", "+1:30",
        ] {
            assert_eq!(LocalTime::parse_hhmm(bad), None, "{bad:?}");
        }
        assert_eq!(LocalTime::new(7, 5).unwrap().to_string(), "07:05");
    }

    #[test]
    fn targets_are_10_to_100_and_socs_0_to_100() {
        assert!(TargetSoc::new(9).is_none());
        assert!(TargetSoc::new(101).is_none());
        assert!(Soc::new(101).is_none());
        let t = TargetSoc::new(80).unwrap();
        assert!(t.reached_by(Soc::new(80).unwrap()));
        assert!(!t.reached_by(Soc::new(79).unwrap()));
    }

    #[test]
    fn days_parse_in_any_case_and_print_in_week_order() {
        let d = Days::from_names(["sun", "MON", "wed"]).unwrap();
        assert_eq!(d.names(), ["mon", "wed", "sun"]);
        assert!(d.contains(jiff::civil::Weekday::Sunday));
        assert!(!d.contains(jiff::civil::Weekday::Tuesday));
        assert_eq!(Days::from_names(["funday"]), None);
        assert_eq!(Days::from_names([]), None);
    }
}
