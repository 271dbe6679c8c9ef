//! The meshgate control plane: the xDS (ADS) server, the versioned config
//! store, rollout (gray release) state, sidecar status and the admin API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ads;
pub mod api;
mod etcd_sync;
pub mod load;
pub mod rollout;
pub mod store;
pub mod stream_state;
pub mod xds_auth;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meshgate_filters::{FieldError, ValidateCx};
use meshgate_xds::config::{validate, ConfigSpec};
use prost_types::Any;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::api::ApiError;
use crate::rollout::{pick_percent, Canary, Rollout, Selector};
use crate::store::etcd::{self as etcd_store, Commit, EtcdStore, ServiceKey};
use crate::store::{
    now_secs, valid_service_name, FileStore, ServiceHistory, StoreError, VersionRecord,
};

/// One connected sidecar, as shown by `status` (and, with etcd, as stored
/// for the other replicas).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SidecarStatus {
    pub node_id: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    /// `user_agent_name/user_agent_version` from the node.
    pub sidecar_version: String,
    pub peer: Option<String>,
    /// Seconds since the Unix epoch.
    pub connected_since: u64,
    pub last_seen: u64,
    /// The version the control plane wants this sidecar to run.
    pub desired_version: Option<String>,
    /// `stable` or `canary`.
    pub track: Option<String>,
    pub last_acked_version: Option<String>,
    pub last_nack: Option<NackInfo>,
    /// With etcd: the control-plane replica the sidecar is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    #[serde(skip)]
    stream_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NackInfo {
    pub version: String,
    pub error: String,
    pub at: u64,
}

/// Result of a push, rollback, promote or abort.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutResult {
    pub service: String,
    pub version: Option<String>,
    pub rollout: Rollout,
}

/// Where versions, rollouts (and with etcd, sidecar status) are kept.
enum Backend {
    File(FileStore),
    Etcd(EtcdStore),
}

/// What a push, rollback, promote or abort writes: a new version (if any)
/// and the rollout that follows it.
struct Change {
    record: Option<VersionRecord>,
    rollout: Rollout,
}

/// A write that keeps losing to concurrent ones gives up after this many tries.
const MAX_WRITE_ATTEMPTS: u32 = 64;

/// Shared control-plane state. Cheap to clone behind an `Arc`.
pub struct ControlPlane {
    backend: Backend,
    /// This process's name among the replicas (etcd sidecar keys, status).
    replica: String,
    /// What sidecars are served: written only after the store holds it.
    services: Mutex<BTreeMap<String, ServiceHistory>>,
    /// The sidecars connected to this replica.
    sidecars: Mutex<BTreeMap<String, SidecarStatus>>,
    /// etcd: local sidecars whose status etcd has not been told yet.
    dirty_sidecars: Mutex<BTreeSet<String>>,
    sidecars_changed: Notify,
    /// etcd: this replica's writes go one at a time (others' race in etcd).
    write_lock: tokio::sync::Mutex<()>,
    changed: watch::Sender<u64>,
    next_stream: std::sync::atomic::AtomicU64,
    /// Refused xDS streams, shown on the admin API's `/metrics`.
    pub xds_denials: xds_auth::XdsDenials,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a
    // way that matters more than stopping the control plane would.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A replica name: the host name and a random suffix, so that a restarted
/// replica never shares keys with its predecessor's expiring lease.
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "cp".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

impl ControlPlane {
    fn with_backend(backend: Backend, services: BTreeMap<String, ServiceHistory>) -> Self {
        ControlPlane {
            backend,
            replica: replica_name(),
            services: Mutex::new(services),
            sidecars: Mutex::new(BTreeMap::new()),
            dirty_sidecars: Mutex::new(BTreeSet::new()),
            sidecars_changed: Notify::new(),
            write_lock: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
            next_stream: std::sync::atomic::AtomicU64::new(1),
            xds_denials: xds_auth::XdsDenials::default(),
        }
    }

    /// The file store in `data_dir` (one machine).
    pub fn open(data_dir: impl Into<std::path::PathBuf>) -> Result<Arc<Self>, StoreError> {
        let store = FileStore::open(data_dir)?;
        let services = store.load_all()?;
        Ok(Arc::new(Self::with_backend(Backend::File(store), services)))
    }

