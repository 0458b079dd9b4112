//! The HTTP contract the iPhone app is built against, checked on the running service: the exact
//! keys and JSON types of every answer, the datetime formats, FastAPI's error shapes, the
//! optional API key, CORS, and that nothing a client sends can make the service answer 5xx.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use solar_charging_backend::sim::dongle::Fault;
use solar_charging_backend::store::{STATE_FILE, State};

use crate::harness::{Setup, World, ac_on};

const MIN: Duration = Duration::from_secs(60);
const SCHEDULE: &str = "/api/charge/schedule";
const ENABLE: &str = "/api/charging/enable";
const DISABLE: &str = "/api/charging/disable";
/// The body limit the contract promises to enforce with 413.
const MAX_BODY: usize = 64 * 1024;

/// A JSON type as the app decodes it.
#[derive(Debug, Clone, Copy)]
enum J {
    Str,
    Int,
    Float,
    Bool,
    Obj,
    Arr,
    /// A string or `null`.
    OptStr,
    /// An integer or `null`.
    OptInt,
    /// A float or `null`.
    OptFloat,
    /// An object or `null`.
    OptObj,
}

impl J {
    fn matches(self, v: &Value) -> bool {
        match self {
            J::Str => v.is_string(),
            // Non-negative integers: every integer in the contract is a SOC.
            J::Int => v.is_u64(),
            J::Float => v.is_f64(),
            J::Bool => v.is_boolean(),
            J::Obj => v.is_object(),
            J::Arr => v.is_array(),
            J::OptStr => v.is_null() || v.is_string(),
            J::OptInt => v.is_null() || v.is_u64(),
            J::OptFloat => v.is_null() || v.is_f64(),
            J::OptObj => v.is_null() || v.is_object(),
        }
    }
}

/// Asserts that `v` is an object with exactly these keys, each of its type.
#[track_caller]
fn assert_shape(what: &str, v: &Value, spec: &[(&str, J)]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = spec.iter().map(|(k, _)| *k).collect();
    assert_eq!(got, want, "{what}: keys of {v}");
    for (key, kind) in spec {
        assert!(
            kind.matches(&obj[*key]),
            "{what}: {key} should be {kind:?}, is {}",
            obj[*key]
        );
    }
}

const SCHEDULE_SHAPE: [(&str, J); 7] = [
    ("target_soc", J::Int),
    ("start_time", J::Str),
    ("mode", J::Str),
    ("enabled", J::Bool),
    ("next_run", J::OptStr),
    ("is_charging", J::Bool),
    ("current_soc", J::OptInt),
];

const CHARGE_STATUS_SHAPE: [(&str, J); 8] = [
    ("is_charging", J::Bool),
    ("current_soc", J::OptInt),
    ("target_soc", J::OptInt),
    ("charging_power", J::OptFloat),
    ("scheduled_next", J::OptStr),
    // When the last telemetry arrived: null before any.
    ("last_updated", J::OptStr),
    // [ext]
    ("dongle_online", J::Bool),
    ("dongle_last_seen", J::OptStr),
];

const CHARGING_STATUS_SHAPE: [(&str, J); 14] = [
    ("is_enabled", J::Bool),
    ("is_charging", J::Bool),
    ("current_soc", J::OptInt),
    ("target_soc", J::OptInt),
    ("charging_power", J::OptFloat),
    ("battery_power", J::OptFloat),
    ("mode", J::OptStr),
    ("scheduled_start", J::OptStr),
    ("scheduled_next", J::OptStr),
    ("charge_started_at", J::OptStr),
    ("last_updated", J::OptStr),
    ("mqtt_connected", J::Bool),
    // [ext]
    ("dongle_online", J::Bool),
    ("dongle_last_seen", J::OptStr),
];

const ENABLE_SHAPE: [(&str, J); 5] = [
    ("success", J::Bool),
    ("message", J::Str),
    ("target_soc", J::Int),
    ("current_soc", J::OptInt),
    ("is_charging", J::Bool),
];

const DISABLE_SHAPE: [(&str, J); 3] = [
    ("success", J::Bool),
    ("message", J::Str),
    ("stopped_at", J::Str),
];

/// Whether `s` has the shape of `template`, where `9` stands for any ASCII digit.
fn looks_like(s: &str, template: &str) -> bool {
    s.len() == template.len()
        && s.bytes().zip(template.bytes()).all(|(c, t)| match t {
            b'9' => c.is_ascii_digit(),
            _ => c == t,
        })
}

/// A scheduled instant: naive local time, whole seconds.
#[track_caller]
fn assert_scheduled_stamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(
        looks_like(s, "9999-99-99T99:99:99"),
        "{s:?} is not YYYY-MM-DDTHH:MM:SS"
    );
}

/// A "now"-type stamp: naive local time with six-digit microseconds.
#[track_caller]
fn assert_now_stamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    assert!(
        looks_like(s, "9999-99-99T99:99:99.999999"),
        "{s:?} is not YYYY-MM-DDTHH:MM:SS.ffffff"
    );
}

