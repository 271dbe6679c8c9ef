//! `type: signature`: verifies signed requests and optionally signs responses.
//!
//! ```yaml
//! filters:
//!   verify:
//!     type: signature
//!     scheme: rfc9421                # or alipay-rsa2
//!     keys:
//!       - { id: app-1, alg: hmac-sha256, secret_base64: "..." }
//!       - { id: app-2, alg: ed25519, public_key_file: keys/app-2.pem, client: app }
//!     required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
//!     max_age: 300s
//!     require_nonce: true
//!     replay_store: memory           # or redis
//!     forward_signature_headers: false
//!     sign_response: { key: {...}, components: ["@status", "content-digest"], bind_request: true }
//! ```
//!
//! RFC 9421 signatures are checked against the key named by `keyid`, with the
//! key's configured algorithm; `Content-Digest` (RFC 9530) against the
//! buffered body; the nonce once per key within the window. On success the
//! client id goes to the app as `x-meshgate-client-id`.

// `Rejection` is the framework's answer type; it is built only on the
// rejection path, so its size does not matter here.
#![allow(clippy::result_large_err)]

pub mod alipay;
pub mod base;
pub mod digest;
pub mod egress;
pub mod keys;
pub mod replay;
pub mod sign;
pub mod verify;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use sfv::{key_ref, string_ref, BareItem, Item, KeyRef, StringRef};

use crate::chain::BuildCx;
use crate::config::{FieldErrors, ValidateCx};
use crate::context::RequestCtx;
use crate::error::{Reason, Rejection};
use crate::filter::{Filter, RequestView, ResponseView};

pub use base::{Message, RequestParts};
pub use keys::{Algorithm, Key, KeySpec, SignError};
pub use replay::{MemoryNonces, NonceCheck, NonceStore};
pub use sign::Signer;
pub use verify::{Policy, VerifyKey};

use alipay::{AlipayConfig, AlipayParams, AlipaySpec};
use digest::{verify_content_digest, DigestError};

// The reasons this filter answers with (listed in `crate::error::REASONS`).
pub const SIGNATURE_MISSING: Reason = Reason::new("signature_missing", 401, 40101);
pub const SIGNATURE_INVALID: Reason = Reason::new("signature_invalid", 401, 40102);
pub const SIGNATURE_EXPIRED: Reason = Reason::new("signature_expired", 401, 40103);
pub const SIGNATURE_REPLAYED: Reason = Reason::new("signature_replayed", 401, 40104);
pub const UNKNOWN_KEY: Reason = Reason::new("unknown_key", 401, 40105);
pub const ALGORITHM_NOT_ALLOWED: Reason = Reason::new("algorithm_not_allowed", 401, 40106);
pub const COMPONENT_MISSING: Reason = Reason::new("component_missing", 401, 40107);
pub const DIGEST_MISMATCH: Reason = Reason::new("digest_mismatch", 401, 40108);
pub const SIGNATURE_MALFORMED: Reason = Reason::new("signature_malformed", 400, 40003);
pub const REPLAY_STORE_UNAVAILABLE: Reason = Reason::new("replay_store_unavailable", 503, 50303);
pub const NONCE_INVALID: Reason = Reason::new("nonce_invalid", 400, 40030);
pub const NONCE_LIMIT_REACHED: Reason = Reason::new("nonce_limit_reached", 429, 42930);
pub const UNSIGNED_BODY: Reason = Reason::new("unsigned_body", 415, 41501);
pub const PARAMETERS_AMBIGUOUS: Reason = Reason::new("parameters_ambiguous", 400, 40041);

/// Header that carries the verified client id to the app.
pub const CLIENT_ID_HEADER: &str = "x-meshgate-client-id";
const CLIENT_ID_HEADER_NAME: HeaderName = HeaderName::from_static(CLIENT_ID_HEADER);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// RFC 9421 HTTP Message Signatures.
    #[default]
    Rfc9421,
    /// Alipay open-platform RSA2 parameter signing.
    AlipayRsa2,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayStore {
    #[default]
    Memory,
    Redis,
}

