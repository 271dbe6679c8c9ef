//! The server side of state-of-the-world ACK/NACK for one stream, free of I/O.
//!
//! A response is sent only when the desired version differs from what the
//! stream was last sent (or reported having), and never for a version this
//! stream has NACKed: a NACKed version is retried only as a new version or on
//! a new stream (reconnect), so a bad config is not pushed in a loop.

use std::collections::HashSet;

use meshgate_xds::pb::DiscoveryRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// First request of a stream; `version` is what the sidecar already runs.
    Initial {
        version: Option<String>,
    },
    Ack {
        version: String,
    },
    /// `kept` is the version the sidecar still runs.
    Nack {
        version: String,
        kept: String,
        error: String,
    },
    /// A request for a response superseded by a newer one: ignored.
    Stale,
}

#[derive(Debug, Default)]
pub struct StreamState {
    sent: Option<(String, String)>,
    acked: Option<String>,
    nacked: HashSet<String>,
    next_nonce: u64,
}

impl StreamState {
    pub fn acked(&self) -> Option<&str> {
        self.acked.as_deref()
    }

    pub fn on_request(&mut self, request: &DiscoveryRequest) -> RequestKind {
        if request.response_nonce.is_empty() {
            let version = (!request.version_info.is_empty()).then(|| request.version_info.clone());
            if self.sent.is_none() {
                self.acked = version.clone();
            }
            return RequestKind::Initial { version };
        }
        let Some((sent_version, sent_nonce)) = &self.sent else {
            return RequestKind::Stale;
        };
        if *sent_nonce != request.response_nonce {
            return RequestKind::Stale;
        }
        match &request.error_detail {
            Some(status) => {
                let version = sent_version.clone();
                self.nacked.insert(version.clone());
                // The sidecar still runs what it last accepted.
                self.sent = None;
                RequestKind::Nack {
                    version,
                    kept: request.version_info.clone(),
                    error: status.message.clone(),
                }
            }
            None => {
                self.acked = Some(request.version_info.clone());
                RequestKind::Ack {
                    version: request.version_info.clone(),
                }
            }
        }
    }

    /// Whether to send `desired` now; if so, returns the nonce to send it with.
    pub fn next_push(&mut self, desired: Option<&str>) -> Option<String> {
        let desired = desired?;
        let current = match &self.sent {
            Some((version, _)) => Some(version.as_str()),
            None => self.acked.as_deref(),
        };
        if current == Some(desired) || self.nacked.contains(desired) {
            return None;
        }
        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        self.sent = Some((desired.to_string(), nonce.clone()));
        Some(nonce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_xds::pb::Status;

    fn ack(version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(kept: &str, nonce: &str, msg: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: msg.into(),
                details: vec![],
            }),
            ..ack(kept, nonce)
        }
    }

    #[test]
    fn push_ack_then_nothing_until_new_version() {
        let mut s = StreamState::default();
        assert_eq!(
            s.on_request(&ack("", "")),
            RequestKind::Initial { version: None }
        );
        assert_eq!(s.next_push(None), None);
        let n1 = s.next_push(Some("v1")).expect("push v1");
        assert_eq!(s.next_push(Some("v1")), None, "no duplicate while pending");
        assert_eq!(
            s.on_request(&ack("v1", &n1)),
            RequestKind::Ack {
                version: "v1".into()
            }
        );
        assert_eq!(s.acked(), Some("v1"));
        assert_eq!(s.next_push(Some("v1")), None);
        assert!(s.next_push(Some("v2")).is_some());
    }

    #[test]
    fn nacked_version_is_not_resent_on_the_same_stream() {
        let mut s = StreamState::default();
        s.on_request(&ack("", ""));
        let n1 = s.next_push(Some("v1")).expect("push v1");
        s.on_request(&ack("v1", &n1));
        let n2 = s.next_push(Some("v2")).expect("push v2");
        let kind = s.on_request(&nack("v1", &n2, "inbound.tls.cert: missing"));
        assert_eq!(
            kind,
            RequestKind::Nack {
                version: "v2".into(),
                kept: "v1".into(),
                error: "inbound.tls.cert: missing".into()
            }
        );
        assert_eq!(s.acked(), Some("v1"));
        assert_eq!(s.next_push(Some("v2")), None, "no NACK loop");
        assert_eq!(s.next_push(Some("v1")), None, "it still runs v1");
        // A rollback to v1 (as a new version v3) or abort to v1 is sent.
        assert!(s.next_push(Some("v3")).is_some());
        let n4 = s.next_push(Some("v1")).expect("v1 differs from pending v3");
        assert_eq!(
            s.next_push(Some("v2")),
            None,
            "still NACKed after moving on"
        );
        s.on_request(&ack("v1", &n4));
        assert_eq!(s.acked(), Some("v1"));
    }

    #[test]
    fn stale_nonces_are_ignored() {
        let mut s = StreamState::default();
        s.on_request(&ack("", ""));
        let n1 = s.next_push(Some("v1")).expect("push");
        let _n2 = s.next_push(Some("v2")).expect("push");
        assert_eq!(s.on_request(&ack("v1", &n1)), RequestKind::Stale);
        assert_eq!(s.on_request(&nack("", &n1, "x")), RequestKind::Stale);
        assert_eq!(s.acked(), None);
        assert_eq!(s.on_request(&ack("v1", "999")), RequestKind::Stale);
    }

    #[test]
    fn reconnect_with_current_version_needs_no_resend() {
        let mut s = StreamState::default();
        s.on_request(&ack("v3", ""));
        assert_eq!(s.acked(), Some("v3"));
        assert_eq!(s.next_push(Some("v3")), None);
        assert!(s.next_push(Some("v4")).is_some());
    }
}
