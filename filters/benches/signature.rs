//! Verification cost per algorithm: parse the signature headers, check the
//! policy, rebuild the signature base and verify (no body digest, no nonce
//! store). Plus the Content-Digest of a 16 KiB body.
//!
//! `cargo bench -p meshgate-filters --bench signature -- --quick`

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

const RSA_PRIVATE_PKCS1: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEqAIBAAKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsP
BRrwWEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsd
JKFqMGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75
jfZgkne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKI
lE0PuKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZ
SFlQPSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQABAoIBAG/JZuSWdoVHbi56
vjgCgkjg3lkO1KrO3nrdm6nrgA9P9qaPjxuKoWaKO1cBQlE1pSWp/cKncYgD5WxE
CpAnRUXG2pG4zdkzCYzAh1i+c34L6oZoHsirK6oNcEnHveydfzJL5934egm6p8DW
+m1RQ70yUt4uRc0YSor+q1LGJvGQHReF0WmJBZHrhz5e63Pq7lE0gIwuBqL8SMaA
yRXtK+JGxZpImTq+NHvEWWCu09SCq0r838ceQI55SvzmTkwqtC+8AT2zFviMZkKR
Qo6SPsrqItxZWRty2izawTF0Bf5S2VAx7O+6t3wBsQ1sLptoSgX3QblELY5asI0J
YFz7LJECgYkAsqeUJmqXE3LP8tYoIjMIAKiTm9o6psPlc8CrLI9CH0UbuaA2JCOM
cCNq8SyYbTqgnWlB9ZfcAm/cFpA8tYci9m5vYK8HNxQr+8FS3Qo8N9RJ8d0U5Csw
DzMYfRghAfUGwmlWj5hp1pQzAuhwbOXFtxKHVsMPhz1IBtF9Y8jvgqgYHLbmyiu1
mwJ5AL0pYF0G7x81prlARURwHo0Yf52kEw1dxpx+JXER7hQRWQki5/NsUEtv+8RT
qn2m6qte5DXLyn83b1qRscSdnCCwKtKWUug5q2ZbwVOCJCtmRwmnP131lWRYfj67
B/xJ1ZA6X3GEf4sNReNAtaucPEelgR2nsN0gKQKBiGoqHWbK1qYvBxX2X3kbPDkv
9C+celgZd2PW7aGYLCHq7nPbmfDV0yHcWjOhXZ8jRMjmANVR/eLQ2EfsRLdW69bn
f3ZD7JS1fwGnO3exGmHO3HZG+6AvberKYVYNHahNFEw5TsAcQWDLRpkGybBcxqZo
81YCqlqidwfeO5YtlO7etx1xLyqa2NsCeG9A86UjG+aeNnXEIDk1PDK+EuiThIUa
/2IxKzJKWl1BKr2d4xAfR0ZnEYuRrbeDQYgTImOlfW6/GuYIxKYgEKCFHFqJATAG
IxHrq1PDOiSwXd2GmVVYyEmhZnbcp8CxaEMQoevxAta0ssMK3w6UsDtvUvYvF22m
qQKBiD5GwESzsFPy3Ga0MvZpn3D6EJQLgsnrtUPZx+z2Ep2x0xc5orneB5fGyF1P
WtP+fG5Q6Dpdz3LRfm+KwBCWFKQjg7uTxcjerhBWEYPmEMKYwTJF5PBG9/ddvHLQ
EQeNC8fHGg4UXU8mhHnSBt3EA10qQJfRDs15M38eG2cYwB1PZpDHScDnDA0=
-----END RSA PRIVATE KEY-----";

const ECC_P256_PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----";

const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";

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
        policy.verify(&parts, now).expect("verifies");
        group.bench_function(alg.name(), |b| {
            b.iter(|| policy.verify(black_box(&parts), now).expect("verifies"))
        });
    }
    group.finish();

    let body = vec![b'x'; 16 * 1024];
    let digest = content_digest(&body);
    c.bench_function("content-digest/sha-256/16KiB", |b| {
        b.iter(|| verify_content_digest(&[digest.as_bytes()], black_box(&body)).expect("ok"))
    });
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
