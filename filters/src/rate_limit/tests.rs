use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::body::Body;
use crate::config::ValidateCx;
use crate::state::State;

fn config(json: serde_json::Value) -> RateLimitConfig {
    let spec: RateLimitSpec = serde_json::from_value(json).expect("spec shape");
    spec.validate("filters.limit", &ValidateCx::control_plane())
        .expect("valid config")
}

fn build(state: &State, json: serde_json::Value) -> RateLimitFilter {
    RateLimitFilter::build("limit", &config(json), &BuildCx { state, redis: None })
}

struct Req {
    client_id: Option<&'static str>,
    header: Option<&'static str>,
}

const ANON: Req = Req {
    client_id: None,
    header: None,
};

fn client(id: &'static str) -> Req {
    Req {
        client_id: Some(id),
        header: None,
    }
}

/// Runs the filter once; returns the verdict and the context.
async fn run(f: &RateLimitFilter, r: &Req) -> (Result<(), Rejection>, RequestCtx) {
    let mut builder = http::Request::builder().uri("/x");
    if let Some(h) = r.header {
        builder = builder.header("x-tenant", h);
    }
    let (mut head, ()) = builder.body(()).expect("request").into_parts();
    let mut body = Body::Empty;
    let mut cx = RequestCtx::new(Arc::from("route-a"), [10, 0, 0, 1].into(), false);
    cx.client_id = r.client_id.map(Into::into);
    let v = f
        .on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
        .await;
    (v, cx)
}

async fn admits(f: &RateLimitFilter, r: &Req) -> bool {
    matches!(run(f, r).await.0, Ok(()))
}

async fn count_admitted(f: &RateLimitFilter, r: &Req, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if admits(f, r).await {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bucket_admits_exactly_n_across_many_tasks() {
    let state = State::new();
    let f = Arc::new(build(
        &state,
        serde_json::json!({"rules": [
            {"name": "b", "key": "route", "algorithm": "token_bucket", "rate": "1/min", "burst": 500}
        ]}),
    ));
    let admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let f = f.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    if admits(&f, &ANON).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    // 3200 attempts within far less than a minute: exactly the burst.
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_window_exact_across_tasks_and_resets() {
    let state = State::new();
    let f = Arc::new(build(
        &state,
        serde_json::json!({"rules": [
            {"name": "w", "key": "route", "algorithm": "fixed_window", "limit": 300, "window": "1s"}
        ]}),
    ));
    // Start right after a window boundary so the burst fits in one window.
    let into = now_ns() % 1_000_000_000;
    tokio::time::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - into + 5_000_000,
    ))
    .await;
    let admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let f = f.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    if admits(&f, &ANON).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 300);
    let into = now_ns() % 1_000_000_000;
    tokio::time::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - into + 5_000_000,
    ))
    .await;
    assert!(admits(&f, &ANON).await, "a new window admits again");
}

#[tokio::test]
async fn keys_are_isolated() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "per-client", "key": ["client_id"], "algorithm": "token_bucket", "rate": "1/min", "burst": 3}
        ]}),
    );
    assert_eq!(count_admitted(&f, &client("a"), 10).await, 3);
    assert_eq!(count_admitted(&f, &client("b"), 10).await, 3);
    // No client id: the rule does not apply.
    assert_eq!(count_admitted(&f, &ANON, 10).await, 10);
}

#[tokio::test]
async fn composite_and_header_keys() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "t", "key": ["route", "header:x-tenant"], "algorithm": "fixed_window", "limit": 2, "window": "1h"}
        ]}),
    );
    let t1 = Req {
        client_id: None,
        header: Some("t1"),
    };
    let t2 = Req {
        client_id: None,
        header: Some("t2"),
    };
    assert_eq!(count_admitted(&f, &t1, 5).await, 2);
    assert_eq!(count_admitted(&f, &t2, 5).await, 2);
}

