//! Reading the credential from a request, removing it before the app, and
//! writing session cookies.

use std::ops::Range;
use std::time::Duration;

use cookie::Cookie;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};

use super::spec::{CookieSecure, SameSite, StoreConfig, TokenSource};

fn bearer(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()?.get(bearer_range(value)?)
}

/// Where the token of a `Bearer` value is, in its bytes.
fn bearer_range(value: &HeaderValue) -> Option<Range<usize>> {
    let (scheme, rest) = value.to_str().ok()?.split_once(' ')?;
    let token = rest.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    let start = scheme.len() + 1 + (rest.len() - rest.trim_start().len());
    Some(start..start + token.len())
}

/// Where the credential of a token header's value is, in its bytes.
fn header_range(value: &HeaderValue) -> Option<Range<usize>> {
    let text = value.to_str().ok()?;
    let token = text.trim();
    if token.is_empty() {
        return None;
    }
    let start = text.len() - text.trim_start().len();
    Some(start..start + token.len())
}

/// A credential taken from a request.
pub enum Credential {
    /// Part of a header value, kept whole (a reference-counted buffer) rather
    /// than copied.
    InValue {
        value: HeaderValue,
        range: Range<usize>,
    },
    Owned(String),
}

impl Credential {
    pub fn as_str(&self) -> &str {
        match self {
            Credential::InValue { value, range } => value
                .as_bytes()
                .get(range.clone())
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Credential::Owned(s) => s,
        }
    }

    pub fn into_string(self) -> String {
        match self {
            Credential::Owned(s) => s,
            other => other.as_str().to_string(),
        }
    }
}

/// The credential of the request, if it carries one, removed from the
/// request when `strip` (so the app never sees it).
pub fn take(headers: &mut HeaderMap, source: &TokenSource, strip: bool) -> Option<Credential> {
    // The usual request has one `Authorization` (or token header) value: it
    // is the credential's, so it is read once and moved out, not copied.
    let name = match source {
        TokenSource::Bearer => Some(&AUTHORIZATION),
        TokenSource::Header(name) => Some(name),
        TokenSource::Cookie(_) => None,
    };
    if let Some(name) = name {
        let mut values = headers.get_all(name).iter();
        if let (Some(value), None) = (values.next(), values.next()) {
            let range = match source {
                TokenSource::Bearer => bearer_range(value)?,
                _ => header_range(value)?,
            };
            let value = if strip {
                headers.remove(name)?
            } else {
                value.clone()
            };
            return Some(Credential::InValue { value, range });
        }
    }
    let credential = extract(headers, source)?;
    if strip {
        self::strip(headers, source);
    }
    Some(Credential::Owned(credential))
}

fn cookies(headers: &HeaderMap) -> impl Iterator<Item = Cookie<'_>> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
}

/// The credential of the request, if it carries one.
pub fn extract(headers: &HeaderMap, source: &TokenSource) -> Option<String> {
    match source {
        TokenSource::Bearer => headers
            .get_all(AUTHORIZATION)
            .iter()
            .find_map(bearer)
            .map(str::to_string),
        TokenSource::Cookie(name) => cookies(headers)
            .find(|c| c.name() == name)
            .map(|c| c.value_trimmed().to_string())
            .filter(|v| !v.is_empty()),
        TokenSource::Header(name) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string),
    }
}

/// Removes the credential so the app never sees it.
pub fn strip(headers: &mut HeaderMap, source: &TokenSource) {
    match source {
        TokenSource::Bearer => {
            let kept: Vec<HeaderValue> = headers
                .get_all(AUTHORIZATION)
                .iter()
                .filter(|v| bearer(v).is_none())
                .cloned()
                .collect();
            headers.remove(AUTHORIZATION);
            for v in kept {
                headers.append(AUTHORIZATION, v);
            }
        }
        TokenSource::Cookie(name) => {
            let others: Vec<String> = cookies(headers)
                .filter(|c| c.name() != name)
                .map(|c| c.to_string())
                .collect();
            headers.remove(COOKIE);
            if !others.is_empty() {
                if let Ok(v) = HeaderValue::try_from(others.join("; ")) {
                    headers.insert(COOKIE, v);
                }
            }
        }
        TokenSource::Header(name) => {
            headers.remove(name);
        }
    }
}

/// Whether `id` has the shape of an id this filter issues (base64url, sane
/// length); other values are refused without a store lookup.
pub fn plausible_session_id(id: &str) -> bool {
    (22..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `Set-Cookie` for a session id; `max_age: None` expires the cookie.
pub fn session_cookie(
    name: &str,
    value: &str,
    max_age: Option<Duration>,
    config: &StoreConfig,
    tls: bool,
) -> Option<HeaderValue> {
    // Browsers drop SameSite=None cookies that are not Secure.
    let secure =
        tls || config.cookie_secure == CookieSecure::Always || config.same_site == SameSite::None;
    let same_site = match config.same_site {
        SameSite::Strict => cookie::SameSite::Strict,
        SameSite::Lax => cookie::SameSite::Lax,
        SameSite::None => cookie::SameSite::None,
    };
    let seconds = max_age.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut builder = Cookie::build((name.to_string(), value.to_string()))
        .path(config.cookie_path.clone())
        .http_only(true)
        .secure(secure)
        .same_site(same_site)
        .max_age(cookie::time::Duration::seconds(seconds));
    if let Some(domain) = &config.cookie_domain {
        builder = builder.domain(domain.clone());
    }
    HeaderValue::try_from(builder.build().to_string()).ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderName;

    use super::*;

    fn headers(values: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in values {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn taken(map: &mut HeaderMap, source: &TokenSource, strip: bool) -> Option<String> {
        take(map, source, strip).map(Credential::into_string)
    }

    #[test]
    fn one_value_is_moved_out_and_read_in_place() {
        let mut map = headers(&[("authorization", "bearer  abc.def ")]);
        assert_eq!(
            taken(&mut map, &TokenSource::Bearer, false).as_deref(),
            Some("abc.def")
        );
        assert_eq!(map.get_all(AUTHORIZATION).iter().count(), 1, "forwarded");
        assert_eq!(
            taken(&mut map, &TokenSource::Bearer, true).as_deref(),
            Some("abc.def")
        );
        assert!(map.get(AUTHORIZATION).is_none(), "stripped");

        let name = HeaderName::from_static("x-token");
        let mut map = headers(&[("x-token", "  tok  ")]);
        let source = TokenSource::Header(name.clone());
        assert_eq!(taken(&mut map, &source, true).as_deref(), Some("tok"));
        assert!(map.get(&name).is_none());
    }

    #[test]
    fn other_credentials_stay_and_refusals_touch_nothing() {
        // not a bearer value: nothing taken, the header left as it was
        for value in ["Basic dTpw", "Bearer ", "Bearer"] {
            let mut map = headers(&[("authorization", value)]);
            assert_eq!(taken(&mut map, &TokenSource::Bearer, true), None, "{value}");
            assert_eq!(
                map.get(AUTHORIZATION).map(|v| v.as_bytes()),
                Some(value.as_bytes())
            );
        }
        // several values: the bearer one is taken, the others go to the app
        let mut map = headers(&[
            ("authorization", "Basic dTpw"),
            ("authorization", "Bearer t1"),
        ]);
        assert_eq!(
            taken(&mut map, &TokenSource::Bearer, true).as_deref(),
            Some("t1")
        );
        let kept: Vec<&[u8]> = map
            .get_all(AUTHORIZATION)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(kept, [b"Basic dTpw".as_slice()]);
    }
}
