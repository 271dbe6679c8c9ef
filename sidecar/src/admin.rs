//! The admin API (loopback only): readiness, liveness, metrics, config dump,
//! drain and the runtime log level. An optional health-only listener serves
//! `/ready` and `/live` for probes from outside the pod.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
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
    pub phase: Arc<std::sync::Mutex<String>>,
    /// Set when the admin sockets were handed over to a new process.
    pub stop_accepting: tokio::sync::watch::Sender<bool>,
    /// Starts the next process for `POST /upgrade` (needs `--upgrade-socket`).
    pub successor: Option<Arc<crate::upgrade::Successor>>,
}

/// Serves `listener` until it is handed over; `health_only` restricts it to
/// `/ready` and `/live`.
pub async fn serve(listener: Arc<TcpListener>, admin: Arc<Admin>, health_only: bool) {
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
                async move { Ok::<_, Infallible>(route(&admin, req, health_only).await) }
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
    let taking_over = admin
        .phase
        .lock()
        .map(|p| *p == crate::upgrade::TAKING_OVER)
        .unwrap_or(false);
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
            let phase = admin.phase.lock().map(|p| p.clone()).unwrap_or_default();
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
            let mut rsp = text(StatusCode::OK, admin.metrics.render());
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            rsp
        }
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
            serde_json::json!({ "error": "not_found", "endpoints": ["/ready", "/live", "/metrics", "/config_dump", "POST /drain", "POST /upgrade", "GET|POST /logging?level="] }),
        ),
    }
}
