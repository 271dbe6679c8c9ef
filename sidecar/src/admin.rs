//! The admin API (loopback only): readiness, liveness, metrics, config dump,
//! drain and the runtime log level. An optional health-only listener serves
//! `/ready` and `/live` for probes from outside the pod.
//!
//! Listening on loopback is not enough: a browser on the node reaches
//! 127.0.0.1 too (DNS rebinding, cross-origin form posts), so [`check`]
//! runs before every endpoint.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshgate_filters::error::{self, Reason};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config_store::ConfigStore;
use crate::drain::Drain;
use crate::health::AppHealth;
use crate::telemetry::LogLevel;

pub struct Admin {
    pub store: Arc<ConfigStore>,
    pub health: Arc<AppHealth>,
    pub drain: Drain,
    pub metrics: PrometheusHandle,
    pub log_level: LogLevel,
    /// Extra phase shown on `/ready` (e.g. an upgrade in progress).
    pub phase: Arc<crate::phase::ProcessPhase>,
    /// Set when the admin sockets were handed over to a new process.
    pub stop_accepting: tokio::sync::watch::Sender<bool>,
    /// Starts the next process for `POST /upgrade` (needs `--upgrade-socket`).
    pub successor: Option<Arc<crate::upgrade::Successor>>,
}

/// The header every state-changing admin request must carry (any non-empty
/// value; `1` is documented). A browser cannot add it to a cross-origin
/// request without a CORS preflight, which the admin API never approves.
pub const ADMIN_HEADER: &str = "x-meshgate-admin";

/// Why the admin API refused a request before any endpoint ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` (or an absolute-form authority) is not a loopback name: a DNS
    /// rebinding page reaches 127.0.0.1 under its own host name.
    Host,
    /// A browser page of another origin sent the request.
    Origin,
    /// A state-changing request without [`ADMIN_HEADER`].
    Header,
}

impl Refusal {
    pub fn reason(self) -> &'static Reason {
        match self {
            Refusal::Host => &error::ADMIN_HOST_NOT_ALLOWED,
            Refusal::Origin => &error::ADMIN_ORIGIN_NOT_ALLOWED,
            Refusal::Header => &error::ADMIN_HEADER_REQUIRED,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Refusal::Host => "the admin API answers only Host: localhost, 127.0.0.1 or [::1] (with its own port or none)",
            Refusal::Origin => "the admin API does not answer requests from browser pages of other origins",
            Refusal::Header => "state-changing admin requests need the header x-meshgate-admin: 1",
        }
    }
}

/// Checks a request against the admin API's rules: no foreign `Origin` (nor
/// `Sec-Fetch-Site: cross-site`) anywhere; on the admin listener also a
/// loopback `Host` naming `port` or no port, and [`ADMIN_HEADER`] on every
/// method but GET and HEAD (so no GET ever changes state and no future
/// endpoint can forget the check). The health-only listener serves probes
/// from outside the pod, whose `Host` is the pod's address.
pub fn check<B>(req: &Request<B>, port: u16, health_only: bool) -> Result<(), Refusal> {
    let headers = req.headers();
    let foreign_origin = headers
        .get_all(http::header::ORIGIN)
        .iter()
        .any(|origin| !loopback_origin(origin));
    let cross_site = headers
        .get_all("sec-fetch-site")
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if foreign_origin || cross_site {
        return Err(Refusal::Origin);
    }
    if health_only {
        return Ok(());
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host_ok = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .ok()
            .and_then(|h| h.parse::<http::uri::Authority>().ok())
            .is_some_and(|a| loopback_authority(&a, Some(port))),
        _ => false,
    };
    let target_ok = req
        .uri()
        .authority()
        .is_none_or(|a| loopback_authority(a, Some(port)));
    if !host_ok || !target_ok {
        return Err(Refusal::Host);
    }
    let reads_only = matches!(*req.method(), Method::GET | Method::HEAD);
    if !reads_only && headers.get(ADMIN_HEADER).is_none_or(|v| v.is_empty()) {
        return Err(Refusal::Header);
    }
    Ok(())
}

/// `localhost`, a 127.0.0.0/8 literal or `[::1]`, without userinfo; with
/// `port` given, an explicit port must be that one.
fn loopback_authority(authority: &http::uri::Authority, port: Option<u16>) -> bool {
    let text = authority.as_str();
    if text.contains('@') || text.ends_with(':') {
        return false;
    }
    let port_ok = match (authority.port_u16(), port) {
        (Some(given), Some(own)) => given == own,
        _ => true,
    };
    let host = authority.host();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
            .is_some_and(|ip| ip.is_loopback());
    port_ok && loopback
}

