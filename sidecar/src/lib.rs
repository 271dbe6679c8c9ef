//! The meshgate sidecar: listeners, routing, the filter chain, forwarding to
//! the local app, config sources and the admin API.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod cli;
pub mod config_store;
pub mod demo;
pub mod drain;
pub mod file_source;
pub mod headers;
pub mod health;
pub mod memory;
pub mod pause;
pub mod phase;
pub mod proxy;
pub mod reply;
pub mod route_metrics;
pub mod routing;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
mod woken;
pub mod xds_source;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use meshgate_filters::{State, ValidateCx};
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::cli::{LogFormat, RunArgs};
use crate::config_store::ConfigStore;
use crate::drain::Drain;
use crate::health::AppHealth;
use crate::proxy::{Shared, Side};

/// `meshgate validate FILE`: prints every error with its field path.
pub fn validate_file(file: &Path) -> ExitCode {
    let result = file_source::read(file).and_then(|spec| {
        let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
        meshgate_xds::config::validate(&spec, &ValidateCx::sidecar(base))
    });
    match result {
        Ok(config) => {
            println!(
                "{}: ok ({} routes, {} filters)",
                file.display(),
                config.routes.len(),
                config.filters.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{}: {e}", file.display());
            }
            ExitCode::from(1)
        }
    }
}

/// Runs the sidecar until it is drained (admin `POST /drain`, SIGTERM or SIGINT).
pub fn run(args: RunArgs) -> ExitCode {
    let runtime = match runtime(&args) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run_async(args, None));
    access_log::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "meshgate stopped");
            eprintln!("meshgate: {e}");
            ExitCode::from(1)
        }
    }
}

