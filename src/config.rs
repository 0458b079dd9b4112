//! Typed configuration from the existing `config.yaml` format, plus environment overrides.
//!
//! The file is read into a generic tree first and then checked key by key, so that a user sees
//! *every* problem at once with its key path and what was expected (serde would stop at the
//! first). Unknown keys and sections (an old file's `apns:` section, say) are warnings, never
//! errors: an existing file must keep loading.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use crate::domain::session::ChargeParams;
use crate::domain::soc_filter::SocRule;
use crate::domain::units::TimeFormat;

/// A string that must never reach a log line or `Debug` output (passwords, API keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The dongle's id exactly as on the broker, e.g. `dongle-40:4C:CA:AB:CD:EF`.
    pub dongle_prefix: String,
    pub client_id: String,
    pub keep_alive: Duration,
}

impl MqttConfig {
    pub const DEFAULT_PORT: u16 = 1883;
    pub const DEFAULT_CLIENT_ID: &str = "solar-charging-backend";
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub api_key: Option<Secret>,
    /// Allowed CORS origins; `["*"]` (the default) allows any, as the app and browsers need.
    pub cors_origins: Vec<String>,
    /// A request head (request line and headers) must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// The most connections served at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
}

impl ServerConfig {
    pub const DEFAULT_HOST: &str = "0.0.0.0";
    /// Also the `demo` command's and the health check's (with `SERVER_PORT` unset).
    pub const DEFAULT_PORT: u16 = 8088;
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChargingConfig {
    /// A charge never runs longer than this (also the inverter window's length).
    pub safety_cutoff: Duration,
    /// The longest the engine waits before re-reading the wall clock.
    pub soc_check_interval: Duration,
    pub retry_on_failure: bool,
    pub max_retries: u32,
    /// Name and value of the setting that selects "time + SOC" AC charging.
    pub charge_type_setting: String,
    pub charge_type_value: i64,
    pub time_format: TimeFormat,
    /// No dongle message for this long during a charge ends it as `stale_data`.
    pub stale_after: Duration,
    pub taper_minutes: u32,
    pub stall_minutes: u32,
    /// How long a write waits for the dongle's `response` before its outcome is unknown.
    pub write_timeout: Duration,
    /// The least time between two writes (the dongle accepts about one a second).
    pub min_write_interval: Duration,
    /// How long to wait for settings to be read back (snapshot or next hold bank).
    pub readback_timeout: Duration,
    /// Which SOC readings are believed at once (see [`crate::domain::soc_filter`]).
    pub soc_rule: SocRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoggingConfig {
    /// A tracing filter directive, e.g. `info` (from `INFO`).
    pub level: String,
    pub format: LogFormat,
}

impl LoggingConfig {
    /// As the old backend's file spelled it.
    pub const DEFAULT_LEVEL: &str = "INFO";
}

/// The `home_assistant:` section: the scheduler as a Home Assistant device, through MQTT
/// discovery on the dongle's broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistantConfig {
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration's setting).
    pub discovery_prefix: String,
    /// The node id in every topic: as configured, or derived from the dongle prefix.
    pub node_id: String,
    /// The device's link to the dashboard, when set; otherwise one is derived from `server`.
    pub configuration_url: Option<String>,
}

impl HomeAssistantConfig {
    pub const DEFAULT_DISCOVERY_PREFIX: &str = "homeassistant";

    /// The section's defaults for a dongle prefix.
    pub fn defaults(dongle_prefix: &str) -> HomeAssistantConfig {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: Self::DEFAULT_DISCOVERY_PREFIX.into(),
            node_id: default_node_id(dongle_prefix),
            configuration_url: None,
        }
    }
}

/// `solar_` and the dongle prefix with every character Home Assistant does not allow in a
/// node id (`[a-zA-Z0-9_-]`) replaced by `_`: `dongle-40:4C:CA:AB:CD:EF` becomes
/// `solar_dongle-40_4C_CA_AB_CD_EF`. Stable for a given dongle, so the entities keep their
/// identity across restarts and reinstalls.
pub fn default_node_id(dongle_prefix: &str) -> String {
    let clean: String = dongle_prefix
        .chars()
        .map(|c| if valid_node_char(c) { c } else { '_' })
        .collect();
    format!("solar_{clean}")
}

