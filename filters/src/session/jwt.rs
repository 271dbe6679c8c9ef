//! JWT verification: JWKS parsing into keys that are each bound to exactly
//! one algorithm, and token checks (signature, issuer, audience, time).
//!
//! Binding every key to one algorithm is what defeats algorithm confusion:
//! a token's `alg` must equal the algorithm of the key it names, so an RSA
//! public key can never be used as an HMAC secret, and `alg: none` is not an
//! algorithm at all.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::spec::JwtConfig;
use crate::config::FieldErrors;

/// The algorithms this filter verifies.
pub const SUPPORTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::EdDSA,
    Algorithm::HS256,
];

/// RSA moduli below this size are refused.
const MIN_RSA_BITS: usize = 2048;
/// HMAC secrets below the hash size are refused (RFC 7518 section 3.2).
const MIN_HMAC_BYTES: usize = 32;

/// One verification key, usable with one algorithm only.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one JWKS.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

impl fmt::Debug for KeySet {
    // Key material stays out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)))
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS from config: every bad key is a field error.
    pub fn parse_strict(
        jwks: &Value,
        allowed: &[Algorithm],
        path: &str,
        errors: &mut FieldErrors,
    ) -> KeySet {
        let Some(list) = jwks.get("keys").and_then(Value::as_array) else {
            errors.push(path, "a JWKS is an object with a \"keys\" array");
            return KeySet::default();
        };
        let mut keys = Vec::new();
        for (i, value) in list.iter().enumerate() {
            match parse_jwk(value, allowed) {
                Ok(k) => {
                    if k.kid.is_some() && keys.iter().any(|o: &VerifyKey| o.kid == k.kid) {
                        errors.push(format!("{path}.keys[{i}].kid"), "duplicate kid");
                    }
                    keys.push(k);
                }
                Err(e) => errors.push(format!("{path}.keys[{i}]"), e),
            }
        }
        if keys.is_empty() && errors.is_empty() {
            errors.push(path, "the JWKS has no keys");
        }
        KeySet { keys }
    }

    /// Parses a fetched JWKS: bad keys are skipped (and counted), so one
    /// unusable key does not take the others down.
    pub fn parse_lenient(jwks: &Value, allowed: &[Algorithm]) -> Result<(KeySet, usize), String> {
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("a JWKS is an object with a \"keys\" array")?;
        let mut keys: Vec<VerifyKey> = Vec::new();
        let mut skipped = 0;
        for value in list {
            match parse_jwk(value, allowed) {
                Ok(k) if k.kid.is_none() || !keys.iter().any(|o| o.kid == k.kid) => keys.push(k),
                _ => skipped += 1,
            }
        }
        Ok((KeySet { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn supported(alg: KeyAlgorithm) -> Option<Algorithm> {
    match alg {
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::PS256 => Some(Algorithm::PS256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::HS256 => Some(Algorithm::HS256),
        _ => None,
    }
}

fn b64_len(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "key material is not base64url".to_string())
}

/// One JWK to a key bound to one algorithm, or why it is unusable.
fn parse_jwk(value: &Value, allowed: &[Algorithm]) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value.clone())
        .map_err(|_| "not a usable JWK (unknown kty, curve or alg, or missing members)")?;
    if let Some(usage) = &jwk.common.public_key_use {
        if *usage != PublicKeyUse::Signature {
            return Err("key is not for signatures (\"use\" is not \"sig\")".into());
        }
    }
    let declared = match jwk.common.key_algorithm {
        Some(a) => {
            Some(supported(a).ok_or("unsupported \"alg\" (ES256, RS256, PS256, EdDSA, HS256)")?)
        }
        None => None,
    };
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::EllipticCurve(p), alg) => {
            if p.curve != EllipticCurve::P256 || alg.is_some_and(|a| a != Algorithm::ES256) {
                return Err("EC keys must be P-256 with alg ES256".into());
            }
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(p), alg) => {
            if p.curve != EllipticCurve::Ed25519 || alg.is_some_and(|a| a != Algorithm::EdDSA) {
                return Err("OKP keys must be Ed25519 with alg EdDSA".into());
            }
            Algorithm::EdDSA
        }
        (AlgorithmParameters::OctetKey(p), alg) => {
            if alg.is_some_and(|a| a != Algorithm::HS256) {
                return Err("oct keys must have alg HS256".into());
            }
            if b64_len(&p.value)?.len() < MIN_HMAC_BYTES {
                return Err(format!(
                    "HS256 secrets need at least {MIN_HMAC_BYTES} bytes"
                ));
            }
            Algorithm::HS256
        }
        (AlgorithmParameters::RSA(p), alg) => {
            let alg = match alg {
                Some(a @ (Algorithm::RS256 | Algorithm::PS256)) => a,
                Some(_) => return Err("RSA keys must have alg RS256 or PS256".into()),
                None => {
                    return Err("RSA keys need an explicit \"alg\" (RS256 or PS256)".into());
                }
            };
            let n = b64_len(&p.n)?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA keys need at least {MIN_RSA_BITS} bits"));
            }
            alg
        }
    };
    if !allowed.contains(&alg) {
        return Err(format!("algorithm {alg:?} is not in `algorithms`"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "invalid key material")?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Bad in any way other than expiry; the message names the check.
    Invalid(Cow<'static, str>),
    Expired,
    /// The token names a key id the key set does not have (a refresh may help).
    UnknownKid,
}

/// Verifies tokens against key sets under one filter's rules.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    allowed: Vec<Algorithm>,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    /// Required claims the JWT library does not check itself (it checks the
    /// registered ones in `SPEC_CLAIMS`).
    required_other_claims: Vec<String>,
    /// Whether callers need every claim, not just the subject.
    keep_claims: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    leeway: u64,
}

/// The claims of a verified token.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// `sub` when it is a string.
    pub sub: Option<Subject>,
    /// Every claim; empty unless the verifier was built to keep them.
    pub all: Map<String, Value>,
    /// `exp` and `nbf`, checked at every request (a cached verification
    /// included).
    pub times: TokenTimes,
}

/// A verified subject as requests carry it: made once per verification,
/// so a cached token sets `RequestCtx::user` and `x-meshgate-user` without
/// copying.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub id: Arc<str>,
    /// `id` as a header value; `None` when it is not a valid one.
    pub header: Option<HeaderValue>,
}

