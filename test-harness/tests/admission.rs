//! End-to-end tests of admission, the one canonical request built before
//! routing: hand-made HTTP/1.1 over a plain TCP socket and HTTP/2 frames
//! from the `h2` crate, against the real `meshgate` binary in front of the
//! echo app or a plain WSGI app (Python's `wsgiref`, which decodes the path
//! and reads `x_meshgate_user` as `HTTP_X_MESHGATE_USER`).

use std::process::Command;
use std::time::Duration;

use meshgate_test_harness::{
    assert_error, free_port, h2_get, header_lines, hmac_args, port_open, py_sign, raw_exchange,
    scripts_dir, wait_until, EchoApp, HttpResult, Proc, Sidecar,
};

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";

/// The WSGI app on a free port.
struct WsgiApp {
    port: u16,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl WsgiApp {
    fn start() -> WsgiApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(scripts_dir().join("wsgi_app.py"))
            .arg(port.to_string());
        let proc = Proc::spawn("wsgi-app", &mut cmd, dir.path().join("wsgi.log"));
        assert!(
            wait_until(Duration::from_secs(10), || port_open(port)),
            "wsgi app did not start: {}",
            proc.output()
        );
        WsgiApp {
            port,
            _proc: proc,
            _dir: dir,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Writes `head` (request line and headers, `\r\n` separated, without the
/// blank line) as sent, with `Connection: close`, and reads the answer.
fn raw(port: u16, head: &str) -> HttpResult {
    raw_exchange(port, &format!("{head}\r\nconnection: close\r\n\r\n"))
}

/// `/private/` and host `admin.example` behind a guard, everything else open.
fn guarded_yaml(app: &str, extra_inbound: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" {extra_inbound} }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: private
    match: {{ path_prefix: /private/ }}
    filters: [guard]
  - name: admin-host
    match: {{ host: admin.example }}
    filters: [guard]
  - name: open
    match: {{ path_prefix: / }}
filters:
  guard: {{ type: header, require: [x-pass] }}
"#
    )
}

#[test]
fn path_variants_reach_the_guarded_route_or_are_refused() {
    let app = WsgiApp::start();
    let sidecar = Sidecar::start(&guarded_yaml(&app.addr(), ""));
    let port = sidecar.inbound_port;

    // Each of these is /private/x to a WSGI app; each must meet the guard.
    for target in [
        "/%70rivate/x",
        "/%70%72%69vate/x",
        "//private/x",
        "/pub/../private/x",
        "/pub/%2e%2e/private/x",
        "/pub/%2E%2E/private/x",
        "/pub/.%2e/private/x",
        "/./private/x",
    ] {
        let rsp = raw(port, &format!("GET {target} HTTP/1.1\r\nhost: svc"));
        assert_eq!(
            (rsp.status, rsp.error().as_str()),
            (400, "header_required"),
            "{target} did not meet the guard: {}",
            String::from_utf8_lossy(&rsp.body)
        );
        assert_error(&rsp, 400, "header_required");
    }

    // Refused by the default policy, before any route.
    for target in [
        "/private;x/y",
        "/pub/..;/private/x",
        "/private%2Fx",
        "/pub%2F..%2Fprivate/x",
        "/pub/..%5Cprivate/x",
        "/pub/..\\private/x",
        "/a%zz",
        "/a%00b",
    ] {
        let rsp = raw(port, &format!("GET {target} HTTP/1.1\r\nhost: svc"));
        assert_eq!(
            (rsp.status, rsp.error().as_str()),
            (400, "bad_path"),
            "{target}: {}",
            String::from_utf8_lossy(&rsp.body)
        );
        assert_error(&rsp, 400, "bad_path");
    }
    let rsp = raw(port, "OPTIONS * HTTP/1.1\r\nhost: svc");
    assert_error(&rsp, 400, "bad_path");

    // The open route forwards the normalised form; the query as sent.
    let rsp = raw(
        port,
        "GET /pub/./a/../%7Euser//files?q=%2e%2e/x&r=1 HTTP/1.1\r\nhost: svc",
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    assert_eq!(rsp.json()["path_info"], "/pub/~user/files");
    assert_eq!(rsp.json()["query_string"], "q=%2e%2e/x&r=1");

    // Authority variants of a guarded host also meet the guard.
    for host in [
        "admin.example",
        "ADMIN.example",
        "admin.example.",
        "admin.example:80",
    ] {
        let rsp = raw(port, &format!("GET /x HTTP/1.1\r\nhost: {host}"));
        assert_eq!(
            (rsp.status, rsp.error().as_str()),
            (400, "header_required"),
            "host {host}"
        );
        assert_error(&rsp, 400, "header_required");
    }
}

#[test]
fn escaped_slash_and_semicolon_policies_are_configurable() {
    let app = EchoApp::start();
    let yaml = guarded_yaml(
        &app.addr(),
        ", path_normalization: { escaped_slashes: decode, semicolons: keep }",
    );
    let sidecar = Sidecar::start(&yaml);
    let port = sidecar.inbound_port;
    // Decoded, the encoded slashes are separators: the guard applies.
    let rsp = raw(port, "GET /pub%2F..%2Fprivate%5Cx HTTP/1.1\r\nhost: svc");
    assert_error(&rsp, 400, "header_required");
    // Kept, a parameter stays where it is; a dot segment with one is refused.
    let rsp = raw(port, "GET /files;v=1/a HTTP/1.1\r\nhost: svc");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["path"], "/files;v=1/a");
    let rsp = raw(port, "GET /pub/..;x/private/x HTTP/1.1\r\nhost: svc");
    assert_error(&rsp, 400, "bad_path");
}

#[test]
fn one_authority_for_routing_filters_and_app() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&guarded_yaml(&app.addr(), ""));
    let port = sidecar.inbound_port;

    // Absolute form naming another authority than Host.
    let rsp = raw(
        port,
        "GET http://svc.example/x HTTP/1.1\r\nhost: admin.example",
    );
    assert_error(&rsp, 400, "bad_authority");
    let rsp = raw(
        port,
        "GET http://admin.example/x HTTP/1.1\r\nhost: svc.example",
    );
    assert_error(&rsp, 400, "bad_authority");
    // Repeated Host (RFC 9112 §3.2: 400).
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc.example\r\nhost: admin.example",
    );
    assert_error(&rsp, 400, "bad_authority");
    // HTTP/1.1 without Host.
    let rsp = raw(port, "GET /x HTTP/1.1");
    assert_eq!(rsp.status, 400, "{rsp:?}");
    // Not a host name.
    let rsp = raw(port, "GET /x HTTP/1.1\r\nhost: user@admin.example");
    assert_error(&rsp, 400, "bad_authority");

