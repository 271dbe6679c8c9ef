//! Admission: the one canonical request, built before the route is matched.
//!
//! Routing, the filters (signature components `@path`, `@query`,
//! `@authority`, `@target-uri` included) and the app all see the request this
//! step leaves behind, so none of them can be handed a different reading of
//! the same bytes:
//!
//! - the path in normal form ([`meshgate_xds::config::normalize_path`]), the
//!   query as sent;
//! - one authority (lowercased, validated `host[:port]`, default port
//!   dropped) in both the URI (when it carries one) and the `Host` header;
//!   repeated `Host`, a `Host` that disagrees with the URI or `:authority`,
//!   and an HTTP/1.1 request without `Host` are refused;
//! - no header names with `_` unless configured (CGI-style apps read
//!   `x_meshgate_user` as `HTTP_X_MESHGATE_USER`);
//! - no client-sent forwarding headers; the client address comes from the
//!   connection, or from the trusted part of `X-Forwarded-For`.
// A `Rejection` is the answer itself and is built once per refused request,
// as in the signature filter; boxing it buys nothing.
#![allow(clippy::result_large_err)]

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Range;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use meshgate_filters::error::Reason;
use meshgate_filters::{Rejection, IDENTITY_HEADER_PREFIX};
use meshgate_xds::config::{normalize_path, Inbound, UnderscoreHeaders};

use crate::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::proxy::ConnInfo;

/// What admission decided besides the rewritten request.
#[derive(Debug)]
pub struct Admitted {
    /// The canonical authority; its host (without port) is what routes match.
    pub authority: CanonicalAuthority,
    /// The client: the peer, or the trusted `X-Forwarded-For` entry.
    pub client_ip: IpAddr,
    /// `X-Forwarded-For` for the app.
    pub forwarded_for: HeaderValue,
    /// `X-Forwarded-Proto` for the app.
    pub forwarded_proto: HeaderValue,
}

/// Client-sent headers that claim something about the client, the original
/// target or the method, which only a trusted proxy may say. Removed always;
/// `x-forwarded-for`/`-proto` are then set by the sidecar.
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-client-cert",
    "x-original-forwarded-for",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-original-method",
    "x-rewrite-url",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "front-end-https",
    "x-url-scheme",
];

/// Whether `name` is one of [`FORWARDING_HEADERS`]. A string match compiles
/// to a length switch; it runs for every header of every request.
fn is_forwarding_header(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
            | "x-forwarded-scheme"
            | "x-forwarded-ssl"
            | "x-forwarded-uri"
            | "x-forwarded-path"
            | "x-forwarded-client-cert"
            | "x-original-forwarded-for"
            | "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "x-original-url"
            | "x-original-uri"
            | "x-original-host"
            | "x-original-method"
            | "x-rewrite-url"
            | "x-host"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "front-end-https"
            | "x-url-scheme"
    )
}

/// Names the sidecar itself manages; with underscores allowed, a name that
/// reads as one of these with `_` for `-` is still removed.
const MANAGED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "x-request-id",
];

fn reject(reason: &'static Reason, message: impl Into<Cow<'static, str>>) -> Rejection {
    Rejection::new(reason, message)
}

