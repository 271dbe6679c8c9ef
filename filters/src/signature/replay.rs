//! Nonce stores for replay protection: an in-memory bounded cache (handed
//! over to the next process at upgrade) and a Redis store shared by pods.
//!
//! Neither store keeps the nonce itself, only a 128-bit SHA-256 digest of the
//! key id and the nonce, so the memory a nonce costs does not depend on its
//! length. Each key id may hold at most `max_nonces_per_key` live nonces:
//! beyond that new signatures of that key are refused (429) until its oldest
//! nonce expires. Evicting a live nonce instead would let it be replayed.

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
    /// The key id already holds `max_nonces_per_key` live nonces; the
    /// oldest expires in `retry_after_secs`.
    KeyLimit { retry_after_secs: u64 },
    /// The store could not answer (Redis down, or the memory cache is full
    /// of unexpired nonces); the request must not pass.
    Unavailable,
}

/// Bytes of SHA-256 kept per nonce: 128 bits, so a collision needs about
/// 2^64 nonces of one key.
pub const NONCE_DIGEST_LEN: usize = 16;
pub type NonceDigest = [u8; NONCE_DIGEST_LEN];

/// The digest stored for `nonce` of `key_id`. The key id is length-prefixed
/// so that no (key id, nonce) pair collides with another by construction.
pub fn nonce_digest(key_id: &str, nonce: &str) -> NonceDigest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(key_id.len() as u64).to_be_bytes());
    ctx.update(key_id.as_bytes());
    ctx.update(nonce.as_bytes());
    let full = ctx.finish();
    let mut out = [0u8; NONCE_DIGEST_LEN];
    out.copy_from_slice(&full.as_ref()[..NONCE_DIGEST_LEN]);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_hex_digest(text: &str) -> Option<NonceDigest> {
    if text.len() != NONCE_DIGEST_LEN * 2 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; NONCE_DIGEST_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Default)]
struct Inner {
    /// nonce digest -> expiry (unix seconds)
    seen: HashMap<NonceDigest, u64>,
    /// Per key id, its nonces in insertion order (oldest first), for
    /// expiring and for the per-key bound.
    by_key: HashMap<Arc<str>, VecDeque<(NonceDigest, u64)>>,
    /// Entries in all `by_key` queues.
    queued: usize,
}

impl Inner {
    /// Forgets the expired nonces at the front of one key's queue.
    fn expire_key(&mut self, key_id: &str, now: u64) {
        let Some(queue) = self.by_key.get_mut(key_id) else {
            return;
        };
        while let Some(&(digest, expiry)) = queue.front() {
            if expiry > now {
                break;
            }
            queue.pop_front();
            self.queued -= 1;
            // The same nonce may have been recorded again after it expired.
            if self.seen.get(&digest) == Some(&expiry) {
                self.seen.remove(&digest);
            }
        }
        if queue.is_empty() {
            self.by_key.remove(key_id);
        }
    }

    fn expire_all(&mut self, now: u64) {
        let keys: Vec<Arc<str>> = self.by_key.keys().cloned().collect();
        for key in keys {
            self.expire_key(&key, now);
        }
    }

    fn push(&mut self, key_id: &Arc<str>, digest: NonceDigest, expiry: u64) {
        self.seen.insert(digest, expiry);
        self.by_key
            .entry(key_id.clone())
            .or_default()
            .push_back((digest, expiry));
        self.queued += 1;
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    capacity: usize,
    per_key: usize,
}

/// Bounded in-memory nonce cache. When full of unexpired nonces it refuses
/// new ones (fail closed) instead of forgetting a nonce that could then be
/// replayed.
pub struct MemoryNonces {
    inner: Mutex<Inner>,
    limits: Mutex<Limits>,
    entries_gauge: metrics::Gauge,
}

impl MemoryNonces {
    pub fn new(capacity: usize, per_key: usize) -> Self {
        Self::with_gauge(capacity, per_key, metrics::Gauge::noop())
    }

    /// Reports the number of stored nonces on `gauge`.
    pub fn with_gauge(capacity: usize, per_key: usize, gauge: metrics::Gauge) -> Self {
        MemoryNonces {
            inner: Mutex::new(Inner::default()),
            limits: Mutex::new(Limits {
                capacity: capacity.max(1),
                per_key: per_key.max(1),
            }),
            entries_gauge: gauge,
        }
    }

