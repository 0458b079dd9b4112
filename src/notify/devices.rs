//! The iPhone app's registered devices, kept in `devices.json` so that a restart does not
//! silence the app (the old backend kept them in memory only).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::event::EventKind;

pub const DEVICES_FILE: &str = "devices.json";
const FORMAT_VERSION: u32 = 1;
/// The preference that governs this service's pushes.
pub const CHARGE_PREFERENCE: &str = "ac_charging_notifications";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// The APNs device token, lower-case hex.
    pub token: String,
    /// As the app sent them (booleans; unknown keys kept).
    #[serde(default)]
    pub preferences: Map<String, Value>,
    pub registered_at: Timestamp,
}

impl Device {
    /// Whether this phone wants to hear of `kind`: every event here is about AC charging, so
    /// the app's `ac_charging_notifications` switch governs them all (on unless set false).
    pub fn wants(&self, kind: EventKind) -> bool {
        kind == EventKind::Test
            || self.preferences.get(CHARGE_PREFERENCE) != Some(&Value::Bool(false))
    }

    /// The token as logs show it: its first 8 characters.
    pub fn short(&self) -> String {
        short_token(&self.token)
    }
}

pub fn short_token(token: &str) -> String {
    format!("{}…", &token[..token.len().min(8)])
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Devices {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// A token as the old backend accepted it: non-empty hex (whole bytes). Returned lower-case.
pub fn parse_token(token: &str) -> Option<String> {
    let t = token.trim();
    (!t.is_empty() && t.len().is_multiple_of(2) && t.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| t.to_ascii_lowercase())
}

impl Devices {
    pub fn decode(bytes: &[u8]) -> Result<Devices, String> {
        let d: Devices = serde_json::from_slice(bytes).map_err(|e| format!("not valid: {e}"))?;
        if d.version > FORMAT_VERSION {
            return Err(format!(
                "written by a newer version of this service (format {})",
                d.version
            ));
        }
        Ok(d)
    }

    pub fn encode(&self) -> Vec<u8> {
        let d = Devices {
            version: FORMAT_VERSION,
            ..self.clone()
        };
        serde_json::to_vec_pretty(&d).expect("devices serialize")
    }

    /// Registers a token, or updates a known one's preferences (when given).
    pub fn register(
        &mut self,
        token: String,
        preferences: Option<Map<String, Value>>,
        now: Timestamp,
    ) {
        match self.devices.iter_mut().find(|d| d.token == token) {
            Some(d) => {
                if let Some(p) = preferences {
                    d.preferences = p;
                }
            }
            None => self.devices.push(Device {
                token,
                preferences: preferences.unwrap_or_default(),
                registered_at: now,
            }),
        }
    }

    /// Forgets a token; whether it was known.
    pub fn unregister(&mut self, token: &str) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.token != token);
        before != self.devices.len()
    }
}

#[cfg(test)]
mod tests;
