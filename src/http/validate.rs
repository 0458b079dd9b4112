//! Request-body validation that answers in the shape FastAPI/Pydantic v2 gave the app.
//!
//! The iPhone app reads the 422 `{"detail": [...]}` bodies of the Python backend this service
//! replaces, so the `type`, `loc`, `msg`, `input` and `ctx` of every entry follow Pydantic's
//! lax-mode rules. Bodies are checked by hand over a `serde_json::Value` rather than through
//! `Deserialize`, because serde stops at the first problem while Pydantic reports every field.
//!
//! Everything here is pure: bytes in, a typed request or the full list of problems out. Rules that
//! need the clock (a start time in the past) are applied later and reported with [`value_error`].

use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::domain::schedule::Strategy;
use crate::domain::units::{Days, LocalTime, Mode, TargetSoc};

// An entry of FastAPI's `{"detail": [...]}`. The fields are in alphabetical order: the answer
// was first built as a JSON map, which orders its keys so, and it keeps its bytes.
/// One problem in a request body.
#[derive(Debug, Clone, PartialEq, serde::Serialize, ToSchema)]
#[schema(as = ValidationIssue)]
pub struct FieldError {
    /// Details of the rule, e.g. `{"le": 100}` or `{"pattern": "..."}`; absent when there are
    /// none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object, required = false)]
    pub ctx: Option<Value>,
    /// The offending value (the whole body for a missing field).
    pub input: Value,
    /// Where the problem is: `["body", "target_soc"]`, `["body", "days", 2]`, or
    /// `["body", 17]` (a byte offset) for malformed JSON.
    #[schema(example = json!(["body", "target_soc"]))]
    pub loc: Vec<LocItem>,
    /// A plain sentence.
    #[schema(example = "Input should be less than or equal to 100")]
    pub msg: String,
    /// A short code: `missing`, `int_type`, `int_parsing`, `greater_than_equal`,
    /// `less_than_equal`, `string_type`, `string_pattern_mismatch`, `literal_error`,
    /// `bool_parsing`, `list_type`, `too_short`, `json_invalid`, `value_error`, ...
    #[serde(rename = "type")]
    #[schema(example = "less_than_equal")]
    pub kind: &'static str,
}

/// A field name or a list index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ToSchema)]
#[serde(untagged)]
pub enum LocItem {
    Name(String),
    Index(u64),
}

impl From<&str> for LocItem {
    fn from(name: &str) -> LocItem {
        LocItem::Name(name.to_owned())
    }
}

impl From<usize> for LocItem {
    fn from(i: usize) -> LocItem {
        LocItem::Index(i as u64)
    }
}

