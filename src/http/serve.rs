//! The HTTP edge: the accept loop and each connection's deadlines, over hyper's HTTP/1.
//!
//! What a client meets here, besides the router:
//!
//! * **Idle timeout.** A connection with no request in flight and no byte of a new one is
//!   closed `idle_timeout` after it was accepted or after its last answer was written.
//! * **Header timeout.** Once the first byte of a request has arrived, the whole request head
//!   (request line and headers) must follow within `header_timeout`, or the connection is
//!   closed without an answer. Heads larger than [`MAX_HEAD`] are answered 431.
//! * **Answers not taken.** While the router works on a request the edge sets no deadline (the
//!   router's request timeout bounds it); once the answer is ready, a client that does not
//!   read it all within `idle_timeout` is closed, so a non-reading client cannot hold its
//!   slot for ever.
//! * **Connection cap.** At most `max_connections` are served at once. Beyond that the accept
//!   loop stops accepting, so new connections wait in the kernel's listen backlog (their TCP
//!   handshake completes) and are served, in order, as soon as a served one closes. A waiting
//!   client costs this process nothing, and a short crowd (a few dashboards opened at once)
//!   sees a delay instead of an error; the idle and header timeouts bound how long a slot can
//!   be held without a request being served, so the wait is bounded too. Accepting and closing
//!   the excess instead would refuse exactly those clients and still cost an accept each.
//! * **Shutdown.** When the token is cancelled the listener is closed (new connections are
//!   refused), idle connections are closed, and a connection in the middle of a request
//!   gets to send its answer and is then closed, for at most [`DRAIN_LIMIT`].
//!
//! Every deadline is on the service's [`Clock`], so a test with a manual clock moves time
//! instead of waiting for it.
//!
//! hyper has a header timer of its own (`http1::Builder::header_read_timeout`), but in hyper 1.x
//! it starts as soon as the connection is ready for a request, i.e. also while a kept-alive
//! connection waits for its next one: one limit for two different waits. The edge keeps both
//! itself instead, from what it sees of the socket (bytes read) and of the service (a request
//! head handed over, its answer ready, its answer written).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::clock::{Clock, Mono};

/// The longest a stopping server waits for answers still being written. Shorter than the
/// whole service's [`crate::app::SHUTDOWN_LIMIT`], so the HTTP task ends on its own.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(4);
const _: () = assert!(DRAIN_LIMIT.as_secs() < crate::app::SHUTDOWN_LIMIT.as_secs());

/// The largest request head (and read buffer) a connection may fill: the size of the largest
/// body taken ([`super::MAX_BODY`]), room for a long token or cookie (60 KiB header values
/// are served). hyper's default (~400 KiB) would let each connection under the cap grow that
/// big.
pub const MAX_HEAD: usize = 64 * 1024;

/// After at least this many connections were open at once, memory is handed back to the
/// kernel once they have closed again (see [`release_freed_memory`]).
const TRIM_AFTER_PEAK: usize = 32;
/// ... that is, once no more than this many remain (a dashboard keeps one open).
const TRIM_AT_OPEN: usize = 2;

