//! A stand-in for an ntfy server and a webhook receiver: a real HTTP server on 127.0.0.1:0
//! that records every request, checks the webhook signature as a receiver would, and can be
//! switched "down" (503) and back.
//!
//! ntfy topics are served under `/ntfy/`, webhooks under `/hook/`. Waiting is on a watch of
//! the number of requests answered 200, with a real-time guard that only fails a test that
//! would otherwise hang.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::harness::GUARD;

/// One request answered 200.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Hook {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Hook>,
    attempts: usize,
    down: bool,
    violations: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    count: watch::Sender<usize>,
    secret: Option<String>,
}

pub struct HooksStandIn {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl HooksStandIn {
    /// Serves until dropped; webhooks must be signed with `secret` when one is given.
    pub async fn start(secret: Option<&str>) -> HooksStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            inner: Arc::default(),
            count: watch::channel(0).0,
            secret: secret.map(str::to_string),
        };
        let app = Router::new().fallback(record).with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HooksStandIn {
            url,
            shared,
            server,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.shared.inner.lock().unwrap().down = down;
    }

    pub fn attempts(&self) -> usize {
        self.shared.inner.lock().unwrap().attempts
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().violations.clone()
    }

    /// The requests answered 200 under `prefix` (`/ntfy/`, `/hook/`).
    pub fn received(&self, prefix: &str) -> Vec<Hook> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .received
            .iter()
            .filter(|h| h.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Waits until `n` requests under `prefix` have been answered 200.
    pub async fn wait_received(&self, prefix: &str, n: usize) -> Vec<Hook> {
        let mut rx = self.shared.count.subscribe();
        let waited = tokio::time::timeout(GUARD, async {
            loop {
                if self.received(prefix).len() >= n {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        let got = self.received(prefix);
        assert!(
            waited.is_ok() && got.len() >= n,
            "expected {n} requests under {prefix}, got {}: {got:#?}",
            got.len()
        );
        got
    }
}

impl Drop for HooksStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(s): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let path = uri.path().to_string();
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut inner = s.inner.lock().unwrap();
    inner.attempts += 1;
    if path.starts_with("/hook/") {
        if headers.get("content-type").map(String::as_str) != Some("application/json") {
            inner.violations.push(format!("{path}: not sent as JSON"));
        }
        if let Some(secret) = &s.secret {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(&body);
            let want: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let got = headers
                .get("x-solar-signature")
                .cloned()
                .unwrap_or_default();
            if got != format!("sha256={want}") {
                inner
                    .violations
                    .push(format!("{path}: signature {got:?} does not match the body"));
                return (StatusCode::UNAUTHORIZED, "bad signature");
            }
        }
    }
    if inner.down {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance");
    }
    inner.received.push(Hook {
        path,
        headers,
        body,
    });
    let n = inner.received.len();
    drop(inner);
    s.count.send_replace(n);
    (StatusCode::OK, "{\"id\":\"abc\"}")
}
