//! Tests of `src/config.rs`.

use super::*;
use crate::domain::event::EventKind;
use std::path::Path;

const OLD: &str = r#"
mqtt:
  host: "192.168.1.100"
  port: 1883
  username: "solar"
  password: "pw-secret"
  dongle_prefix: "dongle-40:4C:CA:AB:CD:EF"
server:
  host: "0.0.0.0"
  port: 8088
charging:
  safety_cutoff_hours: 8
  soc_check_interval: 30
  retry_on_failure: true
  max_retries: 3
logging:
  level: "INFO"
apns:
  enabled: false
  key_path: "/keys/AuthKey.p8"
  key_id: "ABC"
  team_id: "TEAM"
  bundle_id: "com.example.solar"
  use_sandbox: false
"#;

fn no_env() -> EnvOverrides {
    EnvOverrides::default()
}

#[test]
fn the_old_backends_file_loads_unchanged_with_its_push_section_read() {
    let l = parse(OLD, &no_env()).unwrap();
    let c = &l.config;
    assert_eq!(c.mqtt.host, "192.168.1.100");
    assert_eq!(c.mqtt.dongle_prefix, "dongle-40:4C:CA:AB:CD:EF");
    assert_eq!(c.mqtt.password.as_ref().unwrap().expose(), "pw-secret");
    assert_eq!(c.server.port, 8088);
    assert_eq!(c.charging.safety_cutoff, Duration::from_secs(8 * 3600));
    assert_eq!(c.charging.max_retries, 3);
    assert_eq!(c.logging.level, "info");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let apns = c.apns.as_ref().unwrap();
    assert!(!apns.enabled);
    assert_eq!(
        apns.key_path.as_deref(),
        Some(Path::new("/keys/AuthKey.p8"))
    );
    assert_eq!(apns.bundle_id.as_deref(), Some("com.example.solar"));
    assert_eq!(apns.endpoint, None);
}

#[test]
fn push_switched_on_with_keys_missing_is_a_warning_that_says_what_is_missing() {
    let l = parse(
        "mqtt: {host: b, dongle_prefix: d}\napns: {enabled: true, key_id: ABCDEFGHIJ}",
        &no_env(),
    )
    .unwrap();
    let w: Vec<_> = l
        .warnings
        .iter()
        .map(|w| format!("{}: {}", w.path, w.message))
        .collect();
    assert!(
        w.iter().any(|m| m.contains("apns.key_path")
            && m.contains("apns.team_id")
            && m.contains("apns.bundle_id")),
        "{w:?}"
    );
}

#[test]
fn ntfy_and_webhooks_are_read_with_their_events() {
    let l = parse(
        r#"
mqtt: {host: b, dongle_prefix: d}
notifications:
  ntfy: {url: "https://ntfy.sh/my-battery", token: tk, priority: high, events: [charge_failed, dongle_offline]}
  webhooks:
    - url: "http://ha.local:8123/api/webhook/x"
      secret: s3
    - {url: "https://example.org/hook", events: charge_complete}
"#,
        &no_env(),
    )
    .unwrap();
    let n = &l.config.notifications;
    let ntfy = n.ntfy.as_ref().unwrap();
    assert_eq!(ntfy.priority, 4);
    assert_eq!(ntfy.token.as_deref(), Some("tk"));
    assert_eq!(
        ntfy.events.as_deref(),
        Some(&[EventKind::ChargeFailed, EventKind::DongleOffline][..])
    );
    assert_eq!(n.webhooks.len(), 2);
    assert_eq!(n.webhooks[0].secret.as_deref(), Some("s3"));
    assert_eq!(n.webhooks[0].events, None, "every event");
    assert_eq!(
        n.webhooks[1].events.as_deref(),
        Some(&[EventKind::ChargeComplete][..])
    );
}

#[test]
fn a_wrong_url_event_or_priority_in_notifications_is_an_error_naming_it() {
    let errs = parse(
        r#"
mqtt: {host: b, dongle_prefix: d}
notifications:
  ntfy: {url: "ntfy.sh/topic", priority: loud, events: [charge_done]}
  webhooks:
    - {secret: s}
    - "http://x"
"#,
        &no_env(),
    )
    .unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "notifications.ntfy.url",
        "notifications.ntfy.priority",
        "notifications.ntfy.events",
        "notifications.webhooks[0].url",
        "notifications.webhooks[1]",
    ] {
        assert!(paths.contains(&p), "{p} in {paths:?}");
    }
    let events = errs
        .iter()
        .find(|e| e.path == "notifications.ntfy.events")
        .unwrap();
    assert!(
        events.message.contains("charge_complete"),
        "{}",
        events.message
    );
}

