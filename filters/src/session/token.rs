//! Reading the credential from a request, removing it before the app, and
//! writing session cookies.

use std::time::Duration;

use cookie::Cookie;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};

use super::spec::{CookieSecure, SameSite, StoreConfig, TokenSource};

fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
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
