//! The shared Redis connection used by filters with `store: redis`.
//!
//! The servers are one Redis server, a Redis Cluster, or a primary found
//! through Sentinel ([`RedisTarget`]). One multiplexed connection per sidecar
//! (for a cluster, the `redis` crate's cluster connection, which keeps one
//! per primary and follows slot moves and failovers itself), opened lazily
//! and reopened after a failure. Every command runs under the configured
//! timeout so a slow or dead Redis costs a request at most that long; after
//! a failure, new connection attempts are spaced out so a dead Redis is not
//! hammered by every request. With Sentinel, each reconnect asks the
//! sentinels for the current primary, and a primary that turned into a
//! replica (`READONLY`) is left at once.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Which Redis servers hold the shared state.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server: `redis://`, `rediss://` or `redis+unix://` URL (which
    /// may carry credentials and a database).
    Single { url: String },
    /// Redis Cluster: some of its nodes as `host:port`; the rest is learnt.
    Cluster { nodes: Vec<String> },
    /// The primary of `master` as the sentinels at `nodes` (`host:port`) name it.
    Sentinel {
        master: String,
        nodes: Vec<String>,
        /// Password of the sentinels themselves (`requirepass` of sentinel.conf).
        sentinel_password: Option<String>,
    },
}

impl RedisTarget {
    /// Whether keys are spread over slots (scripts must stay in one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }
}

/// Shows no credential: targets reach logs through `{:?}`.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single { url } => f
                .debug_struct("Single")
                .field("url", &crate::redact::redact_url(url))
                .finish(),
            RedisTarget::Cluster { nodes } => {
                f.debug_struct("Cluster").field("nodes", nodes).finish()
            }
            RedisTarget::Sentinel {
                master,
                nodes,
                sentinel_password,
            } => f
                .debug_struct("Sentinel")
                .field("master", master)
                .field("nodes", nodes)
                .field(
                    "sentinel_password",
                    &sentinel_password.as_ref().map(|_| crate::redact::REDACTED),
                )
                .finish(),
        }
    }
}

/// After a nonce write, wait for this many replicas to have it (Redis
/// `WAIT`), at most `timeout`. `replicas: 0` waits for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    pub replicas: u32,
    pub timeout: Duration,
}

/// Everything a [`RedisStore`] is built from (the validated `redis:` section).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    pub target: RedisTarget,
    /// Credentials for the data nodes of a cluster or Sentinel group (a
    /// single server takes them from its URL).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-command timeout.
    pub timeout: Duration,
    /// Replication wait on nonce writes.
    pub nonce_wait: ReplicaWait,
}

impl RedisOptions {
    /// One server at `url`, no replica wait: the form every release had.
    pub fn single(url: &str, timeout: Duration) -> Self {
        RedisOptions {
            target: RedisTarget::Single {
                url: url.to_string(),
            },
            username: None,
            password: None,
            timeout,
            nonce_wait: ReplicaWait {
                replicas: 0,
                timeout,
            },
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("target", &self.target)
            .field("username", &self.username)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::redact::REDACTED),
            )
            .field("timeout", &self.timeout)
            .field("nonce_wait", &self.nonce_wait)
            .finish()
    }
}

/// How connections are made for each kind of target.
enum Connector {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// A connection to whichever servers the config names; commands and
/// scripts run on it like on any `redis` connection.
#[derive(Clone)]
pub enum StoreConnection {
    /// A single server, or the Sentinel group's current primary.
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for StoreConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            StoreConnection::Server(c) => c.req_packed_command(cmd),
            StoreConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            StoreConnection::Server(c) => c.req_packed_commands(pipeline, offset, count),
            StoreConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            StoreConnection::Server(c) => c.get_db(),
            StoreConnection::Cluster(c) => c.get_db(),
        }
    }
}

