//! The sidecar's xDS client: one ADS stream at a time, to one of the
//! control-plane replicas, subscribed to its service's `SidecarConfig`;
//! when the stream ends or a connect fails it moves to another replica
//! (`failover`), forever.
//!
//! The client never serves traffic itself; it only calls `apply`, so a control
//! plane that is down or misbehaving cannot stop the sidecar from serving its
//! last good config. Every new stream's first request carries the version
//! the sidecar runs (and no nonce: nonces belong to one stream), so a replica
//! that has that version sends nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ack::{Outcome, Subscription};
use crate::config::ConfigSpec;
use crate::endpoints::{Target, XdsUrl};
use crate::failover::{Attempt, Failover};
pub use crate::failover::{Backoff, Policy};
use crate::pb::{AggregatedDiscoveryServiceClient, DiscoveryRequest, Node, UserAgentVersionType};
use crate::resource::labels_metadata;

/// Metric names (described by [`describe_metrics`]).
pub const METRIC_CONNECTED: &str = "meshgate_xds_connected";
pub const METRIC_CONNECTS: &str = "meshgate_xds_connects_total";
pub const METRIC_RESPONSES: &str = "meshgate_xds_responses_total";
pub const METRIC_FAILOVERS: &str = "meshgate_xds_failovers_total";

/// Registers the help texts of the client's metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        METRIC_CONNECTED,
        "1 for the control-plane endpoint and address the xDS stream is open to, 0 for the others tried"
    );
    metrics::describe_counter!(
        METRIC_CONNECTS,
        "xDS stream attempts per endpoint and address, by result (open, failed)"
    );
    metrics::describe_counter!(
        METRIC_RESPONSES,
        "xDS responses received per endpoint and address, by outcome (ack, nack)"
    );
    metrics::describe_counter!(
        METRIC_FAILOVERS,
        "xDS streams opened to another target than the previous stream's"
    );
}

/// Files for mutual TLS to the control plane (PEM).
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// CA that signed the control plane's certificate.
    pub ca: PathBuf,
    /// This sidecar's certificate chain and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to verify in the server certificate; default: the URL's host.
    pub domain: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The control-plane replicas (`endpoints::parse_list`: all `https`
    /// with `tls`, all `http` without). At least one.
    pub endpoints: Vec<XdsUrl>,
    pub node_id: String,
    pub service: String,
    pub labels: BTreeMap<String, String>,
    pub tls: Option<ClientTls>,
    /// File holding the bearer token sent as `authorization` metadata on
    /// every stream; read at each connect, so a rotated file is picked up.
    pub token_file: Option<PathBuf>,
    /// The version already applied (e.g. restored from the state dir).
    pub initial_version: Option<String>,
    /// Reported to the control plane as `user_agent_version`.
    pub agent_version: String,
    pub policy: Policy,
}

impl ClientOptions {
    pub fn new(
        endpoints: Vec<XdsUrl>,
        node_id: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        ClientOptions {
            endpoints,
            node_id: node_id.into(),
            service: service.into(),
            labels: BTreeMap::new(),
            tls: None,
            token_file: None,
            initial_version: None,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            policy: Policy::default(),
        }
    }

    fn node(&self) -> Node {
        Node {
            id: self.node_id.clone(),
            cluster: self.service.clone(),
            metadata: Some(labels_metadata(&self.labels)),
            user_agent_name: "meshgate".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
                self.agent_version.clone(),
            )),
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("tls files: {0}")]
    Tls(std::io::Error),
    #[error("token file: {0}")]
    Token(String),
    #[error("stream closed by the control plane")]
    Closed,
    #[error("target names no configured URL")]
    UnknownTarget,
}

/// What one attempt got to, for the failover policy.
#[derive(Debug, Default)]
struct Progress {
    opened: bool,
    delivered: bool,
}

/// Subscribes forever; every received config goes to `apply` with the name
/// of the target that sent it, and its result decides ACK (`Ok(version)`)
/// or NACK (`Err(message)`). Never returns.
pub async fn run<F>(opts: ClientOptions, apply: F)
where
    F: Fn(ConfigSpec, &str) -> Result<String, String> + Send + Sync,
{
    let mut subscription = Subscription::new(
        opts.node(),
        opts.service.clone(),
        opts.initial_version.clone(),
    );
    let mut rng = StdRng::from_os_rng();
    let mut failover = Failover::new(opts.policy);
    let mut previous_open: Option<(usize, std::net::SocketAddr)> = None;
    loop {
        let targets = crate::endpoints::resolve(&opts.endpoints).await;
        let Some(target) = failover.pick(&targets, &mut rng).cloned() else {
            let delay = failover.unresolved(&mut rng);
            tracing::warn!(retry_in = ?delay, "no control-plane address resolved");
            tokio::time::sleep(delay).await;
            continue;
        };
        let labels = [
            ("endpoint", target.endpoint.clone()),
            ("address", target.addr.to_string()),
        ];
        let started = Instant::now();
        let mut progress = Progress::default();
        let result = stream_once(
            &opts,
            &target,
            &mut subscription,
            &apply,
            &mut progress,
            &mut previous_open,
        )
        .await;
        metrics::gauge!(METRIC_CONNECTED, &labels).set(0.0);
        if !progress.opened {
            let mut failed = labels.to_vec();
            failed.push(("result", "failed".into()));
            metrics::counter!(METRIC_CONNECTS, &failed).increment(1);
        }
        let attempt = Attempt {
            opened: progress.opened,
            delivered: progress.delivered,
            lived: started.elapsed(),
        };
        let delay = failover.ended(&target, attempt, &mut rng);
        let endpoint = target.endpoint.as_str();
        let address = target.addr;
        match result {
            Err(StreamError::Status(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(
                    endpoint,
                    %address,
                    service = %opts.service,
                    code = ?status.code(),
                    error = %status.message(),
                    retry_in = ?delay,
                    "the control plane refused this sidecar's xDS credentials"
                )
            }
            Err(e) if progress.opened => {
                tracing::warn!(endpoint, %address, error = %e, retry_in = ?delay, "xds stream ended; reconnecting to another replica")
            }
            Err(e) => {
                tracing::warn!(endpoint, %address, error = %e, retry_in = ?delay, "xds connect failed")
            }
            Ok(()) => {
                tracing::info!(endpoint, %address, retry_in = ?delay, "xds stream ended")
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// Reads a bearer token file: its content without surrounding whitespace,
/// which must be non-empty visible ASCII (it goes into a header).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: the token must be one word of visible ASCII characters",
            path.display()
        ));
    }
    Ok(token.to_string())
}

fn bearer(path: &Path) -> Result<tonic::metadata::AsciiMetadataValue, StreamError> {
    let token = read_token_file(path).map_err(StreamError::Token)?;
    let mut value = tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|e| StreamError::Token(e.to_string()))?;
    // Kept out of HTTP/2 header compression tables.
    value.set_sensitive(true);
    Ok(value)
}

