//! The egress pipeline (`egress.listen`, 127.0.0.1:15001 by default): the
//! app sends its outbound calls here. admit (the one host parser) → route
//! (the destination for the host) → sign (RFC 9421, with the destination's
//! key) → upstream request → send (the inbound side's send and error
//! mapping) → log. Destinations and keys follow config reloads (each request
//! reads the current snapshot); pools are kept while their settings are equal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use http::header::HOST;
use http::{request, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use meshgate_filters::signature::egress::EgressConfig;
use meshgate_filters::{Body, Rejection, RequestView};

use super::send::{self, Limits, Peer};
use super::{Exchange, Shared};
use crate::admission::{self, CanonicalAuthority};
use crate::headers;
use crate::routing::EgressRoute;
use crate::snapshot::Snapshot;
use crate::upstream::{PoolSettings, Upstream};

/// One pooled client per egress upstream address. A reload keeps a pool
/// when the destination's [`PoolSettings`] are equal, and replaces it
/// otherwise.
#[derive(Default)]
pub struct EgressPools(Mutex<HashMap<String, Arc<Upstream>>>);

impl EgressPools {
    pub fn get(&self, settings: PoolSettings) -> Arc<Upstream> {
        let key = match &settings.address {
            meshgate_xds::config::AppAddress::Tcp(a) => a.clone(),
            meshgate_xds::config::AppAddress::Unix(p) => p.display().to_string(),
        };
        let mut pools = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match pools.get(&key) {
            Some(pool) if pool.settings == settings => pool.clone(),
            _ => {
                let pool = Arc::new(Upstream::new(settings));
                pools.insert(key, pool.clone());
                pool
            }
        }
    }
}

#[allow(clippy::manual_async_fn)] // by-value request: see inbound::run
pub(super) fn run<'a>(
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    mut req: Request<Incoming>,
    exchange: &'a mut Exchange,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + Send + 'a {
    async move {
        let Some(config) = &snapshot.config.egress else {
            return Err(Rejection::new(
                &meshgate_filters::error::ROUTE_NOT_FOUND,
                "egress is not configured",
            ));
        };
        let authority = admit(&mut req)?;
        let destination = snapshot.routes.destination(authority.host())?;
        exchange.routed(&destination.metrics);
        let (mut head, incoming) = req.into_parts();
        headers::strip_hop_by_hop(&mut head.headers, false);
        // The destination sees (and the signature covers) the canonical
        // authority as Host, also when the app spoke HTTP/2.
        head.headers.insert(
            HOST,
            HeaderValue::try_from(authority.as_str()).map_err(|_| {
                Rejection::new(&meshgate_filters::error::BAD_AUTHORITY, "invalid authority")
            })?,
        );
        let inbound = &snapshot.config.inbound;
        let (mut body, progress) =
            Body::Incoming(incoming).with_idle_timeout(inbound.body_idle_timeout);
        exchange.body_progress = progress;

        let path = sign(&mut head, &mut body, destination, config).await?;
        let upstream = shared.egress_pools.get(PoolSettings::egress(
            &destination.destination.upstream,
            config.connect_timeout,
        ));
        head.uri = upstream.uri(&path).map_err(|_| {
            Rejection::new(
                &meshgate_filters::error::BAD_REQUEST,
                "request target cannot be forwarded",
            )
        })?;
        head.version = Version::HTTP_11;
        let limits = Limits {
            response: config.timeout,
            body_idle: inbound.body_idle_timeout,
        };
        let rsp = send::send(
            &upstream,
            Request::from_parts(head, body),
            limits,
            Peer::Destination(&destination.destination.host),
            exchange,
        )
        .await?;
        let (mut rhead, incoming) = rsp.into_parts();
        headers::strip_hop_by_hop(&mut rhead.headers, false);
        Ok(Response::from_parts(rhead, Body::Incoming(incoming)))
    }
}

/// Admit: CONNECT is refused; the authority from `Host` and the request
/// target (which must agree), parsed by the same code as inbound. Returns
/// the canonical authority and the host without port.
fn admit<B>(req: &mut Request<B>) -> Result<CanonicalAuthority, Rejection> {
    if req.method() == http::Method::CONNECT {
        return Err(Rejection::new(
            &meshgate_filters::header::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    admission::authority(req, false)
}

/// The signing step: the body buffered (bounded by `egress.max_body_bytes`,
/// 413 beyond, and by `egress.timeout` and the idle gap, 408 beyond), the
/// request signed as the destination will see it (origin form, Host).
/// Returns the origin-form target.
async fn sign(
    head: &mut request::Parts,
    body: &mut Body,
    destination: &EgressRoute,
    config: &EgressConfig,
) -> Result<String, Rejection> {
    let path = head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    head.uri = path.parse().map_err(|_| {
        Rejection::new(
            &meshgate_filters::error::BAD_REQUEST,
            "request target cannot be forwarded",
        )
    })?;
    let bytes = RequestView::new(head, body, config.max_body_bytes)
        .with_body_timeout(config.timeout)
        .body()
        .await?;
    destination
        .destination
        .signer
        .sign_request(head, &bytes, "http")
        .map_err(|e| {
            tracing::warn!(error = %e, host = %destination.destination.host, "egress signing failed");
            Rejection::new(&meshgate_filters::error::INTERNAL_ERROR, "signing the request failed")
        })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::testing::snapshot;

    const CONFIG: &str = r#"
egress:
  max_body_bytes: 16
  timeout: 300ms
  destinations:
    - host: wallet.internal
      upstream: "127.0.0.1:9"
      key: { id: k, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=" }
"#;

    fn request(host: &str) -> Request<()> {
        Request::builder()
            .uri("/balance?user=7")
            .header("host", host)
            .body(())
            .expect("request")
    }

    #[test]
    fn admit_parses_the_host_once_for_names_and_ipv6_literals() {
        for (host, want) in [
            ("wallet.internal", ("wallet.internal", "wallet.internal")),
            ("Wallet.Internal:80", ("wallet.internal", "wallet.internal")),
            (
                "wallet.internal:8080",
                ("wallet.internal:8080", "wallet.internal"),
            ),
            ("[::1]:80", ("[::1]", "::1")),
            ("[::1]:8080", ("[::1]:8080", "::1")),
        ] {
            let authority = admit(&mut request(host)).expect(host);
            assert_eq!((authority.as_str(), authority.host()), want, "{host}");
        }
        for bad in ["[::1", "a b", "user@host", "[::1]x"] {
            let rej = admit(&mut request(bad)).expect_err(bad);
            assert_eq!(rej.reason, "bad_authority", "{bad}");
        }
        let mut connect = request("wallet.internal");
        *connect.method_mut() = http::Method::CONNECT;
        assert_eq!(
            admit(&mut connect).expect_err("connect").reason,
            "method_not_allowed"
        );
    }

    #[tokio::test]
    async fn sign_covers_the_request_and_bounds_the_body() {
        let snap = snapshot(CONFIG);
        let config = snap.config.egress.as_ref().expect("egress");
        let destination = snap.routes.destination("wallet.internal").expect("dest");
        let (mut head, ()) = request("wallet.internal").into_parts();
        let mut body = Body::full("{\"q\":1}");
        let path = sign(&mut head, &mut body, destination, config)
            .await
            .expect("signed");
        assert_eq!(path, "/balance?user=7");
        assert!(head.headers.contains_key("signature"));
        assert!(head.headers["signature-input"]
            .to_str()
            .expect("ascii")
            .contains("keyid=\"k\""));

        let (mut head, ()) = request("wallet.internal").into_parts();
        let mut body = Body::full("x".repeat(17));
        let rej = sign(&mut head, &mut body, destination, config)
            .await
            .expect_err("too large");
        assert_eq!((rej.status.as_u16(), rej.reason), (413, "body_too_large"));
    }

    #[tokio::test]
    async fn sign_does_not_wait_for_a_body_forever() {
        let snap = snapshot(CONFIG);
        let config = snap.config.egress.as_ref().expect("egress");
        let destination = snap.routes.destination("wallet.internal").expect("dest");
        let (mut head, ()) = request("wallet.internal").into_parts();
        // A body whose sender never sends.
        let (_sender, pending) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >(1);
        let stream = http_body_util::StreamBody::new(tokio_stream_adapter(pending));
        let mut body = Body::boxed(stream);
        let started = std::time::Instant::now();
        let rej = sign(&mut head, &mut body, destination, config)
            .await
            .expect_err("timed out");
        assert_eq!((rej.status.as_u16(), rej.reason), (408, "request_timeout"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    fn tokio_stream_adapter<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[test]
    fn a_pool_is_kept_while_its_settings_are_equal() {
        let pools = EgressPools::default();
        let one = pools.get(PoolSettings::egress("127.0.0.1:9", Duration::from_secs(1)));
        let same = pools.get(PoolSettings::egress("127.0.0.1:9", Duration::from_secs(1)));
        assert!(Arc::ptr_eq(&one, &same));
        let changed = pools.get(PoolSettings::egress("127.0.0.1:9", Duration::from_secs(2)));
        assert!(!Arc::ptr_eq(&one, &changed));
        let other = pools.get(PoolSettings::egress("127.0.0.1:10", Duration::from_secs(2)));
        assert!(!Arc::ptr_eq(&changed, &other));
    }
}
