//! The admin REST API (JSON over HTTP/1.1, bearer token).
//!
//! ```text
//! GET  /healthz                                   (no token)
//! GET  /v1/services
//! PUT  /v1/services/{s}/config[?canary=10%|?labels=k=v,k2=v2]   body: JSON or YAML config
//! GET  /v1/services/{s}/history
//! GET  /v1/services/{s}/versions/{v}
//! GET  /v1/services/{s}/diff?from=A&to=B          (text/x-diff)
//! POST /v1/services/{s}/rollback?to=V
//! POST /v1/services/{s}/promote
//! POST /v1/services/{s}/abort
//! GET  /v1/status[?service=s]
//! GET  /metrics                                   (Prometheus text)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use meshgate_xds::config::{parse_json, parse_yaml};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::api::ApiError;
use crate::rollout::Selector;
use crate::ControlPlane;

/// Largest accepted request body (a config).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The admin bearer token, kept as its SHA-256 digest: comparing digests in
/// constant time reveals neither the token's bytes nor its length.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        AdminToken(Arc::new(sha256(token.as_bytes())))
    }

    pub fn matches(&self, presented: &str) -> bool {
        bool::from(sha256(presented.as_bytes()).ct_eq(&*self.0))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Serves the admin API until the listener fails. `token: None` (only with
/// `--insecure-no-admin-token`) accepts every request.
pub async fn serve(
    listener: TcpListener,
    cp: Arc<ControlPlane>,
    token: Option<AdminToken>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let cp = cp.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let cp = cp.clone();
                let token = token.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&cp, token.as_ref(), req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds and serves on `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    rsp
}

fn error(e: &ApiError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, e)
}

fn authorized(req: &Request<Incoming>, token: Option<&AdminToken>) -> bool {
    let Some(want) = token else { return true };
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| want.matches(got))
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` and `+` in a query value; malformed escapes stay literal.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let decoded = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok());
            if let Some(d) = decoded {
                out.push(d);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_body(req: Request<Incoming>) -> Result<(Option<String>, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?
        .to_bytes();
    Ok((content_type, body))
}

async fn handle(
    cp: &ControlPlane,
    token: Option<&AdminToken>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match route(cp, token, req).await {
        Ok(rsp) => rsp,
        Err(e) => error(&e),
    }
}

async fn route(
    cp: &ControlPlane,
    token: Option<&AdminToken>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if method == Method::GET && segments == ["healthz"] {
        return Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" })));
    }
    if !authorized(&req, token) {
        return Err(ApiError::unauthorized());
    }
    match (&method, segments.as_slice()) {
        (&Method::GET, ["metrics"]) => {
            let mut rsp = Response::new(Full::new(Bytes::from(cp.metrics_text())));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(rsp)
        }
        (&Method::GET, ["v1", "services"]) => Ok(json(StatusCode::OK, &cp.services())),
        (&Method::GET, ["v1", "status"]) => {
            let service = query_param(&req, "service");
            Ok(json(StatusCode::OK, &cp.status(service.as_deref()).await?))
        }
        (&Method::PUT, ["v1", "services", service, "config"]) => {
            let service = service.to_string();
            let selector = match (query_param(&req, "canary"), query_param(&req, "labels")) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(
                        "use either canary or labels, not both",
                    ))
                }
                (Some(p), None) => Some(Selector::percent(&p).map_err(ApiError::bad_request)?),
                (None, Some(l)) => Some(Selector::labels(&l).map_err(ApiError::bad_request)?),
                (None, None) => None,
            };
            let (content_type, body) = read_body(req).await?;
            let text = std::str::from_utf8(&body)
                .map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
            let yaml = content_type.is_some_and(|t| t.contains("yaml"));
            let spec = if yaml {
                parse_yaml(text)
            } else {
                parse_json(text)
            }
            .map_err(ApiError::invalid_config)?;
            let result = cp.push(&service, spec, selector).await?;
            Ok(json(StatusCode::OK, &result))
        }
        (&Method::GET, ["v1", "services", service, "history"]) => {
            Ok(json(StatusCode::OK, &cp.history(service)?))
        }
        (&Method::GET, ["v1", "services", service, "versions", version]) => {
            Ok(json(StatusCode::OK, &cp.version(service, version)?))
        }
        (&Method::GET, ["v1", "services", service, "diff"]) => {
            let from =
                query_param(&req, "from").ok_or_else(|| ApiError::bad_request("missing ?from="))?;
            let to =
                query_param(&req, "to").ok_or_else(|| ApiError::bad_request("missing &to="))?;
            let diff = cp.diff(service, &from, &to)?;
            let mut rsp = Response::new(Full::new(Bytes::from(diff)));
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/x-diff; charset=utf-8"),
            );
            Ok(rsp)
        }
        (&Method::POST, ["v1", "services", service, "rollback"]) => {
            let to = query_param(&req, "to")
                .ok_or_else(|| ApiError::bad_request("missing ?to=VERSION"))?;
            Ok(json(StatusCode::OK, &cp.rollback(service, &to).await?))
        }
        (&Method::POST, ["v1", "services", service, "promote"]) => {
            Ok(json(StatusCode::OK, &cp.promote(service).await?))
        }
        (&Method::POST, ["v1", "services", service, "abort"]) => {
            Ok(json(StatusCode::OK, &cp.abort(service).await?))
        }
        _ => Err(ApiError::not_found(format!("no route {method} {path}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, AdminToken};

    #[test]
    fn admin_token_matches_only_itself() {
        let token = AdminToken::new("s3cret-admin-token");
        assert!(token.matches("s3cret-admin-token"));
        for wrong in [
            "",
            "s3cret-admin-toke",
            "s3cret-admin-token ",
            "S3CRET-ADMIN-TOKEN",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("10%25"), "10%");
        assert_eq!(percent_decode("zone%3Da%2Cx%3Dy"), "zone=a,x=y");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
