//! The sidecar's data path, end to end: the real `meshgate` binary in front
//! of the real echo app.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use meshgate_test_harness::http_client::{send_h1, send_h2c, send_tls};
use meshgate_test_harness::raw_http::RawConn;
use meshgate_test_harness::{assert_error, get, request, wait_until, EchoApp, Sidecar};

fn config(app: &str, extra_routes: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}", request_timeout: 2s, max_header_bytes: 4096, max_body_bytes: 65536 }}
app: {{ address: "{app}", connect_timeout: 500ms }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
{extra_routes}
  - name: bill-mock
    match: {{ path: /mock/bill, methods: [GET] }}
    respond: {{ status: 200, headers: {{ content-type: application/json, x-mock: "1" }}, body: '{{"bill":[]}}' }}
  - name: slow
    match: {{ path: /slow }}
    timeout: 300ms
  - name: upload
    match: {{ path: /upload }}
    timeout: 300s
  - name: buffered
    match: {{ path_prefix: /buffered }}
    buffer_request: true
    max_body_bytes: 1024
  - name: api
    match: {{ path_prefix: / }}
    filters: [policy]
filters:
  policy: {{ type: header, deny: [x-debug] }}
error_codes: {{ route_not_found: 1404 }}
"#
    )
}

fn start() -> (EchoApp, Sidecar) {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), ""));
    (app, sidecar)
}

fn post(url: &str, body: impl Into<Bytes>) -> Request<Bytes> {
    Request::post(url).body(body.into()).expect("request")
}

#[test]
fn forwards_get_and_post_with_forwarding_headers() {
    let (_app, sidecar) = start();
    let rsp = request(
        Request::get(sidecar.url("/hello?x=1"))
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header("x-request-id", "req-123")
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "secret")
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("get");
    assert_eq!(rsp.status, 200);
    let echo = rsp.json();
    assert_eq!(echo["path"], "/hello?x=1");
    let h = &echo["headers"];
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("x-hop").is_none(),
        "connection-named header forwarded: {h}"
    );
    assert_eq!(rsp.header("x-request-id"), Some("req-123"));
    // The app's hop-by-hop response header does not reach the client, nor do
    // its instruction headers to the sidecar.
    assert!(rsp.header("x-app-secret-hop").is_none());
    assert!(rsp.header("x-meshgate-session-set").is_none());

    let rsp = request(post(&sidecar.url("/transfer"), r#"{"amount":5}"#)).expect("post");
    assert_eq!(rsp.json()["body_len"], 12);
    // Generated request ids are UUIDs and reach the app too.
    assert_eq!(rsp.header("x-request-id").map(str::len), Some(36));
    assert_eq!(
        rsp.json()["headers"]["x-request-id"].as_str(),
        rsp.header("x-request-id")
    );
}

#[test]
fn client_supplied_identity_headers_are_stripped() {
    let (_app, sidecar) = start();
    let rsp = request(
        Request::get(sidecar.url("/me"))
            .header("x-meshgate-user", "admin")
            .header("X-Meshgate-Client-Id", "forged")
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("get");
    let headers = rsp.json()["headers"].clone();
    let forged: Vec<_> = headers
        .as_object()
        .expect("map")
        .keys()
        .filter(|k| k.starts_with("x-meshgate-"))
        .collect();
    assert!(
        forged.is_empty(),
        "identity headers reached the app: {forged:?}"
    );
}

#[test]
fn mock_route_answers_without_the_app() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), ""));
    drop(app);
    let rsp = get(&sidecar.url("/mock/bill")).expect("mock");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.text(), r#"{"bill":[]}"#);
    assert_eq!(rsp.header("x-mock"), Some("1"));
}