/// Builds the canonical request in place. An error is the answer (400).
pub fn admit<B>(
    req: &mut Request<B>,
    inbound: &Inbound,
    conn: &ConnInfo,
) -> Result<Admitted, Rejection> {
    // CONNECT would turn the connection into a tunnel past every filter
    // (HTTP/2 extended CONNECT, RFC 8441, is refused by the HTTP/2 layer).
    if req.method() == Method::CONNECT {
        return Err(reject(
            &meshgate_filters::header::METHOD_NOT_ALLOWED,
            "CONNECT is not supported",
        ));
    }
    if let Some(s) = req.uri().scheme_str() {
        if !(s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https")) {
            return Err(reject(
                &meshgate_filters::error::BAD_AUTHORITY,
                "the request target's scheme must be http or https",
            ));
        }
    }

    let path = normalize_path(req.uri().path(), &inbound.path_normalization)
        .map_err(|e| reject(&meshgate_filters::error::BAD_PATH, e.to_string()))?;
    let path_changed = path != req.uri().path();
    let path = path.into_owned();

    let authority = authority(req, conn.tls)?;

    // The URI: origin form stays origin form; a URI that carries an
    // authority (absolute form, HTTP/2) carries the canonical one and the
    // connection's scheme.
    if req.uri().authority().is_some() || path_changed {
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let path_and_query = PathAndQuery::try_from(path_and_query).map_err(|_| {
            reject(
                &meshgate_filters::error::BAD_PATH,
                "the normalised target is not a valid URI",
            )
        })?;
        let uri = if req.uri().authority().is_some() {
            let authority = Authority::try_from(authority.as_str()).map_err(|_| {
                reject(&meshgate_filters::error::BAD_AUTHORITY, "invalid authority")
            })?;
            Uri::builder()
                .scheme(if conn.tls {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                })
                .authority(authority)
                .path_and_query(path_and_query)
                .build()
        } else {
            Uri::builder().path_and_query(path_and_query).build()
        };
        *req.uri_mut() =
            uri.map_err(|_| reject(&meshgate_filters::error::BAD_PATH, "invalid request target"))?;
    }

    let headers = req.headers_mut();
    if headers.get(HOST).map(HeaderValue::as_bytes) != Some(authority.as_str().as_bytes()) {
        let value = HeaderValue::try_from(authority.as_str())
            .map_err(|_| reject(&meshgate_filters::error::BAD_AUTHORITY, "invalid authority"))?;
        headers.insert(HOST, value);
    }

    underscore_headers(headers, inbound.headers_with_underscores)?;

    let (client_ip, forwarded_for) = client_address(
        headers,
        conn.peer.ip(),
        &conn.client_value,
        inbound.xff_trusted_hops,
    );
    let forwarded_proto = match headers.get(&X_FORWARDED_PROTO) {
        // Only a trusted proxy in front says which scheme the client used.
        Some(v)
            if inbound.xff_trusted_hops > 0
                && (v.as_bytes() == b"http" || v.as_bytes() == b"https") =>
        {
            v.clone()
        }
        _ => HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    };
    // Usually none, at most a few: find one, remove it, look again. Cloning
    // a name only bumps a reference count.
    while let Some(name) = headers
        .keys()
        .find(|n| is_forwarding_header(n.as_str()))
        .cloned()
    {
        headers.remove(name);
    }
    Ok(Admitted {
        authority,
        client_ip,
        forwarded_for,
        forwarded_proto,
    })
}

/// The canonical authority (for the URI and `Host`) and the host without
/// port (for routing), from `Host` and the URI's authority, which must agree.
/// The one host parser of the data path (inbound and egress).
pub fn authority<B>(req: &Request<B>, tls: bool) -> Result<CanonicalAuthority, Rejection> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(reject(
            &meshgate_filters::error::BAD_AUTHORITY,
            "repeated Host header",
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let from_header = host_header
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| canonical_authority(s, default_port))
                .ok_or_else(|| {
                    reject(
                        &meshgate_filters::error::BAD_AUTHORITY,
                        "invalid Host header",
                    )
                })
        })
        .transpose()?;
    let from_uri = req
        .uri()
        .authority()
        .map(|a| {
            canonical_authority(a.as_str(), default_port).ok_or_else(|| {
                reject(
                    &meshgate_filters::error::BAD_AUTHORITY,
                    "invalid authority in the request target",
                )
            })
        })
        .transpose()?;
    match (from_header, from_uri) {
        (Some(h), Some(u)) if h != u => Err(reject(
            &meshgate_filters::error::BAD_AUTHORITY,
            "the Host header and the request target name different authorities",
        )),
        (None, _) if req.version() == Version::HTTP_11 => Err(reject(
            &meshgate_filters::error::BAD_AUTHORITY,
            "HTTP/1.1 request without Host",
        )),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Err(reject(
            &meshgate_filters::error::BAD_AUTHORITY,
            "the request names no authority",
        )),
    }
}

/// A canonical `host[:port]` and where its host lies in it: one string
/// serves the URI, `Host` and route matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalAuthority {
    text: String,
    /// The host without port or IPv6 brackets.
    host: Range<usize>,
}

impl Admitted {
    /// The host without port, lowercased, for route matching.
    pub fn host(&self) -> &str {
        self.authority.host()
    }
}

impl CanonicalAuthority {
    /// `host[:port]`, as the URI and `Host` carry it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host without port, lowercased, for routing.
    pub fn host(&self) -> &str {
        &self.text[self.host.clone()]
    }
}

