//! Filter instances and chains.

use std::sync::Arc;

use crate::config::FilterConfig;
use crate::context::RequestCtx;
use crate::error::Rejection;
use crate::filter::{Filter, RequestView, ResponseView};
use crate::header::HeaderFilter;
use crate::rate_limit::RateLimitFilter;
use crate::session::SessionFilter;
use crate::signature::SignatureFilter;
use crate::state::State;
use crate::store::RedisStore;

/// Every filter type, dispatched statically so the per-request futures are
/// not boxed.
#[allow(clippy::large_enum_variant)] // one per filter instance per config, not per request
pub enum AnyFilter {
    Header(HeaderFilter),
    Signature(SignatureFilter),
    Session(SessionFilter),
    RateLimit(RateLimitFilter),
}

/// Calls `$method` on whichever filter `$self` holds.
macro_rules! dispatch {
    ($self:expr, $f:ident => $body:expr) => {
        match $self {
            AnyFilter::Header($f) => $body,
            AnyFilter::Signature($f) => $body,
            AnyFilter::Session($f) => $body,
            AnyFilter::RateLimit($f) => $body,
        }
    };
}

impl AnyFilter {
    /// Builds the filter for instance `name`, binding its long-lived state
    /// (looked up in `cx.state` by a key that starts with `name`).
    pub fn build(name: &str, config: &FilterConfig, cx: &BuildCx<'_>) -> AnyFilter {
        match config {
            FilterConfig::Header(c) => AnyFilter::Header(HeaderFilter::new(c.clone())),
            FilterConfig::Signature(c) => AnyFilter::Signature(SignatureFilter::build(name, c, cx)),
            FilterConfig::Session(c) => AnyFilter::Session(SessionFilter::build(name, c, cx)),
            FilterConfig::RateLimit(c) => AnyFilter::RateLimit(RateLimitFilter::build(name, c, cx)),
        }
    }

    async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        dispatch!(self, f => f.on_request(req, cx).await)
    }

    async fn on_response(
        &self,
        rsp: &mut ResponseView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        dispatch!(self, f => f.on_response(rsp, cx).await)
    }

    fn has_response_phase(&self) -> bool {
        dispatch!(self, f => f.has_response_phase())
    }
}

/// What building a filter may use besides its validated config.
pub struct BuildCx<'a> {
    /// Long-lived state registry of this process.
    pub state: &'a State,
    /// The shared Redis store, when the config has a `redis:` section.
    pub redis: Option<Arc<RedisStore>>,
}

/// A filter instance with its config name.
pub struct NamedFilter {
    pub name: Arc<str>,
    pub filter: AnyFilter,
}

/// The ordered filters of one route.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Vec<Arc<NamedFilter>>,
    response_phase: bool,
}

impl Chain {
    pub fn new(filters: Vec<Arc<NamedFilter>>) -> Self {
        let response_phase = filters.iter().any(|f| f.filter.has_response_phase());
        Chain {
            filters,
            response_phase,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether any filter needs the response phase.
    pub fn has_response_phase(&self) -> bool {
        self.response_phase
    }

    /// Runs the request phase; the first rejection wins.
    pub async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        for f in &self.filters {
            match f.filter.on_request(req, cx).await {
                Ok(()) => cx.verdicts.push((f.name.clone(), "pass")),
                Err(rejection) => {
                    cx.verdicts.push((f.name.clone(), rejection.reason));
                    record_rejection(&f.name, rejection.reason);
                    return Err(rejection);
                }
            }
        }
        Ok(())
    }

    /// Runs the response phase in reverse order.
    pub async fn on_response(
        &self,
        rsp: &mut ResponseView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        if !self.response_phase {
            return Ok(());
        }
        for f in self.filters.iter().rev() {
            if let Err(rejection) = f.filter.on_response(rsp, cx).await {
                cx.verdicts.push((f.name.clone(), rejection.reason));
                record_rejection(&f.name, rejection.reason);
                return Err(rejection);
            }
        }
        Ok(())
    }
}

fn record_rejection(filter: &str, reason: &'static str) {
    metrics::counter!(
        "meshgate_filter_rejections_total",
        "filter" => filter.to_string(),
        "reason" => reason
    )
    .increment(1);
}