#[test]
fn error_answers_have_status_code_and_json_body() {
    let (app, sidecar) = start();
    // 404 with the custom code from error_codes.
    let sidecar_404 = {
        let other = Sidecar::start(
            &config(&app.addr(), "")
                .replace("match: { path_prefix: / }", "match: { path_prefix: /api/ }"),
        );
        let rsp = get(&other.url("/nowhere")).expect("404");
        assert_error(&rsp, 404, "route_not_found");
        assert_eq!(rsp.json()["code"], 1404);
        other
    };
    drop(sidecar_404);

    // 403 from the filter chain.
    let rsp = request(
        Request::get(sidecar.url("/x"))
            .header("x-debug", "1")
            .body(Bytes::new())
            .expect("req"),
    )
    .expect("403");
    assert_error(&rsp, 403, "header_forbidden");

    // 413: buffered route over its body limit; the app never sees it.
    let rsp = request(post(&sidecar.url("/buffered"), vec![b'a'; 4096])).expect("413");
    assert_error(&rsp, 413, "body_too_large");
    let rsp = request(post(&sidecar.url("/buffered"), vec![b'a'; 512])).expect("buffered ok");
    assert_eq!(rsp.json()["body_len"], 512);
    assert_eq!(rsp.json()["headers"]["content-length"], "512");

    // 431: head over max_header_bytes.
    let rsp = request(
        Request::get(sidecar.url("/x"))
            .header("x-big", "b".repeat(5000))
            .body(Bytes::new())
            .expect("req"),
    )
    .expect("431");
    assert_error(&rsp, 431, "header_too_large");

    // 504: the app is slower than the route timeout.
    let rsp = get(&sidecar.url("/slow?ms=2000")).expect("504");
    assert_error(&rsp, 504, "upstream_timeout");

    // 502: the app is gone.
    drop(app);
    let rsp = get(&sidecar.url("/x")).expect("502");
    assert_error(&rsp, 502, "upstream_unreachable");
}

#[test]
fn connect_timeout_is_504() {
    // A non-routable address in TEST-NET-1 would leave the loopback; use a
    // listening socket whose accept queue is full instead: backlog 0, filled.
    let listener = socket_with_full_backlog();
    let port = listener.local_addr().expect("addr").port();
    let sidecar = Sidecar::start(&config(&format!("127.0.0.1:{port}"), ""));
    let rsp = get(&sidecar.url("/x")).expect("response");
    let body = rsp.json();
    assert_eq!(
        (rsp.status, body["error"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    assert_eq!(body["message"], "connecting to the app timed out");
    drop(listener);
}

fn socket_with_full_backlog() -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue; further SYNs are dropped and connects hang.
    let mut held = Vec::new();
    for _ in 0..512 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    std::mem::forget(held);
    listener
}

#[test]
fn large_upload_and_download_stream_without_buffering() {
    let (_app, sidecar) = start();
    const SIZE: u64 = 1 << 30; // 1 GiB
    let url = sidecar.url("/upload");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (rsp, expected_sha) = rt.block_on(async move {
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        for _ in 0..(SIZE >> 20) {
            digest.update(&chunk);
        }
        let frames = futures_util::stream::iter((0..(SIZE >> 20)).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        }));
        let body = http_body_util::StreamBody::new(frames);
        let uri: http::Uri = url.parse().expect("uri");
        let stream = tokio::net::TcpStream::connect((
            uri.host().expect("host"),
            uri.port_u16().expect("port"),
        ))
        .await
        .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = Request::post("/upload")
            .header("host", "localhost")
            .body(body)
            .expect("req");
        let rsp = sender.send_request(req).await.expect("send");
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .expect("body")
            .to_bytes();
        (body, hex::encode(digest.finish().as_ref()))
    });
    let echo: serde_json::Value = serde_json::from_slice(&rsp).expect("json");
    assert_eq!(echo["body_len"], SIZE);
    assert_eq!(echo["body_sha256"], expected_sha);

    let rsp = get(&sidecar.url("/download?bytes=67108864")).expect("download");
    assert_eq!(rsp.body.len(), 64 << 20);

    // Peak memory of the sidecar stayed far below the 1 GiB that went through it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sidecar.proc.child.id()))
        .expect("proc status");
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kb < 200 * 1024,
        "sidecar peak RSS {peak_kb} kB: the body was buffered"
    );
}

