//! `type: session` filter. Scaffolding: the spec, validated config and filter
//! types every filter module provides; the behaviour lands with its issue.

use serde::{Deserialize, Serialize};

use crate::chain::BuildCx;
use crate::config::{FieldErrors, ValidateCx};
use crate::context::RequestCtx;
use crate::filter::{Filter, RequestView, Verdict};

/// The file/wire spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {}

/// The validated config.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {}

impl SessionSpec {
    pub fn validate(&self, _path: &str, _cx: &ValidateCx) -> Result<SessionConfig, FieldErrors> {
        Ok(SessionConfig {})
    }

    /// A copy with secrets replaced, for dumps and logs.
    pub fn redacted(&self) -> Self {
        self.clone()
    }
}

impl SessionConfig {
    pub fn uses_redis(&self) -> bool {
        false
    }
}

pub struct SessionFilter {}

impl SessionFilter {
    pub fn build(_name: &str, _config: &SessionConfig, _cx: &BuildCx<'_>) -> Self {
        SessionFilter {}
    }
}

impl Filter for SessionFilter {
    async fn on_request(&self, _req: &mut RequestView<'_>, _cx: &mut RequestCtx) -> Verdict {
        Verdict::Continue
    }
}
