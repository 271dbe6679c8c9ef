//! The file/wire spec of `type: session` and its validation into
//! [`SessionConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;
use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer, Serialize};

use super::jwt::{KeySet, SUPPORTED_ALGORITHMS};
use crate::config::shape::{self, Dur};
use crate::config::{FieldErrors, ValidateCx};

/// `token_from:` — where the credential is read from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenFrom {
    Bearer,
    Cookie,
    Header,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CookieSecure {
    /// `Secure` when the client connected over TLS.
    Auto,
    /// Always `Secure` (TLS terminated in front of the sidecar).
    Always,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// 503 `session_store_unavailable`.
    FailClosed,
    /// Continue without identity.
    AllowAnonymous,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The file/wire spec. Users write it flat; it is read into one variant
/// per `mode`, so a field of the other mode, or no JWKS
/// source, is refused while reading, at its field path.
#[derive(Clone, Serialize, PartialEq)]
pub struct SessionSpec {
    #[serde(flatten)]
    pub mode: ModeSpec,
    /// No credential: continue anonymously instead of 401 `login_required`.
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
    /// Pass the credential on to the app (default: removed).
    #[serde(skip_serializing_if = "is_false")]
    pub forward: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_from: Option<TokenFrom>,
    /// Cookie or header name for `token_from: cookie|header`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_name: Option<String>,
    /// Claim name -> `x-meshgate-*` header for the app.
    #[serde(skip_serializing_if = "IndexMap::is_empty")]
    pub claims_to_headers: IndexMap<String, String>,
}

/// `mode:` — what the credential is.
#[derive(Clone, Serialize, PartialEq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ModeSpec {
    /// A signed JWT verified against a JWKS.
    Jwt(JwtSpec),
    /// An opaque id looked up in a server-side session store.
    Session(StoreSpec),
}

#[derive(Clone, Serialize, PartialEq)]
pub struct JwtSpec {
    #[serde(flatten)]
    pub keys: JwksSource,
    #[serde(flatten)]
    pub settings: JwtSettings,
}

/// Where the keys come from: exactly one of the three.
#[derive(Clone, Serialize, PartialEq)]
pub enum JwksSource {
    #[serde(rename = "jwks")]
    Inline(serde_json::Value),
    #[serde(rename = "jwks_file")]
    File(PathBuf),
    #[serde(rename = "jwks_url")]
    Url(String),
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// How long a fetched remote JWKS is fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<Dur>,
    /// Minimum spacing of refreshes (unknown `kid`, failed fetches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_min_refresh: Option<Dur>,
    /// How long keys keep serving while refreshes fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_max_stale: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_timeout: Option<Dur>,
    /// PEM CA bundle trusted for an https `jwks_url` (default: public web PKI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_claims: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Dur>,
    /// Allowed JWS algorithms (default: all supported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Verified tokens kept so a repeated token skips verification (default
    /// 1000; 0: verify every request in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_cache_entries: Option<usize>,
}

#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreKind>,
    /// Lifetime of the local cache in front of Redis: the revocation budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_max_entries: Option<usize>,
    /// Live sessions one subject may hold (default 16); a login beyond it
    /// revokes the subject's least recently used session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_subject: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_timeout: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_site: Option<SameSite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_secure: Option<CookieSecure>,
    /// Response header carrying a new session id when `token_from` is not a cookie.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_store_error: Option<OnStoreError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

const COMMON_FIELDS: &[&str] = &[
    "optional",
    "forward",
    "token_from",
    "token_name",
    "claims_to_headers",
];
const JWKS_SOURCES: &[&str] = &["jwks", "jwks_file", "jwks_url"];
const JWT_FIELDS: &[&str] = &[
    "jwks",
    "jwks_file",
    "jwks_url",
    "jwks_refresh",
    "jwks_min_refresh",
    "jwks_max_stale",
    "jwks_timeout",
    "jwks_ca_file",
    "issuer",
    "audiences",
    "required_claims",
    "leeway",
    "algorithms",
    "verified_cache_entries",
];
const STORE_FIELDS: &[&str] = &[
    "store",
    "cache_ttl",
    "cache_max_entries",
    "max_sessions_per_subject",
    "idle_timeout",
    "absolute_timeout",
    "same_site",
    "cookie_path",
    "cookie_domain",
    "cookie_secure",
    "issue_header",
    "on_store_error",
    "key_prefix",
];

