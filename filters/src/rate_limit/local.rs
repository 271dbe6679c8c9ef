//! Exact, lock-free per-key limiters on wall-clock time.
//!
//! Each key's state is one or two `AtomicU64`s updated by compare-and-swap, so
//! a bucket of N admits exactly N however many tasks race for it. Times are
//! nanoseconds since the Unix epoch (not `Instant`), so the state means the
//! same thing in another process and can be handed over at upgrade.
//!
//! - token bucket: GCRA; the cell holds the theoretical arrival time (TAT).
//! - fixed window: the cell packs (window index mod 2^32, count).
//! - sliding window: two such cells (by window parity); the estimate is
//!   `count(current) + count(previous) * (1 - elapsed/window)`.
//! - concurrency: the cell is the in-flight count; a permit decrements it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::keymap::{LastSeen, Tracked};
use super::spec::Params;

/// One key's state.
#[derive(Debug, Default)]
pub struct Cell {
    pub a: AtomicU64,
    pub b: AtomicU64,
    pub seen: LastSeen,
}

impl Tracked for Cell {
    fn last_seen(&self) -> u64 {
        self.seen.get()
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted; `remaining` units left, full quota back in `reset_ns`.
    Admit { remaining: u64, reset_ns: u64 },
    /// Rejected; try again in `retry_ns`.
    Reject { retry_ns: u64, reset_ns: u64 },
}

fn pack(window: u64, count: u64) -> u64 {
    ((window & 0xffff_ffff) << 32) | (count & 0xffff_ffff)
}

fn unpack(v: u64) -> (u64, u64) {
    (v >> 32, v & 0xffff_ffff)
}

/// Checks and (when admitted) consumes one unit.
pub fn acquire(cell: &Cell, params: Params, now_ns: u64) -> Outcome {
    match params {
        Params::Bucket {
            interval_ns, burst, ..
        } => bucket_acquire(&cell.a, interval_ns, burst, now_ns),
        Params::Window { limit, window_ns } => fixed_acquire(&cell.a, limit, window_ns, now_ns),
        Params::Concurrency { max } => {
            let got = cell
                .a
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
            match got {
                Ok(n) => Outcome::Admit {
                    remaining: max - n - 1,
                    reset_ns: 0,
                },
                Err(_) => Outcome::Reject {
                    retry_ns: 1_000_000_000,
                    reset_ns: 0,
                },
            }
        }
    }
}

/// Like [`acquire`] for the sliding-window algorithm (which needs both cells).
pub fn sliding_acquire(cell: &Cell, limit: u64, window_ns: u64, now_ns: u64) -> Outcome {
    let window_ns = window_ns.max(1);
    let cur = now_ns / window_ns;
    let elapsed = now_ns - cur * window_ns;
    let reset_ns = window_ns - elapsed;
    let (cur_cell, prev_cell) = if cur & 1 == 0 {
        (&cell.a, &cell.b)
    } else {
        (&cell.b, &cell.a)
    };
    let (pw, pc) = unpack(prev_cell.load(Ordering::Acquire));
    let prev = if pw == (cur.wrapping_sub(1) & 0xffff_ffff) {
        pc
    } else {
        0
    };
    // Weighted share of the previous window still "inside" the sliding window.
    let weighted = ((prev as u128 * (window_ns - elapsed) as u128) / window_ns as u128) as u64;
    loop {
        let v = cur_cell.load(Ordering::Acquire);
        let (w, c) = unpack(v);
        let c = if w == (cur & 0xffff_ffff) { c } else { 0 };
        if weighted + c >= limit {
            // Wait until the previous window's weight has decayed enough, or
            // the window ends.
            let retry_ns = if c < limit && prev > 0 {
                let allowed_prev = limit - c - 1; // weighted must fall to this
                let need_elapsed =
                    window_ns as u128 - (allowed_prev as u128 * window_ns as u128) / prev as u128;
                (need_elapsed as u64).saturating_sub(elapsed).max(1)
            } else {
                reset_ns
            };
            return Outcome::Reject { retry_ns, reset_ns };
        }
        if cur_cell
            .compare_exchange_weak(v, pack(cur, c + 1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Outcome::Admit {
                remaining: limit - weighted - c - 1,
                reset_ns,
            };
        }
    }
}

fn bucket_acquire(cell: &AtomicU64, interval_ns: u64, burst: u64, now_ns: u64) -> Outcome {
    let tau = interval_ns.saturating_mul(burst);
    loop {
        let tat = cell.load(Ordering::Acquire);
        let new_tat = tat.max(now_ns).saturating_add(interval_ns);
        let ahead = new_tat - now_ns;
        if ahead > tau {
            return Outcome::Reject {
                retry_ns: ahead - tau,
                reset_ns: tat.saturating_sub(now_ns),
            };
        }
        if cell
            .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Outcome::Admit {
                remaining: (tau - ahead) / interval_ns.max(1),
                reset_ns: ahead,
            };
        }
    }
}

fn fixed_acquire(cell: &AtomicU64, limit: u64, window_ns: u64, now_ns: u64) -> Outcome {
    let window_ns = window_ns.max(1);
    let cur = now_ns / window_ns;
    let reset_ns = (cur + 1) * window_ns - now_ns;
    loop {
        let v = cell.load(Ordering::Acquire);
        let (w, c) = unpack(v);
        let c = if w == (cur & 0xffff_ffff) { c } else { 0 };
        if c >= limit {
            return Outcome::Reject {
                retry_ns: reset_ns,
                reset_ns,
            };
        }
        if cell
            .compare_exchange_weak(v, pack(cur, c + 1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Outcome::Admit {
                remaining: limit - c - 1,
                reset_ns,
            };
        }
    }
}

/// Gives back a unit taken by [`acquire`] when a later rule rejected the
/// request, so one rule's rejection does not spend another rule's quota.
pub fn refund(cell: &Cell, params: Params, now_ns: u64, sliding: bool) {
    match params {
        Params::Bucket { interval_ns, .. } => {
            let _ = cell
                .a
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                    Some(tat.saturating_sub(interval_ns).max(now_ns.min(tat)))
                });
        }
        Params::Window { window_ns, .. } => {
            let cur = now_ns / window_ns.max(1);
            let target = if !sliding || cur & 1 == 0 {
                &cell.a
            } else {
                &cell.b
            };
            let _ = target.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (w, c) = unpack(v);
                (w == (cur & 0xffff_ffff) && c > 0).then(|| pack(w, c - 1))
            });
        }
        Params::Concurrency { .. } => {
            let _ = cell
                .a
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }
}

