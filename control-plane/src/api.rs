//! Errors of admin operations, rendered by the admin API as JSON.

use meshgate_filters::{FieldError, FieldErrors};
use serde::Serialize;

use crate::store::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

impl ApiError {
    fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
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
        tracing::error!(error = %e, "store write failed");
        Self::new(500, format!("store: {e}"))
    }
    pub fn invalid_config(errors: FieldErrors) -> Self {
        ApiError {
            status: 400,
            error: format!("invalid config: {errors}"),
            fields: errors.0,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.error)
    }
}
