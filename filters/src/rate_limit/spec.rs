//! The `type: rate_limit` config: the file/wire spec and its validation.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use crate::config::{FieldErrors, ValidateCx};
use crate::IDENTITY_HEADER_PREFIX;

/// Rules per filter instance.
pub const MAX_RULES: usize = 64;

/// Default bound on distinct keys tracked per rule (per sidecar).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// The file/wire spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub rules: Vec<RuleSpec>,
    /// Every rule counts and reports but never blocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// Also add `RateLimit-Policy` / `RateLimit` to successful responses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub response_headers: bool,
}

/// One rule as written in config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    /// Descriptors that make up the key: `route`, `client_id`, `user`,
    /// `client_ip`, `header:<name>`; one string or a list.
    pub key: KeySpec,
    pub algorithm: Choice<AlgorithmName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    #[serde(default = "local_scope")]
    pub scope: Choice<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<Choice<StoreErrorMode>>,
    /// Number of sidecars sharing a global limit, used by `local_fallback`
    /// instead of the count learned from Redis heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_peers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<OverrideSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<usize>,
}

/// A known keyword, or what was written instead (reported by validation with
/// its field path rather than as a shape error).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Choice<T> {
    Known(T),
    Unknown(Unknown),
}

/// Placeholder for an unrecognised keyword (its text is not kept).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(from = "serde_json::Value", into = "String")]
pub struct Unknown;

impl From<serde_json::Value> for Unknown {
    fn from(_: serde_json::Value) -> Self {
        Unknown
    }
}

impl From<Unknown> for String {
    fn from(_: Unknown) -> String {
        String::new()
    }
}

impl<T: Copy> Choice<T> {
    fn known(self, default: T) -> T {
        match self {
            Choice::Known(t) => t,
            Choice::Unknown(_) => default,
        }
    }
}

