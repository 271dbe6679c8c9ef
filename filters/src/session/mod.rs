//! `type: session`: end-user identity from a JWT or a server-side session.
//!
//! ```yaml
//! filters:
//!   login:
//!     type: session
//!     mode: jwt                          # or: session
//!     jwks_file: keys/jwks.json          # or jwks: {inline}, or jwks_url: http://...
//!     issuer: https://id.example.com
//!     audiences: [wallet]
//!     leeway: 30s
//!     claims_to_headers: { sub: x-meshgate-user, tenant: x-meshgate-tenant }
//!     optional: false
//! ```
//!
//! Verified identity reaches the app as `x-meshgate-*` headers; the
//! credential itself is removed unless `forward: true`. In `mode: session`
//! the app issues and ends sessions with the response headers
//! `x-meshgate-session-set` / `x-meshgate-session-clear` and never talks to
//! the session store itself. See `docs/session.md`.

mod cache;
mod jwks;
mod jwt;
mod spec;
mod store;
mod token;
mod verified;

#[cfg(test)]
mod tests;

/// JWT header and claims checking, reachable from the fuzz targets in
/// `test-harness/fuzz/` only.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use super::jwt::{Claims, JwtError, JwtVerifier, KeySet};
}

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::SET_COOKIE;
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use spec::{
    CookieSecure, JwksSource, JwtConfig, JwtSettings, JwtSpec, KeySource, ModeConfig, ModeSpec,
    OnStoreError, RemoteJwksConfig, SameSite, SessionConfig, SessionSpec, StoreConfig, StoreKind,
    StoreSpec, TokenFrom, TokenSource,
};

use self::cache::{CacheSettings, SessionCache};
use self::jwks::{RemoteJwks, RemoteSettings};
use self::jwt::{JwtError, JwtVerifier, KeySet, Subject};
use self::store::{Backend, Lookup, MemoryStore, Now, SessionRecord, StoreFailure};
use self::verified::VerifiedTokens;
use crate::chain::BuildCx;
use crate::context::RequestCtx;
use crate::error::{Reason, Rejection};
use crate::filter::{Filter, RequestView, ResponseView};

// The reasons this filter answers with (listed in `crate::error::REASONS`).
pub const LOGIN_REQUIRED: Reason = Reason::new("login_required", 401, 40111);
pub const TOKEN_INVALID: Reason = Reason::new("token_invalid", 401, 40112);
pub const TOKEN_EXPIRED: Reason = Reason::new("token_expired", 401, 40113);
pub const SESSION_EXPIRED: Reason = Reason::new("session_expired", 401, 40114);
pub const SESSION_REVOKED: Reason = Reason::new("session_revoked", 401, 40115);
pub const SESSION_STORE_UNAVAILABLE: Reason = Reason::new("session_store_unavailable", 503, 50311);

/// Response header by which the app asks for a new session.
pub const SESSION_SET_HEADER: &str = "x-meshgate-session-set";
/// Response header by which the app ends the current session.
pub const SESSION_CLEAR_HEADER: &str = "x-meshgate-session-clear";
/// The verified subject, for the app.
pub const USER_HEADER: &str = "x-meshgate-user";
const USER_HEADER_NAME: HeaderName = HeaderName::from_static(USER_HEADER);

enum Keys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>, RemoteSettings),
}

struct SessionRuntime {
    config: StoreConfig,
    backend: Backend,
    cache: Arc<SessionCache>,
    cache_settings: CacheSettings,
}

enum Runtime {
    Jwt {
        verifier: JwtVerifier,
        keys: Keys,
        verified: VerifiedTokens,
    },
    Session(SessionRuntime),
}

/// The session id a request came with, for the response phase (logout,
/// replacement at login).
#[derive(Clone)]
struct CurrentSession(String);

/// State key of the process-wide memory session store.
const MEMORY_STORE_KEY: &str = "session/memory-store";

pub struct SessionFilter {
    optional: bool,
    forward: bool,
    token: TokenSource,
    claims_to_headers: Vec<(String, HeaderName)>,
    runtime: Runtime,
}