impl PartialEq<Value> for LocItem {
    fn eq(&self, other: &Value) -> bool {
        match self {
            LocItem::Name(n) => other.as_str() == Some(n.as_str()),
            LocItem::Index(i) => other.as_u64() == Some(*i),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StartTime {
    /// "HH:MM": every day at this local time.
    Daily(LocalTime),
    /// [ext] ISO-8601 datetime WITH offset ("2026-03-08T02:30:00-08:00", "...Z"): first run at
    /// this instant. (Whether it is in the future is checked later, with the clock.)
    At(jiff::Timestamp),
}

// Also the OpenAPI document's schema of the body: `value_type` gives each field's JSON form.
/// The body of `POST /api/charge/schedule`.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(example = json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring", "enabled": true}))]
pub struct ScheduleRequest {
    /// The SOC to charge to, in percent. Numeric strings (`"85"`) are accepted too.
    #[schema(value_type = u8, minimum = 10, maximum = 100, example = 85)]
    pub target_soc: TargetSoc,
    /// When to start, local time: `"HH:MM"`, 24-hour, two digits each (`00:00`..`23:59`).
    /// Also accepted: an ISO 8601 datetime **with** offset (`"2026-03-08T02:30:00-08:00"`): the
    /// first run is at that instant, and a recurring schedule then repeats at that local time of
    /// day. A datetime without offset is refused (it is ambiguous around DST changes).
    // `[0-9]` rather than `\d`, so that every regex dialect reads the pattern alike.
    #[schema(
        value_type = String,
        pattern = "^(([01][0-9]|2[0-3]):[0-5][0-9]|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?))$",
        example = "02:30"
    )]
    pub start_time: StartTime,
    /// `once` runs at the next occurrence and is then gone; `recurring` repeats.
    #[schema(value_type = crate::http::dto::Mode, required = false, default = "recurring")]
    pub mode: Mode,
    /// A disabled schedule is kept but never runs (`next_run` is `null`); disabling stops a
    /// running charge.
    #[schema(required = false, default = true)]
    pub enabled: bool,
    /// Weekdays a recurring schedule runs on; absent or `null` = every day. At least one day.
    #[schema(value_type = Option<Vec<crate::http::dto::Weekday>>, min_items = 1, example = json!(["mon", "wed", "fri"]))]
    pub days: Option<Days>,
    /// `fixed` (the default) starts at `start_time`; `cheapest` charges in the cheapest slots
    /// between `start_time` and `ready_by` (needs `battery.capacity_kwh` and a `tariff:` in
    /// the config).
    #[schema(value_type = Option<String>, pattern = "^(fixed|cheapest)$", required = false, example = "cheapest")]
    pub strategy: Strategy,
    /// With `cheapest`, required: the local time (`HH:MM`) the target must be reached by, the
    /// next such time after `start_time`. Must differ from `start_time`.
    #[schema(value_type = Option<String>, pattern = "^([01][0-9]|2[0-3]):[0-5][0-9]$", required = false, example = "07:00")]
    pub ready_by: Option<LocalTime>,
}

/// The body of `POST /api/charging/enable`.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(example = json!({"target_soc": 80}))]
pub struct EnableRequest {
    /// The SOC to charge to, in percent.
    #[schema(value_type = u8, minimum = 10, maximum = 100, example = 80)]
    pub target_soc: TargetSoc,
}

/// The optional body of `POST /api/charging/disable` [ext].
#[derive(Debug, Clone, Default, PartialEq, ToSchema)]
#[schema(example = json!({"keep_schedule": true}))]
pub struct DisableRequest {
    /// Keep a recurring schedule (tonight's occurrence is consumed if it was the one
    /// running). Without it the schedule is cancelled, as the app expects.
    #[schema(default = false)]
    pub keep_schedule: bool,
}

/// The body of `POST /api/charge/schedule`. On failure, every problem in the body, in field
/// order (target_soc, start_time, mode, enabled, days).
pub fn parse_schedule_request(body: &[u8]) -> Result<ScheduleRequest, Vec<FieldError>> {
    let body = parse_body(body)?;
    let mut errors = Vec::new();

    let target_soc = required(&body, "target_soc", check_target_soc, &mut errors);
    let start_time = required(&body, "start_time", check_start_time, &mut errors);
    let mode = optional(&body, "mode", check_mode, Mode::Recurring, &mut errors);
    let enabled = optional(&body, "enabled", check_enabled, true, &mut errors);
    let days = match body.get("days").map(check_days) {
        None => Some(None),
        Some(Ok(days)) => Some(days),
        Some(Err(e)) => {
            errors.extend(e);
            None
        }
    };
    let strategy = optional(
        &body,
        "strategy",
        check_strategy,
        Strategy::Fixed,
        &mut errors,
    );
    let ready_by = match body.get("ready_by") {
        None | Some(Value::Null) => Some(None),
        Some(v) => report("ready_by", v, check_hhmm(v), &mut errors).map(Some),
    };
    if strategy == Some(Strategy::Cheapest) {
        match (&ready_by, &start_time) {
            (Some(None), _) => errors.push(missing(field_loc("ready_by"), Value::Object(body.clone()))),
            (Some(Some(r)), Some(StartTime::Daily(t))) if r == t => errors.push(value_error(
                "ready_by",
                json!(r.to_string()),
                "ready_by must differ from start_time: it is the time the target is needed by, after the earliest start",
            )),
            _ => {}
        }
    }

    match (
        target_soc, start_time, mode, enabled, days, strategy, ready_by,
    ) {
        (
            Some(target_soc),
            Some(start_time),
            Some(mode),
            Some(enabled),
            Some(days),
            Some(strategy),
            Some(ready_by),
        ) if errors.is_empty() => Ok(ScheduleRequest {
            target_soc,
            start_time,
            mode,
            enabled,
            days,
            strategy,
            // A fixed start has no deadline to keep.
            ready_by: ready_by.filter(|_| strategy == Strategy::Cheapest),
        }),
        _ => Err(errors),
    }
}

/// The body of `POST /api/charging/enable`.
pub fn parse_enable_request(body: &[u8]) -> Result<EnableRequest, Vec<FieldError>> {
    let body = parse_body(body)?;
    let mut errors = Vec::new();
    match required(&body, "target_soc", check_target_soc, &mut errors) {
        Some(target_soc) => Ok(EnableRequest { target_soc }),
        None => Err(errors),
    }
}

/// Parses the optional body of `POST /api/charging/disable`: none (or `null`) means the app's
/// "stop and cancel the schedule"; `{"keep_schedule": true}` keeps a recurring schedule.
pub fn parse_disable_request(body: &[u8]) -> Result<DisableRequest, Vec<FieldError>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DisableRequest::default());
    }
    let body = match parse_body(body) {
        Ok(b) => b,
        Err(e) if e.iter().all(|f| f.kind == "missing") => return Ok(DisableRequest::default()),
        Err(e) => return Err(e),
    };
    let mut errors = Vec::new();
    match optional(&body, "keep_schedule", check_enabled, false, &mut errors) {
        Some(keep_schedule) => Ok(DisableRequest { keep_schedule }),
        None => Err(errors),
    }
}