/// The file/wire spec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignatureSpec {
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    #[serde(default = "default_required_components")]
    pub required_components: Vec<String>,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Tolerated clock difference for timestamps in the future.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
    #[serde(default = "yes")]
    pub require_nonce: bool,
    #[serde(default)]
    pub replay_store: ReplayStore,
    /// Bound of the in-memory nonce cache; when it is full of live nonces new
    /// signatures are refused (503) rather than opening a replay window.
    #[serde(default = "default_replay_cache_size")]
    pub replay_cache_size: usize,
    /// Longest accepted `nonce` parameter, in bytes (400 `nonce_invalid`
    /// beyond).
    // Left out of dumps and pushes while at the default, so that a config
    // written by this release still loads in the previous one.
    #[serde(
        default = "default_max_nonce_length",
        skip_serializing_if = "is_default_max_nonce_length"
    )]
    pub max_nonce_length: usize,
    /// Live nonces one key id may hold in the replay store (memory or
    /// Redis); beyond it new signatures of that key get 429
    /// `nonce_limit_reached` until its oldest nonce expires.
    #[serde(
        default = "default_max_nonces_per_key",
        skip_serializing_if = "is_default_max_nonces_per_key"
    )]
    pub max_nonces_per_key: usize,
    /// A request with a body must cover `content-digest`.
    #[serde(default = "yes")]
    pub require_digest_with_body: bool,
    #[serde(default)]
    pub forward_signature_headers: bool,
    /// Only the signature with this label is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_response: Option<SignResponseSpec>,
    /// Settings of `scheme: alipay-rsa2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alipay: Option<AlipaySpec>,
}

