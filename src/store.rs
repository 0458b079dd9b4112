//! Durable state under the data directory.
//!
//! * `state.json`: the schedule and any running charge session, versioned, replaced atomically
//!   (temp file in the same folder, fsync, rename, fsync the folder) so that a power cut leaves
//!   either the old or the new file, never a torn one.
//! * `history.jsonl`: one line per finished session, the last [`HISTORY_LIMIT`] kept.
//! * `schedule.json`: the old Python backend's file, imported once when no `state.json` exists.
//!
//! A file that cannot be read is never silently replaced: it is renamed aside
//! (`state.json.corrupt-<time>`) and reported, and the service starts without it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::domain::schedule::Schedule;
use crate::domain::units::{LocalTime, Mode, TargetSoc};

pub const STATE_FILE: &str = "state.json";
pub const HISTORY_FILE: &str = "history.jsonl";
pub const LEGACY_SCHEDULE_FILE: &str = "schedule.json";
/// The state format this build writes and reads.
pub use crate::domain::state::{FORMAT_VERSION, SessionRecord, State};
pub const HISTORY_LIMIT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What loading found, with anything the user should hear about.
#[derive(Debug, Default)]
pub struct Loaded {
    pub state: State,
    /// Plain sentences for the log (a file set aside, an import).
    pub notices: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the data directory.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io("create the data directory", dir))?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Loads the state; imports the old backend's schedule when there is no state yet.
    pub fn load(&self, now: Timestamp, tz: &TimeZone) -> Loaded {
        let mut notices = Vec::new();
        let path = self.path(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => match parse_state(&bytes) {
                Ok(state) => {
                    return Loaded { state, notices };
                }
                Err(why) => {
                    let aside = self.set_aside(&path, "corrupt", now);
                    notices.push(format!(
                        "{} could not be read ({why}); it was kept as {} and the service starts without it",
                        path.display(),
                        aside
                    ));
                    return Loaded {
                        state: State::default(),
                        notices,
                    };
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                notices.push(format!(
                    "{} could not be read ({e}); starting without it",
                    path.display()
                ));
                return Loaded {
                    state: State::default(),
                    notices,
                };
            }
        }
        let legacy = self.path(LEGACY_SCHEDULE_FILE);
        let mut state = State::default();
        if let Ok(bytes) = fs::read(&legacy) {
            match import_legacy(&bytes, now, tz) {
                Ok(schedule) => {
                    notices.push(format!(
                        "imported the schedule from the old backend's {}",
                        legacy.display()
                    ));
                    state.schedule = schedule;
                }
                Err(why) => notices.push(format!(
                    "the old backend's {} could not be imported ({why}); it was left as it is",
                    legacy.display()
                )),
            }
        }
        Loaded { state, notices }
    }

    fn set_aside(&self, path: &Path, what: &str, now: Timestamp) -> String {
        let stamp = now.strftime("%Y%m%dT%H%M%SZ");
        let aside = path.with_file_name(format!(
            "{}.{what}-{stamp}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        ));
        match fs::rename(path, &aside) {
            Ok(()) => aside.display().to_string(),
            Err(e) => format!("{} (renaming it failed: {e})", path.display()),
        }
    }

    /// Replaces the state file atomically.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        self.write_atomic(STATE_FILE, &encode_state(state))
    }

    /// Reads a small file of the data directory: `Ok(None)` when there is none, and when it
    /// cannot be used (`check` says why) it is set aside as `<name>.corrupt-<time>` and the
    /// error says so, never silently replaced.
    pub fn read_or_set_aside<T>(
        &self,
        name: &str,
        now: Timestamp,
        check: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => match check(&bytes) {
                Ok(v) => Ok(Some(v)),
                Err(why) => {
                    let aside = self.set_aside(&path, "corrupt", now);
                    Err(format!(
                        "{} could not be read ({why}); it was kept as {aside} and the service starts without it",
                        path.display()
                    ))
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{} could not be read: {e}", path.display())),
        }
    }

    /// Replaces a file of the data directory atomically (see the module docs).
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(name);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(io("create a temporary file in", &self.dir))?;
        tmp.write_all(bytes).map_err(io("write", tmp.path()))?;
        tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
        tmp.persist(&path)
            .map_err(|e| io("replace", &path)(e.error))?;
        // The rename is durable only once the directory entry is.
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Appends a finished session to the history, keeping the last [`HISTORY_LIMIT`].
    pub fn append_history(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let path = self.path(HISTORY_FILE);
        let mut line = serde_json::to_vec(record).expect("record serializes");
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        f.write_all(&line).map_err(io("append to", &path))?;
        f.sync_all().map_err(io("sync", &path))?;
        drop(f);
        // Trim in batches so that appends stay cheap.
        let text = fs::read_to_string(&path).map_err(io("read", &path))?;
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > HISTORY_LIMIT + HISTORY_LIMIT / 10 {
            let keep = lines[lines.len() - HISTORY_LIMIT..].join("\n") + "\n";
            self.write_atomic(HISTORY_FILE, keep.as_bytes())?;
        }
        Ok(())
    }

    /// The newest `limit` history records, newest first. Unreadable lines are skipped.
    pub fn history(&self, limit: usize) -> Result<Vec<SessionRecord>, StoreError> {
        let path = self.path(HISTORY_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &path)(e)),
        };
        Ok(text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit.min(HISTORY_LIMIT))
            .collect())
    }
}

