//! End-to-end tests of how the sidecar reads requests: body presence decided
//! from the body, only WebSocket upgrades tunnelled, and time bounds on every
//! read. The real `meshgate` binary is attacked with hand-made HTTP/1.1 and
//! HTTP/2 traffic; the app behind it is a small raw-TCP server in this file
//! that misbehaves on purpose (accepts `h2c` upgrades, answers 101 unasked,
//! puts identity headers on its 101) and records what reached it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshgate_test_harness::{
    assert_error, h2_connect, h2_send, header_lines, hmac_args, py_sign, read_head, EchoApp,
    HttpResult, RawConn, Sidecar,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";

/// The value of header `name` in a request head, by a lowercase name.
fn header_of(head_lower: &str, name: &str) -> Option<String> {
    head_lower.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// GET `path` on `conn`, with the sidecar's address as Host.
async fn get_on(conn: &mut RawConn, port: u16, path: &str) -> HttpResult {
    conn.exchange(&format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    ))
    .await
    .expect("answer")
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

// ---- the misbehaving app ----

/// A raw HTTP/1.1 app on a free port. By request:
/// - `Upgrade: h2c`: switches (101) and from then on answers every read with
///   a canned 200 `tunnelled`, as an app that speaks h2c would;
/// - `Upgrade: websocket`: 101 carrying `X-Meshgate-User: admin` and a
///   `Keep-Alive` header, then echoes bytes until the peer closes;
/// - `/force101`: 101 to a request that did not ask for it;
/// - `/upload`: reads a chunked body; records `complete` or `aborted`;
/// - anything else: 200 JSON with the path and the upgrade headers it saw.
struct RawApp {
    port: u16,
    /// Request heads as received.
    heads: Arc<Mutex<Vec<String>>>,
    /// What happened to `/upload` bodies.
    uploads: Arc<Mutex<Vec<&'static str>>>,
}

impl RawApp {
    async fn start() -> RawApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let uploads = Arc::new(Mutex::new(Vec::new()));
        let (h, u) = (heads.clone(), uploads.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(raw_app_connection(s, h.clone(), u.clone()));
            }
        });
        RawApp {
            port,
            heads,
            uploads,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }

    fn uploads(&self) -> Vec<&'static str> {
        self.uploads.lock().expect("uploads").clone()
    }
}

