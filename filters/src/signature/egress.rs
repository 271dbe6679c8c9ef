//! Config of the egress listener: the app's outbound calls to known hosts are
//! signed on its behalf (RFC 9421) and sent to the destination's upstream.
//!
//! ```yaml
//! egress:
//!   listen: 127.0.0.1:15001
//!   destinations:
//!     - host: wallet.internal
//!       upstream: 127.0.0.1:15006
//!       key: { id: orders, alg: ed25519, private_key_file: keys/orders.pem }
//!       components: ["@method", "@authority", "@path", "@query", "content-digest"]
//! ```

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keys::KeySpec;
use super::sign::Signer;
use super::validate_components;
use crate::config::{loopback_listen, FieldErrors, ValidateCx};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub destinations: Vec<DestinationSpec>,
    /// Largest outbound body buffered for signing; larger is 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time from sending to the destination's response head; beyond it 504.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// Host the app calls (the `Host` header, without port; an IPv6
    /// literal with or without brackets).
    pub host: String,
    /// `host:port` the signed request is sent to (usually the destination
    /// pod's sidecar inbound).
    pub upstream: String,
    pub key: KeySpec,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default = "default_label")]
    pub label: String,
    /// Add a random nonce (the receiving side usually requires one).
    #[serde(default = "yes")]
    pub nonce: bool,
}

fn default_listen() -> String {
    "127.0.0.1:15001".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_components() -> Vec<String> {
    ["@method", "@authority", "@path", "@query", "content-digest"]
        .map(String::from)
        .to_vec()
}
fn default_label() -> String {
    "sig1".into()
}
fn yes() -> bool {
    true
}

/// Validated egress settings.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    pub listen: SocketAddr,
    pub destinations: Vec<Destination>,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Destination {
    /// Lowercase host without port.
    pub host: String,
    pub upstream: String,
    pub signer: Signer,
}

impl EgressSpec {
    /// Validates every field. Without read files (control plane) destinations
    /// whose keys live in files carry no signer and are left out.
    pub fn validate(&self, path: &str, cx: &ValidateCx) -> Result<EgressConfig, FieldErrors> {
        let mut errors = FieldErrors::default();
        // Anyone who reaches egress gets requests signed with the pod's keys.
        let listen = loopback_listen(&self.listen, &format!("{path}.listen"), &mut errors)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        if self.timeout.is_zero() {
            errors.push(format!("{path}.timeout"), "must be greater than zero");
        }
        if self.connect_timeout.is_zero() {
            errors.push(
                format!("{path}.connect_timeout"),
                "must be greater than zero",
            );
        }
        let mut destinations = Vec::new();
        let mut hosts = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            let dpath = format!("{path}.destinations[{i}]");
            let host = destination_host(&d.host);
            if host.is_empty()
                || (host.contains([':', '/', ' ']) && host.parse::<Ipv6Addr>().is_err())
            {
                errors.push(format!("{dpath}.host"), "expected a host name without port");
            } else if !hosts.insert(host.clone()) {
                errors.push(format!("{dpath}.host"), format!("{host} is listed twice"));
            }
            match d
                .upstream
                .rsplit_once(':')
                .map(|(h, p)| (h, p.parse::<u16>()))
            {
                Some((h, Ok(_))) if !h.is_empty() => {}
                _ => errors.push(format!("{dpath}.upstream"), "expected host:port"),
            }
            let components =
                validate_components(&d.components, &format!("{dpath}.components"), &mut errors);
            if components.iter().any(|c| c.params.contains_key("req")) {
                errors.push(format!("{dpath}.components"), ";req is for responses");
            }
            if sfv::KeyRef::from_str(&d.label).is_err() {
                errors.push(format!("{dpath}.label"), "not a valid dictionary key");
            }
            if let Some(key) = d
                .key
                .validate(&format!("{dpath}.key"), true, cx, &mut errors)
            {
                let mut signer = Signer::new(key, components);
                signer.label = d.label.clone();
                signer.nonce = d.nonce;
                destinations.push(Destination {
                    host,
                    upstream: d.upstream.clone(),
                    signer,
                });
            }
        }
        errors.into_result(EgressConfig {
            listen,
            destinations,
            max_body_bytes: self.max_body_bytes,
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
        })
    }

    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for d in &mut copy.destinations {
            d.key = d.key.redacted();
        }
        copy
    }
}

/// A destination host as requests are matched against it: lowercase, an
/// IPv6 literal without its brackets (`[::1]` and `::1` name the same host).
fn destination_host(raw: &str) -> String {
    let host = raw.trim().to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) if v6.parse::<Ipv6Addr>().is_ok() => v6.to_string(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_destinations_and_redacts_keys() {
        let spec: EgressSpec = serde_json::from_value(serde_json::json!({
            "destinations": [
                {"host": "wallet.internal", "upstream": "127.0.0.1:15006",
                 "key": {"id": "orders", "alg": "hmac-sha256",
                         "secret_base64": "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE="}},
                {"host": "bad:80", "upstream": "nowhere",
                 "key": {"id": "x", "alg": "ed25519", "public_key_pem": "x"}}
            ]
        }))
        .expect("spec");
        let errs = spec
            .validate("egress", &ValidateCx::control_plane())
            .expect_err("invalid");
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "egress.destinations[1].host",
                "egress.destinations[1].upstream",
                "egress.destinations[1].key.public_key_pem"
            ]
        );
        let dumped = serde_json::to_string(&spec.redacted()).expect("json");
        assert!(!dumped.contains("c2VjcmV0"));

        let good = EgressSpec {
            destinations: spec.destinations[..1].to_vec(),
            ..serde_json::from_str("{}").expect("defaults")
        };
        let config = good
            .validate("egress", &ValidateCx::control_plane())
            .expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:15001");
        assert_eq!(config.destinations[0].host, "wallet.internal");
        assert_eq!(destination_host("[::1]"), "::1");
        assert_eq!(destination_host("::1"), "::1");
        assert_eq!(destination_host(" Wallet.Internal "), "wallet.internal");
    }

    #[test]
    fn egress_listens_on_loopback_only() {
        for (listen, ok) in [
            ("127.0.0.1:15001", true),
            ("127.0.0.2:15001", true),
            ("[::1]:15001", true),
            ("localhost:15001", true),
            ("0.0.0.0:15001", false),
            ("[::]:15001", false),
            ("10.0.0.7:15001", false),
            ("[::ffff:10.0.0.7]:15001", false),
            ("egress.internal:15001", false),
            ("localhost", false),
        ] {
            let spec: EgressSpec =
                serde_json::from_value(serde_json::json!({ "listen": listen })).expect("spec");
            match spec.validate("egress", &ValidateCx::control_plane()) {
                Ok(config) => {
                    assert!(ok, "{listen} accepted");
                    assert!(config.listen.ip().is_loopback());
                }
                Err(errs) => {
                    assert!(!ok, "{listen} rejected: {errs}");
                    assert_eq!(errs.0[0].path, "egress.listen");
                }
            }
        }
    }
}