impl<'de> Deserialize<'de> for SessionSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Common {
            #[serde(default)]
            optional: bool,
            #[serde(default)]
            forward: bool,
            token_from: Option<TokenFrom>,
            token_name: Option<String>,
            #[serde(default)]
            claims_to_headers: IndexMap<String, String>,
        }
        let mut fields = shape::object(d)?;
        let mode = shape::keyword(&mut fields, "mode")?
            .ok_or_else(|| shape::at("mode", "required: jwt or session"))?;
        let common: Common = shape::take(&mut fields, COMMON_FIELDS)?;
        let only = |fields: &shape::Fields, other: &[&str], mode: &str| match other
            .iter()
            .find(|f| fields.contains_key(**f))
        {
            Some(f) => Err(shape::at(f, format!("only valid with mode: {mode}"))),
            None => Ok(()),
        };
        let mode = match mode.as_str() {
            "jwt" => {
                only(&fields, STORE_FIELDS, "session")?;
                let sources: Vec<&str> = JWKS_SOURCES
                    .iter()
                    .copied()
                    .filter(|f| fields.contains_key(*f))
                    .collect();
                let [source] = sources[..] else {
                    return Err(shape::at(
                        "jwks",
                        "exactly one of jwks, jwks_file, jwks_url is required",
                    ));
                };
                let value = fields.remove(source).unwrap_or_default();
                let keys = match source {
                    "jwks" => JwksSource::Inline(shape::read_at(source, value)?),
                    "jwks_file" => JwksSource::File(shape::read_at(source, value)?),
                    _ => JwksSource::Url(shape::read_at(source, value)?),
                };
                ModeSpec::Jwt(JwtSpec {
                    keys,
                    settings: shape::read(shape::rest(fields))?,
                })
            }
            "session" => {
                only(&fields, JWT_FIELDS, "jwt")?;
                ModeSpec::Session(shape::read(shape::rest(fields))?)
            }
            _ => return Err(shape::at("mode", "expected jwt or session")),
        };
        Ok(SessionSpec {
            mode,
            optional: common.optional,
            forward: common.forward,
            token_from: common.token_from,
            token_name: common.token_name,
            claims_to_headers: common.claims_to_headers,
        })
    }
}

/// Where the credential comes from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Bearer,
    Cookie(String),
    Header(HeaderName),
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub optional: bool,
    pub forward: bool,
    pub token: TokenSource,
    pub claims_to_headers: Vec<(String, HeaderName)>,
    pub mode: ModeConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            optional: false,
            forward: false,
            token: TokenSource::Bearer,
            claims_to_headers: Vec::new(),
            mode: ModeConfig::Jwt(JwtConfig::default()),
        }
    }
}

#[derive(Debug, Clone)]
pub enum ModeConfig {
    Jwt(JwtConfig),
    Session(StoreConfig),
}

#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    pub keys: KeySource,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub required_claims: Vec<String>,
    pub leeway: Duration,
    pub algorithms: Vec<Algorithm>,
    /// Capacity of the verified-token cache; 0: off.
    pub verified_cache_entries: usize,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Static(Arc<KeySet>),
    Remote(RemoteJwksConfig),
}