async fn echo_until_closed(mut s: TcpStream, mut buf: Vec<u8>) {
    if !buf.is_empty() && s.write_all(&buf).await.is_err() {
        return;
    }
    buf.resize(4096, 0);
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn raw_app_connection(
    mut s: TcpStream,
    heads: Arc<Mutex<Vec<String>>>,
    uploads: Arc<Mutex<Vec<&'static str>>>,
) {
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut s, &mut buf).await {
        heads.lock().expect("heads").push(head.clone());
        let lower = head.to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let upgrade = header_of(&lower, "upgrade");
        let websocket_101 =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-Meshgate-User: admin\r\n\
             X-MESHGATE-CLIENT-ID: app-1\r\nKeep-Alive: timeout=5\r\n\r\n";
        if path == "/force101" {
            let _ = s.write_all(websocket_101.as_bytes()).await;
            return echo_until_closed(s, buf).await;
        }
        match upgrade.as_deref() {
            Some("h2c") => {
                let _ = s
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
                    )
                    .await;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    let canned = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntunnelled";
                    if n == 0 || s.write_all(canned).await.is_err() {
                        return;
                    }
                }
                return;
            }
            Some("websocket") => {
                let _ = s.write_all(websocket_101.as_bytes()).await;
                return echo_until_closed(s, buf).await;
            }
            _ => {}
        }
        if path == "/upload" {
            loop {
                if find(&buf, b"0\r\n\r\n").is_some() {
                    uploads.lock().expect("uploads").push("complete");
                    buf.clear();
                    break;
                }
                let mut chunk = [0u8; 4096];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        uploads.lock().expect("uploads").push("aborted");
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        let body = serde_json::json!({
            "path": path,
            "upgrade": upgrade,
            "connection": header_of(&lower, "connection"),
            "http2-settings": header_of(&lower, "http2-settings"),
        })
        .to_string();
        let rsp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(rsp.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---- item 1: body presence comes from the body ----

/// A signature over a request without a body (no `content-digest`) replayed
/// with a chunked HTTP/1.1 body, or with HTTP/2 DATA frames and no
/// `Content-Length`, must not deliver that body to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_bodyless_request_replayed_with_a_streamed_body_is_refused() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - {{ name: pay, match: {{ path_prefix: / }}, filters: [verify] }}
filters:
  verify:
    type: signature
    keys: [{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}]
    required_components: ["@method", "@authority", "@path", "@query"]
    require_nonce: true
"#,
        app.addr()
    ));
    let port = sidecar.inbound_port;
    let url = sidecar.url("/pay");
    let signed = py_sign(
        "POST",
        &url,
        None,
        &hmac_args("app-1", SECRET, "@method,@authority,@path,@query"),
    );
    let sig_headers = header_lines(&signed);

    // HTTP/1.1, chunked: Transfer-Encoding is hop-by-hop and never reaches the filter.
    let mut s = RawConn::connect(port).await;
    let replay = format!(
        "POST /pay HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{sig_headers}Content-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\nd\r\n{{\"amt\":99999}}\r\n0\r\n\r\n"
    );
    let rsp = s.exchange(&replay).await.expect("answer");
    assert_error(&rsp, 401, "component_missing");

    // HTTP/2: a body in DATA frames, no Content-Length.
    let (mut h2, _) = h2_connect(port).await;
    let mut req = http::Request::post(&url).header("content-type", "application/json");
    for (k, v) in &signed {
        req = req.header(k.as_str(), v.as_str());
    }
    let rsp = h2_send(
        &mut h2,
        req.body(()).expect("request"),
        Some(br#"{"amt":99999}"#),
    )
    .await;
    assert_error(&rsp, 401, "component_missing");

    // The same signature without a body is valid: it was the body that was refused.
    let mut s = RawConn::connect(port).await;
    let honest = format!(
        "POST /pay HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{sig_headers}Content-Length: 0\r\n\r\n"
    );
    let rsp = s.exchange(&honest).await.expect("answer");
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(rsp.json()["body_len"], 0);
}

// ---- item 5: only WebSocket upgrades ----

fn upgrade_config(app: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - {{ name: ws, match: {{ path_prefix: /ws }}, filters: [limit] }}
  - {{ name: private, match: {{ path_prefix: /private }}, filters: [needkey] }}
  - {{ name: open, match: {{}} }}
filters:
  limit:
    type: rate_limit
    rules: [{{ name: in-flight, key: route, algorithm: concurrency, max: 1 }}]
  needkey: {{ type: header, require: [x-api-key] }}
"#
    )
}

/// `Upgrade: h2c` to an app that accepts it: the request reaches the app as
/// a plain request, no tunnel opens, and the next request on the connection
/// is routed and filtered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_tunnelled() {
    let app = RawApp::start().await;
    let sidecar = Sidecar::start(&upgrade_config(&app.addr()));
    let port = sidecar.inbound_port;
    let mut s = RawConn::connect(port).await;
    let rsp = s.exchange(
        &format!(
            "GET /open HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        ),
    )
    .await
    .expect("answer");
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let seen = rsp.json();
    assert_eq!(seen["path"], "/open");
    assert!(seen["upgrade"].is_null(), "the app saw {seen}");
    assert!(seen["http2-settings"].is_null(), "the app saw {seen}");

    // Same connection: still HTTP through the sidecar, so the filter runs.
    let rsp = get_on(&mut s, port, "/private/x").await;
    assert_error(&rsp, 400, "header_required");
    assert!(
        !app.heads().iter().any(|h| h.contains("/private")),
        "{:?}",
        app.heads()
    );
}

/// A 101 to a request that asked for no upgrade must not turn the client's
/// connection into a tunnel, over HTTP/1.1 or HTTP/2. CONNECT is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrequested_switch_and_connect_are_refused() {
    let app = RawApp::start().await;
    let sidecar = Sidecar::start(&upgrade_config(&app.addr()));
    let port = sidecar.inbound_port;
    let mut s = RawConn::connect(port).await;
    let rsp = get_on(&mut s, port, "/force101").await;
    assert_error(&rsp, 502, "upstream_error");

    let (mut h2, _) = h2_connect(port).await;
    let rsp = h2_send(
        &mut h2,
        http::Request::get(sidecar.url("/force101"))
            .body(())
            .expect("request"),
        None,
    )
    .await;
    assert_eq!(rsp.status, 502, "{}", rsp.text());

    let mut s = RawConn::connect(port).await;
    let rsp = s
        .exchange("CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        .await
        .expect("answer");
    assert_error(&rsp, 405, "method_not_allowed");
    let rsp = h2_send(
        &mut h2,
        http::Request::connect("127.0.0.1:9")
            .body(())
            .expect("request"),
        None,
    )
    .await;
    assert_eq!(rsp.status, 405, "{}", rsp.text());
    assert!(
        !app.heads().iter().any(|h| h.starts_with("CONNECT")),
        "{:?}",
        app.heads()
    );
}

