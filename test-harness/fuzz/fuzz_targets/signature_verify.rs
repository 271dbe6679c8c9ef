//! RFC 9421 inbound verification: `Signature-Input`/`Signature` parsing, key
//! and policy checks and the signature base, on a request head.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use meshgate_filters::signature::Policy;
use meshgate_filters::FilterConfig;
use meshgate_fuzz::{filter_config, Head, NOW, RFC9421_ED25519_PUBLIC, RFC9421_SHARED_SECRET};

/// The default policy and a lax one (nothing required, so inputs get as far
/// as the signature base), both with the RFC 9421 test keys.
static POLICIES: LazyLock<Vec<Policy>> = LazyLock::new(|| {
    let keys = format!(
        r#"keys:
  - {{ id: test-shared-secret, alg: hmac-sha256, secret_base64: "{RFC9421_SHARED_SECRET}" }}
  - id: test-key-ed25519
    alg: ed25519
    public_key_pem: |
      {}
"#,
        RFC9421_ED25519_PUBLIC.replace('\n', "\n      ")
    );
    let lax = "required_components: []\nrequire_nonce: false\nrequire_digest_with_body: false\nmax_age: 1000000000s\n";
    [
        format!("type: signature\n{keys}"),
        format!("type: signature\n{keys}{lax}"),
    ]
    .iter()
    .map(|yaml| match filter_config(yaml) {
        FilterConfig::Signature(c) => {
            assert_eq!(c.policy.keys.len(), 2, "fuzz keys loaded");
            c.policy
        }
        _ => unreachable!("a signature spec"),
    })
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some(head) = Head::parse(data) else {
        return;
    };
    for policy in POLICIES.iter() {
        // With and without a body: the digest rules differ.
        for body_present in [false, true] {
            let _ = policy.verify(&head.parts(), body_present, NOW);
        }
    }
});
