//! Producing RFC 9421 signatures: used for response signing and for the
//! sidecar's egress listener, which signs the app's outbound calls.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use sfv::{key_ref, DictSerializer, Dictionary, Integer, Item, KeyRef, RefBareItem, StringRef};

use super::base::{
    parser, signature_base, write_inner_list, Bare, Component, Message, Params, RequestParts,
    SignatureParams,
};
use super::digest::content_digest;
use super::keys::{Key, SignError};

pub const SIGNATURE_INPUT: &str = "signature-input";
pub const SIGNATURE: &str = "signature";
pub const CONTENT_DIGEST: &str = "content-digest";

// The same names, parsed once for header map lookups on the hot path.
pub const SIGNATURE_INPUT_HEADER: HeaderName = HeaderName::from_static(SIGNATURE_INPUT);
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static(SIGNATURE);
pub const CONTENT_DIGEST_HEADER: HeaderName = HeaderName::from_static(CONTENT_DIGEST);

/// Signs messages with one key over a fixed list of components.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: Key,
    /// Covered components, in order (validated identifiers).
    pub components: Vec<Item>,
    /// Dictionary label of the signature (`sig1` unless configured).
    pub label: String,
    /// Add a random `nonce` parameter.
    pub nonce: bool,
    /// Add `expires = created + this`.
    pub expires_in: Option<Duration>,
    /// Add the `alg` parameter.
    pub include_alg: bool,
}

impl Signer {
    pub fn new(key: Key, components: Vec<Item>) -> Self {
        Signer {
            key,
            components,
            label: "sig1".into(),
            nonce: true,
            expires_in: None,
            include_alg: true,
        }
    }

    fn covers(&self, name: &str) -> bool {
        self.components.iter().any(|c| {
            c.bare_item.as_string().map(StringRef::as_str) == Some(name)
                && !c.params.contains_key("req")
        })
    }

    /// The inner list: components plus `created`, `expires`, `nonce`,
    /// `keyid` and `alg` parameters.
    fn params(&self, created: u64) -> Result<SignatureParams<'_>, SignError> {
        let int = |v: u64| {
            Integer::try_from(v)
                .map(Bare::Integer)
                .map_err(|_| SignError::Message("timestamp out of range".into()))
        };
        fn string(v: &str) -> Result<&StringRef, SignError> {
            StringRef::from_str(v).map_err(|e| {
                SignError::Message(format!("{v:?} is not a structured-field string: {e}"))
            })
        }
        let mut params = Params::new();
        params.insert(key_ref("created"), int(created)?);
        if let Some(ttl) = self.expires_in {
            params.insert(
                key_ref("expires"),
                int(created.saturating_add(ttl.as_secs()))?,
            );
        }
        if self.nonce {
            let nonce = sfv::String::from_string(random_nonce())
                .map_err(|(e, _)| SignError::Message(e.to_string()))?;
            params.insert(key_ref("nonce"), Bare::String(Cow::Owned(nonce)));
        }
        params.insert(
            key_ref("keyid"),
            Bare::String(Cow::Borrowed(string(&self.key.id)?)),
        );
        if self.include_alg {
            params.insert(
                key_ref("alg"),
                Bare::String(Cow::Borrowed(string(self.key.alg.name())?)),
            );
        }
        Ok(SignatureParams {
            components: self.components.iter().map(Component::from_item).collect(),
            params,
        })
    }

    fn label(&self) -> Result<&KeyRef, SignError> {
        KeyRef::from_str(&self.label).map_err(|e| SignError::Message(format!("label: {e}")))
    }

    /// Signs a request: sets `Content-Digest` when covered, then adds this
    /// signature to `Signature-Input` and `Signature` (other labels kept).
    pub fn sign_request(
        &self,
        head: &mut http::request::Parts,
        body: &[u8],
        scheme: &str,
    ) -> Result<(), SignError> {
        self.sign_request_at(head, body, scheme, unix_now())
    }

    pub fn sign_request_at(
        &self,
        head: &mut http::request::Parts,
        body: &[u8],
        scheme: &str,
        created: u64,
    ) -> Result<(), SignError> {
        if self.covers(CONTENT_DIGEST) {
            set_digest(&mut head.headers, body)?;
        }
        let list = self.params(created)?;
        let base = signature_base(
            &Message::Request(RequestParts {
                method: &head.method,
                uri: &head.uri,
                headers: &head.headers,
                scheme,
            }),
            &list,
        )
        .map_err(|e| SignError::Message(e.to_string()))?;
        let sig = self.key.sign(&base)?;
        add_signature(&mut head.headers, self.label()?, &list, &sig)
    }

    /// Signs a response; `request` feeds components with `;req` (binding the
    /// response to the request, e.g. `"signature";req;key="sig1"`).
    pub fn sign_response(
        &self,
        head: &mut http::response::Parts,
        body: &[u8],
        request: Option<RequestParts<'_>>,
    ) -> Result<(), SignError> {
        if self.covers(CONTENT_DIGEST) {
            set_digest(&mut head.headers, body)?;
        }
        let list = self.params(unix_now())?;
        let base = signature_base(
            &Message::Response {
                status: head.status,
                headers: &head.headers,
                request,
            },
            &list,
        )
        .map_err(|e| SignError::Message(e.to_string()))?;
        let sig = self.key.sign(&base)?;
        add_signature(&mut head.headers, self.label()?, &list, &sig)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 128 random bits, base64url without padding.
pub fn random_nonce() -> String {
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn set_digest(headers: &mut HeaderMap, body: &[u8]) -> Result<(), SignError> {
    let value = HeaderValue::try_from(content_digest(body))
        .map_err(|e| SignError::Message(e.to_string()))?;
    headers.insert(CONTENT_DIGEST, value);
    Ok(())
}

/// Adds `label` to both dictionaries, replacing a member of the same label
/// in its place.
fn add_signature(
    headers: &mut HeaderMap,
    label: &KeyRef,
    list: &SignatureParams<'_>,
    sig: &[u8],
) -> Result<(), SignError> {
    let input = merge(headers, SIGNATURE_INPUT_HEADER, label, |ser| {
        write_inner_list(ser.inner_list(label), list);
    })?;
    let signature = merge(headers, SIGNATURE_HEADER, label, |ser| {
        let _ = ser.bare_item(label, RefBareItem::ByteSequence(sig));
    })?;
    headers.insert(SIGNATURE_INPUT_HEADER, input);
    headers.insert(SIGNATURE_HEADER, signature);
    Ok(())
}

/// The dictionary field `name` with the member `label` written by `write`.
fn merge(
    headers: &HeaderMap,
    name: HeaderName,
    label: &KeyRef,
    mut write: impl FnMut(&mut DictSerializer<&mut String>),
) -> Result<HeaderValue, SignError> {
    let existing: Vec<&[u8]> = headers
        .get_all(&name)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let dict = if existing.is_empty() {
        Dictionary::new()
    } else {
        // an unparsable existing field is replaced rather than extended
        parser(&existing.join(&b", "[..]))
            .parse::<Dictionary>()
            .unwrap_or_default()
    };
    let mut text = String::new();
    let mut ser = DictSerializer::with_buffer(&mut text);
    let mut written = false;
    for (key, entry) in &dict {
        if key.as_ref() == label {
            write(&mut ser);
            written = true;
        } else {
            ser.members([(key, entry)]);
        }
    }
    if !written {
        write(&mut ser);
    }
    HeaderValue::try_from(text).map_err(|e| SignError::Message(e.to_string()))
}
