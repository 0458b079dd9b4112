//! What the service keeps on disk: the schedule and the running session, and the record of a
//! finished charge. Plain data; the store (`crate::store`) reads and writes it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::event::Event;
use crate::domain::night::Night;
use crate::domain::schedule::Schedule;
use crate::domain::session::{Origin, Session, StopReason};
use crate::domain::units::{Soc, TargetSoc};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub schedule: Option<Schedule>,
    pub session: Option<Session>,
    /// An earlier charge may have left AC charging on (its stop was never confirmed) though
    /// the owner had it off: the next charge puts it back off at its end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ac_maybe_left_on: bool,
    /// Events decided and not yet handed to the outbox (saved with the change they describe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// The owner was told the dongle is offline, and not yet that it is back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dongle_reported_offline: bool,
    /// A cheapest-hours charge in progress (between its runs too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub night: Option<Night>,
    /// The latest start of any charge session, and how many session ids had to be made unique
    /// after the clock was set back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_session_start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub session_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One finished charge, as kept in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub origin: Origin,
    pub target_soc: TargetSoc,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub start_soc: Option<Soc>,
    pub end_soc: Option<Soc>,
    pub stop_reason: Option<StopReason>,
    pub detail: Option<String>,
    pub energy_wh: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restore_failures: Vec<String>,
    /// A cheapest-hours run's cost: its energy at the prices of its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl SessionRecord {
    pub fn of(s: &Session, now: Timestamp) -> SessionRecord {
        SessionRecord {
            id: s.id.clone(),
            origin: s.origin,
            target_soc: s.target,
            started_at: s.started_at,
            ended_at: s.ended_at.unwrap_or(now),
            start_soc: s.start_soc,
            end_soc: s.last_soc,
            stop_reason: s.stop_reason,
            detail: s.detail.clone(),
            energy_wh: s.energy_wh.map(|e| (e * 10.0).round() / 10.0),
            restore_failures: s.restore_failures.clone(),
            cost: None,
            currency: None,
        }
    }
}
