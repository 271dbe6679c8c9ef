//! Session stores: the embedded memory store and the shared Redis store.
//!
//! A session is a JSON record under a key derived from the session id (the
//! SHA-256 of the id, so whoever can list the store's keys still cannot
//! replay sessions). The idle timeout is the key's expiry, slid forward on
//! every lookup; the absolute expiry is inside the record. Logout overwrites
//! the record with a tombstone so other pods answer `session_revoked`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::state::Handover;
use crate::store::RedisStore;

/// What the store keeps for one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub claims: Map<String, Value>,
    /// Issued at, unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// Absolute expiry, unix seconds.
    #[serde(default)]
    pub exp: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
}

impl SessionRecord {
    pub fn tombstone() -> Self {
        SessionRecord {
            sub: String::new(),
            claims: Map::new(),
            iat: unix_now(),
            exp: 0,
            revoked: true,
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The store's answer for one id.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Active(Arc<SessionRecord>),
    Revoked,
    /// Never existed, idled out, or deleted.
    Missing,
}

impl Lookup {
    fn from_record(record: SessionRecord) -> Lookup {
        if record.revoked {
            Lookup::Revoked
        } else {
            Lookup::Active(Arc::new(record))
        }
    }
}

/// A store call that failed (Redis down or slow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure(pub String);

/// The configured store.
#[derive(Clone)]
pub enum Backend {
    Memory(Arc<MemoryStore>),
    Redis {
        /// `None` only if the config lacked `redis:` (validation prevents it).
        store: Option<Arc<RedisStore>>,
        prefix: String,
    },
    #[cfg(test)]
    Fake(Arc<fake::FakeStore>),
}

fn store_key(prefix: &str, id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut key = String::with_capacity(prefix.len() + 64);
    key.push_str(prefix);
    for b in digest.as_ref() {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Backend {
    /// Whether a local cache belongs in front of this store.
    pub fn is_remote(&self) -> bool {
        match self {
            Backend::Memory(_) => false,
            Backend::Redis { .. } => true,
            #[cfg(test)]
            Backend::Fake(_) => true,
        }
    }

    /// Looks `id` up and slides its idle expiry.
    pub async fn get(&self, id: &str, idle: Duration) -> Result<Lookup, StoreFailure> {
        match self {
            Backend::Memory(m) => Ok(m.get(id, idle)),
            Backend::Redis { store, prefix } => {
                let store = store.as_ref().ok_or_else(no_redis)?;
                let key = store_key(prefix, id);
                // GETEX reads and slides the idle expiry in one command.
                let raw: Option<String> = store
                    .run(|mut conn| async move {
                        redis::cmd("GETEX")
                            .arg(&key)
                            .arg("PX")
                            .arg(millis(idle))
                            .query_async(&mut conn)
                            .await
                    })
                    .await
                    .map_err(|e| StoreFailure(e.to_string()))?;
                Ok(match raw {
                    None => Lookup::Missing,
                    Some(raw) => match serde_json::from_str::<SessionRecord>(&raw) {
                        Ok(record) => Lookup::from_record(record),
                        Err(_) => {
                            tracing::warn!("unreadable session record in the store");
                            Lookup::Missing
                        }
                    },
                })
            }
            #[cfg(test)]
            Backend::Fake(f) => f.get(id).await,
        }
    }

    /// Stores `record` under `id`, expiring after `ttl` without use.
    pub async fn put(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
    ) -> Result<(), StoreFailure> {
        match self {
            Backend::Memory(m) => m.put(id, record.clone(), ttl),
            Backend::Redis { store, prefix } => {
                let store = store.as_ref().ok_or_else(no_redis)?;
                let key = store_key(prefix, id);
                let value = serde_json::to_string(record)
                    .map_err(|e| StoreFailure(format!("encoding the session: {e}")))?;
                store
                    .run(|mut conn| async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(value)
                            .arg("PX")
                            .arg(millis(ttl))
                            .query_async::<()>(&mut conn)
                            .await
                    })
                    .await
                    .map_err(|e| StoreFailure(e.to_string()))
            }
            #[cfg(test)]
            Backend::Fake(f) => {
                if f.down.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(StoreFailure("fake store is down".into()));
                }
                f.put(id, record.clone());
                Ok(())
            }
        }
    }

    /// Replaces the session with a tombstone kept for `ttl`.
    pub async fn revoke(&self, id: &str, ttl: Duration) -> Result<(), StoreFailure> {
        self.put(id, &SessionRecord::tombstone(), ttl).await
    }
}

fn no_redis() -> StoreFailure {
    StoreFailure("no redis section in the config".into())
}

struct MemEntry {
    record: SessionRecord,
    idle: Duration,
    last_seen: Instant,
}

impl MemEntry {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) >= self.idle
    }
}

/// The embedded store (`store: memory`): sessions of this process only.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, MemEntry>>,
    max_entries: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    pub fn set_max_entries(&self, max: usize) {
        self.max_entries
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self, id: &str, idle: Duration) -> Lookup {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get_mut(id) {
            Some(e) if e.expired(now) => {
                entries.remove(id);
                Lookup::Missing
            }
            Some(e) => {
                e.last_seen = now;
                if !e.record.revoked {
                    e.idle = idle;
                }
                Lookup::from_record(e.record.clone())
            }
            None => Lookup::Missing,
        }
    }

    fn put(&self, id: &str, record: SessionRecord, ttl: Duration) -> Result<(), StoreFailure> {
        let now = Instant::now();
        let max = self.max_entries.load(std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if max > 0 && entries.len() >= max && !entries.contains_key(id) {
            entries.retain(|_, e| !e.expired(now));
            if entries.len() >= max {
                return Err(StoreFailure("memory session store is full".into()));
            }
        }
        entries.insert(
            id.to_string(),
            MemEntry {
                record,
                idle: ttl,
                last_seen: now,
            },
        );
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct ExportedSession {
    id: String,
    record: SessionRecord,
    /// Time left before the idle expiry, milliseconds.
    idle_left_ms: u64,
}

impl Handover for MemoryStore {
    fn export(&self) -> Option<Value> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<ExportedSession> = entries
            .iter()
            .filter(|(_, e)| !e.expired(now))
            .map(|(id, e)| ExportedSession {
                id: id.clone(),
                record: e.record.clone(),
                idle_left_ms: millis(e.idle.saturating_sub(now.duration_since(e.last_seen))),
            })
            .collect();
        if list.is_empty() {
            return None;
        }
        serde_json::to_value(list).ok()
    }

    fn import(&self, value: Value) {
        let Ok(list) = serde_json::from_value::<Vec<ExportedSession>>(value) else {
            return;
        };
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for s in list {
            entries.insert(
                s.id,
                MemEntry {
                    record: s.record,
                    idle: Duration::from_millis(s.idle_left_ms),
                    last_seen: now,
                },
            );
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! A store double for unit tests: counts reads, can be slowed down and
    //! switched off.

    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    pub struct FakeStore {
        pub records: Mutex<HashMap<String, SessionRecord>>,
        pub reads: AtomicUsize,
        pub down: AtomicBool,
        pub delay_ms: std::sync::atomic::AtomicU64,
    }

    impl FakeStore {
        pub async fn get(&self, id: &str) -> Result<Lookup, StoreFailure> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreFailure("fake store is down".into()));
            }
            let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            Ok(records
                .get(id)
                .cloned()
                .map(Lookup::from_record)
                .unwrap_or(Lookup::Missing))
        }

        pub fn put(&self, id: &str, record: SessionRecord) {
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_string(), record);
        }

        pub fn remove(&self, id: &str) {
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
    }
}