fn valid_node_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub server: ServerConfig,
    pub charging: ChargingConfig,
    pub logging: LoggingConfig,
    pub home_assistant: HomeAssistantConfig,
    /// The old backend's push section; `None` when the file has none.
    pub apns: Option<ApnsConfig>,
    pub notifications: NotificationsConfig,
    /// What cheapest-hours planning knows of the battery.
    pub battery: BatteryConfig,
    /// Where prices come from; `None` when the section is absent or names no source.
    pub tariff: Option<TariffConfig>,
    /// The IANA zone schedules are computed in.
    pub timezone: TimeZone,
    /// The zone's name for display (`system` when taken from the system).
    pub timezone_name: String,
}

/// The `charging:` section's defaults, which [`parse`] fills in for missing keys. The charge
/// rules' are the session's own ([`ChargeParams::default`]), the SOC rule's the filter's.
impl Default for ChargingConfig {
    fn default() -> Self {
        let rules = ChargeParams::default();
        let minutes = |d: Duration| (d.as_secs() / 60) as u32;
        ChargingConfig {
            safety_cutoff: rules.cutoff,
            soc_check_interval: Duration::from_secs(30),
            retry_on_failure: true,
            max_retries: 3,
            charge_type_setting: rules.charge_type_setting,
            charge_type_value: rules.charge_type_value,
            time_format: TimeFormat::default(),
            stale_after: rules.stale_after,
            taper_minutes: minutes(rules.taper_after),
            stall_minutes: minutes(rules.stall_after),
            write_timeout: Duration::from_secs(15),
            min_write_interval: Duration::from_secs(1),
            readback_timeout: Duration::from_secs(10),
            soc_rule: SocRule::default(),
        }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `mqtt.port`; empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The outcome of loading: a config plus warnings, or every problem found.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{} problem(s) in {path}:\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// Environment values that override the file (`SERVER_PORT` > config > 8088, and so on).
#[derive(Debug, Clone, Default)]
pub struct EnvOverrides {
    pub server_port: Option<String>,
    pub server_host: Option<String>,
    pub api_key: Option<String>,
}

impl EnvOverrides {
    pub fn from_process() -> EnvOverrides {
        let var = |k: &str| std::env::var(k).ok();
        EnvOverrides {
            server_port: var("SERVER_PORT"),
            server_host: var("SERVER_HOST"),
            api_key: var("API_KEY"),
        }
    }
}

/// Reads and checks a config file.
pub fn load_file(path: &Path, env: &EnvOverrides) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, env).map_err(|problems| ConfigError::Invalid {
        path: path.display().to_string(),
        problems,
    })
}