    /// The etcd store at `etcd://HOST:PORT,...`: loads every service, then
    /// follows etcd's changes and publishes this replica's sidecars in the
    /// background (tasks on the current runtime).
    pub async fn open_etcd(url: &str) -> Result<Arc<Self>, StoreError> {
        let store = EtcdStore::new(url)?;
        let (services, revision) = store.load_all().await?;
        let cp = Arc::new(Self::with_backend(Backend::Etcd(store), services));
        tokio::spawn(cp.clone().follow_etcd(revision));
        tokio::spawn(cp.clone().publish_sidecars());
        tracing::info!(replica = %cp.replica, revision, "control-plane state loaded from etcd");
        Ok(cp)
    }

    /// The etcd store, when the control plane runs on one.
    pub fn etcd(&self) -> Option<&EtcdStore> {
        match &self.backend {
            Backend::Etcd(store) => Some(store),
            Backend::File(_) => None,
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Notified whenever any service's rollout changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// The version and resource `node_id` of `service` should run.
    pub fn desired(
        &self,
        service: &str,
        node_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(String, Arc<Any>)> {
        let services = lock(&self.services);
        let history = services.get(service)?;
        let version = history.rollout.desired(node_id, labels)?;
        let stored = history.get(version)?;
        Some((version.to_string(), stored.resource.clone()))
    }

    fn track(
        rollout: &Rollout,
        node_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<String> {
        match &rollout.canary {
            Some(c) if c.selects(node_id, labels) => Some("canary".into()),
            _ => rollout.stable.as_ref().map(|_| "stable".into()),
        }
    }

    fn mark_dirty(&self, node_id: &str) {
        if matches!(self.backend, Backend::Etcd(_)) {
            lock(&self.dirty_sidecars).insert(node_id.to_string());
            self.sidecars_changed.notify_one();
        }
    }

    // ---- sidecar registry (called by the ADS streams)

    pub fn register(
        &self,
        node_id: &str,
        service: &str,
        labels: BTreeMap<String, String>,
        sidecar_version: String,
        peer: Option<String>,
    ) -> u64 {
        let stream_id = self
            .next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = now_secs();
        let status = SidecarStatus {
            node_id: node_id.to_string(),
            service: service.to_string(),
            labels,
            sidecar_version,
            peer,
            connected_since: now,
            last_seen: now,
            desired_version: None,
            track: None,
            last_acked_version: None,
            last_nack: None,
            replica: None,
            stream_id,
        };
        lock(&self.sidecars).insert(node_id.to_string(), status);
        self.mark_dirty(node_id);
        stream_id
    }

    pub fn unregister(&self, node_id: &str, stream_id: u64) {
        let mut sidecars = lock(&self.sidecars);
        if sidecars
            .get(node_id)
            .is_some_and(|s| s.stream_id == stream_id)
        {
            sidecars.remove(node_id);
            drop(sidecars);
            self.mark_dirty(node_id);
        }
    }

    /// Records what a stream learned (seen, ACK, NACK).
    pub fn update_sidecar(
        &self,
        node_id: &str,
        stream_id: u64,
        f: impl FnOnce(&mut SidecarStatus),
    ) {
        let mut sidecars = lock(&self.sidecars);
        if let Some(s) = sidecars
            .get_mut(node_id)
            .filter(|s| s.stream_id == stream_id)
        {
            s.last_seen = now_secs();
            f(s);
            drop(sidecars);
            self.mark_dirty(node_id);
        }
    }

    /// The connected sidecars, of every replica when on etcd. A node id
    /// listed by two replicas (it moved) shows its newest stream.
    pub async fn status(&self, service: Option<&str>) -> Result<Vec<SidecarStatus>, ApiError> {
        let mut all: BTreeMap<String, SidecarStatus> = BTreeMap::new();
        let newest = |all: &mut BTreeMap<String, SidecarStatus>, s: SidecarStatus| {
            if all
                .get(&s.node_id)
                .is_none_or(|old| old.connected_since <= s.connected_since)
            {
                all.insert(s.node_id.clone(), s);
            }
        };
        let on_etcd = if let Backend::Etcd(store) = &self.backend {
            for (replica, value) in store.list_sidecars().await.map_err(ApiError::store)? {
                // This replica's own sidecars are read from memory, which is fresher.
                if replica == self.replica {
                    continue;
                }
                match serde_json::from_slice::<SidecarStatus>(&value) {
                    Ok(mut s) => {
                        s.replica = Some(replica);
                        newest(&mut all, s);
                    }
                    Err(e) => {
                        tracing::warn!(%replica, error = %e, "unreadable sidecar status in etcd")
                    }
                }
            }
            true
        } else {
            false
        };
        for s in lock(&self.sidecars).values() {
            let mut s = s.clone();
            s.replica = on_etcd.then(|| self.replica.clone());
            newest(&mut all, s);
        }
        let services = lock(&self.services);
        Ok(all
            .into_values()
            .filter(|s| service.is_none_or(|want| s.service == want))
            .map(|mut s| {
                s.desired_version = None;
                s.track = None;
                if let Some(h) = services.get(&s.service) {
                    s.desired_version =
                        h.rollout.desired(&s.node_id, &s.labels).map(str::to_string);
                    s.track = Self::track(&h.rollout, &s.node_id, &s.labels);
                }
                s
            })
            .collect())
    }

    /// Prometheus text for the admin API's `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        self.xds_denials.render(&mut out);
        out
    }

    // ---- admin operations

    fn check_service(service: &str) -> Result<(), ApiError> {
        if valid_service_name(service) {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "invalid service name {service:?}: use letters, digits, '-', '_', '.'"
            )))
        }
    }

