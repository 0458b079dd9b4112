//! The whole service as users run it, on port 0, against a real MQTT broker in this process
//! and the simulated dongle, with a manual clock the test moves.
//!
//! Waiting is always on an event (a status or simulator change) with a generous real-time
//! guard that only fails a test that would otherwise hang; nothing sleeps.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer, filter::LevelFilter};

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
    /// Extra YAML under `server:` (e.g. `api_key: k`).
    pub server: String,
    /// Extra YAML under `mqtt:` (e.g. `username: u, password: p`).
    pub mqtt: String,
    /// Which MQTT broker the service and the dongle meet on.
    pub broker: BrokerKind,
    /// YAML of a `home_assistant:` section's keys (e.g. `enabled: true`); none when empty.
    pub home_assistant: String,
    /// Whole top-level sections appended to the file (e.g. `apns:` and `notifications:`).
    pub sections: String,
}

/// The MQTT broker a world runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BrokerKind {
    /// rumqttd inside the test process.
    #[default]
    Embedded,
    /// Debian's mosquitto as a child process (see [`Mosquitto`]).
    Mosquitto,
    /// Nothing listens on the broker's port yet: the service and the dongle start without a
    /// broker, and the test brings one up later with [`World::bring_up_broker`].
    Down,
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
            mqtt: String::new(),
            broker: BrokerKind::Embedded,
            home_assistant: String::new(),
            sections: String::new(),
        }
    }
}

static CLIENT_IDS: AtomicU32 = AtomicU32::new(0);

pub struct World {
    /// Where the MQTT broker is (or will be, with [`BrokerKind::Down`]): the embedded broker,
    /// or only its port when the broker is mosquitto.
    pub broker: EmbeddedBroker,
    /// The mosquitto child process, when the world runs against mosquitto.
    pub mosquitto: Option<Mosquitto>,
    pub clock: ManualClock,
    pub sim: SimHandle,
    pub app: Option<App>,
    pub data: tempfile::TempDir,
    pub config: Config,
    pub http: reqwest::Client,
    pub base: String,
}

