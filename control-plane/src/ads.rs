//! The ADS gRPC service: one task per sidecar stream pushes the version the
//! rollout wants for that sidecar and records its ACKs and NACKs.
//!
//! Every stream is authenticated first (`xds_auth`), and the service it names
//! and every resource name of every request on it must be allowed by its
//! credentials; otherwise the stream ends with UNAUTHENTICATED or
//! PERMISSION_DENIED, logged and counted, before anything is sent.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use meshgate_xds::pb::{
    AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
    DiscoveryResponse,
};
use meshgate_xds::resource::{node_agent_version, node_labels, SIDECAR_CONFIG_TYPE_URL};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::store::now_secs;
use crate::stream_state::{RequestKind, StreamState};
use crate::xds_auth::{Denial, DenyReason, Grant, XdsAuth};
use crate::{ControlPlane, NackInfo};

pub struct Ads {
    cp: Arc<ControlPlane>,
    identifier: String,
    auth: Arc<XdsAuth>,
}

impl Ads {
    pub fn new(cp: Arc<ControlPlane>, auth: Arc<XdsAuth>) -> Self {
        Ads {
            cp,
            identifier: format!("meshgate-cp/{}", env!("CARGO_PKG_VERSION")),
            auth,
        }
    }
}

/// Logs and counts a refused stream; returns the status to end it with.
fn deny(
    cp: &ControlPlane,
    denial: &Denial,
    peer: Option<&str>,
    node: Option<&str>,
    service: Option<&str>,
) -> Status {
    cp.xds_denials.record(denial.reason);
    // Node and service come from the client: Debug-formatted so they cannot forge log lines.
    tracing::warn!(
        reason = denial.reason.as_str(),
        code = ?denial.reason.code(),
        peer = ?peer,
        node = ?node,
        service = ?service,
        detail = %denial.detail,
        "xDS stream denied"
    );
    denial.status()
}

/// The first resource name `request` asks for that `grant` does not allow.
fn disallowed_resource<'a>(grant: &Grant, request: &'a DiscoveryRequest) -> Option<&'a str> {
    request
        .resource_names
        .iter()
        .find(|name| !grant.allows(name))
        .map(String::as_str)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> ResponseStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr().map(|a| a.to_string());
        let peer_certs = request.peer_certs();
        let grant = self
            .auth
            .authenticate(request.metadata(), peer_certs.as_deref().map(Vec::as_slice))
            .map_err(|denial| deny(&self.cp, &denial, peer.as_deref(), None, None))?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let cp = self.cp.clone();
        let identifier = self.identifier.clone();
        tokio::spawn(async move {
            if let Err(status) = serve_stream(cp, identifier, peer, grant, inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(receiver_stream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "meshgate-cp serves state-of-the-world ADS only",
        ))
    }
}

