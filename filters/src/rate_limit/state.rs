//! The long-lived state of one rule, kept in [`crate::State`] under
//! `<instance>/<rule>` so reloads that keep the rule keep its counts, and
//! handed over to a new process at upgrade.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::global::{GlobalRule, Peers};
use super::keymap::{KeyMap, LastSeen};
use super::local::{self, Cell};
use super::spec::{AlgorithmName, RuleConfig, Scope};
use super::Backend;
use crate::state::Handover;

#[derive(Default)]
pub struct RuleState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bound: Option<(AlgorithmName, Scope, Backend)>,
    /// An export from the previous process, applied when the rule is bound
    /// with the same algorithm.
    pending: Option<Export>,
}

/// Handover shape: local counters by key. Values are wall-clock based (see
/// `local`), so they mean the same in the new process.
#[derive(Serialize, Deserialize)]
struct Export {
    algorithm: AlgorithmName,
    entries: Vec<(String, u64, u64)>,
}

impl RuleState {
    /// The backend for `rule`: the existing one when the algorithm and scope
    /// are unchanged (counts kept; new limits apply from the next request),
    /// a fresh one otherwise.
    pub(super) fn bind(
        &self,
        instance: &str,
        rule: &RuleConfig,
        peers: Option<&Arc<Peers>>,
    ) -> Backend {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let sliding = rule.algorithm == AlgorithmName::SlidingWindow;
        let idle = local::idle_secs(rule.params, sliding);
        if let Some((alg, scope, backend)) = &inner.bound {
            if *alg == rule.algorithm && *scope == rule.scope {
                match backend {
                    Backend::Local(map) => map.set_bounds(rule.max_keys, idle),
                    Backend::Global(g) => g.set_bounds(rule),
                }
                return backend.clone();
            }
        }
        let backend = match (rule.scope, peers) {
            (Scope::Global, Some(peers)) => {
                Backend::Global(Arc::new(GlobalRule::new(instance, rule, peers.clone())))
            }
            _ => {
                let map = Arc::new(KeyMap::new(rule.max_keys, idle));
                if let Some(export) = inner.pending.take() {
                    if export.algorithm == rule.algorithm {
                        load(&map, export);
                    }
                }
                Backend::Local(map)
            }
        };
        inner.bound = Some((rule.algorithm, rule.scope, backend.clone()));
        backend
    }
}

fn load(map: &KeyMap<Cell>, export: Export) {
    let now_s = super::now_ns() / 1_000_000_000;
    for (key, a, b) in export.entries {
        let seen = LastSeen::default();
        seen.touch(now_s);
        map.insert(
            &key,
            Cell {
                a: AtomicU64::new(a),
                b: AtomicU64::new(b),
                seen,
            },
            now_s,
        );
    }
}

impl Handover for RuleState {
    fn export(&self) -> Option<serde_json::Value> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (alg, _, Backend::Local(map)) = inner.bound.as_ref()? else {
            return None;
        };
        // In-flight counts belong to requests the old process still serves.
        if *alg == AlgorithmName::Concurrency {
            return None;
        }
        let mut entries = Vec::new();
        map.for_each(|k, c| {
            entries.push((
                k.to_string(),
                c.a.load(Ordering::Acquire),
                c.b.load(Ordering::Acquire),
            ))
        });
        serde_json::to_value(Export {
            algorithm: *alg,
            entries,
        })
        .ok()
    }

    fn import(&self, value: serde_json::Value) {
        let Ok(export) = serde_json::from_value::<Export>(value) else {
            return;
        };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &inner.bound {
            Some((alg, _, Backend::Local(map))) => {
                if *alg == export.algorithm {
                    load(map, export);
                }
            }
            Some(_) => {}
            None => inner.pending = Some(export),
        }
    }
}
