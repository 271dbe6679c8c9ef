//! xDS bound to identity, end to end: a real `meshgate-cp` serving real
//! `meshgate` sidecars and raw ADS clients that try to fetch services their
//! credentials (bearer tokens, SPIFFE client certificates) do not allow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::{bin, free_port, get, request, wait_until, EchoApp, Proc, Sidecar};
use meshgate_xds::pb::{
    AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse, Node,
};
use meshgate_xds::resource::SIDECAR_CONFIG_TYPE_URL;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

const ADMIN_TOKEN: &str = "xds-auth-test-admin-token";
const ORDERS_TOKEN: &str = "orders-xds-token-0123456789";
const BILLING_TOKEN: &str = "billing-xds-token-0123456789";

struct ControlPlane {
    proc: Proc,
    grpc: u16,
    admin: u16,
}

fn spawn_cp(dir: &Path, extra: &[String]) -> (Proc, u16, u16) {
    let (grpc, admin) = (free_port(), free_port());
    let mut cmd = Command::new(bin("meshgate-cp"));
    cmd.arg("serve")
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("cp-data"))
        .args(["--grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--token", ADMIN_TOKEN])
        .env("RUST_LOG", "info");
    let log = dir.join(format!("cp-{admin}.log"));
    (Proc::spawn("meshgate-cp", &mut cmd, log), grpc, admin)
}

impl ControlPlane {
    fn start(dir: &Path, extra: &[String]) -> ControlPlane {
        let (proc, grpc, admin) = spawn_cp(dir, extra);
        let cp = ControlPlane { proc, grpc, admin };
        let up = wait_until(Duration::from_secs(20), || {
            get(&cp.admin_url("/healthz")).is_ok_and(|r| r.status == 200)
        });
        assert!(up, "control plane did not start:\n{}", cp.proc.output());
        cp
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin, path)
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> meshgate_test_harness::HttpResult {
        let req = Request::builder()
            .method(method)
            .uri(self.admin_url(path))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/yaml")
            .body(Bytes::from(body.to_string()))
            .expect("request");
        request(req).expect("admin api answers")
    }

    fn push(&self, service: &str, yaml: &str) -> String {
        let rsp = self.admin("PUT", &format!("/v1/services/{service}/config"), yaml);
        assert_eq!(rsp.status, 200, "push failed: {}", rsp.text());
        rsp.json()["version"].as_str().expect("version").to_string()
    }

    fn node_ids(&self) -> Vec<String> {
        let rsp = self.admin("GET", "/v1/status", "");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        rsp.json()
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["node_id"].as_str().map(str::to_string))
            .collect()
    }

    fn denied(&self, reason: &str) -> u64 {
        let rsp = self.admin("GET", "/metrics", "");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
        let prefix = format!("meshgate_cp_xds_denied_total{{reason=\"{reason}\"}} ");
        rsp.text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{}", rsp.text()))
    }
}

fn pushed(label: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "0.0.0.0:15006" }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: {label} }}
"#
    )
}

/// A sidecar with its app and state dir.
struct Pod {
    _app: EchoApp,
    sidecar: Sidecar,
    _state: tempfile::TempDir,
}

impl Pod {
    fn which(&self) -> String {
        get(&self.sidecar.url("/which"))
            .map(|r| r.text())
            .unwrap_or_default()
    }
}

fn start_node(url: &str, node_id: &str, service: &str, extra: &[String]) -> Pod {
    let app = EchoApp::start();
    let state = tempfile::tempdir().expect("state dir");
    let bootstrap = format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
admin: {{ listen: "${{ADMIN}}" }}
app: {{ address: "{}" }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: bootstrap }}
"#,
        app.addr()
    );
    let mut args: Vec<String> = vec![
        "--xds".into(),
        url.into(),
        "--node-id".into(),
        node_id.into(),
        "--service".into(),
        service.into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sidecar = Sidecar::spawn(&bootstrap, &refs);
    sidecar.wait_ready();
    Pod {
        _app: app,
        sidecar,
        _state: state,
    }
}

fn wait_which(node: &Pod, want: &str) {
    let ok = wait_until(Duration::from_secs(20), || node.which() == want);
    assert!(
        ok,
        "sidecar answers {:?}, not {want:?}; log:\n{}",
        node.which(),
        node.sidecar.proc.output()
    );
}

