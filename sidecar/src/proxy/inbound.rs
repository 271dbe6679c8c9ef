//! The inbound pipeline: admit → route → request filters → upstream request
//! → send → response filters; the access log ends the [`Exchange`].

use http::header::{CONTENT_LENGTH, HOST};
use http::{request, response, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshgate_filters::{Body, Chain, Rejection, RequestView, ResponseView};
use meshgate_xds::config::{AppProtocol, Inbound, Route};
use std::future::Future;

use super::send::{self, Limits, Peer};
use super::{ConnInfo, Exchange, Shared};
use crate::admission::{self, Admitted};
use crate::headers::{self, X_REQUEST_ID};
use crate::reply;
use crate::routing::RouteTarget;
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;

///
/// Not an `async fn` (nor are the other functions that take the request by
/// value on its way to the app): an async fn keeps its by-value arguments
/// twice in its state, and the request's future is moved on every request.
#[allow(clippy::manual_async_fn)] // by-value request: see inbound::run
pub(super) fn run<'a>(
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    exchange: &'a mut Exchange,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let inbound = &snapshot.config.inbound;
        let admitted = admit(&mut req, inbound, conn, exchange)?;
        let route = snapshot
            .routes
            .route(req.method(), req.uri().path(), admitted.host())?;
        exchange.routed(&route.metrics);
        let chain = match &route.target {
            RouteTarget::Respond(responder) => return Ok(reply::mock(responder)),
            RouteTarget::Forward(chain) => chain,
        };
        if !shared.health.is_healthy() {
            return Err(Rejection::new(
                &meshgate_filters::error::APP_UNHEALTHY,
                "the app is failing its health check",
            ));
        }
        // Only WebSocket is tunnelled, and only to an HTTP/1.1 app (an HTTP/2
        // connection cannot carry the upgrade); any other upgrade request goes
        // on as a plain request without its upgrade headers.
        let websocket = snapshot.config.app.protocol == AppProtocol::Http1
            && headers::is_websocket_upgrade(req.method(), req.version(), req.headers());
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let (mut head, incoming) = req.into_parts();
        let mut body = prepare(
            &mut head,
            Body::Incoming(incoming),
            websocket,
            inbound,
            exchange,
        );

        request_filters(chain, &route.route, &mut head, &mut body, exchange).await?;
        upstream_request(&mut head, admitted, &snapshot.upstream, exchange)?;
        let limits = Limits {
            response: route.route.timeout,
            body_idle: inbound.body_idle_timeout,
        };
        let rsp = send::send(
            &snapshot.upstream,
            Request::from_parts(head, body),
            limits,
            Peer::App,
            exchange,
        )
        .await?;
        if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
            return switch_protocols(shared, client_upgrade, rsp, exchange);
        }
        let (rhead, incoming) = rsp.into_parts();
        response_filters(
            chain,
            &route.route,
            rhead,
            Body::Incoming(incoming),
            exchange,
        )
        .await
    }
}

/// Admit: the head's size (431), then the canonical request (400 and 405
/// refusals in `admission.rs`), recorded for the access log.
fn admit<B>(
    req: &mut Request<B>,
    inbound: &Inbound,
    conn: &ConnInfo,
    exchange: &mut Exchange,
) -> Result<Admitted, Rejection> {
    if headers::head_size(req.method(), req.uri(), req.headers()) > inbound.max_header_bytes {
        return Err(Rejection::new(
            &meshgate_filters::error::HEADER_TOO_LARGE,
            format!("request head exceeds {} bytes", inbound.max_header_bytes),
        ));
    }
    let admitted = admission::admit(req, inbound, conn)?;
    exchange.admitted(req.uri(), admitted.client_ip);
    Ok(admitted)
}

/// Before the filters: client-sent identity and hop-by-hop headers go, and
/// every read of the body, buffered by a filter or streamed to the app,
/// fails once the client goes quiet for longer than the idle gap.
fn prepare(
    head: &mut request::Parts,
    body: Body,
    websocket: bool,
    inbound: &Inbound,
    exchange: &mut Exchange,
) -> Body {
    headers::strip_identity(&mut head.headers);
    headers::strip_hop_by_hop(&mut head.headers, websocket);
    let (body, progress) = body.with_idle_timeout(inbound.body_idle_timeout);
    exchange.body_progress = progress;
    body
}

/// The chain's request phase (the first rejection wins), then the route's
/// `buffer_request`; both bounded by the route's body size and timeout.
async fn request_filters(
    chain: &Chain,
    route: &Route,
    head: &mut request::Parts,
    body: &mut Body,
    exchange: &mut Exchange,
) -> Result<(), Rejection> {
    let mut view =
        RequestView::new(head, body, route.max_body_bytes).with_body_timeout(route.timeout);
    chain.on_request(&mut view, &mut exchange.filters).await?;
    if route.buffer_request {
        view.body().await?;
    }
    Ok(())
}

