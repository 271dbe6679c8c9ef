//! The filter chain of the meshgate sidecar.
//!
//! A route names an ordered list of filter instances. For every request the
//! sidecar builds a [`RequestCtx`], runs each filter's [`Filter::on_request`]
//! in order and stops at the first rejection (`Err`). After the app answered,
//! [`Filter::on_response`] runs in reverse order.
//!
//! This crate knows nothing about listeners, routing or xDS. Each filter is one
//! module with its config (file/wire spec, validated config) and tests beside it.
#![forbid(unsafe_code)]

pub mod body;
pub mod chain;
pub mod config;
pub mod context;
pub mod error;
pub mod filter;
pub mod header;
pub mod rate_limit;
pub mod redact;
pub mod session;
pub mod signature;
pub mod state;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use body::{Body, BodyError, BodyProgress, BodyStalled};
pub use chain::{AnyFilter, BuildCx, Chain, NamedFilter};
pub use config::{FieldError, FieldErrors, FilterConfig, FilterSpec, ValidateCx};
pub use context::RequestCtx;
pub use error::Rejection;
pub use filter::{Filter, RequestView, ResponseView};
pub use state::State;

/// Prefix of the headers that carry verified identity to the app. Any copy a
/// client sends is removed before the filters run.
pub const IDENTITY_HEADER_PREFIX: &str = "x-meshgate-";
