//! Lossless binary upgrade: the new process takes the listening sockets, the
//! config and the long-lived filter state over from the old one through a
//! unix socket, starts accepting on the same sockets (the kernel's accept
//! queue carries over, so no connection is refused), and only then tells the
//! old process to stop accepting and drain.
//!
//! Both sides use the same socket path (`--upgrade-socket`). A process that
//! finds nobody answering there binds its listeners fresh and listens on the
//! path itself, to serve the next upgrade. If the new process fails at any
//! point before `complete`, the old one never stopped accepting and simply
//! carries on.

pub mod fds;
pub mod protocol;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use meshgate_xds::config::ConfigSpec;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;

use crate::config_store::ConfigStore;
use crate::drain::Drain;
use crate::phase::{Phase, ProcessPhase};
use protocol::{ListenerInfo, Message, PROTOCOL_VERSION};

/// How long the old process waits for each step of the new one (building the
/// config may take a moment: TLS, Redis, filter instances).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the new process waits for the old one to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening socket this process serves and hands over at upgrade.
pub struct OwnListener {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub listener: Arc<TcpListener>,
}

/// What the old process needs to hand over and then step back.
pub struct Outgoing {
    pub store: Arc<ConfigStore>,
    pub listeners: Vec<OwnListener>,
    pub phase: Arc<ProcessPhase>,
    pub drain: Drain,
    /// Set once handed over: the admin and health accept loops stop.
    pub stop_admin: watch::Sender<bool>,
}

/// Binds the upgrade socket at `path` (replacing a stale file), mode 0600.
///
/// The socket hands out listeners, config and secrets, so it is never
/// reachable by another user, not even for a moment: `bind` creates the file
/// with the process umask, so it is bound inside a fresh 0700 directory,
/// restricted to 0600 there, and only then renamed into place.
pub fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let private = parent.join(format!(".meshgate-{}.d", std::process::id()));
    match std::fs::remove_dir_all(&private) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("s");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        // Atomically replaces a stale socket file left at `path`.
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Refuses a peer of another user: only a process of this sidecar's own
/// (effective) uid may take its sockets, config and secrets over, and this
/// process takes over only from one of its own uid. Root gets past the
/// socket file's 0600 mode, so the file mode alone is not enough.
fn check_peer(stream: &UnixStream, side: &'static str) -> Result<(), String> {
    let own = rustix::process::geteuid().as_raw();
    // tokio's `peer_cred` (SO_PEERCRED) reports a peer in another pid
    // namespace (the other sidecar container of a pod) with no pid, where
    // rustix's fails on its pid of 0; only the uid matters here.
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("cannot read the peer's credentials (SO_PEERCRED): {e}"))?;
    let peer_uid = peer.uid();
    if peer_uid == own {
        return Ok(());
    }
    metrics::counter!("meshgate_upgrade_peers_refused_total", "side" => side).increment(1);
    Err(format!(
        "peer pid {} runs as uid {peer_uid}, this process as uid {own}",
        peer.pid()
            .map_or_else(|| "(other namespace)".to_string(), |p| p.to_string())
    ))
}

/// Serves upgrade requests one at a time until one succeeds (then starts the
/// drain; returns true) or the process drains for another reason (false).
pub async fn serve(listener: UnixListener, path: PathBuf, outgoing: Outgoing) -> bool {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = outgoing.drain.started() => return false,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "upgrade socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(reason) = check_peer(&stream, "old") {
            tracing::warn!(%reason, "upgrade socket: peer refused; nothing handed over");
            let refusal = Message::Refused {
                reason: "the upgrade socket serves only processes of its own user".into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                protocol::write(&mut stream, &refusal),
            )
            .await;
            continue;
        }
        match hand_over(stream, &path, &outgoing).await {
            Ok(pid) => {
                metrics::counter!("meshgate_upgrades_total", "result" => "handed_over")
                    .increment(1);
                tracing::info!(new_pid = pid, "handed over to the new process; draining");
                return true;
            }
            Err(e) => {
                metrics::counter!("meshgate_upgrades_total", "result" => "failed").increment(1);
                tracing::warn!(error = %e, "upgrade failed; this process keeps serving");
                outgoing.phase.set(Phase::Serving);
            }
        }
    }
}

