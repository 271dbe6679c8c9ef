//! Sidecars with several control-plane replicas: two real `meshgate-cp`
//! processes (file store, each its own data dir, the same versions pushed to
//! both), a real `meshgate` sidecar with `--xds A,B` in front of a real echo
//! app, and a load loop that must see no failed request while replicas die.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::which_config::{bootstrap, pushed};
use meshgate_test_harness::{
    bin, free_port, get, request, wait_until, EchoApp, HttpResult, Proc, Sidecar,
};
use serde_json::Value;

const TOKEN: &str = "failover-admin-token";
const XDS_TOKEN: &str = "failover-xds-token-for-orders";

/// One control-plane replica on the file store.
struct Replica {
    proc: Proc,
    grpc: u16,
    admin: u16,
    data_dir: PathBuf,
    /// How the sidecar names it in `--xds` (a name or an address).
    xds_url: String,
}

impl Replica {
    fn start(data_dir: &Path, host: &str) -> Replica {
        Self::start_at(data_dir, host, free_port(), free_port())
    }

    fn start_at(data_dir: &Path, host: &str, grpc: u16, admin: u16) -> Replica {
        let tokens = data_dir.with_extension("xds-tokens.yaml");
        std::fs::write(
            &tokens,
            format!("tokens:\n  - token: {XDS_TOKEN}\n    services: [orders]\n"),
        )
        .expect("write xds tokens");
        let mut cmd = Command::new(bin("meshgate-cp"));
        cmd.arg("serve")
            .arg("--xds-tokens")
            .arg(&tokens)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--token", TOKEN])
            .env("RUST_LOG", "info");
        // A log per start, so a restarted replica's log shows only its own life.
        let mut n = 0;
        let log = loop {
            let log = data_dir.with_extension(format!("{admin}.{n}.log"));
            if !log.exists() {
                break log;
            }
            n += 1;
        };
        let replica = Replica {
            proc: Proc::spawn("meshgate-cp", &mut cmd, log),
            grpc,
            admin,
            data_dir: data_dir.to_path_buf(),
            xds_url: format!("http://{host}:{grpc}"),
        };
        let up = wait_until(Duration::from_secs(20), || {
            get(&replica.url("/healthz")).is_ok_and(|r| r.status == 200)
        });
        assert!(
            up,
            "control plane did not start:\n{}",
            replica.proc.output()
        );
        replica
    }

    /// Starts it again on the same ports and data dir.
    fn restart(&mut self, host: &str) {
        self.proc.kill();
        *self = Self::start_at(&self.data_dir.clone(), host, self.grpc, self.admin);
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    fn call(&self, method: &str, path: &str, body: &str) -> HttpResult {
        let req = Request::builder()
            .method(method)
            .uri(self.url(path))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/yaml")
            .body(Bytes::from(body.to_string()))
            .expect("request");
        request(req).expect("admin api answers")
    }

    fn push(&self, yaml: &str) -> String {
        let rsp = self.call("PUT", "/v1/services/orders/config", yaml);
        assert_eq!(rsp.status, 200, "push failed: {}", rsp.text());
        rsp.json()["version"].as_str().expect("version").to_string()
    }

    /// This replica's view of the node, if it is connected here.
    fn node(&self, node_id: &str) -> Option<Value> {
        let rsp = self.call("GET", "/v1/status", "");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        rsp.json()
            .as_array()
            .and_then(|all| all.iter().find(|s| s["node_id"] == node_id).cloned())
    }

    /// Log lines of this start that mention `node_id` and `message`.
    fn log_lines(&self, node_id: &str, message: &str) -> Vec<String> {
        self.proc
            .output()
            .lines()
            .filter(|l| l.contains(node_id) && l.contains(message))
            .map(str::to_string)
            .collect()
    }
}

struct Node {
    _app: EchoApp,
    sidecar: Sidecar,
    _state: tempfile::TempDir,
}

const NODE: &str = "failover-node";

fn start_node(xds: &str, token_file: &Path) -> Node {
    let app = EchoApp::start();
    let state = tempfile::tempdir().expect("state dir");
    let args = [
        "--xds",
        xds,
        "--node-id",
        NODE,
        "--service",
        "orders",
        "--state-dir",
        state.path().to_str().expect("utf8"),
        "--xds-token-file",
        token_file.to_str().expect("utf8"),
    ];
    let sidecar = Sidecar::start_with_args(&bootstrap(&app.addr()), &args);
    Node {
        _app: app,
        sidecar,
        _state: state,
    }
}

impl Node {
    fn wait_version(&self, version: &str) {
        let ok = wait_until(Duration::from_secs(30), || {
            self.sidecar.version() == version
        });
        assert!(
            ok,
            "stayed at {}; log:\n{}",
            self.sidecar.version(),
            self.sidecar.proc.output()
        );
    }