#[tokio::test]
async fn h2c_client_is_served() {
    let (_app, sidecar) = start();
    let rsp = send_h2c(
        Request::get(sidecar.url("/h2"))
            .body(Bytes::new())
            .expect("req"),
    )
    .await
    .expect("h2c");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["path"], "/h2");
    // The app speaks HTTP/1.1; the sidecar bridged, giving it the Host it needs.
    assert_eq!(rsp.json()["version"], "HTTP/1.1");
    assert_eq!(
        rsp.json()["headers"]["host"],
        format!("127.0.0.1:{}", sidecar.inbound_port)
    );
}

/// Writes to `inner`, except that the first `skip` bytes written are only
/// counted: they were sent by hand before.
struct AlreadySent {
    inner: tokio::net::TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for AlreadySent {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for AlreadySent {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_http2_preface_sent_in_pieces_is_still_http2() {
    let (_app, sidecar) = start();
    // The first part of the preface, a pause, then the rest with the
    // client's frames: the sidecar looks again until it can tell.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.inbound_port))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"PRI * HTTP/2.0\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let io = AlreadySent {
        inner: tcp,
        skip: b"PRI * HTTP/2.0\r\n".len(),
    };
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), h2::client::handshake(io))
        .await
        .expect("handshake in time")
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client;
    let rsp = meshgate_test_harness::h2_client::h2_send(
        &mut client,
        Request::get(sidecar.url("/pieces")).body(()).expect("req"),
        None,
    )
    .await;
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["path"], "/pieces");
}

#[tokio::test]
async fn a_client_that_stops_inside_the_http2_preface_is_closed_at_the_header_timeout() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(
        &config(&app.addr(), "").replace("inbound: {", "inbound: { header_timeout: 1s,"),
    );
    let mut conn = RawConn::connect(sidecar.inbound_port).await;
    conn.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let closed = conn.closed_within(Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "a partial preface kept the connection open"
    );
}

#[tokio::test]
async fn bytes_that_leave_the_http2_preface_are_read_as_http1() {
    let (_app, sidecar) = start();
    let mut conn = RawConn::connect(sidecar.inbound_port).await;
    // "PRI" then not the preface: an HTTP/1 request line with method PRI.
    let rsp = conn
        .exchange("PRI /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .expect("an HTTP/1 answer");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["method"], "PRI");
}

#[test]
fn an_idle_keep_alive_connection_holds_little_more_than_hypers_two_buffers() {
    const CONNECTIONS: u64 = 200;
    let (_app, sidecar) = start();
    let allocated = || counter(&sidecar.metrics(), "meshgate_memory_allocated_bytes");
    assert_eq!(get(&sidecar.url("/warm")).expect("get").status, 200);
    let before = allocated();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let held = runtime.block_on(async {
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            let mut conn = RawConn::connect(sidecar.inbound_port).await;
            let rsp = conn
                .exchange("GET /held HTTP/1.1\r\nHost: a.example\r\n\r\n")
                .await
                .expect("answer");
            assert_eq!(rsp.status, 200);
            held.push(conn);
        }
        held
    });
    let per_connection = allocated().saturating_sub(before) / CONNECTIONS;
    // hyper's 8 KiB read and 8 KiB write buffers, the connection's task
    // (2.5 KiB) and small state. A read buffer grown to 16 KiB (the
    // protocol sniffed by reading and handing bytes back) would be 28 KiB.
    assert!(
        per_connection < 24 * 1024,
        "{per_connection} bytes allocated per idle keep-alive connection"
    );
    drop(held);
}

