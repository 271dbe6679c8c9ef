//! The meshgate sidecar: listeners, routing, the filter chain, forwarding to
//! the local app, config sources and the admin API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config_store;
pub mod demo;
pub mod drain;
pub mod egress;
pub mod file_source;
pub mod headers;
pub mod health;
pub mod proxy;
pub mod reply;
pub mod route_metrics;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds_source;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use meshgate_filters::{State, ValidateCx};

use crate::admin::Admin;
use crate::cli::{LogFormat, RunArgs};
use crate::config_store::ConfigStore;
use crate::drain::Drain;
use crate::health::AppHealth;
use crate::proxy::Shared;

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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_async(args, None)) {
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
        ConfigStore::new(base_dir, state).map_err(|e| anyhow::anyhow!("built-in defaults: {e}"))?,
    );

    if let Some(path) = &args.config {
        file_source::apply(&store, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    } else if let Some(spec) = embedded {
        store
            .apply(spec, snapshot::ConfigSource::File("(embedded)".into()))
            .map_err(|e| anyhow::anyhow!("embedded config: {e}"))?;
    }

    // With --xds the file is only the bootstrap (node-local addresses, first config).
    let bootstrap = {
        let s = store.load();
        s.loaded.then(|| s.config.spec.clone())
    };
    let mut xds = xds_source::XdsSource::from_args(&args.xds, bootstrap.as_deref())?;
    if let Some(xds) = &mut xds {
        xds.boot_from_state(&store);
    }

    let snapshot = store.load();
    let inbound_addr = snapshot.config.inbound.listen;
    let admin_addr = snapshot.config.admin_listen;
    let health_addr = snapshot.config.health_listen;
    let egress_addr = snapshot.config.egress.as_ref().map(|e| e.listen);
    drop(snapshot);

    let inbound = tokio::net::TcpListener::from_std(
        server::bind(inbound_addr)
            .map_err(|e| anyhow::anyhow!("inbound.listen {inbound_addr}: {e}"))?,
    )?;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen {admin_addr}: {e}"))?;

    let drain = Drain::new();
    let health = Arc::new(AppHealth::default());
    let admin = Arc::new(Admin {
        store: store.clone(),
        health: health.clone(),
        drain: drain.clone(),
        metrics: metrics.clone(),
        log_level,
        phase: Arc::new(std::sync::Mutex::new("serving".into())),
    });
    tokio::spawn(admin::serve(admin_listener, admin.clone(), false));
    if let Some(addr) = health_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("admin.health_listen {addr}: {e}"))?;
        tokio::spawn(admin::serve(listener, admin.clone(), true));
    }
    if let Some(addr) = egress_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("egress.listen {addr}: {e}"))?;
        let egress = Arc::new(egress::Egress::new(store.clone()));
        tokio::spawn(egress::serve(listener, egress, drain.clone()));
    }
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
    });
    let serving = tokio::spawn(server::serve(inbound, shared, drain.clone()));
    tracing::info!(inbound = %inbound_addr, admin = %admin_addr, version = %store.load().version, "meshgate serving");

    wait_for_shutdown(&drain).await;
    drain.start();
    if let Ok(mut phase) = admin.phase.lock() {
        *phase = "draining".into();
    }
    let _ = serving.await;
    let left = drain.wait_idle(args.drain_timeout).await;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline reached; closing remaining connections"
        );
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
