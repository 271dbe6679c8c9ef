//! RFC 9421 Appendix B vectors and filter behaviour tests.

use std::sync::Arc;
use std::time::Duration;

use super::base::{
    parse_signature_input, parse_signatures, signature_base, Message, RequestParts, SignatureParams,
};
use super::keys::{parse_private, parse_public, Algorithm, Key, KeyMaterial};
use super::*;
use crate::body::Body;
use crate::state::State;
use base64::Engine as _;
use bytes::Bytes;

// ---- RFC 9421 Appendix B.1 test keys ----

const RSA_PSS_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----";

/// A 2048-bit key generated for these tests (PKCS#1). RFC 9421's B.1.1
/// test-key-rsa is not used for signing: its CRT components are
/// inconsistent and `ring` refuses it (see `rfc9421_b11_rsa_key_is_refused`).
const RSA_PUBLIC_PKCS1: &str = include_str!("testdata/rsa-2048-public.pem");

pub(crate) const RSA_PRIVATE_PKCS1: &str = include_str!("testdata/rsa-2048-private.pem");
const RFC9421_RSA_PRIVATE: &str = include_str!("testdata/rfc9421-rsa-v1_5-private.pem");

const ECC_P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----";

pub(crate) const ECC_P256_PRIVATE: &str = include_str!("testdata/rfc9421-ecc-p256-private.pem");

pub(crate) const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----";

pub(crate) const ED25519_PRIVATE: &str = include_str!("testdata/rfc9421-ed25519-private.pem");

pub(crate) const SHARED_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

const REQUEST_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
const RESPONSE_DIGEST: &str = "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:";

/// The RFC 9421 §B.2 test-request.
fn test_request() -> http::request::Parts {
    http::Request::post("/foo?param=Value&Pet=dog")
        .header("host", "example.com")
        .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
        .header("content-type", "application/json")
        .header("content-digest", REQUEST_DIGEST)
        .header("content-length", "18")
        .body(())
        .expect("request")
        .into_parts()
        .0
}

/// The RFC 9421 §B.2 test-response.
fn test_response() -> http::response::Parts {
    http::Response::builder()
        .status(200)
        .header("date", "Tue, 20 Apr 2021 02:07:56 GMT")
        .header("content-type", "application/json")
        .header("content-digest", RESPONSE_DIGEST)
        .header("content-length", "23")
        .body(())
        .expect("response")
        .into_parts()
        .0
}

fn inner_list(input: &str) -> SignatureParams<'_> {
    let dict = parse_signature_input(input.as_bytes()).expect("signature input");
    match dict.0.into_iter().next() {
        Some((_, Some(l))) => l,
        other => panic!("not an inner list: {other:?}"),
    }
}

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

fn req_message(head: &http::request::Parts) -> Message<'_> {
    Message::Request(RequestParts {
        method: &head.method,
        uri: &head.uri,
        headers: &head.headers,
        scheme: "https",
    })
}

struct Vector<'a> {
    input: &'a str,
    base: &'a [&'a str],
    signature: &'a str,
}

fn check_vector(message: &Message<'_>, v: &Vector<'_>, key: &Key) {
    let list = inner_list(v.input);
    let base = signature_base(message, &list).expect("base");
    let expected = v.base.join("\n");
    assert_eq!(String::from_utf8_lossy(&base), expected, "signature base");
    assert!(
        key.verify(&base, &b64(v.signature)),
        "published signature verifies"
    );
    let mut tampered = base.clone();
    tampered.push(b' ');
    assert!(
        !key.verify(&tampered, &b64(v.signature)),
        "tampered base fails"
    );
}

fn public_key(alg: Algorithm, pem: &str) -> Key {
    Key::new(
        "k",
        alg,
        KeyMaterial::Public(Box::new(parse_public(alg, pem).expect("public key"))),
    )
}

fn private_key(id: &str, alg: Algorithm, pem: &str) -> Key {
    Key::new(
        id,
        alg,
        KeyMaterial::Private(Box::new(parse_private(alg, pem).expect("private key"))),
    )
}

fn hmac_key(id: &str, secret_b64: &str) -> Key {
    let spec = KeySpec {
        id: id.into(),
        alg: Some(Algorithm::HmacSha256),
        secret_base64: Some(secret_b64.into()),
        ..KeySpec::default()
    };
    let mut errors = FieldErrors::default();
    spec.validate("k", false, &ValidateCx::control_plane(), &mut errors)
        .expect("hmac key")
}

