//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "meshgate",
    version,
    about = "Service-mesh sidecar with API-gateway filters: signatures, sessions, rate limits"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a config file and print every error with its field path (exit 1 on error).
    Validate {
        /// The YAML config file.
        file: PathBuf,
    },
    /// Run a sample app on 127.0.0.1:8080 and the sidecar in front of it on the
    /// embedded quick-start config (no control plane, no Redis).
    Demo {
        /// Port of the sample app.
        #[arg(long, default_value_t = 8080)]
        app_port: u16,
    },
    /// Hold a pod's network namespace: wait for SIGTERM or SIGINT, do nothing
    /// else (the process of the compose pod's pause container).
    Pause,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// YAML config file; watched and hot-reloaded on change.
    #[arg(long, short, env = "MESHGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info`, `debug`, `info,access=off` (the access log is target `access`).
    /// Changeable at runtime: POST /logging?level=... on the admin port.
    #[arg(long, env = "MESHGATE_LOG", default_value = "info", global = true)]
    pub log_level: String,

    /// Log format: JSON lines or human-readable text.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,

    /// Worker threads serving traffic (default: one per available core).
    /// Sidecars usually get one or two cores; set this to the pod's CPU limit.
    #[arg(long, env = "MESHGATE_CONCURRENCY", global = true)]
    pub concurrency: Option<usize>,

    /// On drain, SIGTERM or after handing over to a new process: how long in-flight
    /// requests and long-lived streams (WebSocket, gRPC) may take before the
    /// process closes them and exits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub drain_timeout: Duration,

    /// Unix socket for lossless binary upgrades, on a volume the old and the new
    /// process share. At start, a process answering there hands its listeners,
    /// config and filter state over; otherwise this process binds fresh and
    /// listens there for the next upgrade.
    #[arg(long, env = "MESHGATE_UPGRADE_SOCKET", global = true)]
    pub upgrade_socket: Option<PathBuf>,

    /// Binary started by SIGUSR2 or `POST /upgrade` (with this process's
    /// arguments) to take over; default: the running binary.
    #[arg(long, env = "MESHGATE_UPGRADE_BINARY", global = true)]
    pub upgrade_binary: Option<PathBuf>,

    /// After handing over and draining, stay idle until SIGTERM instead of
    /// exiting: in Kubernetes, a container that exits is restarted with its
    /// old image, which would take the sockets back.
    #[arg(long, env = "MESHGATE_IDLE_AFTER_HANDOVER", global = true)]
    pub idle_after_handover: bool,

    #[command(flatten)]
    pub xds: XdsArgs,
}

/// Config from the control plane over xDS (see docs/control-plane.md).
#[derive(Args, Debug, Clone, Default)]
pub struct XdsArgs {
    /// Control-plane replicas: one xDS URL or a comma-separated list
    /// (`http://cp-a:18000,http://cp-b:18000`; all `https://` with --xds-ca).
    /// A host name may resolve to several replicas. The sidecar keeps one
    /// stream to one of them and fails over to another when it ends.
    /// With it, the --config file is only the bootstrap: it provides the
    /// node-local addresses and the config served until the first push.
    #[arg(
        long = "xds",
        env = "MESHGATE_XDS",
        value_name = "URL[,URL...]",
        global = true
    )]
    pub urls: Option<String>,
    /// This sidecar's node id (default: the host name).
    #[arg(long, env = "MESHGATE_NODE_ID", global = true)]
    pub node_id: Option<String>,
    /// The service this sidecar fronts (the xDS node cluster).
    #[arg(long, env = "MESHGATE_SERVICE", global = true)]
    pub service: Option<String>,
    /// A label for gray releases, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label, global = true)]
    pub labels: Vec<(String, String)>,
    /// Where the last config applied from xDS is kept, to boot from it when
    /// the control plane is unreachable.
    #[arg(long, env = "MESHGATE_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// CA certificate (PEM) of the control plane, for TLS.
    #[arg(long, global = true)]
    pub xds_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS to the control plane.
    #[arg(long, requires = "xds_key", global = true)]
    pub xds_cert: Option<PathBuf>,
    #[arg(long, requires = "xds_cert", global = true)]
    pub xds_key: Option<PathBuf>,
    /// File holding this sidecar's xDS bearer token, sent as
    /// `authorization: Bearer` on the ADS stream (a file keeps it out of `ps`).
    /// Re-read at every connect, so a rotated Secret is picked up.
    #[arg(long, env = "MESHGATE_XDS_TOKEN_FILE", global = true)]
    pub xds_token_file: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("label {s:?} is not key=value")),
    }
}