async fn serve_stream(
    cp: Arc<ControlPlane>,
    identifier: String,
    peer: Option<String>,
    grant: Grant,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    let node = first
        .node
        .clone()
        .ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
    if node.id.is_empty() {
        return Err(Status::invalid_argument("node.id is empty"));
    }
    if !first.type_url.is_empty() && first.type_url != SIDECAR_CONFIG_TYPE_URL {
        return Err(Status::invalid_argument(format!(
            "unsupported type_url {:?}; this control plane serves {SIDECAR_CONFIG_TYPE_URL}",
            first.type_url
        )));
    }
    // The service is the node's cluster (xDS convention), else the subscribed resource name.
    let service = if node.cluster.is_empty() {
        first.resource_names.first().cloned().unwrap_or_default()
    } else {
        node.cluster.clone()
    };
    if service.is_empty() {
        return Err(Status::invalid_argument(
            "node.cluster (the service) is empty",
        ));
    }
    if !grant.allows(&service) {
        let denial = Denial::new(
            DenyReason::ServiceNotAllowed,
            format!("these credentials may not subscribe to service {service:?}"),
        );
        return Err(deny(
            &cp,
            &denial,
            peer.as_deref(),
            Some(&node.id),
            Some(&service),
        ));
    }
    if let Some(name) = disallowed_resource(&grant, &first) {
        let denial = Denial::new(
            DenyReason::ResourceNotAllowed,
            format!("these credentials may not subscribe to resource {name:?}"),
        );
        return Err(deny(
            &cp,
            &denial,
            peer.as_deref(),
            Some(&node.id),
            Some(&service),
        ));
    }
    let labels = node_labels(&node);
    let node_id = node.id.clone();
    let stream_id = cp.register(
        &node_id,
        &service,
        labels.clone(),
        node_agent_version(&node),
        peer.clone(),
    );
    tracing::info!(node = %node_id, %service, "sidecar connected");
    let mut state = StreamState::default();
    let result = async {
        let mut pending = Some(first);
        let mut changed = cp.subscribe();
        loop {
            if let Some(request) = pending.take() {
                // Later requests may name other resources: each is checked.
                if let Some(name) = disallowed_resource(&grant, &request) {
                    let denial = Denial::new(
                        DenyReason::ResourceNotAllowed,
                        format!("these credentials may not subscribe to resource {name:?}"),
                    );
                    return Err(deny(
                        &cp,
                        &denial,
                        peer.as_deref(),
                        Some(&node_id),
                        Some(&service),
                    ));
                }
                handle_request(&cp, &node_id, stream_id, &mut state, &request);
            }
            if let Some((version, resource)) = cp.desired(&service, &node_id, &labels) {
                if let Some(nonce) = state.next_push(Some(&version)) {
                    let response = DiscoveryResponse {
                        version_info: version.clone(),
                        resources: vec![(*resource).clone()],
                        type_url: SIDECAR_CONFIG_TYPE_URL.to_string(),
                        nonce,
                        control_plane: Some(
                            meshgate_xds::pb::envoy::config::core::v3::ControlPlane {
                                identifier: identifier.clone(),
                            },
                        ),
                        ..Default::default()
                    };
                    tracing::debug!(node = %node_id, %version, "pushing config");
                    if tx.send(Ok(response)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            tokio::select! {
                message = inbound.message() => match message? {
                    Some(request) => pending = Some(request),
                    None => return Ok(()),
                },
                changed_result = changed.changed() => if changed_result.is_err() { return Ok(()) },
                () = tx.closed() => return Ok(()),
            }
        }
    }
    .await;
    cp.unregister(&node_id, stream_id);
    tracing::info!(node = %node_id, %service, "sidecar disconnected");
    result
}

fn handle_request(
    cp: &ControlPlane,
    node_id: &str,
    stream_id: u64,
    state: &mut StreamState,
    request: &DiscoveryRequest,
) {
    if !request.type_url.is_empty() && request.type_url != SIDECAR_CONFIG_TYPE_URL {
        cp.update_sidecar(node_id, stream_id, |_| {});
        return;
    }
    match state.on_request(request) {
        RequestKind::Initial { version } => cp.update_sidecar(node_id, stream_id, |s| {
            s.last_acked_version = version;
        }),
        RequestKind::Ack { version } => {
            tracing::info!(node = %node_id, %version, "ACK");
            cp.update_sidecar(node_id, stream_id, |s| s.last_acked_version = Some(version));
        }
        RequestKind::Nack {
            version,
            kept,
            error,
        } => {
            tracing::warn!(node = %node_id, %version, %kept, %error, "NACK");
            cp.update_sidecar(node_id, stream_id, |s| {
                s.last_acked_version = (!kept.is_empty()).then_some(kept);
                s.last_nack = Some(NackInfo {
                    version,
                    error,
                    at: now_secs(),
                });
            });
        }
        RequestKind::Stale => cp.update_sidecar(node_id, stream_id, |_| {}),
    }
}