/// Parses config text. Returns every problem found, or the config with its warnings.
pub fn parse(text: &str, env: &EnvOverrides) -> Result<Loaded, Vec<Problem>> {
    let root: Value = serde_saphyr::from_str(text).map_err(|e| {
        vec![Problem {
            path: String::new(),
            message: format!("not valid YAML: {e}"),
        }]
    })?;
    let mut c = Checker::default();
    let empty = Map::new();
    let root = match &root {
        Value::Null => &empty,
        Value::Object(m) => m,
        other => {
            return Err(vec![Problem {
                path: String::new(),
                message: format!(
                    "expected a mapping of sections (mqtt, server, charging, logging), found {}",
                    kind(other)
                ),
            }]);
        }
    };
    c.unknown_keys(
        "",
        root,
        &[
            "mqtt",
            "server",
            "charging",
            "logging",
            "home_assistant",
            "timezone",
            "apns",
            "notifications",
            "battery",
            "tariff",
        ],
    );
    let apns = notify::apns_section(&mut c, root);
    let notifications = notify::notifications_section(&mut c, root);
    let battery = tariff::battery_section(&mut c, root);
    let tariff = tariff::tariff_section(&mut c, root);

    let mqtt = c.section(root, "mqtt");
    c.unknown_keys(
        "mqtt",
        &mqtt,
        &[
            "host",
            "port",
            "username",
            "password",
            "dongle_prefix",
            "client_id",
            "keepalive",
        ],
    );
    let mqtt = MqttConfig {
        host: c.req_string(&mqtt, "mqtt.host").unwrap_or_default(),
        port: c.port(&mqtt, "mqtt.port", MqttConfig::DEFAULT_PORT),
        username: c.opt_string(&mqtt, "mqtt.username"),
        password: c.opt_string(&mqtt, "mqtt.password").map(Secret),
        dongle_prefix: c.prefix(&mqtt, "mqtt.dongle_prefix"),
        client_id: c
            .opt_string(&mqtt, "mqtt.client_id")
            .unwrap_or_else(|| MqttConfig::DEFAULT_CLIENT_ID.into()),
        keep_alive: Duration::from_secs(c.int(
            &mqtt,
            "mqtt.keepalive",
            MqttConfig::DEFAULT_KEEP_ALIVE.as_secs() as i64,
            5,
            3600,
        ) as u64),
    };

    let server = c.section(root, "server");
    c.unknown_keys(
        "server",
        &server,
        &[
            "host",
            "port",
            "api_key",
            "cors_origins",
            "header_timeout_seconds",
            "idle_timeout_seconds",
            "max_connections",
        ],
    );
    let mut server_cfg = ServerConfig {
        host: c
            .opt_string(&server, "server.host")
            .unwrap_or_else(|| ServerConfig::DEFAULT_HOST.into()),
        port: c.port(&server, "server.port", ServerConfig::DEFAULT_PORT),
        api_key: c.opt_string(&server, "server.api_key").map(Secret),
        cors_origins: c
            .string_list(&server, "server.cors_origins")
            .unwrap_or_else(|| vec!["*".into()]),
        // At most 10 s: a slow client holds one of the few connection slots while its head
        // dribbles in.
        header_timeout: Duration::from_secs(c.int(
            &server,
            "server.header_timeout_seconds",
            ServerConfig::DEFAULT_HEADER_TIMEOUT.as_secs() as i64,
            1,
            10,
        ) as u64),
        idle_timeout: Duration::from_secs(c.int(
            &server,
            "server.idle_timeout_seconds",
            ServerConfig::DEFAULT_IDLE_TIMEOUT.as_secs() as i64,
            1,
            3600,
        ) as u64),
        // Each connection costs a file descriptor and ~20 KB of memory; 1000 stays under the
        // usual limit of 1024 open files of a service.
        max_connections: c.int(
            &server,
            "server.max_connections",
            ServerConfig::DEFAULT_MAX_CONNECTIONS as i64,
            1,
            1000,
        ) as usize,
    };
    if let Some(p) = &env.server_port {
        match p.trim().parse::<u16>() {
            Ok(port) => server_cfg.port = port,
            Err(_) => c.error(
                "SERVER_PORT",
                format!("expected a port number 0..=65535 in the environment, found {p:?}"),
            ),
        }
    }
    if let Some(h) = &env.server_host {
        server_cfg.host = h.clone();
    }
    if let Some(k) = &env.api_key {
        server_cfg.api_key = Some(Secret(k.clone()));
    }
    if let Some(k) = &server_cfg.api_key
        && k.expose().trim().is_empty()
    {
        c.error(
            "server.api_key",
            "is empty: remove it to leave the API open, or set a real key",
        );
    }

    let ch = c.section(root, "charging");
    c.unknown_keys(
        "charging",
        &ch,
        &[
            "safety_cutoff_hours",
            "soc_check_interval",
            "retry_on_failure",
            "max_retries",
            "charge_type_setting",
            "charge_type_value",
            "time_format",
            "stale_after_s",
            "taper_minutes",
            "stall_minutes",
            "write_timeout_s",
            "min_write_interval_ms",
            "readback_timeout_s",
            "soc_max_step",
            "soc_max_rate_per_hour",
        ],
    );
    let d = ChargingConfig::default();
    let secs = |d: Duration| d.as_secs() as i64;
    let cutoff_h = c.float(
        &ch,
        "charging.safety_cutoff_hours",
        d.safety_cutoff.as_secs_f64() / 3600.0,
        0.05,
        23.5,
    );
    let charging = ChargingConfig {
        safety_cutoff: Duration::from_secs_f64(cutoff_h * 3600.0),
        soc_check_interval: Duration::from_secs(c.int(
            &ch,
            "charging.soc_check_interval",
            secs(d.soc_check_interval),
            1,
            3600,
        ) as u64),
        retry_on_failure: c.bool(&ch, "charging.retry_on_failure", d.retry_on_failure),
        max_retries: c.int(&ch, "charging.max_retries", d.max_retries.into(), 0, 20) as u32,
        charge_type_setting: c
            .opt_string(&ch, "charging.charge_type_setting")
            .unwrap_or(d.charge_type_setting),
        charge_type_value: c.int(
            &ch,
            "charging.charge_type_value",
            d.charge_type_value,
            0,
            65535,
        ),
        time_format: match c.opt_string(&ch, "charging.time_format").as_deref() {
            None => d.time_format,
            Some("HH:MM:SS") => TimeFormat::HhMmSs,
            Some("HH:MM") => TimeFormat::HhMm,
            Some(other) => {
                c.error(
                    "charging.time_format",
                    format!("expected \"HH:MM:SS\" or \"HH:MM\", found {other:?}"),
                );
                d.time_format
            }
        },
        stale_after: Duration::from_secs(c.int(
            &ch,
            "charging.stale_after_s",
            secs(d.stale_after),
            10,
            3600,
        ) as u64),
        taper_minutes: c.int(
            &ch,
            "charging.taper_minutes",
            d.taper_minutes.into(),
            1,
            240,
        ) as u32,
        stall_minutes: c.int(
            &ch,
            "charging.stall_minutes",
            d.stall_minutes.into(),
            1,
            600,
        ) as u32,
        write_timeout: Duration::from_secs(c.int(
            &ch,
            "charging.write_timeout_s",
            secs(d.write_timeout),
            1,
            120,
        ) as u64),
        min_write_interval: Duration::from_millis(c.int(
            &ch,
            "charging.min_write_interval_ms",
            d.min_write_interval.as_millis() as i64,
            0,
            10_000,
        ) as u64),
        readback_timeout: Duration::from_secs(c.int(
            &ch,
            "charging.readback_timeout_s",
            secs(d.readback_timeout),
            1,
            600,
        ) as u64),
        soc_rule: SocRule {
            max_step: c.int(
                &ch,
                "charging.soc_max_step",
                d.soc_rule.max_step.into(),
                1,
                100,
            ) as u8,
            max_rate_per_hour: c.float(
                &ch,
                "charging.soc_max_rate_per_hour",
                d.soc_rule.max_rate_per_hour,
                1.0,
                10_000.0,
            ),
        },
    };

    let lg = c.section(root, "logging");
    c.unknown_keys("logging", &lg, &["level", "format"]);
    let level = c
        .opt_string(&lg, "logging.level")
        .unwrap_or_else(|| LoggingConfig::DEFAULT_LEVEL.into());
    let level = match level.to_ascii_lowercase().as_str() {
        l @ ("trace" | "debug" | "info" | "error") => l.to_string(),
        "warning" | "warn" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        _ => {
            c.error(
                "logging.level",
                format!("expected one of DEBUG, INFO, WARNING, ERROR, found {level:?}"),
            );
            "info".into()
        }
    };
    let format = match c.opt_string(&lg, "logging.format").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            c.error(
                "logging.format",
                format!("expected \"text\" or \"json\", found {other:?}"),
            );
            LogFormat::Text
        }
    };

    let home_assistant = home_assistant_section(&mut c, root, &mqtt.dongle_prefix);

    let (timezone, timezone_name) = match c.opt_string(root, "timezone") {
        Some(name) => match TimeZone::get(&name) {
            Ok(tz) => (tz, name),
            Err(_) => {
                c.error(
                    "timezone",
                    format!(
                        "unknown time zone {name:?}: expected an IANA name like \"Europe/London\""
                    ),
                );
                (TimeZone::UTC, name)
            }
        },
        None => (TimeZone::system(), system_zone_name()),
    };

    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Loaded {
        config: Config {
            mqtt,
            server: server_cfg,
            charging,
            logging: LoggingConfig { level, format },
            home_assistant,
            apns,
            notifications,
            battery,
            tariff,
            timezone,
            timezone_name,
        },
        warnings: c.warnings,
    })
}

