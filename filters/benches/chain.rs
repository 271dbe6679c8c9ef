//! The whole request phase of the benchmark's full chain
//! (`test-harness/bench/chains/full-chain.yaml`): hmac-sha256 signature, HS256
//! JWT session and a token bucket, over the request `chains/headers.py` signs.
//!
//! `cargo bench -p meshgate-filters --bench chain -- --quick`

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use meshgate_filters::{
    AnyFilter, Body, BuildCx, Chain, NamedFilter, RequestView, State, ValidateCx,
};

fn bench(c: &mut Criterion) {
    let specs = common::full_chain_specs();
    let state = State::new();
    let cx = BuildCx {
        state: &state,
        redis: None,
    };
    let filters = ["verify", "login", "limit"]
        .iter()
        .map(|name| {
            let config = specs[*name]
                .validate(&format!("filters.{name}"), &ValidateCx::control_plane())
                .expect("valid");
            Arc::new(NamedFilter {
                name: Arc::from(*name),
                filter: AnyFilter::build(name, &config, &cx),
            })
        })
        .collect();
    let chain = Chain::new(filters);
    let mut head = common::signed_request(&specs);
    head.headers.insert(
        http::header::AUTHORIZATION,
        common::bearer(&specs).parse().expect("header value"),
    );
    let route: Arc<str> = Arc::from("bench");

    // Filters strip the credentials from the request, so every iteration gets
    // a fresh copy of the head and a fresh context (made outside the timed part).
    c.bench_function("chain/full-chain", |b| {
        b.iter_batched_ref(
            || (head.clone(), common::context(&route)),
            |(head, cx)| {
                let mut body = Body::Empty;
                let mut req = RequestView::new(head, &mut body, 0);
                let outcome = chain.on_request(&mut req, cx).now_or_never();
                assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