/// The body of `POST /api/device/register` and `DELETE /api/device/unregister`.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[schema(example = json!({"device_token": "a1b2c3d4", "preferences": {"ac_charging_notifications": true}}))]
pub struct DeviceRequest {
    /// The APNs device token the app got from iOS, as hex.
    #[schema(example = "a1b2c3d4")]
    pub device_token: String,
    /// Register only: which notifications the phone wants, each `true` unless set `false`
    /// (`ac_charging_notifications` governs this service's). Unknown keys are kept.
    #[schema(value_type = Option<Object>, required = false)]
    pub preferences: Option<Map<String, Value>>,
}

/// The device endpoints' body: `device_token` a string (not coerced, as Pydantic's `str`),
/// `preferences` absent, `null`, or an object of booleans.
pub fn parse_device_request(body: &[u8]) -> Result<DeviceRequest, Vec<FieldError>> {
    let body = parse_body(body)?;
    let mut errors = Vec::new();
    let token = required(&body, "device_token", check_string, &mut errors);
    let preferences = match body.get("preferences") {
        None | Some(Value::Null) => Some(None),
        Some(Value::Object(m)) => {
            let mut out = Map::new();
            for (k, v) in m {
                match check_enabled(v) {
                    Ok(b) => {
                        out.insert(k.clone(), Value::Bool(b));
                    }
                    Err((kind, msg, ctx)) => errors.push(error(
                        kind,
                        vec!["body".into(), "preferences".into(), k.as_str().into()],
                        msg,
                        v,
                        ctx,
                    )),
                }
            }
            Some(Some(out))
        }
        Some(other) => {
            errors.push(error(
                "dict_type",
                field_loc("preferences"),
                "Input should be a valid dictionary",
                other,
                None,
            ));
            None
        }
    };
    match (token, preferences) {
        (Some(device_token), Some(preferences)) if errors.is_empty() => Ok(DeviceRequest {
            device_token,
            preferences,
        }),
        _ => Err(errors),
    }
}

