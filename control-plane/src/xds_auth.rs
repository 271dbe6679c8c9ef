//! Who may subscribe to which service over xDS.
//!
//! A service's config carries its secrets (HMAC keys, inline private keys),
//! so every ADS stream is bound to an identity before anything is sent:
//!
//! - a bearer token (`authorization: Bearer <token>` stream metadata), looked
//!   up in the `--xds-tokens` file, which maps each token to its services;
//! - a client certificate (mTLS with `--tls-client-ca`), whose one URI SAN
//!   `spiffe://<trust domain>/ns/<namespace>/sa/<service>` names the service.
//!
//! When both are configured both are required, and a stream may subscribe
//! only to services that every presented credential allows. Anything else is
//! refused: no credential or one that is not valid with UNAUTHENTICATED, a
//! valid credential for other services with PERMISSION_DENIED.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use x509_parser::extensions::GeneralName;

use crate::store::valid_service_name;

/// Why a stream was refused; the names are stable (logs, metrics, status messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No token, or no client certificate, where one is required.
    CredentialMissing,
    /// A token that is malformed or not in the token file.
    TokenInvalid,
    /// A client certificate without exactly one usable SPIFFE ID of the trust domain.
    CertificateIdentityInvalid,
    /// The node's service is not one the credential allows.
    ServiceNotAllowed,
    /// A request of the stream names a resource the credential does not allow.
    ResourceNotAllowed,
}

impl DenyReason {
    pub const ALL: [DenyReason; 5] = [
        DenyReason::CredentialMissing,
        DenyReason::TokenInvalid,
        DenyReason::CertificateIdentityInvalid,
        DenyReason::ServiceNotAllowed,
        DenyReason::ResourceNotAllowed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::CredentialMissing => "credential_missing",
            DenyReason::TokenInvalid => "token_invalid",
            DenyReason::CertificateIdentityInvalid => "certificate_identity_invalid",
            DenyReason::ServiceNotAllowed => "service_not_allowed",
            DenyReason::ResourceNotAllowed => "resource_not_allowed",
        }
    }

    pub fn code(self) -> Code {
        match self {
            DenyReason::CredentialMissing
            | DenyReason::TokenInvalid
            | DenyReason::CertificateIdentityInvalid => Code::Unauthenticated,
            DenyReason::ServiceNotAllowed | DenyReason::ResourceNotAllowed => {
                Code::PermissionDenied
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A refused stream: the reason and what the client is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: DenyReason,
    pub detail: String,
}

impl Denial {
    pub fn new(reason: DenyReason, detail: impl Into<String>) -> Self {
        Denial {
            reason,
            detail: detail.into(),
        }
    }

    /// The gRPC status: the message starts with the stable reason, which is
    /// also sent as the `meshgate-error` trailer for clients that match on it.
    pub fn status(&self) -> Status {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "meshgate-error",
            tonic::metadata::MetadataValue::from_static(self.reason.as_str()),
        );
        Status::with_metadata(
            self.reason.code(),
            format!("{}: {}", self.reason.as_str(), self.detail),
            metadata,
        )
    }
}

/// What an authenticated stream may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `--insecure-xds`: everything.
    Any,
    Services(BTreeSet<String>),
}

impl Grant {
    pub fn allows(&self, service: &str) -> bool {
        match self {
            Grant::Any => true,
            Grant::Services(s) => s.contains(service),
        }
    }

    fn intersect(self, other: BTreeSet<String>) -> Grant {
        match self {
            Grant::Any => Grant::Services(other),
            Grant::Services(s) => Grant::Services(s.intersection(&other).cloned().collect()),
        }
    }
}

/// The `--xds-tokens` file:
///
/// ```yaml
/// tokens:
///   - sha256: 5e884898...   # hex SHA-256 of the token (keeps the file free of secrets)
///     services: [wallet]
///   - token: a-long-random-string   # or the token itself
///     services: [orders, billing]
/// ```
//
// Optional fields checked by hand rather than a flattened enum: serde cannot
// combine `flatten` with `deny_unknown_fields`, and a misspelt key must fail.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileSpec {
    tokens: Vec<TokenSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenSpec {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    services: Vec<String>,
}

