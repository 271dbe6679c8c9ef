//! Validation of a [`ConfigSpec`] into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use indexmap::IndexMap;
use meshgate_filters::config::loopback_listen;
use meshgate_filters::error::reason;
use meshgate_filters::signature::egress::EgressConfig;
use meshgate_filters::signature::Scheme;
use meshgate_filters::{FieldErrors, FilterConfig, FilterSpec, ValidateCx};

use super::spec::*;

/// A fully validated config. Cheap to share; immutable once built.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: Option<String>,
    pub inbound: Inbound,
    pub app: App,
    pub admin_listen: SocketAddr,
    pub health_listen: Option<SocketAddr>,
    pub redis: Option<RedisConfig>,
    pub routes: Vec<Route>,
    pub filters: IndexMap<String, FilterConfig>,
    /// Numeric code per error reason, defaults already filled in.
    pub error_codes: IndexMap<&'static str, u32>,
    /// The spec this was validated from, for dumps and state files.
    pub spec: Arc<ConfigSpec>,
    /// The egress listener, when configured.
    pub egress: Option<EgressConfig>,
}

#[derive(Debug, Clone)]
pub struct Inbound {
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub path_normalization: PathNormalizationSpec,
    pub headers_with_underscores: UnderscoreHeaders,
    pub xff_trusted_hops: usize,
    pub body_idle_timeout: Duration,
    pub idle_timeout: Duration,
}

/// More trusted proxies than this is a typo, not a deployment.
pub const MAX_XFF_TRUSTED_HOPS: usize = 16;

/// TLS files, already read so a reload that breaks them is rejected.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAddress {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub struct App {
    pub address: AppAddress,
    pub protocol: AppProtocol,
    pub connect_timeout: Duration,
    pub health_path: Option<String>,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub max_idle_connections: usize,
    pub pool_idle_timeout: Duration,
}

/// The validated `redis:` section: what the sidecar's `RedisStore` is built from.
pub type RedisConfig = meshgate_filters::store::RedisOptions;

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Arc<str>,
    pub matcher: MatchRule,
    pub action: RouteAction,
    pub timeout: Duration,
    pub max_body_bytes: usize,
    pub buffer_request: bool,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone)]
pub struct MatchRule {
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    /// Lower-case host; a leading `*.` matches any subdomain.
    pub host: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Run these filter instances, then forward to the app.
    Forward { filters: Vec<String> },
    /// Answer from config.
    Respond(Responder),
}

#[derive(Debug, Clone)]
pub struct Responder {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: bytes_like::Body,
}

/// Keeps this crate free of a `bytes` dependency for one field.
pub mod bytes_like {
    pub type Body = std::sync::Arc<str>;
}

fn socket_addr(value: &str, path: &str, errors: &mut FieldErrors) -> Option<SocketAddr> {
    value
        .parse::<SocketAddr>()
        .map_err(|_| {
            errors.push(
                path,
                format!("{value:?} is not an address of the form ip:port"),
            )
        })
        .ok()
}

