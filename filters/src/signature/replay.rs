//! Nonce stores for replay protection: an in-memory bounded cache (handed
//! over to the next process at upgrade) and a Redis store shared by pods.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::state::Handover;
use crate::store::RedisStore;

/// Outcome of recording a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// First use within the window.
    Fresh,
    /// Seen before within the window.
    Replayed,
    /// The store could not answer (Redis down, or the memory cache is full
    /// of unexpired nonces); the request must not pass.
    Unavailable,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Default)]
struct Inner {
    /// nonce key -> expiry (unix seconds)
    seen: HashMap<String, u64>,
    /// insertion order, for expiring the oldest first
    order: VecDeque<(String, u64)>,
}

/// Bounded in-memory nonce cache. When full of unexpired nonces it refuses
/// new ones (fail closed) instead of forgetting a nonce that could then be
/// replayed.
pub struct MemoryNonces {
    inner: Mutex<Inner>,
    capacity: Mutex<usize>,
}

impl MemoryNonces {
    pub fn new(capacity: usize) -> Self {
        MemoryNonces {
            inner: Mutex::new(Inner::default()),
            capacity: Mutex::new(capacity.max(1)),
        }
    }

    /// A reload may change the bound.
    pub fn set_capacity(&self, capacity: usize) {
        *self.capacity.lock().unwrap_or_else(|e| e.into_inner()) = capacity.max(1);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .seen
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `key` for `ttl` unless it is already present.
    pub fn check_and_insert(&self, key: &str, ttl: Duration) -> NonceCheck {
        self.check_and_insert_at(key, ttl, unix_now())
    }

    fn check_and_insert_at(&self, key: &str, ttl: Duration, now: u64) -> NonceCheck {
        let capacity = *self.capacity.lock().unwrap_or_else(|e| e.into_inner());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&expiry) = inner.seen.get(key) {
            if expiry > now {
                return NonceCheck::Replayed;
            }
        }
        // Drop expired entries from the front (oldest inserted first).
        while let Some((k, expiry)) = inner.order.front().cloned() {
            if expiry > now && inner.seen.len() < capacity {
                break;
            }
            if expiry > now {
                // full and the oldest is still live: refuse
                return NonceCheck::Unavailable;
            }
            inner.order.pop_front();
            if inner.seen.get(&k) == Some(&expiry) {
                inner.seen.remove(&k);
            }
        }
        let expiry = now.saturating_add(ttl.as_secs().max(1));
        inner.seen.insert(key.to_string(), expiry);
        inner.order.push_back((key.to_string(), expiry));
        NonceCheck::Fresh
    }
}

impl Handover for MemoryNonces {
    fn export(&self) -> Option<serde_json::Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_now();
        let live: Vec<serde_json::Value> = inner
            .order
            .iter()
            .filter(|(k, exp)| *exp > now && inner.seen.get(k) == Some(exp))
            .map(|(k, exp)| serde_json::json!([k, exp]))
            .collect();
        (!live.is_empty()).then_some(serde_json::Value::Array(live))
    }

    fn import(&self, value: serde_json::Value) {
        let Some(entries) = value.as_array() else {
            return;
        };
        let now = unix_now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            let (Some(key), Some(expiry)) = (
                entry.get(0).and_then(|k| k.as_str()),
                entry.get(1).and_then(|e| e.as_u64()),
            ) else {
                continue;
            };
            if expiry > now && !inner.seen.contains_key(key) {
                inner.seen.insert(key.to_string(), expiry);
                inner.order.push_back((key.to_string(), expiry));
            }
        }
    }
}

/// Where a filter records nonces.
#[derive(Clone)]
pub enum NonceStore {
    Memory(Arc<MemoryNonces>),
    Redis(Arc<RedisStore>),
}

/// Redis key prefix; the key id and nonce follow, so every pod sharing the
/// Redis sees the same nonce once per key.
pub const REDIS_PREFIX: &str = "meshgate:sig-nonce:";

impl NonceStore {
    pub async fn check(&self, key_id: &str, nonce: &str, ttl: Duration) -> NonceCheck {
        let key = format!("{key_id}\u{1f}{nonce}");
        match self {
            NonceStore::Memory(m) => m.check_and_insert(&key, ttl),
            NonceStore::Redis(store) => {
                let redis_key = format!("{REDIS_PREFIX}{key}");
                let secs = ttl.as_secs().max(1);
                let result = store
                    .run(|mut conn| async move {
                        redis::cmd("SET")
                            .arg(&redis_key)
                            .arg(1)
                            .arg("NX")
                            .arg("EX")
                            .arg(secs)
                            .query_async::<Option<String>>(&mut conn)
                            .await
                    })
                    .await;
                match result {
                    Ok(Some(_)) => NonceCheck::Fresh,
                    Ok(None) => NonceCheck::Replayed,
                    Err(e) => {
                        tracing::warn!(error = %e, "nonce store unavailable");
                        NonceCheck::Unavailable
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_once_within_window_then_again_after_expiry() {
        let m = MemoryNonces::new(10);
        let ttl = Duration::from_secs(60);
        assert_eq!(m.check_and_insert_at("a", ttl, 1000), NonceCheck::Fresh);
        assert_eq!(m.check_and_insert_at("a", ttl, 1030), NonceCheck::Replayed);
        assert_eq!(m.check_and_insert_at("b", ttl, 1030), NonceCheck::Fresh);
        // after the window the nonce is forgotten (the signature is too old anyway)
        assert_eq!(m.check_and_insert_at("a", ttl, 1061), NonceCheck::Fresh);
    }

    #[test]
    fn full_cache_fails_closed_and_evicts_only_expired() {
        let m = MemoryNonces::new(2);
        let ttl = Duration::from_secs(60);
        assert_eq!(m.check_and_insert_at("a", ttl, 1000), NonceCheck::Fresh);
        assert_eq!(m.check_and_insert_at("b", ttl, 1001), NonceCheck::Fresh);
        assert_eq!(
            m.check_and_insert_at("c", ttl, 1002),
            NonceCheck::Unavailable
        );
        // "a" still remembered
        assert_eq!(m.check_and_insert_at("a", ttl, 1003), NonceCheck::Replayed);
        // once "a" expired there is room again
        assert_eq!(m.check_and_insert_at("c", ttl, 1060), NonceCheck::Fresh);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn handover_keeps_live_nonces() {
        let old = MemoryNonces::new(10);
        assert_eq!(
            old.check_and_insert("k\u{1f}n1", Duration::from_secs(300)),
            NonceCheck::Fresh
        );
        let exported = old.export().expect("live nonces exported");
        let new = MemoryNonces::new(10);
        new.import(exported);
        assert_eq!(
            new.check_and_insert("k\u{1f}n1", Duration::from_secs(300)),
            NonceCheck::Replayed
        );
    }
}
