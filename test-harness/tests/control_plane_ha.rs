//! The control plane as replicas over a real etcd cluster (three members on
//! loopback): every replica serves what etcd holds, writes through any
//! replica form one linear history, any replica lists every sidecar, and a
//! replica cut off from etcd refuses writes while its sidecars keep running.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::etcd::EtcdCluster;
use meshgate_test_harness::which_config::{bootstrap, pushed};
use meshgate_test_harness::{
    bin, free_port, get, request, wait_until, EchoApp, HttpResult, Proc, Sidecar,
};
use serde_json::Value;

const TOKEN: &str = "test-admin-token";
const XDS_TOKEN: &str = "test-xds-token-for-orders";

struct Replica {
    proc: Proc,
    admin: u16,
    grpc: u16,
}

/// Files shared by the replicas and sidecars of one test.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("xds-tokens.yaml"),
            format!("tokens:\n  - token: {XDS_TOKEN}\n    services: [orders]\n"),
        )
        .expect("write xds tokens");
        std::fs::write(dir.path().join("xds-token"), XDS_TOKEN).expect("write xds token");
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Replica {
    /// `with_tokens`: pass the xDS token file (stored in etcd); without it
    /// the replica takes the bindings etcd holds.
    fn start(etcd: &EtcdCluster, files: &Files, name: &str, with_tokens: bool) -> Replica {
        let (grpc, admin) = (free_port(), free_port());
        let mut cmd = Command::new(bin("meshgate-cp"));
        cmd.arg("serve")
            .args(["--store", &etcd.store_url()])
            .args(["--grpc", &format!("127.0.0.1:{grpc}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--token", TOKEN])
            .env("RUST_LOG", "info");
        if with_tokens {
            cmd.arg("--xds-tokens").arg(files.path("xds-tokens.yaml"));
        }
        let proc = Proc::spawn("meshgate-cp", &mut cmd, files.path(&format!("{name}.log")));
        let replica = Replica { proc, admin, grpc };
        let up = wait_until(Duration::from_secs(20), || {
            get(&replica.url("/healthz")).is_ok_and(|r| r.status == 200)
        });
        assert!(
            up,
            "replica {name} did not start:\n{}",
            replica.proc.output()
        );
        replica
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    fn xds_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
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

    fn try_push(&self, label: &str) -> HttpResult {
        self.call("PUT", "/v1/services/orders/config", &pushed(label))
    }

    fn push(&self, label: &str) -> String {
        let rsp = self.try_push(label);
        assert_eq!(rsp.status, 200, "push failed: {}", rsp.text());
        rsp.json()["version"].as_str().expect("version").to_string()
    }

    fn history(&self) -> Vec<String> {
        let rsp = self.call("GET", "/v1/services/orders/history", "");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        rsp.json()["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| v["version"].as_str().expect("version").to_string())
            .collect()
    }

    fn status(&self) -> Vec<Value> {
        let rsp = self.call("GET", "/v1/status", "");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        rsp.json().as_array().cloned().unwrap_or_default()
    }

    fn node_ids(&self) -> BTreeSet<String> {
        self.status()
            .iter()
            .filter_map(|s| s["node_id"].as_str().map(str::to_string))
            .collect()
    }
}

struct Node {
    _app: EchoApp,
    sidecar: Sidecar,
    id: String,
    _state: tempfile::TempDir,
}

fn start_node(files: &Files, xds: &str, id: &str) -> Node {
    let app = EchoApp::start();
    let state = tempfile::tempdir().expect("state dir");
    let token_file = files.path("xds-token").display().to_string();
    let state_dir = state.path().display().to_string();
    let args = [
        "--xds",
        xds,
        "--node-id",
        id,
        "--service",
        "orders",
        "--state-dir",
        &state_dir,
        "--xds-token-file",
        &token_file,
    ];
    let mut sidecar = Sidecar::spawn(&bootstrap(&app.addr()), &args);
    sidecar.wait_ready();
    Node {
        _app: app,
        sidecar,
        id: id.into(),
        _state: state,
    }
}

impl Node {
    fn which(&self) -> String {
        get(&self.sidecar.url("/which"))
            .map(|r| r.text())
            .unwrap_or_default()
    }

    /// The replica that sent the running config (`/config_dump`'s source).
    fn source(&self) -> String {
        self.sidecar.config_dump()["source"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
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
}

fn wait_listed(replica: &Replica, ids: &[&str]) {
    let want: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    let ok = wait_until(Duration::from_secs(15), || replica.node_ids() == want);
    assert!(ok, "status lists {:?}, want {want:?}", replica.node_ids());
}

#[test]
fn pushes_through_either_replica_reach_every_sidecar_and_survive_a_member_loss() {
    let mut etcd = EtcdCluster::start(3);
    let files = Files::new();
    let a = Replica::start(&etcd, &files, "a", true);
    // B has no token file: it serves with the bindings A stored in etcd.
    let b = Replica::start(&etcd, &files, "b", false);
    let on_a = start_node(&files, &a.xds_url(), "node-on-a");
    let on_b = start_node(&files, &b.xds_url(), "node-on-b");

    assert_eq!(a.push("one"), "v1");
    on_a.wait_version("v1");
    on_b.wait_version("v1");
    assert_eq!(on_b.which(), "one");
    assert_eq!(b.push("two"), "v2");
    on_a.wait_version("v2");
    on_b.wait_version("v2");
    assert_eq!(on_a.which(), "two");

    // Both replicas list both sidecars, each on its own replica.
    wait_listed(&a, &["node-on-a", "node-on-b"]);
    wait_listed(&b, &["node-on-a", "node-on-b"]);
    let replicas: BTreeSet<String> = a
        .status()
        .iter()
        .filter_map(|s| s["replica"].as_str().map(str::to_string))
        .collect();
    assert_eq!(replicas.len(), 2, "{:?}", a.status());
    let out = Command::new(bin("meshctl"))
        .args(["--server", &b.url(""), "status"])
        .env("MESHCTL_TOKEN", TOKEN)
        .output()
        .expect("meshctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("node-on-a") && text.contains("node-on-b"),
        "{text}"
    );

    // The first endpoint of both replicas' --store goes down: pushes work on.
    etcd.stop_member(0);
    assert_eq!(a.push("three"), "v3");
    assert_eq!(b.push("four"), "v4");
    on_a.wait_version("v4");
    on_b.wait_version("v4");
    assert_eq!(a.history(), ["v1", "v2", "v3", "v4"]);
    assert_eq!(b.history(), ["v1", "v2", "v3", "v4"]);

    // A sidecar that disconnects leaves every replica's list.
    drop(on_b);
    wait_listed(&a, &["node-on-a"]);
    wait_listed(&b, &["node-on-a"]);
}

#[test]
fn concurrent_pushes_through_two_replicas_make_one_linear_history() {
    let etcd = EtcdCluster::start(3);
    let files = Files::new();
    let replicas = Arc::new([
        Replica::start(&etcd, &files, "a", true),
        Replica::start(&etcd, &files, "b", true),
    ]);
    let start = Arc::new(Barrier::new(16));
    let pushes: Vec<_> = (0..16)
        .map(|i| {
            let replicas = replicas.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                replicas[i % 2].push(&format!("push-{i}"))
            })
        })
        .collect();
    let mut versions: Vec<u64> = pushes
        .into_iter()
        .map(|p| {
            let v = p.join().expect("push thread");
            v.trim_start_matches('v').parse().expect("vN")
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=16).collect::<Vec<u64>>(),
        "none lost, none twice"
    );
    let want: Vec<String> = (1..=16).map(|n| format!("v{n}")).collect();
    let ok = wait_until(Duration::from_secs(10), || {
        replicas[0].history() == want && replicas[1].history() == want
    });
    assert!(
        ok,
        "a: {:?}\nb: {:?}",
        replicas[0].history(),
        replicas[1].history()
    );
}

#[test]
fn a_replica_cut_off_from_etcd_refuses_writes_and_keeps_serving() {
    let mut etcd = EtcdCluster::start(3);
    let files = Files::new();
    let a = Replica::start(&etcd, &files, "a", true);
    let node = start_node(&files, &a.xds_url(), "node-1");
    assert_eq!(a.push("one"), "v1");
    node.wait_version("v1");

    etcd.stop_all();
    let rsp = a.try_push("lost");
    assert_eq!(rsp.status, 503, "{}", rsp.text());
    let body = rsp.json();
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("etcd")),
        "{body}"
    );
    for (method, path) in [
        ("POST", "/v1/services/orders/rollback?to=v1"),
        ("PUT", "/v1/services/orders/config?labels=track%3Dcanary"),
    ] {
        let rsp = a.call(method, path, &pushed("canary"));
        assert_eq!(rsp.status, 503, "{path}: {}", rsp.text());
        assert_eq!(rsp.json()["code"], "store_unavailable");
    }
    // The sidecar keeps its stream and its version; the replica answers.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(node.sidecar.version(), "v1");
    assert_eq!(node.which(), "one");
    assert!(get(&a.url("/healthz")).is_ok_and(|r| r.status == 200));

    // etcd back: the refused write never happened, the next one lands and
    // reaches the sidecar (the replica follows etcd again).
    etcd.start_all();
    let pushed = wait_until(Duration::from_secs(20), || a.try_push("two").status == 200);
    assert!(
        pushed,
        "push after etcd returned failed:\n{}",
        a.proc.output()
    );
    assert_eq!(a.history(), ["v1", "v2"]);
    node.wait_version("v2");
    assert_eq!(node.which(), "two");
}

#[test]
fn killing_the_replica_a_sidecar_is_on_makes_it_fail_over_and_the_next_push_arrives() {
    let etcd = EtcdCluster::start(3);
    let files = Files::new();
    let mut replicas = [
        Replica::start(&etcd, &files, "a", true),
        Replica::start(&etcd, &files, "b", true),
    ];
    let both = format!("{},{}", replicas[0].xds_url(), replicas[1].xds_url());
    let node = start_node(&files, &both, "node-1");
    assert_eq!(replicas[0].push("one"), "v1");
    node.wait_version("v1");
    let on = replicas
        .iter()
        .position(|r| node.source().starts_with(&r.xds_url()))
        .unwrap_or_else(|| panic!("config from neither replica: {}", node.source()));
    let other = 1 - on;

    replicas[on].proc.kill();
    // The other replica sees the sidecar arrive, already running v1.
    let moved = wait_until(Duration::from_secs(20), || {
        replicas[other]
            .status()
            .iter()
            .any(|s| s["node_id"] == "node-1" && s["last_acked_version"] == "v1")
    });
    assert!(
        moved,
        "sidecar did not reach the other replica: {:?}\n{}",
        replicas[other].status(),
        node.sidecar.proc.output()
    );
    assert_eq!(replicas[other].push("two"), "v2");
    node.wait_version("v2");
    assert_eq!(node.which(), "two");
    assert!(
        node.source().starts_with(&replicas[other].xds_url()),
        "{}",
        node.source()
    );
    // Listed once, as its newest stream (the killed replica's key lives on
    // until its lease expires).
    let listed_once = wait_until(Duration::from_secs(15), || {
        replicas[other]
            .status()
            .iter()
            .filter(|s| s["node_id"] == "node-1")
            .count()
            == 1
    });
    assert!(listed_once, "{:?}", replicas[other].status());
}

/// Opens an ADS stream with `node_id` (a raw client: the sidecar's command
/// line cannot carry megabytes) and keeps it open until the runtime ends.
fn raw_stream(runtime: &tokio::runtime::Runtime, xds: &str, node_id: String) {
    use meshgate_xds::pb::{AggregatedDiscoveryServiceClient, DiscoveryRequest, Node};
    let xds = xds.to_string();
    runtime.spawn(async move {
        let channel = tonic::transport::Endpoint::from_shared(xds)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: Some(Node {
                id: node_id,
                cluster: "orders".into(),
                ..Default::default()
            }),
            resource_names: vec!["orders".into()],
            ..Default::default()
        })
        .await
        .expect("queue");
        let outbound =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
            );
        let mut request = tonic::Request::new(outbound);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {XDS_TOKEN}").parse().expect("ascii"),
        );
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_encoding_message_size(8 * 1024 * 1024);
        let mut inbound = client
            .stream_aggregated_resources(request)
            .await
            .expect("stream")
            .into_inner();
        while let Ok(Some(_)) = inbound.message().await {}
        drop(tx);
    });
}

