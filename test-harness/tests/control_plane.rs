//! The control plane end to end: real `meshgate-cp`, real `meshgate`
//! sidecars in front of real echo apps, `meshctl`, and an xDS client built
//! from the upstream xDS message layout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::{
    bin, free_port, get, request, require_tool, wait_until, EchoApp, HttpResult, Proc, Sidecar,
};
use serde_json::Value;

const TOKEN: &str = "test-admin-token";
/// The xDS token of the test sidecars, allowed the `orders` service.
const XDS_TOKEN: &str = "test-xds-token-for-orders";

struct ControlPlane {
    proc: Proc,
    grpc: u16,
    admin: u16,
    data_dir: PathBuf,
    /// Passed to sidecars as `--xds-token-file` when the control plane checks tokens.
    xds_token_file: Option<PathBuf>,
}

impl ControlPlane {
    fn start(data_dir: &Path) -> ControlPlane {
        Self::start_at(data_dir, free_port(), free_port())
    }

    fn start_at(data_dir: &Path, grpc: u16, admin: u16) -> ControlPlane {
        Self::start_with(data_dir, grpc, admin, &[])
    }

    /// Unless `extra` sets up xDS credentials itself, the control plane
    /// accepts [`XDS_TOKEN`] for `orders`.
    fn start_with(data_dir: &Path, grpc: u16, admin: u16, extra: &[String]) -> ControlPlane {
        let mut cmd = Command::new(bin("meshgate-cp"));
        let own_credentials = extra
            .iter()
            .any(|a| ["--xds-tokens", "--tls-client-ca", "--insecure-xds"].contains(&a.as_str()));
        let mut xds_token_file = None;
        let mut credentials: Vec<String> = Vec::new();
        if !own_credentials {
            let tokens = data_dir.with_extension("xds-tokens.yaml");
            std::fs::write(
                &tokens,
                format!("tokens:\n  - token: {XDS_TOKEN}\n    services: [orders]\n"),
            )
            .expect("write xds tokens");
            let token_file = data_dir.with_extension("xds-token");
            std::fs::write(&token_file, XDS_TOKEN).expect("write xds token");
            credentials = vec!["--xds-tokens".into(), tokens.display().to_string()];
            xds_token_file = Some(token_file);
        }
        cmd.arg("serve")
            .args(extra)
            .args(&credentials)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--grpc",
                &format!("127.0.0.1:{grpc}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .args(["--token", TOKEN])
            .env("RUST_LOG", "info");
        let log = data_dir.with_extension(format!("{admin}.log"));
        let proc = Proc::spawn("meshgate-cp", &mut cmd, log);
        let cp = ControlPlane {
            proc,
            grpc,
            admin,
            data_dir: data_dir.to_path_buf(),
            xds_token_file,
        };
        let up = wait_until(Duration::from_secs(20), || {
            get(&cp.url("/healthz"))
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        assert!(up, "control plane did not start:\n{}", cp.proc.output());
        cp
    }

    fn restart(self) -> ControlPlane {
        let (dir, grpc, admin) = (self.data_dir.clone(), self.grpc, self.admin);
        drop(self);
        Self::start_at(&dir, grpc, admin)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    fn xds_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    fn call(&self, method: &str, path: &str, body: &str, content_type: &str) -> HttpResult {
        let req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", content_type)
            .body(Bytes::from(body.to_string()))
            .expect("request");
        request(req).expect("admin api answers")
    }

    /// Pushes YAML; returns the new version.
    fn push(&self, service: &str, yaml: &str, query: &str) -> String {
        let rsp = self.call(
            "PUT",
            &format!("/v1/services/{service}/config{query}"),
            yaml,
            "application/yaml",
        );
        assert_eq!(rsp.status, 200, "push failed: {}", rsp.text());
        rsp.json()["version"].as_str().expect("version").to_string()
    }

    fn status(&self) -> Vec<Value> {
        let rsp = self.call("GET", "/v1/status", "", "application/json");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        rsp.json().as_array().cloned().unwrap_or_default()
    }

    fn node(&self, node_id: &str) -> Option<Value> {
        self.status().into_iter().find(|s| s["node_id"] == node_id)
    }

    fn meshctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("meshctl"))
            .args(["--server", &self.url("")])
            .args(args)
            .env("MESHCTL_TOKEN", TOKEN)
            .output()
            .expect("run meshctl")
    }
}

/// The bootstrap file: node-local addresses plus a first config. `tls`:
/// a directory with `cert.pem` and `key.pem` for the inbound listener.
fn bootstrap(app: &str, tls: Option<&Path>) -> String {
    let tls = tls.map_or(String::new(), |d| {
        format!(
            ", tls: {{ cert: \"{0}/cert.pem\", key: \"{0}/key.pem\" }}",
            d.display()
        )
    });
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}"{tls} }}
admin: {{ listen: "${{ADMIN}}" }}
app: {{ address: "{app}" }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: bootstrap }}
  - name: app
    match: {{ path_prefix: / }}
"#
    )
}

