//! Finding the dongle: the service with a wrong prefix tells the owner which prefix publishes,
//! the discover listen finds each simulated dongle on a real broker, and the `discover`
//! command's output and exit codes.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use solar_charging_backend::clock::{Clock, ManualClock};
use solar_charging_backend::config::{self, EnvOverrides};
use solar_charging_backend::dongle::discover::{
    self, FIRST_LOOK, LOOK_AGAIN, ListenSettings, Listener, PROBE_WINDOW,
};
use solar_charging_backend::sim::broker::start_embedded_broker;
use solar_charging_backend::sim::dongle::{self, Firmware, SimConfig};
use tracing_subscriber::filter::LevelFilter;

use crate::harness::{GUARD, LogCapture, PREFIX, Setup, World, ZONE, free_port, tz};

const BIN: &str = env!("CARGO_BIN_EXE_solar-charging-backend");
/// One character off the simulated dongle's ID: the mistake an owner makes copying it.
const WRONG: &str = "dongle-40:4C:CA:00:00:7F";

#[tokio::test]
async fn a_service_with_a_wrong_prefix_names_the_prefix_that_publishes_a_minute_after_it_connects()
{
    let log = LogCapture::install_at(LevelFilter::DEBUG);
    let broker = start_embedded_broker(0).expect("embedded broker");
    let clock = ManualClock::new(Setup::default().wall);
    let sim_cfg = SimConfig {
        prefix: PREFIX.into(),
        tz: tz(),
        ..Default::default()
    };
    let sim = dongle::spawn("127.0.0.1", broker.port, sim_cfg, clock.clock());
    let yaml = format!(
        "mqtt: {{host: 127.0.0.1, port: {}, dongle_prefix: \"{WRONG}\", client_id: discover-wrong}}\n\
         server: {{host: 127.0.0.1, port: 0}}\n\
         timezone: {ZONE}\n",
        broker.port
    );
    let config = config::parse(&yaml, &EnvOverrides::default())
        .expect("test config")
        .config;
    let mut w = World::assemble(broker, None, clock, sim, config);
    w.launch().await;
    w.wait_status(|s| s.mqtt_connected).await;
    w.wait_sim(|s| s.connected).await;

    for look in 1..=2 {
        // The first look a minute after the connection, the next an hour later.
        w.clock
            .advance(if look == 1 { FIRST_LOOK } else { LOOK_AGAIN });
        log.wait_for("listening to every topic on the broker", look)
            .await;
        // Subscribed: what the dongle reports now is heard.
        w.sim.publish_telemetry_now();
        log.wait_for(
            &format!("heard a dongle on the broker prefix={PREFIX}"),
            look,
        )
        .await;
        w.clock.advance(PROBE_WINDOW);
        log.wait_for("did you mean", look).await;
    }
    let warnings: Vec<String> = log
        .lines
        .borrow()
        .iter()
        .filter(|l| l.contains("did you mean"))
        .cloned()
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    for (warning, since) in warnings.iter().zip(["1 minute", "61 minutes"]) {
        assert!(warning.starts_with("WARN "), "{warning}");
        assert!(
            warning.contains(&format!(
                "nothing has arrived under mqtt.dongle_prefix \"{WRONG}\" in the {since} since"
            )),
            "{warning}"
        );
        assert!(
            warning.contains(&format!("this dongle publishes on the broker: {PREFIX} (")),
            "{warning}"
        );
        assert!(
            warning.contains(&format!("did you mean \"{PREFIX}\"?")),
            "{warning}"
        );
    }
    let status = w.status();
    assert_eq!(
        status.last_message, None,
        "the service itself heard nothing"
    );
    assert_eq!(status.soc, None);
    w.shutdown().await;
}

