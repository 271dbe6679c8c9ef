//! Where the control plane keeps its state: versions, rollout state and
//! (with etcd) sidecar status and xDS credential bindings.
//!
//! * [`file::FileStore`]: the default, one machine, a data dir.
//! * [`etcd::EtcdStore`]: several replicas over one etcd cluster. Every write
//!   is one transaction guarded by the service's state-key revision.

pub mod etcd;
pub mod file;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use meshgate_xds::config::ConfigSpec;
use prost_types::Any;
use serde::{Deserialize, Serialize};

use crate::rollout::Rollout;

pub use file::FileStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record in {path} line {line}: {source}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// etcd could not be reached or did not answer in time.
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    /// etcd refused the request itself (too large, invalid): retrying it
    /// elsewhere would not help.
    #[error("etcd refused the request: {0}")]
    Rejected(String),
    /// etcd answered with something this control plane did not write.
    #[error("etcd key {key}: {detail}")]
    CorruptKey { key: String, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stored version of a service's config. Versions are immutable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionRecord {
    /// `v<number>`, the xDS `version_info`.
    pub version: String,
    pub number: u64,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// `push` or `rollback`.
    pub action: String,
    /// For a rollback, the version whose content was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    pub spec: ConfigSpec,
}

/// A version with its wire resource encoded once for all streams.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub record: VersionRecord,
    pub resource: Arc<Any>,
}

#[derive(Debug, Default)]
pub struct ServiceHistory {
    pub versions: Vec<StoredVersion>,
    pub rollout: Rollout,
    /// etcd: the mod revision of the service's state key when it was read,
    /// the guard of the next write (0: no state key yet). Unused by the file store.
    pub revision: i64,
}

impl ServiceHistory {
    pub fn get(&self, version: &str) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.record.version == version)
    }

    pub fn next_number(&self) -> u64 {
        self.versions.last().map_or(1, |v| v.record.number + 1)
    }
}

/// Whether a service name is safe as a file name and readable in URLs.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn stored(service: &str, record: VersionRecord) -> Result<StoredVersion, StoreError> {
    let resource = meshgate_xds::resource::encode(service, &record.version, &record.spec)?;
    Ok(StoredVersion {
        record,
        resource: Arc::new(resource),
    })
}

impl ServiceHistory {
    /// Takes what `fresh` (read from the store) has and this lacks: versions
    /// it does not hold, and the rollout if it is newer. Never drops a version.
    pub fn merge(&mut self, fresh: ServiceHistory) -> bool {
        let mut changed = false;
        for version in fresh.versions {
            let number = version.record.number;
            if self.versions.iter().any(|v| v.record.number == number) {
                continue;
            }
            let at = self.versions.partition_point(|v| v.record.number < number);
            self.versions.insert(at, version);
            changed = true;
        }
        if fresh.revision > self.revision {
            self.rollout = fresh.rollout;
            self.revision = fresh.revision;
            changed = true;
        }
        changed
    }
}