/// The state file's bytes for `state` (stamped with this build's format version).
pub fn encode_state(state: &State) -> Vec<u8> {
    let state = State {
        version: FORMAT_VERSION,
        ..state.clone()
    };
    serde_json::to_vec_pretty(&state).expect("state serializes")
}

/// Reads a state file's bytes, or says why they cannot be used.
pub fn decode_state(bytes: &[u8]) -> Result<State, String> {
    parse_state(bytes)
}

fn parse_state(bytes: &[u8]) -> Result<State, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    match version {
        Some(v) if v as u32 == FORMAT_VERSION => {}
        Some(v) if v > FORMAT_VERSION as u64 => {
            return Err(format!(
                "it was written by a newer version of this service (format {v}, this build reads {FORMAT_VERSION}); upgrade, or restore a backup"
            ));
        }
        _ => return Err("it has no known format version".into()),
    }
    serde_json::from_value(value).map_err(|e| format!("unexpected content: {e}"))
}

/// The old backend's `schedule.json`.
#[derive(Deserialize)]
struct LegacySchedule {
    target_soc: u8,
    start_time: String,
    #[serde(default = "legacy_mode")]
    mode: Mode,
    #[serde(default = "yes")]
    enabled: bool,
    created_at: Option<String>,
    last_run: Option<String>,
}

fn legacy_mode() -> Mode {
    Mode::Recurring
}
fn yes() -> bool {
    true
}

