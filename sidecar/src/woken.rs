//! A future polled only after its own waker fired.
//!
//! A connection's task races the connection against watchers (idle limits,
//! drain). `select!` polls every branch whenever the task wakes, and the task
//! wakes several times per request for socket readiness alone; a watcher's
//! timer and notification checks would run on each of those. Wrapped in
//! [`PollWhenWoken`], the watchers cost one atomic swap per wake-up until one
//! of their own timers or notifications fires.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Set when the inner future's waker fires; wakes the task polling us.
struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `future` on the first poll and then only when it asked to be
/// woken; other polls return `Pending` at once.
pub struct PollWhenWoken<F> {
    future: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
}

impl<F: Future + Unpin> PollWhenWoken<F> {
    pub fn new(future: F) -> PollWhenWoken<F> {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        PollWhenWoken {
            future,
            waker: Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future + Unpin> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake between the two is seen
        // now or wakes the task again.
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking through the
    /// waker it was last polled with.
    struct Counted {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_when_woken() {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let mut gated = PollWhenWoken::new(Counted {
            polls: polls.clone(),
            ready: ready.clone(),
        });
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled once, then gated");
        ready.store(true, Ordering::SeqCst);
        assert!(
            Pin::new(&mut gated).poll(&mut cx).is_pending(),
            "not woken yet"
        );
        gated.waker.wake_by_ref();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_timer_inside_wakes_the_task_and_completes() {
        let sleep = tokio::time::sleep(Duration::from_millis(20));
        tokio::pin!(sleep);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), PollWhenWoken::new(sleep))
            .await
            .expect("the timer fired through the gate");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_notification_inside_wakes_the_task_beside_a_busy_branch() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let notified = notify.notified();
        tokio::pin!(notified);
        let mut gated = PollWhenWoken::new(notified);
        let ticks = async {
            loop {
                tokio::task::yield_now().await;
            }
        };
        tokio::pin!(ticks);
        let sender = notify.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            sender.notify_waiters();
        });
        let woke = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                () = &mut gated => true,
                () = &mut ticks => false,
            }
        })
        .await
        .expect("the notification got through");
        assert!(woke);
    }
}
