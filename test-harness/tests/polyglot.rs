//! The sample wallet apps (Node, C, Java) behind a real `meshgate` sidecar
//! running the signature, session and rate-limit filters: the same client
//! sees the same gateway behaviour whatever language the app is written in,
//! and each app's outbound call leaves through the egress listener, signed,
//! into a second sidecar in front of another app.

use meshgate_test_harness::apps::{AppLang, AppOptions, WalletApp};
use meshgate_test_harness::{
    assert_error, free_port, hmac_args, py_sign, send_request, HttpResult, Redis, Sidecar,
};
use serde_json::Value;

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
const COMPONENTS: &str = "@method,@authority,@path,@query,content-digest";
const KEY_ID: &str = "app-1";
const PEER_HOST: &str = "wallet-peer.internal";
/// Requests the rate limit lets through before refusing.
const BURST: usize = 4;

fn start_app(lang: AppLang, options: AppOptions) -> WalletApp {
    lang.start(&options)
        .unwrap_or_else(|e| panic!("start the {lang} app: {e:#}"))
}

/// A signed request, plus `extra` headers that the signature does not cover.
fn signed(method: &str, url: &str, body: &str, extra: &[(&str, &str)]) -> HttpResult {
    let mut headers = py_sign(
        method,
        url,
        Some(body),
        &hmac_args(KEY_ID, SECRET, COMPONENTS),
    );
    headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    send_request(method, url, &headers, body)
}

fn verify_filter() -> String {
    format!(
        r#"  verify:
    type: signature
    keys: [{{ id: {KEY_ID}, alg: hmac-sha256, secret_base64: "{SECRET}" }}]
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
    max_age: 300s
    require_nonce: true"#
    )
}

/// The front sidecar: every request signed; `/login` may be anonymous and
/// turns the app's session instruction into a cookie; the rest of the API
/// needs a session and is rate limited; sessions live in Redis because a
/// memory store belongs to one filter instance, and the login and API routes
/// use two; the egress listener signs the app's
/// calls to its peer.
fn front_config(app: &WalletApp, redis: &str, egress_port: u16, peer_sidecar_port: u16) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
redis: {{ url: "{redis}", timeout: 500ms }}
egress:
  listen: "127.0.0.1:{egress_port}"
  destinations:
    - host: {PEER_HOST}
      upstream: "127.0.0.1:{peer_sidecar_port}"
      key: {{ id: {KEY_ID}, alg: hmac-sha256, secret_base64: "{SECRET}" }}
routes:
  - name: login
    match: {{ path: /login }}
    filters: [verify, anonymous_ok]
  - name: api
    match: {{ path_prefix: / }}
    filters: [verify, session, limit]
filters:
{verify}
  anonymous_ok:
    type: session
    mode: session
    store: redis
    optional: true
  session:
    type: session
    mode: session
    store: redis
  limit:
    type: rate_limit
    response_headers: true
    rules:
      - {{ name: per-route, key: route, algorithm: token_bucket, rate: 1/h, burst: {BURST} }}
"#,
        app = app.addr(),
        verify = verify_filter(),
    )
}

/// The peer sidecar only verifies signatures.
fn peer_config(app: &WalletApp) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    filters: [verify]
filters:
{verify}
"#,
        app = app.addr(),
        verify = verify_filter(),
    )
}