fn import_legacy(bytes: &[u8], now: Timestamp, tz: &TimeZone) -> Result<Option<Schedule>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    if value.is_null() {
        return Ok(None);
    }
    let old: LegacySchedule =
        serde_json::from_value(value).map_err(|e| format!("unexpected content: {e}"))?;
    let target = TargetSoc::new(old.target_soc)
        .ok_or_else(|| format!("target_soc {} is outside 10..=100", old.target_soc))?;
    let time = LocalTime::parse_hhmm(&old.start_time)
        .ok_or_else(|| format!("start_time {:?} is not HH:MM", old.start_time))?;
    let naive = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| s.parse::<jiff::civil::DateTime>().ok())
            .and_then(|dt| dt.to_zoned_datetime(tz.clone()).ok())
            .map(|z| z.timestamp())
    };
    let mut schedule = Schedule::new(target, time, old.mode, old.enabled, None, None, now, tz)
        .map_err(|e| e.to_string())?;
    if let Some(created) = naive(&old.created_at) {
        schedule.created_at = created;
    }
    schedule.last_run = naive(&old.last_run);
    if old.mode == Mode::Once && schedule.last_run.is_some() {
        // The old backend kept a `once` schedule after it ran; it has nothing left to do.
        return Ok(None);
    }
    schedule.rearm(now, tz);
    Ok(Some(schedule))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::session::{Origin, StopReason};

    fn tz() -> TimeZone {
        TimeZone::get("Europe/London").unwrap()
    }
    fn now() -> Timestamp {
        "2026-01-10T12:00:00Z".parse().unwrap()
    }
    fn schedule() -> Schedule {
        Schedule::new(
            TargetSoc::new(85).unwrap(),
            LocalTime::new(2, 30).unwrap(),
            Mode::Recurring,
            true,
            None,
            None,
            now(),
            &tz(),
        )
        .unwrap()
    }

    #[test]
    fn a_saved_schedule_loads_back_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = State {
            version: FORMAT_VERSION,
            schedule: Some(schedule()),
            session: None,
            ..State::default()
        };
        store.save(&state).unwrap();
        let loaded = store.load(now(), &tz());
        assert_eq!(loaded.state, state);
        assert!(loaded.notices.is_empty());
    }

    #[test]
    fn a_corrupt_state_file_is_kept_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (i, content) in ["{\"version\":1,\"sched", "", "[1,2]", "{\"version\":99}"]
            .iter()
            .enumerate()
        {
            fs::write(dir.path().join(STATE_FILE), content).unwrap();
            let at = now() + jiff::SignedDuration::from_secs(i as i64);
            let loaded = store.load(at, &tz());
            assert_eq!(loaded.state, State::default());
            assert_eq!(loaded.notices.len(), 1, "{content:?}");
            assert!(!dir.path().join(STATE_FILE).exists());
            let aside = dir.path().join(format!(
                "state.json.corrupt-{}",
                at.strftime("%Y%m%dT%H%M%SZ")
            ));
            assert_eq!(
                fs::read_to_string(&aside).unwrap(),
                *content,
                "nothing is lost"
            );
        }
        let newer = store.load(now(), &tz());
        assert!(newer.notices.is_empty());
    }

    #[test]
    fn a_newer_format_is_refused_with_a_reason() {
        let why = parse_state(br#"{"version": 7, "schedule": null}"#).unwrap_err();
        assert!(why.contains("newer version"), "{why}");
    }

    #[test]
    fn the_old_backends_schedule_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LEGACY_SCHEDULE_FILE),
            r#"{"target_soc": 80, "start_time": "03:15", "mode": "recurring", "enabled": true,
                "created_at": "2025-12-20T10:00:00.123456", "last_run": "2026-01-09T03:15:00",
                "next_run": "2026-01-10T03:15:00"}"#,
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load(now(), &tz());
        let s = loaded.state.schedule.expect("imported");
        assert_eq!(s.target.get(), 80);
        assert_eq!(s.time.to_string(), "03:15");
        assert_eq!(s.next_run, Some("2026-01-11T03:15:00Z".parse().unwrap()));
        assert_eq!(s.created_at, "2025-12-20T10:00:00.123456Z".parse().unwrap());
        assert!(loaded.notices[0].contains("imported"));
    }

    #[test]
    fn a_broken_old_schedule_is_reported_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(LEGACY_SCHEDULE_FILE),
            r#"{"target_soc": 5}"#,
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load(now(), &tz());
        assert!(loaded.state.schedule.is_none());
        assert!(loaded.notices[0].contains("could not be imported"));
        assert!(dir.path().join(LEGACY_SCHEDULE_FILE).exists());
    }

    #[test]
    fn history_keeps_the_newest_thousand_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rec = SessionRecord {
            id: String::new(),
            origin: Origin::Schedule,
            target_soc: TargetSoc::new(80).unwrap(),
            started_at: now(),
            ended_at: now(),
            start_soc: None,
            end_soc: None,
            stop_reason: Some(StopReason::TargetReached),
            detail: None,
            energy_wh: None,
            restore_failures: vec![],
            cost: None,
            currency: None,
        };
        for i in 0..1150 {
            rec.id = i.to_string();
            store.append_history(&rec).unwrap();
        }
        let all = store.history(usize::MAX).unwrap();
        assert_eq!(all.len(), HISTORY_LIMIT);
        assert_eq!(all[0].id, "1149");
        assert_eq!(all.last().unwrap().id, "150");
        let lines = fs::read_to_string(dir.path().join(HISTORY_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= HISTORY_LIMIT + HISTORY_LIMIT / 10);
    }
}
