//! Redaction of credentials carried in URLs, for config dumps, the control
//! plane's history and diffs, and logs.
//!
//! One function, [`redact_url`], used everywhere a configured URL is shown.
//! It parses the URL (the `url` crate, WHATWG rules) instead of searching for
//! `user:pass@`, and redacts by default: the whole userinfo, every query value
//! except a few known-harmless parameters with plain values, and the
//! fragment. What cannot be parsed as a URL with an authority is redacted
//! whole: a credential may hide anywhere in it.

use url::{Position, Url};

/// The marker that replaces redacted material everywhere.
pub const REDACTED: &str = "[redacted]";

/// Query parameters whose values are shown: they select a database or a
/// protocol and never carry a credential.
const HARMLESS_PARAMS: &[&str] = &[
    "db",
    "protocol",
    "timeout",
    "connect_timeout",
    "response_timeout",
];

/// `url` with every credential it may carry replaced by [`REDACTED`].
///
/// ```
/// use meshgate_filters::redact::redact_url;
/// assert_eq!(
///     redact_url("redis+unix:///run/redis.sock?db=0&pass=S3cret"),
///     "redis+unix:///run/redis.sock?db=0&pass=[redacted]"
/// );
/// assert_eq!(redact_url("redis://:S3cret@cache:6379/0"), "redis://[redacted]@cache:6379/0");
/// assert_eq!(redact_url("not a url S3cret"), "[redacted]");
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = Url::parse(url) else {
        return REDACTED.to_string();
    };
    // `scheme:opaque` has no structure to keep: `redis:S3cret@host` would
    // otherwise show its secret as a path.
    if parsed.cannot_be_a_base() || !url.contains("//") {
        return REDACTED.to_string();
    }
    let mut out = String::with_capacity(url.len());
    out.push_str(&parsed[..Position::BeforeUsername]);
    if !parsed.username().is_empty() || parsed.password().is_some() {
        out.push_str(REDACTED);
        out.push('@');
    }
    out.push_str(&parsed[Position::BeforeHost..Position::AfterPath]);
    if let Some(query) = parsed.query() {
        out.push('?');
        out.push_str(&redact_query(query));
    }
    if parsed.fragment().is_some() {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// Keeps each `key=value` pair's key as written; the value only when the key
/// is harmless and the value is plain (no separators or escapes that another
/// parser might read as a further parameter).
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| {
            let (raw_key, raw_value) = match pair.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (pair, None),
            };
            let key = form_urlencoded::parse(raw_key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            let shown = HARMLESS_PARAMS.contains(&key.as_str())
                && raw_key.bytes().all(plain)
                && raw_value.is_none_or(|v| v.bytes().all(plain));
            match raw_value {
                _ if shown => pair.to_string(),
                // A bare word may itself be a token (`?S3cret`).
                None => REDACTED.to_string(),
                Some(_) => format!("{}={REDACTED}", plain_or_redacted(raw_key)),
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// A key is shown when it is plain; an odd one (`%70ass`, `a;b`) may smuggle
/// a value, so it is redacted too.
fn plain_or_redacted(raw_key: &str) -> &str {
    if !raw_key.is_empty() && raw_key.bytes().all(plain) {
        raw_key
    } else {
        REDACTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "S3cret";

    /// Every spelling must lose the secret; the expected form is stable.
    #[test]
    fn every_credential_spelling_is_redacted() {
        let table = [
            (
                "redis://:S3cret@cache:6379/0",
                "redis://[redacted]@cache:6379/0",
            ),
            (
                "redis://default:S3cret@cache:6379",
                "redis://[redacted]@cache:6379",
            ),
            ("redis://S3cret@cache", "redis://[redacted]@cache"),
            (
                "rediss://u:S3cret@[::1]:6380/2",
                "rediss://[redacted]@[::1]:6380/2",
            ),
            ("redis://u:p%40S3cret@cache", "redis://[redacted]@cache"),
            ("redis://u:S3cret@@cache", "redis://[redacted]@cache"),
            (
                "redis+unix:///run/redis.sock?db=0&pass=S3cret",
                "redis+unix:///run/redis.sock?db=0&pass=[redacted]",
            ),
            (
                "redis+unix:///run/redis.sock?db=0&PASSWORD=S3cret",
                "redis+unix:///run/redis.sock?db=0&PASSWORD=[redacted]",
            ),
            (
                "redis://cache?%70ass=S3cret",
                "redis://cache?[redacted]=[redacted]",
            ),
            (
                "redis://cache?db=0;pass=S3cret",
                "redis://cache?db=[redacted]",
            ),
            (
                "redis://cache?db=0%26pass%3DS3cret",
                "redis://cache?db=[redacted]",
            ),
            ("redis://cache?S3cret", "redis://cache?[redacted]"),
            (
                "redis://cache?token=S3cret&db=1",
                "redis://cache?token=[redacted]&db=1",
            ),
            (
                "https://idp.example/jwks?api_key=S3cret",
                "https://idp.example/jwks?api_key=[redacted]",
            ),
            (
                "https://idp.example/jwks#access_token=S3cret",
                "https://idp.example/jwks#[redacted]",
            ),
            (
                "https://S3cret:x-oauth-basic@idp.example/",
                "https://[redacted]@idp.example/",
            ),
            (
                "HTTPS://u:S3cret@IDP.example",
                "https://[redacted]@idp.example/",
            ),
            ("redis:S3cret@cache", "[redacted]"),
            ("not a url S3cret", "[redacted]"),
            ("redis://u:S3cret@ca che", "[redacted]"),
            ("", "[redacted]"),
        ];
        for (input, want) in table {
            let got = redact_url(input);
            assert_eq!(got, want, "{input}");
            assert!(!got.contains(SECRET), "{input} -> {got}");
        }
    }

    #[test]
    fn urls_without_credentials_keep_their_meaning() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis+unix:///run/redis.sock?db=3",
            "rediss://cache.internal:6380/1?protocol=resp3",
            "https://idp.example/.well-known/jwks.json",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
