//! One request through the sidecar: limits, route, filter chain, forward to
//! the app, response phase, access log.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshgate_filters::{
    Body, BodyError, BodyProgress, Rejection, RequestCtx, RequestView, ResponseView,
};
use meshgate_xds::config::AppProtocol;

use crate::config_store::ConfigStore;
use crate::headers::{self, RequestId, X_REQUEST_ID};
use crate::health::AppHealth;
use crate::reply;
use crate::route_metrics::RouteMetrics;
use crate::snapshot::{RouteTarget, Snapshot};
use crate::upstream::{classify, ForwardFailure};

/// What every request handler shares.
pub struct Shared {
    pub store: Arc<ConfigStore>,
    pub health: Arc<AppHealth>,
    /// Upgraded connections (WebSocket tunnels) count as connections for the drain.
    pub drain: crate::drain::Drain,
}

/// The client side of one connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer address as an `x-forwarded-for` value, formatted once.
    pub(crate) client_value: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            client_value: headers::client_value(peer.ip()),
        }
    }
}

/// Handles one inbound request. Never fails: every problem becomes a JSON answer.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<LoggedBody> {
    let snapshot = shared.store.load();
    let request_id = headers::request_id(req.headers());
    let mut log = AccessLog {
        started: Instant::now(),
        request_id,
        route: snapshot.unrouted_metrics.clone(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        client: conn.peer.ip(),
        status: 0,
        upstream: None,
        bytes_in: 0,
        streamed_in: None,
        verdicts: Vec::new(),
        guards: Vec::new(),
    };
    let mut rsp = match forward(&shared, &snapshot, &conn, req, &mut log).await {
        Ok(rsp) => rsp,
        Err(rej) => reply::rejection(rej, &snapshot.error_codes, log.request_id.as_str()),
    };
    rsp.headers_mut()
        .insert(X_REQUEST_ID.clone(), log.request_id.header_value());
    log.status = rsp.status().as_u16();
    rsp.map(|body| LoggedBody {
        inner: body,
        bytes_out: 0,
        held: None,
        log: Some(log),
    })
}

