//! Pieces shared by the fuzz targets: the request-head input format and the
//! fixed filter configs the inputs are checked against.
//!
//! Configs are built through the same spec -> `validate` path as a config
//! file, so the targets keep working when a filter's internals change.
#![forbid(unsafe_code)]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use meshgate_filters::signature::RequestParts;
use meshgate_filters::{FilterConfig, FilterSpec, ValidateCx};

/// Unix time the signature targets verify at: `created` of the RFC 9421
/// examples in the seeds, so they pass the time checks and reach the base.
pub const NOW: u64 = 1_618_884_473;

/// The RFC 9421 §B.1.5 shared secret (`test-shared-secret`).
pub const RFC9421_SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

/// The RFC 9421 §B.1.4 `test-key-ed25519` public key.
pub const RFC9421_ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----";

/// An HTTP/1.1 request head as the seeds write it, reduced to what hyper
/// would hand the sidecar: a valid method, URI and header map.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub scheme: &'static str,
}

impl Head {
    /// Parses `data` as a request head (request line, header lines, empty
    /// line); `None` when it is not one. Header lines hyper would refuse are
    /// left out rather than failing the input, so mutations stay useful.
    pub fn parse(data: &[u8]) -> Option<Head> {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if !req.parse(data).ok()?.is_complete() {
            return None;
        }
        let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
        let uri: Uri = req.path?.parse().ok()?;
        let mut headers = HeaderMap::new();
        for h in req.headers.iter() {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(h.value),
            ) {
                headers.append(name, value);
            }
        }
        let scheme = if uri.scheme_str() == Some("https") {
            "https"
        } else {
            "http"
        };
        Some(Head {
            method,
            uri,
            headers,
            scheme,
        })
    }

    pub fn parts(&self) -> RequestParts<'_> {
        RequestParts {
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            scheme: self.scheme,
        }
    }
}

/// Validates a fixed filter config written in YAML; panics when it is
/// invalid, which is a bug in the target, not a finding.
pub fn filter_config(yaml: &str) -> FilterConfig {
    let spec: FilterSpec = serde_yaml::from_str(yaml).expect("fuzz filter spec parses");
    spec.validate("fuzz", &ValidateCx::control_plane())
        .unwrap_or_else(|e| panic!("fuzz filter spec is valid: {e}"))
}

/// Splits `data` at its first newline: (first line, rest).
pub fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