    fn canary_in_progress(service: &str, rollout: &Rollout) -> Result<(), ApiError> {
        match &rollout.canary {
            Some(c) => Err(ApiError::conflict(format!(
                "canary {} of {service} is in progress: promote or abort it first",
                c.version
            ))),
            None => Ok(()),
        }
    }

    /// Validates and stores a new version, then rolls it out to all sidecars
    /// of the service or, with a selector, to a canary subset.
    pub async fn push(
        &self,
        service: &str,
        spec: ConfigSpec,
        selector: Option<Selector>,
    ) -> Result<RolloutResult, ApiError> {
        Self::check_service(service)?;
        validate(&spec, &ValidateCx::control_plane()).map_err(ApiError::invalid_config)?;
        // A percentage is of the sidecars connected to every replica.
        let connected: Vec<String> = match &selector {
            Some(Selector::Percent(_)) => self
                .status(Some(service))
                .await?
                .into_iter()
                .map(|s| s.node_id)
                .collect(),
            _ => Vec::new(),
        };
        let change = self
            .write(service, true, |history| {
                Self::canary_in_progress(service, &history.rollout)?;
                let number = history.next_number();
                let version = format!("v{number}");
                let mut spec = spec.clone();
                spec.version = Some(version.clone());
                let mut rollout = history.rollout.clone();
                match &selector {
                    None => rollout.stable = Some(version.clone()),
                    Some(selector) => {
                        let nodes = match selector {
                            Selector::Percent(p) => {
                                let picked = pick_percent(connected.iter().map(String::as_str), *p);
                                if picked.is_empty() {
                                    return Err(ApiError::conflict(format!(
                                        "no sidecar of {service} is connected to receive a canary"
                                    )));
                                }
                                picked
                            }
                            Selector::Labels(_) => BTreeSet::new(),
                        };
                        rollout.canary = Some(Canary {
                            version: version.clone(),
                            selector: selector.clone(),
                            nodes,
                        });
                    }
                }
                Ok(Change {
                    record: Some(VersionRecord {
                        version,
                        number,
                        created_at: now_secs(),
                        action: "push".into(),
                        restored_from: None,
                        spec,
                    }),
                    rollout,
                })
            })
            .await?;
        let version = change.record.map(|r| r.version);
        tracing::info!(%service, version = ?version, canary = change.rollout.canary.is_some(), "config pushed");
        Ok(RolloutResult {
            service: service.to_string(),
            version,
            rollout: change.rollout,
        })
    }

    /// Makes the canary version the stable one for every sidecar.
    pub async fn promote(&self, service: &str) -> Result<RolloutResult, ApiError> {
        let change = self
            .write(service, false, |history| {
                let canary = history.rollout.canary.as_ref().ok_or_else(|| {
                    ApiError::conflict(format!("no canary of {service} to promote"))
                })?;
                Ok(Change {
                    record: None,
                    rollout: Rollout {
                        stable: Some(canary.version.clone()),
                        canary: None,
                    },
                })
            })
            .await?;
        tracing::info!(%service, version = ?change.rollout.stable, "canary promoted");
        Ok(RolloutResult {
            service: service.to_string(),
            version: change.rollout.stable.clone(),
            rollout: change.rollout,
        })
    }

