//! The pooled client that forwards requests to the local app.
//!
//! One [`Upstream`] per app address and protocol; it is reused across config
//! reloads that keep the `app:` section, so pooled connections survive.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use hyper::client::conn::{http1, http2};
use hyper::Uri;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_filters::Body;
use meshgate_xds::config::{App, AppAddress, AppProtocol};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

/// Where the app listens.
#[derive(Clone, Debug)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// Connects to the app, bounded by the connect timeout. A timeout surfaces as
/// `io::ErrorKind::TimedOut` so the data path can answer 504 rather than 502.
#[derive(Clone, Debug)]
pub struct AppConnector {
    target: Target,
    connect_timeout: Duration,
}

/// A connection to the app over TCP or a unix socket.
pub enum AppStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AppConnector {
    async fn connect(&self) -> io::Result<AppStream> {
        let connect = async {
            match &self.target {
                Target::Tcp(addr) => {
                    let stream = TcpStream::connect(addr.as_str()).await?;
                    stream.set_nodelay(true)?;
                    Ok(AppStream::Tcp(stream))
                }
                Target::Unix(path) => Ok(AppStream::Unix(UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect to app timed out",
            )),
        }
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AppStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AppStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AppStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AppStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AppStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AppStream::Tcp(s) => s.is_write_vectored(),
            AppStream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// How often the reaper looks at the idle HTTP/1 connections: it closes the
/// ones idle past the idle timeout, and half of those left unused since its
/// previous look (see [`Pool::reap`]).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// One pooled HTTP/1 connection to the app.
struct Pooled {
    sender: http1::SendRequest<Body>,
    last_used: Instant,
}

/// Connections to the app, shared by every request (and the reaper task).
struct Pool {
    connector: AppConnector,
    protocol: AppProtocol,
    max_idle: usize,
    idle_timeout: Duration,
    /// HTTP/1 connections, busy or idle, least recently used first. A
    /// connection goes back in (at the end) as soon as its response head
    /// arrived; it is taken again only once hyper reports it ready, i.e.
    /// after that response's body was read to the end, and the most recently
    /// used ready one is taken, so a steady load keeps reusing the same few
    /// and the ones a burst opened stay unused at the front. Nothing is
    /// spawned per request to hand a connection back, except while requests
    /// wait for one (see [`Pool::connect_or_wait`]).
    http1: Mutex<Vec<Pooled>>,
    /// The one multiplexed HTTP/2 connection, when the app speaks HTTP/2.
    http2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Requests waiting for an HTTP/1 connection (none ready in the pool).
    waiting: AtomicUsize,
    /// HTTP/1 connects in progress: those of waiting requests and spare ones
    /// (their request took another connection first; they join the pool).
    connecting: AtomicUsize,
    /// Signalled when a connection became ready while requests were waiting.
    returned: Notify,
    /// Signalled when a spare connect ended: a waiting request that counted
    /// on it (and started no connect of its own) looks again.
    spare_done: Notify,
}

/// Counts a request as waiting for a connection while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An HTTP/1 connect in progress, counted in [`Pool::connecting`] while it
/// lives.
struct Connecting(Arc<Pool>);

impl Connecting {
    fn new(pool: &Arc<Pool>) -> Self {
        pool.connecting.fetch_add(1, Ordering::AcqRel);
        Connecting(pool.clone())
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pooled HTTP client for one app.
pub struct Upstream {
    pool: Arc<Pool>,
    /// `host:port` (or `localhost` for unix sockets): the authority put on
    /// HTTP/2 request URIs.
    authority: http::uri::Authority,
    /// The settings this client was built from; a reload with equal
    /// settings reuses the client and its pool.
    pub settings: PoolSettings,
}

/// Everything a pool of connections to one upstream is built from. Two
/// configs that give equal settings share the pool across a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub address: AppAddress,
    pub protocol: AppProtocol,
    pub connect_timeout: Duration,
    /// Connections kept open beyond the ones in use.
    pub max_idle: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

/// Idle connections an egress destination's pool keeps.
const EGRESS_MAX_IDLE: usize = 64;
/// How long an idle egress connection is kept.
const EGRESS_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl PoolSettings {
    /// The pool to the local app (`app:`).
    pub fn app(app: &App) -> PoolSettings {
        PoolSettings {
            address: app.address.clone(),
            protocol: app.protocol,
            connect_timeout: app.connect_timeout,
            max_idle: app.max_idle_connections,
            idle_timeout: app.pool_idle_timeout,
        }
    }

    /// The pool to an egress destination's upstream (`host:port`, HTTP/1.1).
    pub fn egress(upstream: &str, connect_timeout: Duration) -> PoolSettings {
        PoolSettings {
            address: AppAddress::Tcp(upstream.to_string()),
            protocol: AppProtocol::Http1,
            connect_timeout,
            max_idle: EGRESS_MAX_IDLE,
            idle_timeout: EGRESS_IDLE_TIMEOUT,
        }
    }
}

/// Why a request did not get a response from the app.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed while sending or before a complete response head.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connecting to the app failed: {e}"),
            SendError::Request(e) => write!(f, "request to the app failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(e),
        }
    }
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

impl Upstream {
    pub fn new(settings: PoolSettings) -> Upstream {
        let (target, authority) = match &settings.address {
            AppAddress::Tcp(addr) => (Target::Tcp(addr.clone()), addr.as_str()),
            AppAddress::Unix(path) => (Target::Unix(path.clone()), "localhost"),
        };
        // Validation guarantees `host:port`; fall back to localhost rather than panic.
        let authority = authority
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"));
        let pool = Arc::new(Pool {
            connector: AppConnector {
                target,
                connect_timeout: settings.connect_timeout,
            },
            protocol: settings.protocol,
            max_idle: settings.max_idle,
            idle_timeout: settings.idle_timeout,
            http1: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            connecting: AtomicUsize::new(0),
            returned: Notify::new(),
            spare_done: Notify::new(),
        });
        if settings.protocol == AppProtocol::Http1 {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reap_idle(Arc::downgrade(&pool)));
            }
        }
        Upstream {
            pool,
            authority,
            settings,
        }
    }

    /// The request URI for `path_and_query` on the app.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        self.uri_from(path_and_query.parse::<http::uri::PathAndQuery>()?)
    }

    /// The request URI on the app for an already parsed path and query:
    /// origin-form for HTTP/1, absolute for HTTP/2 (which sends the authority
    /// as a pseudo-header).
    pub fn uri_from(&self, path_and_query: http::uri::PathAndQuery) -> Result<Uri, http::Error> {
        let mut uri = Uri::builder();
        if self.pool.protocol == AppProtocol::Http2 {
            uri = uri
                .scheme(http::uri::Scheme::HTTP)
                .authority(self.authority.clone());
        }
        uri.path_and_query(path_and_query).build()
    }

    /// Sends one request on a pooled connection, or a new one. A request that
    /// hyper hands back unsent (the pooled connection had just closed) is
    /// sent again on another connection.
    ///
    /// Not an `async fn`: a layer of its own would keep a second copy of the
    /// request in its state, and the send future is moved on every request.
    pub fn send(
        &self,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<hyper::body::Incoming>, SendError>> + Send + '_
    {
        match self.pool.protocol {
            AppProtocol::Http1 => Either::Left(self.pool.send_http1(req)),
            AppProtocol::Http2 => Either::Right(self.pool.send_http2(req)),
        }
    }
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.http1.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is ready for a request.
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_closed() {
                idle.remove(i);
            } else if idle[i].sender.is_ready() {
                // `remove`, not `swap_remove`: the order is the recency the
                // reaper reads (taken near the end, so little is moved).
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, mut sender: http1::SendRequest<Body>) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            // A request is waiting for a connection: hand this one over as
            // soon as its response is done. Only under a connection shortage
            // does this cost a task.
            let pool = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.push(sender);
                    pool.returned.notify_one();
                }
            });
            return;
        }
        self.push(sender);
    }

    /// A new connection, or a pooled one that became ready first (the app
    /// may be slow to accept, e.g. a full accept queue during a burst). A
    /// connect that loses the race goes on in the background as a spare
    /// and joins the pool.
    ///
    /// A request connects only when the connects in progress (its own
    /// included) are fewer than the requests waiting: a spare connect left
    /// by a request that was served first covers the next one that waits,
    /// so a burst opens about as many connections as requests had to wait
    /// at once, not one per request that found none ready. A request without
    /// a connect of its own looks again when a spare ends, and connects if
    /// that one failed.
    async fn connect_or_wait(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<Body>, bool), SendError> {
        let _waiting = Waiting::new(&self.waiting);
        let mut connect = None;
        loop {
            // Registered before looking, so that a connection handed back
            // (or a spare connect ending) in between is not missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(sender) = self.checkout() {
                if let Some(connect) = connect {
                    self.spare(connect);
                }
                return Ok((sender, false));
            }
            match connect.as_mut() {
                None => {
                    let spare_done = self.spare_done.notified();
                    tokio::pin!(spare_done);
                    spare_done.as_mut().enable();
                    if self.connecting.load(Ordering::Acquire)
                        < self.waiting.load(Ordering::Acquire)
                    {
                        connect = Some((
                            Connecting::new(self),
                            Box::pin(self.clone().connect_http1()),
                        ));
                        continue;
                    }
                    tokio::select! {
                        _ = returned => {}
                        _ = spare_done => {}
                    }
                }
                Some((_, connecting)) => tokio::select! {
                    connected = connecting => return connected.map(|s| (s, true)),
                    _ = returned => {}
                },
            }
        }
    }

    /// Lets a connect whose request was served by another connection finish
    /// in the background; its connection joins the pool. It counts as in
    /// progress until then, so that the requests it serves do not connect.
    fn spare(
        self: &Arc<Self>,
        (counted, connect): (
            Connecting,
            Pin<
                Box<
                    impl Future<Output = Result<http1::SendRequest<Body>, SendError>> + Send + 'static,
                >,
            >,
        ),
    ) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(mut sender) = connect.await {
                if sender.ready().await.is_ok() {
                    pool.push(sender);
                    pool.returned.notify_one();
                }
            }
            drop(counted);
            pool.spare_done.notify_one();
        });
    }

    fn push(&self, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push(Pooled {
                sender,
                last_used: Instant::now(),
            });
        }
        // Beyond `max_idle` the sender is dropped: hyper finishes the
        // response in flight, then closes the connection.
    }

    #[allow(clippy::manual_async_fn)] // by-value request: see inbound::run
    fn send_http1(
        self: &Arc<Self>,
        mut req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<hyper::body::Incoming>, SendError>> + Send + '_
    {
        async move {
            loop {
                let (mut sender, fresh) = match self.checkout() {
                    Some(sender) => (sender, false),
                    None => self.connect_or_wait().await?,
                };
                match sender.try_send_request(req).await {
                    Ok(rsp) => {
                        self.checkin(sender);
                        return Ok(rsp);
                    }
                    Err(mut e) => match e.take_message() {
                        // Never written: safe to send on another connection. A
                        // fresh connection that cannot take it is a real failure.
                        Some(unsent) if !fresh => req = unsent,
                        _ => return Err(SendError::Request(e.into_error())),
                    },
                }
            }
        }
    }

    async fn connect_http1(self: Arc<Self>) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connector.connect().await.map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended with an error");
            }
        });
        metrics::counter!("meshgate_upstream_connections_opened_total").increment(1);
        Ok(sender)
    }

    #[allow(clippy::manual_async_fn)] // by-value request: see inbound::run
    fn send_http2(
        &self,
        req: http::Request<Body>,
    ) -> impl Future<Output = Result<http::Response<hyper::body::Incoming>, SendError>> + Send + '_
    {
        async move {
            let shared = self
                .http2
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .filter(|s| !s.is_closed())
                .cloned();
            let mut sender = match shared {
                Some(sender) => sender,
                // Boxed: the handshake's state would otherwise make every
                // request's future larger (it is moved on each request).
                None => Box::pin(self.connect_http2()).await?,
            };
            sender.ready().await.map_err(SendError::Request)?;
            sender.send_request(req).await.map_err(SendError::Request)
        }
    }

    async fn connect_http2(&self) -> Result<http2::SendRequest<Body>, SendError> {
        let io = self.connector.connect().await.map_err(SendError::Connect)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "app connection ended with an error");
            }
        });
        metrics::counter!("meshgate_upstream_connections_opened_total").increment(1);
        // Concurrent first requests may each connect; the last one is shared
        // from then on and the others close when their requests are done.
        *self.http2.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Closes idle connections: those idle for longer than the idle timeout,
    /// and half (rounded down) of those not used since `since`, the
    /// previous look, least recently used first. A burst's surplus thus
    /// halves every [`REAP_INTERVAL`] down to one connection, while a steady
    /// load keeps its connections, being served by the most recently used
    /// ones (HAProxy's `pool-purge-delay` works the same way).
    fn reap(&self, since: Instant) {
        let timeout = self.idle_timeout;
        let mut idle = self.idle();
        idle.retain(|p| {
            let idle_too_long = p.sender.is_ready() && p.last_used.elapsed() >= timeout;
            !p.sender.is_closed() && !idle_too_long
        });
        let unused = |p: &Pooled| p.sender.is_ready() && p.last_used < since;
        let mut close = idle.iter().filter(|p| unused(p)).count() / 2;
        idle.retain(|p| {
            if close > 0 && unused(p) {
                close -= 1;
                return false;
            }
            true
        });
    }
}

