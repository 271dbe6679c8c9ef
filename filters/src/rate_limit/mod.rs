//! `type: rate_limit` filter. Scaffolding: the spec, validated config and filter
//! types every filter module provides; the behaviour lands with its issue.

use serde::{Deserialize, Serialize};

use crate::chain::BuildCx;
use crate::config::{FieldErrors, ValidateCx};
use crate::context::RequestCtx;
use crate::filter::{Filter, RequestView, Verdict};

/// The file/wire spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {}

/// The validated config.
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {}

impl RateLimitSpec {
    pub fn validate(&self, _path: &str, _cx: &ValidateCx) -> Result<RateLimitConfig, FieldErrors> {
        Ok(RateLimitConfig {})
    }

    /// A copy with secrets replaced, for dumps and logs.
    pub fn redacted(&self) -> Self {
        self.clone()
    }
}

impl RateLimitConfig {
    pub fn uses_redis(&self) -> bool {
        false
    }
}

pub struct RateLimitFilter {}

impl RateLimitFilter {
    pub fn build(_name: &str, _config: &RateLimitConfig, _cx: &BuildCx<'_>) -> Self {
        RateLimitFilter {}
    }
}

impl Filter for RateLimitFilter {
    async fn on_request(&self, _req: &mut RequestView<'_>, _cx: &mut RequestCtx) -> Verdict {
        Verdict::Continue
    }
}
