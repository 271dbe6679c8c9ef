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

/// How long an HTTP/1 connection may sit idle in the pool, checked by a
/// reaper at a quarter of the timeout (but not more often than this).
const MIN_REAP_INTERVAL: Duration = Duration::from_secs(1);

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
    /// HTTP/1 connections, busy or idle. A connection goes back in as soon as
    /// its response head arrived; it is taken again only once hyper reports
    /// it ready, i.e. after that response's body was read to the end. Nothing
    /// is spawned per request to hand it back, except while requests wait
    /// for a connection (see [`Pool::connect_or_wait`]).
    http1: Mutex<Vec<Pooled>>,
    /// The one multiplexed HTTP/2 connection, when the app speaks HTTP/2.
    http2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Requests waiting for an HTTP/1 connection (none ready in the pool).
    waiting: AtomicUsize,
    /// Signalled when a connection became ready while requests were waiting.
    returned: Notify,
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
            returned: Notify::new(),
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
                idle.swap_remove(i);
            } else if idle[i].sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
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
    /// connect that loses the race finishes in the background and joins the
    /// pool.
    async fn connect_or_wait(
        self: &Arc<Self>,
    ) -> Result<(http1::SendRequest<Body>, bool), SendError> {
        let _waiting = Waiting::new(&self.waiting);
        let mut connect = Box::pin(self.clone().connect_http1());
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(sender) = self.checkout() {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Ok(sender) = connect.await {
                        pool.checkin(sender);
                    }
                });
                return Ok((sender, false));
            }
            tokio::select! {
                connected = &mut connect => return connected.map(|s| (s, true)),
                _ = returned => {}
            }
        }
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

    /// Drops connections idle for longer than the idle timeout.
    fn reap(&self) {
        let timeout = self.idle_timeout;
        self.idle().retain(|p| {
            let idle_too_long = p.sender.is_ready() && p.last_used.elapsed() >= timeout;
            !p.sender.is_closed() && !idle_too_long
        });
    }
}

/// Closes idle app connections past the idle timeout until the pool is gone.
async fn reap_idle(pool: std::sync::Weak<Pool>) {
    loop {
        let interval = match pool.upgrade() {
            Some(pool) => (pool.idle_timeout / 4).max(MIN_REAP_INTERVAL),
            None => return,
        };
        tokio::time::sleep(interval).await;
        match pool.upgrade() {
            Some(pool) => pool.reap(),
            None => return,
        }
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
