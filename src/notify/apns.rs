//! The APNs provider: token-based authentication and HTTP/2 delivery to Apple.
//!
//! One [`ApnsClient`] per configured app: it signs a provider token (an ES256 JWT made with
//! the app developer's `.p8` key) and reuses it for 50 minutes, and it POSTs each push to
//! `{host}/3/device/{token}` over one pooled HTTP/2 connection. Apple speaks only HTTP/2, so
//! the TLS configuration offers `h2` alone through ALPN and the client never falls back to
//! HTTP/1.1.
//!
//! Each answer becomes an [`ApnsOutcome`] that tells the caller what to do next: the message
//! was delivered, the device token is dead, the message is worth sending again later, or Apple
//! refused the message for good. [`classify`] is that decision, kept pure.
//!
//! Device tokens are never logged in full (their first 8 characters at most) and the provider
//! token never at all.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject};
use serde::{Deserialize, Serialize};

/// Apple's production host, for apps installed from the App Store or TestFlight.
pub const PRODUCTION_HOST: &str = "https://api.push.apple.com";
/// Apple's development host, for builds signed with a development profile.
pub const SANDBOX_HOST: &str = "https://api.sandbox.push.apple.com";

/// A provider token is reused until it is this old. Apple rejects tokens older than one hour
/// (`ExpiredProviderToken`), so this leaves ten minutes for clock differences.
const TOKEN_REUSE: SignedDuration = SignedDuration::from_mins(50);
/// Apple rejects a new provider token made sooner than this after the previous one
/// (`TooManyProviderTokenUpdates`): a token younger than this is kept even when Apple calls it
/// expired or invalid, since replacing it would only add that rejection.
const TOKEN_MIN_LIFETIME: SignedDuration = SignedDuration::from_mins(20);
/// How much of a non-JSON error body goes into a reason.
const BODY_EXCERPT_CHARS: usize = 200;

/// The `apns:` section of the configuration, as far as the provider needs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApnsSettings {
    /// The app developer's token-signing key (`AuthKey_<key id>.p8`: PKCS#8 PEM, P-256).
    pub key_path: PathBuf,
    /// The key's 10-character id (the JWT header's `kid`).
    pub key_id: String,
    /// The developer team's 10-character id (the JWT's `iss`).
    pub team_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub bundle_id: String,
    /// Apple's development host instead of the production one.
    #[serde(default)]
    pub use_sandbox: bool,
    /// A base URL used instead of Apple's host (tests, gateways).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A PEM file of CA certificates trusted in addition to the bundled Mozilla roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The kind of push, which fixes the `apns-push-type` and `apns-priority` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushType {
    /// Shown to the user: priority 10 (immediately).
    Alert,
    /// Content-available only: priority 5 (when the device sees fit), as Apple requires.
    Background,
}

impl PushType {
    /// The `apns-push-type` header's value.
    pub fn header_value(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
        }
    }

    /// The `apns-priority` header's value.
    pub fn priority(self) -> &'static str {
        match self {
            PushType::Alert => "10",
            PushType::Background => "5",
        }
    }
}

/// One message for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct ApnsPush {
    /// The JSON body: an `aps` object plus the app's own keys.
    pub payload: serde_json::Value,
    pub push_type: PushType,
    /// A UUID (canonical text form) sent as `apns-id`; Apple echoes it, and a caller that
    /// keeps it across retries lets Apple's answers be matched to the message.
    pub apns_id: Option<String>,
    /// `apns-collapse-id`: a newer push with the same id replaces an undelivered older one.
    pub collapse_id: Option<String>,
}

impl ApnsPush {
    /// An alert push without an id or collapse id.
    pub fn alert(payload: serde_json::Value) -> ApnsPush {
        ApnsPush {
            payload,
            push_type: PushType::Alert,
            apns_id: None,
            collapse_id: None,
        }
    }

    /// A background push without an id or collapse id.
    pub fn background(payload: serde_json::Value) -> ApnsPush {
        ApnsPush {
            push_type: PushType::Background,
            ..ApnsPush::alert(payload)
        }
    }
}

