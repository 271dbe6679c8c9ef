//! Global rules against a real redis-server (several filter instances with
//! their own state and connection stand in for several sidecars).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshgate_test_harness::Redis;

use super::*;
use crate::body::Body;
use crate::config::ValidateCx;
use crate::state::State;

/// A command through the `redis` crate (as the filter speaks it).
async fn command(redis: &Redis, args: &[&str]) -> redis::Value {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn).await.expect("command")
}

async fn evalsha_calls(redis: &Redis) -> u64 {
    let info = match command(redis, &["INFO", "commandstats"]).await {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).to_string(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("unexpected INFO answer {other:?}"),
    };
    ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
        .iter()
        .filter_map(|p| {
            let rest = &info[info.find(p)? + p.len()..];
            rest.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

fn sidecar(redis: &Redis, state: &State, limit: u64) -> RateLimitFilter {
    let spec: RateLimitSpec = serde_json::from_value(serde_json::json!({"rules": [
        {"name": "api-total", "key": "route", "algorithm": "fixed_window", "limit": limit,
         "window": "1s", "scope": "global"}
    ]}))
    .expect("spec");
    let config = spec
        .validate("filters.limit", &ValidateCx::control_plane())
        .expect("valid");
    let store =
        crate::store::RedisStore::new(&redis.url(), Duration::from_millis(200)).expect("store");
    RateLimitFilter::build(
        "limit",
        &config,
        &BuildCx {
            state,
            redis: Some(Arc::new(store)),
        },
    )
}

async fn admits(f: &RateLimitFilter) -> bool {
    let (mut head, ()) = http::Request::new(()).into_parts();
    let mut body = Body::Empty;
    let mut cx = RequestCtx::new(Arc::from("route-a"), [10, 0, 0, 1].into(), false);
    matches!(
        f.on_request(&mut RequestView::new(&mut head, &mut body, 0), &mut cx)
            .await,
        Ok(())
    )
}

async fn sleep_to_next_window() {
    let into = now_ns() % 1_000_000_000;
    tokio::time::sleep(Duration::from_nanos(1_000_000_000 - into + 2_000_000)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_at_double_load_stay_within_two_percent() {
    let redis = Redis::start();
    let limit = 200u64;
    let windows = 4u64;
    let states: Vec<State> = (0..3).map(|_| State::new()).collect();
    let sidecars: Vec<Arc<RateLimitFilter>> = states
        .iter()
        .map(|s| Arc::new(sidecar(&redis, s, limit)))
        .collect();
    sleep_to_next_window().await;
    let start_window = now_ns() / 1_000_000_000;
    let end_ns = (start_window + windows) * 1_000_000_000 - 20_000_000;
    let admitted = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    // 2x overload: 400 requests/s in total, paced evenly per sidecar.
    let per_sidecar_interval = Duration::from_nanos(1_000_000_000 * 3 / (2 * limit));
    let tasks: Vec<_> = sidecars
        .iter()
        .map(|f| {
            let f = f.clone();
            let admitted = admitted.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_sidecar_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while now_ns() < end_ns {
                    tick.tick().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if admits(&f).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let admitted = admitted.load(Ordering::Relaxed) as u64;
    let sent = sent.load(Ordering::Relaxed) as u64;
    let want = limit * windows;
    assert!(sent >= want * 18 / 10, "load generator too slow: {sent}");
    assert!(admitted <= want, "admitted {admitted} > {want}");
    assert!(
        admitted * 100 >= want * 98,
        "admitted {admitted} < 98% of {want}"
    );
    let calls = evalsha_calls(&redis).await;
    eprintln!("admitted {admitted} of {sent} (limit {want}); {calls} script calls");
    assert!(calls * 4 < sent, "{calls} script calls for {sent} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_and_restart_are_survived() {
    let mut redis = Redis::start();
    let state = State::new();
    let f = sidecar(&redis, &state, 1_000_000);
    for _ in 0..20 {
        assert!(admits(&f).await);
    }
    command(&redis, &["SCRIPT", "FLUSH"]).await;
    // Drain the current lease so the next request must ask Redis again.
    let mut ok = 0;
    for _ in 0..2000 {
        if admits(&f).await {
            ok += 1;
        }
    }
    assert_eq!(ok, 2000, "NOSCRIPT is recovered by reloading the script");
    assert!(evalsha_calls(&redis).await >= 2);

    // Kill Redis: local_fallback keeps admitting within the local share.
    redis.stop();
    sleep_to_next_window().await;
    let mut ok = 0;
    for _ in 0..100 {
        if admits(&f).await {
            ok += 1;
        }
    }
    assert_eq!(ok, 100, "fallback admits under the (large) local share");
    // Restart on the same port; after the back-off the rule uses Redis again.
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sleep_to_next_window().await;
    for _ in 0..10 {
        assert!(admits(&f).await);
    }
    assert!(evalsha_calls(&redis).await >= 1, "back on Redis");
}

fn sidecar_with(redis: &Redis, state: &State, rule: serde_json::Value) -> RateLimitFilter {
    let spec: RateLimitSpec =
        serde_json::from_value(serde_json::json!({ "rules": [rule] })).expect("spec");
    let config = spec
        .validate("filters.limit", &ValidateCx::control_plane())
        .expect("valid");
    let store =
        crate::store::RedisStore::new(&redis.url(), Duration::from_millis(200)).expect("store");
    RateLimitFilter::build(
        "limit",
        &config,
        &BuildCx {
            state,
            redis: Some(Arc::new(store)),
        },
    )
}

/// Three sidecars drain a global quota that does not refill during the test:
/// together they admit exactly the quota, leases notwithstanding.
async fn three_sidecars_admit_exactly(rule: serde_json::Value, quota: usize) {
    let redis = Redis::start();
    let states: Vec<State> = (0..3).map(|_| State::new()).collect();
    let sidecars: Vec<Arc<RateLimitFilter>> = states
        .iter()
        .map(|s| Arc::new(sidecar_with(&redis, s, rule.clone())))
        .collect();
    let admitted = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = sidecars
        .iter()
        .map(|f| {
            let f = f.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..quota {
                    if admits(&f).await {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), quota);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_token_bucket_is_exact() {
    three_sidecars_admit_exactly(
        serde_json::json!({"name": "b", "key": "route", "algorithm": "token_bucket",
            "rate": "1/h", "burst": 90, "scope": "global"}),
        90,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_sliding_window_is_exact() {
    three_sidecars_admit_exactly(
        serde_json::json!({"name": "s", "key": "route", "algorithm": "sliding_window",
            "limit": 120, "window": "1h", "scope": "global"}),
        120,
    )
    .await;
}
