//! A stand-in for Apple's push service: a real HTTP/2 server over TLS on 127.0.0.1:0, with a
//! throwaway CA and server certificate and a provider key of its own, that checks each request
//! as Apple would (HTTP/2, path, provider token signature, headers, payload) and answers as
//! scripted per device token.
//!
//! A request that fails a check is recorded as a violation (tests assert there are none) and
//! answered as Apple answers a bad request. Waiting is on a watch of the received count, with
//! a real-time guard that only fails a test that would otherwise hang.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::harness::GUARD;

/// One push the stand-in answered with 200.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub token: String,
    pub payload: Value,
    pub push_type: String,
    pub priority: String,
    pub apns_id: Option<String>,
    pub collapse_id: Option<String>,
    /// The provider token's `iat` (unix seconds).
    pub iat: i64,
}

/// How the stand-in answers pushes to one device token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with an `apns-id`.
    Ok,
    /// 410 `{"reason":"Unregistered","timestamp":..}`.
    Unregistered,
    /// 400 `{"reason":"BadDeviceToken"}`.
    BadDeviceToken,
    /// 503 `{"reason":"ServiceUnavailable"}`.
    Down,
    /// 403 `{"reason":"ExpiredProviderToken"}`.
    ExpiredProviderToken,
}

pub struct ApnsStandIn {
    /// `https://127.0.0.1:PORT` (the certificate covers 127.0.0.1 and localhost).
    pub url: String,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The provider key (`AuthKey_<key id>.p8`, PKCS#8 PEM, P-256) whose public half the
    /// stand-in verifies tokens with.
    pub key_path: PathBuf,
    pub key_id: String,
    pub team_id: String,
    pub bundle_id: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

struct Shared {
    public_key: DecodingKey,
    key_id: String,
    team_id: String,
    bundle_id: String,
    state: Mutex<State>,
    received_count: watch::Sender<usize>,
}

#[derive(Default)]
struct State {
    answers: HashMap<String, Answer>,
    down: bool,
    received: Vec<Received>,
    attempts: usize,
    violations: Vec<String>,
    ids_issued: u64,
}

/// A request that Apple would refuse: what to answer and what to record.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    violation: String,
}

fn refuse(status: StatusCode, reason: &'static str, violation: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        violation: violation.into(),
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

impl ApnsStandIn {
    /// Writes a self-signed CA (`ca_file`) and a P-256 provider key (`key_path`) into `dir`
    /// and starts the server.
    pub async fn start(dir: &Path) -> ApnsStandIn {
        let key_id = "STANDIN001".to_owned();
        let team_id = "TEAMSTAND1".to_owned();
        let bundle_id = "com.generouscorp.Solar".to_owned();

        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "APNs stand-in CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);

        let server_key = KeyPair::generate().unwrap();
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "APNs stand-in");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let ca_file = dir.join("apns-stand-in-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();

        let provider_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key_path = dir.join(format!("AuthKey_{key_id}.p8"));
        std::fs::write(&key_path, provider_key.serialize_pem()).unwrap();
        solar_charging_backend::notify::apns::use_ring_for_jwts();
        let public_key =
            DecodingKey::from_ec_pem(provider_key.public_key_pem().as_bytes()).unwrap();

        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
        // Apple's hosts speak HTTP/2 alone.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            public_key,
            key_id: key_id.clone(),
            team_id: team_id.clone(),
            bundle_id: bundle_id.clone(),
            state: Mutex::new(State::default()),
            received_count: watch::channel(0).0,
        });
        let server = tokio::spawn(serve(listener, acceptor, shared.clone()));
        ApnsStandIn {
            url: format!("https://127.0.0.1:{port}"),
            ca_file,
            key_path,
            key_id,
            team_id,
            bundle_id,
            shared,
            server,
        }
    }

    /// Scripts the answer to pushes for `token` from now on (the default is [`Answer::Ok`]).
    pub fn answer(&self, token: &str, answer: Answer) {
        self.shared.state().answers.insert(token.to_owned(), answer);
    }

