//! Answers the sidecar produces itself: the JSON error body and mock routes.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response};
use indexmap::IndexMap;
use meshgate_filters::{Body, Rejection};
use meshgate_xds::config::Responder;

/// `{"code": <int>, "error": "<reason>", "message": "...", "request_id": "..."}`
pub fn rejection(
    rej: Rejection,
    codes: &IndexMap<&'static str, u32>,
    request_id: &str,
) -> Response<Body> {
    let code = codes
        .get(rej.reason)
        .copied()
        .or_else(|| meshgate_filters::error::reason(rej.reason).map(|r| r.default_code))
        .unwrap_or(0);
    let body = serde_json::json!({
        "code": code,
        "error": rej.reason,
        "message": rej.message,
        "request_id": request_id,
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut rsp = Response::new(Body::full(bytes.clone()));
    *rsp.status_mut() = rej.status;
    let headers = rsp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    for (name, value) in rej.headers.iter() {
        headers.append(name.clone(), value.clone());
    }
    rsp
}

/// The configured answer of a mock route.
pub fn mock(responder: &Responder) -> Response<Body> {
    let body = Bytes::copy_from_slice(responder.body.as_bytes());
    let mut rsp = Response::new(Body::full(body.clone()));
    *rsp.status_mut() = responder.status;
    let headers = rsp.headers_mut();
    for (name, value) in &responder.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    rsp
}