fn home_assistant_section(
    c: &mut Checker,
    root: &Map<String, Value>,
    dongle_prefix: &str,
) -> HomeAssistantConfig {
    let ha = c.section(root, "home_assistant");
    c.unknown_keys(
        "home_assistant",
        &ha,
        &[
            "enabled",
            "discovery_prefix",
            "node_id",
            "configuration_url",
        ],
    );
    let mut out = HomeAssistantConfig::defaults(dongle_prefix);
    out.enabled = c.bool(&ha, "home_assistant.enabled", false);
    if let Some(p) = c.opt_string(&ha, "home_assistant.discovery_prefix") {
        let bad = p.trim().is_empty()
            || p.contains(['#', '+'])
            || p.starts_with('/')
            || p.ends_with('/')
            || p.contains("//")
            || p.chars().any(char::is_whitespace);
        if bad {
            c.error(
                "home_assistant.discovery_prefix",
                format!(
                    "{p:?} is not a usable topic prefix: expected Home Assistant's discovery prefix, e.g. \"homeassistant\" (no '#', '+', spaces, or '/' at either end)"
                ),
            );
        }
        out.discovery_prefix = p;
    }
    if let Some(id) = c.opt_string(&ha, "home_assistant.node_id") {
        if id.is_empty() || !id.chars().all(valid_node_char) {
            c.error(
                "home_assistant.node_id",
                format!(
                    "{id:?} is not a node id: Home Assistant accepts only letters, digits, '_' and '-' (leave it out to derive one from mqtt.dongle_prefix)"
                ),
            );
        }
        out.node_id = id;
    }
    if let Some(url) = c.opt_string(&ha, "home_assistant.configuration_url") {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.chars().any(char::is_whitespace)) {
            c.error(
                "home_assistant.configuration_url",
                format!(
                    "{url:?} is not a link Home Assistant can open: expected http://HOST:PORT/ or https://..."
                ),
            );
        }
        out.configuration_url = Some(url);
    }
    out
}

