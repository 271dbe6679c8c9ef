//! Helpers for end-to-end tests that spawn real processes on free ports:
//! the `meshgate` binary, the echo app, a real `redis-server`, a real etcd
//! cluster.
//!
//! Binaries are taken from the cargo target directory of the running test;
//! build them first (`cargo build --bins`; the test command does).
//!
//! One helper per job, each in the module named for its concern; use these
//! rather than writing a local copy in a test file:
//!
//! | concern | module | helpers |
//! | --- | --- | --- |
//! | processes | this module | [`Sidecar`], [`EchoApp`], [`Proc`], [`bin`], [`require_tool`], [`wait_until`], [`scripts_dir`] |
//! | ports | [`ports`] | [`free_port`], [`port_open`] |
//! | HTTP client | [`http_client`] | [`get`], [`request`], [`send_request`], [`HttpResult`] (`json()`, `error()`, `header()`, `text()`) |
//! | rejections | [`rejection`] | [`assert_error`] |
//! | hand-made HTTP/1.1 | [`raw_http`] | [`raw_exchange`], [`RawConn`], [`header_lines`], [`read_head`] |
//! | HTTP/2 frames | [`h2_client`] | [`h2_connect`], [`h2_send`], [`h2_get`] |
//! | Redis | [`redis`] | [`Redis`] |
//! | Python signer | [`python_signer`] | [`py_sign`], [`hmac_args`], [`py_verify_response`] |
//! | load | [`load`] | [`Load`], [`LoadStats`], [`load::Conn`] |
#![forbid(unsafe_code)]

pub mod apps;
pub mod etcd;
pub mod h2_client;
pub mod http_client;
pub mod load;
pub mod ports;
pub mod python_signer;
pub mod raw_http;
pub mod redis;
pub mod redis_ha;
pub mod rejection;
pub mod session_app;
pub mod which_config;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use h2_client::{h2_connect, h2_get, h2_send};
pub use http_client::{get, request, send_request, HttpResult};
pub use load::{Load, LoadStats};
pub use ports::{free_port, port_open};
pub use python_signer::{hmac_args, py_sign, py_verify_response, ResponseKey};
pub use raw_http::{header_lines, raw_exchange, read_head, RawConn};
pub use redis::Redis;
pub use rejection::assert_error;

/// The header state-changing admin requests need (`sidecar/src/admin.rs`).
pub const ADMIN_HEADER: &str = "x-meshgate-admin";

/// `target/debug` (or the profile directory) of the running test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    if deps.ends_with("deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// Path of a workspace binary, failing with a clear message when it is not built.
/// `MESHGATE_BIN_DIR` overrides where binaries are taken from (for a target
/// directory shared by several checkouts).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("MESHGATE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(target_dir);
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

/// Fails the calling test, naming what to install, unless `program args`
/// runs and succeeds. A test that needs a tool never skips without it.
pub fn require_tool(program: &str, args: &[&str], what: &str) {
    let ran = Command::new(program).args(args).output();
    let detail = match &ran {
        Ok(out) if out.status.success() => return,
        Ok(out) => format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run {program}: {e}"),
    };
    panic!("this test needs {what} ({detail}); scripts/install-test-deps.sh installs it");
}

/// The workspace root (for sample apps and scripts).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `test-harness/scripts`: the Python helpers tests run (signers, sample
/// apps, token tools).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Waits until `check` is true or `timeout` passed.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check()
}