    /// While down, every request is answered 503 (it counts as attempted, not received).
    pub fn set_down(&self, down: bool) {
        self.shared.state().down = down;
    }

    /// The pushes answered with 200, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.state().received.clone()
    }

    /// Every request that reached the server, whatever its answer.
    pub fn attempts(&self) -> usize {
        self.shared.state().attempts
    }

    /// Waits until at least `n` pushes were answered with 200; panics with what it has after
    /// the guard's real time.
    pub async fn wait_received(&self, n: usize) -> Vec<Received> {
        let mut count = self.shared.received_count.subscribe();
        let reached = tokio::time::timeout(GUARD, count.wait_for(|c| *c >= n))
            .await
            .map(|_| ())
            .is_ok();
        if !reached {
            panic!(
                "the APNs stand-in received {} of {n} pushes within {GUARD:?} ({} attempts): \
                 {:?}; violations: {:?}",
                self.received().len(),
                self.attempts(),
                self.received(),
                self.violations()
            );
        }
        self.received()
    }

    /// The requests that failed a check, each said in a line.
    pub fn violations(&self) -> Vec<String> {
        self.shared.state().violations.clone()
    }

    /// The `apns:` section of a configuration file pointing at this server.
    pub fn config_yaml(&self) -> String {
        let quoted = |s: &str| serde_json::to_string(s).unwrap();
        format!(
            "apns:\n  enabled: true\n  key_path: {}\n  key_id: {}\n  team_id: {}\n  \
             bundle_id: {}\n  use_sandbox: false\n  endpoint: {}\n  ca_file: {}\n",
            quoted(&self.key_path.to_string_lossy()),
            quoted(&self.key_id),
            quoted(&self.team_id),
            quoted(&self.bundle_id),
            quoted(&self.url),
            quoted(&self.ca_file.to_string_lossy()),
        )
    }
}