impl Subject {
    pub fn new(id: &str) -> Self {
        Subject {
            id: Arc::from(id),
            header: HeaderValue::from_str(id).ok(),
        }
    }
}

/// The time claims of a token, in unix seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenTimes {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

impl TokenTimes {
    /// Reads `exp` and `nbf` as RFC 7519 NumericDates: absent, or a
    /// non-negative number (fractions rounded, as the JWT library does for
    /// its other checks). Anything else is a malformed token.
    fn read(exp: Option<&Value>, nbf: Option<&Value>) -> Result<TokenTimes, JwtError> {
        fn numeric_date(v: Option<&Value>, name: &str) -> Result<Option<u64>, JwtError> {
            let Some(v) = v else { return Ok(None) };
            if let Some(n) = v.as_u64() {
                return Ok(Some(n));
            }
            match v.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                    Ok(Some(f.round() as u64))
                }
                _ => Err(JwtError::Invalid(
                    format!("claim {name:?} is not a NumericDate").into(),
                )),
            }
        }
        Ok(TokenTimes {
            exp: numeric_date(exp, "exp")?,
            nbf: numeric_date(nbf, "nbf")?,
        })
    }

    /// Refuses a token outside its lifetime at unix time `now`, tolerating
    /// `leeway` seconds of clock skew either way.
    pub fn check(&self, now: u64, leeway: u64) -> Result<(), JwtError> {
        if self.exp.is_some_and(|exp| exp < now.saturating_sub(leeway)) {
            return Err(JwtError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(JwtError::Invalid("token is not valid yet".into()));
        }
        Ok(())
    }
}

/// Only the subject and the time claims: deserializing just these skips
/// building a map of every claim when nobody reads the others. Like the full map it accepts a JSON
/// object only, and a repeated `sub` keeps the last one.
struct SubjectOnly {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
}

impl<'de> serde::Deserialize<'de> for SubjectOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;
        impl<'de> serde::de::Visitor<'de> for ClaimsVisitor {
            type Value = SubjectOnly;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SubjectOnly, A::Error> {
                let (mut sub, mut exp, mut nbf) = (None, None, None);
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    let slot = match name.as_ref() {
                        "sub" => &mut sub,
                        "exp" => &mut exp,
                        "nbf" => &mut nbf,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<Value>()?);
                }
                Ok(SubjectOnly { sub, exp, nbf })
            }
        }
        deserializer.deserialize_map(ClaimsVisitor)
    }
}

/// What `decode` produces, for either claims shape.
trait IntoClaims: serde::de::DeserializeOwned {
    fn into_claims(self) -> Result<Claims, JwtError>;
}

impl IntoClaims for SubjectOnly {
    fn into_claims(self) -> Result<Claims, JwtError> {
        let times = TokenTimes::read(self.exp.as_ref(), self.nbf.as_ref())?;
        let sub = match self.sub {
            Some(Value::String(s)) => Some(Subject::new(&s)),
            _ => None,
        };
        Ok(Claims {
            sub,
            all: Map::new(),
            times,
        })
    }
}

impl IntoClaims for Map<String, Value> {
    fn into_claims(self) -> Result<Claims, JwtError> {
        let times = TokenTimes::read(self.get("exp"), self.get("nbf"))?;
        let sub = self.get("sub").and_then(Value::as_str).map(Subject::new);
        Ok(Claims {
            sub,
            all: self,
            times,
        })
    }
}

