//! What the owner is told: one [`Event`] per thing that happened, made by the core in the same
//! step as the state change it describes and saved with it, so that a restart neither loses
//! nor repeats one.
//!
//! An event's `id` names the occurrence, not the moment it was noticed: a session's events are
//! `<session id>-<kind>`, a scheduled occurrence's `<occurrence>-<kind>`. When a crash makes the
//! core decide the same thing twice (a stop re-sent after a restart ends the same session
//! again), the second event has the same id, and the outbox, which keeps the ids it accepted,
//! drops it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::session::{Origin, StopReason};
use crate::domain::units::{Soc, TargetSoc};

/// The kinds of event, as named in the config's `events:` lists and on every channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// AC charging is on: the charge has begun.
    ChargeStarted,
    /// The charge reached its target.
    ChargeComplete,
    /// The charge ended for another reason (the reason is in the event).
    ChargeStopped,
    /// A charge could not start (why is in the event).
    ChargeFailed,
    /// A scheduled charge was not needed: the battery was already at the target.
    ChargeSkipped,
    /// A scheduled charge did not run: the service was down or the clock moved past it.
    ScheduleMissed,
    /// The dongle has been silent or offline for a while.
    DongleOffline,
    /// The dongle is heard again after an offline event.
    DongleOnline,
    /// The charge ended but some of the inverter's settings could not be put back.
    RestoreFailed,
    /// Sent on request, to check a channel.
    Test,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::ChargeStarted,
        EventKind::ChargeComplete,
        EventKind::ChargeStopped,
        EventKind::ChargeFailed,
        EventKind::ChargeSkipped,
        EventKind::ScheduleMissed,
        EventKind::DongleOffline,
        EventKind::DongleOnline,
        EventKind::RestoreFailed,
        EventKind::Test,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ChargeStarted => "charge_started",
            EventKind::ChargeComplete => "charge_complete",
            EventKind::ChargeStopped => "charge_stopped",
            EventKind::ChargeFailed => "charge_failed",
            EventKind::ChargeSkipped => "charge_skipped",
            EventKind::ScheduleMissed => "schedule_missed",
            EventKind::DongleOffline => "dongle_offline",
            EventKind::DongleOnline => "dongle_online",
            EventKind::RestoreFailed => "restore_failed",
            EventKind::Test => "test",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Something went wrong: channels send these louder (ntfy priority, alert sound).
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            EventKind::ChargeFailed
                | EventKind::ChargeStopped
                | EventKind::ScheduleMissed
                | EventKind::DongleOffline
                | EventKind::RestoreFailed
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing that happened, with what a message about it needs. Fields that do not apply are
/// `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub kind: EventKind,
    pub at: Timestamp,
    #[serde(default)]
    pub origin: Option<Origin>,
    #[serde(default)]
    pub target_soc: Option<TargetSoc>,
    /// The SOC when it happened (the final SOC of a finished charge).
    #[serde(default)]
    pub soc: Option<Soc>,
    /// The SOC the charge began at.
    #[serde(default)]
    pub start_soc: Option<Soc>,
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// A plain sentence: why it stopped, what failed.
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    #[serde(default)]
    pub energy_wh: Option<f64>,
}

impl Event {
    /// An event with only its identity; the caller fills in what applies.
    pub fn new(id: impl Into<String>, kind: EventKind, at: Timestamp) -> Event {
        Event {
            id: id.into(),
            kind,
            at,
            origin: None,
            target_soc: None,
            soc: None,
            start_soc: None,
            stop_reason: None,
            detail: None,
            started_at: None,
            energy_wh: None,
        }
    }

    /// A short title for a message about it.
    pub fn title(&self) -> &'static str {
        match self.kind {
            EventKind::ChargeStarted => "Charging Started",
            EventKind::ChargeComplete => "Charging Complete",
            EventKind::ChargeStopped => "Charging Stopped",
            EventKind::ChargeFailed => "Charge Did Not Start",
            EventKind::ChargeSkipped => "Charge Skipped",
            EventKind::ScheduleMissed => "Scheduled Charge Missed",
            EventKind::DongleOffline => "Dongle Offline",
            EventKind::DongleOnline => "Dongle Back Online",
            EventKind::RestoreFailed => "Inverter Settings Not Restored",
            EventKind::Test => "Test Notification",
        }
    }

    /// One or two plain sentences for a message about it.
    pub fn body(&self) -> String {
        let target = self.target_soc.map(|t| t.get());
        let soc = self.soc.map(|s| s.get());
        let detail = self.detail.as_deref().unwrap_or("");
        match self.kind {
            EventKind::ChargeStarted => match (soc, target) {
                (Some(s), Some(t)) => format!("Charging from {s}% to {t}%"),
                (None, Some(t)) => format!("Charging to {t}%"),
                _ => "Charging".into(),
            },
            EventKind::ChargeComplete => match (soc, target) {
                (Some(s), Some(t)) => format!("Battery reached {s}% (target: {t}%)"),
                (None, Some(t)) => format!("Battery reached the target of {t}%"),
                _ => "Battery reached the target".into(),
            },
            EventKind::ChargeStopped => {
                let at = match (soc, target) {
                    (Some(s), Some(t)) => format!("Stopped at {s}% (target: {t}%)"),
                    (None, Some(t)) => format!("Stopped before reaching {t}%"),
                    _ => "Stopped".into(),
                };
                sentence(at, detail)
            }
            EventKind::ChargeSkipped => match (soc, target) {
                (Some(s), Some(t)) => format!("Battery already at {s}% (target: {t}%)"),
                _ => sentence("Battery already at the target".into(), detail),
            },
            EventKind::ChargeFailed
            | EventKind::ScheduleMissed
            | EventKind::DongleOffline
            | EventKind::DongleOnline
            | EventKind::RestoreFailed
            | EventKind::Test => {
                if detail.is_empty() {
                    self.title().to_string()
                } else {
                    detail.to_string()
                }
            }
        }
    }
}

fn sentence(head: String, detail: &str) -> String {
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {detail}")
    }
}
