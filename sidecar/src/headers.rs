//! Header rules of the data path: hop-by-hop removal, forwarding headers,
//! request ids and the reserved identity prefix.

use std::net::IpAddr;

use http::header::{
    HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderValue};
use meshgate_filters::IDENTITY_HEADER_PREFIX;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1) that never cross the proxy.
/// Named values so that removal skips parsing the name.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Position of `name` in [`HOP_BY_HOP`]. A string match compiles to a
/// length switch; comparing `HeaderName`s one by one costs far more.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including those named by `Connection`.
/// For a WebSocket upgrade (`keep_upgrade`, decided by
/// [`is_websocket_upgrade`]), `Connection: upgrade` and `Upgrade: websocket`
/// are kept; any other upgrade token is dropped like every hop-by-hop header.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds which hop-by-hop headers are present;
    // most messages carry none, and then nothing else is done.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `te: trailers` is how gRPC clients announce trailer support; it must reach the app.
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // Only the one protocol the sidecar tunnels goes on, spelled one way.
    let upgrade = keep_upgrade && upgrade_is_websocket(headers);
    // The names `Connection` lists. Its values are reference-counted clones
    // (the rest allocates only for a repeated header), and removing by
    // `&str` looks a name up without allocating one.
    let mut values = headers.get_all(CONNECTION).iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for token in first
        .iter()
        .chain(&rest)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
        // `Connection: host` must not take away the authority admission set.
        .filter(|t| !t.eq_ignore_ascii_case("host"))
    {
        // `remove` drops every value of a repeated header; an invalid name is simply absent.
        headers.remove(token);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
}

/// Whether `name` is in the reserved `x-meshgate-` namespace, compared
/// case-insensitively and with `_` read as `-` (CGI-style apps map both
/// to the same variable), so no spelling of it slips through.
fn is_identity(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.len() >= IDENTITY_HEADER_PREFIX.len()
        && name
            .iter()
            .zip(IDENTITY_HEADER_PREFIX.as_bytes())
            .all(|(&got, &want)| {
                let got = if got == b'_' { b'-' } else { got };
                got.eq_ignore_ascii_case(&want)
            })
}

/// Removes every client-supplied `x-meshgate-*` header: identity reaches the
/// app only from the filters that verified it.
pub fn strip_identity(headers: &mut HeaderMap) {
    // Usually none, at most a few: find one, remove it, look again. Cloning
    // a name only bumps a reference count.
    while let Some(name) = headers.keys().find(|n| is_identity(n)).cloned() {
        headers.remove(&name);
    }
}

/// A request id, held as the header value it travels in: the same bytes go
/// to the app and back to the client without being copied again.
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored (checked or generated below).
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The request id to use: the client's when it is sane, else a new one.
pub fn request_id(headers: &HeaderMap) -> RequestId {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        let bytes = id.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
            return RequestId(id.clone());
        }
    }
    // Encoding into a stack buffer skips the formatting machinery of `to_string`.
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    RequestId(HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-")))
}

/// The client address as a header value, made once per connection.
pub fn client_value(client: IpAddr) -> HeaderValue {
    HeaderValue::try_from(client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `x-forwarded-for` and `x-forwarded-proto` to the values admission
/// decided (`crate::admission`); the client's own were removed there.
pub fn set_forwarded(headers: &mut HeaderMap, forwarded_for: HeaderValue, proto: HeaderValue) {
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), proto);
}

/// Bytes of the request head as counted against `max_header_bytes`.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Whether the comma-separated tokens of every `name` line include `token`.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// `Upgrade` offers `websocket` (a protocol version after a slash is allowed).
fn upgrade_is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let name = t.split('/').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("websocket")
        })
}

/// Whether a request asks for a WebSocket upgrade (RFC 6455: an HTTP/1.1
/// `GET` with `Connection: upgrade` and `Upgrade: websocket`). This is the
/// only upgrade the sidecar tunnels: any other (`h2c`, `TLS/1.0`, ...) would
/// let later bytes on the connection bypass routing and filters, so its
/// headers are dropped and the request is forwarded as a plain one.
pub fn is_websocket_upgrade(
    method: &http::Method,
    version: http::Version,
    headers: &HeaderMap,
) -> bool {
    method == http::Method::GET
        && version == http::Version::HTTP_11
        && has_token(headers, &CONNECTION, "upgrade")
        && upgrade_is_websocket(headers)
}

/// Whether the app's `101 Switching Protocols` switches to WebSocket.
pub fn response_is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, &CONNECTION, "upgrade") && upgrade_is_websocket(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_index_matches_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-app")), None);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("connection").is_none()
                && h.get("keep-alive").is_none()
                && h.get("x-secret").is_none()
        );
        assert_eq!(h.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(h.get("x-app").map(|v| v.as_bytes()), Some(&b"kept"[..]));
    }

    #[test]
    fn connection_cannot_name_host() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Host, x-other"));
        h.insert("host", HeaderValue::from_static("svc.example"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            h.get("host").map(|v| v.as_bytes()),
            Some(&b"svc.example"[..])
        );
        assert!(h.get("x-other").is_none());
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let get = http::Method::GET;
        let h11 = http::Version::HTTP_11;
        for (connection, upgrade, expected) in [
            ("Upgrade", "websocket", true),
            ("keep-alive, upgrade", "WebSocket", true),
            ("Upgrade", "h2c, websocket/13", true),
            ("Upgrade, HTTP2-Settings", "h2c", false),
            ("Upgrade", "TLS/1.0", false),
            ("keep-alive", "websocket", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert("connection", HeaderValue::from_static(connection));
            h.insert("upgrade", HeaderValue::from_static(upgrade));
            assert_eq!(
                is_websocket_upgrade(&get, h11, &h),
                expected,
                "{connection} / {upgrade}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(!is_websocket_upgrade(&http::Method::POST, h11, &h));
        assert!(!is_websocket_upgrade(&get, http::Version::HTTP_10, &h));
        assert!(response_is_websocket(&h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!response_is_websocket(&h));
    }

    #[test]
    fn other_upgrades_are_dropped_as_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQCAAAAAAIAAAAA"),
        );
        // Even when the caller asked to keep the upgrade pair.
        strip_hop_by_hop(&mut h, true);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(
            &http::Method::GET,
            http::Version::HTTP_11,
            &h
        ));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }

    #[test]
    fn identity_headers_removed_and_request_id_sanitised() {
        let mut h = HeaderMap::new();
        h.insert("x-meshgate-user", HeaderValue::from_static("admin"));
        h.insert("X-Meshgate-Client-Id", HeaderValue::from_static("evil"));
        h.insert("x_meshgate_user", HeaderValue::from_static("admin"));
        h.insert("x-meshgate_tenant", HeaderValue::from_static("t"));
        strip_identity(&mut h);
        assert!(h.is_empty());
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h).as_str(), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static(""));
        assert_eq!(request_id(&h).as_str().len(), 36);
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h).as_str(), "has space");
    }
}
