//! Signature algorithms and key material.
//!
//! The algorithm of a key is fixed by configuration; a request can never
//! choose it. RSA (PKCS#1 v1.5 and PSS) and ECDSA P-256 sign with `ring`,
//! whose RSA private-key operation is blinded and constant-time (the `rsa`
//! crate's is not: RUSTSEC-2023-0071, the Marvin attack), and verify with
//! `aws-lc-rs`, whose `ParsedPublicKey` is parsed once when the config loads
//! (`ring` parses the key and recomputes its Montgomery constants on every
//! verification, which made RSA verification ~2.5x OpenSSL's time;
//! BENCHMARKS.md). Ed25519 stays on `ed25519-dalek`, which verifies faster
//! than `ring` here, SM2 on RustCrypto (neither library has SM2). HMAC tags
//! are compared in constant time by the `hmac` crate. Key files are parsed by
//! RustCrypto's DER/PEM crates and handed to the libraries as DER.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aws_lc_rs::signature as lc_sig;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use ring::signature::{self as ring_sig, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use signature::{Signer, Verifier};

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
            parse_private(alg, &pem)
                .and_then(|s| s.public().map(|_| s))
                .map(|s| KeyMaterial::Private(Box::new(s)))
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

/// Verification half of an asymmetric key, parsed once.
#[derive(Clone)]
pub enum PublicKey {
    /// From the uncompressed SEC1 point, for `ECDSA_P256_SHA256_FIXED`
    /// (RFC 9421 signatures are raw `r || s`).
    EcdsaP256(lc_sig::ParsedPublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    /// From the PKCS#1 `RSAPublicKey` DER, checked when loaded (2048 to 8192 bits).
    RsaPss(lc_sig::ParsedPublicKey),
    RsaV15(lc_sig::ParsedPublicKey),
    Sm2(sm2::dsa::VerifyingKey),
}

/// A public key `aws-lc-rs` verifies with, parsed now rather than per request.
fn parsed(
    alg: &'static dyn lc_sig::VerificationAlgorithm,
    der: &[u8],
) -> Result<lc_sig::ParsedPublicKey, String> {
    lc_sig::ParsedPublicKey::new(alg, der).map_err(|e| format!("public key rejected: {e}"))
}

/// Signing half of an asymmetric key. `ring`'s key pairs are not `Clone`;
/// they are shared.
#[derive(Clone)]
pub enum PrivateKey {
    EcdsaP256(Arc<ring_sig::EcdsaKeyPair>),
    Ed25519(ed25519_dalek::SigningKey),
    RsaPss(Arc<ring_sig::RsaKeyPair>),
    RsaV15(Arc<ring_sig::RsaKeyPair>),
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
    /// The public half of private material, derived and parsed once rather
    /// than per verification.
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
            // `validate` refuses a private key whose public half does not parse.
            KeyMaterial::Private(sk) => sk.public().ok().map(Arc::new),
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
            KeyMaterial::Private(_) => self
                .derived_public
                .as_ref()
                .is_some_and(|pk| verify_public(pk, message, sig)),
        }
    }

    /// Signs `message` with this key's algorithm.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match &*self.material {
            KeyMaterial::Hmac(secret) => {
                let mut mac = secret
                    .mac()
                    .ok_or_else(|| SignError::Failed("unusable HMAC key".into()))?;
                mac.update(message);
                Ok(mac.finalize().into_bytes().to_vec())
            }
            KeyMaterial::Public(_) => Err(SignError::NoPrivateKey(self.id.to_string())),
            KeyMaterial::Private(sk) => sk.sign(message),
        }
    }
}

