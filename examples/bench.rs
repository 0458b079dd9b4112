//! Benchmark of the release service as it runs: a child process speaking MQTT to a broker and
//! HTTP to its clients.
//!
//! The bench runs the embedded MQTT broker in-process, plays the dongle itself with a raw
//! rumqttc client (answers every `update` with success, publishes `inputbank1` telemetry and
//! `holdbank1` settings), starts `solar-charging-backend serve` from the release build with a
//! config in a temporary directory, and measures:
//!
//! * stop latency: the first SOC at or above the target published -> `ACCharge=0` received;
//! * schedule accuracy: a `once` schedule at the next minute -> the first `update` received;
//! * startup: process spawn -> first 200 from `/api/health`;
//! * memory (VmRSS): idle, after 10k HTTP requests, after a simulated week of dongle traffic;
//! * HTTP throughput and p99 latency of `GET /api/charge/status` under concurrent clients;
//! * idle CPU (utime + stime) over 60 s;
//! * cost growth: stop latency, CPU and RSS with 1, 10 and 100 telemetry messages/s running;
//! * the HTTP edge under a burst of 2,000 connections (half send a request, half stay silent):
//!   RSS while they are open and 10 s after they close, once and after 10 bursts.
//!
//! Run with `scripts/bench.sh` (builds both in release and prints the table), or
//! `cargo run --release --example bench -- --bin target/release/solar-charging-backend`.
//! `--quick` does a few runs of each, for checking the bench itself; `--help` lists the knobs.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

const PREFIX: &str = "dongle-40:4C:CA:00:BE:01";
/// The target every bench charge uses; telemetry below it keeps a charge running.
const TARGET: u8 = 80;
/// The SOC the battery sits at between runs: one point below the target, so the stopping
/// report is the ordinary one-point step of a real charge (a jump of many points is held back
/// by the service until a second report confirms it).
const LOW_SOC: u8 = TARGET - 1;
/// How long after `ACCharge=1` the stopping SOC is published: more than the service's
/// least interval between two writes (1 s by default), so that interval is not measured.
const AFTER_START: Duration = Duration::from_millis(1200);

// --- options ---------------------------------------------------------------------------------

const PHASES: [&str; 8] = [
    "startup", "idle", "stop", "schedule", "http", "week", "growth", "edge",
];

/// Connections opened at once in one burst of the edge phase.
const BURST: usize = 2_000;

struct Opts {
    bin: PathBuf,
    startup_runs: usize,
    stop_runs: usize,
    schedule_runs: usize,
    growth_runs: usize,
    growth_rates: Vec<u32>,
    warm_requests: usize,
    http_requests: usize,
    http_clients: usize,
    week_messages: u64,
    idle_secs: u64,
    edge_bursts: usize,
    out: Option<PathBuf>,
    /// The phases to run (all when empty).
    only: Vec<String>,
}

