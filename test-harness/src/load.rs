//! Load that must lose nothing: keep-alive HTTP/1.1 and HTTP/2 clients that
//! send one request after another until stopped, for tests of reloads,
//! upgrades and restarts under traffic.
//!
//! A response with `Connection: close`, an HTTP/2 GOAWAY or REFUSED_STREAM,
//! or a connection that closed before the request left the client ("closed
//! before send") makes a client reconnect and is counted, not failed: the
//! server did not take the request. A refused or reset connection, a
//! request that fails, or any status but 200 is a failure.
//!
//! ```no_run
//! use std::time::Duration;
//! use meshgate_test_harness::Load;
//! let port = 15006;
//! let mut load = Load::new(2);
//! load.keep_alive_client(port, false, 0, |id, i| format!("/echo/{id}/{i}"));
//! load.keep_alive_client(port, true, 1, |id, i| format!("/echo/{id}/{i}"));
//! load.wait_progress(200, Duration::from_secs(10));
//! // ... reload, upgrade, restart ...
//! let stats = load.finish();
//! assert!(stats.failures().is_empty(), "{:#?}", stats.failures());
//! ```
//!
//! Other clients (slow requests, uploads) run on the same runtime with
//! [`Load::spawn`], using [`Conn`] and [`request_builder`], and record their
//! failures with [`LoadStats::fail`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

use crate::wait_until;

/// The request body type of [`Conn`].
pub type Body = BoxBody<Bytes, Infallible>;

/// What the clients saw. Counters are cumulative; at most 50 failures are kept.
#[derive(Default)]
pub struct LoadStats {
    /// Requests answered 200 with a complete body.
    pub ok: AtomicU64,
    /// Reconnects after `Connection: close`.
    pub reconnects: AtomicU64,
    /// HTTP/2 requests the server refused with GOAWAY or REFUSED_STREAM.
    pub goaways: AtomicU64,
    /// Connections that closed before a request was sent on them.
    pub closed_before_send: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl LoadStats {
    /// Records a failure (the first 50 are kept).
    pub fn fail(&self, what: String) {
        let mut f = self.failures.lock().expect("lock");
        if f.len() < 50 {
            f.push(what);
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("lock").clone()
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// One line with the counters, for the test's output.
    pub fn summary(&self) -> String {
        format!(
            "ok {} reconnects {} goaways {} closed before send {}",
            self.ok(),
            self.reconnects.load(Ordering::Relaxed),
            self.goaways.load(Ordering::Relaxed),
            self.closed_before_send.load(Ordering::Relaxed)
        )
    }
}

/// Clients on their own runtime, sending until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    tasks: Vec<JoinHandle<()>>,
    runtime: tokio::runtime::Runtime,
}

impl Load {
    /// A runtime with `worker_threads` threads and no clients yet.
    pub fn new(worker_threads: usize) -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
            .expect("runtime");
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(LoadStats::default()),
            tasks: Vec::new(),
            runtime,
        }
    }

    /// Adds a keep-alive client to 127.0.0.1:`port` (HTTP/2 with prior
    /// knowledge when `h2`): GETs of `path(id, i)` for i = 1, 2, ... on one
    /// connection, reconnecting as the module docs say.
    pub fn keep_alive_client(
        &mut self,
        port: u16,
        h2: bool,
        id: u32,
        path: fn(u32, u64) -> String,
    ) {
        let task = keep_alive_client(port, h2, id, path, self.stop.clone(), self.stats.clone());
        self.tasks.push(self.runtime.spawn(task));
    }

    /// Runs another client on the load's runtime: `client(stop, stats)`
    /// should run until `stop` is set and record failures in `stats`.
    pub fn spawn<F, Fut>(&mut self, client: F)
    where
        F: FnOnce(Arc<AtomicBool>, Arc<LoadStats>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = client(self.stop.clone(), self.stats.clone());
        self.tasks.push(self.runtime.spawn(task));
    }

    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.stats.ok()
    }

    /// Waits until at least `n` more requests succeeded, failing the test
    /// (with the failures so far) when that takes longer than `within`.
    pub fn wait_progress(&self, n: u64, within: Duration) {
        let target = self.ok() + n;
        assert!(
            wait_until(within, || self.ok() >= target),
            "load made no progress; failures: {:?}",
            self.stats.failures()
        );
    }

    /// Stops the clients, waits (at most 30 s each) for what is in flight,
    /// and returns the stats.
    pub fn finish(self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = self.tasks;
        self.runtime.block_on(async {
            for t in tasks {
                tokio::time::timeout(Duration::from_secs(30), t)
                    .await
                    .expect("client finished in time")
                    .expect("client task");
            }
        });
        self.stats
    }
}

