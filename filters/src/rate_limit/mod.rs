//! `type: rate_limit`: request rate and concurrency limits.
//!
//! ```yaml
//! filters:
//!   limit:
//!     type: rate_limit
//!     response_headers: true          # RateLimit-Policy / RateLimit on every response
//!     rules:
//!       - { name: per-client, key: [client_id], algorithm: token_bucket, rate: 100/s, burst: 200 }
//!       - { name: api-total, key: [route], algorithm: fixed_window, limit: 5000, window: 1s,
//!           scope: global, on_store_error: local_fallback }
//!       - { name: in-flight, key: [route], algorithm: concurrency, max: 64 }
//! ```
//!
//! Every rule whose key can be built must admit the request; the first one
//! that rejects answers 429 `rate_limited` and units already taken from the
//! other rules are given back. Shadow rules count and report but never block.
//! See `docs/rate-limit.md`.

mod global;
mod headers;
mod keymap;
mod local;
mod spec;
mod state;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

pub use spec::{
    AlgorithmName, BucketLimit, BucketOverride, ConcurrencyLimit, ConcurrencyOverride, GlobalSpec,
    KeyPart, KeySpec, LimitSpec, Params, Rate, RateLimitConfig, RateLimitSpec, RuleConfig,
    RuleName, RuleSpec, Scope, ScopeSpec, StoreErrorMode, Window, WindowLimit, WindowOverride,
};

use crate::chain::BuildCx;
use crate::context::RequestCtx;
use crate::error::{Reason, Rejection};
use crate::filter::{Filter, RequestView};
use crate::store::RedisStore;
use global::{GlobalOutcome, GlobalRule, LeaseCell, Peers};
use keymap::KeyMap;
use local::{Cell, ConcurrencyPermit, Outcome};
use state::RuleState;

// The reasons this filter answers with (listed in `crate::error::REASONS`).
pub const RATE_LIMITED: Reason = Reason::new("rate_limited", 429, 42901);
pub const RATE_LIMIT_STORE_UNAVAILABLE: Reason =
    Reason::new("rate_limit_store_unavailable", 503, 50321);

/// Wall-clock nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Metric handles of one rule, registered once per build.
pub(crate) struct RuleMetrics {
    allowed: metrics::Counter,
    limited: metrics::Counter,
    shadow_limited: metrics::Counter,
    pub(crate) fallback: metrics::Counter,
    pub(crate) lease_size: metrics::Gauge,
}

impl RuleMetrics {
    fn new(filter: &str, rule: &str) -> Self {
        let labels = [("filter", filter.to_string()), ("rule", rule.to_string())];
        RuleMetrics {
            allowed: metrics::counter!("meshgate_ratelimit_allowed_total", &labels),
            limited: metrics::counter!("meshgate_ratelimit_limited_total", &labels),
            shadow_limited: metrics::counter!("meshgate_ratelimit_shadow_limited_total", &labels),
            fallback: metrics::counter!("meshgate_ratelimit_fallback_activations_total", &labels),
            lease_size: metrics::gauge!("meshgate_ratelimit_lease_size", &labels),
        }
    }
}

/// Where a rule keeps its counts.
#[derive(Clone)]
pub(crate) enum Backend {
    Local(Arc<KeyMap<Cell>>),
    Global(Arc<GlobalRule>),
}

struct Rule {
    config: RuleConfig,
    backend: Backend,
    metrics: RuleMetrics,
}

impl Rule {
    /// The key of this request, or `None` when a descriptor is missing (the
    /// rule then does not apply). Several descriptors are joined with `|`.
    fn key<'a>(&self, req: &'a RequestView<'_>, cx: &'a RequestCtx) -> Option<Cow<'a, str>> {
        // The common single-descriptor key borrows instead of allocating.
        if let [part] = self.config.key.as_slice() {
            return match part {
                KeyPart::Route => Some(Cow::Borrowed(&*cx.route)),
                KeyPart::ClientId => cx.client_id.as_deref().map(Cow::Borrowed),
                KeyPart::User => cx.user.as_deref().map(Cow::Borrowed),
                KeyPart::ClientIp => Some(Cow::Owned(cx.client_ip.to_string())),
                KeyPart::Header(name) => req
                    .head
                    .headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes())),
                KeyPart::FilterHeader(name) => cx
                    .upstream_header(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes())),
            };
        }
        let mut key = String::new();
        for (i, part) in self.config.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            match part {
                KeyPart::Route => key.push_str(&cx.route),
                KeyPart::ClientId => key.push_str(cx.client_id.as_deref()?),
                KeyPart::User => key.push_str(cx.user.as_deref()?),
                KeyPart::ClientIp => {
                    use std::fmt::Write;
                    let _ = write!(key, "{}", cx.client_ip);
                }
                KeyPart::Header(name) => {
                    let v = req.head.headers.get(name)?;
                    key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                KeyPart::FilterHeader(name) => {
                    let v = cx.upstream_header(name)?;
                    key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
        }
        Some(Cow::Owned(key))
    }
}

/// A unit taken from a rule, kept until every rule has admitted.
enum Taken {
    Local {
        cell: Arc<Cell>,
        params: Params,
        sliding: bool,
    },
    Lease(Arc<LeaseCell>),
}