impl Opts {
    fn wants(&self, phase: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == phase)
    }

    fn parse() -> anyhow::Result<Opts> {
        let mut o = Opts {
            bin: default_bin(),
            startup_runs: 20,
            stop_runs: 30,
            schedule_runs: 3,
            growth_runs: 10,
            growth_rates: vec![1, 10, 100],
            warm_requests: 10_000,
            http_requests: 20_000,
            http_clients: 32,
            week_messages: 7 * 24 * 3600,
            idle_secs: 60,
            edge_bursts: 10,
            out: None,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = |name: &str| -> anyhow::Result<String> {
                args.next().with_context(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--bin" => o.bin = val("--bin")?.into(),
                "--out" => o.out = Some(val("--out")?.into()),
                "--startup-runs" => o.startup_runs = val(&a)?.parse()?,
                "--stop-runs" => o.stop_runs = val(&a)?.parse()?,
                "--schedule-runs" => o.schedule_runs = val(&a)?.parse()?,
                "--growth-runs" => o.growth_runs = val(&a)?.parse()?,
                "--http-requests" => o.http_requests = val(&a)?.parse()?,
                "--week-messages" => o.week_messages = val(&a)?.parse()?,
                "--idle-secs" => o.idle_secs = val(&a)?.parse()?,
                "--edge-bursts" => o.edge_bursts = val(&a)?.parse::<usize>()?.max(1),
                "--growth-rates" => {
                    o.growth_rates = val(&a)?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--only" => {
                    o.only = val(&a)?.split(',').map(str::to_string).collect();
                    for p in &o.only {
                        ensure!(
                            PHASES.contains(&p.as_str()),
                            "unknown phase {p:?}: one of {PHASES:?}"
                        );
                    }
                }
                "--quick" => {
                    o.startup_runs = 3;
                    o.stop_runs = 3;
                    o.schedule_runs = 1;
                    o.growth_runs = 2;
                    o.warm_requests = 1_000;
                    o.http_requests = 2_000;
                    o.week_messages = 20_000;
                    o.idle_secs = 5;
                    o.edge_bursts = 2;
                }
                "--help" | "-h" => {
                    println!(
                        "bench [--bin PATH] [--out FILE] [--quick] [--startup-runs N] [--stop-runs N] \
                         [--schedule-runs N] [--growth-runs N] [--http-requests N] \
                         [--week-messages N] [--idle-secs N] [--growth-rates 1,10,100] \
                         [--edge-bursts N] \
                         [--only PHASE,...] (phases: {})",
                        PHASES.join(",")
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        ensure!(
            o.bin.is_file(),
            "no service binary at {} (build it with `cargo build --release`, or pass --bin)",
            o.bin.display()
        );
        Ok(o)
    }
}

fn default_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("release/solar-charging-backend")
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// --- statistics and the table -----------------------------------------------------------------

/// Nearest-rank percentile of a sorted sample.
fn pct(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    assert!(n > 0, "percentile of an empty sample");
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn mb(kb: u64) -> String {
    format!("{:.2} MB", kb as f64 / 1024.0)
}

struct Row {
    what: String,
    samples: String,
    figures: String,
    target: String,
    verdict: &'static str,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn add(&mut self, what: &str, samples: impl ToString, figures: String) {
        self.rows.push(Row {
            what: what.into(),
            samples: samples.to_string(),
            figures,
            target: "-".into(),
            verdict: "",
        });
    }

    fn check(
        &mut self,
        what: &str,
        samples: impl ToString,
        figures: String,
        target: &str,
        met: bool,
    ) {
        self.rows.push(Row {
            what: what.into(),
            samples: samples.to_string(),
            figures,
            target: target.into(),
            verdict: if met { "met" } else { "MISSED" },
        });
    }

    /// A latency row: median and p95 (and max), judged on the p95 against `limit_ms`.
    fn latency(&mut self, what: &str, samples: &[Duration], limit_ms: Option<f64>) {
        let v = sorted_ms(samples);
        let figures = format!(
            "median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
            pct(&v, 50.0),
            pct(&v, 95.0),
            v[v.len() - 1]
        );
        match limit_ms {
            Some(limit) => self.check(
                what,
                v.len(),
                figures,
                &format!("p95 <= {limit} ms"),
                pct(&v, 95.0) <= limit,
            ),
            None => self.add(what, v.len(), figures),
        }
    }

    fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("| measurement | samples | result | target | verdict |\n");
        s.push_str("|---|---|---|---|---|\n");
        for r in &self.rows {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.what, r.samples, r.figures, r.target, r.verdict
            ));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}

// --- the service as a child process ----------------------------------------------------------

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

struct Service {
    child: Child,
    pid: u32,
    base: String,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl Service {
    /// Writes a config into a fresh temporary directory and starts the binary on it. Returns
    /// at once: the caller decides what "started" means.
    fn spawn(bin: &Path, broker_port: u16, client_id: &str) -> anyhow::Result<Service> {
        let dir = tempfile::Builder::new().prefix("solar-bench-").tempdir()?;
        let http_port = free_port()?;
        let config = format!(
            "mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n  dongle_prefix: \"{PREFIX}\"\n  client_id: \"{client_id}\"\n\
             server:\n  host: 127.0.0.1\n  port: {http_port}\n\
             timezone: UTC\n"
        );
        let config_path = dir.path().join("config.yaml");
        fs::write(&config_path, config)?;
        let data = dir.path().join("data");
        fs::create_dir(&data)?;
        let log = fs::File::create(dir.path().join("service.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("RUST_LOG")
            .env_remove("SERVER_PORT")
            .env_remove("SERVER_HOST")
            .env_remove("API_KEY")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Service {
            pid: child.id(),
            child,
            base: format!("http://127.0.0.1:{http_port}"),
            http_port,
            dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn exited(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the service exited ({status}); its log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn history_len(&self) -> usize {
        fs::read(self.dir.path().join("data/history.jsonl"))
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    }

    fn proc_status_kb(&self, key: &str) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {key} in /proc/{}/status", self.pid))
    }

    fn rss_kb(&self) -> anyhow::Result<u64> {
        self.proc_status_kb("VmRSS:")
    }

    /// (anonymous, file-backed) resident kB from /proc/PID/smaps_rollup: heap and stacks
    /// versus the binary's own pages.
    fn rss_split_kb(&self) -> anyhow::Result<(u64, u64)> {
        let s = fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid))?;
        let get = |key: &str| -> Option<u64> {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Ok((
            get("Anonymous:").context("no Anonymous in smaps_rollup")?,
            get("Rss:").context("no Rss in smaps_rollup")? - get("Anonymous:").unwrap_or(0),
        ))
    }

    /// Open file descriptors of the service: its sockets (accepted connections among them).
    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    fn threads(&self) -> anyhow::Result<u64> {
        self.proc_status_kb("Threads:")
    }

    /// utime + stime in clock ticks, from /proc/PID/stat.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start with the state, field 3.
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
    }

    /// Time on CPU in ns summed over the live threads (schedstat), finer than clock ticks.
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// SIGTERM, then up to 10 s for a graceful exit, then SIGKILL.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One blocking `GET /api/health` over a fresh connection; true on a 200.
fn health_200(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_nodelay(true);
    if s.write_all(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Time on CPU of this process (all threads), in ns.
fn own_cpu_ns() -> u64 {
    fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

fn clock_ticks_per_s() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

// --- the dongle --------------------------------------------------------------------------------

/// A write the service sent to the dongle, stamped on arrival.
#[derive(Debug)]
struct Update {
    at: Instant,
    wall: SystemTime,
    setting: String,
    value: Value,
}

fn initial_holds() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("ACChgSOCLimit".into(), json!(100));
    m.insert("ACChargeType".into(), json!(0));
    m.insert("ubBatChgcontrol".into(), json!(0));
    for k in [
        "ACChgStart",
        "ACChgEnd",
        "ACChgStart1",
        "ACChgEnd1",
        "ACChgStart2",
        "ACChgEnd2",
    ] {
        m.insert(k.into(), json!("00:00"));
    }
    m.insert("ACCharge".into(), json!(0));
    m
}

fn holdbank_payload(holds: &Map<String, Value>) -> Vec<u8> {
    json!({"Serialnumber": "BENCH00001", "payload": holds, "events": {}})
        .to_string()
        .into_bytes()
}

fn telemetry_payload(soc: u8) -> Vec<u8> {
    format!(r#"{{"SOC":{soc},"Pcharge":3000,"Pdischarge":0}}"#).into_bytes()
}

fn topic(suffix: &str) -> String {
    format!("{PREFIX}/{suffix}")
}

struct Dongle {
    client: AsyncClient,
    updates: mpsc::UnboundedReceiver<Update>,
    holds: Arc<Mutex<Map<String, Value>>>,
}

/// The bench's own MQTT clients send at once (no Nagle), so that they add no delay of their
/// own to what is measured: a small publish behind an unacknowledged PUBACK would otherwise
/// wait for the broker's delayed ACK (40 ms or more).
fn nodelay(eventloop: &mut rumqttc::EventLoop) {
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
}

/// Connects a raw MQTT client that answers the service's writes like a dongle, and returns
/// once it is subscribed.
async fn dongle(broker_port: u16) -> anyhow::Result<Dongle> {
    let mut opts = MqttOptions::new("bench-dongle", "127.0.0.1", broker_port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    nodelay(&mut eventloop);
    let holds = Arc::new(Mutex::new(initial_holds()));
    let (tx, updates) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let c = client.clone();
    let h = holds.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let (update, snapshot) = (topic("update"), topic("snapshot/request"));
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = [&update, &snapshot]
                        .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                    let _ = c.try_subscribe_many(filters);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let (at, wall) = (Instant::now(), SystemTime::now());
                    if p.topic == update {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let setting = v["setting"].as_str().unwrap_or_default().to_string();
                        let value = v["value"].clone();
                        let reply = json!({"status": "success", "setting": setting});
                        let _ = c.try_publish(
                            topic("response"),
                            QoS::AtLeastOnce,
                            false,
                            reply.to_string(),
                        );
                        h.lock().unwrap().insert(setting.clone(), value.clone());
                        let _ = tx.send(Update {
                            at,
                            wall,
                            setting,
                            value,
                        });
                    } else if p.topic == snapshot {
                        let payload = holdbank_payload(&h.lock().unwrap());
                        let _ = c.try_publish(topic("holdbank1"), QoS::AtLeastOnce, false, payload);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("the bench dongle did not get its subscription within 10 s")??;
    Ok(Dongle {
        client,
        updates,
        holds,
    })
}

impl Dongle {
    async fn publish(&self, suffix: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.client
            .publish(topic(suffix), QoS::AtLeastOnce, false, payload)
            .await?;
        Ok(())
    }

    async fn publish_holdbank(&self) -> anyhow::Result<()> {
        let payload = holdbank_payload(&self.holds.lock().unwrap());
        self.publish("holdbank1", payload).await
    }

    fn drain(&mut self) {
        while self.updates.try_recv().is_ok() {}
    }

    /// The next write that `pred` accepts; earlier ones are dropped.
    async fn wait_update(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Update) -> bool,
    ) -> anyhow::Result<Update> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let u = tokio::time::timeout_at(deadline, self.updates.recv())
                .await
                .with_context(|| format!("no {what} within {timeout:?}"))?
                .context("the bench dongle stopped")?;
            if pred(&u) {
                return Ok(u);
            }
        }
    }
}

fn is_ac_charge(u: &Update, on: bool) -> bool {
    u.setting == "ACCharge" && u.value.as_i64() == Some(i64::from(on))
}

/// A second MQTT connection for bulk telemetry, so the dongle's own stays responsive.
async fn feeder(broker_port: u16) -> anyhow::Result<AsyncClient> {
    let mut opts = MqttOptions::new("bench-feeder", "127.0.0.1", broker_port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    nodelay(&mut eventloop);
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("the feeder did not connect within 10 s")??;
    Ok(client)
}

/// What one burst of connections saw, from the clients' side and the service's.
struct Burst {
    /// Connections whose TCP handshake completed (the kernel completes it for connections
    /// still waiting in the listener's backlog).
    connected: usize,
    /// Connection attempts that failed (refused or reset).
    failed: usize,
    /// Requests answered while the burst was held.
    answered: usize,
    /// The service's RSS and open file descriptors while the burst was held.
    rss_kb: u64,
    fds: usize,
}

/// Opens `n` connections at once to `addr`, every other one sending a keep-alive
/// `GET /api/charge/status` and the rest silent; holds them for a moment after the last
/// attempt has connected or failed (at most `settle` in all), measures the service, then closes
/// every connection (attempts still connecting are abandoned).
async fn burst(svc: &Service, n: usize, settle: Duration) -> anyhow::Result<Burst> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, svc.http_port));
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (connected, failed, answered) = (connected.clone(), failed.clone(), answered.clone());
        let mut close = close_rx.clone();
        tasks.spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            connected.fetch_add(1, Ordering::Relaxed);
            if i % 2 == 0
                && s.write_all(b"GET /api/charge/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .await
                    .is_err()
            {
                return;
            }
            let mut buf = [0u8; 512];
            let mut counted = false;
            loop {
                tokio::select! {
                    _ = close.changed() => return,
                    r = s.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) if !counted => {
                            counted = true;
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                    },
                }
            }
        });
    }
    let t0 = Instant::now();
    while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && t0.elapsed() < settle
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for the service to take and answer what it can.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_kb, fds) = (svc.rss_kb()?, svc.fds());
    let _ = close_tx.send(true);
    // Ends the held connections (they see the close signal) and abandons attempts still in
    // their TCP handshake.
    tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .ok();
    tasks.shutdown().await;
    Ok(Burst {
        connected: connected.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        answered: answered.load(Ordering::Relaxed),
        rss_kb,
        fds,
    })
}

// --- the bench ---------------------------------------------------------------------------------

struct Bench {
    opts: Opts,
    svc: Service,
    dongle: Dongle,
    feeder: AsyncClient,
    http: reqwest::Client,
    table: Table,
}

impl Bench {
    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let r = self.http.get(self.svc.url(path)).send().await?;
        ensure!(r.status().is_success(), "GET {path}: {}", r.status());
        Ok(r.json().await?)
    }

    async fn post_json(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(self.svc.url(path))
            .json(&body)
            .send()
            .await?;
        ensure!(r.status().is_success(), "POST {path}: {}", r.status());
        Ok(r.json().await?)
    }

    /// Polls `what` every 5 ms until it holds, for at most `timeout`.
    async fn poll_until(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl AsyncFn(&Bench) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self).await? {
                return Ok(());
            }
            self.svc.exited()?;
            ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn current_soc(&self) -> anyhow::Result<Option<u64>> {
        Ok(self.get_json("/api/charging/status").await?["current_soc"].as_u64())
    }

    /// Publishes a SOC and waits until the service shows it.
    async fn set_soc(&mut self, soc: u8) -> anyhow::Result<()> {
        // Twice: a reading far from the last one is held until a second one confirms it.
        for _ in 0..2 {
            self.dongle
                .publish("inputbank1", telemetry_payload(soc))
                .await?;
        }
        self.poll_until(
            "the service to show the SOC",
            Duration::from_secs(10),
            async |b: &Bench| Ok(b.current_soc().await? == Some(u64::from(soc))),
        )
        .await
    }

    /// Waits until the charge has ended and been recorded (all settings restored).
    async fn wait_session_end(&mut self, before: usize) -> anyhow::Result<()> {
        self.poll_until(
            "the charge to end (history entry)",
            Duration::from_secs(90),
            async |b: &Bench| Ok(b.svc.history_len() > before),
        )
        .await
    }

    async fn startup_service(&mut self) -> anyhow::Result<()> {
        self.poll_until(
            "health with mqtt_connected",
            Duration::from_secs(20),
            async |b: &Bench| {
                Ok(b.get_json("/api/health")
                    .await
                    .ok()
                    .is_some_and(|h| h["mqtt_connected"] == json!(true)))
            },
        )
        .await?;
        // What a legacy dongle sends on connect: its settings and telemetry.
        self.dongle.publish_holdbank().await?;
        self.set_soc(LOW_SOC).await
    }

    /// One charge started through the API and stopped by telemetry; returns the stop latency.
    async fn stop_run(&mut self) -> anyhow::Result<Duration> {
        self.set_soc(LOW_SOC).await?;
        self.dongle.drain();
        let history = self.svc.history_len();
        let r = self
            .post_json("/api/charging/enable", json!({"target_soc": TARGET}))
            .await?;
        ensure!(
            r["success"] == json!(true) && r["is_charging"] == json!(true),
            "enable failed: {r}"
        );
        let on = self
            .dongle
            .wait_update("ACCharge=1", Duration::from_secs(5), |u| {
                is_ac_charge(u, true)
            })
            .await?;
        tokio::time::sleep_until((on.at + AFTER_START).into()).await;
        let t0 = Instant::now();
        self.dongle
            .publish("inputbank1", telemetry_payload(TARGET))
            .await?;
        let off = self
            .dongle
            .wait_update("ACCharge=0", Duration::from_secs(20), |u| {
                is_ac_charge(u, false)
            })
            .await?;
        let latency = off.at.saturating_duration_since(t0);
        self.wait_session_end(history).await?;
        Ok(latency)
    }

    async fn stop_runs(&mut self, n: usize, label: &str) -> anyhow::Result<Vec<Duration>> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let d = self.stop_run().await?;
            progress(format!(
                "{label} run {}/{n}: {:.2} ms",
                i + 1,
                d.as_secs_f64() * 1e3
            ));
            v.push(d);
        }
        Ok(v)
    }

    /// A `once` schedule at the next whole minute (at least 3 s away); returns how late the
    /// first write came after that instant.
    async fn schedule_run(&mut self) -> anyhow::Result<Duration> {
        self.set_soc(LOW_SOC).await?;
        self.dongle.drain();
        let history = self.svc.history_len();
        let now = jiff::Timestamp::now();
        let mut at = jiff::Timestamp::from_second(now.as_second() - now.as_second() % 60 + 60)?;
        if at.duration_since(now) < jiff::SignedDuration::from_secs(3) {
            at = at.checked_add(jiff::SignedDuration::from_mins(1))?;
        }
        let utc = at.to_zoned_datetime(jiff::tz::TimeZone::UTC);
        let hhmm = utc.strftime("%H:%M").to_string();
        let r = self
            .post_json(
                "/api/charge/schedule",
                json!({"target_soc": TARGET, "start_time": hhmm, "mode": "once", "enabled": true}),
            )
            .await?;
        let expected = utc.strftime("%Y-%m-%dT%H:%M:%S").to_string();
        ensure!(
            r["next_run"] == json!(expected),
            "the schedule's next_run is not {expected}: {r}"
        );
        let scheduled = SystemTime::UNIX_EPOCH + Duration::from_secs(at.as_second() as u64);
        let first = self
            .dongle
            .wait_update(
                "a write after the schedule",
                Duration::from_secs(130),
                |_| true,
            )
            .await?;
        let late = first
            .wall
            .duration_since(scheduled)
            .context("a write came before the scheduled instant")?;
        self.dongle
            .wait_update("ACCharge=1", Duration::from_secs(30), |u| {
                is_ac_charge(u, true)
            })
            .await?;
        let r = self.post_json("/api/charging/disable", json!({})).await?;
        ensure!(r["success"] == json!(true), "disable failed: {r}");
        self.wait_session_end(history).await?;
        Ok(late)
    }

    /// `total` GETs of /api/charge/status from `clients` concurrent clients. Returns the
    /// latencies and the wall time taken.
    async fn http_load(
        &self,
        total: usize,
        clients: usize,
    ) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients)
            .build()?;
        let url = self.svc.url("/api/charge/status");
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let r = client.get(&url).send().await?;
                    ensure!(r.status().is_success(), "status {}", r.status());
                    r.bytes().await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut all = Vec::with_capacity(total);
        for t in tasks {
            all.extend(t.await??);
        }
        Ok((all, start.elapsed()))
    }

    async fn http_phase(&mut self) -> anyhow::Result<()> {
        let clients = self.opts.http_clients;
        let (warm, _) = self.http_load(self.opts.warm_requests, clients).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = self.svc.rss_kb()?;
        self.table.add(
            &format!("RSS after {} HTTP requests", warm.len()),
            1,
            mb(rss),
        );
        progress(format!("RSS after {} requests: {}", warm.len(), mb(rss)));

        let (svc0, own0) = (self.svc.cpu_ns(), own_cpu_ns());
        let (lat, took) = self.http_load(self.opts.http_requests, clients).await?;
        let svc_us = (self.svc.cpu_ns() - svc0) as f64 / 1e3 / lat.len() as f64;
        let own_us = (own_cpu_ns() - own0) as f64 / 1e3 / lat.len() as f64;
        let v = sorted_ms(&lat);
        let p99 = pct(&v, 99.0);
        let rps = lat.len() as f64 / took.as_secs_f64();
        self.table.check(
            &format!("HTTP GET /api/charge/status, {clients} concurrent clients"),
            lat.len(),
            format!(
                "{rps:.0} req/s, median {:.2} ms, p99 {p99:.2} ms, max {:.2} ms",
                pct(&v, 50.0),
                v[v.len() - 1]
            ),
            "p99 <= 2 ms",
            p99 <= 2.0,
        );
        self.table.add(
            "CPU per HTTP request during that load",
            lat.len(),
            format!("service {svc_us:.1} µs, load generator (bench process) {own_us:.1} µs"),
        );
        progress(format!("HTTP: {rps:.0} req/s, p99 {p99:.2} ms"));

        // The same with one client: the service's own latency without queueing behind 31
        // other requests on a 2-core machine shared with the load generator.
        let (lat1, took1) = self.http_load(2_000, 1).await?;
        let v1 = sorted_ms(&lat1);
        self.table.add(
            "HTTP GET /api/charge/status, 1 client (reference)",
            lat1.len(),
            format!(
                "{:.0} req/s, median {:.3} ms, p99 {:.3} ms",
                lat1.len() as f64 / took1.as_secs_f64(),
                pct(&v1, 50.0),
                pct(&v1, 99.0)
            ),
        );
        Ok(())
    }

    /// A week of dongle traffic at 1 message/s per topic, published as fast as it is taken,
    /// in batches whose last message carries a marker SOC that the service must show before
    /// the next batch (so nothing piles up in the broker and every message is processed).
    async fn week_phase(&mut self, rss_before: u64) -> anyhow::Result<()> {
        let n = self.opts.week_messages;
        const BATCH: u64 = 5_000;
        let holds = holdbank_payload(&self.dongle.holds.lock().unwrap());
        let cpu0 = self.svc.cpu_ns();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut batch = 0u64;
        while sent < n {
            let end = (sent + BATCH).min(n);
            // Between-run SOCs are 30..=89; markers alternate 10 and 11. A marker comes twice:
            // the service holds a reading that jumps far until a second one confirms it.
            let marker = 10 + (batch % 2) as u8;
            for i in sent..end {
                let soc = if i + 2 >= end {
                    marker
                } else {
                    30 + (i % 60) as u8
                };
                self.feeder
                    .publish(topic("holdbank1"), QoS::AtLeastOnce, false, holds.clone())
                    .await?;
                self.feeder
                    .publish(
                        topic("inputbank1"),
                        QoS::AtLeastOnce,
                        false,
                        telemetry_payload(soc),
                    )
                    .await?;
            }
            self.poll_until(
                "a week batch to be processed",
                Duration::from_secs(60),
                async |b: &Bench| Ok(b.current_soc().await? == Some(u64::from(marker))),
            )
            .await?;
            sent = end;
            batch += 1;
            if batch.is_multiple_of(20) {
                progress(format!(
                    "week: {sent}/{n} per topic, RSS {}",
                    mb(self.svc.rss_kb()?)
                ));
            }
        }
        let took = start.elapsed();
        let cpu = self.svc.cpu_ns().saturating_sub(cpu0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = self.svc.rss_kb()?;
        let growth = rss as i64 - rss_before as i64;
        let days = n as f64 / 86_400.0;
        self.table.check(
            &format!("RSS after a simulated week ({n} inputbank1 + {n} holdbank1 messages)"),
            1,
            format!(
                "{} (growth {:+} kB over the week; {:.0} messages/s processed, {:.1} µs CPU per message)",
                mb(rss),
                growth,
                2.0 * n as f64 / took.as_secs_f64(),
                cpu as f64 / 1e3 / (2 * n) as f64
            ),
            "no growth (<= 512 kB)",
            growth <= 512,
        );
        progress(format!(
            "week ({days:.2} days) in {:.1} s: RSS {} ({growth:+} kB)",
            took.as_secs_f64(),
            mb(rss)
        ));
        self.set_soc(LOW_SOC).await
    }

    async fn idle_cpu(&mut self) -> anyhow::Result<()> {
        let secs = self.opts.idle_secs;
        let ticks0 = self.svc.cpu_ticks()?;
        let ns0 = self.svc.cpu_ns();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let ticks = self.svc.cpu_ticks()? - ticks0;
        let ns = self.svc.cpu_ns().saturating_sub(ns0);
        let ms = ticks as f64 * 1000.0 / clock_ticks_per_s() as f64;
        let per_60 = ms * 60.0 / secs as f64;
        self.table.check(
            &format!("idle CPU over {secs} s"),
            1,
            format!(
                "utime+stime {ms:.0} ms ({ticks} ticks); schedstat {:.2} ms",
                ns as f64 / 1e6
            ),
            "<= 10 ms per 60 s",
            per_60 <= 10.0,
        );
        progress(format!("idle CPU: {ms:.0} ms over {secs} s"));
        Ok(())
    }

    async fn growth_phase(&mut self) -> anyhow::Result<()> {
        for rate in self.opts.growth_rates.clone() {
            let feeder = self.feeder.clone();
            let bg = tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    tick.tick().await;
                    let _ = feeder
                        .publish(
                            topic("inputbank1"),
                            QoS::AtLeastOnce,
                            false,
                            telemetry_payload(LOW_SOC),
                        )
                        .await;
                }
            });
            tokio::time::sleep(Duration::from_secs(2)).await;
            let ns0 = self.svc.cpu_ns();
            let window = Duration::from_secs(10);
            tokio::time::sleep(window).await;
            let cpu_ms_per_s =
                self.svc.cpu_ns().saturating_sub(ns0) as f64 / 1e6 / window.as_secs_f64();
            let stops = self
                .stop_runs(self.opts.growth_runs, &format!("{rate} msg/s: stop"))
                .await?;
            let rss = self.svc.rss_kb()?;
            bg.abort();
            let v = sorted_ms(&stops);
            let p95 = pct(&v, 95.0);
            self.table.check(
                &format!("cost growth: {rate} telemetry msg/s"),
                stops.len(),
                format!(
                    "stop latency median {:.2} ms, p95 {p95:.2} ms; CPU {cpu_ms_per_s:.2} ms/s; RSS {}",
                    pct(&v, 50.0),
                    mb(rss)
                ),
                "stop p95 <= 20 ms",
                p95 <= 20.0,
            );
        }
        Ok(())
    }

    /// Bursts of [`BURST`] connections, each held open for a moment and then closed; RSS is
    /// read while they are open and 10 s after they close.
    async fn edge_phase(&mut self, idle_rss: u64) -> anyhow::Result<()> {
        let bursts = self.opts.edge_bursts;
        let before = self.svc.rss_kb()?;
        let mut after = before;
        for i in 1..=bursts {
            let b = burst(&self.svc, BURST, Duration::from_secs(5)).await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            self.svc.exited()?;
            after = self.svc.rss_kb()?;
            progress(format!(
                "edge burst {i}/{bursts}: {} connected, {} failed, {} answered; service {} fds, RSS {} open, {} 10 s after",
                b.connected,
                b.failed,
                b.answered,
                b.fds,
                mb(b.rss_kb),
                mb(after)
            ));
            if i == 1 {
                self.table.add(
                    &format!(
                        "RSS with {BURST} connections opened at once (half send a request, half stay silent)"
                    ),
                    1,
                    format!(
                        "{} (before: {}; {} connected, {} answered while held; the service had {} file descriptors open)",
                        mb(b.rss_kb),
                        mb(before),
                        b.connected,
                        b.answered,
                        b.fds
                    ),
                );
                self.table.check(
                    &format!("RSS 10 s after those {BURST} connections closed"),
                    1,
                    mb(after),
                    "<= idle + 16 MiB",
                    after <= idle_rss + 16 * 1024,
                );
            }
        }
        if bursts > 1 {
            self.table.check(
                &format!("RSS 10 s after {bursts} such bursts"),
                bursts,
                mb(after),
                "<= idle + 16 MiB",
                after <= idle_rss + 16 * 1024,
            );
        }
        Ok(())
    }
}

