//! meshgate-cp: the meshgate control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshgate_control_plane::xds_auth::{TokenTable, XdsAuth};
use meshgate_control_plane::{admin, ads::Ads, ControlPlane};
use meshgate_xds::pb::AggregatedDiscoveryServiceServer;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Parser)]
#[command(name = "meshgate-cp", version, about = "meshgate control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS (gRPC) to sidecars and the admin REST API.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of the durable config history (the file store, for one machine).
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    data_dir: Option<PathBuf>,
    /// Keep versions, rollouts, sidecar status and xDS credential bindings
    /// in etcd, shared by every replica: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "MESHGATE_CP_STORE")]
    store: Option<String>,
    /// Address of the xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    grpc: SocketAddr,
    /// Address of the admin REST API.
    #[arg(long, default_value = "127.0.0.1:18001")]
    admin: SocketAddr,
    /// Bearer token required by the admin API (visible in `ps`: prefer
    /// --token-file or the environment).
    #[arg(
        long,
        env = "MESHGATE_CP_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the admin bearer token (surrounding whitespace ignored).
    #[arg(long, env = "MESHGATE_CP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Serve the admin API without a token: anyone who reaches it can push
    /// configs. Only for local experiments.
    #[arg(long, conflicts_with_all = ["token", "token_file"])]
    insecure_no_admin_token: bool,
    /// Server certificate (PEM) for xDS over TLS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA for client certificates; when set, sidecars must present one (mTLS)
    /// whose SPIFFE ID names the service they may subscribe to (needs
    /// --spiffe-trust-domain).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Trust domain of the sidecars' SPIFFE IDs: a client certificate with the
    /// URI SAN spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE may subscribe to SERVICE only.
    #[arg(long, requires = "tls_client_ca")]
    spiffe_trust_domain: Option<String>,
    /// YAML/JSON file mapping xDS bearer tokens (plain or SHA-256) to the
    /// services each may subscribe to; sidecars send `authorization: Bearer`.
    #[arg(long)]
    xds_tokens: Option<PathBuf>,
    /// Serve every service's config, secrets included, to any client that
    /// asks, without credentials. For a trusted development setup only.
    #[arg(long, conflicts_with_all = ["xds_tokens", "tls_client_ca", "spiffe_trust_domain"])]
    insecure_xds: bool,
}

