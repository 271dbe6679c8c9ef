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

const fn r(name: &'static str, status: u16, default_code: u32) -> Reason {
    Reason {
        name,
        status,
        default_code,
    }
}

/// Every reason the sidecar and its filters can answer with. Filters add their
/// reasons here so the config can validate `error_codes` keys.
pub const REASONS: &[Reason] = &[
    // data path
    r("route_not_found", 404, 40401),
    r("header_too_large", 431, 43101),
    r("body_too_large", 413, 41301),
    r("bad_request", 400, 40001),
    // admission: the request is refused before routing
    r("bad_path", 400, 40010),
    r("bad_authority", 400, 40011),
    r("bad_header_name", 400, 40012),
    r("request_timeout", 408, 40801),
    r("upstream_unreachable", 502, 50201),
    r("upstream_error", 502, 50202),
    r("app_unhealthy", 503, 50301),
    r("upstream_timeout", 504, 50401),
    r("draining", 503, 50302),
    r("internal_error", 500, 50001),
    // header filter
    r("header_required", 400, 40002),
    r("header_forbidden", 403, 40301),
    r("method_not_allowed", 405, 40501),
    // signature filter
    r("signature_missing", 401, 40101),
    r("signature_invalid", 401, 40102),
    r("signature_expired", 401, 40103),
    r("signature_replayed", 401, 40104),
    r("unknown_key", 401, 40105),
    r("algorithm_not_allowed", 401, 40106),
    r("component_missing", 401, 40107),
    r("digest_mismatch", 401, 40108),
    r("signature_malformed", 400, 40003),
    r("replay_store_unavailable", 503, 50303),
    r("nonce_invalid", 400, 40030),
    r("nonce_limit_reached", 429, 42930),
    r("unsigned_body", 415, 41501),
    r("parameters_ambiguous", 400, 40041),
    // session filter
    r("login_required", 401, 40111),
    r("token_invalid", 401, 40112),
    r("token_expired", 401, 40113),
    r("session_expired", 401, 40114),
    r("session_revoked", 401, 40115),
    r("session_store_unavailable", 503, 50311),
    // rate-limit filter
    r("rate_limited", 429, 42901),
    r("rate_limit_store_unavailable", 503, 50321),
    // admin API (refused before any endpoint runs)
    r("admin_host_not_allowed", 403, 40331),
    r("admin_origin_not_allowed", 403, 40332),
    r("admin_header_required", 403, 40333),
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
    /// Stable snake_case reason; must be listed in [`REASONS`].
    pub reason: &'static str,
    /// Human-readable detail. Never contains secrets or raw credentials.
    pub message: Cow<'static, str>,
    /// Extra headers for the answer (for example `Retry-After`). Boxed so
    /// that a `Result<_, Rejection>` stays small on the path that continues.
    pub headers: Box<HeaderMap>,
}

impl Rejection {
    /// A rejection with the status registered for `reason`.
    pub fn new(reason: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let status = self::reason(reason)
            .and_then(|r| StatusCode::from_u16(r.status).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        debug_assert!(
            self::reason(reason).is_some(),
            "unregistered reason {reason}"
        );
        Rejection {
            status,
            reason,
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
            Rejection::new("rate_limited", "slow down").status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            Rejection::new("unknown_key", "x").status,
            StatusCode::UNAUTHORIZED
        );
    }
}