impl Default for SignatureSpec {
    fn default() -> Self {
        SignatureSpec {
            scheme: Scheme::Rfc9421,
            keys: Vec::new(),
            required_components: default_required_components(),
            max_age: default_max_age(),
            clock_skew: default_clock_skew(),
            require_nonce: true,
            replay_store: ReplayStore::Memory,
            replay_cache_size: default_replay_cache_size(),
            max_nonce_length: default_max_nonce_length(),
            max_nonces_per_key: default_max_nonces_per_key(),
            require_digest_with_body: true,
            forward_signature_headers: false,
            label: None,
            sign_response: None,
            alipay: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignResponseSpec {
    pub key: KeySpec,
    #[serde(default = "default_response_components")]
    pub components: Vec<String>,
    /// Cover the request's signature (`"signature";req;key="<label>"`).
    #[serde(default)]
    pub bind_request: bool,
    #[serde(default = "default_label")]
    pub label: String,
}

fn yes() -> bool {
    true
}
fn default_required_components() -> Vec<String> {
    ["@method", "@authority", "@path", "@query"]
        .map(String::from)
        .to_vec()
}
fn default_response_components() -> Vec<String> {
    ["@status", "content-digest"].map(String::from).to_vec()
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}
fn default_replay_cache_size() -> usize {
    100_000
}
fn default_max_nonce_length() -> usize {
    128
}
fn default_max_nonces_per_key() -> usize {
    10_000
}
fn is_default_max_nonce_length(n: &usize) -> bool {
    *n == default_max_nonce_length()
}
fn is_default_max_nonces_per_key(n: &usize) -> bool {
    *n == default_max_nonces_per_key()
}
fn default_label() -> String {
    "sig1".into()
}

/// Response signing, validated.
#[derive(Debug, Clone)]
pub struct SignResponseConfig {
    pub signer: Signer,
    pub bind_request: bool,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct SignatureConfig {
    pub scheme: Scheme,
    pub policy: Policy,
    pub replay_store: ReplayStore,
    pub replay_cache_size: usize,
    pub max_nonce_length: usize,
    pub max_nonces_per_key: usize,
    pub forward_signature_headers: bool,
    pub sign_response: Option<SignResponseConfig>,
    pub alipay: Option<AlipayConfig>,
}

/// Parses and checks a list of component identifiers.
pub fn validate_components(list: &[String], path: &str, errors: &mut FieldErrors) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        match base::parse_component(c) {
            Ok(item) if out.contains(&item) => {
                errors.push(format!("{path}[{i}]"), format!("{c} is listed twice"));
            }
            Ok(item) => out.push(item),
            Err(e) => errors.push(format!("{path}[{i}]"), e),
        }
    }
    out
}

impl SignatureSpec {
    pub fn validate(&self, path: &str, cx: &ValidateCx) -> Result<SignatureConfig, FieldErrors> {
        let mut errors = FieldErrors::default();
        if self.keys.is_empty() {
            errors.push(format!("{path}.keys"), "at least one key is required");
        }
        let mut keys: HashMap<String, VerifyKey> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (i, spec) in self.keys.iter().enumerate() {
            let kpath = format!("{path}.keys[{i}]");
            if !seen.insert(spec.id.as_str()) {
                errors.push(
                    format!("{kpath}.id"),
                    format!("duplicate key id {:?}", spec.id),
                );
                continue;
            }
            if self.scheme == Scheme::AlipayRsa2
                && spec.alg.is_some_and(|a| a != Algorithm::RsaV15Sha256)
            {
                errors.push(
                    format!("{kpath}.alg"),
                    "alipay-rsa2 keys are rsa-v1_5-sha256 (SHA256withRSA)",
                );
                continue;
            }
            if let Some(key) = spec.validate(&kpath, false, cx, &mut errors) {
                let client: Arc<str> = Arc::from(spec.client.as_deref().unwrap_or(&spec.id));
                keys.insert(spec.id.clone(), VerifyKey::new(key, client));
            }
        }
        let components = validate_components(
            &self.required_components,
            &format!("{path}.required_components"),
            &mut errors,
        );
        let required_components: Vec<String> = components
            .iter()
            .filter_map(|c| {
                if c.params.is_empty() {
                    c.bare_item.as_string().map(|s| s.as_str().to_string())
                } else {
                    None
                }
            })
            .collect();
        if required_components.len() != components.len() {
            errors.push(
                format!("{path}.required_components"),
                "required components are plain names without parameters",
            );
        }
        if self.max_age.is_zero() {
            errors.push(format!("{path}.max_age"), "must be greater than zero");
        }
        if self.replay_cache_size == 0 {
            errors.push(
                format!("{path}.replay_cache_size"),
                "must be greater than zero",
            );
        }
        for (field, value) in [
            ("max_nonce_length", self.max_nonce_length),
            ("max_nonces_per_key", self.max_nonces_per_key),
        ] {
            if value == 0 {
                errors.push(format!("{path}.{field}"), "must be greater than zero");
            }
        }
        if let Some(label) = &self.label {
            if KeyRef::from_str(label).is_err() {
                errors.push(format!("{path}.label"), "not a valid dictionary key");
            }
        }
        let sign_response = self.sign_response.as_ref().and_then(|s| {
            let spath = format!("{path}.sign_response");
            if self.scheme != Scheme::Rfc9421 && s.bind_request {
                errors.push(
                    format!("{spath}.bind_request"),
                    "binding needs an RFC 9421 request signature",
                );
            }
            let components =
                validate_components(&s.components, &format!("{spath}.components"), &mut errors);
            if components.is_empty() {
                errors.push(format!("{spath}.components"), "cover at least @status");
            }
            let key = s
                .key
                .validate(&format!("{spath}.key"), true, cx, &mut errors)?;
            let mut signer = Signer::new(key, components);
            signer.label = s.label.clone();
            Some(SignResponseConfig {
                signer,
                bind_request: s.bind_request,
            })
        });
        let alipay = match (self.scheme, &self.alipay) {
            (Scheme::AlipayRsa2, spec) => Some(
                spec.clone()
                    .unwrap_or_default()
                    .validate(&format!("{path}.alipay"), &mut errors),
            ),
            (Scheme::Rfc9421, Some(_)) => {
                errors.push(format!("{path}.alipay"), "only with scheme: alipay-rsa2");
                None
            }
            (Scheme::Rfc9421, None) => None,
        };
        let config = SignatureConfig {
            scheme: self.scheme,
            policy: Policy {
                keys,
                required_components,
                max_age: self.max_age,
                clock_skew: self.clock_skew,
                require_nonce: self.require_nonce,
                require_digest_with_body: self.require_digest_with_body,
                label: self.label.clone(),
            },
            replay_store: self.replay_store,
            replay_cache_size: self.replay_cache_size,
            max_nonce_length: self.max_nonce_length,
            max_nonces_per_key: self.max_nonces_per_key,
            forward_signature_headers: self.forward_signature_headers,
            sign_response,
            alipay,
        };
        errors.into_result(config)
    }

    /// A copy with secrets replaced, for dumps and logs.
    pub fn redacted(&self) -> Self {
        let mut spec = self.clone();
        spec.keys = spec.keys.iter().map(KeySpec::redacted).collect();
        if let Some(s) = &mut spec.sign_response {
            s.key = s.key.redacted();
        }
        spec
    }
}

impl SignatureConfig {
    pub fn uses_redis(&self) -> bool {
        self.replay_store == ReplayStore::Redis
    }
}

/// The request a response signature is bound to, kept from the request
/// phase.
#[derive(Clone)]
struct BoundRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    scheme: &'static str,
    label: String,
}

pub struct SignatureFilter {
    config: SignatureConfig,
    nonces: Option<NonceStore>,
}

impl SignatureFilter {
    pub fn build(name: &str, config: &SignatureConfig, cx: &BuildCx<'_>) -> Self {
        let nonces = match config.replay_store {
            ReplayStore::Memory => {
                let cache = cx
                    .state
                    .get_or_insert(&format!("{name}/signature-nonces"), || {
                        MemoryNonces::with_gauge(
                            config.replay_cache_size,
                            config.max_nonces_per_key,
                            metrics::gauge!("meshgate_signature_nonces", "filter" => name.to_string()),
                        )
                    });
                cache.set_limits(config.replay_cache_size, config.max_nonces_per_key);
                Some(NonceStore::Memory(cache))
            }
            // Without the shared store every nonce check answers 503 (the
            // top-level config requires `redis:` for this setting).
            ReplayStore::Redis => cx.redis.clone().map(NonceStore::Redis),
        };
        SignatureFilter {
            config: config.clone(),
            nonces,
        }
    }