/// Closes idle app connections (see [`Pool::reap`]) until the pool is gone.
async fn reap_idle(pool: std::sync::Weak<Pool>) {
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(REAP_INTERVAL).await;
        let now = Instant::now();
        match pool.upgrade() {
            Some(pool) => pool.reap(since),
            None => return,
        }
        since = now;
    }
}

/// How forwarding failed, for choosing the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardFailure {
    /// Connect timed out: 504.
    ConnectTimeout,
    /// Refused, unreachable, reset before a response: 502.
    Unreachable,
    /// The app answered with something that is not HTTP, or broke mid-response: 502.
    Protocol,
}

/// Classifies a client error by walking its causes.
pub fn classify(err: &SendError) -> ForwardFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return if io.kind() == io::ErrorKind::TimedOut {
                ForwardFailure::ConnectTimeout
            } else {
                ForwardFailure::Unreachable
            };
        }
        source = e.source();
    }
    if err.is_connect() {
        ForwardFailure::Unreachable
    } else {
        ForwardFailure::Protocol
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::future::Future;
    use tokio::sync::{watch, Semaphore};

    /// An app on loopback that counts the connections it accepted. `/hold`
    /// is answered once a permit is added to `release`; anything else at
    /// once. Accepting can be paused, and its accept queue holds one
    /// connection, so that connects hang while it is paused and full.
    struct App {
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        holding: Arc<AtomicUsize>,
        release: Arc<Semaphore>,
        accepting: watch::Sender<bool>,
    }

    impl App {
        fn start() -> App {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            socket
                .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
                .expect("bind");
            socket.listen(0).expect("listen");
            socket.set_nonblocking(true).expect("nonblocking");
            let listener =
                tokio::net::TcpListener::from_std(socket.into()).expect("tokio listener");
            let app = App {
                addr: listener.local_addr().expect("addr"),
                accepted: Arc::new(AtomicUsize::new(0)),
                holding: Arc::new(AtomicUsize::new(0)),
                release: Arc::new(Semaphore::new(0)),
                accepting: watch::channel(true).0,
            };
            let (accepted, holding, release) = (
                app.accepted.clone(),
                app.holding.clone(),
                app.release.clone(),
            );
            let mut accepting = app.accepting.subscribe();
            tokio::spawn(async move {
                loop {
                    if accepting.wait_for(|on| *on).await.is_err() {
                        return;
                    }
                    let stream = tokio::select! {
                        accepted = listener.accept() => accepted.expect("accept").0,
                        _ = accepting.wait_for(|on| !*on) => continue,
                    };
                    accepted.fetch_add(1, Ordering::AcqRel);
                    let (holding, release) = (holding.clone(), release.clone());
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let (holding, release) = (holding.clone(), release.clone());
                        async move {
                            if req.uri().path() == "/hold" {
                                holding.fetch_add(1, Ordering::AcqRel);
                                release.acquire().await.expect("semaphore").forget();
                                holding.fetch_sub(1, Ordering::AcqRel);
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
            app
        }

        fn settings(&self, max_idle: usize) -> PoolSettings {
            PoolSettings {
                address: AppAddress::Tcp(self.addr.to_string()),
                protocol: AppProtocol::Http1,
                connect_timeout: Duration::from_secs(20),
                max_idle,
                idle_timeout: Duration::from_secs(90),
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::Acquire)
        }
    }

    /// Sends a GET for `path` and reads the whole answer; its status.
    fn get(upstream: &Arc<Upstream>, path: &str) -> impl Future<Output = u16> + Send + 'static {
        let (upstream, path) = (upstream.clone(), path.to_string());
        async move {
            let req = http::Request::builder()
                .uri(path)
                .header("host", "app")
                .body(Body::Empty)
                .expect("request");
            let rsp = upstream.send(req).await.expect("response");
            let status = rsp.status().as_u16();
            rsp.into_body().collect().await.expect("body");
            status
        }
    }

    /// Waits (up to 20 s, for a loaded machine) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The pool's connections, and how many of them are ready.
    fn pooled(upstream: &Upstream) -> (usize, usize) {
        let idle = upstream.pool.idle();
        (
            idle.len(),
            idle.iter().filter(|p| p.sender.is_ready()).count(),
        )
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Built outside a runtime, a pool has no reaper task: the tests call
    /// `reap` themselves, at the moments they choose.
    fn upstream_without_reaper(settings: PoolSettings) -> Arc<Upstream> {
        assert!(tokio::runtime::Handle::try_current().is_err());
        Arc::new(Upstream::new(settings))
    }

    #[test]
    fn a_bursts_surplus_is_halved_per_look_and_a_steady_loads_connection_kept() {
        let rt = runtime();
        let app = rt.block_on(async { App::start() });
        let upstream = upstream_without_reaper(app.settings(16));
        rt.block_on(async {
            // A burst: 8 requests at once, 8 connections.
            let burst: Vec<_> = (0..8)
                .map(|_| tokio::spawn(get(&upstream, "/hold")))
                .collect();
            until("8 requests are held", || {
                app.holding.load(Ordering::Acquire) == 8
            })
            .await;
            app.release.add_permits(8);
            for request in burst {
                assert_eq!(request.await.expect("task"), 200);
            }
            until("8 connections are ready", || pooled(&upstream) == (8, 8)).await;
            assert_eq!(app.accepted(), 8);

            // Unused since the look before: half of them go.
            upstream.pool.reap(Instant::now());
            assert_eq!(pooled(&upstream).0, 4);

            // A steady load, one request at a time, reuses one connection.
            let since = Instant::now();
            for _ in 0..5 {
                assert_eq!(get(&upstream, "/").await, 200);
            }
            until("4 connections are ready", || pooled(&upstream) == (4, 4)).await;
            assert_eq!(app.accepted(), 8, "a request opened a connection");
            // 3 unused: 1 goes; the one in use stays.
            upstream.pool.reap(since);
            assert_eq!(pooled(&upstream).0, 3);
            upstream.pool.reap(Instant::now());
            assert_eq!(pooled(&upstream).0, 2);
            // The last unused one is left to the idle timeout.
            upstream.pool.reap(Instant::now());
            assert_eq!(pooled(&upstream).0, 1);
            upstream.pool.reap(Instant::now());
            assert_eq!(pooled(&upstream).0, 1);
            assert_eq!(get(&upstream, "/").await, 200);
            assert_eq!(app.accepted(), 8, "the kept connection was not reused");
        });
    }

    #[test]
    fn connections_idle_past_the_idle_timeout_are_closed() {
        let rt = runtime();
        let app = rt.block_on(async { App::start() });
        let mut settings = app.settings(16);
        settings.idle_timeout = Duration::from_millis(100);
        let upstream = upstream_without_reaper(settings);
        rt.block_on(async {
            assert_eq!(get(&upstream, "/").await, 200);
            until("the connection is ready", || pooled(&upstream) == (1, 1)).await;
            // Used after `since`, so not surplus; but idle too long.
            let since = Instant::now() - Duration::from_secs(60);
            tokio::time::sleep(Duration::from_millis(150)).await;
            upstream.pool.reap(since);
            assert_eq!(pooled(&upstream).0, 0);
        });
    }

    #[test]
    fn a_spare_connect_covers_the_next_waiting_request_instead_of_a_new_connect() {
        let rt = runtime();
        let app = rt.block_on(async { App::start() });
        let upstream = upstream_without_reaper(app.settings(16));
        let pool = upstream.pool.clone();
        let count = |n: &AtomicUsize| n.load(Ordering::Acquire);
        rt.block_on(async {
            // One pooled connection, then the app stops accepting and its
            // accept queue fills: connects hang until it accepts again.
            assert_eq!(get(&upstream, "/").await, 200);
            app.accepting.send_replace(false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _queued = std::net::TcpStream::connect(app.addr).expect("fill the queue");
            let first = tokio::spawn(get(&upstream, "/hold"));
            until("the pooled connection is busy", || count(&app.holding) == 1).await;

            // Two requests wait, and each connects: both are needed.
            let second = tokio::spawn(get(&upstream, "/hold"));
            let third = tokio::spawn(get(&upstream, "/hold"));
            until("two requests wait, two connects", || {
                (count(&pool.waiting), count(&pool.connecting)) == (2, 2)
            })
            .await;

            // The first answer frees the pooled connection: one waiting
            // request takes it, and its connect goes on as a spare.
            app.release.add_permits(1);
            assert_eq!(first.await.expect("task"), 200);
            until("one request still waits", || count(&pool.waiting) == 1).await;
            until("the next one is held", || count(&app.holding) == 1).await;

            // Another request waits: the spare covers it, no third connect.
            let fourth = tokio::spawn(get(&upstream, "/hold"));
            until("two requests wait", || count(&pool.waiting) == 2).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                count(&pool.connecting),
                2,
                "a connect beyond the waiting requests"
            );

            // Accepting again: every request is served, and the two connects
            // join the pool (the kernel retries their handshakes).
            app.accepting.send_replace(true);
            app.release.add_permits(3);
            for request in [second, third, fourth] {
                assert_eq!(request.await.expect("task"), 200);
            }
            until("3 pooled connections", || pooled(&upstream) == (3, 3)).await;
            assert_eq!(count(&pool.connecting), 0);
        });
    }

    #[test]
    fn a_request_counting_on_a_spare_that_fails_connects_itself_and_gets_its_error() {
        let rt = runtime();
        let app = rt.block_on(async { App::start() });
        let mut settings = app.settings(16);
        settings.connect_timeout = Duration::from_secs(1);
        let upstream = upstream_without_reaper(settings);
        let pool = upstream.pool.clone();
        let count = |n: &AtomicUsize| n.load(Ordering::Acquire);
        rt.block_on(async {
            assert_eq!(get(&upstream, "/").await, 200);
            app.accepting.send_replace(false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _queued = std::net::TcpStream::connect(app.addr).expect("fill the queue");
            let first = tokio::spawn(get(&upstream, "/hold"));
            until("the pooled connection is busy", || count(&app.holding) == 1).await;
            let second = tokio::spawn(get(&upstream, "/hold"));
            until("a request waits and connects", || {
                (count(&pool.waiting), count(&pool.connecting)) == (1, 1)
            })
            .await;
            // The second request takes the freed connection; its connect,
            // spare now, hangs on the full accept queue.
            app.release.add_permits(1);
            assert_eq!(first.await.expect("task"), 200);
            until("the second request is held", || count(&app.holding) == 1).await;

            let third = tokio::spawn({
                let upstream = upstream.clone();
                async move {
                    let req = http::Request::builder()
                        .uri("/")
                        .header("host", "app")
                        .body(Body::Empty)
                        .expect("request");
                    upstream
                        .send(req)
                        .await
                        .map(|_| ())
                        .map_err(|e| classify(&e))
                }
            });
            until("a request waits", || count(&pool.waiting) == 1).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(count(&pool.connecting), 1, "connected beside the spare");
            // The spare times out; the waiting request connects, times out
            // too, and gets that answer rather than waiting on.
            let result = tokio::time::timeout(Duration::from_secs(20), third)
                .await
                .expect("the request hung")
                .expect("task");
            assert_eq!(result, Err(ForwardFailure::ConnectTimeout));
            app.release.add_permits(1);
            assert_eq!(second.await.expect("task"), 200);
        });
    }
}