/// The request as the app gets it: forwarding headers as admission decided
/// them, the request id, the identity headers the filters set, the app's
/// protocol. An HTTP/1 client's origin-form target goes to an HTTP/1 app as
/// it is; anything else is rebuilt for the app's protocol.
fn upstream_request(
    head: &mut request::Parts,
    admitted: Admitted,
    upstream: &Upstream,
    exchange: &mut Exchange,
) -> Result<(), Rejection> {
    headers::set_forwarded(
        &mut head.headers,
        admitted.forwarded_for,
        admitted.forwarded_proto,
    );
    head.headers
        .insert(X_REQUEST_ID.clone(), exchange.request_id.header_value());
    for (name, value) in exchange.filters.upstream_headers.drain(..) {
        head.headers.insert(name, value);
    }
    head.version = match upstream.settings.protocol {
        AppProtocol::Http1 => Version::HTTP_11,
        AppProtocol::Http2 => Version::HTTP_2,
    };
    if head.version == Version::HTTP_2
        || head.uri.scheme().is_some()
        || head.uri.authority().is_some()
    {
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        head.uri = upstream.uri_from(path).map_err(|_| {
            Rejection::new(
                &meshgate_filters::error::BAD_REQUEST,
                "request target cannot be forwarded",
            )
        })?;
    }
    if head.version == Version::HTTP_2 {
        // HTTP/2 carries the authority in the URI; a Host header would be a duplicate.
        head.headers.remove(HOST);
    }
    Ok(())
}

/// A `101` answer: tunnelled when it switches a WebSocket upgrade request
/// to WebSocket, else 502 (a switch nobody asked for would make the rest of
/// the connection a raw tunnel past the filters).
fn switch_protocols(
    shared: &Shared,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    mut rsp: Response<Incoming>,
    exchange: &mut Exchange,
) -> Result<Response<Body>, Rejection> {
    let Some(client_upgrade) =
        client_upgrade.filter(|_| headers::response_is_websocket(rsp.headers()))
    else {
        return Err(Rejection::new(
            &meshgate_filters::error::UPSTREAM_ERROR,
            "the app switched protocols without a WebSocket upgrade request",
        ));
    };
    let app_upgrade = hyper::upgrade::on(&mut rsp);
    // Tracked so that a drain gives the tunnel its grace period; it is cut
    // when the process exits at the drain deadline. The filters' guards
    // (concurrency permits) are held for the life of the tunnel.
    let connection = shared.drain.track_connection();
    let guards = exchange.filters.take_guards();
    tokio::spawn(async move {
        tunnel(client_upgrade, app_upgrade).await;
        drop(guards);
        drop(connection);
    });
    let (mut head, _) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, true);
    headers::strip_identity(&mut head.headers);
    Ok(Response::from_parts(head, Body::Empty))
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

