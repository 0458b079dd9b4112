//! The HTTP edge as a client on a raw TCP socket meets it: the idle and header timeouts, the
//! connection cap and shutdown. Every timeout is on the world's manual clock, so the tests move
//! time and then wait for the event (an answer, or the server closing the socket).

use std::net::SocketAddr;
use std::time::Duration;

use solar_charging_backend::http::serve::DRAIN_LIMIT;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{GUARD, Setup, World};

const SEC: Duration = Duration::from_secs(1);

async fn world(server: &str) -> World {
    World::start(Setup {
        server: server.into(),
        ..Default::default()
    })
    .await
}

fn addr(w: &World) -> SocketAddr {
    w.app.as_ref().expect("running").addr
}

async fn connect(w: &World) -> TcpStream {
    TcpStream::connect(addr(w)).await.expect("connects")
}

async fn send_get(s: &mut TcpStream, path: &str) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request sent");
}

/// Reads one answer (the API's answers all carry a Content-Length): its status and body.
async fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
                if got.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                    return (status, body);
                }
            }
            let n = s.read(&mut buf).await.expect("the answer is read");
            assert!(
                n > 0,
                "the connection closed before a whole answer; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUARD, read)
        .await
        .expect("an answer within the guard")
}

async fn get(s: &mut TcpStream, path: &str) -> u16 {
    send_get(s, path).await;
    read_answer(s).await.0
}

/// Waits until the server closes `s` (end of stream, or a reset); fails if it answers instead.
async fn wait_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(GUARD, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "{what}: expected the server to close, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!("{what}: still open after {GUARD:?}"),
    }
}

/// Whether `s` is open with nothing to read, at this instant.
fn open_and_quiet(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let w = world("idle_timeout_seconds: 30").await;
    // One connection never sends a byte; another is idle after an answer.
    let mut silent = connect(&w).await;
    let mut used = connect(&w).await;
    // Connections are accepted in order: once `used` is answered, `silent` is accepted too
    // and its idle time runs from now.
    assert_eq!(get(&mut used, "/api/health").await, 200);

    w.clock.advance(Duration::from_secs(29));
    // A third connection's answer shows that the server has had the time to act on the move.
    let mut probe = connect(&w).await;
    assert_eq!(get(&mut probe, "/api/health").await, 200);
    assert!(open_and_quiet(&silent), "closed before the idle timeout");
    assert!(open_and_quiet(&used), "closed before the idle timeout");

    w.clock.advance(SEC);
    wait_closed(&mut silent, "a connection that never sent anything").await;
    wait_closed(&mut used, "a connection idle after its answer").await;
}