impl SessionFilter {
    pub fn build(name: &str, config: &SessionConfig, cx: &BuildCx<'_>) -> Self {
        let runtime = match &config.mode {
            ModeConfig::Jwt(jwt) => Runtime::Jwt {
                verifier: JwtVerifier::new(jwt, !config.claims_to_headers.is_empty()),
                verified: VerifiedTokens::new(jwt.verified_cache_entries),
                keys: match &jwt.keys {
                    KeySource::Static(keys) => Keys::Static(keys.clone()),
                    KeySource::Remote(remote) => Keys::Remote(
                        cx.state.get_or_insert(
                            &format!("{name}/jwks/{}/{}", remote.url, trust_roots_id(remote)),
                            || RemoteJwks::new(remote.ca.as_deref().map(Vec::as_slice)),
                        ),
                        RemoteSettings {
                            config: remote.clone(),
                            algorithms: jwt.algorithms.clone(),
                        },
                    ),
                },
            },
            ModeConfig::Session(s) => {
                let backend = match s.store {
                    StoreKind::Memory => {
                        // One memory store per process, like one Redis per service: a
                        // session issued through the login route's instance must be
                        // known to the API routes' instances.
                        let store = cx
                            .state
                            .get_or_insert(MEMORY_STORE_KEY, MemoryStore::default);
                        store.set_max_entries(s.cache_max_entries);
                        Backend::Memory(store)
                    }
                    StoreKind::Redis => Backend::Redis {
                        store: cx.redis.clone(),
                        prefix: s.key_prefix.clone(),
                    },
                };
                Self::session_runtime(name, s, backend, cx)
            }
        };
        SessionFilter {
            optional: config.optional,
            forward: config.forward,
            token: config.token.clone(),
            claims_to_headers: config.claims_to_headers.clone(),
            runtime,
        }
    }

    fn session_runtime(
        name: &str,
        config: &StoreConfig,
        backend: Backend,
        cx: &BuildCx<'_>,
    ) -> Runtime {
        Runtime::Session(SessionRuntime {
            config: config.clone(),
            backend,
            cache: cx
                .state
                .get_or_insert(&format!("{name}/session-cache"), SessionCache::default),
            cache_settings: CacheSettings {
                ttl: config.cache_ttl,
                max_entries: config.cache_max_entries,
                idle: config.idle_timeout,
            },
        })
    }

    /// A refusal, or anonymous continuation on `optional` routes (for
    /// session-mode refusals only: a stale cookie must not block the login
    /// route that replaces it).
    fn refuse_session(
        &self,
        reason: &'static Reason,
        message: &'static str,
    ) -> Result<(), Rejection> {
        if self.optional {
            Ok(())
        } else {
            Err(Rejection::new(reason, message))
        }
    }

    fn set_identity(
        &self,
        cx: &mut RequestCtx,
        sub: Option<&Subject>,
        claims: &Map<String, Value>,
    ) {
        if let Some(sub) = sub {
            cx.user = Some(sub.id.clone());
            match &sub.header {
                Some(v) => cx.set_upstream_header(USER_HEADER_NAME, v.clone()),
                None => tracing::debug!("subject is not a valid header value"),
            }
        }
        for (claim, header) in &self.claims_to_headers {
            let value = match (claim.as_str(), sub) {
                ("sub", Some(sub)) => Some(Value::from(&*sub.id)),
                _ => claims.get(claim).cloned(),
            };
            if let Some(v) = value.as_ref().and_then(claim_header_value) {
                cx.set_upstream_header(header.clone(), v);
            }
        }
    }

