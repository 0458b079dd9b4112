//! The `apns:` section (the old backend's, read unchanged, plus `endpoint` and `ca_file`) and
//! the `notifications:` section (ntfy and webhooks).
//!
//! APNs problems are warnings: an old file carries the section with placeholders, and a push
//! that cannot be sent must never keep the charger from starting; the device endpoints then
//! answer as the old backend did when push was not configured. The new `notifications:`
//! section is checked strictly: a wrong URL or event name is an error the owner sees at once.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::{Checker, kind};
use crate::domain::event::EventKind;

/// The `apns:` section as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApnsConfig {
    pub enabled: bool,
    pub key_path: Option<PathBuf>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    pub bundle_id: Option<String>,
    pub use_sandbox: bool,
    /// A base URL instead of Apple's host (tests, self-hosted gateways).
    pub endpoint: Option<String>,
    /// A PEM file of CA certificates to trust for that endpoint.
    pub ca_file: Option<PathBuf>,
}

impl ApnsConfig {
    /// Why push cannot be used as configured (beyond `enabled: false`), if it cannot.
    pub fn unusable(&self) -> Option<String> {
        let missing: Vec<&str> = [
            ("key_path", self.key_path.is_none()),
            ("key_id", self.key_id.is_none()),
            ("team_id", self.team_id.is_none()),
            ("bundle_id", self.bundle_id.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
        (!missing.is_empty()).then(|| format!("apns.{} missing", missing.join(", apns.")))
    }
}

/// `notifications.ntfy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtfyConfig {
    /// Server and topic, e.g. `https://ntfy.sh/my-battery`.
    pub url: String,
    pub token: Option<String>,
    /// 1 (min) to 5 (urgent); problems are sent at least at 4 (high).
    pub priority: u8,
    /// `None`: every event.
    pub events: Option<Vec<EventKind>>,
}

/// One of `notifications.webhooks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// Key of the `X-Solar-Signature` HMAC-SHA256.
    pub secret: Option<String>,
    pub events: Option<Vec<EventKind>>,
}

/// The `notifications:` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NotificationsConfig {
    pub ntfy: Option<NtfyConfig>,
    pub webhooks: Vec<WebhookConfig>,
}

/// ntfy's priority names, by number.
const PRIORITIES: [&str; 5] = ["min", "low", "default", "high", "urgent"];

pub(super) fn apns_section(c: &mut Checker, root: &Map<String, Value>) -> Option<ApnsConfig> {
    if !root.contains_key("apns") {
        return None;
    }
    let a = c.section(root, "apns");
    c.unknown_keys(
        "apns",
        &a,
        &[
            "enabled",
            "key_path",
            "key_id",
            "team_id",
            "bundle_id",
            "use_sandbox",
            "endpoint",
            "ca_file",
        ],
    );
    let out = ApnsConfig {
        enabled: c.bool(&a, "apns.enabled", false),
        key_path: c.opt_string(&a, "apns.key_path").map(PathBuf::from),
        key_id: c.opt_string(&a, "apns.key_id"),
        team_id: c.opt_string(&a, "apns.team_id"),
        bundle_id: c.opt_string(&a, "apns.bundle_id"),
        use_sandbox: c.bool(&a, "apns.use_sandbox", false),
        endpoint: c.opt_string(&a, "apns.endpoint"),
        ca_file: c.opt_string(&a, "apns.ca_file").map(PathBuf::from),
    };
    if let Some(url) = &out.endpoint
        && let Err(why) = check_url(url)
    {
        c.error("apns.endpoint", why);
    }
    if out.enabled {
        if let Some(why) = out.unusable() {
            c.warn("apns", format!("push notifications stay off: {why}"));
        }
        for (key, value) in [("key_id", &out.key_id), ("team_id", &out.team_id)] {
            if let Some(v) = value
                && (v.len() != 10 || !v.chars().all(|ch| ch.is_ascii_alphanumeric()))
            {
                c.warn(
                    &format!("apns.{key}"),
                    format!(
                        "{v:?} does not look like an Apple {key}: Apple's are 10 letters and digits"
                    ),
                );
            }
        }
    }
    Some(out)
}

