//! `scope: global`: one limit shared by every sidecar, kept in Redis.
//!
//! Redis stays off the per-request path: a sidecar leases a small batch of
//! quota from Redis (one atomic Lua script call) and spends it locally.
//! Redis never hands out more than the limit per window, so the sidecars
//! together never admit more than the limit; what they can lose is quota
//! leased but not spent before the window ends. Lease sizes adapt to keep
//! that loss small:
//!
//! - at most `remaining_global / (2 * live_sidecars)`, so as the window's
//!   quota runs out leases shrink geometrically down to one unit;
//! - at most what this sidecar's observed request rate will spend before the
//!   lease expires (a quiet sidecar does not sit on quota).
//!
//! Once Redis reports the quota exhausted, the sidecar rejects locally until
//! the window resets, without asking again. The Redis clock (`TIME`) decides
//! windows, so sidecars with skewed clocks still share one window.
//!
//! When Redis fails or is slow (every call is bounded by the store timeout),
//! the rule follows `on_store_error` for a short back-off period before
//! probing Redis again: `fail_open` admits, `fail_closed` answers 503, and
//! `local_fallback` enforces `limit / peers` locally, where `peers` is
//! `fallback_peers` or the number of live sidecars learned from heartbeats
//! (a sorted set of sidecar ids scored by time) while Redis was up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use super::keymap::{KeyMap, LastSeen, Tracked};
use super::local::{self, Cell, Outcome};
use super::spec::{AlgorithmName, Params, RuleConfig, StoreErrorMode};
use crate::state::Handover;
use crate::store::RedisStore;

/// After a failed store call, skip Redis for this long before probing again.
const STORE_BACKOFF_NS: u64 = 1_000_000_000;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A sidecar whose heartbeat is older than this no longer counts as live.
const HEARTBEAT_STALE_MS: u64 = 5_000;

/// Fixed or sliding window: lease `want` units of this window's quota.
/// Returns {granted, remaining after, lease ttl ms, retry ms}.
static WINDOW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local sliding = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local w = math.floor(now / window)
local cur = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local cw = tonumber(cur[1])
local c, p = 0, 0
if cw == w then
  c = tonumber(cur[2]) or 0
  p = tonumber(cur[3]) or 0
elseif cw == w - 1 then
  p = tonumber(cur[2]) or 0
end
if not sliding then p = 0 end
local elapsed = now - w * window
local used = c + math.floor(p * (window - elapsed) / window)
local take = math.max(0, math.min(want, limit - used))
c = c + take
redis.call('HSET', KEYS[1], 'w', string.format('%.0f', w), 'c', string.format('%.0f', c), 'p', string.format('%.0f', p))
redis.call('PEXPIRE', KEYS[1], window * 2)
local reset = (w + 1) * window - now
local retry = reset
if take == 0 and sliding and p > 0 and c < limit then
  retry = math.max(1, math.ceil(window * (1 - (limit - c - 1) / p)) - elapsed)
end
return {take, math.max(0, limit - used - take), math.floor(reset), math.ceil(retry)}
"#,
    )
});

/// Token bucket (GCRA in microseconds): lease `want` tokens.
static BUCKET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local tau = interval * burst
local avail = math.floor((now + tau - tat) / interval)
local take = math.max(0, math.min(want, avail))
tat = tat + take * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
local retry = math.max(1, math.ceil((tat + interval - tau - now) / 1000))
return {take, math.max(0, avail - take), 1000, retry}
"#,
    )
});

/// The Redis key of one rule's counter for one client key. The whole name
/// is the hash tag: each script touches this one key (declared), so on
/// Redis Cluster it runs in that key's slot and keys spread over slots. A
/// client key holding `}` shortens the tag, which changes nothing: the
/// script still touches one key.
fn lease_key(prefix: &str, key: &str) -> String {
    format!("{{{prefix}/{key}}}")
}

/// The number of live sidecars sharing this filter instance's global rules,
/// learned from heartbeats in Redis.
pub struct Peers {
    id: String,
    zset_key: String,
    live: AtomicU64,
    store: Mutex<Option<Arc<RedisStore>>>,
    started: AtomicBool,
}

impl Handover for Peers {}

impl Peers {
    pub fn new(instance: &str) -> Self {
        let nanos = super::now_ns();
        Peers {
            id: format!("{}-{}", std::process::id(), nanos),
            zset_key: format!("meshgate:rl:{{{instance}}}:sidecars"),
            live: AtomicU64::new(0),
            store: Mutex::new(None),
            started: AtomicBool::new(false),
        }
    }