    fn which(&self) -> String {
        get(&self.sidecar.url("/which"))
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// `/config_dump`'s source detail: the replica that sent the config.
    fn source(&self) -> String {
        let dump = self.sidecar.config_dump();
        assert_eq!(dump["source"]["kind"], "xds", "{dump}");
        dump["source"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Sum of the sidecar's metric samples whose line contains every one of `parts`.
    fn metric(&self, parts: &[&str]) -> f64 {
        self.sidecar
            .metrics()
            .lines()
            .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Requests `/which` from several threads until stopped; every answer must
/// be 200 with one of the expected labels.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(url: String, labels: &'static [&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|_| {
                let (url, stop, ok, failures) =
                    (url.clone(), stop.clone(), ok.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match get(&url) {
                            Ok(r) if r.status == 200 && labels.contains(&r.text().as_str()) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let seen = other.map(|r| (r.status, r.text()));
                                failures.lock().expect("failures").push(format!("{seen:?}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn served(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops and asserts that nothing failed and at least `min` requests were served.
    fn finish(self, min: usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let failures = self.failures.lock().expect("failures");
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            ok + failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok >= min, "load too small: {ok} requests");
    }
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("xds-token");
    std::fs::write(&path, XDS_TOKEN).expect("token file");
    path
}

/// Two replicas with `v1` = `one` pushed to both.
fn two_replicas(dir: &Path) -> (Replica, Replica) {
    // The second is named by host name, so the name's address is a target too.
    let a = Replica::start(&dir.join("cp-a"), "127.0.0.1");
    let b = Replica::start(&dir.join("cp-b"), "localhost");
    assert_eq!(a.push(&pushed("one")), "v1");
    assert_eq!(b.push(&pushed("one")), "v1");
    (a, b)
}

/// Which replica the node's stream is open to (it shows the node in its status).
fn connected_index(replicas: &[&Replica]) -> usize {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(30), || {
        let here: Vec<usize> = (0..replicas.len())
            .filter(|&i| {
                replicas[i]
                    .node(NODE)
                    .is_some_and(|s| s["last_acked_version"] == "v1")
            })
            .collect();
        found = here.first().copied();
        here.len() == 1
    });
    assert!(ok, "the node is not connected to exactly one replica");
    found.expect("connected")
}

#[test]
fn killing_the_connected_replica_fails_over_without_a_resend_or_a_failed_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_replicas(dir.path());
    let node = start_node(
        &format!("{},{}", a.xds_url, b.xds_url),
        &token_file(dir.path()),
    );
    node.wait_version("v1");
    assert_eq!(node.which(), "one");
    let mut replicas = [a, b];
    let current = connected_index(&[&replicas[0], &replicas[1]]);
    let other = 1 - current;
    let first_source = node.source();
    assert!(
        first_source.starts_with(&replicas[current].xds_url),
        "{first_source} vs {}",
        replicas[current].xds_url
    );
    let other_url = replicas[other].xds_url.clone();
    let endpoint_label = |url: &str| format!("endpoint=\"{url}\"");
    assert_eq!(
        node.metric(&[
            "meshgate_xds_connected{",
            &endpoint_label(&replicas[current].xds_url)
        ]),
        1.0
    );
    assert_eq!(node.metric(&["meshgate_xds_failovers_total"]), 0.0);

    let load = Load::start(node.sidecar.url("/which"), &["one", "two"]);
    assert!(wait_until(Duration::from_secs(10), || load.served() > 20));

    // The replica the sidecar is connected to dies.
    replicas[current].proc.kill();
    let reported = wait_until(Duration::from_secs(30), || {
        replicas[other].node(NODE).is_some()
    });
    assert!(
        reported,
        "no failover; log:\n{}",
        node.sidecar.proc.output()
    );
    // It reported the version it runs in its first request...
    let status = replicas[other].node(NODE).expect("connected");
    assert_eq!(status["last_acked_version"], "v1", "{status}");
    assert_eq!(status["desired_version"], "v1", "{status}");
    // ...so the replica, which has v1 too, sends nothing: give a resend time to show.
    std::thread::sleep(Duration::from_secs(2));
    let other_label = endpoint_label(&other_url);
    assert_eq!(
        node.metric(&["meshgate_xds_responses_total{", &other_label]),
        0.0,
        "{}",
        node.sidecar.metrics()
    );
    assert!(replicas[other].log_lines(NODE, " ACK ").is_empty());
    assert_eq!(node.source(), first_source, "the config was not re-applied");
    assert_eq!(node.sidecar.version(), "v1");
    assert_eq!(node.metric(&["meshgate_xds_connected{", &other_label]), 1.0);
    assert_eq!(
        node.metric(&[
            "meshgate_xds_connected{",
            &endpoint_label(&replicas[current].xds_url)
        ]),
        0.0
    );
    assert_eq!(node.metric(&["meshgate_xds_failovers_total"]), 1.0);
    let log = node.sidecar.proc.output();
    assert!(
        log.lines().any(|l| l.contains("xds stream open")
            && l.contains(&other_url)
            && l.contains("\"failed_over\":true")
            && l.contains("\"version\":\"v1\"")),
        "{log}"
    );

    // The next push, to the replica it now uses, arrives.
    assert_eq!(replicas[other].push(&pushed("two")), "v2");
    node.wait_version("v2");
    assert_eq!(node.which(), "two");
    assert!(node.source().starts_with(&other_url), "{}", node.source());
    assert!(wait_until(Duration::from_secs(20), || replicas[other]
        .node(NODE)
        .is_some_and(|s| s["last_acked_version"] == "v2")));
    assert_eq!(
        node.metric(&[
            "meshgate_xds_responses_total{",
            &other_label,
            "outcome=\"ack\""
        ]),
        1.0
    );
    assert_eq!(replicas[other].log_lines(NODE, " ACK ").len(), 1);
    load.finish(100);
}

#[test]
fn with_every_replica_down_config_keeps_serving_and_the_sidecar_reconnects_when_one_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_replicas(dir.path());
    let node = start_node(
        &format!("{},{}", a.xds_url, b.xds_url),
        &token_file(dir.path()),
    );
    node.wait_version("v1");
    let mut replicas = [a, b];
    connected_index(&[&replicas[0], &replicas[1]]);

    let load = Load::start(node.sidecar.url("/which"), &["one", "two"]);
    assert!(wait_until(Duration::from_secs(10), || load.served() > 20));
    for r in &mut replicas {
        r.proc.kill();
    }
    // Both down for a while: attempts fail with growing delays, serving goes on.
    let ok = wait_until(Duration::from_secs(20), || {
        node.metric(&["meshgate_xds_connects_total{", "result=\"failed\""]) >= 3.0
    });
    assert!(ok, "{}", node.sidecar.metrics());
    assert_eq!(node.metric(&["meshgate_xds_connected{"]), 0.0);
    let served = load.served();
    assert!(wait_until(Duration::from_secs(10), || load.served() > served + 20));
    assert_eq!(node.which(), "one");
    assert_eq!(node.sidecar.version(), "v1");

    // One replica returns (same ports, same data dir): the sidecar finds it,
    // reports v1, and the next push there arrives.
    replicas[1].restart("localhost");
    let back = wait_until(Duration::from_secs(40), || {
        replicas[1]
            .node(NODE)
            .is_some_and(|s| s["last_acked_version"] == "v1")
    });
    assert!(
        back,
        "did not reconnect; log:\n{}",
        node.sidecar.proc.output()
    );
    assert!(
        replicas[1].log_lines(NODE, " ACK ").is_empty(),
        "v1 was resent"
    );
    assert_eq!(replicas[1].push(&pushed("two")), "v2");
    node.wait_version("v2");
    assert_eq!(node.which(), "two");
    load.finish(100);
}

/// Every bad `--xds` item is named, before anything starts.
#[test]
fn bad_xds_lists_fail_the_start_naming_each_bad_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(bin("meshgate"));
        cmd.args(args).args(["--service", "orders"]);
        cmd.env_remove("MESHGATE_XDS");
        if let Some(list) = env {
            cmd.env("MESHGATE_XDS", list);
        }
        let out = cmd.output().expect("run meshgate");
        assert!(!out.status.success(), "started with {args:?} {env:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run(
        &[
            "--xds",
            "http://127.0.0.1:1,ftp://cp-b:1,,http://user:S3cret@cp-c:1",
        ],
        None,
    );
    assert!(err.contains("item 2 \"ftp://cp-b:1\""), "{err}");
    assert!(err.contains("item 3 \"\": empty"), "{err}");
    assert!(
        err.contains("item 4") && err.contains("--xds-token-file"),
        "{err}"
    );
    assert!(!err.contains("S3cret"), "a credential in {err}");
    let err = run(&[], Some("http://127.0.0.1:1,http://127.0.0.1:1"));
    assert!(
        err.contains("item 2 \"http://127.0.0.1:1\": named twice"),
        "{err}"
    );
    // TLS settings apply to every replica: an http one among them is refused.
    let pem = dir.path().join("x.pem");
    std::fs::write(&pem, "").expect("pem");
    let pem = pem.to_str().expect("utf8");
    let err = run(
        &[
            "--xds",
            "https://127.0.0.1:1,http://127.0.0.1:2",
            "--xds-ca",
            pem,
            "--xds-cert",
            pem,
            "--xds-key",
            pem,
        ],
        None,
    );
    assert!(
        err.contains("item 2 \"http://127.0.0.1:2\"") && err.contains("https"),
        "{err}"
    );
    let err = run(&["--xds", "https://127.0.0.1:1"], None);
    assert!(err.contains("--xds-ca"), "{err}");
}
