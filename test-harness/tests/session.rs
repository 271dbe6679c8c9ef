//! End-to-end tests of `type: session` through the real sidecar: JWTs minted
//! by PyJWT, a remote JWKS that rotates, and server-side sessions shared by
//! two sidecars through a real Redis.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meshgate_test_harness::session_app::SessionApp;
use meshgate_test_harness::{
    assert_error, free_port, port_open, scripts_dir, send_request, wait_until, EchoApp, HttpResult,
    Proc, Redis, Sidecar,
};
use serde_json::Value;

const ISS: &str = "https://id.example.com";
const AUD: &str = "wallet";

fn script(name: &str) -> PathBuf {
    scripts_dir().join(name)
}

fn jwt_tool(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script("jwt_tool.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "jwt_tool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> HttpResult {
    send_request("GET", url, headers, "")
}

fn bearer(url: &str, token: &str) -> HttpResult {
    get_with(url, &[("authorization", &format!("Bearer {token}"))])
}

fn jwt_config(app: &str, keys: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    filters: [login]
  - name: public
    match: {{ path_prefix: /public/ }}
    filters: [maybe]
filters:
  login:
    type: session
    mode: jwt
    {keys}
    issuer: {ISS}
    audiences: [{AUD}]
    leeway: 5s
    claims_to_headers: {{ sub: x-meshgate-user, tenant: x-meshgate-tenant }}
  maybe:
    type: session
    mode: jwt
    {keys}
    issuer: {ISS}
    audiences: [{AUD}]
    optional: true
"#
    )
}

#[test]
fn pyjwt_tokens_through_the_sidecar() {
    let app = EchoApp::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    jwt_tool(&["keys", d, "k1"]);
    let jwks = dir.path().join("k1-jwks.json");
    let sidecar = Sidecar::start(&jwt_config(
        &app.addr(),
        &format!("jwks_file: {}", jwks.display()),
    ));
    let tokens: Value =
        serde_json::from_str(&jwt_tool(&["suite", d, "k1", ISS, AUD])).expect("suite json");

    for alg in ["ES256", "RS256", "PS256", "EdDSA", "HS256"] {
        let token = tokens[format!("ok_{alg}")].as_str().expect("token");
        let rsp = get_with(
            &sidecar.url("/api/me"),
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-meshgate-user", "forged"),
            ],
        );
        assert_eq!(rsp.status, 200, "{alg}: {}", rsp.text());
        let seen = &rsp.json()["headers"];
        assert_eq!(
            seen["x-meshgate-user"],
            format!("u-{}", alg.to_lowercase()),
            "{alg}"
        );
        assert_eq!(seen["x-meshgate-tenant"], "t-1");
        assert!(
            seen.get("authorization").is_none(),
            "token reached the app: {seen}"
        );
    }

    let cases = [
        ("expired", "token_expired"),
        ("not_yet_valid", "token_invalid"),
        ("wrong_issuer", "token_invalid"),
        ("wrong_audience", "token_invalid"),
        ("bad_signature", "token_invalid"),
        ("alg_confusion", "token_invalid"),
        ("alg_none", "token_invalid"),
    ];
    for (case, reason) in cases {
        let rsp = bearer(
            &sidecar.url("/api/me"),
            tokens[case].as_str().expect("token"),
        );
        assert_eq!(rsp.status, 401, "{case}: {}", rsp.text());
        assert_eq!(rsp.error(), reason, "{case}");
        assert_error(&rsp, 401, reason);
    }
    let rsp = get_with(&sidecar.url("/api/me"), &[]);
    assert_error(&rsp, 401, "login_required");

    // optional: anonymous passes, a bad token does not
    let rsp = get_with(&sidecar.url("/public/x"), &[]);
    assert_eq!(rsp.status, 200);
    assert!(rsp.json()["headers"].get("x-meshgate-user").is_none());
    let rsp = bearer(
        &sidecar.url("/public/x"),
        tokens["expired"].as_str().expect("token"),
    );
    assert_error(&rsp, 401, "token_expired");

    let metrics = sidecar.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meshgate_filter_rejections_total")
                && l.contains("token_invalid")),
        "rejections are counted:\n{metrics}"
    );
}

/// Serves `dir` over HTTP with Python's http.server.
fn file_server(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(dir);
    let proc = Proc::spawn("jwks-server", &mut cmd, dir.join("server.log"));
    assert!(
        wait_until(Duration::from_secs(10), || port_open(port)),
        "jwks server did not start"
    );
    (proc, port)
}