/// An answer as it came off the wire.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Any request, with raw headers and body bytes.
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, HeaderValue)],
    body: Option<Vec<u8>>,
) -> Result<Answer, reqwest::Error> {
    let mut req = client.request(method, format!("{base}{path}"));
    for (name, value) in headers {
        req = req.header(*name, value.clone());
    }
    if let Some(body) = body {
        req = req.body(body);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

async fn request(
    w: &World,
    method: Method,
    path: &str,
    headers: &[(&str, HeaderValue)],
    body: Option<Vec<u8>>,
) -> Answer {
    call(&w.http, &w.base, method, path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{path}: no answer: {e}"))
}

fn json_type() -> (&'static str, HeaderValue) {
    ("content-type", HeaderValue::from_static("application/json"))
}

/// POSTs raw bytes as JSON.
async fn post_bytes(w: &World, path: &str, body: &[u8]) -> Answer {
    request(w, Method::POST, path, &[json_type()], Some(body.to_vec())).await
}

/// The state file as the service left it on disk.
fn saved_state(w: &World) -> State {
    let bytes = std::fs::read(w.data_path(STATE_FILE)).expect("state.json exists");
    serde_json::from_slice(&bytes).expect("state.json parses")
}

/// The local wall-clock "now" of the world, as a now-type stamp.
fn now_stamp(w: &World) -> String {
    solar_charging_backend::http::dto::now_stamp(w.clock.clock().now(), &crate::harness::tz())
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: success shapes and datetimes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_endpoint_answers_an_idle_service_with_exactly_the_contracts_keys_and_types() {
    let w = World::start(Setup {
        // Sub-second wall time, to see that microseconds are real and not padded zeros.
        wall: "2026-01-15T09:00:00.123456789Z".parse().unwrap(),
        ..Setup::default()
    })
    .await;

    let (code, health) = w.get("/api/health").await;
    assert_eq!(code, 200);
    assert_shape(
        "health",
        &health,
        &[
            ("status", J::Str),
            ("mqtt_connected", J::Bool),
            ("version", J::Str),
            ("uptime_seconds", J::Float),
            ("dongle_online", J::Bool),
            ("dongle_last_seen", J::OptStr),
        ],
    );
    assert_eq!(health["dongle_online"], true);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt_connected"], true);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_seconds"].as_f64().unwrap() >= 0.0);

    let none = request(&w, Method::GET, SCHEDULE, &[], None).await;
    assert_eq!(none.status, 200);
    assert_eq!(none.body, b"null", "no schedule is the JSON literal null");
    assert!(
        none.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "null is still sent as JSON"
    );

    let (code, status) = w.get("/api/charge/status").await;
    assert_eq!(code, 200);
    assert_shape("charge status", &status, &CHARGE_STATUS_SHAPE);
    assert_eq!(status["is_charging"], false);
    assert_eq!(status["current_soc"], 50);
    assert_eq!(status["target_soc"], Value::Null);
    assert_eq!(status["charging_power"], Value::Null);
    assert_eq!(status["scheduled_next"], Value::Null);
    // The last report from the dongle, at the wall clock's 01:00:00.123456 local.
    assert_eq!(status["last_updated"], "2026-01-15T01:00:00.123456");

    let (code, charging) = w.get("/api/charging/status").await;
    assert_eq!(code, 200);
    assert_shape("charging status", &charging, &CHARGING_STATUS_SHAPE);
    assert_eq!(charging["is_enabled"], false);
    assert_eq!(charging["is_charging"], false);
    assert_eq!(charging["mode"], Value::Null);
    assert_eq!(charging["charge_started_at"], Value::Null);
    assert_eq!(charging["mqtt_connected"], true);
    assert_now_stamp(&charging["last_updated"]);

    let (code, history) = w.get("/api/charge/history").await;
    assert_eq!(code, 200);
    assert_eq!(history, json!([]));

    let (code, deleted) = w.delete(SCHEDULE).await;
    assert_eq!(code, 200);
    assert_eq!(
        deleted,
        json!({"success": true, "message": "Schedule cancelled"})
    );

    let (code, disabled) = w.post(DISABLE, json!({})).await;
    assert_eq!(code, 200);
    assert_shape("disable", &disabled, &DISABLE_SHAPE);
    assert_eq!(disabled["success"], true);
    assert_eq!(disabled["stopped_at"], "2026-01-15T01:00:00.123456");

    let (code, root) = w.get("/").await;
    assert_eq!(code, 200);
    assert_shape(
        "overview",
        &root,
        &[
            ("name", J::Str),
            ("version", J::Str),
            ("status", J::Str),
            ("mqtt_connected", J::Bool),
            ("charging", J::Obj),
            ("schedule", J::OptObj),
            ("docs", J::Str),
            ("api_endpoints", J::Obj),
        ],
    );
    assert_eq!(root["status"], "running");
    assert_eq!(root["schedule"], Value::Null);
    assert_shape(
        "overview.charging",
        &root["charging"],
        &[
            ("is_charging", J::Bool),
            ("current_soc", J::OptInt),
            ("started_at", J::OptStr),
        ],
    );
    assert!(
        root["api_endpoints"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string)
    );

    let page = request(
        &w,
        Method::GET,
        "/",
        &[(
            "accept",
            HeaderValue::from_static("text/html,application/xhtml+xml,*/*;q=0.8"),
        )],
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "a browser gets HTML: {:?}",
        page.header("content-type")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
}

#[tokio::test]
async fn a_posted_schedule_is_echoed_and_shown_by_every_status_endpoint() {
    let w = World::start(Setup::default()).await;
    let (code, posted) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring", "enabled": true}),
        )
        .await;
    assert_eq!(code, 200, "{posted}");
    assert_shape("schedule", &posted, &SCHEDULE_SHAPE);
    assert_eq!(
        posted,
        json!({"target_soc": 85, "start_time": "02:30", "mode": "recurring", "enabled": true,
               "next_run": "2026-01-15T02:30:00", "is_charging": false, "current_soc": 50})
    );
    assert_scheduled_stamp(&posted["next_run"]);

    let (code, got) = w.get(SCHEDULE).await;
    assert_eq!(code, 200);
    assert_eq!(got, posted, "GET shows what POST answered");

    let (_, status) = w.get("/api/charge/status").await;
    assert_shape("charge status", &status, &CHARGE_STATUS_SHAPE);
    assert_eq!(status["target_soc"], 85);
    assert_eq!(status["scheduled_next"], "2026-01-15T02:30:00");

    let (_, charging) = w.get("/api/charging/status").await;
    assert_shape("charging status", &charging, &CHARGING_STATUS_SHAPE);
    assert_eq!(charging["is_enabled"], true);
    assert_eq!(charging["mode"], "recurring");
    assert_eq!(charging["target_soc"], 85);
    assert_eq!(charging["scheduled_next"], "2026-01-15T02:30:00");

    let (_, root) = w.get("/").await;
    assert_eq!(root["schedule"], posted);

    // Defaults: recurring and enabled; a time already past today is tomorrow.
    let (code, minimal) = w
        .post(SCHEDULE, json!({"target_soc": 10, "start_time": "00:59"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(minimal["mode"], "recurring");
    assert_eq!(minimal["enabled"], true);
    assert_eq!(minimal["next_run"], "2026-01-16T00:59:00");

    // Disabled: no next run anywhere.
    let (code, off) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 100, "start_time": "23:59", "mode": "once", "enabled": false}),
        )
        .await;
    assert_eq!(code, 200);
    assert_shape("disabled schedule", &off, &SCHEDULE_SHAPE);
    assert_eq!(off["next_run"], Value::Null);
    let (_, charging) = w.get("/api/charging/status").await;
    assert_eq!(charging["is_enabled"], false);
    assert_eq!(charging["scheduled_next"], Value::Null);
}

#[tokio::test]
async fn a_charge_started_through_the_api_is_shown_with_microsecond_stamps_and_stopped_cleanly() {
    let w = World::start(Setup {
        wall: "2026-01-15T09:00:00.250000Z".parse().unwrap(),
        ..Setup::default()
    })
    .await;
    let before = w.hold("ACCharge");

    let (code, enabled) = w.post(ENABLE, json!({"target_soc": 80})).await;
    assert_eq!(code, 200);
    assert_shape("enable", &enabled, &ENABLE_SHAPE);
    assert_eq!(enabled["success"], true, "{enabled}");
    assert_eq!(enabled["message"], "Charging enabled to 80%");
    assert_eq!(enabled["target_soc"], 80);
    assert_eq!(enabled["current_soc"], 50);
    assert_eq!(enabled["is_charging"], true);
    assert!(ac_on(&w.sim.state().borrow()), "the inverter charges");
    let started = now_stamp(&w);

    let (_, once) = w.get(SCHEDULE).await;
    assert_shape("schedule while charging", &once, &SCHEDULE_SHAPE);
    assert_eq!(
        once["mode"], "once",
        "charging now leaves a one-shot schedule"
    );
    assert_eq!(once["target_soc"], 80);
    assert_eq!(once["start_time"], "01:00");
    assert_eq!(once["is_charging"], true);
    assert_eq!(once["next_run"], Value::Null, "its occurrence is consumed");

    // A report from the dongle brings the battery's power.
    w.tick(MIN).await;
    let (_, charging) = w.get("/api/charging/status").await;
    assert_shape("charging status", &charging, &CHARGING_STATUS_SHAPE);
    assert_eq!(charging["is_enabled"], true);
    assert_eq!(charging["is_charging"], true);
    assert_eq!(charging["mode"], "once");
    assert_eq!(charging["target_soc"], 80);
    assert_eq!(charging["scheduled_next"], Value::Null);
    assert_eq!(charging["charge_started_at"], started.as_str());
    assert_eq!(charging["charge_started_at"], "2026-01-15T01:00:00.250000");
    assert_eq!(charging["last_updated"], "2026-01-15T01:01:00.250000");
    let power = charging["charging_power"]
        .as_f64()
        .expect("a power while charging");
    assert!(power > 0.0, "charging power {power}");
    assert_eq!(charging["battery_power"], charging["charging_power"]);

    let (_, status) = w.get("/api/charge/status").await;
    assert_shape("charge status", &status, &CHARGE_STATUS_SHAPE);
    assert_eq!(status["is_charging"], true);
    assert_eq!(status["target_soc"], 80);
    assert!(status["charging_power"].as_f64().unwrap() > 0.0);

    let (_, root) = w.get("/").await;
    assert_eq!(root["charging"]["is_charging"], true);
    assert_eq!(root["charging"]["started_at"], started.as_str());

    w.tick(MIN).await;
    let (code, disabled) = w.post(DISABLE, json!({})).await;
    assert_eq!(code, 200);
    assert_shape("disable", &disabled, &DISABLE_SHAPE);
    assert_eq!(disabled["success"], true, "{disabled}");
    assert_eq!(disabled["message"], "Charging disabled");
    assert_eq!(disabled["stopped_at"], "2026-01-15T01:02:00.250000");
    assert_eq!(
        w.hold("ACCharge"),
        before,
        "AC charging is back to what it was"
    );
    let st = w.wait_status(|s| s.session.is_none()).await;
    assert!(st.schedule.is_none(), "disable cancels the schedule");
    let (_, charging) = w.get("/api/charging/status").await;
    assert_eq!(charging["is_charging"], false);
    assert_eq!(charging["charging_power"], Value::Null);
    assert_eq!(charging["charge_started_at"], Value::Null);

    let (_, history) = w.get("/api/charge/history").await;
    let entries = history.as_array().expect("history is a list");
    assert_eq!(entries.len(), 1);
    assert_shape(
        "history entry",
        &entries[0],
        &[
            ("started_at", J::Str),
            ("ended_at", J::Str),
            ("origin", J::Str),
            ("target_soc", J::Int),
            ("start_soc", J::OptInt),
            ("end_soc", J::OptInt),
            ("stop_reason", J::OptStr),
            ("detail", J::OptStr),
            ("energy_wh", J::OptFloat),
        ],
    );
    assert_eq!(entries[0]["origin"], "charge_now");
    assert_eq!(entries[0]["started_at"], started.as_str());
    assert_now_stamp(&entries[0]["ended_at"]);
}

// ---------------------------------------------------------------------------------------------
// 3: validation errors
// ---------------------------------------------------------------------------------------------

/// Asserts a 422 in FastAPI's shape and returns `(type, loc)` of each entry.
#[track_caller]
fn validation_entries(a: &Answer, what: &str) -> Vec<(String, Value)> {
    assert_eq!(
        a.status,
        422,
        "{what}: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    let body = a.json();
    let obj = body.as_object().expect("an object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["detail"], "{what}: {body}");
    let detail = body["detail"].as_array().expect("detail is a list");
    assert!(!detail.is_empty(), "{what}: an empty detail");
    detail
        .iter()
        .map(|e| {
            let keys: BTreeSet<&str> = e
                .as_object()
                .expect("entry is an object")
                .keys()
                .map(String::as_str)
                .collect();
            let base: BTreeSet<&str> = ["type", "loc", "msg", "input"].into();
            let with_ctx: BTreeSet<&str> = ["type", "loc", "msg", "input", "ctx"].into();
            assert!(keys == base || keys == with_ctx, "{what}: entry keys {e}");
            assert!(
                e["msg"].as_str().is_some_and(|m| !m.is_empty()),
                "{what}: {e}"
            );
            let loc = e["loc"].as_array().expect("loc is a list");
            assert_eq!(loc[0], "body", "{what}: {e}");
            assert!(
                loc[1..].iter().all(|p| p.is_string() || p.is_u64()),
                "{what}: {e}"
            );
            (
                e["type"].as_str().expect("type is a string").to_owned(),
                e["loc"].clone(),
            )
        })
        .collect()
}

/// What a bad body is, its bytes, and the `(type, loc)` of each error it must give.
type BadBody = (&'static str, Vec<u8>, Vec<(&'static str, Value)>);

/// Bad bodies accepted by neither POST.
fn bad_bodies_for_both() -> Vec<BadBody> {
    vec![
        (
            "malformed JSON",
            br#"{"target_soc": 80,"#.to_vec(),
            vec![("json_invalid", json!(["body", 18]))],
        ),
        (
            "a single quote string",
            b"{'target_soc': 80}".to_vec(),
            vec![("json_invalid", json!(["body", 1]))],
        ),
        ("empty body", Vec::new(), vec![("missing", json!(["body"]))]),
        (
            "null body",
            b"null".to_vec(),
            vec![("missing", json!(["body"]))],
        ),
        (
            "a list",
            b"[80]".to_vec(),
            vec![("model_attributes_type", json!(["body"]))],
        ),
        (
            "a number",
            b"80".to_vec(),
            vec![("model_attributes_type", json!(["body"]))],
        ),
        (
            "a string",
            br#""target_soc""#.to_vec(),
            vec![("model_attributes_type", json!(["body"]))],
        ),
        (
            "invalid UTF-8 in a string",
            b"{\"target_soc\": \"\xff\xfe\"}".to_vec(),
            vec![("json_invalid", json!(["body", 16]))],
        ),
        (
            "target_soc as a word",
            br#"{"target_soc": "eighty", "start_time": "02:30"}"#.to_vec(),
            vec![("int_parsing", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc as a bool",
            br#"{"target_soc": true, "start_time": "02:30"}"#.to_vec(),
            vec![("int_type", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc as a list",
            br#"{"target_soc": [80], "start_time": "02:30"}"#.to_vec(),
            vec![("int_type", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc with a fraction",
            br#"{"target_soc": 85.5, "start_time": "02:30"}"#.to_vec(),
            vec![("int_from_float", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc below range",
            br#"{"target_soc": 9, "start_time": "02:30"}"#.to_vec(),
            vec![("greater_than_equal", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc negative",
            br#"{"target_soc": -80, "start_time": "02:30"}"#.to_vec(),
            vec![("greater_than_equal", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc above range",
            br#"{"target_soc": 101, "start_time": "02:30"}"#.to_vec(),
            vec![("less_than_equal", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc far above range",
            br#"{"target_soc": 18446744073709551616, "start_time": "02:30"}"#.to_vec(),
            vec![("less_than_equal", json!(["body", "target_soc"]))],
        ),
        (
            "target_soc missing",
            br#"{"start_time": "02:30", "soc": 80}"#.to_vec(),
            vec![("missing", json!(["body", "target_soc"]))],
        ),
    ]
}

#[tokio::test]
async fn every_kind_of_bad_body_is_a_422_in_fastapis_shape_on_both_posts() {
    let w = World::start(Setup::default()).await;
    for (what, body, expected) in bad_bodies_for_both() {
        for path in [SCHEDULE, ENABLE] {
            let a = post_bytes(&w, path, &body).await;
            let got = validation_entries(&a, &format!("{path}: {what}"));
            let got: Vec<(&str, Value)> =
                got.iter().map(|(t, l)| (t.as_str(), l.clone())).collect();
            assert_eq!(got, expected, "{path}: {what}");
        }
    }
    let a = post_bytes(
        &w,
        SCHEDULE,
        br#"{"target_soc": 101, "start_time": "02:30"}"#,
    )
    .await;
    assert_eq!(
        a.json(),
        json!({"detail": [{"type": "less_than_equal", "loc": ["body", "target_soc"],
            "msg": "Input should be less than or equal to 100", "input": 101, "ctx": {"le": 100}}]}),
        "the contract's own example, byte for byte"
    );
    assert!(
        w.get(SCHEDULE).await.1.is_null(),
        "no bad body stored a schedule"
    );
    assert!(!w.status().is_charging(), "no bad body started a charge");
    assert!(w.sim.state().borrow().writes.is_empty());
}

#[tokio::test]
async fn bad_schedule_fields_are_each_named_and_several_problems_give_several_entries() {
    let w = World::start(Setup::default()).await;
    let field = |field: &str, value: Value| {
        let mut body = json!({"target_soc": 80, "start_time": "02:30"});
        body[field] = value;
        body.to_string()
    };
    let mut cases: Vec<(String, Vec<(&str, Value)>)> = Vec::new();
    for bad in [
        "2:30",
        "24:00",
        "02:60",
        "02:30:00",
        "0230",
        "",
        " 02:30",
        "２:３０",
        "tomorrow",
        "2026-01-16T02:30:00",
        "2026-01-16",
        "2026-02-30T02:30:00Z",
        "2026-01-16T02:30:00 -08:00",
    ] {
        cases.push((
            field("start_time", json!(bad)),
            vec![("string_pattern_mismatch", json!(["body", "start_time"]))],
        ));
    }
    for (value, kind) in [
        (json!(230), "string_type"),
        (json!(null), "string_type"),
        (json!(["02:30"]), "string_type"),
    ] {
        cases.push((
            field("start_time", value),
            vec![(kind, json!(["body", "start_time"]))],
        ));
    }
    cases.push((
        json!({"target_soc": 80}).to_string(),
        vec![("missing", json!(["body", "start_time"]))],
    ));
    for mode in [json!("daily"), json!("ONCE"), json!(1), json!(null)] {
        cases.push((
            field("mode", mode),
            vec![("literal_error", json!(["body", "mode"]))],
        ));
    }
    for (value, kind) in [
        (json!("maybe"), "bool_parsing"),
        (json!(2), "bool_parsing"),
        (json!(null), "bool_type"),
        (json!({}), "bool_type"),
    ] {
        cases.push((
            field("enabled", value),
            vec![(kind, json!(["body", "enabled"]))],
        ));
    }
    cases.push((
        field("days", json!("mon")),
        vec![("list_type", json!(["body", "days"]))],
    ));
    cases.push((
        field("days", json!([])),
        vec![("too_short", json!(["body", "days"]))],
    ));
    cases.push((
        field("days", json!(["mon", "Funday", "tue", 3])),
        vec![
            ("literal_error", json!(["body", "days", 1])),
            ("literal_error", json!(["body", "days", 3])),
        ],
    ));
    cases.push((
        json!({"target_soc": 5, "mode": "daily", "enabled": "maybe", "days": []}).to_string(),
        vec![
            ("greater_than_equal", json!(["body", "target_soc"])),
            ("missing", json!(["body", "start_time"])),
            ("literal_error", json!(["body", "mode"])),
            ("bool_parsing", json!(["body", "enabled"])),
            ("too_short", json!(["body", "days"])),
        ],
    ));
    cases.push((
        "{}".into(),
        vec![
            ("missing", json!(["body", "target_soc"])),
            ("missing", json!(["body", "start_time"])),
        ],
    ));
    for (body, expected) in cases {
        let a = post_bytes(&w, SCHEDULE, body.as_bytes()).await;
        let got = validation_entries(&a, &body);
        let got: Vec<(&str, Value)> = got.iter().map(|(t, l)| (t.as_str(), l.clone())).collect();
        assert_eq!(got, expected, "{body}");
    }

    // The offending value is echoed back as it was sent, unicode and all.
    let weird = "02:30 🔋 \u{202e}ça\u{0000}";
    let a = post_bytes(&w, SCHEDULE, field("start_time", json!(weird)).as_bytes()).await;
    assert_eq!(a.json()["detail"][0]["input"], weird);
    assert!(w.get(SCHEDULE).await.1.is_null());
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_not_echoed() {
    let w = World::start(Setup::default()).await;
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 70, "start_time": "04:00", "color": "blue",
                   "nested": {"a": [1, 2]}, "target": 5}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_shape("schedule", &body, &SCHEDULE_SHAPE);
    assert_eq!(body["target_soc"], 70);
    let (code, body) = w
        .post(
            ENABLE,
            json!({"target_soc": 70, "mode": "bogus", "force": true}),
        )
        .await;
    assert_eq!(code, 200);
    assert_shape("enable", &body, &ENABLE_SHAPE);
    assert_eq!(body["success"], true);
}

// ---------------------------------------------------------------------------------------------
// 4: other statuses and CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_wrong_methods_and_oversized_bodies_answer_with_a_detail() {
    let w = World::start(Setup::default()).await;
    for path in [
        "/api/nothing",
        "/api/charge/schedules",
        "/api",
        "/docs/../etc/passwd",
        "/favicon.ico",
    ] {
        let a = request(&w, Method::GET, path, &[], None).await;
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.json(), json!({"detail": "Not Found"}), "{path}");
    }
    for (method, path) in [
        (Method::PUT, SCHEDULE),
        (Method::PATCH, SCHEDULE),
        (Method::GET, ENABLE),
        (Method::DELETE, DISABLE),
        (Method::POST, "/api/health"),
        (Method::POST, "/api/charge/status"),
        (Method::PUT, "/api/charging/status"),
        (Method::DELETE, "/"),
    ] {
        let a = request(
            &w,
            method.clone(),
            path,
            &[json_type()],
            Some(b"{}".to_vec()),
        )
        .await;
        assert_eq!(a.status, 405, "{method} {path}");
        assert_eq!(
            a.json(),
            json!({"detail": "Method Not Allowed"}),
            "{method} {path}"
        );
    }

    // One byte over the limit is refused; exactly at the limit is read.
    let valid = br#"{"target_soc": 80, "start_time": "02:30"}"#;
    let padded = |len: usize| {
        let mut body = valid.to_vec();
        body.resize(len, b' ');
        body
    };
    for path in [SCHEDULE, ENABLE] {
        let a = post_bytes(&w, path, &padded(MAX_BODY + 1)).await;
        assert_eq!(a.status, 413, "{path}");
        let body = a.json();
        assert_shape("413", &body, &[("detail", J::Str)]);
    }
    let a = post_bytes(&w, SCHEDULE, &padded(MAX_BODY)).await;
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["target_soc"], 80);
    let a = post_bytes(&w, SCHEDULE, &padded(4 * MAX_BODY)).await;
    assert_eq!(a.status, 413);
}

#[tokio::test]
async fn cors_preflights_from_any_origin_are_allowed_and_simple_requests_carry_the_header() {
    let w = World::start(Setup::default()).await;
    for (method, path, headers) in [
        ("POST", SCHEDULE, "content-type"),
        ("DELETE", SCHEDULE, "authorization"),
        ("POST", ENABLE, "content-type, authorization, x-api-key"),
        ("GET", "/api/charging/status", "x-api-key"),
    ] {
        let a = request(
            &w,
            Method::OPTIONS,
            path,
            &[
                (
                    "origin",
                    HeaderValue::from_static("https://anything.example"),
                ),
                (
                    "access-control-request-method",
                    HeaderValue::from_static(method),
                ),
                (
                    "access-control-request-headers",
                    HeaderValue::from_static(headers),
                ),
            ],
            None,
        )
        .await;
        assert!(
            (200..300).contains(&a.status),
            "preflight {method} {path}: {}",
            a.status
        );
        assert_eq!(a.header("access-control-allow-origin"), Some("*"));
        let methods = a.header("access-control-allow-methods").unwrap_or("");
        assert!(
            methods == "*" || methods.split(',').any(|m| m.trim() == method),
            "{method} allowed: {methods:?}"
        );
        // A browser never lets "*" stand for Authorization, so it must be named.
        let allowed = a
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        for h in headers.split(',').map(str::trim) {
            assert!(
                allowed.split(',').any(|a| a.trim() == h)
                    || (allowed.trim() == "*" && h != "authorization"),
                "header {h} allowed by {allowed:?}"
            );
        }
    }
    for path in [
        "/api/health",
        "/api/charge/status",
        SCHEDULE,
        "/api/nothing",
    ] {
        let a = request(
            &w,
            Method::GET,
            path,
            &[(
                "origin",
                HeaderValue::from_static("http://192.168.1.20:3000"),
            )],
            None,
        )
        .await;
        assert_eq!(a.header("access-control-allow-origin"), Some("*"), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// 5: the optional API key
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_an_api_key_every_api_path_but_health_needs_it_in_either_header() {
    let w = World::start(Setup {
        server: "api_key: sekret".into(),
        ..Setup::default()
    })
    .await;
    let paths: [(Method, &str, Option<&[u8]>); 9] = [
        (Method::GET, SCHEDULE, None),
        (
            Method::POST,
            SCHEDULE,
            Some(br#"{"target_soc": 80, "start_time": "02:30"}"#),
        ),
        (Method::DELETE, SCHEDULE, None),
        (Method::GET, "/api/charge/status", None),
        (Method::GET, "/api/charge/history", None),
        (Method::POST, ENABLE, Some(br#"{"target_soc": 80}"#)),
        (Method::POST, DISABLE, None),
        (Method::GET, "/api/charging/status", None),
        (Method::GET, "/api/unknown", None),
    ];
    let refused = |v: &'static str| vec![("x-api-key", HeaderValue::from_static(v))];
    let bad_keys: Vec<Vec<(&str, HeaderValue)>> = vec![
        vec![],
        refused("sekreT"),
        refused("sekre"),
        refused(""),
        vec![("authorization", HeaderValue::from_static("Bearer sekrex"))],
        vec![("authorization", HeaderValue::from_static("Basic sekret"))],
        vec![("authorization", HeaderValue::from_static("sekret"))],
        vec![("authorization", HeaderValue::from_static("Bearer"))],
        vec![("x-api-key", HeaderValue::from_bytes(b"sekr\xe9t").unwrap())],
    ];
    for (method, path, body) in &paths {
        for headers in &bad_keys {
            let mut headers = headers.clone();
            headers.push(json_type());
            let a = request(&w, method.clone(), path, &headers, body.map(<[u8]>::to_vec)).await;
            assert_eq!(a.status, 401, "{method} {path} with {headers:?}");
            assert_eq!(a.json(), json!({"detail": "Not authenticated"}));
        }
    }
    assert!(
        w.sim.state().borrow().writes.is_empty(),
        "nothing done unauthenticated"
    );
    assert!(w.get(SCHEDULE).await.0 == 401);

    let good: [(&str, HeaderValue); 3] = [
        ("authorization", HeaderValue::from_static("Bearer sekret")),
        ("authorization", HeaderValue::from_static("bearer sekret")),
        ("x-api-key", HeaderValue::from_static("sekret")),
    ];
    for key in &good {
        for (method, path, body) in &paths {
            let a = request(
                &w,
                method.clone(),
                path,
                &[key.clone(), json_type()],
                body.map(<[u8]>::to_vec),
            )
            .await;
            let expected = if *path == "/api/unknown" { 404 } else { 200 };
            assert_eq!(
                a.status,
                expected,
                "{method} {path} with {key:?}: {:?}",
                String::from_utf8_lossy(&a.body)
            );
        }
    }

    // Open without a key: health, the overview and the dashboard.
    let (code, health) = w.get("/api/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "ok");
    let (code, root) = w.get("/").await;
    assert_eq!(code, 200);
    assert_eq!(root["status"], "running");
    let page = request(
        &w,
        Method::GET,
        "/",
        &[("accept", HeaderValue::from_static("text/html"))],
        None,
    )
    .await;
    assert_eq!(page.status, 200);
    // A browser's preflight carries no key and must not be refused.
    let a = request(
        &w,
        Method::OPTIONS,
        SCHEDULE,
        &[
            (
                "origin",
                HeaderValue::from_static("https://anything.example"),
            ),
            (
                "access-control-request-method",
                HeaderValue::from_static("POST"),
            ),
            (
                "access-control-request-headers",
                HeaderValue::from_static("x-api-key"),
            ),
        ],
        None,
    )
    .await;
    assert!((200..300).contains(&a.status), "preflight: {}", a.status);
}

// ---------------------------------------------------------------------------------------------
// 6: behaviour through the API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_posted_schedule_is_on_disk_before_the_answer_and_a_post_replaces_it() {
    let w = World::start(Setup::default()).await;
    let (code, _) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 77, "start_time": "03:15", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200);
    // Read straight after the answer: no waiting, so it was written before it.
    let saved = saved_state(&w).schedule.expect("a saved schedule");
    assert_eq!(saved.target.get(), 77);
    assert_eq!(saved.time.to_string(), "03:15");
    assert_eq!(saved.mode.as_str(), "once");

    let (code, _) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 60, "start_time": "05:45", "enabled": false}),
        )
        .await;
    assert_eq!(code, 200);
    let saved = saved_state(&w).schedule.expect("a saved schedule");
    assert_eq!(saved.target.get(), 60);
    assert_eq!(saved.time.to_string(), "05:45");
    assert!(!saved.enabled);

    // It survives a crash and a clean restart.
    let mut w = w;
    w.kill();
    w.boot().await;
    let (_, after_crash) = w.get(SCHEDULE).await;
    assert_eq!(after_crash["target_soc"], 60);
    assert_eq!(after_crash["start_time"], "05:45");
    assert_eq!(after_crash["enabled"], false);
    w.shutdown().await;
    w.boot().await;
    assert_eq!(w.get(SCHEDULE).await.1, after_crash);

    let (code, body) = w.delete(SCHEDULE).await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"success": true, "message": "Schedule cancelled"})
    );
    assert!(
        saved_state(&w).schedule.is_none(),
        "the cancel is on disk too"
    );
}

#[tokio::test]
async fn days_are_echoed_only_when_set() {
    let w = World::start(Setup::default()).await;
    // 2026-01-15 is a Thursday.
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 80, "start_time": "02:30", "days": ["sat", "mon"]}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let mut with_days = SCHEDULE_SHAPE.to_vec();
    with_days.push(("days", J::Arr));
    assert_shape("schedule with days", &body, &with_days);
    assert_eq!(body["days"], json!(["mon", "sat"]));
    assert_eq!(body["next_run"], "2026-01-17T02:30:00", "the next Saturday");
    assert_eq!(w.get(SCHEDULE).await.1, body);
    assert_eq!(w.get("/").await.1["schedule"], body);

    for every_day in [
        json!({"target_soc": 80, "start_time": "02:30"}),
        json!({"target_soc": 80, "start_time": "02:30", "days": null}),
    ] {
        let (code, body) = w.post(SCHEDULE, every_day).await;
        assert_eq!(code, 200);
        assert_shape("schedule without days", &body, &SCHEDULE_SHAPE);
        assert_eq!(body["next_run"], "2026-01-15T02:30:00");
        assert_shape(
            "schedule without days",
            &w.get(SCHEDULE).await.1,
            &SCHEDULE_SHAPE,
        );
    }
}

#[tokio::test]
async fn an_iso_start_time_with_an_offset_runs_at_that_instant_and_one_in_the_past_is_refused() {
    let w = World::start(Setup::default()).await;
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 80, "start_time": "2026-01-20T03:45:00-08:00"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_shape("schedule", &body, &SCHEDULE_SHAPE);
    assert_eq!(body["next_run"], "2026-01-20T03:45:00");
    assert_eq!(
        body["start_time"], "03:45",
        "repeats at that local time of day"
    );

    // Another offset: the same instant, shown in local time.
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 80, "start_time": "2026-01-15T12:00:00Z", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["next_run"], "2026-01-15T04:00:00");
    assert_eq!(body["start_time"], "04:00");
    assert_eq!(
        w.get("/api/charge/status").await.1["scheduled_next"],
        "2026-01-15T04:00:00"
    );

    // In the past, or exactly now: not strictly after now.
    for past in [
        "2026-01-15T00:59:59-08:00",
        "2026-01-15T09:00:00Z",
        "2020-01-01T00:00:00+00:00",
    ] {
        let a = post_bytes(
            &w,
            SCHEDULE,
            json!({"target_soc": 80, "start_time": past})
                .to_string()
                .as_bytes(),
        )
        .await;
        let entries = validation_entries(&a, past);
        assert_eq!(
            entries,
            [("value_error".to_string(), json!(["body", "start_time"]))],
            "{past}"
        );
        assert_eq!(a.json()["detail"][0]["input"], past);
    }
    assert_eq!(
        w.get(SCHEDULE).await.1["next_run"],
        "2026-01-15T04:00:00",
        "a refused POST leaves the schedule as it was"
    );
}

#[tokio::test]
async fn a_schedule_posted_during_a_charge_retargets_it_and_a_disabled_one_stops_it() {
    let w = World::start(Setup::default()).await;
    let (_, enabled) = w.post(ENABLE, json!({"target_soc": 95})).await;
    assert_eq!(enabled["is_charging"], true, "{enabled}");

    let (code, body) = w
        .post(SCHEDULE, json!({"target_soc": 55, "start_time": "05:00"}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["is_charging"], true, "the charge goes on");
    assert_eq!(body["next_run"], "2026-01-15T05:00:00");
    assert_eq!(w.status().session.unwrap().target.get(), 55);
    let stopped = w
        .run_until(MIN, Duration::from_secs(3 * 3600), |s| !ac_on(s))
        .await;
    assert!(
        (55..=56).contains(&stopped.reported_soc),
        "stopped at the new target, SOC {}",
        stopped.reported_soc
    );
    let st = w.wait_status(|s| s.session.is_none()).await;
    let (_, sched) = w.get(SCHEDULE).await;
    assert_eq!(sched["target_soc"], 55, "the recurring schedule stays");
    assert_eq!(sched["next_run"], "2026-01-15T05:00:00");
    assert!(st.schedule.is_some());

    // A new target already reached stops the charge at once.
    let (_, enabled) = w.post(ENABLE, json!({"target_soc": 95})).await;
    assert_eq!(enabled["is_charging"], true, "{enabled}");
    let soc = w.sim.state().borrow().reported_soc;
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": soc.max(10), "start_time": "05:00", "mode": "once"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    w.wait_sim(|s| !ac_on(s)).await;
    w.wait_status(|s| s.session.is_none()).await;
    let (_, sched) = w.get(SCHEDULE).await;
    assert_eq!(
        sched["next_run"], "2026-01-15T05:00:00",
        "the new once schedule is still armed: it has not run"
    );

    // enabled: false stops a running charge.
    let (_, enabled) = w.post(ENABLE, json!({"target_soc": 95})).await;
    assert_eq!(enabled["is_charging"], true, "{enabled}");
    let (code, body) = w
        .post(
            SCHEDULE,
            json!({"target_soc": 95, "start_time": "05:00", "enabled": false}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    w.wait_sim(|s| !ac_on(s)).await;
    let st = w.wait_status(|s| !s.is_charging()).await;
    assert!(st.schedule.is_some_and(|s| !s.enabled));
    let (_, status) = w.get("/api/charging/status").await;
    assert_eq!(status["is_charging"], false);
    assert_eq!(status["is_enabled"], false);
}

#[tokio::test]
async fn delete_stops_a_running_charge_and_answers_the_same_when_nothing_exists() {
    let w = World::start(Setup::default()).await;
    let before = w.hold("ACCharge");
    let (_, enabled) = w.post(ENABLE, json!({"target_soc": 90})).await;
    assert_eq!(enabled["is_charging"], true, "{enabled}");
    for _ in 0..3 {
        let (code, body) = w.delete(SCHEDULE).await;
        assert_eq!(code, 200);
        assert_eq!(
            body,
            json!({"success": true, "message": "Schedule cancelled"})
        );
        assert!(!ac_on(&w.sim.state().borrow()));
    }
    assert_eq!(w.hold("ACCharge"), before);
    w.wait_status(|s| s.session.is_none() && s.schedule.is_none())
        .await;
}

/// Awaits `answer` while letting time pass on the manual clock: the service's timeouts for an
/// unresponsive dongle run on that clock, so an answer that waits on one only comes if time
/// moves. Only for waits on something that never answers: time races ahead of real I/O here.
async fn while_time_passes<T>(
    clock: &solar_charging_backend::clock::ManualClock,
    answer: impl Future<Output = T>,
) -> T {
    const STEP: Duration = Duration::from_millis(250);
    let run = async {
        tokio::pin!(answer);
        loop {
            tokio::select! {
                biased;
                out = &mut answer => return out,
                // Lets every task that can make progress run before time moves on.
                () = tokio::task::yield_now() => {
                    clock.advance(STEP);
                }
            }
        }
    };
    tokio::time::timeout(crate::harness::GUARD, run)
        .await
        .expect("an answer while time passes")
}

/// A world whose dongle stops cooperating once the service has heard it, with short timeouts.
async fn faulted_world(fault: Fault) -> World {
    let w = World::start(Setup {
        charging: "write_timeout_s: 1, readback_timeout_s: 1, retry_on_failure: false".into(),
        ..Setup::default()
    })
    .await;
    w.sim.set_fault(fault);
    w
}

#[tokio::test]
async fn enable_answers_200_with_success_false_and_the_reason_when_the_dongle_is_silent() {
    let w = faulted_world(Fault::Silent).await;
    let (code, body) = while_time_passes(&w.clock, w.post(ENABLE, json!({"target_soc": 80}))).await;
    assert_eq!(code, 200);
    assert_shape("enable", &body, &ENABLE_SHAPE);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["is_charging"], false);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Charging could not be started: ") && message.len() > 32,
        "the message says why: {message:?}"
    );
    assert!(message.contains("no answer"), "{message}");
    assert!(!ac_on(&w.sim.state().borrow()));
    let (_, status) = w.get("/api/charging/status").await;
    assert_eq!(status["is_charging"], false);
}

#[tokio::test]
async fn enable_answers_200_with_success_false_when_the_dongle_rejects_writes() {
    let w = faulted_world(Fault::RejectWrites).await;
    let before = w.sim.state().borrow().holds.clone();
    // The rejection comes back at once: no time needs to pass.
    let (code, body) = w.post(ENABLE, json!({"target_soc": 80})).await;
    assert_eq!(code, 200);
    assert_shape("enable", &body, &ENABLE_SHAPE);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["is_charging"], false);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Charging could not be started: ") && message.len() > 32,
        "the message says why: {message:?}"
    );
    assert!(message.contains("answered"), "{message}");
    assert_eq!(
        w.sim.state().borrow().holds,
        before,
        "nothing left half-applied"
    );
}

#[tokio::test]
async fn enable_answers_200_with_success_false_when_the_broker_is_unreachable() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let yaml = format!(
        "mqtt: {{host: 127.0.0.1, port: {port}, dongle_prefix: \"{}\", client_id: contract-nobroker}}\n\
         server: {{host: 127.0.0.1, port: 0}}\n\
         charging: {{write_timeout_s: 1, readback_timeout_s: 1, retry_on_failure: false}}\n\
         timezone: {}\n",
        crate::harness::PREFIX,
        crate::harness::ZONE,
    );
    let config = solar_charging_backend::config::parse(
        &yaml,
        &solar_charging_backend::config::EnvOverrides::default(),
    )
    .unwrap_or_else(|p| panic!("config: {p:?}"))
    .config;
    let data = tempfile::tempdir().unwrap();
    let clock = solar_charging_backend::clock::ManualClock::new(Setup::default().wall);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = solar_charging_backend::app::start(&config, data.path(), clock.clock(), listener)
        .await
        .expect("the service starts without its broker");
    let base = format!("http://{}", app.addr);
    let http = crate::harness::http_client();

    let health = call(&http, &base, Method::GET, "/api/health", &[], None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["mqtt_connected"], false);

    let a = while_time_passes(
        &clock,
        call(
            &http,
            &base,
            Method::POST,
            ENABLE,
            &[json_type()],
            Some(br#"{"target_soc": 80}"#.to_vec()),
        ),
    )
    .await;
    let a = a.unwrap();
    assert_eq!(a.status, 200);
    let body = a.json();
    assert_shape("enable", &body, &ENABLE_SHAPE);
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["is_charging"], false);
    assert_eq!(body["current_soc"], Value::Null, "no SOC ever seen");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("Charging could not be started: ") && message.len() > 32,
        "the message says why: {message:?}"
    );
    assert!(message.contains("MQTT broker"), "{message}");
    let status = call(&http, &base, Method::GET, "/api/charging/status", &[], None)
        .await
        .unwrap();
    assert_eq!(status.json()["is_charging"], false);
    app.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 7: robustness
// ---------------------------------------------------------------------------------------------

/// Request bodies that a careless or hostile client might send.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"{".to_vec(),
        b"}".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"\"".to_vec(),
        b"-0".to_vec(),
        b"   \n\t ".to_vec(),
        b"\xef\xbb\xbf{\"target_soc\": 80}".to_vec(),
        b"{\"target_soc\": \"\xff\xfe\xfd\", \"start_time\": \"\xc3\x28\"}".to_vec(),
        b"{\"\xff\": 1}".to_vec(),
        b"{\"target_soc\": 80, \"start_time\": \"\\ud800\"}".to_vec(),
        br#"{"target_soc": 1e400, "start_time": "02:30"}"#.to_vec(),
        br#"{"target_soc": -0.0, "start_time": "02:30"}"#.to_vec(),
        br#"{"target_soc": "85.000", "start_time": "23:59", "enabled": "on"}"#.to_vec(),
        br#"{"target_soc": 80, "target_soc": 5, "start_time": "02:30"}"#.to_vec(),
        br#"{"target_soc": [1, {"a": null}], "start_time": {"h": 2}, "mode": 3, "enabled": "x", "days": {"mon": 1}}"#.to_vec(),
        br#"{"target_soc": 90, "start_time": "9999-12-30T22:00:00Z", "mode": "recurring", "days": ["sun"]}"#.to_vec(),
        br#"{"target_soc": 90, "start_time": "-009999-01-01T00:00:00Z"}"#.to_vec(),
        br#"{"target_soc": 90, "start_time": "2026-03-08T02:30:00-08:00", "days": ["mon","mon","sun"]}"#.to_vec(),
        br#"{"target_soc": 90, "start_time": "2026-11-01T01:30:00-07:00", "mode": "once"}"#.to_vec(),
        br#"{"target_soc": 85, "start_time": "02:30"}"#.to_vec(),
        br#"{"target_soc": 60}"#.to_vec(),
        json!({"target_soc": "🔋🔋", "start_time": "０２:３０", "mode": "\u{202e}once",
               "enabled": "ｔｒｕｅ", "days": ["月", "\u{0000}"], "ключ": "значение"})
        .to_string()
        .into_bytes(),
        format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes(),
        format!("{{\"target_soc\": {}}}", "9".repeat(10_000)).into_bytes(),
        vec![0u8; 1000],
        vec![b'{'; MAX_BODY + 1],
        vec![b' '; 3 * MAX_BODY],
    ];
    // A large body within the limit, full of keys the service does not know.
    let mut many = String::from("{\"target_soc\": 70, \"start_time\": \"03:00\"");
    let mut i = 0;
    while many.len() < MAX_BODY - 64 {
        many.push_str(&format!(", \"k{i}\": \"ü\""));
        i += 1;
    }
    many.push('}');
    bodies.push(many.into_bytes());
    bodies
}

/// Header sets: none, wrong or broken content types, huge values, undecodable bytes.
fn odd_headers() -> Vec<Vec<(&'static str, HeaderValue)>> {
    let huge = |c: u8| HeaderValue::from_bytes(&vec![c; 60 * 1024]).unwrap();
    vec![
        vec![],
        vec![json_type()],
        vec![("content-type", HeaderValue::from_static("text/plain"))],
        vec![(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-16"),
        )],
        vec![(
            "content-type",
            HeaderValue::from_bytes(b"\xff\xfe/json").unwrap(),
        )],
        vec![(
            "content-type",
            HeaderValue::from_static("multipart/form-data; boundary="),
        )],
        vec![
            ("content-encoding", HeaderValue::from_static("gzip")),
            json_type(),
        ],
        vec![("accept", huge(b'a')), json_type()],
        vec![("accept", HeaderValue::from_bytes(b"text/html\xff").unwrap())],
        vec![("x-api-key", huge(b'k'))],
        vec![(
            "authorization",
            HeaderValue::from_bytes(b"Bearer \xc3\x28\xff").unwrap(),
        )],
        vec![
            ("origin", HeaderValue::from_static("null")),
            (
                "access-control-request-method",
                HeaderValue::from_static("PATCH"),
            ),
            ("access-control-request-headers", huge(b'h')),
        ],
        vec![
            ("x-forwarded-for", huge(b'1')),
            ("cookie", HeaderValue::from_bytes(b"a=\x80\x81").unwrap()),
            ("accept-language", HeaderValue::from_static("*;q=2, ;;,")),
        ],
    ]
}

#[tokio::test]
async fn nothing_a_client_sends_to_any_endpoint_makes_the_service_answer_5xx() {
    let w = World::start(Setup::default()).await;
    let paths = [
        "/",
        "/api/health",
        SCHEDULE,
        "/api/charge/status",
        "/api/charge/history",
        ENABLE,
        DISABLE,
        "/api/charging/status",
        "/api/nothing",
        "/api/charge/schedule/",
        "//api//health",
        "/api/charge/schedule?mode=%ff&target_soc=1e9",
        "/%ff%fe%00",
        "/docs",
    ];
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::HEAD,
    ];
    let bodies = hostile_bodies();
    let headers = odd_headers();
    let mut failures = Vec::new();
    let mut sent = 0;
    for (p, path) in paths.iter().enumerate() {
        for (m, method) in methods.iter().enumerate() {
            for (b, body) in bodies.iter().enumerate() {
                // Every header set meets every endpoint and method over the bodies.
                let hs = &headers[(p + m + b) % headers.len()];
                sent += 1;
                let what = format!(
                    "{method} {path} body #{b} ({} bytes) headers #{}",
                    body.len(),
                    (p + m + b) % headers.len()
                );
                match call(
                    &w.http,
                    &w.base,
                    method.clone(),
                    path,
                    hs,
                    Some(body.clone()),
                )
                .await
                {
                    Ok(a) if (200..500).contains(&a.status) => {
                        // Our own error answers always carry a detail.
                        if (400..500).contains(&a.status) && *method != Method::HEAD {
                            let ok = serde_json::from_slice::<Value>(&a.body)
                                .is_ok_and(|v| v.get("detail").is_some());
                            if !ok {
                                failures.push(format!(
                                    "{what}: {} without a detail: {:?}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                ));
                            }
                        }
                    }
                    Ok(a) => failures.push(format!(
                        "{what}: {}: {:?}",
                        a.status,
                        String::from_utf8_lossy(&a.body)
                    )),
                    Err(e) => failures.push(format!("{what}: no answer: {e}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let (code, health) = w.get("/api/health").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt_connected"], true);
}

#[tokio::test]
async fn two_hundred_concurrent_clients_during_a_charge_all_get_200_and_the_last_schedule_sticks() {
    let w = World::start(Setup::default()).await;
    let (_, enabled) = w.post(ENABLE, json!({"target_soc": 99})).await;
    assert_eq!(enabled["is_charging"], true, "{enabled}");

    let mut clients = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let base = w.base.clone();
        clients.spawn(async move {
            let http = crate::harness::http_client();
            let target = 70 + i % 30;
            let start_time = format!("{:02}:{:02}", 3 + i / 60, i % 60);
            let mut codes = Vec::new();
            for round in 0..4 {
                let (method, path, body) = match (i + round) % 4 {
                    0 => (Method::GET, "/api/charge/status", None),
                    1 => (Method::GET, "/api/charging/status", None),
                    2 => (Method::GET, SCHEDULE, None),
                    _ => (
                        Method::POST,
                        SCHEDULE,
                        Some(
                            json!({"target_soc": target, "start_time": start_time})
                                .to_string()
                                .into_bytes(),
                        ),
                    ),
                };
                let a = call(&http, &base, method.clone(), path, &[json_type()], body)
                    .await
                    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                codes.push((format!("{method} {path}"), a.status));
            }
            (target, start_time, codes)
        });
    }
    let mut posted = Vec::new();
    while let Some(done) = clients.join_next().await {
        let (target, start_time, codes) = done.expect("a client task");
        for (what, code) in codes {
            assert_eq!(code, 200, "{what}");
        }
        posted.push((target, start_time));
    }

    let (_, stored) = w.get(SCHEDULE).await;
    let stored_pair = (
        stored["target_soc"].as_u64().unwrap() as u32,
        stored["start_time"].as_str().unwrap().to_owned(),
    );
    assert!(
        posted.contains(&stored_pair),
        "{stored} is one of those posted"
    );
    let saved = saved_state(&w).schedule.unwrap();
    assert_eq!(
        (u32::from(saved.target.get()), saved.time.to_string()),
        stored_pair,
        "what is shown is what is on disk"
    );
    let st = w.status();
    assert!(st.is_charging(), "the charge kept running");
    assert_eq!(
        st.session.unwrap().target.get(),
        saved.target.get(),
        "the charge follows the schedule that stuck"
    );

    // The last POST wins.
    let (code, last) = w
        .post(SCHEDULE, json!({"target_soc": 98, "start_time": "04:44"}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(w.get(SCHEDULE).await.1, last);
    let saved = saved_state(&w).schedule.unwrap();
    assert_eq!(saved.target.get(), 98);
    assert_eq!(saved.time.to_string(), "04:44");
    assert_eq!(w.status().session.unwrap().target.get(), 98);
}
