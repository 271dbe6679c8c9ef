//! JWT header and claims: the input as a compact token, and (first line the
//! header JSON, the rest the claims JSON) as a token signed with the test
//! key, so claims parsing and checking run past the signature. Also the
//! input as a fetched JWKS.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use meshgate_filters::session::fuzzing::{JwtVerifier, KeySet};
use meshgate_filters::session::{KeySource, ModeConfig};
use meshgate_filters::FilterConfig;
use meshgate_fuzz::{filter_config, split_line};

/// The HS256 secret of the seeds' tokens (32 bytes).
const SECRET: &[u8] = b"meshgate-fuzz-hs256-secret-32byt";
/// The unix time tokens are checked at: fixed, so runs are reproducible.
const NOW: u64 = 1_800_000_000;

struct Setup {
    verifiers: Vec<JwtVerifier>,
    keys: Arc<KeySet>,
    algorithms: Vec<jsonwebtoken::Algorithm>,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let k = URL_SAFE_NO_PAD.encode(SECRET);
    let yaml = format!(
        r#"type: session
mode: jwt
jwks: {{ keys: [ {{ kty: oct, kid: fuzz, alg: HS256, k: "{k}" }}, {{ kty: oct, k: "{k}" }} ] }}
algorithms: [HS256, ES256, RS256]
issuer: https://id.example.com
audiences: [wallet]
required_claims: [sub, exp, tenant]
claims_to_headers: {{ tenant: x-meshgate-tenant }}
"#
    );
    let FilterConfig::Session(config) = filter_config(&yaml) else {
        unreachable!("a session spec");
    };
    let ModeConfig::Jwt(jwt) = &config.mode else {
        unreachable!("mode: jwt");
    };
    let KeySource::Static(keys) = &jwt.keys else {
        unreachable!("an inline JWKS");
    };
    let mut lax = jwt.clone();
    lax.issuer = None;
    lax.audiences.clear();
    lax.required_claims.clear();
    Setup {
        verifiers: vec![JwtVerifier::new(jwt, true), JwtVerifier::new(&lax, false)],
        keys: keys.clone(),
        algorithms: jwt.algorithms.clone(),
    }
});

fuzz_target!(|data: &[u8]| {
    let setup = &*SETUP;
    let text = String::from_utf8_lossy(data);
    for verifier in &setup.verifiers {
        let _ = verifier.verify(text.trim(), &setup.keys, NOW);
    }
    let (header, claims) = split_line(data);
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    if let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(SECRET) {
        mac.update(signing_input.as_bytes());
        let token = format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        for verifier in &setup.verifiers {
            let _ = verifier.verify(&token, &setup.keys, NOW);
        }
    }
    if let Ok(jwks) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = KeySet::parse_lenient(&jwks, &setup.algorithms);
    }
});