    /// A reload may change the bounds.
    pub fn set_limits(&self, capacity: usize, per_key: usize) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Limits {
            capacity: capacity.max(1),
            per_key: per_key.max(1),
        };
    }

    /// Stored entries (live and not yet purged).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `nonce` of `key_id` for `ttl` unless it is already present.
    pub fn check_and_insert(&self, key_id: &Arc<str>, nonce: &str, ttl: Duration) -> NonceCheck {
        self.check_digest_at(key_id, nonce_digest(key_id, nonce), ttl, unix_now())
    }

    fn check_digest_at(
        &self,
        key_id: &Arc<str>,
        digest: NonceDigest,
        ttl: Duration,
        now: u64,
    ) -> NonceCheck {
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.seen.get(&digest).is_some_and(|&expiry| expiry > now) {
            return NonceCheck::Replayed;
        }
        inner.expire_key(key_id, now);
        if let Some(queue) = inner.by_key.get(&**key_id) {
            if queue.len() >= limits.per_key {
                let oldest = queue.front().map_or(now + 1, |&(_, expiry)| expiry);
                return NonceCheck::KeyLimit {
                    retry_after_secs: oldest.saturating_sub(now).max(1),
                };
            }
        }
        if inner.queued >= limits.capacity {
            inner.expire_all(now);
            if inner.queued >= limits.capacity {
                self.entries_gauge.set(inner.queued as f64);
                return NonceCheck::Unavailable;
            }
        }
        let expiry = now.saturating_add(ttl.as_secs().max(1));
        inner.push(key_id, digest, expiry);
        self.entries_gauge.set(inner.queued as f64);
        NonceCheck::Fresh
    }
}

/// Handover format of this release: `{"format": 2, "entries": [[key id,
/// hex digest, expiry], ...]}`. Releases before it exported
/// `[["<key id>\u{1f}<raw nonce>", expiry], ...]`; that form is still read
/// (and digested) so an upgrade from them keeps every live nonce.
const EXPORT_FORMAT: u64 = 2;

impl Handover for MemoryNonces {
    fn export(&self) -> Option<serde_json::Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = unix_now();
        let live: Vec<serde_json::Value> = inner
            .by_key
            .iter()
            .flat_map(|(key_id, queue)| {
                let seen = &inner.seen;
                queue
                    .iter()
                    .filter(move |(d, exp)| *exp > now && seen.get(d) == Some(exp))
                    .map(move |(d, exp)| serde_json::json!([&**key_id, hex(d), exp]))
            })
            .collect();
        (!live.is_empty()).then(|| serde_json::json!({"format": EXPORT_FORMAT, "entries": live}))
    }

    fn import(&self, value: serde_json::Value) {
        let now = unix_now();
        let mut entries: Vec<(Arc<str>, NonceDigest, u64)> = match &value {
            serde_json::Value::Array(legacy) => legacy
                .iter()
                .filter_map(|entry| {
                    let key = entry.get(0)?.as_str()?;
                    let expiry = entry.get(1)?.as_u64()?;
                    let (key_id, nonce) = key.split_once('\u{1f}')?;
                    Some((Arc::from(key_id), nonce_digest(key_id, nonce), expiry))
                })
                .collect(),
            serde_json::Value::Object(current)
                if current.get("format").and_then(|f| f.as_u64()) == Some(EXPORT_FORMAT) =>
            {
                current
                    .get("entries")
                    .and_then(|e| e.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| {
                        let key_id = entry.get(0)?.as_str()?;
                        let digest = parse_hex_digest(entry.get(1)?.as_str()?)?;
                        let expiry = entry.get(2)?.as_u64()?;
                        Some((Arc::from(key_id), digest, expiry))
                    })
                    .collect()
            }
            _ => {
                tracing::warn!("nonce handover in an unknown format ignored");
                return;
            }
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Every live nonce is kept, beyond the bounds if need be: dropping
        // one would let it be replayed. The bounds apply to new nonces.
        entries.sort_by_key(|&(_, _, expiry)| expiry);
        for (key_id, digest, expiry) in entries {
            if expiry > now && !inner.seen.contains_key(&digest) {
                inner.push(&key_id, digest, expiry);
            }
        }
        self.entries_gauge.set(inner.queued as f64);
    }
}

