//! Draining: stop accepting, let in-flight requests finish, then exit.
//!
//! Accept loops stop when draining starts; each connection is told to shut
//! down gracefully (HTTP/1: `Connection: close` after the in-flight response;
//! HTTP/2: GOAWAY) and the process waits for the last one or the deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Drain {
    signal: watch::Sender<bool>,
    active: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

/// Held by a connection task; the connection counts as active until dropped.
pub struct ConnGuard {
    active: Arc<AtomicUsize>,
    idle: Arc<Notify>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let left = self.active.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("meshgate_active_connections").set(left as f64);
        if left == 0 {
            self.idle.notify_waiters();
        }
    }
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            signal: watch::channel(false).0,
            active: Arc::new(AtomicUsize::new(0)),
            idle: Arc::new(Notify::new()),
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.signal.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    pub fn track_connection(&self) -> ConnGuard {
        let now = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("meshgate_active_connections").set(now as f64);
        ConnGuard {
            active: self.active.clone(),
            idle: self.idle.clone(),
        }
    }

    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until every connection is closed or `deadline` passed; returns
    /// how many were still open.
    pub async fn wait_idle(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.active.load(Ordering::Acquire)
    }
}
