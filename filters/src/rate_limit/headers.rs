//! The `RateLimit-Policy` and `RateLimit` response header fields
//! (draft-ietf-httpapi-ratelimit-headers), serialized as RFC 8941 lists:
//! `RateLimit-Policy: "per-client";q=100;w=1` and `RateLimit: "per-client";r=0;t=1`.

use http::{HeaderName, HeaderValue};
use sfv::{key_ref, Integer, ListSerializer, StringRef};

use super::spec::Params;
use super::Report;

pub const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const STATE: HeaderName = HeaderName::from_static("ratelimit");

/// Quota and window (seconds) of a policy; `None` for concurrency limits,
/// which have no time window to report.
fn policy(params: Params) -> Option<(u64, u64)> {
    match params {
        Params::Window { limit, window_ns } => Some((limit, window_ns.div_ceil(1_000_000_000))),
        Params::Bucket {
            quota, period_ns, ..
        } => Some((quota, period_ns.div_ceil(1_000_000_000))),
        Params::Concurrency { .. } => None,
    }
}

fn int(v: u64) -> Integer {
    // sf-integer allows at most 15 digits.
    Integer::try_from(v).unwrap_or(Integer::MAX)
}

/// Both fields for `reports` (empty when nothing is reportable).
pub fn fields(reports: &[Report<'_>]) -> Vec<(HeaderName, HeaderValue)> {
    let mut policy_list = ListSerializer::new();
    let mut state_list = ListSerializer::new();
    for r in reports {
        let Some((q, w)) = policy(r.params) else {
            continue;
        };
        // Names are validated as sf-string-safe; one that is not is skipped.
        let Ok(name) = StringRef::from_str(r.name) else {
            continue;
        };
        let t = r.reset_ns.div_ceil(1_000_000_000);
        let _ = policy_list
            .bare_item(name)
            .parameter(key_ref("q"), int(q))
            .parameter(key_ref("w"), int(w.max(1)));
        let _ = state_list
            .bare_item(name)
            .parameter(key_ref("r"), int(r.remaining))
            .parameter(key_ref("t"), int(t));
    }
    let mut out = Vec::new();
    if let (Some(p), Some(s)) = (policy_list.finish(), state_list.finish()) {
        if let (Ok(p), Ok(s)) = (HeaderValue::try_from(p), HeaderValue::try_from(s)) {
            out.push((POLICY, p));
            out.push((STATE, s));
        }
    }
    out
}