fn check_string(value: &Value) -> Result<String, Problem> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ => Err(problem("string_type", "Input should be a valid string")),
    }
}

/// A single error for a rule that needs the clock (e.g. start_time in the past), same shape.
///
/// Worded as Pydantic words a `ValueError` raised in a validator: `msg` is prefixed with
/// "Value error, " and `ctx.error` carries the bare message.
pub fn value_error(field: &str, input: Value, msg: impl Into<String>) -> FieldError {
    let msg = msg.into();
    FieldError {
        kind: "value_error",
        loc: field_loc(field),
        msg: format!("Value error, {msg}"),
        input,
        ctx: Some(json!({ "error": msg })),
    }
}

const HHMM_PATTERN: &str = "^([01][0-9]|2[0-3]):[0-5][0-9]$";

fn field_loc(field: &str) -> Vec<LocItem> {
    vec!["body".into(), field.into()]
}

fn error(
    kind: &'static str,
    loc: Vec<LocItem>,
    msg: impl Into<String>,
    input: &Value,
    ctx: Option<Value>,
) -> FieldError {
    FieldError {
        kind,
        loc,
        msg: msg.into(),
        input: input.clone(),
        ctx,
    }
}

/// A field-level failure before its location is known: (type, msg, ctx).
type Problem = (&'static str, String, Option<Value>);

fn problem(kind: &'static str, msg: &str) -> Problem {
    (kind, msg.to_owned(), None)
}

fn missing(loc: Vec<LocItem>, input: Value) -> FieldError {
    FieldError {
        kind: "missing",
        loc,
        msg: "Field required".into(),
        input,
        ctx: None,
    }
}

/// Decodes the body and insists on an object, as FastAPI does before any field is looked at.
fn parse_body(body: &[u8]) -> Result<Map<String, Value>, Vec<FieldError>> {
    // FastAPI treats an empty body as no body at all; whitespace alone is still decoded (and
    // fails as JSON).
    if body.is_empty() {
        return Err(vec![missing(vec!["body".into()], Value::Null)]);
    }
    // serde_json's recursion limit (128) stays on: it turns a nesting bomb into a plain syntax
    // error instead of a stack overflow.
    let value: Value = serde_json::from_slice(body).map_err(|e| vec![json_invalid(body, &e)])?;
    match value {
        Value::Object(map) => Ok(map),
        // A literal `null` reaches FastAPI as "no body" too.
        Value::Null => Err(vec![missing(vec!["body".into()], Value::Null)]),
        other => Err(vec![error(
            "model_attributes_type",
            vec!["body".into()],
            "Input should be a valid dictionary or object to extract fields from",
            &other,
            None,
        )]),
    }
}

fn json_invalid(body: &[u8], e: &serde_json::Error) -> FieldError {
    // The ctx carries the reason alone, as Python's `JSONDecodeError.msg` does; the position is
    // already in `loc`.
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    FieldError {
        kind: "json_invalid",
        loc: vec!["body".into(), error_offset(body, e).into()],
        msg: "JSON decode error".into(),
        input: json!({}),
        ctx: Some(json!({ "error": reason })),
    }
}

/// Byte offset of a decode error, which is what the old backend put in `loc`.
///
/// serde_json reports a 1-based line and a column that counts the bytes of that line up to and
/// including the offending one, so the offset is `line start + column - 1` (an offending newline
/// shows as column 0 of the next line, which the same sum handles). At end of input the column
/// points at the last byte instead, while the error is really just past it.
fn error_offset(body: &[u8], e: &serde_json::Error) -> usize {
    if e.classify() == serde_json::error::Category::Eof {
        return body.len();
    }
    let line_start = match e.line() {
        0 | 1 => 0,
        line => body
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .nth(line - 2)
            .map_or(body.len(), |(i, _)| i + 1),
    };
    (line_start + e.column()).saturating_sub(1).min(body.len())
}

/// Looks up and checks a required field; a missing one is reported with the whole body as input.
fn required<T>(
    body: &Map<String, Value>,
    name: &str,
    check: fn(&Value) -> Result<T, Problem>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    let Some(value) = body.get(name) else {
        errors.push(missing(field_loc(name), Value::Object(body.clone())));
        return None;
    };
    report(name, value, check(value), errors)
}

/// Looks up and checks a field that has a default. An explicit `null` is checked like any other
/// value (the fields are not `Optional` in the original model).
fn optional<T>(
    body: &Map<String, Value>,
    name: &str,
    check: fn(&Value) -> Result<T, Problem>,
    default: T,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match body.get(name) {
        None => Some(default),
        Some(value) => report(name, value, check(value), errors),
    }
}

fn report<T>(
    name: &str,
    value: &Value,
    checked: Result<T, Problem>,
    errors: &mut Vec<FieldError>,
) -> Option<T> {
    match checked {
        Ok(v) => Some(v),
        Err((kind, msg, ctx)) => {
            errors.push(error(kind, field_loc(name), msg, value, ctx));
            None
        }
    }
}

fn check_target_soc(value: &Value) -> Result<TargetSoc, Problem> {
    let n = lax_int(value)?;
    match u8::try_from(n).ok().and_then(TargetSoc::new) {
        Some(target) => Ok(target),
        None if n < i64::from(TargetSoc::MIN) => Err((
            "greater_than_equal",
            format!(
                "Input should be greater than or equal to {}",
                TargetSoc::MIN
            ),
            Some(json!({ "ge": TargetSoc::MIN })),
        )),
        None => Err((
            "less_than_equal",
            format!("Input should be less than or equal to {}", TargetSoc::MAX),
            Some(json!({ "le": TargetSoc::MAX })),
        )),
    }
}

/// Pydantic's lax `int`. Values beyond `i64` saturate: the only use is a range check, and a huge
/// number must come out as "too large", never as a crash or a wrapped small value.
fn lax_int(value: &Value) -> Result<i64, Problem> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if n.as_u64().is_some() {
                Ok(i64::MAX)
            } else {
                // JSON integers past u64 also land here as floats; `as` saturates them.
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_finite() && f.fract() != 0.0 {
                    Err(problem(
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                    ))
                } else {
                    Ok(f as i64)
                }
            }
        }
        Value::String(s) => int_from_str(s).ok_or_else(|| {
            problem(
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )
        }),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => {
            Err(problem("int_type", "Input should be a valid integer"))
        }
    }
}

