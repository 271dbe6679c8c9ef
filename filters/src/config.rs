//! Filter configuration: the file/wire spec (serde) and the validated config.
//!
//! A spec is what a YAML file or a control-plane push contains. `validate`
//! turns it into a [`FilterConfig`] or a list of [`FieldError`]s naming each
//! bad field; only a fully valid config is ever built into filters, so a
//! failed validation never half-applies.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{header, rate_limit, session, signature};

/// One named filter instance as written in config, tagged by `type`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // built once per config load, never on the hot path
pub enum FilterSpec {
    Header(header::HeaderSpec),
    Signature(signature::SignatureSpec),
    Session(session::SessionSpec),
    RateLimit(rate_limit::RateLimitSpec),
}

/// A validated filter config, ready to build a filter from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per config load
pub enum FilterConfig {
    Header(header::HeaderConfig),
    Signature(signature::SignatureConfig),
    Session(session::SessionConfig),
    RateLimit(rate_limit::RateLimitConfig),
}

impl FilterSpec {
    /// Validates every field; `path` is the spec's location (e.g. `filters.verify`).
    pub fn validate(&self, path: &str, cx: &ValidateCx) -> Result<FilterConfig, FieldErrors> {
        match self {
            FilterSpec::Header(spec) => spec.validate(path, cx).map(FilterConfig::Header),
            FilterSpec::Signature(spec) => spec.validate(path, cx).map(FilterConfig::Signature),
            FilterSpec::Session(spec) => spec.validate(path, cx).map(FilterConfig::Session),
            FilterSpec::RateLimit(spec) => spec.validate(path, cx).map(FilterConfig::RateLimit),
        }
    }

    /// A copy safe to show in `/config_dump` and logs: secrets replaced.
    pub fn redacted(&self) -> FilterSpec {
        match self {
            FilterSpec::Header(spec) => FilterSpec::Header(spec.clone()),
            FilterSpec::Signature(spec) => FilterSpec::Signature(spec.redacted()),
            FilterSpec::Session(spec) => FilterSpec::Session(spec.redacted()),
            FilterSpec::RateLimit(spec) => FilterSpec::RateLimit(spec.redacted()),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            FilterSpec::Header(_) => "header",
            FilterSpec::Signature(_) => "signature",
            FilterSpec::Session(_) => "session",
            FilterSpec::RateLimit(_) => "rate_limit",
        }
    }
}

impl FilterConfig {
    /// Whether the filter needs the shared Redis store (`redis:` in the config).
    pub fn uses_redis(&self) -> bool {
        match self {
            FilterConfig::Header(_) => false,
            FilterConfig::Signature(c) => c.uses_redis(),
            FilterConfig::Session(c) => c.uses_redis(),
            FilterConfig::RateLimit(c) => c.uses_redis(),
        }
    }
}

/// What validation may consult besides the spec itself.
#[derive(Debug, Clone)]
pub struct ValidateCx {
    /// Relative file paths (key files, JWKS files) resolve against this.
    pub base_dir: PathBuf,
    /// Whether referenced files are read. The sidecar reads them (a missing
    /// file on this node is an error); the control plane checks structure only.
    pub read_files: bool,
}

impl ValidateCx {
    pub fn sidecar(base_dir: impl Into<PathBuf>) -> Self {
        ValidateCx {
            base_dir: base_dir.into(),
            read_files: true,
        }
    }

    pub fn control_plane() -> Self {
        ValidateCx {
            base_dir: PathBuf::from("."),
            read_files: false,
        }
    }

    pub fn resolve(&self, file: &Path) -> PathBuf {
        if file.is_absolute() {
            file.to_path_buf()
        } else {
            self.base_dir.join(file)
        }
    }

    /// Reads a referenced file, or `Ok(None)` when files are not read here.
    pub fn read_file(&self, path: &str, file: &Path) -> Result<Option<Vec<u8>>, FieldError> {
        if !self.read_files {
            return Ok(None);
        }
        let full = self.resolve(file);
        std::fs::read(&full)
            .map(Some)
            .map_err(|e| FieldError::new(path, format!("cannot read {}: {e}", full.display())))
    }
}

/// One invalid field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every error found in one config, in document order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    pub fn extend(&mut self, other: FieldErrors) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when no error was collected.
    pub fn into_result<T>(self, value: T) -> Result<T, FieldErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        FieldErrors(vec![e])
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// A listen address that only this host can reach: `127.0.0.0/8:PORT`,
/// `[::1]:PORT` or `localhost:PORT` (bound as 127.0.0.1). For listeners that
/// act with the pod's authority (the admin API; egress signs with the pod's
/// keys), so no other host can use them. `None` (with an error at `path`)
/// otherwise.
pub fn loopback_listen(value: &str, path: &str, errors: &mut FieldErrors) -> Option<SocketAddr> {
    let parsed = match value.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
        None => value.parse::<SocketAddr>().ok(),
    };
    match parsed {
        Some(addr) if addr.ip().is_loopback() => Some(addr),
        Some(_) => {
            errors.push(
                path,
                format!("{value:?} is not a loopback address: this listener serves only 127.0.0.0/8, [::1] or localhost"),
            );
            None
        }
        None => {
            errors.push(
                path,
                format!(
                    "{value:?} is not a loopback address of the form ip:port or localhost:port"
                ),
            );
            None
        }
    }
}
