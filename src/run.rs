//! What each command does, from a parsed command line to a running service.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use crate::app;
use crate::cli::{DemoArgs, DiscoverArgs, FaultArg, FirmwareArg, PricesArg, SimulateArgs};
use crate::clock::Clock;
use crate::config::{self, ConfigError, EnvOverrides, LogFormat, LoggingConfig};
use crate::domain::units::TargetSoc;
use crate::dongle::discover;
use crate::logging;
use crate::sim;

mod placeholders;

/// The config file, with the environment's overrides; a missing file says how to make one.
fn load_config(config_path: &Path) -> anyhow::Result<config::Loaded> {
    match config::load_file(config_path, &EnvOverrides::from_process()) {
        Ok(l) => Ok(l),
        Err(ConfigError::Read { path, source })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::bail!(
                "no config file at {path}. Copy config.example.yaml to config.yaml and set mqtt.host and mqtt.dongle_prefix (or pass --config PATH). To try the service without an inverter, run: solar-charging-backend demo"
            );
        }
        Err(e) => Err(e.into()),
    }
}

/// `serve`: the service itself.
pub async fn serve(config_path: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let loaded = load_config(config_path)?;
    let config = loaded.config;
    logging::init(&config.logging);
    for w in &loaded.warnings {
        warn!("config: {w}");
    }
    for p in placeholders::placeholders(&config) {
        warn!("config: {p}");
    }
    let signal = shutdown_signal();
    info!(version = env!("CARGO_PKG_VERSION"), broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        dongle = %config.mqtt.dongle_prefix, "starting");
    let listener = app::bind(&config.server.host, config.server.port).await?;
    let app = app::start(&config, data_dir, Clock::System, listener).await?;
    crate::systemd::ready(app.engine.clone());
    app.run_until(signal).await
}

/// A running demo: broker, simulated dongle and service in this process.
pub struct Demo {
    pub app: app::App,
    pub sim: sim::dongle::SimHandle,
    pub broker_port: u16,
    pub data_dir: PathBuf,
    /// The config the demo's service runs with (its charging timeouts scaled by `--speed`).
    pub config: config::Config,
    /// With `--prices sample`: the sample day and the cheapest-hours schedule set over it.
    pub cheapest: Option<DemoCheapest>,
    _tmp: Option<tempfile::TempDir>,
}

/// The demo's day of prices (`--prices sample`) and the cheapest-hours schedule over it.
///
/// The physics runs `--speed` times faster than the wall clock while schedules keep to the
/// wall clock (in whole minutes), so the day is compressed as much: 48 slots of 30 min /
/// speed from the current minute. It begins at the sample's 16:00, with the evening peak, so
/// that the night's trough lies inside the window and charging at the start would be the dear
/// choice. The planner's charge power is multiplied by the speed too, so that a plan's hours
/// are the compressed ones (and its energy and costs those of the real battery).
#[derive(Debug, Clone, PartialEq)]
pub struct DemoCheapest {
    /// The sample day, slot after slot.
    pub slots: Vec<crate::tariff::PriceSlot>,
    /// The length of each slot.
    pub slot: Duration,
    /// The schedule's start time: the next minute.
    pub start: Timestamp,
    /// When the target must be reached: the end of the day rounded up to a minute, at most
    /// 23 hours ahead (as the service reads the schedule's `ready_by`).
    pub ready_by: Timestamp,
    pub target: TargetSoc,
    /// The simulated battery's usable capacity.
    pub capacity_kwh: f64,
    /// The planner's charge power: the simulated inverter's, times the speed.
    pub charge_kw: f64,
}

impl DemoCheapest {
    /// The target of the demo's cheapest-hours schedule.
    pub const TARGET: u8 = 80;
    /// The sample's half hour the demo's day begins at (16:00, the evening peak).
    pub const FIRST_HALF_HOUR: usize = crate::tariff::sample::PEAK.start;
    /// The longest the demo's schedule looks ahead.
    pub const MAX_AHEAD: SignedDuration = SignedDuration::from_hours(23);