impl StoreConnection {
    /// `WAIT replicas timeout` on the server that owns `key`, which is the
    /// connection the last write of `key` went over: the number of replicas
    /// that acknowledged every write made on it so far.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(
            u64::try_from(timeout.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
        );
        match self {
            StoreConnection::Server(c) => wait.query_async(c).await,
            StoreConnection::Cluster(c) => {
                // Routed by key: without a route the crate sends WAIT to
                // every primary, which waits for nothing on the others.
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let value = c.route_command(wait, route).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// Shared handle to the configured Redis servers.
pub struct RedisStore {
    options: RedisOptions,
    connector: Connector,
    conn: Mutex<Option<StoreConnection>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Wait this long after a failed connect before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

/// `host:port` (a bracketed IPv6 host too) as a connection address.
pub fn parse_node(node: &str) -> Result<(String, u16), String> {
    let (host, port) = node
        .rsplit_once(':')
        .ok_or_else(|| format!("`{node}` is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        return Err(format!("`{node}` is not host:port"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{node}` has no valid port"))?;
    Ok((host.to_string(), port))
}

fn node_address(node: &str) -> Result<redis::ConnectionAddr, StoreError> {
    let (host, port) = parse_node(node).map_err(StoreError::Unavailable)?;
    Ok(redis::ConnectionAddr::Tcp(host, port))
}

impl RedisStore {
    /// A store for one server at `url` (today's `redis: { url }`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::with_options(RedisOptions::single(url, timeout))
    }

    pub fn with_options(options: RedisOptions) -> Result<Self, StoreError> {
        let connector = match &options.target {
            RedisTarget::Single { url } => Connector::Single(redis::Client::open(url.as_str())?),
            RedisTarget::Cluster { nodes } => {
                let addrs = nodes
                    .iter()
                    .map(|n| node_address(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(addrs)
                    .connection_timeout(options.timeout)
                    .response_timeout(options.timeout)
                    // A command is bounded by the store timeout anyway; a
                    // few quick retries ride over a slot move or failover.
                    .retries(2)
                    .min_retry_wait(5)
                    .max_retry_wait(50);
                if let Some(u) = &options.username {
                    builder = builder.username(u);
                }
                if let Some(p) = &options.password {
                    builder = builder.password(p);
                }
                Connector::Cluster(builder.build()?)
            }
            RedisTarget::Sentinel {
                master,
                nodes,
                sentinel_password,
            } => {
                let addrs = nodes
                    .iter()
                    .map(|n| node_address(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::sentinel::SentinelClientBuilder::new(
                    addrs,
                    master,
                    redis::sentinel::SentinelServerType::Master,
                )?;
                if let Some(u) = &options.username {
                    builder = builder.set_client_to_redis_username(u);
                }
                if let Some(p) = &options.password {
                    builder = builder.set_client_to_redis_password(p);
                }
                if let Some(p) = sentinel_password {
                    builder = builder.set_client_to_sentinel_password(p);
                }
                Connector::Sentinel(tokio::sync::Mutex::new(builder.build()?))
            }
        };
        Ok(RedisStore {
            options,
            connector,
            conn: Mutex::new(None),
            last_failure: Mutex::new(None),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// Whether keys of one script must share a hash slot.
    pub fn is_cluster(&self) -> bool {
        self.options.target.is_cluster()
    }

    /// A connection, opening one if needed (bounded by the timeout).
    pub async fn connection(&self) -> Result<StoreConnection, StoreError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        if let Some(at) = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(StoreError::Unavailable("recent connection failure".into()));
            }
        }
        let timeout = self.options.timeout;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let connect = async {
            match &self.connector {
                Connector::Single(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(StoreConnection::Server),
                Connector::Cluster(client) => client
                    .get_async_connection()
                    .await
                    .map(StoreConnection::Cluster),
                Connector::Sentinel(client) => client
                    .lock()
                    .await
                    .get_async_connection_with_config(&config)
                    .await
                    .map(StoreConnection::Server),
            }
        };
        // Sentinel asks the sentinels first, then connects: two steps.
        match tokio::time::timeout(timeout * 2, connect).await {
            Ok(Ok(c)) => {
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                self.note_failure();
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.note_failure();
                Err(StoreError::Timeout(timeout))
            }
        }
    }

    /// Runs `op` on a connection under the timeout. A timeout or I/O error
    /// drops the connection so the next call reconnects.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(self.options.timeout, op).await
    }

    /// [`RedisStore::run`] with its own bound (a call that includes a `WAIT`).
    pub async fn run_within<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        // Boxed: a Redis call's state (connect, script, timeout) is several
        // KB, and every filter future that may call Redis would otherwise
        // carry that room inline, copied with the request future on every
        // request, including the ones that never reach Redis.
        Box::pin(self.run_on_connection(bound, op)).await
    }

    async fn run_on_connection<T, F, Fut>(&self, bound: Duration, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(StoreConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        let started = Instant::now();
        let result = tokio::time::timeout(bound, op(conn)).await;
        metrics::histogram!("meshgate_redis_latency_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                metrics::counter!("meshgate_redis_errors_total", "kind" => "error").increment(1);
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                    // A Sentinel primary demoted to a replica.
                    || e.code() == Some("READONLY")
                {
                    self.note_failure();
                }
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                metrics::counter!("meshgate_redis_errors_total", "kind" => "timeout").increment(1);
                self.note_failure();
                Err(StoreError::Timeout(bound))
            }
        }
    }

    fn note_failure(&self) {
        // The cluster connection reconnects and refreshes slots itself;
        // dropping it would only add a topology fetch to the outage.
        if !self.is_cluster() {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_host_and_port() {
        assert_eq!(parse_node("10.0.0.1:7000"), Ok(("10.0.0.1".into(), 7000)));
        assert_eq!(parse_node("[::1]:26379"), Ok(("::1".into(), 26379)));
        assert_eq!(
            parse_node("redis-0.redis:6379"),
            Ok(("redis-0.redis".into(), 6379))
        );
        for bad in [
            "",
            "host",
            ":7000",
            "host:0",
            "host:99999",
            "u:p@host:1",
            "redis://h:1",
        ] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_output_carries_no_credential() {
        let options = RedisOptions {
            target: RedisTarget::Sentinel {
                master: "mymaster".into(),
                nodes: vec!["127.0.0.1:26379".into()],
                sentinel_password: Some("S3cret-sentinel".into()),
            },
            username: Some("app".into()),
            password: Some("S3cret-data".into()),
            timeout: Duration::from_millis(50),
            nonce_wait: ReplicaWait {
                replicas: 1,
                timeout: Duration::from_millis(50),
            },
        };
        let shown = format!("{options:?}");
        assert!(!shown.contains("S3cret"), "{shown}");
        let single = format!(
            "{:?}",
            RedisOptions::single("redis://:S3cret@h:1/", Duration::ZERO)
        );
        assert!(!single.contains("S3cret"), "{single}");
    }
}
