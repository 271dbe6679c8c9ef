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
/// Read by hand (see [`shape`]) so that errors inside keep their paths.
#[derive(Debug, Clone, Serialize, PartialEq)]
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

impl<'de> Deserialize<'de> for FilterSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = shape::object(d)?;
        let kind = shape::keyword(&mut fields, "type")?;
        let rest = shape::rest(fields);
        match kind.as_deref() {
            Some("header") => shape::read(rest).map(FilterSpec::Header),
            Some("signature") => shape::read(rest).map(FilterSpec::Signature),
            Some("session") => shape::read(rest).map(FilterSpec::Session),
            Some("rate_limit") => shape::read(rest).map(FilterSpec::RateLimit),
            _ => Err(shape::at(
                "type",
                "expected header, signature, session or rate_limit",
            )),
        }
    }
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

/// Typed specs are read in two steps where serde alone loses a field's path
/// (a tag chosen by one field, fields shared by all variants): the value is
/// buffered (as a YAML value, which keeps the order of maps), then its parts
/// are read with their paths tracked. An
/// error found below the value travels up as a message of the form
/// ``at `rules[0].window`: ...``, and [`shape_error`] joins it to the path of
/// the value, so every error names its whole field path.
pub mod shape {
    use std::fmt::Display;

    use serde::de::{DeserializeOwned, Error};
    use serde::Deserialize;
    use serde_yaml::{Mapping, Value};

    use super::FieldError;

    /// An object being taken apart field by field.
    pub type Fields = Mapping;

    /// An object, fields set to `null` left out (as serde reads a missing
    /// `Option`).
    pub fn object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        let mut fields = Fields::deserialize(d)?;
        fields.retain(|_, v| !v.is_null());
        Ok(fields)
    }

    /// The object's remaining fields as a value to read.
    pub fn rest(fields: Fields) -> Value {
        Value::Mapping(fields)
    }

    /// An error at `field` below the value being read.
    pub fn at<E: Error>(field: &str, message: impl Display) -> E {
        nested("", field, &message.to_string())
    }

    /// Reads `T` from `value`; an error keeps its path below the value.
    pub fn read<T: DeserializeOwned, E: Error>(value: Value) -> Result<T, E> {
        read_at("", value)
    }

    /// Reads `T` from `value`, the value of `field`.
    pub fn read_at<T: DeserializeOwned, E: Error>(field: &str, value: Value) -> Result<T, E> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            nested(
                field,
                if path == "." { "" } else { &path },
                &e.inner().to_string(),
            )
        })
    }

    /// Moves the fields named in `names` out of `fields` and reads them as `T`.
    pub fn take<T: DeserializeOwned, E: Error>(
        fields: &mut Fields,
        names: &[&str],
    ) -> Result<T, E> {
        let part: Fields = names
            .iter()
            .filter_map(|n| fields.remove(*n).map(|v| (Value::from(*n), v)))
            .collect();
        read(Value::Mapping(part))
    }

    /// Removes a keyword field (a tag) and returns it as text.
    pub fn keyword<E: Error>(fields: &mut Fields, name: &str) -> Result<Option<String>, E> {
        match fields.remove(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(at(name, "expected a string")),
        }
    }

    /// The first field left in `fields` is unknown here.
    pub fn no_more<E: Error>(fields: &Fields, expected: &[&str]) -> Result<(), E> {
        match fields.keys().next() {
            None => Ok(()),
            Some(k) => {
                let k = k.as_str().unwrap_or("?");
                Err(at(
                    k,
                    format!(
                        "unknown field `{k}`, expected one of {}",
                        expected.join(", ")
                    ),
                ))
            }
        }
    }

    fn nested<E: Error>(outer: &str, field: &str, message: &str) -> E {
        let (inner, message) = split(message);
        let path = join(&join(outer, field), inner.unwrap_or(""));
        if path.is_empty() {
            E::custom(message)
        } else {
            E::custom(format_args!("at `{path}`: {message}"))
        }
    }

    fn join(a: &str, b: &str) -> String {
        match (a, b) {
            ("", b) => b.to_string(),
            (a, "") => a.to_string(),
            (a, b) if b.starts_with('[') => format!("{a}{b}"),
            (a, b) => format!("{a}.{b}"),
        }
    }

    /// `(path below, message)` of an error message made by [`at`]. A YAML
    /// reader wraps it (`filters: at `...`: ... at line 3 column 5`); the
    /// wrapping goes.
    fn split(message: &str) -> (Option<&str>, &str) {
        let Some((path, rest)) = message
            .find("at `")
            .and_then(|i| message[i + 4..].split_once("`: "))
        else {
            return (None, message);
        };
        let rest = match rest.rfind(" at line ") {
            Some(i) if rest[i..].contains(" column ") => &rest[..i],
            _ => rest,
        };
        (Some(path), rest)
    }

    /// The error of a whole document: `path` as serde_path_to_error found
    /// it, completed by the path carried in `message`.
    pub fn shape_error(path: &str, message: &str) -> FieldError {
        let path = if path == "." { "" } else { path };
        let (inner, message) = split(message);
        let full = join(path, inner.unwrap_or(""));
        let full = if full.is_empty() {
            "(root)".to_string()
        } else {
            full
        };
        FieldError::new(full, message)
    }

    /// A duration written `250ms`, `5m`, `1h` (shown the same way).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Dur(pub std::time::Duration);

    impl Dur {
        pub fn get(self) -> std::time::Duration {
            self.0
        }
    }

    impl serde::Serialize for Dur {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            humantime_serde::serialize(&self.0, s)
        }
    }

    impl<'de> serde::Deserialize<'de> for Dur {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            humantime_serde::deserialize(d).map(Dur)
        }
    }

    /// A `u64` in `MIN..=MAX`, checked while reading.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

    impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
        pub fn get(self) -> u64 {
            self.0
        }
    }

    impl<const MIN: u64, const MAX: u64> serde::Serialize for Bounded<MIN, MAX> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(self.0)
        }
    }

    impl<'de, const MIN: u64, const MAX: u64> serde::Deserialize<'de> for Bounded<MIN, MAX> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u64::deserialize(d)?;
            if n < MIN {
                Err(D::Error::custom(format_args!("must be at least {MIN}")))
            } else if n > MAX {
                Err(D::Error::custom(format_args!("must be at most {MAX}")))
            } else {
                Ok(Bounded(n))
            }
        }
    }
}