    /// The day and the schedule for a demo started at `now` at `speed`, for the simulated
    /// battery `sim`, with schedule times in `tz`.
    pub fn new(
        now: Timestamp,
        speed: f64,
        sim: &sim::dongle::SimConfig,
        tz: &TimeZone,
    ) -> DemoCheapest {
        let minute = SignedDuration::from_mins(1);
        let this_minute =
            Timestamp::from_second(now.as_second().div_euclid(60) * 60).unwrap_or(now);
        // Whole milliseconds, at least one: exact at the usual speeds (30 s at 60x).
        let slot = Duration::from_millis(((1_800_000.0 / speed).round() as u64).max(1));
        let slots =
            crate::tariff::sample::sample_day_from(this_minute, slot, Self::FIRST_HALF_HOUR);
        let day_end = slots.last().map_or(this_minute, |s| s.end);
        let start = this_minute + minute;
        let rounded_up = Timestamp::from_second(day_end.as_second().div_euclid(60) * 60)
            .map(|t| if t < day_end { t + minute } else { t })
            .unwrap_or(day_end);
        let mut ready = rounded_up
            .min(this_minute + Self::MAX_AHEAD)
            .max(start + minute);
        // Across a change to summer time 23 hours can end at the start's time of day, which
        // would be no window at all.
        if local_time(ready, tz) == local_time(start, tz) {
            ready -= SignedDuration::from_hours(1);
        }
        DemoCheapest {
            slots,
            slot,
            start,
            ready_by: crate::domain::night::ready_by_after(start, local_time(ready, tz), tz),
            target: TargetSoc::new(Self::TARGET).expect("a valid target"),
            capacity_kwh: sim.capacity_wh / 1000.0,
            charge_kw: sim.max_charge_w / 1000.0 * speed,
        }
    }

    /// The day's prices as a feed publishes them.
    pub fn prices(&self, fetched_at: Timestamp) -> crate::domain::night::PriceBook {
        crate::domain::night::PriceBook {
            source: "sample".into(),
            currency: "GBP".into(),
            fetched_at,
            slots: std::sync::Arc::new(self.slots.clone()),
            problem: None,
        }
    }

    /// The schedule: once, from the next minute, the target by `ready_by`.
    pub fn schedule(&self, tz: &TimeZone) -> crate::engine::ScheduleInput {
        crate::engine::ScheduleInput {
            target: self.target,
            time: local_time(self.start, tz),
            mode: crate::domain::units::Mode::Once,
            enabled: true,
            days: None,
            first_run: Some(self.start),
            ready_by: Some(local_time(self.ready_by, tz)),
        }
    }

    /// Whether a charge from `soc` needs more than the window with the planner's margin (then
    /// the plan charges from the start, and says so).
    pub fn too_short(&self, soc: f64) -> bool {
        let req = crate::domain::plan::Request {
            now: self.start,
            earliest: self.start,
            ready_by: self.ready_by,
            soc_now: soc,
            target: f64::from(self.target.get()),
            capacity_kwh: self.capacity_kwh,
            charge_kw: self.charge_kw,
        };
        req.time_needed()
            .is_none_or(|n| n > self.ready_by.duration_since(self.start))
    }
}

fn local_time(t: Timestamp, tz: &TimeZone) -> crate::domain::units::LocalTime {
    crate::domain::schedule::local_time_of(t, tz)
}

/// The simulated dongle's ID in the demo.
const DEMO_PREFIX: &str = "dongle-40:4C:CA:00:00:01";

/// How often the demo's legacy dongle publishes its hold bank. Real ones take a minute or
/// more, but legacy firmware has no read request: the service reads a setting back from the
/// next bank, waiting at most `charging.readback_timeout_s` (10 s), after a write that got no
/// answer (`--fault late-apply`), and before a charge when it has not heard the settings yet.
/// Every 5 s, like the telemetry, those reads find a bank in time.
const DEMO_HOLD_INTERVAL: Duration = Duration::from_secs(5);

