//! The inbound listener: accept, optional TLS with ALPN, HTTP/1.1 and HTTP/2
//! (prior knowledge or ALPN) on the same port, graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_xds::config::Inbound;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::proxy::{self, ConnInfo, Shared, Side};

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
                drop(snapshot);
                let info = Arc::new(ConnInfo::new(peer, false));
                let (shared, drain) = (shared.clone(), drain.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_connection(stream, info, shared, side, drain).await
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
                            serve_connection(tls, info, shared, side, drain).await
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
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
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
        InFlight(self.clone())
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

/// Why the idle watch ends a connection.
enum IdleEnd {
    /// No request head within `header_timeout` of the connection's start:
    /// a silent client, or an HTTP/2 preface without HEADERS.
    NoRequest,
    /// No request in flight for `idle_timeout`.
    Idle,
}

/// Resolves when the connection should be closed for want of requests.
/// HTTP/1.1 additionally has hyper's header read timeout, which also runs
/// while a keep-alive connection waits for its next request.
async fn idle_watch(
    activity: &Activity,
    header_timeout: Duration,
    idle_timeout: Duration,
) -> IdleEnd {
    tokio::time::sleep(header_timeout).await;
    if !activity.any_request.load(Ordering::Relaxed) {
        return IdleEnd::NoRequest;
    }
    while let Some(left) = activity.idle_left(idle_timeout) {
        tokio::time::sleep(left).await;
    }
    IdleEnd::Idle
}

/// How long a connection closed for idleness gets to finish its GOAWAY
/// exchange (HTTP/2) before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The HTTP settings of both listeners' connections. hyper's own buffer must
/// hold a head a little over our limit, so that the data path can answer an
/// oversized head with the JSON 431.
fn http_builder(inbound: &Inbound) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let buffer = (inbound.max_header_bytes * 2 + 4096).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inbound.header_timeout)
        .max_buf_size(buffer)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buffer).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(1024);
    builder
}

/// Serves HTTP on one connection; on drain, finishes in-flight requests and closes.
///
/// Its state lives as long as the connection, idle or not, so it keeps only
/// what it uses (the two timeouts, not the listener's settings; the HTTP
/// builder inside hyper's connection, not beside it).
pub async fn serve_connection<I>(
    io: I,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    side: Side,
    drain: Drain,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (conn, header_timeout, idle_timeout, activity) = {
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
        let conn = http_builder(inbound)
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        (conn, inbound.header_timeout, inbound.idle_timeout, activity)
    };
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        end = idle_watch(&activity, header_timeout, idle_timeout) => {
            match end {
                // Nothing to finish: dropping the connection closes it.
                IdleEnd::NoRequest => tracing::debug!("no request within the header timeout; closing"),
                IdleEnd::Idle => {
                    conn.as_mut().graceful_shutdown();
                    // Streams that raced the GOAWAY may finish; once none is
                    // in flight, a peer that does not close is dropped.
                    loop {
                        match tokio::time::timeout(IDLE_CLOSE_GRACE, conn.as_mut()).await {
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
            }
        }
        _ = drain.started() => {
            while !activity.may_close() {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "connection ended with an error while draining");
                        }
                        return;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
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

    #[tokio::test]
    async fn a_connection_without_requests_ends_at_the_header_timeout() {
        let a = activity();
        let end = idle_watch(&a, Duration::from_millis(50), Duration::from_secs(60)).await;
        assert!(matches!(end, IdleEnd::NoRequest));
    }

    #[tokio::test]
    async fn a_request_in_flight_keeps_the_connection_open() {
        let a = activity();
        let in_flight = a.begin(http::Version::HTTP_2);
        assert_eq!(
            a.idle_left(Duration::from_millis(10)),
            Some(Duration::from_millis(10))
        );
        let watch = idle_watch(&a, Duration::from_millis(10), Duration::from_millis(30));
        tokio::pin!(watch);
        assert!(
            tokio::time::timeout(Duration::from_millis(150), watch.as_mut())
                .await
                .is_err(),
            "closed while a request was in flight"
        );
        drop(in_flight);
        let started = Instant::now();
        assert!(matches!(watch.await, IdleEnd::Idle));
        assert!(started.elapsed() >= Duration::from_millis(25));
    }
}
