//! Unit tests of the session filter: every reason, algorithm confusion,
//! leeway, cookie flags, the store cache and its single flight.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::store::fake::FakeStore;
use super::*;
use crate::body::Body;
use crate::config::ValidateCx;
use crate::state::{Handover, State};

const KEYS: &str = include_str!("testdata/test-keys.json");

fn fixtures() -> Value {
    serde_json::from_str(KEYS).expect("fixture json")
}

fn der(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("b64 string"))
        .expect("fixture base64")
}

fn jwks() -> Value {
    let f = fixtures();
    json!({"keys": [
        {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": f["rsa"]["n"], "e": f["rsa"]["e"]},
        {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": f["rsa"]["n"], "e": f["rsa"]["e"]},
        {"kty": "EC", "kid": "es", "crv": "P-256", "x": f["ec"]["x"], "y": f["ec"]["y"]},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": f["ed"]["x"]},
        {"kty": "oct", "kid": "hs", "k": f["hmac"]["k"]},
    ]})
}

fn encoding_key(alg: Algorithm) -> EncodingKey {
    let f = fixtures();
    match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            EncodingKey::from_rsa_der(&der(&f["rsa"]["pkcs1_der_b64"]))
        }
        Algorithm::ES256 => EncodingKey::from_ec_der(&der(&f["ec"]["pkcs8_der_b64"])),
        Algorithm::EdDSA => EncodingKey::from_ed_der(&der(&f["ed"]["pkcs8_der_b64"])),
        _ => EncodingKey::from_base64_secret(&b64_std(f["hmac"]["k"].as_str().expect("k")))
            .expect("hmac key"),
    }
}

fn b64_std(url: &str) -> String {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(url)
        .expect("b64url");
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn kid(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "rs",
        Algorithm::PS256 => "ps",
        Algorithm::ES256 => "es",
        Algorithm::EdDSA => "ed",
        _ => "hs",
    }
}

fn now() -> i64 {
    store::unix_now() as i64
}

fn mint(alg: Algorithm, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid(alg).to_string());
    jsonwebtoken::encode(&header, &claims, &encoding_key(alg)).expect("encode")
}

fn good_claims() -> Value {
    json!({"sub": "u-42", "iss": "https://id.example.com", "aud": "wallet",
           "exp": now() + 300, "tenant": "t-7", "roles": ["a", "b"]})
}

fn jwt_spec(extra: Value) -> SessionSpec {
    let mut base = json!({
        "mode": "jwt",
        "jwks": jwks(),
        "issuer": "https://id.example.com",
        "audiences": ["wallet"],
        "leeway": "30s",
        "claims_to_headers": {"sub": "x-meshgate-user", "tenant": "x-meshgate-tenant", "roles": "x-meshgate-roles"},
    });
    merge(&mut base, extra);
    serde_json::from_value(base).expect("spec")
}

fn merge(base: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}

fn build(spec: &SessionSpec, state: &State) -> SessionFilter {
    let config = spec
        .validate("filters.login", &ValidateCx::control_plane())
        .expect("valid spec");
    SessionFilter::build("login", &config, &BuildCx { state, redis: None })
}

fn ctx() -> RequestCtx {
    RequestCtx::new(Arc::from("route"), [127, 0, 0, 1].into(), false)
}

/// A context `later` than now: the filter sees the time a test that slept
/// for `later` would have read. Tests move through time this way instead of
/// sleeping (filters take the time from the context, never the clocks).
fn ctx_at(later: Duration) -> RequestCtx {
    let cx = ctx();
    let (now, instant) = (cx.now + later, cx.instant + later);
    cx.at(now, instant)
}

async fn run(
    filter: &SessionFilter,
    headers: &[(&str, &str)],
) -> (Result<(), Rejection>, http::request::Parts, RequestCtx) {
    run_at(filter, headers, Duration::ZERO).await
}

/// [`run`] `later` than now (see [`ctx_at`]).
async fn run_at(
    filter: &SessionFilter,
    headers: &[(&str, &str)],
    later: Duration,
) -> (Result<(), Rejection>, http::request::Parts, RequestCtx) {
    let mut builder = http::Request::builder().uri("/x");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let (mut head, ()) = builder.body(()).expect("request").into_parts();
    let mut body = Body::Empty;
    let mut cx = ctx_at(later);
    let result = filter
        .on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
        .await;
    (result, head, cx)
}

fn reason(r: &Result<(), Rejection>) -> &'static str {
    match r {
        Ok(()) => "pass",
        Err(e) => e.reason,
    }
}

fn upstream(cx: &RequestCtx, name: &str) -> Option<String> {
    cx.upstream_headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.to_str().ok())
        .map(str::to_string)
}

// ---------------------------------------------------------------- JWT

#[tokio::test]
async fn every_algorithm_verifies_and_claims_reach_the_app() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({})), &state);
    for alg in [
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ] {
        let token = mint(alg, good_claims());
        let auth = format!("Bearer {token}");
        let (result, head, cx) = run(&filter, &[("authorization", &auth)]).await;
        assert_eq!(reason(&result), "pass", "{alg:?}");
        assert_eq!(cx.user.as_deref(), Some("u-42"));
        assert_eq!(upstream(&cx, "x-meshgate-user").as_deref(), Some("u-42"));
        assert_eq!(upstream(&cx, "x-meshgate-tenant").as_deref(), Some("t-7"));
        assert_eq!(
            upstream(&cx, "x-meshgate-roles").as_deref(),
            Some(r#"["a","b"]"#)
        );
        assert!(head.headers.get(AUTHORIZATION).is_none(), "token stripped");
    }
}

#[tokio::test]
async fn forward_keeps_the_token() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({"forward": true})), &state);
    let auth = format!("Bearer {}", mint(Algorithm::ES256, good_claims()));
    let (result, head, _) = run(&filter, &[("authorization", &auth)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(
        head.headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Some(auth.as_str())
    );
}

#[tokio::test]
async fn missing_token_is_login_required_unless_optional() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({})), &state);
    let (result, _, _) = run(&filter, &[]).await;
    assert_eq!(reason(&result), "login_required");
    assert_eq!(
        result.expect_err("rejected").status,
        http::StatusCode::UNAUTHORIZED
    );
    let (result, _, _) = run(&filter, &[("authorization", "Basic dTpw")]).await;
    assert_eq!(reason(&result), "login_required");

    let optional = build(&jwt_spec(json!({"optional": true})), &state);
    let (result, _, cx) = run(&optional, &[]).await;
    assert_eq!(reason(&result), "pass");
    assert!(cx.user.is_none());
    // optional does not excuse a bad token
    let (result, _, _) = run(&optional, &[("authorization", "Bearer not.a.jwt")]).await;
    assert_eq!(reason(&result), "token_invalid");
}

#[tokio::test]
async fn expiry_and_leeway() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({})), &state);
    let check = |claims: Value| {
        let token = mint(Algorithm::ES256, claims);
        let filter = &filter;
        async move {
            let auth = format!("Bearer {token}");
            reason(&run(filter, &[("authorization", &auth)]).await.0)
        }
    };
    let mut c = good_claims();
    c["exp"] = json!(now() - 10); // within the 30s leeway
    assert_eq!(check(c.clone()).await, "pass");
    c["exp"] = json!(now() - 120);
    assert_eq!(check(c.clone()).await, "token_expired");
    let mut c = good_claims();
    c["nbf"] = json!(now() + 10); // within leeway
    assert_eq!(check(c.clone()).await, "pass");
    c["nbf"] = json!(now() + 600);
    assert_eq!(check(c).await, "token_invalid");

    let strict = build(&jwt_spec(json!({"leeway": "0s"})), &state);
    let mut c = good_claims();
    c["exp"] = json!(now() - 10);
    let auth = format!("Bearer {}", mint(Algorithm::ES256, c));
    assert_eq!(
        reason(&run(&strict, &[("authorization", &auth)]).await.0),
        "token_expired"
    );
}