/// A channel endpoint that connects to `target`'s address while naming its
/// URL's host (`:authority`, TLS SNI and the name verified in the server
/// certificate), so every address of a name is verified as that name.
fn endpoint(opts: &ClientOptions, target: &Target) -> Result<Endpoint, StreamError> {
    let url = opts
        .endpoints
        .get(target.url)
        .ok_or(StreamError::UnknownTarget)?;
    let scheme = if url.is_https() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", target.addr))?
        .origin(url.origin())
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &opts.tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(StreamError::Tls);
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
            .domain_name(tls.domain.clone().unwrap_or_else(|| url.host().to_string()));
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

async fn stream_once<F>(
    opts: &ClientOptions,
    target: &Target,
    subscription: &mut Subscription,
    apply: &F,
    progress: &mut Progress,
    previous_open: &mut Option<(usize, std::net::SocketAddr)>,
) -> Result<(), StreamError>
where
    F: Fn(ConfigSpec, &str) -> Result<String, String> + Send + Sync,
{
    let authorization = opts.token_file.as_deref().map(bearer).transpose()?;
    let channel = endpoint(opts, target)?.connect().await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let first = subscription.initial_request();
    let reported = first.version_info.clone();
    // The receiver is alive until the stream call ends, so this cannot fail.
    let _ = tx.send(first).await;
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|request| (request, rx))
    });
    let mut request = tonic::Request::new(outbound);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    progress.opened = true;
    let endpoint = target.endpoint.as_str();
    let address = target.addr;
    let labels = [
        ("endpoint", target.endpoint.clone()),
        ("address", address.to_string()),
    ];
    let mut opened = labels.to_vec();
    opened.push(("result", "open".into()));
    metrics::counter!(METRIC_CONNECTS, &opened).increment(1);
    metrics::gauge!(METRIC_CONNECTED, &labels).set(1.0);
    let failed_over = previous_open.is_some_and(|key| key != target.key());
    if failed_over {
        metrics::counter!(METRIC_FAILOVERS).increment(1);
    }
    *previous_open = Some(target.key());
    tracing::info!(
        endpoint,
        %address,
        node = %opts.node_id,
        service = %opts.service,
        version = %reported,
        failed_over,
        "xds stream open"
    );
    let name = target.name();
    while let Some(response) = inbound.message().await? {
        progress.delivered = true;
        let (request, outcome) = subscription.on_response(&response, |spec| apply(spec, &name));
        let mut counted = labels.to_vec();
        match outcome {
            Outcome::Acked { version } => {
                counted.push(("outcome", "ack".into()));
                tracing::info!(endpoint, %address, %version, "xds config applied (ACK)")
            }
            Outcome::Nacked { version, error } => {
                counted.push(("outcome", "nack".into()));
                tracing::warn!(endpoint, %address, %version, %error, "xds config rejected (NACK)")
            }
        }
        metrics::counter!(METRIC_RESPONSES, &counted).increment(1);
        if tx.send(request).await.is_err() {
            break;
        }
    }
    Err(StreamError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_trimmed_and_must_hold_one_visible_word() {
        let dir = std::env::temp_dir().join(format!("meshgate-token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "  s3cret-token\n").expect("write");
        assert_eq!(read_token_file(&file).as_deref(), Ok("s3cret-token"));
        let value = bearer(&file).expect("header value");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret-token"));
        assert!(value.is_sensitive());
        for bad in ["", " \n", "two words", "t\u{e9}st"] {
            std::fs::write(&file, bad).expect("write");
            assert!(read_token_file(&file).is_err(), "{bad:?} accepted");
        }
        assert!(read_token_file(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_carries_identity_labels_and_version() {
        let urls = crate::endpoints::parse_list("http://127.0.0.1:1", false).expect("url");
        let mut opts = ClientOptions::new(urls, "n1", "orders");
        opts.labels.insert("zone".into(), "a".into());
        let node = opts.node();
        assert_eq!(node.id, "n1");
        assert_eq!(node.cluster, "orders");
        assert_eq!(crate::resource::node_labels(&node), opts.labels);
        assert!(crate::resource::node_agent_version(&node).starts_with("meshgate/"));
    }
}