async fn hand_over(mut stream: UnixStream, path: &Path, out: &Outgoing) -> anyhow::Result<u32> {
    let Message::Hello { protocol, pid } =
        step(protocol::expect(&mut stream, "hello"), "hello").await?
    else {
        anyhow::bail!("expected hello");
    };
    if protocol != PROTOCOL_VERSION {
        let reason =
            format!("protocol {protocol} not supported (this process speaks {PROTOCOL_VERSION})");
        let _ = protocol::write(
            &mut stream,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        anyhow::bail!(reason);
    }
    if out.drain.is_draining() {
        let reason = "this process is draining".to_string();
        let _ = protocol::write(
            &mut stream,
            &Message::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        anyhow::bail!(reason);
    }
    tracing::info!(new_pid = pid, "a new process asks to take over");
    out.phase.set(Phase::HandingOver);

    let config = Box::new(ConfigSpec::clone(&out.store.load().config.spec));
    let listeners = out
        .listeners
        .iter()
        .map(|l| ListenerInfo {
            name: l.name.to_string(),
            addr: l.addr,
        })
        .collect();
    protocol::write(
        &mut stream,
        &Message::Offer {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            listeners,
            config,
        },
    )
    .await?;
    let borrowed: Vec<_> = out.listeners.iter().map(|l| l.listener.as_fd()).collect();
    fds::send(&stream, &borrowed).await?;

    step(protocol::expect(&mut stream, "prepared"), "prepared").await?;
    // As late as possible: from here until `released` this process still
    // serves, and what it counts in that window does not reach the new one.
    let state = out.store.state.export_all();
    let slots = state.len();
    protocol::write(&mut stream, &Message::State { state }).await?;
    tracing::info!(slots, "filter state exported");

    step(protocol::expect(&mut stream, "complete"), "complete").await?;
    // The new process accepts on the same sockets: stop accepting here.
    out.phase.set(Phase::Draining);
    out.stop_admin.send_replace(true);
    // The new process binds the path after `released`.
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(error = %e, "upgrade socket file already gone");
    }
    out.drain.start();
    let _ = protocol::write(&mut stream, &Message::Released).await;
    Ok(pid)
}

async fn step<T>(
    fut: impl std::future::Future<Output = io::Result<T>>,
    what: &str,
) -> anyhow::Result<T> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("waiting for {what}: {e}")),
        Err(_) => Err(anyhow::anyhow!("waiting for {what}: timed out")),
    }
}

/// The new process's side of a handover in progress.
pub struct Takeover {
    stream: UnixStream,
    listeners: Vec<(ListenerInfo, Option<std::net::TcpListener>)>,
    pub config: ConfigSpec,
    pub old_pid: u32,
}

/// Asks the process listening on `path` to hand over. `None` when nobody
/// answers there (first start): bind fresh.
pub async fn connect(path: &Path) -> anyhow::Result<Option<Takeover>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::info!(socket = %path.display(), "no process to take over from; starting fresh");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("upgrade socket {}", path.display())),
    };
    if let Err(reason) = check_peer(&stream, "new") {
        tracing::error!(socket = %path.display(), %reason, "upgrade socket: refusing to take over from another user's process");
        anyhow::bail!(
            "upgrade socket {} is served by another user's process ({reason}); refusing to take over",
            path.display()
        );
    }
    protocol::write(
        &mut stream,
        &Message::Hello {
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
    )
    .await
    .context("upgrade: sending hello")?;
    let offer = tokio::time::timeout(ANSWER_TIMEOUT, protocol::expect(&mut stream, "offer"))
        .await
        .context("upgrade: the old process did not answer")?
        .context("upgrade: reading the offer")?;
    let Message::Offer {
        protocol,
        pid,
        listeners,
        config,
    } = offer
    else {
        anyhow::bail!("upgrade: expected an offer");
    };
    if protocol != PROTOCOL_VERSION {
        anyhow::bail!(
            "upgrade: the old process speaks protocol {protocol}, this one {PROTOCOL_VERSION}"
        );
    }
    let received = tokio::time::timeout(ANSWER_TIMEOUT, fds::recv(&stream, listeners.len()))
        .await
        .context("upgrade: listeners not received in time")?
        .context("upgrade: receiving listeners")?;
    if received.len() != listeners.len() {
        anyhow::bail!(
            "upgrade: {} listeners announced, {} received",
            listeners.len(),
            received.len()
        );
    }
    let mut taken = Vec::new();
    for (info, fd) in listeners.into_iter().zip(received) {
        let listener = std::net::TcpListener::from(fd);
        let local = listener
            .local_addr()
            .context("upgrade: received listener")?;
        if local != info.addr && info.addr.port() != 0 {
            anyhow::bail!(
                "upgrade: listener {} announced as {} is bound to {local}",
                info.name,
                info.addr
            );
        }
        listener.set_nonblocking(true)?;
        taken.push((info, Some(listener)));
    }
    tracing::info!(
        old_pid = pid,
        listeners = taken.len(),
        "taking over from the old process"
    );
    Ok(Some(Takeover {
        stream,
        listeners: taken,
        config: *config,
        old_pid: pid,
    }))
}

