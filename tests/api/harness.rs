//! The whole service as users run it, on port 0, against a real MQTT broker in this process
//! and the simulated dongle, with a manual clock the test moves.
//!
//! Waiting is always on an event (a status or simulator change) with a generous real-time
//! guard that only fails a test that would otherwise hang; nothing sleeps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::Value;
use solar_charging_backend::app::{self, App};
use solar_charging_backend::clock::ManualClock;
use solar_charging_backend::config::{self, Config, EnvOverrides};
use solar_charging_backend::engine::Status;
use solar_charging_backend::sim::broker::{EmbeddedBroker, start_embedded_broker};
use solar_charging_backend::sim::dongle::{
    self, Firmware, HoldValue, SimConfig, SimHandle, SimState,
};
use tokio::net::TcpListener;

pub const PREFIX: &str = "dongle-40:4C:CA:00:00:7E";
/// Fails a test that would hang; never reached by a passing one.
pub const GUARD: Duration = Duration::from_secs(20);
pub const ZONE: &str = "America/Los_Angeles";

/// How a test wants its world.
pub struct Setup {
    pub firmware: Firmware,
    pub soc: f64,
    /// The wall clock at the start.
    pub wall: Timestamp,
    /// Extra YAML under `charging:` (e.g. `safety_cutoff_hours: 1`).
    pub charging: String,
    pub max_charge_w: f64,
    /// Extra top-level YAML (e.g. `server: {api_key: k}` is not allowed here: use `server`).
    pub server: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            firmware: Firmware::V43,
            soc: 50.0,
            // 2026-01-15 01:00 in Los Angeles.
            wall: "2026-01-15T09:00:00Z".parse().unwrap(),
            charging: String::new(),
            max_charge_w: 6000.0,
            server: String::new(),
        }
    }
}

static CLIENT_IDS: AtomicU32 = AtomicU32::new(0);

pub struct World {
    pub broker: EmbeddedBroker,
    pub clock: ManualClock,
    pub sim: SimHandle,
    pub app: Option<App>,
    pub data: tempfile::TempDir,
    pub config: Config,
    pub http: reqwest::Client,
    pub base: String,
}

pub fn tz() -> TimeZone {
    TimeZone::get(ZONE).unwrap()
}

/// A wall-clock instant from a local `YYYY-MM-DDTHH:MM` in the test zone.
pub fn local(s: &str) -> Timestamp {
    s.parse::<jiff::civil::DateTime>()
        .unwrap()
        .to_zoned_datetime(tz())
        .unwrap()
        .timestamp()
}

impl World {
    pub async fn start(setup: Setup) -> World {
        let broker = start_embedded_broker(0).expect("embedded broker");
        let clock = ManualClock::new(setup.wall);
        let sim_cfg = SimConfig {
            prefix: PREFIX.into(),
            firmware: setup.firmware,
            initial_soc: setup.soc,
            max_charge_w: setup.max_charge_w,
            tz: tz(),
            ..Default::default()
        };
        let sim = dongle::spawn("127.0.0.1", broker.port, sim_cfg, clock.clock());
        let id = CLIENT_IDS.fetch_add(1, Ordering::Relaxed);
        let yaml = format!(
            "mqtt: {{host: 127.0.0.1, port: {port}, dongle_prefix: \"{PREFIX}\", client_id: test-{id}}}\n\
             server: {{host: 127.0.0.1, port: 0{server}}}\n\
             charging: {{min_write_interval_ms: 0{charging}}}\n\
             timezone: {ZONE}\n",
            port = broker.port,
            server = prefixed(&setup.server),
            charging = prefixed(&setup.charging),
        );
        let config = config::parse(&yaml, &EnvOverrides::default())
            .unwrap_or_else(|p| panic!("test config: {p:?}"))
            .config;
        let mut world = World {
            broker,
            clock,
            sim,
            app: None,
            data: tempfile::tempdir().unwrap(),
            config,
            http: reqwest::Client::new(),
            base: String::new(),
        };
        world.boot().await;
        world
    }

    /// Starts the service on the world's data directory and waits until it hears the dongle.
    pub async fn boot(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = app::start(&self.config, self.data.path(), self.clock.clock(), listener)
            .await
            .expect("app starts");
        self.base = format!("http://{}", app.addr);
        self.app = Some(app);
        self.wait_status(|s| s.mqtt_connected).await;
        self.sim.publish_telemetry_now();
        let soc = self.sim.state().borrow().reported_soc;
        self.wait_status(|s| s.soc.map(|s| s.get()) == Some(soc))
            .await;
    }

    /// Kills the service as a crash or power cut would: nothing is saved on the way out.
    pub fn kill(&mut self) {
        self.app.take().expect("running").kill();
    }

    pub async fn shutdown(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data.path().join(name)
    }

    pub fn status(&self) -> Status {
        self.app.as_ref().expect("running").engine.status()
    }

    /// Waits until the engine's status satisfies `pred`.
    pub async fn wait_status(&self, pred: impl Fn(&Status) -> bool) -> Status {
        let mut rx = self.app.as_ref().expect("running").engine.watch();
        let found = tokio::time::timeout(GUARD, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match found {
            Ok(Ok(s)) => s,
            _ => panic!(
                "the service never reached the expected state; last: {:#?}",
                *rx.borrow()
            ),
        }
    }

    /// Waits until the simulator's state satisfies `pred`.
    pub async fn wait_sim(&self, pred: impl Fn(&SimState) -> bool) -> SimState {
        let mut rx = self.sim.state();
        let found = tokio::time::timeout(GUARD, rx.wait_for(|s| pred(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match found {
            Ok(Ok(s)) => s,
            _ => panic!(
                "the simulator never reached the expected state; last: {:#?}",
                *rx.borrow()
            ),
        }
    }

    /// Lets `d` pass, makes the dongle report, and waits until the service has seen that
    /// report: after this, every decision the report calls for has been taken.
    pub async fn tick(&self, d: Duration) {
        self.clock.advance(d);
        self.sim.publish_telemetry_now();
        let soc = self.sim.state().borrow().reported_soc;
        let now = self.clock.clock().now();
        self.wait_status(|s| s.last_telemetry == Some(now) && s.soc.map(|s| s.get()) == Some(soc))
            .await;
    }

    /// Ticks in `step`s until `pred` holds for the simulator, at most `limit` of time.
    pub async fn run_until(
        &self,
        step: Duration,
        limit: Duration,
        pred: impl Fn(&SimState) -> bool,
    ) -> SimState {
        let mut elapsed = Duration::ZERO;
        loop {
            let st = self.sim.state().borrow().clone();
            if pred(&st) {
                return st;
            }
            assert!(
                elapsed < limit,
                "not reached within {limit:?} of simulated time; sim: {st:#?}"
            );
            self.tick(step).await;
            elapsed += step;
        }
    }

    pub fn hold(&self, name: &str) -> Option<HoldValue> {
        self.sim.state().borrow().holds.get(name).cloned()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn prefixed(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    }
}

/// Whether the inverter's AC charge switch is on.
pub fn ac_on(s: &SimState) -> bool {
    s.holds.get("ACCharge") == Some(&HoldValue::Int(1))
}
