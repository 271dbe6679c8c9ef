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

/// A filter spec reports errors below it in its message (see
/// `meshgate_filters::config::shape`); joined here into one field path.
fn shape_error(path: String, message: String) -> FieldErrors {
    let e = meshgate_filters::config::shape::shape_error(&path, &message);
    FieldError::new(e.path, without_quoted_value(e.message)).into()
}

/// serde quotes the offending value (`invalid type: string "redis://:pw@h",
/// expected ...`, ``unknown variant `pw`, expected ...``); a misplaced secret
/// must not reach dumps and logs through the error, so the value is replaced.
fn without_quoted_value(message: String) -> String {
    for (open, close) in [
        ("string \"", "\", expected"),
        ("unknown variant `", "`, expected"),
    ] {
        let Some(start) = message.find(open).map(|i| i + open.len()) else {
            continue;
        };
        // The opening quote stays out; from the closing quote on is kept.
        let kept_prefix = &message[..start - 1];
        return match message[start..].rfind(close) {
            Some(len) => format!("{kept_prefix}{REDACTED}{}", &message[start + len + 1..]),
            None => format!("{kept_prefix}{REDACTED}"),
        };
    }
    message
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
            *redis = redis.redacted();
        }
        copy
    }
}

/// The one URL redaction (see `meshgate_filters::redact`), re-exported for
/// the sidecar and the control plane.
pub use meshgate_filters::redact::{redact_url, REDACTED};

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_filters::ValidateCx;

    #[test]
    fn dumps_and_debug_output_never_carry_url_credentials() {
        let spec = parse_yaml(
            r#"
redis: { url: "redis+unix:///run/redis.sock?db=0&pass=S3cret" }
filters:
  sess:
    type: session
    mode: jwt
    jwks_url: "https://u:S3cret@idp.example/jwks?token=S3cret#S3cret"
"#,
        )
        .expect("spec");
        let dumped = serde_json::to_string(&spec.redacted()).expect("json");
        assert!(!dumped.contains("S3cret"), "{dumped}");
        assert!(dumped.contains("pass=[redacted]"), "{dumped}");
        let debugged = format!("{spec:?}");
        assert!(!debugged.contains("S3cret"), "{debugged}");
    }

    #[test]
    fn errors_inside_filters_name_their_whole_path() {
        let first = |yaml: &str| parse_yaml(yaml).expect_err("refused").0[0].to_string();
        assert_eq!(
            first("filters:\n  l:\n    type: rate_limit\n    rules:\n      - { name: a, key: route, algorithm: token_bucket, rate: 1/s, burst: 0 }\n"),
            "filters.l.rules[0].burst: must be at least 1"
        );
        assert_eq!(
            first(
                r#"{"filters": {"l": {"type": "rate_limit", "rules": [{"name": "a", "key": "route", "algorithm": "fixed_window", "limit": 1, "window": "1s", "rate": "1/s"}]}}}"#
            ),
            "filters.l.rules[0].rate: not used by algorithm fixed_window"
        );
        assert_eq!(
            first("filters: { s: { type: session, mode: jwt, jwks_file: k.json, jwks_refreshh: 5m } }\n"),
            "filters.s.jwks_refreshh: unknown field `jwks_refreshh`, expected one of `jwks_refresh`, `jwks_min_refresh`, `jwks_max_stale`, `jwks_timeout`, `jwks_ca_file`, `issuer`, `audiences`, `required_claims`, `leeway`, `algorithms`, `verified_cache_entries`"
        );
        assert_eq!(
            first("filters: { s: { type: sessions } }\n"),
            "filters.s.type: expected header, signature, session or rate_limit"
        );
    }

    #[test]
    fn shape_errors_do_not_echo_string_values() {
        let errors = parse_yaml("redis: \"redis://:S3cret@cache\"\n").expect_err("shape");
        let shown = errors.to_string();
        assert!(!shown.contains("S3cret"), "{shown}");
        assert!(
            shown.starts_with("redis: ")
                && shown.contains("invalid type: string [redacted], expected"),
            "{shown}"
        );
        let errors = parse_json(r#"{"app": {"protocol": "S3cret"}}"#).expect_err("shape");
        assert!(!errors.to_string().contains("S3cret"), "{errors}");
        // Field names stay readable.
        let errors = parse_yaml("app: { adress: x }\n").expect_err("shape");
        assert!(errors.to_string().contains("adress"), "{errors}");
    }

    fn redis_errors(yaml: &str) -> String {
        match parse_yaml(yaml) {
            Err(e) => e.to_string(),
            Ok(spec) => match validate(&spec, &ValidateCx::control_plane()) {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            },
        }
    }

    fn redis_of(yaml: &str) -> RedisConfig {
        let spec = parse_yaml(yaml).expect("spec");
        validate(&spec, &ValidateCx::control_plane())
            .expect("valid")
            .redis
            .expect("redis")
    }

    #[test]
    fn single_server_form_is_unchanged() {
        use meshgate_filters::store::{RedisTarget, ReplicaWait};
        let spec =
            parse_yaml("redis: { url: \"redis://cache:6379/2\", timeout: 80ms }\n").expect("spec");
        // Written back exactly as before, so content versions do not move.
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(
            json["redis"],
            serde_json::json!({"url": "redis://cache:6379/2", "timeout": "80ms"})
        );
        let again = parse_json(&serde_json::to_string(&spec).expect("json")).expect("again");
        assert_eq!(again, spec);
        let redis = redis_of("redis: { url: \"redis://cache:6379/2\" }\n");
        assert_eq!(
            redis.target,
            RedisTarget::Single {
                url: "redis://cache:6379/2".into()
            }
        );
        assert_eq!(redis.timeout, std::time::Duration::from_millis(50));
        assert_eq!(
            redis.nonce_wait,
            ReplicaWait {
                replicas: 0,
                timeout: std::time::Duration::from_millis(50)
            }
        );
    }

    #[test]
    fn cluster_and_sentinel_forms() {
        use meshgate_filters::store::{RedisTarget, ReplicaWait};
        let redis = redis_of(
            "redis: { cluster: [\"10.0.0.1:7000\", \"[::1]:7001\"], timeout: 20ms, password: pw }\n",
        );
        assert_eq!(
            redis.target,
            RedisTarget::Cluster {
                nodes: vec!["10.0.0.1:7000".into(), "[::1]:7001".into()]
            }
        );
        assert_eq!(redis.password.as_deref(), Some("pw"));
        assert_eq!(
            redis.nonce_wait,
            ReplicaWait {
                replicas: 1,
                timeout: std::time::Duration::from_millis(20)
            },
            "replicated servers wait for one replica by default"
        );
        let redis = redis_of(
            r#"
redis:
  sentinel: { master: mymaster, nodes: ["s1:26379", "s2:26379"], password: spw }
  nonce_wait: { replicas: 2, timeout: 5ms }
"#,
        );
        assert_eq!(
            redis.target,
            RedisTarget::Sentinel {
                master: "mymaster".into(),
                nodes: vec!["s1:26379".into(), "s2:26379".into()],
                sentinel_password: Some("spw".into()),
            }
        );
        assert_eq!(
            redis.nonce_wait,
            ReplicaWait {
                replicas: 2,
                timeout: std::time::Duration::from_millis(5)
            }
        );
        let off = redis_of("redis: { cluster: [\"h:1\"], nonce_wait: { replicas: 0 } }\n");
        assert_eq!(off.nonce_wait.replicas, 0);
    }

    #[test]
    fn bad_redis_sections_name_the_field() {
        for (yaml, expected) in [
            (
                "redis: { url: \"redis://a/\", cluster: [\"h:1\"] }",
                "redis: give exactly one of `url`, `cluster` or `sentinel`",
            ),
            ("redis: { timeout: 5ms }", "redis: give exactly one of"),
            (
                "redis: { cluster: [] }",
                "redis.cluster: needs at least one host:port",
            ),
            ("redis: { cluster: [\"h:1\", \"h\"] }", "redis.cluster[1]:"),
            ("redis: { cluster: [\"redis://h:1\"] }", "redis.cluster[0]:"),
            (
                "redis: { sentinel: { master: m, nodes: [] } }",
                "redis.sentinel.nodes:",
            ),
            (
                "redis: { sentinel: { master: \"\", nodes: [\"h:1\"] } }",
                "redis.sentinel.master:",
            ),
            (
                "redis: { sentinel: { master: m } }",
                "redis.sentinel: missing field `nodes`",
            ),
            (
                "redis: { sentinel: { master: m, nodes: [\"h:1\"], quorum: 2 } }",
                "redis.sentinel: unknown field `quorum`",
            ),
            (
                "redis: { url: \"redis://a/\", password: x }",
                "redis.password: with `url`",
            ),
            (
                "redis: { url: \"http://a/\" }",
                "redis.url: must start with",
            ),
            (
                "redis: { cluster: [\"h:1\"], timeout: 0s }",
                "redis.timeout: must be greater than zero",
            ),
            (
                "redis: { cluster: [\"h:1\"], nonce_wait: { replicas: 1, timeout: 0s } }",
                "redis.nonce_wait.timeout: must be greater than zero",
            ),
            (
                "redis: { cluster: [\"h:1\"], nonce_wait: { replica: 1 } }",
                "redis.nonce_wait: unknown field `replica`",
            ),
            (
                "redis: { clusters: [\"h:1\"] }",
                "redis: unknown field `clusters`",
            ),
        ] {
            let shown = redis_errors(&format!("{yaml}\n"));
            assert!(shown.contains(expected), "{yaml}: {shown}");
        }
    }

    #[test]
    fn redis_credentials_are_redacted() {
        let spec = parse_yaml(
            r#"
redis:
  sentinel: { master: m, nodes: ["h:1"], password: S3cret-sentinel }
  username: app
  password: S3cret-data
"#,
        )
        .expect("spec");
        let dumped = serde_json::to_string(&spec.redacted()).expect("json");
        assert!(!dumped.contains("S3cret"), "{dumped}");
        assert!(dumped.contains("\"password\":\"[redacted]\""), "{dumped}");
        assert!(dumped.contains("\"username\":\"app\""), "{dumped}");
        let debugged = format!("{spec:?}");
        assert!(!debugged.contains("S3cret"), "{debugged}");
        let config = validate(&spec, &ValidateCx::control_plane()).expect("valid");
        let debugged = format!("{config:?}");
        assert!(!debugged.contains("S3cret"), "{debugged}");
    }
}
