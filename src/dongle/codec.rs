//! The dongle's MQTT messages: `(topic, payload)` in, a typed [`Message`] out, and the payloads
//! we publish.
//!
//! Pure and total: any input, however malformed, yields a `Message` or a [`DecodeError`]; nothing
//! here panics, blocks or reads a clock. Firmware generations disagree on envelopes, key case and
//! value types, so parsing is lenient about *shape* (three envelopes, any key case, numbers sent
//! as strings) and strict about *meaning* (an impossible SOC is refused, never shown).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::domain::units::{LocalTime, SettingValue, Soc};

/// Payloads larger than this are rejected without parsing.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Written into every `update` so that other tools watching the broker can tell who wrote.
const WRITER: &str = "solar-backend";

/// Longest piece of untrusted text copied into an error, a rejection note or a logged status, so
/// that one hostile payload cannot flood the log.
const MAX_QUOTED_CHARS: usize = 120;

/// A value as the dongle sends it: JSON number, numeric string ("90", " 1.00"), bool, or text
/// (times "HH:MM" / "HH:MM:SS", firmware codes).
///
/// JSON strings are always kept as [`RawValue::Text`], even when they look numeric, so that a
/// firmware code made of digits survives intact; [`RawValue::as_f64`] does the numeric reading.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Num(f64),
    Text(String),
    Bool(bool),
}

impl RawValue {
    /// The value as a finite number: `Num`, `Text` that parses as a number once trimmed, and
    /// `Bool` as 1/0. NaN and infinities (including the texts "NaN" and "inf") give `None`.
    pub fn as_f64(&self) -> Option<f64> {
        let n = match self {
            RawValue::Num(n) => *n,
            RawValue::Text(s) => s.trim().parse::<f64>().ok()?,
            RawValue::Bool(b) => f64::from(u8::from(*b)),
        };
        n.is_finite().then_some(n)
    }

    /// The value as a time of day `(hour, minute)`: text `"HH:MM"`, `"H:MM"` or `"HH:MM:SS"`
    /// (trimmed), with hour < 24, minute < 60 and second < 60. Seconds are checked, then
    /// dropped: the inverter stores windows at minute precision.
    pub fn as_time(&self) -> Option<(u8, u8)> {
        match self {
            RawValue::Text(s) => parse_time(s.trim()),
            RawValue::Num(_) | RawValue::Bool(_) => None,
        }
    }
}

fn parse_time(s: &str) -> Option<(u8, u8)> {
    let mut parts = s.split(':');
    let hour = digits(parts.next()?, 1..=2)?;
    let minute = digits(parts.next()?, 2..=2)?;
    if let Some(second) = parts.next()
        && digits(second, 2..=2)? >= 60
    {
        return None;
    }
    if parts.next().is_some() {
        return None;
    }
    (hour < 24 && minute < 60).then_some((hour, minute))
}

/// A run of ASCII digits whose length lies in `len` (at most 2, so it fits a `u8`).
fn digits(s: &str, len: RangeInclusive<usize>) -> Option<u8> {
    if !len.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Key -> value, keys matched case-insensitively (stored under their lower-case form).
///
/// This is both one message's content and, through [`Fields::merge`], the per-dongle cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fields(BTreeMap<String, RawValue>);

impl Fields {
    /// The value under `key`, in any case.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.get(&key.to_lowercase())
    }

    /// The value under `key` as a finite number (see [`RawValue::as_f64`]).
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(RawValue::as_f64)
    }

    /// Sets `key` (any case; a key differing only in case is replaced).
    pub fn insert(&mut self, key: &str, value: RawValue) {
        self.0.insert(key.to_lowercase(), value);
    }

    /// Merge: present keys overwrite, absent keys stay (full banks, deltas and snapshots alike).
    pub fn merge(&mut self, other: &Fields) {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in key order; keys are lower-case.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// One decoded inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// inputbank1..6 (firmware < 4.3), input (>= 4.3 delta), snap/input.
    Telemetry(Fields),
    /// holdbank1..6, hold (>= 4.3 delta), snap/hold.
    Settings(Fields),
    /// setting/updated: the confirmed new value(s) after any successful write, normalised to
    /// {setting name: value}. Accepts {"setting":"X","value":V} and a plain {"X": V} map, inside
    /// any envelope.
    SettingUpdated(Fields),
    /// response: the reply to one of our `update` writes.
    WriteResponse {
        setting: Option<String>,
        success: bool,
        status: String,
    },
    /// status heartbeat; `version` like "4.3.0.111S3" when present.
    Status { version: Option<String> },
    /// availability: plain text online/offline (any case, trimmed).
    Availability { online: bool },
    /// firmwarecode/response: {"FWCode":"FAAB"} or [{"FWCode":"FAAB"}].
    FirmwareCode(String),
    /// Topics we publish ourselves (update, snapshot/request, firmwarecode/request) echoed back
    /// by the broker, and unknown sub-topics: nothing to do.
    Ignored,
}