fn check_behind_sidecar(lang: AppLang, peer: AppLang) {
    let peer_app = start_app(peer, AppOptions::new(free_port()));
    let peer_sidecar = Sidecar::start(&peer_config(&peer_app));
    let egress_port = free_port();
    let app = start_app(
        lang,
        AppOptions::new(free_port())
            .egress(format!("127.0.0.1:{egress_port}"))
            .peer_host(PEER_HOST),
    );
    let redis = Redis::start();
    let sidecar = Sidecar::start(&front_config(
        &app,
        &redis.url(),
        egress_port,
        peer_sidecar.inbound_port,
    ));
    let balance = sidecar.url("/api/balance");

    // 1. unsigned
    let rsp = send_request("GET", &balance, &[] as &[(&str, &str)], "");
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "signature_missing"),
        "{lang}: {}",
        rsp.text()
    );
    assert_error(&rsp, 401, "signature_missing");

    // 2. signed, no session
    let rsp = signed("GET", &balance, "", &[]);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (401, "login_required"),
        "{lang}: {}",
        rsp.text()
    );
    assert_error(&rsp, 401, "login_required");

    // 3. login, then the balance with the session cookie
    let rsp = signed(
        "POST",
        &sidecar.url("/login"),
        r#"{"user":"u-42"}"#,
        &[("content-type", "application/json")],
    );
    assert_eq!(rsp.status, 200, "{lang} login: {}", rsp.text());
    assert!(
        rsp.header("x-meshgate-session-set").is_none(),
        "{lang}: the session instruction reached the client"
    );
    let set_cookie = rsp.header("set-cookie").expect("a session cookie");
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    assert!(cookie.starts_with("meshgate_session="), "{set_cookie}");
    let with_cookie = [("cookie", cookie.as_str())];

    let rsp = signed("GET", &balance, "", &with_cookie);
    assert_eq!(rsp.status, 200, "{lang}: {}", rsp.text());
    let body = rsp.json();
    assert_eq!(body["user"], "u-42", "{lang}: {body}");
    assert_eq!(body["client_id"], KEY_ID, "{lang}: {body}");
    assert_eq!(body["balance"], 100, "{lang}: {body}");
    assert!(rsp.header("ratelimit").is_some(), "{lang}: no RateLimit");
    let mut allowed = 1;

    // 5. a client-supplied identity header never reaches the app
    let rsp = signed(
        "GET",
        &balance,
        "",
        &[
            ("cookie", cookie.as_str()),
            ("x-meshgate-user", "admin"),
            ("X-Meshgate-Client-Id", "admin-client"),
        ],
    );
    assert_eq!(rsp.status, 200, "{lang}: {}", rsp.text());
    let body = rsp.json();
    assert_eq!(body["user"], "u-42", "{lang}: {body}");
    assert_eq!(body["client_id"], KEY_ID, "{lang}: {body}");
    let seen = &body["meshgate_headers"];
    assert_eq!(seen["x-meshgate-user"], "u-42", "{lang}: {body}");
    assert!(!seen.to_string().contains("admin"), "{lang}: {body}");
    allowed += 1;

    // 6. the app's peer call leaves through the egress listener, signed, and
    // the peer's sidecar verifies it
    let rsp = signed("GET", &sidecar.url("/api/peer"), "", &with_cookie);
    assert_eq!(rsp.status, 200, "{lang} -> {peer}: {}", rsp.text());
    let body = rsp.json();
    assert_eq!(body["peer_status"], 200, "{lang} -> {peer}: {body}");
    let peer_body: Value = serde_json::from_str(body["peer_body"].as_str().expect("peer_body"))
        .expect("peer body is JSON");
    assert_eq!(peer_body["client_id"], KEY_ID, "{lang} -> {peer}");
    assert_eq!(peer_body["host"], PEER_HOST, "{lang} -> {peer}");
    allowed += 1;

    // 4. past the burst: 429 with Retry-After and RateLimit fields
    while allowed < BURST {
        let rsp = signed("GET", &balance, "", &with_cookie);
        assert_eq!(rsp.status, 200, "{lang}: {}", rsp.text());
        allowed += 1;
    }
    let rsp = signed("GET", &balance, "", &with_cookie);
    assert_eq!(
        (rsp.status, rsp.error().as_str()),
        (429, "rate_limited"),
        "{lang}: {}",
        rsp.text()
    );
    assert_error(&rsp, 429, "rate_limited");
    let retry: u64 = rsp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{lang}: {retry}");
    assert!(
        rsp.header("ratelimit")
            .expect("RateLimit")
            .starts_with("\"per-route\";r=0;"),
        "{lang}"
    );
    assert!(rsp.header("ratelimit-policy").is_some(), "{lang}");
}

#[test]
fn node_app_behind_the_sidecar() {
    check_behind_sidecar(AppLang::Node, AppLang::C);
}

#[test]
fn c_app_behind_the_sidecar() {
    check_behind_sidecar(AppLang::C, AppLang::Java);
}

#[test]
fn java_app_behind_the_sidecar() {
    check_behind_sidecar(AppLang::Java, AppLang::Node);
}
