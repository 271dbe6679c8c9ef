//! The buffered access log, end to end: lines reach stdout within a second,
//! and none is lost when the process drains, exits or hands over to a new
//! process. The line format itself is tested against tracing's JSON line in
//! `sidecar/src/access_log.rs`.

use std::time::{Duration, Instant};

use meshgate_test_harness::{get, request, wait_until, EchoApp, Proc, Sidecar};

fn config(app: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: all
    match: {{ path_prefix: / }}
"#
    )
}

/// Access log lines of `proc` whose path starts with `prefix`.
fn lines_for(proc: &Proc, prefix: &str) -> Vec<serde_json::Value> {
    proc.output()
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a whole JSON line"))
        .filter(|v| v["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .collect()
}

fn send(sidecar: &Sidecar, prefix: &str, n: usize) {
    for i in 0..n {
        let rsp = get(&sidecar.url(&format!("{prefix}{i}"))).expect("get");
        assert_eq!(rsp.status, 200, "{}", rsp.text());
    }
}

#[test]
fn a_line_is_written_within_a_second() {
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr()));
    let sent = Instant::now();
    send(&sidecar, "/soon/", 1);
    assert!(
        wait_until(Duration::from_millis(1500), || !lines_for(
            &sidecar.proc,
            "/soon/"
        )
        .is_empty()),
        "no access line after {:?}:\n{}",
        sent.elapsed(),
        sidecar.proc.output()
    );
    let line = &lines_for(&sidecar.proc, "/soon/")[0];
    // The fields users parse.
    for field in [
        "timestamp",
        "level",
        "request_id",
        "route",
        "method",
        "path",
        "client",
        "status",
        "duration_ms",
        "upstream_ms",
        "bytes_in",
        "bytes_out",
        "verdicts",
        "target",
    ] {
        assert!(line.get(field).is_some(), "{field} missing: {line}");
    }
    assert_eq!(line["route"], "all");
    assert_eq!(line["status"], 200);
}

#[test]
fn no_line_is_lost_when_the_process_drains_and_exits() {
    let app = EchoApp::start();
    let mut sidecar = Sidecar::start(&config(&app.addr()));
    send(&sidecar, "/drain/", 300);
    // Straight after the burst, most of it is still in the buffer.
    let rsp = request(sidecar.admin_post("/drain")).expect("drain");
    assert_eq!(rsp.status, 202, "{}", rsp.text());
    let status = sidecar.proc.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let lines = lines_for(&sidecar.proc, "/drain/");
    assert_eq!(lines.len(), 300, "{}", sidecar.proc.output());
    for i in 0..300 {
        let path = format!("/drain/{i}");
        assert!(lines.iter().any(|l| l["path"] == path.as_str()), "{path}");
    }
}

#[test]
fn no_line_is_lost_at_an_upgrade_handover() {
    let app = EchoApp::start();
    let socket_dir = tempfile::tempdir().expect("tempdir");
    let socket = socket_dir.path().join("upgrade.sock");
    let socket = socket.to_str().expect("utf-8 path");
    let mut sidecar = Sidecar::start_with_args(
        &config(&app.addr()),
        &["--upgrade-socket", socket, "--drain-timeout", "10s"],
    );
    send(&sidecar, "/old/", 200);
    let mut old = sidecar.spawn_upgrade();
    let status = old.wait_exit(Duration::from_secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        old.output()
    );
    assert!(
        old.output().contains("handed over to the new process"),
        "{}",
        old.output()
    );
    assert_eq!(lines_for(&old, "/old/").len(), 200, "{}", old.output());
    // The new process logs its own requests.
    sidecar.wait_ready();
    send(&sidecar, "/new/", 5);
    assert!(wait_until(Duration::from_millis(1500), || lines_for(
        &sidecar.proc,
        "/new/"
    )
    .len()
        == 5));
}
