//! The containers end to end: the images `docker/build.sh` makes, the compose
//! pod of `docker/compose.yaml` (pause container, Node app, two sidecar
//! slots, control plane), the hot upgrade of `docker/upgrade.sh` under load,
//! and faults across containers.
//!
//! Needs a running Docker engine and `docker compose` or `docker-compose`
//! (a test fails when they are missing). The images are built once per test
//! run (a file lock and a marker per nextest run id; build.sh itself skips
//! an image whose inputs did not change). Each test runs its own compose
//! project on free 127.0.0.1 ports and takes it down (`down -v`) when it
//! ends, also on failure.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use meshgate_test_harness::{bin, free_port, get, wait_until, workspace_root, HttpResult, Load};

// ---- tools ----------------------------------------------------------------

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (is Docker installed?)"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args))
}

/// `docker compose` (v2) or `docker-compose` (v1), as the scripts pick it.
fn compose_command() -> &'static [String] {
    static CMD: OnceLock<Vec<String>> = OnceLock::new();
    CMD.get_or_init(|| {
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if v2 {
            vec!["docker".into(), "compose".into()]
        } else {
            let v1 = Command::new("docker-compose")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(v1, "neither `docker compose` nor `docker-compose` works");
            vec!["docker-compose".into()]
        }
    })
}

fn target_root() -> PathBuf {
    meshgate_test_harness::target_dir()
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// Runs docker/build.sh once per test run: nextest runs each test in its own
/// process, so a file lock serialises them and a marker named after the run
/// id tells the later ones that the images are fresh.
fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = target_root().join("images");
        std::fs::create_dir_all(&dir).expect("images dir");
        let lock = std::fs::File::create(dir.join(".test-build.lock")).expect("lock file");
        lock.lock().expect("lock");
        let run_id = std::env::var("NEXTEST_RUN_ID")
            .unwrap_or_else(|_| format!("pid-{}", std::process::id()));
        let marker = dir.join(format!(".test-built-{run_id}"));
        if !marker.exists() {
            let started = Instant::now();
            let out = run(Command::new(workspace_root().join("docker/build.sh"))
                .env("CARGO_TARGET_DIR", target_root()));
            assert!(
                out.status.success(),
                "docker/build.sh failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("docker/build.sh took {:?}", started.elapsed());
            std::fs::write(&marker, b"").expect("marker");
        }
        drop(lock);
    });
}

fn secret(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("docker/.dev-secrets").join(name))
        .expect("dev secret (docker/build.sh writes it)")
        .trim()
        .to_string()
}

// ---- the pod ----------------------------------------------------------------

/// One compose project: its own containers, networks, volumes and host ports.
/// Dropping it runs `down -v`.
struct Pod {
    project: String,
    inbound: u16,
    health: u16,
    cp_admin: u16,
}

impl Pod {
    fn up(name: &str) -> Pod {
        images();
        let pod = Pod {
            project: format!("mgt-{name}-{}", std::process::id()),
            inbound: free_port(),
            health: free_port(),
            cp_admin: free_port(),
        };
        pod.compose(&["up", "-d"]);
        assert!(
            wait_until(Duration::from_secs(60), || pod.ready()),
            "pod never became ready:\n{}",
            pod.logs()
        );
        pod
    }

    /// A compose command on this project. `up` without a service name must
    /// not see the `upgrade` profile (it would start the free slot); `ps`,
    /// `logs` and `down` must, to include that slot.
    fn command(&self, args: &[&str]) -> Command {
        let tool = compose_command();
        let mut cmd = Command::new(&tool[0]);
        cmd.args(&tool[1..])
            .arg("-f")
            .arg(workspace_root().join("docker/compose.yaml"))
            .args(["-p", &self.project]);
        if args.first() != Some(&"up") {
            cmd.args(["--profile", "upgrade"]);
        }
        cmd.args(args)
            .env("MESHGATE_INBOUND_PORT", self.inbound.to_string())
            .env("MESHGATE_HEALTH_PORT", self.health.to_string())
            .env("MESHGATE_CP_ADMIN_PORT", self.cp_admin.to_string())
            .env("MESHGATE_COMPOSE_PROJECT", &self.project)
            .env("MESHGATE_DRAIN_TIMEOUT", "10s")
            // Other tests' settings must not leak in.
            .env_remove("MESHGATE_SIDECAR_A_IMAGE")
            .env_remove("MESHGATE_SIDECAR_B_IMAGE");
        cmd
    }