/// The verified-token cache of a JWT filter.
fn verified(filter: &SessionFilter) -> &VerifiedTokens {
    match &filter.runtime {
        Runtime::Jwt { verified, .. } => verified,
        Runtime::Session(_) => panic!("a JWT filter"),
    }
}

#[tokio::test]
async fn time_claims_are_checked_at_the_request_clock() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({"verified_cache_entries": 0})), &state);
    let mut c = good_claims();
    c["exp"] = json!(now() + 60);
    c["nbf"] = json!(now() + 100);
    let auth = format!("Bearer {}", mint(Algorithm::ES256, c));
    let headers = [("authorization", auth.as_str())];
    let at = |secs| run_at(&filter, &headers, Duration::from_secs(secs));
    // Valid from nbf - leeway (now + 70) to exp + leeway (now + 90).
    assert_eq!(reason(&at(0).await.0), "token_invalid");
    assert_eq!(reason(&at(80).await.0), "pass");
    assert_eq!(reason(&at(120).await.0), "token_expired");

    // NumericDates may be fractional; anything else is malformed.
    for (exp, expected) in [
        (json!((now() + 60) as f64 + 0.4), "pass"),
        (json!("tomorrow"), "token_invalid"),
        (json!(-5), "token_invalid"),
        (json!(null), "token_invalid"),
    ] {
        let mut c = good_claims();
        c["exp"] = exp.clone();
        let auth = format!("Bearer {}", mint(Algorithm::ES256, c));
        let (result, _, _) = run(&filter, &[("authorization", &auth)]).await;
        assert_eq!(reason(&result), expected, "exp {exp}");
    }
}

#[tokio::test]
async fn a_verified_token_is_served_from_the_cache_and_rechecked_each_time() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({"leeway": "0s"})), &state);
    let mut c = good_claims();
    c["exp"] = json!(now() + 60);
    let token = mint(Algorithm::RS256, c);
    let auth = format!("Bearer {token}");
    for _ in 0..3 {
        let (result, _, cx) = run(&filter, &[("authorization", &auth)]).await;
        assert_eq!(reason(&result), "pass");
        // Identity and claims headers are the same from the cache.
        assert_eq!(cx.user.as_deref(), Some("u-42"));
        assert_eq!(upstream(&cx, "x-meshgate-tenant").as_deref(), Some("t-7"));
        assert_eq!(verified(&filter).len(), 1);
    }
    // The cached token's lifetime still ends at exp.
    let (result, _, _) = run_at(
        &filter,
        &[("authorization", &auth)],
        Duration::from_secs(61),
    )
    .await;
    assert_eq!(reason(&result), "token_expired");
    assert_eq!(verified(&filter).len(), 0, "the expired entry is dropped");

    // A near-copy of a cached token is a different token.
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "pass"
    );
    let forged = format!("Bearer {}", forge_signature(&token));
    assert_eq!(
        reason(&run(&filter, &[("authorization", &forged)]).await.0),
        "token_invalid"
    );
    let padded = format!("Bearer {token}=");
    assert_eq!(
        reason(&run(&filter, &[("authorization", &padded)]).await.0),
        "token_invalid"
    );
    // Refused tokens are never cached, so they cannot push verified ones out.
    assert_eq!(verified(&filter).len(), 1);
}

#[tokio::test]
async fn the_verified_cache_is_bounded_and_can_be_turned_off() {
    let state = State::new();
    let tokens: Vec<String> = (0..3)
        .map(|i| {
            let mut c = good_claims();
            c["sub"] = json!(format!("u-{i}"));
            format!("Bearer {}", mint(Algorithm::HS256, c))
        })
        .collect();
    for (entries, held) in [(2, 2), (0, 0)] {
        let filter = build(
            &jwt_spec(json!({"verified_cache_entries": entries})),
            &state,
        );
        for (i, auth) in tokens.iter().enumerate() {
            let (result, _, cx) = run(&filter, &[("authorization", auth)]).await;
            assert_eq!(reason(&result), "pass");
            assert_eq!(cx.user.as_deref(), Some(format!("u-{i}").as_str()));
        }
        assert_eq!(
            verified(&filter).len(),
            held,
            "verified_cache_entries: {entries}"
        );
    }
}

#[test]
fn a_cached_token_misses_under_other_keys() {
    let spec = jwt_spec(json!({}));
    let config = spec
        .validate("filters.login", &ValidateCx::control_plane())
        .expect("valid");
    let ModeConfig::Jwt(jwt) = &config.mode else {
        panic!("mode: jwt");
    };
    let verifier = JwtVerifier::new(jwt, false);
    let parse = |jwks: &Value| {
        let mut errors = crate::config::FieldErrors::default();
        Arc::new(KeySet::parse_strict(
            jwks,
            &jwt.algorithms,
            "jwks",
            &mut errors,
        ))
    };
    let (all, also_all, without_es) = (parse(&jwks()), parse(&jwks()), parse(&only(&jwks(), "ed")));
    let cache = VerifiedTokens::new(10);
    let token = mint(Algorithm::ES256, good_claims());
    let now = store::unix_now();
    assert!(cache.verify(&verifier, &token, &all, now).is_ok());
    // A rotation that drops the key refuses the token, cached or not.
    assert_eq!(
        cache.verify(&verifier, &token, &without_es, now).err(),
        Some(JwtError::UnknownKid)
    );
    // The same keys fetched again are another key set: verified afresh.
    assert!(cache.verify(&verifier, &token, &also_all, now).is_ok());
    assert_eq!(cache.len(), 1);
}

#[tokio::test]
async fn issuer_audience_required_claims() {
    let state = State::new();
    let filter = build(
        &jwt_spec(json!({"required_claims": ["exp", "tenant"]})),
        &state,
    );
    let cases = [
        ("iss", json!("https://evil.example.com")),
        ("aud", json!("other-app")),
    ];
    for (claim, value) in cases {
        let mut c = good_claims();
        c[claim] = value;
        let auth = format!("Bearer {}", mint(Algorithm::RS256, c));
        let (result, _, _) = run(&filter, &[("authorization", &auth)]).await;
        assert_eq!(reason(&result), "token_invalid", "{claim}");
    }
    for claim in ["tenant", "exp", "iss", "aud"] {
        let mut c = good_claims();
        c.as_object_mut().expect("object").remove(claim);
        let auth = format!("Bearer {}", mint(Algorithm::RS256, c));
        let (result, _, _) = run(&filter, &[("authorization", &auth)]).await;
        assert_eq!(reason(&result), "token_invalid", "without {claim}");
    }
}

/// `token` with one bit of its signature flipped.
fn forge_signature(token: &str) -> String {
    let (signed, sig) = token.rsplit_once('.').expect("three parts");
    let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .expect("sig");
    sig[0] ^= 1;
    format!("{signed}.{}", b64url(&sig))
}