#[tokio::test]
async fn grpc_round_trip_keeps_trailers() {
    let app = EchoApp::start();
    let cfg = config(&app.addr(), "").replace(
        &format!("address: \"{}\"", app.addr()),
        &format!("address: \"{}\", protocol: http2", app.addr()),
    );
    let sidecar = Sidecar::start(&cfg);
    // One gRPC message: uncompressed flag, length, payload.
    let mut msg = vec![0u8, 0, 0, 0, 5];
    msg.extend_from_slice(b"hello");
    let req = Request::post(sidecar.url("/grpc/wallet.Wallet/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Bytes::from(msg.clone()))
        .expect("req");
    let rsp = send_h2c(req).await.expect("grpc");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.header("content-type"), Some("application/grpc"));
    assert_eq!(&rsp.body[..], &msg[..]);
    let trailers = rsp.trailers.expect("trailers");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    assert_eq!(
        trailers.get("grpc-message").map(|v| v.as_bytes()),
        Some(&b"echoed"[..])
    );
}

#[tokio::test]
async fn websocket_is_passed_through() {
    let (_app, sidecar) = start();
    let url = format!("ws://127.0.0.1:{}/ws", sidecar.inbound_port);
    let (mut ws, rsp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake");
    assert_eq!(rsp.status(), 101);
    for text in ["ping", "second message"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("in time")
            .expect("frame")
            .expect("ok");
        assert_eq!(echoed.into_text().expect("text").as_str(), text);
    }
}

#[tokio::test]
async fn tls_with_alpn_h2_and_http1() {
    let app = EchoApp::start();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("write");
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("write");
    let cfg = config(&app.addr(), "").replace(
        "request_timeout: 2s,",
        &format!(
            "request_timeout: 2s, tls: {{ cert: {}/cert.pem, key: {}/key.pem }},",
            dir.path().display(),
            dir.path().display()
        ),
    );
    let sidecar = Sidecar::start(&cfg);
    let (rsp, alpn) = send_tls(
        Request::get(sidecar.url("/tls"))
            .body(Bytes::new())
            .expect("req"),
        cert.cert.pem().as_bytes(),
        "localhost",
    )
    .await
    .expect("tls");
    assert_eq!(alpn, "h2");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["headers"]["x-forwarded-proto"], "https");
}

#[test]
fn unix_socket_app() {
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("app.sock");
    let _app = EchoApp::start_unix(&sock);
    let sidecar = Sidecar::start(&config(&format!("unix:{}", sock.display()), ""));
    let rsp = get(&sidecar.url("/over-unix")).expect("get");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.json()["path"], "/over-unix");
}

#[test]
fn unhealthy_app_gets_503_and_not_ready() {
    let app = EchoApp::start();
    let cfg = config(&app.addr(), "").replace(
        &format!("address: \"{}\"", app.addr()),
        &format!(
            "address: \"{}\", health_path: /healthz, health_interval: 100ms",
            app.addr()
        ),
    );
    let sidecar = Sidecar::start(&cfg);
    assert_eq!(get(&sidecar.url("/x")).expect("ok").status, 200);
    request(post(
        &format!("http://{}/control/unhealthy", app.addr()),
        "",
    ))
    .expect("toggle");
    assert!(wait_until(Duration::from_secs(5), || get(
        &sidecar.admin_url("/ready")
    )
    .map(|r| r.status == 503)
    .unwrap_or(false)));
    let rsp = get(&sidecar.url("/x")).expect("503");
    assert_error(&rsp, 503, "app_unhealthy");
    request(post(&format!("http://{}/control/healthy", app.addr()), "")).expect("toggle");
    assert!(wait_until(Duration::from_secs(5), || get(
        &sidecar.admin_url("/ready")
    )
    .map(|r| r.status == 200)
    .unwrap_or(false)));
    assert_eq!(get(&sidecar.url("/x")).expect("ok").status, 200);
}