    fn compose(&self, args: &[&str]) -> String {
        ok(&mut self.command(args))
    }

    fn container(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).trim().to_string()
    }

    fn logs(&self) -> String {
        let out = run(&mut self.command(&["logs", "--no-color", "--tail", "40"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.inbound)
    }

    fn ready(&self) -> bool {
        get(&format!("http://127.0.0.1:{}/ready", self.health)).is_ok_and(|r| r.status == 200)
    }

    fn ready_body(&self) -> serde_json::Value {
        get(&format!("http://127.0.0.1:{}/ready", self.health))
            .map(|r| r.json())
            .unwrap_or_default()
    }

    fn balance(&self) -> Option<HttpResult> {
        get(&self.url("/api/balance")).ok()
    }

    /// Pushes a config whose `policy` filter answers `x-config-label: label`.
    fn push(&self, label: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wallet.yaml");
        std::fs::write(&file, pushed_config(label)).expect("write config");
        ok(Command::new(bin("meshctl"))
            .args(["--server", &format!("http://127.0.0.1:{}", self.cp_admin)])
            .args(["--token", &secret("cp-admin-token")])
            .arg("push")
            .arg(&file)
            .args(["--service", "wallet"]));
    }

    /// The label of the config the app sees, if a pushed one is served.
    fn served_label(&self) -> Option<String> {
        let r = self.balance()?;
        if r.status != 200 {
            return None;
        }
        r.header("x-config-label").map(str::to_string)
    }

    fn wait_label(&self, label: &str, within: Duration) {
        assert!(
            wait_until(within, || self.served_label().as_deref() == Some(label)),
            "config {label} is not served (serving {:?}):\n{}",
            self.served_label(),
            self.logs()
        );
    }

    fn upgrade(&self, image: &str) -> Output {
        run(Command::new(workspace_root().join("docker/upgrade.sh"))
            .arg(image)
            .env("MESHGATE_COMPOSE_PROJECT", &self.project)
            .env("MESHGATE_INBOUND_PORT", self.inbound.to_string())
            .env("MESHGATE_HEALTH_PORT", self.health.to_string())
            .env("MESHGATE_CP_ADMIN_PORT", self.cp_admin.to_string())
            .env("MESHGATE_DRAIN_TIMEOUT", "10s"))
    }

    fn running(&self, service: &str) -> bool {
        let id = self.container(service);
        !id.is_empty() && docker(&["inspect", "-f", "{{.State.Running}}", &id]).trim() == "true"
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = run(&mut self.command(&["down", "-v", "--remove-orphans", "-t", "3"]));
    }
}

fn pushed_config(label: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "0.0.0.0:15006" }}
app: {{ address: "127.0.0.1:8080", health_path: /healthz, health_interval: 1s }}
admin: {{ listen: "127.0.0.1:15000", health_listen: "0.0.0.0:15021" }}
routes:
  - name: health
    match: {{ path: /healthz, methods: [GET] }}
  - name: api
    match: {{ path_prefix: /api/, methods: [GET, POST] }}
    filters: [policy]
filters:
  policy:
    type: header
    add_response_headers: {{ x-frame-options: DENY, x-config-label: {label} }}
"#
    )
}

// ---- images ----------------------------------------------------------------

fn inspect(image: &str, format: &str) -> String {
    docker(&["image", "inspect", "-f", format, image])
        .trim()
        .to_string()
}

/// Paths (with owner) in an image's filesystem, from `docker export`.
fn image_files(image: &str) -> Vec<(String, String)> {
    let id = docker(&["create", image]).trim().to_string();
    let out = run(Command::new("sh")
        .arg("-c")
        .arg(format!("docker export {id} | tar -tv --numeric-owner")));
    docker(&["rm", &id]);
    assert!(out.status.success(), "docker export {image}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // -rwxr-xr-x 0/0 123 2000-01-01 00:00 ./usr/local/bin/meshgate
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields
                .get(5)?
                .trim_start_matches("./")
                .trim_end_matches('/');
            Some((format!("/{path}"), fields.get(1)?.to_string()))
        })
        .collect()
}

