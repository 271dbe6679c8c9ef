//! Lossless binary upgrade, end to end: real `meshgate` processes hand the
//! listening sockets over to each other while clients keep sending.
//!
//! A response with `Connection: close` or an HTTP/2 GOAWAY makes a client
//! reconnect, which is normal; a refused or reset connection, a request that
//! fails or any non-200 answer is a failure.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use meshgate_test_harness::load::{request_builder, Conn};
use meshgate_test_harness::{
    assert_error, hmac_args, py_sign, send_request, wait_until, EchoApp, Load, LoadStats, Proc,
    Sidecar,
};

fn config(app: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
    timeout: 30s
"#
    )
}

struct Upgradable {
    _app: EchoApp,
    sidecar: Sidecar,
    _socket_dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Upgradable {
    let app = EchoApp::start();
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("upgrade.sock");
    let socket = socket.to_str().expect("utf-8 path").to_string();
    let mut args = vec![
        "--upgrade-socket",
        socket.as_str(),
        "--drain-timeout",
        "15s",
    ];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start_with_args(&config(&app.addr()), &args);
    Upgradable {
        _app: app,
        sidecar,
        _socket_dir: socket_dir,
    }
}

/// What the slow requests and uploads beside the keep-alive clients saw.
#[derive(Default)]
struct Extra {
    slow_started: AtomicU64,
    slow_done: AtomicU64,
    uploads_started: AtomicU64,
    uploads_done: AtomicU64,
}

/// Clients that keep the sidecar busy until stopped: four HTTP/1.1 and two
/// HTTP/2 keep-alive clients, slow requests, and uploads on both protocols.
fn start_load(port: u16) -> (Load, Arc<Extra>) {
    let extra = Arc::new(Extra::default());
    let mut load = Load::new(3);
    for id in 0..4 {
        load.keep_alive_client(port, false, id, |id, i| format!("/echo/{id}/{i}"));
    }
    for id in 0..2 {
        load.keep_alive_client(port, true, id, |id, i| format!("/echo/{id}/{i}"));
    }
    let e = extra.clone();
    load.spawn(move |stop, stats| slow_requests(port, stop, stats, e));
    for h2 in [false, true] {
        let e = extra.clone();
        load.spawn(move |stop, stats| uploads(port, h2, stop, stats, e));
    }
    (load, extra)
}

/// How long the load may take for the progress a test waits for.
const PROGRESS: Duration = Duration::from_secs(10);

/// Starts a slow request (fresh connection) every 150 ms; each must complete.
async fn slow_requests(port: u16, stop: Arc<AtomicBool>, stats: Arc<LoadStats>, extra: Arc<Extra>) {
    let mut running = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let stats = stats.clone();
        let extra = extra.clone();
        extra.slow_started.fetch_add(1, Ordering::Relaxed);
        running.push(tokio::spawn(async move {
            let result = async {
                let mut c = Conn::open(port, false).await?;
                let req = request_builder(http::Method::GET, port, "/slow?ms=700", false)
                    .body(Full::new(Bytes::new()).boxed())
                    .expect("request");
                let rsp = c.send(req).await.map_err(|e| format!("{e:?}"))?;
                let status = rsp.status();
                rsp.into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                c.close().await?;
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!("status {status}"))
                }
            }
            .await;
            match result {
                Ok(()) => {
                    extra.slow_done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => stats.fail(format!("slow request: {e}")),
            }
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for r in running {
        let _ = r.await;
    }
}

const UPLOAD_CHUNKS: usize = 16;
const UPLOAD_CHUNK: usize = 4096;

/// Uploads a body in chunks over ~600 ms, one after another, and checks that
/// the app received all of it.
async fn uploads(
    port: u16,
    h2: bool,
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    extra: Arc<Extra>,
) {
    let proto = if h2 { "h2" } else { "h1" };
    while !stop.load(Ordering::Relaxed) {
        extra.uploads_started.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let mut c = Conn::open(port, h2).await?;
            let chunks = futures_util::stream::unfold(0usize, |n| async move {
                if n == UPLOAD_CHUNKS {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'u'; UPLOAD_CHUNK]))),
                    n + 1,
                ))
            });
            let req = request_builder(http::Method::POST, port, "/upload", h2)
                .body(BodyExt::boxed(StreamBody::new(chunks)))
                .map_err(|e| e.to_string())?;
            let rsp = c.send(req).await.map_err(|e| format!("{e:?}"))?;
            let status = rsp.status();
            let body = rsp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e:?}"))?
                .to_bytes();
            c.close().await?;
            if status != 200 {
                return Err(format!("status {status}"));
            }
            let json: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            if json["body_len"] != (UPLOAD_CHUNKS * UPLOAD_CHUNK) as u64 {
                return Err(format!("app received {}", json["body_len"]));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                extra.uploads_done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => stats.fail(format!("{proto} upload: {e}")),
        }
    }
}