fn publish(dir: &Path, jwks_file: &Path) {
    let tmp = dir.join("jwks.json.tmp");
    std::fs::copy(jwks_file, &tmp).expect("copy jwks");
    std::fs::rename(&tmp, dir.join("jwks.json")).expect("publish jwks");
}

#[test]
fn remote_jwks_rotation_and_outage() {
    let app = EchoApp::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let served = tempfile::tempdir().expect("tempdir");
    let k = keys.path().to_str().expect("utf-8");
    jwt_tool(&["keys", k, "k1"]);
    jwt_tool(&["keys", k, "k2"]);
    publish(served.path(), &keys.path().join("k1-jwks.json"));
    let (mut server, port) = file_server(served.path());
    let source = format!(
        "jwks_url: http://127.0.0.1:{port}/jwks.json\n    jwks_refresh: 1h\n    jwks_min_refresh: 1s\n    jwks_max_stale: 1h"
    );
    let sidecar = Sidecar::start(&jwt_config(&app.addr(), &source));
    let url = sidecar.url("/api/me");

    let t1 = jwt_tool(&["mint", k, "k1", "ES256", "u-1", ISS, AUD]);
    let t2 = jwt_tool(&["mint", k, "k2", "EdDSA", "u-2", ISS, AUD]);
    assert_eq!(bearer(&url, &t1).status, 200);
    let rsp = bearer(&url, &t2);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "token_invalid"),
        "k2 not published yet"
    );
    assert_error(&rsp, 401, "token_invalid");

    // The identity provider rotates: k2 replaces k1. An unknown kid triggers a
    // refresh (at most one per jwks_min_refresh).
    publish(served.path(), &keys.path().join("k2-jwks.json"));
    std::thread::sleep(Duration::from_millis(1100));
    let rsp = bearer(&url, &t2);
    assert_eq!(rsp.status, 200, "rotated key picked up: {}", rsp.text());
    assert_eq!(rsp.json()["headers"]["x-meshgate-user"], "u-2");
    let rsp = bearer(&url, &t1);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "token_invalid"),
        "retired key refused"
    );
    assert_error(&rsp, 401, "token_invalid");

    // JWKS endpoint down: the cached keys keep serving.
    server.kill();
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(bearer(&url, &t2).status, 200);
    let rsp = bearer(&url, &t1);
    assert_error(&rsp, 401, "token_invalid");
    assert_eq!(bearer(&url, &t2).status, 200);
}

#[test]
fn remote_jwks_unreachable_from_the_start_fails_closed() {
    let app = EchoApp::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let k = keys.path().to_str().expect("utf-8");
    jwt_tool(&["keys", k, "k1"]);
    let port = free_port(); // nothing listens here
    let source = format!("jwks_url: http://127.0.0.1:{port}/jwks.json\n    jwks_timeout: 500ms");
    let sidecar = Sidecar::start(&jwt_config(&app.addr(), &source));
    let t1 = jwt_tool(&["mint", k, "k1", "ES256", "u-1", ISS, AUD]);
    let rsp = bearer(&sidecar.url("/api/me"), &t1);
    assert_error(&rsp, 503, "session_store_unavailable");
}

#[test]
fn remote_jwks_over_https_with_a_private_ca() {
    let app = EchoApp::start();
    let keys = tempfile::tempdir().expect("tempdir");
    let served = tempfile::tempdir().expect("tempdir");
    let k = keys.path().to_str().expect("utf-8");
    jwt_tool(&["keys", k, "k1"]);
    publish(served.path(), &keys.path().join("k1-jwks.json"));
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(script("https_file_server.py"))
        .arg(served.path())
        .arg(port.to_string());
    let _server = Proc::spawn("jwks-https", &mut cmd, keys.path().join("https.log"));
    let ca = served.path().join("ca.pem");
    assert!(
        wait_until(Duration::from_secs(15), || ca.exists()),
        "https server did not start"
    );
    let t1 = jwt_tool(&["mint", k, "k1", "RS256", "u-1", ISS, AUD]);

    let trusted = format!(
        "jwks_url: https://127.0.0.1:{port}/jwks.json\n    jwks_ca_file: {}",
        ca.display()
    );
    let sidecar = Sidecar::start(&jwt_config(&app.addr(), &trusted));
    let rsp = bearer(&sidecar.url("/api/me"), &t1);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.json()["headers"]["x-meshgate-user"], "u-1");

    // Without the private CA the server is not trusted: no keys, fail closed.
    let untrusted = format!("jwks_url: https://127.0.0.1:{port}/jwks.json\n    jwks_timeout: 2s");
    let sidecar = Sidecar::start(&jwt_config(&app.addr(), &untrusted));
    let rsp = bearer(&sidecar.url("/api/me"), &t1);
    assert_error(&rsp, 503, "session_store_unavailable");
}