/// A request to 127.0.0.1:`port`: absolute URI and HTTP/2 when `h2`, else
/// origin form with a `Host`.
pub fn request_builder(
    method: http::Method,
    port: u16,
    path: &str,
    h2: bool,
) -> http::request::Builder {
    if h2 {
        Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"))
            .version(http::Version::HTTP_2)
    } else {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "127.0.0.1")
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One client connection (hyper, HTTP/1.1 or h2c) and its driver task,
/// whose error is a failure.
pub struct Conn {
    sender: Sender,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

impl Conn {
    /// Connects (within 5 s) and hands shakes; the error says which step failed.
    pub async fn open(port: u16, h2: bool) -> Result<Conn, String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let io = TokioIo::new(stream);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            Ok(Conn {
                sender: Sender::H2(sender),
                driver: tokio::spawn(conn),
            })
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            Ok(Conn {
                sender: Sender::H1(sender),
                driver: tokio::spawn(conn),
            })
        }
    }

    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Closes our side and reports how the connection ended.
    pub async fn close(self) -> Result<(), String> {
        drop(self.sender);
        match tokio::time::timeout(Duration::from_secs(20), self.driver).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("connection error: {e:?}")),
            Ok(Err(e)) => Err(format!("driver task: {e}")),
            Err(_) => Err("connection did not close".into()),
        }
    }

    /// Waits until the connection can take a request: an error means it
    /// closed before the request left the client (after `Connection: close`,
    /// an idle close or a GOAWAY), so the request may go out elsewhere.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match &mut self.sender {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    pub async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        self.ready().await?;
        match &mut self.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// True when the server made clear that it did not process the request:
/// a GOAWAY or REFUSED_STREAM on HTTP/2, or a request never sent (canceled,
/// or the connection found closed when the request was about to go out).
pub fn not_processed(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

async fn keep_alive_client(
    port: u16,
    h2: bool,
    id: u32,
    path: fn(u32, u64) -> String,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
) {
    let proto = if h2 { "h2" } else { "h1" };
    let mut conn: Option<Conn> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if conn.as_ref().is_some_and(Conn::is_closed) {
            if let Err(e) = conn.take().expect("conn").close().await {
                stats.fail(format!("{proto} client {id}: {e}"));
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(port, h2).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    stats.fail(format!("{proto} client {id}: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        if c.ready().await.is_err() {
            // Closed by the server before this request was sent: not a lost
            // request; open a new connection (to whichever process accepts).
            stats.closed_before_send.fetch_add(1, Ordering::Relaxed);
            let _ = conn.take().expect("conn").close().await;
            continue;
        }
        i += 1;
        let req = request_builder(http::Method::GET, port, &path(id, i), h2)
            .body(Full::new(Bytes::new()).boxed())
            .expect("request");
        match c.send(req).await {
            Ok(rsp) => {
                let status = rsp.status();
                let close = rsp
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                match rsp.into_body().collect().await {
                    Ok(_) if status == 200 => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(body) => stats.fail(format!(
                        "{proto} client {id}: status {status}: {:?}",
                        body.to_bytes()
                    )),
                    Err(e) => stats.fail(format!("{proto} client {id}: body: {e:?}")),
                }
                if close {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = conn.take().expect("conn").close().await {
                        stats.fail(format!("{proto} client {id} after close: {e}"));
                    }
                }
            }
            Err(e) if (h2 && not_processed(&e)) || e.is_closed() => {
                // GOAWAY, or the connection closed between the readiness
                // check and the send: the request was not processed; send it
                // again elsewhere.
                stats.goaways.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = conn.take() {
                    let _ = c.close().await;
                }
            }
            Err(e) => {
                stats.fail(format!("{proto} client {id} request {i}: {e:?}"));
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        if let Err(e) = c.close().await {
            stats.fail(format!("{proto} client {id} at the end: {e}"));
        }
    }
}
