//! The `RateLimit-Policy` and `RateLimit` response header fields
//! (draft-ietf-httpapi-ratelimit-headers), serialized as RFC 8941 lists:
//! `RateLimit-Policy: "per-client";q=100;w=1` and `RateLimit: "per-client";r=0;t=1`.

use http::{HeaderName, HeaderValue};
use sfv::{RefBareItem, RefListSerializer};

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

fn int(v: u64) -> RefBareItem<'static> {
    // sf-integer allows at most 15 digits.
    RefBareItem::Integer(v.min(999_999_999_999_999) as i64)
}

/// Both fields for `reports` (empty when nothing is reportable).
pub fn fields(reports: &[Report<'_>]) -> Vec<(HeaderName, HeaderValue)> {
    let mut policy_buf = String::new();
    let mut state_buf = String::new();
    for r in reports {
        let Some((q, w)) = policy(r.params) else {
            continue;
        };
        let t = r.reset_ns.div_ceil(1_000_000_000);
        // Names are validated as sf-string-safe; a failure just skips the item.
        let _ = RefListSerializer::new(&mut policy_buf)
            .bare_item(&RefBareItem::String(r.name))
            .and_then(|s| s.parameter("q", &int(q)))
            .and_then(|s| s.parameter("w", &int(w.max(1))));
        let _ = RefListSerializer::new(&mut state_buf)
            .bare_item(&RefBareItem::String(r.name))
            .and_then(|s| s.parameter("r", &int(r.remaining)))
            .and_then(|s| s.parameter("t", &int(t)));
    }
    let mut out = Vec::new();
    if let (Ok(p), Ok(s)) = (
        HeaderValue::from_str(&policy_buf),
        HeaderValue::from_str(&state_buf),
    ) {
        if !policy_buf.is_empty() {
            out.push((POLICY, p));
            out.push((STATE, s));
        }
    }
    out
}
