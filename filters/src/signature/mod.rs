//! `type: signature` filter. Scaffolding: the spec, validated config and filter
//! types every filter module provides; the behaviour lands with its issue.

use serde::{Deserialize, Serialize};

use crate::chain::BuildCx;
use crate::config::{FieldErrors, ValidateCx};
use crate::context::RequestCtx;
use crate::filter::{Filter, RequestView, Verdict};

/// The file/wire spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {}

/// The validated config.
#[derive(Debug, Clone, Default)]
pub struct SignatureConfig {}

impl SignatureSpec {
    pub fn validate(&self, _path: &str, _cx: &ValidateCx) -> Result<SignatureConfig, FieldErrors> {
        Ok(SignatureConfig {})
    }

    /// A copy with secrets replaced, for dumps and logs.
    pub fn redacted(&self) -> Self {
        self.clone()
    }
}

impl SignatureConfig {
    pub fn uses_redis(&self) -> bool {
        false
    }
}

pub struct SignatureFilter {}

impl SignatureFilter {
    pub fn build(_name: &str, _config: &SignatureConfig, _cx: &BuildCx<'_>) -> Self {
        SignatureFilter {}
    }
}

impl Filter for SignatureFilter {
    async fn on_request(&self, _req: &mut RequestView<'_>, _cx: &mut RequestCtx) -> Verdict {
        Verdict::Continue
    }
}