/// The `redis:` section: the servers well-formed, credentials only where
/// they have a place, the replica wait resolved to its default.
fn redis_config(r: &RedisSpec, errors: &mut FieldErrors) -> RedisConfig {
    use meshgate_filters::store::{parse_node, RedisTarget, ReplicaWait};
    let nodes = |nodes: &[String], path: &str, errors: &mut FieldErrors| {
        if nodes.is_empty() {
            errors.push(path, "needs at least one host:port");
        }
        for (i, node) in nodes.iter().enumerate() {
            if let Err(e) = parse_node(node) {
                errors.push(format!("{path}[{i}]"), e);
            }
        }
        nodes.to_vec()
    };
    let target = match &r.servers {
        RedisServers::Url(url) => {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://"))
            {
                errors.push(
                    "redis.url",
                    "must start with redis://, rediss:// or redis+unix://",
                );
            }
            for (field, value) in [("username", &r.username), ("password", &r.password)] {
                if value.is_some() {
                    errors.push(
                        format!("redis.{field}"),
                        "with `url`, credentials go in the URL (redis://user:pass@host/)",
                    );
                }
            }
            RedisTarget::Single { url: url.clone() }
        }
        RedisServers::Cluster(list) => RedisTarget::Cluster {
            nodes: nodes(list, "redis.cluster", errors),
        },
        RedisServers::Sentinel(s) => {
            if s.master.is_empty() {
                errors.push("redis.sentinel.master", "must name the monitored master");
            }
            RedisTarget::Sentinel {
                master: s.master.clone(),
                nodes: nodes(&s.nodes, "redis.sentinel.nodes", errors),
                sentinel_password: s.password.clone(),
            }
        }
    };
    let timeout = positive(r.timeout, "redis.timeout", errors);
    // Replicated servers wait for one replica by default: without it a
    // nonce the primary accepted can be lost in a failover and replayed.
    let nonce_wait = match &r.nonce_wait {
        Some(w) => ReplicaWait {
            replicas: w.replicas,
            timeout: match w.timeout {
                Some(t) => positive(t, "redis.nonce_wait.timeout", errors),
                None => timeout,
            },
        },
        None => ReplicaWait {
            replicas: if matches!(target, RedisTarget::Single { .. }) {
                0
            } else {
                1
            },
            timeout,
        },
    };
    RedisConfig {
        target,
        username: r.username.clone(),
        password: r.password.clone(),
        timeout,
        nonce_wait,
    }
}

fn positive(d: Duration, path: &str, errors: &mut FieldErrors) -> Duration {
    if d.is_zero() {
        errors.push(path, "must be greater than zero");
    }
    d
}

