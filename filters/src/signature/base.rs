//! Covered components and the signature base (RFC 9421 §2).
//!
//! Shared by verification and signing so both derive the exact same bytes.
//! A request's `Signature-Input` and `Signature` are parsed with `sfv`'s
//! visitor API into [`SignatureParams`], which borrows names, keys and
//! strings from the header instead of copying each into a `String`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::Range;

use http::{HeaderMap, Method, StatusCode, Uri};
use sfv::visitor::{
    DictionaryVisitor, EntryVisitor, Ignored, InnerListVisitor, ItemVisitor, ParameterVisitor,
};
use sfv::{
    BareItem, BareItemFromInput, Dictionary, FieldType, InnerListSerializer, Item, ItemSerializer,
    KeyRef, List, ListSerializer, Parser, RefBareItem, StringRef, Version,
};

/// A parser for the fields RFC 9421 reads: RFC 8941 structured fields (no
/// dates or display strings).
pub(crate) fn parser(input: &[u8]) -> Parser<'_> {
    Parser::new(input).with_version(Version::Rfc8941)
}

/// A bare item as parsed: keys, tokens and strings without escapes borrow
/// from the input.
pub type Bare<'a> = BareItemFromInput<'a>;

/// Parameters in order. A key given twice keeps its first place and takes
/// its last value (RFC 8941 §4.2.3.2), as `sfv`'s owned maps do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params<'a>(Vec<(&'a KeyRef, Bare<'a>)>);

impl<'a> Params<'a> {
    pub fn new() -> Self {
        Params(Vec::new())
    }

    pub fn insert(&mut self, key: &'a KeyRef, value: Bare<'a>) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Bare<'a>> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a KeyRef, &Bare<'a>)> + '_ {
        self.0.iter().map(|(k, v)| (*k, v))
    }

    fn is_true(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Bare::Boolean(true)))
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.get(name)
            .and_then(|v| v.as_string())
            .map(StringRef::as_str)
    }
}

impl<'de> ParameterVisitor<'de> for &mut Params<'de> {
    type Out = ();
    type Error = Infallible;

    fn parameter(&mut self, key: &'de KeyRef, value: Bare<'de>) -> Result<(), Infallible> {
        self.insert(key, value);
        Ok(())
    }

    fn finish(self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A component identifier: a string naming the component, with parameters
/// (`"@query-param";name="id"`). As parsed from a request it may be another
/// bare item, which [`check_component`] refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct Component<'a> {
    pub name: Bare<'a>,
    pub params: Params<'a>,
}

impl<'a> Component<'a> {
    /// A view of an identifier from config (see [`parse_component`]).
    pub fn from_item(item: &'a Item) -> Self {
        let mut params = Params(Vec::with_capacity(item.params.len()));
        for (key, value) in &item.params {
            params.insert(key, borrow_bare(value));
        }
        Component {
            name: borrow_bare(&item.bare_item),
            params,
        }
    }

    /// The component's name, when it is a string.
    pub fn name(&self) -> Option<&str> {
        self.name.as_string().map(StringRef::as_str)
    }
}

fn borrow_bare(item: &BareItem) -> Bare<'_> {
    match item {
        BareItem::Integer(v) => Bare::Integer(*v),
        BareItem::Decimal(v) => Bare::Decimal(*v),
        BareItem::String(v) => Bare::String(Cow::Borrowed(v)),
        BareItem::ByteSequence(v) => Bare::ByteSequence(v.clone()),
        BareItem::Boolean(v) => Bare::Boolean(*v),
        BareItem::Token(v) => Bare::Token(v),
        BareItem::Date(v) => Bare::Date(*v),
        BareItem::DisplayString(v) => Bare::DisplayString(Cow::Borrowed(v)),
    }
}

/// One signature's inner list: the covered components and the signature
/// parameters (`created`, `keyid`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignatureParams<'a> {
    pub components: Vec<Component<'a>>,
    pub params: Params<'a>,
}