/// Integer strings as Pydantic accepts them: surrounding whitespace, one sign, ASCII digits with
/// single underscores between them, and an optional all-zero fraction ("85.00").
fn int_from_str(s: &str) -> Option<i64> {
    let s = s.trim();
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = match s.split_once('.') {
        Some((int, frac)) if !frac.is_empty() && frac.bytes().all(|b| b == b'0') => int,
        Some(_) => return None,
        None => s,
    };
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        && !digits.starts_with('_')
        && !digits.ends_with('_')
        && !digits.contains("__");
    if !well_formed {
        return None;
    }
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    let significant = digits.trim_start_matches('0');
    // More digits than any i64 holds: saturate rather than fail, as Python ints are unbounded.
    let magnitude = if significant.len() > 18 {
        i64::MAX
    } else {
        significant.parse::<i64>().unwrap_or(0)
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn check_start_time(value: &Value) -> Result<StartTime, Problem> {
    let Value::String(s) = value else {
        return Err(problem("string_type", "Input should be a valid string"));
    };
    if let Some(t) = LocalTime::parse_hhmm(s) {
        return Ok(StartTime::Daily(t));
    }
    // Timestamp parsing demands an offset (or Z), so a bare local datetime, ambiguous around DST
    // changes, is refused along with everything else that is not HH:MM.
    if let Ok(at) = s.parse::<jiff::Timestamp>() {
        return Ok(StartTime::At(at));
    }
    Err((
        "string_pattern_mismatch",
        format!("String should match pattern '{HHMM_PATTERN}'"),
        Some(json!({ "pattern": HHMM_PATTERN })),
    ))
}

fn check_strategy(value: &Value) -> Result<Strategy, Problem> {
    match value.as_str() {
        Some("fixed") => Ok(Strategy::Fixed),
        Some("cheapest") => Ok(Strategy::Cheapest),
        _ => Err((
            "literal_error",
            "Input should be 'fixed' or 'cheapest'".into(),
            Some(json!({ "expected": "'fixed' or 'cheapest'" })),
        )),
    }
}

fn check_hhmm(value: &Value) -> Result<LocalTime, Problem> {
    let Value::String(s) = value else {
        return Err(problem("string_type", "Input should be a valid string"));
    };
    LocalTime::parse_hhmm(s).ok_or_else(|| {
        (
            "string_pattern_mismatch",
            format!("String should match pattern '{HHMM_PATTERN}'"),
            Some(json!({ "pattern": HHMM_PATTERN })),
        )
    })
}

fn check_mode(value: &Value) -> Result<Mode, Problem> {
    match value.as_str() {
        Some("once") => Ok(Mode::Once),
        Some("recurring") => Ok(Mode::Recurring),
        _ => Err((
            "literal_error",
            "Input should be 'once' or 'recurring'".into(),
            Some(json!({ "expected": "'once' or 'recurring'" })),
        )),
    }
}

/// Pydantic's lax `bool`.
fn check_enabled(value: &Value) -> Result<bool, Problem> {
    const TRUE: [&str; 6] = ["true", "yes", "on", "1", "t", "y"];
    const FALSE: [&str; 6] = ["false", "no", "off", "0", "f", "n"];
    let parsing = || {
        problem(
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        )
    };
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => {
            if TRUE.iter().any(|t| t.eq_ignore_ascii_case(s)) {
                Ok(true)
            } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(s)) {
                Ok(false)
            } else {
                Err(parsing())
            }
        }
        // Pydantic also takes 0.0 and 1.0 here, hence the comparison as floats.
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(false),
            Some(1.0) => Ok(true),
            _ => Err(parsing()),
        },
        Value::Null | Value::Array(_) | Value::Object(_) => {
            Err(problem("bool_type", "Input should be a valid boolean"))
        }
    }
}