/// Where a filter records nonces.
#[derive(Clone)]
pub enum NonceStore {
    Memory(Arc<MemoryNonces>),
    Redis(Arc<RedisStore>),
}

/// Redis key prefix. This release keeps, per key id, one sorted set
/// `meshgate:sig-nonce:v2:<key id>` of nonce digests scored by expiry.
/// On Redis Cluster both keys of a check carry the key id's hash tag
/// (`meshgate:sig-nonce:v2:{k<16 hex>}<key id>`), so the script touches one
/// slot; a single server and Sentinel keep the untagged names, which
/// earlier releases share.
pub const REDIS_PREFIX: &str = "meshgate:sig-nonce:";
const REDIS_V2_PREFIX: &str = "meshgate:sig-nonce:v2:";

/// The hash tag of `key_id`'s nonce keys on Redis Cluster: derived from a
/// digest, so key ids with braces or none at all still give one tag.
pub fn cluster_tag(key_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_id.as_bytes());
    format!("{{k{}}}", hex(&digest.as_ref()[..8]))
}

/// The key releases before digests wrote for one nonce (`SET NX EX`).
pub fn legacy_redis_key(key_id: &str, nonce: &str) -> String {
    format!("{REDIS_PREFIX}{key_id}\u{1f}{nonce}")
}

/// The sorted set holding the nonce digests of `key_id`.
pub fn redis_key_set(key_id: &str) -> String {
    format!("{REDIS_V2_PREFIX}{key_id}")
}

/// The two keys of one check: the digest set and the legacy key.
pub fn redis_keys(key_id: &str, nonce: &str, cluster: bool) -> (String, String) {
    if cluster {
        let tag = cluster_tag(key_id);
        (
            format!("{REDIS_V2_PREFIX}{tag}{key_id}"),
            format!("{REDIS_PREFIX}{tag}{key_id}\u{1f}{nonce}"),
        )
    } else {
        (redis_key_set(key_id), legacy_redis_key(key_id, nonce))
    }
}

/// One round trip: refuses a nonce known in either key form, applies the
/// per-key bound, records the digest in the key's sorted set and also
/// writes the legacy key, so that pods of the previous release (which
/// only know that form) refuse it too during a rolling upgrade. The
/// legacy check and write can go in the release after the one that
/// introduced this script, once no older pod runs and `max_age +
/// clock_skew` has passed. Redis' own clock decides expiry, so pods with
/// skewed clocks agree.
///
/// Returns {1, 0} fresh, {0, 0} replayed, {-1, retry_ms} at the bound.
const CHECK_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then return {0, 0} end
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
if seen and tonumber(seen) > now then return {0, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {-1, math.max(tonumber(oldest[2]) - now, 1)}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('SET', KEYS[2], 1, 'PX', ttl)
return {1, 0}
"#;

fn check_script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(CHECK_SCRIPT))
}

impl NonceStore {
    pub async fn check(
        &self,
        key_id: &Arc<str>,
        nonce: &str,
        ttl: Duration,
        max_per_key: usize,
    ) -> NonceCheck {
        match self {
            NonceStore::Memory(m) => m.check_and_insert(key_id, nonce, ttl),
            NonceStore::Redis(store) => {
                check_in_redis(store, key_id, nonce, ttl, max_per_key).await
            }
        }
    }
}

