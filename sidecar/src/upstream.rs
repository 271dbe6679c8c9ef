//! The pooled client that forwards requests to the local app.
//!
//! One [`Upstream`] per app address and protocol; it is reused across config
//! reloads that keep the `app:` section, so pooled connections survive.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshgate_filters::Body;
use meshgate_xds::config::{App, AppAddress, AppProtocol};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

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

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<AppStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let target = self.target.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let connect = async {
                match &target {
                    Target::Tcp(addr) => {
                        let stream = TcpStream::connect(addr.as_str()).await?;
                        stream.set_nodelay(true)?;
                        Ok(AppStream::Tcp(stream))
                    }
                    Target::Unix(path) => Ok(AppStream::Unix(UnixStream::connect(path).await?)),
                }
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect to app timed out",
                )),
            }
        })
    }
}

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
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

/// The pooled HTTP client for one app.
pub struct Upstream {
    client: Client<AppConnector, Body>,
    /// `host:port` (or `localhost` for unix sockets): the authority put on
    /// every forwarded request URI.
    authority: http::uri::Authority,
    /// The app settings this client was built from; a reload with the same
    /// settings reuses the client and its pool.
    pub settings: (AppAddress, AppProtocol, Duration, usize, Duration),
}

impl Upstream {
    pub fn new(app: &App) -> Upstream {
        let (target, authority) = match &app.address {
            AppAddress::Tcp(addr) => (Target::Tcp(addr.clone()), addr.as_str()),
            AppAddress::Unix(path) => (Target::Unix(path.clone()), "localhost"),
        };
        // Validation guarantees `host:port`; fall back to localhost rather than panic.
        let authority = authority
            .parse()
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"));
        let connector = AppConnector {
            target,
            connect_timeout: app.connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(app.pool_idle_timeout)
            .pool_max_idle_per_host(app.max_idle_connections)
            .http1_preserve_header_case(false)
            .set_host(false);
        if app.protocol == AppProtocol::Http2 {
            builder
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
        }
        Upstream {
            client: builder.build(connector),
            authority,
            settings: Self::settings_of(app),
        }
    }

    pub fn settings_of(app: &App) -> (AppAddress, AppProtocol, Duration, usize, Duration) {
        (
            app.address.clone(),
            app.protocol,
            app.connect_timeout,
            app.max_idle_connections,
            app.pool_idle_timeout,
        )
    }

    /// The absolute URI for `path_and_query` on the app.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        self.uri_from(path_and_query.parse::<http::uri::PathAndQuery>()?)
    }

    /// The absolute URI on the app for an already parsed path and query
    /// (cheap: no re-parsing on the hot path).
    pub fn uri_from(&self, path_and_query: http::uri::PathAndQuery) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(http::uri::Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub async fn send(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
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
pub fn classify(err: &hyper_util::client::legacy::Error) -> ForwardFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
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