/// A child process killed when dropped; its output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The echo app (`meshgate-echo-app`): shows what reached it.
pub struct EchoApp {
    pub port: u16,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl EchoApp {
    pub fn start() -> EchoApp {
        let port = free_port();
        Self::start_at(&format!("127.0.0.1:{port}"), port)
    }

    /// Listens on a unix socket at `path` (`port` is then 0).
    pub fn start_unix(path: &Path) -> EchoApp {
        let app = Self::spawn(&format!("unix:{}", path.display()));
        assert!(
            wait_until(Duration::from_secs(10), || path.exists()),
            "echo app did not create {}",
            path.display()
        );
        EchoApp { port: 0, ..app }
    }

    fn start_at(addr: &str, port: u16) -> EchoApp {
        let app = Self::spawn(addr);
        assert!(
            wait_until(Duration::from_secs(10), || port_open(port)),
            "echo app did not start: {}",
            app.proc.output()
        );
        EchoApp { port, ..app }
    }

    fn spawn(addr: &str) -> EchoApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = Proc::spawn(
            "echo-app",
            Command::new(bin("meshgate-echo-app")).arg(addr),
            dir.path().join("echo.log"),
        );
        EchoApp {
            port: 0,
            proc,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the app and starts it again on the same TCP port (an app
    /// restart: every connection to the old process is gone).
    pub fn restart(&mut self) {
        self.proc.kill();
        let restarted = Self::start_at(&self.addr(), self.port);
        *self = restarted;
    }
}

/// A running `meshgate` with its config file in a temp directory.
///
/// The config text may use `${INBOUND}`, `${ADMIN}` (addresses on free ports)
/// and `${DIR}` (the temp directory); they are replaced before writing.
pub struct Sidecar {
    pub inbound_port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub proc: Proc,
    template_vars: Vec<(String, String)>,
    args: Vec<String>,
    upgrades: usize,
}

impl Sidecar {
    pub fn start(config: &str) -> Sidecar {
        Self::start_with_args(config, &[])
    }

    pub fn start_with_args(config: &str, args: &[&str]) -> Sidecar {
        // `free_port` only finds a port that was free a moment ago; another
        // test may take it first. Try again on fresh ports in that case.
        for _ in 0..3 {
            let mut sidecar = Self::spawn(config, args);
            let url = sidecar.admin_url("/ready");
            let proc = &mut sidecar.proc;
            wait_until(Duration::from_secs(20), || {
                !proc.is_running() || get(&url).map(|r| r.status == 200).unwrap_or(false)
            });
            if sidecar.proc.is_running()
                || !sidecar.proc.output().contains("Address already in use")
            {
                sidecar.wait_ready();
                return sidecar;
            }
        }
        panic!("no free ports for meshgate after 3 tries");
    }

    /// Starts without waiting for readiness (for tests of failing starts).
    pub fn spawn(config: &str, args: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbound_port = free_port();
        let admin_port = free_port();
        let template_vars = vec![
            (
                "${INBOUND}".to_string(),
                format!("127.0.0.1:{inbound_port}"),
            ),
            ("${ADMIN}".to_string(), format!("127.0.0.1:{admin_port}")),
            ("${DIR}".to_string(), dir.path().display().to_string()),
        ];
        let config_path = dir.path().join("meshgate.yaml");
        std::fs::write(&config_path, render(config, &template_vars)).expect("write config");
        let mut cmd = Command::new(bin("meshgate"));
        cmd.arg("--config")
            .arg(&config_path)
            .args(args)
            .env("MESHGATE_LOG", "info");
        let proc = Proc::spawn("meshgate", &mut cmd, dir.path().join("meshgate.log"));
        Sidecar {
            inbound_port,
            admin_port,
            dir,
            proc,
            template_vars,
            args: args.iter().map(|a| a.to_string()).collect(),
            upgrades: 0,
        }
    }

    /// Starts a new process with the same config file and arguments (which
    /// should include `--upgrade-socket`), so that it takes over from the
    /// running one. The new process becomes `self.proc`; the old one is
    /// returned, to wait for its exit. Does not wait for readiness.
    pub fn spawn_upgrade(&mut self) -> Proc {
        self.spawn_upgrade_with(&self.config_path(), &[])
    }

    /// Like [`Sidecar::spawn_upgrade`] with another config file and extra arguments.
    pub fn spawn_upgrade_with(&mut self, config: &Path, extra: &[&str]) -> Proc {
        self.upgrades += 1;
        let mut cmd = Command::new(bin("meshgate"));
        cmd.arg("--config")
            .arg(config)
            .args(&self.args)
            .args(extra)
            .env("MESHGATE_LOG", "info");
        let log = self
            .dir
            .path()
            .join(format!("meshgate.{}.log", self.upgrades));
        let new = Proc::spawn("meshgate", &mut cmd, log);
        std::mem::replace(&mut self.proc, new)
    }

    /// `/ready` as JSON (status code aside), from whichever process answers.
    pub fn ready(&self) -> Option<(u16, serde_json::Value)> {
        let rsp = get(&self.admin_url("/ready")).ok()?;
        Some((rsp.status, serde_json::from_slice(&rsp.body).ok()?))
    }

    pub fn wait_ready(&mut self) {
        let url = self.admin_url("/ready");
        let proc = &mut self.proc;
        let ok = wait_until(Duration::from_secs(20), || {
            if !proc.is_running() {
                return true; // exited: fail below with its log
            }
            get(&url).map(|r| r.status == 200).unwrap_or(false)
        }) && self.proc.is_running();
        assert!(
            ok,
            "meshgate did not become ready; log:\n{}",
            self.proc.output()
        );
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("meshgate.yaml")
    }

    /// Rewrites the config file (the sidecar reloads it by itself).
    pub fn write_config(&self, config: &str) {
        let tmp = self.dir.path().join("meshgate.yaml.tmp");
        std::fs::write(&tmp, render(config, &self.template_vars)).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("replace config");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.inbound_port, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port, path)
    }

    /// A state-changing admin request (`POST /drain`, `/upgrade`,
    /// `/logging`) with the header the admin API requires of them.
    pub fn admin_post(&self, path: &str) -> http::Request<bytes::Bytes> {
        http::Request::post(self.admin_url(path))
            .header(ADMIN_HEADER, "1")
            .body(bytes::Bytes::new())
            .expect("admin request")
    }

    pub fn config_dump(&self) -> serde_json::Value {
        let rsp = get(&self.admin_url("/config_dump")).expect("config_dump");
        serde_json::from_slice(&rsp.body).expect("config_dump json")
    }

    pub fn version(&self) -> String {
        self.config_dump()["version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until `/config_dump` shows a version other than `old`.
    pub fn wait_version_change(&self, old: &str) -> String {
        let mut new = String::new();
        let changed = wait_until(Duration::from_secs(10), || {
            new = self.version();
            new != old
        });
        assert!(
            changed,
            "config version stayed {old}; log:\n{}",
            self.proc.output()
        );
        new
    }

    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&get(&self.admin_url("/metrics")).expect("metrics").body)
            .to_string()
    }
}

fn render(config: &str, vars: &[(String, String)]) -> String {
    vars.iter().fold(config.to_string(), |text, (k, v)| {
        text.replace(k.as_str(), v)
    })
}
