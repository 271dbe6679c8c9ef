//! The config as written in a YAML file or pushed by the control plane.
//!
//! These types only describe shape; [`super::validate`] turns them into the
//! validated [`super::Config`]. Unknown fields are errors, so a typo is caught
//! instead of silently ignored.

use std::time::Duration;

use indexmap::IndexMap;
use meshgate_filters::signature::egress::EgressSpec;
use meshgate_filters::FilterSpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    /// Optional label of this config; the control plane sets it on push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub inbound: InboundSpec,
    #[serde(default)]
    pub app: AppSpec,
    #[serde(default)]
    pub admin: AdminSpec,
    /// Shared Redis server for filters that use `store: redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Ordered routes; the first match wins.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Named filter instances, referenced by routes.
    #[serde(default)]
    pub filters: IndexMap<String, FilterSpec>,
    /// Custom numeric codes per error reason (e.g. `rate_limited: 1029`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub error_codes: IndexMap<String, u32>,
    /// Egress listener that signs the app's outbound calls per destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboundSpec {
    pub listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Largest request head (request line and headers) accepted; larger is 431.
    pub max_header_bytes: usize,
    /// Largest body a filter may buffer; larger is 413. Streamed bodies are not limited.
    pub max_body_bytes: usize,
    /// Time to receive the request head from the client.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time from the request to the app's response head; beyond it 504.
    /// Also bounds buffering a request body (408 beyond it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest gap between two pieces of a request body streamed to the app;
    /// beyond it the upload is cut (408 when a status can still be sent).
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// A client connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How the request path is normalised before routing (docs/config.md).
    pub path_normalization: PathNormalizationSpec,
    /// What happens to request headers whose names contain `_`.
    pub headers_with_underscores: UnderscoreHeaders,
    /// Proxies in front of the sidecar whose `X-Forwarded-For` entries are
    /// trusted; 0 (the default) trusts none and takes the connection's peer.
    pub xff_trusted_hops: usize,
}

/// Path normalisation: percent-encoded unreserved characters are always
/// decoded and dot segments always resolved; these choose the rest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PathNormalizationSpec {
    /// Collapse `//` into `/` before dot segments are resolved.
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and a raw `\` in the path.
    pub escaped_slashes: EscapedSlashes,
    /// `;` (path parameters) in the path.
    pub semicolons: Semicolons,
}

impl Default for PathNormalizationSpec {
    fn default() -> Self {
        PathNormalizationSpec {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            semicolons: Semicolons::Reject,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 `bad_path`.
    #[default]
    Reject,
    /// Forwarded as `%2F` / `%5C` (a raw `\` as `%5C`); not a segment separator.
    Keep,
    /// Decoded to `/` (all three) before dot segments are resolved.
    Decode,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Semicolons {
    /// 400 `bad_path`.
    #[default]
    Reject,
    /// Forwarded as sent; a segment that is `.` or `..` before its `;` is
    /// still refused (Tomcat reads `/..;x/` as `/../`).
    Keep,
}

/// Envoy's `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreHeaders {
    /// Removed before routing; the app never sees them.
    #[default]
    Drop,
    /// Forwarded, except names that read as a reserved one with `_` as `-`
    /// (`x_meshgate_user`, `x_forwarded_for`), which are removed.
    Allow,
    /// 400 `bad_header_name`.
    Reject,
}

