//! The local cache in front of a shared session store.
//!
//! Answers (including "unknown id") are kept for `cache_ttl`, which bounds how
//! long a revocation on another pod can go unnoticed here. Concurrent misses
//! on one id share a single store lookup, so a burst of requests carrying the
//! same uncached id costs the store one read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::store::{unix_now, Backend, Lookup, Now, SessionRecord, StoreFailure};
use crate::state::Handover;

struct Entry {
    lookup: Lookup,
    /// The time of the request whose lookup fetched the answer.
    fetched: Instant,
}

impl Entry {
    fn fresh(&self, ttl: Duration, now: Instant) -> bool {
        now.saturating_duration_since(self.fetched) < ttl
    }
}

type Flight = Arc<OnceCell<Result<Lookup, StoreFailure>>>;

/// Long-lived per filter instance (kept across reloads and upgrades).
#[derive(Default)]
pub struct SessionCache {
    entries: Mutex<HashMap<String, Entry>>,
    in_flight: Mutex<HashMap<String, Flight>>,
}

/// The cache settings of one config snapshot.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_entries: usize,
    pub idle: Duration,
}

impl SessionCache {
    fn cached(&self, id: &str, ttl: Duration, now: Instant) -> Option<Lookup> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(id)
            .filter(|e| e.fresh(ttl, now))
            .map(|e| e.lookup.clone())
    }

    /// Records an answer (also used for sessions created or revoked here),
    /// fetched at `now`.
    pub fn insert(&self, id: &str, lookup: Lookup, s: &CacheSettings, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= s.max_entries && !entries.contains_key(id) {
            entries.retain(|_, e| e.fresh(s.ttl, now));
            if entries.len() >= s.max_entries {
                return; // full of live entries: answer uncached
            }
        }
        entries.insert(
            id.to_string(),
            Entry {
                lookup,
                fetched: now,
            },
        );
    }

    /// The cached answer for `id` at `now`, or one store lookup shared by
    /// every concurrent caller asking for the same id.
    pub async fn get(
        &self,
        id: &str,
        backend: &Backend,
        s: &CacheSettings,
        now: Now,
    ) -> Result<Lookup, StoreFailure> {
        if let Some(hit) = self.cached(id, s.ttl, now.instant) {
            metrics::counter!("meshgate_session_cache_total", "result" => "hit").increment(1);
            return Ok(hit);
        }
        let flight: Flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        let _leave = LeaveFlight {
            cache: self,
            id,
            flight: &flight,
        };
        // If the caller running the lookup is cancelled, the next waiter
        // takes over (OnceCell semantics), so nobody waits forever.
        flight
            .get_or_init(|| async {
                // A flight that finished between the cache check and joining
                // left its answer in the cache.
                if let Some(hit) = self.cached(id, s.ttl, now.instant) {
                    return Ok(hit);
                }
                metrics::counter!("meshgate_session_cache_total", "result" => "miss").increment(1);
                let result = backend.get(id, s.idle, now).await;
                if let Ok(lookup) = &result {
                    self.insert(id, lookup.clone(), s, now.instant);
                }
                result
            })
            .await
            .clone()
    }

    #[cfg(test)]
    pub fn flights(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Removes a flight from the table when its answer is in (or when its last
/// waiter gave up), also if the request was cancelled mid-lookup.
struct LeaveFlight<'a> {
    cache: &'a SessionCache,
    id: &'a str,
    flight: &'a Flight,
}

impl Drop for LeaveFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .cache
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let ours = in_flight
            .get(self.id)
            .is_some_and(|f| Arc::ptr_eq(f, self.flight));
        // Done, or nobody else waits on it (the table and this caller hold
        // the only references).
        if ours && (self.flight.initialized() || Arc::strong_count(self.flight) <= 2) {
            in_flight.remove(self.id);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ExportedEntry {
    id: String,
    /// `None` for a cached "unknown id".
    record: Option<SessionRecord>,
    age_ms: u64,
}

impl Handover for SessionCache {
    fn export(&self) -> Option<Value> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let list: Vec<ExportedEntry> = entries
            .iter()
            .map(|(id, e)| ExportedEntry {
                id: id.clone(),
                record: match &e.lookup {
                    Lookup::Active(r) => Some((**r).clone()),
                    Lookup::Revoked => Some(SessionRecord::tombstone(unix_now())),
                    Lookup::Missing => None,
                },
                age_ms: u64::try_from(
                    Instant::now()
                        .saturating_duration_since(e.fetched)
                        .as_millis(),
                )
                .unwrap_or(u64::MAX),
            })
            .collect();
        if list.is_empty() {
            return None;
        }
        serde_json::to_value(list).ok()
    }

    fn import(&self, value: Value) {
        let Ok(list) = serde_json::from_value::<Vec<ExportedEntry>>(value) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for e in list {
            let Some(fetched) = Instant::now().checked_sub(Duration::from_millis(e.age_ms)) else {
                continue;
            };
            let lookup = match e.record {
                Some(r) if r.revoked => Lookup::Revoked,
                Some(r) => Lookup::Active(Arc::new(r)),
                None => Lookup::Missing,
            };
            entries.insert(e.id, Entry { lookup, fetched });
        }
    }
}