fn websocket_request(port: u16) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// A WebSocket tunnel keeps its concurrency permit while it is open, and the
/// app's 101 loses its `x-meshgate-*` and hop-by-hop headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_holds_its_permit_and_its_101_is_cleaned() {
    let app = RawApp::start().await;
    let sidecar = Sidecar::start(&upgrade_config(&app.addr()));
    let port = sidecar.inbound_port;

    let mut first = RawConn::connect(port).await;
    let rsp = first
        .exchange(&websocket_request(port))
        .await
        .expect("answer");
    assert_eq!(rsp.status, 101, "{rsp:?}");
    assert_eq!(rsp.header("upgrade"), Some("websocket"));
    assert!(rsp.header("sec-websocket-accept").is_some(), "{rsp:?}");
    assert!(rsp.header("x-meshgate-user").is_none(), "{rsp:?}");
    assert!(rsp.header("x-meshgate-client-id").is_none(), "{rsp:?}");
    assert!(rsp.header("keep-alive").is_none(), "{rsp:?}");
    first.write_all(b"ping").await.expect("send");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), first.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping");

    // While the tunnel is open its permit is taken.
    for request in [
        websocket_request(port),
        format!("GET /ws/plain HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    ] {
        let mut s = RawConn::connect(port).await;
        let rsp = s.exchange(&request).await.expect("answer");
        assert_error(&rsp, 429, "rate_limited");
    }

    // Closed: the permit comes back.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = RawConn::connect(port).await;
        let rsp = s.exchange(&websocket_request(port)).await.expect("answer");
        if rsp.status == 101 {
            break;
        }
        assert_eq!(rsp.status, 429, "{rsp:?}");
        assert!(Instant::now() < deadline, "the permit never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- item 7: time bounds on every read ----

fn timeouts_config(app: &str, extra_routes: &str, filters: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}", header_timeout: 1s, idle_timeout: 1s, body_idle_timeout: 1s }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
{extra_routes}
  - {{ name: open, match: {{ path_prefix: / }} }}
{filters}
"#
    )
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Connections that send no request are closed after `header_timeout`: an
/// HTTP/2 preface then silence, and a connection that sends nothing. An
/// HTTP/1.1 keep-alive connection waiting for its next request likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_requests_are_closed_after_the_header_timeout() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&timeouts_config(&app.addr(), "", ""));
    let port = sidecar.inbound_port;
    let limit = Duration::from_secs(5);

    let mut preface = RawConn::connect(port).await;
    let preface_at = Instant::now();
    preface.write_all(H2_PREFACE).await.expect("preface");
    preface
        .write_all(H2_EMPTY_SETTINGS)
        .await
        .expect("settings");
    let mut silent = RawConn::connect(port).await;
    let silent_at = Instant::now();
    let mut keep_alive = RawConn::connect(port).await;
    let rsp = get_on(&mut keep_alive, port, "/x").await;
    assert_eq!(rsp.status, 200);
    let keep_alive_at = Instant::now();

    let (preface, silent, keep_alive) = tokio::join!(
        preface.closed_within(limit),
        silent.closed_within(limit),
        keep_alive.closed_within(limit),
    );
    for (what, since, closed) in [
        ("h2 preface then silence", preface_at, preface),
        ("silent connection", silent_at, silent),
        ("idle HTTP/1.1 keep-alive", keep_alive_at, keep_alive),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        let took = closed - since;
        assert!(
            took >= Duration::from_millis(900),
            "{what}: closed after {took:?}"
        );
    }
}

/// Writes `first`, then one header line every 200 ms without ever ending
/// the head, until the peer closes (or `limit`). Returns when it closed.
async fn trickle_head(conn: RawConn, first: &str, limit: Duration) -> Option<Instant> {
    let (mut read, mut write) = conn.into_stream().into_split();
    write
        .write_all(first.as_bytes())
        .await
        .expect("first bytes");
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = read.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
        Instant::now()
    })
    .await
    .ok();
    trickle.abort();
    closed
}