impl PrivateKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let ring_failed = |_: ring::error::Unspecified| SignError::Failed("ring".into());
        match self {
            PrivateKey::EcdsaP256(k) => Ok(k
                .sign(&ring::rand::SystemRandom::new(), message)
                .map_err(ring_failed)?
                .as_ref()
                .to_vec()),
            PrivateKey::Ed25519(k) => {
                let s: ed25519_dalek::Signature = k
                    .try_sign(message)
                    .map_err(|e| SignError::Failed(e.to_string()))?;
                Ok(s.to_bytes().to_vec())
            }
            PrivateKey::RsaPss(k) => rsa_sign(k, &ring_sig::RSA_PSS_SHA512, message),
            PrivateKey::RsaV15(k) => rsa_sign(k, &ring_sig::RSA_PKCS1_SHA256, message),
            PrivateKey::Sm2(k) => {
                let s: sm2::dsa::Signature = k
                    .try_sign(message)
                    .map_err(|e| SignError::Failed(e.to_string()))?;
                Ok(s.to_bytes().to_vec())
            }
        }
    }

    /// The public half, parsed for verification. Fails only if `aws-lc-rs`
    /// refuses a public key `ring` derived (then the key is a config error).
    fn public(&self) -> Result<PublicKey, String> {
        Ok(match self {
            PrivateKey::EcdsaP256(k) => PublicKey::EcdsaP256(parsed(
                &lc_sig::ECDSA_P256_SHA256_FIXED,
                k.public_key().as_ref(),
            )?),
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            PrivateKey::RsaPss(k) => PublicKey::RsaPss(parsed(
                &lc_sig::RSA_PSS_2048_8192_SHA512,
                k.public().as_ref(),
            )?),
            PrivateKey::RsaV15(k) => PublicKey::RsaV15(parsed(
                &lc_sig::RSA_PKCS1_2048_8192_SHA256,
                k.public().as_ref(),
            )?),
            PrivateKey::Sm2(k) => PublicKey::Sm2(k.verifying_key().clone()),
        })
    }
}

/// RSA signing through `ring`: blinded, constant-time, fresh PSS salt from
/// the system RNG.
fn rsa_sign(
    key: &ring_sig::RsaKeyPair,
    padding: &'static dyn ring_sig::RsaEncoding,
    message: &[u8],
) -> Result<Vec<u8>, SignError> {
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(padding, &ring::rand::SystemRandom::new(), message, &mut sig)
        .map_err(|_| SignError::Failed("RSA signing failed".into()))?;
    Ok(sig)
}

fn verify_public(pk: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    match pk {
        PublicKey::EcdsaP256(k) | PublicKey::RsaPss(k) | PublicKey::RsaV15(k) => {
            k.verify_sig(message, sig).is_ok()
        }
        PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
            .map(|s| k.verify_strict(message, &s).is_ok())
            .unwrap_or(false),
        PublicKey::Sm2(k) => sm2::dsa::Signature::from_slice(sig)
            .map(|s| k.verify(message, &s).is_ok())
            .unwrap_or(false),
    }
}

/// Decodes one PEM block (RFC 7468), returning its label and DER.
fn pem_der(pem: &str) -> Result<(String, Vec<u8>), String> {
    pem_rfc7468::decode_vec(pem.trim().as_bytes())
        .map(|(label, der)| (label.to_string(), der))
        .map_err(|e| format!("not PEM: {e}"))
}

const RSA_ENCRYPTION_OID: spki::ObjectIdentifier =
    spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Bounds `ring` enforces when verifying; checked at load so that a key it
/// would refuse is a config error, not a request that never verifies.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// The PKCS#1 `RSAPublicKey` DER of an SPKI (`PUBLIC KEY`) or PKCS#1
/// (`RSA PUBLIC KEY`) PEM, with the modulus size and exponent checked.
fn rsa_public_der(pem: &str) -> Result<Vec<u8>, String> {
    use spki::der::Decode;
    const WHAT: &str = "not an RSA public key (SPKI or PKCS#1 PEM)";
    let (label, der) = pem_der(pem).map_err(|e| format!("{WHAT}: {e}"))?;
    let pkcs1 = match label.as_str() {
        "PUBLIC KEY" => {
            let info = spki::SubjectPublicKeyInfoRef::from_der(&der)
                .map_err(|e| format!("{WHAT}: {e}"))?;
            if info.algorithm.oid != RSA_ENCRYPTION_OID {
                return Err(format!("{WHAT}: the key's algorithm is not rsaEncryption"));
            }
            info.subject_public_key
                .as_bytes()
                .ok_or_else(|| format!("{WHAT}: malformed key bits"))?
                .to_vec()
        }
        "RSA PUBLIC KEY" => der,
        other => return Err(format!("{WHAT}: found a {other:?} PEM block")),
    };
    let key = pkcs1::RsaPublicKey::from_der(&pkcs1).map_err(|e| format!("{WHAT}: {e}"))?;
    let bits = uint_bits(key.modulus.as_bytes());
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits; {RSA_MIN_BITS} to {RSA_MAX_BITS} bits are accepted"
        ));
    }
    let e = key.public_exponent.as_bytes();
    // ring: odd, at least 3, at most 33 bits
    if uint_bits(e) > 33 || e.last().is_none_or(|b| b & 1 == 0) || uint_bits(e) < 2 {
        return Err("RSA public exponent must be odd, at least 3 and at most 33 bits".into());
    }
    Ok(pkcs1)
}

