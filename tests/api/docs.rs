//! The API documentation as a user meets it: the OpenAPI document at `/openapi.json` and the
//! Swagger UI at `/docs`, served by the service itself so they work with no internet access.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use solar_charging_backend::engine::EngineFault;

use crate::harness::{GUARD, Setup, World};

const MIN: Duration = Duration::from_secs(60);
const KEY: &str = "s3cret-key";

/// Every operation of the contract, as (path, method).
const CONTRACT: [(&str, &str); 18] = [
    ("/api/health", "get"),
    ("/api/charge/plan", "get"),
    ("/api/device/register", "post"),
    ("/api/device/unregister", "delete"),
    ("/api/device/status", "get"),
    ("/api/notifications", "get"),
    ("/api/notifications/test", "post"),
    ("/api/inverter/status", "get"),
    ("/api/charge/schedule", "get"),
    ("/api/charge/schedule", "post"),
    ("/api/charge/schedule", "delete"),
    ("/api/charge/status", "get"),
    ("/api/charge/history", "get"),
    ("/api/charging/enable", "post"),
    ("/api/charging/disable", "post"),
    ("/api/charging/status", "get"),
    ("/api/telemetry", "get"),
    ("/", "get"),
];

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A request with an optional API key (as `X-API-Key`) and a raw body.
async fn call(w: &World, method: Method, path: &str, key: Option<&str>, body: &[u8]) -> Answer {
    let mut req = w.http.request(method, format!("{}{path}", w.base));
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    if !body.is_empty() {
        req = req
            .header("Content-Type", "application/json")
            .body(body.to_vec());
    }
    let r = req.send().await.unwrap();
    Answer {
        status: r.status().as_u16(),
        content_type: r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: r.bytes().await.unwrap().to_vec(),
    }
}

async fn document(w: &World) -> Value {
    let a = call(w, Method::GET, "/openapi.json", None, b"").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        a.content_type.starts_with("application/json"),
        "served as {}",
        a.content_type
    );
    a.json()
}

/// Follows a local `$ref` (`#/components/...`) if there is one.
fn resolve<'a>(doc: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            resolve(doc, target)
        }
        None => node,
    }
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            ops.push((path.clone(), method.clone(), op));
        }
    }
    ops
}

#[tokio::test]
async fn the_openapi_document_is_openapi_3_and_lists_every_endpoint_of_the_contract() {
    let w = World::start(Setup::default()).await;
    let doc = document(&w).await;

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi: {version:?}");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let listed: Vec<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(p, m, _)| (p, m))
        .collect();
    for (path, method) in CONTRACT {
        assert!(
            listed.contains(&(path.to_owned(), method.to_owned())),
            "{} {path} is missing from the document; it lists {listed:?}",
            method.to_uppercase()
        );
    }
    assert_eq!(
        listed.len(),
        CONTRACT.len(),
        "the document lists operations the contract does not: {listed:?}"
    );
}

#[tokio::test]
async fn the_document_leads_back_to_the_dashboard() {
    let w = World::start(Setup::default()).await;
    let doc = document(&w).await;
    let said = doc["info"]["description"].as_str().unwrap_or_default();
    assert!(
        said.contains("dashboard](/)"),
        "the docs page shows the description, with a link to /: {said}"
    );
}

#[tokio::test]
async fn every_operation_in_the_document_is_answered_by_the_service() {
    let w = World::start(Setup::default()).await;
    let doc = document(&w).await;
    for (path, method, _) in operations(&doc) {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let a = call(&w, m, &path, None, b"").await;
        assert!(
            a.status != 404 && a.status != 405,
            "{} {path} is documented but answers {}: {}",
            method.to_uppercase(),
            a.status,
            a.text()
        );
    }
}

#[tokio::test]
async fn every_response_in_the_document_has_a_description() {
    let w = World::start(Setup::default()).await;
    let doc = document(&w).await;
    let mut seen = 0;
    for (path, method, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{method} {path} has no responses");
        for (status, response) in responses {
            let description = resolve(&doc, response)["description"]
                .as_str()
                .unwrap_or_default();
            assert!(
                !description.trim().is_empty(),
                "{} {path} {status} has no description",
                method.to_uppercase()
            );
            seen += 1;
        }
    }
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        assert!(
            !response["description"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "response {name} has no description"
        );
    }
    assert!(seen >= CONTRACT.len(), "only {seen} responses");
}