    // Agreeing absolute form: the app gets the canonical authority in Host
    // and an origin-form path.
    let rsp = raw(
        port,
        "GET http://SVC.example:80/a/../x HTTP/1.1\r\nhost: svc.example",
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    assert_eq!(rsp.json()["path"], "/x");
    assert_eq!(rsp.json()["headers"]["host"], "svc.example");
    // `Connection: host` does not take the authority away either.
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: Svc.Example\r\nconnection: host",
    );
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["headers"]["host"], "svc.example");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // HTTP/2: `:authority` and `host` must agree.
        let rsp = h2_get(port, "http://svc.example/x", &[("host", "admin.example")]).await;
        assert_error(&rsp, 400, "bad_authority");
        let rsp = h2_get(port, "http://admin.example/x", &[("host", "svc.example")]).await;
        assert_error(&rsp, 400, "bad_authority");
        // `:authority` alone routes like Host.
        let rsp = h2_get(port, "http://ADMIN.example/x", &[]).await;
        assert_error(&rsp, 400, "header_required");
        let rsp = h2_get(port, "http://svc.example/%70ub", &[("host", "svc.example")]).await;
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let echo = rsp.json();
        assert_eq!(echo["path"], "/pub");
        assert_eq!(echo["headers"]["host"], "svc.example");
    });
}

