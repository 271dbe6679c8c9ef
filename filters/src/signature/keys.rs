//! Signature algorithms and key material.
//!
//! The algorithm of a key is fixed by configuration; a request can never
//! choose it. Verification and signing go through RustCrypto implementations;
//! HMAC tags are compared in constant time by the `hmac` crate.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};
use signature::{RandomizedSigner, SignatureEncoding, Signer, Verifier};

use crate::config::{FieldErrors, ValidateCx};

/// SM2 signer identity used when none is agreed otherwise (GB/T 35276).
pub const SM2_DEFAULT_DISTID: &str = "1234567812345678";

/// A signature algorithm (RFC 9421 §6.2 names, plus SM2 with SM3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    #[serde(rename = "ed25519")]
    Ed25519,
    #[serde(rename = "rsa-pss-sha512")]
    RsaPssSha512,
    #[serde(rename = "rsa-v1_5-sha256")]
    RsaV15Sha256,
    #[serde(rename = "sm2-sm3")]
    Sm2Sm3,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::HmacSha256,
        Algorithm::EcdsaP256Sha256,
        Algorithm::Ed25519,
        Algorithm::RsaPssSha512,
        Algorithm::RsaV15Sha256,
        Algorithm::Sm2Sm3,
    ];

    /// The `alg` parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
            Algorithm::RsaV15Sha256 => "rsa-v1_5-sha256",
            Algorithm::Sm2Sm3 => "sm2-sm3",
        }
    }

    pub fn is_symmetric(self) -> bool {
        self == Algorithm::HmacSha256
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One key as written in config. Exactly one source of key material:
/// `secret_base64` for HMAC; a public key (inline PEM or file) for verifying
/// with an asymmetric algorithm; a private key (inline PEM or file) where the
/// sidecar signs (it also verifies with the derived public key).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub id: String,
    pub alg: Option<Algorithm>,
    /// The client this key identifies (defaults to the key id); several keys
    /// of one client allow rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
}

pub(crate) use crate::redact::REDACTED;

/// Shows the redacted form: a spec reaches logs through `{:?}` too.
impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = serde_json::to_string(&self.redacted()).map_err(|_| fmt::Error)?;
        write!(f, "KeySpec {shown}")
    }
}

impl KeySpec {
    /// Secrets (HMAC secrets, private keys) replaced; public keys stay.
    pub fn redacted(&self) -> Self {
        let mut k = self.clone();
        if k.secret_base64.is_some() {
            k.secret_base64 = Some(REDACTED.into());
        }
        if k.private_key_pem.is_some() {
            k.private_key_pem = Some(REDACTED.into());
        }
        k
    }