#[tokio::test]
async fn the_document_states_the_request_rules_and_error_shapes_the_service_applies() {
    let w = World::start(Setup::default()).await;
    let doc = document(&w).await;
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    let body_schema = |path: &str| {
        let s = &op(path, "post")["requestBody"]["content"]["application/json"]["schema"];
        resolve(&doc, s).clone()
    };

    let schedule = body_schema("/api/charge/schedule");
    assert_eq!(schedule["required"], json!(["target_soc", "start_time"]));
    let p = &schedule["properties"];
    assert_eq!(p["target_soc"]["minimum"], 10);
    assert_eq!(p["target_soc"]["maximum"], 100);
    assert_eq!(p["mode"]["default"], "recurring");
    assert_eq!(
        resolve(&doc, &p["mode"])["enum"],
        json!(["once", "recurring"])
    );
    assert_eq!(p["enabled"]["default"], true);
    assert_eq!(
        resolve(&doc, &p["days"]["items"])["enum"],
        json!(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])
    );
    let start = &p["start_time"];
    let pattern = start["pattern"].as_str().expect("a start_time pattern");
    assert!(
        pattern.contains("([01][0-9]|2[0-3]):[0-5][0-9]"),
        "{pattern}"
    );
    let said = start["description"].as_str().unwrap_or_default();
    assert!(
        said.contains("HH:MM") && said.contains("offset"),
        "start_time's description names both forms: {said}"
    );

    let enable = body_schema("/api/charging/enable");
    assert_eq!(enable["required"], json!(["target_soc"]));
    assert_eq!(enable["properties"]["target_soc"]["minimum"], 10);
    assert_eq!(enable["properties"]["target_soc"]["maximum"], 100);

    // The 422 of FastAPI, and the {"detail": "..."} of every other error.
    for path in ["/api/charge/schedule", "/api/charging/enable"] {
        let r = resolve(&doc, &op(path, "post")["responses"]["422"]).clone();
        let s = resolve(&doc, &r["content"]["application/json"]["schema"]).clone();
        let issue = resolve(&doc, &s["properties"]["detail"]["items"]).clone();
        let mut required: Vec<&str> = issue["required"]
            .as_array()
            .expect("required fields")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        required.sort_unstable();
        assert_eq!(required, ["input", "loc", "msg", "type"], "{path}");
        let too_large = resolve(&doc, &op(path, "post")["responses"]["413"]).clone();
        let s = resolve(&doc, &too_large["content"]["application/json"]["schema"]).clone();
        assert_eq!(s["properties"]["detail"]["type"], "string", "{path}");
    }

    // The optional key, both ways, on every /api/* operation but health.
    let schemes = &doc["components"]["securitySchemes"];
    let by_kind: Vec<(String, String)> = schemes
        .as_object()
        .unwrap()
        .values()
        .map(|s| {
            let kind = s["type"].as_str().unwrap_or_default().to_owned();
            let how = match kind.as_str() {
                "http" => s["scheme"].as_str().unwrap_or_default().to_lowercase(),
                _ => format!(
                    "{}:{}",
                    s["in"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                ),
            };
            (kind, how)
        })
        .collect();
    assert!(
        by_kind.contains(&("http".into(), "bearer".into())),
        "{by_kind:?}"
    );
    assert!(
        by_kind.contains(&("apiKey".into(), "header:X-API-Key".into())),
        "{by_kind:?}"
    );
    for (path, method, op) in operations(&doc) {
        let protected = path.starts_with("/api/") && path != "/api/health";
        let names: Vec<&str> = op["security"]
            .as_array()
            .map(|reqs| {
                reqs.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if protected {
            for name in schemes.as_object().unwrap().keys() {
                assert!(names.contains(&name.as_str()), "{method} {path}: {names:?}");
            }
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents its 401"
            );
        } else {
            assert!(names.is_empty(), "{method} {path} needs no key: {names:?}");
        }
    }
}

/// The `src`/`href` attribute values of an HTML page.
fn linked_assets(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').expect("a closing quote");
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[tokio::test]
async fn the_docs_page_and_everything_it_loads_come_from_the_service_itself() {
    let w = World::start(Setup::default()).await;
    for path in ["/docs", "/docs/"] {
        let page = call(&w, Method::GET, path, None, b"").await;
        assert_eq!(page.status, 200, "{path}: {}", page.text());
        assert!(
            page.content_type.starts_with("text/html"),
            "{path} served as {}",
            page.content_type
        );
        let html = page.text();
        assert!(html.contains("swagger-ui"), "{path}: {html}");
        assert!(
            !html.contains("http://") && !html.contains("https://") && !html.contains("\"//"),
            "{path} points at another host: {html}"
        );
    }

    let html = call(&w, Method::GET, "/docs/", None, b"").await.text();
    let assets = linked_assets(&html);
    assert!(
        assets.iter().any(|a| a.ends_with("swagger-ui-bundle.js")),
        "{assets:?}"
    );
    for asset in &assets {
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let a = call(&w, Method::GET, &path, None, b"").await;
        assert_eq!(a.status, 200, "{path}");
        assert!(!a.body.is_empty(), "{path} is empty");
    }
    let bundle = call(&w, Method::GET, "/docs/swagger-ui-bundle.js", None, b"").await;
    assert_eq!(bundle.status, 200);
    assert!(
        bundle.content_type.contains("javascript"),
        "served as {}",
        bundle.content_type
    );
    assert!(
        bundle.body.len() > 100_000,
        "the whole bundle: {} bytes",
        bundle.body.len()
    );

    // The page loads the service's own document, and no validator badge from a public host.
    let init = call(&w, Method::GET, "/docs/swagger-initializer.js", None, b"").await;
    assert_eq!(init.status, 200);
    let init = init.text();
    assert!(init.contains("\"/openapi.json\""), "{init}");
    assert!(
        !init.contains("http://") && !init.contains("https://"),
        "{init}"
    );
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
}

#[tokio::test]
async fn an_unknown_file_under_docs_answers_the_contracts_404() {
    let w = World::start(Setup::default()).await;
    let a = call(&w, Method::GET, "/docs/no-such-file.js", None, b"").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json(), json!({"detail": "Not Found"}));
}

#[tokio::test]
async fn the_docs_and_the_document_stay_open_when_an_api_key_is_set() {
    let w = World::start(Setup {
        server: format!("api_key: {KEY}"),
        ..Default::default()
    })
    .await;
    assert_eq!(
        call(&w, Method::GET, "/openapi.json", None, b"")
            .await
            .status,
        200
    );
    assert_eq!(call(&w, Method::GET, "/docs/", None, b"").await.status, 200);
    let bundle = call(&w, Method::GET, "/docs/swagger-ui-bundle.js", None, b"").await;
    assert_eq!(bundle.status, 200);
    // ...while the API itself is closed, and opens with the key the docs page sends.
    let closed = call(&w, Method::GET, "/api/charge/status", None, b"").await;
    assert_eq!(closed.status, 401);
    let open = call(&w, Method::GET, "/api/charge/status", Some(KEY), b"").await;
    assert_eq!(open.status, 200, "{}", open.text());
}

/// Real answers of the service, recorded as the validator script reads them.
struct Samples<'a> {
    w: &'a World,
    taken: Vec<Value>,
}

