//! The per-request context of the data path, and the response body that
//! ends it with the access log line.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use meshgate_filters::{Body, BodyError, BodyProgress, RequestCtx};

use super::ConnInfo;
use crate::headers::{self, RequestId, X_REQUEST_ID};
use crate::route_metrics::RouteMetrics;
use crate::server::InFlight;

/// One request and its answer, from accept to the access log line. Every
/// phase reads and writes it; the response body owns it at the end, so the
/// filters' guards (concurrency permits) and the connection's in-flight mark
/// are released with the log line, when the response is done.
pub struct Exchange {
    /// The client's id when it is sane, else a new one; sent both ways.
    pub request_id: RequestId,
    /// The matched route's metrics (`-` until routed).
    pub route: Arc<RouteMetrics>,
    pub method: Method,
    /// The canonical target once admitted (the raw one if refused before).
    pub uri: Uri,
    /// What the filters read and write; its `client_ip` is the peer until
    /// admission decides the client address.
    pub filters: RequestCtx,
    /// Time from sending to the upstream until its response head; read
    /// only while the access log, its one reader, is on.
    pub upstream_time: Option<Duration>,
    /// The request body's `Content-Length`, if announced.
    content_length: u64,
    /// Progress of a streamed request body (set by its idle guard).
    pub body_progress: Option<Arc<BodyProgress>>,
    status: u16,
    _in_flight: InFlight,
}

impl Exchange {
    /// The context of a request that just arrived. Boxed: it travels from
    /// the request future into the response body, and a pointer is cheaper
    /// to move there than the context itself.
    pub(crate) fn accept<B>(
        req: &Request<B>,
        conn: &ConnInfo,
        unrouted: &Arc<RouteMetrics>,
        in_flight: InFlight,
    ) -> Box<Exchange> {
        Box::new(Exchange {
            request_id: headers::request_id(req.headers()),
            route: unrouted.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            filters: RequestCtx::new(unrouted.route().clone(), conn.peer.ip(), conn.tls),
            upstream_time: None,
            content_length: req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0),
            body_progress: None,
            status: 0,
            _in_flight: in_flight,
        })
    }

    /// Records the admitted request: its canonical target and client.
    pub fn admitted(&mut self, uri: &Uri, client: IpAddr) {
        // The log reads the path; most requests keep theirs.
        if self.uri.path() != uri.path() {
            self.uri = uri.clone();
        }
        self.filters.client_ip = client;
    }

    /// Records the matched route (or egress destination).
    pub fn routed(&mut self, metrics: &Arc<RouteMetrics>) {
        self.route = metrics.clone();
        self.filters.route = metrics.route().clone();
    }

    /// The answer to the client: gets the request id, and a body that
    /// writes the access log line when it is done.
    pub fn respond(mut self: Box<Self>, mut rsp: Response<Body>) -> Response<LoggedBody> {
        rsp.headers_mut()
            .insert(X_REQUEST_ID.clone(), self.request_id.header_value());
        self.status = rsp.status().as_u16();
        rsp.map(|inner| LoggedBody {
            inner,
            bytes_out: 0,
            exchange: Some(self),
        })
    }

    /// The last phase: request metrics and the access log line. Dropping
    /// the exchange then releases the filters' guards and the in-flight mark.
    fn log(mut self: Box<Self>, bytes_out: u64) {
        // One reading of the clock ends the request: its duration, and the
        // time the connection's idle period starts if it was the last one.
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(self.filters.instant);
        self._in_flight.ended_at(ended);
        self.route.record(self.status, elapsed.as_secs_f64());
        // A body of announced length is counted from Content-Length; a
        // streamed one by its idle guard as it went.
        let bytes_in = match (&self.body_progress, self.content_length) {
            (Some(progress), 0) => progress.bytes(),
            (_, announced) => announced,
        };
        crate::access_log::record(&crate::access_log::Entry {
            request_id: self.request_id.as_str(),
            route: self.route.route(),
            method: self.method.as_str(),
            path: self.uri.path(),
            client: self.filters.client_ip,
            status: self.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: self.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in,
            bytes_out,
            verdicts: &self.filters.verdicts,
        });
    }
}

/// The response body, which ends the exchange when it is done (or dropped
/// because the client went away).
pub struct LoggedBody {
    inner: Body,
    bytes_out: u64,
    exchange: Option<Box<Exchange>>,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(exchange) = this.exchange.take() {
                    exchange.log(this.bytes_out);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(exchange) = self.exchange.take() {
            exchange.log(self.bytes_out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Activity;
    use http_body_util::BodyExt;

    struct Guard(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_exchange_ends_when_the_response_body_is_done() {
        let activity = Activity::new();
        let conn = ConnInfo::new("127.0.0.1:4000".parse().expect("addr"), false);
        let req = Request::builder()
            .uri("/a")
            .header("x-request-id", "abc")
            .body(())
            .expect("request");
        let unrouted = RouteMetrics::new(Arc::from("-"));
        let mut exchange = Exchange::accept(&req, &conn, &unrouted, activity.begin(req.version()));
        assert_eq!(exchange.request_id.as_str(), "abc");
        assert_eq!(exchange.filters.route.as_ref(), "-");
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        exchange.filters.hold(Guard(released.clone()));
        let rsp = exchange.respond(Response::new(Body::full("hello")));
        assert_eq!(rsp.headers()["x-request-id"], "abc");
        assert!(activity.has_requests_in_flight());
        let body = rsp.into_body();
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(collected, "hello");
        assert!(released.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!activity.has_requests_in_flight());
    }
}
