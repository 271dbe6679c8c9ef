//! One local token-bucket check through the filter, single-threaded and with
//! several threads hitting the same key.
//!
//! `cargo bench -p meshgate-filters --bench rate_limit -- --quick`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use meshgate_filters::rate_limit::{RateLimitFilter, RateLimitSpec};
use meshgate_filters::{Body, BuildCx, Filter, RequestCtx, RequestView, State, ValidateCx};

fn filter() -> RateLimitFilter {
    let spec: RateLimitSpec = serde_json::from_value(serde_json::json!({"rules": [
        {"name": "b", "key": "route", "algorithm": "token_bucket", "rate": "1000000000/s", "burst": 1000000}
    ]}))
    .expect("spec");
    let config = spec
        .validate("filters.limit", &ValidateCx::control_plane())
        .expect("valid");
    let state = State::new();
    RateLimitFilter::build(
        "limit",
        &config,
        &BuildCx {
            state: &state,
            redis: None,
        },
    )
}

fn context(route: &Arc<str>) -> RequestCtx {
    RequestCtx::new(route.clone(), [127, 0, 0, 1].into(), false)
}

/// One check; the context is reused so only the filter's own work is timed.
fn check(f: &RateLimitFilter, head: &mut http::request::Parts, cx: &mut RequestCtx) -> bool {
    let mut body = Body::Empty;
    let mut req = RequestView::new(head, &mut body, 0);
    // Local rules never wait, so the future completes on the first poll.
    matches!(f.on_request(&mut req, cx).now_or_never(), Some(Ok(())))
}

fn bench(c: &mut Criterion) {
    let route: Arc<str> = Arc::from("bench-route");
    let f = Arc::new(filter());
    c.bench_function("token_bucket_check_single_thread", |b| {
        let (mut head, ()) = http::Request::new(()).into_parts();
        let mut cx = context(&route);
        b.iter(|| black_box(check(&f, &mut head, &mut cx)))
    });
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    c.bench_function(
        &format!("token_bucket_check_contended_{threads}_threads"),
        |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads as u64);
                let started = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let f = f.clone();
                        let route = route.clone();
                        std::thread::spawn(move || {
                            let (mut head, ()) = http::Request::new(()).into_parts();
                            let mut cx = context(&route);
                            for _ in 0..per_thread {
                                black_box(check(&f, &mut head, &mut cx));
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    let _ = h.join();
                }
                // Wall time per check across all threads (throughput view).
                let elapsed = started.elapsed();
                Duration::from_nanos((elapsed.as_nanos() / u128::from(iters.max(1))) as u64)
                    * iters as u32
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