/// Refuses to start with xDS open to anyone unless told so explicitly.
/// On etcd, the token bindings are shared: `--xds-tokens` replaces the stored
/// table (as SHA-256 digests, so etcd holds no token), and a replica started
/// without it uses the stored one.
async fn xds_auth(args: &ServeArgs, cp: &ControlPlane) -> anyhow::Result<XdsAuth> {
    if args.insecure_xds {
        tracing::warn!(
            grpc = %args.grpc,
            "--insecure-xds: any client that can reach the xDS port gets any service's config, secrets included"
        );
        return Ok(XdsAuth::Insecure);
    }
    if args.tls_client_ca.is_some() && args.spiffe_trust_domain.is_none() {
        anyhow::bail!(
            "--tls-client-ca needs --spiffe-trust-domain: the service a sidecar may subscribe to \
             is read from its certificate's URI SAN spiffe://DOMAIN/ns/NAMESPACE/sa/SERVICE"
        );
    }
    let stored_tokens = match (cp.etcd(), &args.xds_tokens) {
        (Some(store), None) => store
            .xds_tokens()
            .await
            .context("reading the xDS token bindings from etcd")?,
        _ => None,
    };
    if args.xds_tokens.is_none() && stored_tokens.is_none() && args.tls_client_ca.is_none() {
        anyhow::bail!(
            "refusing to serve xDS without credentials (every client could fetch every service's \
             config and secrets): pass --xds-tokens FILE (bearer tokens mapped to services), \
             --tls-client-ca CA with --spiffe-trust-domain DOMAIN (service from the client \
             certificate), or --insecure-xds for a trusted development setup{}",
            if cp.etcd().is_some() {
                " (etcd holds no xDS token bindings yet: start one replica with --xds-tokens)"
            } else {
                ""
            }
        );
    }
    if let Some(text) = stored_tokens {
        let text = String::from_utf8(text).context("xDS token bindings in etcd are not UTF-8")?;
        let table = TokenTable::parse(&text).map_err(|errors| {
            anyhow::anyhow!(
                "the xDS token bindings in etcd are invalid:\n  {}",
                errors.join("\n  ")
            )
        })?;
        tracing::info!(tokens = table.len(), "xDS tokens loaded from etcd");
        return XdsAuth::checked(Some(table), args.spiffe_trust_domain.clone())
            .map_err(anyhow::Error::msg);
    }
    let tokens = match &args.xds_tokens {
        Some(path) => {
            let table = TokenTable::load(path).map_err(|errors| {
                anyhow::anyhow!(
                    "--xds-tokens {} is invalid:\n  {}",
                    path.display(),
                    errors.join("\n  ")
                )
            })?;
            if args.tls_cert.is_none() && !args.grpc.ip().is_loopback() {
                tracing::warn!(
                    grpc = %args.grpc,
                    "xDS tokens travel in clear text: add --tls-cert/--tls-key on a shared network"
                );
            }
            tracing::info!(tokens = table.len(), path = %path.display(), "xDS tokens loaded");
            if let Some(store) = cp.etcd() {
                store
                    .put_xds_tokens(table.to_digest_yaml().into_bytes())
                    .await
                    .context("storing the xDS token bindings in etcd")?;
                tracing::info!("xDS token bindings stored in etcd for every replica");
            }
            Some(table)
        }
        None => None,
    };
    XdsAuth::checked(tokens, args.spiffe_trust_domain.clone()).map_err(anyhow::Error::msg)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let token: Option<String> = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if token.as_deref().is_some_and(str::is_empty) {
        anyhow::bail!("the admin token is empty");
    }
    let token = match token {
        Some(t) => Some(admin::AdminToken::new(&t)),
        None if args.insecure_no_admin_token => {
            tracing::warn!(
                "--insecure-no-admin-token: the admin API accepts config pushes from anyone who reaches it"
            );
            None
        }
        None => anyhow::bail!(
            "the admin API needs a token: --token-file FILE (or --token / MESHGATE_CP_TOKEN); \
             --insecure-no-admin-token serves it unauthenticated"
        ),
    };
    let cp = match (&args.store, &args.data_dir) {
        (Some(url), _) => ControlPlane::open_etcd(url)
            .await
            .with_context(|| format!("opening store {url}"))?,
        (None, Some(dir)) => ControlPlane::open(dir)
            .with_context(|| format!("opening data dir {}", dir.display()))?,
        (None, None) => anyhow::bail!("pass --data-dir DIR or --store etcd://HOST:PORT,..."),
    };
    let xds_auth = Arc::new(xds_auth(&args, &cp).await?);

    let admin_listener = admin::bind(args.admin)
        .await
        .with_context(|| format!("binding admin {}", args.admin))?;
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("binding grpc {}", args.grpc))?;
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .tcp_nodelay(true);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        server = server.tls_config(tls).context("xds tls config")?;
    }
    let store = match (&args.store, &args.data_dir) {
        (Some(url), _) => url.clone(),
        (None, Some(dir)) => dir.display().to_string(),
        (None, None) => String::new(),
    };
    tracing::info!(grpc = %args.grpc, admin = %args.admin, %store, replica = cp.replica(), "meshgate-cp serving");
    let grpc = server
        .add_service(
            AggregatedDiscoveryServiceServer::new(Ads::new(cp.clone(), xds_auth))
                .max_decoding_message_size(16 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        );
    tokio::select! {
        r = grpc => r.context("grpc server")?,
        r = admin::serve(admin_listener, cp, token) => r.context("admin server")?,
    }
    Ok(())
}