    pub fn set_store(&self, store: Option<Arc<RedisStore>>) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = store;
    }

    fn store(&self) -> Option<Arc<RedisStore>> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Live sidecars last seen in Redis (0 when never learned).
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Starts the heartbeat task once, from inside the runtime.
    fn ensure_started(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Peers> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(peers) = weak.upgrade() else { return };
                peers.beat().await;
                drop(peers);
                tokio::time::sleep(HEARTBEAT_EVERY).await;
            }
        });
    }

    async fn beat(&self) {
        let Some(store) = self.store() else { return };
        let now_ms = super::now_ns() / 1_000_000;
        let key = self.zset_key.clone();
        let id = self.id.clone();
        let result = store
            .run(|mut conn| async move {
                let (_, _, live, _): (i64, i64, u64, i64) = redis::pipe()
                    .zadd(&key, &id, now_ms)
                    .zrembyscore(&key, "-inf", now_ms.saturating_sub(HEARTBEAT_STALE_MS))
                    .zcard(&key)
                    .pexpire(&key, (HEARTBEAT_STALE_MS * 2) as i64)
                    .query_async(&mut conn)
                    .await?;
                Ok(live)
            })
            .await;
        if let Ok(live) = result {
            self.live.store(live, Ordering::Relaxed);
        }
    }
}

/// One key's leased quota.
#[derive(Default)]
pub struct LeaseCell {
    lease: Mutex<Lease>,
    /// Serializes refills of this key, so a burst of requests on an empty
    /// lease makes one Redis call, not one each. Only taken when the lease is
    /// empty.
    refill: tokio::sync::Mutex<()>,
    seen: LastSeen,
}

impl Tracked for LeaseCell {
    fn last_seen(&self) -> u64 {
        self.seen.get()
    }
}

#[derive(Default)]
struct Lease {
    tokens: u64,
    valid_until_ns: u64,
    /// Redis said the quota is gone; reject locally until then.
    exhausted_until_ns: u64,
    /// The global quota left after the last lease (as Redis reported it).
    global_remaining: Option<u64>,
    /// Units spent since the last refill, and when that was: the local rate.
    spent: u64,
    last_refill_ns: u64,
    rate_per_s: Option<f64>,
}

impl LeaseCell {
    fn try_spend(&self, now_ns: u64) -> Option<Outcome> {
        let mut l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if l.tokens > 0 && now_ns < l.valid_until_ns {
            l.tokens -= 1;
            l.spent += 1;
            return Some(Outcome::Admit {
                remaining: l.tokens + l.global_remaining.unwrap_or(0),
                reset_ns: l.valid_until_ns - now_ns,
            });
        }
        if now_ns < l.exhausted_until_ns {
            return Some(Outcome::Reject {
                retry_ns: l.exhausted_until_ns - now_ns,
                reset_ns: l.exhausted_until_ns - now_ns,
            });
        }
        None
    }

    /// Returns a unit taken by [`LeaseCell::try_spend`] (a later rule rejected).
    pub fn refund(&self, now_ns: u64) {
        let mut l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if now_ns < l.valid_until_ns {
            l.tokens += 1;
            l.spent = l.spent.saturating_sub(1);
        }
    }

    /// How much to ask Redis for.
    fn lease_size(&self, params: Params, live: u64, now_ns: u64) -> u64 {
        let l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let (quota, lifetime_ns) = match params {
            Params::Window { limit, window_ns } => (limit, window_ns),
            Params::Bucket { burst, .. } => (burst, 1_000_000_000),
            Params::Concurrency { max } => (max, 1_000_000_000),
        };
        let live = live.max(1);
        // Never more than half of an even share of what is left.
        // What Redis said is left, unless that was about an earlier window.
        let expired = now_ns >= l.valid_until_ns && now_ns >= l.exhausted_until_ns;
        let share_cap = match l.global_remaining.filter(|_| !expired) {
            Some(rem) => rem / (2 * live),
            None => quota / (4 * live),
        };
        // Never more than this sidecar will spend before the lease expires.
        let rate_cap = match l.rate_per_s {
            Some(rate) => {
                let left_s = match params {
                    Params::Window { window_ns, .. } => {
                        (window_ns - now_ns % window_ns.max(1)) as f64 / 1e9
                    }
                    _ => lifetime_ns as f64 / 1e9,
                };
                (rate * left_s * 1.5).ceil() as u64
            }
            None => u64::MAX,
        };
        share_cap.min(rate_cap).max(1)
    }