/// The sidecar logs the refusal and keeps serving its bootstrap config.
fn assert_refused(node: &Pod, reason: &str) {
    let ok = wait_until(Duration::from_secs(20), || {
        node.sidecar.proc.output().contains(reason)
    });
    assert!(
        ok,
        "no {reason} in the sidecar log:\n{}",
        node.sidecar.proc.output()
    );
    assert_eq!(node.which(), "bootstrap");
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ---- a raw ADS client, to see the exact status codes

struct Target {
    url: String,
    tls: Option<ClientTlsConfig>,
    token: Option<String>,
}

struct Opened {
    tx: mpsc::Sender<DiscoveryRequest>,
    inbound: Streaming<DiscoveryResponse>,
    first: DiscoveryResponse,
}

static PROBES: AtomicUsize = AtomicUsize::new(0);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn open(target: &Target, cluster: &str, names: &[&str]) -> Result<Opened, Status> {
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| Status::internal(e.to_string()))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = &target.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let node = Node {
        id: format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed)),
        cluster: cluster.into(),
        ..Default::default()
    };
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: SIDECAR_CONFIG_TYPE_URL.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("queue request");
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = &target.token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii token"),
        );
    }
    let within = Duration::from_secs(10);
    let mut inbound = tokio::time::timeout(within, client.stream_aggregated_resources(request))
        .await
        .map_err(|_| Status::deadline_exceeded("no stream"))??
        .into_inner();
    let first = tokio::time::timeout(within, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no response"))??
        .ok_or_else(|| Status::aborted("stream closed without a response"))?;
    Ok(Opened { tx, inbound, first })
}

/// The first response for `cluster` (and `names`), or the status that ended the stream.
fn fetch(target: &Target, cluster: &str, names: &[&str]) -> Result<DiscoveryResponse, Status> {
    runtime().block_on(async { open(target, cluster, names).await.map(|o| o.first) })
}

/// Opens a stream for `cluster`, ACKs its first response naming `next`
/// resources, and returns how the stream ended.
fn fetch_then_ask(target: &Target, cluster: &str, next: &[&str]) -> (DiscoveryResponse, Status) {
    runtime().block_on(async {
        let mut opened = open(target, cluster, &[cluster])
            .await
            .expect("first fetch");
        opened
            .tx
            .send(DiscoveryRequest {
                version_info: opened.first.version_info.clone(),
                response_nonce: opened.first.nonce.clone(),
                type_url: SIDECAR_CONFIG_TYPE_URL.into(),
                resource_names: next.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("send ack");
        let end = tokio::time::timeout(Duration::from_secs(10), opened.inbound.message())
            .await
            .expect("the stream ends");
        match end {
            Err(status) => (opened.first, status),
            Ok(other) => panic!("the stream went on: {other:?}"),
        }
    })
}

fn carries(response: &DiscoveryResponse, label: &str) -> bool {
    response
        .resources
        .iter()
        .any(|r| String::from_utf8_lossy(&r.value).contains(label))
}

fn assert_status(result: Result<DiscoveryResponse, Status>, code: Code, reason: &str) {
    match result {
        Ok(r) => panic!("expected {code:?} {reason}, got config {}", r.version_info),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(
                status.message().starts_with(&format!("{reason}: ")),
                "{status:?}"
            );
        }
    }
}

fn write_tokens(dir: &Path) -> PathBuf {
    // One token in plain text, one stored as its SHA-256 only.
    let billing_sha256 = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        BILLING_TOKEN.as_bytes(),
    ));
    let path = dir.join("xds-tokens.yaml");
    std::fs::write(
        &path,
        format!(
            "tokens:\n  - token: {ORDERS_TOKEN}\n    services: [orders]\n  - sha256: {billing_sha256}\n    services: [billing]\n"
        ),
    )
    .expect("write tokens");
    path
}

fn token_file(dir: &Path, token: &str) -> String {
    let path = dir.join(format!("{}.token", &token[..7]));
    std::fs::write(&path, format!("{token}\n")).expect("write token file");
    s(&path)
}