/// How long the demo waits for its service to reach the embedded broker before starting the
/// simulated dongle anyway.
const DEMO_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The charging timeouts of the demo's service. Those that measure what the battery does (how
/// long a charge may run, how long SOC may stay flat, how long a full battery tapers) are
/// divided by `--speed` like the physics, so that `--fault soc-frozen` ends a charge in about
/// a minute instead of half an hour. Each stays within the range the config accepts.
/// `stale_after_s` is not scaled: it measures the dongle's silence, and the simulated dongle
/// reports in real time (telemetry every 5 s, heartbeat every 30 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoTimeouts {
    pub safety_cutoff: Duration,
    pub stall_minutes: u32,
    pub taper_minutes: u32,
}

impl DemoTimeouts {
    pub fn for_speed(speed: f64) -> DemoTimeouts {
        let real = config::ChargingConfig::default();
        // The config's limits: 0.05..=23.5 h, 1..=600 min, 1..=240 min.
        let cutoff_s = (real.safety_cutoff.as_secs_f64() / speed).clamp(180.0, 23.5 * 3600.0);
        let minutes = |m: u32, max: f64| (f64::from(m) / speed).ceil().clamp(1.0, max) as u32;
        DemoTimeouts {
            // Whole seconds, so that the hours written to the config read back exactly.
            safety_cutoff: Duration::from_secs(cutoff_s.ceil() as u64),
            stall_minutes: minutes(real.stall_minutes, 600.0),
            taper_minutes: minutes(real.taper_minutes, 240.0),
        }
    }

    /// The `charging:` keys that set them.
    fn yaml(&self) -> String {
        format!(
            "{{safety_cutoff_hours: {}, stall_minutes: {}, taper_minutes: {}}}",
            self.safety_cutoff.as_secs_f64() / 3600.0,
            self.stall_minutes,
            self.taper_minutes
        )
    }
}

/// Starts the demo's parts (used by `demo` and by its test).
pub async fn start_demo(args: &DemoArgs) -> anyhow::Result<Demo> {
    start_demo_with_clock(args, Clock::System).await
}