/// The release sidecar (the images' binary) has the functions it runs laid
/// out together, in the order `sidecar/link/symbol-order.txt` lists them:
/// most of its resident memory is code, and the layout is what keeps it
/// small (BENCHMARKS.md). Symbol names change with the toolchain and the
/// crate graph; when this fails after an update, regenerate the list with
/// `test-harness/bench/symbol_order.py`.
#[test]
fn the_sidecar_binary_has_its_code_laid_out() {
    images();
    let order = std::fs::read_to_string(workspace_root().join("sidecar/link/symbol-order.txt"))
        .expect("symbol order");
    let listed: Vec<&str> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(listed.len() > 1000, "{} functions listed", listed.len());
    let nm = ok(Command::new("nm")
        .arg("--defined-only")
        .arg(target_root().join("release/meshgate")));
    let mut address = std::collections::HashMap::new();
    for line in nm.lines() {
        let mut parts = line.splitn(3, ' ');
        if let (Some(at), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next()) {
            if let Ok(at) = u64::from_str_radix(at, 16) {
                address.entry(name.to_string()).or_insert(at);
            }
        }
    }
    let found: Vec<u64> = listed
        .iter()
        .filter_map(|n| address.get(*n).copied())
        .collect();
    assert!(
        found.len() * 10 >= listed.len() * 9,
        "only {} of the {} functions in sidecar/link/symbol-order.txt are in the binary: \
         regenerate it (test-harness/bench/symbol_order.py)",
        found.len(),
        listed.len()
    );
    // A few listed functions share a section with others (assembly files)
    // and keep that section's order.
    let in_order = found.windows(2).filter(|w| w[0] < w[1]).count();
    assert!(
        in_order * 100 >= (found.len() - 1) * 95,
        "{in_order} of {} consecutive listed functions are in the listed order: \
         the linker did not take the order file (sidecar/build.rs)",
        found.len() - 1
    );
}

/// The images' sidecar is optimised with the execution profile in
/// `sidecar/link/meshgate.profdata` (docker/release-build.sh): cargo records
/// the flags of the build that made `target/release/meshgate`, and they must
/// name a copy of that profile. Fails when this toolchain's LLVM is older
/// than the one that wrote the profile (regenerate it with
/// `test-harness/bench/pgo.py`) or when the build lost the flag.
#[test]
fn the_sidecar_binary_is_optimised_with_its_profile() {
    images();
    let fingerprints = target_root().join("release/.fingerprint");
    let newest = std::fs::read_dir(&fingerprints)
        .expect("release fingerprints")
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("bin-meshgate.json");
            let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
            Some((modified, path))
        })
        .max()
        .map(|(_, path)| path)
        .expect("a fingerprint of the meshgate binary");
    let fingerprint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).expect("fingerprint")).expect("json");
    let flags: Vec<&str> = fingerprint["rustflags"]
        .as_array()
        .expect("rustflags")
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    let used = flags
        .iter()
        .find_map(|f| f.strip_prefix("-Cprofile-use="))
        .unwrap_or_else(|| panic!("the release build's flags {flags:?} have no -Cprofile-use"));
    let profile = std::fs::read(workspace_root().join("sidecar/link/meshgate.profdata"))
        .expect("sidecar/link/meshgate.profdata");
    assert!(
        std::fs::read(used).expect("the profile the build used") == profile,
        "the release build used {used}, which is not sidecar/link/meshgate.profdata"
    );
}