/// Shortest accepted plaintext token: guessing must stay out of reach.
pub const MIN_TOKEN_LEN: usize = 16;
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug)]
struct TokenEntry {
    digest: [u8; 32],
    services: BTreeSet<String>,
}

/// Tokens by their SHA-256: a token is hashed once and compared in constant
/// time against every entry, so neither the file nor the timing gives it away.
#[derive(Debug)]
pub struct TokenTable {
    entries: Vec<TokenEntry>,
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Hex SHA-256 of a token, as written in the token file's `sha256:`.
pub fn token_sha256_hex(token: &str) -> String {
    hex::encode(sha256(token.as_bytes()))
}

fn valid_token(token: &str) -> bool {
    (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_graphic())
}

impl TokenTable {
    /// Parses and validates a token file (YAML or JSON); every error names its field path.
    pub fn parse(text: &str) -> Result<TokenTable, Vec<String>> {
        let de = serde_yaml::Deserializer::from_str(text);
        let spec: TokenFileSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { "(root)".into() } else { path };
            vec![format!("{path}: {}", e.inner())]
        })?;
        let mut errors = Vec::new();
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (i, t) in spec.tokens.iter().enumerate() {
            let at = format!("tokens[{i}]");
            let digest = match (&t.token, &t.sha256) {
                (Some(token), None) if valid_token(token) => Some(sha256(token.as_bytes())),
                (Some(_), None) => {
                    errors.push(format!(
                        "{at}.token: use {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} visible ASCII characters"
                    ));
                    None
                }
                (None, Some(hex_digest)) => {
                    match hex::decode(hex_digest.trim())
                        .ok()
                        .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    {
                        Some(d) => Some(d),
                        None => {
                            errors
                                .push(format!("{at}.sha256: not a SHA-256 in hex (64 hex digits)"));
                            None
                        }
                    }
                }
                _ => {
                    errors.push(format!("{at}: set exactly one of token, sha256"));
                    None
                }
            };
            if t.services.is_empty() {
                errors.push(format!("{at}.services: list at least one service"));
            }
            let mut services = BTreeSet::new();
            for (j, s) in t.services.iter().enumerate() {
                if !valid_service_name(s) {
                    errors.push(format!(
                        "{at}.services[{j}]: invalid service name {s:?}: use letters, digits, '-', '_', '.'"
                    ));
                } else if !services.insert(s.clone()) {
                    errors.push(format!("{at}.services[{j}]: {s:?} is listed twice"));
                }
            }
            if let Some(digest) = digest {
                if let Some(k) = entries.iter().position(|e| e.digest == digest) {
                    errors.push(format!("{at}: the same token as tokens[{k}]"));
                }
                entries.push(TokenEntry { digest, services });
            }
        }
        if entries.is_empty() && errors.is_empty() {
            errors.push("tokens: list at least one token".into());
        }
        if errors.is_empty() {
            Ok(TokenTable { entries })
        } else {
            Err(errors)
        }
    }

    pub fn load(path: &Path) -> Result<TokenTable, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("reading {}: {e}", path.display())])?;
        Self::parse(&text)
    }

    /// The services of `token`, or `None` when it is not in the table.
    pub fn lookup(&self, token: &str) -> Option<&BTreeSet<String>> {
        let digest = sha256(token.as_bytes());
        let mut found = None;
        // Every entry is compared; there is no early exit.
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(&entry.services);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The table as a token file of SHA-256 entries only (what etcd stores:
    /// the bindings without a token). Parses back to the same table.
    pub fn to_digest_yaml(&self) -> String {
        let mut out = String::from("tokens:\n");
        for entry in &self.entries {
            let services: Vec<String> = entry.services.iter().map(|s| format!("{s:?}")).collect();
            out.push_str(&format!(
                "  - sha256: {}\n    services: [{}]\n",
                hex::encode(entry.digest),
                services.join(", ")
            ));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `domain` is a SPIFFE trust domain name (lowercase letters, digits, `.`, `-`, `_`).
pub fn valid_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 255
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// The service named by a SPIFFE ID `spiffe://<trust_domain>/ns/<ns>/sa/<service>`.
pub fn spiffe_id_service(id: &str, trust_domain: &str) -> Result<String, String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} does not start with spiffe://"))?;
    let (domain, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("SPIFFE ID {id:?} has no path"))?;
    if domain != trust_domain {
        return Err(format!(
            "SPIFFE ID {id:?} is not of the trust domain {trust_domain:?}"
        ));
    }
    if path.contains(['?', '#', '%']) {
        return Err(format!("SPIFFE ID {id:?} has a query, fragment or escape"));
    }
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["ns", ns, "sa", service]
            if !ns.is_empty() && *ns != "." && *ns != ".." && valid_service_name(service) =>
        {
            Ok((*service).to_string())
        }
        _ => Err(format!(
            "SPIFFE ID {id:?} is not spiffe://{trust_domain}/ns/NAMESPACE/sa/SERVICE"
        )),
    }
}

/// The service of a DER client certificate: from its one SPIFFE URI SAN.
pub fn certificate_service(der: &[u8], trust_domain: &str) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unparsable client certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("client certificate subjectAltName: {e}"))?
        .ok_or_else(|| "the client certificate has no subjectAltName".to_string())?;
    // Every URI that claims the scheme counts, whatever its case, so that a
    // second, differently spelt ID makes the certificate ambiguous, not ignored.
    let ids: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri)
                if uri
                    .get(..9)
                    .is_some_and(|s| s.eq_ignore_ascii_case("spiffe://")) =>
            {
                Some(*uri)
            }
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [] => Err("the client certificate has no spiffe:// URI SAN".into()),
        [id] => spiffe_id_service(id, trust_domain),
        _ => Err("the client certificate has more than one SPIFFE ID".into()),
    }
}