#[tokio::test]
async fn bad_signature_is_token_invalid() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({})), &state);
    let token = mint(Algorithm::EdDSA, good_claims());
    let auth = format!("Bearer {}", forge_signature(&token));
    let (result, _, cx) = run(&filter, &[("authorization", &auth)]).await;
    assert_eq!(reason(&result), "token_invalid");
    assert!(cx.user.is_none() && cx.upstream_headers.is_empty());
    // Payload swapped under a valid signature
    let other = mint(
        Algorithm::EdDSA,
        json!({"sub": "admin", "exp": now() + 300}),
    );
    let payload = other.split('.').nth(1).expect("payload");
    let parts: Vec<&str> = token.split('.').collect();
    let auth = format!("Bearer {}.{payload}.{}", parts[0], parts[2]);
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "token_invalid"
    );
}

fn b64url(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test]
async fn algorithm_confusion_and_none_fail() {
    let state = State::new();
    let filter = build(&jwt_spec(json!({})), &state);
    let f = fixtures();
    // HS256 "signed" with the RSA public key's bytes, naming the RSA key.
    let rsa_public_as_secret = format!(
        "{}{}",
        f["rsa"]["n"].as_str().expect("n"),
        f["rsa"]["e"].as_str().expect("e")
    );
    for kid in ["rs", "ps", "es", "ed"] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_string());
        let token = jsonwebtoken::encode(
            &header,
            &good_claims(),
            &EncodingKey::from_secret(rsa_public_as_secret.as_bytes()),
        )
        .expect("encode");
        let auth = format!("Bearer {token}");
        assert_eq!(
            reason(&run(&filter, &[("authorization", &auth)]).await.0),
            "token_invalid",
            "{kid}"
        );
    }
    // RS256 token presented as PS256 key and vice versa
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("ps".into());
    let token = jsonwebtoken::encode(&header, &good_claims(), &encoding_key(Algorithm::RS256))
        .expect("encode");
    let auth = format!("Bearer {token}");
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "token_invalid"
    );
    // alg none, with and without a signature part
    let payload = b64url(good_claims().to_string().as_bytes());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "kid": "hs"}),
        json!({"alg": "None", "typ": "JWT"}),
    ] {
        let h = b64url(header.to_string().as_bytes());
        for token in [format!("{h}.{payload}."), format!("{h}.{payload}")] {
            let auth = format!("Bearer {token}");
            assert_eq!(
                reason(&run(&filter, &[("authorization", &auth)]).await.0),
                "token_invalid"
            );
        }
    }
    // A kid the JWKS does not have
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("nope".into());
    let token = jsonwebtoken::encode(&header, &good_claims(), &encoding_key(Algorithm::ES256))
        .expect("encode");
    let auth = format!("Bearer {token}");
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "token_invalid"
    );
}

/// What one case of [`single_key_sets_refuse_like_larger_ones`] expects.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Passes with this subject as `cx.user` and the user header (none when
    /// the subject is not a string); the Authorization header is removed and
    /// the tenant header is `t-7` exactly when claims are kept.
    Pass { user: Option<&'static str> },
    /// Refused with exactly this `reason: message`.
    Refused(&'static str),
    /// Refused with this reason (whatever the message).
    Reason(&'static str),
}

/// One row of the key-set table: the Authorization value it sends, and the
/// outcome under the one-key set and under the larger set.
struct KeySetCase {
    name: &'static str,
    auth: fn() -> String,
    one_key: Want,
    larger: Want,
}

/// Picks a key set's outcome out of a [`KeySetCase`].
type KeySetColumn = fn(&KeySetCase) -> Want;

impl KeySetCase {
    /// A case with the same outcome under both key sets.
    const fn same(name: &'static str, auth: fn() -> String, want: Want) -> Self {
        KeySetCase {
            name,
            auth,
            one_key: want,
            larger: want,
        }
    }
}

/// `Bearer` and a token signed with the fixture key of `key`, under header
/// `alg` and `kid` (the two may disagree).
fn bearer_signed(alg: Algorithm, kid: Option<&str>, key: Algorithm, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let token = jsonwebtoken::encode(&header, &claims, &encoding_key(key)).expect("encode");
    format!("Bearer {token}")
}

/// One HS256 key (the usual static setup, verified without a separate
/// header parse) and the larger set the other tests use: every refusal has
/// the same reason and message under both (only a token whose key is in
/// just one set fares differently), and the subject reaches the app whether
/// or not other claims are kept.
#[tokio::test]
async fn single_key_sets_refuse_like_larger_ones() {
    use Want::{Pass, Reason, Refused};
    const GOOD: Want = Pass { user: Some("u-42") };
    let cases = [
        KeySetCase::same(
            "good token",
            || format!("Bearer {}", mint(Algorithm::HS256, good_claims())),
            GOOD,
        ),
        // No kid: the HS256 key is the only candidate in either set.
        KeySetCase::same(
            "no kid",
            || bearer_signed(Algorithm::HS256, None, Algorithm::HS256, good_claims()),
            GOOD,
        ),
        // No kid under another algorithm: the one-key set has no key for it,
        // the larger set's ES256 key verifies it.
        KeySetCase {
            name: "no kid, ES256",
            auth: || bearer_signed(Algorithm::ES256, None, Algorithm::ES256, good_claims()),
            one_key: Refused("token_invalid: no key for the token's algorithm"),
            larger: GOOD,
        },
        // A kid the set does not have, even over a valid signature.
        KeySetCase::same(
            "unknown kid",
            || {
                bearer_signed(
                    Algorithm::HS256,
                    Some("other"),
                    Algorithm::HS256,
                    good_claims(),
                )
            },
            Refused("token_invalid: unknown key id"),
        ),
        // Another algorithm under the HMAC key's kid, signed with a key of
        // that algorithm (which the larger set holds under kid "es").
        KeySetCase::same(
            "ES256 under kid hs",
            || {
                bearer_signed(
                    Algorithm::ES256,
                    Some("hs"),
                    Algorithm::ES256,
                    good_claims(),
                )
            },
            Refused("token_invalid: token algorithm does not match its key"),
        ),
        KeySetCase::same(
            "bad signature",
            || {
                let forged = forge_signature(&mint(Algorithm::HS256, good_claims()));
                format!("Bearer {forged}")
            },
            Refused("token_invalid: bad signature"),
        ),
        KeySetCase::same(
            "expired",
            || {
                let mut expired = good_claims();
                expired["exp"] = json!(now() - 300);
                format!("Bearer {}", mint(Algorithm::HS256, expired))
            },
            Reason("token_expired"),
        ),
        KeySetCase::same(
            "wrong audience",
            || {
                let mut wrong_aud = good_claims();
                wrong_aud["aud"] = json!("other-app");
                format!("Bearer {}", mint(Algorithm::HS256, wrong_aud))
            },
            Refused("token_invalid: wrong audience"),
        ),
        KeySetCase::same(
            "alg none",
            || {
                let h = b64url(json!({"alg": "none", "kid": "hs"}).to_string().as_bytes());
                let payload = b64url(good_claims().to_string().as_bytes());
                format!("Bearer {h}.{payload}.")
            },
            Reason("token_invalid"),
        ),
        // Signed claims that are not a JSON object.
        KeySetCase::same(
            "claims not an object",
            || {
                let exp = good_claims()["exp"].clone();
                let claims = json!([exp, null, "u-42", "https://id.example.com", "wallet"]);
                bearer_signed(Algorithm::HS256, Some("hs"), Algorithm::HS256, claims)
            },
            Reason("token_invalid"),
        ),
        // A subject that is not a string passes without an identity.
        KeySetCase::same(
            "numeric subject",
            || {
                let mut numeric_sub = good_claims();
                numeric_sub["sub"] = json!(42);
                format!("Bearer {}", mint(Algorithm::HS256, numeric_sub))
            },
            Pass { user: None },
        ),
    ];

    let state = State::new();
    let f = fixtures();
    let one_key =
        json!({"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": f["hmac"]["k"]}]});
    // Each set with the column of the table that holds its outcomes.
    let key_sets: [(&str, Value, KeySetColumn); 2] = [
        ("one key", one_key, |c| c.one_key),
        ("larger set", jwks(), |c| c.larger),
    ];
    let message = |r: &Result<(), Rejection>| match r {
        Ok(()) => "pass".to_string(),
        Err(e) => format!("{}: {}", e.reason, e.message),
    };
    for (key_set, jwks, outcome) in &key_sets {
        for claims_to_headers in [json!(null), json!({"tenant": "x-meshgate-tenant"})] {
            let filter = build(
                &jwt_spec(json!({"jwks": jwks, "claims_to_headers": claims_to_headers})),
                &state,
            );
            let keeps_claims = !claims_to_headers.is_null();
            let claims = if keeps_claims {
                "claims kept"
            } else {
                "sub only"
            };
            for case in &cases {
                let at = format!("{key_set}/{claims}/{}", case.name);
                let want = outcome(case);
                let auth = (case.auth)();
                let (result, head, cx) = run(&filter, &[("authorization", &auth)]).await;
                match want {
                    Pass { user } => {
                        assert_eq!(message(&result), "pass", "{at}");
                        assert!(
                            head.headers.get(AUTHORIZATION).is_none(),
                            "{at}: token removed"
                        );
                        assert_eq!(cx.user.as_deref(), user, "{at}: cx.user");
                        assert_eq!(
                            upstream(&cx, USER_HEADER).as_deref(),
                            user,
                            "{at}: user header"
                        );
                        assert_eq!(
                            upstream(&cx, "x-meshgate-tenant").as_deref(),
                            keeps_claims.then_some("t-7"),
                            "{at}: tenant header"
                        );
                    }
                    Refused(want) => assert_eq!(message(&result), want, "{at}"),
                    Reason(want) => assert_eq!(reason(&result), want, "{at}"),
                }
                if !matches!(want, Pass { .. }) {
                    assert!(
                        cx.user.is_none() && cx.upstream_headers.is_empty(),
                        "{at}: no identity on refusal"
                    );
                }
            }
        }
    }

    // A custom required claim is checked with either key set too.
    for (key_set, jwks, _) in &key_sets {
        let filter = build(
            &jwt_spec(
                json!({"jwks": jwks, "claims_to_headers": null, "required_claims": ["exp", "tenant"]}),
            ),
            &state,
        );
        let mut no_tenant = good_claims();
        no_tenant.as_object_mut().expect("object").remove("tenant");
        let auth = format!("Bearer {}", mint(Algorithm::HS256, no_tenant));
        let result = run(&filter, &[("authorization", &auth)]).await.0;
        assert_eq!(
            result.err().map(|e| e.message.to_string()).as_deref(),
            Some("required claim \"tenant\" is missing"),
            "{key_set}/required claim missing"
        );
        let auth = format!("Bearer {}", mint(Algorithm::HS256, good_claims()));
        assert_eq!(
            reason(&run(&filter, &[("authorization", &auth)]).await.0),
            "pass",
            "{key_set}/required claim present"
        );
    }
}

