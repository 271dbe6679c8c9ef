//! The three sample wallet apps, started directly (no sidecar), answer every
//! endpoint the same way: the contract the end-to-end tests rely on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use meshgate_test_harness::apps::{client, AppLang, AppOptions, WalletApp};
use meshgate_test_harness::free_port;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(10);

fn start(lang: AppLang, options: AppOptions) -> WalletApp {
    lang.start(&options)
        .unwrap_or_else(|e| panic!("start the {lang} app: {e:#}"))
}

fn read_json(rsp: &mut ureq::http::Response<ureq::Body>) -> Value {
    let text = rsp.body_mut().read_to_string().expect("read body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn check_endpoints(lang: AppLang) {
    let app = start(lang, AppOptions::new(free_port()));
    let http = client(TIMEOUT);

    let mut rsp = http.get(&app.url("/healthz")).call().expect("healthz");
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.body_mut().read_to_string().expect("body"), "ok");

    // Login answers with the session instruction the sidecar turns into a cookie.
    let mut rsp = http
        .post(&app.url("/login"))
        .header("content-type", "application/json")
        .send(r#"{"user":"u-42"}"#)
        .expect("login");
    assert_eq!(rsp.status(), 200, "{lang}");
    let instruction = rsp
        .headers()
        .get("x-meshgate-session-set")
        .expect("session instruction header")
        .to_str()
        .expect("ascii header");
    let instruction: Value = serde_json::from_str(instruction).expect("instruction is JSON");
    assert_eq!(
        instruction,
        json!({"sub": "u-42", "claims": {"tenant": "t-1"}, "ttl": "2h"}),
        "{lang}"
    );
    assert_eq!(read_json(&mut rsp), json!({"ok": true, "user": "u-42"}));

    let rsp = http
        .post(&app.url("/login"))
        .send(r#"{"name":"u-42"}"#)
        .expect("bad login");
    assert_eq!(rsp.status(), 400, "{lang}: login without a user");
    assert!(rsp.headers().get("x-meshgate-session-set").is_none());

    // Anonymous balance: no identity, nothing echoed.
    let mut rsp = http.get(&app.url("/api/balance")).call().expect("balance");
    assert_eq!(rsp.status(), 200);
    let body = read_json(&mut rsp);
    assert_eq!(body["user"], Value::Null, "{lang}");
    assert_eq!(body["client_id"], Value::Null, "{lang}");
    assert_eq!(body["balance"], 100, "{lang}");
    assert_eq!(body["meshgate_headers"], json!({}), "{lang}");

    // Identity headers are read case-insensitively and every x-meshgate-* one
    // is echoed (lowercased, repeats joined), so tests can see what the
    // sidecar forwarded or failed to strip.
    let mut rsp = http
        .get(&app.url("/api/balance"))
        .header("X-Meshgate-User", "u-7")
        .header("x-meshgate-client-id", "app-1")
        .header("x-meshgate-claims", "a")
        .header("X-MESHGATE-CLAIMS", "b")
        .header("x-other", "not echoed")
        .call()
        .expect("balance with identity");
    let body = read_json(&mut rsp);
    assert_eq!(body["user"], "u-7", "{lang}");
    assert_eq!(body["client_id"], "app-1", "{lang}");
    assert_eq!(
        body["meshgate_headers"],
        json!({"x-meshgate-user": "u-7", "x-meshgate-client-id": "app-1", "x-meshgate-claims": "a, b"}),
        "{lang}"
    );

    let payload = vec![b'x'; 64 * 1024];
    let mut rsp = http
        .post(&app.url("/api/transfer"))
        .header("x-meshgate-user", "u-9")
        .send(&payload[..])
        .expect("transfer");
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        read_json(&mut rsp),
        json!({"ok": true, "received": 65536, "user": "u-9"}),
        "{lang}"
    );

    let mut rsp = http
        .post(&app.url("/api/transfer"))
        .send(r#"{"to":"u-1","amount":5}"#)
        .expect("transfer");
    assert_eq!(
        read_json(&mut rsp),
        json!({"ok": true, "received": 23, "user": null}),
        "{lang}"
    );

    let rsp = http.get(&app.url("/nope")).call().expect("unknown path");
    assert_eq!(rsp.status(), 404, "{lang}");
}

/// `lang` calls `peer` the way it would call through the sidecar's egress
/// listener: to the egress address, naming the service in `Host`.
fn check_peer_call(lang: AppLang, peer: AppLang) {
    let peer_app = start(peer, AppOptions::new(free_port()));
    let app = start(
        lang,
        AppOptions::new(free_port())
            .egress(peer_app.addr().to_string())
            .peer_host("wallet-peer.test"),
    );
    let http = client(TIMEOUT);

    let mut rsp = http.get(&app.url("/api/peer")).call().expect("peer call");
    assert_eq!(rsp.status(), 200, "{lang} -> {peer}");
    let body = read_json(&mut rsp);
    assert_eq!(body["peer_status"], 200, "{lang} -> {peer}: {body}");
    let peer_body: Value = serde_json::from_str(body["peer_body"].as_str().expect("peer_body"))
        .expect("peer body is JSON");
    assert_eq!(peer_body["balance"], 100, "{lang} -> {peer}");
    assert_eq!(peer_body["host"], "wallet-peer.test", "{lang} -> {peer}");

    // With nothing listening at the egress address the app answers 502.
    drop(peer_app);
    let mut rsp = http.get(&app.url("/api/peer")).call().expect("peer call");
    assert_eq!(rsp.status(), 502, "{lang} with its peer gone");
    assert_eq!(read_json(&mut rsp)["error"], "peer_unreachable");
}

/// Two pipelined requests on one connection both get answers, and an idle
/// keep-alive connection does not stop another connection from being served.
fn check_connections(lang: AppLang) {
    let app = start(lang, AppOptions::new(free_port()));

    let mut idle = TcpStream::connect(app.addr()).expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: wallet\r\n\r\n")
        .expect("write");
    let mut first = [0u8; 12];
    idle.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    idle.read_exact(&mut first).expect("first response");
    assert_eq!(&first, b"HTTP/1.1 200");

    let mut conn = TcpStream::connect(app.addr()).expect("connect");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    conn.write_all(
        b"POST /api/transfer HTTP/1.1\r\nhost: wallet\r\ncontent-length: 5\r\n\r\nhello\
          GET /healthz HTTP/1.1\r\nhost: wallet\r\nconnection: close\r\n\r\n",
    )
    .expect("write");
    let mut out = String::new();
    conn.read_to_string(&mut out).expect("read until close");
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{lang}: {out}");
    assert!(out.contains(r#""received":5"#), "{lang}: {out}");
    assert!(out.ends_with("ok"), "{lang}: {out}");
    drop(idle);
}

#[test]
fn node_app_serves_every_endpoint() {
    check_endpoints(AppLang::Node);
}

#[test]
fn c_app_serves_every_endpoint() {
    check_endpoints(AppLang::C);
}

#[test]
fn java_app_serves_every_endpoint() {
    check_endpoints(AppLang::Java);
}

#[test]
fn node_app_calls_its_peer_through_the_egress_address() {
    check_peer_call(AppLang::Node, AppLang::C);
}

#[test]
fn c_app_calls_its_peer_through_the_egress_address() {
    check_peer_call(AppLang::C, AppLang::Java);
}

#[test]
fn java_app_calls_its_peer_through_the_egress_address() {
    check_peer_call(AppLang::Java, AppLang::Node);
}

#[test]
fn node_app_keeps_connections_alive_and_serves_them_concurrently() {
    check_connections(AppLang::Node);
}

#[test]
fn c_app_keeps_connections_alive_and_serves_them_concurrently() {
    check_connections(AppLang::C);
}

#[test]
fn java_app_keeps_connections_alive_and_serves_them_concurrently() {
    check_connections(AppLang::Java);
}

/// Like most HTTP/1.1 servers (RFC 9112 section 3.2), the Node and C apps answer
/// a request without `Host` with 400, so a sidecar that forgets to send one
/// (health checks, HTTP/2 clients forwarded as HTTP/1.1) shows up in tests.
/// The JDK's server accepts such requests.
fn check_host_required(lang: AppLang) {
    let app = start(lang, AppOptions::new(free_port()));
    let mut conn = TcpStream::connect(app.addr()).expect("connect");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nconnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    conn.read_to_string(&mut out).expect("read until close");
    assert!(out.starts_with("HTTP/1.1 400"), "{lang}: {out}");
}

#[test]
fn node_app_requires_a_host_header() {
    check_host_required(AppLang::Node);
}

#[test]
fn c_app_requires_a_host_header() {
    check_host_required(AppLang::C);
}