#[test]
fn b21_minimal_rsa_pss_sha512() {
    let head = test_request();
    check_vector(
        &req_message(&head),
        &Vector {
            input: r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#,
            base: &[r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#],
            signature: "d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==",
        },
        &public_key(Algorithm::RsaPssSha512, RSA_PSS_PUBLIC),
    );
}

#[test]
fn b22_selective_components_rsa_pss_sha512() {
    let head = test_request();
    check_vector(
        &req_message(&head),
        &Vector {
            input: r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
            base: &[
                r#""@authority": example.com"#,
                const_format(r#""content-digest": "#),
                r#""@query-param";name="Pet": dog"#,
                r#""@signature-params": ("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
            ],
            signature: "LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==",
        },
        &public_key(Algorithm::RsaPssSha512, RSA_PSS_PUBLIC),
    );
}

/// `"content-digest": <the request digest>` (a static for the vector table).
fn const_format(prefix: &str) -> &'static str {
    Box::leak(format!("{prefix}{REQUEST_DIGEST}").into_boxed_str())
}

#[test]
fn b23_full_coverage_rsa_pss_sha512() {
    let head = test_request();
    check_vector(
        &req_message(&head),
        &Vector {
            input: r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
            base: &[
                r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
                r#""@method": POST"#,
                r#""@path": /foo"#,
                r#""@query": ?param=Value&Pet=dog"#,
                r#""@authority": example.com"#,
                r#""content-type": application/json"#,
                const_format(r#""content-digest": "#),
                r#""content-length": 18"#,
                r#""@signature-params": ("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
            ],
            signature: "bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==",
        },
        &public_key(Algorithm::RsaPssSha512, RSA_PSS_PUBLIC),
    );
}

#[test]
fn b24_response_ecdsa_p256_sha256() {
    let head = test_response();
    let message = Message::Response {
        status: head.status,
        headers: &head.headers,
        request: None,
    };
    let digest_line: &'static str =
        Box::leak(format!(r#""content-digest": {RESPONSE_DIGEST}"#).into_boxed_str());
    check_vector(
        &message,
        &Vector {
            input: r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
            base: &[
                r#""@status": 200"#,
                r#""content-type": application/json"#,
                digest_line,
                r#""content-length": 23"#,
                r#""@signature-params": ("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
            ],
            signature: "wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==",
        },
        &public_key(Algorithm::EcdsaP256Sha256, ECC_P256_PUBLIC),
    );
}

#[test]
fn b25_hmac_sha256_is_byte_exact() {
    let head = test_request();
    let key = hmac_key("test-shared-secret", SHARED_SECRET);
    let v = Vector {
        input: r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        base: &[
            r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
            r#""@authority": example.com"#,
            r#""content-type": application/json"#,
            r#""@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        ],
        signature: "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=",
    };
    check_vector(&req_message(&head), &v, &key);
    let base = signature_base(&req_message(&head), &inner_list(v.input)).expect("base");
    assert_eq!(key.sign(&base).expect("sign"), b64(v.signature));
}

#[test]
fn b26_ed25519_is_byte_exact() {
    let head = test_request();
    let v = Vector {
        input: r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        base: &[
            r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
            r#""@method": POST"#,
            r#""@path": /foo"#,
            r#""@authority": example.com"#,
            r#""content-type": application/json"#,
            r#""content-length": 18"#,
            r#""@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        ],
        signature: "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
    };
    check_vector(
        &req_message(&head),
        &v,
        &public_key(Algorithm::Ed25519, ED25519_PUBLIC),
    );
    let signer = private_key("test-key-ed25519", Algorithm::Ed25519, ED25519_PRIVATE);
    let base = signature_base(&req_message(&head), &inner_list(v.input)).expect("base");
    assert_eq!(signer.sign(&base).expect("sign"), b64(v.signature));
}

#[test]
fn rsa_v1_5_and_sm2_round_trip() {
    // RFC 9421 has no rsa-v1_5 vector; a generated 2048-bit key signs and verifies.
    let rsa = private_key("test-key-rsa", Algorithm::RsaV15Sha256, RSA_PRIVATE_PKCS1);
    let sig = rsa.sign(b"base").expect("sign");
    assert!(public_key(Algorithm::RsaV15Sha256, RSA_PUBLIC_PKCS1).verify(b"base", &sig));
    assert!(!public_key(Algorithm::RsaV15Sha256, RSA_PUBLIC_PKCS1).verify(b"other", &sig));
    // pkcs1 v1.5 is deterministic: same input, same signature
    assert_eq!(rsa.sign(b"base").expect("sign"), sig);

    let sm2_secret = sm2::SecretKey::from_slice(&[7u8; 32]).expect("sm2 scalar");
    let sm2_key = Key::new(
        "sm2",
        Algorithm::Sm2Sm3,
        KeyMaterial::Private(Box::new(keys::PrivateKey::Sm2(
            sm2::dsa::SigningKey::new(keys::SM2_DEFAULT_DISTID, &sm2_secret).expect("sm2 key"),
        ))),
    );
    let sig = sm2_key.sign(b"base").expect("sign");
    assert_eq!(sig.len(), 64);
    assert!(sm2_key.verify(b"base", &sig));
    assert!(!sm2_key.verify(b"basf", &sig));
}

#[test]
fn rfc9421_b11_rsa_key_is_refused() {
    // ring checks the CRT components of a private key; B.1.1's do not agree
    // (the `rsa` crate loaded it without looking).
    let err = parse_private(Algorithm::RsaV15Sha256, RFC9421_RSA_PRIVATE)
        .err()
        .expect("refused");
    assert!(err.contains("InconsistentComponents"), "{err}");
}

#[test]
fn rsa_pss_round_trip_and_key_bounds() {
    let rsa = private_key("k", Algorithm::RsaPssSha512, RSA_PRIVATE_PKCS1);
    let sig = rsa.sign(b"base").expect("sign");
    assert_eq!(sig.len(), 256);
    assert!(public_key(Algorithm::RsaPssSha512, RSA_PUBLIC_PKCS1).verify(b"base", &sig));
    // PSS is randomised: a second signature differs and verifies too
    let again = rsa.sign(b"base").expect("sign");
    assert_ne!(again, sig);
    assert!(rsa.verify(b"base", &again));
    // a PSS signature is not a v1.5 one under the same key
    assert!(!public_key(Algorithm::RsaV15Sha256, RSA_PUBLIC_PKCS1).verify(b"base", &sig));
    // ECDSA through ring: raw r||s, 64 bytes, verified by the SPKI key
    let ec = private_key("ec", Algorithm::EcdsaP256Sha256, ECC_P256_PRIVATE);
    let sig = ec.sign(b"base").expect("sign");
    assert_eq!(sig.len(), 64);
    assert!(public_key(Algorithm::EcdsaP256Sha256, ECC_P256_PUBLIC).verify(b"base", &sig));
    assert!(!public_key(Algorithm::EcdsaP256Sha256, ECC_P256_PUBLIC).verify(b"basf", &sig));
    // wrong key types and labels are refused with a message
    assert!(parse_public(Algorithm::RsaV15Sha256, ECC_P256_PUBLIC).is_err());
    assert!(parse_private(Algorithm::RsaV15Sha256, ECC_P256_PRIVATE).is_err());
    assert!(parse_public(Algorithm::EcdsaP256Sha256, RSA_PSS_PUBLIC).is_err());
}

// ---- filter behaviour ----

const APP_SECRET: &str = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";

fn spec(extra: serde_json::Value) -> SignatureSpec {
    let mut base = serde_json::json!({
        "keys": [
            {"id": "app-1", "alg": "hmac-sha256", "secret_base64": APP_SECRET},
            {"id": "app-2", "alg": "ed25519", "public_key_pem": ED25519_PUBLIC, "client": "app"},
            {"id": "app-2-next", "alg": "ecdsa-p256-sha256", "private_key_pem": ECC_P256_PRIVATE, "client": "app"}
        ],
        "required_components": ["@method", "@authority", "@path", "@query", "content-digest"],
        "max_age": "300s",
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).expect("spec")
}

fn build(spec: &SignatureSpec, state: &State) -> SignatureFilter {
    let config = spec
        .validate("filters.verify", &ValidateCx::control_plane())
        .expect("valid");
    SignatureFilter::build("verify", &config, &BuildCx { state, redis: None })
}

fn signer(key: Key, components: &[&str]) -> Signer {
    let items = components
        .iter()
        .map(|c| base::parse_component(c).expect("component"))
        .collect();
    Signer::new(key, items)
}

const ALL: &[&str] = &["@method", "@authority", "@path", "@query", "content-digest"];

fn signed_request(signer: &Signer, body: &'static [u8], created: u64) -> http::request::Parts {
    let mut head = http::Request::post("/pay?order=42")
        .header("host", "api.example.com")
        .header("content-type", "application/json")
        .header("content-length", body.len().to_string())
        .body(())
        .expect("request")
        .into_parts()
        .0;
    signer
        .sign_request_at(&mut head, body, "http", created)
        .expect("signed");
    head
}

fn now() -> u64 {
    super::unix_now()
}

async fn run(
    f: &SignatureFilter,
    head: http::request::Parts,
    body: &'static [u8],
) -> (Result<(), Rejection>, RequestCtx, http::request::Parts) {
    run_with(f, head, Body::full(Bytes::from_static(body))).await
}

async fn run_with(
    f: &SignatureFilter,
    mut head: http::request::Parts,
    mut body: Body,
) -> (Result<(), Rejection>, RequestCtx, http::request::Parts) {
    let mut cx = RequestCtx::new(Arc::from("route"), [127, 0, 0, 1].into(), false);
    let r = f
        .on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
        .await;
    (r, cx, head)
}

async fn reason(f: &SignatureFilter, head: http::request::Parts, body: &'static [u8]) -> String {
    match run(f, head, body).await.0 {
        Ok(()) => "pass".into(),
        Err(r) => r.reason.to_string(),
    }
}

#[tokio::test]
async fn valid_signature_passes_and_identifies_client() {
    let state = State::new();
    let f = build(&spec(serde_json::json!({})), &state);
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let head = signed_request(&s, br#"{"amount":1}"#, now());
    let (r, cx, head) = run(&f, head, br#"{"amount":1}"#).await;
    r.expect("passes");
    assert_eq!(cx.client_id.as_deref(), Some("app-1"));
    assert_eq!(cx.upstream_headers[0].0, CLIENT_ID_HEADER);
    assert_eq!(cx.upstream_headers[0].1, "app-1");
    assert!(!head.headers.contains_key("signature"));
    assert!(!head.headers.contains_key("signature-input"));

    // rotation: two keys of one client; either verifies and names the client
    let e = signer(
        private_key("app-2-next", Algorithm::EcdsaP256Sha256, ECC_P256_PRIVATE),
        ALL,
    );
    let (r, cx, _) = run(&f, signed_request(&e, b"x", now()), b"x").await;
    r.expect("rotated key passes");
    assert_eq!(cx.client_id.as_deref(), Some("app"));
    let d = signer(
        private_key("app-2", Algorithm::Ed25519, ED25519_PRIVATE),
        ALL,
    );
    let (r, _, _) = run(&f, signed_request(&d, b"x", now()), b"x").await;
    r.expect("ed25519 passes");
}

/// A body without `Content-Length` (chunked HTTP/1.1, HTTP/2 DATA frames) is a
/// body: a signature without `content-digest` cannot carry one.
#[tokio::test]
async fn body_presence_comes_from_the_body_not_its_headers() {
    const NO_DIGEST: &[&str] = &["@method", "@authority", "@path", "@query"];
    let state = State::new();
    let f = build(
        &spec(serde_json::json!({ "required_components": NO_DIGEST })),
        &state,
    );
    let s = signer(hmac_key("app-1", APP_SECRET), NO_DIGEST);
    let mut head = signed_request(&s, b"", now());
    head.headers.remove("content-length");
    let frames = futures_util::stream::iter([Ok::<_, crate::BodyError>(http_body::Frame::data(
        Bytes::from_static(br#"{"amt":99999}"#),
    ))]);
    let streamed = Body::boxed(http_body_util::StreamBody::new(frames));
    let (r, _, _) = run_with(&f, head.clone(), streamed).await;
    let r = r.expect_err("a streamed body needs a covered digest");
    assert_eq!(r.reason, "component_missing", "{}", r.message);
    // The same signature without a body verifies (its nonce was not spent).
    let (r, _, _) = run_with(&f, head, Body::Empty).await;
    r.expect("no body, no digest needed");
}

/// Signature fields split over several header lines are one field: a
/// signature for another verifier on the first line and ours on the second.
#[tokio::test]
async fn signature_fields_over_several_lines() {
    let state = State::new();
    let f = build(&spec(serde_json::json!({})), &state);
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let mut head = signed_request(&s, br#"{"amount":1}"#, now());
    for name in ["signature-input", "signature"] {
        let ours = head.headers.remove(name).expect("signed");
        let foreign = if name == "signature" {
            "other=:AAAA:"
        } else {
            r#"other=("@method");created=1;keyid="elsewhere""#
        };
        head.headers
            .append(name, http::HeaderValue::from_static(foreign));
        head.headers.append(name, ours);
    }
    let (r, cx, _) = run(&f, head, br#"{"amount":1}"#).await;
    r.expect("passes");
    assert_eq!(cx.client_id.as_deref(), Some("app-1"));
}

#[test]
fn a_component_covered_twice_is_malformed() {
    let head = test_request();
    for input in [
        r#"sig=("@method" "@path" "@method");created=1"#,
        r#"sig=("content-type" "content-type");created=1"#,
    ] {
        assert!(
            matches!(
                signature_base(&req_message(&head), &inner_list(input)),
                Err(base::BaseError::Malformed(m)) if m.contains("covered twice")
            ),
            "{input}"
        );
    }
    // the same name with other parameters is another component
    let input = r#"sig=("@query-param";name="a" "@query-param";name="b");created=1"#;
    let head = http::Request::get("/x?a=1&b=2")
        .header("host", "example.com")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let base = signature_base(&req_message(&head), &inner_list(input)).expect("base");
    assert!(String::from_utf8(base)
        .expect("utf8")
        .starts_with("\"@query-param\";name=\"a\": 1\n\"@query-param\";name=\"b\": 2\n"));
}

#[tokio::test]
async fn forwards_signature_headers_when_asked() {
    let state = State::new();
    let f = build(
        &spec(serde_json::json!({"forward_signature_headers": true})),
        &state,
    );
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let (r, _, head) = run(&f, signed_request(&s, b"x", now()), b"x").await;
    r.expect("passes");
    assert!(head.headers.contains_key("signature"));
}

#[tokio::test]
async fn every_failure_reason() {
    let state = State::new();
    let f = build(&spec(serde_json::json!({})), &state);
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let body: &'static [u8] = br#"{"amount":1}"#;

    // signature_missing
    let mut h = signed_request(&s, body, now());
    h.headers.remove("signature");
    assert_eq!(reason(&f, h, body).await, "signature_missing");

    // signature_malformed (400)
    let mut h = signed_request(&s, body, now());
    h.headers.insert(
        "signature-input",
        http::HeaderValue::from_static("sig1=(\"@method\""),
    );
    let (r, _, _) = run(&f, h, body).await;
    let r = r.expect_err("malformed");
    assert_eq!((r.reason, r.status.as_u16()), ("signature_malformed", 400));

    // signature_invalid: wrong secret
    let other = signer(
        hmac_key("app-1", "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC0zMg=="),
        ALL,
    );
    assert_eq!(
        reason(&f, signed_request(&other, body, now()), body).await,
        "signature_invalid"
    );

    // signature_invalid: path, query, method or header changed after signing
    let mut h = signed_request(&s, body, now());
    h.uri = "/pay?order=43".parse().expect("uri");
    assert_eq!(reason(&f, h, body).await, "signature_invalid");
    let mut h = signed_request(&s, body, now());
    h.uri = "/refund?order=42".parse().expect("uri");
    assert_eq!(reason(&f, h, body).await, "signature_invalid");
    let mut h = signed_request(&s, body, now());
    h.headers
        .insert("host", http::HeaderValue::from_static("evil.example.com"));
    assert_eq!(reason(&f, h, body).await, "signature_invalid");

    // digest_mismatch: body changed, or covered header missing
    let h = signed_request(&s, body, now());
    assert_eq!(reason(&f, h, br#"{"amount":9}"#).await, "digest_mismatch");
    let mut h = signed_request(&s, body, now());
    h.headers.remove("content-digest");
    assert_eq!(reason(&f, h, body).await, "digest_mismatch");

    // signature_expired: too old, in the future, past expires
    assert_eq!(
        reason(&f, signed_request(&s, body, now() - 301), body).await,
        "signature_expired"
    );
    assert_eq!(
        reason(&f, signed_request(&s, body, now() + 120), body).await,
        "signature_expired"
    );
    let mut exp = s.clone();
    exp.expires_in = Some(Duration::from_secs(10));
    assert_eq!(
        reason(&f, signed_request(&exp, body, now() - 100), body).await,
        "signature_expired"
    );

    // unknown_key
    let stranger = signer(hmac_key("app-9", APP_SECRET), ALL);
    assert_eq!(
        reason(&f, signed_request(&stranger, body, now()), body).await,
        "unknown_key"
    );

    // component_missing: required component not covered; nonce absent
    let partial = signer(
        hmac_key("app-1", APP_SECRET),
        &["@method", "@path", "content-digest"],
    );
    assert_eq!(
        reason(&f, signed_request(&partial, body, now()), body).await,
        "component_missing"
    );
    let mut no_nonce = s.clone();
    no_nonce.nonce = false;
    assert_eq!(
        reason(&f, signed_request(&no_nonce, body, now()), body).await,
        "component_missing"
    );
    // a covered header the request lacks
    let with_header = signer(
        hmac_key("app-1", APP_SECRET),
        &[
            "@method",
            "@authority",
            "@path",
            "@query",
            "content-digest",
            "x-custom",
        ],
    );
    let mut h = http::Request::post("/pay?order=42")
        .header("host", "api.example.com")
        .header("x-custom", "1")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    with_header
        .sign_request(&mut h, body, "http")
        .expect("signed");
    h.headers.remove("x-custom");
    assert_eq!(reason(&f, h, body).await, "component_missing");

    // body_too_large: the digest check buffers at most the route limit (1024)
    let big: &'static [u8] = Box::leak(vec![b'a'; 2048].into_boxed_slice());
    let h = signed_request(&s, big, now());
    let (r, _, _) = run(&f, h, big).await;
    let r = r.expect_err("too large");
    assert_eq!((r.reason, r.status.as_u16()), ("body_too_large", 413));
}

#[tokio::test]
async fn algorithm_confusion_is_rejected() {
    let state = State::new();
    let f = build(&spec(serde_json::json!({})), &state);
    // A client claims hmac-sha256 for the ed25519 key app-2, keyed by its
    // public key bytes: the key's configured algorithm wins.
    let mut forged = signer(
        Key::new(
            "app-2",
            Algorithm::HmacSha256,
            KeyMaterial::Hmac(keys::HmacSecret::for_tests(ED25519_PUBLIC.as_bytes())),
        ),
        ALL,
    );
    forged.include_alg = true;
    assert_eq!(
        reason(&f, signed_request(&forged, b"x", now()), b"x").await,
        "algorithm_not_allowed"
    );
    // without an alg parameter the HMAC tag simply does not verify as ed25519
    forged.include_alg = false;
    assert_eq!(
        reason(&f, signed_request(&forged, b"x", now()), b"x").await,
        "signature_invalid"
    );

    // and config refuses an hmac key made of public key material
    let bad: SignatureSpec = serde_json::from_value(serde_json::json!({
        "keys": [{"id": "k", "alg": "hmac-sha256", "public_key_pem": ED25519_PUBLIC}]
    }))
    .expect("spec");
    let errs = bad
        .validate("filters.verify", &ValidateCx::control_plane())
        .expect_err("invalid");
    assert_eq!(errs.0[0].path, "filters.verify.keys[0].public_key_pem");
}

#[tokio::test]
async fn nonce_is_accepted_once_and_survives_reload_and_upgrade() {
    let state = State::new();
    let f = build(&spec(serde_json::json!({})), &state);
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let h = signed_request(&s, b"x", now());
    let copy = h.clone();
    let copy2 = h.clone();
    assert_eq!(reason(&f, h, b"x").await, "pass");
    assert_eq!(reason(&f, copy, b"x").await, "signature_replayed");

    // a reload builds a new filter on the same state: still replayed
    let reloaded = build(&spec(serde_json::json!({"max_age": "200s"})), &state);
    assert_eq!(
        reason(&reloaded, copy2.clone(), b"x").await,
        "signature_replayed"
    );

    // an upgrade hands the cache to the new process
    let next = State::new();
    next.import_all(state.export_all());
    let upgraded = build(&spec(serde_json::json!({})), &next);
    assert_eq!(reason(&upgraded, copy2, b"x").await, "signature_replayed");
}

#[tokio::test]
async fn redis_store_without_connection_fails_closed() {
    let state = State::new();
    let sp = spec(serde_json::json!({"replay_store": "redis"}));
    let config = sp
        .validate("filters.verify", &ValidateCx::control_plane())
        .expect("valid");
    assert!(config.uses_redis());
    let f = SignatureFilter::build(
        "verify",
        &config,
        &BuildCx {
            state: &state,
            redis: None,
        },
    );
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let (r, _, _) = run(&f, signed_request(&s, b"x", now()), b"x").await;
    let r = r.expect_err("503");
    assert_eq!(
        (r.reason, r.status.as_u16()),
        ("replay_store_unavailable", 503)
    );
}

#[tokio::test]
async fn body_requires_digest_coverage() {
    let state = State::new();
    let f = build(
        &spec(serde_json::json!({"required_components": ["@method"]})),
        &state,
    );
    let s = signer(hmac_key("app-1", APP_SECRET), &["@method", "@path"]);
    assert_eq!(
        reason(&f, signed_request(&s, b"x", now()), b"x").await,
        "component_missing"
    );
    let mut get = http::Request::get("/status")
        .header("host", "api.example.com")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    s.sign_request(&mut get, b"", "http").expect("signed");
    assert_eq!(reason(&f, get, b"").await, "pass");
}

#[test]
fn validation_reports_every_field_and_redacts_secrets() {
    let bad: SignatureSpec = serde_json::from_value(serde_json::json!({
        "keys": [
            {"id": "a", "alg": "ed25519", "secret_base64": APP_SECRET},
            {"id": "b", "alg": "hmac-sha256", "secret_base64": "!!"},
            {"id": "b", "alg": "hmac-sha256", "secret_base64": APP_SECRET},
            {"id": "c", "alg": "rsa-pss-sha512", "public_key_pem": "junk"},
            {"id": "d"}
        ],
        "required_components": ["@nope", "Bad Name"],
        "sign_response": {"key": {"id": "s", "alg": "ed25519", "public_key_pem": ED25519_PUBLIC}}
    }))
    .expect("spec");
    let errs = bad
        .validate("filters.verify", &ValidateCx::control_plane())
        .expect_err("invalid");
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "filters.verify.keys[0].secret_base64",
            "filters.verify.keys[1].secret_base64",
            "filters.verify.keys[2].id",
            "filters.verify.keys[3].public_key_pem",
            "filters.verify.keys[4].alg",
            "filters.verify.required_components[0]",
            "filters.verify.required_components[1]",
            "filters.verify.sign_response.key.public_key_pem",
        ]
    );
    let good = spec(serde_json::json!({
        "sign_response": {"key": {"id": "s", "alg": "ed25519", "private_key_pem": ED25519_PRIVATE}}
    }));
    let dumped = serde_json::to_string(&good.redacted()).expect("json");
    assert!(!dumped.contains(APP_SECRET));
    assert!(!dumped.contains("MC4CAQAwBQYDK2VwBCIEIJ"));
    assert!(dumped.contains("[redacted]"));
    assert!(
        dumped.contains("MCowBQYDK2VwAyEAJrQLj5P"),
        "public keys stay"
    );
}

#[test]
fn key_files_are_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("meshgate-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("app.pem"), ED25519_PUBLIC).expect("write");
    let sp: SignatureSpec = serde_json::from_value(serde_json::json!({
        "keys": [{"id": "a", "alg": "ed25519", "public_key_file": "app.pem"},
                 {"id": "b", "alg": "ed25519", "public_key_file": "missing.pem"}]
    }))
    .expect("spec");
    let errs = sp
        .validate("f", &ValidateCx::sidecar(&dir))
        .expect_err("missing file");
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].path, "f.keys[1].public_key_file");
    // the control plane checks shape only
    sp.validate("f", &ValidateCx::control_plane())
        .expect("valid without reading files");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn response_is_signed_and_bound_to_the_request() {
    let state = State::new();
    let f = build(
        &spec(serde_json::json!({
            "sign_response": {
                "key": {"id": "gw", "alg": "ed25519", "private_key_pem": ED25519_PRIVATE},
                "components": ["@status", "content-digest"],
                "bind_request": true
            }
        })),
        &state,
    );
    assert!(f.has_response_phase());
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let req = signed_request(&s, b"x", now());
    let original = req.clone();
    let mut body = Body::full(Bytes::from_static(b"x"));
    let mut cx = RequestCtx::new(Arc::from("route"), [127, 0, 0, 1].into(), false);
    let mut head = req;
    assert!(matches!(
        f.on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
            .await,
        Ok(())
    ));

    let (mut rsp, ()) = http::Response::builder()
        .status(201)
        .body(())
        .expect("response")
        .into_parts();
    let mut rsp_body = Body::full(Bytes::from_static(br#"{"ok":true}"#));
    f.on_response(
        &mut ResponseView::new(&mut rsp, &mut rsp_body, 1024),
        &mut cx,
    )
    .await
    .expect("signed");

    // Verify as a client would: rebuild the base with the original request.
    let input = rsp.headers.get("signature-input").expect("input");
    let list = inner_list(input.to_str().expect("ascii"));
    let ids: Vec<String> = list.components.iter().map(base::component_id).collect();
    assert_eq!(
        ids,
        [
            r#""@status""#,
            r#""content-digest""#,
            r#""signature";key="sig1";req"#
        ]
    );
    let sigs =
        parse_signatures(rsp.headers.get("signature").expect("sig").as_bytes()).expect("dict");
    let Some(Some(sig)) = sigs.get(sfv::key_ref("sig1")) else {
        panic!("no signature");
    };
    let base = signature_base(
        &Message::Response {
            status: rsp.status,
            headers: &rsp.headers,
            request: Some(RequestParts {
                method: &original.method,
                uri: &original.uri,
                headers: &original.headers,
                scheme: "http",
            }),
        },
        &list,
    )
    .expect("base");
    assert!(public_key(Algorithm::Ed25519, ED25519_PUBLIC).verify(&base, sig));
    digest::verify_content_digest(
        &[rsp
            .headers
            .get("content-digest")
            .expect("digest")
            .as_bytes()],
        br#"{"ok":true}"#,
    )
    .expect("digest");
}

#[tokio::test]
async fn alipay_rsa2_request() {
    let state = State::new();
    let sp: SignatureSpec = serde_json::from_value(serde_json::json!({
        "scheme": "alipay-rsa2",
        "keys": [{"id": "merchant", "alg": "rsa-v1_5-sha256", "public_key_pem": RSA_PUBLIC_PKCS1}],
        "alipay": {"app_ids": {"2014072300007148": "merchant"}}
    }))
    .expect("spec");
    let f = build(&sp, &state);
    let key = private_key("merchant", Algorithm::RsaV15Sha256, RSA_PRIVATE_PKCS1);
    let local = now() as i64 + 8 * 3600;
    let ts = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs(local as u64),
    )
    .to_string()
    .replace('T', " ")
    .trim_end_matches('Z')
    .to_string();
    let content = format!(
        "app_id=2014072300007148&biz_content={{\"out_trade_no\":\"1\"}}&charset=utf-8&method=alipay.trade.query&sign_type=RSA2&timestamp={ts}&version=1.0"
    );
    let sign = base64::engine::general_purpose::STANDARD
        .encode(key.sign(content.as_bytes()).expect("sign"));
    let form = |sign: &str, method: &str| -> &'static [u8] {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("app_id", "2014072300007148")
            .append_pair("method", method)
            .append_pair("charset", "utf-8")
            .append_pair("sign_type", "RSA2")
            .append_pair("timestamp", &ts)
            .append_pair("version", "1.0")
            .append_pair("biz_content", "{\"out_trade_no\":\"1\"}")
            .append_pair("sign", sign)
            .finish();
        Box::leak(body.into_bytes().into_boxed_slice())
    };
    let request = || {
        http::Request::post("/gateway.do")
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let (r, cx, _) = run(&f, request(), form(&sign, "alipay.trade.query")).await;
    r.expect("alipay signature verifies");
    assert_eq!(cx.client_id.as_deref(), Some("merchant"));
    // replay of the same signed form
    assert_eq!(
        reason(&f, request(), form(&sign, "alipay.trade.query")).await,
        "signature_replayed"
    );
    // tampered parameter
    assert_eq!(
        reason(&f, request(), form(&sign, "alipay.trade.refund")).await,
        "signature_invalid"
    );
    // an unsigned empty parameter added
    let mut with_empty = form(&sign, "alipay.trade.query").to_vec();
    with_empty.extend_from_slice(b"&refund=");
    assert_eq!(
        reason(&f, request(), Box::leak(with_empty.into_boxed_slice())).await,
        "parameters_ambiguous"
    );
    // the signed parameters in the query, a body that no signature covers
    let query = String::from_utf8(form(&sign, "alipay.trade.query").to_vec()).expect("utf-8");
    let non_form = |content_type: Option<&str>| {
        let mut b = http::Request::post(format!("/gateway.do?{query}"));
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        b.body(()).expect("request").into_parts().0
    };
    for ct in [
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        assert_eq!(
            reason(&f, non_form(ct), br#"{"amount":99999}"#).await,
            "unsigned_body",
            "{ct:?}"
        );
    }
    // no body at all: the query alone is the signed content, which verifies
    // (and is then a replay of the form request's signature)
    assert_eq!(
        reason(&f, non_form(Some("application/json")), b"").await,
        "signature_replayed"
    );
    // two Content-Type headers: the app may read the other one
    let mut twice = request();
    twice
        .headers
        .append("content-type", http::HeaderValue::from_static("text/plain"));
    assert_eq!(
        reason(&f, twice, form(&sign, "alipay.trade.query")).await,
        "signature_malformed"
    );
}

#[tokio::test]
async fn alipay_non_form_body_passes_unsigned_only_when_configured() {
    let state = State::new();
    let sp: SignatureSpec = serde_json::from_value(serde_json::json!({
        "scheme": "alipay-rsa2",
        "keys": [{"id": "merchant", "alg": "rsa-v1_5-sha256", "private_key_pem": RSA_PRIVATE_PKCS1}],
        "alipay": {"timezone": "+00:00", "allow_non_form_body": true}
    }))
    .expect("spec");
    let f = build(&sp, &state);
    let key = private_key("merchant", Algorithm::RsaV15Sha256, RSA_PRIVATE_PKCS1);
    let ts = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string();
    let content = format!("app_id=merchant&timestamp={ts}");
    let sign = base64::engine::general_purpose::STANDARD
        .encode(key.sign(content.as_bytes()).expect("sign"));
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("app_id", "merchant")
        .append_pair("timestamp", &ts)
        .append_pair("sign", &sign)
        .finish();
    let head = http::Request::post(format!("/upload?{query}"))
        .header("content-type", "application/octet-stream")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    let (r, _, _) = run(&f, head, b"unsigned bytes").await;
    r.expect("allowed, unsigned");
}

/// Component derivation examples of RFC 9421 §2.1 and §2.2.
#[test]
fn rfc9421_section2_component_values() {
    let head = http::Request::post(
        "/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something",
    )
    .header("host", "www.example.com")
    .header("x-ows-header", "  Leading and trailing whitespace.  ")
    .header("cache-control", "max-age=60")
    .header("cache-control", "   must-revalidate")
    .header("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c), d")
    .header("example-header", "value, with, lots")
    .header("example-header", "of, commas")
    .body(())
    .expect("request")
    .into_parts()
    .0;
    let input = r#"sig=("@method" "@target-uri" "@authority" "@scheme" "@request-target" "@path" "@query" "@query-param";name="var" "@query-param";name="bar" "@query-param";name="fa%C3%A7ade%22%3A%20" "x-ows-header" "cache-control" "example-dict" "example-dict";key="a" "example-dict";key="b" "example-dict";key="c" "example-dict";key="d" "example-dict";sf "example-header";bs);created=1"#;
    let base = signature_base(&req_message(&head), &inner_list(input)).expect("base");
    let lines: Vec<String> = String::from_utf8(base)
        .expect("utf8")
        .lines()
        .map(String::from)
        .collect();
    let expected = [
        r#""@method": POST"#,
        r#""@target-uri": https://www.example.com/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"#,
        r#""@authority": www.example.com"#,
        r#""@scheme": https"#,
        r#""@request-target": /parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"#,
        r#""@path": /parameters"#,
        r#""@query": ?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"#,
        r#""@query-param";name="var": this%20is%20a%20big%0Amultiline%20value"#,
        r#""@query-param";name="bar": with%20plus%20whitespace"#,
        r#""@query-param";name="fa%C3%A7ade%22%3A%20": something"#,
        r#""x-ows-header": Leading and trailing whitespace."#,
        r#""cache-control": max-age=60, must-revalidate"#,
        r#""example-dict": a=1,    b=2;x=1;y=2,   c=(a   b   c), d"#,
        r#""example-dict";key="a": 1"#,
        r#""example-dict";key="b": 2;x=1;y=2"#,
        r#""example-dict";key="c": (a b c)"#,
        r#""example-dict";key="d": ?1"#,
        r#""example-dict";sf: a=1, b=2;x=1;y=2, c=(a b c), d"#,
        r#""example-header";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:"#,
    ];
    assert_eq!(&lines[..expected.len()], &expected[..]);

    // a covered query parameter or header the request lacks
    let missing = inner_list(r#"sig=("@query-param";name="nope");created=1"#);
    assert!(matches!(
        signature_base(&req_message(&head), &missing),
        Err(base::BaseError::Missing(_))
    ));
    // @status is for responses; ;req only in responses
    for bad in [
        r#"sig=("@status");created=1"#,
        r#"sig=("@method";req);created=1"#,
    ] {
        assert!(matches!(
            signature_base(&req_message(&head), &inner_list(bad)),
            Err(base::BaseError::Malformed(_))
        ));
    }
}

#[tokio::test]
async fn nonce_length_and_per_key_bound_are_enforced_by_the_filter() {
    // random nonces are 22 characters
    let state = State::new();
    let f = build(&spec(serde_json::json!({"max_nonce_length": 21})), &state);
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let (r, _, _) = run(&f, signed_request(&s, b"x", now()), b"x").await;
    let r = r.expect_err("too long");
    assert_eq!((r.reason, r.status.as_u16()), ("nonce_invalid", 400));

    let state = State::new();
    let f = build(&spec(serde_json::json!({"max_nonces_per_key": 2})), &state);
    let first = signed_request(&s, b"x", now());
    assert_eq!(reason(&f, first.clone(), b"x").await, "pass");
    assert_eq!(
        reason(&f, signed_request(&s, b"x", now()), b"x").await,
        "pass"
    );
    let (r, _, _) = run(&f, signed_request(&s, b"x", now()), b"x").await;
    let r = r.expect_err("bound");
    assert_eq!((r.reason, r.status.as_u16()), ("nonce_limit_reached", 429));
    let retry: u64 = r
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=330).contains(&retry), "{retry}");
    // no live nonce was forgotten to make room
    assert_eq!(reason(&f, first, b"x").await, "signature_replayed");
    // another key id has its own bound
    let other = signer(
        private_key("app-2-next", Algorithm::EcdsaP256Sha256, ECC_P256_PRIVATE),
        ALL,
    );
    assert_eq!(
        reason(&f, signed_request(&other, b"x", now()), b"x").await,
        "pass"
    );

    let errs = spec(serde_json::json!({"max_nonces_per_key": 0, "max_nonce_length": 0}))
        .validate("filters.verify", &ValidateCx::control_plane())
        .expect_err("zero");
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "filters.verify.max_nonce_length",
            "filters.verify.max_nonces_per_key"
        ]
    );
}

#[tokio::test]
async fn raw_nonces_handed_over_by_the_previous_release_are_still_replays() {
    let s = signer(hmac_key("app-1", APP_SECRET), ALL);
    let head = signed_request(&s, b"x", now());
    let input = head
        .headers
        .get(sign::SIGNATURE_INPUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("signature-input")
        .to_string();
    let nonce = input
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("nonce parameter");
    // the previous release's export: raw "<key id>\x1f<nonce>" entries
    let legacy = serde_json::json!([[format!("app-1\u{1f}{nonce}"), now() + 300]]);
    let state = State::new();
    state.import_all([("verify/signature-nonces".to_string(), legacy)].into());
    let f = build(&spec(serde_json::json!({})), &state);
    assert_eq!(reason(&f, head, b"x").await, "signature_replayed");
    assert_eq!(
        reason(&f, signed_request(&s, b"x", now()), b"x").await,
        "pass"
    );
}