async fn forward(
    shared: &Shared,
    snapshot: &Snapshot,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    log: &mut AccessLog,
) -> Result<Response<Body>, Rejection> {
    let inbound = &snapshot.config.inbound;
    if headers::head_size(req.method(), req.uri(), req.headers()) > inbound.max_header_bytes {
        return Err(Rejection::new(
            "header_too_large",
            format!("request head exceeds {} bytes", inbound.max_header_bytes),
        ));
    }
    let admitted = crate::admission::admit(&mut req, inbound, conn)?;
    log.uri = req.uri().clone();
    log.client = admitted.client_ip;
    let Some(route) = snapshot.route(req.method(), req.uri().path(), Some(admitted.host.as_str()))
    else {
        return Err(Rejection::new(
            "route_not_found",
            format!("no route for {} {}", req.method(), req.uri().path()),
        ));
    };
    log.route = route.metrics.clone();
    let chain = match &route.target {
        RouteTarget::Respond(responder) => return Ok(reply::mock(responder)),
        RouteTarget::Forward(chain) => chain,
    };
    if !shared.health.is_healthy() {
        return Err(Rejection::new(
            "app_unhealthy",
            "the app is failing its health check",
        ));
    }

    // Only WebSocket is tunnelled, and only to an HTTP/1.1 app (an HTTP/2
    // connection cannot carry the upgrade); any other upgrade request goes
    // on as a plain request without its upgrade headers.
    let websocket = snapshot.config.app.protocol == AppProtocol::Http1
        && headers::is_websocket_upgrade(req.method(), req.version(), req.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        log.bytes_in = len;
    }
    let (mut head, incoming) = req.into_parts();
    headers::strip_identity(&mut head.headers);
    headers::strip_hop_by_hop(&mut head.headers, websocket);

    let mut cx = RequestCtx::new(
        log.request_id.as_str().to_owned(),
        route.route.name.clone(),
        admitted.client_ip,
        conn.tls,
    );
    // Every read of the body, buffered by a filter or streamed to the app,
    // fails once the client goes quiet for longer than the idle gap.
    let (mut body, body_progress) =
        Body::Incoming(incoming).with_idle_timeout(inbound.body_idle_timeout);
    let verdict = chain
        .on_request(
            &mut RequestView::new(&mut head, &mut body, route.route.max_body_bytes)
                .with_body_timeout(route.route.timeout),
            &mut cx,
        )
        .await;
    log.verdicts = std::mem::take(&mut cx.verdicts);
    verdict?;
    if route.route.buffer_request {
        RequestView::new(&mut head, &mut body, route.route.max_body_bytes)
            .with_body_timeout(route.route.timeout)
            .body()
            .await?;
    }

    headers::set_forwarded(
        &mut head.headers,
        admitted.forwarded_for,
        admitted.forwarded_proto,
    );
    head.headers
        .insert(X_REQUEST_ID.clone(), log.request_id.header_value());
    for (name, value) in cx.upstream_headers.drain(..) {
        head.headers.insert(name, value);
    }
    head.version = match snapshot.config.app.protocol {
        AppProtocol::Http1 => Version::HTTP_11,
        AppProtocol::Http2 => Version::HTTP_2,
    };
    // An HTTP/1 client's origin-form target goes to an HTTP/1 app as it is;
    // anything else is rebuilt for the app's protocol.
    if head.version == Version::HTTP_2
        || head.uri.scheme().is_some()
        || head.uri.authority().is_some()
    {
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        head.uri = snapshot
            .upstream
            .uri_from(path)
            .map_err(|_| Rejection::new("bad_request", "request target cannot be forwarded"))?;
    }
    if head.version == Version::HTTP_2 {
        // HTTP/2 carries the authority in the URI; a Host header would be a duplicate.
        head.headers.remove(HOST);
    }
    // A body of announced length was counted from Content-Length; a streamed
    // one is counted by its idle guard as it goes.
    if log.bytes_in == 0 {
        log.streamed_in = body_progress.clone();
    }
    let client_stalled = || body_progress.as_ref().is_some_and(|p| p.is_stalled());
    let client_slow = || {
        body_progress
            .as_ref()
            .is_some_and(|p| p.is_stalled() || p.is_waiting_for_sender())
    };

    let sent = Instant::now();
    // `timeout` (not `sent + timeout`): a configured timeout too large to add
    // to an Instant means "no limit" instead of a panic.
    let result = tokio::time::timeout(
        route.route.timeout,
        snapshot.upstream.send(Request::from_parts(head, body)),
    )
    .await;
    log.upstream = Some(sent.elapsed());
    let mut upstream_rsp = match result {
        // The client, not the app, is the slow one: its body stalled, or the
        // app is still waiting for it.
        Err(_) if client_slow() => {
            return Err(Rejection::new(
                "request_timeout",
                format!(
                    "the request body did not arrive within {:?}",
                    route.route.timeout
                ),
            ))
        }
        Err(_) => {
            return Err(Rejection::new(
                "upstream_timeout",
                format!("the app did not answer within {:?}", route.route.timeout),
            ))
        }
        Ok(Err(_)) if client_stalled() => {
            return Err(Rejection::new(
                "request_timeout",
                format!(
                    "the request body stalled for {:?}",
                    inbound.body_idle_timeout
                ),
            ))
        }
        Ok(Err(e)) => {
            let failure = classify(&e);
            if e.is_connect() {
                metrics::counter!("meshgate_upstream_connect_errors_total").increment(1);
            }
            tracing::warn!(request_id = %log.request_id, error = %e, ?failure, "forwarding to the app failed");
            return Err(match failure {
                ForwardFailure::ConnectTimeout => {
                    Rejection::new("upstream_timeout", "connecting to the app timed out")
                }
                ForwardFailure::Unreachable => {
                    Rejection::new("upstream_unreachable", "the app is not reachable")
                }
                ForwardFailure::Protocol => {
                    Rejection::new("upstream_error", "the app's response was not valid HTTP")
                }
            });
        }
        Ok(Ok(rsp)) => rsp,
    };

    if upstream_rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A switch nobody asked for, or to another protocol than WebSocket,
        // would make the rest of the connection a raw tunnel.
        let Some(client_upgrade) =
            client_upgrade.filter(|_| headers::response_is_websocket(upstream_rsp.headers()))
        else {
            return Err(Rejection::new(
                "upstream_error",
                "the app switched protocols without a WebSocket upgrade request",
            ));
        };
        let app_upgrade = hyper::upgrade::on(&mut upstream_rsp);
        // Tracked so that a drain gives the tunnel its grace period; it is
        // cut when the process exits at the drain deadline. The filters'
        // guards (concurrency permits) are held for the life of the tunnel.
        let connection = shared.drain.track_connection();
        let guards = cx.take_guards();
        tokio::spawn(async move {
            tunnel(client_upgrade, app_upgrade).await;
            drop(guards);
            drop(connection);
        });
        let (mut head, _) = upstream_rsp.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, true);
        headers::strip_identity(&mut head.headers);
        return Ok(Response::from_parts(head, Body::Empty));
    }

    let (mut rhead, incoming) = upstream_rsp.into_parts();
    headers::strip_hop_by_hop(&mut rhead.headers, false);
    let mut rbody = Body::Incoming(incoming);
    if chain.has_response_phase() {
        let result = chain
            .on_response(
                &mut ResponseView::new(&mut rhead, &mut rbody, route.route.max_body_bytes),
                &mut cx,
            )
            .await;
        log.verdicts.extend(std::mem::take(&mut cx.verdicts));
        result?;
        if let Body::Full(Some(bytes)) = &rbody {
            rhead
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
    }
    // `x-meshgate-*` response headers are instructions from the app to the
    // sidecar (e.g. session issuance); they never reach the client.
    headers::strip_identity(&mut rhead.headers);
    for (name, value) in cx.response_headers.drain(..) {
        rhead.headers.append(name, value);
    }
    log.guards = cx.take_guards();
    Ok(Response::from_parts(rhead, rbody))
}