/// `http(s)://` and a loopback authority (any port: a tool on the node may
/// serve its page from its own port). `null` and anything else is foreign.
fn loopback_origin(origin: &http::HeaderValue) -> bool {
    let Some(uri) = origin
        .to_str()
        .ok()
        .and_then(|o| o.parse::<http::Uri>().ok())
    else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/")
        && uri.authority().is_some_and(|a| loopback_authority(a, None))
}

fn refused(admin: &Admin, refusal: Refusal) -> Response<Full<Bytes>> {
    let reason = refusal.reason();
    metrics::counter!("meshgate_admin_refused_total", "reason" => reason.name).increment(1);
    let code = admin
        .store
        .load()
        .error_codes
        .get(reason.name)
        .copied()
        .unwrap_or(reason.default_code);
    json(
        StatusCode::from_u16(reason.status).unwrap_or(StatusCode::FORBIDDEN),
        serde_json::json!({ "code": code, "error": reason.name, "message": refusal.message() }),
    )
}

/// Serves `listener` until it is handed over; `health_only` restricts it to
/// `/ready` and `/live`.
pub async fn serve(listener: Arc<TcpListener>, admin: Arc<Admin>, health_only: bool) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut stop = admin.stop_accepting.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    let rsp = match check(&req, port, health_only) {
                        Ok(()) => route(&admin, req, health_only).await,
                        Err(refusal) => {
                            tracing::warn!(
                                reason = refusal.reason().name,
                                method = %req.method(),
                                path = req.uri().path(),
                                "admin request refused"
                            );
                            refused(&admin, refusal)
                        }
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec_pretty(&value).unwrap_or_default(),
    )));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Why the sidecar is not ready, or `None` when it is.
fn not_ready_reason(admin: &Admin) -> Option<&'static str> {
    let snapshot = admin.store.load();
    let taking_over = admin.phase.get() == crate::phase::Phase::TakingOver;
    if admin.drain.is_draining() {
        Some("draining")
    } else if taking_over {
        Some("taking over from the previous process")
    } else if !snapshot.loaded {
        Some("no config loaded")
    } else if !admin
        .health
        .is_ready(snapshot.config.app.health_path.is_some())
    {
        Some("app not healthy")
    } else {
        None
    }
}

