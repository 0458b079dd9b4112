//! The dongle's verified-write protocol as a pure state machine: requests (a write, a read of
//! the settings, a refresh), the messages the dongle sends and the time go in; what to publish
//! and the outcome of each request come out. No IO and no clock: the MQTT client
//! ([`crate::dongle::client`]) drives it, and so can a simulator.
//!
//! One request at a time, in order. A write waits until `min_write_interval` after the last
//! one (the dongle handles one write in flight), publishes `update` and waits for the matching
//! `response` (or a `setting/updated` carrying the value). With no answer within
//! `write_timeout` the outcome is not known yet: a write that timed out has been seen to apply
//! 15 s later, so the value is read back (a snapshot request on >= 4.3, the next hold bank on
//! older firmware) for `readback_timeout`, listening the whole time for the value to appear.
//! Only a read-back that still differs at its end leads to a retry (at most `max_retries`);
//! no read-back at all reports the outcome as unknown.
//!
//! It also keeps the hold-register cache (banks, deltas, snapshots and confirmed writes merged)
//! from which the pre-charge snapshot is answered.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::domain::core::Freshness;
use crate::domain::session::{WriteResult, value_like};
use crate::domain::units::{SettingValue, TimeFormat};
use crate::dongle::codec::{
    self, Fields, Message, RawValue, encode_snapshot_request, encode_update, read_back_matches,
};

/// What the protocol needs from config.
#[derive(Debug, Clone)]
pub struct ProtocolConfig {
    pub write_timeout: Duration,
    pub min_write_interval: Duration,
    pub readback_timeout: Duration,
    /// Retries of a write whose read-back differs (0 = no retry).
    pub max_retries: u32,
    pub time_format: TimeFormat,
}

/// Firmware generation, learnt from the topics the dongle publishes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Unknown,
    /// < 4.3: `inputbankN`/`holdbankN`, no read request.
    Legacy,
    /// >= 4.3: `input`/`hold` deltas, `snapshot/request`, `setting/updated`.
    Modern,
}

/// Something asked of the dongle.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Write {
        setting: String,
        value: SettingValue,
    },
    Snapshot {
        settings: Vec<String>,
        fresh: Freshness,
    },
    /// Ask a >= 4.3 dongle for a full dump; nothing waits for it.
    Refresh,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Publish `payload` on `<prefix>/<suffix>` (QoS 1, not retained).
    Publish {
        suffix: &'static str,
        payload: Vec<u8>,
    },
    /// The outcome of the oldest write request.
    WriteDone(WriteResult),
    /// The answer to the oldest snapshot request.
    SnapshotDone(Option<BTreeMap<String, SettingValue>>),
}

/// A message from the dongle, as the protocol sees it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// The topic under the dongle's prefix, e.g. `response`, `holdbank1`.
    pub suffix: &'a str,
    pub retained: bool,
    pub message: &'a Message,
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Waiting for the spacing after the last write.
    Spacing { until: Duration },
    /// Sent; waiting for the answer.
    Awaiting { deadline: Duration },
    /// No answer: reading the value back.
    ReadingBack {
        deadline: Duration,
        differs: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Write {
        setting: String,
        value: SettingValue,
        attempt: u32,
        stage: Stage,
    },
    Snapshot {
        settings: Vec<String>,
        deadline: Duration,
        got_fresh: bool,
    },
}

/// The protocol's state (see the module docs).
#[derive(Debug)]
pub struct WriteProtocol {
    cfg: ProtocolConfig,
    cache: Fields,
    firmware: Firmware,
    last_write: Option<Duration>,
    connected: bool,
    queue: VecDeque<Request>,
    op: Option<Op>,
}

impl WriteProtocol {
    pub fn new(cfg: ProtocolConfig) -> WriteProtocol {
        WriteProtocol {
            cfg,
            cache: Fields::default(),
            firmware: Firmware::Unknown,
            last_write: None,
            connected: false,
            queue: VecDeque::new(),
            op: None,
        }
    }

    /// The broker connection's state; a write is not sent without one.
    pub fn set_connected(&mut self, up: bool) {
        self.connected = up;
    }

    /// The hold registers as last reported.
    pub fn cache(&self) -> &Fields {
        &self.cache
    }

    /// When [`WriteProtocol::on_timer`] must be called at the latest.
    pub fn next_deadline(&self) -> Option<Duration> {
        match &self.op {
            Some(Op::Write { stage, .. }) => Some(match stage {
                Stage::Spacing { until } => *until,
                Stage::Awaiting { deadline } | Stage::ReadingBack { deadline, .. } => *deadline,
            }),
            Some(Op::Snapshot { deadline, .. }) => Some(*deadline),
            None => None,
        }
    }

