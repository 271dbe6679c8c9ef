//! Alipay RSA2 parameters: the first line is the query string, the rest the
//! form body. Collected, prepared (signed content, `sign`, timestamp) under
//! both variants, checked for freshness and verified with an RSA key. The
//! collected parameters must be `form_urlencoded`'s reading of both parts,
//! refused exactly when a part does not percent-decode to UTF-8.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use meshgate_filters::signature::alipay::{check_fresh, AlipayConfig, AlipayParams};
use meshgate_filters::signature::{Policy, VerifyKey};
use meshgate_filters::FilterConfig;
use meshgate_fuzz::{filter_config, split_line, NOW};

/// RFC 9421's `test-key-rsa` public key, standing in for an Alipay app key.
const RSA_PUBLIC: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsPBRrw
WEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsdJKFq
MGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75jfZg
kne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKIlE0P
uKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZSFlQ
PSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQAB
-----END RSA PUBLIC KEY-----";

struct Setup {
    configs: Vec<AlipayConfig>,
    policy: Policy,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let key = format!(
        "keys:\n  - id: \"2014072300007148\"\n    alg: rsa-v1_5-sha256\n    public_key_pem: |\n      {}\n",
        RSA_PUBLIC.replace('\n', "\n      ")
    );
    let mut configs = Vec::new();
    let mut policy = None;
    for alipay in [
        "alipay: { variant: request }",
        "alipay: { variant: notify, timezone: \"-05:30\", app_ids: { app: \"2014072300007148\" } }",
    ] {
        let yaml =
            format!("type: signature\nscheme: alipay-rsa2\nrequire_nonce: false\n{key}{alipay}\n");
        match filter_config(&yaml) {
            FilterConfig::Signature(c) => {
                configs.push(c.alipay.expect("alipay settings"));
                policy.get_or_insert(c.policy);
            }
            _ => unreachable!("a signature spec"),
        }
    }
    Setup {
        configs,
        policy: policy.expect("a policy"),
    }
});

fn key<'a>(policy: &'a Policy, config: &AlipayConfig, app_id: &str) -> Option<&'a VerifyKey> {
    let id = config
        .app_ids
        .get(app_id)
        .map(String::as_str)
        .unwrap_or(app_id);
    policy.keys.get(id)
}

/// `form_urlencoded`'s pairs of every part, or None when a part does not
/// percent-decode to UTF-8.
fn reference(parts: &[&[u8]]) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for raw in parts {
        percent_encoding::percent_decode(raw).decode_utf8().ok()?;
        pairs.extend(form_urlencoded::parse(raw).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }
    Some(pairs)
}

fuzz_target!(|data: &[u8]| {
    let (query, body) = split_line(data);
    let query = String::from_utf8_lossy(query);
    let setup = &*SETUP;
    for form in [Some(body), None] {
        let collected = AlipayParams::collect(Some(&query), form);
        let parts: Vec<&[u8]> = [Some(query.as_bytes()), form].into_iter().flatten().collect();
        let pairs = collected.as_ref().ok().map(|p| {
            p.params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        });
        assert_eq!(pairs, reference(&parts), "{data:?}");
        let Ok(params) = collected else {
            continue;
        };
        for config in &setup.configs {
            let Ok(prepared) = params.prepare(config) else {
                continue;
            };
            let _ = check_fresh(
                prepared.timestamp,
                NOW,
                Duration::from_secs(300),
                Duration::from_secs(30),
            );
            if let Some(vk) = key(&setup.policy, config, &prepared.app_id) {
                let _ = vk.key.verify(prepared.content.as_bytes(), &prepared.sign);
            }
        }
    }
});