/// A pushed config; `/which` answers `label`. Addresses in it are ignored by sidecars.
fn pushed(label: &str, extra_inbound: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "0.0.0.0:15006"{extra_inbound} }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: {label} }}
  - name: app
    match: {{ path_prefix: / }}
"#
    )
}

struct Node {
    _app: EchoApp,
    sidecar: Sidecar,
    id: String,
    args: Vec<String>,
    _state: tempfile::TempDir,
}

fn start_node(cp: &ControlPlane, id: &str, labels: &[&str], tls: Option<&Path>) -> Node {
    start_node_with(cp, id, labels, tls, &[], &cp.xds_url())
}

fn start_node_with(
    cp: &ControlPlane,
    id: &str,
    labels: &[&str],
    tls: Option<&Path>,
    extra: &[String],
    xds_url: &str,
) -> Node {
    let app = EchoApp::start();
    let state = tempfile::tempdir().expect("state dir");
    let mut args: Vec<String> = vec![
        "--xds".into(),
        xds_url.into(),
        "--node-id".into(),
        id.into(),
        "--service".into(),
        "orders".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    for l in labels {
        args.push("--label".into());
        args.push((*l).into());
    }
    if let Some(token_file) = &cp.xds_token_file {
        args.push("--xds-token-file".into());
        args.push(token_file.display().to_string());
    }
    args.extend(extra.iter().cloned());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sidecar = Sidecar::spawn(&bootstrap(&app.addr(), tls), &arg_refs);
    sidecar.wait_ready();
    Node {
        _app: app,
        sidecar,
        id: id.into(),
        args,
        _state: state,
    }
}

impl Node {
    fn which(&self) -> String {
        get(&self.sidecar.url("/which"))
            .map(|r| r.text())
            .unwrap_or_default()
    }

    fn wait_version(&self, version: &str) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.sidecar.version() == version
        });
        assert!(
            ok,
            "{} stayed at {}; log:\n{}",
            self.id,
            self.sidecar.version(),
            self.sidecar.proc.output()
        );
    }

    /// Kills the sidecar and starts it again with the same files and ports.
    fn restart(&mut self) {
        self.sidecar.proc.kill();
        let mut cmd = Command::new(bin("meshgate"));
        cmd.arg("--config")
            .arg(self.sidecar.config_path())
            .args(&self.args)
            .env("MESHGATE_LOG", "info");
        self.sidecar.proc = Proc::spawn(
            "meshgate",
            &mut cmd,
            self.sidecar.dir.path().join("meshgate-2.log"),
        );
        self.sidecar.wait_ready();
    }
}

fn wait_acked(cp: &ControlPlane, nodes: &[&Node], version: &str) {
    let ok = wait_until(Duration::from_secs(20), || {
        nodes.iter().all(|n| {
            cp.node(&n.id)
                .is_some_and(|s| s["last_acked_version"] == version)
        })
    });
    assert!(ok, "not all ACKed {version}: {:#?}", cp.status());
}