#[test]
fn an_ntfy_url_without_a_topic_is_refused() {
    let errs = parse(
        "mqtt: {host: b, dongle_prefix: d}\nnotifications: {ntfy: {url: 'https://ntfy.sh/'}}",
        &no_env(),
    )
    .unwrap_err();
    assert!(errs[0].message.contains("topic"), "{}", errs[0].message);
}

#[test]
fn only_host_and_prefix_are_required_and_defaults_fill_the_rest() {
    let l = parse("mqtt: {host: broker, dongle_prefix: dongle-1}", &no_env()).unwrap();
    assert_eq!(l.config.mqtt.port, 1883);
    assert_eq!(l.config.server.port, 8088);
    assert_eq!(l.config.server.host, "0.0.0.0");
    assert_eq!(l.config.charging, ChargingConfig::default());
    assert!(l.warnings.is_empty());
}

#[test]
fn every_problem_is_reported_with_its_key_path() {
    let text = "mqtt: {port: seventy}\nserver: {port: 70000}\ncharging: {safety_cutoff_hours: 0, retry_on_failure: maybe}\nlogging: {level: LOUD}\ntimezone: Mars/Olympus\n";
    let problems = parse(text, &no_env()).unwrap_err();
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "mqtt.host",
            "mqtt.port",
            "mqtt.dongle_prefix",
            "server.port",
            "charging.safety_cutoff_hours",
            "charging.retry_on_failure",
            "logging.level",
            "timezone"
        ]
    );
    assert!(
        problems[1].message.contains("expected a number"),
        "{}",
        problems[1]
    );
}

#[test]
fn environment_overrides_the_file_for_port_host_and_key() {
    let env = EnvOverrides {
        server_port: Some("9000".into()),
        server_host: Some("127.0.0.1".into()),
        api_key: Some("k".into()),
    };
    let l = parse(OLD, &env).unwrap();
    assert_eq!(l.config.server.port, 9000);
    assert_eq!(l.config.server.host, "127.0.0.1");
    assert_eq!(l.config.server.api_key.unwrap().expose(), "k");
    let bad = EnvOverrides {
        server_port: Some("eighty".into()),
        ..Default::default()
    };
    assert_eq!(parse(OLD, &bad).unwrap_err()[0].path, "SERVER_PORT");
}

#[test]
fn fractional_cutoff_timezone_and_unknown_keys() {
    let text = "mqtt: {host: h, dongle_prefix: d, colour: blue}\ncharging: {safety_cutoff_hours: 1.5}\ntimezone: Europe/London\n";
    let l = parse(text, &no_env()).unwrap();
    assert_eq!(l.config.charging.safety_cutoff, Duration::from_secs(5400));
    assert_eq!(l.config.timezone_name, "Europe/London");
    assert_eq!(l.warnings[0].path, "mqtt.colour");
}

#[test]
fn an_empty_api_key_is_refused() {
    let p = parse(
        "mqtt: {host: h, dongle_prefix: d}\nserver: {api_key: ''}",
        &no_env(),
    )
    .unwrap_err();
    assert_eq!(p[0].path, "server.api_key");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let text =
        "mqtt: {host: h, dongle_prefix: d, password: hunter2}\nserver: {api_key: topsecretkey}";
    let l = parse(text, &no_env()).unwrap();
    let dbg = format!("{:?}", l.config);
    assert!(
        !dbg.contains("hunter2") && !dbg.contains("topsecretkey"),
        "{dbg}"
    );
}

#[test]
fn an_empty_file_reports_the_two_required_keys() {
    let p = parse("", &no_env()).unwrap_err();
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|p| p.message.contains("required")));
}

#[test]
fn yaml_syntax_errors_say_where() {
    let p = parse("mqtt: [1,\n", &no_env()).unwrap_err();
    assert!(p[0].message.contains("line 1"), "{}", p[0]);
}

#[test]
fn the_http_limits_have_defaults_for_a_home_box() {
    let l = parse("mqtt: {host: h, dongle_prefix: d}", &no_env()).unwrap();
    let s = &l.config.server;
    assert_eq!(s.header_timeout, Duration::from_secs(10));
    assert_eq!(s.idle_timeout, Duration::from_secs(30));
    assert_eq!(s.max_connections, 128);
}