async fn route(admin: &Admin, req: Request<Incoming>, health_only: bool) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
        (Method::GET, "/ready") => {
            let phase = admin.phase.get().as_str();
            match not_ready_reason(admin) {
                None => json(
                    StatusCode::OK,
                    serde_json::json!({ "ready": true, "phase": phase, "pid": std::process::id() }),
                ),
                Some(reason) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "ready": false, "reason": reason, "phase": phase, "pid": std::process::id() }),
                ),
            }
        }
        _ if health_only => text(StatusCode::NOT_FOUND, "not found\n".into()),
        (Method::GET, "/metrics") => {
            crate::memory::record();
            let mut rsp = text(StatusCode::OK, admin.metrics.render());
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            rsp
        }
        (Method::GET, "/memory") => text(StatusCode::OK, crate::memory::report()),
        (Method::GET, "/config_dump") => {
            let s = admin.store.load();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "version": s.version,
                    "source": s.source,
                    "applied_at": humantime::format_rfc3339_seconds(s.applied_at).to_string(),
                    "loaded": s.loaded,
                    "config": s.config.spec.redacted(),
                    "last_rejected": admin.store.last_rejected(),
                }),
            )
        }
        (Method::POST, "/drain") => {
            tracing::info!("drain requested through the admin API");
            admin.drain.start();
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({ "draining": true, "active_connections": admin.drain.active_connections() }),
            )
        }
        (Method::POST, "/upgrade") => match &admin.successor {
            None => json(
                StatusCode::CONFLICT,
                serde_json::json!({ "error": "upgrade_unavailable", "message": "start meshgate with --upgrade-socket to upgrade in place" }),
            ),
            Some(successor) => match successor.spawn() {
                Ok(pid) => json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "upgrading": true, "new_pid": pid, "binary": successor.binary.display().to_string() }),
                ),
                Err(message) => json(
                    StatusCode::CONFLICT,
                    serde_json::json!({ "error": "upgrade_failed", "message": message }),
                ),
            },
        },
        (Method::GET, "/logging") => json(
            StatusCode::OK,
            serde_json::json!({ "level": admin.log_level.current() }),
        ),
        (Method::POST, "/logging") => {
            let from_query = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                .map(|s| s.replace("%2C", ",").replace("%3D", "="));
            let level = match from_query {
                Some(l) => l,
                None => match req.into_body().collect().await {
                    Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
                    Err(_) => String::new(),
                },
            };
            match admin.log_level.set(&level) {
                Ok(()) => {
                    tracing::info!(level = %level, "log level changed");
                    json(StatusCode::OK, serde_json::json!({ "level": level }))
                }
                Err(e) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "invalid_level", "message": e }),
                ),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "not_found", "endpoints": ["/ready", "/live", "/metrics", "/memory", "/config_dump", "POST /drain", "POST /upgrade", "GET|POST /logging?level="] }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_loopback_hosts_with_the_admin_port_or_none() {
        for host in [
            "localhost",
            "LOCALHOST:15000",
            "127.0.0.1",
            "127.0.0.1:15000",
            "127.3.2.1",
            "[::1]",
            "[::1]:15000",
        ] {
            let r = req("GET", "/config_dump", &[("host", host)]);
            assert_eq!(check(&r, 15000, false), Ok(()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:15000",
            "localhost.evil.example",
            "127.0.0.1.nip.io:15000",
            "localhost:8080",
            "127.0.0.1:",
            "user@127.0.0.1",
            "0.0.0.0:15000",
            "10.0.0.7:15000",
            "[::]:15000",
            "127.1",
            "2130706433",
            "",
        ] {
            let r = req("GET", "/config_dump", &[("host", host)]);
            assert_eq!(check(&r, 15000, false), Err(Refusal::Host), "{host:?}");
        }
        // No Host, two Hosts, or an absolute-form target naming another host.
        let none = req("GET", "/config_dump", &[]);
        assert_eq!(check(&none, 15000, false), Err(Refusal::Host));
        let two = req(
            "GET",
            "/config_dump",
            &[("host", "127.0.0.1"), ("host", "evil.example")],
        );
        assert_eq!(check(&two, 15000, false), Err(Refusal::Host));
        let absolute = req(
            "GET",
            "http://evil.example/config_dump",
            &[("host", "127.0.0.1")],
        );
        assert_eq!(check(&absolute, 15000, false), Err(Refusal::Host));
    }

    #[test]
    fn state_changes_need_the_admin_header_and_no_foreign_origin() {
        let host = ("host", "127.0.0.1:15000");
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = req(method, "/drain", &[host]);
            assert_eq!(check(&r, 15000, false), Err(Refusal::Header), "{method}");
            let empty = req(method, "/drain", &[host, (ADMIN_HEADER, "")]);
            assert_eq!(check(&empty, 15000, false), Err(Refusal::Header));
            let ok = req(method, "/drain", &[host, (ADMIN_HEADER, "1")]);
            assert_eq!(check(&ok, 15000, false), Ok(()));
        }
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "file://",
            "http://localhost/x",
        ] {
            let r = req(
                "POST",
                "/drain",
                &[host, (ADMIN_HEADER, "1"), ("origin", origin)],
            );
            assert_eq!(check(&r, 15000, false), Err(Refusal::Origin), "{origin}");
            let get = req("GET", "/config_dump", &[host, ("origin", origin)]);
            assert_eq!(check(&get, 15000, false), Err(Refusal::Origin), "{origin}");
        }
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1:15000",
            "https://[::1]",
        ] {
            let r = req(
                "POST",
                "/drain",
                &[host, (ADMIN_HEADER, "1"), ("origin", origin)],
            );
            assert_eq!(check(&r, 15000, false), Ok(()), "{origin}");
        }
        let cross = req(
            "GET",
            "/config_dump",
            &[host, ("sec-fetch-site", "cross-site")],
        );
        assert_eq!(check(&cross, 15000, false), Err(Refusal::Origin));
    }

    #[test]
    fn the_health_listener_takes_any_host_but_no_foreign_origin() {
        let probe = req("GET", "/ready", &[("host", "10.1.2.3:15021")]);
        assert_eq!(check(&probe, 15021, true), Ok(()));
        let page = req(
            "GET",
            "/ready",
            &[
                ("host", "10.1.2.3:15021"),
                ("origin", "http://evil.example"),
            ],
        );
        assert_eq!(check(&page, 15021, true), Err(Refusal::Origin));
    }
}
