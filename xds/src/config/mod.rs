//! The config model shared by the sidecar (file and xDS) and the control plane.
//!
//! [`parse_yaml`] / [`parse_json`] read a [`ConfigSpec`]; [`validate`] checks
//! every field and returns the validated [`Config`] or every error with its
//! field path. The sidecar only ever applies a `Config`, so a bad file or push
//! never half-applies.

mod path;
mod spec;
mod validate;

pub use path::{normalize_path, PathError};
pub use spec::*;
pub use validate::{
    validate, App, AppAddress, Config, Inbound, MatchRule, PathMatch, RedisConfig, Responder,
    Route, RouteAction, Tls, MAX_XFF_TRUSTED_HOPS,
};

use meshgate_filters::{FieldError, FieldErrors};

/// Reads a YAML config; a syntax or shape error names the field it is at.
pub fn parse_yaml(text: &str) -> Result<ConfigSpec, FieldErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de)
        .map_err(|e| shape_error(e.path().to_string(), e.inner().to_string()))
}

/// Reads a JSON config (the shape the control plane stores and pushes).
pub fn parse_json(text: &str) -> Result<ConfigSpec, FieldErrors> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de)
        .map_err(|e| shape_error(e.path().to_string(), e.inner().to_string()))
}

fn shape_error(path: String, message: String) -> FieldErrors {
    let path = if path == "." || path.is_empty() {
        "(root)".to_string()
    } else {
        path
    };
    FieldError::new(path, message).into()
}

impl ConfigSpec {
    /// A copy safe for `/config_dump`, logs and the control plane's API:
    /// secrets in filters and credentials in URLs replaced.
    pub fn redacted(&self) -> ConfigSpec {
        let mut copy = self.clone();
        for spec in copy.filters.values_mut() {
            *spec = spec.redacted();
        }
        if let Some(egress) = &mut copy.egress {
            *egress = egress.redacted();
        }
        if let Some(redis) = &mut copy.redis {
            redis.url = redact_url(&redis.url);
        }
        copy
    }
}

/// Replaces the password of `scheme://user:password@host` URLs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!(
                "{}://{}:[redacted]@{}",
                &url[..scheme_end],
                user,
                &url[at + 1..]
            )
        }
        _ => url.to_string(),
    }
}