    /// Takes a fresh lease from Redis' answer and spends one unit of it.
    fn fill(&self, grant: Grant, now_ns: u64) -> Outcome {
        let mut l = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if l.last_refill_ns > 0 && now_ns > l.last_refill_ns {
            let elapsed_s = (now_ns - l.last_refill_ns) as f64 / 1e9;
            let sample = (l.spent + 1) as f64 / elapsed_s.max(1e-3);
            l.rate_per_s = Some(match l.rate_per_s {
                Some(r) => 0.5 * r + 0.5 * sample,
                None => sample,
            });
        }
        l.last_refill_ns = now_ns;
        l.spent = 0;
        l.global_remaining = Some(grant.remaining);
        let ttl_ns = grant.ttl_ms.saturating_mul(1_000_000);
        if grant.granted == 0 {
            l.tokens = 0;
            let retry_ns = grant.retry_ms.max(1).saturating_mul(1_000_000);
            l.exhausted_until_ns = now_ns + retry_ns;
            return Outcome::Reject {
                retry_ns,
                reset_ns: retry_ns.max(ttl_ns),
            };
        }
        l.tokens = grant.granted - 1;
        l.spent = 1;
        l.valid_until_ns = now_ns + ttl_ns;
        l.exhausted_until_ns = 0;
        Outcome::Admit {
            remaining: l.tokens + grant.remaining,
            reset_ns: ttl_ns,
        }
    }
}

struct Grant {
    granted: u64,
    remaining: u64,
    ttl_ms: u64,
    retry_ms: u64,
}

/// The outcome of a global check.
pub enum GlobalOutcome {
    /// Decided from a lease, Redis, or the local fallback.
    Decided(Outcome, Option<Arc<LeaseCell>>),
    /// Redis failed and the rule says `fail_closed`.
    StoreUnavailable,
}

/// The long-lived state of one global rule.
pub struct GlobalRule {
    key_prefix: String,
    leases: KeyMap<LeaseCell>,
    fallback: KeyMap<Cell>,
    down_until_ns: AtomicU64,
    peers: Arc<Peers>,
}

impl GlobalRule {
    pub fn new(instance: &str, rule: &RuleConfig, peers: Arc<Peers>) -> Self {
        let idle = local::idle_secs(rule.params, true);
        GlobalRule {
            key_prefix: format!(
                "meshgate:rl:{instance}/{}/{}",
                rule.name,
                rule.algorithm.as_str()
            ),
            leases: KeyMap::new(rule.max_keys, idle),
            fallback: KeyMap::new(rule.max_keys, idle),
            down_until_ns: AtomicU64::new(0),
            peers,
        }
    }

    pub fn set_bounds(&self, rule: &RuleConfig) {
        let idle = local::idle_secs(rule.params, true);
        self.leases.set_bounds(rule.max_keys, idle);
        self.fallback.set_bounds(rule.max_keys, idle);
    }

    /// Whether the rule is currently deciding without Redis.
    pub fn store_down(&self, now_ns: u64) -> bool {
        now_ns < self.down_until_ns.load(Ordering::Relaxed)
    }

    pub async fn acquire(
        &self,
        rule: &RuleConfig,
        m: &super::RuleMetrics,
        store: Option<&RedisStore>,
        key: &str,
        params: Params,
        now_ns: u64,
    ) -> GlobalOutcome {
        let now_s = now_ns / 1_000_000_000;
        let cell = self.leases.get_or_insert(key, now_s, LeaseCell::default);
        cell.seen.touch(now_s);
        if let Some(o) = cell.try_spend(now_ns) {
            return GlobalOutcome::Decided(o, Some(cell));
        }
        let Some(store) = store else {
            return self.on_store_error(rule, key, params, now_ns);
        };
        self.peers.ensure_started();
        if self.store_down(now_ns) {
            return self.on_store_error(rule, key, params, now_ns);
        }
        let held = cell.clone();
        let _refilling = held.refill.lock().await;
        let now_ns = super::now_ns();
        if let Some(o) = cell.try_spend(now_ns) {
            return GlobalOutcome::Decided(o, Some(cell));
        }
        if self.store_down(now_ns) {
            return self.on_store_error(rule, key, params, now_ns);
        }
        let live = match rule.fallback_peers {
            Some(n) if self.peers.live() == 0 => u64::from(n),
            _ => self.peers.live(),
        };
        let want = cell.lease_size(params, live, now_ns);
        m.lease_size.set(want as f64);
        match self.lease(store, rule, key, params, want).await {
            Ok(grant) => {
                if self.down_until_ns.swap(0, Ordering::Relaxed) != 0 {
                    tracing::info!(rule = %rule.name, "rate-limit store reachable again");
                }
                let o = cell.fill(grant, now_ns);
                GlobalOutcome::Decided(o, Some(cell))
            }
            Err(e) => {
                let was = self
                    .down_until_ns
                    .swap(super::now_ns() + STORE_BACKOFF_NS, Ordering::Relaxed);
                if was == 0 {
                    m.fallback.increment(1);
                    tracing::warn!(rule = %rule.name, error = %e,
                        mode = ?rule.on_store_error, "rate-limit store failed");
                }
                self.on_store_error(rule, key, params, now_ns)
            }
        }
    }