#[test]
fn hot_reload_applies_valid_and_rejects_invalid_files() {
    let (app, sidecar) = start();
    let v1 = sidecar.version();
    assert_eq!(get(&sidecar.url("/mock/bill")).expect("mock").status, 200);

    // Valid change: the mock body changes, without a restart.
    let changed = config(&app.addr(), "").replace(r#"'{"bill":[]}'"#, r#"'{"bill":[1]}'"#);
    sidecar.write_config(&changed);
    let v2 = sidecar.wait_version_change(&v1);
    assert_eq!(
        get(&sidecar.url("/mock/bill")).expect("mock").text(),
        r#"{"bill":[1]}"#
    );

    // Invalid change: rejected with the field path; v2 keeps serving.
    let broken = changed.replace("methods: [GET]", "methods: [\"GE T\"]");
    sidecar.write_config(&broken);
    assert!(wait_until(Duration::from_secs(10), || !sidecar
        .config_dump()["last_rejected"]
        .is_null()));
    let dump = sidecar.config_dump();
    assert_eq!(dump["version"], v2.as_str());
    let errors = dump["last_rejected"]["errors"]
        .as_array()
        .expect("errors")
        .clone();
    assert_eq!(
        errors[0]["path"], "routes[0].match.methods[0]",
        "{errors:?}"
    );
    assert_eq!(
        get(&sidecar.url("/mock/bill")).expect("mock").text(),
        r#"{"bill":[1]}"#
    );
    assert!(
        sidecar
            .metrics()
            .contains("meshgate_config_reloads_total{result=\"failed\"} 1"),
        "{}",
        sidecar.metrics()
    );
    assert!(
        sidecar.proc.output().contains("routes[0].match.methods[0]"),
        "the log names the field"
    );
    let m = sidecar.metrics();
    assert!(
        m.contains(&format!("meshgate_config_info{{version=\"{v2}\"}} 1")),
        "{m}"
    );
    assert!(
        m.contains(&format!("meshgate_config_info{{version=\"{v1}\"}} 0")),
        "{m}"
    );
}

#[test]
fn secrets_are_redacted_in_config_dump() {
    let app = EchoApp::start();
    let cfg = config(&app.addr(), "").replace(
        "error_codes:",
        "redis: { url: \"redis://:hunter2@127.0.0.1:1/\" }\nerror_codes:",
    );
    let sidecar = Sidecar::start(&cfg);
    let dump = sidecar.config_dump().to_string();
    assert!(!dump.contains("hunter2"), "{dump}");
    assert!(dump.contains("[redacted]"), "{dump}");
}

#[test]
fn metrics_count_requests_by_route_and_status() {
    let (_app, sidecar) = start();
    for _ in 0..3 {
        get(&sidecar.url("/mock/bill")).expect("mock");
    }
    let m = sidecar.metrics();
    assert!(
        m.contains("meshgate_requests_total{route=\"bill-mock\",status=\"200\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("meshgate_request_duration_seconds_bucket{route=\"bill-mock\""),
        "{m}"
    );
}

#[test]
fn the_process_memory_is_on_metrics_and_the_allocator_statistics_on_memory() {
    let (_app, sidecar) = start();
    assert_eq!(get(&sidecar.url("/hello")).expect("get").status, 200);
    let m = sidecar.metrics();
    for gauge in [
        "process_resident_memory_bytes",
        "meshgate_memory_allocated_bytes",
        "meshgate_memory_resident_bytes",
    ] {
        let value = counter(&m, gauge);
        assert!(value > 100_000, "{gauge} {value}\n{m}");
    }
    let memory = get(&sidecar.admin_url("/memory")).expect("get");
    assert_eq!(memory.status, 200);
    assert!(memory.text().contains("bins:"), "{}", memory.text());
}

/// The value of an unlabelled counter in the Prometheus text, 0 when absent.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn app_connections_are_pooled_reaped_when_idle_and_replaced_after_an_app_restart() {
    const OPENED: &str = "meshgate_upstream_connections_opened_total";
    let mut app = EchoApp::start();
    let cfg = config(&app.addr(), "").replace(
        "connect_timeout: 500ms",
        "connect_timeout: 500ms, pool_idle_timeout: 1s",
    );
    let sidecar = Sidecar::start(&cfg);
    for i in 0..30 {
        let rsp = get(&sidecar.url(&format!("/pooled/{i}"))).expect("get");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    }
    // One request at a time: one connection carries them all (a second may
    // open when a request beats hyper's bookkeeping of the previous one).
    let opened = counter(&sidecar.metrics(), OPENED);
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections for 30 requests"
    );

    // Idle past the pool timeout: the connection is closed, the next request opens one.
    std::thread::sleep(Duration::from_millis(2600));
    assert_eq!(get(&sidecar.url("/after-idle")).expect("get").status, 200);
    assert_eq!(counter(&sidecar.metrics(), OPENED), opened + 1);

    // The app restarts: the pooled connection died with it, and the next
    // request goes out on a new connection instead of failing.
    app.restart();
    for i in 0..5 {
        let rsp = get(&sidecar.url(&format!("/after-restart/{i}"))).expect("get");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    }
    assert!(counter(&sidecar.metrics(), OPENED) >= opened + 2);
}

