//! The benchmark's full chain (`test-harness/bench/chains/full-chain.yaml`)
//! and a request it accepts, built the way `chains/headers.py` builds it:
//! `GET http://127.0.0.1:8080/bench`, hmac-sha256 over `@method`,
//! `@authority`, `@path` without a nonce, and an HS256 bearer token.
// Each bench uses part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use meshgate_filters::signature::base::parse_component;
use meshgate_filters::signature::Signer;
use meshgate_filters::{FilterSpec, RequestCtx, ValidateCx};

const FULL_CHAIN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../test-harness/bench/chains/full-chain.yaml"
);

#[derive(serde::Deserialize)]
struct ChainFile {
    filters: BTreeMap<String, FilterSpec>,
}

/// The filter specs of full-chain.yaml by instance name.
pub fn full_chain_specs() -> BTreeMap<String, FilterSpec> {
    let text = std::fs::read_to_string(FULL_CHAIN).expect("full-chain.yaml is readable");
    let file: ChainFile = serde_yaml::from_str(&text).expect("full-chain.yaml parses");
    file.filters
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .expect("clock after 1970")
}

/// An HS256 token for the `login` filter of full-chain.yaml.
pub fn bearer(specs: &BTreeMap<String, FilterSpec>) -> String {
    let Some(FilterSpec::Session(login)) = specs.get("login") else {
        panic!("full-chain.yaml has a session filter named login");
    };
    use meshgate_filters::session::{JwksSource, JwtSpec, ModeSpec};
    let ModeSpec::Jwt(JwtSpec {
        keys: JwksSource::Inline(jwks),
        ..
    }) = &login.mode
    else {
        panic!("the login filter has an inline JWKS");
    };
    let k = jwks["keys"][0]["k"].as_str().expect("oct key").to_string();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(k.trim_end_matches('='))
        .expect("base64url secret");
    let now = unix_now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("bench".into());
    let claims = serde_json::json!({
        "sub": "u-bench", "iss": "https://id.example.com", "aud": "wallet",
        "iat": now, "exp": now + 3600,
    });
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("token");
    format!("Bearer {token}")
}

/// The signed request head the load generator repeats.
pub fn signed_request(specs: &BTreeMap<String, FilterSpec>) -> http::request::Parts {
    let Some(FilterSpec::Signature(verify)) = specs.get("verify") else {
        panic!("full-chain.yaml has a signature filter named verify");
    };
    let key = verify.keys[0]
        .validate(
            "k",
            false,
            &ValidateCx::control_plane(),
            &mut Default::default(),
        )
        .expect("hmac key");
    let components = ["@method", "@authority", "@path"]
        .iter()
        .map(|c| parse_component(c).expect("component"))
        .collect();
    let mut signer = Signer::new(key, components);
    signer.nonce = false;
    let mut head = http::Request::get("/bench")
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "wrk")
        .body(())
        .expect("request")
        .into_parts()
        .0;
    signer
        .sign_request_at(&mut head, b"", "http", unix_now())
        .expect("sign");
    head
}

/// A fresh per-request context, as the sidecar makes one per request.
pub fn context(route: &std::sync::Arc<str>) -> RequestCtx {
    RequestCtx::new(route.clone(), [127, 0, 0, 1].into(), false)
}