/// Waits for the old process to exit by itself, successfully.
fn wait_old_exit(old: &mut Proc, round: usize) {
    let status = old.wait_exit(Duration::from_secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "round {round}: old process did not exit cleanly ({status:?}); log:\n{}",
        old.output()
    );
}

/// Waits until `/ready` is 200 from the given pid, in phase `serving`.
fn wait_ready_from(sidecar: &Sidecar, pid: u32) {
    let mut last = None;
    let ok = wait_until(Duration::from_secs(10), || {
        last = sidecar.ready();
        matches!(&last, Some((200, j)) if j["pid"] == pid && j["phase"] == "serving")
    });
    assert!(
        ok,
        "pid {pid} not ready: {last:?}\n{}",
        sidecar.proc.output()
    );
}

#[test]
fn twenty_upgrades_under_load_lose_nothing() {
    let mut up = start(&[]);
    let (load, extra) = start_load(up.sidecar.inbound_port);
    load.wait_progress(200, PROGRESS);
    for round in 1..=20 {
        let mut old = up.sidecar.spawn_upgrade();
        wait_old_exit(&mut old, round);
        assert!(
            old.output().contains("handed over to the new process"),
            "round {round}: {}",
            old.output()
        );
        assert!(
            up.sidecar.proc.is_running(),
            "round {round}: new process died:\n{}",
            up.sidecar.proc.output()
        );
        wait_ready_from(&up.sidecar, up.sidecar.proc.child.id());
        load.wait_progress(50, PROGRESS);
    }
    let stats = load.finish();
    eprintln!(
        "{} slow {} uploads {}",
        stats.summary(),
        extra.slow_done.load(Ordering::Relaxed),
        extra.uploads_done.load(Ordering::Relaxed)
    );
    let failures = stats.failures();
    assert!(failures.is_empty(), "failures: {failures:#?}");
    let slow = (
        extra.slow_started.load(Ordering::Relaxed),
        extra.slow_done.load(Ordering::Relaxed),
    );
    assert_eq!(slow.0, slow.1, "every slow request completes");
    let uploads = (
        extra.uploads_started.load(Ordering::Relaxed),
        extra.uploads_done.load(Ordering::Relaxed),
    );
    assert_eq!(uploads.0, uploads.1, "every upload completes");
    assert!(slow.1 >= 20 && uploads.1 >= 10, "{slow:?} {uploads:?}");
    // Clients were moved to the new processes by Connection: close / GOAWAY.
    assert!(stats.reconnects.load(Ordering::Relaxed) >= 20);
    // The handed-over config serves in the new process.
    let dump = up.sidecar.config_dump();
    assert_eq!(dump["source"]["kind"], "upgrade", "{dump}");
    let metrics = up.sidecar.metrics();
    assert!(
        metrics.contains("meshgate_upgrades_total{result=\"taken_over\"} 1"),
        "{metrics}"
    );
}