/// Established TCP connections whose far end is `port` on this host: the
/// sidecar's connections to an app listening there.
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&"01")
        })
        .count()
}

#[test]
fn a_bursts_app_connections_close_within_seconds_and_one_stays_for_the_next_request() {
    const OPENED: &str = "meshgate_upstream_connections_opened_total";
    let app = EchoApp::start();
    let port: u16 = app
        .addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // The default pool: up to 256 idle connections, 90 s idle timeout.
    let cfg = config(
        &app.addr(),
        "  - name: burst\n    match: { path: /slow }\n    timeout: 10s\n",
    );
    let sidecar = Sidecar::start(&cfg);
    // 32 requests at once, each held 300 ms by the app: a connection each.
    let url = sidecar.url("/slow?ms=300");
    let burst: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || get(&url).expect("get").status)
        })
        .collect();
    for request in burst {
        assert_eq!(request.join().expect("request thread"), 200);
    }
    let opened = counter(&sidecar.metrics(), OPENED);
    assert!(
        opened >= 8,
        "{opened} connections for 32 concurrent requests"
    );
    // Every second, half of the connections left unused go: well within the
    // idle timeout only one is left, kept for the next request.
    assert!(
        wait_until(Duration::from_secs(30), || connections_to(port) == 1),
        "{} app connections open 30 s after a burst that opened {opened}",
        connections_to(port)
    );
    assert_eq!(get(&sidecar.url("/after")).expect("get").status, 200);
    assert_eq!(counter(&sidecar.metrics(), OPENED), opened);
}

#[test]
fn log_level_changes_at_runtime() {
    let (_app, sidecar) = start();
    let rsp = request(sidecar.admin_post("/logging?level=warn")).expect("set level");
    assert_eq!(rsp.status, 200);
    assert_eq!(
        get(&sidecar.admin_url("/logging"))
            .expect("get level")
            .json()["level"],
        "warn"
    );
    let before = sidecar
        .proc
        .output()
        .matches("\"target\":\"access\"")
        .count();
    get(&sidecar.url("/quiet")).expect("get");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        sidecar
            .proc
            .output()
            .matches("\"target\":\"access\"")
            .count(),
        before,
        "access log still written at warn"
    );
    let rsp = request(sidecar.admin_post("/logging?level=nonsense=[[")).expect("bad level");
    assert_eq!(rsp.status, 400);
}