#[test]
fn images_are_small_non_root_and_have_no_shell() {
    images();
    let size: u64 = inspect("meshgate:dev", "{{.Size}}").parse().expect("size");
    assert!(size < 25_000_000, "meshgate:dev is {size} bytes");
    for image in [
        "meshgate:dev",
        "meshgate-cp:dev",
        "meshgate-wallet-node:dev",
        "meshgate-wallet-c:dev",
    ] {
        assert_eq!(
            inspect(image, "{{.Config.User}}"),
            "65532:65532",
            "{image} user"
        );
        let files = image_files(image);
        let has = |p: &str| files.iter().any(|(f, _)| f == p);
        for shell in ["/bin/sh", "/bin/bash", "/usr/bin/sh", "/bin/busybox"] {
            assert!(!has(shell), "{image} has {shell}");
        }
        for needed in [
            "/etc/passwd",
            "/etc/group",
            "/etc/ssl/certs/ca-certificates.crt",
            "/usr/share/zoneinfo/Europe/Paris",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(has(needed), "{image} lacks {needed}");
        }
        // Everything but the runtime user's own directories belongs to root.
        for (path, owner) in &files {
            assert!(
                owner == "0/0" || owner == "65532/65532",
                "{image}: {path} is owned by {owner}"
            );
        }
        // No shell to fall back on: a command other than the image's own fails.
        let out = run(Command::new("docker").args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "true",
        ]));
        assert!(!out.status.success(), "{image} ran /bin/sh");
    }
    // The binaries start as the non-root user on a read-only root filesystem.
    for image in ["meshgate:dev", "meshgate-cp:dev"] {
        let out = docker(&["run", "--rm", "--read-only", image, "--version"]);
        assert!(out.starts_with("meshgate"), "{image}: {out}");
    }
    let passwd = run(Command::new("sh").arg("-c").arg(
        "id=$(docker create meshgate:dev) && docker cp $id:/etc/passwd - | tar -xO; docker rm $id >/dev/null",
    ));
    let passwd = String::from_utf8_lossy(&passwd.stdout);
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");
}

/// One stage of docker/Dockerfile: what it installs and how it runs.
#[derive(Default, Debug)]
struct Stage {
    copies: Vec<(String, Option<String>)>, // destination, --chown
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    expose: Vec<String>,
}

fn dockerfile_stage(name: &str) -> Stage {
    let text =
        std::fs::read_to_string(workspace_root().join("docker/Dockerfile")).expect("Dockerfile");
    let joined = text.replace("\\\n", " ");
    let mut stage = None::<Stage>;
    for line in joined.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word.eq_ignore_ascii_case("FROM") {
            if stage.is_some() {
                break;
            }
            if rest.to_ascii_lowercase().ends_with(&format!(" as {name}")) {
                stage = Some(Stage::default());
            }
            continue;
        }
        let Some(s) = stage.as_mut() else { continue };
        match word.to_ascii_uppercase().as_str() {
            "COPY" => {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let chown = parts
                    .iter()
                    .find_map(|p| p.strip_prefix("--chown="))
                    .map(str::to_string);
                s.copies
                    .push((parts.last().expect("dest").to_string(), chown));
            }
            "USER" => s.user = Some(rest.trim().to_string()),
            "ENTRYPOINT" => {
                s.entrypoint = Some(serde_json::from_str(rest).expect("ENTRYPOINT json"))
            }
            "CMD" => s.cmd = Some(serde_json::from_str(rest).expect("CMD json")),
            "EXPOSE" => s
                .expose
                .extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            _ => {}
        }
    }
    stage.unwrap_or_else(|| panic!("no stage {name} in docker/Dockerfile"))
}

fn json_list(image: &str, field: &str) -> Option<Vec<String>> {
    serde_json::from_str(&inspect(image, &format!("{{{{json .Config.{field}}}}}"))).expect("json")
}

#[test]
fn dockerfile_installs_what_build_sh_installs() {
    images();
    for (stage_name, image) in [
        ("meshgate", "meshgate:dev"),
        ("meshgate-cp", "meshgate-cp:dev"),
        ("wallet-node", "meshgate-wallet-node:dev"),
        ("wallet-c", "meshgate-wallet-c:dev"),
    ] {
        let stage = dockerfile_stage(stage_name);
        assert_eq!(
            stage.user.as_deref(),
            Some(inspect(image, "{{.Config.User}}").as_str()),
            "{stage_name}: USER"
        );
        assert_eq!(
            stage.entrypoint,
            json_list(image, "Entrypoint"),
            "{stage_name}: ENTRYPOINT"
        );
        assert_eq!(stage.cmd, json_list(image, "Cmd"), "{stage_name}: CMD");
        let mut exposed: Vec<String> = serde_json::from_str::<
            serde_json::Map<String, serde_json::Value>,
        >(&inspect(image, "{{json .Config.ExposedPorts}}"))
        .expect("ports")
        .keys()
        .cloned()
        .collect();
        exposed.sort();
        let mut expose = stage.expose.clone();
        expose.sort();
        assert_eq!(expose, exposed, "{stage_name}: EXPOSE");
        let files = image_files(image);
        for (dest, chown) in &stage.copies {
            let dest = dest.trim_end_matches('/');
            let owner = files
                .iter()
                .find(|(f, _)| f == dest)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| panic!("{image} lacks {dest}, which the Dockerfile installs"));
            let want = chown
                .as_deref()
                .map(|c| c.replace(':', "/"))
                .unwrap_or_else(|| "0/0".into());
            assert_eq!(owner, want, "{image}: owner of {dest}");
        }
    }
}

