//! Wiring: store, dongle client, engine, HTTP server and (when configured) Home Assistant,
//! started together and stopped together.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::session::ChargeParams;
use crate::dongle::client::{self, DongleSettings};
use crate::engine::{self, EngineConfig, EngineHandle};
use crate::http::{self, ApiState};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tariff::PriceFeed;

/// How long the parts other than the engine may take to stop, once the engine has.
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// A running service.
pub struct App {
    /// Where HTTP is served.
    pub addr: SocketAddr,
    pub engine: EngineHandle,
    /// This service's metrics (no other app in the process records into them).
    pub metrics: Metrics,
    /// Stops the engine and the HTTP server: the first step of a stop.
    shutdown: CancellationToken,
    /// Stops what the engine needs to finish (the dongle client): only once it has.
    io_shutdown: CancellationToken,
    /// The most the engine may take to stop: one write's timeout, and a margin.
    engine_limit: Duration,
    engine_task: JoinHandle<()>,
    /// The other essential tasks, by name.
    other_tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl App {
    /// Stops gracefully, in order: HTTP stops accepting and the engine finishes the write in
    /// flight (its answer or its timeout) and saves; only then does the dongle client stop.
    /// A running charge is left to be resumed by the next start. With no write in flight this
    /// takes milliseconds; at worst one write timeout plus [`SHUTDOWN_LIMIT`].
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(self.engine_limit, self.engine_task)
            .await
            .is_err()
        {
            warn!(
                "the engine took longer than {} s to stop; exiting anyway (the saved state is resumed at the next start)",
                self.engine_limit.as_secs()
            );
        }
        self.io_shutdown.cancel();
        let rest = async {
            for (_, t) in self.other_tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_LIMIT, rest).await.is_err() {
            warn!(
                "shutdown took longer than {} s; exiting anyway",
                SHUTDOWN_LIMIT.as_secs()
            );
        }
    }

    /// Stops at once, saving nothing: what a crash or power cut does. For tests.
    pub fn kill(self) {
        self.engine_task.abort();
        for (_, t) in &self.other_tasks {
            t.abort();
        }
        self.shutdown.cancel();
        self.io_shutdown.cancel();
    }

    /// Runs until `signal` resolves, then stops gracefully. If an essential task ends first
    /// (a panic, or a loop that gave up), the service cannot do its job: the error says which
    /// and why, so that the process exits non-zero and its supervisor restarts it (the state
    /// is on disk).
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {
                info!("shutting down");
                crate::systemd::stopping();
                self.shutdown().await;
                Ok(())
            }
            failure = self.first_task_end() => {
                error!("{failure}; exiting so that the service manager restarts the service");
                self.kill();
                Err(anyhow::anyhow!(failure))
            }
        }
    }

    /// Waits until any essential task ends, and says which and how.
    async fn first_task_end(&mut self) -> String {
        let (name, joined) = {
            let engine = async { ("engine", (&mut self.engine_task).await) };
            let others = async {
                let mut pending: Vec<_> = self
                    .other_tasks
                    .iter_mut()
                    .map(|(name, t)| Box::pin(async move { (*name, t.await) }))
                    .collect();
                std::future::poll_fn(move |cx| {
                    for f in pending.iter_mut() {
                        if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                            return std::task::Poll::Ready(r);
                        }
                    }
                    std::task::Poll::Pending
                })
                .await
            };
            tokio::select! {
                biased;
                r = engine => r,
                r = others => r,
            }
        };
        // A dongle task ends when the engine that drove it is gone: report the cause.
        let (name, joined) = if name != "engine" && self.engine_task.is_finished() {
            ("engine", (&mut self.engine_task).await)
        } else {
            (name, joined)
        };
        match joined {
            Ok(()) => format!("the {name} task ended unexpectedly"),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("the {name} task panicked: {why}")
            }
            Err(e) => format!("the {name} task was cancelled: {e}"),
        }
    }
}