/// The edge's limits (from `server:` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// At least 1.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains (see the module
/// documentation).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    clock: Clock,
    shutdown: CancellationToken,
) {
    // Turns every route into its service once. `axum::serve` did it for each connection:
    // a deep copy of the routes and their layers, about 18 KB per connection.
    let router: Router = router.with_state(());
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        // The edge keeps the header deadline itself (see the module documentation).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let load = Arc::new(Load::default());
    let tracker = TaskTracker::new();
    let force = CancellationToken::new();
    let mut at_cap = false;
    loop {
        // A slot first, then a connection: while none is free nothing is accepted, and new
        // connections wait in the listen backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap = false;
                p
            }
            Err(_) => {
                if !at_cap {
                    warn!(
                        max_connections = limits.max_connections,
                        "the HTTP connection cap is reached: new connections wait until one closes (server.max_connections)"
                    );
                    at_cap = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors or memory: accepting again at once would spin.
                    warn!("accepting an HTTP connection failed: {e}; retrying in 1 s");
                    tokio::select! {
                        () = clock.sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers go out at once rather than waiting for the client's ACK of the previous
        // segment (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            debug!("TCP_NODELAY not set on an HTTP connection: {e}");
        }
        let conn = Arc::new(ConnState::new(clock.clone(), limits));
        let io = TokioIo::new(Watched {
            stream,
            conn: conn.clone(),
        });
        let service = Edge {
            router: router.clone(),
            conn: conn.clone(),
        };
        let served = builder.serve_connection(io, service);
        let slot = Slot::take(permit, load.clone());
        tracker.spawn(drive(served, conn, shutdown.clone(), force.clone(), slot));
    }
    drop(listener);
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = clock.sleep(DRAIN_LIMIT) => {
            warn!(
                connections = tracker.len(),
                "closing HTTP connections still answering {} s after shutdown began",
                DRAIN_LIMIT.as_secs()
            );
            force.cancel();
            tracker.wait().await;
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

type Served = http1::Connection<TokioIo<Watched>, Edge>;

/// Runs one connection until it ends, its deadline passes, or the server stops.
async fn drive(
    served: Served,
    conn: Arc<ConnState>,
    shutdown: CancellationToken,
    force: CancellationToken,
    _slot: Slot,
) {
    tokio::pin!(served);
    let mut draining = false;
    loop {
        let deadline = conn.deadline();
        let clock = conn.clock.clone();
        let expired = async move {
            match deadline {
                Some((at, _)) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    debug!("HTTP connection ended: {e}");
                }
                return;
            }
            // The deadline appeared or moved earlier.
            () = conn.moved.notified() => {}
            () = expired => {
                // The phase may have moved on since the deadline was taken (a request began,
                // or an answer was written): only a deadline that still stands closes.
                if let Some((at, why)) = conn.deadline()
                    && conn.clock.mono() >= at
                {
                    debug!(why, "closing an HTTP connection");
                    return;
                }
            }
            () = shutdown.cancelled(), if !draining => {
                // Closes an idle connection at once; a busy one after its answer.
                draining = true;
                served.as_mut().graceful_shutdown();
            }
            () = force.cancelled() => return,
        }
    }
}

/// Where a connection is in its cycle, as far as its deadlines care. HTTP/1 serves one request
/// at a time: hyper reads the next head only once the last answer is written, so the phases
/// follow each other in this order.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight and no byte of the next one, since `since`.
    Idle { since: Mono },
    /// The first bytes of a request arrived at `since`; its head is not complete yet.
    Head { since: Mono },
    /// The router has the request. No edge deadline: the router's request timeout bounds it,
    /// and `POST /api/charging/enable` may rightly take 45 s.
    Routing,
    /// The answer was ready at `since` and is being written.
    Answering { since: Mono },
}

/// One connection's phase, shared by its socket (bytes read), its service (requests begun,
/// answers ready and written) and its task (which sleeps until the deadline).
struct ConnState {
    clock: Clock,
    limits: Limits,
    cycle: Mutex<Cycle>,
    /// Wakes the task when its deadline appears or moves earlier. A deadline that moves later
    /// or goes away needs no wake: the task checks again when the old one passes.
    moved: Notify,
}

struct Cycle {
    phase: Phase,
    /// Counts requests, so that the end of an earlier one never moves a later one's phase.
    request: u64,
}

impl ConnState {
    fn new(clock: Clock, limits: Limits) -> ConnState {
        ConnState {
            cycle: Mutex::new(Cycle {
                phase: Phase::Idle {
                    since: clock.mono(),
                },
                request: 0,
            }),
            clock,
            limits,
            moved: Notify::new(),
        }
    }

    fn cycle(&self) -> MutexGuard<'_, Cycle> {
        self.cycle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection is to be closed, and why; none while the router has a request.
    fn deadline(&self) -> Option<(Mono, &'static str)> {
        let l = &self.limits;
        match self.cycle().phase {
            Phase::Idle { since } => Some((since + l.idle_timeout, "idle timeout")),
            Phase::Head { since } => Some((
                since + l.header_timeout,
                "the request head did not arrive within the header timeout",
            )),
            Phase::Routing => None,
            Phase::Answering { since } => Some((
                since + l.idle_timeout,
                "the client did not take its answer within the idle timeout",
            )),
        }
    }

    /// Moves to `phase` if `request` is still the current one, waking the task.
    fn enter(&self, request: u64, phase: Phase) {
        let mut c = self.cycle();
        if c.request == request {
            c.phase = phase;
            drop(c);
            self.moved.notify_one();
        }
    }

    /// Bytes were read from the socket. While idle they start a request head. Later they are
    /// a body, or a pipelined next request: should that one stop short, the idle timeout that
    /// starts after the answer bounds it.
    fn bytes_arrived(&self) {
        let mut c = self.cycle();
        if let Phase::Idle { since } = c.phase {
            let now = self.clock.mono();
            c.phase = Phase::Head { since: now };
            drop(c);
            if now + self.limits.header_timeout < since + self.limits.idle_timeout {
                self.moved.notify_one();
            }
        }
    }

    /// A request head is complete and goes to the router. The deadline goes away: no wake.
    fn request_began(self: &Arc<Self>) -> InFlight {
        let mut c = self.cycle();
        c.request += 1;
        c.phase = Phase::Routing;
        InFlight {
            conn: self.clone(),
            request: c.request,
        }
    }
}

/// A request in flight, from its head to its answer's end. Dropped with its answer's body,
/// i.e. once hyper has taken the last of it for writing (or the request was abandoned).
struct InFlight {
    conn: Arc<ConnState>,
    request: u64,
}

impl InFlight {
    fn answer_ready(&self) {
        let since = self.conn.clock.mono();
        self.conn.enter(self.request, Phase::Answering { since });
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = self.conn.clock.mono();
        self.conn.enter(self.request, Phase::Idle { since });
    }
}

/// The socket, telling the connection's state when bytes arrive.
struct Watched {
    stream: TcpStream,
    conn: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router as hyper calls it, marking each request's phases until its answer is written.
struct Edge {
    router: Router,
    conn: Arc<ConnState>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Edge {
    type Response = hyper::Response<Answer>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = self.conn.request_began();
        let router = self.router.clone();
        Box::pin(async move {
            let res = router.oneshot(req).await?;
            in_flight.answer_ready();
            Ok(res.map(|body| Answer {
                body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// An answer's body, holding its request in flight until hyper is done with it.
struct Answer {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How many connections are open, and the most that were since memory was last handed back.
#[derive(Default)]
struct Load {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// A connection's place under the cap.
struct Slot {
    _permit: OwnedSemaphorePermit,
    load: Arc<Load>,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, load: Arc<Load>) -> Slot {
        let open = load.open.fetch_add(1, Ordering::Relaxed) + 1;
        load.peak.fetch_max(open, Ordering::Relaxed);
        Slot {
            _permit: permit,
            load,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.load.open.fetch_sub(1, Ordering::Relaxed) - 1;
        // The swap lets one of several connections closing together do it.
        if open <= TRIM_AT_OPEN
            && self.load.peak.load(Ordering::Relaxed) >= TRIM_AFTER_PEAK
            && self.load.peak.swap(open, Ordering::Relaxed) >= TRIM_AFTER_PEAK
        {
            release_freed_memory();
        }
    }
}

/// Hands the heap's free pages back to the kernel.
///
/// glibc's `free` returns memory only from the top of an arena; each of tokio's worker threads
/// has its own arena, and after a burst of connections their freed buffers sit below a few
/// live allocations and stay resident (measured: 0.9 MB in use, 72 MB resident after 2,000
/// connections). `malloc_trim` releases every whole free page of every arena. It walks the
/// free lists under each arena's lock: about a millisecond here, and only after a burst.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` has no preconditions; it only gives free pages back to the kernel
    // and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    //! The phases of one connection and their deadlines. What a client sees of them is tested
    //! over real sockets in `tests/api/edge.rs`; an answer stuck behind a client that does not
    //! read is tested here, since on loopback the kernel's socket buffers (sized from its 64 KiB
    //! segments) swallow even the largest answer of the API.

    use super::*;
    use crate::clock::ManualClock;

    const S: Duration = Duration::from_secs(1);

    fn conn() -> (ManualClock, Arc<ConnState>) {
        let m = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let limits = Limits {
            header_timeout: 10 * S,
            idle_timeout: 30 * S,
            max_connections: 1,
        };
        let c = Arc::new(ConnState::new(m.clock(), limits));
        (m, c)
    }

    fn at(secs: u64) -> Mono {
        Mono(Duration::from_secs(secs))
    }

    fn deadline(c: &ConnState) -> Option<Mono> {
        c.deadline().map(|(at, _)| at)
    }

    #[test]
    fn the_idle_deadline_runs_from_accept_and_from_the_end_of_each_answer() {
        let (m, c) = conn();
        assert_eq!(deadline(&c), Some(at(30)));
        m.advance(5 * S);
        c.bytes_arrived();
        let req = c.request_began();
        req.answer_ready();
        m.advance(2 * S);
        drop(req);
        assert_eq!(deadline(&c), Some(at(37)));
    }

    #[test]
    fn the_first_byte_of_a_request_starts_the_header_deadline() {
        let (m, c) = conn();
        m.advance(25 * S);
        c.bytes_arrived();
        assert_eq!(deadline(&c), Some(at(35)));
        m.advance(3 * S);
        c.bytes_arrived();
        assert_eq!(deadline(&c), Some(at(35)), "later bytes move nothing");
    }

    #[test]
    fn no_deadline_while_the_router_has_the_request_and_the_idle_one_once_its_answer_is_ready() {
        let (m, c) = conn();
        c.bytes_arrived();
        let req = c.request_began();
        assert_eq!(deadline(&c), None);
        m.advance(100 * S);
        c.bytes_arrived();
        assert_eq!(deadline(&c), None, "a body arriving starts no head");
        req.answer_ready();
        assert_eq!(
            c.deadline(),
            Some((
                at(130),
                "the client did not take its answer within the idle timeout"
            ))
        );
    }

    #[test]
    fn the_end_of_an_earlier_request_leaves_a_later_one_alone() {
        let (_m, c) = conn();
        let first = c.request_began();
        let _second = c.request_began();
        drop(first);
        assert_eq!(deadline(&c), None);
    }
}
