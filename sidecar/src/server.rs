//! The inbound listener: accept, optional TLS with ALPN, HTTP/1.1 and HTTP/2
//! (prior knowledge or ALPN) on the same port, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_xds::config::Inbound;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::proxy::{self, ConnInfo, Shared, Side};
use crate::woken::PollWhenWoken;

/// Binds a listening socket with a deep accept queue. Shared with the
/// upgrade handover, which passes these same sockets to the next process.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts connections on one listener until draining starts. The listener
/// may be shared with the process taking over (both accept for a moment
/// during an upgrade). Inbound connections may be TLS; egress ones are plain
/// (loopback only).
pub async fn serve(listener: Arc<TcpListener>, shared: Arc<Shared>, side: Side, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = side.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track_connection();
        let snapshot = shared.store.load();
        let tls = match side {
            Side::Inbound => snapshot.tls.clone(),
            Side::Egress => None,
        };
        // Plain and TLS connections are separate tasks: a task is as large
        // as its largest state, and a TLS connection's (handshake, TLS
        // stream) is twice a plain one's, which every plain connection
        // would otherwise carry for its whole life.
        match tls {
            None => {
                let header_timeout = snapshot.config.inbound.header_timeout;
                drop(snapshot);
                let info = Arc::new(ConnInfo::new(peer, false));
                let (shared, drain) = (shared.clone(), drain.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let started = tokio::time::Instant::now();
                    let Some(protocol) = sniff(&stream, header_timeout, &drain).await else {
                        tracing::debug!(%peer, "nothing sent within the header timeout; closing");
                        return;
                    };
                    serve_connection(stream, protocol, started, info, shared, side, drain).await
                });
            }
            Some(acceptor) => {
                let handshake = tokio::time::timeout(
                    snapshot.config.inbound.header_timeout,
                    acceptor.accept(stream),
                );
                drop(snapshot);
                let (shared, drain) = (shared.clone(), drain.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            let info = Arc::new(ConnInfo::new(peer, true));
                            let protocol = protocol_of_alpn(tls.get_ref().1.alpn_protocol());
                            let started = tokio::time::Instant::now();
                            serve_connection(tls, protocol, started, info, shared, side, drain)
                                .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    tracing::info!(listener = side.name(), "listener stopped accepting");
}

/// The HTTP/2 connection preface (RFC 9113 §3.4), which a client speaking
/// HTTP/2 with prior knowledge sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, known before hyper serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// What the first bytes a client sent say: anything that is not the start
/// of the HTTP/2 preface is HTTP/1 (hyper-util decides the same way);
/// `None` while they are a part of the preface.
fn protocol_of(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// The protocol of a TLS connection: HTTP/2 only when ALPN chose `h2`
/// (RFC 9113 §3.3: HTTP/2 over TLS is negotiated, never prior knowledge).
pub fn protocol_of_alpn(alpn: Option<&[u8]>) -> Protocol {
    match alpn {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

/// When a plain connection that sent part of the HTTP/2 preface is looked
/// at again: peeked data keeps the socket readable, so there is no
/// readiness to wait for. The wait doubles each time up to
/// [`PARTIAL_PREFACE_RECHECK_MAX`], so that a client stopping inside the
/// preface costs a few looks, not one every 10 ms until the header timeout.
const PARTIAL_PREFACE_RECHECK: Duration = Duration::from_millis(10);
const PARTIAL_PREFACE_RECHECK_MAX: Duration = Duration::from_secs(1);

/// Looks at what a plain connection sent first without taking it off the
/// socket, so hyper reads the request from the socket itself (hyper-util's
/// automatic choice reads the first bytes and hands them back, which doubles
/// hyper's HTTP/1 read buffer, 8 to 16 KiB, for the connection's life).
/// `None`: nothing decisive within the header timeout (or, once draining,
/// within [`DRAIN_IDLE_CLOSE`]), the peer closed, or the socket failed.
async fn sniff(
    stream: &tokio::net::TcpStream,
    header_timeout: Duration,
    drain: &Drain,
) -> Option<Protocol> {
    let look = async {
        let mut first = [0u8; H2_PREFACE.len()];
        let mut wait = PARTIAL_PREFACE_RECHECK;
        loop {
            let n = stream.peek(&mut first).await.ok().filter(|n| *n > 0)?;
            if let Some(protocol) = first.get(..n).and_then(protocol_of) {
                return Some(protocol);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(PARTIAL_PREFACE_RECHECK_MAX);
        }
    };
    let draining = async {
        drain.started().await;
        tokio::time::sleep(DRAIN_IDLE_CLOSE).await;
    };
    tokio::select! {
        protocol = tokio::time::timeout(header_timeout, look) => protocol.ok().flatten(),
        _ = draining => None,
    }
}

/// While draining, an HTTP/1 connection without a request for this long is
/// closed. Until then a keep-alive client may still send its next request,
/// which gets its answer with `Connection: close`; closing an idle connection
/// at once would race with such a request and reset it.
pub const DRAIN_IDLE_CLOSE: Duration = Duration::from_secs(1);

/// What the drain and the idle limits need to know about one connection.
pub(crate) struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
    http2: AtomicBool,
    /// A request head (an HTTP/2 HEADERS frame) has arrived.
    any_request: AtomicBool,
}

/// Counts a request as in flight until its response body is done (the
/// request's [`crate::proxy::Exchange`] holds it).
pub(crate) struct InFlight {
    activity: Arc<Activity>,
    /// When the request ended, if its exchange read the clock for its log
    /// line already (one reading per request fewer).
    ended: Option<Instant>,
}

impl InFlight {
    /// The request ended at `at`: the connection is idle from then on if it
    /// was the last one in flight.
    pub(crate) fn ended_at(&mut self, at: Instant) {
        self.ended = Some(at);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ended = self.ended.unwrap_or_else(Instant::now);
            *self
                .activity
                .idle_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = ended;
        }
    }
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            http2: AtomicBool::new(false),
            any_request: AtomicBool::new(false),
        })
    }

    #[cfg(test)]
    pub(crate) fn has_requests_in_flight(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    pub(crate) fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        if version == http::Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.any_request.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: self.clone(),
            ended: None,
        }
    }

    /// How much longer the connection may stay without a request in flight;
    /// `None`: it has been idle for `limit` already.
    fn idle_left(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(limit);
        }
        let idle = self
            .idle_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        limit.checked_sub(idle).filter(|left| !left.is_zero())
    }

    /// Ready for a graceful shutdown now: HTTP/2 always (GOAWAY lets streams
    /// in flight finish), HTTP/1 once idle for [`DRAIN_IDLE_CLOSE`].
    fn may_close(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
            || (self.in_flight.load(Ordering::Acquire) == 0
                && self
                    .idle_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed()
                    >= DRAIN_IDLE_CLOSE)
    }
}