    /// Validates the key. `need_private` is set where the sidecar signs with
    /// it. With `cx.read_files == false` (control plane) key files are not
    /// read and the result carries no material (`Ok(None)`).
    pub fn validate(
        &self,
        path: &str,
        need_private: bool,
        cx: &ValidateCx,
        errors: &mut FieldErrors,
    ) -> Option<Key> {
        let before = errors.0.len();
        if self.id.is_empty() {
            errors.push(format!("{path}.id"), "key id must not be empty");
        } else if self.id.contains(['"', '\\'])
            || !self.id.chars().all(|c| (' '..='~').contains(&c))
        {
            errors.push(
                format!("{path}.id"),
                "key id must be printable ASCII without quotes",
            );
        }
        let Some(alg) = self.alg else {
            errors.push(format!("{path}.alg"), "alg is required");
            return None;
        };
        let sources = [
            ("secret_base64", self.secret_base64.is_some()),
            ("public_key_pem", self.public_key_pem.is_some()),
            ("public_key_file", self.public_key_file.is_some()),
            ("private_key_pem", self.private_key_pem.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
        ];
        let given: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
        match given.as_slice() {
            [] => {
                errors.push(
                    path.to_string(),
                    if alg.is_symmetric() {
                        "secret_base64 is required for hmac-sha256"
                    } else if need_private {
                        "private_key_pem or private_key_file is required"
                    } else {
                        "one of public_key_pem, public_key_file, private_key_pem, private_key_file is required"
                    },
                );
                return None;
            }
            [_] => {}
            many => {
                errors.push(
                    path.to_string(),
                    format!("give exactly one key source, found {}", many.join(", ")),
                );
                return None;
            }
        }
        let source = given[0];
        // Algorithm confusion: a symmetric algorithm must never be keyed by
        // (public) asymmetric key material, nor the reverse.
        if alg.is_symmetric() && source != "secret_base64" {
            errors.push(
                format!("{path}.{source}"),
                "hmac-sha256 takes secret_base64; asymmetric key material is not accepted",
            );
            return None;
        }
        if !alg.is_symmetric() && source == "secret_base64" {
            errors.push(
                format!("{path}.secret_base64"),
                format!("{alg} needs a public or private key, not a shared secret"),
            );
            return None;
        }
        if need_private && source.starts_with("public_key") {
            errors.push(
                format!("{path}.{source}"),
                "this key signs; give private_key_pem or private_key_file",
            );
            return None;
        }
        let pem: Option<String> = match source {
            "secret_base64" => {
                let secret = self.secret_base64.as_deref().unwrap_or_default();
                return match base64::engine::general_purpose::STANDARD.decode(secret.trim()) {
                    Ok(bytes) if bytes.len() >= 16 => Some(Key::new(
                        &self.id,
                        alg,
                        KeyMaterial::Hmac(HmacSecret::new(bytes)),
                    )),
                    Ok(_) => {
                        errors.push(
                            format!("{path}.secret_base64"),
                            "secret must be at least 16 bytes",
                        );
                        None
                    }
                    Err(_) => {
                        errors.push(format!("{path}.secret_base64"), "not valid base64");
                        None
                    }
                };
            }
            "public_key_pem" => self.public_key_pem.clone(),
            "private_key_pem" => self.private_key_pem.clone(),
            "public_key_file" | "private_key_file" => {
                let file = if source == "public_key_file" {
                    self.public_key_file.as_ref()
                } else {
                    self.private_key_file.as_ref()
                };
                let field = format!("{path}.{source}");
                match file.map(|f| cx.read_file(&field, f)) {
                    Some(Ok(Some(bytes))) => match String::from_utf8(bytes) {
                        Ok(s) => Some(s),
                        Err(_) => {
                            errors.push(field, "key file is not PEM text");
                            None
                        }
                    },
                    Some(Ok(None)) => None, // not read here (control plane)
                    Some(Err(e)) => {
                        errors.0.push(e);
                        None
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let pem = pem?;
        if errors.0.len() > before {
            return None;
        }
        let parsed = if source.starts_with("private") {
            parse_private(alg, &pem).map(|s| KeyMaterial::Private(Box::new(s)))
        } else {
            parse_public(alg, &pem).map(|v| KeyMaterial::Public(Box::new(v)))
        };
        match parsed {
            Ok(material) => Some(Key::new(&self.id, alg, material)),
            Err(msg) => {
                errors.push(format!("{path}.{source}"), msg);
                None
            }
        }
    }
}

/// Key bytes for HMAC; never printed.
#[derive(Clone)]
pub struct HmacSecret {
    bytes: Vec<u8>,
    /// HMAC state with the key already absorbed (inner and outer pads), so a
    /// request only hashes its message.
    keyed: Option<Box<Hmac<Sha256>>>,
}

impl HmacSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        // HMAC takes keys of any length; were one refused, the key would
        // verify nothing and sign nothing.
        let keyed = Hmac::<Sha256>::new_from_slice(&bytes).ok().map(Box::new);
        HmacSecret { bytes, keyed }
    }

    #[cfg(test)]
    pub(crate) fn for_tests(bytes: &[u8]) -> Self {
        HmacSecret::new(bytes.to_vec())
    }

    fn mac(&self) -> Option<Hmac<Sha256>> {
        self.keyed.as_deref().cloned()
    }
}

impl Drop for HmacSecret {
    fn drop(&mut self) {
        // Best effort: overwrite the secret before the allocation is freed.
        self.bytes.iter_mut().for_each(|b| *b = 0);
    }
}

/// Verification half of an asymmetric key.
#[derive(Clone)]
pub enum PublicKey {
    EcdsaP256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    RsaPss(rsa::pss::VerifyingKey<Sha512>),
    RsaV15(rsa::pkcs1v15::VerifyingKey<Sha256>),
    Sm2(sm2::dsa::VerifyingKey),
}

/// Signing half of an asymmetric key.
#[derive(Clone)]
pub enum PrivateKey {
    EcdsaP256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
    RsaPss(rsa::pss::BlindedSigningKey<Sha512>),
    RsaV15(rsa::pkcs1v15::SigningKey<Sha256>),
    Sm2(sm2::dsa::SigningKey),
}

#[derive(Clone)]
pub enum KeyMaterial {
    Hmac(HmacSecret),
    Public(Box<PublicKey>),
    Private(Box<PrivateKey>),
}

/// A validated key: id, fixed algorithm and material.
#[derive(Clone)]
pub struct Key {
    pub id: Arc<str>,
    pub alg: Algorithm,
    material: Arc<KeyMaterial>,
    /// The public half of private material, derived once rather than per
    /// verification.
    derived_public: Option<Arc<PublicKey>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("alg", &self.alg)
            .field("material", &REDACTED)
            .finish()
    }
}

/// Why signing failed (a key that cannot sign, or the primitive failed).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("key {0} has no private material")]
    NoPrivateKey(String),
    #[error("signing failed: {0}")]
    Failed(String),
    #[error("{0}")]
    Message(String),
}

impl Key {
    pub fn new(id: &str, alg: Algorithm, material: KeyMaterial) -> Self {
        let derived_public = match &material {
            KeyMaterial::Private(sk) => Some(Arc::new(sk.public())),
            KeyMaterial::Hmac(_) | KeyMaterial::Public(_) => None,
        };
        Key {
            id: Arc::from(id),
            alg,
            material: Arc::new(material),
            derived_public,
        }
    }

