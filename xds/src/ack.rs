//! The client side of state-of-the-world xDS ACK/NACK, free of I/O.
//!
//! As the xDS protocol specifies: the first request on a stream carries the
//! last accepted `version_info` (empty if none) and no nonce. Each response is
//! answered by one request carrying its `nonce` as `response_nonce`; an ACK
//! echoes the response's `version_info`, a NACK keeps the previously accepted
//! version and carries `error_detail`.

use crate::config::ConfigSpec;
use crate::pb::{DiscoveryRequest, DiscoveryResponse, Node, Status};
use crate::resource::{decode, SIDECAR_CONFIG_TYPE_URL};

/// gRPC `INVALID_ARGUMENT`, the code a NACK's `error_detail` carries.
const INVALID_ARGUMENT: i32 = 3;

/// What happened to one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acked { version: String },
    Nacked { version: String, error: String },
}

/// Subscription state of one sidecar; survives reconnects.
#[derive(Debug, Clone)]
pub struct Subscription {
    node: Node,
    service: String,
    accepted_version: String,
}

impl Subscription {
    /// `accepted_version`: the version already applied (e.g. booted from the
    /// state dir), so the server need not resend it.
    pub fn new(node: Node, service: String, accepted_version: Option<String>) -> Self {
        Subscription {
            node,
            service,
            accepted_version: accepted_version.unwrap_or_default(),
        }
    }

    pub fn accepted_version(&self) -> &str {
        &self.accepted_version
    }

    /// The first request of a stream: node identity, subscription, last accepted version.
    pub fn initial_request(&self) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.accepted_version.clone(),
            node: Some(self.node.clone()),
            resource_names: vec![self.service.clone()],
            type_url: SIDECAR_CONFIG_TYPE_URL.to_string(),
            ..Default::default()
        }
    }

    /// Hands the response's config to `apply` and builds the ACK or NACK.
    pub fn on_response(
        &mut self,
        response: &DiscoveryResponse,
        apply: impl FnOnce(ConfigSpec) -> Result<String, String>,
    ) -> (DiscoveryRequest, Outcome) {
        let result = self.extract(response).and_then(apply);
        let mut request = DiscoveryRequest {
            resource_names: vec![self.service.clone()],
            type_url: SIDECAR_CONFIG_TYPE_URL.to_string(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        match result {
            Ok(_) => {
                self.accepted_version = response.version_info.clone();
                request.version_info = self.accepted_version.clone();
                let outcome = Outcome::Acked {
                    version: self.accepted_version.clone(),
                };
                (request, outcome)
            }
            Err(error) => {
                request.version_info = self.accepted_version.clone();
                request.error_detail = Some(Status {
                    code: INVALID_ARGUMENT,
                    message: error.clone(),
                    details: vec![],
                });
                let outcome = Outcome::Nacked {
                    version: response.version_info.clone(),
                    error,
                };
                (request, outcome)
            }
        }
    }

    fn extract(&self, response: &DiscoveryResponse) -> Result<ConfigSpec, String> {
        if response.type_url != SIDECAR_CONFIG_TYPE_URL {
            return Err(format!(
                "unexpected type_url {:?}, subscribed to {SIDECAR_CONFIG_TYPE_URL:?}",
                response.type_url
            ));
        }
        match response.resources.as_slice() {
            [one] => decode(one).map_err(|e| e.to_string()),
            other => Err(format!(
                "expected exactly one SidecarConfig resource, got {}",
                other.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::encode;

    fn response(version: &str, nonce: &str) -> DiscoveryResponse {
        let spec = ConfigSpec::default();
        DiscoveryResponse {
            version_info: version.into(),
            resources: vec![encode("orders", version, &spec).expect("encodes")],
            type_url: SIDECAR_CONFIG_TYPE_URL.into(),
            nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn subscription() -> Subscription {
        let node = Node {
            id: "n1".into(),
            cluster: "orders".into(),
            ..Default::default()
        };
        Subscription::new(node, "orders".into(), None)
    }

    #[test]
    fn initial_request_names_node_type_and_resource() {
        let s = subscription();
        let r = s.initial_request();
        assert_eq!(r.version_info, "");
        assert_eq!(r.response_nonce, "");
        assert_eq!(r.type_url, SIDECAR_CONFIG_TYPE_URL);
        assert_eq!(r.resource_names, vec!["orders".to_string()]);
        assert_eq!(r.node.as_ref().map(|n| n.id.as_str()), Some("n1"));
    }

    #[test]
    fn ack_echoes_version_and_nonce() {
        let mut s = subscription();
        let (req, outcome) = s.on_response(&response("v1", "1"), |spec| {
            assert_eq!(spec.version.as_deref(), Some("v1"));
            Ok("v1".into())
        });
        assert_eq!(req.version_info, "v1");
        assert_eq!(req.response_nonce, "1");
        assert!(req.error_detail.is_none());
        assert!(req.node.is_none(), "node is sent on the first request only");
        assert_eq!(
            outcome,
            Outcome::Acked {
                version: "v1".into()
            }
        );
        assert_eq!(s.initial_request().version_info, "v1");
    }

    #[test]
    fn nack_keeps_previous_version_and_carries_error() {
        let mut s = subscription();
        s.on_response(&response("v1", "1"), |_| Ok("v1".into()));
        let (req, outcome) = s.on_response(&response("v2", "2"), |_| {
            Err("inbound.tls.cert: cannot read x".into())
        });
        assert_eq!(req.version_info, "v1");
        assert_eq!(req.response_nonce, "2");
        let detail = req.error_detail.expect("NACK has error_detail");
        assert_eq!(detail.code, 3);
        assert!(detail.message.contains("inbound.tls.cert"));
        assert!(matches!(outcome, Outcome::Nacked { ref version, .. } if version == "v2"));
        assert_eq!(s.accepted_version(), "v1");
    }

    #[test]
    fn first_response_nack_has_empty_version() {
        let mut s = subscription();
        let (req, _) = s.on_response(&response("v1", "a"), |_| Err("bad".into()));
        assert_eq!(req.version_info, "");
        assert!(req.error_detail.is_some());
    }

    #[test]
    fn malformed_responses_are_nacked_without_calling_apply() {
        let mut s = subscription();
        let mut wrong_type = response("v1", "1");
        wrong_type.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        let (req, _) = s.on_response(&wrong_type, |_| panic!("must not apply"));
        assert!(req.error_detail.is_some());
        let mut two = response("v1", "2");
        two.resources.push(two.resources[0].clone());
        let (req, _) = s.on_response(&two, |_| panic!("must not apply"));
        assert!(req.error_detail.is_some());
        let mut garbage = response("v1", "3");
        garbage.resources[0].value = vec![0xff, 0xff, 0xff];
        let (req, _) = s.on_response(&garbage, |_| panic!("must not apply"));
        assert!(req.error_detail.is_some());
    }
}