/// Why the watch ends a connection.
enum WatchEnd {
    /// No request head within `header_timeout` of the connection's start:
    /// a silent client, or an HTTP/2 preface without HEADERS.
    NoRequest,
    /// No request in flight for the idle limit.
    Idle,
    /// The process drains.
    Drain,
}

/// How long a connection may go without a request in flight. HTTP/1.1: the
/// shorter of `idle_timeout` and `header_timeout`, which so also bounds the
/// time to receive a keep-alive connection's next request head, however
/// slowly it trickles in (the head is not in flight until it is complete).
fn idle_limit(protocol: Protocol, header_timeout: Duration, idle_timeout: Duration) -> Duration {
    match protocol {
        Protocol::Http1 => idle_timeout.min(header_timeout),
        Protocol::Http2 => idle_timeout,
    }
}

/// Resolves when the connection should be closed for want of requests.
async fn idle_watch(
    activity: &Activity,
    header_deadline: tokio::time::Instant,
    idle_limit: Duration,
) -> WatchEnd {
    tokio::time::sleep_until(header_deadline).await;
    if !activity.any_request.load(Ordering::Relaxed) {
        return WatchEnd::NoRequest;
    }
    while let Some(left) = activity.idle_left(idle_limit) {
        tokio::time::sleep(left).await;
    }
    WatchEnd::Idle
}

/// The idle limits and the drain, as one future. Its timers are set once
/// per idle period, not per request: requests only mark [`Activity`].
async fn watch(
    activity: &Activity,
    header_deadline: tokio::time::Instant,
    idle_limit: Duration,
    drain: &Drain,
) -> WatchEnd {
    tokio::select! {
        biased;
        () = drain.started() => WatchEnd::Drain,
        end = idle_watch(activity, header_deadline, idle_limit) => end,
    }
}

/// How long a connection closed for idleness gets to finish its GOAWAY
/// exchange (HTTP/2) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP/1 settings of both listeners' connections. hyper's own buffer
/// must hold a head a little over our limit, so that the data path can
/// answer an oversized head with the JSON 431. hyper's header read timeout
/// is off: it would arm a timer for every request; the connection's
/// [`watch`] bounds head reads instead (see [`idle_limit`]).
fn http1_builder(inbound: &Inbound) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(head_buffer(inbound))
        .keep_alive(true);
    builder
}

/// The HTTP/2 settings of both listeners' connections.
fn http2_builder(inbound: &Inbound) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head_buffer(inbound)).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(1024);
    builder
}

fn head_buffer(inbound: &Inbound) -> usize {
    (inbound.max_header_bytes * 2 + 4096).max(8192)
}

/// One connection served by hyper, as HTTP/1 (with upgrades) or HTTP/2.
// HTTP/1, the usual case, lives inline in the connection's task.
#[allow(clippy::large_enum_variant)]
enum Served<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
{
    Http1(http1::UpgradeableConnection<I, S>),
    /// Boxed: twice an HTTP/1 connection's size, which every HTTP/1
    /// connection's task would otherwise carry.
    Http2(Box<http2::Connection<I, S, TokioExecutor>>),
}