#[test]
fn the_http_limits_can_be_set() {
    let text = "mqtt: {host: h, dongle_prefix: d}\nserver: {header_timeout_seconds: 5, idle_timeout_seconds: 120, max_connections: 16}";
    let l = parse(text, &no_env()).unwrap();
    let s = &l.config.server;
    assert_eq!(s.header_timeout, Duration::from_secs(5));
    assert_eq!(s.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.max_connections, 16);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn home_assistant_is_off_by_default_with_a_node_id_derived_from_the_dongle() {
    let l = parse(OLD, &no_env()).unwrap();
    let ha = &l.config.home_assistant;
    assert!(!ha.enabled);
    assert_eq!(ha.discovery_prefix, "homeassistant");
    assert_eq!(ha.node_id, "solar_dongle-40_4C_CA_AB_CD_EF");
    assert_eq!(ha.configuration_url, None);
}

#[test]
fn the_derived_node_id_keeps_only_what_home_assistant_accepts() {
    assert_eq!(
        default_node_id("dongle-40:4C:CA:AB:CD:EF"),
        "solar_dongle-40_4C_CA_AB_CD_EF"
    );
    assert_eq!(default_node_id("my dongle.1"), "solar_my_dongle_1");
    assert_eq!(default_node_id("Zähler"), "solar_Z_hler");
}

#[test]
fn the_home_assistant_section_is_read_with_every_key() {
    let text = "mqtt: {host: h, dongle_prefix: d}\nhome_assistant: {enabled: yes, discovery_prefix: ha/disc, node_id: my-node_1, configuration_url: 'http://pi.local:8088/'}";
    let l = parse(text, &no_env()).unwrap();
    assert_eq!(
        l.config.home_assistant,
        HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "ha/disc".into(),
            node_id: "my-node_1".into(),
            configuration_url: Some("http://pi.local:8088/".into()),
        }
    );
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn http_limits_out_of_range_are_refused_with_the_range() {
    let text = "mqtt: {host: h, dongle_prefix: d}\nserver: {header_timeout_seconds: 30, idle_timeout_seconds: 0, max_connections: 0.5}";
    let p = parse(text, &no_env()).unwrap_err();
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "server.header_timeout_seconds",
            "server.idle_timeout_seconds",
            "server.max_connections"
        ]
    );
    assert!(p[0].message.contains("from 1 to 10, found 30"), "{}", p[0]);
    assert!(p[1].message.contains("from 1 to 3600"), "{}", p[1]);
    assert!(p[2].message.contains("from 1 to 1000"), "{}", p[2]);
    let p = parse(
        "mqtt: {host: h, dongle_prefix: d}\nserver: {max_connections: lots}",
        &no_env(),
    )
    .unwrap_err();
    assert_eq!(p[0].path, "server.max_connections");
    assert!(p[0].message.contains("expected a number"), "{}", p[0]);
}

#[test]
fn bad_home_assistant_values_are_reported_with_their_key_paths() {
    let text = "mqtt: {host: h, dongle_prefix: d}\nhome_assistant: {enabled: maybe, discovery_prefix: 'home/#', node_id: 'solar:1', configuration_url: 'pi.local:8088', colour: blue}";
    let problems = parse(text, &no_env()).unwrap_err();
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "home_assistant.enabled",
            "home_assistant.discovery_prefix",
            "home_assistant.node_id",
            "home_assistant.configuration_url"
        ]
    );
    assert!(
        problems[2].message.contains("letters, digits"),
        "{}",
        problems[2]
    );
    let warned = parse(
        "mqtt: {host: h, dongle_prefix: d}\nhome_assistant: {colour: blue}",
        &no_env(),
    )
    .unwrap();
    assert_eq!(warned.warnings[0].path, "home_assistant.colour");
    let not_a_map = parse(
        "mqtt: {host: h, dongle_prefix: d}\nhome_assistant: on",
        &no_env(),
    );
    assert_eq!(not_a_map.unwrap_err()[0].path, "home_assistant");
}