/// The response as the client gets it: hop-by-hop headers gone, the chain's
/// response phase (reverse order, only if a filter has one), `x-meshgate-*`
/// instructions from the app removed, the filters' response headers added.
async fn response_filters(
    chain: &Chain,
    route: &Route,
    mut head: response::Parts,
    mut body: Body,
    exchange: &mut Exchange,
) -> Result<Response<Body>, Rejection> {
    headers::strip_hop_by_hop(&mut head.headers, false);
    if chain.has_response_phase() {
        chain
            .on_response(
                &mut ResponseView::new(&mut head, &mut body, route.max_body_bytes),
                &mut exchange.filters,
            )
            .await?;
        if let Body::Full(Some(bytes)) = &body {
            head.headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
    }
    // `x-meshgate-*` response headers are instructions from the app to the
    // sidecar (e.g. session issuance); they never reach the client.
    headers::strip_identity(&mut head.headers);
    for (name, value) in exchange.filters.response_headers.drain(..) {
        head.headers.append(name, value);
    }
    Ok(Response::from_parts(head, body))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::proxy::testing::snapshot;
    use crate::route_metrics::RouteMetrics;
    use crate::server::Activity;
    use http::HeaderName;

    const CONFIG: &str = r#"
inbound: { listen: "127.0.0.1:0", max_header_bytes: 1024 }
app: { address: "127.0.0.1:9" }
admin: { listen: "127.0.0.1:0" }
routes:
  - name: api
    match: { path_prefix: / }
    filters: [policy]
filters:
  policy: { type: header, deny: [x-debug] }
"#;

    fn conn() -> ConnInfo {
        ConnInfo::new("10.0.0.7:4000".parse().expect("addr"), false)
    }

    fn exchange_for<B>(req: &Request<B>) -> Box<Exchange> {
        Exchange::accept(
            req,
            &conn(),
            &RouteMetrics::new(Arc::from("-")),
            Activity::new().begin(req.version()),
        )
    }

    fn request(uri: &str) -> Request<()> {
        Request::builder()
            .uri(uri)
            .header("host", "api.example.com")
            .body(())
            .expect("request")
    }

    #[test]
    fn admit_refuses_an_oversized_head_and_records_the_canonical_request() {
        let snap = snapshot(CONFIG);
        let inbound = &snap.config.inbound;
        let mut big = request("/a");
        big.headers_mut().insert(
            "x-big",
            HeaderValue::from_str(&"a".repeat(1100)).expect("value"),
        );
        let mut ex = exchange_for(&big);
        let rej = admit(&mut big, inbound, &conn(), &mut ex).expect_err("too large");
        assert_eq!((rej.status.as_u16(), rej.reason), (431, "header_too_large"));

        let mut req = request("/a/../b");
        let mut ex = exchange_for(&req);
        let admitted = admit(&mut req, inbound, &conn(), &mut ex).expect("admitted");
        assert_eq!(admitted.host(), "api.example.com");
        assert_eq!(ex.uri.path(), "/b");
        assert_eq!(ex.filters.client_ip.to_string(), "10.0.0.7");
    }

    #[tokio::test]
    async fn request_filters_reject_and_strip_before_the_chain() {
        let snap = snapshot(CONFIG);
        let route = snap
            .routes
            .route(&http::Method::GET, "/", "h")
            .expect("route");
        let RouteTarget::Forward(chain) = &route.target else {
            panic!("forward route")
        };
        let mut req = request("/");
        req.headers_mut()
            .insert("x-debug", HeaderValue::from_static("1"));
        req.headers_mut()
            .insert("x-meshgate-user", HeaderValue::from_static("forged"));
        let mut ex = exchange_for(&req);
        ex.routed(&route.metrics);
        let (mut head, ()) = req.into_parts();
        let mut body = prepare(&mut head, Body::Empty, false, &snap.config.inbound, &mut ex);
        assert!(!head.headers.contains_key("x-meshgate-user"));
        let rej = request_filters(chain, &route.route, &mut head, &mut body, &mut ex)
            .await
            .expect_err("denied header");
        assert_eq!((rej.status.as_u16(), rej.reason), (403, "header_forbidden"));
        assert_eq!(ex.filters.route.as_ref(), "api");
        assert_eq!(ex.filters.verdicts.len(), 1);
    }

    #[test]
    fn upstream_request_sets_forwarding_request_id_and_identity() {
        let snap = snapshot(CONFIG);
        let mut req = request("/p?q=1");
        let mut ex = exchange_for(&req);
        let admitted = admit(&mut req, &snap.config.inbound, &conn(), &mut ex).expect("ok");
        ex.filters.set_upstream_header(
            HeaderName::from_static("x-meshgate-user"),
            HeaderValue::from_static("u-1"),
        );
        let (mut head, ()) = req.into_parts();
        upstream_request(&mut head, admitted, &snap.upstream, &mut ex).expect("ok");
        assert_eq!(head.headers["x-forwarded-for"], "10.0.0.7");
        assert_eq!(head.headers["x-forwarded-proto"], "http");
        assert_eq!(head.headers["x-request-id"], ex.request_id.as_str());
        assert_eq!(head.headers["x-meshgate-user"], "u-1");
        assert_eq!(head.headers["host"], "api.example.com");
        assert_eq!(head.uri, "/p?q=1");
        assert_eq!(head.version, Version::HTTP_11);
    }

    #[test]
    fn upstream_request_to_an_http2_app_carries_the_authority_in_the_uri() {
        let snap = snapshot(&CONFIG.replace(
            r#"app: { address: "127.0.0.1:9" }"#,
            r#"app: { address: "127.0.0.1:9", protocol: http2 }"#,
        ));
        let mut req = request("/p");
        let mut ex = exchange_for(&req);
        let admitted = admit(&mut req, &snap.config.inbound, &conn(), &mut ex).expect("ok");
        let (mut head, ()) = req.into_parts();
        upstream_request(&mut head, admitted, &snap.upstream, &mut ex).expect("ok");
        assert_eq!(head.version, Version::HTTP_2);
        assert_eq!(head.uri, "http://127.0.0.1:9/p");
        assert!(!head.headers.contains_key("host"));
    }

    #[tokio::test]
    async fn response_filters_hide_app_instructions_and_add_the_filters_headers() {
        let snap = snapshot(CONFIG);
        let route = snap
            .routes
            .route(&http::Method::GET, "/", "h")
            .expect("route");
        let RouteTarget::Forward(chain) = &route.target else {
            panic!("forward route")
        };
        let req = request("/");
        let mut ex = exchange_for(&req);
        ex.filters.response_headers.push((
            HeaderName::from_static("ratelimit"),
            HeaderValue::from_static("1"),
        ));
        let (head, ()) = Response::builder()
            .header("x-meshgate-session-set", "sub=u")
            .header("connection", "close")
            .header("content-type", "text/plain")
            .body(())
            .expect("rsp")
            .into_parts();
        let rsp = response_filters(chain, &route.route, head, Body::Empty, &mut ex)
            .await
            .expect("ok");
        assert!(!rsp.headers().contains_key("x-meshgate-session-set"));
        assert!(!rsp.headers().contains_key("connection"));
        assert_eq!(rsp.headers()["ratelimit"], "1");
        assert_eq!(rsp.headers()["content-type"], "text/plain");
    }
}
