//! The shared Redis connection used by filters with `store: redis`.
//!
//! One multiplexed connection per sidecar, opened lazily and reopened after a
//! failure. Every command runs under the configured timeout so a slow or dead
//! Redis costs a request at most that long; after a failure, new connection
//! attempts are spaced out so a dead Redis is not hammered by every request.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

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

/// Shared handle to one Redis server.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Wait this long after a failed connect before trying again.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

impl RedisStore {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        Ok(RedisStore {
            client: redis::Client::open(url)?,
            timeout,
            conn: Mutex::new(None),
            last_failure: Mutex::new(None),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection, opening one if needed (bounded by the timeout).
    pub async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        if let Some(at) = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < RECONNECT_BACKOFF {
                return Err(StoreError::Unavailable("recent connection failure".into()));
            }
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match tokio::time::timeout(
            self.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
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
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    /// Runs `op` on a connection under the timeout. A timeout or I/O error
    /// drops the connection so the next call reconnects.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, op(conn)).await;
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
                {
                    self.note_failure();
                }
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                metrics::counter!("meshgate_redis_errors_total", "kind" => "timeout").increment(1);
                self.note_failure();
                Err(StoreError::Timeout(self.timeout))
            }
        }
    }

    fn note_failure(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}
