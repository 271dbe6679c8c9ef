//! End-to-end tests of the nonce bounds of the signature filter: requests
//! signed by the Python `http-message-signatures` package against the real
//! `meshgate` binary, with the memory store and with a real `redis-server`.

use meshgate_test_harness::{
    assert_error, hmac_args, py_sign, send_request, EchoApp, HttpResult, Redis, Sidecar,
};

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
const OTHER_SECRET: &str = "bmV4dC1zZWNyZXQtZm9yLXRlc3RzLTMyLWJ5dGVzISE=";
const COMPONENTS: &str = "@method,@authority,@path,@query,content-digest";

/// Headers of a request signed by the Python package with `nonce`.
fn signed(url: &str, key_id: &str, secret: &str, nonce: &str) -> Vec<(String, String)> {
    let mut args = hmac_args(key_id, secret, COMPONENTS).to_vec();
    args.extend(["--nonce", nonce]);
    py_sign("POST", url, Some("x"), &args)
}

fn send(sidecar: &Sidecar, key_id: &str, secret: &str, nonce: &str) -> HttpResult {
    let url = sidecar.url("/pay");
    send_request("POST", &url, &signed(&url, key_id, secret, nonce), "x")
}

fn config(app: &str, extra_top: &str, extra_filter: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
{extra_top}
routes:
  - name: api
    match: {{ path_prefix: / }}
    filters: [verify]
filters:
  verify:
    type: signature
    keys:
      - {{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}
      - {{ id: app-2, alg: hmac-sha256, secret_base64: "{OTHER_SECRET}" }}
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
    max_age: 300s
    require_nonce: true
    max_nonces_per_key: 3
{extra_filter}
"#
    )
}

fn gauge(sidecar: &Sidecar, name: &str) -> Option<f64> {
    sidecar
        .metrics()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Asserts the answers every store gives: long nonces refused before
/// anything is stored, the per-key bound refuses (429 with Retry-After)
/// without forgetting a live nonce, other keys are unaffected.
fn assert_bounds(sidecar: &Sidecar) {
    let long = "n".repeat(129);
    let rsp = send(sidecar, "app-1", SECRET, &long);
    assert_error(&rsp, 400, "nonce_invalid");
    assert_eq!(rsp.json()["code"], 40030);
    let very_long = "n".repeat(8000);
    assert_error(
        &send(sidecar, "app-1", SECRET, &very_long),
        400,
        "nonce_invalid",
    );
    let at_limit = "m".repeat(128);
    assert_eq!(send(sidecar, "app-1", SECRET, &at_limit).status, 200);

    for nonce in ["n-2", "n-3"] {
        let rsp = send(sidecar, "app-1", SECRET, nonce);
        assert_eq!(rsp.status, 200, "{nonce}: {}", rsp.text());
    }
    let rsp = send(sidecar, "app-1", SECRET, "n-4");
    assert_error(&rsp, 429, "nonce_limit_reached");
    let retry: u64 = rsp
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=330).contains(&retry), "retry after {retry}");
    // Live nonces were not evicted to make room: they are still replays.
    for nonce in [at_limit.as_str(), "n-2", "n-3"] {
        let rsp = send(sidecar, "app-1", SECRET, nonce);
        assert_eq!(
            (rsp.status, rsp.error().as_str()),
            (401, "signature_replayed"),
            "{nonce}"
        );
        assert_error(&rsp, 401, "signature_replayed");
    }
    // The bound is per key: another client is not affected.
    assert_eq!(send(sidecar, "app-2", OTHER_SECRET, "n-4").status, 200);
}

#[test]
fn nonce_length_and_nonces_per_key_are_bounded_in_memory() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), "", ""));
    assert_bounds(&sidecar);
    // What is stored is bounded by the per-key limit, whatever was sent.
    assert_eq!(
        gauge(&sidecar, "meshgate_signature_nonces{filter=\"verify\"}"),
        Some(4.0),
        "{}",
        sidecar.metrics()
    );
}

#[test]
fn redis_nonces_are_digested_bounded_and_the_old_key_form_is_still_checked() {
    let redis = Redis::start();
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(
        &app.addr(),
        &format!("redis: {{ url: \"{}\", timeout: 500ms }}", redis.url()),
        "    replay_store: redis",
    ));

    // A nonce the previous release stored (raw key, SET NX EX) is a replay
    // for this one.
    let legacy = "meshgate:sig-nonce:app-1\u{1f}seen-by-an-old-pod";
    assert_eq!(redis.cli(&["SET", legacy, "1", "EX", "300"]).trim(), "OK");
    assert_error(
        &send(&sidecar, "app-1", SECRET, "seen-by-an-old-pod"),
        401,
        "signature_replayed",
    );

    assert_bounds(&sidecar);

    // Per key one sorted set of 128-bit digests, scored by expiry...
    let set = "meshgate:sig-nonce:v2:app-1";
    assert_eq!(redis.cli(&["ZCARD", set]).trim(), "3");
    let members = redis.cli(&["ZRANGE", set, "0", "-1"]);
    for member in members.lines() {
        assert!(
            member.len() == 32 && member.bytes().all(|b| b.is_ascii_hexdigit()),
            "digest, not the nonce: {member:?}"
        );
    }
    let ttl: i64 = redis.cli(&["TTL", set]).trim().parse().expect("ttl");
    assert!(
        (1..=330).contains(&ttl),
        "set expires with the window: {ttl}"
    );
    // ...and the old form too, so pods of the previous release refuse
    // nonces first seen here while a rolling upgrade runs.
    assert_eq!(
        redis
            .cli(&["EXISTS", "meshgate:sig-nonce:app-1\u{1f}n-2"])
            .trim(),
        "1"
    );
    // Refused nonces (too long, over the bound) left nothing behind.
    assert_eq!(
        redis
            .cli(&["EXISTS", "meshgate:sig-nonce:app-1\u{1f}n-4"])
            .trim(),
        "0"
    );
}