/// Why an inbound message was dropped. `topic` is the sub-topic under the prefix
/// (e.g. `inputbank1`); untrusted text is shortened before it is kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("topic {topic:?} is not under the dongle prefix {prefix:?}")]
    NotOurPrefix { topic: String, prefix: String },
    #[error("{topic}: payload of {size} bytes is over the {limit}-byte limit, dropped unread", limit = MAX_PAYLOAD)]
    TooLarge { topic: String, size: usize },
    #[error("{topic}: payload is not UTF-8 text")]
    NotUtf8 { topic: String },
    #[error("{topic}: payload is not JSON: {reason}")]
    NotJson { topic: String, reason: String },
    #[error("{topic}: expected a JSON object, got {found}")]
    NotAnObject { topic: String, found: &'static str },
    #[error("{topic}: the payload has no {field}")]
    MissingField { topic: String, field: &'static str },
    #[error("availability: expected \"online\" or \"offline\", got {text:?}")]
    BadAvailability { text: String },
}

/// What a sub-topic carries, decided before the payload is looked at.
enum Route {
    Ignore,
    Availability,
    Json(JsonTopic),
}

#[derive(Clone, Copy)]
enum JsonTopic {
    Telemetry,
    Settings,
    SettingUpdated,
    Response,
    Status,
    FirmwareCode,
}

fn route(suffix: &str) -> Route {
    let is_bank = |stem: &str| {
        matches!(
            suffix.strip_prefix(stem),
            Some("1" | "2" | "3" | "4" | "5" | "6")
        )
    };
    match suffix {
        "input" | "snap/input" => Route::Json(JsonTopic::Telemetry),
        "hold" | "snap/hold" => Route::Json(JsonTopic::Settings),
        "setting/updated" => Route::Json(JsonTopic::SettingUpdated),
        "response" => Route::Json(JsonTopic::Response),
        "status" => Route::Json(JsonTopic::Status),
        "firmwarecode/response" => Route::Json(JsonTopic::FirmwareCode),
        "availability" => Route::Availability,
        _ if is_bank("inputbank") => Route::Json(JsonTopic::Telemetry),
        _ if is_bank("holdbank") => Route::Json(JsonTopic::Settings),
        // Includes our own `update`, `snapshot/request` and `firmwarecode/request`.
        _ => Route::Ignore,
    }
}

/// Decodes one inbound message. `topic` is the full topic; it must be `prefix/...` (prefix
/// compared exactly, case-sensitive).
///
/// Ignored topics are not read at all, so an echo of our own publish never produces an error.
pub fn decode(prefix: &str, topic: &str, payload: &[u8]) -> Result<Message, DecodeError> {
    let suffix = topic
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| DecodeError::NotOurPrefix {
            topic: shorten(topic),
            prefix: shorten(prefix),
        })?;
    let route = route(suffix);
    if let Route::Ignore = route {
        return Ok(Message::Ignored);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::TooLarge {
            topic: suffix.to_owned(),
            size: payload.len(),
        });
    }
    let text = std::str::from_utf8(payload).map_err(|_| DecodeError::NotUtf8 {
        topic: suffix.to_owned(),
    })?;
    let which = match route {
        Route::Ignore => return Ok(Message::Ignored),
        Route::Availability => return availability(text),
        Route::Json(which) => which,
    };
    // serde_json's recursion limit turns hostile nesting into an error, not a stack overflow.
    let json: Value = serde_json::from_str(text).map_err(|e| DecodeError::NotJson {
        topic: suffix.to_owned(),
        reason: e.to_string(),
    })?;
    match which {
        JsonTopic::Telemetry => Ok(Message::Telemetry(fields_of(body(suffix, json)?))),
        JsonTopic::Settings => Ok(Message::Settings(fields_of(body(suffix, json)?))),
        JsonTopic::SettingUpdated => setting_updated(suffix, json),
        JsonTopic::Response => write_response(suffix, json),
        JsonTopic::Status => {
            let fields = fields_of(body(suffix, json)?);
            let version = fields.get("version").and_then(nonempty_text);
            Ok(Message::Status { version })
        }
        JsonTopic::FirmwareCode => firmware_code_response(suffix, json),
    }
}

fn availability(text: &str) -> Result<Message, DecodeError> {
    let word = text.trim();
    if word.eq_ignore_ascii_case("online") {
        Ok(Message::Availability { online: true })
    } else if word.eq_ignore_ascii_case("offline") {
        Ok(Message::Availability { online: false })
    } else {
        Err(DecodeError::BadAvailability {
            text: shorten(text),
        })
    }
}