/// A slow client that trickles a request head, never finishing it, is cut
/// at `header_timeout` however long `idle_timeout` is: on a new connection
/// and on a keep-alive connection's second request. An idle HTTP/1.1
/// keep-alive connection is likewise closed at `header_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_heads_are_cut_at_the_header_timeout() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(
        &timeouts_config(&app.addr(), "", "").replace("idle_timeout: 1s", "idle_timeout: 60s"),
    );
    let port = sidecar.inbound_port;
    let limit = Duration::from_secs(5);
    let head = format!("GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");

    let first = RawConn::connect(port).await;
    let first_at = Instant::now();
    let mut second = RawConn::connect(port).await;
    assert_eq!(get_on(&mut second, port, "/x").await.status, 200);
    let second_at = Instant::now();
    let mut idle = RawConn::connect(port).await;
    assert_eq!(get_on(&mut idle, port, "/x").await.status, 200);
    let idle_at = Instant::now();

    let (first, second, idle) = tokio::join!(
        trickle_head(first, &head, limit),
        trickle_head(second, &head, limit),
        idle.closed_within(limit),
    );
    for (what, since, closed) in [
        ("head trickled on a new connection", first_at, first),
        (
            "head trickled on a keep-alive connection",
            second_at,
            second,
        ),
        ("idle keep-alive connection", idle_at, idle),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        let took = closed - since;
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{what}: closed after {took:?}"
        );
    }
}

/// An HTTP/2 connection whose streams are done is closed after `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_connection_is_closed() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&timeouts_config(&app.addr(), "", ""));
    let (mut client, driver) = h2_connect(sidecar.inbound_port).await;
    let closed = tokio::spawn(async move {
        let _ = driver.await;
        Instant::now()
    });
    let rsp = h2_send(
        &mut client,
        http::Request::get(sidecar.url("/x"))
            .body(())
            .expect("request"),
        None,
    )
    .await;
    assert_eq!(rsp.status, 200);
    let answered = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(6), closed)
        .await
        .expect("idle h2 connection closed in time")
        .expect("connection task");
    let idle = closed_at - answered;
    assert!(idle >= Duration::from_millis(800), "closed after {idle:?}");
}

/// A body trickled to a signature route (which buffers it to check the
/// digest) is cut at the route timeout with 408, gaps between its bytes
/// shorter than the idle limit notwithstanding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_body_to_a_signature_route_gets_408() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&format!(
        r#"
inbound: {{ listen: "${{INBOUND}}", body_idle_timeout: 10s }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - {{ name: pay, match: {{ path_prefix: / }}, filters: [verify], timeout: 2s }}
filters:
  verify:
    type: signature
    keys: [{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}]
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
"#,
        app.addr()
    ));
    let port = sidecar.inbound_port;
    let body = r#"{"amt":1,"pad":"xxxxxxxxxx"}"#;
    let signed = py_sign(
        "POST",
        &sidecar.url("/pay"),
        Some(body),
        &hmac_args(
            "app-1",
            SECRET,
            "@method,@authority,@path,@query,content-digest",
        ),
    );
    let sig_headers = header_lines(&signed);
    let s = RawConn::connect(port).await.into_stream();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(
        format!(
            "POST /pay HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{sig_headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("head");
    let started = Instant::now();
    // One byte every 300 ms: 9 s for the whole body, each gap well under the idle limit.
    let body = body.as_bytes().to_vec();
    let trickle = tokio::spawn(async move {
        for b in body {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(6), async {
        let mut chunk = [0u8; 4096];
        while find(&answer, b"}").is_none() {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let took = started.elapsed();
    trickle.abort();
    assert!(read.is_ok(), "no answer within 6 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(
        took >= Duration::from_millis(1800),
        "answered after {took:?}"
    );
}

/// A streamed body that stalls longer than `body_idle_timeout` is cut: the
/// app sees the upload aborted, the client gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streamed_body_is_cut() {
    let app = RawApp::start().await;
    let sidecar = Sidecar::start(&timeouts_config(
        &app.addr(),
        "  - { name: upload, match: { path: /upload }, timeout: 20s }",
        "",
    ));
    let port = sidecar.inbound_port;
    let mut s = RawConn::connect(port).await;
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("head and first chunk");
    let started = Instant::now();
    let rsp = tokio::time::timeout(Duration::from_secs(6), s.read_response())
        .await
        .expect("cut within 6 s");
    let took = started.elapsed();
    if let Some(rsp) = rsp {
        assert_error(&rsp, 408, "request_timeout");
    }
    assert!(took >= Duration::from_millis(800), "cut after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.uploads().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.uploads(), vec!["aborted"]);
}