    /// Whether this key can sign.
    pub fn can_sign(&self) -> bool {
        matches!(
            *self.material,
            KeyMaterial::Hmac(_) | KeyMaterial::Private(_)
        )
    }

    /// Verifies `sig` over `message`. False on any mismatch, including a
    /// signature of the wrong length.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &*self.material {
            KeyMaterial::Hmac(secret) => {
                let Some(mut mac) = secret.mac() else {
                    return false;
                };
                mac.update(message);
                // constant-time comparison inside `verify_slice`
                mac.verify_slice(sig).is_ok()
            }
            KeyMaterial::Public(pk) => verify_public(pk, message, sig),
            KeyMaterial::Private(sk) => match &self.derived_public {
                Some(pk) => verify_public(pk, message, sig),
                None => verify_public(&sk.public(), message, sig),
            },
        }
    }

    /// Signs `message` with this key's algorithm.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let failed = |e: signature::Error| SignError::Failed(e.to_string());
        match &*self.material {
            KeyMaterial::Hmac(secret) => {
                let mut mac = secret
                    .mac()
                    .ok_or_else(|| SignError::Failed("unusable HMAC key".into()))?;
                mac.update(message);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            KeyMaterial::Public(_) => Err(SignError::NoPrivateKey(self.id.to_string())),
            KeyMaterial::Private(sk) => match &**sk {
                PrivateKey::EcdsaP256(k) => {
                    let s: p256::ecdsa::Signature = k.try_sign(message).map_err(failed)?;
                    Ok(s.to_bytes().to_vec())
                }
                PrivateKey::Ed25519(k) => Ok(k.try_sign(message).map_err(failed)?.to_vec()),
                PrivateKey::RsaPss(k) => Ok(k
                    .try_sign_with_rng(&mut rsa::rand_core::OsRng, message)
                    .map_err(failed)?
                    .to_vec()),
                PrivateKey::RsaV15(k) => Ok(k.try_sign(message).map_err(failed)?.to_vec()),
                PrivateKey::Sm2(k) => {
                    let s: sm2::dsa::Signature = k.try_sign(message).map_err(failed)?;
                    Ok(s.to_bytes().to_vec())
                }
            },
        }
    }
}

impl PrivateKey {
    fn public(&self) -> PublicKey {
        match self {
            PrivateKey::EcdsaP256(k) => PublicKey::EcdsaP256(*k.verifying_key()),
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            PrivateKey::RsaPss(k) => PublicKey::RsaPss(signature::Keypair::verifying_key(k)),
            PrivateKey::RsaV15(k) => PublicKey::RsaV15(signature::Keypair::verifying_key(k)),
            PrivateKey::Sm2(k) => PublicKey::Sm2(k.verifying_key().clone()),
        }
    }
}