/// A non-empty list of exact lowercase day names; each bad entry is reported at its own index.
/// `null` stands for "every day".
fn check_days(value: &Value) -> Result<Option<Days>, Vec<FieldError>> {
    let items = match value {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => {
            return Err(vec![error(
                "list_type",
                field_loc("days"),
                "Input should be a valid list",
                value,
                None,
            )]);
        }
    };
    if items.is_empty() {
        return Err(vec![error(
            "too_short",
            field_loc("days"),
            "List should have at least 1 item after validation, not 0",
            value,
            Some(json!({ "field_type": "List", "min_length": 1, "actual_length": 0 })),
        )]);
    }
    let expected = "'mon', 'tue', 'wed', 'thu', 'fri', 'sat' or 'sun'";
    let errors: Vec<FieldError> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| !item.as_str().is_some_and(|s| Days::NAMES.contains(&s)))
        .map(|(i, item)| {
            let mut loc = field_loc("days");
            loc.push(i.into());
            error(
                "literal_error",
                loc,
                format!("Input should be {expected}"),
                item,
                Some(json!({ "expected": expected })),
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    // Every item is a known name and there is at least one, so this is always `Some`.
    Ok(Days::from_names(items.iter().filter_map(Value::as_str)))
}

#[cfg(test)]
mod tests;