impl Samples<'_> {
    /// A request with the API key.
    async fn take(&mut self, method: Method, path: &str, body: &[u8]) -> Value {
        self.record(method, path, Some(KEY), body).await
    }

    async fn take_without_key(&mut self, method: Method, path: &str) -> Value {
        self.record(method, path, None, b"").await
    }

    async fn record(
        &mut self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: &[u8],
    ) -> Value {
        let a = call(self.w, method.clone(), path, key, body).await;
        let json = a.json();
        // The document's operations are keyed by the path alone.
        let operation = path.split('?').next().unwrap_or(path);
        self.taken.push(json!({
            "method": method.as_str(), "path": operation, "status": a.status, "body": json,
        }));
        json
    }
}

#[tokio::test]
async fn the_document_passes_openapi_spec_validator_and_the_services_answers_match_it() {
    let mut w = World::start(Setup {
        server: format!("api_key: {KEY}"),
        ..Default::default()
    })
    .await;
    let doc = document(&w).await;

    // Answers of every kind the document describes, in the states a user meets.
    let mut s = Samples {
        w: &w,
        taken: Vec::new(),
    };
    s.take_without_key(Method::GET, "/api/health").await;
    s.take_without_key(Method::GET, "/api/charge/status").await;
    s.take_without_key(Method::GET, "/").await;
    for path in [
        "/api/charge/schedule",
        "/api/charge/status",
        "/api/charging/status",
        "/api/charge/history",
        "/api/telemetry",
        "/api/telemetry?hours=99",
    ] {
        s.take(Method::GET, path, b"").await;
    }
    for bad in [
        &br#"{"target_soc": 101, "start_time": "24:00", "mode": "daily", "days": ["mon", 3]}"#[..],
        br#"{"enabled": "maybe"}"#,
        br#"{"target_soc": 85 "start_time": "02:30"}"#,
        br#"[1, 2]"#,
    ] {
        s.take(Method::POST, "/api/charge/schedule", bad).await;
    }
    s.take(
        Method::POST,
        "/api/charging/enable",
        br#"{"target_soc": "x"}"#,
    )
    .await;
    let huge = format!(
        r#"{{"target_soc": 80, "pad": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    s.take(Method::POST, "/api/charging/enable", huge.as_bytes())
        .await;

    let days = br#"{"target_soc": 85, "start_time": "04:30", "days": ["mon", "tue"]}"#;
    let saved = s.take(Method::POST, "/api/charge/schedule", days).await;
    assert_eq!(saved["days"], json!(["mon", "tue"]), "{saved}");
    s.take(Method::GET, "/api/charge/schedule", b"").await;
    let at = br#"{"target_soc": 70, "start_time": "2026-01-16T03:00:00-08:00", "mode": "once"}"#;
    s.take(Method::POST, "/api/charge/schedule", at).await;

    let started = s
        .take(
            Method::POST,
            "/api/charging/enable",
            br#"{"target_soc": 80}"#,
        )
        .await;
    assert_eq!(started["success"], true, "{started}");
    w.tick(MIN).await;
    let charging = s.take(Method::GET, "/api/charging/status", b"").await;
    assert_eq!(charging["is_charging"], true, "{charging}");
    s.take(Method::GET, "/api/charge/status", b"").await;
    s.take_without_key(Method::GET, "/").await;
    s.take(Method::POST, "/api/charging/disable", b"").await;
    // The charge is recorded once the inverter's settings are back.
    w.wait_status(|st| st.session.is_none()).await;
    let history = s.take(Method::GET, "/api/charge/history", b"").await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    s.take(Method::DELETE, "/api/charge/schedule", b"").await;
    s.take(Method::GET, "/api/charge/schedule", b"").await;
    let taken = s.taken;
    w.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("openapi.json");
    let samples = dir.path().join("samples.json");
    std::fs::write(&spec, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    std::fs::write(&samples, serde_json::to_vec_pretty(&taken).unwrap()).unwrap();
    let (ok, report) = tokio::task::spawn_blocking(move || validate(&spec, &samples))
        .await
        .unwrap();
    assert!(
        ok,
        "scripts/validate-openapi.sh rejected the document or an answer:\n{report}"
    );
}

/// A JSON value with the keys of each object in the order the service wrote them (a
/// `serde_json::Value` sorts them).
#[derive(Debug)]
enum Ordered {
    Null,
    Scalar,
    Str(String),
    List(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl Ordered {
    fn get(&self, key: &str) -> Option<&Ordered> {
        match self {
            Ordered::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Ordered::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Follows a JSON pointer (`/components/schemas/Health`).
    fn pointer(&self, pointer: &str) -> Option<&Ordered> {
        pointer.split('/').skip(1).try_fold(self, |node, key| {
            node.get(&key.replace("~1", "/").replace("~0", "~"))
        })
    }
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Scalar)
            }
            fn visit_str<E>(self, s: &str) -> Result<Ordered, E> {
                Ok(Ordered::Str(s.to_owned()))
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Ordered::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = a.next_entry()? {
                    fields.push(field);
                }
                Ok(Ordered::Object(fields))
            }
        }
        d.deserialize_any(V)
    }
}

/// Follows a local `$ref`, remembering the name of the last component it led to.
fn deref<'a>(
    doc: &'a Ordered,
    node: &'a Ordered,
    name: Option<String>,
) -> (Option<String>, &'a Ordered) {
    match node.get("$ref").and_then(Ordered::str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').expect("a local $ref"))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
            deref(doc, target, r.rsplit('/').next().map(str::to_owned))
        }
        None => (name, node),
    }
}

