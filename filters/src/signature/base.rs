//! Covered components and the signature base (RFC 9421 §2).
//!
//! Shared by verification and signing so both derive the exact same bytes.

use http::{HeaderMap, Method, StatusCode, Uri};
use sfv::{
    BareItem, InnerList, Item, Parser, RefBareItem, RefItemSerializer, RefListSerializer,
    SerializeValue,
};

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
    let mut id = String::new();
    write_component_id(&mut id, item)?;
    Ok(id)
}

fn ref_item(item: &BareItem) -> RefBareItem<'_> {
    match item {
        BareItem::Integer(v) => RefBareItem::Integer(*v),
        BareItem::Decimal(v) => RefBareItem::Decimal(*v),
        BareItem::String(v) => RefBareItem::String(v),
        BareItem::ByteSeq(v) => RefBareItem::ByteSeq(v),
        BareItem::Boolean(v) => RefBareItem::Boolean(*v),
        BareItem::Token(v) => RefBareItem::Token(v),
    }
}

/// Appends the serialized identifier of `item` to `out`.
fn write_component_id(out: &mut String, item: &Item) -> Result<(), BaseError> {
    let malformed = |e: &str| BaseError::Malformed(format!("component identifier: {e}"));
    let mut params = RefItemSerializer::new(out)
        .bare_item(&ref_item(&item.bare_item))
        .map_err(malformed)?;
    for (name, value) in &item.params {
        params = params
            .parameter(name, &ref_item(value))
            .map_err(malformed)?;
    }
    Ok(())
}

/// Appends the `@signature-params` value (the inner list serialized, RFC
/// 8941) to `out`, without copying the list.
fn write_params(out: &mut String, list: &InnerList) -> Result<(), BaseError> {
    let malformed = |e: &str| BaseError::Malformed(format!("signature parameters: {e}"));
    let mut inner = RefListSerializer::new(out).open_inner_list();
    for item in &list.items {
        inner = inner
            .inner_list_bare_item(&ref_item(&item.bare_item))
            .map_err(malformed)?;
        for (name, value) in &item.params {
            inner = inner
                .inner_list_parameter(name, &ref_item(value))
                .map_err(malformed)?;
        }
    }
    let mut outer = inner.close_inner_list();
    for (name, value) in &list.params {
        outer = outer.parameter(name, &ref_item(value)).map_err(malformed)?;
    }
    Ok(())
}

/// The `@signature-params` value: the inner list serialized (RFC 8941).
pub fn serialize_params(list: &InnerList) -> Result<String, BaseError> {
    let mut out = String::with_capacity(128);
    write_params(&mut out, list)?;
    Ok(out)
}

/// Builds the signature base for the covered components in `list` (whose
/// parameters are the signature parameters).
pub fn signature_base(message: &Message<'_>, list: &InnerList) -> Result<Vec<u8>, BaseError> {
    let mut out: Vec<u8> = Vec::with_capacity(256);
    // Serialized identifiers back to back, and where each one is, to refuse
    // a component covered twice.
    let mut ids = String::with_capacity(128);
    let mut seen: Vec<(usize, usize)> = Vec::with_capacity(list.items.len());
    for item in &list.items {
        check_component(item).map_err(BaseError::Malformed)?;
        let start = ids.len();
        write_component_id(&mut ids, item)?;
        let end = ids.len();
        let id = ids.get(start..end).unwrap_or_default();
        if seen.iter().any(|&(s, e)| ids.get(s..e) == Some(id)) {
            return Err(BaseError::Malformed(format!(
                "component {id} is covered twice"
            )));
        }
        write_component(&mut out, message, item, id)?;
        seen.push((start, end));
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    ids.clear();
    write_params(&mut ids, list)?;
    out.extend_from_slice(ids.as_bytes());
    Ok(out)
}

/// One `id: value` line of the signature base.
fn push_line(out: &mut Vec<u8>, id: &str, value: &[&[u8]]) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b": ");
    for part in value {
        out.extend_from_slice(part);
    }
    out.push(b'\n');
}

