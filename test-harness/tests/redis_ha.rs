//! Global limits, the Redis nonce store and Redis sessions on Redis Cluster
//! (three primaries, one replica each) and on Sentinel (a primary, a
//! replica, three sentinels): real `redis-server` processes and two real
//! sidecars. The failover tests kill a primary under load, assert that each
//! rule's documented failure mode applies while the servers fail over, that
//! state survives, that no accepted nonce can be replayed afterwards (the
//! replica `WAIT`), and print the measured windows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::redis_ha::{cli, RedisCluster, RedisSentinel, SENTINEL_MASTER};
use meshgate_test_harness::session_app::SessionApp;
use meshgate_test_harness::{hmac_args, py_sign, request, HttpResult, Sidecar};

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
const COMPONENTS: &str = "@method,@authority,@path,@query,content-digest";

const CONFIG: &str = r#"
inbound: { listen: "${INBOUND}", request_timeout: 5s }
app: { address: "@APP@", connect_timeout: 500ms }
admin: { listen: "${ADMIN}" }
@REDIS@
routes:
  - { name: login, match: { path: /login }, filters: [anonymous_ok] }
  - { name: me, match: { path_prefix: /me }, filters: [session] }
  - { name: logout, match: { path: /logout }, filters: [session] }
  - { name: pay, match: { path: /pay }, filters: [verify] }
  - { name: shared, match: { path: /shared }, filters: [shared] }
  - { name: open, match: { path: /open }, filters: [open] }
  - { name: closed, match: { path: /closed }, filters: [closed] }
  - { name: fallback, match: { path: /fallback }, filters: [fallback] }
filters:
  anonymous_ok: { type: session, mode: session, store: redis, optional: true, cache_ttl: 1s }
  session: { type: session, mode: session, store: redis, cache_ttl: 1s }
  verify:
    type: signature
    keys:
      - { id: app-1, alg: hmac-sha256, secret_base64: "@SECRET@" }
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
    max_age: 300s
    require_nonce: true
    replay_store: redis
  shared:
    type: rate_limit
    rules:
      - { name: total, key: route, algorithm: fixed_window, limit: 20, window: 3s, scope: global, on_store_error: fail_closed }
  open:
    type: rate_limit
    rules:
      - { name: total, key: route, algorithm: fixed_window, limit: 1000, window: 1s, scope: global, on_store_error: fail_open }
  closed:
    type: rate_limit
    rules:
      - { name: total, key: route, algorithm: fixed_window, limit: 1000, window: 1s, scope: global, on_store_error: fail_closed }
  fallback:
    type: rate_limit
    rules:
      - { name: total, key: route, algorithm: fixed_window, limit: 1000, window: 1s, scope: global, on_store_error: local_fallback, fallback_peers: 2 }
"#;

fn config(app_port: u16, redis: &str) -> String {
    CONFIG
        .replace("@APP@", &format!("127.0.0.1:{app_port}"))
        .replace("@REDIS@", redis)
        .replace("@SECRET@", SECRET)
}

fn cluster_section(cluster: &RedisCluster) -> String {
    format!(
        "redis: {{ cluster: {}, timeout: 200ms }}",
        cluster.yaml_nodes()
    )
}

