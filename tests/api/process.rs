//! The binary as a user runs it: `check-config`, `healthcheck`, and a real process that stops
//! cleanly on SIGTERM with its schedule saved.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use solar_charging_backend::sim::broker::start_embedded_broker;

const BIN: &str = env!("CARGO_BIN_EXE_solar-charging-backend");

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_old_file_and_lists_every_problem_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "mqtt: {host: 192.168.1.100, port: 1883, username: solar, password: pw, dongle_prefix: dongle-XX}\n\
         server: {host: 0.0.0.0, port: 8088}\n\
         charging: {safety_cutoff_hours: 8, soc_check_interval: 30, retry_on_failure: true, max_retries: 3}\n\
         logging: {level: INFO}\n\
         apns: {enabled: false, key_path: x, key_id: x, team_id: x, bundle_id: x, use_sandbox: false}\n",
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&good)
        .env_remove("SERVER_PORT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        !stdout.contains("warning: apns"),
        "the old push section, switched off, is read without a warning: {stdout}"
    );
    assert!(
        !stdout.contains("pw"),
        "the password is never printed: {stdout}"
    );

    let bad = write_config(dir.path(), "mqtt: {port: x}\ncharging: {max_retries: -1}\n");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for path in [
        "mqtt.host",
        "mqtt.port",
        "mqtt.dongle_prefix",
        "charging.max_retries",
    ] {
        assert!(stderr.contains(path), "{path} is named: {stderr}");
    }
}

#[test]
fn check_config_checks_the_push_key_and_the_notification_channels() {
    let dir = tempfile::tempdir().unwrap();
    let base = "mqtt: {host: 192.168.1.100, dongle_prefix: dongle-XX}\n";
    let check = |text: String| {
        let path = write_config(dir.path(), &text);
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .env_remove("SERVER_PORT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let apns = |key: &std::path::Path| {
        format!(
            "apns: {{enabled: true, key_path: {:?}, key_id: ABCDEFGHIJ, team_id: ABCDEFGHIJ, bundle_id: com.generouscorp.Solar}}\n",
            key
        )
    };

    let garbage = dir.path().join("AuthKey_BAD.p8");
    std::fs::write(&garbage, "not a key").unwrap();
    let (ok, _, stderr) = check(format!("{base}{}", apns(&garbage)));
    assert!(!ok, "a key file that is not a key fails the check");
    assert!(stderr.contains("apns.key_path"), "{stderr}");

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let good = dir.path().join("AuthKey_GOOD.p8");
    std::fs::write(&good, key.serialize_pem()).unwrap();
    let (ok, stdout, stderr) = check(format!(
        "{base}{}notifications: {{ntfy: {{url: 'https://ntfy.sh/my-battery'}}, webhooks: [{{url: 'http://ha.local/hook'}}]}}\n",
        apns(&good)
    ));
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("iPhone app push (via https://api.push.apple.com)")
            && stdout.contains("ntfy")
            && stdout.contains("1 webhook(s)"),
        "{stdout}"
    );

    let (ok, _, stderr) = check(format!(
        "{base}notifications: {{webhooks: [{{url: 'http://ha.local/hook', events: [charge_done]}}]}}\n"
    ));
    assert!(!ok);
    assert!(
        stderr.contains("notifications.webhooks[0].events") && stderr.contains("charge_complete"),
        "{stderr}"
    );
}

#[test]
fn check_config_on_the_untouched_example_names_each_placeholder_to_change() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env_remove("SERVER_PORT")
        .env_remove("SERVER_HOST")
        .env_remove("API_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "still valid: {stdout}");
    assert!(
        stdout.contains("is valid, with 4 warnings"),
        "not plainly valid: {stdout}"
    );
    for key in [
        "mqtt.host",
        "mqtt.username",
        "mqtt.password",
        "mqtt.dongle_prefix",
    ] {
        assert!(
            stdout.contains(&format!("warning: {key}: ")),
            "{key} is named: {stdout}"
        );
    }
    assert!(
        stdout.contains("mosquitto_sub -v -t '#'"),
        "says how to find the dongle's ID: {stdout}"
    );
    assert!(!stdout.contains("change-me"), "{stdout}");
}

