//! The `type: rate_limit` config: the file/wire spec and its validation.
//!
//! Users write a rule flat (`algorithm: token_bucket, rate: 100/s`). It is
//! read into enums: the algorithm chooses its parameters ([`LimitSpec`]) and
//! the scope its store settings ([`ScopeSpec`]), so a parameter of another
//! algorithm, a missing one or a count out of range is refused while
//! reading, at its field path. Validation then only checks what spans
//! fields (key descriptors, duplicate names).

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::shape::{self, Bounded, Fields};
use crate::config::{FieldErrors, ValidateCx};
use crate::IDENTITY_HEADER_PREFIX;

/// Rules per filter instance.
pub const MAX_RULES: usize = 64;

/// Default bound on distinct keys tracked per rule (per sidecar).
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Counts are packed into 32 bits in the lock-free cells.
const MAX_COUNT: u64 = u32::MAX as u64 - 1;

/// A count of requests or tokens.
pub type Count = Bounded<1, MAX_COUNT>;
/// Bound on the keys one rule tracks.
pub type MaxKeys = Bounded<1, 100_000_000>;
/// Sidecars sharing a global limit.
pub type PeerCount = Bounded<1, { u32::MAX as u64 }>;

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
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleSpec {
    pub name: RuleName,
    /// Descriptors that make up the key: `route`, `client_id`, `user`,
    /// `client_ip`, `header:<name>`; one string or a list.
    pub key: KeySpec,
    #[serde(flatten)]
    pub limit: LimitSpec,
    #[serde(flatten)]
    pub scope: ScopeSpec,
    /// Overrides the instance's `shadow` for this rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_keys: Option<MaxKeys>,
}

/// `algorithm:` and its parameters.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "algorithm", rename_all = "snake_case")]
pub enum LimitSpec {
    FixedWindow(WindowLimit),
    SlidingWindow(WindowLimit),
    TokenBucket(BucketLimit),
    Concurrency(ConcurrencyLimit),
}

/// `limit` requests per `window`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    pub limit: Count,
    pub window: Window,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<WindowOverride>,
}

/// `rate` with at most `burst` (default: the rate's count) stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BucketLimit {
    pub rate: Rate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Count>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<BucketOverride>,
}

/// At most `max` requests in flight.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimit {
    pub max: Count,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<ConcurrencyOverride>,
}

/// The limit of one key of a window rule; the window stays the rule's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowOverride {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Count>,
}

/// The rate of one key of a bucket rule; `burst` is not inherited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BucketOverride {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Count>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyOverride {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Count>,
}

/// `scope:` (default `local`) and what only a global rule has.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum ScopeSpec {
    Local,
    Global(GlobalSpec),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<StoreErrorMode>,
    /// Number of sidecars sharing the limit, used by `local_fallback`
    /// instead of the count learned from Redis heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_peers: Option<PeerCount>,
}

const LIMIT_FIELDS: &[&str] = &["limit", "window", "rate", "burst", "max", "overrides"];
const GLOBAL_FIELDS: &[&str] = &["on_store_error", "fallback_peers"];
const COMMON_FIELDS: &[&str] = &["name", "key", "shadow", "max_keys"];
/// Every field a rule may have, for the unknown-field error.
fn rule_fields() -> Vec<&'static str> {
    [
        COMMON_FIELDS,
        &["algorithm", "scope"],
        LIMIT_FIELDS,
        GLOBAL_FIELDS,
    ]
    .concat()
}

impl<'de> Deserialize<'de> for RuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = shape::object(d)?;
        let limit = LimitSpec::take(&mut fields)?;
        let scope = ScopeSpec::take(&mut fields)?;
        if matches!(
            (&limit, &scope),
            (LimitSpec::Concurrency(_), ScopeSpec::Global(_))
        ) {
            return Err(shape::at(
                "scope",
                "concurrency limits are per sidecar; use scope: local",
            ));
        }
        #[derive(Deserialize)]
        struct Common {
            name: RuleName,
            key: KeySpec,
            shadow: Option<bool>,
            max_keys: Option<MaxKeys>,
        }
        let common: Common = shape::take(&mut fields, COMMON_FIELDS)?;
        shape::no_more(&fields, &rule_fields())?;
        Ok(RuleSpec {
            name: common.name,
            key: common.key,
            limit,
            scope,
            shadow: common.shadow,
            max_keys: common.max_keys,
        })
    }
}