#[test]
fn push_canary_promote_rollback_with_meshctl() {
    let data = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&data.path().join("cp"));
    let a = start_node(&cp, "node-a", &["zone=a"], None);
    let b = start_node(&cp, "node-b", &["zone=b"], None);
    let c = start_node(&cp, "node-c", &["zone=b"], None);
    let all = [&a, &b, &c];
    assert!(
        wait_until(Duration::from_secs(20), || cp.status().len() == 3),
        "{:#?}",
        cp.status()
    );

    // An invalid push is refused with field paths and changes nothing.
    let bad = cp.call(
        "PUT",
        "/v1/services/orders/config",
        "inbound: { listen: nope }\n",
        "application/yaml",
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(
        bad.json()["fields"][0]["path"],
        "inbound.listen",
        "{}",
        bad.text()
    );
    // Without the token: 401.
    let anon = request(
        Request::get(cp.url("/v1/status"))
            .body(Bytes::new())
            .expect("req"),
    )
    .expect("answer");
    assert_eq!(anon.status, 401);

    // Push v1 with meshctl: every sidecar applies, ACKs and serves it.
    let file = data.path().join("one.yaml");
    std::fs::write(&file, pushed("one", "")).expect("write");
    let out = cp.meshctl(&["push", file.to_str().expect("utf8"), "--service", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in all {
        n.wait_version("v1");
        assert_eq!(n.which(), "one");
    }
    wait_acked(&cp, &all, "v1");
    let s = cp.node("node-a").expect("node-a connected");
    assert_eq!(s["labels"]["zone"], "a");
    assert!(
        s["sidecar_version"]
            .as_str()
            .unwrap_or_default()
            .starts_with("meshgate/"),
        "{s}"
    );
    assert!(s["connected_since"].as_u64().is_some());

    // Canary v2 to zone=a only.
    std::fs::write(&file, pushed("two", "")).expect("write");
    let out = cp.meshctl(&[
        "push",
        file.to_str().expect("utf8"),
        "--service",
        "orders",
        "--labels",
        "zone=a",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.wait_version("v2");
    wait_acked(&cp, &[&a], "v2");
    assert_eq!(a.which(), "two");
    assert_eq!(b.which(), "one");
    assert_eq!(c.which(), "one");
    assert_eq!(cp.node("node-a").expect("a")["track"], "canary");
    // A second push while a canary runs is refused: at most two live versions.
    let conflict = cp.call(
        "PUT",
        "/v1/services/orders/config",
        &pushed("three", ""),
        "application/yaml",
    );
    assert_eq!(conflict.status, 409, "{}", conflict.text());

    let out = cp.meshctl(&["promote", "--service", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in all {
        n.wait_version("v2");
        assert_eq!(n.which(), "two");
    }

    // Percentage canary: 10% of three sidecars is one, then abort.
    std::fs::write(&file, pushed("three", "")).expect("write");
    let out = cp.meshctl(&[
        "push",
        file.to_str().expect("utf8"),
        "--service",
        "orders",
        "--canary",
        "10%",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = wait_until(Duration::from_secs(20), || {
        all.iter().filter(|n| n.which() == "three").count() == 1
            && all.iter().filter(|n| n.which() == "two").count() == 2
    });
    assert!(ok, "{:#?}", cp.status());
    let out = cp.meshctl(&["abort", "--service", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(Duration::from_secs(20), || all
        .iter()
        .all(|n| n.which() == "two")));

    // Roll back to v1's content: a new version v4.
    let out = cp.meshctl(&["rollback", "--service", "orders", "--to", "v1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in all {
        n.wait_version("v4");
        assert_eq!(n.which(), "one");
    }
    wait_acked(&cp, &all, "v4");

    // History, diff and status read well.
    let out = cp.meshctl(&["history", "--service", "orders"]);
    let history = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    for v in ["v1", "v2", "v3", "v4", "rollback", "stable"] {
        assert!(history.contains(v), "{history}");
    }
    let out = cp.meshctl(&["diff", "--service", "orders", "v1", "v2"]);
    let diff = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success());
    let changed = |sign: char, body: &str| {
        diff.lines()
            .any(|l| l.starts_with(sign) && l.contains(&format!("\"body\": \"{body}\"")))
    };
    assert!(changed('-', "one") && changed('+', "two"), "{diff}");
    let out = cp.meshctl(&["status"]);
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        status.contains("node-a") && status.contains("node-c") && status.contains("v4"),
        "{status}"
    );
    // Failures exit non-zero.
    let out = cp.meshctl(&["rollback", "--service", "orders", "--to", "v99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

fn self_signed(dir: &Path, cert: &str, key: &str) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::create_dir_all(dir.join("tls")).expect("tls dir");
    std::fs::write(dir.join("tls").join(cert), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls").join(key), ck.signing_key.serialize_pem()).expect("write key");
}

#[test]
fn a_sidecar_nacks_what_it_cannot_apply_and_keeps_serving() {
    let data = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&data.path().join("cp"));
    // Every node boots with its own certificate; pushed configs name files
    // relative to each sidecar's config dir: only a and b get the next one.
    let boot = tempfile::tempdir().expect("boot tls");
    self_signed(boot.path(), "cert.pem", "key.pem");
    let a = start_node(&cp, "node-a", &[], Some(&boot.path().join("tls")));
    let b = start_node(&cp, "node-b", &[], Some(&boot.path().join("tls")));
    let c = start_node(&cp, "node-c", &[], Some(&boot.path().join("tls")));
    for n in [&a, &b, &c] {
        self_signed(n.sidecar.dir.path(), "cert.pem", "key.pem");
    }
    for n in [&a, &b] {
        self_signed(n.sidecar.dir.path(), "next-cert.pem", "next-key.pem");
    }
    let current = ", tls: { cert: tls/cert.pem, key: tls/key.pem }";
    let next = ", tls: { cert: tls/next-cert.pem, key: tls/next-key.pem }";

    cp.push("orders", &pushed("one", current), "");
    for n in [&a, &b, &c] {
        n.wait_version("v1");
    }
    wait_acked(&cp, &[&a, &b, &c], "v1");

    cp.push("orders", &pushed("two", next), "");
    a.wait_version("v2");
    b.wait_version("v2");
    wait_acked(&cp, &[&a, &b], "v2");
    let ok = wait_until(Duration::from_secs(20), || {
        cp.node("node-c")
            .is_some_and(|s| s["last_nack"]["version"] == "v2")
    });
    let status = cp.node("node-c").expect("node-c");
    assert!(ok, "{status:#}");
    assert_eq!(status["last_acked_version"], "v1", "{status:#}");
    let error = status["last_nack"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("inbound.tls.cert") && error.contains("next-cert.pem"),
        "{error}"
    );
    // node-c keeps serving v1 and shows the rejection.
    let dump = c.sidecar.config_dump();
    assert_eq!(dump["version"], "v1");
    assert!(
        dump["last_rejected"]["errors"][0]["path"]
            .as_str()
            .unwrap_or_default()
            .starts_with("inbound.tls"),
        "{dump}"
    );
    let ca = std::fs::read(c.sidecar.dir.path().join("tls/cert.pem")).expect("ca");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let (rsp, _) = rt
        .block_on(meshgate_test_harness::http_client::send_tls(
            Request::get(format!(
                "https://localhost:{}/which",
                c.sidecar.inbound_port
            ))
            .body(Bytes::new())
            .expect("req"),
            &ca,
            "localhost",
        ))
        .expect("tls request");
    assert_eq!(rsp.text(), "one");
    // The NACKed version is not resent in a loop: the NACK stays the only one.
    std::thread::sleep(Duration::from_millis(500));
    let log = c.sidecar.proc.output();
    assert_eq!(log.matches("NACK").count(), 1, "{log}");
}

#[test]
fn control_plane_restart_and_sidecar_boot_from_state_dir() {
    let data = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&data.path().join("cp"));
    let mut a = start_node(&cp, "node-a", &[], None);
    let b = start_node(&cp, "node-b", &[], None);
    cp.push("orders", &pushed("one", ""), "");
    a.wait_version("v1");
    b.wait_version("v1");
    wait_acked(&cp, &[&a, &b], "v1");

    // Control plane down: sidecars keep serving.
    let (dir, grpc, admin) = (cp.data_dir.clone(), cp.grpc, cp.admin);
    drop(cp);
    for _ in 0..20 {
        assert_eq!(a.which(), "one");
        assert_eq!(b.which(), "one");
    }
    // A sidecar restarted meanwhile boots from its state dir.
    a.restart();
    assert_eq!(a.sidecar.version(), "v1");
    assert_eq!(a.sidecar.config_dump()["source"]["kind"], "state_dir");
    assert_eq!(a.which(), "one");

    // Control plane back (same data dir): sidecars resync, pushes flow again.
    let cp = ControlPlane::start_at(&dir, grpc, admin);
    let ok = wait_until(Duration::from_secs(30), || cp.status().len() == 2);
    assert!(ok, "sidecars did not reconnect: {:#?}", cp.status());
    wait_acked(&cp, &[&a, &b], "v1");
    let v = cp.push("orders", &pushed("two", ""), "");
    assert_eq!(v, "v2", "history survived the restart");
    a.wait_version("v2");
    b.wait_version("v2");
    let cp = cp.restart();
    assert!(wait_until(Duration::from_secs(30), || cp.status().len() == 2));
    wait_acked(&cp, &[&a, &b], "v2");
}

#[test]
fn hundred_pushes_under_load_fail_no_request() {
    let data = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&data.path().join("cp"));
    let nodes: Vec<Node> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|id| start_node(&cp, id, &[], None))
        .collect();
    cp.push("orders", &pushed("p0", ""), "");
    for n in &nodes {
        n.wait_version("v1");
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.sidecar.url("/which")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..32)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(&url) {
                        Ok(r) if r.status == 200 && r.text().starts_with('p') => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("failed: {:?}", other.map(|r| (r.status, r.text())));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    for i in 1..=100 {
        cp.push("orders", &pushed(&format!("p{i}"), ""), "");
    }
    for n in &nodes {
        n.wait_version("v101");
        assert_eq!(n.which(), "p100");
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 100, "load too small: {ok}");
    assert!(took < Duration::from_secs(120), "100 pushes took {took:?}");
    wait_acked(&cp, &nodes.iter().collect::<Vec<_>>(), "v101");
}

/// A client generated (by grpcio-tools) from the upstream xDS message layout
/// subscribes, decodes the resource and ACKs.
#[test]
fn envoy_layout_grpc_client_subscribes_and_acks() {
    require_tool(
        "python3",
        &["-c", "import grpc, grpc_tools"],
        "python3 with the packages grpcio and grpcio-tools",
    );
    let data = tempfile::tempdir().expect("tempdir");
    let cp = ControlPlane::start(&data.path().join("cp"));
    let v = cp.push("orders", &pushed("one", ""), "");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("tests/xds_envoy_client.py"))
        .args([
            "--proto-dir",
            root.join("proto-envoy").to_str().expect("utf8"),
        ])
        .args(["--out-dir", data.path().to_str().expect("utf8")])
        .args(["--xds", &format!("127.0.0.1:{}", cp.grpc)])
        .args(["--admin", &cp.url(""), "--token", TOKEN, "--version", &v])
        .args(["--xds-token", XDS_TOKEN])
        .output()
        .expect("run python client");
    assert!(
        out.status.success(),
        "python xDS client failed:\n{}\n{}\ncp log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cp.proc.output()
    );
}

// ---- credentials: the admin token, redaction, loopback-only listeners ----

/// Starts `meshgate-cp serve` with exactly `args` (no default token).
fn spawn_cp(data_dir: &Path, admin: u16, args: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("meshgate-cp"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--grpc", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        // The admin token is what these tests are about; xDS is open.
        .arg("--insecure-xds")
        .args(args)
        .env_remove("MESHGATE_CP_TOKEN")
        .env_remove("MESHGATE_CP_TOKEN_FILE")
        .env("RUST_LOG", "info");
    Proc::spawn(
        "meshgate-cp",
        &mut cmd,
        data_dir.with_extension(format!("{admin}.log")),
    )
}

fn admin_call(admin: u16, method: &str, path: &str, auth: Option<&str>) -> HttpResult {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{admin}{path}"))
        .header("content-type", "application/yaml");
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let body = if method == "PUT" {
        Bytes::from(pushed("v1", ""))
    } else {
        Bytes::new()
    };
    request(req.body(body).expect("request")).expect("admin api answers")
}

/// Without a token the control plane does not start (anyone reaching its
/// admin API could push configs); `--insecure-no-admin-token` is the
/// explicit way out. The token comes from a file, so it is not in `ps`.
#[test]
fn control_plane_needs_an_admin_token_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let admin = free_port();
    let mut cp = spawn_cp(&dir.path().join("none"), admin, &[]);
    let status = cp.wait_exit(Duration::from_secs(20));
    let log = cp.output();
    assert!(
        status.is_some_and(|s| !s.success()),
        "started without a token:\n{log}"
    );
    assert!(log.contains("--token-file"), "{log}");
    assert!(log.contains("--insecure-no-admin-token"), "{log}");
    assert!(get(&format!("http://127.0.0.1:{admin}/healthz")).is_err());

    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-admin-token\n").expect("token file");
    let admin = free_port();
    let token_arg = token_file.display().to_string();
    let _cp = spawn_cp(
        &dir.path().join("file"),
        admin,
        &["--token-file", &token_arg],
    );
    assert!(wait_until(Duration::from_secs(20), || get(&format!(
        "http://127.0.0.1:{admin}/healthz"
    ))
    .is_ok_and(|r| r.status == 200)));
    for auth in [
        None,
        Some("Bearer file-admin-toke"),
        Some("Bearer "),
        Some("Basic file-admin-token"),
    ] {
        let rsp = admin_call(admin, "PUT", "/v1/services/orders/config", auth);
        assert_eq!(rsp.status, 401, "{auth:?}: {}", rsp.text());
    }
    let rsp = admin_call(
        admin,
        "PUT",
        "/v1/services/orders/config",
        Some("Bearer file-admin-token"),
    );
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let meshctl = |args: &[&str]| {
        Command::new(bin("meshctl"))
            .args(["--server", &format!("http://127.0.0.1:{admin}")])
            .args(args)
            .env_remove("MESHCTL_TOKEN")
            .env_remove("MESHCTL_TOKEN_FILE")
            .output()
            .expect("run meshctl")
    };
    let out = meshctl(&["--token-file", &token_arg, "history", "--service", "orders"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = meshctl(&["history", "--service", "orders"]);
    assert!(!out.status.success(), "meshctl without a token was let in");

    let admin = free_port();
    let insecure = spawn_cp(
        &dir.path().join("insecure"),
        admin,
        &["--insecure-no-admin-token"],
    );
    assert!(wait_until(Duration::from_secs(20), || get(&format!(
        "http://127.0.0.1:{admin}/healthz"
    ))
    .is_ok_and(|r| r.status == 200)));
    assert!(insecure.output().contains("--insecure-no-admin-token"));
    let rsp = admin_call(admin, "GET", "/v1/services", None);
    assert_eq!(rsp.status, 200, "{}", rsp.text());
}

const PLANTED: &[&str] = &[
    "RedisPassS3cret",
    "RedisQueryS3cret",
    "RedisEncodedS3cret",
    "JwksUserS3cret",
    "JwksPassS3cret",
    "JwksTokenS3cret",
    "JwksFragmentS3cret",
    "c2VjcmV0LWZvci1yZWRhY3Rpb24tdGVzdHMtMzItYnl0ZXM=",
    "c2Vjb25kLXNlY3JldC1mb3ItcmVkYWN0aW9uLXRlc3RzLTE=",
];

fn with_secrets(redis_url: &str, jwks_url: &str, hmac: &str) -> String {
    pushed("secrets", "")
        + &format!(
            r#"redis: {{ url: "{redis_url}" }}
filters:
  login:
    type: session
    mode: jwt
    jwks_url: "{jwks_url}"
  verify:
    type: signature
    keys: [{{ id: app-1, alg: hmac-sha256, secret_base64: "{hmac}" }}]
"#
        )
}

/// History, stored versions and diffs (API and meshctl) never show a
/// credential carried in a URL or a key, whatever its spelling.
#[test]
fn history_show_and_diff_never_show_credentials() {
    let dir = tempfile::tempdir().expect("dir");
    let cp = ControlPlane::start(dir.path());
    let v1 = cp.push(
        "orders",
        &with_secrets(
            "redis+unix:///run/redis.sock?db=0&pass=RedisQueryS3cret",
            "https://JwksUserS3cret:JwksPassS3cret@idp.example/jwks#JwksFragmentS3cret",
            "c2VjcmV0LWZvci1yZWRhY3Rpb24tdGVzdHMtMzItYnl0ZXM=",
        ),
        "",
    );
    let v2 = cp.push(
        "orders",
        &with_secrets(
            "redis://:RedisPassS3cret@127.0.0.1:1/0?%70assword=RedisEncodedS3cret",
            "https://idp.example/jwks?access_token=JwksTokenS3cret",
            "c2Vjb25kLXNlY3JldC1mb3ItcmVkYWN0aW9uLXRlc3RzLTE=",
        ),
        "",
    );
    let mut shown = Vec::new();
    for path in [
        "/v1/services/orders/history".to_string(),
        format!("/v1/services/orders/versions/{v1}"),
        format!("/v1/services/orders/versions/{v2}"),
        format!("/v1/services/orders/diff?from={v1}&to={v2}"),
        "/v1/services".to_string(),
        "/v1/status".to_string(),
    ] {
        let rsp = cp.call("GET", &path, "", "application/json");
        assert_eq!(rsp.status, 200, "{path}: {}", rsp.text());
        shown.push((path, rsp.text()));
    }
    for args in [
        vec!["history", "--service", "orders"],
        vec!["show", "--service", "orders", &v1],
        vec!["show", "--service", "orders", &v2],
        vec!["diff", "--service", "orders", &v1, &v2],
        vec!["--json", "show", "--service", "orders", &v2],
    ] {
        let out = cp.meshctl(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        shown.push((
            format!("meshctl {args:?}"),
            String::from_utf8_lossy(&out.stdout).to_string(),
        ));
    }
    for (what, text) in &shown {
        for secret in PLANTED {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
    // The diff still shows what changed, redacted.
    let diff = &shown[3].1;
    assert!(diff.contains("+") && diff.contains("[redacted]"), "{diff}");
    assert_no_secret_in_log(&cp);
}

fn assert_no_secret_in_log(cp: &ControlPlane) {
    let log = cp.proc.output();
    for secret in PLANTED {
        assert!(
            !log.contains(secret),
            "the control plane log shows {secret}:\n{log}"
        );
    }
}

/// A pushed config cannot open egress (which signs with the pod's keys) or
/// the admin API beyond loopback: the control plane refuses it with the
/// field named, and sidecars keep serving the last good version.
#[test]
fn pushed_non_loopback_egress_or_admin_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let cp = ControlPlane::start(dir.path());
    let node = start_node(&cp, "loopback-1", &[], None);
    let v1 = cp.push("orders", &pushed("v1", ""), "");
    node.wait_version(&v1);
    wait_acked(&cp, &[&node], &v1);

    let egress = |listen: &str| {
        pushed("v2", "")
            + &format!(
                r#"egress:
  listen: "{listen}"
  destinations:
    - host: wallet.internal
      upstream: 127.0.0.1:1
      key: {{ id: orders, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=" }}
"#
            )
    };
    for (yaml, field) in [
        (egress("0.0.0.0:15001"), "egress.listen"),
        (egress("[::]:15001"), "egress.listen"),
        (
            pushed("v2", "") + "admin: { listen: \"0.0.0.0:15000\" }\n",
            "admin.listen",
        ),
    ] {
        let rsp = cp.call(
            "PUT",
            "/v1/services/orders/config",
            &yaml,
            "application/yaml",
        );
        assert_eq!(rsp.status, 400, "{}", rsp.text());
        let fields = rsp.json()["fields"].to_string();
        assert!(fields.contains(field), "{fields}");
    }
    let history = cp.call("GET", "/v1/services/orders/history", "", "application/json");
    assert_eq!(history.json()["versions"].as_array().map(Vec::len), Some(1));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.sidecar.version(), v1);
    assert_eq!(node.which(), "v1");
}