/// What one rule reported, for the `RateLimit` header fields.
pub(crate) struct Report<'a> {
    pub name: &'a str,
    pub params: Params,
    pub remaining: u64,
    pub reset_ns: u64,
}

pub struct RateLimitFilter {
    rules: Vec<Rule>,
    response_headers: bool,
    redis: Option<Arc<RedisStore>>,
}

impl RateLimitFilter {
    pub fn build(name: &str, config: &RateLimitConfig, cx: &BuildCx<'_>) -> Self {
        let peers = if config.uses_redis() {
            let peers = cx
                .state
                .get_or_insert(&format!("{name}#peers"), || Peers::new(name));
            peers.set_store(cx.redis.clone());
            Some(peers)
        } else {
            None
        };
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                let state = cx
                    .state
                    .get_or_insert(&format!("{name}/{}", rule.name), RuleState::default);
                Rule {
                    backend: state.bind(name, rule, peers.as_ref()),
                    metrics: RuleMetrics::new(name, &rule.name),
                    config: rule.clone(),
                }
            })
            .collect();
        RateLimitFilter {
            rules,
            response_headers: config.response_headers,
            redis: cx.redis.clone(),
        }
    }

    fn refund(taken: Vec<Taken>, now_ns: u64) {
        for t in taken {
            match t {
                Taken::Local {
                    cell,
                    params,
                    sliding,
                } => local::refund(&cell, params, now_ns, sliding),
                Taken::Lease(cell) => cell.refund(now_ns),
            }
        }
    }
}

impl Filter for RateLimitFilter {
    async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let now = now_ns();
        let now_s = now / 1_000_000_000;
        let mut taken: Vec<Taken> = Vec::new();
        let mut reports: Vec<Report<'_>> = Vec::new();
        // Rules that admitted (at most MAX_RULES, so a bit set suffices).
        let mut passed: u64 = 0;
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(key) = rule.key(req, cx) else {
                continue;
            };
            let params = rule.config.params_for(&key);
            let sliding = rule.config.algorithm == AlgorithmName::SlidingWindow;
            let outcome = match &rule.backend {
                Backend::Local(map) => {
                    let cell = map.get_or_insert(&key, now_s, Cell::default);
                    cell.seen.touch(now_s);
                    let o = match params {
                        Params::Window { limit, window_ns } if sliding => {
                            local::sliding_acquire(&cell, limit, window_ns, now)
                        }
                        _ => local::acquire(&cell, params, now),
                    };
                    if matches!(o, Outcome::Admit { .. }) {
                        taken.push(Taken::Local {
                            cell,
                            params,
                            sliding,
                        });
                    }
                    o
                }
                Backend::Global(g) => {
                    match g
                        .acquire(
                            &rule.config,
                            &rule.metrics,
                            self.redis.as_deref(),
                            &key,
                            params,
                            now,
                        )
                        .await
                    {
                        GlobalOutcome::Decided(o, lease) => {
                            if let (Outcome::Admit { .. }, Some(cell)) = (o, lease) {
                                taken.push(Taken::Lease(cell));
                            }
                            o
                        }
                        GlobalOutcome::StoreUnavailable => {
                            rule.metrics.limited.increment(1);
                            Self::refund(taken, now);
                            return Err(Rejection::new(
                                &RATE_LIMIT_STORE_UNAVAILABLE,
                                format!(
                                    "rate limit {:?} cannot be checked right now",
                                    rule.config.name
                                ),
                            ));
                        }
                    }
                }
            };
            match outcome {
                Outcome::Admit {
                    remaining,
                    reset_ns,
                } => {
                    passed |= 1 << index;
                    if self.response_headers {
                        reports.push(Report {
                            name: &rule.config.name,
                            params,
                            remaining,
                            reset_ns,
                        });
                    }
                }
                Outcome::Reject { retry_ns, reset_ns } => {
                    let report = Report {
                        name: &rule.config.name,
                        params,
                        remaining: 0,
                        reset_ns,
                    };
                    if rule.config.shadow {
                        rule.metrics.shadow_limited.increment(1);
                        if self.response_headers {
                            reports.push(report);
                        }
                        continue;
                    }
                    rule.metrics.limited.increment(1);
                    Self::refund(taken, now);
                    let mut rejection = Rejection::new(
                        &RATE_LIMITED,
                        format!("rate limit {:?} exceeded", rule.config.name),
                    );
                    let retry_s = retry_ns.div_ceil(1_000_000_000).max(1);
                    rejection = rejection
                        .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_s));
                    for (name, value) in headers::fields(&[report]) {
                        rejection = rejection.with_header(name, value);
                    }
                    return Err(rejection);
                }
            }
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if passed & (1 << index) != 0 {
                rule.metrics.allowed.increment(1);
            }
        }
        for t in taken {
            if let Taken::Local {
                cell,
                params: Params::Concurrency { .. },
                ..
            } = t
            {
                cx.hold(ConcurrencyPermit(cell));
            }
        }
        if self.response_headers {
            cx.response_headers.extend(headers::fields(&reports));
        }
        Ok(())
    }
}

#[cfg(test)]
mod redis_tests;
#[cfg(test)]
mod tests;