/// Whether a schema takes a JSON value of `kind` (`null`, `array`, `object`).
fn allows(schema: &Ordered, kind: &str) -> bool {
    match schema.get("type") {
        Some(Ordered::Str(t)) => t == kind,
        Some(Ordered::List(ts)) => ts.iter().any(|t| t.str() == Some(kind)),
        _ => kind == "object" && schema.get("properties").is_some(),
    }
}

/// Objects whose keys the service writes in alphabetical order rather than in their schema's:
/// the overview's schedule keeps the order the overview's first JSON map gave it.
const SORTED_KEYS: [&str; 1] = ["GET / 200.schedule"];

/// What each object schema lists and the fields answers had, by schema name (or place).
type Seen = std::collections::BTreeMap<String, (Vec<String>, std::collections::BTreeSet<String>)>;

/// Checks that every object in `value` has only fields its schema lists, in the schema's
/// order, and every field the schema requires; records the fields seen.
fn check_fields(doc: &Ordered, schema: &Ordered, at: &str, value: &Ordered, seen: &mut Seen) {
    let (name, schema) = deref(doc, schema, None);
    if let Some(Ordered::List(branches)) = schema.get("oneOf") {
        let kind = match value {
            Ordered::Null => "null",
            Ordered::Scalar | Ordered::Str(_) => return,
            Ordered::List(_) => "array",
            Ordered::Object(_) => "object",
        };
        let branch = branches
            .iter()
            .find(|b| allows(deref(doc, b, None).1, kind))
            .unwrap_or_else(|| panic!("{at}: no branch of the schema takes a {kind}"));
        return check_fields(doc, branch, at, value, seen);
    }
    match value {
        Ordered::Null => assert!(allows(schema, "null"), "{at} is null: {schema:?}"),
        Ordered::Scalar | Ordered::Str(_) => {}
        Ordered::List(items) => {
            let item_schema = schema.get("items").expect("an array schema has items");
            for (i, item) in items.iter().enumerate() {
                check_fields(doc, item_schema, &format!("{at}[{i}]"), item, seen);
            }
        }
        Ordered::Object(fields) => {
            let Some(Ordered::Object(properties)) = schema.get("properties") else {
                return; // a free-form object (`ctx`, a map)
            };
            let listed: Vec<String> = properties.iter().map(|(k, _)| k.clone()).collect();
            let sent: Vec<String> = fields.iter().map(|(k, _)| k.clone()).collect();
            let mut in_schema_order: Vec<String> = listed
                .iter()
                .filter(|k| sent.contains(k))
                .cloned()
                .collect();
            if SORTED_KEYS.contains(&at) {
                in_schema_order.sort();
            }
            assert_eq!(
                sent, in_schema_order,
                "{at}: the answer's fields are not the schema's (in its order {listed:?})"
            );
            if let Some(Ordered::List(required)) = schema.get("required") {
                for r in required.iter().filter_map(Ordered::str) {
                    assert!(
                        sent.iter().any(|k| k == r),
                        "{at}: the schema requires {r}, the answer has {sent:?}"
                    );
                }
            }
            let key = name.unwrap_or_else(|| at.to_owned());
            let entry = seen
                .entry(key)
                .or_insert_with(|| (listed, Default::default()));
            entry.1.extend(sent);
            for (k, v) in fields {
                let property = schema.get("properties").and_then(|p| p.get(k)).unwrap();
                check_fields(doc, property, &format!("{at}.{k}"), v, seen);
            }
        }
    }
}

