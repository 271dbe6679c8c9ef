//! Inbound RFC 9421 verification, apart from the body and the nonce store:
//! parse `Signature-Input`/`Signature`, pick the key by `keyid`, enforce the
//! policy, rebuild the signature base and check the signature.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::base::{
    parse_signature_input, parse_signatures, signature_base, Bare, BaseError, Message,
    RequestParts, SignatureParams,
};
use super::keys::Key;
use super::sign::{
    CONTENT_DIGEST, CONTENT_DIGEST_HEADER, SIGNATURE_HEADER, SIGNATURE_INPUT_HEADER,
};
use crate::error::{Reason, Rejection};

/// The verification policy of one filter instance.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Keys by key id.
    pub keys: HashMap<String, VerifyKey>,
    /// Component names every signature must cover.
    pub required_components: Vec<String>,
    pub max_age: Duration,
    /// Tolerated clock difference for `created` in the future and `expires`.
    pub clock_skew: Duration,
    pub require_nonce: bool,
    /// A request that carries a body must cover `content-digest`.
    pub require_digest_with_body: bool,
    /// Only this signature label is considered (any label when unset).
    pub label: Option<String>,
}

/// A verification key and the client it identifies.
#[derive(Clone)]
pub struct VerifyKey {
    pub key: Key,
    pub client: Arc<str>,
    /// `client` as the app's `x-meshgate-client-id` value, made once (`None`
    /// when it is not a valid header value).
    pub client_header: Option<HeaderValue>,
}

// `client_header` is `client` again, made once: left out, so a config's
// meaning reads the same (xds/tests/compat.rs compares it).
impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("key", &self.key)
            .field("client", &self.client)
            .finish()
    }
}

impl VerifyKey {
    pub fn new(key: Key, client: Arc<str>) -> Self {
        let client_header = HeaderValue::from_str(&client).ok();
        VerifyKey {
            key,
            client,
            client_header,
        }
    }
}

/// A signature that verified (apart from the body digest and the nonce).
#[derive(Debug, Clone)]
pub struct Verified<'p> {
    /// The key it verified with.
    pub key: &'p VerifyKey,
    pub label: String,
    pub nonce: Option<String>,
    /// `content-digest` is covered and must be checked against the body.
    pub covers_digest: bool,
}

fn reject(reason: &'static Reason, msg: impl Into<String>) -> Rejection {
    Rejection::new(reason, msg.into())
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(&super::SIGNATURE_MALFORMED, msg.into()).with_status(StatusCode::BAD_REQUEST)
}

/// The field's lines joined with ", " (borrowed when there is one line).
fn combined<'r>(req: &RequestParts<'r>, name: &HeaderName) -> Option<Cow<'r, [u8]>> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 64);
    joined.extend_from_slice(first.as_bytes());
    for value in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(joined))
}

fn param_int(list: &SignatureParams<'_>, name: &str) -> Result<Option<i64>, Rejection> {
    match list.params.get(name) {
        None => Ok(None),
        Some(Bare::Integer(v)) => Ok(Some(i64::from(*v))),
        Some(_) => Err(malformed(format!("{name} must be an integer"))),
    }
}

fn param_str<'l>(list: &'l SignatureParams<'_>, name: &str) -> Result<Option<&'l str>, Rejection> {
    match list.params.get(name) {
        None => Ok(None),
        Some(Bare::String(v)) => Ok(Some(v.as_str())),
        Some(_) => Err(malformed(format!("{name} must be a string"))),
    }
}

impl Policy {
    /// Verifies the request's signature at unix time `now`. `body_present`
    /// comes from the body stream, not from headers (`Transfer-Encoding` is
    /// hop-by-hop and gone by now, HTTP/2 needs no `Content-Length`).
    pub fn verify(
        &self,
        req: &RequestParts<'_>,
        body_present: bool,
        now: u64,
    ) -> Result<Verified<'_>, Rejection> {
        let (Some(input), Some(sigs)) = (
            combined(req, &SIGNATURE_INPUT_HEADER),
            combined(req, &SIGNATURE_HEADER),
        ) else {
            return Err(reject(
                &super::SIGNATURE_MISSING,
                "Signature-Input and Signature headers are required",
            ));
        };
        // Both fields parsed borrowing from the headers (no copy per name,
        // key or string); both must be well-formed before anything else.
        let input = parse_signature_input(&input)
            .map_err(|e| malformed(format!("Signature-Input: {e}")))?;
        let sigs = parse_signatures(&sigs).map_err(|e| malformed(format!("Signature: {e}")))?;

