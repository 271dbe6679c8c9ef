//! The egress listener (`egress.listen`, 127.0.0.1:15001 by default): the app
//! sends its outbound calls here; each is matched to a destination by its
//! host, signed with that destination's key (RFC 9421) and sent to the
//! destination's upstream with the same pooled client the inbound side uses.
//!
//! The listener is bound at start; destinations and keys follow config
//! reloads (each request reads the current snapshot).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HOST;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshgate_filters::{Body, Rejection};
use meshgate_xds::config::{App, AppAddress, AppProtocol};
use tokio::net::TcpListener;

use crate::config_store::ConfigStore;
use crate::drain::Drain;
use crate::headers;
use crate::reply;
use crate::upstream::{classify, ForwardFailure, Upstream};

/// What every egress request shares: the config and one pooled client per
/// upstream address (kept across reloads).
pub struct Egress {
    pub store: Arc<ConfigStore>,
    clients: Mutex<HashMap<(String, Duration), Arc<Upstream>>>,
}

impl Egress {
    pub fn new(store: Arc<ConfigStore>) -> Self {
        Egress {
            store,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, upstream: &str, connect_timeout: Duration) -> Arc<Upstream> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((upstream.to_string(), connect_timeout))
            .or_insert_with(|| {
                Arc::new(Upstream::new(&App {
                    address: AppAddress::Tcp(upstream.to_string()),
                    protocol: AppProtocol::Http1,
                    connect_timeout,
                    health_path: None,
                    health_interval: Duration::from_secs(5),
                    health_timeout: Duration::from_secs(1),
                    max_idle_connections: 64,
                    pool_idle_timeout: Duration::from_secs(90),
                }))
            })
            .clone()
    }
}

/// Accepts egress connections until draining starts.
pub async fn serve(listener: Arc<TcpListener>, egress: Arc<Egress>, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track_connection();
        let egress = egress.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req| {
                let egress = egress.clone();
                async move { Ok::<_, Infallible>(handle(&egress, req).await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "egress connection ended with an error");
                    }
                }
                _ = drain.started() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracing::info!("egress listener stopped accepting");
}

/// Signs and forwards one outbound request. Never fails: problems become the
/// JSON error answer.
pub async fn handle(egress: &Egress, req: Request<Incoming>) -> Response<Body> {
    let snapshot = egress.store.load();
    let request_id = headers::request_id(req.headers());
    match forward(egress, &snapshot, req).await {
        Ok(rsp) => rsp,
        Err(rej) => reply::rejection(rej, &snapshot.error_codes, request_id.as_str()),
    }
}

async fn forward(
    egress: &Egress,
    snapshot: &crate::snapshot::Snapshot,
    req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    let Some(config) = &snapshot.config.egress else {
        return Err(Rejection::new(
            "route_not_found",
            "egress is not configured",
        ));
    };
    let host = req
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| h.split(':').next().unwrap_or(h).to_string())
        .unwrap_or_default();
    let Some(destination) = config.destination(&host) else {
        return Err(Rejection::new(
            "route_not_found",
            format!("no egress destination for host {host:?}"),
        ));
    };
    let (mut head, incoming) = req.into_parts();
    headers::strip_hop_by_hop(&mut head.headers, false);
    if !head.headers.contains_key(HOST) {
        // HTTP/2 from the app: the authority is in the URI; HTTP/1.1 upstream
        // needs it as Host (and the signature covers it from there).
        if let Some(authority) = head.uri.authority() {
            if let Ok(v) = HeaderValue::try_from(authority.as_str()) {
                head.headers.insert(HOST, v);
            }
        }
    }
    let path = head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // Sign the request as the destination will see it: origin form, Host header.
    head.uri = path
        .parse()
        .map_err(|_| Rejection::new("bad_request", "request target cannot be forwarded"))?;
    let mut body = Body::Incoming(incoming);
    let bytes = body
        .buffer(config.max_body_bytes)
        .await
        .map_err(|e| match e {
            meshgate_filters::body::BufferError::TooLarge => {
                Rejection::new("body_too_large", "body exceeds egress.max_body_bytes")
            }
            meshgate_filters::body::BufferError::Read(e) => {
                Rejection::new("bad_request", format!("reading the body failed: {e}"))
            }
        })?;
    destination
        .signer
        .sign_request(&mut head, &bytes, "http")
        .map_err(|e| {
            tracing::warn!(error = %e, host = %destination.host, "egress signing failed");
            Rejection::new("internal_error", "signing the request failed")
        })?;

    let client = egress.client(&destination.upstream, config.connect_timeout);
    head.uri = client
        .uri(&path)
        .map_err(|_| Rejection::new("bad_request", "request target cannot be forwarded"))?;
    head.version = Version::HTTP_11;
    let result =
        tokio::time::timeout(config.timeout, client.send(Request::from_parts(head, body))).await;
    let rsp = match result {
        Err(_) => {
            return Err(Rejection::new(
                "upstream_timeout",
                format!(
                    "{} did not answer within {:?}",
                    destination.host, config.timeout
                ),
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, host = %destination.host, "egress forwarding failed");
            return Err(match classify(&e) {
                ForwardFailure::ConnectTimeout => Rejection::new(
                    "upstream_timeout",
                    "connecting to the destination timed out",
                ),
                ForwardFailure::Unreachable => {
                    Rejection::new("upstream_unreachable", "the destination is not reachable")
                }
                ForwardFailure::Protocol => Rejection::new(
                    "upstream_error",
                    "the destination's response was not valid HTTP",
                ),
            });
        }
        Ok(Ok(rsp)) => rsp,
    };
    let (mut rhead, incoming) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut rhead.headers, false);
    Ok(Response::from_parts(rhead, Body::Incoming(incoming)))
}