    /// Ends the canary; its sidecars go back to the stable version.
    pub async fn abort(&self, service: &str) -> Result<RolloutResult, ApiError> {
        let change = self
            .write(service, false, |history| {
                if history.rollout.canary.is_none() {
                    return Err(ApiError::conflict(format!(
                        "no canary of {service} to abort"
                    )));
                }
                Ok(Change {
                    record: None,
                    rollout: Rollout {
                        stable: history.rollout.stable.clone(),
                        canary: None,
                    },
                })
            })
            .await?;
        tracing::info!(%service, "canary aborted");
        Ok(RolloutResult {
            service: service.to_string(),
            version: change.rollout.stable.clone(),
            rollout: change.rollout,
        })
    }

    /// Stores the content of `to` as a new version and rolls it out to all.
    pub async fn rollback(&self, service: &str, to: &str) -> Result<RolloutResult, ApiError> {
        let change = self
            .write(service, false, |history| {
                Self::canary_in_progress(service, &history.rollout)?;
                let old = history.get(to).ok_or_else(|| {
                    ApiError::not_found(format!("{service} has no version {to:?}"))
                })?;
                let number = history.next_number();
                let version = format!("v{number}");
                let mut spec = old.record.spec.clone();
                spec.version = Some(version.clone());
                Ok(Change {
                    record: Some(VersionRecord {
                        version: version.clone(),
                        number,
                        created_at: now_secs(),
                        action: "rollback".into(),
                        restored_from: Some(to.to_string()),
                        spec,
                    }),
                    rollout: Rollout {
                        stable: Some(version),
                        canary: None,
                    },
                })
            })
            .await?;
        let version = change.record.map(|r| r.version);
        tracing::info!(%service, version = ?version, restored_from = %to, "rolled back");
        Ok(RolloutResult {
            service: service.to_string(),
            version,
            rollout: change.rollout,
        })
    }