/// How streams are authenticated.
#[derive(Debug)]
pub enum XdsAuth {
    /// `--insecure-xds`: anyone gets any service.
    Insecure,
    Checked {
        tokens: Option<TokenTable>,
        /// Set when client certificates are required.
        spiffe_trust_domain: Option<String>,
    },
}

impl XdsAuth {
    /// Checked authentication; refuses a configuration that checks nothing.
    pub fn checked(
        tokens: Option<TokenTable>,
        spiffe_trust_domain: Option<String>,
    ) -> Result<XdsAuth, String> {
        if tokens.is_none() && spiffe_trust_domain.is_none() {
            return Err("no xDS credential is configured".into());
        }
        if let Some(d) = &spiffe_trust_domain {
            if !valid_trust_domain(d) {
                return Err(format!(
                    "--spiffe-trust-domain {d:?}: use lowercase letters, digits, '.', '-', '_'"
                ));
            }
        }
        Ok(XdsAuth::Checked {
            tokens,
            spiffe_trust_domain,
        })
    }

    /// The services the stream's credentials allow. `peer_certs` is the
    /// verified client chain (leaf first) when the connection is mTLS.
    pub fn authenticate<C: AsRef<[u8]>>(
        &self,
        metadata: &MetadataMap,
        peer_certs: Option<&[C]>,
    ) -> Result<Grant, Denial> {
        let XdsAuth::Checked {
            tokens,
            spiffe_trust_domain,
        } = self
        else {
            return Ok(Grant::Any);
        };
        let mut grant = Grant::Any;
        if let Some(table) = tokens {
            let services = bearer_services(table, metadata)?;
            grant = grant.intersect(services.clone());
        }
        if let Some(domain) = spiffe_trust_domain {
            let leaf = peer_certs.and_then(<[C]>::first).ok_or_else(|| {
                Denial::new(DenyReason::CredentialMissing, "no client certificate")
            })?;
            let service = certificate_service(leaf.as_ref(), domain)
                .map_err(|e| Denial::new(DenyReason::CertificateIdentityInvalid, e))?;
            grant = grant.intersect(BTreeSet::from([service]));
        }
        Ok(grant)
    }
}

