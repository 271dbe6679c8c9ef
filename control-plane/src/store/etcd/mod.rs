//! The etcd store: several control-plane replicas over one etcd cluster.
//!
//! Keys (all under `meshgate/`):
//!
//! * `services/<service>/versions/<number, 20 digits>`: a [`VersionRecord`]
//!   as JSON, the same record as a line of the file store's `history.jsonl`.
//! * `services/<service>/state`: `{"rollout": ...}`, which versions are live
//!   (canary members included). Every push, rollback, promote and abort is
//!   one transaction that writes this key (and the new version, if any),
//!   guarded by the key's mod revision as the writer last read it: of two
//!   concurrent writes one wins, the other re-reads and tries again, so the
//!   history is one linear sequence.
//! * `sidecars/<replica>/<node id>`: a connected sidecar's status, attached
//!   to the replica's lease: deleted when the stream ends, expired when the
//!   replica is gone.
//! * `xds/tokens`: the xDS credential bindings (token digests and the
//!   services each may fetch), the `--xds-tokens` file's content.

pub mod client;
pub mod pb;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::client::{prefix_end, EtcdClient};
use self::pb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use super::{stored, ServiceHistory, StoreError, VersionRecord};
use crate::rollout::Rollout;

const ROOT: &str = "meshgate/";
/// The replica lease's time to live: how long a dead replica's sidecars
/// stay listed.
pub const LEASE_TTL_SECS: i64 = 10;
/// etcd's default limit of operations in one transaction is 128.
const MAX_TXN_OPS: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
struct ServiceState {
    rollout: Rollout,
}

/// What one write did.
#[derive(Debug)]
pub enum Commit {
    /// Applied at this etcd revision (the service's new revision).
    Done(i64),
    /// Someone else wrote the service since it was read.
    Conflict,
}

/// A change to one key under `services/`, from a load or a watch event.
#[derive(Debug)]
pub enum ServiceKey {
    Version(Box<VersionRecord>),
    State { rollout: Rollout, revision: i64 },
}

#[derive(Debug)]
pub struct EtcdStore {
    client: EtcdClient,
}

fn services_prefix() -> String {
    format!("{ROOT}services/")
}

fn state_key(service: &str) -> String {
    format!("{ROOT}services/{service}/state")
}

fn version_key(service: &str, number: u64) -> String {
    format!("{ROOT}services/{service}/versions/{number:020}")
}

fn sidecars_prefix() -> String {
    format!("{ROOT}sidecars/")
}

pub fn sidecar_key(replica: &str, node_id: &str) -> String {
    format!("{ROOT}sidecars/{replica}/{node_id}")
}

fn tokens_key() -> String {
    format!("{ROOT}xds/tokens")
}

