//! One JWT session check through the filter: HS256 token, in-memory JWKS,
//! issuer and audience checks, identity header for the app (the `login`
//! filter of the benchmark's full chain).
//!
//! `cargo bench -p meshgate-filters --bench session -- --quick`

mod common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use meshgate_filters::session::SessionFilter;
use meshgate_filters::{Body, BuildCx, Filter, FilterConfig, RequestView, State, ValidateCx};

fn bench(c: &mut Criterion) {
    let specs = common::full_chain_specs();
    let config = specs["login"]
        .validate("filters.login", &ValidateCx::control_plane())
        .expect("valid");
    let FilterConfig::Session(config) = config else {
        panic!("login is a session filter");
    };
    let state = State::new();
    let filter = SessionFilter::build(
        "login",
        &config,
        &BuildCx {
            state: &state,
            redis: None,
        },
    );
    let (mut head, ()) = http::Request::get("/bench")
        .header("host", "127.0.0.1:8080")
        .body(())
        .expect("request")
        .into_parts();
    head.headers.insert(
        http::header::AUTHORIZATION,
        common::bearer(&specs).parse().expect("header value"),
    );
    let route: Arc<str> = Arc::from("bench");

    // The filter removes the token from the request, so every iteration gets
    // a fresh copy of the head (made outside the timed part).
    c.bench_function("session/jwt-hs256", |b| {
        b.iter_batched_ref(
            || (head.clone(), common::context(&route)),
            |(head, cx)| {
                let mut body = Body::Empty;
                let mut req = RequestView::new(head, &mut body, 0);
                let result = filter.on_request(&mut req, cx).now_or_never();
                assert!(matches!(result, Some(Ok(()))));
                black_box(&cx.user);
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
