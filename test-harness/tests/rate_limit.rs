//! The rate-limit filter end to end: the real `meshgate` binary in front of
//! the echo app, and for global rules several sidecars sharing a real Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_test_harness::{assert_error, get, EchoApp, Redis, Sidecar};

fn config(app: &str, redis: Option<&str>, routes: &str, filters: &str) -> String {
    let redis = redis
        .map(|url| format!("redis: {{ url: \"{url}\", timeout: 200ms }}"))
        .unwrap_or_default();
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}", request_timeout: 5s }}
app: {{ address: "{app}", connect_timeout: 500ms }}
admin: {{ listen: "${{ADMIN}}" }}
{redis}
routes:
{routes}
filters:
{filters}
"#
    )
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Sleeps until `offset` past the start of the next one-second window.
fn sleep_to_next_window(offset: Duration) {
    let into = now_ns() % 1_000_000_000;
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - into) + offset);
}

fn statuses(url: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(url).expect("request").status).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn rejects_with_429_json_and_ratelimit_header_fields() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(
        &app.addr(),
        None,
        r#"  - { name: api, match: { path_prefix: / }, filters: [limit] }"#,
        r#"  limit:
    type: rate_limit
    response_headers: true
    rules:
      - { name: per-route, key: route, algorithm: fixed_window, limit: 3, window: 1h }"#,
    ));
    for i in 0..3 {
        let rsp = get(&sidecar.url("/hello")).expect("request");
        assert_eq!(rsp.status, 200, "request {i}: {}", rsp.text());
        assert_eq!(
            rsp.header("ratelimit-policy"),
            Some("\"per-route\";q=3;w=3600")
        );
        let state = rsp.header("ratelimit").expect("RateLimit on success");
        assert!(
            state.starts_with(&format!("\"per-route\";r={};t=", 2 - i)),
            "{state}"
        );
    }
    let rsp = get(&sidecar.url("/hello")).expect("request");
    assert_error(&rsp, 429, "rate_limited");
    let body = rsp.json();
    assert_eq!(body["code"], 42901, "{body}");
    let retry: u64 = rsp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(
        rsp.header("ratelimit-policy"),
        Some("\"per-route\";q=3;w=3600")
    );
    assert!(rsp
        .header("ratelimit")
        .expect("RateLimit")
        .starts_with("\"per-route\";r=0;t="));
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("meshgate_ratelimit_limited_total"),
        "{metrics}"
    );
}

/// Total calls of the commands the limiter and heartbeats send.
fn redis_calls(redis: &Redis) -> (u64, u64) {
    let info = redis.cli(&["INFO", "commandstats"]);
    let calls = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let scripts = calls("evalsha") + calls("eval") + calls("script|load");
    // Each heartbeat is one pipeline of four commands (ZADD first).
    let heartbeats = calls("zadd") * 4;
    (scripts, heartbeats)
}