/// The object that carries the data, whichever envelope it came in: the value of an
/// object-valued `payload` key (any case) for the legacy and unified envelopes, else the flat
/// object itself. `Serialnumber`, `event` and `ts` are never required.
fn body(topic: &str, json: Value) -> Result<Map<String, Value>, DecodeError> {
    let mut outer = match json {
        Value::Object(map) => map,
        other => {
            return Err(DecodeError::NotAnObject {
                topic: topic.to_owned(),
                found: json_kind(&other),
            });
        }
    };
    let payload_key = outer
        .iter()
        .find(|(key, value)| key.eq_ignore_ascii_case("payload") && value.is_object())
        .map(|(key, _)| key.clone());
    if let Some(key) = payload_key
        && let Some(Value::Object(inner)) = outer.remove(&key)
    {
        return Ok(inner);
    }
    Ok(outer)
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The scalar entries of `map`; nested objects, arrays and nulls carry nothing we use and are
/// skipped (a null must not erase a cached value either).
fn fields_of(map: Map<String, Value>) -> Fields {
    let mut fields = Fields::default();
    for (key, value) in map {
        let raw = match value {
            Value::Number(n) => n.as_f64().map(RawValue::Num),
            Value::String(s) => Some(RawValue::Text(s)),
            Value::Bool(b) => Some(RawValue::Bool(b)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        };
        if let Some(raw) = raw {
            fields.insert(&key, raw);
        }
    }
    fields
}

fn setting_updated(topic: &str, json: Value) -> Result<Message, DecodeError> {
    let fields = fields_of(body(topic, json)?);
    // A `setting` key means the {"setting": X, "value": V} shape; its other keys (`value`,
    // `from`, ...) are not settings and must not reach the cache.
    if let Some(name) = fields.get("setting") {
        let mut confirmed = Fields::default();
        if let (Some(name), Some(value)) = (nonempty_text(name), fields.get("value")) {
            confirmed.insert(&name, value.clone());
        }
        return Ok(Message::SettingUpdated(confirmed));
    }
    Ok(Message::SettingUpdated(fields))
}

/// A `status` present in the reply decides the outcome (only "success", any case, is one);
/// `"success": true` counts only when there is no `status`, so a reply that says both
/// "failed" and true is taken as the rejection it claims to be.
fn write_response(topic: &str, json: Value) -> Result<Message, DecodeError> {
    let fields = fields_of(body(topic, json)?);
    let setting = fields.get("setting").and_then(nonempty_text);
    let (success, status) = match fields.get("status") {
        Some(raw) => {
            let status = shorten(&plain_text(raw));
            (status.trim().eq_ignore_ascii_case("success"), status)
        }
        None => {
            let success = fields.get("success").is_some_and(is_true);
            (success, if success { "success" } else { "" }.to_owned())
        }
    };
    Ok(Message::WriteResponse {
        setting,
        success,
        status,
    })
}

fn is_true(raw: &RawValue) -> bool {
    match raw {
        RawValue::Bool(b) => *b,
        RawValue::Text(s) => s.trim().eq_ignore_ascii_case("true"),
        RawValue::Num(_) => false,
    }
}

fn firmware_code_response(topic: &str, json: Value) -> Result<Message, DecodeError> {
    // The list form has one element; only the first is looked at.
    let json = match json {
        Value::Array(items) => items.into_iter().next().ok_or(DecodeError::NotAnObject {
            topic: topic.to_owned(),
            found: "an empty array",
        })?,
        other => other,
    };
    firmware_code(&fields_of(body(topic, json)?))
        .map(Message::FirmwareCode)
        .ok_or(DecodeError::MissingField {
            topic: topic.to_owned(),
            field: "FWCode",
        })
}

/// FWCode from hold data, when present.
pub fn firmware_code(fields: &Fields) -> Option<String> {
    fields.get("FWCode").and_then(nonempty_text)
}

/// Trimmed, non-empty text; numbers and booleans are not names.
fn nonempty_text(raw: &RawValue) -> Option<String> {
    match raw {
        RawValue::Text(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

fn plain_text(raw: &RawValue) -> String {
    match raw {
        RawValue::Num(n) => n.to_string(),
        RawValue::Text(s) => s.clone(),
        RawValue::Bool(b) => b.to_string(),
    }
}

/// `raw` as it should appear in a log line: numbers bare, text quoted (so blanks show).
fn logged(raw: &RawValue) -> String {
    match raw {
        RawValue::Text(s) => format!("{:?}", shorten(s)),
        other => plain_text(other),
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// The largest battery power believed, in W (the largest LuxPower/EG4 hybrids move 12-18 kW;
/// several in parallel stay well below this).
pub const MAX_POWER_W: f64 = 50_000.0;
/// The largest battery voltage believed (48 V systems, high-voltage stacks up to ~600 V).
pub const MAX_VBAT: f64 = 1_000.0;

/// Telemetry values the service uses, validated. Out-of-range values (SOC outside 0..=100,
/// negative power, NaN) are dropped and reported in `rejected` (key + value as text) for the
/// caller to log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    pub soc: Option<Soc>,
    /// Positive = charging, negative = discharging.
    pub battery_power_w: Option<f64>,
    pub charge_power_w: Option<f64>,
    pub vbat: Option<f64>,
    /// One `key=value` note per refused value, e.g. `SOC=101` or `SOC="abc"`.
    pub rejected: Vec<String>,
}

/// Reads the values the service uses from `fields` (normally the merged cache, since a >= 4.3
/// delta carries only what changed). A missing key is simply `None`; a present but impossible
/// value is `None` *and* noted in `rejected`.
///
/// battery power = -Pdischarge if Pdischarge > 0 else Pcharge (positive = charging).
pub fn telemetry(fields: &Fields) -> Telemetry {
    let mut rejected = Vec::new();
    // A fractional SOC is rounded only after the range check, so 100.4 is refused, not 100.
    let soc = measure(fields, "SOC", &mut rejected, |v| (0.0..=100.0).contains(&v))
        .and_then(|v| Soc::new(v.round() as u8));
    // A home battery inverter moves tens of kW at most: anything beyond is a broken reading.
    let power = |v: f64| (0.0..=MAX_POWER_W).contains(&v);
    let pcharge = measure(fields, "Pcharge", &mut rejected, power);
    let pdischarge = measure(fields, "Pdischarge", &mut rejected, power);
    let vbat = measure(fields, "Vbat", &mut rejected, |v| {
        (0.0..=MAX_VBAT).contains(&v)
    });
    let battery_power_w = match pdischarge {
        Some(d) if d > 0.0 => Some(-d),
        _ => pcharge,
    };
    Telemetry {
        soc,
        battery_power_w,
        charge_power_w: pcharge,
        vbat,
        rejected,
    }
}

/// A measurement under `key`: finite, numeric (a boolean is not a reading) and `in_range`.
fn measure(
    fields: &Fields,
    key: &str,
    rejected: &mut Vec<String>,
    in_range: impl Fn(f64) -> bool,
) -> Option<f64> {
    let raw = fields.get(key)?;
    let value = match raw {
        RawValue::Bool(_) => None,
        other => other.as_f64().filter(|v| in_range(*v)),
    };
    if value.is_none() {
        rejected.push(format!("{key}={}", logged(raw)));
    }
    value
}

/// Whether a read-back value equals the value written: numerically for numbers ("1.00" == 1),
/// at hour:minute for times ("02:30:00" == 02:30).
pub fn read_back_matches(written: SettingValue, read: &RawValue) -> bool {
    match written {
        // Exact comparison is right here: settings are integers, and "1.00" parses to
        // exactly 1.0.
        SettingValue::Int(n) => read.as_f64() == Some(n as f64),
        SettingValue::Time(t) => read.as_time() == Some((t.hour(), t.minute())),
    }
}

/// Reads a raw value as the kind of value `like` is: what a read-back or a `setting/updated`
/// says a setting now holds.
pub fn setting_value(raw: &RawValue, like: SettingValue) -> Option<SettingValue> {
    match like {
        SettingValue::Int(_) => raw
            .as_f64()
            .filter(|v| v.fract() == 0.0 && v.abs() < 1e15)
            .map(|v| SettingValue::Int(v as i64)),
        SettingValue::Time(_) => raw
            .as_time()
            .and_then(|(h, m)| LocalTime::new(h, m))
            .map(SettingValue::Time),
    }
}

pub use crate::domain::units::TimeFormat;

/// {"setting": "...", "value": 90 | "02:30:00", "from": "solar-backend"}
pub fn encode_update(setting: &str, value: SettingValue, time_format: TimeFormat) -> Vec<u8> {
    let value = match value {
        SettingValue::Int(n) => Value::from(n),
        SettingValue::Time(t) => Value::String(match time_format {
            TimeFormat::HhMmSs => format!("{t}:00"),
            TimeFormat::HhMm => t.to_string(),
        }),
    };
    // Built by hand to keep the documented key order in broker logs; `Value`'s Display escapes
    // the strings and cannot fail.
    format!(
        "{{\"setting\":{},\"value\":{},\"from\":{}}}",
        Value::from(setting),
        value,
        Value::from(WRITER)
    )
    .into_bytes()
}

/// {"what":"all"}
pub fn encode_snapshot_request() -> Vec<u8> {
    br#"{"what":"all"}"#.to_vec()
}

#[cfg(test)]
mod tests;
