//! The `demo` command as a user runs it: where it keeps its state, and what it says when its
//! port is taken.

use std::io::{BufRead as _, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_solar-charging-backend");

/// A demo process on a free port, and what its banner said.
struct DemoProcess {
    child: Child,
    port: u16,
    state: String,
    _lines: Lines<BufReader<ChildStdout>>,
}

impl DemoProcess {
    fn start(extra: &[&str], sbc_data_dir: &Path) -> DemoProcess {
        let mut child = Command::new(BIN)
            .args(["demo", "--port", "0"])
            .args(extra)
            .env("SBC_DATA_DIR", sbc_data_dir)
            .env_remove("SERVER_PORT")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut port, mut state) = (None, None);
        while port.is_none() {
            let line = lines.next().expect("the demo prints its banner").unwrap();
            if let Some((_, s)) = line.split_once("State: ") {
                state = Some(s.trim().to_string());
            }
            if let Some((_, url)) = line.split_once("Dashboard:  http://") {
                port = url
                    .trim()
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok());
            }
        }
        DemoProcess {
            child,
            port: port.unwrap(),
            state: state.expect("the banner names the state folder"),
            _lines: lines,
        }
    }

    /// Stops it as Ctrl-C would, and waits for it to exit.
    fn stop(mut self) {
        let killed = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "a clean exit: {status}");
    }
}

/// A minimal HTTP/1.1 request over a std socket; the whole answer.
fn request(port: u16, method: &str, path: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn demo_keeps_its_state_in_the_data_dir_given_on_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo-state");
    // The service's own folder, as set for it in the environment: a demo never uses it.
    let service_dir = dir.path().join("service-state");

    let fresh = DemoProcess::start(&[], &service_dir);
    assert!(
        !Path::new(&fresh.state).starts_with(&service_dir),
        "{}",
        fresh.state
    );
    fresh.stop();

    let demo = DemoProcess::start(&["--data-dir", demo_dir.to_str().unwrap()], &service_dir);
    assert_eq!(Path::new(&demo.state), demo_dir);
    let posted = request(
        demo.port,
        "POST",
        "/api/charge/schedule",
        r#"{"target_soc": 77, "start_time": "04:10"}"#,
    );
    assert!(posted.starts_with("HTTP/1.1 200"), "{posted}");
    demo.stop();
    let state = std::fs::read_to_string(demo_dir.join("state.json")).unwrap();
    assert!(state.contains("\"target\": 77"), "{state}");
    assert!(
        !service_dir.exists(),
        "SBC_DATA_DIR is the service's, not the demo's"
    );

    // The older name still works, and the next demo finds the schedule kept there.
    let again = DemoProcess::start(&["--demo-data", demo_dir.to_str().unwrap()], &service_dir);
    assert_eq!(Path::new(&again.state), demo_dir);
    let schedule = request(again.port, "GET", "/api/charge/schedule", "");
    assert!(schedule.contains("\"target_soc\":77"), "{schedule}");
    again.stop();
}

#[test]
fn demo_on_a_port_in_use_says_to_pick_another_with_the_port_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args(["demo", "--port", &port])
        .env_remove("SERVER_PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "names the address: {stderr}"
    );
    assert!(stderr.contains("--port"), "names the flag: {stderr}");
    assert!(
        !stderr.contains("server.port"),
        "the demo has no config file to change: {stderr}"
    );
    drop(taken);
}