#[test]
fn the_shipped_example_config_loads_without_warnings() {
    let text = include_str!("../../config.example.yaml");
    let l = parse(text, &no_env()).unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn the_shipped_example_shows_the_defaults_it_says_it_shows() {
    let example = parse(include_str!("../../config.example.yaml"), &no_env())
        .unwrap()
        .config;
    let minimal = parse(
        "mqtt: {host: \"192.168.1.100\", dongle_prefix: \"dongle-40:4C:CA:AB:CD:EF\"}",
        &no_env(),
    )
    .unwrap()
    .config;
    assert_eq!(example.charging, minimal.charging);
    assert_eq!(example.server, minimal.server);
    assert_eq!(
        MqttConfig {
            username: None,
            password: None,
            ..example.mqtt
        },
        minimal.mqtt
    );
    assert_eq!(example.logging, minimal.logging);
    assert_eq!(example.home_assistant, minimal.home_assistant);
}

#[test]
fn a_file_without_charging_keys_runs_charges_by_the_sessions_default_rules() {
    let c = parse("mqtt: {host: broker, dongle_prefix: dongle-1}", &no_env())
        .unwrap()
        .config;
    assert_eq!(crate::app::charge_params(&c), ChargeParams::default());
}

const MQTT: &str = "mqtt: {host: h, dongle_prefix: d}\n";

#[test]
fn battery_and_tariff_are_optional_and_absent_means_no_prices() {
    let c = parse(MQTT, &no_env()).unwrap().config;
    assert_eq!(c.battery, BatteryConfig::default());
    assert_eq!(c.tariff, None);
    let l = parse(
        &format!("{MQTT}battery: null\ntariff: {{source: null}}"),
        &no_env(),
    )
    .unwrap();
    assert_eq!(l.config.tariff, None);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
}

#[test]
fn the_battery_section_is_read_and_range_checked() {
    let l = parse(
        &format!("{MQTT}battery: {{capacity_kwh: 10.24, charge_kw: \"3.6\"}}"),
        &no_env(),
    )
    .unwrap();
    assert_eq!(
        l.config.battery,
        BatteryConfig {
            capacity_kwh: Some(10.24),
            charge_kw: Some(3.6)
        }
    );
    let p = parse(
        &format!("{MQTT}battery: {{capacity_kwh: 0.2, charge_kw: 150, colour: red}}"),
        &no_env(),
    )
    .unwrap_err();
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["battery.capacity_kwh", "battery.charge_kw"]);
    assert!(
        p[0].message.contains("from 0.5 to 1000, found 0.2"),
        "{}",
        p[0]
    );
    assert!(
        p[1].message.contains("from 0.1 to 100, found 150"),
        "{}",
        p[1]
    );
    let p = parse(&format!("{MQTT}battery: {{charge_kw: lots}}"), &no_env()).unwrap_err();
    assert_eq!(p[0].path, "battery.charge_kw");
    let l = parse(&format!("{MQTT}battery: {{colour: red}}"), &no_env()).unwrap();
    assert_eq!(l.warnings[0].path, "battery.colour");
}

#[test]
fn a_tariff_section_is_read_for_each_source() {
    let l = parse(
        &format!(
            "{MQTT}tariff:\n  source: octopus_agile\n  product: AGILE-24-10-01\n  region: C\n"
        ),
        &no_env(),
    )
    .unwrap();
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let t = l.config.tariff.unwrap();
    assert_eq!(t.source.as_deref(), Some("octopus_agile"));
    assert_eq!(t.product.as_deref(), Some("AGILE-24-10-01"));
    assert_eq!(t.region.as_deref(), Some("C"));
    let t = parse(
        &format!(
            "{MQTT}tariff:\n  source: fixed\n  currency: GBP\n  fixed:\n    \
             - {{from: 00:00, to: 07:00, price: 0.09}}\n    \
             - {{from: \"07:00\", to: \"24:00\", price: 0.28, days: [mon, tue, wed, thu, fri, sat, sun]}}\n"
        ),
        &no_env(),
    )
    .unwrap()
    .config
    .tariff
    .unwrap();
    assert_eq!(t.fixed.len(), 2);
    // Unquoted times are strings to YAML 1.2.
    assert_eq!(
        (t.fixed[0].from.as_str(), t.fixed[0].to.as_str()),
        ("00:00", "07:00")
    );
    assert_eq!(t.fixed[0].price, 0.09);
    assert_eq!(t.fixed[1].days.as_ref().map(Vec::len), Some(7));
    for source in ["awattar", "energy_charts"] {
        let l = parse(&format!("{MQTT}tariff: {{source: {source}}}"), &no_env()).unwrap();
        assert!(l.config.tariff.is_some(), "{source}");
    }
}