fn system_zone_name() -> String {
    TimeZone::system()
        .iana_name()
        .map(str::to_string)
        .unwrap_or_else(|| "system".into())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Collects problems while reading typed values out of the tree.
#[derive(Default)]
struct Checker {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn unknown_keys(&mut self, section: &str, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let path = if section.is_empty() {
                    key.clone()
                } else {
                    format!("{section}.{key}")
                };
                self.warn(&path, "unknown key, ignored (check its spelling)");
            }
        }
    }

    fn section(&mut self, root: &Map<String, Value>, name: &str) -> Map<String, Value> {
        match root.get(name) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                self.error(name, format!("expected a mapping, found {}", kind(other)));
                Map::new()
            }
        }
    }

    fn opt_string(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        match map.get(leaf(path)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // YAML reads `port: 1883` and `password: 1234` as numbers; a string was meant.
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => {
                self.error(path, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn req_string(&mut self, map: &Map<String, Value>, path: &str) -> Option<String> {
        let v = self.opt_string(map, path);
        match &v {
            Some(s) if !s.trim().is_empty() => v,
            Some(_) => {
                self.error(path, "is empty: this value is required");
                None
            }
            None if map.contains_key(leaf(path)) => None,
            None => {
                self.error(path, "is required but missing");
                None
            }
        }
    }

    fn prefix(&mut self, map: &Map<String, Value>, path: &str) -> String {
        let Some(p) = self.req_string(map, path) else {
            return String::new();
        };
        if p.contains(['#', '+', '/']) || p.chars().any(char::is_whitespace) {
            self.error(
                path,
                format!(
                    "{p:?} is not a dongle id: expected the dongle's name as on the broker, e.g. \"dongle-40:4C:CA:AB:CD:EF\" (no '/', '#', '+' or spaces)"
                ),
            );
        }
        p
    }

    fn number(&mut self, map: &Map<String, Value>, path: &str) -> Option<f64> {
        match map.get(leaf(path)) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => s.trim().parse().ok(),
            Some(other) => {
                self.error(path, format!("expected a number, found {}", kind(other)));
                None
            }
        }
    }

    fn float(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        default: f64,
        min: f64,
        max: f64,
    ) -> f64 {
        match self.number(map, path) {
            None => default,
            Some(v) if v.is_finite() && (min..=max).contains(&v) => v,
            Some(v) => {
                self.error(
                    path,
                    format!("expected a number from {min} to {max}, found {v}"),
                );
                default
            }
        }
    }

    fn int(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        default: i64,
        min: i64,
        max: i64,
    ) -> i64 {
        match self.number(map, path) {
            None => default,
            Some(v) if v.fract() == 0.0 && v >= min as f64 && v <= max as f64 => v as i64,
            Some(v) => {
                self.error(
                    path,
                    format!("expected a whole number from {min} to {max}, found {v}"),
                );
                default
            }
        }
    }

    fn port(&mut self, map: &Map<String, Value>, path: &str, default: u16) -> u16 {
        self.int(map, path, default as i64, 0, 65535) as u16
    }

    fn bool(&mut self, map: &Map<String, Value>, path: &str, default: bool) -> bool {
        match map.get(leaf(path)) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" => true,
                "false" | "no" | "off" => false,
                _ => {
                    self.error(path, format!("expected true or false, found {s:?}"));
                    default
                }
            },
            Some(other) => {
                self.error(
                    path,
                    format!("expected true or false, found {}", kind(other)),
                );
                default
            }
        }
    }

    fn string_list(&mut self, map: &Map<String, Value>, path: &str) -> Option<Vec<String>> {
        match map.get(leaf(path)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(vec![s.clone()]),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
            ),
            Some(other) => {
                self.error(
                    path,
                    format!("expected a list of strings, found {}", kind(other)),
                );
                None
            }
        }
    }
}

mod notify;
pub use notify::{ApnsConfig, NotificationsConfig, NtfyConfig, WebhookConfig, check_url};
mod tariff;
pub use tariff::{BatteryConfig, FixedRate, TariffConfig};

#[cfg(test)]
mod tests;