#[test]
fn validate_subcommand_reports_field_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: r\n    match: { path: nope }\n    filters: [ghost]\n",
    )
    .expect("write");
    let out = std::process::Command::new(meshgate_test_harness::bin("meshgate"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].match.path: must start with '/'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[0].filters[0]: no filter named \"ghost\""),
        "{stderr}"
    );
    std::fs::write(&file, "routes:\n  - name: r\n    match: { path: /ok }\n").expect("write");
    let out = std::process::Command::new(meshgate_test_harness::bin("meshgate"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn drain_finishes_in_flight_requests_then_exits() {
    let (_app, mut sidecar) = start();
    let slow_url = sidecar.url("/buffered-slow");
    let cfg_slow = sidecar.url("/slow?ms=250");
    let in_flight = std::thread::spawn(move || get(&cfg_slow));
    std::thread::sleep(Duration::from_millis(80));
    let rsp = request(sidecar.admin_post("/drain")).expect("drain");
    assert_eq!(rsp.status, 202);
    let slow = in_flight
        .join()
        .expect("thread")
        .expect("in-flight request completed");
    // The slow route's timeout is 300ms; the request finished during the drain.
    assert_eq!(slow.status, 200);
    let status = sidecar
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("sidecar exited after draining");
    assert!(status.success());
    assert!(get(&slow_url).is_err(), "still accepting after drain");
}

#[test]
fn reloads_under_load_fail_no_request() {
    let (app, sidecar) = start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = sidecar.url("/load");
    let port = sidecar.inbound_port;
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let stop = stop.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("rt");
                rt.block_on(async move {
                    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .expect("connect");
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .expect("handshake");
                    tokio::spawn(conn);
                    let (mut ok, mut failed) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let req = Request::get(url.as_str())
                            .header("host", format!("127.0.0.1:{port}"))
                            .body(http_body_util::Empty::<Bytes>::new())
                            .expect("req");
                        match sender.send_request(req).await {
                            Ok(rsp) if rsp.status() == 200 => {
                                let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
                                ok += 1;
                            }
                            _ => failed += 1,
                        }
                    }
                    (ok, failed)
                })
            })
        })
        .collect();
    let mut version = sidecar.version();
    for i in 0..100 {
        let cfg =
            config(&app.addr(), "").replace(r#"'{"bill":[]}'"#, &format!(r#"'{{"bill":[{i}]}}'"#));
        sidecar.write_config(&cfg);
        version = sidecar.wait_version_change(&version);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().expect("worker");
        ok += o;
        failed += f;
    }
    assert_eq!(
        failed, 0,
        "{failed} requests failed during reloads ({ok} ok)"
    );
    assert!(ok > 100, "load did not run: {ok}");
    let _ = send_h1; // async client used by other tests
}

/// The name of jemalloc's background purging thread.
const JEMALLOC_PURGER: &str = "jemalloc_bg_thd";

/// The names of a process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .map(|t| {
            let comm = t.expect("task").path().join("comm");
            std::fs::read_to_string(comm)
                .expect("comm")
                .trim()
                .to_string()
        })
        .collect()
}

/// The allocator settings of `.cargo/config.toml` are compiled in: with
/// `background_thread:true` jemalloc purges freed memory from its own thread
/// (BENCHMARKS.md, memory after load).
#[test]
fn the_allocator_purges_freed_memory_in_the_background() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), ""));
    let pid = sidecar.proc.child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !thread_names(pid).iter().any(|n| n == JEMALLOC_PURGER) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {JEMALLOC_PURGER} thread: {:?}",
            thread_names(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the rest of the settings, as jemalloc reports them on /memory.
    let memory = get(&sidecar.admin_url("/memory")).expect("get").text();
    for option in [
        "opt.narenas: 1\n",
        "opt.dirty_decay_ms: 300 ",
        "opt.muzzy_decay_ms: 0 ",
        "opt.tcache_nslots_small_min: 40\n",
    ] {
        assert!(memory.contains(option), "{option:?} not in\n{memory}");
    }
}

#[tokio::test]
async fn single_worker_runtime_serves_and_drains() {
    let app = EchoApp::start();
    let mut sidecar = Sidecar::start_with_args(&config(&app.addr(), ""), &["--concurrency", "1"]);
    let threads: Vec<String> = thread_names(sidecar.proc.child.id())
        .into_iter()
        // The allocator's purging thread serves no traffic.
        .filter(|name| name != JEMALLOC_PURGER)
        .collect();
    // One thread serves traffic; the file watcher and the access-log
    // flusher add their own.
    assert!(
        threads.len() <= 3,
        "threads with --concurrency 1: {threads:?}"
    );
    let rsp = send_h2c(
        Request::get(sidecar.url("/one"))
            .body(Bytes::new())
            .expect("req"),
    )
    .await
    .expect("h2c");
    assert_eq!(rsp.status, 200);
    let rsp = send_h1(
        Request::get(sidecar.url("/two"))
            .body(Bytes::new())
            .expect("req"),
    )
    .await
    .expect("h1");
    assert_eq!(rsp.json()["path"], "/two");
    let drain = send_h1(sidecar.admin_post("/drain")).await.expect("drain");
    assert_eq!(drain.status, 202);
    assert!(sidecar
        .proc
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