fn local_scope() -> Choice<Scope> {
    Choice::Known(Scope::Local)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum KeySpec {
    One(String),
    Many(Vec<String>),
}

impl KeySpec {
    fn parts(&self) -> Vec<&str> {
        match self {
            KeySpec::One(s) => vec![s.as_str()],
            KeySpec::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmName {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
    Concurrency,
}

impl AlgorithmName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgorithmName::FixedWindow => "fixed_window",
            AlgorithmName::SlidingWindow => "sliding_window",
            AlgorithmName::TokenBucket => "token_bucket",
            AlgorithmName::Concurrency => "concurrency",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Global,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreErrorMode {
    FailOpen,
    FailClosed,
    LocalFallback,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OverrideSpec {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

/// One descriptor of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    Route,
    ClientId,
    User,
    ClientIp,
    /// A request header as the client sent it.
    Header(HeaderName),
    /// An `x-meshgate-*` identity header: only the value an earlier filter
    /// set (session claims, client id), never one a client sent.
    FilterHeader(HeaderName),
}

/// The limit of one rule (or one override), by algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Params {
    /// `fixed_window` / `sliding_window`: `limit` requests per `window`.
    Window { limit: u64, window_ns: u64 },
    /// `token_bucket`: one token every `interval_ns`, at most `burst` stored.
    /// `quota`/`period_ns` keep the rate as written, for `RateLimit-Policy`.
    Bucket {
        interval_ns: u64,
        burst: u64,
        quota: u64,
        period_ns: u64,
    },
    /// `concurrency`: at most `max` in flight.
    Concurrency { max: u64 },
}

impl Params {
    /// The same limit shared by `peers` sidecars: each gets its share.
    pub fn divided(self, peers: u64) -> Params {
        let peers = peers.max(1);
        match self {
            Params::Window { limit, window_ns } => Params::Window {
                limit: limit.div_ceil(peers),
                window_ns,
            },
            Params::Bucket {
                interval_ns,
                burst,
                quota,
                period_ns,
            } => Params::Bucket {
                interval_ns: interval_ns.saturating_mul(peers),
                burst: burst.div_ceil(peers),
                quota: quota.div_ceil(peers),
                period_ns,
            },
            Params::Concurrency { max } => Params::Concurrency {
                max: max.div_ceil(peers),
            },
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub key: Vec<KeyPart>,
    pub algorithm: AlgorithmName,
    pub params: Params,
    pub overrides: HashMap<String, Params>,
    pub scope: Scope,
    pub on_store_error: StoreErrorMode,
    pub fallback_peers: Option<u32>,
    pub shadow: bool,
    pub max_keys: usize,
}

impl RuleConfig {
    /// The limit for `key`: its override, or the rule's own.
    pub fn params_for(&self, key: &str) -> Params {
        if self.overrides.is_empty() {
            return self.params;
        }
        self.overrides.get(key).copied().unwrap_or(self.params)
    }
}

/// The validated config.
#[derive(Debug, Clone, Default)]
pub struct RateLimitConfig {
    pub rules: Vec<RuleConfig>,
    pub response_headers: bool,
}

impl RateLimitConfig {
    pub fn uses_redis(&self) -> bool {
        self.rules.iter().any(|r| r.scope == Scope::Global)
    }
}

impl RateLimitSpec {
    pub fn validate(&self, path: &str, _cx: &ValidateCx) -> Result<RateLimitConfig, FieldErrors> {
        let mut errors = FieldErrors::default();
        if self.rules.is_empty() {
            errors.push(format!("{path}.rules"), "at least one rule is required");
        }
        if self.rules.len() > MAX_RULES {
            errors.push(
                format!("{path}.rules"),
                format!("at most {MAX_RULES} rules per instance"),
            );
        }
        let mut rules = Vec::new();
        let mut seen = HashMap::new();
        for (i, spec) in self.rules.iter().enumerate() {
            let rpath = format!("{path}.rules[{i}]");
            if let Some(first) = seen.insert(spec.name.clone(), i) {
                errors.push(
                    format!("{rpath}.name"),
                    format!("duplicate rule name (also rules[{first}])"),
                );
            }
            if let Some(rule) = spec.validate(&rpath, self.shadow, &mut errors) {
                rules.push(rule);
            }
        }
        errors.into_result(RateLimitConfig {
            rules,
            response_headers: self.response_headers,
        })
    }

    /// A copy with secrets replaced, for dumps and logs (rate-limit rules
    /// hold no secrets).
    pub fn redacted(&self) -> Self {
        self.clone()
    }
}

impl RuleSpec {
    /// Only meaningful once validation has rejected unknown keywords.
    fn algorithm(&self) -> AlgorithmName {
        self.algorithm.known(AlgorithmName::FixedWindow)
    }

    fn scope(&self) -> Scope {
        self.scope.known(Scope::Local)
    }

    fn validate(
        &self,
        path: &str,
        shadow_all: bool,
        errors: &mut FieldErrors,
    ) -> Option<RuleConfig> {
        let before = errors.0.len();
        if let Choice::Unknown(_) = self.algorithm {
            errors.push(
                format!("{path}.algorithm"),
                "unknown algorithm; expected fixed_window, sliding_window, token_bucket or concurrency",
            );
        }
        if let Choice::Unknown(_) = self.scope {
            errors.push(format!("{path}.scope"), "expected local or global");
        }
        if let Some(Choice::Unknown(_)) = self.on_store_error {
            errors.push(
                format!("{path}.on_store_error"),
                "expected fail_open, fail_closed or local_fallback",
            );
        }
        if errors.0.len() != before {
            return None;
        }
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errors.push(
                format!("{path}.name"),
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            );
        }
        let key = validate_key(&self.key, &format!("{path}.key"), errors);
        let params = self.params(path, None, errors);
        let mut overrides = HashMap::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let opath = format!("{path}.overrides[{i}]");
            let spec = RuleSpec {
                limit: o.limit.or(self.limit),
                rate: o.rate.clone().or_else(|| self.rate.clone()),
                burst: o.burst,
                max: o.max.or(self.max),
                ..self.clone()
            };
            if let Some(p) = spec.params(&opath, Some(o), errors) {
                if overrides.insert(o.key.clone(), p).is_some() {
                    errors.push(format!("{opath}.key"), "duplicate override key");
                }
            }
        }
        if self.algorithm() == AlgorithmName::Concurrency && self.scope() == Scope::Global {
            errors.push(
                format!("{path}.scope"),
                "concurrency limits are per sidecar; use scope: local",
            );
        }
        if self.scope() == Scope::Local {
            if self.on_store_error.is_some() {
                errors.push(
                    format!("{path}.on_store_error"),
                    "only applies to scope: global",
                );
            }
            if self.fallback_peers.is_some() {
                errors.push(
                    format!("{path}.fallback_peers"),
                    "only applies to scope: global",
                );
            }
        }
        if self.fallback_peers == Some(0) {
            errors.push(format!("{path}.fallback_peers"), "must be at least 1");
        }
        let max_keys = self.max_keys.unwrap_or(DEFAULT_MAX_KEYS);
        if max_keys == 0 || max_keys > 100_000_000 {
            errors.push(
                format!("{path}.max_keys"),
                "must be between 1 and 100000000",
            );
        }
        if errors.0.len() != before {
            return None;
        }
        Some(RuleConfig {
            name: self.name.clone(),
            key,
            algorithm: self.algorithm(),
            params: params?,
            overrides,
            scope: self.scope(),
            on_store_error: self
                .on_store_error
                .map_or(StoreErrorMode::LocalFallback, |m| {
                    m.known(StoreErrorMode::LocalFallback)
                }),
            fallback_peers: self.fallback_peers,
            shadow: self.shadow.unwrap_or(shadow_all),
            max_keys,
        })
    }

    /// The params of this rule; `o` is set when checking an override, whose
    /// own fields are reported at its path.
    fn params(
        &self,
        path: &str,
        o: Option<&OverrideSpec>,
        errors: &mut FieldErrors,
    ) -> Option<Params> {
        let before = errors.0.len();
        let forbid = |errors: &mut FieldErrors, field: &str, set: bool| {
            if set {
                errors.push(
                    format!("{path}.{field}"),
                    format!("not used by algorithm {}", self.algorithm().as_str()),
                );
            }
        };
        let (limit_set, rate_set, burst_set, max_set) = match o {
            Some(o) => (
                o.limit.is_some(),
                o.rate.is_some(),
                o.burst.is_some(),
                o.max.is_some(),
            ),
            None => (
                self.limit.is_some(),
                self.rate.is_some(),
                self.burst.is_some(),
                self.max.is_some(),
            ),
        };
        let params = match self.algorithm() {
            AlgorithmName::FixedWindow | AlgorithmName::SlidingWindow => {
                forbid(errors, "rate", rate_set);
                forbid(errors, "burst", burst_set);
                forbid(errors, "max", max_set);
                let limit = required_count(self.limit, path, "limit", errors);
                let window = match (&self.window, o) {
                    (_, Some(_)) => None, // an override keeps the rule's window
                    (None, None) => {
                        errors.push(format!("{path}.window"), "required by this algorithm");
                        None
                    }
                    (Some(w), None) => parse_window(w, &format!("{path}.window"), errors),
                };
                match (limit, window, o) {
                    (Some(limit), Some(window_ns), _) => Some(Params::Window { limit, window_ns }),
                    (Some(limit), None, Some(_)) => Some(Params::Window {
                        limit,
                        window_ns: self
                            .window
                            .as_deref()
                            .and_then(|w| humantime::parse_duration(w).ok())
                            .map(duration_ns)
                            .unwrap_or(1),
                    }),
                    _ => None,
                }
            }
            AlgorithmName::TokenBucket => {
                forbid(errors, "limit", limit_set);
                forbid(errors, "max", max_set);
                if o.is_none() && self.window.is_some() {
                    errors.push(
                        format!("{path}.window"),
                        "not used by algorithm token_bucket (the rate carries its period)",
                    );
                }
                let rate = match &self.rate {
                    None => {
                        errors.push(format!("{path}.rate"), "required by this algorithm");
                        None
                    }
                    Some(r) => parse_rate(r, &format!("{path}.rate"), errors),
                };
                let burst = match self.burst {
                    Some(0) => {
                        errors.push(format!("{path}.burst"), "must be at least 1");
                        None
                    }
                    Some(b) if b > MAX_COUNT => {
                        errors.push(
                            format!("{path}.burst"),
                            format!("must be at most {MAX_COUNT}"),
                        );
                        None
                    }
                    b => Some(b),
                };
                match (rate, burst) {
                    (Some((quota, period_ns)), Some(burst)) => Some(Params::Bucket {
                        interval_ns: (period_ns / quota).max(1),
                        burst: burst.unwrap_or(quota).max(1),
                        quota,
                        period_ns,
                    }),
                    _ => None,
                }
            }
            AlgorithmName::Concurrency => {
                forbid(errors, "limit", limit_set);
                forbid(errors, "rate", rate_set);
                forbid(errors, "burst", burst_set);
                if o.is_none() && self.window.is_some() {
                    errors.push(
                        format!("{path}.window"),
                        "not used by algorithm concurrency",
                    );
                }
                required_count(self.max, path, "max", errors).map(|max| Params::Concurrency { max })
            }
        };
        if errors.0.len() != before {
            return None;
        }
        params
    }
}

/// Counts are packed into 32 bits in the lock-free cells.
const MAX_COUNT: u64 = u32::MAX as u64 - 1;

fn required_count(
    v: Option<u64>,
    path: &str,
    field: &str,
    errors: &mut FieldErrors,
) -> Option<u64> {
    match v {
        None => {
            errors.push(format!("{path}.{field}"), "required by this algorithm");
            None
        }
        Some(0) => {
            errors.push(format!("{path}.{field}"), "must be at least 1");
            None
        }
        Some(n) if n > MAX_COUNT => {
            errors.push(
                format!("{path}.{field}"),
                format!("must be at most {MAX_COUNT}"),
            );
            None
        }
        Some(n) => Some(n),
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn parse_window(text: &str, path: &str, errors: &mut FieldErrors) -> Option<u64> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(366 * 86_400) => {
            Some(duration_ns(d))
        }
        Ok(_) => {
            errors.push(path, "must be between 1ms and 366d");
            None
        }
        Err(e) => {
            errors.push(path, format!("invalid duration {text:?}: {e}"));
            None
        }
    }
}

/// Parses `100/s`, `6000/min`, `10/h`, `5/10s` into (quota, period in ns).
pub fn parse_rate(text: &str, path: &str, errors: &mut FieldErrors) -> Option<(u64, u64)> {
    let bad = |errors: &mut FieldErrors| {
        errors.push(
            path,
            format!("invalid rate {text:?}: expected <count>/<unit> like 100/s, 6000/min, 5/10s"),
        );
        None
    };
    let Some((count, unit)) = text.split_once('/') else {
        return bad(errors);
    };
    let Ok(count) = count.trim().parse::<u64>() else {
        return bad(errors);
    };
    let unit = unit.trim();
    let period = match unit {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => match humantime::parse_duration(other) {
            Ok(d) => d,
            Err(_) => return bad(errors),
        },
    };
    if count == 0 || count > MAX_COUNT {
        errors.push(path, format!("count must be between 1 and {MAX_COUNT}"));
        return None;
    }
    if period < Duration::from_millis(1) || period > Duration::from_secs(366 * 86_400) {
        errors.push(path, "period must be between 1ms and 366d");
        return None;
    }
    Some((count, duration_ns(period)))
}

fn validate_key(spec: &KeySpec, path: &str, errors: &mut FieldErrors) -> Vec<KeyPart> {
    let parts = spec.parts();
    if parts.is_empty() {
        errors.push(path, "at least one descriptor is required");
    }
    let many = matches!(spec, KeySpec::Many(_));
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let ppath = if many {
            format!("{path}[{i}]")
        } else {
            path.to_string()
        };
        let part = match *p {
            "route" => KeyPart::Route,
            "client_id" => KeyPart::ClientId,
            "user" => KeyPart::User,
            "client_ip" => KeyPart::ClientIp,
            other => match other.strip_prefix("header:") {
                Some(name) => match HeaderName::try_from(name.trim()) {
                    Ok(h) if h.as_str().starts_with(IDENTITY_HEADER_PREFIX) => {
                        KeyPart::FilterHeader(h)
                    }
                    Ok(h) => KeyPart::Header(h),
                    Err(_) => {
                        errors.push(ppath, format!("invalid header name {name:?}"));
                        continue;
                    }
                },
                None => {
                    errors.push(
                        ppath,
                        format!(
                            "unknown descriptor {other:?}; expected route, client_id, user, \
                             client_ip or header:<name>"
                        ),
                    );
                    continue;
                }
            },
        };
        if out.contains(&part) {
            errors.push(ppath, "duplicate descriptor");
            continue;
        }
        out.push(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> RateLimitSpec {
        let v: serde_json::Value = serde_json::from_str(yaml).expect("test json");
        serde_json::from_value(v).expect("spec shape")
    }

    fn validate(s: &RateLimitSpec) -> Result<RateLimitConfig, FieldErrors> {
        s.validate("filters.limit", &ValidateCx::control_plane())
    }

    #[test]
    fn example_config_validates() {
        let s = spec(
            r#"{"rules": [
              {"name": "per-client", "key": ["client_id"], "algorithm": "token_bucket", "rate": "100/s", "burst": 200, "scope": "local"},
              {"name": "api-total", "key": ["route"], "algorithm": "fixed_window", "limit": 5000, "window": "1s", "scope": "global", "on_store_error": "local_fallback"},
              {"name": "in-flight", "key": ["route"], "algorithm": "concurrency", "max": 64}
            ]}"#,
        );
        let c = validate(&s).expect("valid");
        assert_eq!(c.rules.len(), 3);
        assert!(c.uses_redis());
        assert_eq!(
            c.rules[0].params,
            Params::Bucket {
                interval_ns: 10_000_000,
                burst: 200,
                quota: 100,
                period_ns: 1_000_000_000
            }
        );
        assert_eq!(
            c.rules[1].params,
            Params::Window {
                limit: 5000,
                window_ns: 1_000_000_000
            }
        );
    }

    #[test]
    fn errors_name_precise_paths() {
        let s = spec(
            r#"{"rules": [
              {"name": "a", "key": "client_id", "algorithm": "token_bucket", "rate": "100/fortnight", "limit": 3},
              {"name": "b", "key": ["route", "header:bad header"], "algorithm": "fixed_window", "limit": 0, "window": "soon"},
              {"name": "a", "key": ["nope"], "algorithm": "concurrency", "max": 1, "scope": "global"},
              {"name": "d", "key": "route", "algorithm": "leaky", "scope": "galaxy", "on_store_error": "shrug"}
            ]}"#,
        );
        let errs = validate(&s).expect_err("invalid");
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "filters.limit.rules[0].rate",
            "filters.limit.rules[0].limit",
            "filters.limit.rules[1].key[1]",
            "filters.limit.rules[1].limit",
            "filters.limit.rules[1].window",
            "filters.limit.rules[2].name",
            "filters.limit.rules[2].key[0]",
            "filters.limit.rules[2].scope",
            "filters.limit.rules[3].algorithm",
            "filters.limit.rules[3].scope",
            "filters.limit.rules[3].on_store_error",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn rates_parse() {
        let mut e = FieldErrors::default();
        assert_eq!(
            parse_rate("6000/min", "p", &mut e),
            Some((6000, 60_000_000_000))
        );
        assert_eq!(parse_rate("5/10s", "p", &mut e), Some((5, 10_000_000_000)));
        assert!(e.is_empty());
        assert_eq!(parse_rate("0/s", "p", &mut e), None);
        assert_eq!(parse_rate("ten/s", "p", &mut e), None);
        assert_eq!(e.0.len(), 2);
    }

    #[test]
    fn overrides_validate_per_algorithm() {
        let s = spec(
            r#"{"rules": [
              {"name": "a", "key": "client_id", "algorithm": "token_bucket", "rate": "10/s",
               "overrides": [{"key": "app-1", "rate": "100/s", "burst": 5}, {"key": "app-2", "limit": 4}]}
            ]}"#,
        );
        let errs = validate(&s).expect_err("invalid");
        assert_eq!(errs.0.len(), 1, "{errs}");
        assert_eq!(errs.0[0].path, "filters.limit.rules[0].overrides[1].limit");
    }
}