/// What became of one push, and so what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApnsOutcome {
    /// Apple accepted the push; `apns_id` is the id it answered with.
    Delivered { apns_id: Option<String> },
    /// 410 Unregistered, 400 BadDeviceToken, 400 DeviceTokenNotForTopic: the caller removes
    /// the token.
    DropToken { reason: String },
    /// Worth sending again later: network errors, timeouts, 5xx, 429 TooManyRequests, 403
    /// Expired/InvalidProviderToken (after the cached JWT was invalidated), with Apple's
    /// reason; `after` when known.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Apple refused this message for good (other 4xx, e.g. PayloadTooLarge, BadTopic): drop
    /// the message, keep the token. `status` is 0 when the request could not even be built
    /// (a header value that HTTP does not allow).
    Failed { status: u16, reason: String },
}

/// Reads and checks the `.p8` key (PKCS#8 PEM, P-256): a clear one-line error otherwise (file
/// missing or unreadable, not PEM, not a P-256 EC key). Used by `check-config` too.
pub fn check_key(path: &Path) -> Result<(), String> {
    load_key(path).map(|_| ())
}

/// Reads the key and proves it signs ES256, which only a P-256 key in PKCS#8 form does.
fn load_key(path: &Path) -> Result<EncodingKey, String> {
    use_ring_for_jwts();
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| format!("APNs key {shown}: cannot read it: {e}"))?;
    let der = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(PrivateKeyDer::Pkcs8(der)) => der,
        Ok(PrivateKeyDer::Pkcs1(_)) => {
            return Err(format!(
                "APNs key {shown}: an RSA key (BEGIN RSA PRIVATE KEY), not the P-256 EC key \
                 in PKCS#8 form that Apple issues as AuthKey_<key id>.p8"
            ));
        }
        Ok(PrivateKeyDer::Sec1(_)) => {
            return Err(format!(
                "APNs key {shown}: an EC key in SEC1 form (BEGIN EC PRIVATE KEY), not PKCS#8 \
                 (BEGIN PRIVATE KEY); `openssl pkcs8 -topk8 -nocrypt` converts it"
            ));
        }
        Ok(_) => {
            return Err(format!(
                "APNs key {shown}: an unsupported kind of private key"
            ));
        }
        Err(pem::Error::NoItemsFound) if contains(&bytes, b"-----BEGIN ") => {
            return Err(format!(
                "APNs key {shown}: a PEM file without a private key (a certificate or a \
                 public key?)"
            ));
        }
        Err(pem::Error::NoItemsFound) => {
            return Err(format!(
                "APNs key {shown}: not a PEM file (expected -----BEGIN PRIVATE KEY-----)"
            ));
        }
        Err(e) => return Err(format!("APNs key {shown}: not a valid PEM file: {e}")),
    };
    let key = EncodingKey::from_ec_der(der.secret_pkcs8_der());
    jsonwebtoken::crypto::sign(b"APNs key check", &key, Algorithm::ES256).map_err(|_| {
        format!("APNs key {shown}: not a P-256 EC private key (APNs provider tokens are ES256)")
    })?;
    Ok(key)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Makes ES256 through `ring` the process's JWT cryptography (see [`es256`]); whoever signs or
/// checks a provider token calls this first. Idempotent.
pub fn use_ring_for_jwts() {
    es256::install();
}

/// The JWT's claims: the team and the time of issue, nothing else (Apple wants no `exp`).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

/// Signs provider tokens and keeps the current one.
struct ProviderTokens {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    current: Mutex<Option<CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    jwt: String,
    issued_at: Timestamp,
}

impl CachedToken {
    fn age(&self, now: Timestamp) -> SignedDuration {
        now.duration_since(self.issued_at)
    }
}

impl ProviderTokens {
    fn new(key: EncodingKey, key_id: String, team_id: String) -> ProviderTokens {
        ProviderTokens {
            key,
            key_id,
            team_id,
            current: Mutex::new(None),
        }
    }