/// `host[:port]` lowercased, a trailing dot and the default port removed;
/// `None` when it is not a plain DNS name, IPv4 or bracketed IPv6 address
/// with an optional numeric port (user info, `%`-escapes and sub-delimiters
/// are refused). Built in one allocation: it runs on every request.
pub fn canonical_authority(raw: &str, default_port: u16) -> Option<CanonicalAuthority> {
    if raw.is_empty() || raw.as_bytes().contains(&b'@') {
        return None;
    }
    let mut text = String::with_capacity(raw.len());
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let addr: Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        write!(text, "[{addr}]").ok()?;
        (1..text.len() - 1, port)
    } else {
        let (host, port) = match raw.bytes().position(|b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if !is_dns_name_or_ipv4(host) {
            return None;
        }
        text.push_str(host);
        text.make_ascii_lowercase();
        (0..text.len(), port)
    };
    match port {
        None | Some("") => {}
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let number = p.parse::<u16>().ok().filter(|n| *n != 0)?;
            if number != default_port {
                // Digits of a non-zero number: its canonical form is the
                // same digits without leading zeros.
                text.push(':');
                text.push_str(p.trim_start_matches('0'));
            }
        }
        Some(_) => return None,
    }
    Some(CanonicalAuthority { text, host })
}

/// Letters, digits, `-`, `.` and `_` in non-empty dot-separated labels, at
/// most 253 bytes.
fn is_dns_name_or_ipv4(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    // Starting as if after a dot refuses an empty first label.
    let mut previous = b'.';
    for b in host.bytes() {
        let allowed = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if !allowed || (b == b'.' && previous == b'.') {
            return false;
        }
        previous = b;
    }
    previous != b'.'
}

/// Whether `name`, read with `_` as `-`, is a header the sidecar manages or
/// reserves (`x-meshgate-*`, forwarding headers, framing and hop-by-hop).
fn reads_as_managed(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    dashed.starts_with(IDENTITY_HEADER_PREFIX)
        || is_forwarding_header(&dashed)
        || MANAGED_HEADERS.contains(&dashed.as_str())
}

fn underscore_headers(headers: &mut HeaderMap, action: UnderscoreHeaders) -> Result<(), Rejection> {
    // Header names are lowercase ASCII; most requests have none with `_`.
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| match action {
            UnderscoreHeaders::Allow => reads_as_managed(n.as_str()),
            UnderscoreHeaders::Drop | UnderscoreHeaders::Reject => true,
        })
        .cloned()
        .collect();
    if action == UnderscoreHeaders::Reject {
        if let Some(name) = names.first() {
            return Err(reject(
                &meshgate_filters::error::BAD_HEADER_NAME,
                format!("header name {:?} contains '_'", name.as_str()),
            ));
        }
    }
    for name in names {
        headers.remove(name);
    }
    Ok(())
}