#[test]
fn failing_new_binary_leaves_the_old_process_serving() {
    let mut up = start(&["--upgrade-binary", "/bin/false"]);
    let pid = up.sidecar.proc.child.id();
    let (load, _) = start_load(up.sidecar.inbound_port);
    load.wait_progress(100, PROGRESS);

    // Through the admin API and through SIGUSR2.
    let rsp =
        meshgate_test_harness::request(up.sidecar.admin_post("/upgrade")).expect("POST /upgrade");
    assert_eq!(rsp.status, 202, "{}", rsp.text());
    assert!(wait_until(Duration::from_secs(5), || up
        .sidecar
        .proc
        .output()
        .contains("the new process exited")));
    let killed = std::process::Command::new("kill")
        .args(["-USR2", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(wait_until(Duration::from_secs(5), || up
        .sidecar
        .proc
        .output()
        .matches("the new process exited")
        .count()
        >= 2));

    load.wait_progress(100, PROGRESS);
    assert!(up.sidecar.proc.is_running());
    wait_ready_from(&up.sidecar, pid);
    let stats = load.finish();
    assert!(stats.failures().is_empty(), "{:#?}", stats.failures());
}

#[test]
fn new_process_with_a_broken_config_leaves_the_old_process_serving() {
    let mut up = start(&[]);
    let pid = up.sidecar.proc.child.id();
    let (load, _) = start_load(up.sidecar.inbound_port);
    load.wait_progress(100, PROGRESS);

    let broken = up.sidecar.dir.path().join("broken.yaml");
    std::fs::write(&broken, "routes:\n  - name: x\n    match: { path: nope }\n").expect("write");
    let old = up.sidecar.spawn_upgrade_with(&broken, &[]);
    let status = up.sidecar.proc.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the new process must fail: {}",
        up.sidecar.proc.output()
    );
    // Put the old process back in place and check it never noticed.
    let mut failed = std::mem::replace(&mut up.sidecar.proc, old);
    failed.kill();
    assert!(up.sidecar.proc.is_running());
    load.wait_progress(100, PROGRESS);
    wait_ready_from(&up.sidecar, pid);

    // An upgrade after that works.
    let mut old = up.sidecar.spawn_upgrade();
    wait_old_exit(&mut old, 1);
    wait_ready_from(&up.sidecar, up.sidecar.proc.child.id());
    load.wait_progress(100, PROGRESS);
    let stats = load.finish();
    assert!(stats.failures().is_empty(), "{:#?}", stats.failures());
}

/// A new process that dies in the middle of the handover (after receiving
/// the listeners) leaves the old one serving: it never stopped accepting.
#[test]
fn new_process_dying_mid_handover_leaves_the_old_process_serving() {
    use std::io::{Read, Write};
    let up = start(&[]);
    let pid = up.sidecar.proc.child.id();
    let (load, _) = start_load(up.sidecar.inbound_port);
    load.wait_progress(100, PROGRESS);

    let socket = up._socket_dir.path().join("upgrade.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = br#"{"type":"hello","protocol":1,"pid":1}"#;
    stream
        .write_all(&(hello.len() as u32).to_be_bytes())
        .expect("write");
    stream.write_all(hello).expect("write");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("offer length");
    let mut offer = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut offer).expect("offer");
    let offer: serde_json::Value = serde_json::from_slice(&offer).expect("offer json");
    assert_eq!(offer["type"], "offer");
    assert_eq!(
        offer["listeners"].as_array().map(Vec::len),
        Some(2),
        "{offer}"
    );
    let handing_over = wait_until(
        Duration::from_secs(5),
        || matches!(up.sidecar.ready(), Some((200, j)) if j["phase"] == "handing_over"),
    );
    assert!(handing_over, "{:?}", up.sidecar.ready());
    drop(stream); // "crash"

    assert!(wait_until(Duration::from_secs(5), || {
        matches!(up.sidecar.ready(), Some((200, j)) if j["phase"] == "serving" && j["pid"] == pid)
    }));
    load.wait_progress(100, PROGRESS);
    let stats = load.finish();
    assert!(stats.failures().is_empty(), "{:#?}", stats.failures());
    assert!(up
        .sidecar
        .metrics()
        .contains("meshgate_upgrades_total{result=\"failed\"} 1"));
}

/// Rate-limit buckets live in the filter state and move with the upgrade: a
/// bucket nearly exhausted before is still nearly exhausted after.
#[test]
fn rate_limit_bucket_survives_the_upgrade() {
    let app = EchoApp::start();
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("upgrade.sock");
    let socket = socket.to_str().expect("utf-8 path").to_string();
    let yaml = format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, filters: [limit] }}
