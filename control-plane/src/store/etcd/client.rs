//! A small etcd v3 client over the generated tonic stubs: several endpoints
//! (a request that cannot reach one tries the next), a time limit on every
//! call, and the leader requirement on watches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::pb::{
    DeleteRangeRequest, KvClient, LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    PutRequest, RangeRequest, TxnRequest, TxnResponse, WatchClient, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use crate::store::StoreError;

/// How long one etcd call may take before the endpoint counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct EtcdClient {
    endpoints: Vec<(String, Channel)>,
    /// The endpoint that answered last; calls start there.
    current: AtomicUsize,
}

/// Parses `etcd://HOST:PORT,HOST:PORT,...` into `http://HOST:PORT` endpoints.
pub fn parse_url(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("etcd://")
        .ok_or_else(|| format!("store {url:?}: expected etcd://HOST:PORT[,HOST:PORT...]"))?;
    let mut endpoints = Vec::new();
    for (i, hostport) in rest.split(',').enumerate() {
        let hostport = hostport.trim();
        let valid = hostport
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            && !hostport.contains(['/', '@', '?', '#']);
        if !valid {
            return Err(format!(
                "store {url:?}: endpoint {i} ({hostport:?}) is not HOST:PORT"
            ));
        }
        endpoints.push(format!("http://{hostport}"));
    }
    Ok(endpoints)
}

/// Whether a failed call is tried on the next endpoint: the member could not
/// be reached, has no leader, or did not answer in time. A transaction that
/// timed out may still have been applied: `EtcdStore::commit`'s callers
/// recognise their own write when they re-read.
fn retry_elsewhere(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
    )
}

fn unavailable(endpoint: &str, status: &Status) -> StoreError {
    StoreError::Unavailable(format!("{endpoint}: {}", status.message()))
}

/// etcd cancels a watch or refuses a request when its member loses the
/// leader, instead of silently serving a stale view.
fn with_leader<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request.set_timeout(CALL_TIMEOUT);
    request
}

impl EtcdClient {
    pub fn new(urls: &[String]) -> Result<Self, StoreError> {
        let mut endpoints = Vec::new();
        for url in urls {
            let channel = Endpoint::from_shared(url.clone())
                .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(CALL_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
            endpoints.push((url.clone(), channel));
        }
        Ok(EtcdClient {
            endpoints,
            current: AtomicUsize::new(0),
        })
    }

    /// Runs `call` against the endpoints, starting with the last good one.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let index = (start + i) % self.endpoints.len();
            let (url, channel) = &self.endpoints[index];
            match call(channel.clone()).await {
                Ok(value) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) if retry_elsewhere(&status) => last = Some(unavailable(url, &status)),
                Err(status) => {
                    return Err(StoreError::Rejected(format!(
                        "{url}: {:?}: {}",
                        status.code(),
                        status.message()
                    )))
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("no etcd endpoint".into())))
    }

    pub async fn range(
        &self,
        request: RangeRequest,
    ) -> Result<super::pb::etcdserverpb::RangeResponse, StoreError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                KvClient::new(channel)
                    .range(with_leader(request))
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, StoreError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                KvClient::new(channel)
                    .txn(with_leader(request))
                    .await
                    .map(tonic::Response::into_inner)
            }
        })
        .await
    }

    pub async fn put(&self, request: PutRequest) -> Result<(), StoreError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                KvClient::new(channel)
                    .put(with_leader(request))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    pub async fn delete(&self, request: DeleteRangeRequest) -> Result<(), StoreError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                KvClient::new(channel)
                    .delete_range(with_leader(request))
                    .await
                    .map(|_| ())
            }
        })
        .await
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, StoreError> {
        self.call(|channel| async move {
            LeaseClient::new(channel)
                .lease_grant(with_leader(LeaseGrantRequest { ttl, id: 0 }))
                .await
                .map(|r| r.into_inner().id)
        })
        .await
    }

    /// Renews lease `id` once; returns its remaining TTL (0: it has expired).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        self.call(|channel| async move {
            let requests = futures_util::stream::iter([LeaseKeepAliveRequest { id }]);
            let mut responses = LeaseClient::new(channel)
                .lease_keep_alive(with_leader(requests))
                .await?
                .into_inner();
            match tokio::time::timeout(CALL_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(response))) => Ok(response.ttl),
                Ok(Ok(None)) => Err(Status::unavailable("keep-alive stream ended")),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(Status::unavailable("keep-alive timed out")),
            }
        })
        .await
    }

    /// Watches `[key, range_end)` from `start_revision`; responses arrive on
    /// the returned channel until the stream fails (the channel then closes).
    pub async fn watch(
        &self,
        key: Vec<u8>,
        range_end: Vec<u8>,
        start_revision: i64,
    ) -> Result<mpsc::Receiver<Result<WatchResponse, StoreError>>, StoreError> {
        let create = WatchRequest {
            request_union: Some(super::pb::watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key,
                    range_end,
                    start_revision,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        };
        let (url, mut responses) = self
            .call(|channel| {
                let create = create.clone();
                async move {
                    // The request stream stays open for the watch's lifetime.
                    let requests =
                        futures_util::stream::iter([create]).chain(futures_util::stream::pending());
                    let mut request = Request::new(requests);
                    request.metadata_mut().insert(
                        "hasleader",
                        tonic::metadata::MetadataValue::from_static("true"),
                    );
                    WatchClient::new(channel)
                        .watch(request)
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await
            .map(|s| (self.current_url(), s))?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let item = match responses.message().await {
                    Ok(Some(response)) if response.canceled => Err(StoreError::Unavailable(
                        format!("{url}: watch canceled: {}", response.cancel_reason),
                    )),
                    Ok(Some(response)) => Ok(response),
                    Ok(None) => Err(StoreError::Unavailable(format!("{url}: watch ended"))),
                    Err(status) => Err(unavailable(&url, &status)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }

    fn current_url(&self) -> String {
        let index = self.current.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        self.endpoints
            .get(index)
            .map(|(url, _)| url.clone())
            .unwrap_or_default()
    }
}

use futures_util::StreamExt as _;

/// The end of the key range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the key space.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_name_the_endpoint() {
        assert_eq!(
            parse_url("etcd://127.0.0.1:2379,10.0.0.2:2379").expect("valid"),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert!(parse_url("http://x:1").is_err());
        let e = parse_url("etcd://a:1,b").expect_err("no port");
        assert!(e.contains("endpoint 1"), "{e}");
        assert!(parse_url("etcd://a:1/x").is_err());
        assert!(parse_url("etcd://").is_err());
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