// ---------------------------------------------------------------- sessions

const BUDGET: Duration = Duration::from_secs(3);

fn session_config(app_port: u16, redis: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "127.0.0.1:{app_port}" }}
admin: {{ listen: "${{ADMIN}}" }}
redis: {{ url: "{redis}", timeout: 200ms }}
routes:
  - name: login
    match: {{ path: /login }}
    filters: [anonymous_ok]
  - name: api
    match: {{ path_prefix: / }}
    filters: [session]
filters:
  anonymous_ok:
    type: session
    mode: session
    store: redis
    optional: true
    cache_ttl: 3s
  session:
    type: session
    mode: session
    store: redis
    cache_ttl: 3s
    idle_timeout: 10m
    claims_to_headers: {{ tenant: x-meshgate-tenant }}
"#
    )
}

fn login(sidecar: &Sidecar, user: &str) -> String {
    let rsp = get_with(
        &sidecar.url(&format!("/login?user={user}&tenant=t-9&ttl=2h")),
        &[],
    );
    assert_eq!(rsp.status, 200, "login: {}", rsp.text());
    assert!(
        rsp.header("x-meshgate-session-set").is_none(),
        "instruction stripped"
    );
    let set_cookie = rsp
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    assert!(set_cookie.contains("Max-Age=7200"), "{set_cookie}");
    let pair = set_cookie.split(';').next().expect("pair");
    let (name, id) = pair.split_once('=').expect("name=value");
    assert_eq!(name, "meshgate_session");
    id.to_string()
}

fn with_session(sidecar: &Sidecar, path: &str, id: &str) -> HttpResult {
    get_with(
        &sidecar.url(path),
        &[("cookie", &format!("theme=dark; meshgate_session={id}"))],
    )
}

fn getex_calls(redis: &Redis) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_getex:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sessions_shared_by_two_sidecars_through_redis() {
    let mut redis = Redis::start();
    let app = SessionApp::start();
    let config = session_config(app.port, &redis.url());
    let a = Sidecar::start(&config);
    let b = Sidecar::start(&config);

    // Issued through A, valid through B; the app sees identity, not the id.
    let id = login(&a, "u-42");
    let rsp = with_session(&b, "/whoami", &id);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let seen = &rsp.json()["headers"];
    assert_eq!(seen["x-meshgate-user"], "u-42");
    assert_eq!(seen["x-meshgate-tenant"], "t-9");
    assert_eq!(
        seen["cookie"], "theme=dark",
        "session id stripped before the app"
    );
    let rsp = get_with(&b.url("/whoami"), &[]);
    assert_error(&rsp, 401, "login_required");

    // 100 concurrent requests with one id B has never seen: one Redis read.
    let fresh = login(&a, "u-43");
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let url = b.url("/burst");
    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let url = url.clone();
                let fresh = fresh.clone();
                s.spawn(move || {
                    get_with(&url, &[("cookie", &format!("meshgate_session={fresh}"))]).status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        started.elapsed() < BUDGET,
        "burst slower than the cache TTL; the count below would not be meaningful"
    );
    assert_eq!(
        getex_calls(&redis),
        1,
        "{}",
        redis.cli(&["INFO", "commandstats"])
    );

    // Logout through A: B refuses the session within the revocation budget.
    assert_eq!(
        with_session(&b, "/whoami", &id).status,
        200,
        "B has it cached"
    );
    let logout = with_session(&a, "/logout", &id);
    assert_eq!(logout.status, 200);
    assert!(logout.header("x-meshgate-session-clear").is_none());
    let expired = logout.header("set-cookie").expect("cookie removal");
    assert!(
        expired.starts_with("meshgate_session=;") && expired.contains("Max-Age=0"),
        "{expired}"
    );
    let rsp = with_session(&a, "/whoami", &id);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "session_revoked"),
        "A at once"
    );
    assert_error(&rsp, 401, "session_revoked");
    let revoked_at = Instant::now();
    assert!(
        wait_until(BUDGET + Duration::from_millis(500), || with_session(
            &b, "/whoami", &id
        )
        .status
            == 401),
        "B still accepts a revoked session after the budget"
    );
    assert!(revoked_at.elapsed() <= BUDGET + Duration::from_millis(500));
    assert_error(&with_session(&b, "/whoami", &id), 401, "session_revoked");

    // Redis stops: sessions B has cached keep working until their cache TTL;
    // uncached ones fail closed; nothing new can be issued.
    let cached = login(&a, "u-44");
    let uncached = login(&a, "u-45");
    assert_eq!(with_session(&b, "/whoami", &cached).status, 200);
    redis.stop();
    let stopped_at = Instant::now();
    let rsp = with_session(&b, "/whoami", &cached);
    assert!(stopped_at.elapsed() < BUDGET);
    assert_eq!(
        rsp.status,
        200,
        "cached session during the outage: {}",
        rsp.text()
    );
    let rsp = with_session(&b, "/whoami", &uncached);
    assert_error(&rsp, 503, "session_store_unavailable");
    let rsp = get_with(&a.url("/login?user=u-46"), &[]);
    assert_error(&rsp, 503, "session_store_unavailable");
    std::thread::sleep(BUDGET.saturating_sub(stopped_at.elapsed()) + Duration::from_millis(200));
    let rsp = with_session(&b, "/whoami", &cached);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (503, "session_store_unavailable"),
        "after the cache TTL"
    );
    assert_error(&rsp, 503, "session_store_unavailable");

    // Redis is back (empty: it runs without persistence): no more 503s, old
    // sessions are unknown, new logins work everywhere.
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(5), || with_session(
            &b, "/whoami", &cached
        )
        .status
            == 401),
        "B did not recover"
    );
    assert_error(
        &with_session(&b, "/whoami", &cached),
        401,
        "session_expired",
    );
    let again = login(&a, "u-47");
    let rsp = with_session(&b, "/whoami", &again);
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["headers"]["x-meshgate-user"], "u-47");

    let metrics = b.metrics();
    assert!(
        metrics.contains("session_store_unavailable"),
        "rejections counted:\n{metrics}"
    );
}