#[test]
fn xds_tokens_bind_each_sidecar_to_its_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path());
    let cp = ControlPlane::start(dir.path(), &["--xds-tokens".into(), s(&tokens)]);
    let orders_v = cp.push("orders", &pushed("orders-config"));
    cp.push("billing", &pushed("billing-secret-config"));
    let url = format!("http://127.0.0.1:{}", cp.grpc);
    let orders_token = token_file(dir.path(), ORDERS_TOKEN);
    let with_token = |file: &str| vec!["--xds-token-file".to_string(), file.to_string()];

    // The orders token fetches orders...
    let a = start_node(&url, "node-orders", "orders", &with_token(&orders_token));
    wait_which(&a, "orders-config");
    // ...and not billing; no token gets nothing.
    let b = start_node(&url, "node-billing", "billing", &with_token(&orders_token));
    let c = start_node(&url, "node-anon", "billing", &[]);
    assert_refused(&b, "service_not_allowed");
    assert_refused(&c, "credential_missing");
    assert_eq!(cp.node_ids(), vec!["node-orders".to_string()]);

    let target = |token: Option<&str>| Target {
        url: url.clone(),
        tls: None,
        token: token.map(str::to_string),
    };
    assert_status(
        fetch(&target(None), "orders", &["orders"]),
        Code::Unauthenticated,
        "credential_missing",
    );
    assert_status(
        fetch(&target(Some("orders-xds-token-012345678")), "orders", &[]),
        Code::Unauthenticated,
        "token_invalid",
    );
    assert_status(
        fetch(&target(Some(ORDERS_TOKEN)), "billing", &["billing"]),
        Code::PermissionDenied,
        "service_not_allowed",
    );
    // The node's cluster is allowed, a resource name it asks for is not.
    assert_status(
        fetch(&target(Some(ORDERS_TOKEN)), "orders", &["billing"]),
        Code::PermissionDenied,
        "resource_not_allowed",
    );
    // Inside an open stream: a later request for billing ends it.
    let (first, end) = fetch_then_ask(&target(Some(ORDERS_TOKEN)), "orders", &["billing"]);
    assert_eq!(first.version_info, orders_v);
    assert!(carries(&first, "orders-config") && !carries(&first, "billing"));
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    assert!(
        end.message().starts_with("resource_not_allowed: "),
        "{end:?}"
    );
    // The token stored as a hash works for its own service.
    let billing = fetch(&target(Some(BILLING_TOKEN)), "billing", &["billing"]).expect("billing");
    assert!(carries(&billing, "billing-secret-config"));

    // Logged and counted.
    assert!(cp.denied("credential_missing") >= 2);
    assert!(cp.denied("token_invalid") >= 1);
    assert!(cp.denied("service_not_allowed") >= 2);
    assert!(cp.denied("resource_not_allowed") >= 2);
    assert_eq!(cp.denied("certificate_identity_invalid"), 0);
    let log = cp.proc.output();
    assert!(log.contains("xDS stream denied"), "{log}");
    assert!(
        !log.contains(ORDERS_TOKEN),
        "a token reached the log:\n{log}"
    );

    // A sidecar whose token file is missing does not start.
    let missing = s(&dir.path().join("missing.token"));
    let mut broken = Sidecar::spawn(
        "inbound: { listen: \"${INBOUND}\" }\nadmin: { listen: \"${ADMIN}\" }\napp: { address: \"127.0.0.1:9\" }\n",
        &[
            "--xds",
            url.as_str(),
            "--service",
            "orders",
            "--xds-token-file",
            missing.as_str(),
        ],
    );
    assert!(
        broken.proc.wait_exit(Duration::from_secs(10)).is_some(),
        "{}",
        broken.proc.output()
    );
    assert!(
        broken.proc.output().contains("--xds-token-file"),
        "{}",
        broken.proc.output()
    );
}

/// A test CA that signs server and client certificates.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meshgate test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("ca cert");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("write ca");
        Pki {
            dir: dir.to_path_buf(),
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate signed by this CA (or self-signed) with these SANs.
    fn issue(
        &self,
        name: &str,
        dns: &[&str],
        uris: &[&str],
        self_signed: bool,
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*uri).try_into().expect("ia5 uri")));
        }
        let cert = if self_signed {
            params.self_signed(&key)
        } else {
            params.signed_by(&key, &self.issuer)
        }
        .expect("cert");
        let (cert_path, key_path) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