/// The Redis check, then (for a fresh nonce, when configured) `WAIT` until
/// enough replicas have the write: a nonce only the primary holds would be
/// lost, and could be replayed, if that primary failed over now. Fewer
/// replicas within the wait refuse the request as if Redis were down.
async fn check_in_redis(
    store: &RedisStore,
    key_id: &str,
    nonce: &str,
    ttl: Duration,
    max_per_key: usize,
) -> NonceCheck {
    let (set_key, legacy_key) = redis_keys(key_id, nonce, store.is_cluster());
    let digest = hex(&nonce_digest(key_id, nonce));
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1000);
    let wait = store.options().nonce_wait;
    let bound = if wait.replicas > 0 {
        store.timeout() + wait.timeout
    } else {
        store.timeout()
    };
    let result = store
        .run_within(bound, |mut conn| async move {
            let answer = check_script()
                .key(&set_key)
                .key(&legacy_key)
                .arg(&digest)
                .arg(ttl_ms)
                .arg(max_per_key.max(1))
                .invoke_async::<(i64, i64)>(&mut conn)
                .await?;
            let acked = if answer.0 == 1 && wait.replicas > 0 {
                Some(
                    conn.wait_for_replicas(&set_key, wait.replicas, wait.timeout)
                        .await?,
                )
            } else {
                None
            };
            Ok((answer, acked))
        })
        .await;
    match result {
        Ok((_, Some(acked))) if acked < wait.replicas => {
            metrics::counter!("meshgate_signature_nonce_wait_short_total").increment(1);
            tracing::warn!(
                acked,
                wanted = wait.replicas,
                "nonce reached too few replicas within the wait; refused"
            );
            NonceCheck::Unavailable
        }
        Ok(((1, _), _)) => NonceCheck::Fresh,
        Ok(((0, _), _)) => NonceCheck::Replayed,
        Ok(((_, retry_ms), _)) => NonceCheck::KeyLimit {
            retry_after_secs: u64::try_from(retry_ms).unwrap_or(0).div_ceil(1000).max(1),
        },
        Err(e) => {
            tracing::warn!(error = %e, "nonce store unavailable");
            NonceCheck::Unavailable
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nonce_keys_of_one_check_share_a_slot() {
        use redis::cluster_routing::Slot;
        for key_id in ["", "k1", "a}b", "{x}", "{}", "tenant/{a}/key", "\u{1f}"] {
            let (set, legacy) = redis_keys(key_id, "nonce-1", true);
            assert_eq!(Slot::for_key(&set), Slot::for_key(&legacy), "{key_id:?}");
            assert!(set.starts_with("meshgate:sig-nonce:v2:{k"), "{set}");
            // Another nonce of the same key id: same slot, same set.
            let (set2, legacy2) = redis_keys(key_id, "nonce-2", true);
            assert_eq!(set, set2);
            assert_eq!(Slot::for_key(&legacy), Slot::for_key(&legacy2));
        }
        // Key ids spread over slots.
        let slots: std::collections::HashSet<_> = (0..64)
            .map(|i| Slot::for_key(redis_keys(&format!("key-{i}"), "n", true).0))
            .collect();
        assert!(slots.len() > 32, "{}", slots.len());
        // A single server and Sentinel keep the names earlier releases share.
        assert_eq!(
            redis_keys("k1", "n", false),
            (redis_key_set("k1"), legacy_redis_key("k1", "n"))
        );
        assert_eq!(redis_key_set("k1"), "meshgate:sig-nonce:v2:k1");
    }

    fn k(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    fn at(m: &MemoryNonces, key: &str, nonce: &str, ttl: u64, now: u64) -> NonceCheck {
        m.check_digest_at(
            &k(key),
            nonce_digest(key, nonce),
            Duration::from_secs(ttl),
            now,
        )
    }

    #[test]
    fn nonce_once_within_window_then_again_after_expiry() {
        let m = MemoryNonces::new(10, 10);
        assert_eq!(at(&m, "k", "a", 60, 1000), NonceCheck::Fresh);
        assert_eq!(at(&m, "k", "a", 60, 1030), NonceCheck::Replayed);
        assert_eq!(at(&m, "k", "b", 60, 1030), NonceCheck::Fresh);
        // the same nonce of another key is another nonce
        assert_eq!(at(&m, "other", "a", 60, 1030), NonceCheck::Fresh);
        // after the window the nonce is forgotten (the signature is too old anyway)
        assert_eq!(at(&m, "k", "a", 60, 1061), NonceCheck::Fresh);
    }

    #[test]
    fn full_cache_fails_closed_and_evicts_only_expired() {
        let m = MemoryNonces::new(2, 10);
        assert_eq!(at(&m, "k", "a", 60, 1000), NonceCheck::Fresh);
        assert_eq!(at(&m, "j", "b", 60, 1001), NonceCheck::Fresh);
        assert_eq!(at(&m, "i", "c", 60, 1002), NonceCheck::Unavailable);
        // "a" still remembered
        assert_eq!(at(&m, "k", "a", 60, 1003), NonceCheck::Replayed);
        // once "a" expired there is room again, also for another key
        assert_eq!(at(&m, "i", "c", 60, 1060), NonceCheck::Fresh);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn per_key_bound_refuses_without_evicting_live_nonces() {
        let m = MemoryNonces::new(100, 3);
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(at(&m, "k", n, 60, 1000 + i as u64), NonceCheck::Fresh);
        }
        assert_eq!(
            at(&m, "k", "d", 60, 1010),
            NonceCheck::KeyLimit {
                retry_after_secs: 50
            }
        );
        // nothing was evicted: every live nonce is still a replay
        for n in ["a", "b", "c"] {
            assert_eq!(at(&m, "k", n, 60, 1011), NonceCheck::Replayed);
        }
        // other keys are not affected
        assert_eq!(at(&m, "j", "d", 60, 1011), NonceCheck::Fresh);
        // once the oldest expired the key may add one more
        assert_eq!(at(&m, "k", "d", 60, 1060), NonceCheck::Fresh);
        assert_eq!(
            at(&m, "k", "e", 60, 1060),
            NonceCheck::KeyLimit {
                retry_after_secs: 1
            }
        );
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn memory_per_nonce_does_not_depend_on_its_length() {
        let m = MemoryNonces::new(10, 10);
        let long = "n".repeat(15_000);
        let ttl = Duration::from_secs(60);
        assert_eq!(m.check_and_insert(&k("k"), &long, ttl), NonceCheck::Fresh);
        assert_eq!(
            m.check_and_insert(&k("k"), &long, ttl),
            NonceCheck::Replayed
        );
        let exported = m.export().expect("exported").to_string();
        assert!(exported.len() < 200, "only the digest is kept: {exported}");
    }

    #[test]
    fn handover_keeps_live_nonces() {
        let old = MemoryNonces::new(10, 10);
        let key = k("k");
        let ttl = Duration::from_secs(300);
        assert_eq!(old.check_and_insert(&key, "n1", ttl), NonceCheck::Fresh);
        let exported = old.export().expect("live nonces exported");
        assert_eq!(exported["format"], 2);
        let new = MemoryNonces::new(10, 10);
        new.import(exported);
        assert_eq!(new.check_and_insert(&key, "n1", ttl), NonceCheck::Replayed);
        assert_eq!(new.check_and_insert(&key, "n2", ttl), NonceCheck::Fresh);
    }

    #[test]
    fn legacy_raw_nonce_handover_is_imported_digested() {
        // what the previous release exported: raw "<key id>\x1f<nonce>" keys
        let expiry = unix_now() + 300;
        let legacy = serde_json::json!([
            ["app-1\u{1f}n-old", expiry],
            ["app-1\u{1f}n-gone", unix_now() - 1],
            ["app-2\u{1f}with\u{1f}separator", expiry],
            "garbage",
        ]);
        let new = MemoryNonces::new(10, 10);
        new.import(legacy);
        assert_eq!(new.len(), 2, "live entries only");
        let ttl = Duration::from_secs(300);
        assert_eq!(
            new.check_and_insert(&k("app-1"), "n-old", ttl),
            NonceCheck::Replayed
        );
        assert_eq!(
            new.check_and_insert(&k("app-2"), "with\u{1f}separator", ttl),
            NonceCheck::Replayed
        );
        assert_eq!(
            new.check_and_insert(&k("app-1"), "n-gone", ttl),
            NonceCheck::Fresh
        );
        // and the next export carries digests only
        let again = new.export().expect("exported").to_string();
        assert!(!again.contains("n-old"), "{again}");
    }

    #[test]
    fn handover_keeps_nonces_beyond_the_bounds() {
        let old = MemoryNonces::new(100, 100);
        let key = k("k");
        let ttl = Duration::from_secs(300);
        for i in 0..5 {
            assert_eq!(
                old.check_and_insert(&key, &format!("n{i}"), ttl),
                NonceCheck::Fresh
            );
        }
        let new = MemoryNonces::new(2, 2);
        new.import(old.export().expect("exported"));
        for i in 0..5 {
            assert_eq!(
                new.check_and_insert(&key, &format!("n{i}"), ttl),
                NonceCheck::Replayed
            );
        }
        assert!(matches!(
            new.check_and_insert(&key, "n9", ttl),
            NonceCheck::KeyLimit { .. }
        ));
    }

    #[test]
    fn digests_are_hex_roundtrip_and_separate_key_from_nonce() {
        let d = nonce_digest("ab", "c");
        assert_eq!(parse_hex_digest(&hex(&d)), Some(d));
        assert_ne!(nonce_digest("ab", "c"), nonce_digest("a", "bc"));
        assert_eq!(parse_hex_digest("zz"), None);
    }
}