impl LimitSpec {
    /// Reads `algorithm` and the fields it uses, refusing the others.
    fn take<E: serde::de::Error>(fields: &mut Fields) -> Result<Self, E> {
        let name = shape::keyword(fields, "algorithm")?.ok_or_else(|| {
            shape::at(
                "algorithm",
                "required: fixed_window, sliding_window, token_bucket or concurrency",
            )
        })?;
        let (required, used): (&[&str], &[&str]) = match name.as_str() {
            "fixed_window" | "sliding_window" => (&["limit", "window"], &["limit", "window"]),
            "token_bucket" => (&["rate"], &["rate", "burst"]),
            "concurrency" => (&["max"], &["max"]),
            _ => {
                return Err(shape::at(
                    "algorithm",
                    "unknown algorithm; expected fixed_window, sliding_window, token_bucket or concurrency",
                ))
            }
        };
        if let Some(field) = LIMIT_FIELDS
            .iter()
            .find(|f| **f != "overrides" && !used.contains(f) && fields.contains_key(**f))
        {
            return Err(shape::at(field, format!("not used by algorithm {name}")));
        }
        if let Some(field) = required.iter().find(|f| !fields.contains_key(**f)) {
            return Err(shape::at(field, "required by this algorithm"));
        }
        Ok(match name.as_str() {
            "fixed_window" => LimitSpec::FixedWindow(shape::take(fields, LIMIT_FIELDS)?),
            "sliding_window" => LimitSpec::SlidingWindow(shape::take(fields, LIMIT_FIELDS)?),
            "token_bucket" => LimitSpec::TokenBucket(shape::take(fields, LIMIT_FIELDS)?),
            _ => LimitSpec::Concurrency(shape::take(fields, LIMIT_FIELDS)?),
        })
    }

    pub fn algorithm(&self) -> AlgorithmName {
        match self {
            LimitSpec::FixedWindow(_) => AlgorithmName::FixedWindow,
            LimitSpec::SlidingWindow(_) => AlgorithmName::SlidingWindow,
            LimitSpec::TokenBucket(_) => AlgorithmName::TokenBucket,
            LimitSpec::Concurrency(_) => AlgorithmName::Concurrency,
        }
    }

    /// The rule's own limit and the limit of each override key, in order.
    fn params(&self) -> (Params, Vec<(&str, Params)>) {
        match self {
            LimitSpec::FixedWindow(w) | LimitSpec::SlidingWindow(w) => {
                let window = |limit: Count| Params::Window {
                    limit: limit.get(),
                    window_ns: w.window.ns,
                };
                let overrides = w.overrides.iter();
                (
                    window(w.limit),
                    overrides
                        .map(|o| (o.key.as_str(), window(o.limit.unwrap_or(w.limit))))
                        .collect(),
                )
            }
            LimitSpec::TokenBucket(b) => {
                let bucket = |rate: &Rate, burst: Option<Count>| Params::Bucket {
                    interval_ns: (rate.period_ns / rate.quota).max(1),
                    burst: burst.map_or(rate.quota, Count::get),
                    quota: rate.quota,
                    period_ns: rate.period_ns,
                };
                let overrides = b.overrides.iter();
                (
                    bucket(&b.rate, b.burst),
                    overrides
                        .map(|o| {
                            (
                                o.key.as_str(),
                                bucket(o.rate.as_ref().unwrap_or(&b.rate), o.burst),
                            )
                        })
                        .collect(),
                )
            }
            LimitSpec::Concurrency(c) => {
                let overrides = c.overrides.iter();
                (
                    Params::Concurrency { max: c.max.get() },
                    overrides
                        .map(|o| {
                            let max = o.max.unwrap_or(c.max).get();
                            (o.key.as_str(), Params::Concurrency { max })
                        })
                        .collect(),
                )
            }
        }
    }
}