    pub fn request(&mut self, r: Request, now: Duration) -> Vec<Out> {
        self.queue.push_back(r);
        let mut out = Vec::new();
        self.begin_next(now, &mut out);
        out
    }

    pub fn on_timer(&mut self, now: Duration) -> Vec<Out> {
        let mut out = Vec::new();
        self.advance(now, None, &mut out);
        out
    }

    pub fn on_message(&mut self, m: Inbound<'_>, now: Duration) -> Vec<Out> {
        self.absorb(&m);
        let mut out = Vec::new();
        self.advance(now, Some(m), &mut out);
        out
    }

    /// The last [`Out::Publish`] could not be handed to the client.
    pub fn publish_failed(&mut self, why: String, now: Duration) -> Vec<Out> {
        let mut out = Vec::new();
        if let Some(Op::Write {
            stage: Stage::Awaiting { .. },
            ..
        }) = &self.op
        {
            self.op = None;
            out.push(Out::WriteDone(WriteResult::NotSent(why)));
            self.begin_next(now, &mut out);
        }
        out
    }

    fn absorb(&mut self, m: &Inbound<'_>) {
        let s = m.suffix;
        if s.starts_with("inputbank") || s.starts_with("holdbank") {
            self.firmware = Firmware::Legacy;
        } else if matches!(s, "input" | "hold" | "setting/updated") || s.starts_with("snap/") {
            self.firmware = Firmware::Modern;
        }
        match m.message {
            Message::Settings(f) | Message::SettingUpdated(f) => self.cache.merge(f),
            Message::Status { version: Some(v) } if version_at_least_4_3(v) => {
                self.firmware = Firmware::Modern
            }
            _ => {}
        }
    }

    fn snapshot_request(&self) -> Out {
        Out::Publish {
            suffix: "snapshot/request",
            payload: encode_snapshot_request(),
        }
    }

    /// Starts queued requests until one has to wait.
    fn begin_next(&mut self, now: Duration, out: &mut Vec<Out>) {
        while self.op.is_none() {
            let Some(r) = self.queue.pop_front() else {
                return;
            };
            match r {
                Request::Refresh => {
                    if self.firmware != Firmware::Legacy && self.connected {
                        out.push(self.snapshot_request());
                    }
                }
                Request::Snapshot { settings, fresh } => {
                    if fresh == Freshness::Cached {
                        out.push(Out::SnapshotDone(self.snapshot_from_cache(&settings)));
                        continue;
                    }
                    let fresh_needed = self.firmware != Firmware::Legacy;
                    if fresh_needed && self.connected {
                        out.push(self.snapshot_request());
                    }
                    self.op = Some(Op::Snapshot {
                        settings,
                        deadline: now + self.cfg.readback_timeout,
                        got_fresh: !fresh_needed,
                    });
                    self.advance(now, None, out);
                }
                Request::Write { setting, value } => {
                    let until = self
                        .last_write
                        .map_or(now, |l| l + self.cfg.min_write_interval);
                    self.op = Some(Op::Write {
                        setting,
                        value,
                        attempt: 1,
                        stage: Stage::Spacing { until },
                    });
                    self.advance(now, None, out);
                }
            }
        }
    }

    /// Moves the request under way on, with a message or at a time.
    fn advance(&mut self, now: Duration, m: Option<Inbound<'_>>, out: &mut Vec<Out>) {
        let Some(op) = self.op.take() else {
            return;
        };
        self.op = match op {
            Op::Snapshot {
                settings,
                deadline,
                mut got_fresh,
            } => {
                if m.is_some_and(|m| matches!(m.message, Message::Settings(_))) {
                    got_fresh = true;
                }
                let have_all = settings.iter().all(|s| self.cache.get(s).is_some());
                if (got_fresh && have_all) || now >= deadline {
                    out.push(Out::SnapshotDone(self.snapshot_from_cache(&settings)));
                    None
                } else {
                    Some(Op::Snapshot {
                        settings,
                        deadline,
                        got_fresh,
                    })
                }
            }
            Op::Write {
                setting,
                value,
                attempt,
                stage,
            } => match self.write_step(&setting, value, attempt, stage, now, m, out) {
                Ok(next) => Some(next),
                Err(result) => {
                    out.push(Out::WriteDone(result));
                    None
                }
            },
        };
        if self.op.is_none() {
            self.begin_next(now, out);
        }
    }