impl Drop for ApnsStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            // A failed handshake (a client that does not trust the CA) is the client's
            // choice, not a violation.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if alpn.as_deref() != Some(b"h2") {
                shared.state().violations.push(format!(
                    "TLS connection without ALPN h2 (negotiated {:?})",
                    alpn.map(|p| String::from_utf8_lossy(&p).into_owned())
                ));
                return;
            }
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(request).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let checked = self.check(&parts, &body);
        let mut state = self.state();
        state.attempts += 1;
        let push = match checked {
            Ok(push) => push,
            Err(refusal) => {
                state.violations.push(refusal.violation);
                return reply(refusal.status, json!({ "reason": refusal.reason }));
            }
        };
        if state.down {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"reason": "ServiceUnavailable"}),
            );
        }
        let answer = state
            .answers
            .get(&push.token)
            .copied()
            .unwrap_or(Answer::Ok);
        match answer {
            Answer::Ok => {
                state.ids_issued += 1;
                let id = push.apns_id.clone().unwrap_or_else(|| {
                    format!("00000000-0000-4000-8000-{:012X}", state.ids_issued)
                });
                state.received.push(push);
                let count = state.received.len();
                drop(state);
                self.received_count.send_replace(count);
                let mut response = Response::new(Full::new(Bytes::new()));
                response
                    .headers_mut()
                    .insert("apns-id", id.parse().unwrap());
                response
            }
            Answer::Unregistered => reply(
                StatusCode::GONE,
                json!({"reason": "Unregistered", "timestamp": jiff::Timestamp::now().as_millisecond()}),
            ),
            Answer::BadDeviceToken => {
                reply(StatusCode::BAD_REQUEST, json!({"reason": "BadDeviceToken"}))
            }
            Answer::Down => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"reason": "ServiceUnavailable"}),
            ),
            Answer::ExpiredProviderToken => reply(
                StatusCode::FORBIDDEN,
                json!({"reason": "ExpiredProviderToken"}),
            ),
        }
    }

    /// Apple's checks of one request, in the order it makes them.
    fn check(&self, parts: &Parts, body: &[u8]) -> Result<Received, Refusal> {
        let bad = StatusCode::BAD_REQUEST;
        let forbidden = StatusCode::FORBIDDEN;
        if parts.version != Version::HTTP_2 {
            return Err(refuse(
                bad,
                "BadProtocol",
                format!("{:?} instead of HTTP/2", parts.version),
            ));
        }
        if parts.method != Method::POST {
            return Err(refuse(
                bad,
                "MethodNotAllowed",
                format!("method {} instead of POST", parts.method),
            ));
        }
        let path = parts.uri.path();
        let token = path
            .strip_prefix("/3/device/")
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| refuse(bad, "BadPath", format!("path {path}")))?
            .to_owned();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("<not text>").to_owned())
        };

        let authorization = header("authorization")
            .ok_or_else(|| refuse(forbidden, "MissingProviderToken", "no authorization header"))?;
        let jwt = authorization.strip_prefix("bearer ").ok_or_else(|| {
            refuse(
                forbidden,
                "InvalidProviderToken",
                "authorization is not `bearer <token>`",
            )
        })?;
        let invalid = |what: String| refuse(forbidden, "InvalidProviderToken", what);
        let jwt_header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| invalid(format!("provider token header: {e}")))?;
        if jwt_header.alg != Algorithm::ES256 {
            return Err(invalid(format!("provider token alg {:?}", jwt_header.alg)));
        }
        if jwt_header.kid.as_deref() != Some(self.key_id.as_str()) {
            return Err(invalid(format!(
                "provider token kid {:?} instead of {}",
                jwt_header.kid, self.key_id
            )));
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(jwt, &self.public_key, &validation)
            .map_err(|e| invalid(format!("provider token signature or claims: {e}")))?
            .claims;
        if claims.iss != self.team_id {
            return Err(invalid(format!(
                "provider token iss {} instead of {}",
                claims.iss, self.team_id
            )));
        }

        match header("apns-topic") {
            None => return Err(refuse(bad, "MissingTopic", "no apns-topic")),
            Some(topic) if topic != self.bundle_id => {
                return Err(refuse(bad, "BadTopic", format!("apns-topic {topic}")));
            }
            Some(_) => {}
        }
        let push_type = header("apns-push-type").unwrap_or_default();
        let expected_priority = match push_type.as_str() {
            "alert" => "10",
            "background" => "5",
            other => {
                return Err(refuse(
                    bad,
                    "InvalidPushType",
                    format!("apns-push-type {other:?}"),
                ));
            }
        };
        let priority = header("apns-priority").unwrap_or_default();
        if priority != expected_priority {
            return Err(refuse(
                bad,
                "BadPriority",
                format!("apns-priority {priority:?} for a {push_type} push"),
            ));
        }
        let apns_id = header("apns-id");
        if let Some(id) = &apns_id
            && !is_uuid(id)
        {
            return Err(refuse(bad, "BadMessageId", format!("apns-id {id:?}")));
        }
        let collapse_id = header("apns-collapse-id");
        if let Some(id) = &collapse_id
            && id.len() > 64
        {
            return Err(refuse(
                bad,
                "BadCollapseId",
                "apns-collapse-id over 64 bytes",
            ));
        }
        if body.is_empty() {
            return Err(refuse(bad, "PayloadEmpty", "empty body"));
        }
        let payload: Value = serde_json::from_slice(body)
            .map_err(|e| refuse(bad, "BadPayload", format!("body is not JSON: {e}")))?;
        if !payload.get("aps").is_some_and(Value::is_object) {
            return Err(refuse(
                bad,
                "BadPayload",
                format!("body has no aps object: {payload}"),
            ));
        }
        Ok(Received {
            token,
            payload,
            push_type,
            priority,
            apns_id,
            collapse_id,
            iat: claims.iat,
        })
    }
}

/// The canonical text form of a UUID, as Apple wants `apns-id`.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    response
}