#[tokio::test]
async fn strictest_rule_wins_without_spending_the_others() {
    let state = State::new();
    let rules = serde_json::json!({"rules": [
        {"name": "loose", "key": "route", "algorithm": "fixed_window", "limit": 10, "window": "1h"},
        {"name": "strict", "key": ["client_id"], "algorithm": "fixed_window", "limit": 2, "window": "1h"}
    ]});
    let f = build(&state, rules);
    assert_eq!(count_admitted(&f, &client("a"), 6).await, 2);
    let (v, _) = run(&f, &client("a")).await;
    match v {
        Err(r) => {
            assert_eq!(r.reason, "rate_limited");
            assert_eq!(r.status, http::StatusCode::TOO_MANY_REQUESTS);
            assert!(r.message.contains("strict"));
            assert!(r.headers.contains_key(http::header::RETRY_AFTER));
            assert_eq!(
                r.headers.get("ratelimit-policy").expect("policy"),
                "\"strict\";q=2;w=3600"
            );
            let state = r.headers.get("ratelimit").expect("state");
            assert!(
                state
                    .to_str()
                    .expect("ascii")
                    .starts_with("\"strict\";r=0;t="),
                "{state:?}"
            );
        }
        Ok(()) => panic!("expected rejection"),
    }
    // The route rule spent only the 2 admitted requests: 8 left for others.
    assert_eq!(count_admitted(&f, &client("b"), 20).await, 2);
    assert_eq!(count_admitted(&f, &client("c"), 20).await, 2);
    assert_eq!(count_admitted(&f, &client("d"), 20).await, 2);
    assert_eq!(count_admitted(&f, &client("e"), 20).await, 2);
    assert_eq!(count_admitted(&f, &client("f"), 20).await, 0);
}

#[tokio::test]
async fn shadow_rules_never_block() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"shadow": true, "response_headers": true, "rules": [
            {"name": "s", "key": "route", "algorithm": "fixed_window", "limit": 2, "window": "1h"}
        ]}),
    );
    assert_eq!(count_admitted(&f, &ANON, 10).await, 10);
    let (_, cx) = run(&f, &ANON).await;
    let state = cx
        .response_headers
        .iter()
        .find(|(n, _)| n == "ratelimit")
        .expect("reported");
    assert!(state.1.to_str().expect("ascii").contains(";r=0;"));
}

#[tokio::test]
async fn overrides_apply_per_key() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "c", "key": ["client_id"], "algorithm": "token_bucket", "rate": "1/min", "burst": 2,
             "overrides": [{"key": "app-1", "rate": "1/min", "burst": 7}]}
        ]}),
    );
    assert_eq!(count_admitted(&f, &client("app-1"), 20).await, 7);
    assert_eq!(count_admitted(&f, &client("app-2"), 20).await, 2);
}

#[tokio::test]
async fn success_headers_when_enabled() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"response_headers": true, "rules": [
            {"name": "per-client", "key": ["client_id"], "algorithm": "token_bucket", "rate": "100/s", "burst": 200}
        ]}),
    );
    let (_, cx) = run(&f, &client("a")).await;
    let get = |n: &str| {
        cx.response_headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.to_str().expect("ascii").to_string())
    };
    assert_eq!(
        get("ratelimit-policy").as_deref(),
        Some("\"per-client\";q=100;w=1")
    );
    assert_eq!(
        get("ratelimit").as_deref(),
        Some("\"per-client\";r=199;t=1")
    );
}

#[tokio::test]
async fn concurrency_permit_held_until_request_ends() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "in-flight", "key": "route", "algorithm": "concurrency", "max": 2},
            {"name": "after", "key": ["client_id"], "algorithm": "fixed_window", "limit": 1, "window": "1h"}
        ]}),
    );
    let (v1, mut cx1) = run(&f, &client("a")).await;
    assert!(matches!(v1, Ok(())));
    // Rejected by the second rule: its concurrency slot is given back.
    let (v2, _cx2) = run(&f, &client("a")).await;
    assert!(v2.is_err());
    let (v3, _cx3) = run(&f, &client("b")).await;
    assert!(matches!(v3, Ok(())));
    let (v4, _cx4) = run(&f, &client("c")).await;
    assert!(v4.is_err(), "two in flight");
    drop(cx1.take_guards());
    let (v5, _cx5) = run(&f, &client("d")).await;
    assert!(matches!(v5, Ok(())), "slot released");
}

#[tokio::test]
async fn reload_keeps_counts_and_applies_new_limits() {
    let state = State::new();
    let rule = |limit: u64| {
        serde_json::json!({"rules": [
            {"name": "w", "key": "route", "algorithm": "fixed_window", "limit": limit, "window": "1h"}
        ]})
    };
    let f = build(&state, rule(5));
    assert_eq!(count_admitted(&f, &ANON, 3).await, 3);
    let f = build(&state, rule(5));
    assert_eq!(
        count_admitted(&f, &ANON, 10).await,
        2,
        "counts survive a reload"
    );
    let f = build(&state, rule(8));
    assert_eq!(
        count_admitted(&f, &ANON, 10).await,
        3,
        "new limit, same count"
    );
    // Algorithm changed: fresh state.
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "w", "key": "route", "algorithm": "token_bucket", "rate": "1/h", "burst": 4}
        ]}),
    );
    assert_eq!(count_admitted(&f, &ANON, 10).await, 4);
}

