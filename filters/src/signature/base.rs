//! Covered components and the signature base (RFC 9421 §2).
//!
//! Shared by verification and signing so both derive the exact same bytes.

use http::{HeaderMap, Method, StatusCode, Uri};
use sfv::{BareItem, InnerList, Item, ListEntry, Parser, SerializeValue};

/// The request side of a message, as far as components need it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `http` or `https`, for `@scheme` and `@target-uri`.
    pub scheme: &'a str,
}

/// The message whose components are covered.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Request(RequestParts<'a>),
    Response {
        status: StatusCode,
        headers: &'a HeaderMap,
        /// The request this answers, for components with `;req`.
        request: Option<RequestParts<'a>>,
    },
}

/// Why a signature base could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    /// A covered component is not in the message.
    #[error("covered component {0} is not present in the message")]
    Missing(String),
    /// The component list or a component value is unusable.
    #[error("{0}")]
    Malformed(String),
}

/// Parses a component written in config: a bare name (`@method`,
/// `content-digest`) or a structured-field item with parameters
/// (`"@query-param";name="id"`, `"signature";req;key="sig1"`).
pub fn parse_component(text: &str) -> Result<Item, String> {
    let text = text.trim();
    if text.starts_with('"') {
        let item = Parser::parse_item(text.as_bytes())
            .map_err(|e| format!("invalid component {text:?}: {e}"))?;
        if item.bare_item.as_str().is_none() {
            return Err(format!("component {text:?} must be a string"));
        }
        check_component(&item)?;
        Ok(item)
    } else {
        let item = Item::new(BareItem::String(text.to_ascii_lowercase()));
        check_component(&item)?;
        Ok(item)
    }
}

const DERIVED: &[&str] = &[
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@query-param",
    "@status",
];

/// Checks a component identifier for names and parameters we can derive.
pub fn check_component(item: &Item) -> Result<(), String> {
    let Some(name) = item.bare_item.as_str() else {
        return Err("component identifiers are strings".into());
    };
    if name.is_empty() {
        return Err("empty component name".into());
    }
    if name.starts_with('@') {
        if !DERIVED.contains(&name) {
            return Err(format!("unknown derived component {name}"));
        }
    } else if http::HeaderName::from_bytes(name.as_bytes()).is_err()
        || name.bytes().any(|b| b.is_ascii_uppercase())
    {
        return Err(format!("invalid field name {name:?}"));
    }
    for (param, value) in &item.params {
        match param.as_str() {
            "req" | "sf" | "bs" if value == &BareItem::Boolean(true) => {}
            "key" | "name" if value.as_str().is_some() => {}
            "tr" => return Err("trailer components (;tr) are not supported".into()),
            other => return Err(format!("unsupported component parameter {other:?}")),
        }
    }
    if name == "@query-param" && !item.params.contains_key("name") {
        return Err("@query-param needs a name parameter".into());
    }
    Ok(())
}

/// The serialized component identifier (`"@query-param";name="Pet"`).
pub fn component_id(item: &Item) -> Result<String, BaseError> {
    item.serialize_value()
        .map_err(|e| BaseError::Malformed(format!("component identifier: {e}")))
}

/// The `@signature-params` value: the inner list serialized (RFC 8941).
pub fn serialize_params(list: &InnerList) -> Result<String, BaseError> {
    vec![ListEntry::InnerList(list.clone())]
        .serialize_value()
        .map_err(|e| BaseError::Malformed(format!("signature parameters: {e}")))
}

/// Builds the signature base for the covered components in `list` (whose
/// parameters are the signature parameters).
pub fn signature_base(message: &Message<'_>, list: &InnerList) -> Result<Vec<u8>, BaseError> {
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut seen: Vec<String> = Vec::with_capacity(list.items.len());
    for item in &list.items {
        check_component(item).map_err(BaseError::Malformed)?;
        let id = component_id(item)?;
        if seen.contains(&id) {
            return Err(BaseError::Malformed(format!(
                "component {id} is covered twice"
            )));
        }
        let values = component_values(message, item, &id)?;
        for value in values {
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&value);
            out.push(b'\n');
        }
        seen.push(id);
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    out.extend_from_slice(serialize_params(list)?.as_bytes());
    Ok(out)
}

