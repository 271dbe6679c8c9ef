//! The sample wallet apps (`test-harness/apps/`): the same small API in Node,
//! C and Java, started as real processes for end-to-end tests and benchmarks.
//!
//! Each app listens on `127.0.0.1:<port>`, calls its peer through the
//! sidecar's egress listener (`egress`, with `Host: <peer_host>`), and is
//! killed when the returned [`WalletApp`] is dropped. Builds (gcc, javac) go
//! into a fresh temporary directory owned by the app, so parallel tests never
//! share an output file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The egress address the apps use when none is given (the sidecar default).
pub const DEFAULT_EGRESS: &str = "127.0.0.1:15001";
/// The `Host` the apps send on their peer call unless told otherwise.
pub const DEFAULT_PEER_HOST: &str = "wallet-peer.internal";

/// How long an app may take from spawn to a healthy `/healthz`. The JVM on a
/// busy two-core machine is the slow one.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Directory holding the app sources (`node/`, `c/`, `java/`).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// The language a sample app is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppLang {
    Node,
    C,
    Java,
}

impl AppLang {
    pub const ALL: [AppLang; 3] = [AppLang::Node, AppLang::C, AppLang::Java];

    pub fn name(self) -> &'static str {
        match self {
            AppLang::Node => "node",
            AppLang::C => "c",
            AppLang::Java => "java",
        }
    }

    /// Builds the app if it needs building, starts it, waits for `/healthz`.
    pub fn start(self, options: &AppOptions) -> Result<WalletApp> {
        match self {
            AppLang::Node => NodeApp::start_with(options),
            AppLang::C => CApp::build_and_start_with(options),
            AppLang::Java => JavaApp::build_and_start_with(options),
        }
    }
}

impl fmt::Display for AppLang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an app listens and whom it calls.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub port: u16,
    /// `host:port` of the sidecar's egress listener (or, without a sidecar, the peer itself).
    pub egress: String,
    /// `Host` header of the peer call; the sidecar routes egress by it.
    pub peer_host: String,
}

impl AppOptions {
    pub fn new(port: u16) -> Self {
        AppOptions {
            port,
            egress: DEFAULT_EGRESS.to_owned(),
            peer_host: DEFAULT_PEER_HOST.to_owned(),
        }
    }

    pub fn egress(mut self, egress: impl Into<String>) -> Self {
        self.egress = egress.into();
        self
    }

    pub fn peer_host(mut self, peer_host: impl Into<String>) -> Self {
        self.peer_host = peer_host.into();
        self
    }
}

/// The Node app (`apps/node/wallet.js`, built-in `http` only).
pub struct NodeApp;

impl NodeApp {
    pub fn start(port: u16, egress: &str) -> Result<WalletApp> {
        Self::start_with(&AppOptions::new(port).egress(egress))
    }

    pub fn start_with(options: &AppOptions) -> Result<WalletApp> {
        let mut cmd = Command::new("node");
        cmd.arg(apps_dir().join("node/wallet.js"));
        WalletApp::spawn(AppLang::Node, cmd, options, None)
    }
}

/// The C app (`apps/c/wallet.c`, POSIX sockets and threads), built with gcc.
pub struct CApp;

impl CApp {
    pub fn build_and_start(port: u16, egress: &str) -> Result<WalletApp> {
        Self::build_and_start_with(&AppOptions::new(port).egress(egress))
    }

    pub fn build_and_start_with(options: &AppOptions) -> Result<WalletApp> {
        let dir = TempDir::new("c")?;
        let binary = Self::build(dir.path())?;
        WalletApp::spawn(AppLang::C, Command::new(binary), options, Some(dir))
    }

    /// Compiles the app with optimisations into `out_dir`; returns the binary.
    pub fn build(out_dir: &Path) -> Result<PathBuf> {
        let binary = out_dir.join("wallet");
        let mut cmd = Command::new("gcc");
        cmd.args(["-O2", "-Wall", "-Wextra", "-pthread", "-o"])
            .arg(&binary)
            .arg(apps_dir().join("c/wallet.c"));
        run_build("gcc", cmd)?;
        Ok(binary)
    }
}

/// The Java app (`apps/java/Wallet.java`, `com.sun.net.httpserver`), built with javac.
pub struct JavaApp;

impl JavaApp {
    pub fn build_and_start(port: u16, egress: &str) -> Result<WalletApp> {
        Self::build_and_start_with(&AppOptions::new(port).egress(egress))
    }

    pub fn build_and_start_with(options: &AppOptions) -> Result<WalletApp> {
        let dir = TempDir::new("java")?;
        let classes = Self::build(dir.path())?;
        let mut cmd = Command::new("java");
        cmd.arg("-cp").arg(classes).arg("Wallet");
        WalletApp::spawn(AppLang::Java, cmd, options, Some(dir))
    }

    /// Compiles the app into `out_dir`; returns the class path to run it with.
    pub fn build(out_dir: &Path) -> Result<PathBuf> {
        let mut cmd = Command::new("javac");
        cmd.arg("-d")
            .arg(out_dir)
            .arg(apps_dir().join("java/Wallet.java"));
        run_build("javac", cmd)?;
        Ok(out_dir.to_path_buf())
    }
}

/// A running sample app; killed (and its build directory removed) on drop.
pub struct WalletApp {
    lang: AppLang,
    port: u16,
    child: Child,
    _build_dir: Option<TempDir>,
}

impl WalletApp {
    fn spawn(
        lang: AppLang,
        mut cmd: Command,
        options: &AppOptions,
        build_dir: Option<TempDir>,
    ) -> Result<WalletApp> {
        cmd.env("PORT", options.port.to_string())
            .env("HOST", "127.0.0.1")
            .env("EGRESS", &options.egress)
            .env("PEER_HOST", &options.peer_host)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning the {lang} wallet app ({cmd:?})"))?;
        let mut app = WalletApp {
            lang,
            port: options.port,
            child,
            _build_dir: build_dir,
        };
        app.wait_healthy()?;
        Ok(app)
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let agent = client(Duration::from_millis(500));
        let url = self.url("/healthz");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling the app process")? {
                bail!(
                    "the {} wallet app exited during startup: {status}",
                    self.lang
                );
            }
            if let Ok(rsp) = agent.get(&url).call() {
                if rsp.status() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the {} wallet app was not healthy on {url} within {STARTUP_TIMEOUT:?}",
                    self.lang
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn lang(&self) -> AppLang {
        self.lang
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for WalletApp {
    fn drop(&mut self) {
        // Already exited is fine; there is nothing useful to do on failure here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client that returns every status as a response (no 4xx errors).
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

fn run_build(tool: &str, mut cmd: Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {tool} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{tool} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "meshgate-wallet-{tag}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating build dir {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