// ---- the pod ----------------------------------------------------------------

#[test]
fn pod_serves_through_the_sidecar_and_applies_pushed_config() {
    let pod = Pod::up("walkthrough");
    let ready = pod.ready_body();
    assert_eq!(ready["ready"], true, "{ready}");
    // The app answers through the sidecar, with the sidecar's headers.
    let r = pod.balance().expect("balance");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert!(r.header("x-request-id").is_some());
    // A header a client forges never reaches the app.
    let forged = meshgate_test_harness::request(
        Request::get(pod.url("/api/balance"))
            .header("x-meshgate-user", "admin")
            .body(Bytes::new())
            .expect("request"),
    )
    .expect("forged");
    assert_eq!(
        forged.json()["meshgate_headers"],
        serde_json::json!({}),
        "{}",
        forged.text()
    );
    // Only inbound and health are published; the admin API stays inside the pod.
    let mut published: Vec<String> = docker(&["port", &pod.container("pause")])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    published.sort();
    published.dedup();
    assert_eq!(published, ["15006/tcp", "15021/tcp"]);
    // A config pushed with meshctl reaches the containerised sidecar.
    pod.push("pushed-1");
    pod.wait_label("pushed-1", Duration::from_secs(30));
    // Nothing in the pod runs as root.
    for service in ["pause", "app", "sidecar-a", "control-plane"] {
        let id = pod.container(service);
        assert_eq!(
            docker(&["inspect", "-f", "{{.Config.User}}", &id]).trim(),
            "65532:65532",
            "{service}"
        );
        assert_eq!(
            docker(&["inspect", "-f", "{{.HostConfig.ReadonlyRootfs}}", &id]).trim(),
            "true",
            "{service}"
        );
    }
    // The pause process ends on SIGTERM at once (as PID 1 it must handle it
    // itself), not after docker's 10 s kill timeout.
    let pause = pod.container("pause");
    let started = Instant::now();
    docker(&["stop", "-t", "10", &pause]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pause took {:?} to stop",
        started.elapsed()
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &pause]).trim(),
        "0"
    );
}

fn app_started_at(pod: &Pod) -> String {
    let id = pod.container("app");
    docker(&[
        "inspect",
        "-f",
        "{{.State.StartedAt}} {{.RestartCount}}",
        &id,
    ])
    .trim()
    .to_string()
}

#[test]
fn pod_sidecar_upgrades_under_load_lose_nothing() {
    let pod = Pod::up("upgrade");
    pod.push("before-upgrade");
    pod.wait_label("before-upgrade", Duration::from_secs(30));
    let app_before = app_started_at(&pod);
    let load = start_load(pod.inbound);
    load.wait_progress(200, Duration::from_secs(30));
    let mut serving = "sidecar-a";
    for round in 0..3 {
        let started = Instant::now();
        let out = pod.upgrade("meshgate:dev");
        assert!(
            out.status.success(),
            "upgrade {round} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            pod.logs()
        );
        eprintln!("upgrade {round} took {:?}", started.elapsed());
        let next = if serving == "sidecar-a" {
            "sidecar-b"
        } else {
            "sidecar-a"
        };
        assert!(pod.running(next), "{next} serves after upgrade {round}");
        assert!(
            !pod.running(serving),
            "{serving} stopped after upgrade {round}"
        );
        serving = next;
        assert_eq!(
            pod.ready_body()["ready"],
            true,
            "ready after upgrade {round}"
        );
        load.wait_progress(200, Duration::from_secs(30));
    }
    let stats = load.finish();
    let failures = stats.failures();
    eprintln!("{}", stats.summary());
    assert!(failures.is_empty(), "failed requests: {failures:#?}");
    // The pushed config and the filter state went across; the app never restarted.
    pod.wait_label("before-upgrade", Duration::from_secs(5));
    assert_eq!(
        app_started_at(&pod),
        app_before,
        "the app container restarted"
    );
}