/// The client address and the `X-Forwarded-For` the app gets. With no
/// trusted hops: the peer, alone. With `n`: the `n`-th entry from the right
/// of the received chain (the one the outermost trusted proxy wrote), and the
/// chain from there on with the peer appended; anything unusable (too short,
/// not an address) falls back to the peer.
fn client_address(
    headers: &HeaderMap,
    peer: IpAddr,
    peer_value: &HeaderValue,
    trusted_hops: usize,
) -> (IpAddr, HeaderValue) {
    let fallback = || (peer, peer_value.clone());
    if trusted_hops == 0 {
        return fallback();
    }
    let mut entries: Vec<&str> = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(value) = value.to_str() else {
            return fallback();
        };
        entries.extend(value.split(',').map(str::trim).filter(|e| !e.is_empty()));
    }
    if entries.len() < trusted_hops {
        return fallback();
    }
    let trusted = &entries[entries.len() - trusted_hops..];
    let mut addresses = Vec::with_capacity(trusted.len() + 1);
    for entry in trusted {
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => addresses.push(ip),
            Err(_) => return fallback(),
        }
    }
    let client = addresses[0];
    addresses.push(peer);
    let chain = addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match HeaderValue::try_from(chain) {
        Ok(v) => (client, v),
        Err(_) => fallback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn inbound(yaml: &str) -> Inbound {
        let spec = meshgate_xds::config::parse_yaml(yaml).expect("yaml");
        meshgate_xds::config::validate(&spec, &meshgate_filters::ValidateCx::control_plane())
            .expect("valid")
            .inbound
    }

    fn conn() -> ConnInfo {
        ConnInfo::new(SocketAddr::from(([10, 0, 0, 9], 5555)), false)
    }

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn admit_default(r: &mut Request<()>) -> Result<Admitted, Rejection> {
        admit(r, &inbound("{}"), &conn())
    }

    #[test]
    fn authorities_are_canonical() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("a.example", Some(("a.example", "a.example"))),
            ("A.Example.", Some(("a.example", "a.example"))),
            ("a.example:80", Some(("a.example", "a.example"))),
            ("a.example:", Some(("a.example", "a.example"))),
            ("a.example:8080", Some(("a.example:8080", "a.example"))),
            ("a.example:08080", Some(("a.example:8080", "a.example"))),
            ("127.0.0.1:15006", Some(("127.0.0.1:15006", "127.0.0.1"))),
            ("[::1]:80", Some(("[::1]", "::1"))),
            ("[0:0::1]:9", Some(("[::1]:9", "::1"))),
            ("", None),
            ("user@a.example", None),
            ("a.example:99999", None),
            ("a.example:0", None),
            ("a.example:x", None),
            ("a..example", None),
            (".a.example", None),
            ("a%2eexample", None),
            ("a.example;x", None),
            ("a example", None),
            ("[::1", None),
            ("[nope]", None),
            ("a:1:2", None),
            ("a.example..", None),
            ("a.example.:8080", Some(("a.example:8080", "a.example"))),
            (".", None),
            ("a.example:00080", Some(("a.example", "a.example"))),
            ("a.example:00000", None),
            ("a.example:000080", None),
            ("[::1]x", None),
            ("[::1]:", Some(("[::1]", "::1"))),
            (
                "[::FFFF:1.2.3.4]:8080",
                Some(("[::ffff:1.2.3.4]:8080", "::ffff:1.2.3.4")),
            ),
            (
                "xn--bcher-kva.Example",
                Some(("xn--bcher-kva.example", "xn--bcher-kva.example")),
            ),
            ("a_b.example", Some(("a_b.example", "a_b.example"))),
            ("\u{e9}.example", None),
        ];
        for (raw, want) in cases {
            let got = canonical_authority(raw, 80);
            let got = got.as_ref().map(|a| (a.as_str(), a.host()));
            assert_eq!(got, *want, "{raw:?}");
        }
        assert_eq!(
            canonical_authority("a.example:443", 443).map(|a| a.as_str().to_string()),
            Some("a.example".into())
        );
    }

    #[test]
    fn the_forwarding_header_match_is_the_list() {
        for name in FORWARDING_HEADERS {
            assert!(is_forwarding_header(name), "{name}");
        }
        let listed = FORWARDING_HEADERS.len();
        let matched = [
            "x-forwarded",
            "x-forwarded-fo",
            "forwarded-for",
            "host",
            "x-request-id",
        ]
        .iter()
        .filter(|n| is_forwarding_header(n))
        .count();
        assert_eq!((listed, matched), (30, 0));
    }

    #[test]
    fn host_rules() {
        type Case<'a> = (Version, &'a str, &'a [(&'a str, &'a str)]);
        let refused: &[Case<'_>] = &[
            (
                Version::HTTP_11,
                "/x",
                &[("host", "a.example"), ("host", "b.example")],
            ),
            (Version::HTTP_11, "/x", &[]),
            (Version::HTTP_11, "/x", &[("host", "")]),
            (
                Version::HTTP_11,
                "http://a.example/x",
                &[("host", "b.example")],
            ),
            (
                Version::HTTP_2,
                "http://a.example/x",
                &[("host", "b.example")],
            ),
            (Version::HTTP_2, "/x", &[]),
            (
                Version::HTTP_11,
                "ftp://a.example/x",
                &[("host", "a.example")],
            ),
        ];
        for (version, uri, headers) in refused {
            let mut r = req(*version, uri, headers);
            let rej = admit_default(&mut r).expect_err(uri);
            assert_eq!(rej.reason, "bad_authority", "{uri} {headers:?}");
            assert_eq!(rej.status, http::StatusCode::BAD_REQUEST);
        }

        let mut r = req(
            Version::HTTP_2,
            "https://A.example:80/%70rivate/x?q=%41",
            &[("host", "a.EXAMPLE")],
        );
        let admitted = admit_default(&mut r).expect("admitted");
        assert_eq!(admitted.host(), "a.example");
        // The connection is plain HTTP: its scheme, not the client's.
        assert_eq!(r.uri().to_string(), "http://a.example/private/x?q=%41");
        assert_eq!(r.headers()[HOST], "a.example");

        let mut r = req(Version::HTTP_11, "/a/../b?x", &[("host", "B.example:8080")]);
        let admitted = admit_default(&mut r).expect("admitted");
        assert_eq!(admitted.host(), "b.example");
        assert_eq!(r.uri().to_string(), "/b?x");
        assert_eq!(r.headers()[HOST], "b.example:8080");

        // HTTP/1.0 may name its authority in the target alone.
        let mut r = req(Version::HTTP_10, "http://c.example/", &[]);
        assert_eq!(admit_default(&mut r).expect("admitted").host(), "c.example");
        assert_eq!(r.headers()[HOST], "c.example");
    }

    #[test]
    fn targets_that_are_not_paths_are_refused() {
        let mut r = req(Version::HTTP_11, "*", &[("host", "a")]);
        *r.method_mut() = Method::OPTIONS;
        assert_eq!(
            admit_default(&mut r).expect_err("refused").reason,
            "bad_path"
        );
        let mut r = req(Version::HTTP_11, "a.example:443", &[("host", "a")]);
        *r.method_mut() = Method::CONNECT;
        assert_eq!(
            admit_default(&mut r).expect_err("refused").reason,
            "method_not_allowed"
        );
        let mut r = req(Version::HTTP_11, "/a%2Fb", &[("host", "a")]);
        assert_eq!(
            admit_default(&mut r).expect_err("refused").reason,
            "bad_path"
        );
    }

    #[test]
    fn underscore_header_actions() {
        let headers = [
            ("host", "a"),
            ("x_meshgate_user", "admin"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_app_flag", "1"),
            ("x-app", "kept"),
        ];
        let mut r = req(Version::HTTP_11, "/", &headers);
        admit_default(&mut r).expect("admitted");
        let names: Vec<&str> = r.headers().keys().map(|n| n.as_str()).collect();
        assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
        assert_eq!(r.headers()["x-app"], "kept");

        let mut r = req(Version::HTTP_11, "/", &headers);
        let allow = inbound("inbound: { headers_with_underscores: allow }");
        admit(&mut r, &allow, &conn()).expect("admitted");
        assert_eq!(r.headers()["x_app_flag"], "1");
        assert!(r.headers().get("x_meshgate_user").is_none());
        assert!(r.headers().get("x_forwarded_for").is_none());

        let mut r = req(Version::HTTP_11, "/", &headers);
        let refuse = inbound("inbound: { headers_with_underscores: reject }");
        let rej = admit(&mut r, &refuse, &conn()).expect_err("refused");
        assert_eq!(rej.reason, "bad_header_name");
    }

    #[test]
    fn forwarding_headers_are_the_sidecars() {
        let headers = [
            ("host", "a"),
            ("x-forwarded-for", "1.1.1.1, 2.2.2.2"),
            ("x-forwarded-for", "3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
        ];
        let mut r = req(Version::HTTP_11, "/", &headers);
        let a = admit_default(&mut r).expect("admitted");
        assert_eq!(a.client_ip, IpAddr::from([10, 0, 0, 9]));
        assert_eq!(a.forwarded_for, "10.0.0.9");
        assert_eq!(a.forwarded_proto, "http");
        for name in FORWARDING_HEADERS {
            assert!(r.headers().get(*name).is_none(), "{name}");
        }

        let one = inbound("inbound: { xff_trusted_hops: 1 }");
        let mut r = req(Version::HTTP_11, "/", &headers);
        let a = admit(&mut r, &one, &conn()).expect("admitted");
        assert_eq!(a.client_ip, IpAddr::from([3, 3, 3, 3]));
        assert_eq!(a.forwarded_for, "3.3.3.3, 10.0.0.9");
        assert_eq!(a.forwarded_proto, "https");

        let two = inbound("inbound: { xff_trusted_hops: 2 }");
        let mut r = req(Version::HTTP_11, "/", &headers);
        let a = admit(&mut r, &two, &conn()).expect("admitted");
        assert_eq!(a.client_ip, IpAddr::from([2, 2, 2, 2]));
        assert_eq!(a.forwarded_for, "2.2.2.2, 3.3.3.3, 10.0.0.9");

        // Too short a chain, or garbage in its trusted part: the peer.
        let four = inbound("inbound: { xff_trusted_hops: 4 }");
        let mut r = req(Version::HTTP_11, "/", &headers);
        let a = admit(&mut r, &four, &conn()).expect("admitted");
        assert_eq!(a.forwarded_for, "10.0.0.9");
        let mut r = req(
            Version::HTTP_11,
            "/",
            &[("host", "a"), ("x-forwarded-for", "1.1.1.1, unknown")],
        );
        let a = admit(&mut r, &one, &conn()).expect("admitted");
        assert_eq!(a.client_ip, IpAddr::from([10, 0, 0, 9]));
    }

    #[test]
    fn managed_names_with_underscores() {
        assert!(reads_as_managed("x_meshgate_user"));
        assert!(reads_as_managed("x-meshgate_user"));
        assert!(reads_as_managed("x_forwarded_for"));
        assert!(reads_as_managed("content_length"));
        assert!(!reads_as_managed("x_app_flag"));
    }
}