#[test]
fn a_tariff_the_source_cannot_use_is_refused_with_key_paths() {
    let p = parse(
        &format!("{MQTT}tariff: {{source: octopus_agile, region: I, base_url: 'api.example'}}"),
        &no_env(),
    )
    .unwrap_err();
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["tariff.base_url", "tariff.product", "tariff.region"],
        "{p:?}"
    );
    assert!(
        p[2].message
            .starts_with("must be the Octopus region letter"),
        "{}",
        p[2]
    );
    let p = parse(&format!("{MQTT}tariff: {{source: tibber}}"), &no_env()).unwrap_err();
    assert_eq!(p[0].path, "tariff.source");
    assert!(p[0].message.contains("octopus_agile"), "{}", p[0]);
    let p = parse(&format!("{MQTT}tariff: {{source: nordpool}}"), &no_env()).unwrap_err();
    assert_eq!(p[0].path, "tariff.zone");
    let p = parse(&format!("{MQTT}tariff: [octopus_agile]"), &no_env()).unwrap_err();
    assert_eq!(p[0].path, "tariff");
}

#[test]
fn a_fixed_table_row_is_checked_key_by_key() {
    let text = format!(
        "{MQTT}tariff:\n  source: fixed\n  currency: GBP\n  fixed:\n    \
         - {{from: 7, to: \"24:00\", price: 0.2}}\n    \
         - {{from: 00:00, price: cheap}}\n    \
         - night\n"
    );
    let p = parse(&text, &no_env()).unwrap_err();
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tariff.fixed[0].from",
            "tariff.fixed[1].to",
            "tariff.fixed[1].price",
            "tariff.fixed[2]"
        ],
        "{p:?}"
    );
    assert!(
        p[0].message.contains("\"HH:MM\", found the number 7"),
        "{}",
        p[0]
    );
    // Well typed, the table's own rules apply: a bad time and an unknown day.
    let text = format!(
        "{MQTT}tariff:\n  source: fixed\n  currency: GBP\n  fixed:\n    \
         - {{from: \"7:00\", to: \"24:00\", price: 0.2, days: [funday]}}\n"
    );
    let p = parse(&text, &no_env()).unwrap_err();
    let paths: Vec<_> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["tariff.fixed[0].from", "tariff.fixed[0].days"],
        "{p:?}"
    );
}

#[test]
fn unknown_tariff_keys_and_keys_the_source_does_not_read_are_warned() {
    let text =
        format!("{MQTT}tariff:\n  source: awattar\n  zone: SE3\n  fixed: []\n  colour: blue\n");
    let l = parse(&text, &no_env()).unwrap();
    let paths: Vec<_> = l.warnings.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["tariff.colour", "tariff.zone"], "{:?}", l.warnings);
    assert!(
        l.warnings[1]
            .message
            .contains("not used by source \"awattar\"")
    );
    // A table with hours of the week left unpriced loads, with a warning.
    let text = format!(
        "{MQTT}tariff:\n  source: fixed\n  currency: GBP\n  fixed:\n    \
         - {{from: \"00:00\", to: \"07:00\", price: 0.09}}\n"
    );
    let l = parse(&text, &no_env()).unwrap();
    assert_eq!(l.warnings[0].path, "tariff.fixed", "{:?}", l.warnings);
}

#[test]
fn each_commented_battery_and_tariff_example_loads_without_warnings() {
    let text = include_str!("../../config.example.yaml");
    let mut blocks: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# battery:") || line.starts_with("# tariff:") {
            blocks.push(format!("{}\n", &line[2..]));
        } else if let (Some(block), Some(rest)) = (blocks.last_mut(), line.strip_prefix("#   ")) {
            block.push_str(&format!("  {rest}\n"));
        }
    }
    assert_eq!(blocks.len(), 7, "{blocks:#?}");
    for block in &blocks {
        let l = parse(&format!("{MQTT}{block}"), &no_env())
            .unwrap_or_else(|p| panic!("{block}: {p:?}"));
        assert!(l.warnings.is_empty(), "{block}: {:?}", l.warnings);
        assert!(
            l.config.tariff.is_some() || l.config.battery.capacity_kwh.is_some(),
            "{block}"
        );
    }
}