fn bearer_services<'a>(
    table: &'a TokenTable,
    metadata: &MetadataMap,
) -> Result<&'a BTreeSet<String>, Denial> {
    let mut values = metadata.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        let none = metadata.get("authorization").is_none();
        return Err(if none {
            Denial::new(
                DenyReason::CredentialMissing,
                "no authorization: Bearer <token> metadata",
            )
        } else {
            Denial::new(
                DenyReason::TokenInvalid,
                "more than one authorization value",
            )
        });
    };
    let invalid = || Denial::new(DenyReason::TokenInvalid, "the xDS token is not valid");
    let value = value.to_str().map_err(|_| invalid())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Denial::new(
            DenyReason::TokenInvalid,
            "authorization is not a Bearer token",
        ));
    }
    table.lookup(token.trim()).ok_or_else(invalid)
}

/// `meshgate_cp_xds_denied_total{reason}`.
#[derive(Debug, Default)]
pub struct XdsDenials {
    counts: [AtomicU64; DenyReason::ALL.len()],
}

impl XdsDenials {
    pub fn record(&self, reason: DenyReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: DenyReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of the counter, every reason listed.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        out.push_str("# HELP meshgate_cp_xds_denied_total xDS streams refused, by reason.\n");
        out.push_str("# TYPE meshgate_cp_xds_denied_total counter\n");
        for reason in DenyReason::ALL {
            let _ = writeln!(
                out,
                "meshgate_cp_xds_denied_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                self.get(reason)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    const TOKEN_A: &str = "token-for-orders-0123456789";
    const TOKEN_B: &str = "token-for-billing-0123456789";

    fn table() -> TokenTable {
        TokenTable::parse(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    services: [orders]\n  - sha256: {}\n    services: [billing, audit]\n",
            token_sha256_hex(TOKEN_B)
        ))
        .expect("valid table")
    }

    fn bearer(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
        );
        m
    }

    fn services(names: &[&str]) -> Grant {
        Grant::Services(names.iter().map(|s| s.to_string()).collect())
    }

    const NO_CERTS: Option<&[Vec<u8>]> = None;

    #[test]
    fn tokens_map_to_their_services_plain_or_hashed() {
        let auth = XdsAuth::checked(Some(table()), None).expect("auth");
        assert_eq!(
            auth.authenticate(&bearer(TOKEN_A), NO_CERTS),
            Ok(services(&["orders"]))
        );
        let b = auth
            .authenticate(&bearer(TOKEN_B), NO_CERTS)
            .expect("hashed token");
        assert!(b.allows("billing") && b.allows("audit") && !b.allows("orders"));
        let mut lower = MetadataMap::new();
        lower.insert(
            "authorization",
            MetadataValue::try_from(format!("bearer {TOKEN_A}")).expect("ascii"),
        );
        assert!(auth.authenticate(&lower, NO_CERTS).is_ok());
    }

    #[test]
    fn missing_wrong_or_odd_tokens_are_unauthenticated() {
        let auth = XdsAuth::checked(Some(table()), None).expect("auth");
        let deny = |m: &MetadataMap| auth.authenticate(m, NO_CERTS).expect_err("denied");
        assert_eq!(
            deny(&MetadataMap::new()).reason,
            DenyReason::CredentialMissing
        );
        assert_eq!(
            deny(&bearer("token-for-orders-012345678")).reason,
            DenyReason::TokenInvalid
        );
        assert_eq!(
            deny(&bearer(&token_sha256_hex(TOKEN_B))).reason,
            DenyReason::TokenInvalid,
            "the stored hash is not itself a token"
        );
        let mut basic = MetadataMap::new();
        basic.insert(
            "authorization",
            MetadataValue::from_static("Basic b3JkZXJzOng="),
        );
        assert_eq!(deny(&basic).reason, DenyReason::TokenInvalid);
        let mut two = bearer(TOKEN_B);
        two.append(
            "authorization",
            MetadataValue::try_from(format!("Bearer {TOKEN_A}")).expect("ascii"),
        );
        assert_eq!(deny(&two).reason, DenyReason::TokenInvalid);
        let status = deny(&MetadataMap::new()).status();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().starts_with("credential_missing: "));
        assert_eq!(
            status
                .metadata()
                .get("meshgate-error")
                .map(|v| v.to_str().ok()),
            Some(Some("credential_missing"))
        );
    }

