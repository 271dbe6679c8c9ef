//! The meshgate control plane: the xDS (ADS) server, the versioned config
//! store, rollout (gray release) state, sidecar status and the admin API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ads;
pub mod api;
pub mod load;
pub mod rollout;
pub mod store;
pub mod stream_state;
pub mod xds_auth;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use meshgate_filters::{FieldError, ValidateCx};
use meshgate_xds::config::{validate, ConfigSpec};
use prost_types::Any;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::ApiError;
use crate::rollout::{pick_percent, Canary, Rollout, Selector};
use crate::store::{
    now_secs, valid_service_name, ServiceHistory, Store, StoreError, VersionRecord,
};

/// One connected sidecar, as shown by `status`.
#[derive(Debug, Clone, Serialize)]
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
    pub track: Option<&'static str>,
    pub last_acked_version: Option<String>,
    pub last_nack: Option<NackInfo>,
    #[serde(skip)]
    stream_id: u64,
}

#[derive(Debug, Clone, Serialize)]
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

/// Shared control-plane state. Cheap to clone behind an `Arc`.
pub struct ControlPlane {
    store: Store,
    services: Mutex<BTreeMap<String, ServiceHistory>>,
    sidecars: Mutex<BTreeMap<String, SidecarStatus>>,
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

impl ControlPlane {
    pub fn open(data_dir: impl Into<std::path::PathBuf>) -> Result<Arc<Self>, StoreError> {
        let store = Store::open(data_dir)?;
        let services = store.load_all()?;
        Ok(Arc::new(ControlPlane {
            store,
            services: Mutex::new(services),
            sidecars: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            next_stream: std::sync::atomic::AtomicU64::new(1),
            xds_denials: xds_auth::XdsDenials::default(),
        }))
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
    ) -> Option<&'static str> {
        match &rollout.canary {
            Some(c) if c.selects(node_id, labels) => Some("canary"),
            _ => rollout.stable.as_ref().map(|_| "stable"),
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
            stream_id,
        };
        lock(&self.sidecars).insert(node_id.to_string(), status);
        stream_id
    }

    pub fn unregister(&self, node_id: &str, stream_id: u64) {
        let mut sidecars = lock(&self.sidecars);
        if sidecars
            .get(node_id)
            .is_some_and(|s| s.stream_id == stream_id)
        {
            sidecars.remove(node_id);
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
        }
    }