    async fn check_jwt(
        &self,
        token: &str,
        verifier: &JwtVerifier,
        keys: &Keys,
        verified: &VerifiedTokens,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let now = store::unix_secs(cx.now);
        let verify = |keys: &Arc<KeySet>| verified.verify(verifier, token, keys, now);
        let result = match keys {
            Keys::Static(keys) => verify(keys),
            Keys::Remote(remote, settings) => {
                let Some(keys) = remote.keys(settings, cx.instant).await else {
                    return Err(Rejection::new(
                        &SESSION_STORE_UNAVAILABLE,
                        "token signing keys are unavailable",
                    ));
                };
                match verify(&keys) {
                    // A rotation at the identity provider shows up as an
                    // unknown kid first.
                    Err(JwtError::UnknownKid) => {
                        match remote.refresh_for_unknown_kid(settings, cx.instant).await {
                            Some(fresh) => verify(&fresh),
                            None => Err(JwtError::UnknownKid),
                        }
                    }
                    other => other,
                }
            }
        };
        match result {
            Ok(claims) => {
                self.set_identity(cx, claims.sub.as_ref(), &claims.all);
                Ok(())
            }
            Err(JwtError::Expired) => Err(Rejection::new(&TOKEN_EXPIRED, "the token has expired")),
            Err(JwtError::UnknownKid) => Err(Rejection::new(&TOKEN_INVALID, "unknown key id")),
            Err(JwtError::Invalid(why)) => Err(Rejection::new(&TOKEN_INVALID, why)),
        }
    }

    async fn check_session(
        &self,
        id: String,
        rt: &SessionRuntime,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        if !token::plausible_session_id(&id) {
            return self.refuse_session(&SESSION_EXPIRED, "unknown or expired session");
        }
        let now = Now::of(cx);
        let lookup = if rt.backend.is_remote() {
            rt.cache
                .get(&id, &rt.backend, &rt.cache_settings, now)
                .await
        } else {
            rt.backend.get(&id, rt.config.idle_timeout, now).await
        };
        match lookup {
            Ok(Lookup::Active(record)) if record.exp > now.unix => {
                let sub = (!record.sub.is_empty()).then(|| Subject::new(&record.sub));
                self.set_identity(cx, sub.as_ref(), &record.claims);
                cx.extensions.insert(CurrentSession(id));
                Ok(())
            }
            Ok(Lookup::Active(_)) => {
                self.refuse_session(&SESSION_EXPIRED, "the session has expired")
            }
            Ok(Lookup::Revoked) => self.refuse_session(&SESSION_REVOKED, "the session was ended"),
            Ok(Lookup::Missing) => {
                self.refuse_session(&SESSION_EXPIRED, "unknown or expired session")
            }
            Err(StoreFailure(e)) => {
                tracing::warn!(error = %e, "session store lookup failed");
                match rt.config.on_store_error {
                    OnStoreError::AllowAnonymous => Ok(()),
                    OnStoreError::FailClosed => Err(store_unavailable()),
                }
            }
        }
    }

    async fn apply_instructions(
        &self,
        rt: &SessionRuntime,
        rsp: &mut ResponseView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let set = rsp.head.headers.remove(SESSION_SET_HEADER);
        let clear = rsp.head.headers.remove(SESSION_CLEAR_HEADER);
        if set.is_none() && clear.is_none() {
            return Ok(());
        }
        let instruction = match &set {
            Some(value) => Some(parse_instruction(value).ok_or_else(|| {
                Rejection::new(
                    &crate::error::UPSTREAM_ERROR,
                    "the app sent an invalid x-meshgate-session-set instruction",
                )
            })?),
            None => None,
        };
        let now = Now::of(cx);
        // Logout ends the current session; login replaces it (a fresh id at
        // every login defeats session fixation).
        if let Some(CurrentSession(old)) = cx.extensions.remove::<CurrentSession>() {
            rt.backend
                .revoke(&old, rt.config.idle_timeout, now)
                .await
                .map_err(|StoreFailure(e)| {
                    tracing::warn!(error = %e, "revoking a session failed");
                    store_unavailable()
                })?;
            if rt.backend.is_remote() {
                rt.cache
                    .insert(&old, Lookup::Revoked, &rt.cache_settings, now.instant);
            }
            metrics::counter!("meshgate_sessions_ended_total").increment(1);
        }
        match instruction {
            Some(instruction) => self.create_session(rt, instruction, rsp, cx.tls, now).await,
            None => {
                if let TokenSource::Cookie(name) = &self.token {
                    if let Some(v) = token::session_cookie(name, "", None, &rt.config, cx.tls) {
                        rsp.head.headers.append(SET_COOKIE, v);
                    }
                }
                Ok(())
            }
        }
    }