#[test]
fn three_sidecars_at_double_load_admit_within_two_percent_of_the_global_limit() {
    let mut redis = Redis::start();
    let app = EchoApp::start();
    let limit = 200u64;
    let windows = 5u64;
    let yaml = config(
        &app.addr(),
        Some(&redis.url()),
        r#"  - { name: api, match: { path_prefix: / }, filters: [limit] }"#,
        &format!(
            r#"  limit:
    type: rate_limit
    rules:
      - {{ name: api-total, key: route, algorithm: fixed_window, limit: {limit}, window: 1s, scope: global }}"#
        ),
    );
    let sidecars: Vec<Sidecar> = (0..3).map(|_| Sidecar::start(&yaml)).collect();
    let urls: Vec<String> = sidecars.iter().map(|s| s.url("/load")).collect();
    let (scripts_before, _) = redis_calls(&redis);

    // Whole windows only: start just after a boundary, stop just before one.
    sleep_to_next_window(Duration::from_millis(10));
    let start_window = now_ns() / 1_000_000_000;
    let end_ns = (start_window + windows) * 1_000_000_000 - 30_000_000;
    let flush_at = (start_window + 2) * 1_000_000_000 + 300_000_000;

    let sent = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        // 2x overload: 400 requests/s in total, spread over 3 sidecars and 4
        // paced senders each (so one slow answer does not stall the rate).
        let senders_per_sidecar = 4u64;
        let interval = Duration::from_nanos(1_000_000_000 * 3 * senders_per_sidecar / (2 * limit));
        let mut tasks = Vec::new();
        for url in &urls {
            for _ in 0..senders_per_sidecar {
                let (client, url) = (client.clone(), url.clone());
                let (sent, admitted, other) = (sent.clone(), admitted.clone(), other.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    loop {
                        tick.tick().await;
                        if now_ns() >= end_ns {
                            return;
                        }
                        let req = http::Request::get(url.as_str())
                            .body(Full::new(Bytes::new()))
                            .expect("request");
                        sent.fetch_add(1, Ordering::Relaxed);
                        match client.request(req).await {
                            Ok(rsp) => {
                                let status = rsp.status().as_u16();
                                let _ = rsp.into_body().collect().await;
                                match status {
                                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                                    429 => 0,
                                    _ => other.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                            Err(_) => {
                                other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
        }
        // Mid-run, drop the scripts: the sidecars must reload them (NOSCRIPT).
        let flush = tokio::task::spawn_blocking({
            let port = redis.port;
            move || {
                let wait = flush_at.saturating_sub(now_ns());
                std::thread::sleep(Duration::from_nanos(wait));
                std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "SCRIPT", "FLUSH"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .unwrap_or_default()
            }
        });
        for t in tasks {
            t.await.expect("sender");
        }
        assert_eq!(flush.await.expect("flush"), "OK");
    });
    let sent = sent.load(Ordering::Relaxed);
    let admitted = admitted.load(Ordering::Relaxed);
    let want = limit * windows;
    let (scripts_after, heartbeats) = redis_calls(&redis);
    let scripts = scripts_after - scripts_before;
    eprintln!(
        "sent {sent}, admitted {admitted} (limit {want}), {scripts} script calls, \
         {heartbeats} heartbeat commands"
    );
    assert_eq!(
        other.load(Ordering::Relaxed),
        0,
        "only 200 and 429 expected"
    );
    assert!(
        sent >= want * 16 / 10,
        "the load generator fell short of overload: {sent}"
    );
    assert!(admitted <= want, "admitted {admitted} > {want}");
    assert!(
        admitted * 100 >= want * 98,
        "admitted {admitted} < 98% of {want}"
    );
    assert!(
        (scripts + heartbeats) * 5 < sent,
        "{scripts} script + {heartbeats} heartbeat commands for {sent} requests"
    );
    redis.stop();
}

#[test]
fn redis_down_follows_each_failure_mode_and_recovers() {
    let mut redis = Redis::start();
    let app = EchoApp::start();
    let rule = |mode: &str| {
        format!(
            r#"    type: rate_limit
    rules:
      - {{ name: total, key: route, algorithm: fixed_window, limit: 10, window: 1s, scope: global,
          on_store_error: {mode}, fallback_peers: 2 }}"#
        )
    };
    let sidecar = Sidecar::start(&config(
        &app.addr(),
        Some(&redis.url()),
        r#"  - { name: open, match: { path: /open }, filters: [open] }
  - { name: closed, match: { path: /closed }, filters: [closed] }
  - { name: fallback, match: { path: /fallback }, filters: [fallback] }"#,
        &format!(
            "  open:\n{}\n  closed:\n{}\n  fallback:\n{}",
            rule("fail_open"),
            rule("fail_closed"),
            rule("local_fallback")
        ),
    ));
    let paths = ["/open", "/closed", "/fallback"];
    let round = || -> Vec<Vec<u16>> {
        sleep_to_next_window(Duration::from_millis(20));
        paths
            .iter()
            .map(|p| statuses(&sidecar.url(p), 15))
            .collect()
    };

    // Redis up: the global limit applies on every route.
    for (path, s) in paths.iter().zip(round()) {
        assert_eq!(count(&s, 200), 10, "{path}: {s:?}");
        assert_eq!(count(&s, 429), 5, "{path}: {s:?}");
    }

    redis.stop();
    let down = round();
    assert_eq!(count(&down[0], 200), 15, "fail_open admits: {:?}", down[0]);
    assert_eq!(
        count(&down[1], 503),
        15,
        "fail_closed answers 503: {:?}",
        down[1]
    );
    let rsp = get(&sidecar.url("/closed")).expect("request");
    assert_error(&rsp, 503, "rate_limit_store_unavailable");
    assert_eq!(
        count(&down[2], 200),
        5,
        "local_fallback enforces limit / fallback_peers: {:?}",
        down[2]
    );
    let metrics = sidecar.metrics();
    assert!(
        metrics.contains("meshgate_ratelimit_fallback_activations_total"),
        "{metrics}"
    );

    // Redis back (empty): after the back-off the global limit applies again.
    redis.restart();
    std::thread::sleep(Duration::from_millis(1600));
    let _ = round(); // the first requests probe and reconnect
    for (path, s) in paths.iter().zip(round()) {
        assert_eq!(count(&s, 200), 10, "after recovery {path}: {s:?}");
    }
    let (scripts, _) = redis_calls(&redis);
    assert!(scripts > 0, "leases come from Redis again");
}

#[test]
fn concurrency_permits_are_held_until_the_response_is_sent() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(
        &app.addr(),
        None,
        r#"  - { name: api, match: { path_prefix: / }, filters: [limit] }"#,
        r#"  limit:
    type: rate_limit
    rules:
      - { name: in-flight, key: route, algorithm: concurrency, max: 2 }"#,
    ));
    let slow = sidecar.url("/slow?ms=1500");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = slow.clone();
            std::thread::spawn(move || get(&url).expect("slow request").status)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rsp = get(&sidecar.url("/fast")).expect("request");
    assert_eq!(rsp.status, 429, "two in flight: {}", rsp.text());
    for h in held {
        assert_eq!(h.join().expect("thread"), 200);
    }
    assert_eq!(get(&sidecar.url("/fast")).expect("request").status, 200);
}

#[test]
fn reload_keeps_counts_and_applies_the_new_limit() {
    let app = EchoApp::start();
    let yaml = |limit: u32| {
        config(
            &app.addr(),
            None,
            r#"  - { name: api, match: { path_prefix: / }, filters: [limit] }"#,
            &format!(
                r#"  limit:
    type: rate_limit
    rules:
      - {{ name: per-route, key: route, algorithm: fixed_window, limit: {limit}, window: 1h }}"#
            ),
        )
    };
    let sidecar = Sidecar::start(&yaml(5));
    let url = sidecar.url("/x");
    assert_eq!(count(&statuses(&url, 3), 200), 3);
    let before = sidecar.version();
    sidecar.write_config(&yaml(6));
    sidecar.wait_version_change(&before);
    let after = statuses(&url, 6);
    assert_eq!(
        count(&after, 200),
        3,
        "3 counted before the reload: {after:?}"
    );
}

#[test]
fn a_paused_redis_costs_at_most_the_store_timeout() {
    let redis = Redis::start();
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(
        &app.addr(),
        Some(&redis.url()),
        r#"  - { name: api, match: { path_prefix: / }, filters: [limit] }"#,
        r#"  limit:
    type: rate_limit
    rules:
      - { name: total, key: route, algorithm: fixed_window, limit: 10, window: 1s, scope: global,
          on_store_error: local_fallback, fallback_peers: 2 }"#,
    ));
    let url = sidecar.url("/x");
    assert_eq!(get(&url).expect("warm up").status, 200);
    // Redis stops answering (but keeps the connection) for 4 seconds.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "4000", "ALL"]).trim(), "OK");
    sleep_to_next_window(Duration::from_millis(20));
    let started = std::time::Instant::now();
    let s = statuses(&url, 15);
    let took = started.elapsed();
    assert_eq!(count(&s, 200), 5, "fallback share while Redis hangs: {s:?}");
    // One request waits for the 200ms timeout; the others skip Redis.
    assert!(took < Duration::from_millis(900), "took {took:?}");
}