fn listen_settings(port: u16, id: &str) -> ListenSettings {
    ListenSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        client_id: id.into(),
        keep_alive: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn the_discover_listen_finds_each_dongle_on_the_broker_with_its_firmware_soc_and_code() {
    const LEGACY: &str = "dongle-40:4C:CA:00:00:A1";
    const MODERN: &str = "dongle-40:4C:CA:00:00:B2";
    let broker = start_embedded_broker(0).expect("embedded broker");
    let listener = Listener::connect(&listen_settings(broker.port, "discover-test"), MODERN)
        .await
        .expect("connects and subscribes");
    // Started once the listener is subscribed: a dongle reports everything when it connects.
    let clock = ManualClock::new(Setup::default().wall);
    let sim = |prefix: &str, firmware, soc, code: &str| {
        let cfg = SimConfig {
            prefix: prefix.into(),
            firmware,
            initial_soc: soc,
            fw_code: code.into(),
            tz: tz(),
            ..Default::default()
        };
        dongle::spawn("127.0.0.1", broker.port, cfg, clock.clock())
    };
    let legacy = sim(LEGACY, Firmware::Legacy, 37.0, "EAAB");
    let modern = sim(MODERN, Firmware::V43, 64.0, "FAAB");
    // Ends as soon as each dongle has given its SOC and version, and the legacy one its code
    // (in its hold bank); the window only guards against a hang.
    let findings = listener
        .listen(&Clock::System, GUARD, |c| {
            let f = c.findings();
            let complete = |p: &str| {
                f.get(p)
                    .is_some_and(|d| d.soc.is_some() && d.version.is_some())
            };
            complete(LEGACY)
                && complete(MODERN)
                && f.get(LEGACY).is_some_and(|d| d.firmware_code.is_some())
        })
        .await;
    let l = findings.get(LEGACY).expect("the legacy dongle");
    assert_eq!(l.generation, discover::Generation::Legacy);
    assert_eq!(l.version.as_deref(), Some("4.2.1.98S3"));
    assert_eq!(l.soc.map(|s| s.get()), Some(37));
    assert_eq!(l.firmware_code.as_deref(), Some("EAAB"));
    assert!(!l.configured);
    let m = findings.get(MODERN).expect("the 4.3 dongle");
    assert_eq!(m.generation, discover::Generation::Modern);
    assert_eq!(m.version.as_deref(), Some("4.3.0.111S3"));
    assert_eq!(m.soc.map(|s| s.get()), Some(64));
    assert!(m.configured && !m.retained_only);
    assert_eq!(findings.dongles.len(), 2, "{findings:#?}");
    assert!(findings.configured_seen());
    legacy.shutdown().await;
    modern.shutdown().await;
}

/// Publishes retained messages and returns once the broker has them all.
async fn publish_retained(port: u16, messages: &[(&str, &str)]) {
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("retainer", "127.0.0.1", port), 16);
    for (topic, payload) in messages {
        client
            .publish(*topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(GUARD, async {
        while acked < messages.len() {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("connected") {
                acked += 1;
            }
        }
    })
    .await
    .expect("the broker acknowledges every publish");
}

/// Runs `discover` with a config for `port` and `prefix`; its exit code, stdout and stderr.
async fn run_discover(port: u16, prefix: &str, seconds: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!("mqtt: {{host: 127.0.0.1, port: {port}, dongle_prefix: \"{prefix}\"}}\n"),
    )
    .unwrap();
    let out = tokio::time::timeout(
        GUARD,
        tokio::process::Command::new(BIN)
            .args(["discover", "--seconds", seconds, "--config"])
            .arg(&path)
            .output(),
    )
    .await
    .expect("discover ends")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_discover_command_prints_each_dongle_and_exits_by_whether_the_configured_one_publishes()
{
    let broker = start_embedded_broker(0).expect("embedded broker");
    // Retained, so that the command hears them as soon as it subscribes; its listen is then
    // a short window, not a wait for a report.
    let telemetry = format!("{PREFIX}/inputbank1");
    let status = format!("{PREFIX}/status");
    publish_retained(
        broker.port,
        &[
            (&telemetry, r#"{"Serialnumber":"BA1","payload":{"SOC":57}}"#),
            (&status, r#"{"version":"4.2.1.98S3"}"#),
            ("homeassistant/status", "online"),
        ],
    )
    .await;

    let (code, out, err) = run_discover(broker.port, PREFIX, "0.3").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{PREFIX}  legacy firmware (inputbankN/holdbankN), version 4.2.1.98S3, SOC 57 %, 2 messages (all retained"
        )),
        "{out}"
    );
    assert!(out.contains("<- mqtt.dongle_prefix"), "{out}");
    assert!(!out.contains("homeassistant"), "{out}");

    let (code, out, err) = run_discover(broker.port, WRONG, "0.3").await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "mqtt.dongle_prefix is \"{WRONG}\", which nothing published under; did you mean \"{PREFIX}\"?"
        )),
        "{out}"
    );

    let nobody = free_port();
    let (code, out, err) = run_discover(nobody, PREFIX, "0.3").await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to the MQTT broker at 127.0.0.1:{nobody}"
        )),
        "{err}"
    );
}