impl<I, S, B> Served<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Unpin,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(&mut self) {
        match self {
            Served::Http1(conn) => Pin::new(conn).graceful_shutdown(),
            Served::Http2(conn) => Pin::new(conn.as_mut()).graceful_shutdown(),
        }
    }

    /// Serves the connection until it ends; dropping the future leaves it
    /// where it was, so it can be awaited again.
    async fn run(&mut self) -> Result<(), hyper::Error> {
        std::future::poll_fn(|cx| match self {
            Served::Http1(conn) => Pin::new(conn).poll(cx),
            Served::Http2(conn) => Pin::new(conn.as_mut()).poll(cx),
        })
        .await
    }
}

/// Serves HTTP on one connection; on drain, finishes in-flight requests and closes.
///
/// Its state lives as long as the connection, idle or not, so it keeps only
/// what it uses (the two timeouts, not the listener's settings; the HTTP
/// builder inside hyper's connection, not beside it).
pub async fn serve_connection<I>(
    io: I,
    protocol: Protocol,
    started: tokio::time::Instant,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    side: Side,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut conn, header_timeout, idle_timeout, activity) = {
        let snapshot = shared.store.load();
        let inbound = &snapshot.config.inbound;
        let activity = Activity::new();
        let service_activity = activity.clone();
        let service_drain = drain.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let shared = shared.clone();
            let info = info.clone();
            let version = req.version();
            let in_flight = service_activity.begin(version);
            let drain = service_drain.clone();
            async move {
                // Boxed: hyper keeps room for the service future in every
                // connection, idle or not; a box makes that room a pointer and
                // the request's state (several KB) exists only while it is served.
                let mut rsp = Box::pin(proxy::handle(shared, info, side, req, in_flight)).await;
                // Draining: an HTTP/1 client learns to reconnect (to the new process).
                if drain.is_draining()
                    && version < http::Version::HTTP_2
                    && rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS
                {
                    rsp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(rsp)
            }
        });
        let io = TokioIo::new(io);
        let conn = match protocol {
            Protocol::Http1 => Served::Http1(
                http1_builder(inbound)
                    .serve_connection(io, service)
                    .with_upgrades(),
            ),
            Protocol::Http2 => Served::Http2(Box::new(
                http2_builder(inbound).serve_connection(io, service),
            )),
        };
        (conn, inbound.header_timeout, inbound.idle_timeout, activity)
    };
    let watch = watch(
        &activity,
        started + header_timeout,
        idle_limit(protocol, header_timeout, idle_timeout),
        &drain,
    );
    tokio::pin!(watch);
    let end = tokio::select! {
        biased;
        result = conn.run() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        end = PollWhenWoken::new(watch) => end,
    };
    match end {
        // Nothing to finish: dropping the connection closes it.
        WatchEnd::NoRequest => tracing::debug!("no request within the header timeout; closing"),
        WatchEnd::Idle => {
            conn.graceful_shutdown();
            // Streams that raced the GOAWAY may finish; once none is
            // in flight, a peer that does not close is dropped.
            loop {
                match tokio::time::timeout(IDLE_CLOSE_GRACE, conn.run()).await {
                    Ok(result) => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "idle connection closed with an error");
                        }
                        break;
                    }
                    Err(_) if activity.in_flight.load(Ordering::Acquire) == 0 => break,
                    Err(_) => {}
                }
            }
        }
        WatchEnd::Drain => {
            while !activity.may_close() {
                tokio::select! {
                    result = conn.run() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error while draining");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            conn.graceful_shutdown();
            if let Err(e) = conn.run().await {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity() -> Arc<Activity> {
        Activity::new()
    }

    #[test]
    fn the_first_bytes_tell_http2_prior_knowledge_from_http1() {
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(protocol_of(&more), Some(Protocol::Http2));
        for partial in [&b""[..], b"P", b"PRI", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r"] {
            assert_eq!(protocol_of(partial), None, "{partial:?}");
        }
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"G",
            b"PRI / HTTP/1.1\r\n",
            b"PRI * HTTP/1.1\r\n\r\n",
            b"pri * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(protocol_of(other), Some(Protocol::Http1), "{other:?}");
        }
        assert_eq!(protocol_of_alpn(Some(b"h2")), Protocol::Http2);
        for alpn in [Some(&b"http/1.1"[..]), None, Some(b"h2c"), Some(b"H2")] {
            assert_eq!(protocol_of_alpn(alpn), Protocol::Http1, "{alpn:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_without_requests_ends_at_the_header_timeout() {
        let a = activity();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let end = idle_watch(&a, deadline, Duration::from_secs(60)).await;
        assert!(matches!(end, WatchEnd::NoRequest));
    }

    #[tokio::test]
    async fn a_request_in_flight_keeps_the_connection_open() {
        let a = activity();
        let in_flight = a.begin(http::Version::HTTP_2);
        assert_eq!(
            a.idle_left(Duration::from_millis(10)),
            Some(Duration::from_millis(10))
        );
        let deadline = tokio::time::Instant::now() + Duration::from_millis(10);
        let watch = idle_watch(&a, deadline, Duration::from_millis(30));
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_millis(150), watch.as_mut())
                .await
                .is_err(),
            "closed while a request was in flight"
        );
        drop(in_flight);
        let started = Instant::now();
        assert!(matches!(watch.await, WatchEnd::Idle));
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