impl<'de> InnerListVisitor<'de> for &mut SignatureParams<'de> {
    type Error = Infallible;

    fn item(&mut self) -> Result<impl ItemVisitor<'de>, Infallible> {
        Ok(Components(&mut self.components))
    }

    fn finish(self) -> Result<impl ParameterVisitor<'de>, Infallible> {
        Ok(&mut self.params)
    }
}

struct Components<'v, 'de>(&'v mut Vec<Component<'de>>);

impl<'de> ItemVisitor<'de> for Components<'_, 'de> {
    type Out = Option<()>;
    type Error = Infallible;

    fn bare_item(
        self,
        name: Bare<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = Option<()>>, Infallible> {
        self.0.push(Component {
            name,
            params: Params::new(),
        });
        Ok(self.0.last_mut().map(|c| &mut c.params))
    }
}

/// The members of a dictionary field in order, each read by `T`'s visitor.
/// A label given twice keeps its first place and takes its last value
/// (RFC 8941 §4.2.2), as `sfv`'s owned maps do.
#[derive(Debug)]
pub struct Members<'a, T>(pub Vec<(&'a KeyRef, T)>);

impl<'a, T> Members<'a, T> {
    pub fn get(&self, label: &KeyRef) -> Option<&T> {
        self.0.iter().find(|(k, _)| *k == label).map(|(_, v)| v)
    }

    fn slot(&mut self, key: &'a KeyRef, empty: T) -> &mut T {
        let index = match self.0.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.0[i].1 = empty;
                i
            }
            None => {
                self.0.push((key, empty));
                self.0.len() - 1
            }
        };
        &mut self.0[index].1
    }
}

/// A `Signature-Input` member: the inner list, or `None` when the member is
/// a plain item.
pub type InputMember<'a> = Option<SignatureParams<'a>>;

/// A `Signature` member: the bytes, or `None` when the member is not a byte
/// sequence.
pub type SignatureMember = Option<Vec<u8>>;

impl<'de> DictionaryVisitor<'de> for Members<'de, InputMember<'de>> {
    type Out = Self;
    type Error = Infallible;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Infallible> {
        Ok(InputEntry(self.slot(key, None)))
    }

    fn finish(self) -> Result<Self, Infallible> {
        Ok(self)
    }
}

struct InputEntry<'v, 'de>(&'v mut InputMember<'de>);

impl<'de> EntryVisitor<'de> for InputEntry<'_, 'de> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Infallible> {
        Ok(Ignored)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Infallible> {
        Ok(self.0.insert(SignatureParams::default()))
    }
}

impl<'de> DictionaryVisitor<'de> for Members<'de, SignatureMember> {
    type Out = Self;
    type Error = Infallible;

    fn entry(&mut self, key: &'de KeyRef) -> Result<impl EntryVisitor<'de>, Infallible> {
        Ok(SignatureEntry(self.slot(key, None)))
    }

    fn finish(self) -> Result<Self, Infallible> {
        Ok(self)
    }
}

struct SignatureEntry<'v>(&'v mut SignatureMember);

impl<'de> EntryVisitor<'de> for SignatureEntry<'_> {
    type Error = Infallible;

    fn item(self) -> Result<impl ItemVisitor<'de>, Infallible> {
        Ok(self)
    }

    fn inner_list(self) -> Result<impl InnerListVisitor<'de>, Infallible> {
        Ok(Ignored)
    }
}

impl<'de> ItemVisitor<'de> for SignatureEntry<'_> {
    type Out = ();
    type Error = Infallible;

    fn bare_item(
        self,
        value: Bare<'de>,
    ) -> Result<impl ParameterVisitor<'de, Out = ()>, Infallible> {
        if let Bare::ByteSequence(bytes) = value {
            *self.0 = Some(bytes);
        }
        Ok(Ignored)
    }
}