/// [`start_demo`] on a given clock (a test's manual clock moves the service, the dongle and
/// its physics together).
pub async fn start_demo_with_clock(args: &DemoArgs, clock: Clock) -> anyhow::Result<Demo> {
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a number above 0 (got {})",
        args.speed
    );
    // First, so that a port in use fails before anything else has started.
    let listener = bind_demo(&args.host, args.port).await?;
    let broker =
        sim::broker::start_embedded_broker(0).context("the embedded MQTT broker did not start")?;
    let timeouts = DemoTimeouts::for_speed(args.speed);
    let mut yaml = format!(
        "mqtt: {{host: 127.0.0.1, port: {}, dongle_prefix: \"{DEMO_PREFIX}\", client_id: solar-demo}}\nserver: {{host: \"{}\", port: {}}}\ncharging: {}\n",
        broker.port,
        args.host,
        args.port,
        timeouts.yaml()
    );
    if args.ntfy.is_some() || !args.webhook.is_empty() {
        // JSON strings are YAML strings: the URLs need no escaping of their own.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        yaml.push_str("notifications:\n");
        if let Some(url) = &args.ntfy {
            yaml.push_str(&format!("  ntfy: {{url: {}}}\n", quote(url)));
        }
        if !args.webhook.is_empty() {
            yaml.push_str("  webhooks:\n");
            for url in &args.webhook {
                yaml.push_str(&format!("    - {{url: {}}}\n", quote(url)));
            }
        }
    }
    let mut config = config::parse(&yaml, &EnvOverrides::default())
        .map_err(|p| {
            let all: Vec<String> = p.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the demo cannot start: {}", all.join("; "))
        })?
        .config;
    let sim_cfg = sim::dongle::SimConfig {
        prefix: DEMO_PREFIX.into(),
        firmware: firmware(args.firmware),
        hold_interval: Some(DEMO_HOLD_INTERVAL),
        speed: args.speed,
        initial_soc: args.soc,
        tz: jiff::tz::TimeZone::system(),
        fault: fault(args.fault),
        ..Default::default()
    };
    let cheapest = args.prices.map(|PricesArg::Sample| {
        DemoCheapest::new(clock.now(), args.speed, &sim_cfg, &config.timezone)
    });
    let mut extras = app::Extras::default();
    if let Some(day) = &cheapest {
        // Set here, not in the YAML: the sped-up power is far beyond what a real inverter (and
        // so `battery.charge_kw`) allows.
        config.battery = config::BatteryConfig {
            capacity_kwh: Some(day.capacity_kwh),
            charge_kw: Some(day.charge_kw),
        };
        extras.prices = Some(crate::tariff::PriceFeed::fixed(day.prices(clock.now())));
    }
    let c = &config.charging;
    info!(
        speed = args.speed,
        safety_cutoff_min = c.safety_cutoff.as_secs_f64() / 60.0,
        stall_minutes = c.stall_minutes,
        taper_minutes = c.taper_minutes,
        stale_after_s = c.stale_after.as_secs(),
        "demo: the charging timeouts are divided by --speed like the battery physics (the dongle-silence limit stays in real time, as the simulated dongle reports)"
    );
    let (data_dir, tmp) = match &args.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new().prefix("solar-demo-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let app = app::start_with(&config, &data_dir, clock.clone(), listener, extras).await?;
    // The dongle publishes its telemetry and (legacy) hold bank when it connects, and nothing
    // is retained: started before the service listens, those reports would be lost, and a
    // charge asked for at once would find no settings to put back at its end.
    let mut status = app.engine.watch();
    if tokio::time::timeout(DEMO_CONNECT_WAIT, status.wait_for(|s| s.mqtt_connected))
        .await
        .is_err()
    {
        warn!(
            "the demo's service has not reached the embedded broker yet; starting the simulated dongle anyway"
        );
    }
    let simulator = sim::dongle::spawn("127.0.0.1", broker.port, sim_cfg, clock);
    simulator.set_fault(fault(args.fault));
    if let Some(day) = &cheapest {
        let set = app
            .engine
            .set_schedule(day.schedule(&config.timezone))
            .await;
        if let Err(e) = set {
            app.kill();
            simulator.shutdown().await;
            anyhow::bail!("the demo could not set its cheapest-hours schedule: {e}");
        }
        info!(start = %day.start, ready_by = %day.ready_by, charge_kw = day.charge_kw,
            "demo: a cheapest-hours schedule over the sample day of prices");
    }
    Ok(Demo {
        app,
        sim: simulator,
        broker_port: broker.port,
        data_dir,
        config,
        cheapest,
        _tmp: tmp,
    })
}

/// Binds the demo's HTTP port. Its port comes from `--port` (or `SERVER_PORT`), not from a
/// config file, so the error names those.
async fn bind_demo(host: &str, port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {host}:{port}: is another program (or another demo) using the port? Start the demo on another one with --port, e.g. `solar-charging-backend demo --port {}` (SERVER_PORT works too)",
                port.wrapping_add(1).max(1024)
            )
        })
}

/// `demo`: an embedded broker, the simulated dongle and the service, all in this process.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    logging::init(&LoggingConfig {
        level: "info".into(),
        format: LogFormat::Text,
    });
    let signal = shutdown_signal();
    let demo = start_demo(&args).await?;
    print_demo_banner(&demo, args.speed, args.soc);
    let result = demo.app.run_until(signal).await;
    demo.sim.shutdown().await;
    result
}