#[test]
fn xds_mtls_binds_the_service_to_the_certificate_spiffe_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let (server_cert, server_key) = pki.issue("cp", &["localhost", "127.0.0.1"], &[], false);
    let orders = pki.issue(
        "orders",
        &[],
        &["spiffe://mesh.test/ns/shop/sa/orders"],
        false,
    );
    let dns_only = pki.issue("dns-only", &["orders.meshgate.internal"], &[], false);
    let foreign = pki.issue(
        "foreign",
        &[],
        &["spiffe://other.test/ns/shop/sa/orders"],
        false,
    );
    let rogue = pki.issue(
        "rogue",
        &[],
        &["spiffe://mesh.test/ns/shop/sa/orders"],
        true,
    );
    let cp = ControlPlane::start(
        dir.path(),
        &[
            "--tls-cert".into(),
            s(&server_cert),
            "--tls-key".into(),
            s(&server_key),
            "--tls-client-ca".into(),
            s(&pki.ca),
            "--spiffe-trust-domain".into(),
            "mesh.test".into(),
        ],
    );
    cp.push("orders", &pushed("orders-config"));
    cp.push("billing", &pushed("billing-secret-config"));
    let url = format!("https://127.0.0.1:{}", cp.grpc);
    let client = |(cert, key): &(PathBuf, PathBuf)| {
        vec![
            "--xds-ca".to_string(),
            s(&pki.ca),
            "--xds-cert".into(),
            s(cert),
            "--xds-key".into(),
            s(key),
        ]
    };

    let a = start_node(&url, "node-orders", "orders", &client(&orders));
    wait_which(&a, "orders-config");
    let b = start_node(&url, "node-billing", "billing", &client(&orders));
    let c = start_node(&url, "node-dns", "orders", &client(&dns_only));
    assert_refused(&b, "service_not_allowed");
    assert_refused(&c, "certificate_identity_invalid");

    let target = |(cert, key): &(PathBuf, PathBuf)| Target {
        url: url.clone(),
        tls: Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&pki.ca).expect("ca")))
                .identity(Identity::from_pem(
                    std::fs::read(cert).expect("cert"),
                    std::fs::read(key).expect("key"),
                ))
                .domain_name("localhost"),
        ),
        token: None,
    };
    let ok = fetch(&target(&orders), "orders", &["orders"]).expect("orders");
    assert!(carries(&ok, "orders-config"));
    assert_status(
        fetch(&target(&orders), "billing", &[]),
        Code::PermissionDenied,
        "service_not_allowed",
    );
    let (_, end) = fetch_then_ask(&target(&orders), "orders", &["orders", "billing"]);
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
    for cert in [&dns_only, &foreign] {
        assert_status(
            fetch(&target(cert), "orders", &["orders"]),
            Code::Unauthenticated,
            "certificate_identity_invalid",
        );
    }
    // A certificate the CA did not sign fails the handshake: no config.
    let rogue_result = fetch(&target(&rogue), "orders", &["orders"]);
    assert!(
        rogue_result.is_err(),
        "an unsigned certificate got a config"
    );
    assert!(cp.denied("certificate_identity_invalid") >= 3);
    let nodes = cp.node_ids();
    assert!(nodes.contains(&"node-orders".to_string()), "{nodes:?}");
    assert!(
        !nodes.iter().any(|n| n == "node-billing" || n == "node-dns"),
        "{nodes:?}"
    );
}

#[test]
fn meshgate_cp_refuses_to_start_without_xds_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |extra: &[String], want: &str| {
        let (mut proc, _, _) = spawn_cp(dir.path(), extra);
        let exit = proc.wait_exit(Duration::from_secs(20));
        assert!(
            exit.is_some_and(|e| !e.success()),
            "meshgate-cp {extra:?} did not refuse to start:\n{}",
            proc.output()
        );
        assert!(proc.output().contains(want), "{}", proc.output());
    };
    refused(&[], "refusing to serve xDS without credentials");
    refused(&[], "--insecure-xds");

    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("cp", &["localhost"], &[], false);
    refused(
        &[
            "--tls-cert".into(),
            s(&cert),
            "--tls-key".into(),
            s(&key),
            "--tls-client-ca".into(),
            s(&pki.ca),
        ],
        "--tls-client-ca needs --spiffe-trust-domain",
    );
    let bad = dir.path().join("bad-tokens.yaml");
    std::fs::write(
        &bad,
        format!("tokens:\n  - token: {ORDERS_TOKEN}\n    services: [\"../etc\"]\n"),
    )
    .expect("write");
    refused(&["--xds-tokens".into(), s(&bad)], "tokens[0].services[0]");
    refused(
        &["--xds-tokens".into(), s(&bad), "--insecure-xds".into()],
        "cannot be used with",
    );

    // Only when told so explicitly, and with a warning.
    let cp = ControlPlane::start(dir.path(), &["--insecure-xds".into()]);
    assert!(
        cp.proc.output().contains("--insecure-xds: any client"),
        "{}",
        cp.proc.output()
    );
    cp.push("orders", &pushed("open-config"));
    let target = Target {
        url: format!("http://127.0.0.1:{}", cp.grpc),
        tls: None,
        token: None,
    };
    assert!(carries(
        &fetch(&target, "orders", &["orders"]).expect("insecure fetch"),
        "open-config"
    ));
}