const SPEC_CLAIMS: &[&str] = &["exp", "nbf", "aud", "iss", "sub"];

impl JwtVerifier {
    /// `keep_claims`: the caller reads claims other than `sub` (claims to
    /// headers).
    pub fn new(config: &JwtConfig, keep_claims: bool) -> Self {
        let validations = config
            .algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                // `exp` and `nbf` are checked here against the request's
                // clock (`TokenTimes::check`), not the library's reading of
                // the system clock; presence is still the library's check.
                v.validate_exp = false;
                v.validate_nbf = false;
                let spec: Vec<&str> = config
                    .required_claims
                    .iter()
                    .map(String::as_str)
                    .filter(|c| SPEC_CLAIMS.contains(c))
                    .collect();
                v.set_required_spec_claims(&spec);
                if let Some(iss) = &config.issuer {
                    v.set_issuer(&[iss]);
                }
                if config.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&config.audiences);
                }
                (*alg, v)
            })
            .collect();
        let required_other_claims: Vec<String> = config
            .required_claims
            .iter()
            .filter(|c| !SPEC_CLAIMS.contains(&c.as_str()))
            .cloned()
            .collect();
        JwtVerifier {
            allowed: config.algorithms.clone(),
            validations,
            keep_claims: keep_claims || !required_other_claims.is_empty(),
            required_other_claims,
            leeway: config.leeway.as_secs(),
        }
    }

    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Checks `token` at unix time `now` and returns its claims.
    pub fn verify(&self, token: &str, keys: &KeySet, now: u64) -> Result<Claims, JwtError> {
        let claims = if self.keep_claims {
            self.verify_as::<Map<String, Value>>(token, keys)?
        } else {
            self.verify_as::<SubjectOnly>(token, keys)?
        };
        claims.times.check(now, self.leeway)?;
        Ok(claims)
    }

    fn verify_as<C: IntoClaims>(&self, token: &str, keys: &KeySet) -> Result<Claims, JwtError> {
        // With a single key (the usual static setup) try it straight away, so
        // the header is parsed by the library only. Only a clean success with
        // a consistent `kid` is taken here; anything else goes the full way
        // below, which names the precise refusal.
        if let [key] = keys.keys.as_slice() {
            let validation = self
                .validations
                .iter()
                .find(|(a, _)| *a == key.alg)
                .map(|(_, v)| v);
            if let Some(validation) = validation {
                if let Ok(data) = jsonwebtoken::decode::<C>(token, &key.key, validation) {
                    if data.header.kid.is_none() || data.header.kid == key.kid {
                        return self.accept(data.claims);
                    }
                }
            }
        }
        self.verify_by_header::<C>(token, keys)
    }

    /// Required claims beyond what the library checks.
    fn accept<C: IntoClaims>(&self, claims: C) -> Result<Claims, JwtError> {
        let claims = claims.into_claims()?;
        if let Some(missing) = self
            .required_other_claims
            .iter()
            .find(|c| !claims.all.contains_key(c.as_str()))
        {
            return Err(JwtError::Invalid(
                format!("required claim {missing:?} is missing").into(),
            ));
        }
        Ok(claims)
    }

    /// Picks the key by the token's `kid` and `alg`, then verifies.
    fn verify_by_header<C: IntoClaims>(
        &self,
        token: &str,
        keys: &KeySet,
    ) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtError::Invalid("malformed token or unsupported algorithm".into()))?;
        if !self.allowed.contains(&header.alg) {
            return Err(JwtError::Invalid("algorithm not allowed".into()));
        }
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == header.alg)
            .map(|(_, v)| v)
            .ok_or(JwtError::Invalid("algorithm not allowed".into()))?;
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let key = keys
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .ok_or(JwtError::UnknownKid)?;
                if key.alg != header.alg {
                    return Err(JwtError::Invalid(
                        "token algorithm does not match its key".into(),
                    ));
                }
                vec![key]
            }
            None => keys.keys.iter().filter(|k| k.alg == header.alg).collect(),
        };
        if candidates.is_empty() {
            return Err(JwtError::Invalid("no key for the token's algorithm".into()));
        }
        let mut last = JwtError::Invalid("bad signature".into());
        for key in candidates {
            match jsonwebtoken::decode::<C>(token, &key.key, validation) {
                Ok(data) => return self.accept(data.claims),
                Err(e) => {
                    last = map_error(e.kind());
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

fn map_error(kind: &ErrorKind) -> JwtError {
    let msg: Cow<'static, str> = match kind {
        ErrorKind::ExpiredSignature => return JwtError::Expired,
        ErrorKind::ImmatureSignature => "token is not valid yet".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("required claim {c:?} is missing").into(),
        _ => "malformed token".into(),
    };
    JwtError::Invalid(msg)
}