    pub fn status(&self, service: Option<&str>) -> Vec<SidecarStatus> {
        let services = lock(&self.services);
        lock(&self.sidecars)
            .values()
            .filter(|s| service.is_none_or(|want| s.service == want))
            .map(|s| {
                let mut s = s.clone();
                if let Some(h) = services.get(&s.service) {
                    s.desired_version =
                        h.rollout.desired(&s.node_id, &s.labels).map(str::to_string);
                    s.track = Self::track(&h.rollout, &s.node_id, &s.labels);
                }
                s
            })
            .collect()
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

    /// Validates and stores a new version, then rolls it out to all sidecars
    /// of the service or, with a selector, to a canary subset.
    pub fn push(
        &self,
        service: &str,
        mut spec: ConfigSpec,
        selector: Option<Selector>,
    ) -> Result<RolloutResult, ApiError> {
        Self::check_service(service)?;
        validate(&spec, &ValidateCx::control_plane()).map_err(ApiError::invalid_config)?;
        let mut services = lock(&self.services);
        let history = services.entry(service.to_string()).or_default();
        if let Some(c) = &history.rollout.canary {
            return Err(ApiError::conflict(format!(
                "canary {} of {service} is in progress: promote or abort it first",
                c.version
            )));
        }
        let number = history.next_number();
        let version = format!("v{number}");
        spec.version = Some(version.clone());
        let mut rollout = history.rollout.clone();
        match selector {
            None => rollout.stable = Some(version.clone()),
            Some(selector) => {
                let nodes = match &selector {
                    Selector::Percent(p) => {
                        let sidecars = lock(&self.sidecars);
                        let ids = sidecars
                            .values()
                            .filter(|s| s.service == service)
                            .map(|s| s.node_id.as_str());
                        let picked = pick_percent(ids, *p);
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
                    selector,
                    nodes,
                });
            }
        }
        let record = VersionRecord {
            version: version.clone(),
            number,
            created_at: now_secs(),
            action: "push".into(),
            restored_from: None,
            spec,
        };
        commit(&self.store, service, history, record, &rollout)?;
        drop(services);
        self.notify();
        tracing::info!(%service, %version, canary = rollout.canary.is_some(), "config pushed");
        Ok(RolloutResult {
            service: service.to_string(),
            version: Some(version),
            rollout,
        })
    }

    fn change_rollout(
        &self,
        service: &str,
        f: impl FnOnce(&Rollout) -> Result<Rollout, ApiError>,
    ) -> Result<RolloutResult, ApiError> {
        let mut services = lock(&self.services);
        let history = services
            .get_mut(service)
            .ok_or_else(|| ApiError::not_found(format!("no service {service:?}")))?;
        let rollout = f(&history.rollout)?;
        self.store
            .save_rollout(service, &rollout)
            .map_err(ApiError::store)?;
        history.rollout = rollout.clone();
        drop(services);
        self.notify();
        Ok(RolloutResult {
            service: service.to_string(),
            version: rollout.stable.clone(),
            rollout,
        })
    }

    /// Makes the canary version the stable one for every sidecar.
    pub fn promote(&self, service: &str) -> Result<RolloutResult, ApiError> {
        let result = self.change_rollout(service, |r| {
            let canary = r
                .canary
                .as_ref()
                .ok_or_else(|| ApiError::conflict(format!("no canary of {service} to promote")))?;
            Ok(Rollout {
                stable: Some(canary.version.clone()),
                canary: None,
            })
        })?;
        tracing::info!(%service, version = ?result.version, "canary promoted");
        Ok(result)
    }

    /// Ends the canary; its sidecars go back to the stable version.
    pub fn abort(&self, service: &str) -> Result<RolloutResult, ApiError> {
        let result = self.change_rollout(service, |r| {
            if r.canary.is_none() {
                return Err(ApiError::conflict(format!(
                    "no canary of {service} to abort"
                )));
            }
            Ok(Rollout {
                stable: r.stable.clone(),
                canary: None,
            })
        })?;
        tracing::info!(%service, "canary aborted");
        Ok(result)
    }

    /// Stores the content of `to` as a new version and rolls it out to all.
    pub fn rollback(&self, service: &str, to: &str) -> Result<RolloutResult, ApiError> {
        let mut services = lock(&self.services);
        let history = services
            .get_mut(service)
            .ok_or_else(|| ApiError::not_found(format!("no service {service:?}")))?;
        if let Some(c) = &history.rollout.canary {
            return Err(ApiError::conflict(format!(
                "canary {} of {service} is in progress: promote or abort it first",
                c.version
            )));
        }
        let old = history
            .get(to)
            .ok_or_else(|| ApiError::not_found(format!("{service} has no version {to:?}")))?;
        let number = history.next_number();
        let version = format!("v{number}");
        let mut spec = old.record.spec.clone();
        spec.version = Some(version.clone());
        let record = VersionRecord {
            version: version.clone(),
            number,
            created_at: now_secs(),
            action: "rollback".into(),
            restored_from: Some(to.to_string()),
            spec,
        };
        let rollout = Rollout {
            stable: Some(version.clone()),
            canary: None,
        };
        commit(&self.store, service, history, record, &rollout)?;
        drop(services);
        self.notify();
        tracing::info!(%service, %version, restored_from = %to, "rolled back");
        Ok(RolloutResult {
            service: service.to_string(),
            version: Some(version),
            rollout,
        })
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

/// Makes a new version durable with the rollout that serves it, then records
/// both in memory (only after the disk write succeeded).
fn commit(
    store: &Store,
    service: &str,
    history: &mut ServiceHistory,
    record: VersionRecord,
    rollout: &Rollout,
) -> Result<(), ApiError> {
    let stored = store.append(service, record).map_err(ApiError::store)?;
    store
        .save_rollout(service, rollout)
        .map_err(ApiError::store)?;
    history.versions.push(stored);
    history.rollout = rollout.clone();
    Ok(())
}
