//! A bounded, sharded map from limiter key to per-key state.
//!
//! The hot path locks one shard for a hash-map lookup (never across an await)
//! and then works on the entry's atomics without any lock. Memory is bounded:
//! each shard holds at most `max_keys / SHARDS` entries; when a shard is full,
//! idle entries go first, then the least recently seen ones, in batches so a
//! flood of distinct keys costs amortized O(1) per insert. Entries still in
//! use elsewhere (a held concurrency permit) are never evicted.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 64;

/// Per-key state stored in a [`KeyMap`].
pub trait Tracked: Send + Sync {
    /// Wall-clock seconds of the last use.
    fn last_seen(&self) -> u64;
}

/// Coarse "last used" stamp, written only when the second changes so hot
/// keys do not bounce a cache line on every request.
#[derive(Debug, Default)]
pub struct LastSeen(AtomicU64);

impl LastSeen {
    pub fn touch(&self, now_s: u64) {
        if self.0.load(Ordering::Relaxed) != now_s {
            self.0.store(now_s, Ordering::Relaxed);
        }
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

type Shard<V> = Mutex<HashMap<Box<str>, Arc<V>>>;

pub struct KeyMap<V> {
    shards: Box<[Shard<V>]>,
    hasher: RandomState,
    per_shard: AtomicUsize,
    /// Entries unused this long are dropped first (their state has decayed
    /// back to "fresh", so dropping them loses nothing).
    idle_s: AtomicU64,
}

impl<V: Tracked> KeyMap<V> {
    pub fn new(max_keys: usize, idle_s: u64) -> Self {
        KeyMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: AtomicUsize::new(Self::per_shard(max_keys)),
            idle_s: AtomicU64::new(idle_s),
        }
    }

    fn per_shard(max_keys: usize) -> usize {
        max_keys.div_ceil(SHARDS).max(1)
    }

    /// Applies new bounds (a reload changed the rule).
    pub fn set_bounds(&self, max_keys: usize, idle_s: u64) {
        self.per_shard
            .store(Self::per_shard(max_keys), Ordering::Relaxed);
        self.idle_s.store(idle_s, Ordering::Relaxed);
    }

    #[cfg(test)]
    /// The most entries this map can hold.
    pub fn capacity(&self) -> usize {
        self.per_shard.load(Ordering::Relaxed) * SHARDS
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    pub fn get_or_insert(&self, key: &str, now_s: u64, init: impl FnOnce() -> V) -> Arc<V> {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = shard.get(key) {
            return v.clone();
        }
        let cap = self.per_shard.load(Ordering::Relaxed);
        if shard.len() >= cap {
            self.evict(&mut shard, cap, now_s);
        }
        let v = Arc::new(init());
        shard.insert(key.into(), v.clone());
        v
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<Arc<V>> {
        self.shard(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Inserts (or replaces) an entry, e.g. from a handover.
    pub fn insert(&self, key: &str, value: V, now_s: u64) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let cap = self.per_shard.load(Ordering::Relaxed);
        if !shard.contains_key(key) && shard.len() >= cap {
            self.evict(&mut shard, cap, now_s);
        }
        shard.insert(key.into(), Arc::new(value));
    }

    fn evict(&self, shard: &mut HashMap<Box<str>, Arc<V>>, cap: usize, now_s: u64) {
        let idle = self.idle_s.load(Ordering::Relaxed);
        shard.retain(|_, v| Arc::strong_count(v) > 1 || now_s.saturating_sub(v.last_seen()) < idle);
        if shard.len() < cap {
            return;
        }
        // Still full of recently used keys: drop the least recently seen
        // eighth (at least one) that nobody else holds.
        let batch = (cap / 8).max(1);
        let mut stamps: Vec<u64> = shard
            .values()
            .filter(|v| Arc::strong_count(v) == 1)
            .map(|v| v.last_seen())
            .collect();
        if stamps.is_empty() {
            return;
        }
        let nth = batch.min(stamps.len()) - 1;
        let (_, cutoff, _) = stamps.select_nth_unstable(nth);
        let cutoff = *cutoff;
        let mut removed = 0;
        shard.retain(|_, v| {
            if removed < batch && Arc::strong_count(v) == 1 && v.last_seen() <= cutoff {
                removed += 1;
                false
            } else {
                true
            }
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Visits every entry (for export); shards are locked one at a time.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        for s in self.shards.iter() {
            let shard = s.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in shard.iter() {
                f(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct E(LastSeen);
    impl Tracked for E {
        fn last_seen(&self) -> u64 {
            self.0.get()
        }
    }

    #[test]
    fn a_million_distinct_keys_stay_bounded() {
        let map: KeyMap<E> = KeyMap::new(10_000, 60);
        let bound = map.capacity();
        assert!(bound <= 10_000 + SHARDS);
        for i in 0..1_000_000u64 {
            let e = map.get_or_insert(&format!("k{i}"), 1_000 + i / 10_000, || {
                E(LastSeen::default())
            });
            e.0.touch(1_000 + i / 10_000);
        }
        let len = map.len();
        assert!(len <= bound, "{len} > {bound}");
        assert!(len > bound / 2, "eviction too aggressive: {len}");
    }

    #[test]
    fn held_entries_are_not_evicted() {
        let map: KeyMap<E> = KeyMap::new(1, 0);
        let held = map.get_or_insert("held", 5, || E(LastSeen::default()));
        for i in 0..100 {
            map.get_or_insert(&format!("k{i}"), 5, || E(LastSeen::default()));
        }
        assert!(Arc::ptr_eq(
            &held,
            &map.get("held").expect("held entry kept")
        ));
    }
}
