//! Verification cost per algorithm: parse the signature headers, check the
//! policy, rebuild the signature base and verify (no body digest, no nonce
//! store). Plus the Content-Digest of a 16 KiB body.
//!
//! The `verify-*-backend` groups time bare verification per library
//! (`ring`, `aws-lc-rs`, `ed25519-dalek`), the measurements behind the
//! choice of library per algorithm.
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
            keys: HashMap::from([("k".to_string(), VerifyKey::new(key, Arc::from("app")))]),
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

/// Bare verification (no header parsing, no signature base) of the same
/// 256-byte message by each library: the measurements behind the choice of
/// library per algorithm (keys.rs).
fn bench_backends(c: &mut Criterion) {
    use aws_lc_rs::signature as lc;
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    use ed25519_dalek::Signer as _;
    use ring::signature as rs;
    let message = vec![b'm'; 256];

    let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(ED25519_PRIVATE).expect("ed25519 key");
    let public = secret.verifying_key();
    let sig = secret.sign(&message).to_bytes();
    let ring_key = rs::UnparsedPublicKey::new(&rs::ED25519, public.to_bytes());
    let lc_key = lc::ParsedPublicKey::new(&lc::ED25519, public.to_bytes()).expect("aws-lc key");
    let mut group = c.benchmark_group("verify-ed25519-backend");
    group.bench_function("ed25519-dalek-verify-strict", |b| {
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        b.iter(|| {
            public
                .verify_strict(black_box(&message), &sig)
                .expect("verifies")
        })
    });
    group.bench_function("ring", |b| {
        b.iter(|| {
            ring_key
                .verify(black_box(&message), &sig)
                .expect("verifies")
        })
    });
    group.bench_function("aws-lc-rs-parsed", |b| {
        b.iter(|| {
            lc_key
                .verify_sig(black_box(&message), &sig)
                .expect("verifies")
        })
    });
    group.finish();

    let rng = ring::rand::SystemRandom::new();
    let Ok(PrivateKey::RsaV15(rsa)) = parse_private(Algorithm::RsaV15Sha256, RSA_PRIVATE_PKCS1)
    else {
        panic!("rsa key");
    };
    let mut rsa_sig = vec![0u8; rsa.public().modulus_len()];
    rsa.sign(&rs::RSA_PKCS1_SHA256, &rng, &message, &mut rsa_sig)
        .expect("rsa sign");
    let rsa_der = rsa.public().as_ref().to_vec();
    let ring_rsa = rs::UnparsedPublicKey::new(&rs::RSA_PKCS1_2048_8192_SHA256, rsa_der.clone());
    let lc_rsa_unparsed =
        lc::UnparsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, rsa_der.clone());
    let lc_rsa = lc::ParsedPublicKey::new(&lc::RSA_PKCS1_2048_8192_SHA256, &rsa_der).expect("rsa");
    let mut group = c.benchmark_group("verify-rsa-v1_5-sha256-backend");
    group.bench_function("ring", |b| {
        b.iter(|| {
            ring_rsa
                .verify(black_box(&message), &rsa_sig)
                .expect("verifies")
        })
    });
    group.bench_function("aws-lc-rs-unparsed", |b| {
        b.iter(|| {
            lc_rsa_unparsed
                .verify(black_box(&message), &rsa_sig)
                .expect("verifies")
        })
    });
    group.bench_function("aws-lc-rs-parsed", |b| {
        b.iter(|| {
            lc_rsa
                .verify_sig(black_box(&message), &rsa_sig)
                .expect("verifies")
        })
    });
    group.finish();

    let Ok(PrivateKey::EcdsaP256(ec)) = parse_private(Algorithm::EcdsaP256Sha256, ECC_P256_PRIVATE)
    else {
        panic!("p256 key");
    };
    let ec_sig = ec
        .sign(&rng, &message)
        .expect("ecdsa sign")
        .as_ref()
        .to_vec();
    let ec_point = ring::signature::KeyPair::public_key(&*ec).as_ref().to_vec();
    let ring_ec = rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, ec_point.clone());
    let lc_ec = lc::ParsedPublicKey::new(&lc::ECDSA_P256_SHA256_FIXED, &ec_point).expect("p256");
    let mut group = c.benchmark_group("verify-ecdsa-p256-sha256-backend");
    group.bench_function("ring", |b| {
        b.iter(|| {
            ring_ec
                .verify(black_box(&message), &ec_sig)
                .expect("verifies")
        })
    });
    group.bench_function("aws-lc-rs-parsed", |b| {
        b.iter(|| {
            lc_ec
                .verify_sig(black_box(&message), &ec_sig)
                .expect("verifies")
        })
    });
    group.finish();
}

criterion_group!(benches, bench_verify, bench_backends);
criterion_main!(benches);
