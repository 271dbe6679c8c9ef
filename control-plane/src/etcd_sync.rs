//! The background work of a replica on etcd: following etcd's changes to
//! every service (so all replicas serve the same versions) and publishing
//! this replica's sidecars under its lease (so any replica lists them all).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::etcd::{
    self as etcd_store, pb::EventType, sidecar_key, ServiceKey, LEASE_TTL_SECS,
};
use crate::store::StoreError;
use crate::{lock, ControlPlane};

/// Pause before following etcd again after the watch failed.
const RETRY: Duration = Duration::from_millis(500);
/// How long status changes are gathered before they are written.
const PUBLISH_BATCH: Duration = Duration::from_millis(50);
/// A sidecar status larger than this (a huge node id or labels) is kept
/// local: it would make etcd refuse the whole batch.
const MAX_STATUS_BYTES: usize = 32 * 1024;

impl ControlPlane {
    /// Applies every change etcd reports under `services/` from `revision`
    /// on. When the watch fails (etcd unreachable, member without leader,
    /// history compacted), re-reads everything and follows again; meanwhile
    /// sidecars keep what they have.
    pub(crate) async fn follow_etcd(self: Arc<Self>, mut revision: i64) {
        let Some(store) = self.etcd() else { return };
        loop {
            let error = match self.follow_from(&mut revision).await {
                Ok(()) => StoreError::Unavailable("watch ended".into()),
                Err(e) => e,
            };
            tracing::warn!(error = %error, revision, "etcd watch lost; re-reading and following again");
            loop {
                tokio::time::sleep(RETRY).await;
                match store.load_all().await {
                    Ok((all, at)) => {
                        let mut changed = false;
                        {
                            let mut services = lock(&self.services);
                            for (name, fresh) in all {
                                changed |= services.entry(name).or_default().merge(fresh);
                            }
                        }
                        if changed {
                            self.notify();
                        }
                        revision = at;
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "etcd still unavailable"),
                }
            }
        }
    }

    async fn follow_from(&self, revision: &mut i64) -> Result<(), StoreError> {
        let Some(store) = self.etcd() else {
            return Ok(());
        };
        let mut responses = store.watch_services(*revision + 1).await?;
        while let Some(response) = responses.recv().await {
            let response = response?;
            if response.compact_revision > 0 {
                return Err(StoreError::Unavailable(format!(
                    "watch history compacted at {}",
                    response.compact_revision
                )));
            }
            let mut keys = Vec::new();
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                // Versions and states are never deleted by a control plane.
                if event.r#type != EventType::Put as i32 {
                    continue;
                }
                match etcd_store::parse_service_key(&kv.key, &kv.value, kv.mod_revision) {
                    Ok(Some(key)) => keys.push(key),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "ignoring an unreadable key from etcd"),
                }
            }
            // A write's new version comes before the state that makes it live.
            keys.sort_by_key(|(_, key)| matches!(key, ServiceKey::State { .. }));
            let mut changed = false;
            {
                let mut services = lock(&self.services);
                for (service, key) in keys {
                    let history = services.entry(service.clone()).or_default();
                    match etcd_store::apply_service_key(history, &service, key) {
                        Ok(applied) => changed |= applied,
                        Err(e) => {
                            tracing::warn!(%service, error = %e, "ignoring a version from etcd")
                        }
                    }
                }
            }
            if let Some(header) = response.header {
                *revision = (*revision).max(header.revision);
            }
            if changed {
                self.notify();
            }
        }
        Ok(())
    }

    /// Keeps this replica's lease alive and writes its sidecars' status
    /// under it: each change within [`PUBLISH_BATCH`], everything again when
    /// the lease had to be granted anew (it expired while etcd was away).
    pub(crate) async fn publish_sidecars(self: Arc<Self>) {
        let Some(store) = self.etcd() else { return };
        let renew_every = Duration::from_secs((LEASE_TTL_SECS / 3).max(1) as u64);
        let mut lease = 0;
        let mut renewed = Instant::now();
        let mut rewrite_all = true;
        loop {
            tokio::select! {
                () = self.sidecars_changed.notified() => {}
                () = tokio::time::sleep(renew_every) => {}
            }
            tokio::time::sleep(PUBLISH_BATCH).await;
            if lease == 0 || renewed.elapsed() >= renew_every {
                let alive = lease != 0
                    && match store.client().lease_keep_alive(lease).await {
                        Ok(ttl) => ttl > 0,
                        // The lease is unknown to etcd: grant a new one.
                        Err(StoreError::Rejected(_)) => false,
                        Err(e) => {
                            tracing::debug!(error = %e, "lease keep-alive failed");
                            self.sidecars_changed.notify_one();
                            continue;
                        }
                    };
                if !alive {
                    match store.client().lease_grant(LEASE_TTL_SECS).await {
                        Ok(id) => {
                            lease = id;
                            rewrite_all = true;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "lease grant failed");
                            continue;
                        }
                    }
                }
                renewed = Instant::now();
            }
            let dirty = std::mem::take(&mut *lock(&self.dirty_sidecars));
            let changes: Vec<(String, Option<Vec<u8>>)> = {
                let sidecars = lock(&self.sidecars);
                let mut changes: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
                let value = |node: &str| {
                    sidecars
                        .get(node)
                        .and_then(|s| serde_json::to_vec(s).ok())
                        .filter(|v| v.len() <= MAX_STATUS_BYTES)
                };
                let fits = |node: &str| node.len() <= MAX_STATUS_BYTES;
                if rewrite_all {
                    for node in sidecars.keys().filter(|n| fits(n)) {
                        changes.insert(sidecar_key(&self.replica, node), value(node));
                    }
                }
                for node in dirty.iter().filter(|n| fits(n)) {
                    changes.insert(sidecar_key(&self.replica, node), value(node));
                }
                changes.into_iter().collect()
            };
            if changes.is_empty() {
                continue;
            }
            if let Err(e) = store.write_sidecars(lease, changes).await {
                if let StoreError::Rejected(_) = e {
                    // Most likely the lease expired while etcd was away: a new
                    // lease and a full rewrite follow. The batch itself is not
                    // retried, as the same batch could be refused again.
                    tracing::warn!(error = %e, "etcd refused sidecar status; rewriting under a new lease");
                    lease = 0;
                    continue;
                }
                tracing::debug!(error = %e, "publishing sidecar status failed; retrying");
                lock(&self.dirty_sidecars).extend(dirty);
                self.sidecars_changed.notify_one();
                // The lease may be gone by the time etcd answers again.
                lease = 0;
                continue;
            }
            rewrite_all = false;
        }
    }
}