filters:
  limit:
    type: rate_limit
    rules:
      - {{ name: bucket, key: route, algorithm: token_bucket, rate: 10/h, burst: 10 }}
"#,
        app.addr()
    );
    let mut sidecar = Sidecar::start_with_args(
        &yaml,
        &["--upgrade-socket", &socket, "--drain-timeout", "5s"],
    );
    for i in 0..9 {
        let rsp = meshgate_test_harness::get(&sidecar.url("/x")).expect("request");
        assert_eq!(rsp.status, 200, "request {i}: {}", rsp.text());
    }
    let mut old = sidecar.spawn_upgrade();
    wait_old_exit(&mut old, 1);
    wait_ready_from(&sidecar, sidecar.proc.child.id());
    assert!(sidecar.proc.output().contains("filter state imported"));
    let last = meshgate_test_harness::get(&sidecar.url("/x")).expect("request");
    assert_eq!(last.status, 200, "{}", last.text());
    let limited = meshgate_test_harness::get(&sidecar.url("/x")).expect("request");
    assert_eq!(
        limited.status,
        429,
        "the bucket was handed over: {}",
        limited.text()
    );
    assert_error(&limited, 429, "rate_limited");
}

/// A WebSocket tunnel through the old process keeps working after the
/// handover, holds the old process (up to the drain deadline) and lets it
/// exit once closed; new WebSockets go to the new process.
#[test]
fn websocket_keeps_its_grace_period_across_the_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut up = start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("ws://127.0.0.1:{}/ws", up.sidecar.inbound_port);
    let echo = |ws: &mut tokio_tungstenite::WebSocketStream<_>, text: &'static str| {
        rt.block_on(async {
            ws.send(Message::text(text)).await.expect("send");
            let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("in time")
                .expect("frame")
                .expect("ok");
            assert_eq!(echoed.into_text().expect("text").as_str(), text);
        })
    };
    let (mut ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .expect("websocket handshake");
    echo(&mut ws, "before");

    let mut old = up.sidecar.spawn_upgrade();
    wait_ready_from(&up.sidecar, up.sidecar.proc.child.id());
    // Drain deadline is 15 s: the tunnel holds the old process meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(old.is_running(), "the open tunnel keeps the old process");
    echo(&mut ws, "during the drain");
    let (mut fresh, _) = rt
        .block_on(tokio_tungstenite::connect_async(url.as_str()))
        .expect("websocket to the new process");
    echo(&mut fresh, "new");

    rt.block_on(ws.close(None)).expect("close");
    drop(ws);
    wait_old_exit(&mut old, 1);
    echo(&mut fresh, "still fine");
}

/// The signature filter's in-memory nonce cache moves with the upgrade: a
/// request replayed after the upgrade is rejected. Requests are signed by
/// the Python `http-message-signatures` package (scripts/sign_request.py).
#[test]
fn used_nonce_is_still_rejected_after_the_upgrade() {
    const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
    let app = EchoApp::start();
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("upgrade.sock");
    let socket = socket.to_str().expect("utf-8 path").to_string();
    let yaml = format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - {{ name: api, match: {{ path_prefix: / }}, filters: [verify] }}
filters:
  verify:
    type: signature
    keys: [{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}]
    required_components: ["@method", "@authority", "@path", "content-digest"]
    max_age: 300s
    require_nonce: true
"#,
        app.addr()
    );
    let mut sidecar = Sidecar::start_with_args(
        &yaml,
        &["--upgrade-socket", &socket, "--drain-timeout", "5s"],
    );
    let url = sidecar.url("/pay");
    let signed = py_sign(
        "POST",
        &url,
        Some("{}"),
        &hmac_args("app-1", SECRET, "@method,@authority,@path,content-digest"),
    );
    let send = || send_request("POST", &url, &signed, "{}");
    let first = send();
    assert_eq!(first.status, 200, "{}", first.text());

    let mut old = sidecar.spawn_upgrade();
    wait_old_exit(&mut old, 1);
    wait_ready_from(&sidecar, sidecar.proc.child.id());
    let replayed = send();
    assert_eq!(replayed.status, 401, "{}", replayed.text());
    assert_error(&replayed, 401, "signature_replayed");
}