fn print_demo_banner(demo: &Demo, speed: f64, soc: f64) {
    let base = format!("http://{}", demo.app.addr);
    let c = &demo.config.charging;
    let tz = &demo.config.timezone;
    let in2 = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_mins(2))
        .map(|t| {
            t.to_zoned_datetime(tz.clone())
                .strftime("%H:%M")
                .to_string()
        })
        .unwrap_or_else(|_| "02:30".into());
    let cheapest = demo
        .cheapest
        .as_ref()
        .map(|day| cheapest_banner(day, &base, tz, soc))
        .unwrap_or_default();
    let replaces = if demo.cheapest.is_some() {
        " (it replaces the cheapest-hours one)"
    } else {
        ""
    };
    println!(
        r#"
  Demo running: a simulated inverter (battery physics {speed}x faster) behind an embedded
  MQTT broker on 127.0.0.1:{broker_port}. No real inverter is touched. State: {data}
  The safety stops are sped up as much: a charge runs at most {cutoff} min, and ends when SOC
  has not risen for {stall} min (the service's defaults: 8 h and 30 min).
{cheapest}
  Dashboard:  {base}/
  API docs:   {base}/docs

  Try it (in another terminal):
    curl -s {base}/api/charging/status
    # charge now to 80 %; with the default speed this ends within about a minute:
    curl -s -X POST {base}/api/charging/enable -H 'Content-Type: application/json' -d '{{"target_soc": 80}}'
    # or schedule a charge two minutes from now{replaces}:
    curl -s -X POST {base}/api/charge/schedule -H 'Content-Type: application/json' -d '{{"target_soc": 90, "start_time": "{in2}", "mode": "once"}}'

  Press Ctrl-C to stop.
"#,
        broker_port = demo.broker_port,
        data = demo.data_dir.display(),
        cutoff = (c.safety_cutoff.as_secs_f64() / 60.0).round(),
        stall = c.stall_minutes,
    );
}

/// The banner's lines on `--prices sample`: what the demo set, and where to watch it.
fn cheapest_banner(day: &DemoCheapest, base: &str, tz: &TimeZone, soc: f64) -> String {
    let at = |t: Timestamp, f: &str| t.to_zoned_datetime(tz.clone()).strftime(f).to_string();
    let (from, until) = (
        day.slots.first().map_or(day.start, |s| s.start),
        day.slots.last().map_or(day.ready_by, |s| s.end),
    );
    let mut text = format!(
        r#"
  Cheapest hours: a sample day of prices in GBP/kWh, compressed like the physics: 48
  half-hour slots of {slot} each, from {from} to {until}, dear at first (the evening peak) and
  cheapest in the middle (the night). The planner's charge power is sped up as much
  ({kw} kW for the simulated {cap} kWh battery).
  The demo has set a cheapest-hours schedule: {target} % by {ready_by}, starting no earlier
  than {start}, once. It charges only in the cheapest slots of that window.
  Watch it on the dashboard ("Cheapest hours plan"), or: curl -s {base}/api/charge/plan
"#,
        slot = human(day.slot),
        from = at(from, "%H:%M:%S"),
        until = at(until, "%H:%M:%S"),
        kw = day.charge_kw,
        cap = day.capacity_kwh,
        target = day.target.get(),
        ready_by = at(day.ready_by, "%H:%M"),
        start = at(day.start, "%H:%M"),
    );
    if day.too_short(soc) {
        text.push_str(&format!(
            "  At this speed the window is shorter than the charge with the planner's {} min safety\n  margin: the plan says so and charges from its start (--speed 60 shows a price-based plan).\n",
            crate::domain::plan::MIN_MARGIN.as_mins()
        ));
    }
    text
}

/// A length as a person reads it: `30 s`, `1.5 s`, `30 min`.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    let round = |x: f64| {
        let r = (x * 10.0).round() / 10.0;
        if r.fract() == 0.0 {
            format!("{r:.0}")
        } else {
            format!("{r:.1}")
        }
    };
    if s >= 60.0 {
        format!("{} min", round(s / 60.0))
    } else if s >= 1.0 {
        format!("{} s", round(s))
    } else {
        format!("{} ms", (s * 1000.0).round())
    }
}

fn firmware(f: FirmwareArg) -> sim::dongle::Firmware {
    match f {
        FirmwareArg::Legacy => sim::dongle::Firmware::Legacy,
        FirmwareArg::Modern => sim::dongle::Firmware::V43,
    }
}