impl ScopeSpec {
    fn take<E: serde::de::Error>(fields: &mut Fields) -> Result<Self, E> {
        match shape::keyword(fields, "scope")?.as_deref() {
            None | Some("local") => match GLOBAL_FIELDS.iter().find(|f| fields.contains_key(**f)) {
                Some(field) => Err(shape::at(field, "only applies to scope: global")),
                None => Ok(ScopeSpec::Local),
            },
            Some("global") => Ok(ScopeSpec::Global(shape::take(fields, GLOBAL_FIELDS)?)),
            Some(_) => Err(shape::at("scope", "expected local or global")),
        }
    }
}

/// A rule name: 1-64 letters, digits, `-`, `_` or `.` (it is part of
/// Redis keys and metric labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RuleName(String);

impl RuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            return Err(D::Error::custom(
                "must be 1-64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(RuleName(name))
    }
}

/// A window as written (`1s`, `1min`), between 1ms and 366d.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Window {
    text: String,
    pub ns: u64,
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.text
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) if (Duration::from_millis(1)..=MAX_PERIOD).contains(&d) => Ok(Window {
                ns: duration_ns(d),
                text,
            }),
            Ok(_) => Err(D::Error::custom("must be between 1ms and 366d")),
            Err(e) => Err(D::Error::custom(format_args!(
                "invalid duration {text:?}: {e}"
            ))),
        }
    }
}

/// A rate as written (`100/s`, `6000/min`, `5/10s`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Rate {
    text: String,
    pub quota: u64,
    pub period_ns: u64,
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.text
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let (quota, period_ns) = parse_rate(&text).map_err(D::Error::custom)?;
        Ok(Rate {
            text,
            quota,
            period_ns,
        })
    }
}

const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);

