//! Long-lived filter state that outlives config snapshots.
//!
//! Filters are rebuilt on every config reload, but their counters, caches and
//! store connections must not be: a reload that keeps a rate-limit rule keeps
//! counting, and a reload must not reopen a replay window. Filters fetch their
//! state here by a key derived from their instance name, so the same instance
//! name gets the same state object across reloads. State of an instance (or
//! rule) that the new config no longer has is dropped once it serves (see
//! [`State::begin_build`]), so a renamed rule starts afresh and its old key
//! map does not linger.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// State that can be carried to a new process at upgrade time.
pub trait Handover: Any + Send + Sync {
    /// A serializable copy of the state, or `None` when there is nothing worth
    /// handing over.
    fn export(&self) -> Option<serde_json::Value> {
        None
    }
    /// Loads what [`Handover::export`] produced in the old process.
    fn import(&self, _value: serde_json::Value) {}
}

type Slot = Arc<dyn Any + Send + Sync>;
type Slots = HashMap<String, (Slot, Arc<dyn Handover>)>;

/// Registry of long-lived state objects, keyed by string.
#[derive(Default)]
pub struct State {
    slots: Mutex<Slots>,
    /// Exports from the previous process waiting for their slot to be created.
    pending_imports: Mutex<HashMap<String, serde_json::Value>>,
    /// Keys asked for since [`State::begin_build`].
    used: Mutex<Option<HashSet<String>>>,
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the state object under `key`, creating it with `init` the first
    /// time. A key reused with another type is replaced (the filter's type
    /// changed, so its old state is meaningless).
    pub fn get_or_insert<T: Handover>(&self, key: &str, init: impl FnOnce() -> T) -> Arc<T> {
        if let Some(used) = self.used.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            used.insert(key.to_string());
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((slot, _)) = slots.get(key) {
            if let Ok(existing) = Arc::clone(slot).downcast::<T>() {
                return existing;
            }
        }
        let value = Arc::new(init());
        if let Some(saved) = self
            .pending_imports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
        {
            value.import(saved);
        }
        slots.insert(
            key.to_string(),
            (value.clone() as Slot, value.clone() as Arc<dyn Handover>),
        );
        value
    }

    /// Starts recording the keys that building a new config asks for.
    pub fn begin_build(&self) {
        *self.used.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
    }

    /// Drops every slot that the build since [`State::begin_build`] did not
    /// ask for. Call it once the new config serves: filters of the old
    /// config keep their own handles until their last request ends.
    pub fn finish_build(&self) {
        let Some(used) = self.used.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|key, _| used.contains(key));
    }

    /// The keys that hold state, sorted.
    pub fn keys(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<String> = slots.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Exports every slot that has something to hand over.
    pub fn export_all(&self) -> HashMap<String, serde_json::Value> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter_map(|(k, (_, h))| h.export().map(|v| (k.clone(), v)))
            .collect()
    }

    /// Loads exports from a previous process: into existing slots now, and into
    /// slots created later when they are first asked for.
    pub fn import_all(&self, exports: HashMap<String, serde_json::Value>) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut pending = self
            .pending_imports
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (key, value) in exports {
            match slots.get(&key) {
                Some((_, h)) => h.import(value),
                None => {
                    pending.insert(key, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Counter(AtomicU64);
    impl Handover for Counter {
        fn export(&self) -> Option<serde_json::Value> {
            Some(self.0.load(Ordering::Relaxed).into())
        }
        fn import(&self, v: serde_json::Value) {
            self.0.store(v.as_u64().unwrap_or(0), Ordering::Relaxed);
        }
    }

    #[test]
    fn a_new_config_drops_the_state_it_no_longer_has() {
        let state = State::new();
        let kept = state.get_or_insert("limit/kept", Counter::default);
        kept.0.store(3, Ordering::Relaxed);
        state.get_or_insert("limit/old-name", Counter::default);

        state.begin_build();
        let again = state.get_or_insert("limit/kept", Counter::default);
        state.get_or_insert("limit/new-name", Counter::default);
        // Nothing is dropped before the new config serves.
        assert_eq!(state.keys().len(), 3);
        state.finish_build();
        assert_eq!(state.keys(), ["limit/kept", "limit/new-name"]);
        assert!(Arc::ptr_eq(&kept, &again));
        assert_eq!(again.0.load(Ordering::Relaxed), 3);
        // A build that never finished (a rejected config) drops nothing
        // when the next one starts over.
        state.begin_build();
        state.begin_build();
        state.get_or_insert("limit/kept", Counter::default);
        state.get_or_insert("limit/new-name", Counter::default);
        state.finish_build();
        assert_eq!(state.keys(), ["limit/kept", "limit/new-name"]);
    }

    #[test]
    fn same_key_same_object_and_handover_roundtrip() {
        let state = State::new();
        let a = state.get_or_insert("limit/rule", Counter::default);
        a.0.store(7, Ordering::Relaxed);
        let b = state.get_or_insert("limit/rule", Counter::default);
        assert!(Arc::ptr_eq(&a, &b));

        let next = State::new();
        next.import_all(state.export_all());
        let c = next.get_or_insert("limit/rule", Counter::default);
        assert_eq!(c.0.load(Ordering::Relaxed), 7);
    }
}