#[tokio::test]
async fn algorithms_allow_list_and_tokens_without_kid() {
    let state = State::new();
    let f = fixtures();
    let spec = jwt_spec(json!({
        "algorithms": ["ES256"],
        "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": f["ec"]["x"], "y": f["ec"]["y"]}]},
    }));
    let filter = build(&spec, &state);
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &good_claims(),
        &encoding_key(Algorithm::ES256),
    )
    .expect("encode");
    let auth = format!("Bearer {token}");
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "pass"
    );
    let auth = format!("Bearer {}", mint(Algorithm::HS256, good_claims()));
    assert_eq!(
        reason(&run(&filter, &[("authorization", &auth)]).await.0),
        "token_invalid"
    );
}

#[tokio::test]
async fn token_from_cookie_and_header() {
    let state = State::new();
    let token = mint(Algorithm::ES256, good_claims());
    let filter = build(
        &jwt_spec(json!({"token_from": "cookie", "token_name": "id_token"})),
        &state,
    );
    let cookie = format!("theme=dark; id_token={token}; lang=en");
    let (result, head, _) = run(&filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(
        head.headers.get(COOKIE).and_then(|v| v.to_str().ok()),
        Some("theme=dark; lang=en")
    );

    let filter = build(
        &jwt_spec(json!({"token_from": "header", "token_name": "x-id-token"})),
        &state,
    );
    let (result, head, _) = run(&filter, &[("x-id-token", &token)]).await;
    assert_eq!(reason(&result), "pass");
    assert!(head.headers.get("x-id-token").is_none());
}

#[test]
fn validation_reports_every_bad_field() {
    let f = fixtures();
    let spec: SessionSpec = serde_json::from_value(json!({
        "mode": "jwt",
        "jwks": {"keys": [
            {"kty": "RSA", "kid": "a", "n": f["rsa"]["n"], "e": f["rsa"]["e"]},
            {"kty": "oct", "kid": "b", "k": "c2hvcnQ"},
            {"kty": "EC", "kid": "c", "crv": "P-256", "alg": "RS256", "x": f["ec"]["x"], "y": f["ec"]["y"]},
        ]},
        "claims_to_headers": {"sub": "x-user"},
        "algorithms": ["HS512"],
    }))
    .expect("spec parses");
    let errors = spec
        .validate("filters.login", &ValidateCx::control_plane())
        .expect_err("invalid");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "filters.login.jwks.keys[0]",
        "filters.login.jwks.keys[1]",
        "filters.login.jwks.keys[2]",
        "filters.login.claims_to_headers.sub",
        "filters.login.algorithms[0]",
    ] {
        assert!(paths.contains(&p), "{p} missing in {paths:?}");
    }
    // What the mode rules out is refused while reading, at its field.
    let shape_error = |spec: Value| {
        let e = serde_path_to_error::deserialize::<_, SessionSpec>(spec).expect_err("refused");
        crate::config::shape::shape_error(&e.path().to_string(), &e.inner().to_string()).to_string()
    };
    assert_eq!(
        shape_error(json!({"mode": "jwt", "jwks_file": "k.json", "store": "redis"})),
        "store: only valid with mode: session"
    );
    assert_eq!(
        shape_error(json!({"mode": "session", "issuer": "x"})),
        "issuer: only valid with mode: jwt"
    );
    assert_eq!(
        shape_error(json!({"mode": "jwt"})),
        "jwks: exactly one of jwks, jwks_file, jwks_url is required"
    );
    assert_eq!(
        shape_error(json!({"mode": "jwt", "jwks_file": "k.json", "jwks_url": "https://x/"})),
        "jwks: exactly one of jwks, jwks_file, jwks_url is required"
    );
    assert!(shape_error(json!({"mode": "jwt", "jwks_fil": "x"})).starts_with("jwks"));
    assert!(
        shape_error(json!({"mode": "jwt", "jwks_file": "k.json", "jwks_fil": "x"}))
            .starts_with("jwks_fil: unknown field `jwks_fil`"),
    );
    assert_eq!(
        shape_error(json!({"jwks_file": "k.json"})),
        "mode: required: jwt or session"
    );
}