/// Parses `100/s`, `6000/min`, `10/h`, `5/10s` into (quota, period in ns).
pub fn parse_rate(text: &str) -> Result<(u64, u64), String> {
    let bad =
        || format!("invalid rate {text:?}: expected <count>/<unit> like 100/s, 6000/min, 5/10s");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count = count.trim().parse::<u64>().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(86_400),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    if count == 0 || count > MAX_COUNT {
        return Err(format!("count must be between 1 and {MAX_COUNT}"));
    }
    if !(Duration::from_millis(1)..=MAX_PERIOD).contains(&period) {
        return Err("period must be between 1ms and 366d".into());
    }
    Ok((count, duration_ns(period)))
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

/// The algorithm of a validated rule (also the handover's record of it).
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
        let mut seen = HashMap::new();
        let mut rules = Vec::new();
        for (i, spec) in self.rules.iter().enumerate() {
            let rpath = format!("{path}.rules[{i}]");
            if let Some(first) = seen.insert(spec.name.as_str(), i) {
                errors.push(
                    format!("{rpath}.name"),
                    format!("duplicate rule name (also rules[{first}])"),
                );
            }
            rules.push(spec.validate(&rpath, self.shadow, &mut errors));
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
    fn validate(&self, path: &str, shadow_all: bool, errors: &mut FieldErrors) -> RuleConfig {
        let key = validate_key(&self.key, &format!("{path}.key"), errors);
        let (params, listed) = self.limit.params();
        let mut overrides = HashMap::new();
        for (i, (key, params)) in listed.into_iter().enumerate() {
            if overrides.insert(key.to_string(), params).is_some() {
                errors.push(
                    format!("{path}.overrides[{i}].key"),
                    "duplicate override key",
                );
            }
        }
        let (scope, on_store_error, fallback_peers) = match &self.scope {
            ScopeSpec::Local => (Scope::Local, StoreErrorMode::LocalFallback, None),
            ScopeSpec::Global(g) => (
                Scope::Global,
                g.on_store_error.unwrap_or(StoreErrorMode::LocalFallback),
                g.fallback_peers.map(|p| p.get() as u32),
            ),
        };
        RuleConfig {
            name: self.name.as_str().to_string(),
            key,
            algorithm: self.limit.algorithm(),
            params,
            overrides,
            scope,
            on_store_error,
            fallback_peers,
            shadow: self.shadow.unwrap_or(shadow_all),
            max_keys: self.max_keys.map_or(DEFAULT_MAX_KEYS, |m| m.get() as usize),
        }
    }
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
    use crate::config::shape::shape_error;

    fn spec(json: &str) -> RateLimitSpec {
        let v: serde_json::Value = serde_json::from_str(json).expect("test json");
        serde_json::from_value(v).expect("spec shape")
    }

    fn validate(s: &RateLimitSpec) -> Result<RateLimitConfig, FieldErrors> {
        s.validate("filters.limit", &ValidateCx::control_plane())
    }

    /// Every error of one instance, read and validated, as `path: message`.
    fn errors_of(rules: serde_json::Value) -> Vec<String> {
        let json = serde_json::json!({ "rules": rules });
        match serde_path_to_error::deserialize::<_, RateLimitSpec>(json) {
            Err(e) => {
                let e = shape_error(&e.path().to_string(), &e.inner().to_string());
                vec![format!("filters.limit.{e}")]
            }
            Ok(s) => match validate(&s) {
                Ok(_) => vec![],
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
            },
        }
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
        use serde_json::json;
        let p = "filters.limit.rules[0]";
        let cases = [
            (
                json!({"name": "a", "key": "client_id", "algorithm": "token_bucket", "rate": "100/fortnight"}),
                format!("{p}.rate: invalid rate \"100/fortnight\": expected <count>/<unit> like 100/s, 6000/min, 5/10s"),
            ),
            (
                json!({"name": "a", "key": "client_id", "algorithm": "token_bucket", "rate": "1/s", "limit": 3}),
                format!("{p}.limit: not used by algorithm token_bucket"),
            ),
            (
                json!({"name": "b", "key": ["route", "header:bad header"], "algorithm": "concurrency", "max": 1}),
                format!("{p}.key[1]: invalid header name \"bad header\""),
            ),
            (
                json!({"name": "b", "key": "route", "algorithm": "fixed_window", "limit": 0, "window": "1s"}),
                format!("{p}.limit: must be at least 1"),
            ),
            (
                json!({"name": "b", "key": "route", "algorithm": "fixed_window", "limit": 1, "window": "soon"}),
                format!("{p}.window: invalid duration \"soon\": expected number at 0"),
            ),
            (
                json!({"name": "b", "key": "route", "algorithm": "fixed_window", "limit": 1}),
                format!("{p}.window: required by this algorithm"),
            ),
            (
                json!({"name": "a", "key": ["nope"], "algorithm": "concurrency", "max": 1}),
                format!("{p}.key[0]: unknown descriptor \"nope\"; expected route, client_id, user, client_ip or header:<name>"),
            ),
            (
                json!({"name": "a", "key": "route", "algorithm": "concurrency", "max": 1, "scope": "global"}),
                format!("{p}.scope: concurrency limits are per sidecar; use scope: local"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "leaky"}),
                format!("{p}.algorithm: unknown algorithm; expected fixed_window, sliding_window, token_bucket or concurrency"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "concurrency", "max": 1, "scope": "galaxy"}),
                format!("{p}.scope: expected local or global"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "fixed_window", "limit": 1, "window": "1s", "scope": "global", "on_store_error": "shrug"}),
                format!("{p}.on_store_error: unknown variant `shrug`, expected one of `fail_open`, `fail_closed`, `local_fallback`"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "concurrency", "max": 1, "on_store_error": "fail_open"}),
                format!("{p}.on_store_error: only applies to scope: global"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "fixed_window", "limit": 1, "window": "1s", "scope": "global", "fallback_peers": 0}),
                format!("{p}.fallback_peers: must be at least 1"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "concurrency", "max": 1, "max_keys": 0}),
                format!("{p}.max_keys: must be at least 1"),
            ),
            (
                json!({"name": "d", "key": "route", "algorithm": "concurrency", "max": 1, "maxx": 2}),
                format!("{p}.maxx: unknown field `maxx`, expected one of {}", rule_fields().join(", ")),
            ),
            (
                json!({"name": "", "key": "route", "algorithm": "concurrency", "max": 1}),
                format!("{p}.name: must be 1-64 characters of letters, digits, '-', '_' or '.'"),
            ),
            (
                json!({"name": "a", "key": "route", "algorithm": "sliding_window", "limit": 4_294_967_295_u64, "window": "1s"}),
                format!("{p}.limit: must be at most 4294967294"),
            ),
        ];
        for (rule, want) in cases {
            assert_eq!(errors_of(json!([rule.clone()])), vec![want], "{rule}");
        }
        // Validation still reports every cross-field error at once.
        assert_eq!(
            errors_of(json!([
                {"name": "a", "key": ["route", "route"], "algorithm": "concurrency", "max": 1},
                {"name": "a", "key": "route", "algorithm": "concurrency", "max": 1,
                 "overrides": [{"key": "x"}, {"key": "x", "max": 2}]},
            ])),
            vec![
                "filters.limit.rules[0].key[1]: duplicate descriptor",
                "filters.limit.rules[1].name: duplicate rule name (also rules[0])",
                "filters.limit.rules[1].overrides[1].key: duplicate override key",
            ]
        );
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("6000/min"), Ok((6000, 60_000_000_000)));
        assert_eq!(parse_rate("5/10s"), Ok((5, 10_000_000_000)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("1/0s").is_err());
    }

    #[test]
    fn overrides_validate_per_algorithm() {
        let errs = errors_of(serde_json::json!([
          {"name": "a", "key": "client_id", "algorithm": "token_bucket", "rate": "10/s",
           "overrides": [{"key": "app-1", "rate": "100/s", "burst": 5}, {"key": "app-2", "limit": 4}]}
        ]));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("filters.limit.rules[0].overrides[1].limit: unknown field `limit`"),
            "{errs:?}"
        );
    }

    #[test]
    fn overrides_inherit_what_they_leave_out() {
        let c = validate(&spec(
            r#"{"rules": [
              {"name": "w", "key": "client_id", "algorithm": "fixed_window", "limit": 5, "window": "1m",
               "overrides": [{"key": "a", "limit": 50}, {"key": "b"}]},
              {"name": "b", "key": "client_id", "algorithm": "token_bucket", "rate": "10/s", "burst": 40,
               "overrides": [{"key": "a", "rate": "1/s"}, {"key": "b", "burst": 2}]}
            ]}"#,
        ))
        .expect("valid");
        let window = |limit| Params::Window {
            limit,
            window_ns: 60_000_000_000,
        };
        assert_eq!(c.rules[0].params_for("a"), window(50));
        assert_eq!(c.rules[0].params_for("b"), window(5));
        // burst is not inherited: it defaults to the override's own rate.
        assert_eq!(
            c.rules[1].params_for("a"),
            Params::Bucket {
                interval_ns: 1_000_000_000,
                burst: 1,
                quota: 1,
                period_ns: 1_000_000_000
            }
        );
        assert_eq!(
            c.rules[1].params_for("b"),
            Params::Bucket {
                interval_ns: 100_000_000,
                burst: 2,
                quota: 10,
                period_ns: 1_000_000_000
            }
        );
    }

    #[test]
    fn the_written_form_round_trips() {
        let json = serde_json::json!({"rules": [
          {"name": "w", "key": ["route"], "algorithm": "sliding_window", "limit": 5, "window": "1min", "scope": "local",
           "overrides": [{"key": "a", "limit": 50}]},
          {"name": "g", "key": "route", "algorithm": "token_bucket", "rate": "6000/min", "scope": "global",
           "on_store_error": "fail_open", "fallback_peers": 3, "shadow": true, "max_keys": 10}
        ]});
        let s: RateLimitSpec = serde_json::from_value(json.clone()).expect("spec");
        assert_eq!(serde_json::to_value(&s).expect("json"), json);
    }
}