impl Takeover {
    /// The handed-over listener bound to `addr`, if any.
    pub fn take_listener(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.listeners
            .iter_mut()
            .find(|(info, l)| info.addr == addr && l.is_some())
            .and_then(|(_, l)| l.take())
    }

    /// Asks for the filter state; the old process exports it now.
    pub async fn receive_state(&mut self) -> anyhow::Result<HashMap<String, serde_json::Value>> {
        protocol::write(&mut self.stream, &Message::Prepared).await?;
        match tokio::time::timeout(ANSWER_TIMEOUT, protocol::expect(&mut self.stream, "state"))
            .await
            .context("upgrade: state not received in time")??
        {
            Message::State { state } => Ok(state),
            _ => anyhow::bail!("upgrade: expected state"),
        }
    }

    /// Tells the old process that this one accepts now; waits until it let go.
    pub async fn complete(mut self) -> anyhow::Result<()> {
        protocol::write(&mut self.stream, &Message::Complete).await?;
        tokio::time::timeout(
            ANSWER_TIMEOUT,
            protocol::expect(&mut self.stream, "released"),
        )
        .await
        .context("upgrade: the old process did not confirm")??;
        Ok(())
    }

    /// Gives up; the old process keeps serving.
    pub async fn refuse(mut self, reason: String) {
        let _ = protocol::write(&mut self.stream, &Message::Refused { reason }).await;
    }
}

/// Starts the next process (`--upgrade-binary`, by default this binary) with
/// this process's arguments; it takes over through the upgrade socket.
pub struct Successor {
    pub binary: PathBuf,
    running: Mutex<Option<u32>>,
}

impl Successor {
    pub fn new(binary: PathBuf) -> Successor {
        Successor {
            binary,
            running: Mutex::new(None),
        }
    }