pub(super) fn notifications_section(
    c: &mut Checker,
    root: &Map<String, Value>,
) -> NotificationsConfig {
    let n = c.section(root, "notifications");
    c.unknown_keys("notifications", &n, &["ntfy", "webhooks"]);
    let ntfy = match n.get("ntfy") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => ntfy(c, m),
        Some(other) => {
            c.error(
                "notifications.ntfy",
                format!("expected a mapping, found {}", kind(other)),
            );
            None
        }
    };
    let webhooks = match n.get("webhooks") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let path = format!("notifications.webhooks[{i}]");
                match item {
                    Value::Object(m) => webhook(c, m, &path),
                    other => {
                        c.error(
                            &path,
                            format!("expected a mapping with a url, found {}", kind(other)),
                        );
                        None
                    }
                }
            })
            .collect(),
        Some(other) => {
            c.error(
                "notifications.webhooks",
                format!("expected a list of webhooks, found {}", kind(other)),
            );
            Vec::new()
        }
    };
    NotificationsConfig { ntfy, webhooks }
}

fn ntfy(c: &mut Checker, m: &Map<String, Value>) -> Option<NtfyConfig> {
    c.unknown_keys(
        "notifications.ntfy",
        m,
        &["url", "token", "priority", "events"],
    );
    let url = c.req_string(m, "notifications.ntfy.url");
    if let Some(u) = &url {
        match check_url(u) {
            Err(why) => c.error("notifications.ntfy.url", why),
            Ok(()) if u.trim_end_matches('/').matches('/').count() < 3 => c.error(
                "notifications.ntfy.url",
                format!("{u:?} names no topic: expected the server and the topic, e.g. https://ntfy.sh/my-battery"),
            ),
            Ok(()) => {}
        }
    }
    let token = c.opt_string(m, "notifications.ntfy.token");
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 3,
        Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=5).contains(&p)) => {
            n.as_u64().unwrap_or(3) as u8
        }
        Some(Value::String(s)) => match PRIORITIES.iter().position(|p| p == s) {
            Some(i) => i as u8 + 1,
            None => match s.parse::<u8>() {
                Ok(p) if (1..=5).contains(&p) => p,
                _ => {
                    c.error(
                        "notifications.ntfy.priority",
                        format!("{s:?} is not an ntfy priority: expected 1 to 5, or one of {PRIORITIES:?}"),
                    );
                    3
                }
            },
        },
        Some(other) => {
            c.error(
                "notifications.ntfy.priority",
                format!("expected 1 to 5 or a priority name, found {}", kind(other)),
            );
            3
        }
    };
    let events = events(c, m, "notifications.ntfy.events");
    Some(NtfyConfig {
        url: url?,
        token,
        priority,
        events,
    })
}

fn webhook(c: &mut Checker, m: &Map<String, Value>, path: &str) -> Option<WebhookConfig> {
    c.unknown_keys(path, m, &["url", "secret", "events"]);
    let url = c.req_string(m, &format!("{path}.url"));
    if let Some(u) = &url
        && let Err(why) = check_url(u)
    {
        c.error(&format!("{path}.url"), why);
    }
    let secret = c.opt_string(m, &format!("{path}.secret"));
    let events = events(c, m, &format!("{path}.events"));
    Some(WebhookConfig {
        url: url?,
        secret,
        events,
    })
}

fn events(c: &mut Checker, m: &Map<String, Value>, path: &str) -> Option<Vec<EventKind>> {
    let names = c.string_list(m, path)?;
    let mut out = Vec::new();
    for name in names {
        match EventKind::parse(&name) {
            Some(k) if k != EventKind::Test => out.push(k),
            _ => c.error(
                path,
                format!(
                    "{name:?} is not an event: expected some of {}",
                    EventKind::ALL
                        .iter()
                        .filter(|k| **k != EventKind::Test)
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    Some(out)
}

/// An absolute http(s) URL with a host and no spaces.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.chars().any(char::is_whitespace) => {
            Ok(())
        }
        _ => Err(format!(
            "{url:?} is not a URL this service can call: expected http://HOST/... or https://HOST/..."
        )),
    }
}