    /// One step of a write: the next state, or its outcome.
    #[allow(clippy::too_many_arguments)]
    fn write_step(
        &mut self,
        setting: &str,
        value: SettingValue,
        attempt: u32,
        stage: Stage,
        now: Duration,
        m: Option<Inbound<'_>>,
        out: &mut Vec<Out>,
    ) -> Result<Op, WriteResult> {
        let op = |stage| Op::Write {
            setting: setting.to_string(),
            value,
            attempt,
            stage,
        };
        match stage {
            Stage::Spacing { until } if now < until => Ok(op(Stage::Spacing { until })),
            Stage::Spacing { .. } => {
                if !self.connected {
                    return Err(WriteResult::NotSent(
                        "not connected to the MQTT broker".into(),
                    ));
                }
                out.push(Out::Publish {
                    suffix: "update",
                    payload: encode_update(setting, value, self.cfg.time_format),
                });
                self.last_write = Some(now);
                debug!(setting, %value, attempt, "write sent");
                Ok(op(Stage::Awaiting {
                    deadline: now + self.cfg.write_timeout,
                }))
            }
            Stage::Awaiting { deadline } => {
                if let Some(m) = m {
                    match m.message {
                        Message::WriteResponse {
                            setting: s,
                            success,
                            status,
                        } if !m.retained
                            && s.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(setting)) =>
                        {
                            return Err(if *success {
                                self.remember(setting, value);
                                WriteResult::Confirmed
                            } else {
                                WriteResult::Rejected(format!("the dongle answered {status:?}"))
                            });
                        }
                        Message::SettingUpdated(f)
                            if f.get(setting).is_some_and(|v| read_back_matches(value, v)) =>
                        {
                            return Err(WriteResult::Confirmed);
                        }
                        _ => {}
                    }
                }
                if now < deadline {
                    return Ok(op(Stage::Awaiting { deadline }));
                }
                if self.firmware != Firmware::Legacy && self.connected {
                    out.push(self.snapshot_request());
                }
                Ok(op(Stage::ReadingBack {
                    deadline: now + self.cfg.readback_timeout,
                    differs: None,
                }))
            }
            Stage::ReadingBack {
                deadline,
                mut differs,
            } => {
                let waited = self.cfg.write_timeout.as_secs();
                if let Some(m) = m {
                    match m.message {
                        Message::WriteResponse {
                            setting: Some(s),
                            success: true,
                            ..
                        } if !m.retained && s.eq_ignore_ascii_case(setting) => {
                            return Err(WriteResult::Confirmed);
                        }
                        Message::Settings(f) | Message::SettingUpdated(f) => {
                            if let Some(read) = f.get(setting) {
                                if read_back_matches(value, read) {
                                    info!(setting, %value, "write confirmed by read-back after {waited} s without an answer");
                                    return Err(WriteResult::Confirmed);
                                }
                                differs = Some(format!("{read:?}"));
                            }
                        }
                        _ => {}
                    }
                }
                if now < deadline {
                    return Ok(op(Stage::ReadingBack { deadline, differs }));
                }
                let Some(read) = differs else {
                    return Err(WriteResult::Unknown(format!(
                        "no answer within {waited} s and the value could not be read back"
                    )));
                };
                let why = format!("no answer within {waited} s and it reads back as {read}");
                warn!(setting, %value, attempt, "{why}");
                if attempt > self.cfg.max_retries {
                    return Err(WriteResult::Unknown(why));
                }
                // Again, once the spacing after the last write allows (at once if it has).
                let until = self
                    .last_write
                    .map_or(now, |l| l + self.cfg.min_write_interval);
                self.write_step(
                    setting,
                    value,
                    attempt + 1,
                    Stage::Spacing { until },
                    now,
                    None,
                    out,
                )
            }
        }
    }

    fn remember(&mut self, setting: &str, value: SettingValue) {
        let raw = match value {
            SettingValue::Int(v) => RawValue::Num(v as f64),
            SettingValue::Time(t) => RawValue::Text(t.to_string()),
        };
        self.cache.insert(setting, raw);
    }

    fn snapshot_from_cache(&self, settings: &[String]) -> Option<BTreeMap<String, SettingValue>> {
        let snap: BTreeMap<String, SettingValue> = settings
            .iter()
            .filter_map(|s| {
                let raw = self.cache.get(s)?;
                Some((s.clone(), codec::setting_value(raw, value_like(s))?))
            })
            .collect();
        if snap.len() < settings.len() {
            let missing: Vec<&str> = settings
                .iter()
                .filter(|s| !snap.contains_key(*s))
                .map(String::as_str)
                .collect();
            warn!(
                ?missing,
                "some inverter settings could not be read before the charge"
            );
        }
        (!snap.is_empty()).then_some(snap)
    }
}

fn version_at_least_4_3(v: &str) -> bool {
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (4, 3)
}

#[cfg(test)]
mod tests;