/// A plain HTTP client for tests (reqwest needs the process's TLS provider installed).
pub fn http_client() -> reqwest::Client {
    solar_charging_backend::notify::https::install_default_provider();
    reqwest::Client::new()
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
    /// A world from parts a test built itself; the service is not started yet.
    pub fn assemble(
        broker: EmbeddedBroker,
        mosquitto: Option<Mosquitto>,
        clock: ManualClock,
        sim: SimHandle,
        config: Config,
    ) -> World {
        solar_charging_backend::notify::https::install_default_provider();
        World {
            broker,
            mosquitto,
            clock,
            sim,
            app: None,
            data: tempfile::tempdir().unwrap(),
            config,
            // No pooled connections: the service closes idle ones after 30 s of its clock,
            // which a test moves in jumps, and a reused closed connection would fail.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            base: String::new(),
        }
    }

    pub async fn start(setup: Setup) -> World {
        let (broker, mosquitto) = match setup.broker {
            BrokerKind::Embedded => (start_embedded_broker(0).expect("embedded broker"), None),
            BrokerKind::Mosquitto => {
                let m = Mosquitto::start().await;
                (EmbeddedBroker { port: m.port }, Some(m))
            }
            BrokerKind::Down => (EmbeddedBroker { port: free_port() }, None),
        };
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
        let mut yaml = format!(
            "mqtt: {{host: 127.0.0.1, port: {port}, dongle_prefix: \"{PREFIX}\", client_id: test-{id}{mqtt}}}\n\
             server: {{host: 127.0.0.1, port: 0{server}}}\n\
             charging: {{min_write_interval_ms: 0{charging}}}\n\
             timezone: {ZONE}\n",
            port = broker.port,
            server = prefixed(&setup.server),
            charging = prefixed(&setup.charging),
            mqtt = prefixed(&setup.mqtt),
        );
        if !setup.home_assistant.is_empty() {
            yaml.push_str(&format!("home_assistant: {{{}}}\n", setup.home_assistant));
        }
        yaml.push_str(&setup.sections);
        let config = config::parse(&yaml, &EnvOverrides::default())
            .unwrap_or_else(|p| panic!("test config: {p:?}"))
            .config;
        let mut world = World::assemble(broker, mosquitto, clock, sim, config);
        if setup.broker == BrokerKind::Down {
            world.launch().await;
        } else {
            world.boot().await;
        }
        world
    }

    /// Starts the service on the world's data directory and waits until it hears the dongle.
    pub async fn boot(&mut self) {
        self.launch().await;
        self.hear_dongle().await;
    }

    /// Waits until the service is connected to the broker and has heard a report from the
    /// dongle.
    pub async fn hear_dongle(&self) {
        self.wait_status(|s| s.mqtt_connected).await;
        self.sim.publish_telemetry_now();
        let soc = self.sim.state().borrow().reported_soc;
        self.wait_status(|s| s.soc.map(|s| s.get()) == Some(soc))
            .await;
    }

    /// Starts the service on the world's data directory without waiting for the broker or the
    /// dongle: HTTP answers once this returns.
    pub async fn launch(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = app::start(&self.config, self.data.path(), self.clock.clock(), listener)
            .await
            .expect("app starts");
        self.base = format!("http://{}", app.addr);
        self.app = Some(app);
    }

    /// Starts a broker of `kind` on the world's broker port (for a world set up with
    /// [`BrokerKind::Down`]). The service only notices once its reconnect backoff has passed
    /// on the world's clock.
    pub async fn bring_up_broker(&mut self, kind: BrokerKind) {
        match kind {
            BrokerKind::Embedded => {
                start_embedded_broker(self.broker.port).expect("embedded broker on the port");
            }
            BrokerKind::Mosquitto => {
                self.mosquitto = Some(Mosquitto::start_on(self.broker.port).await);
            }
            BrokerKind::Down => panic!("bring_up_broker needs a broker kind"),
        }
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
        wait_for_status(&self.app.as_ref().expect("running").engine, pred).await
    }

    /// Makes the dongle fall silent and waits until the service has taken in everything it
    /// sent before: after this nothing of the dongle's is on its way, and the service last
    /// heard it at the clock's present time.
    pub async fn silence_dongle(&self) {
        let marker = self.sim.fall_silent();
        self.wait_status(|s| s.firmware_code.as_deref() == Some(marker.as_str()))
            .await;
    }

    /// Waits until the simulator's state satisfies `pred`.
    pub async fn wait_sim(&self, pred: impl Fn(&SimState) -> bool) -> SimState {
        wait_watch(self.sim.state(), pred, "the simulator").await
    }

    /// Lets `d` pass, makes the dongle report, and waits until the service has seen that
    /// report: after this, every decision the report calls for has been taken. (The SOC shown
    /// is the report's, unless the report jumped further than a battery can move, which the
    /// service holds back until the next report confirms it.)
    pub async fn tick(&self, d: Duration) {
        self.clock.advance(d);
        self.sim.publish_telemetry_now();
        let now = self.clock.clock().now();
        self.wait_status(|s| s.last_telemetry == Some(now)).await;
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
        answer(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        answer(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        answer(self.http.delete(format!("{}{path}", self.base))).await
    }

    /// A POST with no body at all, as the app sends some.
    pub async fn post_empty(&self, path: &str) -> (u16, Value) {
        answer(self.http.post(format!("{}{path}", self.base))).await
    }

    /// A GET whose answer is text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = tokio::time::timeout(GUARD, self.http.get(format!("{}{path}", self.base)).send())
            .await
            .expect("answered")
            .expect("sent");
        let code = r.status().as_u16();
        (code, r.text().await.unwrap_or_default())
    }
}

fn prefixed(extra: &str) -> String {
    if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    }
}

/// Waits until `engine`'s status satisfies `pred` (at most [`GUARD`] of real time).
pub async fn wait_for_status(
    engine: &solar_charging_backend::engine::EngineHandle,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    wait_watch(engine.watch(), pred, "the service").await
}