    /// The token to send at `now`: the cached one while it is younger than 50 minutes, else a
    /// new one issued at `now` (whole seconds). A cached token from the future (the clock was
    /// set back) is replaced too: Apple would count its age from the later time.
    fn bearer(&self, now: Timestamp) -> Result<String, String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = current.as_ref() {
            let age = token.age(now);
            if !age.is_negative() && age < TOKEN_REUSE {
                return Ok(token.jwt.clone());
            }
        }
        let issued_at = Timestamp::from_second(now.as_second())
            .map_err(|e| format!("APNs provider token: bad time {now}: {e}"))?;
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: self.team_id.clone(),
            iat: issued_at.as_second(),
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("APNs provider token: signing failed: {e}"))?;
        tracing::debug!(iat = claims.iat, "APNs provider token issued");
        *current = Some(CachedToken {
            jwt: jwt.clone(),
            issued_at,
        });
        Ok(jwt)
    }

    /// Apple called the current token expired or invalid at `now`: drop it when it is at least
    /// 20 minutes old or from the future (the next send signs a new one), else keep it, as a
    /// new one would be refused as too frequent an update. Returns whether it was dropped.
    fn rejected(&self, now: Timestamp) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let drop = current.as_ref().is_some_and(|token| {
            token.age(now) >= TOKEN_MIN_LIFETIME || token.age(now).is_negative()
        });
        if drop {
            *current = None;
        }
        drop
    }
}

/// The APNs provider for one app: its key, its topic and one HTTP/2 client.
pub struct ApnsClient {
    http: reqwest::Client,
    host: String,
    bundle_id: String,
    tokens: ProviderTokens,
}

impl fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsClient")
            .field("host", &self.host)
            .field("bundle_id", &self.bundle_id)
            .field("key_id", &self.tokens.key_id)
            .field("team_id", &self.tokens.team_id)
            .finish_non_exhaustive()
    }
}

impl ApnsClient {
    /// Reads the key, builds one reqwest client: rustls with the ring provider, roots =
    /// webpki-roots plus the PEM certificates of `ca_file` when given; HTTP/2 only (ALPN h2),
    /// connect timeout 10 s, request timeout 15 s. Host = `endpoint` (trailing `/` trimmed) or
    /// Apple's sandbox or production host by `use_sandbox`.
    pub fn new(settings: ApnsSettings) -> Result<ApnsClient, String> {
        let key = load_key(&settings.key_path)?;
        let host = match settings.endpoint.as_deref() {
            Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
            None if settings.use_sandbox => SANDBOX_HOST.to_owned(),
            None => PRODUCTION_HOST.to_owned(),
        };
        match reqwest::Url::parse(&host) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => {}
            Ok(url) => {
                return Err(format!(
                    "APNs endpoint {host}: scheme {} is not https",
                    url.scheme()
                ));
            }
            Err(e) => return Err(format!("APNs endpoint {host}: not a URL: {e}")),
        }
        let http = super::https::client(settings.ca_file.as_deref(), true)
            .map_err(|e| format!("APNs: {e}"))?;
        Ok(ApnsClient {
            http,
            host,
            bundle_id: settings.bundle_id,
            tokens: ProviderTokens::new(key, settings.key_id, settings.team_id),
        })
    }

    /// The base URL pushes go to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// POST `{host}/3/device/{token}` with `authorization: bearer <JWT>`, `apns-topic`,
    /// `apns-push-type`, `apns-priority`, the optional `apns-id` / `apns-collapse-id`, and the
    /// JSON body. `now` is the wall clock (the service's clock is injected; the JWT's `iat`
    /// uses it).
    pub async fn send(&self, device_token: &str, push: &ApnsPush, now: Timestamp) -> ApnsOutcome {
        let shown = token_prefix(device_token);
        if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
            tracing::info!(token = %shown, "APNs device token is not hex: dropping it");
            return ApnsOutcome::DropToken {
                reason: "BadDeviceToken (not a hex string)".to_owned(),
            };
        }
        let jwt = match self.tokens.bearer(now) {
            Ok(jwt) => jwt,
            Err(reason) => {
                return ApnsOutcome::Retry {
                    reason,
                    after: None,
                };
            }
        };
        let mut request = self
            .http
            .post(format!("{}/3/device/{device_token}", self.host))
            .header(reqwest::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", &self.bundle_id)
            .header("apns-push-type", push.push_type.header_value())
            .header("apns-priority", push.push_type.priority())
            .json(&push.payload);
        if let Some(id) = &push.apns_id {
            request = request.header("apns-id", id);
        }
        if let Some(id) = &push.collapse_id {
            request = request.header("apns-collapse-id", id);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let builder = e.is_builder();
                let reason = describe_transport_error(e).replace(device_token, &shown);
                if builder {
                    tracing::warn!(token = %shown, %reason, "APNs push could not be built");
                    return ApnsOutcome::Failed { status: 0, reason };
                }
                tracing::debug!(token = %shown, %reason, "APNs push not sent");
                return ApnsOutcome::Retry {
                    reason,
                    after: None,
                };
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let apns_id = headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        let body = if response.status().is_success() {
            Vec::new()
        } else {
            response
                .bytes()
                .await
                .map(|b| b.to_vec())
                .unwrap_or_default()
        };
        let outcome = classify(status, apns_id, &body, retry_after);
        match &outcome {
            ApnsOutcome::Delivered { apns_id } => {
                tracing::debug!(token = %shown, apns_id = ?apns_id, "APNs push delivered");
            }
            ApnsOutcome::DropToken { reason } => {
                tracing::info!(token = %shown, status, %reason, "APNs device token is dead");
            }
            ApnsOutcome::Retry { reason, .. } => {
                if status == 403 && is_provider_token_reason(reason) {
                    let dropped = self.tokens.rejected(now);
                    tracing::warn!(
                        status,
                        %reason,
                        renewed = dropped,
                        "APNs refused the provider token"
                    );
                } else {
                    tracing::debug!(token = %shown, status, %reason, "APNs push to be retried");
                }
            }
            ApnsOutcome::Failed { status, reason } => {
                tracing::warn!(token = %shown, status, %reason, "APNs refused the push");
            }
        }
        outcome
    }
}