#[test]
fn pod_upgrade_to_a_broken_image_leaves_the_old_slot_serving() {
    let pod = Pod::up("badupgrade");
    // An image whose sidecar cannot start: the old process must keep serving.
    let broken = format!("mgt-broken-{}:dev", std::process::id());
    let id = docker(&["create", "meshgate:dev"]).trim().to_string();
    docker(&[
        "commit",
        "--change",
        r#"ENTRYPOINT ["/usr/local/bin/meshgate", "--no-such-flag"]"#,
        &id,
        &broken,
    ]);
    docker(&["rm", &id]);
    let out = pod.upgrade(&broken);
    let _ = run(Command::new("docker").args(["image", "rm", "-f", &broken]));
    assert!(!out.status.success(), "upgrade to a broken image succeeded");
    assert!(pod.running("sidecar-a"));
    assert!(!pod.running("sidecar-b"));
    assert_eq!(pod.balance().expect("balance").status, 200);
    // The next upgrade goes into the free slot as usual.
    let out = pod.upgrade("meshgate:dev");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pod.running("sidecar-b") && !pod.running("sidecar-a"));
}

#[test]
fn pod_faults_control_plane_down_or_cut_sidecar_restart_app_killed() {
    let pod = Pod::up("faults");
    pod.push("v1");
    pod.wait_label("v1", Duration::from_secs(30));

    // The control plane stopped: the sidecar keeps serving the last config.
    pod.compose(&["stop", "-t", "3", "control-plane"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pod.served_label().as_deref(), Some("v1"));
    // The sidecar restarted while the control plane is down: it boots from
    // its state volume and serves the last config, not the bootstrap.
    let sidecar = pod.container("sidecar-a");
    docker(&["restart", "-t", "10", &sidecar]);
    assert!(
        wait_until(Duration::from_secs(30), || pod.ready()),
        "{}",
        pod.logs()
    );
    assert_eq!(pod.served_label().as_deref(), Some("v1"), "{}", pod.logs());
    // The control plane back: the sidecar resyncs and gets what is pushed.
    pod.compose(&["start", "control-plane"]);
    assert!(
        wait_until(Duration::from_secs(30), || get(&format!(
            "http://127.0.0.1:{}/healthz",
            pod.cp_admin
        ))
        .is_ok_and(|r| r.status == 200)),
        "control plane did not come back"
    );
    pod.push("v2");
    pod.wait_label("v2", Duration::from_secs(60));

    // The control plane's mesh network cut: serving goes on; once it is back,
    // a push made during the cut arrives.
    let cp = pod.container("control-plane");
    let network = format!("{}_mesh", pod.project);
    docker(&["network", "disconnect", &network, &cp]);
    pod.push("v3");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        pod.served_label().as_deref(),
        Some("v2"),
        "served during the cut"
    );
    docker(&[
        "network",
        "connect",
        "--alias",
        "control-plane",
        &network,
        &cp,
    ]);
    // The stream broke with the cut (or, if it did not, the xDS keep-alive
    // notices within 30 s + 10 s); the client reconnects and resyncs.
    pod.wait_label("v3", Duration::from_secs(90));

    // The app killed: 503 app_unhealthy while it is down, then recovery.
    let app = pod.container("app");
    docker(&["update", "--restart", "no", &app]);
    docker(&["kill", &app]);
    assert!(
        wait_until(Duration::from_secs(15), || pod.balance().is_some_and(|r| {
            r.status == 503 && r.json()["error"] == "app_unhealthy"
        })),
        "no 503 app_unhealthy: {:?}",
        pod.balance().map(|r| (r.status, r.text()))
    );
    docker(&["start", &app]);
    assert!(
        wait_until(Duration::from_secs(30), || pod
            .balance()
            .is_some_and(|r| r.status == 200)),
        "app did not recover: {:?}",
        pod.balance().map(|r| (r.status, r.text()))
    );
    assert_eq!(pod.served_label().as_deref(), Some("v3"));
}

// ---- load through the pod ------------------------------------------------------

/// HTTP/1.1 and HTTP/2 keep-alive clients through the pod's inbound port.
fn start_load(port: u16) -> Load {
    let mut load = Load::new(2);
    for (id, h2) in [(0, false), (1, false), (2, false), (3, true), (4, true)] {
        load.keep_alive_client(port, h2, id, |id, i| {
            format!("/api/balance?client={id}&i={i}")
        });
    }
    load
}
