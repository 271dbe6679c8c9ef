//! The sidecar's xDS client: one ADS stream subscribed to its service's
//! `SidecarConfig`, reconnecting forever with exponential backoff and jitter.
//!
//! The client never serves traffic itself; it only calls `apply`, so a control
//! plane that is down or misbehaving cannot stop the sidecar from serving its
//! last good config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ack::{Outcome, Subscription};
use crate::config::ConfigSpec;
use crate::pb::{AggregatedDiscoveryServiceClient, DiscoveryRequest, Node, UserAgentVersionType};
use crate::resource::labels_metadata;

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
    /// `http://host:port` or, with `tls`, `https://host:port`.
    pub url: String,
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
    pub backoff: Backoff,
}

impl ClientOptions {
    pub fn new(
        url: impl Into<String>,
        node_id: impl Into<String>,
        service: impl Into<String>,
    ) -> Self {
        ClientOptions {
            url: url.into(),
            node_id: node_id.into(),
            service: service.into(),
            labels: BTreeMap::new(),
            tls: None,
            token_file: None,
            initial_version: None,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            backoff: Backoff::default(),
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

/// Reconnect delays: `initial * 2^n` capped at `max`, each drawn uniformly
/// from its upper half so many sidecars don't reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// Delay before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
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
}

/// Subscribes forever; every received config goes to `apply`, whose result
/// decides ACK (`Ok(version)`) or NACK (`Err(message)`). Never returns.
pub async fn run<F>(opts: ClientOptions, apply: F)
where
    F: Fn(ConfigSpec) -> Result<String, String> + Send + Sync,
{
    let mut subscription = Subscription::new(
        opts.node(),
        opts.service.clone(),
        opts.initial_version.clone(),
    );
    let mut attempt: u32 = 0;
    loop {
        let mut got_response = false;
        let result = stream_once(&opts, &mut subscription, &apply, &mut got_response).await;
        if got_response {
            attempt = 0;
        }
        let delay = opts.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        match result {
            Err(StreamError::Status(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::error!(
                    url = %opts.url,
                    service = %opts.service,
                    code = ?status.code(),
                    error = %status.message(),
                    retry_in = ?delay,
                    "the control plane refused this sidecar's xDS credentials"
                )
            }
            Err(e) => {
                tracing::warn!(url = %meshgate_filters::redact::redact_url(&opts.url), error = %e, retry_in = ?delay, "xds stream ended")
            }
            Ok(()) => {
                tracing::info!(url = %meshgate_filters::redact::redact_url(&opts.url), retry_in = ?delay, "xds stream ended")
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

async fn endpoint(opts: &ClientOptions) -> Result<Endpoint, StreamError> {
    let mut endpoint = Endpoint::from_shared(opts.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &opts.tls {
        let read = |p: &PathBuf| std::fs::read(p).map_err(StreamError::Tls);
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
            .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

async fn stream_once<F>(
    opts: &ClientOptions,
    subscription: &mut Subscription,
    apply: &F,
    got_response: &mut bool,
) -> Result<(), StreamError>
where
    F: Fn(ConfigSpec) -> Result<String, String> + Send + Sync,
{
    let authorization = opts.token_file.as_deref().map(bearer).transpose()?;
    let channel = endpoint(opts).await?.connect().await?;
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    // The receiver is alive until the stream call ends, so this cannot fail.
    let _ = tx.send(subscription.initial_request()).await;
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
    tracing::info!(url = %meshgate_filters::redact::redact_url(&opts.url), node = %opts.node_id, service = %opts.service, "xds stream open");
    while let Some(response) = inbound.message().await? {
        *got_response = true;
        let (request, outcome) = subscription.on_response(&response, apply);
        match outcome {
            Outcome::Acked { version } => tracing::info!(%version, "xds config applied (ACK)"),
            Outcome::Nacked { version, error } => {
                tracing::warn!(%version, %error, "xds config rejected (NACK)")
            }
        }
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
    fn backoff_grows_caps_and_jitters_within_upper_half() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let big = b.delay(40);
            assert!(big >= Duration::from_secs(1) && big <= Duration::from_secs(2));
        }
    }

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
        let mut opts = ClientOptions::new("http://127.0.0.1:1", "n1", "orders");
        opts.labels.insert("zone".into(), "a".into());
        let node = opts.node();
        assert_eq!(node.id, "n1");
        assert_eq!(node.cluster, "orders");
        assert_eq!(crate::resource::node_labels(&node), opts.labels);
        assert!(crate::resource::node_agent_version(&node).starts_with("meshgate/"));
    }
}