    async fn create_session(
        &self,
        rt: &SessionRuntime,
        instruction: Instruction,
        rsp: &mut ResponseView<'_>,
        tls: bool,
        now: Now,
    ) -> Result<(), Rejection> {
        let lifetime = instruction
            .ttl
            .unwrap_or(rt.config.absolute_timeout)
            .min(rt.config.absolute_timeout);
        let id = new_session_id().ok_or_else(|| {
            Rejection::new(
                &crate::error::INTERNAL_ERROR,
                "no randomness for a session id",
            )
        })?;
        let record = SessionRecord {
            sub: instruction.sub,
            claims: instruction.claims,
            iat: now.unix,
            exp: now.unix.saturating_add(lifetime.as_secs()),
            revoked: false,
        };
        rt.backend
            .create(
                &id,
                &record,
                lifetime.min(rt.config.idle_timeout),
                rt.config.max_sessions_per_subject,
                rt.config.idle_timeout,
                now,
            )
            .await
            .map_err(|StoreFailure(e)| {
                tracing::warn!(error = %e, "storing a new session failed");
                store_unavailable()
            })?;
        if rt.backend.is_remote() {
            rt.cache.insert(
                &id,
                Lookup::Active(Arc::new(record)),
                &rt.cache_settings,
                now.instant,
            );
        }
        metrics::counter!("meshgate_sessions_created_total").increment(1);
        let delivered = match (&self.token, &rt.config.issue_header) {
            (TokenSource::Cookie(name), _) => {
                token::session_cookie(name, &id, Some(lifetime), &rt.config, tls)
                    .map(|v| rsp.head.headers.append(SET_COOKIE, v))
                    .is_some()
            }
            (_, Some(header)) => HeaderValue::try_from(id.as_str())
                .map(|v| rsp.head.headers.insert(header.clone(), v))
                .is_ok(),
            (_, None) => false,
        };
        if delivered {
            Ok(())
        } else {
            Err(Rejection::new(
                &crate::error::INTERNAL_ERROR,
                "the session id could not be delivered",
            ))
        }
    }
}

/// Names the trust roots of a remote JWKS, so a changed CA bundle gets a
/// fresh client.
fn trust_roots_id(remote: &RemoteJwksConfig) -> String {
    match &remote.ca {
        None => "webpki".to_string(),
        Some(certs) => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for cert in certs.iter() {
                ctx.update(cert.as_ref());
            }
            let digest = ctx.finish();
            let hex: String = digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("ca-{hex}")
        }
    }
}

/// The app's `x-meshgate-session-set` instruction.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Instruction {
    sub: String,
    #[serde(default)]
    claims: Map<String, Value>,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
}

fn parse_instruction(value: &HeaderValue) -> Option<Instruction> {
    let instruction: Instruction = serde_json::from_slice(value.as_bytes()).ok()?;
    let valid = !instruction.sub.is_empty() && !instruction.ttl.is_some_and(|t| t.is_zero());
    valid.then_some(instruction)
}

fn store_unavailable() -> Rejection {
    Rejection::new(
        &SESSION_STORE_UNAVAILABLE,
        "the session store is unavailable",
    )
}

/// A new session id: 256 bits from the operating system's CSPRNG.
fn new_session_id() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A claim as a header value: strings as they are, other JSON as JSON.
fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text = match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    HeaderValue::try_from(text).ok()
}

impl Filter for SessionFilter {
    async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let Some(credential) = token::take(&mut req.head.headers, &self.token, !self.forward)
        else {
            return if self.optional {
                Ok(())
            } else {
                Err(Rejection::new(&LOGIN_REQUIRED, "this route needs a login"))
            };
        };
        match &self.runtime {
            Runtime::Jwt {
                verifier,
                keys,
                verified,
            } => {
                self.check_jwt(credential.as_str(), verifier, keys, verified, cx)
                    .await
            }
            Runtime::Session(rt) => self.check_session(credential.into_string(), rt, cx).await,
        }
    }

    async fn on_response(
        &self,
        rsp: &mut ResponseView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        match &self.runtime {
            Runtime::Session(rt) => self.apply_instructions(rt, rsp, cx).await,
            Runtime::Jwt { .. } => Ok(()),
        }
    }

    fn has_response_phase(&self) -> bool {
        matches!(self.runtime, Runtime::Session(_))
    }
}