// ------------------------------------------------ bounds and identity keys

fn bounded_config(app_port: u16, store: &str, extra_top: &str, extra_filters: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "127.0.0.1:{app_port}" }}
admin: {{ listen: "${{ADMIN}}" }}
{extra_top}
routes:
  - name: login
    match: {{ path: /login }}
    filters: [anonymous_ok]
  - name: limited
    match: {{ path_prefix: /limited/ }}
    filters: [session, per_user]
  - name: api
    match: {{ path_prefix: / }}
    filters: [session]
filters:
  anonymous_ok:
    type: session
    mode: session
    store: {store}
    optional: true
    cache_ttl: 500ms
{extra_filters}
  session:
    type: session
    mode: session
    store: {store}
    cache_ttl: 500ms
    claims_to_headers: {{ tenant: x-meshgate-tenant }}
{extra_filters}
  per_user:
    type: rate_limit
    rules:
      - {{ name: per-user, key: "header:x-meshgate-user", algorithm: fixed_window, limit: 2, window: 1h }}
"#
    )
}

#[test]
fn full_memory_store_evicts_the_least_recently_used_session() {
    let app = SessionApp::start();
    let sidecar = Sidecar::start(&bounded_config(
        app.port,
        "memory",
        "",
        "    cache_max_entries: 4",
    ));
    let ids: Vec<String> = (1..=4)
        .map(|i| login(&sidecar, &format!("u-{i}")))
        .collect();
    // every session but the first is used again
    for id in &ids[1..] {
        assert_eq!(with_session(&sidecar, "/whoami", id).status, 200);
    }
    // A store full of live sessions used to answer 503 to every login.
    let fifth = login(&sidecar, "u-5");
    let rsp = with_session(&sidecar, "/whoami", &ids[0]);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "session_expired"),
        "the least recently used session made room"
    );
    assert_error(&rsp, 401, "session_expired");
    for id in ids[1..].iter().chain([&fifth]) {
        let rsp = with_session(&sidecar, "/whoami", id);
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    }
    assert!(
        sidecar
            .metrics()
            .contains("meshgate_sessions_evicted_total{reason=\"store_full\"}"),
        "{}",
        sidecar.metrics()
    );
}