/// Appends the lines of one component (`@query-param` may give several).
fn write_component(
    out: &mut Vec<u8>,
    message: &Message<'_>,
    item: &Item,
    id: &str,
) -> Result<(), BaseError> {
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
        if derived == "status" {
            let (status, _) = response.ok_or_else(|| {
                BaseError::Malformed("@status is only valid for responses".into())
            })?;
            push_line(out, id, &[status.as_str().as_bytes()]);
            return Ok(());
        }
        let Some(req) = request else {
            return Err(BaseError::Malformed(format!(
                "{id} is a request component; use ;req in a response"
            )));
        };
        match derived {
            "method" => push_line(out, id, &[req.method.as_str().as_bytes()]),
            "authority" => {
                let authority = authority_raw(&req).ok_or_else(missing)?;
                push_lowercase_line(out, id, &[authority]);
            }
            "scheme" => push_lowercase_line(out, id, &[req.scheme]),
            "target-uri" => {
                let authority = authority_raw(&req).ok_or_else(missing)?;
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b": ");
                push_lowercase(out, req.scheme);
                out.extend_from_slice(b"://");
                push_lowercase(out, authority);
                push_request_target(out, &req);
                out.push(b'\n');
            }
            "request-target" => {
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(b": ");
                push_request_target(out, &req);
                out.push(b'\n');
            }
            "path" => push_line(out, id, &[path_of(&req).as_bytes()]),
            "query" => push_line(out, id, &[b"?", req.uri.query().unwrap_or("").as_bytes()]),
            "query-param" => {
                let wanted = item
                    .params
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| BaseError::Malformed("@query-param needs name".into()))?;
                let query = req.uri.query().unwrap_or("");
                let mut found = false;
                for (_, value) in
                    form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| reencode(k) == wanted)
                {
                    push_line(out, id, &[reencode(&value).as_bytes()]);
                    found = true;
                }
                if !found {
                    return Err(missing());
                }
            }
            _ => {
                return Err(BaseError::Malformed(format!(
                    "unknown derived component {id}"
                )))
            }
        }
        return Ok(());
    }

    let headers = match (request, response) {
        (_, Some((_, h))) => h,
        (Some(r), None) => r.headers,
        (None, None) => return Err(missing()),
    };
    let sf = item.params.get("sf") == Some(&BareItem::Boolean(true));
    let bs = item.params.get("bs") == Some(&BareItem::Boolean(true));
    let key = item.params.get("key").and_then(|k| k.as_str());
    if !(sf || bs || key.is_some()) {
        // The plain field: values trimmed and joined with ", ", written
        // straight into the base.
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Err(missing());
        };
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(trim_ows(first.as_bytes()));
        for value in values {
            out.extend_from_slice(b", ");
            out.extend_from_slice(trim_ows(value.as_bytes()));
        }
        out.push(b'\n');
        return Ok(());
    }
    let raw: Vec<&[u8]> = headers
        .get_all(name)
        .iter()
        .map(|v| trim_ows(v.as_bytes()))
        .collect();
    if raw.is_empty() {
        return Err(missing());
    }
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
        push_line(out, id, &[wrapped?.join(", ").as_bytes()]);
        return Ok(());
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
        push_line(out, id, &[value.as_bytes()]);
        return Ok(());
    }
    let value = reserialize_structured(name, &combined)
        .map_err(|e| BaseError::Malformed(format!("{id}: {e}")))?;
    push_line(out, id, &[value.as_bytes()]);
    Ok(())
}

fn push_lowercase(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().map(|b| b.to_ascii_lowercase()));
}

fn push_lowercase_line(out: &mut Vec<u8>, id: &str, parts: &[&str]) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b": ");
    for part in parts {
        push_lowercase(out, part);
    }
    out.push(b'\n');
}

fn push_request_target(out: &mut Vec<u8>, req: &RequestParts<'_>) {
    out.extend_from_slice(path_of(req).as_bytes());
    if let Some(q) = req.uri.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
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
    authority_raw(req).map(str::to_ascii_lowercase)
}

/// The authority as sent, without user info, surrounding space and the
/// scheme's default port; not yet lowercased.
fn authority_raw<'a>(req: &RequestParts<'a>) -> Option<&'a str> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit('@').next().unwrap_or(raw).trim();
    // A port is digits, so matching it before lowercasing is the same.
    let default_port = match req.scheme {
        "https" => ":443",
        _ => ":80",
    };
    Some(raw.strip_suffix(default_port).unwrap_or(raw))
}

fn path_of<'a>(req: &RequestParts<'a>) -> &'a str {
    let p = req.uri.path();
    if p.is_empty() {
        "/"
    } else {
        p
    }
}