impl Default for KeySource {
    fn default() -> Self {
        KeySource::Static(Arc::new(KeySet::default()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwksConfig {
    pub url: http::Uri,
    /// Trust roots for https; `None`: the public web PKI.
    pub ca: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub max_stale: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub store: StoreKind,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    pub max_sessions_per_subject: usize,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    pub same_site: SameSite,
    pub cookie_path: String,
    pub cookie_domain: Option<String>,
    pub cookie_secure: CookieSecure,
    pub issue_header: Option<HeaderName>,
    pub on_store_error: OnStoreError,
    pub key_prefix: String,
}

pub const DEFAULT_SESSION_COOKIE: &str = "meshgate_session";
pub const DEFAULT_MAX_SESSIONS_PER_SUBJECT: usize = 16;
const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Verified tokens a JWT filter keeps by default (a few hundred KiB at most).
const DEFAULT_VERIFIED_CACHE_ENTRIES: usize = 1000;

fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

impl SessionSpec {
    pub fn validate(&self, path: &str, cx: &ValidateCx) -> Result<SessionConfig, FieldErrors> {
        let mut errors = FieldErrors::default();
        let token = self.token_source(path, &mut errors);
        let claims_to_headers = self
            .claims_to_headers
            .iter()
            .filter_map(|(claim, header)| {
                let field = format!("{path}.claims_to_headers.{claim}");
                match HeaderName::try_from(header.as_str()) {
                    Ok(h) if h.as_str().starts_with(crate::IDENTITY_HEADER_PREFIX) => {
                        Some((claim.clone(), h))
                    }
                    Ok(_) => {
                        errors.push(field, "claims go to x-meshgate-* headers only");
                        None
                    }
                    Err(_) => {
                        errors.push(field, format!("invalid header name {header:?}"));
                        None
                    }
                }
            })
            .collect();
        let mode = match &self.mode {
            ModeSpec::Jwt(jwt) => ModeConfig::Jwt(jwt.config(path, cx, &mut errors)),
            ModeSpec::Session(store) => {
                ModeConfig::Session(store.config(path, &token, &mut errors))
            }
        };
        errors.into_result(SessionConfig {
            optional: self.optional,
            forward: self.forward,
            token,
            claims_to_headers,
            mode,
        })
    }

    fn token_source(&self, path: &str, errors: &mut FieldErrors) -> TokenSource {
        let session_mode = matches!(self.mode, ModeSpec::Session(_));
        let default_from = if session_mode {
            TokenFrom::Cookie
        } else {
            TokenFrom::Bearer
        };
        let name_path = format!("{path}.token_name");
        match self.token_from.unwrap_or(default_from) {
            TokenFrom::Bearer => {
                if self.token_name.is_some() {
                    errors.push(name_path, "not used with token_from: bearer");
                }
                TokenSource::Bearer
            }
            TokenFrom::Cookie => {
                let name = match (&self.token_name, session_mode) {
                    (Some(n), _) => n.clone(),
                    (None, true) => DEFAULT_SESSION_COOKIE.to_string(),
                    (None, false) => {
                        errors.push(name_path.clone(), "required with token_from: cookie");
                        String::new()
                    }
                };
                if !name.is_empty() && !valid_cookie_name(&name) {
                    errors.push(name_path, format!("invalid cookie name {name:?}"));
                }
                TokenSource::Cookie(name)
            }
            TokenFrom::Header => match &self.token_name {
                None => {
                    errors.push(name_path, "required with token_from: header");
                    TokenSource::Bearer
                }
                Some(n) => match HeaderName::try_from(n.as_str()) {
                    Ok(h) if h.as_str().starts_with(crate::IDENTITY_HEADER_PREFIX) => {
                        errors.push(
                            name_path,
                            "x-meshgate-* headers are removed from client requests",
                        );
                        TokenSource::Bearer
                    }
                    Ok(h) => TokenSource::Header(h),
                    Err(_) => {
                        errors.push(name_path, format!("invalid header name {n:?}"));
                        TokenSource::Bearer
                    }
                },
            },
        }
    }
}

impl JwtSpec {
    fn config(&self, path: &str, cx: &ValidateCx, errors: &mut FieldErrors) -> JwtConfig {
        let s = &self.settings;
        let algorithms: Vec<Algorithm> = if s.algorithms.is_empty() {
            SUPPORTED_ALGORITHMS.to_vec()
        } else {
            s.algorithms
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    let found = SUPPORTED_ALGORITHMS
                        .iter()
                        .find(|s| format!("{s:?}") == *a)
                        .copied();
                    if found.is_none() {
                        errors.push(
                            format!("{path}.algorithms[{i}]"),
                            format!(
                                "unsupported algorithm {a:?} (ES256, RS256, PS256, EdDSA, HS256)"
                            ),
                        );
                    }
                    found
                })
                .collect()
        };
        let keys = match &self.keys {
            JwksSource::Inline(inline) => KeySource::Static(Arc::new(KeySet::parse_strict(
                inline,
                &algorithms,
                &format!("{path}.jwks"),
                errors,
            ))),
            JwksSource::File(file) => {
                let field = format!("{path}.jwks_file");
                match cx.read_file(&field, file) {
                    Ok(None) => KeySource::default(),
                    Ok(Some(bytes)) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(v) => KeySource::Static(Arc::new(KeySet::parse_strict(
                            &v,
                            &algorithms,
                            &field,
                            errors,
                        ))),
                        Err(e) => {
                            errors.push(field, format!("not a JSON JWKS: {e}"));
                            KeySource::default()
                        }
                    },
                    Err(e) => {
                        errors.0.push(e);
                        KeySource::default()
                    }
                }
            }
            JwksSource::Url(url) => {
                let field = format!("{path}.jwks_url");
                match url.parse::<http::Uri>() {
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http" | "https"))
                            && uri.host().is_some() =>
                    {
                        let ca = jwks_ca(s, path, cx, errors);
                        if ca.is_some() && uri.scheme_str() != Some("https") {
                            errors.push(
                                format!("{path}.jwks_ca_file"),
                                "only used with an https jwks_url",
                            );
                        }
                        KeySource::Remote(RemoteJwksConfig {
                            url: uri,
                            ca,
                            refresh: positive(
                                s.jwks_refresh,
                                Duration::from_secs(300),
                                &format!("{path}.jwks_refresh"),
                                errors,
                            ),
                            min_refresh: s
                                .jwks_min_refresh
                                .map_or(Duration::from_secs(30), Dur::get),
                            max_stale: positive(
                                s.jwks_max_stale,
                                Duration::from_secs(24 * 3600),
                                &format!("{path}.jwks_max_stale"),
                                errors,
                            ),
                            timeout: positive(
                                s.jwks_timeout,
                                Duration::from_secs(5),
                                &format!("{path}.jwks_timeout"),
                                errors,
                            ),
                        })
                    }
                    _ => {
                        errors.push(
                            field,
                            format!(
                                "not an http(s) URL with a host: {}",
                                crate::redact::redact_url(url)
                            ),
                        );
                        KeySource::default()
                    }
                }
            }
        };
        // `jwks_ca_file` and the fetch settings beside a file or inline
        // JWKS were always accepted and ignored; they still are.
        let mut required_claims = s
            .required_claims
            .clone()
            .unwrap_or_else(|| vec!["exp".to_string()]);
        if s.issuer.is_some() && !required_claims.iter().any(|c| c == "iss") {
            required_claims.push("iss".to_string());
        }
        if !s.audiences.is_empty() && !required_claims.iter().any(|c| c == "aud") {
            required_claims.push("aud".to_string());
        }
        if let Some(iss) = &s.issuer {
            if iss.is_empty() {
                errors.push(format!("{path}.issuer"), "must not be empty");
            }
        }
        JwtConfig {
            keys,
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            required_claims,
            leeway: s.leeway.map_or(DEFAULT_LEEWAY, Dur::get),
            algorithms,
            verified_cache_entries: s
                .verified_cache_entries
                .unwrap_or(DEFAULT_VERIFIED_CACHE_ENTRIES),
        }
    }
}

/// The CA bundle of `jwks_ca_file`, if set.
fn jwks_ca(
    s: &JwtSettings,
    path: &str,
    cx: &ValidateCx,
    errors: &mut FieldErrors,
) -> Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>> {
    use rustls::pki_types::pem::PemObject;
    let file = s.jwks_ca_file.as_ref()?;
    let field = format!("{path}.jwks_ca_file");
    let bytes = match cx.read_file(&field, file) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            errors.0.push(e);
            return None;
        }
    };
    let certs: Result<Vec<_>, _> =
        rustls::pki_types::CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Some(Arc::new(certs)),
        _ => {
            errors.push(field, "no PEM certificates in the file");
            None
        }
    }
}