fn verify_public(pk: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match pk {
        PublicKey::EcdsaP256(k) => p256::ecdsa::Signature::from_slice(sig)
            .map(|s| k.verify(message, &s).is_ok())
            .unwrap_or(false),
        PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
            .map(|s| k.verify_strict(message, &s).is_ok())
            .unwrap_or(false),
        PublicKey::RsaPss(k) => rsa::pss::Signature::try_from(sig)
            .map(|s| k.verify(message, &s).is_ok())
            .unwrap_or(false),
        PublicKey::RsaV15(k) => rsa::pkcs1v15::Signature::try_from(sig)
            .map(|s| k.verify(message, &s).is_ok())
            .unwrap_or(false),
        PublicKey::Sm2(k) => sm2::dsa::Signature::from_slice(sig)
            .map(|s| k.verify(message, &s).is_ok())
            .unwrap_or(false),
    }
}

fn rsa_public(pem: &str) -> Result<rsa::RsaPublicKey, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    rsa::RsaPublicKey::from_public_key_pem(pem)
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("not an RSA public key (SPKI or PKCS#1 PEM): {e}"))
}

fn rsa_private(pem: &str) -> Result<rsa::RsaPrivateKey, String> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("not an RSA private key (PKCS#8 or PKCS#1 PEM): {e}"))
}

/// Parses a public key PEM for `alg`. A key of another type is an error.
pub fn parse_public(alg: Algorithm, pem: &str) -> Result<PublicKey, String> {
    use p256::pkcs8::DecodePublicKey;
    match alg {
        Algorithm::HmacSha256 => Err("hmac-sha256 has no public key".into()),
        Algorithm::EcdsaP256Sha256 => p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::EcdsaP256)
            .map_err(|e| format!("not a P-256 public key (SPKI PEM): {e}")),
        Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::Ed25519)
            .map_err(|e| format!("not an Ed25519 public key (SPKI PEM): {e}")),
        Algorithm::RsaPssSha512 => {
            rsa_public(pem).map(|k| PublicKey::RsaPss(rsa::pss::VerifyingKey::new(k)))
        }
        Algorithm::RsaV15Sha256 => {
            rsa_public(pem).map(|k| PublicKey::RsaV15(rsa::pkcs1v15::VerifyingKey::new(k)))
        }
        Algorithm::Sm2Sm3 => sm2::PublicKey::from_public_key_pem(pem)
            .map_err(|e| format!("not an SM2 public key (SPKI PEM): {e}"))
            .and_then(|pk| {
                sm2::dsa::VerifyingKey::new(SM2_DEFAULT_DISTID, pk)
                    .map(PublicKey::Sm2)
                    .map_err(|e| format!("invalid SM2 public key: {e}"))
            }),
    }
}

/// Parses a private key PEM for `alg` (PKCS#8; PKCS#1 for RSA; SEC1 for the
/// elliptic curves).
pub fn parse_private(alg: Algorithm, pem: &str) -> Result<PrivateKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    match alg {
        Algorithm::HmacSha256 => Err("hmac-sha256 has no private key".into()),
        Algorithm::EcdsaP256Sha256 => p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map(|k| PrivateKey::EcdsaP256(k.into()))
            .map_err(|e| format!("not a P-256 private key (PKCS#8 or SEC1 PEM): {e}")),
        Algorithm::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(PrivateKey::Ed25519)
            .map_err(|e| format!("not an Ed25519 private key (PKCS#8 PEM): {e}")),
        Algorithm::RsaPssSha512 => {
            rsa_private(pem).map(|k| PrivateKey::RsaPss(rsa::pss::BlindedSigningKey::new(k)))
        }
        Algorithm::RsaV15Sha256 => {
            rsa_private(pem).map(|k| PrivateKey::RsaV15(rsa::pkcs1v15::SigningKey::new(k)))
        }
        Algorithm::Sm2Sm3 => sm2::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| sm2::SecretKey::from_sec1_pem(pem))
            .map_err(|e| format!("not an SM2 private key (PKCS#8 or SEC1 PEM): {e}"))
            .and_then(|sk| {
                sm2::dsa::SigningKey::new(SM2_DEFAULT_DISTID, &sk)
                    .map(PrivateKey::Sm2)
                    .map_err(|e| format!("invalid SM2 private key: {e}"))
            }),
    }
}
