//! End-to-end tests of the signature filter: the real `meshgate` binary in
//! front of the echo app, requests signed by the Python
//! `http-message-signatures` package (test-harness/scripts/sign_request.py),
//! the egress listener, key rotation by reload and a Redis-backed nonce store
//! shared by two sidecars.

use std::time::{Duration, Instant};

use meshgate_test_harness::{
    assert_error, free_port, hmac_args, py_sign, py_verify_response, send_request, EchoApp, Redis,
    ResponseKey, Sidecar,
};

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
const NEXT_SECRET: &str = "bmV4dC1zZWNyZXQtZm9yLXRlc3RzLTMyLWJ5dGVzISE=";
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";
const ALL: &str = "@method,@authority,@path,@query,content-digest";

fn verify_yaml(app: &str, keys: &str, extra: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
{extra}
routes:
  - name: api
    match: {{ path_prefix: / }}
    filters: [verify]
filters:
  verify:
    type: signature
    keys: {keys}
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
    max_age: 300s
    require_nonce: true
"#
    )
}

fn hmac_keys(secret: &str) -> String {
    format!(r#"[{{ id: app-1, alg: hmac-sha256, secret_base64: "{secret}" }}]"#)
}

/// Signer arguments for key `app-1` with `secret`, covering [`ALL`].
fn hmac_key_args(secret: &str) -> Vec<&str> {
    hmac_args("app-1", secret, ALL).to_vec()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[test]
fn python_signed_requests_are_verified_by_the_sidecar() {
    let app = EchoApp::start();
    // the sidecar reads the ed25519 public key from a file
    let key_dir = tempfile::tempdir().expect("tempdir");
    let public = key_dir.path().join("app-2.pem");
    std::fs::write(&public, ED25519_PUBLIC).expect("key file");
    let keys = format!(
        r#"[{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}, {{ id: app-2, alg: ed25519, public_key_file: "{}" }}]"#,
        public.display()
    );
    let sidecar = Sidecar::start(&verify_yaml(&app.addr(), &keys, ""));
    let url = sidecar.url("/pay?order=42");
    let body = r#"{"amount":100}"#;
    let hmac = hmac_key_args(SECRET);

    // accepted, identity handed to the app, signature headers stripped
    let headers = py_sign("POST", &url, Some(body), &hmac);
    let rsp = send_request("POST", &url, &headers, body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-1");
    assert!(echo["headers"].get("signature").is_none());
    assert!(echo["headers"].get("signature-input").is_none());
    assert_eq!(echo["body_len"], body.len());

    // the same request again: replayed nonce
    let rsp = send_request("POST", &url, &headers, body);
    assert_error(&rsp, 401, "signature_replayed");

    // an ed25519 client; the sidecar has its public key from a file
    let private = key_dir.path().join("app-2-private.pem");
    std::fs::write(&private, ED25519_PRIVATE).expect("key");
    let private = private.display().to_string();
    let ed = [
        "--key-id",
        "app-2",
        "--alg",
        "ed25519",
        "--private-key-file",
        &private,
        "--components",
        ALL,
    ];
    let headers = py_sign("POST", &url, Some(body), &ed);
    let rsp = send_request("POST", &url, &headers, body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-2");

    // changed body, path, query, covered header, old created
    let headers = py_sign("POST", &url, Some(body), &hmac);
    let rsp = send_request("POST", &url, &headers, r#"{"amount":999}"#);
    assert_error(&rsp, 401, "digest_mismatch");

    let headers = py_sign("POST", &url, Some(body), &hmac);
    let rsp = send_request("POST", &sidecar.url("/refund?order=42"), &headers, body);
    assert_error(&rsp, 401, "signature_invalid");

    let headers = py_sign("POST", &url, Some(body), &hmac);
    let rsp = send_request("POST", &sidecar.url("/pay?order=43"), &headers, body);
    assert_error(&rsp, 401, "signature_invalid");

    let mut with_header: Vec<&str> = hmac
        .iter()
        .map(|a| {
            if *a == ALL {
                "@method,@authority,@path,@query,content-digest,x-app-version"
            } else {
                a
            }
        })
        .collect();
    with_header.extend(["--header", "x-app-version:1.0"]);
    let mut headers = py_sign("POST", &url, Some(body), &with_header);
    headers.push(("x-app-version".into(), "2.0".into()));
    let rsp = send_request("POST", &url, &headers, body);
    assert_error(&rsp, 401, "signature_invalid");

    let old = (now() - 1000).to_string();
    let mut stale = hmac.clone();
    stale.extend(["--created", old.as_str()]);
    let headers = py_sign("POST", &url, Some(body), &stale);
    let rsp = send_request("POST", &url, &headers, body);
    assert_error(&rsp, 401, "signature_expired");

    // no signature at all
    let rsp = send_request("POST", &url, &[] as &[(&str, &str)], body);
    assert_error(&rsp, 401, "signature_missing");
}

#[test]
fn egress_signs_for_the_destination_sidecar_and_keys_rotate_on_reload() {
    let app = EchoApp::start();
    // B: the destination pod's sidecar, verifying app-1
    let b_yaml = verify_yaml(&app.addr(), &hmac_keys(SECRET), "");
    let b = Sidecar::start(&b_yaml);
    // A: the calling pod's sidecar; its egress signs calls to wallet.internal
    let egress_port = free_port();
    let a_yaml = format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
egress:
  listen: "127.0.0.1:{egress_port}"
  destinations:
    - host: wallet.internal
      upstream: "127.0.0.1:{}"
      key: {{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}
    - host: "[::1]"
      upstream: "127.0.0.1:{}"
      key: {{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}
"#,
        app.addr(),
        b.inbound_port,
        b.inbound_port
    );
    let _a = Sidecar::start(&a_yaml);
    let host = vec![("host".to_string(), "wallet.internal".to_string())];
    let egress_url = format!("http://127.0.0.1:{egress_port}/balance?user=7");
    let rsp = send_request("POST", &egress_url, &host, r#"{"q":1}"#);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-1");
    assert_eq!(echo["headers"]["host"], "wallet.internal");
    assert_eq!(echo["path"], "/balance?user=7");
    assert_eq!(echo["body_len"], 7);
    // an IPv6 literal with a port is one host, not cut at its first colon
    let v6 = vec![("host".to_string(), "[::1]:80".to_string())];
    let rsp = send_request("GET", &egress_url, &v6, "");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-1");
    assert_eq!(echo["headers"]["host"], "[::1]");
    let v6_other = vec![("host".to_string(), "[::2]:80".to_string())];
    let rsp = send_request("GET", &egress_url, &v6_other, "");
    assert_error(&rsp, 404, "route_not_found");
    let message = rsp.json()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("\"::2\""), "{}", rsp.text());
    // unknown destination host: the same rejection shape as inbound (request id too)
    let other = vec![("host".to_string(), "elsewhere.internal".to_string())];
    let rsp = send_request("GET", &egress_url, &other, "");
    assert_error(&rsp, 404, "route_not_found");

    // rotate B's key by rewriting its config: the new secret is accepted and
    // the old one refused, without a restart
    let url = b.url("/pay");
    b.write_config(&b_yaml.replace(SECRET, NEXT_SECRET));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let headers = py_sign("POST", &url, Some("x"), &hmac_key_args(NEXT_SECRET));
        if send_request("POST", &url, &headers, "x").status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let headers = py_sign("POST", &url, Some("x"), &hmac_key_args(SECRET));
    let rsp = send_request("POST", &url, &headers, "x");
    assert_error(&rsp, 401, "signature_invalid");
}

#[test]
fn redis_nonce_store_is_shared_by_two_sidecars() {
    let mut redis = Redis::start();
    let app = EchoApp::start();
    let yaml = verify_yaml(
        &app.addr(),
        &hmac_keys(SECRET),
        &format!("redis: {{ url: \"{}\", timeout: 500ms }}", redis.url()),
    )
    .replace(
        "require_nonce: true",
        "require_nonce: true\n    replay_store: redis",
    );
    let one = Sidecar::start(&yaml);
    let two = Sidecar::start(&yaml);

    let url = one.url("/pay");
    let mut headers = py_sign("POST", &url, Some("x"), &hmac_key_args(SECRET));
    let rsp = send_request("POST", &url, &headers, "x");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    // the same signed request (same Host) at the other sidecar is a replay
    headers.push(("host".into(), format!("127.0.0.1:{}", one.inbound_port)));
    let rsp = send_request("POST", &two.url("/pay"), &headers, "x");
    assert_error(&rsp, 401, "signature_replayed");
    // the key's digest set, and the legacy per-nonce key for older pods
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "meshgate:sig-nonce:*"])
            .lines()
            .count(),
        2
    );

    // Redis down: fail closed with 503
    redis.stop();
    let headers = py_sign("POST", &url, Some("x"), &hmac_key_args(SECRET));
    let rsp = send_request("POST", &url, &headers, "x");
    assert_error(&rsp, 503, "replay_store_unavailable");
}

#[test]
fn responses_are_signed_and_bound_to_the_request() {
    let app = EchoApp::start();
    let key_dir = tempfile::tempdir().expect("tempdir");
    let private = key_dir.path().join("gw.pem");
    std::fs::write(&private, ED25519_PRIVATE).expect("key");
    let extra_filter = format!(
        r#"    sign_response:
      key: {{ id: gw-1, alg: ed25519, private_key_file: "{}" }}
      components: ["@status", "content-digest"]
      bind_request: true
"#,
        private.display()
    );
    let yaml = verify_yaml(&app.addr(), &hmac_keys(SECRET), "") + &extra_filter;
    let sidecar = Sidecar::start(&yaml);
    let url = sidecar.url("/pay?order=1");
    let headers = py_sign("POST", &url, Some("x"), &hmac_key_args(SECRET));
    let rsp = send_request("POST", &url, &headers, "x");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let input = rsp.header("signature-input").expect("signed response");
    assert!(input.contains(r#""signature";key="sig1";req"#), "{input}");

    // verified by the other implementation, with the request it answers
    let key = ResponseKey {
        id: "gw-1",
        alg: "ed25519",
        public_key_pem: ED25519_PUBLIC,
    };
    if let Err(e) = py_verify_response("POST", &url, &headers, &rsp, &key) {
        panic!("response signature rejected: {e}");
    }
}