    fn on_store_error(
        &self,
        rule: &RuleConfig,
        key: &str,
        params: Params,
        now_ns: u64,
    ) -> GlobalOutcome {
        match rule.on_store_error {
            StoreErrorMode::FailOpen => GlobalOutcome::Decided(
                Outcome::Admit {
                    remaining: 0,
                    reset_ns: 0,
                },
                None,
            ),
            StoreErrorMode::FailClosed => GlobalOutcome::StoreUnavailable,
            StoreErrorMode::LocalFallback => {
                let peers = match (rule.fallback_peers, self.peers.live()) {
                    (Some(n), _) => u64::from(n),
                    (None, live) => live.max(1),
                };
                let shared = params.divided(peers);
                let now_s = now_ns / 1_000_000_000;
                let cell = self.fallback.get_or_insert(key, now_s, Cell::default);
                cell.seen.touch(now_s);
                let o = match (rule.algorithm, shared) {
                    (AlgorithmName::SlidingWindow, Params::Window { limit, window_ns }) => {
                        local::sliding_acquire(&cell, limit, window_ns, now_ns)
                    }
                    _ => local::acquire(&cell, shared, now_ns),
                };
                GlobalOutcome::Decided(o, None)
            }
        }
    }

    async fn lease(
        &self,
        store: &RedisStore,
        rule: &RuleConfig,
        key: &str,
        params: Params,
        want: u64,
    ) -> Result<Grant, crate::store::StoreError> {
        let redis_key = lease_key(&self.key_prefix, key);
        let inv = match (rule.algorithm, params) {
            (_, Params::Window { limit, window_ns }) => {
                let mut inv = WINDOW_SCRIPT.prepare_invoke();
                inv.key(redis_key)
                    .arg(limit)
                    .arg((window_ns / 1_000_000).max(1))
                    .arg(want)
                    .arg(if rule.algorithm == AlgorithmName::SlidingWindow {
                        "1"
                    } else {
                        "0"
                    });
                inv
            }
            (
                _,
                Params::Bucket {
                    interval_ns, burst, ..
                },
            ) => {
                let mut inv = BUCKET_SCRIPT.prepare_invoke();
                inv.key(redis_key)
                    .arg(interval_ns as f64 / 1000.0)
                    .arg(burst)
                    .arg(want);
                inv
            }
            (_, Params::Concurrency { .. }) => {
                // Rejected by validation; decide locally if it ever happens.
                return Err(crate::store::StoreError::Unavailable(
                    "concurrency rules are local".into(),
                ));
            }
        };
        let (granted, remaining, ttl_ms, retry_ms): (i64, i64, i64, i64) = store
            .run(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(Grant {
            granted: granted.max(0) as u64,
            remaining: remaining.max(0) as u64,
            ttl_ms: ttl_ms.max(0) as u64,
            retry_ms: retry_ms.max(1) as u64,
        })
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn every_script_call_declares_its_one_key_and_keys_spread_over_slots() {
        let prefix = "meshgate:rl:api/per-client/fixed_window";
        assert_eq!(
            lease_key(prefix, "10.0.0.1"),
            "{meshgate:rl:api/per-client/fixed_window/10.0.0.1}"
        );
        // A client key with braces still yields a non-empty tag of this rule.
        let odd = lease_key(prefix, "}{");
        assert_eq!(
            Slot::for_key(&odd),
            Slot::for_key("{meshgate:rl:api/per-client/fixed_window/}")
        );
        let slots: std::collections::HashSet<_> = (0..64)
            .map(|i| Slot::for_key(lease_key(prefix, &format!("client-{i}"))))
            .collect();
        assert!(
            slots.len() > 32,
            "client keys share too few slots: {}",
            slots.len()
        );
        let peers = Peers::new("api");
        assert_eq!(peers.zset_key, "meshgate:rl:{api}:sidecars");
    }
}