fn corrupt(key: &[u8], detail: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptKey {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

/// Parses a key and value under `services/`: `(service, what)`, or `None`
/// for a key this version does not know (left alone).
pub fn parse_service_key(
    key: &[u8],
    value: &[u8],
    mod_revision: i64,
) -> Result<Option<(String, ServiceKey)>, StoreError> {
    let text = std::str::from_utf8(key).map_err(|e| corrupt(key, e))?;
    let Some(rest) = text.strip_prefix(&services_prefix()) else {
        return Ok(None);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [service, "state"] => {
            let state: ServiceState = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
            Ok(Some((
                service.to_string(),
                ServiceKey::State {
                    rollout: state.rollout,
                    revision: mod_revision,
                },
            )))
        }
        [service, "versions", _] => {
            let record: VersionRecord =
                serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
            Ok(Some((
                service.to_string(),
                ServiceKey::Version(Box::new(record)),
            )))
        }
        _ => Ok(None),
    }
}

/// Applies one key to the in-memory history: versions are added once, in
/// number order; the rollout is taken only when newer than what is held.
pub fn apply_service_key(
    history: &mut ServiceHistory,
    service: &str,
    key: ServiceKey,
) -> Result<bool, StoreError> {
    match key {
        ServiceKey::Version(record) => {
            if history
                .versions
                .iter()
                .any(|v| v.record.number == record.number)
            {
                return Ok(false);
            }
            let version = stored(service, *record)?;
            let at = history
                .versions
                .partition_point(|v| v.record.number < version.record.number);
            history.versions.insert(at, version);
            Ok(true)
        }
        ServiceKey::State { rollout, revision } => {
            if revision <= history.revision {
                return Ok(false);
            }
            history.rollout = rollout;
            history.revision = revision;
            Ok(true)
        }
    }
}

impl EtcdStore {
    /// Connects lazily to `etcd://HOST:PORT,...`; the first call tells
    /// whether etcd answers.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let endpoints = client::parse_url(url).map_err(StoreError::Unavailable)?;
        Ok(EtcdStore {
            client: EtcdClient::new(&endpoints)?,
        })
    }

    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    /// Every service's history, and the etcd revision it was read at.
    pub async fn load_all(&self) -> Result<(BTreeMap<String, ServiceHistory>, i64), StoreError> {
        self.load_prefix(&services_prefix()).await
    }

    /// One service's history, read from etcd.
    pub async fn load_service(&self, service: &str) -> Result<ServiceHistory, StoreError> {
        let (mut all, _) = self
            .load_prefix(&format!("{ROOT}services/{service}/"))
            .await?;
        Ok(all.remove(service).unwrap_or_default())
    }

    async fn load_prefix(
        &self,
        prefix: &str,
    ) -> Result<(BTreeMap<String, ServiceHistory>, i64), StoreError> {
        let response = self
            .client
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            })
            .await?;
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        let mut all: BTreeMap<String, ServiceHistory> = BTreeMap::new();
        for kv in response.kvs {
            if let Some((service, key)) = parse_service_key(&kv.key, &kv.value, kv.mod_revision)? {
                apply_service_key(all.entry(service.clone()).or_default(), &service, key)?;
            }
        }
        Ok((all, revision))
    }

    /// Writes a new version (if any) and the rollout in one transaction,
    /// applied only if the service's state key is still at `expected`.
    pub async fn commit(
        &self,
        service: &str,
        expected: i64,
        record: Option<&VersionRecord>,
        rollout: &Rollout,
    ) -> Result<Commit, StoreError> {
        let state = serde_json::to_vec(&ServiceState {
            rollout: rollout.clone(),
        })?;
        let mut compare = vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Mod as i32,
            key: state_key(service).into_bytes(),
            target_union: Some(compare::TargetUnion::ModRevision(expected)),
            ..Default::default()
        }];
        let mut success = vec![put_op(state_key(service), state)];
        if let Some(record) = record {
            let key = version_key(service, record.number);
            // A version key is written once: never overwritten.
            compare.push(Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: key.clone().into_bytes(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                ..Default::default()
            });
            success.push(put_op(key, serde_json::to_vec(record)?));
        }
        let response = self
            .client
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Ok(Commit::Conflict);
        }
        Ok(Commit::Done(
            response.header.as_ref().map_or(0, |h| h.revision),
        ))
    }

    /// Starts a watch of every service key from `start_revision`.
    pub async fn watch_services(
        &self,
        start_revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<pb::WatchResponse, StoreError>>, StoreError>
    {
        let prefix = services_prefix();
        self.client
            .watch(
                prefix.as_bytes().to_vec(),
                prefix_end(prefix.as_bytes()),
                start_revision,
            )
            .await
    }

    // ---- sidecar status, under the replica's lease

    /// Writes (`Some`) or deletes (`None`) sidecar status keys, in as few
    /// transactions as etcd's operation limit allows.
    pub async fn write_sidecars(
        &self,
        lease: i64,
        changes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        for chunk in changes.chunks(MAX_TXN_OPS) {
            let success = chunk
                .iter()
                .map(|(key, value)| match value {
                    Some(value) => RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone().into_bytes(),
                            value: value.clone(),
                            lease,
                            ..Default::default()
                        })),
                    },
                    None => RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: key.clone().into_bytes(),
                                ..Default::default()
                            },
                        )),
                    },
                })
                .collect();
            self.client
                .txn(TxnRequest {
                    compare: vec![],
                    success,
                    failure: vec![],
                })
                .await?;
        }
        Ok(())
    }

    /// Every replica's sidecar status values: `(replica, json)`.
    pub async fn list_sidecars(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = sidecars_prefix();
        let response = self
            .client
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            })
            .await?;
        Ok(response
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(kv.key).ok()?;
                let replica = key.strip_prefix(&prefix)?.split('/').next()?.to_string();
                Some((replica, kv.value))
            })
            .collect())
    }

    /// Deletes every key under `meshgate/` (the benchmark starts empty).
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        self.client
            .delete(DeleteRangeRequest {
                key: ROOT.as_bytes().to_vec(),
                range_end: prefix_end(ROOT.as_bytes()),
                ..Default::default()
            })
            .await
    }

    // ---- xDS credential bindings

    /// The stored xDS token table (the `--xds-tokens` file's text), if any.
    pub async fn xds_tokens(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self
            .client
            .range(RangeRequest {
                key: tokens_key().into_bytes(),
                ..Default::default()
            })
            .await?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    pub async fn put_xds_tokens(&self, text: Vec<u8>) -> Result<(), StoreError> {
        self.client
            .put(PutRequest {
                key: tokens_key().into_bytes(),
                value: text,
                ..Default::default()
            })
            .await
    }
}

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::now_secs;
    use meshgate_xds::config::ConfigSpec;

    fn record(n: u64) -> VersionRecord {
        VersionRecord {
            version: format!("v{n}"),
            number: n,
            created_at: now_secs(),
            action: "push".into(),
            restored_from: None,
            spec: ConfigSpec::default(),
        }
    }

    #[test]
    fn keys_round_trip_and_apply_once_in_order() {
        let mut history = ServiceHistory::default();
        for n in [2, 1, 2] {
            let key = version_key("orders", n);
            let value = serde_json::to_vec(&record(n)).expect("encode");
            let (service, parsed) = parse_service_key(key.as_bytes(), &value, 7)
                .expect("parse")
                .expect("known key");
            assert_eq!(service, "orders");
            apply_service_key(&mut history, &service, parsed).expect("apply");
        }
        let numbers: Vec<u64> = history.versions.iter().map(|v| v.record.number).collect();
        assert_eq!(numbers, [1, 2]);

        let state = |stable: &str| {
            serde_json::to_vec(&ServiceState {
                rollout: Rollout {
                    stable: Some(stable.into()),
                    canary: None,
                },
            })
            .expect("encode")
        };
        let key = state_key("orders");
        for (revision, stable) in [(9, "v2"), (8, "v1")] {
            let (_, parsed) = parse_service_key(key.as_bytes(), &state(stable), revision)
                .expect("parse")
                .expect("known");
            apply_service_key(&mut history, "orders", parsed).expect("apply");
        }
        // The older state (revision 8) arriving late does not win.
        assert_eq!(history.rollout.stable.as_deref(), Some("v2"));
        assert_eq!(history.revision, 9);
        assert!(parse_service_key(b"meshgate/services/orders/other", b"", 1)
            .expect("parse")
            .is_none());
        assert!(parse_service_key(key.as_bytes(), b"{", 1).is_err());
    }
}