#[tokio::test]
async fn handover_carries_counts_to_a_new_process() {
    let old = State::new();
    let json = serde_json::json!({"rules": [
        {"name": "b", "key": ["client_id"], "algorithm": "token_bucket", "rate": "1/h", "burst": 5}
    ]});
    let f = build(&old, json.clone());
    assert_eq!(count_admitted(&f, &client("a"), 3).await, 3);
    let exported = serde_json::to_string(&old.export_all()).expect("serialize");

    let new = State::new();
    new.import_all(serde_json::from_str(&exported).expect("parse"));
    let f = build(&new, json);
    assert_eq!(count_admitted(&f, &client("a"), 10).await, 2);
    assert_eq!(count_admitted(&f, &client("b"), 10).await, 5);
}

#[tokio::test]
async fn global_rule_without_store_falls_back_locally() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "g", "key": "route", "algorithm": "fixed_window", "limit": 10, "window": "1h",
             "scope": "global", "fallback_peers": 2}
        ]}),
    );
    assert_eq!(count_admitted(&f, &ANON, 20).await, 5);
}

#[tokio::test]
async fn fail_closed_answers_503_without_store() {
    let state = State::new();
    let f = build(
        &state,
        serde_json::json!({"rules": [
            {"name": "g", "key": "route", "algorithm": "fixed_window", "limit": 10, "window": "1h",
             "scope": "global", "on_store_error": "fail_closed"}
        ]}),
    );
    match run(&f, &ANON).await.0 {
        Err(r) => assert_eq!(r.reason, "rate_limit_store_unavailable"),
        Ok(()) => panic!("expected 503"),
    }
}

/// Runs the filter once with `tenant` set by an earlier filter and
/// `client_sent` as a request header of the same name.
async fn run_with_identity(
    f: &RateLimitFilter,
    tenant: Option<&'static str>,
    client_sent: Option<&'static str>,
) -> Result<(), Rejection> {
    let mut builder = http::Request::builder().uri("/x");
    if let Some(h) = client_sent {
        builder = builder.header("x-meshgate-tenant", h);
    }
    let (mut head, ()) = builder.body(()).expect("request").into_parts();
    let mut body = Body::Empty;
    let mut cx = RequestCtx::new(Arc::from("route-a"), [10, 0, 0, 1].into(), false);
    if let Some(t) = tenant {
        cx.set_upstream_header(
            http::HeaderName::from_static("x-meshgate-tenant"),
            http::HeaderValue::from_static(t),
        );
    }
    f.on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
        .await
}

#[tokio::test]
async fn identity_header_keys_read_the_filter_set_value_only() {
    let rules = |key: serde_json::Value| {
        serde_json::json!({"rules": [
            {"name": "t", "key": key, "algorithm": "fixed_window", "limit": 2, "window": "1h"}
        ]})
    };
    let cfg = config(rules(serde_json::json!("header:X-Meshgate-Tenant")));
    assert_eq!(
        cfg.rules[0].key,
        vec![KeyPart::FilterHeader(http::HeaderName::from_static(
            "x-meshgate-tenant"
        ))]
    );
    for key in [
        serde_json::json!("header:x-meshgate-tenant"),
        serde_json::json!(["route", "header:x-meshgate-tenant"]),
    ] {
        let state = State::new();
        let f = build(&state, rules(key.clone()));
        let limited = |v: &Result<(), Rejection>| matches!(v, Err(r) if r.reason == "rate_limited");
        // each tenant has its own budget, whatever the client claims
        for _ in 0..2 {
            assert!(matches!(
                run_with_identity(&f, Some("t1"), Some("t2")).await,
                Ok(())
            ));
        }
        assert!(
            limited(&run_with_identity(&f, Some("t1"), None).await),
            "{key}"
        );
        assert!(limited(
            &run_with_identity(&f, Some("t1"), Some("other")).await
        ));
        assert!(matches!(
            run_with_identity(&f, Some("t2"), None).await,
            Ok(())
        ));
        // a client-sent value alone is not a key: the rule does not apply
        for _ in 0..5 {
            assert!(matches!(
                run_with_identity(&f, None, Some("t1")).await,
                Ok(())
            ));
        }
    }
}

