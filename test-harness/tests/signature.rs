//! End-to-end tests of the signature filter: the real `meshgate` binary in
//! front of a real app process, requests signed by the Python
//! `http-message-signatures` package, the egress listener, key rotation by
//! reload and a Redis-backed nonce store shared by two sidecars.
//!
//! Binaries must be built first (`cargo build --bins`); `MESHGATE_BIN`
//! overrides the binary path.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

fn meshgate_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("MESHGATE_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/meshgate")
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "meshgate-sig-it-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

/// The Python echo app on a free port.
fn echo_app() -> (Proc, u16) {
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(scripts().join("echo_app.py"))
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 echo app");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out)
            .read_line(&mut line)
            .expect("echo app output");
    }
    assert_eq!(line.trim(), "ready");
    (Proc(child), port)
}

struct Sidecar {
    _proc: Proc,
    port: u16,
    config: PathBuf,
}

impl Sidecar {
    /// Starts meshgate on `yaml` (with `{inbound}`, `{admin}` and the named
    /// `extra_ports` filled in) and waits until `/ready` answers 200.
    async fn start(dir: &Path, yaml: &str, extra_ports: &[(&str, u16)]) -> Sidecar {
        let port = free_port();
        let admin = free_port();
        let mut text = yaml
            .replace("{inbound}", &port.to_string())
            .replace("{admin}", &admin.to_string());
        for (name, p) in extra_ports {
            text = text.replace(&format!("{{{name}}}"), &p.to_string());
        }
        let config = dir.join(format!("meshgate-{port}.yaml"));
        std::fs::write(&config, text).expect("config");
        let child = Command::new(meshgate_bin())
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg("text")
            .arg("--log-level")
            .arg("warn")
            .spawn()
            .expect("meshgate binary (cargo build --bins)");
        let proc = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) =
                send("GET", &format!("http://127.0.0.1:{admin}/ready"), &[], "").await
            {
                break;
            }
            assert!(Instant::now() < deadline, "sidecar did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Sidecar {
            _proc: proc,
            port,
            config,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Sends one HTTP/1.1 request; returns the status and the body parsed as
/// JSON (or as a JSON string when it is not JSON).
async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let bytes = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok((status, value))
}

/// Signs with the Python package; returns the headers to add.
fn py_sign(method: &str, url: &str, body: &str, args: &[&str]) -> Vec<(String, String)> {
    let out = Command::new("python3")
        .arg(scripts().join("sign_request.py"))
        .args(["--method", method, "--url", url, "--body", body])
        .args(args)
        .output()
        .expect("python3 signer");
    assert!(
        out.status.success(),
        "signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("signer json");
    v["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

fn verify_yaml(keys: &str, extra: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "127.0.0.1:{{inbound}}" }}
app: {{ address: "127.0.0.1:{{app}}" }}
admin: {{ listen: "127.0.0.1:{{admin}}" }}
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

fn error_of(v: &serde_json::Value) -> &str {
    v["error"].as_str().unwrap_or("")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn python_signed_requests_are_verified_by_the_sidecar() {
    let dir = tmp_dir("py");
    let (_app, app) = echo_app();
    std::fs::write(dir.join("app-2.pem"), ED25519_PUBLIC).expect("key file");
    let keys = format!(
        r#"[{{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}, {{ id: app-2, alg: ed25519, public_key_file: app-2.pem }}]"#
    );
    let sidecar = Sidecar::start(&dir, &verify_yaml(&keys, ""), &[("app", app)]).await;
    let url = sidecar.url("/pay?order=42");
    let body = r#"{"amount":100}"#;
    let hmac = [
        "--key-id",
        "app-1",
        "--alg",
        "hmac-sha256",
        "--secret-b64",
        SECRET,
        "--components",
        ALL,
    ];

    // accepted, identity handed to the app, signature headers stripped
    let headers = py_sign("POST", &url, body, &hmac);
    let (status, echo) = send("POST", &url, &headers, body).await.expect("send");
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-1");
    assert!(echo["headers"].get("signature").is_none());
    assert!(echo["headers"].get("signature-input").is_none());
    assert_eq!(echo["body"], body);

    // the same request again: replayed nonce
    let (status, err) = send("POST", &url, &headers, body).await.expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_replayed"));

    // an ed25519 client; the sidecar has its public key from a file
    let key_file = dir.join("app-2-private.pem");
    std::fs::write(&key_file, ED25519_PRIVATE).expect("key");
    let key_path = key_file.to_string_lossy().to_string();
    let ed = [
        "--key-id",
        "app-2",
        "--alg",
        "ed25519",
        "--private-key-file",
        &key_path,
        "--components",
        ALL,
    ];
    let headers = py_sign("POST", &url, body, &ed);
    let (status, echo) = send("POST", &url, &headers, body).await.expect("send");
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-2");

    // changed body, path, query, covered header, old created
    let headers = py_sign("POST", &url, body, &hmac);
    let (status, err) = send("POST", &url, &headers, r#"{"amount":999}"#)
        .await
        .expect("send");
    assert_eq!((status, error_of(&err)), (401, "digest_mismatch"));

    let headers = py_sign("POST", &url, body, &hmac);
    let (status, err) = send("POST", &sidecar.url("/refund?order=42"), &headers, body)
        .await
        .expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_invalid"));

    let headers = py_sign("POST", &url, body, &hmac);
    let (status, err) = send("POST", &sidecar.url("/pay?order=43"), &headers, body)
        .await
        .expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_invalid"));

    let with_header: Vec<&str> = hmac
        .iter()
        .copied()
        .map(|a| {
            if a == ALL {
                "@method,@authority,@path,@query,content-digest,x-app-version"
            } else {
                a
            }
        })
        .chain(["--header", "x-app-version:1.0"])
        .collect();
    let mut headers = py_sign("POST", &url, body, &with_header);
    headers.push(("x-app-version".into(), "2.0".into()));
    let (status, err) = send("POST", &url, &headers, body).await.expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_invalid"));

    let old = (now() - 1000).to_string();
    let mut stale = hmac.to_vec();
    stale.extend(["--created", old.as_str()]);
    let headers = py_sign("POST", &url, body, &stale);
    let (status, err) = send("POST", &url, &headers, body).await.expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_expired"));

    // no signature at all
    let (status, err) = send("POST", &url, &[], body).await.expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_missing"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_signs_for_the_destination_sidecar_and_keys_rotate_on_reload() {
    let dir = tmp_dir("egress");
    let (_app, app) = echo_app();
    // B: the destination pod's sidecar, verifying app-1
    let b = Sidecar::start(&dir, &verify_yaml(&hmac_keys(SECRET), ""), &[("app", app)]).await;
    // A: the calling pod's sidecar; its egress signs calls to wallet.internal
    let egress_port = free_port();
    let a_yaml = format!(
        r#"
inbound: {{ listen: "127.0.0.1:{{inbound}}" }}
app: {{ address: "127.0.0.1:{app}" }}
admin: {{ listen: "127.0.0.1:{{admin}}" }}
egress:
  listen: "127.0.0.1:{egress_port}"
  destinations:
    - host: wallet.internal
      upstream: "127.0.0.1:{}"
      key: {{ id: app-1, alg: hmac-sha256, secret_base64: "{SECRET}" }}
"#,
        b.port
    );
    let _a = Sidecar::start(&dir, &a_yaml, &[]).await;
    let host = vec![("host".to_string(), "wallet.internal".to_string())];
    let egress_url = format!("http://127.0.0.1:{egress_port}/balance?user=7");
    let (status, echo) = send("POST", &egress_url, &host, r#"{"q":1}"#)
        .await
        .expect("send");
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-meshgate-client-id"], "app-1");
    assert_eq!(echo["headers"]["host"], "wallet.internal");
    assert_eq!(echo["path"], "/balance?user=7");
    assert_eq!(echo["body"], r#"{"q":1}"#);
    // unknown destination host
    let other = vec![("host".to_string(), "elsewhere.internal".to_string())];
    let (status, err) = send("GET", &egress_url, &other, "").await.expect("send");
    assert_eq!((status, error_of(&err)), (404, "route_not_found"));

    // rotate B's key by rewriting its config: the new secret is accepted and
    // the old one refused, without a restart
    let url = b.url("/pay");
    let old = [
        "--key-id",
        "app-1",
        "--alg",
        "hmac-sha256",
        "--secret-b64",
        SECRET,
        "--components",
        ALL,
    ];
    let new = [
        "--key-id",
        "app-1",
        "--alg",
        "hmac-sha256",
        "--secret-b64",
        NEXT_SECRET,
        "--components",
        ALL,
    ];
    let text = std::fs::read_to_string(&b.config).expect("config");
    std::fs::write(&b.config, text.replace(SECRET, NEXT_SECRET)).expect("rewrite");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let headers = py_sign("POST", &url, "x", &new);
        let (status, _) = send("POST", &url, &headers, "x").await.expect("send");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let headers = py_sign("POST", &url, "x", &old);
    let (status, err) = send("POST", &url, &headers, "x").await.expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_invalid"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_nonce_store_is_shared_by_two_sidecars() {
    let Some(redis_bin) = which("redis-server") else {
        eprintln!("redis-server not installed; skipping");
        return;
    };
    let dir = tmp_dir("redis");
    let redis_port = free_port();
    let redis = Proc(
        Command::new(redis_bin)
            .args([
                "--port",
                &redis_port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", redis_port)).is_err() {
        assert!(Instant::now() < deadline, "redis did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_app, app) = echo_app();
    let yaml = verify_yaml(
        &hmac_keys(SECRET),
        &format!("redis: {{ url: \"redis://127.0.0.1:{redis_port}\", timeout: 500ms }}"),
    )
    .replace(
        "require_nonce: true",
        "require_nonce: true\n    replay_store: redis",
    );
    let one = Sidecar::start(&dir, &yaml, &[("app", app)]).await;
    let two = Sidecar::start(&dir, &yaml, &[("app", app)]).await;

    let url = one.url("/pay");
    let args = [
        "--key-id",
        "app-1",
        "--alg",
        "hmac-sha256",
        "--secret-b64",
        SECRET,
        "--components",
        ALL,
    ];
    let mut headers = py_sign("POST", &url, "x", &args);
    let (status, echo) = send("POST", &url, &headers, "x").await.expect("send");
    assert_eq!(status, 200, "{echo}");
    // the same signed request (same Host) at the other sidecar is a replay
    headers.push(("host".into(), format!("127.0.0.1:{}", one.port)));
    let (status, err) = send("POST", &two.url("/pay"), &headers, "x")
        .await
        .expect("send");
    assert_eq!((status, error_of(&err)), (401, "signature_replayed"));

    // Redis down: fail closed with 503
    drop(redis);
    let headers = py_sign("POST", &url, "x", &args);
    let (status, err) = send("POST", &url, &headers, "x").await.expect("send");
    assert_eq!((status, error_of(&err)), (503, "replay_store_unavailable"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