#[test]
fn redacted_hides_secret_key_material() {
    let spec = jwt_spec(json!({}));
    let dumped = serde_json::to_string(&spec.redacted()).expect("json");
    let k = fixtures()["hmac"]["k"].as_str().expect("k").to_string();
    assert!(!dumped.contains(&k));
    assert!(dumped.contains("[redacted]"));
    assert!(
        dumped.contains(fixtures()["ec"]["x"].as_str().expect("x")),
        "public parts stay"
    );
}

#[test]
fn jwks_file_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("meshgate-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("jwks.json"), jwks().to_string()).expect("write");
    let cx = ValidateCx::sidecar(&dir);
    let spec: SessionSpec =
        serde_json::from_value(json!({"mode": "jwt", "jwks_file": "jwks.json"})).expect("spec");
    let config = spec.validate("filters.login", &cx).expect("valid");
    match &config.mode {
        ModeConfig::Jwt(j) => match &j.keys {
            KeySource::Static(k) => assert_eq!(k.len(), 5),
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    let missing: SessionSpec =
        serde_json::from_value(json!({"mode": "jwt", "jwks_file": "nope.json"})).expect("spec");
    let errors = missing
        .validate("filters.login", &cx)
        .expect_err("missing file");
    assert_eq!(errors.0[0].path, "filters.login.jwks_file");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- sessions

fn session_spec(extra: Value) -> SessionSpec {
    let mut base = json!({
        "mode": "session",
        "claims_to_headers": {"tenant": "x-meshgate-tenant"},
    });
    merge(&mut base, extra);
    serde_json::from_value(base).expect("spec")
}

/// A session filter whose store is the counting fake.
fn with_fake(spec: &SessionSpec, state: &State, fake: &Arc<FakeStore>) -> SessionFilter {
    let config = spec
        .validate("filters.s", &ValidateCx::control_plane())
        .expect("valid");
    let ModeConfig::Session(store_config) = &config.mode else {
        panic!("session mode expected")
    };
    let cx = BuildCx { state, redis: None };
    let mut filter = SessionFilter::build("s", &config, &cx);
    filter.runtime =
        SessionFilter::session_runtime("s", store_config, Backend::Fake(fake.clone()), &cx);
    filter
}

async fn respond(
    filter: &SessionFilter,
    cx: &mut RequestCtx,
    headers: &[(&str, &str)],
) -> (Result<(), Rejection>, http::response::Parts) {
    let mut builder = http::Response::builder().status(200);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let (mut head, ()) = builder.body(()).expect("response").into_parts();
    let mut body = Body::Empty;
    let result = filter
        .on_response(&mut ResponseView::new(&mut head, &mut body, 1024), cx)
        .await;
    (result, head)
}

fn set_cookies(head: &http::response::Parts) -> Vec<String> {
    head.headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().expect("pair");
    first.split_once('=').expect("name=value").1.to_string()
}

/// Logs in through the filter (app instruction) and returns the session id.
async fn login(filter: &SessionFilter, instruction: &str, tls: bool) -> (String, Vec<String>) {
    login_at(filter, instruction, tls, Duration::ZERO).await
}

/// [`login`] `later` than now (see [`ctx_at`]).
async fn login_at(
    filter: &SessionFilter,
    instruction: &str,
    tls: bool,
    later: Duration,
) -> (String, Vec<String>) {
    let mut cx = ctx_at(later);
    cx.tls = tls;
    let (result, head) = respond(filter, &mut cx, &[(SESSION_SET_HEADER, instruction)]).await;
    result.expect("login accepted");
    assert!(
        head.headers.get(SESSION_SET_HEADER).is_none(),
        "instruction stripped"
    );
    let cookies = set_cookies(&head);
    let id = cookie_value(cookies.first().expect("a cookie"));
    (id, cookies)
}

#[tokio::test]
async fn app_issues_a_session_and_it_authenticates() {
    let state = State::new();
    let filter = build(&session_spec(json!({})), &state);
    let (id, cookies) = login(
        &filter,
        r#"{"sub":"u-42","claims":{"tenant":"t-7"},"ttl":"2h"}"#,
        false,
    )
    .await;
    assert!(id.len() >= 22, "at least 128 bits");
    let c = &cookies[0];
    assert!(c.starts_with("meshgate_session="));
    assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.contains("Path=/"));
    assert!(c.contains("Max-Age=7200"), "{c}");
    assert!(!c.contains("Secure"), "plain http: no Secure");

    let cookie = format!("a=1; meshgate_session={id}");
    let (result, head, cx) = run(&filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(cx.user.as_deref(), Some("u-42"));
    assert_eq!(upstream(&cx, "x-meshgate-user").as_deref(), Some("u-42"));
    assert_eq!(upstream(&cx, "x-meshgate-tenant").as_deref(), Some("t-7"));
    assert_eq!(
        head.headers.get(COOKIE).and_then(|v| v.to_str().ok()),
        Some("a=1"),
        "session id stripped"
    );

    let (other, _) = login(&filter, r#"{"sub":"u-43"}"#, false).await;
    assert_ne!(id, other, "fresh random ids");
}

#[tokio::test]
async fn cookie_flags_follow_tls_and_config() {
    let state = State::new();
    let filter = build(
        &session_spec(
            json!({"same_site": "strict", "cookie_path": "/app", "cookie_domain": "example.com"}),
        ),
        &state,
    );
    let (_, cookies) = login(&filter, r#"{"sub":"u"}"#, true).await;
    let c = &cookies[0];
    for flag in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/app",
        "Domain=example.com",
    ] {
        assert!(c.contains(flag), "{flag} in {c}");
    }
    let filter = build(&session_spec(json!({"same_site": "none"})), &state);
    let (_, cookies) = login(&filter, r#"{"sub":"u"}"#, false).await;
    assert!(cookies[0].contains("SameSite=None") && cookies[0].contains("Secure"));
    let filter = build(&session_spec(json!({"cookie_secure": "always"})), &state);
    let (_, cookies) = login(&filter, r#"{"sub":"u"}"#, false).await;
    assert!(cookies[0].contains("Secure"));
}

#[tokio::test]
async fn header_sessions_return_the_id_in_a_header() {
    let state = State::new();
    let filter = build(
        &session_spec(json!({"token_from": "header", "token_name": "x-session"})),
        &state,
    );
    let mut cx = ctx();
    let (result, head) = respond(
        &filter,
        &mut cx,
        &[(SESSION_SET_HEADER, r#"{"sub":"u-1"}"#)],
    )
    .await;
    result.expect("ok");
    assert!(set_cookies(&head).is_empty());
    let id = head
        .headers
        .get("x-session")
        .and_then(|v| v.to_str().ok())
        .expect("id header")
        .to_string();
    let (result, req, cx) = run(&filter, &[("x-session", &id)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(cx.user.as_deref(), Some("u-1"));
    assert!(req.headers.get("x-session").is_none());
}

#[tokio::test]
async fn logout_revokes_and_expires_the_cookie() {
    let state = State::new();
    let filter = build(&session_spec(json!({})), &state);
    let (id, _) = login(&filter, r#"{"sub":"u-42"}"#, false).await;
    let cookie = format!("meshgate_session={id}");
    let (result, _, mut cx) = run(&filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "pass");
    let (result, head) = respond(&filter, &mut cx, &[(SESSION_CLEAR_HEADER, "1")]).await;
    result.expect("logout");
    assert!(head.headers.get(SESSION_CLEAR_HEADER).is_none());
    let cookies = set_cookies(&head);
    assert!(
        cookies[0].starts_with("meshgate_session=;") && cookies[0].contains("Max-Age=0"),
        "{cookies:?}"
    );
    let (result, _, _) = run(&filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "session_revoked");
}

#[tokio::test]
async fn login_replaces_the_previous_session() {
    let state = State::new();
    let filter = build(&session_spec(json!({"optional": true})), &state);
    let (old, _) = login(&filter, r#"{"sub":"u-1"}"#, false).await;
    let cookie = format!("meshgate_session={old}");
    let (_, _, mut cx) = run(&filter, &[("cookie", &cookie)]).await;
    let (result, head) = respond(
        &filter,
        &mut cx,
        &[(SESSION_SET_HEADER, r#"{"sub":"u-2"}"#)],
    )
    .await;
    result.expect("login");
    let new = cookie_value(&set_cookies(&head)[0]);
    assert_ne!(new, old);
    let strict = build(&session_spec(json!({})), &state);
    assert_eq!(
        reason(&run(&strict, &[("cookie", &cookie)]).await.0),
        "session_revoked"
    );
}

#[tokio::test]
async fn session_reasons() {
    let state = State::new();
    let filter = build(&session_spec(json!({})), &state);
    assert_eq!(reason(&run(&filter, &[]).await.0), "login_required");
    let unknown = format!("meshgate_session={}", "A".repeat(43));
    assert_eq!(
        reason(&run(&filter, &[("cookie", &unknown)]).await.0),
        "session_expired"
    );
    assert_eq!(
        reason(
            &run(&filter, &[("cookie", "meshgate_session=../../etc")])
                .await
                .0
        ),
        "session_expired"
    );
    // absolute expiry inside the record
    let fake = Arc::new(FakeStore::default());
    let filter = with_fake(&session_spec(json!({})), &state, &fake);
    let id = "B".repeat(43);
    fake.put(
        &id,
        SessionRecord {
            sub: "u".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() - 1,
            revoked: false,
        },
    );
    let cookie = format!("meshgate_session={id}");
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie)]).await.0),
        "session_expired"
    );
    // optional: stale sessions continue anonymously (the login route)
    let optional = build(&session_spec(json!({"optional": true})), &state);
    let (result, _, cx) = run(&optional, &[("cookie", &unknown)]).await;
    assert_eq!(reason(&result), "pass");
    assert!(cx.user.is_none());
}

#[tokio::test]
async fn idle_and_absolute_timeouts() {
    let state = State::new();
    let filter = build(
        &session_spec(
            json!({"idle_timeout": "1s", "cache_ttl": "100ms", "absolute_timeout": "3s"}),
        ),
        &state,
    );
    let (id, cookies) = login(&filter, r#"{"sub":"u","ttl":"1h"}"#, false).await;
    assert!(
        cookies[0].contains("Max-Age=3"),
        "ttl capped by absolute_timeout: {}",
        cookies[0]
    );
    let cookie = format!("meshgate_session={id}");
    // Used every 600ms the idle timer slides; the absolute expiry (whole
    // seconds, so 2-3s after login) ends the session regardless.
    let step = Duration::from_millis(600);
    let mut t = Duration::ZERO;
    for _ in 0..3 {
        t += step;
        assert_eq!(
            reason(&run_at(&filter, &[("cookie", &cookie)], t).await.0),
            "pass"
        );
    }
    for _ in 0..2 {
        t += step;
        let _ = run_at(&filter, &[("cookie", &cookie)], t).await;
    }
    t += step;
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &cookie)], t).await.0),
        "session_expired"
    );

    let (id, _) = login_at(&filter, r#"{"sub":"u"}"#, false, t).await;
    let cookie = format!("meshgate_session={id}");
    t += Duration::from_millis(1200);
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &cookie)], t).await.0),
        "session_expired",
        "idled out"
    );
}

#[tokio::test]
async fn bad_instruction_is_an_upstream_error() {
    let state = State::new();
    let filter = build(&session_spec(json!({})), &state);
    for bad in [
        "not json",
        r#"{"claims":{}}"#,
        r#"{"sub":""}"#,
        r#"{"sub":"u","ttl":"soon"}"#,
        r#"{"sub":"u","extra":1}"#,
    ] {
        let mut cx = ctx();
        let (result, _) = respond(&filter, &mut cx, &[(SESSION_SET_HEADER, bad)]).await;
        assert_eq!(result.expect_err(bad).reason, "upstream_error");
    }
}

#[tokio::test]
async fn single_flight_one_store_read_for_concurrent_misses() {
    let state = State::new();
    let fake = Arc::new(FakeStore::default());
    fake.delay_ms.store(50, Ordering::SeqCst);
    let filter = Arc::new(with_fake(
        &session_spec(json!({"store": "redis"})),
        &state,
        &fake,
    ));
    let id = "C".repeat(43);
    fake.put(
        &id,
        SessionRecord {
            sub: "u-9".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() + 60,
            revoked: false,
        },
    );
    let cookie = format!("meshgate_session={id}");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let filter = filter.clone();
            let cookie = cookie.clone();
            tokio::spawn(async move { reason(&run(&filter, &[("cookie", &cookie)]).await.0) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), "pass");
    }
    assert_eq!(fake.reads.load(Ordering::SeqCst), 1);
    // and the answer is cached afterwards
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie)]).await.0),
        "pass"
    );
    assert_eq!(fake.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_ids_are_negatively_cached_and_revocation_lands_within_the_budget() {
    let state = State::new();
    let fake = Arc::new(FakeStore::default());
    let filter = with_fake(
        &session_spec(json!({"store": "redis", "cache_ttl": "200ms"})),
        &state,
        &fake,
    );
    let unknown = format!("meshgate_session={}", "D".repeat(43));
    for _ in 0..5 {
        assert_eq!(
            reason(&run(&filter, &[("cookie", &unknown)]).await.0),
            "session_expired"
        );
    }
    assert_eq!(
        fake.reads.load(Ordering::SeqCst),
        1,
        "negative answers are cached"
    );

    let id = "E".repeat(43);
    fake.put(
        &id,
        SessionRecord {
            sub: "u".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() + 60,
            revoked: false,
        },
    );
    let cookie = format!("meshgate_session={id}");
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie)]).await.0),
        "pass"
    );
    // revoked elsewhere (another pod): still served from cache, then refused
    fake.put(&id, SessionRecord::tombstone(store::unix_now()));
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie)]).await.0),
        "pass"
    );
    let mut t = Duration::from_millis(250);
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &cookie)], t).await.0),
        "session_revoked"
    );
    // deleted in the store: refused after the budget too
    let id2 = "F".repeat(43);
    fake.put(
        &id2,
        SessionRecord {
            sub: "u".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() + 60,
            revoked: false,
        },
    );
    let cookie2 = format!("meshgate_session={id2}");
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &cookie2)], t).await.0),
        "pass"
    );
    fake.remove(&id2);
    t += Duration::from_millis(250);
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &cookie2)], t).await.0),
        "session_expired"
    );
}