/// The runtime: `--concurrency` worker threads. With one, a current-thread
/// runtime avoids the work-stealing scheduler's overhead entirely.
pub fn runtime(args: &RunArgs) -> std::io::Result<tokio::runtime::Runtime> {
    match args.concurrency {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) if n > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// The sidecar's main task. `embedded` is a config used when no file is given
/// (the demo).
pub async fn run_async(
    args: RunArgs,
    embedded: Option<meshgate_xds::config::ConfigSpec>,
) -> anyhow::Result<()> {
    let log_level = telemetry::init_logging(&args.log_level, args.log_format == LogFormat::Json)
        .map_err(anyhow::Error::msg)?;
    let metrics = telemetry::init_metrics().map_err(anyhow::Error::msg)?;

    let base_dir = args
        .config
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let state = Arc::new(State::new());
    let store = Arc::new(
        ConfigStore::new(base_dir.clone(), state)
            .map_err(|e| anyhow::anyhow!("built-in defaults: {e}"))?,
    );
    let phase = Arc::new(phase::ProcessPhase::default());

    // A broken config file fails the start before an old process is even
    // asked to hand over: it keeps serving untouched.
    let file_spec = match &args.config {
        Some(path) => {
            let spec = file_source::read(path)
                .and_then(|spec| {
                    meshgate_xds::config::validate(&spec, &ValidateCx::sidecar(&base_dir))
                        .map(|_| spec)
                })
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Some((spec, path.display().to_string()))
        }
        None => None,
    };

    let mut takeover = match &args.upgrade_socket {
        Some(path) => upgrade::connect(path).await?,
        None => None,
    };
    match takeover.as_mut() {
        Some(t) => {
            phase.set(phase::Phase::TakingOver);
            // State first, so that filters built by the apply below find it.
            let exports = t.receive_state().await?;
            let slots = exports.len();
            store.state.import_all(exports);
            tracing::info!(slots, "filter state imported");
            // The old process's live config (possibly newer than the file);
            // the file watcher takes over from here.
            if let Err(e) = store.apply(t.config.clone(), snapshot::ConfigSource::Upgrade) {
                if let Some(t) = takeover.take() {
                    t.refuse(format!("handed-over config rejected: {e}")).await;
                }
                anyhow::bail!("handed-over config rejected: {e}");
            }
        }
        None => {
            if let Some((spec, name)) = file_spec {
                store
                    .apply(spec, snapshot::ConfigSource::File(name.clone()))
                    .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            } else if let Some(spec) = embedded {
                store
                    .apply(spec, snapshot::ConfigSource::File("(embedded)".into()))
                    .map_err(|e| anyhow::anyhow!("embedded config: {e}"))?;
            }
        }
    }

    // With --xds the file is only the bootstrap (node-local addresses, first config).
    let bootstrap = {
        let s = store.load();
        s.loaded.then(|| s.config.spec.clone())
    };
    let mut xds = xds_source::XdsSource::from_args(&args.xds, bootstrap.as_deref())?;
    if let Some(xds) = &mut xds {
        // A handed-over config is newer than anything in the state dir.
        if takeover.is_none() {
            xds.boot_from_state(&store);
        }
    }

    let snapshot = store.load();
    let inbound_addr = snapshot.config.inbound.listen;
    let admin_addr = snapshot.config.admin_listen;
    let health_addr = snapshot.config.health_listen;
    let egress_addr = snapshot.config.egress.as_ref().map(|e| e.listen);
    drop(snapshot);

    // Handed-over sockets when taking over, fresh ones otherwise.
    let mut own = Vec::new();
    let mut listen = |name: &'static str, addr: SocketAddr| -> anyhow::Result<Arc<TcpListener>> {
        let std_listener = match takeover.as_mut().and_then(|t| t.take_listener(addr)) {
            Some(l) => l,
            None => server::bind(addr).map_err(|e| anyhow::anyhow!("{name} {addr}: {e}"))?,
        };
        let listener = Arc::new(TcpListener::from_std(std_listener)?);
        own.push(upgrade::OwnListener {
            name,
            addr,
            listener: listener.clone(),
        });
        Ok(listener)
    };
    let inbound = listen("inbound", inbound_addr)?;
    let admin_listener = listen("admin", admin_addr)?;
    let health_listener = match health_addr {
        Some(addr) => Some(listen("health", addr)?),
        None => None,
    };
    let egress_listener = match egress_addr {
        Some(addr) => Some(listen("egress", addr)?),
        None => None,
    };

    let drain = Drain::new();
    let health = Arc::new(AppHealth::default());
    let successor = args.upgrade_socket.as_ref().map(|_| {
        let binary = args
            .upgrade_binary
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| PathBuf::from("meshgate"));
        Arc::new(upgrade::Successor::new(binary))
    });
    let admin = Arc::new(Admin {
        store: store.clone(),
        health: health.clone(),
        drain: drain.clone(),
        metrics: metrics.clone(),
        log_level,
        phase: phase.clone(),
        stop_accepting: tokio::sync::watch::channel(false).0,
        successor: successor.clone(),
    });
    tokio::spawn(health::run(store.clone(), health.clone()));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            metrics.run_upkeep();
        }
    });
    match xds {
        Some(xds) => xds.spawn(store.clone())?,
        None => {
            if let Some(path) = &args.config {
                file_source::watch(store.clone(), path.clone())?;
            }
        }
    }

    let shared = Arc::new(Shared {
        store: store.clone(),
        health,
        drain: drain.clone(),
        egress_pools: proxy::EgressPools::default(),
    });
    if let Some(listener) = egress_listener {
        tokio::spawn(server::serve(
            listener,
            shared.clone(),
            Side::Egress,
            drain.clone(),
        ));
    }
    let serving = tokio::spawn(server::serve(inbound, shared, Side::Inbound, drain.clone()));
    if let Some(t) = takeover {
        // Accepting on the shared sockets now; the old process stops accepting
        // when it reads `complete` and answers `released`.
        let old_pid = t.old_pid;
        match t.complete().await {
            Ok(()) => tracing::info!(old_pid, "took over; the old process is draining"),
            Err(e) => {
                tracing::warn!(old_pid, error = %e, "the old process did not confirm the takeover")
            }
        }
        metrics::counter!("meshgate_upgrades_total", "result" => "taken_over").increment(1);
        upgrade::notify_systemd(&format!("MAINPID={}\nREADY=1", std::process::id()));
    } else {
        upgrade::notify_systemd("READY=1");
    }
    phase.set(phase::Phase::Serving);
    tokio::spawn(admin::serve(admin_listener, admin.clone(), false));
    if let Some(listener) = health_listener {
        tokio::spawn(admin::serve(listener, admin.clone(), true));
    }
    let mut handed_over = None;
    if let (Some(path), Some(successor)) = (&args.upgrade_socket, successor) {
        let socket = upgrade::bind_socket(path)
            .map_err(|e| anyhow::anyhow!("--upgrade-socket {}: {e}", path.display()))?;
        handed_over = Some(tokio::spawn(upgrade::serve(
            socket,
            path.clone(),
            upgrade::Outgoing {
                store: store.clone(),
                listeners: own,
                phase: phase.clone(),
                drain: drain.clone(),
                stop_admin: admin.stop_accepting.clone(),
            },
        )));
        tokio::spawn(successor.on_signal());
    }
    tracing::info!(inbound = %inbound_addr, admin = %admin_addr, version = %store.load().version, pid = std::process::id(), "meshgate serving");

    wait_for_shutdown(&drain).await;
    drain.start();
    phase.set(phase::Phase::Draining);
    let _ = serving.await;
    tracing::info!(
        connections = drain.active_connections(),
        deadline = ?args.drain_timeout,
        "draining: waiting for connections to finish"
    );
    let left = drain.wait_idle(args.drain_timeout).await;
    // Every request of this process is answered (or cut): its lines go out
    // before a handed-over process idles or exits.
    access_log::flush();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline reached; closing remaining connections"
        );
    }
    let handed_over = match handed_over {
        Some(task) => task.await.unwrap_or(false),
        None => false,
    };
    if handed_over && args.idle_after_handover {
        tracing::info!("meshgate drained after handing over; idle until SIGTERM");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    tracing::info!("meshgate drained; exiting");
    Ok(())
}

/// Resolves on SIGTERM, SIGINT or a drain requested through the admin API.
async fn wait_for_shutdown(drain: &Drain) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        _ = drain.started() => {}
    }
}
