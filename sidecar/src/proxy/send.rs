//! The send phase, shared by inbound and egress: one request to an
//! upstream's pool within the route's time limit, and the one mapping of
//! every way that can fail to an answer.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use meshgate_filters::{Body, Rejection};
use tokio::time::Instant;

use super::Exchange;
use crate::upstream::{classify, ForwardFailure, SendError, Upstream};

/// Who the request goes to, for messages and logs.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'a> {
    App,
    Destination(&'a str),
}

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::App => f.write_str("the app"),
            Peer::Destination(host) => write!(f, "{host}"),
        }
    }
}

/// Time limits of one send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From sending until the response head (the route's timeout).
    pub response: Duration,
    /// The request body's idle gap, for the message when it stalled.
    pub body_idle: Duration,
}

/// Sends `req` and waits for the response head. When the time runs out
/// while the upstream still waits for the client's body, or the body's idle
/// guard cut it, the client is the slow one: 408 instead of 504/502.
#[allow(clippy::manual_async_fn)] // by-value request: see inbound::run
pub fn send<'a>(
    upstream: &'a Upstream,
    req: Request<Body>,
    limits: Limits,
    peer: Peer<'a>,
    exchange: &'a mut Exchange,
) -> impl Future<Output = Result<Response<Incoming>, Rejection>> + Send + 'a {
    async move {
        // One clock reading gives both the deadline and the upstream time.
        let sent = Instant::now();
        // Pinned where it is, so that the timeout wraps a pointer and the
        // send's state is not copied into it.
        let call = upstream.send(req);
        tokio::pin!(call);
        let result = match sent.checked_add(limits.response) {
            Some(deadline) => tokio::time::timeout_at(deadline, call).await,
            // A configured timeout too large to add to an Instant: no limit.
            None => Ok(call.await),
        };
        // Only the access log reads the upstream time.
        if crate::access_log::enabled() {
            exchange.upstream_time = Some(sent.elapsed());
        }
        let progress = exchange.body_progress.as_deref();
        let client_stalled = progress.is_some_and(|p| p.is_stalled());
        let client_slow = progress.is_some_and(|p| p.is_stalled() || p.is_waiting_for_sender());
        match result {
            Ok(Ok(rsp)) => Ok(rsp),
            Err(_) if client_slow => Err(Rejection::new(
                &meshgate_filters::error::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    limits.response
                ),
            )),
            Err(_) => Err(Rejection::new(
                &meshgate_filters::error::UPSTREAM_TIMEOUT,
                format!("{peer} did not answer within {:?}", limits.response),
            )),
            Ok(Err(_)) if client_stalled => Err(Rejection::new(
                &meshgate_filters::error::REQUEST_TIMEOUT,
                format!("the request body stalled for {:?}", limits.body_idle),
            )),
            Ok(Err(e)) => {
                if e.is_connect() {
                    metrics::counter!("meshgate_upstream_connect_errors_total").increment(1);
                }
                let failure = classify(&e);
                tracing::warn!(request_id = %exchange.request_id, error = %e, ?failure, %peer, "forwarding failed");
                Err(failure_answer(&e, failure, peer))
            }
        }
    }
}

/// The answer for a send that failed: a connect that timed out is 504
/// `upstream_timeout`, one refused or reset 502 `upstream_unreachable`, a
/// broken response 502 `upstream_error`.
fn failure_answer(e: &SendError, failure: ForwardFailure, peer: Peer<'_>) -> Rejection {
    match failure {
        ForwardFailure::ConnectTimeout if e.is_connect() => Rejection::new(
            &meshgate_filters::error::UPSTREAM_TIMEOUT,
            format!("connecting to {peer} timed out"),
        ),
        ForwardFailure::ConnectTimeout => Rejection::new(
            &meshgate_filters::error::UPSTREAM_TIMEOUT,
            format!("{peer} timed out"),
        ),
        ForwardFailure::Unreachable => Rejection::new(
            &meshgate_filters::error::UPSTREAM_UNREACHABLE,
            format!("{peer} is not reachable"),
        ),
        ForwardFailure::Protocol => Rejection::new(
            &meshgate_filters::error::UPSTREAM_ERROR,
            format!("{peer}'s response was not valid HTTP"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route_metrics::RouteMetrics;
    use crate::server::Activity;
    use crate::upstream::PoolSettings;
    use http::StatusCode;
    use std::sync::Arc;

    fn exchange() -> Box<Exchange> {
        let conn = super::super::ConnInfo::new("127.0.0.1:1".parse().expect("addr"), false);
        let req = Request::builder().uri("/").body(()).expect("req");
        Exchange::accept(
            &req,
            &conn,
            &RouteMetrics::new(Arc::from("-")),
            Activity::new().begin(http::Version::HTTP_11),
        )
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/x")
            .header("host", "app")
            .body(Body::Empty)
            .expect("req")
    }

    const LIMITS: Limits = Limits {
        response: Duration::from_millis(300),
        body_idle: Duration::from_secs(1),
    };

    #[tokio::test]
    async fn a_refused_connect_is_502_upstream_unreachable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let upstream = Upstream::new(PoolSettings::egress(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(1),
        ));
        let mut ex = exchange();
        let rej = send(&upstream, request(), LIMITS, Peer::App, &mut ex)
            .await
            .expect_err("refused");
        assert_eq!(
            (rej.status, rej.reason),
            (StatusCode::BAD_GATEWAY, "upstream_unreachable")
        );
        assert_eq!(rej.message, "the app is not reachable");
    }

    #[tokio::test]
    async fn an_upstream_that_never_answers_is_504_upstream_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let upstream = Upstream::new(PoolSettings::egress(
            &addr.to_string(),
            Duration::from_secs(1),
        ));
        // The access log on: it is what reads the upstream time.
        let _log = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_writer(std::io::sink)
                .finish(),
        );
        let mut ex = exchange();
        let rej = send(
            &upstream,
            request(),
            LIMITS,
            Peer::Destination("wallet.internal"),
            &mut ex,
        )
        .await
        .expect_err("timeout");
        assert_eq!(
            (rej.status, rej.reason),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        );
        assert!(
            rej.message.starts_with("wallet.internal did not answer"),
            "{}",
            rej.message
        );
        assert!(ex.upstream_time.is_some());
        held.abort();
    }

    #[test]
    fn a_connect_timeout_is_504_upstream_timeout() {
        let e = SendError::Connect(std::io::Error::new(std::io::ErrorKind::TimedOut, "t"));
        let failure = classify(&e);
        assert_eq!(failure, ForwardFailure::ConnectTimeout);
        let rej = failure_answer(&e, failure, Peer::App);
        assert_eq!(
            (rej.status, rej.reason),
            (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout")
        );
        assert_eq!(rej.message, "connecting to the app timed out");
    }
}
