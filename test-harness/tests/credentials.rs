//! Credentials on every path to config and secrets, attacked through the
//! real `meshgate` binary: the admin API against browsers (DNS rebinding,
//! cross-origin posts), URL credentials in dumps and logs, the egress
//! listener's address, and the upgrade socket against other users.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::{
    assert_error, bin, free_port, get, request, send_request, wait_until, EchoApp, HttpResult,
    Proc, Sidecar, ADMIN_HEADER,
};

/// A uid other than the tests' own (they run as root).
const OTHER_UID: u32 = 65534;

fn config(app: &str, extra: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
{extra}
"#
    )
}

fn start() -> (EchoApp, Sidecar) {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), ""));
    (app, sidecar)
}

fn admin(
    sidecar: &Sidecar,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> HttpResult {
    send_request(method, &sidecar.admin_url(path), headers, body)
}

/// A refusal of the admin or health listener: 403 with `reason`.
#[track_caller]
fn assert_refused(rsp: &HttpResult, reason: &str) {
    assert_error(rsp, 403, reason);
}

fn still_serving(sidecar: &Sidecar) {
    let (status, ready) = sidecar.ready().expect("ready");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(get(&sidecar.url("/x")).expect("data path").status, 200);
}

// ---- admin API -------------------------------------------------------------

/// A DNS-rebinding page reaches 127.0.0.1 under its own host name: every
/// endpoint refuses a Host that is not a loopback name with the admin port.
#[test]
fn admin_api_refuses_rebound_host_names() {
    let (_app, sidecar) = start();
    let own_port = format!("127.0.0.1:{}", sidecar.admin_port);
    let bad_hosts = [
        format!("rebind.evil.example:{}", sidecar.admin_port),
        "rebind.evil.example".to_string(),
        format!("127.0.0.1.nip.io:{}", sidecar.admin_port),
        "localhost:1".to_string(),
        "0.0.0.0".to_string(),
    ];
    for path in ["/config_dump", "/metrics", "/ready", "/logging", "/live"] {
        for host in &bad_hosts {
            let rsp = admin(&sidecar, "GET", path, &[("host", host)], "");
            assert_refused(&rsp, "admin_host_not_allowed");
            assert!(!rsp.text().contains("routes"), "{}", rsp.text());
        }
        for host in [own_port.as_str(), "localhost", "127.0.0.1", "[::1]"] {
            let rsp = admin(&sidecar, "GET", path, &[("host", host)], "");
            assert_eq!(rsp.status, 200, "{path} with Host {host}: {}", rsp.text());
        }
    }
    // A second Host header does not sneak a foreign name past the first.
    let rsp = admin(
        &sidecar,
        "GET",
        "/config_dump",
        &[("host", &own_port), ("host", "rebind.evil.example")],
        "",
    );
    assert_refused(&rsp, "admin_host_not_allowed");
    assert!(sidecar
        .metrics()
        .contains("meshgate_admin_refused_total{reason=\"admin_host_not_allowed\"}"));
}

/// A cross-origin `text/plain` form post is a "simple" request a browser
/// sends without asking: it must not drain, upgrade or relog the sidecar.
#[test]
fn cross_origin_posts_change_nothing() {
    let (_app, sidecar) = start();
    let plain = ("content-type", "text/plain");
    for path in ["/drain", "/upgrade", "/logging?level=error"] {
        // The browser's form post: no custom header, foreign Origin.
        let rsp = admin(
            &sidecar,
            "POST",
            path,
            &[plain, ("origin", "http://evil.example")],
            "x",
        );
        assert_refused(&rsp, "admin_origin_not_allowed");
        // Even with the header (only possible after a preflight the API never
        // approves), a foreign or opaque Origin is refused.
        for origin in ["http://evil.example", "null"] {
            let rsp = admin(
                &sidecar,
                "POST",
                path,
                &[(ADMIN_HEADER, "1"), ("origin", origin)],
                "",
            );
            assert_refused(&rsp, "admin_origin_not_allowed");
        }
        // No Origin at all (a `no-cors` fetch hides it, curl sends none): the
        // header is still required.
        let rsp = admin(&sidecar, "POST", path, &[plain], "error");
        assert_refused(&rsp, "admin_header_required");
        let rsp = admin(&sidecar, "POST", path, &[(ADMIN_HEADER, "")], "error");
        assert_refused(&rsp, "admin_header_required");
        // GET never changes state.
        let rsp = admin(&sidecar, "GET", path, &[], "");
        assert_ne!(rsp.status, 202, "{}", rsp.text());
        // The preflight is not approved.
        let rsp = admin(
            &sidecar,
            "OPTIONS",
            path,
            &[
                ("origin", "http://evil.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", ADMIN_HEADER),
            ],
            "",
        );
        assert!(rsp.header("access-control-allow-origin").is_none());
        assert_ne!(rsp.status / 100, 2, "{}", rsp.text());
    }
    still_serving(&sidecar);
    let level = get(&sidecar.admin_url("/logging")).expect("level").json();
    assert_eq!(level["level"], "info", "{level}");

    // The operator's request, with the header, still works.
    let rsp = request(sidecar.admin_post("/logging?level=warn")).expect("set level");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let rsp = request(sidecar.admin_post("/drain")).expect("drain");
    assert_eq!(rsp.status, 202, "{}", rsp.text());
}

/// The health-only listener serves probes from outside the pod (their Host
/// is the pod's address) but no browser page of another origin.
#[test]
fn health_listener_takes_probe_hosts_but_not_foreign_origins() {
    let app = EchoApp::start();
    let health_port = free_port();
    let cfg = config(&app.addr(), "").replace(
        "admin: { listen: \"${ADMIN}\" }",
        &format!("admin: {{ listen: \"${{ADMIN}}\", health_listen: \"127.0.0.1:{health_port}\" }}"),
    );
    let sidecar = Sidecar::start(&cfg);
    let url = format!("http://127.0.0.1:{health_port}/ready");
    let probe = request(
        Request::get(&url)
            .header("host", format!("10.1.2.3:{health_port}"))
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("probe");
    assert_eq!(probe.status, 200, "{}", probe.text());
    let page = request(
        Request::get(&url)
            .header("origin", "http://evil.example")
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("page");
    assert_refused(&page, "admin_origin_not_allowed");
    let drain = request(
        Request::post(format!("http://127.0.0.1:{health_port}/drain"))
            .header(ADMIN_HEADER, "1")
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("drain on the health listener");
    assert_eq!(drain.status, 404, "{}", drain.text());
    still_serving(&sidecar);
}

// ---- redaction -------------------------------------------------------------

/// Distinct planted secrets, so a failure names the spelling that leaked.
const PLANTED: &[&str] = &[
    "RedisQueryS3cret",
    "JwksUserS3cret",
    "JwksPassS3cret",
    "JwksTokenS3cret",
    "JwksFragmentS3cret",
    "c2VjcmV0LWZvci1yZWRhY3Rpb24tdGVzdHMtMzItYnl0ZXM=",
    "RejectedS3cret",
];

fn assert_no_planted(what: &str, text: &str) {
    for secret in PLANTED {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

/// `/config_dump` and the log never show a credential carried in a URL or a
/// key, in any spelling, and neither does a rejected config's error.
#[test]
fn config_dump_and_logs_never_show_url_credentials() {
    let app = EchoApp::start();
    let dir = tempfile::tempdir().expect("dir");
    let redis_url = format!(
        "redis+unix://{}/none.sock?db=0&pass=RedisQueryS3cret",
        dir.path().display()
    );
    let extra = r#"    filters: [login]
  - name: signed
    match: { path_prefix: /signed/ }
    filters: [verify]
filters:
  login:
    type: session
    mode: jwt
    optional: true
    jwks_url: "http://JwksUserS3cret:JwksPassS3cret@127.0.0.1:1/jwks?token=JwksTokenS3cret&db=1#JwksFragmentS3cret"
  verify:
    type: signature
    keys: [{ id: app-1, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci1yZWRhY3Rpb24tdGVzdHMtMzItYnl0ZXM=" }]
"#
    .to_string()
        + &format!("redis: {{ url: \"{redis_url}\" }}\n");
    let cfg = config(&app.addr(), &extra);
    let sidecar = Sidecar::start(&cfg);
    // A token makes the filter fetch the JWKS (which fails, and is logged).
    let rsp = request(
        Request::get(sidecar.url("/x"))
            .header(
                "authorization",
                "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln",
            )
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("request");
    assert_ne!(rsp.status, 200, "{}", rsp.text());
    assert!(wait_until(Duration::from_secs(10), || sidecar
        .proc
        .output()
        .contains("JWKS fetch failed")));

    let dump = sidecar.config_dump().to_string();
    assert_no_planted("/config_dump", &dump);
    assert!(dump.contains("pass=[redacted]"), "{dump}");
    assert!(
        dump.contains("http://[redacted]@127.0.0.1:1/jwks?token=[redacted]&db=1#[redacted]"),
        "{dump}"
    );

    // A rejected config's errors are shown and logged: redacted as well.
    let v1 = sidecar.version();
    sidecar.write_config(&cfg.replace(
        "http://JwksUserS3cret:JwksPassS3cret@127.0.0.1:1/jwks",
        "ftp://u:RejectedS3cret@127.0.0.1:1/jwks",
    ));
    assert!(wait_until(Duration::from_secs(10), || !sidecar
        .config_dump()["last_rejected"]
        .is_null()));
    let dump = sidecar.config_dump();
    assert_eq!(dump["version"], v1.as_str());
    let rejected = dump["last_rejected"].to_string();
    assert!(rejected.contains("filters.login.jwks_url"), "{rejected}");
    assert_no_planted("/config_dump", &dump.to_string());
    assert_no_planted("the log", &sidecar.proc.output());
}

// ---- egress ----------------------------------------------------------------

/// Whoever reaches egress gets requests signed with the pod's key: a
/// non-loopback egress listener is refused, with the field named, at
/// `validate`, at start and on reload (the running config keeps serving).
#[test]
fn egress_on_a_non_loopback_address_is_refused() {
    let app = EchoApp::start();
    let egress = |listen: &str| {
        format!(
            r#"egress:
  listen: "{listen}"
  destinations:
    - host: wallet.internal
      upstream: 127.0.0.1:1
      key: {{ id: orders, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=" }}
"#
        )
    };
    let dir = tempfile::tempdir().expect("dir");
    for listen in ["0.0.0.0:15001", "[::]:15001", "10.0.0.7:15001"] {
        let file = dir.path().join("egress.yaml");
        std::fs::write(&file, config(&app.addr(), "") + &egress(listen)).expect("write");
        let out = Command::new(bin("meshgate"))
            .arg("validate")
            .arg(&file)
            .output()
            .expect("meshgate validate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{listen}: {stderr}");
        assert!(stderr.contains("egress.listen"), "{listen}: {stderr}");
        assert!(stderr.contains("loopback"), "{listen}: {stderr}");
    }

    let mut refused = Sidecar::spawn(&(config(&app.addr(), "") + &egress("0.0.0.0:0")), &[]);
    let status = refused.proc.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "{}",
        refused.proc.output()
    );
    assert!(
        refused.proc.output().contains("egress.listen"),
        "{}",
        refused.proc.output()
    );

    let port = free_port();
    let good = config(&app.addr(), "") + &egress(&format!("127.0.0.1:{port}"));
    let sidecar = Sidecar::start(&good);
    let v1 = sidecar.version();
    sidecar.write_config(&good.replace(&format!("127.0.0.1:{port}"), &format!("0.0.0.0:{port}")));
    assert!(wait_until(Duration::from_secs(10), || !sidecar
        .config_dump()["last_rejected"]
        .is_null()));
    let dump = sidecar.config_dump();
    assert_eq!(dump["version"], v1.as_str(), "{dump}");
    assert!(
        dump["last_rejected"].to_string().contains("egress.listen"),
        "{dump}"
    );
    assert_eq!(
        dump["config"]["egress"]["listen"],
        format!("127.0.0.1:{port}")
    );
    still_serving(&sidecar);
}

// ---- upgrade socket --------------------------------------------------------

/// A copy of `name` that another uid can run (the target dir may sit under a
/// private home directory).
fn runnable_by_others(name: &str, dir: &Path) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(bin(name), &copy).expect("copy binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

fn as_other_user(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    cmd.uid(OTHER_UID).gid(OTHER_UID);
    cmd
}

fn start_with_upgrade_socket() -> (EchoApp, Sidecar, PathBuf) {
    let app = EchoApp::start();
    let sidecar_dir = tempfile::tempdir().expect("dir");
    let socket = sidecar_dir.path().join("upgrade.sock");
    let sidecar = Sidecar::start_with_args(
        &config(&app.addr(), ""),
        &["--upgrade-socket", socket.to_str().expect("utf-8 path")],
    );
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    // Keep the directory alive for the sidecar's life.
    std::mem::forget(sidecar_dir);
    (app, sidecar, socket)
}

/// The socket is created 0600, and a process of another uid that gets to
/// it anyway (root passes file modes; here the test opens the mode up) is
/// refused before anything is handed over.
#[test]
fn upgrade_socket_is_private_and_refuses_other_users() {
    let (_app, sidecar, socket) = start_with_upgrade_socket();
    let mode = std::fs::metadata(&socket)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {:o}", mode & 0o777);

    // Open the way for the other user: only the uid check stands.
    let parent = socket.parent().expect("parent");
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let tools = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(tools.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let peer = runnable_by_others("meshgate-upgrade-peer", tools.path());
    let out = as_other_user(&peer)
        .arg("connect")
        .arg(&socket)
        .output()
        .expect("run the peer as another user");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("answer: refused"), "{stdout}");
    assert!(!stdout.contains("offer"), "{stdout}");
    assert!(
        !stdout.contains("listen"),
        "config or listeners leaked: {stdout}"
    );

    assert!(wait_until(Duration::from_secs(5), || sidecar
        .proc
        .output()
        .contains("peer refused")));
    assert!(
        sidecar
            .metrics()
            .contains("meshgate_upgrade_peers_refused_total{side=\"old\"} 1"),
        "{}",
        sidecar.metrics()
    );
    still_serving(&sidecar);
    let (_, ready) = sidecar.ready().expect("ready");
    assert_eq!(ready["phase"], "serving", "{ready}");
}

/// The other direction: a process of another user squatting the socket path
/// gets nothing from a new sidecar (not even `hello`), which refuses to start.
#[test]
fn a_new_process_refuses_to_take_over_from_another_user() {
    let app = EchoApp::start();
    let shared = tempfile::tempdir().expect("dir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let socket = shared.path().join("upgrade.sock");
    let peer = runnable_by_others("meshgate-upgrade-peer", shared.path());
    let mut squatter = as_other_user(&peer);
    squatter.arg("listen").arg(&socket);
    let mut squatter = Proc::spawn(
        "meshgate-upgrade-peer",
        &mut squatter,
        shared.path().join("squatter.log"),
    );
    assert!(wait_until(Duration::from_secs(10), || squatter
        .output()
        .contains("listening")));

    let mut sidecar = Sidecar::spawn(
        &config(&app.addr(), ""),
        &["--upgrade-socket", socket.to_str().expect("utf-8 path")],
    );
    let status = sidecar.proc.wait_exit(Duration::from_secs(20));
    let log = sidecar.proc.output();
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("another user"), "{log}");
    assert!(log.contains(&format!("uid {OTHER_UID}")), "{log}");
    assert!(squatter.wait_exit(Duration::from_secs(10)).is_some());
    let heard = squatter.output();
    assert!(heard.contains("received 0 bytes"), "{heard}");
}