#[tokio::test]
async fn a_header_dribbled_byte_by_byte_is_cut_off_by_the_header_timeout() {
    let w = world("header_timeout_seconds: 10, idle_timeout_seconds: 30").await;
    let mut s = connect(&w).await;
    let head =
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: one byte every 2 s\r\n\r\n";
    // One byte per tick, each after 2 s of the service's time: 10 s after the first byte the
    // head is far from complete, and no gap comes near the idle timeout.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0;
    let mut since_first = Duration::ZERO;
    let mut buf = [0u8; 1024];
    let cut_after = tokio::time::timeout(GUARD, async {
        loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return since_first,
                    Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
                },
                _ = pace.tick() => {
                    assert!(
                        sent < head.len(),
                        "the whole head went out over {since_first:?} and the connection is open"
                    );
                    if sent > 0 {
                        w.clock.advance(2 * SEC);
                        since_first += 2 * SEC;
                    }
                    if s.write_all(&head[sent..=sent]).await.is_err() {
                        return since_first;
                    }
                    sent += 1;
                }
            }
        }
    })
    .await
    .expect("the connection is closed within the guard");
    assert!(
        (Duration::from_secs(10)..=Duration::from_secs(14)).contains(&cut_after),
        "cut off {cut_after:?} after the first byte, not at the 10 s header timeout"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_serves_many_requests_within_the_timeout() {
    let w = world("header_timeout_seconds: 10, idle_timeout_seconds: 30").await;
    let mut s = connect(&w).await;
    // Each pause is longer than the header timeout and shorter than the idle one: 200 s in all.
    for i in 0..10 {
        assert_eq!(get(&mut s, "/api/health").await, 200, "request {i}");
        w.clock.advance(Duration::from_secs(20));
    }
    assert_eq!(get(&mut s, "/api/charging/status").await, 200);
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let w = world("max_connections: 2").await;
    let mut a = connect(&w).await;
    assert_eq!(get(&mut a, "/api/health").await, 200);
    let mut b = connect(&w).await;
    assert_eq!(get(&mut b, "/api/health").await, 200);

    // The kernel completes the handshake of a third connection; the server leaves it waiting.
    let mut c = connect(&w).await;
    send_get(&mut c, "/api/health").await;
    // The server answers on a connection it serves, after the third one's request went out.
    assert_eq!(get(&mut b, "/api/health").await, 200);
    assert!(
        open_and_quiet(&c),
        "a connection beyond the cap of 2 was served"
    );

    drop(a);
    let (status, body) = read_answer(&mut c).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&mut b, "/api/health").await, 200);
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let mut w = world("").await;
    let mut silent = connect(&w).await;
    let mut used = connect(&w).await;
    assert_eq!(get(&mut used, "/api/health").await, 200);
    let at = addr(&w);

    w.shutdown().await;
    wait_closed(&mut silent, "a connection that never sent anything").await;
    wait_closed(&mut used, "a connection idle after its answer").await;
    assert!(
        TcpStream::connect(at).await.is_err(),
        "the listener still accepts after shutdown"
    );
}

/// Starts a schedule request whose body stops short, so that it is in flight until the rest
/// is sent.
async fn start_slow_post(w: &World) -> (TcpStream, &'static [u8]) {
    const BODY: &[u8] = br#"{"target_soc": 80, "start_time": "02:30", "mode": "recurring"}"#;
    let mut s = connect(w).await;
    let head = format!(
        "POST /api/charge/schedule HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&BODY[..10]).await.unwrap();
    (s, &BODY[10..])
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_send_its_answer() {
    let mut w = world("").await;
    let (mut busy, rest) = start_slow_post(&w).await;
    let mut idle = connect(&w).await;
    assert_eq!(get(&mut idle, "/api/health").await, 200);

    let stopping = tokio::spawn(w.app.take().expect("running").shutdown());
    // Once the idle connection is closed, the server is draining.
    wait_closed(&mut idle, "an idle connection at shutdown").await;
    busy.write_all(rest).await.unwrap();
    let (status, body) = read_answer(&mut busy).await;
    assert!(
        status == 200 || status == 503,
        "the request in flight got {status} {body}"
    );
    wait_closed(&mut busy, "a connection after its last answer at shutdown").await;
    stopping.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_a_request_still_in_flight_after_the_drain_limit() {
    let mut w = world("").await;
    let (mut busy, _never_sent) = start_slow_post(&w).await;
    let mut idle = connect(&w).await;
    assert_eq!(get(&mut idle, "/api/health").await, 200);

    let stopping = tokio::spawn(w.app.take().expect("running").shutdown());
    wait_closed(&mut idle, "an idle connection at shutdown").await;
    // Moves the service's time a second per tick until the stuck request is cut.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut waited = Duration::ZERO;
    let mut buf = [0u8; 1024];
    let cut_after = tokio::time::timeout(GUARD, async {
        loop {
            tokio::select! {
                r = busy.read(&mut buf) => match r {
                    Ok(0) | Err(_) => return waited,
                    Ok(n) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
                },
                _ = pace.tick() => {
                    w.clock.advance(SEC);
                    waited += SEC;
                }
            }
        }
    })
    .await
    .expect("the stuck request is cut within the guard");
    assert!(
        (DRAIN_LIMIT..=DRAIN_LIMIT + 2 * SEC).contains(&cut_after),
        "cut {cut_after:?} after shutdown began, not at the {DRAIN_LIMIT:?} drain limit"
    );
    stopping.await.unwrap();
}