/// Parses a `Signature-Input` field value.
pub fn parse_signature_input(value: &[u8]) -> Result<Members<'_, InputMember<'_>>, sfv::Error> {
    parser(value).parse_dictionary_with_visitor(Members::<InputMember<'_>>(Vec::with_capacity(1)))
}

/// Parses a `Signature` field value.
pub fn parse_signatures(value: &[u8]) -> Result<Members<'_, SignatureMember>, sfv::Error> {
    parser(value).parse_dictionary_with_visitor(Members::<SignatureMember>(Vec::with_capacity(1)))
}

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
    let item = if text.starts_with('"') {
        let item = parser(text.as_bytes())
            .parse::<Item>()
            .map_err(|e| format!("invalid component {text:?}: {e}"))?;
        if item.bare_item.as_string().is_none() {
            return Err(format!("component {text:?} must be a string"));
        }
        item
    } else {
        let name = sfv::String::from_string(text.to_ascii_lowercase())
            .map_err(|_| format!("invalid field name {text:?}"))?;
        Item::new(BareItem::String(name))
    };
    check_component(&Component::from_item(&item))?;
    Ok(item)
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
pub fn check_component(component: &Component<'_>) -> Result<(), String> {
    let Some(name) = component.name() else {
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
    for (param, value) in component.params.iter() {
        match param.as_str() {
            "req" | "sf" | "bs" if matches!(value, Bare::Boolean(true)) => {}
            "key" | "name" if value.as_string().is_some() => {}
            "tr" => return Err("trailer components (;tr) are not supported".into()),
            other => return Err(format!("unsupported component parameter {other:?}")),
        }
    }
    if name == "@query-param" && component.params.get("name").is_none() {
        return Err("@query-param needs a name parameter".into());
    }
    Ok(())
}

/// The serialized component identifier (`"@query-param";name="Pet"`).
pub fn component_id(component: &Component<'_>) -> String {
    let mut id = String::new();
    write_component_id(&mut id, component);
    id
}

/// Appends the serialized identifier of `component` to `out`.
fn write_component_id(out: &mut String, component: &Component<'_>) {
    let _ = ItemSerializer::with_buffer(out)
        .bare_item(&component.name)
        .parameters(component.params.iter());
}

/// Writes `list` into an inner list being serialized: the components, then
/// the signature parameters.
pub(crate) fn write_inner_list(mut inner: InnerListSerializer<'_>, list: &SignatureParams<'_>) {
    for component in &list.components {
        let _ = inner
            .bare_item(&component.name)
            .parameters(component.params.iter());
    }
    let _ = inner.finish().parameters(list.params.iter());
}

/// Appends the `@signature-params` value (the inner list serialized, RFC
/// 8941) to `out`.
fn write_params(out: &mut String, list: &SignatureParams<'_>) {
    let mut ser = ListSerializer::with_buffer(out);
    write_inner_list(ser.inner_list(), list);
}

/// The `@signature-params` value: the inner list serialized (RFC 8941).
pub fn serialize_params(list: &SignatureParams<'_>) -> String {
    let mut out = String::with_capacity(128);
    write_params(&mut out, list);
    out
}

/// Builds the signature base for the covered components in `list` (whose
/// parameters are the signature parameters).
pub fn signature_base(
    message: &Message<'_>,
    list: &SignatureParams<'_>,
) -> Result<Vec<u8>, BaseError> {
    // The `@signature-params` value is serialized first: it holds every
    // component identifier, which the lines then use rather than
    // serializing each one a second time.
    let mut params = String::with_capacity(128);
    let mut ids: Vec<Range<usize>> = Vec::with_capacity(list.components.len());
    {
        let mut ser = ListSerializer::with_buffer(&mut params);
        let mut inner = ser.inner_list();
        for component in &list.components {
            let end = inner
                .bare_item(&component.name)
                .parameters(component.params.iter())
                .finish()
                .len();
            // Items of an inner list follow its "(" or one space (RFC 8941
            // §4.1.1.1).
            let start = ids.last().map_or(1, |previous| previous.end + 1);
            ids.push(start..end);
        }
        let _ = inner.finish().parameters(list.params.iter());
    }
    let mut out: Vec<u8> = Vec::with_capacity(256);
    for (i, (component, range)) in list.components.iter().zip(ids).enumerate() {
        check_component(component).map_err(BaseError::Malformed)?;
        let id = params.get(range).unwrap_or_default();
        // Equal parsed identifiers are equal serialized ones: both are
        // canonical.
        if list
            .components
            .get(..i)
            .unwrap_or_default()
            .contains(component)
        {
            return Err(BaseError::Malformed(format!(
                "component {id} is covered twice"
            )));
        }
        write_component(&mut out, message, component, id)?;
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    out.extend_from_slice(params.as_bytes());
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
    component: &Component<'_>,
    id: &str,
) -> Result<(), BaseError> {
    let missing = || BaseError::Missing(id.to_string());
    let name = component.name().unwrap_or_default();
    let params = &component.params;
    let from_request = params.is_true("req");

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
                let wanted = params
                    .str("name")
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
    let sf = params.is_true("sf");
    let bs = params.is_true("bs");
    let key = params.str("key");
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
        // Each line wrapped as a byte sequence, joined with ", ".
        let mut ser = ListSerializer::new();
        for value in &raw {
            let _ = ser.bare_item(RefBareItem::ByteSequence(value));
        }
        push_line(out, id, &[ser.finish().unwrap_or_default().as_bytes()]);
        return Ok(());
    }
    let combined = raw.join(&b", "[..]);
    if let Some(member) = key {
        let dict = parser(&combined)
            .parse::<Dictionary>()
            .map_err(|e| BaseError::Malformed(format!("{id}: field is not a dictionary: {e}")))?;
        let (member_key, entry) = dict.get_key_value(member).ok_or_else(missing)?;
        let mut single = sfv::DictSerializer::new();
        single.members([(member_key, entry)]);
        let text = single.finish().unwrap_or_default();
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
    let value = reserialize_structured(&combined)
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
fn reserialize_structured(value: &[u8]) -> Result<String, String> {
    const EMPTY: &str = "an empty structured field cannot be serialized";
    if let Ok(d) = parser(value).parse::<Dictionary>() {
        return d.serialize().ok_or_else(|| EMPTY.to_string());
    }
    if let Ok(l) = parser(value).parse::<List>() {
        return l.serialize().ok_or_else(|| EMPTY.to_string());
    }
    parser(value)
        .parse::<Item>()
        .map(|i| i.serialize())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_labels_and_parameters_keep_the_first_place_and_the_last_value() {
        let input = parse_signature_input(
            br#"a=("@path");created=1;created=2, b=("@method"), a=("@method" "@authority");created=3"#,
        )
        .expect("parses");
        let labels: Vec<&str> = input.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(labels, ["a", "b"]);
        let Some(Some(a)) = input.get(sfv::key_ref("a")) else {
            panic!("a is an inner list");
        };
        assert_eq!(serialize_params(a), r#"("@method" "@authority");created=3"#);

        let list =
            parse_signature_input(br#"s=("x";req;key="k";req=?0);created=1;keyid="q";created=5"#)
                .expect("parses");
        let Some(Some(s)) = list.get(sfv::key_ref("s")) else {
            panic!("s is an inner list");
        };
        assert_eq!(
            serialize_params(s),
            r#"("x";req=?0;key="k");created=5;keyid="q""#
        );

        // a member that is not an inner list, and a signature that is not bytes
        let input = parse_signature_input(b"a=1, b=(), a").expect("parses");
        assert!(matches!(input.get(sfv::key_ref("a")), Some(None)));
        let sigs = parse_signatures(b"a=:AAE=:, b=1, a=:AgM=:").expect("parses");
        assert_eq!(sigs.get(sfv::key_ref("a")), Some(&Some(vec![2, 3])));
        assert_eq!(sigs.get(sfv::key_ref("b")), Some(&None));
        assert!(parse_signatures(b"a=:AAE=:,").is_err());
    }
}