#[test]
fn signatures_cover_the_canonical_path_and_authority() {
    let app = EchoApp::start();
    let yaml = format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: private
    match: {{ path_prefix: /private/ }}
    filters: [verify]
  - name: b-only
    match: {{ host: b.example }}
    filters: [verify]
  - name: open
    match: {{ path_prefix: / }}
filters:
  verify:
    type: signature
    keys: [{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}]
    required_components: ["@method", "@authority", "@path", "@query"]
    max_age: 300s
"#,
        app.addr()
    );
    let sidecar = Sidecar::start(&yaml);
    let port = sidecar.inbound_port;
    let authority = format!("127.0.0.1:{port}");
    let hmac = hmac_args("app-1", SECRET, "@method,@authority,@path,@query");
    let sign = |url: &str| py_sign("GET", url, None, &hmac);

    // Unsigned, the dotted form of a private path meets the signature check.
    let rsp = raw(
        port,
        &format!("GET /pub/../private/x HTTP/1.1\r\nhost: {authority}"),
    );
    assert_eq!(rsp.status, 401, "{}", String::from_utf8_lossy(&rsp.body));

    // Signed for the normal form, sent in another: verified against the
    // normal form, which is also what the app gets.
    let signed = sign(&format!("http://{authority}/private/x"));
    let rsp = raw(
        port,
        &format!(
            "GET /pub/%2e%2e/private/x HTTP/1.1\r\n{}host: {authority}",
            header_lines(&signed)
        ),
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    assert_eq!(rsp.json()["path"], "/private/x");

    // A signature over the raw form does not verify: clients sign the normal form.
    // (`requests` resolves `..` in a URL but only decodes `%2e`, so this signs
    // the raw `/pub/../private/x`.)
    let raw_signed = sign(&format!("http://{authority}/pub/%2e%2e/private/x"));
    let rsp = raw(
        port,
        &format!(
            "GET /pub/../private/x HTTP/1.1\r\n{}host: {authority}",
            header_lines(&raw_signed)
        ),
    );
    assert_error(&rsp, 401, "signature_invalid");

    // Signed for a.example, sent to the b.example route in absolute form or
    // over HTTP/2 with a differing `host`: refused, never verified against
    // the URI's authority while routed by Host.
    let for_a = sign("http://a.example/x");
    let rsp = raw(
        port,
        &format!(
            "GET http://a.example/x HTTP/1.1\r\n{}host: b.example",
            header_lines(&for_a)
        ),
    );
    assert_error(&rsp, 400, "bad_authority");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut headers: Vec<(&str, &str)> = for_a
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        headers.push(("host", "b.example"));
        let rsp = h2_get(port, "http://a.example/x", &headers).await;
        assert_error(&rsp, 400, "bad_authority");
    });
    // And a signature for a.example does not pass as b.example.
    let rsp = raw(
        port,
        &format!("GET /x HTTP/1.1\r\n{}host: b.example", header_lines(&for_a)),
    );
    assert_error(&rsp, 401, "signature_invalid");
    // Signed for b.example, it does (the host's case does not matter).
    let for_b = sign("http://b.example/x");
    let rsp = raw(
        port,
        &format!("GET /x HTTP/1.1\r\n{}host: B.Example", header_lines(&for_b)),
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    assert_eq!(rsp.json()["headers"]["host"], "b.example");
}

#[test]
fn header_names_with_underscores_never_reach_a_cgi_style_app() {
    let app = WsgiApp::start();
    let sidecar = Sidecar::start(&guarded_yaml(&app.addr(), ""));
    let port = sidecar.inbound_port;
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx_meshgate_user: admin\r\nX-Meshgate_Tenant: t-1\r\n\
         X-MESHGATE-CLIENT-ID: evil\r\nx_forwarded_for: 6.6.6.6\r\nx_app_flag: 1\r\nx-app: kept",
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    let env = &rsp.json()["http"];
    assert!(env.get("HTTP_X_MESHGATE_USER").is_none(), "{env}");
    assert!(env.get("HTTP_X_MESHGATE_TENANT").is_none(), "{env}");
    assert!(env.get("HTTP_X_MESHGATE_CLIENT_ID").is_none(), "{env}");
    assert!(env.get("HTTP_X_APP_FLAG").is_none(), "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1");
    assert_eq!(env["HTTP_X_APP"], "kept");

    // Allowed, ordinary names pass; reserved ones in any spelling do not.
    sidecar.write_config(&guarded_yaml(
        &app.addr(),
        ", headers_with_underscores: allow",
    ));
    assert!(
        wait_until(Duration::from_secs(10), || {
            let rsp = raw(port, "GET /x HTTP/1.1\r\nhost: svc\r\nx_app_flag: 1");
            rsp.json()["http"].get("HTTP_X_APP_FLAG").is_some()
        }),
        "reload to allow did not apply"
    );
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx_meshgate_user: admin\r\nx_forwarded_for: 6.6.6.6",
    );
    let env = &rsp.json()["http"];
    assert!(env.get("HTTP_X_MESHGATE_USER").is_none(), "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1");

    // Refused with 400.
    sidecar.write_config(&guarded_yaml(
        &app.addr(),
        ", headers_with_underscores: reject",
    ));
    assert!(
        wait_until(Duration::from_secs(10), || {
            raw(port, "GET /x HTTP/1.1\r\nhost: svc\r\nx_app_flag: 1").status == 400
        }),
        "reload to reject did not apply"
    );
    let rsp = raw(port, "GET /x HTTP/1.1\r\nhost: svc\r\nx_app_flag: 1");
    assert_error(&rsp, 400, "bad_header_name");
}