#[test]
fn serving_without_a_config_file_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).current_dir(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("config.example.yaml") && stderr.contains("demo"),
        "{stderr}"
    );
}

#[test]
fn the_service_stops_within_five_seconds_on_sigterm_and_keeps_its_schedule() {
    let broker = start_embedded_broker(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_config(
        dir.path(),
        &format!(
            "mqtt: {{host: 127.0.0.1, port: {}, dongle_prefix: dongle-proc}}\nserver: {{host: 127.0.0.1, port: {port}}}\n",
            broker.port
        ),
    );
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("SERVER_PORT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The log says when it serves (and when it reached the broker).
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while !(seen.contains("serving the API") && seen.contains("connected to the MQTT broker")) {
        let line = lines
            .next()
            .expect("the service logs while starting")
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(
        !seen.contains('\u{1b}'),
        "no colour escape codes when the log is not a terminal: {seen:?}"
    );
    let url = format!("http://127.0.0.1:{port}/api/health");
    let health = Command::new(BIN)
        .args(["healthcheck", "--url", &url])
        .status()
        .unwrap();
    assert!(
        health.success(),
        "healthcheck passes against a running service"
    );
    let body = r#"{"target_soc": 77, "start_time": "04:10"}"#;
    let posted = post(port, "/api/charge/schedule", body);
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");

    let asked = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "a clean exit: {status}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");

    let state = std::fs::read_to_string(dir.path().join("data/state.json")).unwrap();
    assert!(state.contains("\"target\": 77"), "{state}");
    let health = Command::new(BIN)
        .args(["healthcheck", "--url", &url])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        !health.success(),
        "healthcheck fails once the service is gone"
    );
}

/// A minimal HTTP/1.1 POST over a std socket (no runtime in a plain test).
fn post(port: u16, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The `simulate` command against Debian's mosquitto, read by the service: both as the
/// separate processes a user runs.
#[tokio::test]
async fn the_simulate_command_against_mosquitto_feeds_the_service() {
    let broker = crate::harness::Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = "dongle-40:4C:CA:00:00:5A";
    let mut sim = tokio::process::Command::new(BIN)
        .args([
            "simulate",
            "--broker",
            &format!("127.0.0.1:{}", broker.port),
        ])
        .args(["--prefix", prefix, "--soc", "61", "--firmware", "legacy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = write_config(
        dir.path(),
        &format!(
            "mqtt: {{host: 127.0.0.1, port: {}, dongle_prefix: \"{prefix}\"}}\nserver: {{host: 127.0.0.1, port: {port}}}\n",
            broker.port
        ),
    );
    let mut service = tokio::process::Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("SERVER_PORT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The service logs each step; the first inverter firmware line means the dongle answered.
    let mut lines = tokio::io::BufReader::new(service.stdout.take().unwrap());
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        use tokio::io::AsyncBufReadExt;
        let mut all = String::new();
        let mut line = String::new();
        while !all.contains("inverter firmware code") {
            line.clear();
            if lines.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            all.push_str(&line);
        }
        all
    })
    .await
    .expect("the service hears the simulated dongle");
    assert!(seen.contains("FAAB"), "{seen}");
    // The legacy simulator reports its SOC every few seconds of real time.
    let soc = tokio::time::timeout(Duration::from_secs(30), async {
        // Another process: its answers are the only events to wait on, so ask a few times a
        // second until the first report has arrived.
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            let r = reqwest::get(format!("http://127.0.0.1:{port}/api/charge/status"))
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap();
            if !r["current_soc"].is_null() {
                return r["current_soc"].clone();
            }
        }
    })
    .await
    .expect("the SOC arrives through mosquitto");
    assert_eq!(soc, 61);
    let _ = service.kill().await;
    let _ = sim.kill().await;
}