    /// Plans a change from the service's current history and makes it
    /// durable, then serves it. `create`: the service may be new (a push).
    ///
    /// File store: under the state lock, written and fsynced before memory
    /// changes. etcd: one transaction guarded by the service's revision as
    /// planned; if another replica wrote first, the service is re-read and
    /// the change planned again, so every write lands on the latest history.
    async fn write(
        &self,
        service: &str,
        create: bool,
        plan: impl Fn(&ServiceHistory) -> Result<Change, ApiError>,
    ) -> Result<Change, ApiError> {
        let missing = || ApiError::not_found(format!("no service {service:?}"));
        let store = match &self.backend {
            Backend::File(store) => {
                let mut services = lock(&self.services);
                let history = if create {
                    services.entry(service.to_string()).or_default()
                } else {
                    services.get_mut(service).ok_or_else(missing)?
                };
                let change = plan(history)?;
                if let Some(record) = &change.record {
                    let stored = store
                        .append(service, record.clone())
                        .map_err(ApiError::store)?;
                    history.versions.push(stored);
                }
                store
                    .save_rollout(service, &change.rollout)
                    .map_err(ApiError::store)?;
                history.rollout = change.rollout.clone();
                drop(services);
                self.notify();
                return Ok(change);
            }
            Backend::Etcd(store) => store,
        };
        let _one_at_a_time = self.write_lock.lock().await;
        if !lock(&self.services).contains_key(service) {
            // Perhaps created through another replica moments ago.
            self.reload_service(store, service).await?;
        }
        for attempt in 0..MAX_WRITE_ATTEMPTS {
            let (change, expected) = {
                let services = lock(&self.services);
                let empty = ServiceHistory::default();
                let history = match services.get(service) {
                    Some(history) => history,
                    None if create => &empty,
                    None => return Err(missing()),
                };
                (plan(history)?, history.revision)
            };
            let committed = store
                .commit(service, expected, change.record.as_ref(), &change.rollout)
                .await
                .map_err(ApiError::store)?;
            match committed {
                Commit::Done(revision) => {
                    let mut services = lock(&self.services);
                    let history = services.entry(service.to_string()).or_default();
                    if let Some(record) = &change.record {
                        etcd_store::apply_service_key(
                            history,
                            service,
                            ServiceKey::Version(Box::new(record.clone())),
                        )
                        .map_err(ApiError::store)?;
                    }
                    etcd_store::apply_service_key(
                        history,
                        service,
                        ServiceKey::State {
                            rollout: change.rollout.clone(),
                            revision,
                        },
                    )
                    .map_err(ApiError::store)?;
                    drop(services);
                    self.notify();
                    return Ok(change);
                }
                Commit::Conflict => {
                    tracing::debug!(%service, attempt, "write lost to a concurrent one; re-reading");
                    self.reload_service(store, service).await?;
                    // An attempt that timed out on one member and was retried
                    // on another may have landed: then the version is ours.
                    if let Some(record) = &change.record {
                        let landed = lock(&self.services).get(service).is_some_and(|h| {
                            h.versions.iter().any(|v| {
                                v.record.number == record.number && same_record(&v.record, record)
                            })
                        });
                        if landed {
                            self.notify();
                            return Ok(change);
                        }
                    }
                    let backoff = rand::random_range(0..=(2u64 << attempt.min(5)));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
        Err(ApiError::write_conflict(format!(
            "{service}: {MAX_WRITE_ATTEMPTS} attempts lost to concurrent writes; try again"
        )))
    }

    async fn reload_service(&self, store: &EtcdStore, service: &str) -> Result<(), ApiError> {
        let fresh = store.load_service(service).await.map_err(ApiError::store)?;
        if fresh.versions.is_empty() && fresh.revision == 0 {
            return Ok(());
        }
        let changed = lock(&self.services)
            .entry(service.to_string())
            .or_default()
            .merge(fresh);
        if changed {
            self.notify();
        }
        Ok(())
    }

    pub fn services(&self) -> Vec<serde_json::Value> {
        lock(&self.services)
            .iter()
            .map(|(name, h)| {
                serde_json::json!({
                    "service": name,
                    "versions": h.versions.len(),
                    "latest": h.versions.last().map(|v| v.record.version.clone()),
                    "rollout": h.rollout,
                })
            })
            .collect()
    }

    /// Version list (without contents), oldest first.
    pub fn history(&self, service: &str) -> Result<serde_json::Value, ApiError> {
        let services = lock(&self.services);
        let h = services
            .get(service)
            .ok_or_else(|| ApiError::not_found(format!("no service {service:?}")))?;
        let versions: Vec<_> = h
            .versions
            .iter()
            .map(|v| {
                let r = &v.record;
                let live = if h.rollout.stable.as_deref() == Some(r.version.as_str()) {
                    Some("stable")
                } else if h
                    .rollout
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version == r.version)
                {
                    Some("canary")
                } else {
                    None
                };
                serde_json::json!({
                    "version": r.version,
                    "created_at": r.created_at,
                    "action": r.action,
                    "restored_from": r.restored_from,
                    "live": live,
                })
            })
            .collect();
        Ok(serde_json::json!({ "service": service, "rollout": h.rollout, "versions": versions }))
    }

    /// A stored version, secrets redacted.
    pub fn version(&self, service: &str, version: &str) -> Result<ConfigSpec, ApiError> {
        let services = lock(&self.services);
        services
            .get(service)
            .and_then(|h| h.get(version))
            .map(|v| v.record.spec.redacted())
            .ok_or_else(|| ApiError::not_found(format!("{service} has no version {version:?}")))
    }

    /// Unified diff of two versions' pretty JSON (secrets redacted).
    pub fn diff(&self, service: &str, from: &str, to: &str) -> Result<String, ApiError> {
        let pretty = |v: &str| -> Result<String, ApiError> {
            let spec = self.version(service, v)?;
            serde_json::to_string_pretty(&spec)
                .map(|s| s + "\n")
                .map_err(|e| ApiError::internal(e.to_string()))
        };
        let (a, b) = (pretty(from)?, pretty(to)?);
        Ok(similar::TextDiff::from_lines(&a, &b)
            .unified_diff()
            .context_radius(3)
            .header(from, to)
            .to_string())
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid_config(e.into())
    }
}

/// Whether two records are the same write (content, time and action).
fn same_record(a: &VersionRecord, b: &VersionRecord) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}