#[test]
fn reserved_response_headers_are_removed_in_any_spelling() {
    // The app answers with instruction headers spelled every way.
    let app_port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("app.py");
    std::fs::write(
        &script,
        r#"
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("X-MESHGATE-SESSION-SET", '{"sub":"leak"}')
        self.send_header("x_meshgate_user", "leak")
        self.send_header("X-Meshgate_Tenant", "leak")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#,
    )
    .expect("script");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(app_port.to_string());
    let _app = Proc::spawn("leaky-app", &mut cmd, dir.path().join("app.log"));
    assert!(wait_until(Duration::from_secs(10), || port_open(app_port)));
    let sidecar = Sidecar::start(&guarded_yaml(&format!("127.0.0.1:{app_port}"), ""));
    let rsp = raw(sidecar.inbound_port, "GET /x HTTP/1.1\r\nhost: svc");
    assert_eq!(rsp.status, 200, "{rsp:?}");
    for name in [
        "x-meshgate-session-set",
        "x_meshgate_user",
        "x-meshgate_tenant",
    ] {
        assert!(
            !rsp.headers.contains_key(name),
            "{name} reached the client:\n{:?}",
            rsp.headers
        );
    }
}

#[test]
fn client_sent_forwarding_headers_are_replaced() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&guarded_yaml(&app.addr(), ""));
    let port = sidecar.inbound_port;
    let spoofed = "x-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\n\
                   x-forwarded-host: admin.example\r\nforwarded: for=6.6.6.6;host=admin.example\r\n\
                   x-real-ip: 6.6.6.6\r\nx-original-url: /private/x\r\nx-rewrite-url: /private/x\r\n\
                   x-http-method-override: DELETE\r\nx-method-override: DELETE\r\n\
                   true-client-ip: 6.6.6.6";
    let rsp = raw(port, &format!("GET /x HTTP/1.1\r\nhost: svc\r\n{spoofed}"));
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    let headers = &rsp.json()["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    for name in [
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x-method-override",
        "true-client-ip",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the app: {headers}"
        );
    }
}

fn limited_yaml(app: &str, hops: usize) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}", xff_trusted_hops: {hops} }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    filters: [limit]
filters:
  limit:
    type: rate_limit
    rules:
      - {{ name: per-ip, key: client_ip, algorithm: fixed_window, limit: 1, window: 1h }}
"#
    )
}

#[test]
fn trusted_hops_decide_the_client_address() {
    let app = EchoApp::start();

    // No trusted hops: a client cannot buy a fresh rate-limit key with XFF.
    let sidecar = Sidecar::start(&limited_yaml(&app.addr(), 0));
    let port = sidecar.inbound_port;
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx-forwarded-for: 1.1.1.1",
    );
    assert_eq!(rsp.status, 200);
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx-forwarded-for: 2.2.2.2",
    );
    assert_error(&rsp, 429, "rate_limited");
    drop(sidecar);

    // One trusted hop (a gateway in front): the entry it appended is the client.
    let sidecar = Sidecar::start(&limited_yaml(&app.addr(), 1));
    let port = sidecar.inbound_port;
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx-forwarded-for: 9.9.9.9, 1.1.1.1\r\nx-forwarded-proto: https",
    );
    assert_eq!(rsp.status, 200, "{}", String::from_utf8_lossy(&rsp.body));
    let headers = &rsp.json()["headers"];
    // The untrusted part is dropped, the peer appended.
    assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx-forwarded-for: 8.8.8.8, 2.2.2.2",
    );
    assert_eq!(rsp.status, 200);
    let rsp = raw(
        port,
        "GET /x HTTP/1.1\r\nhost: svc\r\nx-forwarded-for: 7.7.7.7, 1.1.1.1",
    );
    assert_error(&rsp, 429, "rate_limited");
    // The access log names the same client.
    assert!(
        wait_until(Duration::from_secs(5), || sidecar
            .proc
            .output()
            .contains("\"client\":\"2.2.2.2\"")),
        "access log:\n{}",
        sidecar.proc.output()
    );
}