    async fn check_nonce(&self, key_id: &Arc<str>, nonce: &str) -> Result<(), Rejection> {
        let ttl = self.config.policy.max_age + self.config.policy.clock_skew;
        let outcome = match &self.nonces {
            Some(store) => {
                store
                    .check(key_id, nonce, ttl, self.config.max_nonces_per_key)
                    .await
            }
            None => NonceCheck::Unavailable,
        };
        match outcome {
            NonceCheck::Fresh => Ok(()),
            NonceCheck::Replayed => Err(Rejection::new(
                &SIGNATURE_REPLAYED,
                "this nonce was already used",
            )),
            NonceCheck::KeyLimit { retry_after_secs } => Err(Rejection::new(
                &NONCE_LIMIT_REACHED,
                "this key has too many live nonces; retry later",
            )
            .with_header(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            )),
            NonceCheck::Unavailable => Err(Rejection::new(
                &REPLAY_STORE_UNAVAILABLE,
                "replay protection is unavailable",
            )),
        }
    }

    async fn verify_rfc9421(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(&VerifyKey, String), Rejection> {
        let scheme = if cx.tls { "https" } else { "http" };
        let body_present = req.has_body();
        let verified = self.config.policy.verify(
            &RequestParts {
                method: &req.head.method,
                uri: &req.head.uri,
                headers: &req.head.headers,
                scheme,
            },
            body_present,
            unix_now(),
        )?;
        // Checked before the body is read; the nonce is stored only once
        // everything else verified.
        if verified
            .nonce
            .as_ref()
            .is_some_and(|n| n.len() > self.config.max_nonce_length)
        {
            return Err(Rejection::new(
                &NONCE_INVALID,
                format!(
                    "the nonce is longer than {} bytes",
                    self.config.max_nonce_length
                ),
            ));
        }
        if verified.covers_digest || req.head.headers.contains_key(sign::CONTENT_DIGEST_HEADER) {
            let body = req.body().await?;
            let values: Vec<&[u8]> = req
                .head
                .headers
                .get_all(sign::CONTENT_DIGEST_HEADER)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            verify_content_digest(&values, &body).map_err(|e| {
                let r = Rejection::new(&DIGEST_MISMATCH, e.to_string());
                if e == DigestError::Malformed {
                    r.with_status(http::StatusCode::BAD_REQUEST)
                } else {
                    r
                }
            })?;
        }
        if let Some(nonce) = &verified.nonce {
            self.check_nonce(&verified.key.key.id, nonce).await?;
        }
        Ok((verified.key, verified.label))
    }

    async fn verify_alipay(
        &self,
        req: &mut RequestView<'_>,
    ) -> Result<(&VerifyKey, String), Rejection> {
        let Some(config) = &self.config.alipay else {
            return Err(Rejection::new(
                &crate::error::INTERNAL_ERROR,
                "alipay settings missing",
            ));
        };
        let mut content_types = req.head.headers.get_all(http::header::CONTENT_TYPE).iter();
        let content_type = content_types.next();
        if content_types.next().is_some() {
            // the app could read another one than this filter
            return Err(malformed_request("more than one Content-Type"));
        }
        let is_form = content_type
            .and_then(|v| v.to_str().ok())
            .is_some_and(alipay::is_form_content_type);
        let body = if is_form {
            Some(req.body().await?)
        } else if config.allow_non_form_body {
            // configured: such a body streams to the app unsigned
            None
        } else {
            // Presence from the body itself, not from its headers: a chunked
            // or HTTP/2 body announces no length.
            if !req.body().await?.is_empty() {
                return Err(Rejection::new(
                    &UNSIGNED_BODY,
                    "alipay-rsa2 signs form parameters only; this body is not application/x-www-form-urlencoded",
                ));
            }
            None
        };
        let params = AlipayParams::collect(req.head.uri.query(), body.as_deref())?;
        let prepared = params.prepare(config)?;
        let key_id = config
            .app_ids
            .get(&prepared.app_id)
            .map(String::as_str)
            .unwrap_or(&prepared.app_id);
        let Some(vk) = self.config.policy.keys.get(key_id) else {
            return Err(Rejection::new(
                &UNKNOWN_KEY,
                format!("unknown app_id {:?}", prepared.app_id),
            ));
        };
        alipay::check_fresh(
            prepared.timestamp,
            unix_now(),
            self.config.policy.max_age,
            self.config.policy.clock_skew,
        )?;
        if !vk.key.verify(prepared.content.as_bytes(), &prepared.sign) {
            return Err(Rejection::new(&SIGNATURE_INVALID, "sign does not verify"));
        }
        if self.config.policy.require_nonce {
            // No nonce in this scheme: each signature is accepted once.
            use base64::Engine as _;
            let once = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&prepared.sign);
            self.check_nonce(&vk.key.id, &once).await?;
        }
        Ok((vk, String::new()))
    }
}

fn malformed_request(msg: &'static str) -> Rejection {
    Rejection::new(&SIGNATURE_MALFORMED, msg).with_status(http::StatusCode::BAD_REQUEST)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Filter for SignatureFilter {
    async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let outcome = match self.config.scheme {
            Scheme::Rfc9421 => self.verify_rfc9421(req, cx).await,
            Scheme::AlipayRsa2 => self.verify_alipay(req).await,
        };
        let (vk, label) = match outcome {
            Ok(v) => v,
            Err(rejection) => {
                tracing::debug!(reason = rejection.reason, message = %rejection.message, "signature rejected");
                return Err(rejection);
            }
        };
        if self
            .config
            .sign_response
            .as_ref()
            .is_some_and(|s| s.bind_request)
        {
            cx.extensions.insert(BoundRequest {
                method: req.head.method.clone(),
                uri: req.head.uri.clone(),
                headers: req.head.headers.clone(),
                scheme: if cx.tls { "https" } else { "http" },
                label,
            });
        }
        if !self.config.forward_signature_headers {
            req.head.headers.remove(sign::SIGNATURE_HEADER);
            req.head.headers.remove(sign::SIGNATURE_INPUT_HEADER);
        }
        cx.client_id = Some(vk.client.clone());
        if let Some(value) = &vk.client_header {
            cx.set_upstream_header(CLIENT_ID_HEADER_NAME, value.clone());
        }
        tracing::trace!(key_id = %vk.key.id, "signature verified");
        Ok(())
    }

    async fn on_response(
        &self,
        rsp: &mut ResponseView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let Some(sign_response) = &self.config.sign_response else {
            return Ok(());
        };
        let body = rsp.body().await?;
        let bound = cx.extensions.get::<BoundRequest>();
        let mut signer = sign_response.signer.clone();
        if let (true, Some(b)) = (sign_response.bind_request, bound) {
            // The label was a dictionary key, so it is a valid string.
            let label = StringRef::from_str(&b.label).map_err(|e| {
                tracing::warn!(error = %e, "response signing failed");
                Rejection::new(&crate::error::INTERNAL_ERROR, "response signing failed")
            })?;
            let mut item = Item::new(BareItem::String(string_ref(sign::SIGNATURE).to_owned()));
            item.params.insert(
                key_ref("key").to_owned(),
                BareItem::String(label.to_owned()),
            );
            item.params
                .insert(key_ref("req").to_owned(), BareItem::Boolean(true));
            signer.components.push(item);
        }
        let request = bound.map(|b| RequestParts {
            method: &b.method,
            uri: &b.uri,
            headers: &b.headers,
            scheme: b.scheme,
        });
        signer.sign_response(rsp.head, &body, request).map_err(|e| {
            tracing::warn!(error = %e, "response signing failed");
            Rejection::new(&crate::error::INTERNAL_ERROR, "response signing failed")
        })
    }

    fn has_response_phase(&self) -> bool {
        self.config.sign_response.is_some()
    }
}