#[tokio::test]
async fn every_answer_has_exactly_the_fields_its_schema_in_the_document_lists() {
    let mut w = World::start(Setup {
        server: format!("api_key: {KEY}"),
        ..Default::default()
    })
    .await;
    let doc: Ordered =
        serde_json::from_slice(&call(&w, Method::GET, "/openapi.json", None, b"").await.body)
            .unwrap();
    let mut seen = Seen::new();
    let mut checked = Vec::new();
    // Asks, and checks the answer against the schema the document gives for its status.
    let mut ask = async |w: &World, method: Method, path: &str, key: Option<&str>, body: &[u8]| {
        let a = call(w, method.clone(), path, key, body).await;
        let operation = path.split('?').next().unwrap_or(path);
        let schema = doc
            .get("paths")
            .and_then(|p| p.get(operation))
            .and_then(|p| p.get(&method.as_str().to_lowercase()))
            .and_then(|op| op.get("responses"))
            .and_then(|r| r.get(&a.status.to_string()))
            .map(|r| deref(&doc, r, None).1)
            .and_then(|r| r.get("content"))
            .and_then(|c| c.get("application/json"))
            .and_then(|c| c.get("schema"))
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path} answered {} with no schema in the document: {}",
                    a.status,
                    a.text()
                )
            });
        let value: Ordered = serde_json::from_slice(&a.body).unwrap();
        let at = format!("{method} {operation} {}", a.status);
        check_fields(&doc, schema, &at, &value, &mut seen);
        checked.push(at);
        a.json()
    };
    let k = Some(KEY);
    ask(&w, Method::GET, "/api/health", None, b"").await;
    ask(&w, Method::GET, "/api/charge/status", None, b"").await;
    ask(&w, Method::GET, "/api/charge/schedule", k, b"").await;
    ask(&w, Method::GET, "/", None, b"").await;
    for path in [
        "/api/charge/status",
        "/api/charging/status",
        "/api/charge/history",
        "/api/telemetry?hours=0",
    ] {
        ask(&w, Method::GET, path, k, b"").await;
    }
    let bad = br#"{"target_soc": 101, "start_time": "24:00", "enabled": "maybe"}"#;
    ask(&w, Method::POST, "/api/charge/schedule", k, bad).await;
    let huge = format!(
        r#"{{"target_soc": 80, "pad": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    ask(&w, Method::POST, "/api/charging/enable", k, huge.as_bytes()).await;
    let days = br#"{"target_soc": 85, "start_time": "04:30", "days": ["mon", "tue"]}"#;
    ask(&w, Method::POST, "/api/charge/schedule", k, days).await;
    ask(&w, Method::GET, "/api/charge/schedule", k, b"").await;
    ask(&w, Method::GET, "/", None, b"").await;
    let started = ask(
        &w,
        Method::POST,
        "/api/charging/enable",
        k,
        br#"{"target_soc": 80}"#,
    )
    .await;
    assert_eq!(started["success"], true, "{started}");
    w.tick(MIN).await;
    for path in [
        "/api/charge/status",
        "/api/charging/status",
        "/api/charge/schedule",
        "/api/telemetry?hours=1",
    ] {
        ask(&w, Method::GET, path, k, b"").await;
    }
    ask(&w, Method::GET, "/", None, b"").await;
    ask(&w, Method::POST, "/api/charging/disable", k, b"").await;
    w.wait_status(|st| st.session.is_none()).await;
    let history = ask(&w, Method::GET, "/api/charge/history", k, b"").await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    ask(&w, Method::DELETE, "/api/charge/schedule", k, b"").await;

    // A degraded health answer has its `reason`.
    w.app
        .as_ref()
        .unwrap()
        .engine
        .inject(EngineFault::Hang)
        .await;
    let health = async { ask(&w, Method::GET, "/api/health", None, b"").await };
    let moving_clock = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            w.clock.advance(Duration::from_secs(1));
        }
    };
    let degraded = tokio::time::timeout(GUARD, async {
        tokio::select! {
            h = health => h,
            _ = moving_clock => unreachable!(),
        }
    })
    .await
    .expect("health answers");
    assert_eq!(degraded["status"], "degraded", "{degraded}");
    w.kill();

    for must in [
        "GET /api/health 200",
        "GET /api/health 503",
        "GET /api/charge/status 200",
        "GET /api/charging/status 200",
        "GET /api/charge/schedule 200",
        "POST /api/charge/schedule 200",
        "POST /api/charge/schedule 422",
        "GET /api/telemetry 200",
        "GET /api/telemetry 422",
        "GET / 200",
    ] {
        assert!(checked.iter().any(|c| c == must), "{must} was not checked");
    }
    // Every field a schema lists was sent at least once, but those only a rare state brings.
    // (The cheapest-hours fields need a tariff and a battery in the config: tests/api/cheapest.rs.)
    let rare = [
        ("HistoryEntry", "restore_failures"),
        ("HistoryEntry", "cost"),
        ("HistoryEntry", "currency"),
        ("ScheduleResponse", "strategy"),
        ("ScheduleResponse", "ready_by"),
    ];
    for (schema, (listed, sent)) in &seen {
        for field in listed {
            assert!(
                sent.contains(field) || rare.contains(&(schema.as_str(), field.as_str())),
                "{schema} lists {field}, which no answer had (sent: {sent:?})"
            );
        }
    }
    for schema in [
        "Health",
        "ChargeStatus",
        "ChargingStatus",
        "ScheduleResponse",
        "Overview",
        "TelemetryWindow",
        "TelemetrySample",
    ] {
        assert!(
            seen.contains_key(schema),
            "{schema} was never checked: {seen:?}"
        );
    }
}

/// Runs the project's validator script on a saved document and answers; (passed, its output).
fn validate(spec: &Path, samples: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate-openapi.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(spec)
        .arg("--samples")
        .arg(samples)
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", script.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}
