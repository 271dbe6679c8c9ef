//! What every rejection must carry, checked in one place.
//!
//! The sidecar answers every refused request with a status, a stable error
//! code and a JSON body, rendered by `sidecar/src/reply.rs`
//! (`docs/architecture.md`, the data path):
//!
//! ```json
//! {"error": "signature_invalid", "code": 1401, "message": "...", "request_id": "..."}
//! ```
//!
//! served as `application/json`, with the same request id in the
//! `x-request-id` header (answers of the admin API carry neither).
//! [`assert_error`] checks all of it; [`HttpResult::error`] gives just the
//! code, for a loop that waits for one.

use crate::HttpResult;

/// Fails the test unless `result` is a rejection with `status` and the
/// stable error code `code`: a JSON body (`application/json`) whose `error`
/// is `code`, whose `code` is a positive number and whose `message` is not
/// empty, and whose `request_id` is the `x-request-id` header (or both are
/// absent).
#[track_caller]
pub fn assert_error(result: &HttpResult, status: u16, code: &str) {
    assert_eq!(
        (result.status, result.error().as_str()),
        (status, code),
        "body: {}",
        result.text()
    );
    let body = result.json();
    assert!(
        body["code"].as_u64().is_some_and(|c| c > 0),
        "no numeric code: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
    assert_eq!(
        body["request_id"].as_str(),
        result.header("x-request-id"),
        "request id of the body and the header differ: {body}"
    );
    assert_eq!(
        result.header("content-type"),
        Some("application/json"),
        "{body}"
    );
}
