//! The verified-token cache: a JWT that verified once is answered from
//! memory while it stays valid, without decoding it or checking its
//! signature again.
//!
//! Entries are keyed on the SHA-256 of the exact token bytes, so a lookup
//! compares digests, never token text. Every hit is re-checked: the key set
//! must be the one the token verified against (a JWKS rotation misses), and
//! `exp` and `nbf` are compared with the clock and the leeway of a full
//! verification. Only successes are stored, so refused tokens always pay
//! the full check and cannot push verified ones out. The cache belongs to
//! one config snapshot: a reload starts empty.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, Weak};

use lru::LruCache;

use super::jwt::{Claims, JwtError, JwtVerifier, KeySet};

/// Tokens longer than this are verified every time rather than cached.
const MAX_CACHED_TOKEN_BYTES: usize = 8 * 1024;

type TokenDigest = [u8; 32];

struct Entry {
    /// The key set the token verified against; compared by identity.
    keys: Weak<KeySet>,
    claims: Arc<Claims>,
}

/// Verified tokens of one filter instance, least recently used out first.
pub struct VerifiedTokens {
    entries: Option<Mutex<LruCache<TokenDigest, Entry>>>,
}

impl VerifiedTokens {
    /// A cache of up to `max_entries` tokens; 0 turns caching off.
    pub fn new(max_entries: usize) -> Self {
        VerifiedTokens {
            entries: NonZeroUsize::new(max_entries).map(|n| Mutex::new(LruCache::new(n))),
        }
    }

    /// Verifies `token` against `keys` at unix time `now`, from the cache
    /// when it verified against the same keys before and is still in its
    /// lifetime.
    pub fn verify(
        &self,
        verifier: &JwtVerifier,
        token: &str,
        keys: &Arc<KeySet>,
        now: u64,
    ) -> Result<Arc<Claims>, JwtError> {
        let Some(entries) = self
            .entries
            .as_ref()
            .filter(|_| token.len() <= MAX_CACHED_TOKEN_BYTES)
        else {
            return verifier.verify(token, keys, now).map(Arc::new);
        };
        let digest = digest(token);
        {
            let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get(&digest) {
                if std::ptr::eq(entry.keys.as_ptr(), Arc::as_ptr(keys))
                    && entry.claims.times.check(now, verifier.leeway()).is_ok()
                {
                    return Ok(entry.claims.clone());
                }
                // Expired or verified under other keys: the full check below
                // gives the precise answer.
                entries.pop(&digest);
            }
        }
        let claims = Arc::new(verifier.verify(token, keys, now)?);
        let mut entries = entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(
            digest,
            Entry {
                keys: Arc::downgrade(keys),
                claims: claims.clone(),
            },
        );
        Ok(claims)
    }

    /// Tokens held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
            .as_ref()
            .map_or(0, |e| e.lock().unwrap_or_else(|e| e.into_inner()).len())
    }
}

fn digest(token: &str) -> TokenDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