    /// Spawns the new process; returns its pid.
    pub fn spawn(self: &Arc<Self>) -> Result<u32, String> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pid) = *running {
            return Err(format!("an upgrade is already in progress (pid {pid})"));
        }
        let mut child = tokio::process::Command::new(&self.binary)
            .args(std::env::args_os().skip(1))
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let pid = child.id().unwrap_or(0);
        *running = Some(pid);
        tracing::info!(binary = %self.binary.display(), pid, "started the new process");
        let this = self.clone();
        tokio::spawn(async move {
            // The new process outlives this one when it succeeds; it only
            // exits while this one still runs when it failed (or drained itself).
            let status = child.wait().await;
            *this.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
            match status {
                Ok(s) => tracing::warn!(pid, status = %s, "the new process exited"),
                Err(e) => tracing::warn!(pid, error = %e, "waiting for the new process failed"),
            }
        });
        Ok(pid)
    }

    /// Spawns on every SIGUSR2.
    pub async fn on_signal(self: Arc<Self>) {
        let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
        else {
            return;
        };
        while signal.recv().await.is_some() {
            tracing::info!("SIGUSR2: upgrading");
            if let Err(e) = self.spawn() {
                tracing::error!(error = %e, "upgrade not started");
            }
        }
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) about readiness and,
/// after an upgrade, that this process is now the service's main process.
pub fn notify_systemd(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let target = PathBuf::from(target);
    let sent = match target.to_str().and_then(|s| s.strip_prefix('@')) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
        }
        None => socket.send_to(message.as_bytes(), &target),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_filters::state::Handover;
    use meshgate_filters::State;
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Like a token bucket: the import replaces.
    #[derive(Default)]
    struct Tokens(AtomicU64);
    impl Handover for Tokens {
        fn export(&self) -> Option<serde_json::Value> {
            Some(self.0.load(Ordering::Relaxed).into())
        }
        fn import(&self, v: serde_json::Value) {
            self.0.store(v.as_u64().unwrap_or(0), Ordering::Relaxed);
        }
    }

    /// Like a nonce cache: the import merges.
    #[derive(Default)]
    struct Nonces(Mutex<BTreeSet<String>>);
    impl Nonces {
        /// False when the nonce was seen before (a replay).
        fn first_use(&self, nonce: &str) -> bool {
            self.0.lock().expect("lock").insert(nonce.to_string())
        }
    }
    impl Handover for Nonces {
        fn export(&self) -> Option<serde_json::Value> {
            serde_json::to_value(&*self.0.lock().expect("lock")).ok()
        }
        fn import(&self, v: serde_json::Value) {
            if let Ok(seen) = serde_json::from_value::<BTreeSet<String>>(v) {
                self.0.lock().expect("lock").extend(seen);
            }
        }
    }

    /// Old and new process in one test: the listener, the config and the
    /// state cross the socket; the old side ends up draining.
    #[tokio::test]
    async fn handover_carries_listeners_config_and_state() {
        let dir = tempfile_dir();
        let path = dir.join("upgrade.sock");
        let old_state = Arc::new(State::new());
        let store = Arc::new(ConfigStore::new(dir.clone(), old_state.clone()).expect("store"));
        old_state
            .get_or_insert("limit/bucket", Tokens::default)
            .0
            .store(1, Ordering::Relaxed);
        assert!(old_state
            .get_or_insert("sig/nonces", Nonces::default)
            .first_use("n-1"));

        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        let addr = listener.local_addr().expect("addr");
        let drain = Drain::new();
        let phase = Arc::new(ProcessPhase::default());
        phase.set(Phase::Serving);
        let stop_admin = watch::channel(false).0;
        let outgoing = Outgoing {
            store,
            listeners: vec![OwnListener {
                name: "inbound",
                addr,
                listener,
            }],
            phase: phase.clone(),
            drain: drain.clone(),
            stop_admin: stop_admin.clone(),
        };
        let server = tokio::spawn(serve(
            bind_socket(&path).expect("bind socket"),
            path.clone(),
            outgoing,
        ));

        let mut takeover = connect(&path)
            .await
            .expect("connect")
            .expect("an old process");
        assert_eq!(takeover.old_pid, std::process::id());
        assert_eq!(phase.get(), Phase::HandingOver);
        let taken = takeover
            .take_listener(addr)
            .expect("listener for the address");
        assert!(takeover.take_listener(addr).is_none());
        let new_state = State::new();
        new_state.import_all(takeover.receive_state().await.expect("state"));
        assert!(
            !drain.is_draining(),
            "the old process serves until complete"
        );
        takeover.complete().await.expect("complete");
        assert!(server.await.expect("server task"), "handed over");

        assert!(drain.is_draining());
        assert_eq!(phase.get(), Phase::Draining);
        assert!(*stop_admin.borrow());
        assert!(!path.exists(), "the new process binds the path next");
        // Filters built after the import find their state.
        let tokens = new_state.get_or_insert("limit/bucket", Tokens::default);
        assert_eq!(tokens.0.load(Ordering::Relaxed), 1);
        let nonces = new_state.get_or_insert("sig/nonces", Nonces::default);
        assert!(
            !nonces.first_use("n-1"),
            "a nonce used before is a replay after"
        );
        assert!(nonces.first_use("n-2"));
        // The same socket, still listening.
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        taken.accept().expect("accept on the handed-over socket");
    }

    #[tokio::test]
    async fn the_socket_is_private_to_its_user() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile_dir();
        let path = dir.join("upgrade.sock");
        std::fs::write(&path, b"stale").expect("stale file");
        let _listener = bind_socket(&path).expect("bind");
        let meta = std::fs::metadata(&path).expect("stat");
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("upgrade.sock")]);
        // A peer of the same user passes the check from both sides.
        let client = UnixStream::connect(&path).await.expect("connect");
        assert_eq!(check_peer(&client, "new"), Ok(()));
        let (server, _) = _listener.accept().await.expect("accept");
        assert_eq!(check_peer(&server, "old"), Ok(()));
    }

    #[tokio::test]
    async fn nobody_listening_means_a_fresh_start() {
        let dir = tempfile_dir();
        let path = dir.join("upgrade.sock");
        assert!(connect(&path).await.expect("missing socket").is_none());
        // A stale socket file (its process is gone) is not an error either.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(connect(&path).await.expect("stale socket").is_none());
        let _fresh = bind_socket(&path).expect("stale file replaced");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "meshgate-upgrade-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