/// The battery's figures for cheapest hours: as configured, and a charge rate learned from the
/// history when none is configured.
fn battery(config: &Config, store: &Store) -> crate::domain::night::Battery {
    let b = config.battery;
    let learned_kw = b
        .capacity_kwh
        .filter(|_| b.charge_kw.is_none())
        .and_then(|cap| {
            let mut past: Vec<crate::domain::plan::PastCharge> = store
                .history(crate::store::HISTORY_LIMIT)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| {
                    Some(crate::domain::plan::PastCharge {
                        start_soc: f64::from(r.start_soc?.get()),
                        end_soc: f64::from(r.end_soc?.get()),
                        duration: Duration::try_from(r.ended_at.duration_since(r.started_at))
                            .ok()?,
                    })
                })
                .collect();
            past.reverse(); // oldest first
            crate::domain::plan::learned_charge_kw(&past, cap)
        });
    crate::domain::night::Battery {
        capacity_kwh: b.capacity_kwh,
        charge_kw: b.charge_kw,
        learned_kw,
    }
}

/// Why `strategy: cheapest` cannot be planned with this config, if it cannot. `has_prices`:
/// the caller hands in prices of its own ([`Extras::prices`]), so no `tariff:` is needed.
fn cheapest_unavailable(config: &Config, has_prices: bool) -> Option<String> {
    if config.battery.capacity_kwh.is_none() {
        return Some("cheapest hours needs the battery's usable capacity: set battery.capacity_kwh in config.yaml".into());
    }
    if config.tariff.is_none() && !has_prices {
        return Some("cheapest hours needs prices: set a tariff: source in config.yaml (a dynamic tariff, or a fixed time-of-use table)".into());
    }
    None
}

pub fn charge_params(config: &Config) -> ChargeParams {
    let c = &config.charging;
    ChargeParams {
        charge_type_setting: c.charge_type_setting.clone(),
        charge_type_value: c.charge_type_value,
        cutoff: c.safety_cutoff,
        stale_after: c.stale_after,
        taper_after: Duration::from_secs(u64::from(c.taper_minutes) * 60),
        stall_after: Duration::from_secs(u64::from(c.stall_minutes) * 60),
        sabotage: Default::default(),
    }
}

pub fn dongle_settings(config: &Config) -> DongleSettings {
    let c = &config.charging;
    DongleSettings {
        host: config.mqtt.host.clone(),
        port: config.mqtt.port,
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
        prefix: config.mqtt.dongle_prefix.clone(),
        client_id: config.mqtt.client_id.clone(),
        keep_alive: config.mqtt.keep_alive,
        write_timeout: c.write_timeout,
        min_write_interval: c.min_write_interval,
        readback_timeout: c.readback_timeout,
        max_retries: if c.retry_on_failure { c.max_retries } else { 0 },
        time_format: c.time_format,
    }
}

/// What a caller may hand the service instead of what the config would make.
#[derive(Debug, Default)]
pub struct Extras {
    /// Prices to plan with instead of a feed spawned from `tariff:` (the demo's sample day).
    pub prices: Option<PriceFeed>,
}

/// Starts the service. `listener` is bound by the caller (port 0 in tests).
pub async fn start(
    config: &Config,
    data_dir: &Path,
    clock: Clock,
    listener: TcpListener,
) -> anyhow::Result<App> {
    start_with(config, data_dir, clock, listener, Extras::default()).await
}