impl Default for InboundSpec {
    fn default() -> Self {
        InboundSpec {
            listen: "0.0.0.0:15006".into(),
            tls: None,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            path_normalization: PathNormalizationSpec::default(),
            headers_with_underscores: UnderscoreHeaders::Drop,
            xff_trusted_hops: 0,
            body_idle_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); needed for gRPC apps.
    Http2,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppSpec {
    /// `host:port` or `unix:/path/to.sock`.
    pub address: String,
    pub protocol: AppProtocol,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Path of the app's health check; no health checking when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Idle pooled connections kept per app.
    pub max_idle_connections: usize,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

impl Default for AppSpec {
    fn default() -> Self {
        AppSpec {
            address: "127.0.0.1:8080".into(),
            protocol: AppProtocol::Http1,
            connect_timeout: Duration::from_secs(1),
            health_path: None,
            health_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(1),
            max_idle_connections: 64,
            pool_idle_timeout: Duration::from_secs(90),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSpec {
    /// The admin API (metrics, config dump, drain, log level). Loopback only.
    pub listen: String,
    /// Optional listener serving only `/ready` and `/live`, for probes that
    /// come from outside the pod (kubelet). Any address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_listen: Option<String>,
}

impl Default for AdminSpec {
    fn default() -> Self {
        AdminSpec {
            listen: "127.0.0.1:15000".into(),
            health_listen: None,
        }
    }
}

/// The top-level `redis:` section: which servers, and how long a command may
/// take. Written as one of
/// `{ url: redis://host:port/db }` (one server),
/// `{ cluster: [host:port, ...] }` (Redis Cluster) or
/// `{ sentinel: { master: NAME, nodes: [host:port, ...] } }` (Sentinel),
/// beside `timeout`, `username`/`password` (cluster and Sentinel data nodes)
/// and `nonce_wait`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RedisFields", into = "RedisFields")]
pub struct RedisSpec {
    pub servers: RedisServers,
    /// Per-command timeout; a slow Redis never stalls requests longer.
    pub timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `WAIT` for replicas on nonce writes; unset: the default of `servers`.
    pub nonce_wait: Option<NonceWaitSpec>,
}

/// Exactly one kind of server set.
#[derive(Clone, PartialEq)]
pub enum RedisServers {
    /// `redis://host:port/db`, `rediss://` or `redis+unix://`; credentials in
    /// it (userinfo, query values such as `pass=`) are redacted in dumps and logs.
    Url(String),
    /// Some nodes of a Redis Cluster (`host:port`); the others are learnt.
    Cluster(Vec<String>),
    Sentinel(SentinelSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSpec {
    /// The monitored master's name (`sentinel monitor NAME ...`).
    pub master: String,
    /// Sentinels as `host:port`.
    pub nodes: Vec<String>,
    /// The sentinels' own password, if they have one (redacted in dumps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// After a fresh nonce is written, wait until `replicas` replicas have it
/// (Redis `WAIT`), at most `timeout` (default: `redis.timeout`); fewer in
/// time refuse the request with 503. `replicas: 0` turns the wait off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceWaitSpec {
    pub replicas: u32,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
}

/// The written form of [`RedisSpec`]: the choice of servers as sibling
/// fields, as users write it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sentinel: Option<SentinelSpec>,
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce_wait: Option<NonceWaitSpec>,
}

impl TryFrom<RedisFields> for RedisSpec {
    type Error = String;

    fn try_from(f: RedisFields) -> Result<Self, String> {
        let servers = match (f.url, f.cluster, f.sentinel) {
            (Some(url), None, None) => RedisServers::Url(url),
            (None, Some(nodes), None) => RedisServers::Cluster(nodes),
            (None, None, Some(sentinel)) => RedisServers::Sentinel(sentinel),
            _ => return Err("give exactly one of `url`, `cluster` or `sentinel`".into()),
        };
        Ok(RedisSpec {
            servers,
            timeout: f.timeout,
            username: f.username,
            password: f.password,
            nonce_wait: f.nonce_wait,
        })
    }
}

impl From<RedisSpec> for RedisFields {
    fn from(s: RedisSpec) -> Self {
        let (url, cluster, sentinel) = match s.servers {
            RedisServers::Url(url) => (Some(url), None, None),
            RedisServers::Cluster(nodes) => (None, Some(nodes), None),
            RedisServers::Sentinel(sentinel) => (None, None, Some(sentinel)),
        };
        RedisFields {
            url,
            cluster,
            sentinel,
            timeout: s.timeout,
            username: s.username,
            password: s.password,
            nonce_wait: s.nonce_wait,
        }
    }
}

impl RedisSpec {
    /// One server at `url` with the default timeout (today's form).
    pub fn url(url: &str) -> Self {
        RedisSpec {
            servers: RedisServers::Url(url.to_string()),
            timeout: default_redis_timeout(),
            username: None,
            password: None,
            nonce_wait: None,
        }
    }

    /// The same spec with every credential replaced by [`crate::config::REDACTED`].
    pub fn redacted(&self) -> RedisSpec {
        use meshgate_filters::redact::{redact_url, REDACTED};
        let mut copy = self.clone();
        match &mut copy.servers {
            RedisServers::Url(url) => *url = redact_url(url),
            RedisServers::Cluster(nodes) => nodes.iter_mut().for_each(redact_node),
            RedisServers::Sentinel(s) => {
                s.nodes.iter_mut().for_each(redact_node);
                if s.password.is_some() {
                    s.password = Some(REDACTED.into());
                }
            }
        }
        if copy.password.is_some() {
            copy.password = Some(REDACTED.into());
        }
        copy
    }
}

/// A node is `host:port`; anything that could carry a credential (a URL,
/// userinfo) is not shown.
fn redact_node(node: &mut String) {
    if node.contains('@') || node.contains('/') {
        *node = meshgate_filters::redact::REDACTED.to_string();
    }
}

/// Shows no credential: a spec reaches logs through `{:?}` too.
impl std::fmt::Debug for RedisSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.redacted();
        let mut d = f.debug_struct("RedisSpec");
        match &shown.servers {
            RedisServers::Url(url) => d.field("url", url),
            RedisServers::Cluster(nodes) => d.field("cluster", nodes),
            RedisServers::Sentinel(s) => d.field("sentinel", s),
        };
        d.field("timeout", &shown.timeout)
            .field("username", &shown.username)
            .field("password", &shown.password)
            .field("nonce_wait", &shown.nonce_wait)
            .finish()
    }
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Filter instances run in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<String>,
    /// Answer from config without calling the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondSpec>,
    /// Overrides `inbound.request_timeout` for this route.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
    /// Overrides `inbound.max_body_bytes` for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// Read the whole request body (up to `max_body_bytes`, else 413) before
    /// calling the app, which then always gets a `Content-Length`. Off by
    /// default: bodies stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub buffer_request: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Host (authority without port), exact, or `*.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

fn default_status() -> u16 {
    200
}