/// Bit length of a big-endian unsigned integer.
fn uint_bits(be: &[u8]) -> usize {
    let be = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => return 0,
    };
    be.len() * 8 - be.first().map_or(0, |b| b.leading_zeros() as usize)
}

/// A `ring` RSA key pair from a PKCS#8 (`PRIVATE KEY`) or PKCS#1
/// (`RSA PRIVATE KEY`) PEM. `ring` signs with 2048- to 4096-bit keys.
fn rsa_private(pem: &str) -> Result<Arc<ring_sig::RsaKeyPair>, String> {
    const WHAT: &str = "not an RSA private key (PKCS#8 or PKCS#1 PEM)";
    let (label, der) = pem_der(pem).map_err(|e| format!("{WHAT}: {e}"))?;
    let pair = match label.as_str() {
        "PRIVATE KEY" => ring_sig::RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => ring_sig::RsaKeyPair::from_der(&der),
        other => return Err(format!("{WHAT}: found a {other:?} PEM block")),
    };
    pair.map(Arc::new).map_err(|e| {
        format!("{WHAT}: {e} (2048- to 4096-bit keys with a public exponent of at least 65537)")
    })
}

/// Parses a public key PEM for `alg`. A key of another type is an error.
pub fn parse_public(alg: Algorithm, pem: &str) -> Result<PublicKey, String> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::DecodePublicKey;
    match alg {
        Algorithm::HmacSha256 => Err("hmac-sha256 has no public key".into()),
        // p256 parses the SPKI (compressed points too) and checks the point is
        // on the curve; ring verifies with the uncompressed encoding.
        Algorithm::EcdsaP256Sha256 => p256::PublicKey::from_public_key_pem(pem.trim())
            .map_err(|e| format!("not a P-256 public key (SPKI PEM): {e}"))
            .and_then(|k| {
                parsed(
                    &lc_sig::ECDSA_P256_SHA256_FIXED,
                    k.to_encoded_point(false).as_bytes(),
                )
                .map(PublicKey::EcdsaP256)
            }),
        Algorithm::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey::Ed25519)
            .map_err(|e| format!("not an Ed25519 public key (SPKI PEM): {e}")),
        Algorithm::RsaPssSha512 => rsa_public_der(pem)
            .and_then(|der| parsed(&lc_sig::RSA_PSS_2048_8192_SHA512, &der))
            .map(PublicKey::RsaPss),
        Algorithm::RsaV15Sha256 => rsa_public_der(pem)
            .and_then(|der| parsed(&lc_sig::RSA_PKCS1_2048_8192_SHA256, &der))
            .map(PublicKey::RsaV15),
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
    use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
    match alg {
        Algorithm::HmacSha256 => Err("hmac-sha256 has no private key".into()),
        // p256 reads PKCS#8 or SEC1 (with or without the public point) and
        // re-encodes PKCS#8 with the point, the one form ring loads.
        Algorithm::EcdsaP256Sha256 => {
            let what = "not a P-256 private key (PKCS#8 or SEC1 PEM)";
            let secret = p256::SecretKey::from_pkcs8_pem(pem.trim())
                .or_else(|_| p256::SecretKey::from_sec1_pem(pem.trim()))
                .map_err(|e| format!("{what}: {e}"))?;
            let pkcs8 = secret.to_pkcs8_der().map_err(|e| format!("{what}: {e}"))?;
            ring_sig::EcdsaKeyPair::from_pkcs8(
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8.as_bytes(),
                &ring::rand::SystemRandom::new(),
            )
            .map(|k| PrivateKey::EcdsaP256(Arc::new(k)))
            .map_err(|e| format!("{what}: {e}"))
        }
        Algorithm::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(PrivateKey::Ed25519)
            .map_err(|e| format!("not an Ed25519 private key (PKCS#8 PEM): {e}")),
        Algorithm::RsaPssSha512 => rsa_private(pem).map(PrivateKey::RsaPss),
        Algorithm::RsaV15Sha256 => rsa_private(pem).map(PrivateKey::RsaV15),
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