#[tokio::test]
async fn a_renamed_rule_leaves_no_key_map_behind() {
    let state = State::new();
    let rule = |name: &str| {
        serde_json::json!({"rules": [
            {"name": name, "key": "client_id", "algorithm": "fixed_window", "limit": 1, "window": "1h"}
        ]})
    };
    state.begin_build();
    let first = build(&state, rule("per-client"));
    state.finish_build();
    assert!(admits(&first, &client("a")).await);
    assert!(!admits(&first, &client("a")).await);
    assert_eq!(state.keys(), ["limit/per-client"]);

    state.begin_build();
    let renamed = build(&state, rule("per-app"));
    state.finish_build();
    assert_eq!(state.keys(), ["limit/per-app"]);
    // The renamed rule counts afresh.
    assert!(admits(&renamed, &client("a")).await);

    // Renamed back: the old counts are gone too.
    state.begin_build();
    let back = build(&state, rule("per-client"));
    state.finish_build();
    assert_eq!(state.keys(), ["limit/per-client"]);
    assert!(admits(&back, &client("a")).await);
}

/// One row: the rule's `key`, what the request carries, the key it counts
/// under (`None`: the rule does not apply).
struct KeyCase {
    key: serde_json::Value,
    client_id: Option<&'static str>,
    user: Option<&'static str>,
    tenant_header: Option<&'static str>,
    tenant_identity: Option<&'static str>,
    want: Option<&'static str>,
}

#[test]
fn keys_are_built_from_their_descriptors() {
    use serde_json::json;
    let case = |key, want| KeyCase {
        key,
        client_id: None,
        user: None,
        tenant_header: None,
        tenant_identity: None,
        want,
    };
    let cases = [
        case(json!("route"), Some("route-a")),
        case(json!("client_ip"), Some("10.0.0.1")),
        case(json!("client_id"), None),
        KeyCase {
            client_id: Some("app-1"),
            ..case(json!("client_id"), Some("app-1"))
        },
        case(json!("user"), None),
        KeyCase {
            user: Some("u-1"),
            ..case(json!(["user"]), Some("u-1"))
        },
        case(json!("header:x-tenant"), None),
        KeyCase {
            tenant_header: Some("t1"),
            ..case(json!("header:X-Tenant"), Some("t1"))
        },
        KeyCase {
            client_id: Some("app-1"),
            ..case(json!(["route", "client_id"]), Some("route-a|app-1"))
        },
        case(json!(["route", "client_id"]), None),
        KeyCase {
            user: Some("u"),
            tenant_header: Some("t"),
            ..case(
                json!(["client_ip", "header:x-tenant", "user"]),
                Some("10.0.0.1|t|u"),
            )
        },
        // An identity header counts only as an earlier filter set it; the
        // client always sends a forged one here.
        case(json!("header:x-meshgate-tenant"), None),
        case(json!(["route", "header:x-meshgate-tenant"]), None),
        KeyCase {
            tenant_identity: Some("t9"),
            ..case(json!("header:x-meshgate-tenant"), Some("t9"))
        },
        KeyCase {
            tenant_identity: Some("t9"),
            ..case(
                json!(["route", "header:x-meshgate-tenant"]),
                Some("route-a|t9"),
            )
        },
    ];
    for c in cases {
        let state = State::new();
        let f = build(
            &state,
            json!({"rules": [{"name": "k", "key": c.key, "algorithm": "concurrency", "max": 1}]}),
        );
        let mut builder = http::Request::builder()
            .uri("/x")
            .header("x-meshgate-tenant", "forged");
        if let Some(t) = c.tenant_header {
            builder = builder.header("x-tenant", t);
        }
        let (mut head, ()) = builder.body(()).expect("request").into_parts();
        let mut body = Body::Empty;
        let mut cx = RequestCtx::new(Arc::from("route-a"), [10, 0, 0, 1].into(), false);
        cx.client_id = c.client_id.map(Into::into);
        cx.user = c.user.map(Into::into);
        if let Some(t) = c.tenant_identity {
            cx.set_upstream_header(
                http::HeaderName::from_static("x-meshgate-tenant"),
                http::HeaderValue::from_static(t),
            );
        }
        let view = RequestView::new(&mut head, &mut body, 1024);
        let got = f.rules[0].key(&view, &cx).map(|k| k.into_owned());
        assert_eq!(got.as_deref(), c.want, "key {}", c.key);
    }
}