/// What an answer from Apple means for the caller, from its status, its `apns-id` header, its
/// body (`{"reason": "..."}`, or anything else) and its `Retry-After`.
pub fn classify(
    status: u16,
    apns_id: Option<String>,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ApnsOutcome {
    if (200..300).contains(&status) {
        return ApnsOutcome::Delivered { apns_id };
    }
    let reason = reason_of(status, body);
    let retry = |reason| ApnsOutcome::Retry {
        reason,
        after: retry_after,
    };
    match status {
        410 => ApnsOutcome::DropToken { reason },
        400 if matches!(reason.as_str(), "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            ApnsOutcome::DropToken { reason }
        }
        403 if is_provider_token_reason(&reason) => retry(reason),
        // 408 is no answer of Apple's but of something in between: the message was fine.
        408 | 429 | 500..=599 => retry(reason),
        400..=499 => ApnsOutcome::Failed { status, reason },
        // 1xx and 3xx are not Apple's either.
        _ => retry(reason),
    }
}

fn is_provider_token_reason(reason: &str) -> bool {
    matches!(reason, "ExpiredProviderToken" | "InvalidProviderToken")
}

/// Apple's `reason`, or the status with an excerpt of whatever else the body was.
fn reason_of(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        reason: String,
    }
    if let Ok(ErrorBody { reason }) = serde_json::from_slice::<ErrorBody>(body)
        && !reason.trim().is_empty()
    {
        return reason;
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(BODY_EXCERPT_CHARS)
        .collect();
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// A `Retry-After` value: whole seconds, or an HTTP date (how long after `now`; zero when it
/// has passed).
fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    static PARSER: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    let at = PARSER.parse_timestamp(value).ok()?;
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The first 8 characters of a device token: enough to tell tokens apart in a log.
fn token_prefix(device_token: &str) -> String {
    device_token.chars().take(8).collect()
}

/// A transport error as one line: reqwest's words without the URL (it holds the device token),
/// then each cause (for TLS, rustls says what was wrong with the certificate).
fn describe_transport_error(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let text = super::https::error_chain(&e.without_url());
    if timeout && !text.contains("timed out") {
        format!("timed out: {text}")
    } else {
        text
    }
}

mod es256;
#[cfg(test)]
mod tests;