fn fault(f: FaultArg) -> sim::dongle::Fault {
    use sim::dongle::Fault;
    match f {
        FaultArg::None => Fault::None,
        FaultArg::Silent => Fault::Silent,
        FaultArg::RejectWrites => Fault::RejectWrites,
        FaultArg::LateApply => Fault::LateApply {
            delay: Duration::from_secs(15),
        },
        FaultArg::Offline => Fault::Offline,
        FaultArg::SocFrozen => Fault::SocFrozen,
        FaultArg::Garbage => Fault::Garbage,
    }
}

/// `simulate`: only the simulated dongle, against any broker.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    logging::init(&LoggingConfig {
        level: "info".into(),
        format: LogFormat::Text,
    });
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .with_context(|| format!("--broker {:?} is not HOST:PORT", args.broker))?;
    let cfg = sim::dongle::SimConfig {
        prefix: args.prefix.clone(),
        firmware: firmware(args.firmware),
        speed: args.speed,
        initial_soc: args.soc,
        tz: jiff::tz::TimeZone::system(),
        ..Default::default()
    };
    let signal = shutdown_signal();
    let simulator = sim::dongle::spawn(&host, port, cfg, Clock::System);
    simulator.set_fault(fault(args.fault));
    info!(broker = %args.broker, prefix = %args.prefix, "simulated dongle running; Ctrl-C to stop");
    signal.await;
    simulator.shutdown().await;
    Ok(())
}

/// Why push to the app, switched on, cannot work: the key file (readable, a P-256 PKCS#8
/// key) and the CA file. The service itself only logs these and starts without push.
fn push_problems(c: &config::Config) -> Vec<String> {
    let Some(a) = c.apns.as_ref().filter(|a| a.enabled) else {
        return Vec::new();
    };
    if let Some(why) = a.unusable() {
        return vec![format!("apns: push notifications stay off: {why}")];
    }
    let mut out = Vec::new();
    if let Some(key) = &a.key_path
        && let Err(why) = crate::notify::apns::check_key(key)
    {
        out.push(format!("apns.key_path: {why}"));
    }
    if let Some(ca) = &a.ca_file
        && let Err(why) = crate::notify::https::client(Some(ca), true)
    {
        out.push(format!("apns.ca_file: {why}"));
    }
    out
}