    #[test]
    fn digest_yaml_holds_no_token_and_parses_to_the_same_bindings() {
        let table = TokenTable::parse(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    services: [orders, billing]\n"
        ))
        .expect("valid");
        let yaml = table.to_digest_yaml();
        assert!(!yaml.contains(TOKEN_A), "{yaml}");
        let back = TokenTable::parse(&yaml).expect("round trip");
        assert_eq!(back.lookup(TOKEN_A), table.lookup(TOKEN_A));
        assert!(back.lookup("some-other-token-xyz").is_none());
    }

    #[test]
    fn token_file_errors_name_their_field() {
        let err = |text: &str| TokenTable::parse(text).expect_err("invalid").join("\n");
        assert!(err("tokens:\n  - token: short\n    services: [a]\n").contains("tokens[0].token"));
        assert!(err("tokens:\n  - sha256: abc\n    services: [a]\n").contains("tokens[0].sha256"));
        assert!(err(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    sha256: {}\n    services: [a]\n",
            token_sha256_hex(TOKEN_A)
        ))
        .contains("tokens[0]: set exactly one"));
        assert!(err("tokens:\n  - services: [a]\n").contains("tokens[0]: set exactly one"));
        assert!(err(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    services: []\n"
        ))
        .contains("tokens[0].services: list at least one"));
        assert!(err(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    services: [ok, \"a/b\"]\n"
        ))
        .contains("tokens[0].services[1]"));
        assert!(err(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    services: [a]\n  - sha256: {}\n    services: [b]\n",
            token_sha256_hex(TOKEN_A)
        ))
        .contains("tokens[1]: the same token as tokens[0]"));
        assert!(err(&format!(
            "tokens:\n  - token: {TOKEN_A}\n    service: [a]\n"
        ))
        .contains("tokens[0]"));
        assert!(err("tokens: []\n").contains("at least one token"));
        // JSON is accepted too.
        let json = format!(r#"{{"tokens": [{{"token": "{TOKEN_A}", "services": ["a"]}}]}}"#);
        assert_eq!(TokenTable::parse(&json).expect("json").len(), 1);
    }

    #[test]
    fn checked_auth_needs_a_credential_kind_and_a_valid_trust_domain() {
        assert!(XdsAuth::checked(None, None).is_err());
        assert!(XdsAuth::checked(None, Some("Mesh.Test".into())).is_err());
        assert!(XdsAuth::checked(None, Some("mesh.test".into())).is_ok());
        assert_eq!(
            XdsAuth::Insecure.authenticate(&MetadataMap::new(), NO_CERTS),
            Ok(Grant::Any)
        );
    }

    #[test]
    fn spiffe_ids_name_one_service_of_the_trust_domain() {
        let ok = |id: &str| spiffe_id_service(id, "mesh.test");
        assert_eq!(
            ok("spiffe://mesh.test/ns/prod/sa/orders"),
            Ok("orders".into())
        );
        for bad in [
            "spiffe://other.test/ns/prod/sa/orders",
            "spiffe://mesh.test.evil/ns/prod/sa/orders",
            "spiffe://mesh.test",
            "spiffe://mesh.test/ns/prod/sa/orders/x",
            "spiffe://mesh.test/ns//sa/orders",
            "spiffe://mesh.test/ns/../sa/orders",
            "spiffe://mesh.test/sa/orders",
            "spiffe://mesh.test/ns/prod/sa/",
            "spiffe://mesh.test/ns/prod/sa/ord%65rs",
            "spiffe://mesh.test/ns/prod/sa/orders?x=1",
            "SPIFFE://mesh.test/ns/prod/sa/orders",
            "spiffe://user@mesh.test/ns/prod/sa/orders",
        ] {
            assert!(ok(bad).is_err(), "{bad} accepted");
        }
    }

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().expect("ia5"))
    }

    #[test]
    fn certificates_need_exactly_one_spiffe_uri_san() {
        let auth = XdsAuth::checked(None, Some("mesh.test".into())).expect("auth");
        let check = |der: Vec<u8>| auth.authenticate(&MetadataMap::new(), Some(&[der][..]));
        assert_eq!(
            check(cert_with(vec![
                rcgen::SanType::DnsName("orders.example".try_into().expect("dns")),
                uri("spiffe://mesh.test/ns/prod/sa/orders"),
            ])),
            Ok(services(&["orders"]))
        );
        for sans in [
            vec![],
            vec![rcgen::SanType::DnsName(
                "orders.meshgate.internal".try_into().expect("dns"),
            )],
            vec![uri("https://mesh.test/ns/prod/sa/orders")],
            vec![uri("spiffe://other.test/ns/prod/sa/orders")],
            vec![
                uri("spiffe://mesh.test/ns/prod/sa/orders"),
                uri("Spiffe://mesh.test/ns/prod/sa/billing"),
            ],
        ] {
            let denial = check(cert_with(sans)).expect_err("refused");
            assert_eq!(
                denial.reason,
                DenyReason::CertificateIdentityInvalid,
                "{denial:?}"
            );
        }
        assert_eq!(
            check(b"not a certificate".to_vec())
                .expect_err("refused")
                .reason,
            DenyReason::CertificateIdentityInvalid
        );
        let none: Option<&[Vec<u8>]> = Some(&[]);
        assert_eq!(
            auth.authenticate(&MetadataMap::new(), none)
                .expect_err("refused")
                .reason,
            DenyReason::CredentialMissing
        );
    }

    #[test]
    fn both_kinds_configured_need_both_and_intersect() {
        let auth = XdsAuth::checked(Some(table()), Some("mesh.test".into())).expect("auth");
        let billing = cert_with(vec![uri("spiffe://mesh.test/ns/prod/sa/billing")]);
        let certs = [billing];
        assert_eq!(
            auth.authenticate(&bearer(TOKEN_B), Some(&certs[..])),
            Ok(services(&["billing"]))
        );
        assert_eq!(
            auth.authenticate(&bearer(TOKEN_A), Some(&certs[..])),
            Ok(services(&[])),
            "a token for orders and a certificate for billing allow nothing"
        );
        assert_eq!(
            auth.authenticate(&MetadataMap::new(), Some(&certs[..]))
                .expect_err("token required")
                .reason,
            DenyReason::CredentialMissing
        );
    }

    #[test]
    fn denials_are_counted_per_reason() {
        let d = XdsDenials::default();
        d.record(DenyReason::TokenInvalid);
        d.record(DenyReason::TokenInvalid);
        d.record(DenyReason::ResourceNotAllowed);
        let mut text = String::new();
        d.render(&mut text);
        assert!(text.contains("meshgate_cp_xds_denied_total{reason=\"token_invalid\"} 2\n"));
        assert!(text.contains("meshgate_cp_xds_denied_total{reason=\"resource_not_allowed\"} 1\n"));
        assert!(text.contains("meshgate_cp_xds_denied_total{reason=\"credential_missing\"} 0\n"));
        assert_eq!(DenyReason::ServiceNotAllowed.code(), Code::PermissionDenied);
    }
}