/// Copies bytes both ways between the upgraded client and app connections.
async fn tunnel(client: hyper::upgrade::OnUpgrade, app: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, app) {
        Ok((client, app)) => {
            let mut client = TokioIo::new(client);
            let mut app = TokioIo::new(app);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut app).await {
                tracing::debug!(error = %e, "upgraded connection closed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
    }
}

/// Everything the access log line and request metrics need; written when the
/// response body is finished (or the client went away).
pub struct AccessLog {
    started: Instant,
    request_id: RequestId,
    route: Arc<RouteMetrics>,
    method: http::Method,
    /// The canonical target once admitted (the raw one if refused before).
    uri: http::Uri,
    /// The client address admission decided (the peer until then).
    client: std::net::IpAddr,
    status: u16,
    upstream: Option<Duration>,
    /// From Content-Length, or counted by the body's guard for a streamed body.
    bytes_in: u64,
    streamed_in: Option<Arc<BodyProgress>>,
    verdicts: Vec<(Arc<str>, &'static str)>,
    /// Held until the response is done (e.g. concurrency-limit permits).
    guards: Vec<Box<dyn std::any::Any + Send>>,
}

impl AccessLog {
    fn finish(self, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        self.route.record(self.status, elapsed.as_secs_f64());
        crate::access_log::record(&crate::access_log::Entry {
            request_id: self.request_id.as_str(),
            route: self.route.route(),
            method: self.method.as_str(),
            path: self.uri.path(),
            client: self.client,
            status: self.status,
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: self.upstream.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in: self
                .streamed_in
                .as_ref()
                .map_or(self.bytes_in, |p| p.bytes()),
            bytes_out,
            verdicts: &self.verdicts,
        });
        drop(self.guards);
    }
}

/// The response body, which writes the access log when it is done.
pub struct LoggedBody {
    inner: Body,
    bytes_out: u64,
    /// The connection's in-flight mark, dropped with the body.
    held: Option<Box<dyn std::any::Any + Send>>,
    log: Option<AccessLog>,
}

impl LoggedBody {
    /// Keeps `guard` alive until the response is done (or abandoned). One
    /// slot, for the connection's in-flight mark; per-request guards of the
    /// filters live in the access log.
    pub fn hold(&mut self, guard: Box<dyn std::any::Any + Send>) {
        self.held = Some(guard);
    }
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
                if let Some(log) = this.log.take() {
                    log.finish(this.bytes_out);
                }
                this.held = None;
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
        if let Some(log) = self.log.take() {
            log.finish(self.bytes_out);
        }
    }
}