fn positive(
    value: Option<Dur>,
    default: Duration,
    field: &str,
    errors: &mut FieldErrors,
) -> Duration {
    let d = value.map_or(default, Dur::get);
    if d.is_zero() {
        errors.push(field, "must be greater than zero");
    }
    d
}

impl StoreSpec {
    fn config(&self, path: &str, token: &TokenSource, errors: &mut FieldErrors) -> StoreConfig {
        let idle_timeout = positive(
            self.idle_timeout,
            Duration::from_secs(30 * 60),
            &format!("{path}.idle_timeout"),
            errors,
        );
        let absolute_timeout = positive(
            self.absolute_timeout,
            Duration::from_secs(12 * 3600),
            &format!("{path}.absolute_timeout"),
            errors,
        );
        let cache_ttl = self.cache_ttl.map_or(Duration::from_secs(2), Dur::get);
        if cache_ttl >= idle_timeout {
            errors.push(
                format!("{path}.cache_ttl"),
                "must be shorter than idle_timeout",
            );
        }
        let issue_header = match (&self.issue_header, token) {
            (Some(_), TokenSource::Cookie(_)) => {
                errors.push(
                    format!("{path}.issue_header"),
                    "not used with token_from: cookie (the id goes into Set-Cookie)",
                );
                None
            }
            (Some(h), _) => match HeaderName::try_from(h.as_str()) {
                Ok(h) => Some(h),
                Err(_) => {
                    errors.push(
                        format!("{path}.issue_header"),
                        format!("invalid header name {h:?}"),
                    );
                    None
                }
            },
            (None, TokenSource::Header(h)) => Some(h.clone()),
            (None, TokenSource::Bearer) => Some(HeaderName::from_static("x-session-token")),
            (None, TokenSource::Cookie(_)) => None,
        };
        let cookie_path = self.cookie_path.clone().unwrap_or_else(|| "/".to_string());
        if !cookie_path.starts_with('/')
            || cookie_path
                .bytes()
                .any(|b| b == b';' || b.is_ascii_control())
        {
            errors.push(
                format!("{path}.cookie_path"),
                "must be a path starting with /",
            );
        }
        if let Some(d) = &self.cookie_domain {
            if d.is_empty()
                || d.bytes()
                    .any(|b| b == b';' || b.is_ascii_control() || b == b' ')
            {
                errors.push(format!("{path}.cookie_domain"), "invalid domain");
            }
        }
        let cache_max_entries = self.cache_max_entries.unwrap_or(100_000);
        if cache_max_entries == 0 {
            errors.push(
                format!("{path}.cache_max_entries"),
                "must be greater than zero",
            );
        }
        let max_sessions_per_subject = self
            .max_sessions_per_subject
            .unwrap_or(DEFAULT_MAX_SESSIONS_PER_SUBJECT);
        if max_sessions_per_subject == 0 {
            errors.push(
                format!("{path}.max_sessions_per_subject"),
                "must be greater than zero",
            );
        }
        StoreConfig {
            store: self.store.unwrap_or(StoreKind::Memory),
            cache_ttl,
            cache_max_entries,
            max_sessions_per_subject,
            idle_timeout,
            absolute_timeout,
            same_site: self.same_site.unwrap_or(SameSite::Lax),
            cookie_path,
            cookie_domain: self.cookie_domain.clone(),
            cookie_secure: self.cookie_secure.unwrap_or(CookieSecure::Auto),
            issue_header,
            on_store_error: self.on_store_error.unwrap_or(OnStoreError::FailClosed),
            key_prefix: self
                .key_prefix
                .clone()
                .unwrap_or_else(|| "meshgate:session:".to_string()),
        }
    }
}