#[test]
fn an_oversized_node_id_does_not_stop_status_publication() {
    let etcd = EtcdCluster::start(1);
    let files = Files::new();
    let a = Replica::start(&etcd, &files, "a", true);
    let b = Replica::start(&etcd, &files, "b", false);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // 2 MiB of node id: more than etcd accepts in one request (1.5 MiB).
    raw_stream(&runtime, &a.xds_url(), "x".repeat(2 << 20));
    let listed = wait_until(Duration::from_secs(10), || a.node_ids().len() == 1);
    assert!(
        listed,
        "the raw stream was not registered: {:?}",
        a.node_ids().len()
    );
    let normal = start_node(&files, &a.xds_url(), "node-normal");
    assert_eq!(a.push("one"), "v1");
    normal.wait_version("v1");
    // The other replica still learns of the normal sidecar.
    wait_listed(&b, &["node-normal"]);
    assert_eq!(a.node_ids().len(), 2, "the replica itself lists both");
}

#[test]
fn a_canary_is_chosen_from_the_sidecars_of_every_replica_and_is_the_same_on_both() {
    let etcd = EtcdCluster::start(3);
    let files = Files::new();
    let a = Replica::start(&etcd, &files, "a", true);
    let b = Replica::start(&etcd, &files, "b", false);
    // One sidecar on A, three on B: a 50% canary pushed through A has two
    // members, so it must take sidecars of B too.
    let nodes = [
        start_node(&files, &a.xds_url(), "node-a1"),
        start_node(&files, &b.xds_url(), "node-b1"),
        start_node(&files, &b.xds_url(), "node-b2"),
        start_node(&files, &b.xds_url(), "node-b3"),
    ];
    assert_eq!(a.push("one"), "v1");
    for node in &nodes {
        node.wait_version("v1");
    }
    let ids = ["node-a1", "node-b1", "node-b2", "node-b3"];
    wait_listed(&a, &ids);
    wait_listed(&b, &ids);

    let rsp = a.call(
        "PUT",
        "/v1/services/orders/config?canary=50",
        &pushed("canary"),
    );
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    assert_eq!(rsp.json()["version"], "v2", "{}", rsp.text());

    let canary_of = |replica: &Replica| -> BTreeSet<String> {
        replica
            .status()
            .iter()
            .filter(|s| s["track"] == "canary")
            .filter_map(|s| s["node_id"].as_str().map(str::to_string))
            .collect()
    };
    let same = wait_until(Duration::from_secs(15), || {
        let on_a = canary_of(&a);
        on_a.len() == 2 && on_a == canary_of(&b)
    });
    assert!(
        same,
        "canary members: {:?} from A, {:?} from B",
        canary_of(&a),
        canary_of(&b)
    );
    let members = canary_of(&a);
    assert!(
        members.iter().any(|id| id.starts_with("node-b")),
        "{members:?}"
    );
    // What the sidecars run is what both replicas report.
    for node in nodes.iter().filter(|n| members.contains(&n.id)) {
        node.wait_version("v2");
        assert_eq!(node.which(), "canary");
    }
    for node in nodes.iter().filter(|n| !members.contains(&n.id)) {
        assert_eq!(node.sidecar.version(), "v1", "{}", node.id);
        assert_eq!(node.which(), "one", "{}", node.id);
    }
}