        // Pick the signature: the configured label, else the first whose keyid
        // we know (so a request may carry signatures for other verifiers too).
        let mut chosen = None;
        let mut first_unknown: Option<&str> = None;
        for (label, entry) in &input.0 {
            if self.label.as_deref().is_some_and(|l| l != label.as_str()) {
                continue;
            }
            let Some(list) = entry else {
                return Err(malformed(format!(
                    "Signature-Input member {label} is not an inner list"
                )));
            };
            let Some(key_id) = param_str(list, "keyid")? else {
                return Err(malformed(format!("signature {label} has no keyid")));
            };
            match self.keys.get(key_id) {
                Some(key) => {
                    chosen = Some((*label, list, key));
                    break;
                }
                None => {
                    first_unknown.get_or_insert(key_id);
                }
            }
        }
        let Some((label, list, vk)) = chosen else {
            return Err(match (first_unknown, &self.label) {
                (Some(id), _) => reject(&super::UNKNOWN_KEY, format!("unknown keyid {id:?}")),
                (None, Some(l)) => reject(
                    &super::SIGNATURE_MISSING,
                    format!("no signature labelled {l}"),
                ),
                (None, None) => reject(&super::SIGNATURE_MISSING, "Signature-Input is empty"),
            });
        };
        let key = &vk.key;

        // The algorithm is the key's; a request naming another one fails.
        if let Some(alg) = param_str(list, "alg")? {
            if alg != key.alg.name() {
                return Err(reject(
                    &super::ALGORITHM_NOT_ALLOWED,
                    format!("key {} is {}, not {alg}", key.id, key.alg),
                ));
            }
        }

        let Some(created) = param_int(list, "created")? else {
            return Err(malformed("the created parameter is required"));
        };
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let skew = i64::try_from(self.clock_skew.as_secs()).unwrap_or(i64::MAX);
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        if created > now_i.saturating_add(skew) {
            return Err(reject(
                &super::SIGNATURE_EXPIRED,
                "created is in the future",
            ));
        }
        if now_i.saturating_sub(created) > max_age {
            return Err(reject(
                &super::SIGNATURE_EXPIRED,
                format!("signature is older than {}s", self.max_age.as_secs()),
            ));
        }
        if let Some(expires) = param_int(list, "expires")? {
            if expires.saturating_add(skew) < now_i {
                return Err(reject(&super::SIGNATURE_EXPIRED, "signature has expired"));
            }
        }
        let nonce = param_str(list, "nonce")?.map(str::to_string);
        if self.require_nonce && nonce.is_none() {
            return Err(reject(
                &super::COMPONENT_MISSING,
                "the nonce parameter is required",
            ));
        }

        // Components covered as plain names (no parameters).
        let covers = |name: &str| {
            list.components
                .iter()
                .any(|c| c.params.is_empty() && c.name() == Some(name))
        };
        for required in &self.required_components {
            if !covers(required) {
                return Err(reject(
                    &super::COMPONENT_MISSING,
                    format!("signature must cover {required}"),
                ));
            }
        }
        let covers_digest = covers(CONTENT_DIGEST);
        if self.require_digest_with_body && !covers_digest && body_present {
            return Err(reject(
                &super::COMPONENT_MISSING,
                "a request with a body must cover content-digest",
            ));
        }
        if covers_digest && !req.headers.contains_key(CONTENT_DIGEST_HEADER) {
            return Err(reject(
                &super::DIGEST_MISMATCH,
                "content-digest is covered but the header is missing",
            ));
        }

        let signature = match sigs.get(label) {
            Some(Some(bytes)) => bytes,
            Some(None) => {
                return Err(malformed(format!(
                    "Signature member {label} is not a byte sequence"
                )))
            }
            None => {
                return Err(reject(
                    &super::SIGNATURE_MISSING,
                    format!("no Signature member for {label}"),
                ))
            }
        };

        let base = signature_base(&Message::Request(*req), list).map_err(|e| match e {
            BaseError::Missing(c) => reject(
                &super::COMPONENT_MISSING,
                format!("covered component {c} is not in the request"),
            ),
            BaseError::Malformed(m) => malformed(m),
        })?;
        if !key.verify(&base, signature) {
            return Err(reject(
                &super::SIGNATURE_INVALID,
                "signature does not verify",
            ));
        }
        Ok(Verified {
            key: vk,
            label: label.as_str().to_string(),
            nonce,
            covers_digest,
        })
    }
}
