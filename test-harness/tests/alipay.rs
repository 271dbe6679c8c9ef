//! End-to-end tests of `scheme: alipay-rsa2`: requests signed by Alipay's own
//! Python SDK (`alipay-sdk-python`, test-harness/scripts/alipay_sign.py)
//! through the real `meshgate` binary in front of the echo app, and the
//! attacks the signed content alone does not stop: another path or method,
//! an unsigned body, parameters merged or added.

use std::process::Command;
use std::time::Duration;

use meshgate_test_harness::{
    assert_error, raw_exchange, send_request, EchoApp, HttpResult, Sidecar,
};

const APP_ID: &str = "2014072300007148";

/// The merchant's key: a 2048-bit test key, public half (PKCS#1); the
/// private half is `filters/src/signature/testdata/rsa-2048-private.pem`.
const MERCHANT_PUBLIC: &str =
    include_str!("../../filters/src/signature/testdata/rsa-2048-public.pem");

fn private_key_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../filters/src/signature/testdata/rsa-2048-private.pem")
}

/// A request as the SDK would send it.
struct Signed {
    query: String,
    body: String,
    content_type: String,
}

/// Signs an `alipay.trade.query` with the SDK. Its `timestamp` is local
/// time; TZ=CST-8 makes that +08:00, the filter's default offset.
fn sdk_sign(out_trade_no: &str, params: &[&str]) -> Signed {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/alipay_sign.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--app-id", APP_ID, "--private-key-file"])
        .arg(private_key_file())
        .args(["--out-trade-no", out_trade_no])
        .env("TZ", "CST-8");
    for p in params {
        cmd.args(["--param", p]);
    }
    let out = cmd.output().expect("python3 alipay signer");
    assert!(
        out.status.success(),
        "alipay SDK signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("signer json");
    let field = |k: &str| v[k].as_str().expect("signer field").to_string();
    Signed {
        query: field("query"),
        body: field("body"),
        content_type: field("content_type"),
    }
}

fn config(app: &str, alipay_extra: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: gateway
    match: {{ path: /gateway.do, methods: [POST] }}
    filters: [alipay]
filters:
  alipay:
    type: signature
    scheme: alipay-rsa2
    keys:
      - id: merchant
        alg: rsa-v1_5-sha256
        public_key_pem: |
{key}
    alipay:
      app_ids: {{ "{APP_ID}": merchant }}
{alipay_extra}
"#,
        key = MERCHANT_PUBLIC
            .lines()
            .map(|l| format!("          {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn send(method: &str, url: &str, content_type: Option<&str>, body: &str) -> HttpResult {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("content-type", ct))
        .into_iter()
        .collect();
    send_request(method, url, &headers, body)
}

/// A chunked HTTP/1.1 request written by hand: no Content-Length, no
/// Content-Type, so nothing in the head says there is a body.
fn send_chunked(port: u16, target: &str, body: &str) -> HttpResult {
    raw_exchange(
        port,
        &format!(
            "POST {target} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ),
    )
}

#[test]
fn sdk_signed_requests_pass_only_on_their_route_with_their_signed_form() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), ""));
    let gateway = |query: &str| sidecar.url(&format!("/gateway.do?{query}"));

    // Each signing below has its own out_trade_no: RSA PKCS#1 v1.5 is
    // deterministic and the SDK's timestamp has whole seconds, so two
    // signings of the same parameters within a second are one signature,
    // which the replay check would (rightly) refuse the second time.

    // signed by Alipay's SDK: accepted, the app learns the merchant
    let s = sdk_sign("20150320010101001", &[]);
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &s.body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "merchant");
    assert_eq!(echo["body_len"], s.body.len());
    // the same signature again
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &s.body);
    assert_error(&rsp, 401, "signature_replayed");

    // a tampered parameter
    let s = sdk_sign("20150320010101002", &[]);
    let tampered = s.body.replace("20150320010101002", "20150320010101009");
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &tampered);
    assert_error(&rsp, 401, "signature_invalid");

    // The signed content names no path and no method; the route does. The
    // same signature (still unused) elsewhere, or as a GET, finds no route.
    let elsewhere = sidecar.url(&format!("/refund.do?{}", s.query));
    let rsp = send("POST", &elsewhere, Some(&s.content_type), &s.body);
    assert_error(&rsp, 404, "route_not_found");
    let all_in_query = gateway(&format!("{}&{}", s.query, s.body));
    let rsp = send("GET", &all_in_query, None, "");
    assert_error(&rsp, 404, "route_not_found");

    // a body that no signature covers, with the signed parameters in the
    // query: JSON, multipart, or chunked with no Content-Type at all
    let s = sdk_sign("20150320010101003", &[]);
    let query = format!("{}&{}", s.query, s.body);
    let rsp = send(
        "POST",
        &gateway(&query),
        Some("application/json"),
        r#"{"amount":99999}"#,
    );
    assert_error(&rsp, 415, "unsigned_body");
    let rsp = send(
        "POST",
        &gateway(&query),
        Some("multipart/form-data; boundary=x"),
        "--x\r\ncontent-disposition: form-data; name=\"amount\"\r\n\r\n99999\r\n--x--\r\n",
    );
    assert_error(&rsp, 415, "unsigned_body");
    let rsp = send_chunked(
        sidecar.inbound_port,
        &format!("/gateway.do?{query}"),
        r#"{"amount":99999}"#,
    );
    assert_error(&rsp, 415, "unsigned_body");
    // the same request without a body is the signed one
    let rsp = send("POST", &gateway(&query), None, "");
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    // an empty parameter added: it is left out of the signed content, so the
    // app would read a parameter nobody signed
    let s = sdk_sign("20150320010101004", &[]);
    let rsp = send(
        "POST",
        &gateway(&format!("{}&refund=", s.query)),
        Some(&s.content_type),
        &s.body,
    );
    assert_error(&rsp, 400, "parameters_ambiguous");

    // Two signed parameters merged into one: `role=user&scope=all` reads the
    // same as `role` = "user&scope=all". The SDK signed two parameters; the
    // merged form (the app would see no `scope`) is refused.
    let s = sdk_sign("20150320010101005", &["role=user", "scope=all"]);
    assert!(s.body.contains("role=user") && s.body.contains("scope=all"));
    let merged = s
        .body
        .split('&')
        .filter(|p| !p.starts_with("scope="))
        .map(|p| {
            if p == "role=user" {
                "role=user%26scope%3Dall".to_string()
            } else {
                p.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &merged);
    assert_error(&rsp, 400, "parameters_ambiguous");
    // and the form it was signed in passes
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &s.body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());

    // `&` and `=` that cannot start another parameter are signed as they are
    let s = sdk_sign("20150320010101006", &["subject=Tom & Jerry = friends"]);
    let rsp = send("POST", &gateway(&s.query), Some(&s.content_type), &s.body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

#[test]
fn a_non_form_body_passes_unsigned_only_when_configured() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), "      allow_non_form_body: true"));
    let s = sdk_sign("20150320010101001", &[]);
    let url = sidecar.url(&format!("/gateway.do?{}&{}", s.query, s.body));
    let body = r#"{"unsigned":true}"#;
    let rsp = send("POST", &url, Some("application/json"), body);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let echo = rsp.json();
    assert_eq!(echo["body_len"], body.len());
}

#[test]
fn alipay_routes_without_an_exact_path_and_methods_are_refused() {
    let app = EchoApp::start();
    let prefix = config(&app.addr(), "").replace(
        "{ path: /gateway.do, methods: [POST] }",
        "{ path_prefix: / }",
    );
    let mut sidecar = Sidecar::spawn(&prefix, &[]);
    let status = sidecar
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("meshgate refuses the config");
    assert!(!status.success());
    let log = sidecar.proc.output();
    assert!(log.contains("routes[0].match.path"), "{log}");
    assert!(log.contains("routes[0].match.methods"), "{log}");
}