/// `check-config`: every problem with its key path, exit 1 if any; warnings (unknown keys,
/// the example's placeholders) leave it valid.
pub fn check_config(path: &Path) -> ExitCode {
    match config::load_file(path, &EnvOverrides::from_process()) {
        Ok(l) => {
            let c = &l.config;
            let warnings: Vec<String> = l
                .warnings
                .iter()
                .map(ToString::to_string)
                .chain(
                    placeholders::placeholders(c)
                        .iter()
                        .map(ToString::to_string),
                )
                .collect();
            for w in &warnings {
                println!("warning: {w}");
            }
            let verdict = match warnings.len() {
                0 => "is valid".to_string(),
                1 => "is valid, with a warning (above)".to_string(),
                n => format!("is valid, with {n} warnings (above)"),
            };
            println!(
                "{} {verdict}: broker {}:{}, dongle {}, HTTP on {}:{}, time zone {}, safety cutoff {:.2} h",
                path.display(),
                c.mqtt.host,
                c.mqtt.port,
                c.mqtt.dongle_prefix,
                c.server.host,
                c.server.port,
                c.timezone_name,
                c.charging.safety_cutoff.as_secs_f64() / 3600.0
            );
            let mut integrations = Vec::new();
            let ha = &c.home_assistant;
            if ha.enabled {
                integrations.push(format!(
                    "home assistant (discovery prefix {}, node {})",
                    ha.discovery_prefix, ha.node_id
                ));
            }
            let push_problems = push_problems(c);
            if let Some(a) = c
                .apns
                .as_ref()
                .filter(|a| a.enabled && push_problems.is_empty())
            {
                let host = a.endpoint.as_deref().unwrap_or(if a.use_sandbox {
                    crate::notify::apns::SANDBOX_HOST
                } else {
                    crate::notify::apns::PRODUCTION_HOST
                });
                integrations.push(format!("iPhone app push (via {host})"));
            }
            let n = &c.notifications;
            if n.ntfy.is_some() {
                integrations.push("ntfy".into());
            }
            if !n.webhooks.is_empty() {
                integrations.push(format!("{} webhook(s)", n.webhooks.len()));
            }
            if integrations.is_empty() {
                println!("integrations: none");
            } else {
                println!("integrations: {}", integrations.join(", "));
            }
            if !push_problems.is_empty() {
                for p in &push_problems {
                    eprintln!("error: {p}");
                }
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `discover`: listens to every topic on the configured broker for `--seconds` and prints one
/// line per dongle prefix seen. Exit 0 when the dongle published under `mqtt.dongle_prefix`,
/// 1 when not, 2 when it could not listen (no config, or the broker unreachable).
pub fn discover(config_path: &Path, args: &DiscoverArgs) -> ExitCode {
    const CANNOT_LISTEN: u8 = 2;
    let loaded = match load_config(config_path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(CANNOT_LISTEN);
        }
    };
    // Only the broker's placeholders matter here: the prefix is what is being looked for.
    for p in placeholders::placeholders(&loaded.config) {
        if p.key != "mqtt.dongle_prefix" {
            eprintln!("warning: {p}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(CANNOT_LISTEN);
        }
    };
    let mqtt = &loaded.config.mqtt;
    let settings = discover::ListenSettings::from_config(mqtt, "-discover");
    println!(
        "listening to every topic on the MQTT broker {}:{} for {} s ...",
        mqtt.host,
        mqtt.port,
        args.seconds.as_secs_f64()
    );
    let listened = runtime.block_on(discover::discover(
        &settings,
        &mqtt.dongle_prefix,
        &Clock::System,
        args.seconds,
        |_| false,
    ));
    match listened {
        Ok(findings) => {
            let (lines, seen) = discover::report(&findings, args.seconds);
            for line in lines {
                println!("{line}");
            }
            if seen {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "{e}. Check mqtt.host, mqtt.port and the login in {}",
                config_path.display()
            );
            ExitCode::from(CANNOT_LISTEN)
        }
    }
}

/// `healthcheck`: a plain HTTP GET with no dependencies, for images without curl.
pub fn healthcheck(url: Option<String>) -> ExitCode {
    let url = url.unwrap_or_else(|| {
        let port = std::env::var("SERVER_PORT")
            .unwrap_or_else(|_| config::ServerConfig::DEFAULT_PORT.to_string());
        format!("http://127.0.0.1:{port}/api/health")
    });
    match probe(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = rest
        .split_once('/')
        .map(|(a, p)| (a, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let addr: PathBuf = authority.into();
    let mut stream = TcpStream::connect(authority)
        .with_context(|| format!("cannot connect to {}", addr.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut head = [0u8; 16];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    anyhow::ensure!(
        line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200"),
        "answered {line:?}"
    );
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (systemd and Docker send SIGTERM). The handlers are
/// installed by this call, not when the future is first polled: a signal that arrives while
/// the service is still starting (after its banner, say) then stops it gracefully instead of
/// killing it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let recv = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = recv(interrupt) => {}
                _ = recv(terminate) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn the_demos_battery_timeouts_are_divided_by_its_speed_within_the_configs_limits() {
        let t = |speed| DemoTimeouts::for_speed(speed);
        let real = t(1.0);
        assert_eq!(real.safety_cutoff, 8 * 60 * MIN);
        assert_eq!((real.stall_minutes, real.taper_minutes), (30, 10));
        let demo = t(60.0);
        assert_eq!(demo.safety_cutoff, 8 * MIN);
        assert_eq!((demo.stall_minutes, demo.taper_minutes), (1, 1));
        // Never below what the config accepts: 3 min, one minute each.
        let fast = t(900.0);
        assert_eq!(fast.safety_cutoff, 3 * MIN);
        assert_eq!((fast.stall_minutes, fast.taper_minutes), (1, 1));
        // Slower than real time, longer, up to the config's limits.
        let slow = t(0.5);
        assert_eq!(slow.safety_cutoff, 16 * 60 * MIN);
        assert_eq!((slow.stall_minutes, slow.taper_minutes), (60, 20));
        assert_eq!(t(0.01).safety_cutoff, Duration::from_secs(23 * 3600 + 1800));
        // Rounded up: a timeout is never shorter than the physics it stands for.
        assert_eq!(t(7.0).stall_minutes, 5);
    }

    #[test]
    fn the_demos_sample_day_is_compressed_by_its_speed_and_its_schedule_fits_inside() {
        let tz = TimeZone::get("Europe/London").unwrap();
        let sim = sim::dongle::SimConfig::default();
        let now: Timestamp = "2026-01-15T18:07:42.5Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let day = DemoCheapest::new(now, 60.0, &sim, &tz);
        assert_eq!(day.slot, Duration::from_secs(30));
        assert_eq!(day.slots.len(), 48);
        assert_eq!(
            day.slots[0].start,
            at("2026-01-15T18:07:00Z"),
            "from this minute"
        );
        assert_eq!(day.start, at("2026-01-15T18:08:00Z"), "the next minute");
        assert_eq!(day.ready_by, at("2026-01-15T18:31:00Z"), "the day's end");
        assert_eq!((day.capacity_kwh, day.charge_kw), (10.0, 300.0));
        assert_eq!(
            day.slots[0].price,
            crate::tariff::sample::SAMPLE_DAY[crate::tariff::sample::PEAK.start]
        );
        assert!(!day.too_short(42.0));
        let s = day.schedule(&tz);
        assert_eq!(
            (s.time.to_string(), s.mode),
            ("18:08".into(), crate::domain::units::Mode::Once)
        );
        assert_eq!(s.ready_by.map(|t| t.to_string()), Some("18:31".into()));
        assert_eq!(s.first_run, Some(day.start));

        // An odd speed: the end rounded up to a minute.
        let odd = DemoCheapest::new(now, 7.0, &sim, &tz);
        assert_eq!(odd.slot, Duration::from_millis(257_143));
        assert_eq!(
            odd.ready_by,
            at("2026-01-15T21:33:00Z"),
            "18:07 + 3 h 25 min 43 s"
        );
        // Real time: the day would end at this very minute tomorrow, so 23 hours at most.
        let real = DemoCheapest::new(now, 1.0, &sim, &tz);
        assert_eq!(real.ready_by, at("2026-01-16T17:07:00Z"));
        assert_eq!(real.charge_kw, 5.0);
        // Too fast for the planner's margin: still a window of a minute, and the banner warns.
        let fast = DemoCheapest::new(now, 900.0, &sim, &tz);
        assert_eq!(fast.slot, Duration::from_secs(2));
        assert_eq!(fast.ready_by, at("2026-01-15T18:09:00Z"));
        assert!(fast.too_short(42.0));
    }

    #[test]
    fn lengths_read_as_people_say_them() {
        assert_eq!(human(Duration::from_secs(30)), "30 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(1800)), "30 min");
        assert_eq!(human(Duration::from_millis(257_143)), "4.3 min");
        assert_eq!(human(Duration::from_millis(2)), "2 ms");
    }

    #[test]
    fn the_timeouts_read_back_from_the_demos_config_as_they_were_set() {
        for speed in [1.0, 7.0, 60.0, 900.0] {
            let t = DemoTimeouts::for_speed(speed);
            let yaml = format!(
                "mqtt: {{host: h, dongle_prefix: d}}\ncharging: {}\n",
                t.yaml()
            );
            let c = config::parse(&yaml, &EnvOverrides::default())
                .unwrap()
                .config
                .charging;
            assert_eq!(
                c.safety_cutoff.as_secs(),
                t.safety_cutoff.as_secs(),
                "{speed}"
            );
            assert_eq!(
                (c.stall_minutes, c.taper_minutes),
                (t.stall_minutes, t.taper_minutes)
            );
        }
    }
}