fn sentinel_section(group: &RedisSentinel) -> String {
    format!(
        "redis: {{ sentinel: {{ master: {SENTINEL_MASTER}, nodes: {} }}, timeout: 200ms }}",
        group.yaml_nodes()
    )
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> HttpResult {
    let mut builder = Request::get(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    request(builder.body(Bytes::new()).expect("request")).expect("response")
}

fn error_of(rsp: &HttpResult) -> String {
    serde_json::from_slice::<serde_json::Value>(&rsp.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn login(sidecar: &Sidecar, user: &str) -> String {
    let rsp = get_with(&sidecar.url(&format!("/login?user={user}&tenant=t-1")), &[]);
    assert_eq!(rsp.status, 200, "login: {}", rsp.text());
    let cookie = rsp
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let pair = cookie.split(';').next().expect("pair");
    pair.split_once('=').expect("name=value").1.to_string()
}

fn with_session(sidecar: &Sidecar, path: &str, id: &str) -> HttpResult {
    get_with(
        &sidecar.url(path),
        &[("cookie", &format!("meshgate_session={id}"))],
    )
}

/// Headers of a POST to `url` signed by the Python package with `nonce`.
fn signed(url: &str, nonce: &str) -> Vec<(String, String)> {
    let mut args = hmac_args("app-1", SECRET, COMPONENTS).to_vec();
    args.extend(["--nonce", nonce]);
    py_sign("POST", url, Some("x"), &args)
}

fn post(url: &str, headers: &[(String, String)]) -> HttpResult {
    let mut req = Request::post(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    request(req.body(Bytes::from_static(b"x")).expect("request")).expect("send")
}

fn pay(sidecar: &Sidecar, nonce: &str) -> (u16, String) {
    let url = sidecar.url("/pay");
    let rsp = post(&url, &signed(&url, nonce));
    (rsp.status, error_of(&rsp))
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{nanos}")
}

/// Sleeps to `offset` past the start of the next 3 s window (windows are
/// aligned to multiples of their length in Redis' clock).
fn sleep_to_next_window(offset: Duration) {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() % 3000) as u64)
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(3000 - into) + offset);
}

/// Limits, nonces and sessions shared by two sidecars on `redis`.
fn assert_shared_between_two_sidecars(redis: &str) {
    let app = SessionApp::start();
    let config = config(app.port, redis);
    let a = Sidecar::start(&config);
    let b = Sidecar::start(&config);

    // Sessions: issued through A, valid through B; a logout through B is
    // refused on B at once.
    let id = login(&a, "u-42");
    let rsp = with_session(&b, "/me", &id);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.json()["headers"]["x-meshgate-user"], "u-42");
    assert_eq!(with_session(&b, "/logout", &id).status, 200);
    let rsp = with_session(&b, "/me", &id);
    assert_eq!(
        (rsp.status, error_of(&rsp).as_str()),
        (401, "session_revoked")
    );

    // Nonces: used through A, replayed through B (freshly signed for B).
    let nonce = unique("shared");
    assert_eq!(pay(&a, &nonce), (200, String::new()));
    assert_eq!(pay(&b, &nonce), (401, "signature_replayed".into()));
    assert_eq!(pay(&a, &nonce), (401, "signature_replayed".into()));

    // Limits: one 3 s window's 20 shared by both sidecars.
    let mut admitted = 0;
    let mut b_refused = 0;
    for _ in 0..3 {
        sleep_to_next_window(Duration::from_millis(30));
        let started = Instant::now();
        let from_a: Vec<u16> = (0..15)
            .map(|_| get_with(&a.url("/shared"), &[]).status)
            .collect();
        let from_b: Vec<u16> = (0..15)
            .map(|_| get_with(&b.url("/shared"), &[]).status)
            .collect();
        if started.elapsed() > Duration::from_millis(2800) {
            eprintln!("round took {:?}, crossed a window", started.elapsed());
            continue; // this round proves nothing
        }
        let ok = |s: &[u16]| s.iter().filter(|s| **s == 200).count();
        admitted = ok(&from_a) + ok(&from_b);
        b_refused = from_b.iter().filter(|s| **s == 429).count();
        assert!(
            from_a.iter().chain(&from_b).all(|s| *s == 200 || *s == 429),
            "{from_a:?} {from_b:?}"
        );
        break;
    }
    assert!(
        (15..=20).contains(&admitted),
        "both sidecars together admitted {admitted} of a limit of 20"
    );
    assert!(b_refused > 0, "B did not see what A spent");
}

#[test]
fn cluster_shares_limits_nonces_and_sessions_between_two_sidecars() {
    let cluster = RedisCluster::start(3);
    assert_shared_between_two_sidecars(&cluster_section(&cluster));
    // The keys are spread over the primaries by their hash tags.
    let mut found = Vec::new();
    for addr in cluster.addrs() {
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("host:port");
        found.extend(
            cli(port, &["--scan", "--pattern", "*meshgate*"])
                .lines()
                .map(str::to_string),
        );
    }
    assert!(
        found
            .iter()
            .any(|k| k.starts_with("meshgate:sig-nonce:v2:{k")),
        "{found:?}"
    );
    assert!(found.iter().any(|k| k.starts_with("{s")), "{found:?}");
    assert!(
        found.iter().any(|k| k.starts_with("{meshgate:rl:shared/")),
        "{found:?}"
    );
}

#[test]
fn sentinel_shares_limits_nonces_and_sessions_between_two_sidecars() {
    let group = RedisSentinel::start();
    assert_shared_between_two_sidecars(&sentinel_section(&group));
    // Sentinel keeps the single-server key names.
    let keys = group.cli(&["--scan", "--pattern", "meshgate:sig-nonce:v2:*"]);
    assert!(
        keys.lines().any(|k| k == "meshgate:sig-nonce:v2:app-1"),
        "{keys}"
    );
}

/// What one route answered over time.
#[derive(Default)]
struct Record {
    answers: Vec<(Duration, u16, String)>,
}

impl Record {
    fn statuses(&self) -> std::collections::BTreeMap<(u16, String), usize> {
        let mut m = std::collections::BTreeMap::new();
        for (_, s, e) in &self.answers {
            *m.entry((*s, e.clone())).or_default() += 1;
        }
        m
    }

    /// The last time this route answered `status`, from the start.
    fn last(&self, status: u16) -> Option<Duration> {
        self.answers
            .iter()
            .filter(|(_, s, _)| *s == status)
            .map(|(t, _, _)| *t)
            .max()
    }
}

/// Loads the limit and session routes of `sidecar` until `stop`.
fn load(
    sidecar: &Sidecar,
    session: &str,
    started: Instant,
    stop: &AtomicBool,
) -> Vec<(&'static str, Record)> {
    let routes = ["/open", "/closed", "/fallback", "/me"];
    std::thread::scope(|s| {
        let handles: Vec<_> = routes
            .iter()
            .map(|path| {
                let url = sidecar.url(path);
                s.spawn(move || {
                    let mut record = Record::default();
                    let cookie = format!("meshgate_session={session}");
                    while !stop.load(Ordering::Relaxed) {
                        let rsp = get_with(&url, &[("cookie", &cookie)]);
                        record
                            .answers
                            .push((started.elapsed(), rsp.status, error_of(&rsp)));
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    (*path, record)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load"))
            .collect()
    })
}

/// A signed payment sent during a failover: when, status, error code, which nonce.
type Payment = (Duration, u16, String, usize);

/// Kills a primary (`kill`, returning how long the servers took to fail
/// over) while loading the sidecar, then asserts every rule's failure mode
/// and that no accepted nonce can be replayed.
fn failover_under_load(topology: &str, redis: &str, kill: impl FnOnce() -> Duration) {
    let app = SessionApp::start();
    let sidecar = Sidecar::start(&config(app.port, redis));
    let session = login(&sidecar, "u-7");
    assert_eq!(with_session(&sidecar, "/me", &session).status, 200);

    // Signed requests with fresh nonces, signed ahead so they can be sent
    // quickly across the failover.
    let url = sidecar.url("/pay");
    let nonces: Vec<Vec<(String, String)>> = (0..40)
        .map(|i| signed(&url, &unique(&format!("fo-{i}"))))
        .collect();

    let started = Instant::now();
    let stop = AtomicBool::new(false);
    let kill_at = Mutex::new(Duration::ZERO);
    let redis_window = Mutex::new(Duration::ZERO);
    let paid: Arc<Mutex<Vec<Payment>>> = Arc::default();
    let records = std::thread::scope(|s| {
        let loader = s.spawn(|| load(&sidecar, &session, started, &stop));
        let payer = s.spawn(|| {
            for (i, headers) in nonces.iter().enumerate() {
                let rsp = post(&url, headers);
                paid.lock()
                    .expect("lock")
                    .push((started.elapsed(), rsp.status, error_of(&rsp), i));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_millis(1200));
        *kill_at.lock().expect("lock") = started.elapsed();
        *redis_window.lock().expect("lock") = kill();
        // Run on until every route is back on Redis.
        std::thread::sleep(Duration::from_secs(4));
        payer.join().expect("payer");
        stop.store(true, Ordering::Relaxed);
        loader.join().expect("loader")
    });
    let kill_at = *kill_at.lock().expect("lock");
    let redis_window = *redis_window.lock().expect("lock");

    let mut windows = Vec::new();
    for (path, record) in &records {
        let statuses = record.statuses();
        for (status, error) in statuses.keys() {
            let allowed = match *path {
                // fail_open admits; local_fallback enforces 1000/2 per second locally.
                "/open" | "/fallback" => *status == 200,
                "/closed" => {
                    *status == 200 || (*status == 503 && error == "rate_limit_store_unavailable")
                }
                // Cached sessions keep working; others get 503 until Redis answers.
                _ => *status == 200 || (*status == 503 && error == "session_store_unavailable"),
            };
            assert!(allowed, "{topology} {path}: {statuses:?}");
        }
        let last_ok = record.last(200).unwrap_or_default();
        assert!(
            last_ok > kill_at + redis_window,
            "{topology} {path} never recovered: {statuses:?}"
        );
        if let Some(last_503) = record.last(503) {
            windows.push(format!(
                "{path} 503 until {:?} after the kill",
                last_503.saturating_sub(kill_at)
            ));
        }
        eprintln!("{topology} {path}: {statuses:?}");
    }

    // Every nonce that was accepted is refused now, through the new primary.
    let paid = paid.lock().expect("lock").clone();
    let mut accepted = 0;
    let mut refused_during = 0;
    for (_, status, error, i) in &paid {
        match (*status, error.as_str()) {
            (200, _) => {
                accepted += 1;
                let rsp = post(&url, &nonces[*i]);
                assert_eq!(
                    (rsp.status, error_of(&rsp).as_str()),
                    (401, "signature_replayed"),
                    "{topology}: nonce {i} accepted before the failover was replayed after it"
                );
            }
            (503, "replay_store_unavailable") => refused_during += 1,
            other => panic!("{topology}: nonce {i} answered {other:?}"),
        }
    }
    // Before the kill nonces are accepted; after the failover the new
    // primary has no replica until one is attached again, so the wait
    // refuses them (docs/signature.md).
    assert!(
        accepted >= 5,
        "{topology}: only {accepted} of 40 nonces accepted"
    );
    eprintln!(
        "MEASURED {topology}: servers failed over in {redis_window:?}; {}; \
         nonces: {accepted} accepted (none replayable after), {refused_during} refused with 503",
        windows.join(", ")
    );
    // Limits use Redis again.
    assert_eq!(get_with(&sidecar.url("/closed"), &[]).status, 200);
}

#[test]
fn cluster_primary_killed_under_load_follows_each_fail_mode() {
    let mut cluster = RedisCluster::start(3);
    let redis = cluster_section(&cluster);
    // Kill the primary holding the nonce set, so the replay check crosses
    // the failover; with full slot coverage required, every slot is refused
    // while that primary is marked failed.
    let tag = {
        let d = ring::digest::digest(&ring::digest::SHA256, b"app-1");
        d.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let nonce_key = format!("meshgate:sig-nonce:v2:{{k{tag}}}app-1");
    let victim = cluster.primary_of(&nonce_key);
    failover_under_load("cluster", &redis, || {
        cluster.kill(victim);
        cluster.wait_failover(&nonce_key, victim, Duration::from_secs(30))
    });
}

#[test]
fn sentinel_primary_killed_under_load_follows_each_fail_mode() {
    let mut group = RedisSentinel::start();
    let redis = sentinel_section(&group);
    failover_under_load("sentinel", &redis, || {
        let old = group.kill_primary();
        group.wait_failover(old, Duration::from_secs(30))
    });
}
