//! Errors of admin operations, rendered by the admin API as JSON.

use meshgate_filters::{FieldError, FieldErrors};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    /// A stable name for errors a client may act on (`store_unavailable`,
    /// `write_conflict`, `store_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

impl ApiError {
    fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            code: None,
            fields: vec![],
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, msg)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "missing or wrong bearer token")
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(404, msg)
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(409, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, msg)
    }
    pub fn store(e: StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        let (status, code, message) = match e {
            StoreError::Unavailable(_) => (
                503,
                "store_unavailable",
                format!("{e}: changes are refused until it answers; sidecars keep the versions they have"),
            ),
            _ => (500, "store_error", format!("store: {e}")),
        };
        ApiError {
            code: Some(code),
            ..Self::new(status, message)
        }
    }
    /// Concurrent writes kept winning over this one.
    pub fn write_conflict(msg: impl Into<String>) -> Self {
        ApiError {
            code: Some("write_conflict"),
            ..Self::new(409, msg)
        }
    }
    pub fn invalid_config(errors: FieldErrors) -> Self {
        ApiError {
            status: 400,
            error: format!("invalid config: {errors}"),
            code: None,
            fields: errors.0,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.error)
    }
}
