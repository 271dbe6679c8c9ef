//! Verification cost per algorithm: parse the signature headers, check the
//! policy, rebuild the signature base and verify (no body digest, no nonce
//! store). Plus the Content-Digest of a 16 KiB body.
//!
//! The `verify-ed25519-backend` group times the bare Ed25519 verification
//! of `ed25519-dalek` (used) against `ring`'s, the measurement behind that
//! choice.
//!
//! `cargo bench -p meshgate-filters --bench signature -- verify --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use meshgate_filters::signature::base::{parse_component, RequestParts};
use meshgate_filters::signature::digest::{content_digest, verify_content_digest};
use meshgate_filters::signature::keys::{
    parse_private, Algorithm, Key, KeyMaterial, PrivateKey, SM2_DEFAULT_DISTID,
};
use meshgate_filters::signature::{Policy, Signer, VerifyKey};

const RSA_PRIVATE_PKCS1: &str = include_str!("../src/signature/testdata/rsa-2048-private.pem");

const ECC_P256_PRIVATE: &str =
    include_str!("../src/signature/testdata/rfc9421-ecc-p256-private.pem");

const ED25519_PRIVATE: &str = include_str!("../src/signature/testdata/rfc9421-ed25519-private.pem");

fn key(alg: Algorithm) -> Key {
    let material = match alg {
        Algorithm::HmacSha256 => {
            return meshgate_filters::signature::KeySpec {
                id: "k".into(),
                alg: Some(alg),
                secret_base64: Some("c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=".into()),
                ..Default::default()
            }
            .validate(
                "k",
                false,
                &meshgate_filters::ValidateCx::control_plane(),
                &mut Default::default(),
            )
            .expect("hmac key")
        }
        Algorithm::EcdsaP256Sha256 => parse_private(alg, ECC_P256_PRIVATE),
        Algorithm::Ed25519 => parse_private(alg, ED25519_PRIVATE),
        Algorithm::RsaPssSha512 | Algorithm::RsaV15Sha256 => parse_private(alg, RSA_PRIVATE_PKCS1),
        Algorithm::Sm2Sm3 => {
            let secret = sm2::SecretKey::from_slice(&[7u8; 32]).expect("sm2 scalar");
            Ok(PrivateKey::Sm2(
                sm2::dsa::SigningKey::new(SM2_DEFAULT_DISTID, &secret).expect("sm2"),
            ))
        }
    }
    .expect("key");
    Key::new("k", alg, KeyMaterial::Private(Box::new(material)))
}

fn bench_verify(c: &mut Criterion) {
    let components: Vec<_> = ["@method", "@authority", "@path", "@query", "content-digest"]
        .iter()
        .map(|s| parse_component(s).expect("component"))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut group = c.benchmark_group("verify");
    for alg in Algorithm::ALL {
        let key = key(alg);
        let signer = Signer::new(key.clone(), components.clone());
        let mut head = http::Request::post("/pay?order=42&user=7")
            .header("host", "api.example.com")
            .header("content-type", "application/json")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        signer
            .sign_request_at(&mut head, br#"{"amount":100}"#, "https", now)
            .expect("sign");
        let policy = Policy {
            keys: HashMap::from([(
                "k".to_string(),
                VerifyKey {
                    key,
                    client: Arc::from("app"),
                },
            )]),
            required_components: vec!["@method".into(), "@path".into()],
            max_age: Duration::from_secs(300),
            clock_skew: Duration::from_secs(30),
            require_nonce: true,
            require_digest_with_body: true,
            label: None,
        };
        let parts = RequestParts {
            method: &head.method,
            uri: &head.uri,
            headers: &head.headers,
            scheme: "https",
        };
        policy.verify(&parts, false, now).expect("verifies");
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                policy
                    .verify(black_box(&parts), false, now)
                    .expect("verifies")
            })
        });
    }
    group.finish();

    let body = vec![b'x'; 16 * 1024];
    let digest = content_digest(&body);
    c.bench_function("content-digest/sha-256/16KiB", |b| {
        b.iter(|| verify_content_digest(&[digest.as_bytes()], black_box(&body)).expect("ok"))
    });
}

fn bench_ed25519_backends(c: &mut Criterion) {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::Signer as _;
    let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(ED25519_PRIVATE).expect("ed25519 key");
    let public = secret.verifying_key();
    let message = vec![b'm'; 256];
    let sig = secret.sign(&message);
    let ring_key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public.to_bytes());
    let mut group = c.benchmark_group("verify-ed25519-backend");
    group.bench_function("ed25519-dalek-verify-strict", |b| {
        b.iter(|| {
            public
                .verify_strict(black_box(&message), &sig)
                .expect("verifies")
        })
    });
    group.bench_function("ring", |b| {
        b.iter(|| {
            ring_key
                .verify(black_box(&message), &sig.to_bytes())
                .expect("verifies")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_verify, bench_ed25519_backends);
criterion_main!(benches);