#[tokio::test]
async fn store_down_cached_sessions_keep_working_uncached_fail_closed() {
    let state = State::new();
    let fake = Arc::new(FakeStore::default());
    let spec = session_spec(json!({"store": "redis", "cache_ttl": "300ms"}));
    let filter = with_fake(&spec, &state, &fake);
    let (cached, _) = login(&filter, r#"{"sub":"u-1"}"#, false).await;
    let uncached = "G".repeat(43);
    fake.put(
        &uncached,
        SessionRecord {
            sub: "u-2".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() + 60,
            revoked: false,
        },
    );
    fake.down.store(true, Ordering::SeqCst);
    let c1 = format!("meshgate_session={cached}");
    let c2 = format!("meshgate_session={uncached}");
    assert_eq!(reason(&run(&filter, &[("cookie", &c1)]).await.0), "pass");
    let (result, _, _) = run(&filter, &[("cookie", &c2)]).await;
    assert_eq!(reason(&result), "session_store_unavailable");
    assert_eq!(
        result.expect_err("503").status,
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    // login while down is refused too
    let mut cx = ctx();
    let (result, _) = respond(&filter, &mut cx, &[(SESSION_SET_HEADER, r#"{"sub":"u"}"#)]).await;
    assert_eq!(
        result.expect_err("down").reason,
        "session_store_unavailable"
    );
    // after the cache TTL the cached one needs the store as well
    let t = Duration::from_millis(350);
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &c1)], t).await.0),
        "session_store_unavailable"
    );
    // allow_anonymous
    let anon = with_fake(
        &session_spec(json!({"store": "redis", "on_store_error": "allow_anonymous"})),
        &state,
        &fake,
    );
    let (result, _, cx) = run_at(&anon, &[("cookie", &c2)], t).await;
    assert_eq!(reason(&result), "pass");
    assert!(cx.user.is_none());
    // recovery
    fake.down.store(false, Ordering::SeqCst);
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &c2)], t).await.0),
        "pass"
    );
    assert_eq!(
        reason(&run_at(&filter, &[("cookie", &c1)], t).await.0),
        "pass"
    );
}