/// Startup: spawn -> first 200 from /api/health, each on a fresh data directory.
fn startup_runs(opts: &Opts, broker_port: u16, table: &mut Table) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for i in 0..opts.startup_runs {
        let t0 = Instant::now();
        let mut svc = Service::spawn(&opts.bin, broker_port, &format!("bench-startup-{i}"))?;
        loop {
            if health_200(svc.http_port) {
                break;
            }
            svc.exited()?;
            ensure!(t0.elapsed() < Duration::from_secs(10), "no 200 within 10 s");
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(t0.elapsed());
        svc.stop();
    }
    let v = sorted_ms(&samples);
    table.check(
        "startup: spawn -> first 200 from /api/health",
        v.len(),
        format!(
            "median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
            pct(&v, 50.0),
            pct(&v, 95.0),
            v[v.len() - 1]
        ),
        "<= 50 ms (p95)",
        pct(&v, 95.0) <= 50.0,
    );
    progress(format!("startup median {:.2} ms", pct(&v, 50.0)));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    solar_charging_backend::notify::https::install_default_provider();
    let opts = Opts::parse()?;
    let began = Instant::now();
    let broker = solar_charging_backend::sim::broker::start_embedded_broker(0)?;
    progress(format!(
        "broker on 127.0.0.1:{}, service binary {}",
        broker.port,
        opts.bin.display()
    ));
    let mut table = Table::default();

    if opts.wants("startup") {
        progress(format!("startup: {} runs", opts.startup_runs));
        startup_runs(&opts, broker.port, &mut table)?;
    }

    let dongle = dongle(broker.port).await?;
    let feeder = feeder(broker.port).await?;
    let svc = Service::spawn(&opts.bin, broker.port, "solar-bench-service")?;
    let mut b = Bench {
        opts,
        svc,
        dongle,
        feeder,
        http: reqwest::Client::new(),
        table,
    };
    b.startup_service().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = b.svc.rss_kb()?;
    let (anon, file) = b.svc.rss_split_kb()?;
    b.table.check(
        "RSS idle after startup",
        1,
        format!(
            "{} (anonymous {}, file-backed {}; {} threads)",
            mb(idle_rss),
            mb(anon),
            mb(file),
            b.svc.threads()?
        ),
        "<= 8 MB",
        idle_rss <= 8 * 1024,
    );
    progress(format!("idle RSS {}", mb(idle_rss)));

    if b.opts.wants("idle") {
        progress(format!("idle CPU: {} s", b.opts.idle_secs));
        b.idle_cpu().await?;
    }

    if b.opts.wants("stop") {
        progress(format!("stop latency: {} runs", b.opts.stop_runs));
        let stops = b.stop_runs(b.opts.stop_runs, "stop").await?;
        b.table.latency(
            "stop latency: SOC >= target -> ACCharge=0",
            &stops,
            Some(20.0),
        );
    }

    if b.opts.wants("schedule") && b.opts.schedule_runs > 0 {
        progress(format!(
            "schedule accuracy: {} runs, up to a minute each",
            b.opts.schedule_runs
        ));
        let mut late = Vec::new();
        for i in 0..b.opts.schedule_runs {
            let d = b.schedule_run().await?;
            progress(format!(
                "schedule run {}/{}: {:.2} ms late",
                i + 1,
                b.opts.schedule_runs,
                d.as_secs_f64() * 1e3
            ));
            late.push(d);
        }
        b.table.latency(
            "schedule accuracy: start instant -> first update",
            &late,
            Some(200.0),
        );
        b.table.notes.push(format!(
            "schedule accuracy has {} runs because each waits for the next whole minute (up to a minute per run)",
            late.len()
        ));
    }

    if b.opts.wants("http") {
        progress("HTTP");
        b.http_phase().await?;
    }

    progress(format!(
        "simulated week: {} messages per topic (unless skipped)",
        b.opts.week_messages
    ));
    let before_week = b.svc.rss_kb()?;
    if b.opts.wants("week") {
        b.week_phase(before_week).await?;
    }

    if b.opts.wants("growth") {
        progress("cost growth");
        b.growth_phase().await?;
    }

    if b.opts.wants("edge") {
        progress(format!(
            "HTTP edge: {} bursts of {BURST} connections",
            b.opts.edge_bursts
        ));
        b.edge_phase(idle_rss).await?;
    }

    let hwm = b.svc.proc_status_kb("VmHWM:")?;
    b.table
        .add("peak RSS (VmHWM) over the whole bench", 1, mb(hwm));
    b.table.notes.push(format!(
        "machine: {} cores; the bench (client, broker, dongle) shares them with the service",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    b.table.notes.push(format!(
        "stop latency is measured with the default min_write_interval (1 s): the stopping SOC is published {} ms after ACCharge=1",
        AFTER_START.as_millis()
    ));
    b.table.notes.push(format!(
        "the service's data directory is under {} (its state saves fsync there; TMPDIR=/dev/shm leaves disk latency out)",
        std::env::temp_dir().display()
    ));
    b.table.notes.push(format!(
        "RSS before the week: {}; verdicts on latencies use the p95 (p99 for HTTP)",
        mb(before_week)
    ));
    b.table.notes.push(format!(
        "binary: {} ({:.1} MB); total bench time {:.0} s",
        b.opts.bin.display(),
        fs::metadata(&b.opts.bin)?.len() as f64 / 1e6,
        began.elapsed().as_secs_f64()
    ));
    b.svc.stop();

    let out = b.table.render();
    println!("{out}");
    if let Some(path) = &b.opts.out {
        fs::write(path, &out)?;
    }
    Ok(())
}