/// Validates every field of `spec`; on success the config can be applied as a whole.
pub fn validate(spec: &ConfigSpec, cx: &ValidateCx) -> Result<Config, FieldErrors> {
    let mut errors = FieldErrors::default();

    // inbound
    let i = &spec.inbound;
    let listen = socket_addr(&i.listen, "inbound.listen", &mut errors);
    let tls = i.tls.as_ref().and_then(|t| {
        let cert = cx
            .read_file("inbound.tls.cert", t.cert.as_ref())
            .map_err(|e| errors.0.push(e))
            .ok()?;
        let key = cx
            .read_file("inbound.tls.key", t.key.as_ref())
            .map_err(|e| errors.0.push(e))
            .ok()?;
        Some(Tls {
            cert_path: cx.resolve(t.cert.as_ref()),
            key_path: cx.resolve(t.key.as_ref()),
            cert_pem: cert.unwrap_or_default(),
            key_pem: key.unwrap_or_default(),
        })
    });
    if i.max_header_bytes < 1024 {
        errors.push("inbound.max_header_bytes", "must be at least 1024");
    }
    let inbound = Inbound {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        tls,
        max_header_bytes: i.max_header_bytes,
        max_body_bytes: i.max_body_bytes,
        header_timeout: positive(i.header_timeout, "inbound.header_timeout", &mut errors),
        request_timeout: positive(i.request_timeout, "inbound.request_timeout", &mut errors),
        path_normalization: i.path_normalization,
        headers_with_underscores: i.headers_with_underscores,
        xff_trusted_hops: i.xff_trusted_hops,
        body_idle_timeout: positive(
            i.body_idle_timeout,
            "inbound.body_idle_timeout",
            &mut errors,
        ),
        idle_timeout: positive(i.idle_timeout, "inbound.idle_timeout", &mut errors),
    };
    if i.xff_trusted_hops > MAX_XFF_TRUSTED_HOPS {
        errors.push(
            "inbound.xff_trusted_hops",
            format!("must be at most {MAX_XFF_TRUSTED_HOPS}"),
        );
    }

    // app
    let a = &spec.app;
    let address = if let Some(p) = a.address.strip_prefix("unix:") {
        if p.is_empty() {
            errors.push("app.address", "unix: needs a socket path");
        }
        AppAddress::Unix(PathBuf::from(p))
    } else {
        match a
            .address
            .rsplit_once(':')
            .map(|(h, p)| (h, p.parse::<u16>()))
        {
            Some((host, Ok(_))) if !host.is_empty() => AppAddress::Tcp(a.address.clone()),
            _ => {
                errors.push(
                    "app.address",
                    format!("{:?} is neither host:port nor unix:/path", a.address),
                );
                AppAddress::Tcp(a.address.clone())
            }
        }
    };
    if let Some(h) = &a.health_path {
        if !h.starts_with('/') {
            errors.push("app.health_path", "must start with '/'");
        }
    }
    let app = App {
        address,
        protocol: a.protocol,
        connect_timeout: positive(a.connect_timeout, "app.connect_timeout", &mut errors),
        health_path: a.health_path.clone(),
        health_interval: positive(a.health_interval, "app.health_interval", &mut errors),
        health_timeout: positive(a.health_timeout, "app.health_timeout", &mut errors),
        max_idle_connections: a.max_idle_connections,
        pool_idle_timeout: a.pool_idle_timeout,
    };

    // The admin API drains, upgrades and dumps config; probes from outside
    // the pod use admin.health_listen.
    let admin_listen = loopback_listen(&spec.admin.listen, "admin.listen", &mut errors)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let health_listen = spec
        .admin
        .health_listen
        .as_ref()
        .and_then(|h| socket_addr(h, "admin.health_listen", &mut errors));

    let redis = spec.redis.as_ref().map(|r| redis_config(r, &mut errors));

    // filters
    let mut filters = IndexMap::new();
    for (name, f) in &spec.filters {
        let path = format!("filters.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(&path, "filter names use letters, digits, '-' and '_'");
        }
        match f.validate(&path, cx) {
            Ok(c) => {
                if c.uses_redis() && spec.redis.is_none() {
                    errors.push(
                        &path,
                        "uses a Redis store but the config has no `redis:` section",
                    );
                }
                filters.insert(name.clone(), c);
            }
            Err(e) => errors.extend(e),
        }
    }

    // routes
    let mut routes = Vec::with_capacity(spec.routes.len());
    let mut seen = std::collections::HashSet::new();
    for (idx, r) in spec.routes.iter().enumerate() {
        let path = format!("routes[{idx}]");
        if r.name.is_empty() {
            errors.push(format!("{path}.name"), "is required");
        } else if !seen.insert(r.name.as_str()) {
            errors.push(
                format!("{path}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let m = &r.matcher;
        let path_match = match (&m.path, &m.path_prefix) {
            (Some(_), Some(_)) => {
                errors.push(
                    format!("{path}.match"),
                    "set either path or path_prefix, not both",
                );
                PathMatch::Any
            }
            (Some(p), None) | (None, Some(p)) if !p.starts_with('/') => {
                let field = if m.path.is_some() {
                    "path"
                } else {
                    "path_prefix"
                };
                errors.push(format!("{path}.match.{field}"), "must start with '/'");
                PathMatch::Any
            }
            (Some(p), None) => PathMatch::Exact(p.clone()),
            (None, Some(p)) => PathMatch::Prefix(p.clone()),
            (None, None) => PathMatch::Any,
        };
        // Requests are matched in normal form; a route path in any other
        // form could never match.
        let (field, route_path) = match &path_match {
            PathMatch::Exact(p) => ("path", Some(p)),
            PathMatch::Prefix(p) => ("path_prefix", Some(p)),
            PathMatch::Any => ("", None),
        };
        if let Some(p) = route_path {
            match super::path::normalize_path(p, &i.path_normalization) {
                Ok(normal) if normal == p.as_str() => {}
                Ok(normal) => errors.push(
                    format!("{path}.match.{field}"),
                    format!("requests are matched in normal form; write {normal:?}"),
                ),
                Err(e) => errors.push(
                    format!("{path}.match.{field}"),
                    format!("can never match: {e} (inbound.path_normalization)"),
                ),
            }
        }
        let methods = m
            .methods
            .iter()
            .enumerate()
            .filter_map(|(mi, s)| {
                Method::from_bytes(s.to_ascii_uppercase().as_bytes())
                    .map_err(|_| {
                        errors.push(
                            format!("{path}.match.methods[{mi}]"),
                            format!("invalid method {s:?}"),
                        )
                    })
                    .ok()
            })
            .collect();
        let action = match &r.respond {
            Some(resp) => {
                if !r.filters.is_empty() {
                    errors.push(
                        format!("{path}.filters"),
                        "a route that responds itself runs no filters",
                    );
                }
                let status = StatusCode::from_u16(resp.status)
                    .map_err(|_| {
                        errors.push(
                            format!("{path}.respond.status"),
                            format!("{} is not an HTTP status", resp.status),
                        )
                    })
                    .unwrap_or(StatusCode::OK);
                let headers = resp
                    .headers
                    .iter()
                    .filter_map(|(k, v)| {
                        let name = HeaderName::try_from(k.as_str())
                            .map_err(|_| {
                                errors.push(
                                    format!("{path}.respond.headers.{k}"),
                                    "invalid header name",
                                )
                            })
                            .ok()?;
                        let value = HeaderValue::try_from(v.as_str())
                            .map_err(|_| {
                                errors.push(
                                    format!("{path}.respond.headers.{k}"),
                                    "invalid header value",
                                )
                            })
                            .ok()?;
                        Some((name, value))
                    })
                    .collect();
                RouteAction::Respond(Responder {
                    status,
                    headers,
                    body: Arc::from(resp.body.as_str()),
                })
            }
            None => {
                for (fi, f) in r.filters.iter().enumerate() {
                    if !spec.filters.contains_key(f) {
                        errors.push(
                            format!("{path}.filters[{fi}]"),
                            format!("no filter named {f:?} in `filters`"),
                        );
                    }
                }
                RouteAction::Forward {
                    filters: r.filters.clone(),
                }
            }
        };
        if let Some(t) = r.timeout {
            positive(t, &format!("{path}.timeout"), &mut errors);
        }
        routes.push(Route {
            name: Arc::from(r.name.as_str()),
            matcher: MatchRule {
                path: path_match,
                methods,
                host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
            },
            action,
            timeout: r.timeout.unwrap_or(inbound.request_timeout),
            max_body_bytes: r.max_body_bytes.unwrap_or(inbound.max_body_bytes),
            buffer_request: r.buffer_request,
        });
    }

    check_alipay_routes(spec, &mut errors);

    // error codes
    let mut error_codes: IndexMap<&'static str, u32> = meshgate_filters::error::REASONS
        .iter()
        .map(|r| (r.name, r.default_code))
        .collect();
    for (name, code) in &spec.error_codes {
        match reason(name) {
            Some(r) => {
                error_codes.insert(r.name, *code);
            }
            None => errors.push(format!("error_codes.{name}"), "unknown error reason"),
        }
    }

    let egress = spec.egress.as_ref().and_then(|e| {
        e.validate("egress", cx)
            .map_err(|errs| errors.extend(errs))
            .ok()
    });

    errors.into_result(Config {
        version: spec.version.clone(),
        inbound,
        app,
        admin_listen,
        health_listen,
        redis,
        routes,
        filters,
        error_codes,
        spec: Arc::new(spec.clone()),
        egress,
    })
}

/// The Alipay signed content names neither the HTTP method nor the path, so a
/// route that verifies it pins both, and one alipay filter serves one route:
/// otherwise a signature made for one endpoint is accepted at another.
fn check_alipay_routes(spec: &ConfigSpec, errors: &mut FieldErrors) {
    let mut served: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (idx, r) in spec.routes.iter().enumerate() {
        let path = format!("routes[{idx}]");
        for (fi, f) in r.filters.iter().enumerate() {
            let Some(FilterSpec::Signature(sig)) = spec.filters.get(f) else {
                continue;
            };
            if sig.scheme != Scheme::AlipayRsa2 {
                continue;
            }
            if r.matcher.path.is_none() {
                errors.push(
                    format!("{path}.match.path"),
                    format!(
                        "filter {f:?} (alipay-rsa2) does not sign the path: match one exact `path`{}",
                        if r.matcher.path_prefix.is_some() {
                            ", not `path_prefix`"
                        } else {
                            ""
                        }
                    ),
                );
            }
            if r.matcher.methods.is_empty() {
                errors.push(
                    format!("{path}.match.methods"),
                    format!(
                        "filter {f:?} (alipay-rsa2) does not sign the method: list the methods"
                    ),
                );
            }
            match served.entry(f.as_str()) {
                std::collections::hash_map::Entry::Occupied(other) => errors.push(
                    format!("{path}.filters[{fi}]"),
                    format!(
                        "filter {f:?} (alipay-rsa2) already serves route {:?}; its signatures name no route, so give each route its own filter",
                        other.get()
                    ),
                ),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(r.name.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;

    fn errors_of(yaml: &str) -> Vec<String> {
        let spec = match parse_yaml(yaml) {
            Ok(s) => s,
            Err(e) => return e.0.iter().map(|e| e.to_string()).collect(),
        };
        match validate(&spec, &ValidateCx::control_plane()) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn issue_example_validates() {
        let yaml = r#"
inbound: { listen: "0.0.0.0:15006" }
app: { address: "127.0.0.1:8080", health_path: /healthz }
admin: { listen: "127.0.0.1:15000" }
routes:
  - name: api
    match: { path_prefix: /api/, methods: [GET, POST] }
    filters: [policy]
  - name: bill-mock
    match: { path: /mock/bill }
    respond: { status: 200, headers: { content-type: application/json }, body: '{"bill":[]}' }
filters:
  policy: { type: header, require: [x-app] }
"#;
        assert_eq!(errors_of(yaml), Vec::<String>::new());
    }

    #[test]
    fn alipay_routes_pin_one_path_and_their_methods() {
        let config = |routes: &str| {
            format!(
                r#"
inbound: {{ listen: "127.0.0.1:15006" }}
app: {{ address: "127.0.0.1:8080" }}
admin: {{ listen: "127.0.0.1:15000" }}
routes:
{routes}
filters:
  pay: {{ type: signature, scheme: alipay-rsa2, keys: [{{ id: m, alg: rsa-v1_5-sha256, public_key_file: m.pem }}] }}
  other: {{ type: signature, scheme: alipay-rsa2, keys: [{{ id: m, alg: rsa-v1_5-sha256, public_key_file: m.pem }}] }}
  hdr: {{ type: header, require: [x-app] }}
"#
            )
        };
        let ok = "  - { name: gw, match: { path: /gateway.do, methods: [POST] }, filters: [hdr, pay] }\n  - { name: n, match: { path: /notify, methods: [POST] }, filters: [other] }\n  - { name: rest, match: { path_prefix: / }, filters: [hdr] }";
        assert_eq!(errors_of(&config(ok)), Vec::<String>::new());
        assert_eq!(
            errors_of(&config(
                "  - { name: gw, match: { path_prefix: /gateway }, filters: [hdr, pay] }"
            )),
            vec![
                r#"routes[0].match.path: filter "pay" (alipay-rsa2) does not sign the path: match one exact `path`, not `path_prefix`"#,
                r#"routes[0].match.methods: filter "pay" (alipay-rsa2) does not sign the method: list the methods"#,
            ]
        );
        assert_eq!(
            errors_of(&config("  - { name: gw, filters: [pay] }")),
            vec![
                r#"routes[0].match.path: filter "pay" (alipay-rsa2) does not sign the path: match one exact `path`"#,
                r#"routes[0].match.methods: filter "pay" (alipay-rsa2) does not sign the method: list the methods"#,
            ]
        );
        assert_eq!(
            errors_of(&config("  - { name: gw, match: { path: /a, methods: [POST] }, filters: [pay] }\n  - { name: gw2, match: { path: /b, methods: [POST] }, filters: [hdr, pay] }")),
            vec![
                r#"routes[1].filters[1]: filter "pay" (alipay-rsa2) already serves route "gw"; its signatures name no route, so give each route its own filter"#,
            ]
        );
    }

    #[test]
    fn every_error_names_its_field() {
        let yaml = r#"
inbound: { listen: "nope" }
app: { address: "localhost" }
routes:
  - name: a
    match: { path: "x" }
    filters: [missing]
  - name: a
    respond: { status: 99 }
error_codes: { no_such_reason: 1 }
"#;
        assert_eq!(
            errors_of(yaml),
            vec![
                "inbound.listen: \"nope\" is not an address of the form ip:port",
                "app.address: \"localhost\" is neither host:port nor unix:/path",
                "routes[0].match.path: must start with '/'",
                "routes[0].filters[0]: no filter named \"missing\" in `filters`",
                "routes[1].name: duplicate route name \"a\"",
                "routes[1].respond.status: 99 is not an HTTP status",
                "error_codes.no_such_reason: unknown error reason",
            ]
        );
    }

    #[test]
    fn read_time_bounds_have_defaults_and_must_be_positive() {
        let spec = parse_yaml("inbound: { listen: \"127.0.0.1:1\" }\n").expect("yaml");
        let config = validate(&spec, &ValidateCx::control_plane()).expect("valid");
        assert_eq!(config.inbound.body_idle_timeout, Duration::from_secs(15));
        assert_eq!(config.inbound.idle_timeout, Duration::from_secs(60));
        let yaml =
            "inbound: { listen: \"127.0.0.1:1\", body_idle_timeout: 0s, idle_timeout: 0s }\n";
        assert_eq!(
            errors_of(yaml),
            vec![
                "inbound.body_idle_timeout: must be greater than zero",
                "inbound.idle_timeout: must be greater than zero",
            ]
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let errs = errors_of("app: { adress: \"127.0.0.1:1\" }\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("app.adress: ") && errs[0].contains("unknown field `adress`"),
            "{errs:?}"
        );
    }

    #[test]
    fn admin_and_egress_listen_on_loopback_only() {
        assert_eq!(
            errors_of("admin: { listen: \"0.0.0.0:15000\" }\negress: { listen: \"0.0.0.0:15001\" }\n"),
            vec![
                "admin.listen: \"0.0.0.0:15000\" is not a loopback address: this listener serves only 127.0.0.0/8, [::1] or localhost",
                "egress.listen: \"0.0.0.0:15001\" is not a loopback address: this listener serves only 127.0.0.0/8, [::1] or localhost",
            ]
        );
        assert_eq!(
            errors_of(
                "admin: { listen: \"localhost:15000\" }\negress: { listen: \"[::1]:15001\" }\n"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn admission_policy_fields() {
        let yaml = r#"
inbound:
  path_normalization: { merge_slashes: false, escaped_slashes: keep, semicolons: keep }
  headers_with_underscores: reject
  xff_trusted_hops: 2
"#;
        assert_eq!(errors_of(yaml), Vec::<String>::new());
        let spec = parse_yaml(yaml).expect("yaml");
        let config = validate(&spec, &ValidateCx::control_plane()).expect("valid");
        assert_eq!(config.inbound.xff_trusted_hops, 2);
        assert_eq!(
            config.inbound.path_normalization.escaped_slashes,
            EscapedSlashes::Keep
        );
        // Defaults are the secure ones.
        let d = InboundSpec::default();
        assert_eq!(d.headers_with_underscores, UnderscoreHeaders::Drop);
        assert_eq!(d.path_normalization.escaped_slashes, EscapedSlashes::Reject);
        assert_eq!(d.path_normalization.semicolons, Semicolons::Reject);
        assert!(d.path_normalization.merge_slashes);
        assert_eq!(d.xff_trusted_hops, 0);

        let errs = errors_of("inbound: { headers_with_underscores: maybe }\n");
        assert!(
            errs.len() == 1 && errs[0].starts_with("inbound.headers_with_underscores: "),
            "{errs:?}"
        );
        let errs = errors_of("inbound: { path_normalization: { escaped_slashes: sometimes } }\n");
        assert!(
            errs.len() == 1 && errs[0].starts_with("inbound.path_normalization.escaped_slashes: "),
            "{errs:?}"
        );
        assert_eq!(
            errors_of("inbound: { xff_trusted_hops: 17 }\n"),
            vec!["inbound.xff_trusted_hops: must be at most 16"]
        );
    }

    #[test]
    fn route_paths_must_be_in_normal_form() {
        let yaml = r#"
routes:
  - { name: a, match: { path_prefix: "/%70rivate/" } }
  - { name: b, match: { path: "/a/../b" } }
  - { name: c, match: { path_prefix: "/x;y" } }
  - { name: d, match: { path_prefix: "/ok/" } }
"#;
        assert_eq!(
            errors_of(yaml),
            vec![
                "routes[0].match.path_prefix: requests are matched in normal form; write \"/private/\"",
                "routes[1].match.path: requests are matched in normal form; write \"/b\"",
                "routes[2].match.path_prefix: can never match: the path has a ';' parameter (inbound.path_normalization)",
            ]
        );
    }
}