/// 17 logins of one subject: the first (least recently used) session is
/// revoked, the other 16 work, another subject is not affected.
fn assert_subject_cap(sidecar: &Sidecar, budget: Duration) {
    let other = login(sidecar, "u-other");
    let ids: Vec<String> = (0..17).map(|_| login(sidecar, "u-many")).collect();
    let first = || with_session(sidecar, "/whoami", &ids[0]);
    assert!(
        wait_until(budget, || {
            let rsp = first();
            (rsp.status, rsp.error().as_str()) == (401, "session_revoked")
        }),
        "the 17th login did not revoke the first session: {:?}",
        first()
    );
    assert_error(&first(), 401, "session_revoked");
    for id in ids[1..].iter().chain([&other]) {
        let rsp = with_session(sidecar, "/whoami", id);
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    }
}

#[test]
fn sessions_per_subject_are_capped_in_the_memory_store() {
    let app = SessionApp::start();
    let sidecar = Sidecar::start(&bounded_config(app.port, "memory", "", ""));
    assert_subject_cap(&sidecar, Duration::ZERO);
}

#[test]
fn redis_store_evicts_per_subject_and_keeps_ttls_consistent() {
    let redis = Redis::start();
    let app = SessionApp::start();
    let config = bounded_config(
        app.port,
        "redis",
        &format!("redis: {{ url: \"{}\", timeout: 500ms }}", redis.url()),
        "    idle_timeout: 10m",
    );
    let a = Sidecar::start(&config);
    let b = Sidecar::start(&config);
    // Logins through A, checked through B: the cap is shared by the pods.
    let other = login(&a, "u-other");
    let ids: Vec<String> = (0..17).map(|_| login(&a, "u-many")).collect();
    assert_error(
        &with_session(&b, "/whoami", &ids[0]),
        401,
        "session_revoked",
    );
    for id in ids[1..].iter().chain([&other]) {
        assert_eq!(with_session(&b, "/whoami", id).status, 200);
    }
    // A caches its own new sessions for cache_ttl: the revocation budget.
    assert!(wait_until(Duration::from_secs(2), || {
        let rsp = with_session(&a, "/whoami", &ids[0]);
        (rsp.status, rsp.error().as_str()) == (401, "session_revoked")
    }));

    // One sorted set per subject, holding only its live sessions, living as
    // long as the sessions in it may.
    let sets = redis.cli(&["--scan", "--pattern", "meshgate:session:subject:*"]);
    assert_eq!(sets.lines().count(), 2, "{sets}");
    let many = sets
        .lines()
        .find(|set| redis.cli(&["ZCARD", set]).trim() == "16")
        .expect("the capped subject's set")
        .to_string();
    let set_ttl: i64 = redis.cli(&["PTTL", &many]).trim().parse().expect("pttl");
    assert!(
        set_ttl > 9 * 60 * 1000 && set_ttl <= 10 * 60 * 1000,
        "set expires with the idle timeout: {set_ttl}"
    );
    for member in redis.cli(&["ZRANGE", &many, "0", "-1"]).lines() {
        let ttl: i64 = redis.cli(&["PTTL", member]).trim().parse().expect("pttl");
        assert!(ttl > 0 && ttl <= set_ttl + 1000, "{member}: {ttl}");
    }

    // Logout removes the session from its subject's set.
    let logout = with_session(&b, "/logout", &ids[16]);
    assert_eq!(logout.status, 200);
    assert_eq!(redis.cli(&["ZCARD", &many]).trim(), "15");
}

#[test]
fn rate_limit_keys_read_the_identity_the_session_filter_set() {
    let app = SessionApp::start();
    let sidecar = Sidecar::start(&bounded_config(app.port, "memory", "", ""));
    let alice = login(&sidecar, "alice");
    let bob = login(&sidecar, "bob");
    let limited = |id: &str, claimed: Option<&str>| {
        let cookie = format!("meshgate_session={id}");
        let mut headers = vec![("cookie", cookie.as_str())];
        if let Some(user) = claimed {
            headers.push(("x-meshgate-user", user));
        }
        get_with(&sidecar.url("/limited/x"), &headers).status
    };
    // Each user has a budget of 2; a client-sent x-meshgate-user changes
    // nothing (the key is the session's subject).
    assert_eq!(limited(&alice, Some("mallory-1")), 200);
    assert_eq!(limited(&alice, Some("mallory-2")), 200);
    assert_eq!(limited(&alice, Some("mallory-3")), 429);
    assert_eq!(limited(&alice, None), 429);
    assert_eq!(limited(&bob, Some("alice")), 200);
    assert_eq!(limited(&bob, None), 200);
    let rsp = get_with(
        &sidecar.url("/limited/x"),
        &[("cookie", &format!("meshgate_session={bob}"))],
    );
    assert_error(&rsp, 429, "rate_limited");
    assert_eq!(rsp.json()["code"], 42901);
}
