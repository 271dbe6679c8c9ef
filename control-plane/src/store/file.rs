//! The file store, for one machine (the default).
//!
//! Layout under the data dir: `services/<service>/history.jsonl` (one JSON
//! version record per line, append-only, fsynced before a push is
//! acknowledged) and `services/<service>/rollout.json` (which versions are
//! live; replaced atomically by write-temp, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::{
    io, stored, valid_service_name, ServiceHistory, StoreError, StoredVersion, VersionRecord,
};
use crate::rollout::Rollout;

/// The file store. Callers serialize writes per service (the control plane
/// holds its state lock across a write).
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let services = dir.join("services");
        fs::create_dir_all(&services).map_err(io(&services))?;
        Ok(FileStore { dir })
    }

    fn service_dir(&self, service: &str) -> PathBuf {
        self.dir.join("services").join(service)
    }

    /// Loads every service's history and rollout.
    pub fn load_all(&self) -> Result<BTreeMap<String, ServiceHistory>, StoreError> {
        let services = self.dir.join("services");
        let mut all = BTreeMap::new();
        for entry in fs::read_dir(&services).map_err(io(&services))? {
            let entry = entry.map_err(io(&services))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !valid_service_name(&name) || !entry.path().is_dir() {
                continue;
            }
            all.insert(name.clone(), self.load(&name)?);
        }
        Ok(all)
    }

    fn load(&self, service: &str) -> Result<ServiceHistory, StoreError> {
        let dir = self.service_dir(service);
        let history_path = dir.join("history.jsonl");
        let mut history = ServiceHistory::default();
        if let Ok(file) = File::open(&history_path) {
            for (i, line) in BufReader::new(file).lines().enumerate() {
                let line = line.map_err(io(&history_path))?;
                if line.trim().is_empty() {
                    continue;
                }
                let record: VersionRecord = match serde_json::from_str(&line) {
                    Ok(r) => r,
                    // A torn last line (crash mid-append, never acknowledged) is dropped.
                    Err(e) if e.is_eof() => break,
                    Err(source) => {
                        return Err(StoreError::Corrupt {
                            path: history_path,
                            line: i + 1,
                            source,
                        })
                    }
                };
                history.versions.push(stored(service, record)?);
            }
        }
        let rollout_path = dir.join("rollout.json");
        if let Ok(text) = fs::read_to_string(&rollout_path) {
            history.rollout =
                serde_json::from_str(&text).map_err(|source| StoreError::Corrupt {
                    path: rollout_path,
                    line: 1,
                    source,
                })?;
        }
        Ok(history)
    }

    /// Appends a version durably (fsync) and returns it with its resource.
    pub fn append(
        &self,
        service: &str,
        record: VersionRecord,
    ) -> Result<StoredVersion, StoreError> {
        let dir = self.service_dir(service);
        let fresh = !dir.exists();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        if fresh {
            sync_dir(&self.dir.join("services"))?;
        }
        let path = dir.join("history.jsonl");
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&line).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        if fresh {
            sync_dir(&dir)?;
        }
        stored(service, record)
    }

    /// Replaces the service's rollout state atomically and durably.
    pub fn save_rollout(&self, service: &str, rollout: &Rollout) -> Result<(), StoreError> {
        let dir = self.service_dir(service);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join("rollout.json.tmp");
        let path = dir.join("rollout.json");
        let text = serde_json::to_vec_pretty(rollout)?;
        let mut file = File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&text).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&dir)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
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
    fn history_and_rollout_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store.append("orders", record(1)).expect("append");
        store.append("orders", record(2)).expect("append");
        let rollout = Rollout {
            stable: Some("v2".into()),
            canary: None,
        };
        store.save_rollout("orders", &rollout).expect("save");
        let all = FileStore::open(dir.path())
            .expect("reopen")
            .load_all()
            .expect("load");
        let orders = &all["orders"];
        assert_eq!(orders.versions.len(), 2);
        assert_eq!(orders.next_number(), 3);
        assert_eq!(orders.rollout.stable.as_deref(), Some("v2"));
        assert!(orders.get("v1").is_some());
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::open(dir.path()).expect("open");
        store.append("orders", record(1)).expect("append");
        let path = dir.path().join("services/orders/history.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"version\":\"v2\",\"num").expect("write");
        let all = store.load_all().expect("load");
        assert_eq!(all["orders"].versions.len(), 1);
    }

    #[test]
    fn service_names_are_restricted() {
        assert!(valid_service_name("orders-api.v2"));
        assert!(!valid_service_name("../etc"));
        assert!(!valid_service_name(""));
        assert!(!valid_service_name(".hidden"));
        assert!(!valid_service_name("a/b"));
    }
}