impl SessionSpec {
    /// A copy with secrets replaced, for dumps and logs: symmetric and
    /// private key material of inline JWKs.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        match &mut copy.mode {
            ModeSpec::Jwt(JwtSpec {
                keys: JwksSource::Inline(jwks),
                ..
            }) => redact_jwks(jwks),
            ModeSpec::Jwt(JwtSpec {
                keys: JwksSource::Url(url),
                ..
            }) => *url = crate::redact::redact_url(url),
            _ => {}
        }
        copy
    }
}

fn redact_jwks(jwks: &mut serde_json::Value) {
    const SECRET_MEMBERS: &[&str] = &["k", "d", "p", "q", "dp", "dq", "qi", "oth"];
    if let Some(keys) = jwks.get_mut("keys").and_then(|k| k.as_array_mut()) {
        for key in keys {
            if let Some(obj) = key.as_object_mut() {
                for member in SECRET_MEMBERS {
                    if let Some(v) = obj.get_mut(*member) {
                        *v = serde_json::Value::String(crate::redact::REDACTED.into());
                    }
                }
            }
        }
    }
}

/// Shows the redacted form: a spec reaches logs through `{:?}` too.
impl std::fmt::Debug for SessionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = serde_json::to_string(&self.redacted()).map_err(|_| std::fmt::Error)?;
        write!(f, "SessionSpec {shown}")
    }
}

impl SessionConfig {
    pub fn uses_redis(&self) -> bool {
        matches!(&self.mode, ModeConfig::Session(s) if s.store == StoreKind::Redis)
    }
}
