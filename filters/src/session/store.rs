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

use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::context::RequestCtx;
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
    /// The record of an ended session, stamped `iat` (unix seconds).
    pub fn tombstone(iat: u64) -> Self {
        SessionRecord {
            sub: String::new(),
            claims: Map::new(),
            iat,
            exp: 0,
            revoked: true,
        }
    }
}

/// The time of the request a store call serves, taken from its
/// [`RequestCtx`]: the store reads no clock on the request path.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall clock, unix seconds (issuance, absolute expiry).
    pub unix: u64,
    /// Monotonic clock (idle expiry, cache age).
    pub instant: Instant,
}

impl Now {
    pub fn of(cx: &RequestCtx) -> Self {
        Now {
            unix: unix_secs(cx.now),
            instant: cx.instant,
        }
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The wall clock in unix seconds, for work that serves no request
/// (handover).
pub fn unix_now() -> u64 {
    unix_secs(SystemTime::now())
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

/// The key prefix used in Redis. On Redis Cluster it starts with a hash
/// tag derived from the configured prefix (`{s<16 hex>}meshgate:session:`),
/// so that every key of the store is in one slot: the scripts keep a
/// session and its subject's index together, and a lookup knows only the
/// session id. A single server and Sentinel use the prefix as configured.
pub fn redis_prefix(store: &RedisStore, prefix: &str) -> String {
    if store.is_cluster() {
        cluster_prefix(prefix)
    } else {
        prefix.to_string()
    }
}

fn cluster_prefix(prefix: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, prefix.as_bytes());
    let mut tag = String::with_capacity(prefix.len() + 20);
    tag.push_str("{s");
    for b in &digest.as_ref()[..8] {
        tag.push_str(&format!("{b:02x}"));
    }
    tag.push('}');
    tag.push_str(prefix);
    tag
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

    /// Looks `id` up and slides its idle expiry (from `now`).
    pub async fn get(&self, id: &str, idle: Duration, now: Now) -> Result<Lookup, StoreFailure> {
        match self {
            Backend::Memory(m) => Ok(m.get(id, idle, now)),
            Backend::Redis { store, prefix } => {
                let store = store.as_ref().ok_or_else(no_redis)?;
                let prefix = redis_prefix(store, prefix);
                let key = store_key(&prefix, id);
                // Reads, slides the idle expiry and marks the session used
                // in its subject's index, in one round trip.
                let raw: Option<String> = store
                    .run(|mut conn| async move {
                        scripts()
                            .get
                            .key(&key)
                            .arg(millis(idle))
                            .arg(&prefix)
                            .invoke_async(&mut conn)
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

    /// Stores a new session `record` under `id`, expiring after `ttl`
    /// without use. A subject at `max_per_subject` live sessions loses its
    /// least recently used one (revoked, kept as a tombstone for
    /// `tombstone_ttl`).
    pub async fn create(
        &self,
        id: &str,
        record: &SessionRecord,
        ttl: Duration,
        max_per_subject: usize,
        tombstone_ttl: Duration,
        now: Now,
    ) -> Result<(), StoreFailure> {
        match self {
            Backend::Memory(m) => {
                m.put(id, record.clone(), ttl, max_per_subject, now);
                Ok(())
            }
            Backend::Redis { store, prefix } => {
                let store = store.as_ref().ok_or_else(no_redis)?;
                let prefix = redis_prefix(store, prefix);
                let key = store_key(&prefix, id);
                let value = serde_json::to_string(record)
                    .map_err(|e| StoreFailure(format!("encoding the session: {e}")))?;
                let tombstone = serde_json::to_string(&SessionRecord::tombstone(now.unix))
                    .map_err(|e| StoreFailure(format!("encoding a tombstone: {e}")))?;
                let sub = record.sub.clone();
                let revoked: u64 = store
                    .run(|mut conn| async move {
                        scripts()
                            .create
                            .key(&key)
                            .arg(value)
                            .arg(millis(ttl))
                            .arg(&sub)
                            .arg(&prefix)
                            .arg(max_per_subject.max(1))
                            .arg(tombstone)
                            .arg(millis(tombstone_ttl))
                            .invoke_async(&mut conn)
                            .await
                    })
                    .await
                    .map_err(|e| StoreFailure(e.to_string()))?;
                count_evictions(0, revoked);
                Ok(())
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
    pub async fn revoke(&self, id: &str, ttl: Duration, now: Now) -> Result<(), StoreFailure> {
        match self {
            Backend::Memory(m) => {
                m.put(id, SessionRecord::tombstone(now.unix), ttl, usize::MAX, now);
                Ok(())
            }
            Backend::Redis { store, prefix } => {
                let store = store.as_ref().ok_or_else(no_redis)?;
                let prefix = redis_prefix(store, prefix);
                let key = store_key(&prefix, id);
                let tombstone = serde_json::to_string(&SessionRecord::tombstone(now.unix))
                    .map_err(|e| StoreFailure(format!("encoding a tombstone: {e}")))?;
                store
                    .run(|mut conn| async move {
                        scripts()
                            .revoke
                            .key(&key)
                            .arg(tombstone)
                            .arg(millis(ttl))
                            .arg(&prefix)
                            .invoke_async::<()>(&mut conn)
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
                f.put(id, SessionRecord::tombstone(now.unix));
                Ok(())
            }
        }
    }
}

/// The Redis side of the per-subject cap. Each subject has a sorted set
/// `<prefix>subject:<sha1 of the subject>` of its session keys scored by
/// last use (Redis' clock, milliseconds); it expires no sooner than the
/// longest idle expiry of its sessions, and every script keeps it so. The
/// scripts name the subject set themselves (it is derived from the record):
/// a single server allows it, and on Redis Cluster every key of the store
/// shares one hash tag ([`redis_prefix`]), so the keys a script touches are
/// all in the slot of the key it declares.
struct Scripts {
    get: redis::Script,
    create: redis::Script,
    revoke: redis::Script,
}

const LUA_NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function subject_set(prefix, raw)
  if not raw then return nil end
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and type(rec.sub) == 'string' and rec.sub ~= ''
     and rec.revoked ~= true then
    return prefix .. 'subject:' .. redis.sha1hex(rec.sub)
  end
  return nil
end
local function keep_for(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"#;

/// KEYS[1] session key; ARGV: idle ms, prefix. Returns the record or nil.
const GET_SCRIPT: &str = r#"
local raw = redis.call('GETEX', KEYS[1], 'PX', ARGV[1])
local set = subject_set(ARGV[2], raw)
if set then
  redis.call('ZADD', set, now_ms(), KEYS[1])
  keep_for(set, tonumber(ARGV[1]))
end
return raw
"#;

/// KEYS[1] session key; ARGV: record, ttl ms, subject, prefix, max per
/// subject, tombstone, tombstone ttl ms. Returns how many sessions of the
/// subject were revoked to stay within the cap.
const CREATE_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] == '' then return 0 end
local set = ARGV[4] .. 'subject:' .. redis.sha1hex(ARGV[3])
for _, member in ipairs(redis.call('ZRANGE', set, 0, -1)) do
  if member == KEYS[1] or subject_set(ARGV[4], redis.call('GET', member)) ~= set then
    redis.call('ZREM', set, member)
  end
end
local revoked = 0
while redis.call('ZCARD', set) >= tonumber(ARGV[5]) do
  local oldest = redis.call('ZPOPMIN', set)
  redis.call('SET', oldest[1], ARGV[6], 'PX', ARGV[7])
  revoked = revoked + 1
end
redis.call('ZADD', set, now_ms(), KEYS[1])
keep_for(set, tonumber(ARGV[2]))
return revoked
"#;

/// KEYS[1] session key; ARGV: tombstone, ttl ms, prefix.
const REVOKE_SCRIPT: &str = r#"
local set = subject_set(ARGV[3], redis.call('GET', KEYS[1]))
if set then redis.call('ZREM', set, KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

fn scripts() -> &'static Scripts {
    static SCRIPTS: std::sync::OnceLock<Scripts> = std::sync::OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        get: redis::Script::new(&format!("{LUA_NOW}{GET_SCRIPT}")),
        create: redis::Script::new(&format!("{LUA_NOW}{CREATE_SCRIPT}")),
        revoke: redis::Script::new(&format!("{LUA_NOW}{REVOKE_SCRIPT}")),
    })
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

    /// The subject this entry counts against, if it is a live session.
    fn subject(&self) -> Option<&str> {
        (!self.record.revoked && !self.record.sub.is_empty()).then_some(self.record.sub.as_str())
    }
}

struct Sessions {
    /// Every session and tombstone, least recently used first out. The
    /// bound is applied by `make_room` (it changes with reloads).
    entries: LruCache<String, MemEntry>,
    /// Live session ids of each subject, for the per-subject cap.
    by_subject: HashMap<String, Vec<String>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            entries: LruCache::unbounded(),
            by_subject: HashMap::new(),
        }
    }
}

impl Sessions {
    fn entries(&mut self) -> &mut LruCache<String, MemEntry> {
        &mut self.entries
    }

    fn unlink(&mut self, id: &str, entry: &MemEntry) {
        let Some(sub) = entry.subject() else {
            return;
        };
        if let Some(ids) = self.by_subject.get_mut(sub) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_subject.remove(sub);
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some(entry) = self.entries().pop(id) {
            self.unlink(id, &entry);
        }
    }

    /// Inserts or replaces `id`: a session as the most recently used
    /// entry, a tombstone as the least recently used one (dropping a
    /// tombstone first is harmless: its id stays refused, as unknown).
    fn insert(&mut self, id: String, entry: MemEntry) {
        self.remove(&id);
        let tombstone = entry.record.revoked;
        if let Some(sub) = entry.subject() {
            self.by_subject
                .entry(sub.to_string())
                .or_default()
                .push(id.clone());
        }
        if tombstone {
            self.entries.push(id.clone(), entry);
            self.entries.demote(&id);
        } else {
            self.entries.push(id, entry);
        }
    }

    /// Drops least recently used entries until there is room for one more
    /// (`now`: the time of the request that needs the room).
    fn make_room(&mut self, max: usize, now: Instant) -> u64 {
        let mut evicted = 0;
        while max > 0 && self.entries().len() >= max {
            let Some((id, entry)) = self.entries().pop_lru() else {
                break;
            };
            self.unlink(&id, &entry);
            if !entry.expired(now) {
                evicted += 1;
            }
        }
        evicted
    }

    /// Revokes the least recently used live sessions of `sub` until it has
    /// room for one more (tombstones stamped `now`, unix seconds).
    fn cap_subject(&mut self, sub: &str, max: usize, now: u64) -> u64 {
        let mut revoked = 0;
        loop {
            let Some(ids) = self.by_subject.get(sub) else {
                return revoked;
            };
            if ids.len() < max.max(1) {
                return revoked;
            }
            let oldest = ids
                .iter()
                .min_by_key(|id| self.entries.peek(id.as_str()).map(|e| e.last_seen))
                .cloned();
            let Some(oldest) = oldest else {
                return revoked;
            };
            // A tombstone, so that the revoked id answers session_revoked,
            // kept as long as the session would have lived without use.
            let tombstone = self.entries().peek(&oldest).map(|e| MemEntry {
                record: SessionRecord::tombstone(now),
                idle: e.idle,
                last_seen: e.last_seen,
            });
            match tombstone {
                Some(t) => {
                    self.insert(oldest, t);
                    revoked += 1;
                }
                None => {
                    // index out of step with the entries: drop the id
                    if let Some(ids) = self.by_subject.get_mut(sub) {
                        ids.retain(|i| *i != oldest);
                    }
                }
            }
        }
    }
}

/// The embedded store (`store: memory`): sessions of this process only.
/// Bounded by `cache_max_entries`: when full, the least recently used
/// session (or tombstone) makes room, so a store full of live sessions never
/// refuses a login.
#[derive(Default)]
pub struct MemoryStore {
    sessions: Mutex<Sessions>,
    max_entries: std::sync::atomic::AtomicUsize,
}

impl MemoryStore {
    pub fn set_max_entries(&self, max: usize) {
        self.max_entries
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stored sessions and tombstones.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().entries().len()
    }

    fn get(&self, id: &str, idle: Duration, now: Now) -> Lookup {
        let now = now.instant;
        let mut sessions = self.lock();
        match sessions.entries().get_mut(id) {
            None => return Lookup::Missing,
            Some(e) if !e.expired(now) => {
                // concurrent requests may come in out of their arrival order
                e.last_seen = e.last_seen.max(now);
                if !e.record.revoked {
                    e.idle = idle;
                }
                return Lookup::from_record(e.record.clone());
            }
            Some(_) => {}
        }
        sessions.remove(id);
        Lookup::Missing
    }

    fn put(
        &self,
        id: &str,
        record: SessionRecord,
        ttl: Duration,
        max_per_subject: usize,
        now: Now,
    ) {
        let max = self.max_entries.load(std::sync::atomic::Ordering::Relaxed);
        let mut sessions = self.lock();
        sessions.remove(id);
        let mut revoked = 0;
        if !record.revoked && !record.sub.is_empty() {
            revoked = sessions.cap_subject(&record.sub, max_per_subject, now.unix);
        }
        let evicted = sessions.make_room(max, now.instant);
        sessions.insert(
            id.to_string(),
            MemEntry {
                record,
                idle: ttl,
                last_seen: now.instant,
            },
        );
        drop(sessions);
        count_evictions(evicted, revoked);
    }
}

fn count_evictions(evicted: u64, revoked: u64) {
    if evicted > 0 {
        metrics::counter!("meshgate_sessions_evicted_total", "reason" => "store_full")
            .increment(evicted);
    }
    if revoked > 0 {
        metrics::counter!("meshgate_sessions_evicted_total", "reason" => "subject_limit")
            .increment(revoked);
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
        let mut sessions = self.lock();
        // least recently used first, so the importer rebuilds the same order
        let list: Vec<ExportedSession> = sessions
            .entries()
            .iter()
            .rev()
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
        let mut sessions = self.lock();
        for s in list {
            sessions.insert(
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

#[cfg(test)]
mod layout_tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn cluster_keys_of_a_store_share_one_slot() {
        for prefix in ["meshgate:session:", "", "a{b", "x{}y", "}{", "tenant:{t1}:"] {
            let p = cluster_prefix(prefix);
            assert!(p.starts_with("{s") && p.ends_with(prefix), "{p}");
            let session = store_key(&p, "some-session-id");
            let other = store_key(&p, "another-id");
            // What the scripts derive: `prefix .. 'subject:' .. sha1(sub)`.
            let subject_set = format!("{p}subject:0123456789abcdef0123456789abcdef01234567");
            let slot = Slot::for_key(&session);
            assert_eq!(slot, Slot::for_key(&other), "{prefix:?}");
            assert_eq!(slot, Slot::for_key(&subject_set), "{prefix:?}");
        }
        // Two filters with their own prefixes need not share a slot.
        assert_ne!(
            Slot::for_key(cluster_prefix("app-a:")),
            Slot::for_key(cluster_prefix("app-b:"))
        );
    }
}