/// A concurrency slot, released when dropped (held in the request context).
pub struct ConcurrencyPermit(pub Arc<Cell>);

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        let _ = self
            .0
            .a
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Seconds a key must sit unused before its state is indistinguishable from
/// a fresh one (so evicting it loses nothing).
pub fn idle_secs(params: Params, sliding: bool) -> u64 {
    let ns = match params {
        Params::Window { window_ns, .. } => window_ns.saturating_mul(if sliding { 2 } else { 1 }),
        Params::Bucket {
            interval_ns, burst, ..
        } => interval_ns.saturating_mul(burst),
        Params::Concurrency { .. } => 0,
    };
    ns.div_ceil(1_000_000_000).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S;

    fn bucket(rate_per_s: u64, burst: u64) -> Params {
        Params::Bucket {
            interval_ns: S / rate_per_s,
            burst,
            quota: rate_per_s,
            period_ns: S,
        }
    }

    fn admitted(o: Outcome) -> bool {
        matches!(o, Outcome::Admit { .. })
    }

    #[test]
    fn bucket_admits_burst_then_refills() {
        let c = Cell::default();
        let p = bucket(10, 5);
        let got = (0..20).filter(|_| admitted(acquire(&c, p, T0))).count();
        assert_eq!(got, 5);
        match acquire(&c, p, T0) {
            Outcome::Reject { retry_ns, .. } => assert_eq!(retry_ns, S / 10),
            o => panic!("expected reject, got {o:?}"),
        }
        // 0.25s later: two tokens back (one every 100ms).
        let later = T0 + S / 4;
        let got = (0..10).filter(|_| admitted(acquire(&c, p, later))).count();
        assert_eq!(got, 2);
        // After a long pause the bucket is full again, no more.
        let much_later = T0 + 100 * S;
        let got = (0..10)
            .filter(|_| admitted(acquire(&c, p, much_later)))
            .count();
        assert_eq!(got, 5);
    }

    #[test]
    fn fixed_window_resets_at_the_boundary() {
        let c = Cell::default();
        let p = Params::Window {
            limit: 3,
            window_ns: S,
        };
        let got = (0..10)
            .filter(|_| admitted(acquire(&c, p, T0 + S / 2)))
            .count();
        assert_eq!(got, 3);
        match acquire(&c, p, T0 + S / 2) {
            Outcome::Reject { retry_ns, .. } => assert_eq!(retry_ns, S / 2),
            o => panic!("expected reject, got {o:?}"),
        }
        let got = (0..10).filter(|_| admitted(acquire(&c, p, T0 + S))).count();
        assert_eq!(got, 3);
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let c = Cell::default();
        let got = (0..20)
            .filter(|_| admitted(sliding_acquire(&c, 10, S, T0 + S / 2)))
            .count();
        assert_eq!(got, 10);
        // A quarter into the next window, 75% of the previous 10 still count.
        let t = T0 + S + S / 4;
        let got = (0..20)
            .filter(|_| admitted(sliding_acquire(&c, 10, S, t)))
            .count();
        assert_eq!(got, 3);
        // Two windows later nothing of the first counts.
        let t = T0 + 3 * S;
        let got = (0..20)
            .filter(|_| admitted(sliding_acquire(&c, 10, S, t)))
            .count();
        assert_eq!(got, 10);
    }

    #[test]
    fn concurrency_permits_release_on_drop() {
        let c = Arc::new(Cell::default());
        let p = Params::Concurrency { max: 2 };
        assert!(admitted(acquire(&c, p, T0)));
        let a = ConcurrencyPermit(c.clone());
        assert!(admitted(acquire(&c, p, T0)));
        let _b = ConcurrencyPermit(c.clone());
        assert!(!admitted(acquire(&c, p, T0)));
        drop(a);
        assert!(admitted(acquire(&c, p, T0)));
    }

    #[test]
    fn refund_restores_one_unit() {
        let c = Cell::default();
        let p = Params::Window {
            limit: 1,
            window_ns: S,
        };
        assert!(admitted(acquire(&c, p, T0)));
        assert!(!admitted(acquire(&c, p, T0)));
        refund(&c, p, T0, false);
        assert!(admitted(acquire(&c, p, T0)));

        let b = bucket(1, 1);
        let c = Cell::default();
        assert!(admitted(acquire(&c, b, T0)));
        refund(&c, b, T0, false);
        assert!(admitted(acquire(&c, b, T0)));
        assert!(!admitted(acquire(&c, b, T0)));
    }

    #[test]
    fn exact_under_thread_contention() {
        let c = Arc::new(Cell::default());
        let p = bucket(1, 1000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..1000).filter(|_| admitted(acquire(&c, p, T0))).count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(total, 1000);
    }
}
