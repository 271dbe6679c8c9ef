//! Rejections and the registry of stable error reasons.
//!
//! Every answer the sidecar produces itself is rendered as
//! `{"code": <int>, "error": "<reason>", "message": "...", "request_id": "..."}`.
//! The reason is a stable snake_case string; the numeric code defaults to the
//! value in [`REASONS`] and can be overridden per reason in the config
//! (`error_codes:`), following the mobile-gateway convention of custom codes.

use std::borrow::Cow;

use http::{HeaderMap, StatusCode};

/// A stable error reason, its HTTP status and its default numeric code.
#[derive(Debug, Clone, Copy)]
pub struct Reason {
    pub name: &'static str,
    pub status: u16,
    pub default_code: u32,
}

impl Reason {
    pub const fn new(name: &'static str, status: u16, default_code: u32) -> Reason {
        Reason {
            name,
            status,
            default_code,
        }
    }
}

// Reasons of the data path, admission and the admin API; each filter declares
// its own in its module.
// data path
pub const ROUTE_NOT_FOUND: Reason = Reason::new("route_not_found", 404, 40401);
pub const HEADER_TOO_LARGE: Reason = Reason::new("header_too_large", 431, 43101);
pub const BODY_TOO_LARGE: Reason = Reason::new("body_too_large", 413, 41301);
pub const BAD_REQUEST: Reason = Reason::new("bad_request", 400, 40001);
// admission: the request is refused before routing
pub const BAD_PATH: Reason = Reason::new("bad_path", 400, 40010);
pub const BAD_AUTHORITY: Reason = Reason::new("bad_authority", 400, 40011);
pub const BAD_HEADER_NAME: Reason = Reason::new("bad_header_name", 400, 40012);
pub const REQUEST_TIMEOUT: Reason = Reason::new("request_timeout", 408, 40801);
pub const UPSTREAM_UNREACHABLE: Reason = Reason::new("upstream_unreachable", 502, 50201);
pub const UPSTREAM_ERROR: Reason = Reason::new("upstream_error", 502, 50202);
pub const APP_UNHEALTHY: Reason = Reason::new("app_unhealthy", 503, 50301);
pub const UPSTREAM_TIMEOUT: Reason = Reason::new("upstream_timeout", 504, 50401);
pub const DRAINING: Reason = Reason::new("draining", 503, 50302);
pub const INTERNAL_ERROR: Reason = Reason::new("internal_error", 500, 50001);
// admin API (refused before any endpoint runs)
pub const ADMIN_HOST_NOT_ALLOWED: Reason = Reason::new("admin_host_not_allowed", 403, 40331);
pub const ADMIN_ORIGIN_NOT_ALLOWED: Reason = Reason::new("admin_origin_not_allowed", 403, 40332);
pub const ADMIN_HEADER_REQUIRED: Reason = Reason::new("admin_header_required", 403, 40333);

/// Every reason the sidecar and its filters can answer with, so the config can
/// validate `error_codes` keys. A filter's new reason constant must be added
/// here too.
pub const REASONS: &[Reason] = &[
    // data path
    ROUTE_NOT_FOUND,
    HEADER_TOO_LARGE,
    BODY_TOO_LARGE,
    BAD_REQUEST,
    // admission: the request is refused before routing
    BAD_PATH,
    BAD_AUTHORITY,
    BAD_HEADER_NAME,
    REQUEST_TIMEOUT,
    UPSTREAM_UNREACHABLE,
    UPSTREAM_ERROR,
    APP_UNHEALTHY,
    UPSTREAM_TIMEOUT,
    DRAINING,
    INTERNAL_ERROR,
    // header filter
    crate::header::HEADER_REQUIRED,
    crate::header::HEADER_FORBIDDEN,
    crate::header::METHOD_NOT_ALLOWED,
    // signature filter
    crate::signature::SIGNATURE_MISSING,
    crate::signature::SIGNATURE_INVALID,
    crate::signature::SIGNATURE_EXPIRED,
    crate::signature::SIGNATURE_REPLAYED,
    crate::signature::UNKNOWN_KEY,
    crate::signature::ALGORITHM_NOT_ALLOWED,
    crate::signature::COMPONENT_MISSING,
    crate::signature::DIGEST_MISMATCH,
    crate::signature::SIGNATURE_MALFORMED,
    crate::signature::REPLAY_STORE_UNAVAILABLE,
    crate::signature::NONCE_INVALID,
    crate::signature::NONCE_LIMIT_REACHED,
    crate::signature::UNSIGNED_BODY,
    crate::signature::PARAMETERS_AMBIGUOUS,
    // session filter
    crate::session::LOGIN_REQUIRED,
    crate::session::TOKEN_INVALID,
    crate::session::TOKEN_EXPIRED,
    crate::session::SESSION_EXPIRED,
    crate::session::SESSION_REVOKED,
    crate::session::SESSION_STORE_UNAVAILABLE,
    // rate-limit filter
    crate::rate_limit::RATE_LIMITED,
    crate::rate_limit::RATE_LIMIT_STORE_UNAVAILABLE,
    // admin API (refused before any endpoint runs)
    ADMIN_HOST_NOT_ALLOWED,
    ADMIN_ORIGIN_NOT_ALLOWED,
    ADMIN_HEADER_REQUIRED,
];

/// Looks a reason up by name.
pub fn reason(name: &str) -> Option<&'static Reason> {
    REASONS.iter().find(|r| r.name == name)
}

/// A filter's (or the data path's) decision to answer the client now instead
/// of calling the app. Rendered to JSON by the sidecar.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub status: StatusCode,
    /// The name of the [`Reason`] it was built from.
    pub reason: &'static str,
    /// Human-readable detail. Never contains secrets or raw credentials.
    pub message: Cow<'static, str>,
    /// Extra headers for the answer (for example `Retry-After`). Boxed so
    /// that a `Result<_, Rejection>` stays small on the path that continues.
    pub headers: Box<HeaderMap>,
}

impl Rejection {
    /// A rejection with `reason`'s status. Taking the constant (not a name)
    /// means an unregistered reason cannot compile.
    pub fn new(reason: &'static Reason, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            status: StatusCode::from_u16(reason.status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            reason: reason.name,
            message: message.into(),
            headers: Box::default(),
        }
    }

    /// The same rejection with another status (for example 400 for malformed
    /// input of a reason that is usually 401).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reasons_and_codes_are_unique() {
        let names: HashSet<_> = REASONS.iter().map(|r| r.name).collect();
        let codes: HashSet<_> = REASONS.iter().map(|r| r.default_code).collect();
        assert_eq!(names.len(), REASONS.len());
        assert_eq!(codes.len(), REASONS.len());
    }

    #[test]
    fn rejection_takes_registered_status() {
        assert_eq!(
            Rejection::new(&crate::rate_limit::RATE_LIMITED, "slow down").status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            Rejection::new(&crate::signature::UNKNOWN_KEY, "x").status,
            StatusCode::UNAUTHORIZED
        );
    }
}