/// [`start`] with [`Extras`].
pub async fn start_with(
    config: &Config,
    data_dir: &Path,
    clock: Clock,
    listener: TcpListener,
    extras: Extras,
) -> anyhow::Result<App> {
    let metrics = Metrics::new();
    let store = Store::open(data_dir)
        .with_context(|| format!("the data directory {} is not usable", data_dir.display()))?;
    let loaded = store.load(clock.now(), &config.timezone);
    for notice in &loaded.notices {
        warn!("{notice}");
    }
    let shutdown = CancellationToken::new();
    let io_shutdown = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::channel(1024);
    // The port actually listened on (the configured one, or the one port 0 picked).
    let http_port = listener.local_addr()?.port();
    let (ha_extra, home_assistant) = match crate::ha::prepare(config, data_dir, http_port) {
        Some((extra, integration)) => (extra, Some(integration)),
        None => (None, None),
    };
    let (dongle, mqtt, dongle_tasks) = client::spawn(
        dongle_settings(config),
        clock.clone(),
        events_tx,
        io_shutdown.clone(),
        ha_extra,
        metrics.clone(),
    );
    let mqtt_connected = dongle.connected();
    let notifier = crate::notify::Notifier::new(config, store.clone(), clock.now());
    let battery = battery(config, &store);
    let has_prices = extras.prices.is_some();
    let prices = extras.prices.or_else(|| {
        let t = config.tariff.as_ref()?;
        crate::tariff::feed::spawn(
            t,
            config.timezone.clone(),
            store.clone(),
            clock.clone(),
            shutdown.clone(),
        )
        .map_err(|e| error!("prices cannot be fetched: {e}"))
        .ok()
    });
    let engine_cfg = EngineConfig {
        params: charge_params(config),
        tz: config.timezone.clone(),
        check_interval: config.charging.soc_check_interval,
        soc_rule: config.charging.soc_rule,
        write_timeout: config.charging.write_timeout,
        battery,
        prices,
    };
    let (engine, handle, cmds) = engine::new(
        engine_cfg,
        clock.clone(),
        store.clone(),
        dongle,
        loaded.state,
        metrics.clone(),
        notifier.clone(),
    );
    let engine_task = tokio::spawn(engine.run(cmds, events_rx, shutdown.clone()));
    // Not essential: it ends once the dongle is heard, which must not stop the service.
    crate::dongle::discover::spawn_watch(
        &config.mqtt,
        clock.clone(),
        handle.watch(),
        shutdown.clone(),
    );

    // The chart's readings. Not an essential task: without it only the chart stays empty.
    let telemetry = http::telemetry::Telemetry::new(handle.watch());
    tokio::spawn(telemetry.clone().record(shutdown.clone()));
    let api = ApiState {
        telemetry,
        engine: handle.clone(),
        tz: config.timezone.clone(),
        store: store.clone(),
        api_key: config.server.api_key.clone(),
        started: std::time::Instant::now(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        notifier: notifier.clone(),
        cheapest_unavailable: cheapest_unavailable(config, has_prices),
    };
    let router = http::router(api, &config.server.cors_origins, Duration::from_secs(120));
    let addr = listener.local_addr()?;
    let limits = http::serve::Limits {
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
        max_connections: config.server.max_connections,
    };
    let http_task = tokio::spawn(http::serve::serve(
        listener,
        router,
        limits,
        clock.clone(),
        shutdown.clone(),
    ));
    let mut other_tasks: Vec<(&'static str, JoinHandle<()>)> = dongle_tasks
        .into_iter()
        .zip(["MQTT connection", "dongle writer"])
        .map(|(t, name)| (name, t))
        .collect();
    other_tasks.push(("HTTP server", http_task));
    // Stopped with the dongle client, after the engine has handed over its last events.
    let notify_task = tokio::spawn(notifier.clone().run(clock.clone(), io_shutdown.clone()));
    other_tasks.push(("notifications", notify_task));
    if let Some(integration) = home_assistant {
        let links = crate::ha::Links {
            mqtt,
            connected: mqtt_connected,
            engine: handle.clone(),
            store,
            clock: clock.clone(),
        };
        let task = tokio::spawn(integration.run(links, io_shutdown.clone()));
        other_tasks.push(("Home Assistant", task));
    }
    info!(%addr, zone = %config.timezone_name, data_dir = %data_dir.display(), "serving the API");
    Ok(App {
        addr,
        engine: handle,
        metrics,
        shutdown,
        io_shutdown,
        engine_limit: config.charging.write_timeout + SHUTDOWN_LIMIT,
        engine_task,
        other_tasks,
    })
}

/// Binds the configured address with a message that says what to do when it fails.
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port)).await.with_context(|| {
        format!("cannot listen on {host}:{port}: is another program using the port? Set server.port in config.yaml or SERVER_PORT")
    })
}
