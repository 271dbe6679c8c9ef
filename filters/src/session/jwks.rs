//! A remote JWKS, fetched over HTTP and cached.
//!
//! Keys are fresh for `jwks_refresh`; after that the cached keys keep serving
//! while one background fetch replaces them. A token naming an unknown `kid`
//! triggers a fetch at most once per `jwks_min_refresh` (key rotation without
//! letting random kids hammer the identity provider). When fetches fail the
//! last good keys serve for up to `jwks_max_stale` after their fetch.
//!
//! Ages are measured at the request's time (`RequestCtx::instant`); a fetch
//! is stamped with that time plus however long the fetch itself took.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::jwt::KeySet;
use super::spec::RemoteJwksConfig;
use crate::state::Handover;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Current {
    keys: Option<Arc<KeySet>>,
    /// The document the keys came from, for handover.
    raw: Option<Value>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Fetches started so far (a caller that waited for the refresh lock
    /// skips its own fetch if one started meanwhile).
    attempts: u64,
}

impl Current {
    /// Whether a fetch may start at `now` (at most one per `min_refresh`).
    fn attempt_allowed(&self, s: &RemoteSettings, now: Instant) -> bool {
        self.last_attempt
            .is_none_or(|t| now.saturating_duration_since(t) >= s.config.min_refresh)
    }
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Long-lived cache of one remote JWKS (one per filter instance, URL and
/// trust roots).
pub struct RemoteJwks {
    current: RwLock<Current>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// `Err` when the TLS setup failed (reported on every fetch).
    client: Result<HttpsClient, String>,
}

impl RemoteJwks {
    /// A cache whose fetches trust `ca` (PEM-decoded certificates) or, without
    /// it, the public web PKI roots.
    pub fn new(ca: Option<&[CertificateDer<'static>]>) -> Self {
        RemoteJwks {
            current: RwLock::default(),
            refresh_lock: tokio::sync::Mutex::new(()),
            client: https_client(ca),
        }
    }
}

fn https_client(ca: Option<&[CertificateDer<'static>]>) -> Result<HttpsClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        Some(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone()).map_err(|e| e.to_string())?;
            }
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(tls)
        }
        None => builder
            .with_provider_and_webpki_roots(provider)
            .map_err(|e| e.to_string())?,
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The settings of one config snapshot.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub config: RemoteJwksConfig,
    pub algorithms: Vec<Algorithm>,
}

impl RemoteJwks {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Usable keys at `now` (the request's time): fresh ones, stale ones
    /// within `max_stale` (refreshed in the background), or freshly fetched
    /// ones. `None` when no usable keys exist.
    pub async fn keys(self: &Arc<Self>, s: &RemoteSettings, now: Instant) -> Option<Arc<KeySet>> {
        let (keys, age, attempt_allowed) = {
            let c = self.read();
            (
                c.keys.clone(),
                c.fetched_at.map(|t| now.saturating_duration_since(t)),
                c.attempt_allowed(s, now),
            )
        };
        match (keys, age) {
            (Some(keys), Some(age)) if age < s.config.refresh => Some(keys),
            (Some(keys), Some(age)) if age < s.config.max_stale => {
                if attempt_allowed {
                    let this = Arc::clone(self);
                    let s = s.clone();
                    tokio::spawn(async move { this.refresh(&s, now).await });
                }
                Some(keys)
            }
            _ => {
                if attempt_allowed {
                    self.refresh(s, now).await;
                }
                let c = self.read();
                c.keys.clone().filter(|_| {
                    c.fetched_at
                        .is_some_and(|t| now.saturating_duration_since(t) < s.config.max_stale)
                })
            }
        }
    }

    /// A fetch because a token named an unknown key id; rate-limited (at
    /// `now`, the request's time). Returns the new keys when a fetch happened.
    pub async fn refresh_for_unknown_kid(
        &self,
        s: &RemoteSettings,
        now: Instant,
    ) -> Option<Arc<KeySet>> {
        if !self.read().attempt_allowed(s, now) {
            return None;
        }
        self.refresh(s, now).await;
        self.read().keys.clone()
    }

    /// Fetches the JWKS once; concurrent callers wait for the one fetch.
    /// `now` is the time of the request that asked; the fetch is stamped
    /// with it plus the time spent waiting here and fetching.
    async fn refresh(&self, s: &RemoteSettings, now: Instant) {
        // Only a duration is read from the clock: how long this call waits
        // and fetches, added to the request's time.
        let started = Instant::now();
        let stamp = || now + started.elapsed();
        let asked = self.read().attempts;
        let _guard = self.refresh_lock.lock().await;
        {
            let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
            if c.attempts != asked {
                return; // another caller fetched while this one waited
            }
            c.attempts += 1;
            c.last_attempt = Some(stamp());
        }
        match self.fetch(&s.config).await {
            Ok(raw) => match KeySet::parse_lenient(&raw, &s.algorithms) {
                Ok((keys, skipped)) => {
                    if skipped > 0 {
                        tracing::warn!(url = %crate::redact::redact_url(&s.config.url.to_string()), skipped, "JWKS keys skipped as unusable");
                    }
                    tracing::debug!(url = %crate::redact::redact_url(&s.config.url.to_string()), keys = keys.len(), "JWKS fetched");
                    let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
                    c.keys = Some(Arc::new(keys));
                    c.raw = Some(raw);
                    c.fetched_at = Some(stamp());
                }
                Err(e) => self.failed(s, &e),
            },
            Err(e) => self.failed(s, &e),
        }
    }

    fn failed(&self, s: &RemoteSettings, error: &str) {
        metrics::counter!("meshgate_jwks_fetch_failures_total").increment(1);
        tracing::warn!(url = %crate::redact::redact_url(&s.config.url.to_string()), error, "JWKS fetch failed; cached keys keep serving");
    }

    async fn fetch(&self, config: &RemoteJwksConfig) -> Result<Value, String> {
        let request = http::Request::get(config.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let work = async {
            let client = self
                .client
                .as_ref()
                .map_err(|e| format!("TLS setup: {e}"))?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            serde_json::from_slice::<Value>(&body).map_err(|e| format!("not JSON: {e}"))
        };
        tokio::time::timeout(config.timeout, work)
            .await
            .map_err(|_| format!("no answer within {:?}", config.timeout))?
    }
}

impl Handover for RemoteJwks {
    fn export(&self) -> Option<Value> {
        let c = self.read();
        let raw = c.raw.clone()?;
        let age = c
            .fetched_at
            .map(|t| Instant::now().saturating_duration_since(t))
            .unwrap_or(Duration::MAX);
        Some(serde_json::json!({ "jwks": raw, "age_ms": age.as_millis() as u64 }))
    }

    fn import(&self, value: Value) {
        let (Some(raw), Some(age_ms)) = (
            value.get("jwks"),
            value.get("age_ms").and_then(Value::as_u64),
        ) else {
            return;
        };
        // The algorithm restriction of the new config applies on its next
        // fetch; imported keys were accepted by the old one.
        let Ok((keys, _)) = KeySet::parse_lenient(raw, super::jwt::SUPPORTED_ALGORITHMS) else {
            return;
        };
        let Some(fetched_at) = Instant::now().checked_sub(Duration::from_millis(age_ms)) else {
            return;
        };
        let mut c = self.current.write().unwrap_or_else(|e| e.into_inner());
        c.keys = Some(Arc::new(keys));
        c.raw = Some(raw.clone());
        c.fetched_at = Some(fetched_at);
    }
}