/// The value lines of one component (`@query-param` may give several).
fn component_values(
    message: &Message<'_>,
    item: &Item,
    id: &str,
) -> Result<Vec<Vec<u8>>, BaseError> {
    let missing = || BaseError::Missing(id.to_string());
    let name = item.bare_item.as_str().unwrap_or_default();
    let from_request = item.params.get("req") == Some(&BareItem::Boolean(true));

    // Which message the value comes from.
    let (request, response) = match (message, from_request) {
        (Message::Request(r), false) => (Some(*r), None),
        (Message::Request(_), true) => {
            return Err(BaseError::Malformed(format!(
                "{id}: ;req is only valid in a response signature"
            )))
        }
        (Message::Response { request, .. }, true) => (Some(request.ok_or_else(missing)?), None),
        (
            Message::Response {
                status, headers, ..
            },
            false,
        ) => (None, Some((*status, *headers))),
    };

    if let Some(derived) = name.strip_prefix('@') {
        let one = |v: String| Ok(vec![v.into_bytes()]);
        if derived == "status" {
            let (status, _) = response.ok_or_else(|| {
                BaseError::Malformed("@status is only valid for responses".into())
            })?;
            return one(status.as_u16().to_string());
        }
        let Some(req) = request else {
            return Err(BaseError::Malformed(format!(
                "{id} is a request component; use ;req in a response"
            )));
        };
        return match derived {
            "method" => one(req.method.as_str().to_string()),
            "authority" => one(authority(&req).ok_or_else(missing)?),
            "scheme" => one(req.scheme.to_ascii_lowercase()),
            "target-uri" => one(format!(
                "{}://{}{}",
                req.scheme.to_ascii_lowercase(),
                authority(&req).ok_or_else(missing)?,
                request_target(&req)
            )),
            "request-target" => one(request_target(&req)),
            "path" => one(path(&req)),
            "query" => one(format!("?{}", req.uri.query().unwrap_or(""))),
            "query-param" => {
                let wanted = item
                    .params
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| BaseError::Malformed("@query-param needs name".into()))?;
                let query = req.uri.query().unwrap_or("");
                let values: Vec<Vec<u8>> = form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| reencode(k) == wanted)
                    .map(|(_, v)| reencode(&v).into_bytes())
                    .collect();
                if values.is_empty() {
                    Err(missing())
                } else {
                    Ok(values)
                }
            }
            _ => Err(BaseError::Malformed(format!(
                "unknown derived component {id}"
            ))),
        };
    }

    let headers = match (request, response) {
        (_, Some((_, h))) => h,
        (Some(r), None) => r.headers,
        (None, None) => return Err(missing()),
    };
    let raw: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .map(|v| trim_ows(v.as_bytes()))
        .collect();
    if raw.is_empty() {
        return Err(missing());
    }
    let sf = item.params.get("sf") == Some(&BareItem::Boolean(true));
    let bs = item.params.get("bs") == Some(&BareItem::Boolean(true));
    let key = item.params.get("key").and_then(|k| k.as_str());
    if bs {
        if sf || key.is_some() {
            return Err(BaseError::Malformed(format!(
                "{id}: bs cannot be combined with sf or key"
            )));
        }
        let wrapped: Result<Vec<String>, BaseError> = raw
            .iter()
            .map(|v| {
                Item::new(BareItem::ByteSeq(v.to_vec()))
                    .serialize_value()
                    .map_err(|e| BaseError::Malformed(format!("{id}: {e}")))
            })
            .collect();
        return Ok(vec![wrapped?.join(", ").into_bytes()]);
    }
    let combined = raw.join(&b", "[..]);
    if let Some(member) = key {
        let dict = Parser::parse_dictionary(&combined)
            .map_err(|e| BaseError::Malformed(format!("{id}: field is not a dictionary: {e}")))?;
        let entry = dict.get(member).ok_or_else(missing)?;
        let mut single = sfv::Dictionary::new();
        single.insert(member.to_string(), entry.clone());
        let text = single
            .serialize_value()
            .map_err(|e| BaseError::Malformed(format!("{id}: {e}")))?;
        // `member=value` -> `value`; a bare `member` (with any parameters) is
        // boolean true: `?1;param`
        let value = match text.strip_prefix(member) {
            Some(rest) => match rest.strip_prefix('=') {
                Some(v) => v.to_string(),
                None => format!("?1{rest}"),
            },
            None => text,
        };
        return Ok(vec![value.into_bytes()]);
    }
    if sf {
        return Ok(vec![reserialize_structured(name, &combined)
            .map_err(|e| BaseError::Malformed(format!("{id}: {e}")))?
            .into_bytes()]);
    }
    Ok(vec![combined])
}

/// Strict re-serialization of a structured field: dictionary, list or item,
/// tried in that order (we do not know every field's type).
fn reserialize_structured(_name: &str, value: &[u8]) -> Result<String, String> {
    if let Ok(d) = Parser::parse_dictionary(value) {
        return d.serialize_value().map_err(|e| e.to_string());
    }
    if let Ok(l) = Parser::parse_list(value) {
        return l.serialize_value().map_err(|e| e.to_string());
    }
    Parser::parse_item(value)
        .and_then(|i| i.serialize_value())
        .map_err(|e| format!("not a structured field: {e}"))
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    v.get(start..end).unwrap_or_default()
}

/// Percent-encodes a decoded query name or value the way §2.2.8 wants
/// (form-urlencoded set, with spaces as `%20`).
fn reencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// `@authority`: the host (and non-default port), lowercased; from the
/// request URI (HTTP/2, absolute form) or the `Host` header.
pub fn authority(req: &RequestParts<'_>) -> Option<String> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_string(),
    };
    let raw = raw
        .rsplit('@')
        .next()
        .unwrap_or(&raw)
        .trim()
        .to_ascii_lowercase();
    let default_port = match req.scheme {
        "https" => ":443",
        _ => ":80",
    };
    Some(raw.strip_suffix(default_port).unwrap_or(&raw).to_string())
}

fn path(req: &RequestParts<'_>) -> String {
    let p = req.uri.path();
    if p.is_empty() {
        "/".to_string()
    } else {
        p.to_string()
    }
}

fn request_target(req: &RequestParts<'_>) -> String {
    match req.uri.query() {
        Some(q) => format!("{}?{}", path(req), q),
        None => path(req),
    }
}