#[tokio::test]
async fn cache_and_memory_store_survive_handover() {
    let state = State::new();
    let filter = build(&session_spec(json!({})), &state);
    let (id, _) = login(&filter, r#"{"sub":"u-5"}"#, false).await;
    let fake = Arc::new(FakeStore::default());
    let cached = with_fake(
        &session_spec(json!({"store": "redis", "cache_ttl": "5s"})),
        &state,
        &fake,
    );
    let (cached_id, _) = login(&cached, r#"{"sub":"u-6"}"#, false).await;

    let next = State::new();
    next.import_all(state.export_all());
    let filter = build(&session_spec(json!({})), &next);
    let cookie = format!("meshgate_session={id}");
    let (result, _, cx) = run(&filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(cx.user.as_deref(), Some("u-5"));

    let empty = Arc::new(FakeStore::default());
    let cached = with_fake(
        &session_spec(json!({"store": "redis", "cache_ttl": "5s"})),
        &next,
        &empty,
    );
    let cookie = format!("meshgate_session={cached_id}");
    assert_eq!(
        reason(&run(&cached, &[("cookie", &cookie)]).await.0),
        "pass"
    );
    assert_eq!(
        empty.reads.load(Ordering::SeqCst),
        0,
        "served from the handed-over cache"
    );
}

#[test]
fn session_cache_exports_nothing_when_empty() {
    let cache = cache::SessionCache::default();
    assert!(cache.export().is_none());
    assert_eq!(cache.len(), 0);
}

#[test]
fn uses_redis_only_for_the_redis_store() {
    let cx = ValidateCx::control_plane();
    let c = session_spec(json!({"store": "redis"}))
        .validate("f", &cx)
        .expect("valid");
    assert!(c.uses_redis());
    let c = session_spec(json!({})).validate("f", &cx).expect("valid");
    assert!(!c.uses_redis());
}

// ---------------------------------------------------------------- remote JWKS

/// A JWKS endpoint in this process: counts fetches, serves what it is told,
/// answers 500 when `fail` is set.
struct JwksServer {
    port: u16,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    body: Arc<std::sync::Mutex<String>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

async fn jwks_server(initial: Value) -> JwksServer {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = Arc::new(std::sync::Mutex::new(initial.to_string()));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (f, b, x) = (fetches.clone(), body.clone(), fail.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (f, b, x) = (f.clone(), b.clone(), x.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    f.fetch_add(1, Ordering::SeqCst);
                    let status = if x.load(Ordering::SeqCst) { 500 } else { 200 };
                    let text = b.lock().expect("body").clone();
                    async move {
                        http::Response::builder()
                            .status(status)
                            .body(http_body_util::Full::new(bytes::Bytes::from(text)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    JwksServer {
        port,
        fetches,
        body,
        fail,
    }
}

fn only(jwks: &Value, kid: &str) -> Value {
    let keys: Vec<Value> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["kid"] == kid)
        .cloned()
        .collect();
    json!({ "keys": keys })
}

#[tokio::test]
async fn remote_jwks_rotation_is_rate_limited_and_outages_are_bounded() {
    let server = jwks_server(only(&jwks(), "es")).await;
    let state = State::new();
    let spec = jwt_spec(json!({
        "jwks": null,
        "jwks_url": format!("http://127.0.0.1:{}/jwks.json", server.port),
        "jwks_refresh": "300ms",
        "jwks_min_refresh": "200ms",
        "jwks_max_stale": "1s",
    }));
    let filter = build(&spec, &state);
    let es = format!("Bearer {}", mint(Algorithm::ES256, good_claims()));
    let ed = format!("Bearer {}", mint(Algorithm::EdDSA, good_claims()));
    assert_eq!(
        reason(&run(&filter, &[("authorization", &es)]).await.0),
        "pass"
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // Unknown kid: at most one fetch per jwks_min_refresh.
    let mut t = Duration::from_millis(250);
    for _ in 0..5 {
        assert_eq!(
            reason(&run_at(&filter, &[("authorization", &ed)], t).await.0),
            "token_invalid"
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // Rotation: the new key appears and is picked up on the next unknown kid.
    *server.body.lock().expect("body") = only(&jwks(), "ed").to_string();
    t += Duration::from_millis(250);
    assert_eq!(
        reason(&run_at(&filter, &[("authorization", &ed)], t).await.0),
        "pass"
    );
    assert_eq!(server.fetches.load(Ordering::SeqCst), 3);

    // The endpoint fails: keys keep serving up to jwks_max_stale, then 503.
    server.fail.store(true, Ordering::SeqCst);
    for _ in 0..7 {
        assert_eq!(
            reason(&run_at(&filter, &[("authorization", &ed)], t).await.0),
            "pass"
        );
        t += Duration::from_millis(100);
    }
    // The stale keys started background refreshes: real fetches in spawned
    // tasks, waited for here (this waits for the tasks, not for the clock).
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.fetches.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("background refreshes were tried");
    t += Duration::from_millis(500);
    let (result, _, _) = run_at(&filter, &[("authorization", &ed)], t).await;
    assert_eq!(reason(&result), "session_store_unavailable");
    // ...and recovers when the endpoint does.
    server.fail.store(false, Ordering::SeqCst);
    t += Duration::from_millis(250);
    assert_eq!(
        reason(&run_at(&filter, &[("authorization", &ed)], t).await.0),
        "pass"
    );
    // The first token verified (and was cached) under the key the rotation
    // removed: it is refused now.
    assert_eq!(
        reason(&run_at(&filter, &[("authorization", &es)], t).await.0),
        "token_invalid"
    );
}

#[tokio::test]
async fn a_cancelled_lookup_leaves_no_flight_behind() {
    let fake = Arc::new(FakeStore::default());
    fake.delay_ms.store(200, Ordering::SeqCst);
    let id = "H".repeat(43);
    fake.put(
        &id,
        SessionRecord {
            sub: "u".into(),
            claims: Default::default(),
            iat: 0,
            exp: store::unix_now() + 60,
            revoked: false,
        },
    );
    let cache = Arc::new(cache::SessionCache::default());
    let backend = Backend::Fake(fake.clone());
    let settings = cache::CacheSettings {
        ttl: Duration::from_secs(5),
        max_entries: 10,
        idle: Duration::from_secs(60),
    };
    let task = {
        let (cache, backend, id) = (cache.clone(), backend.clone(), id.clone());
        tokio::spawn(async move {
            cache
                .get(&id, &backend, &settings, store::Now::of(&ctx()))
                .await
        })
    };
    // Let the spawned lookup start (it then waits in the slow store); the
    // test runs on one thread, so a yield hands it the thread.
    tokio::time::timeout(Duration::from_secs(5), async {
        while cache.flights() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the lookup started");
    assert_eq!(cache.flights(), 1);
    task.abort();
    let _ = task.await;
    assert_eq!(cache.flights(), 0, "the abandoned flight is gone");
    let found = cache
        .get(&id, &backend, &settings, store::Now::of(&ctx()))
        .await
        .expect("lookup");
    assert!(matches!(found, store::Lookup::Active(_)));
    assert_eq!(cache.flights(), 0);
}

#[test]
fn jwks_url_and_ca_file_validation() {
    let dir = std::env::temp_dir().join(format!("meshgate-session-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("empty.pem"), "no certificates here").expect("write");
    let cx = ValidateCx::sidecar(&dir);
    let spec = |extra: Value| jwt_spec(merge_into(json!({"jwks": null}), extra));
    let ok = spec(json!({"jwks_url": "https://id.example.com/jwks.json"}));
    assert!(ok.validate("f", &cx).is_ok());
    let paths = |s: SessionSpec| -> Vec<String> {
        s.validate("f", &cx)
            .expect_err("invalid")
            .0
            .into_iter()
            .map(|e| e.path)
            .collect()
    };
    assert_eq!(
        paths(spec(json!({"jwks_url": "ftp://x/jwks"}))),
        ["f.jwks_url"]
    );
    assert_eq!(
        paths(spec(
            json!({"jwks_url": "https://id.example.com/jwks.json", "jwks_ca_file": "empty.pem"})
        )),
        ["f.jwks_ca_file"]
    );
    assert_eq!(
        paths(spec(
            json!({"jwks_url": "https://id.example.com/jwks.json", "jwks_ca_file": "missing.pem"})
        )),
        ["f.jwks_ca_file"]
    );
    assert_eq!(
        paths(spec(
            json!({"jwks_url": "http://x/jwks", "jwks_refresh": "0s"})
        )),
        ["f.jwks_refresh"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn merge_into(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

#[tokio::test]
async fn memory_sessions_are_shared_by_every_instance_of_the_process() {
    let state = State::new();
    let config = session_spec(json!({}))
        .validate("filters.login", &ValidateCx::control_plane())
        .expect("valid");
    let login_filter = SessionFilter::build(
        "login",
        &config,
        &BuildCx {
            state: &state,
            redis: None,
        },
    );
    let api_filter = SessionFilter::build(
        "api-session",
        &config,
        &BuildCx {
            state: &state,
            redis: None,
        },
    );
    let (id, _) = login(&login_filter, r#"{"sub":"u-42"}"#, false).await;
    let cookie = format!("meshgate_session={id}");
    let (result, _, cx) = run(&api_filter, &[("cookie", &cookie)]).await;
    assert_eq!(reason(&result), "pass");
    assert_eq!(cx.user.as_deref(), Some("u-42"));
}

#[tokio::test]
async fn full_memory_store_evicts_the_least_recently_used_session() {
    let state = State::new();
    let filter = build(&session_spec(json!({"cache_max_entries": 3})), &state);
    let mut ids = Vec::new();
    for user in ["u-1", "u-2", "u-3"] {
        ids.push(
            login(&filter, &format!(r#"{{"sub":"{user}"}}"#), false)
                .await
                .0,
        );
    }
    let cookie = |id: &str| format!("meshgate_session={id}");
    // u-1 is used again, so u-2 is now the least recently used
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie(&ids[0]))]).await.0),
        "pass"
    );
    // a full store of live sessions still lets a new login in
    let (fourth, _) = login(&filter, r#"{"sub":"u-4"}"#, false).await;
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie(&ids[1]))]).await.0),
        "session_expired",
        "the least recently used session made room"
    );
    for id in [&ids[0], &ids[2], &fourth] {
        assert_eq!(
            reason(&run(&filter, &[("cookie", &cookie(id))]).await.0),
            "pass"
        );
    }
    let store = state.get_or_insert(MEMORY_STORE_KEY, MemoryStore::default);
    assert_eq!(store.len(), 3);
}

#[tokio::test]
async fn sessions_per_subject_are_capped_by_revoking_the_least_recently_used() {
    let state = State::new();
    let filter = build(
        &session_spec(json!({"max_sessions_per_subject": 3})),
        &state,
    );
    let cookie = |id: &str| format!("meshgate_session={id}");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(login(&filter, r#"{"sub":"u-1"}"#, false).await.0);
    }
    // the first is used again: the second is the least recently used
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie(&ids[0]))]).await.0),
        "pass"
    );
    let other_user = login(&filter, r#"{"sub":"u-2"}"#, false).await.0;
    ids.push(login(&filter, r#"{"sub":"u-1"}"#, false).await.0);
    assert_eq!(
        reason(&run(&filter, &[("cookie", &cookie(&ids[1]))]).await.0),
        "session_revoked"
    );
    for id in [&ids[0], &ids[2], &ids[3], &other_user] {
        assert_eq!(
            reason(&run(&filter, &[("cookie", &cookie(id))]).await.0),
            "pass"
        );
    }
    // a logout frees a place: the next login revokes nothing
    let (_, _, mut cx) = run(&filter, &[("cookie", &cookie(&ids[0]))]).await;
    respond(&filter, &mut cx, &[(SESSION_CLEAR_HEADER, "1")])
        .await
        .0
        .expect("logout");
    ids.push(login(&filter, r#"{"sub":"u-1"}"#, false).await.0);
    for id in [&ids[2], &ids[3], &ids[4]] {
        assert_eq!(
            reason(&run(&filter, &[("cookie", &cookie(id))]).await.0),
            "pass"
        );
    }
}

#[test]
fn session_limits_are_validated() {
    let errs = session_spec(json!({"max_sessions_per_subject": 0}))
        .validate("filters.login", &ValidateCx::control_plane())
        .expect_err("zero");
    assert_eq!(errs.0[0].path, "filters.login.max_sessions_per_subject");
    let config = session_spec(json!({}))
        .validate("filters.login", &ValidateCx::control_plane())
        .expect("valid");
    let ModeConfig::Session(s) = &config.mode else {
        panic!("session mode")
    };
    assert_eq!(s.max_sessions_per_subject, 16);
}

#[test]
fn verified_cache_entries_belongs_to_jwt_mode() {
    let Err(err) = serde_json::from_value::<SessionSpec>(json!({
        "mode": "session", "verified_cache_entries": 10,
    })) else {
        panic!("refused");
    };
    assert!(err.to_string().contains("verified_cache_entries"), "{err}");
    assert!(
        err.to_string().contains("only valid with mode: jwt"),
        "{err}"
    );
}