/// Waits until the watched value satisfies `pred` (at most [`GUARD`] of real time); `who`
/// names what never got there.
async fn wait_watch<T: Clone + std::fmt::Debug>(
    mut rx: tokio::sync::watch::Receiver<T>,
    pred: impl Fn(&T) -> bool,
    who: &str,
) -> T {
    let found = tokio::time::timeout(GUARD, rx.wait_for(|s| pred(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match found {
        Ok(Ok(s)) => s,
        _ => panic!(
            "{who} never reached the expected state; last: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Whether the inverter's AC charge switch is on.
pub fn ac_on(s: &SimState) -> bool {
    s.holds.get("ACCharge") == Some(&HoldValue::Int(1))
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Where the `mosquitto` binary is: on PATH, or in the sbin folders Debian installs it to
/// (often not on a normal user's PATH). Fails the test, never skips it, when it is missing.
pub fn mosquitto_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs the mosquitto MQTT broker, which is not installed: run \
                 `apt-get install mosquitto` (scripts/test.sh installs it and runs the tests)"
            )
        })
}

/// Debian's mosquitto broker in a child process on 127.0.0.1, anonymous clients allowed. It is
/// killed when dropped. Unlike a stock mosquitto it never drops messages for a subscriber that
/// lags behind (`max_queued_messages 0`), so that a test can wait for the last of a flood.
pub struct Mosquitto {
    pub port: u16,
    /// Holds the generated configuration file.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The broker's log (stdout and stderr), for failure messages.
    log: Arc<Mutex<Vec<String>>>,
}

impl Mosquitto {
    /// Starts mosquitto on a free port.
    pub async fn start() -> Mosquitto {
        Mosquitto::start_on(free_port()).await
    }

    /// Starts mosquitto on `port` and returns once it accepts connections.
    pub async fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence false\n\
             max_queued_messages 0\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n"
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
            log: Arc::default(),
        };
        m.spawn().await;
        m
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "mosquitto is already running");
        let mut child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.conf())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto starts");
        // mosquitto logs "... running" once its listener is open. Both pipes are drained until
        // the process ends, so that a chatty broker never blocks on a full pipe.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for pipe in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let log = self.log.clone();
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains(" running")
                        && let Some(tx) = ready.lock().unwrap().take()
                    {
                        let _ = tx.send(());
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() < 500 {
                        log.push(line);
                    }
                }
                // Ends the wait below if the broker exits before it is ready.
                ready.lock().unwrap().take();
            });
        }
        drop(ready_tx);
        self.child = Some(child);
        match tokio::time::timeout(GUARD, ready_rx).await {
            Ok(Ok(())) => {}
            _ => panic!(
                "mosquitto did not start on port {}; its log:\n{}",
                self.port,
                self.log.lock().unwrap().join("\n")
            ),
        }
    }

    /// Kills the broker at once (SIGKILL): every connection drops without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, with nothing remembered.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a request; its status and JSON body (`null` when there is none).
async fn answer(request: reqwest::RequestBuilder) -> (u16, Value) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The writes the dongle received, as (setting, value as sent) pairs.
pub fn written(s: &SimState) -> Vec<(&str, String)> {
    s.writes
        .iter()
        .map(|r| (r.setting.as_str(), r.value.to_string()))
        .collect()
}

/// The service's log, captured on this thread. Tests run on a current-thread runtime, so every
/// task of the service logs here; other tests' threads are not affected.
pub struct LogCapture {
    pub lines: watch::Receiver<Vec<String>>,
    _guard: tracing::subscriber::DefaultGuard,
}

struct CaptureLayer(Arc<watch::Sender<Vec<String>>>);

#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let text = format!("{} {}", event.metadata().level(), line.0);
        self.0.send_modify(|v| v.push(text));
    }
}

impl LogCapture {
    pub fn install() -> LogCapture {
        LogCapture::install_at(LevelFilter::INFO)
    }

    pub fn install_at(level: LevelFilter) -> LogCapture {
        let (tx, lines) = watch::channel(Vec::new());
        let layer = CaptureLayer(Arc::new(tx)).with_filter(level);
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        LogCapture {
            lines,
            _guard: guard,
        }
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .borrow()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `needle` has been logged at least `n` times.
    pub async fn wait_for(&self, needle: &str, n: usize) {
        let mut rx = self.lines.clone();
        let found = tokio::time::timeout(
            GUARD,
            rx.wait_for(|v| v.iter().filter(|l| l.contains(needle)).count() >= n),
        )
        .await;
        if !matches!(found, Ok(Ok(_))) {
            panic!(
                "{needle:?} was not logged {n} times; the log:\n{}",
                self.lines.borrow().join("\n")
            );
        }
    }
}
