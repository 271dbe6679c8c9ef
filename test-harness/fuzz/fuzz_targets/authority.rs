//! The request authority parser of admission (Host header, absolute-form
//! target): it never panics, and what it accepts is canonical: lowercase, no
//! user info, the default port dropped, the host inside the text, and a
//! fixed point (parsing the canonical form gives it back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate::admission::canonical_authority;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let default_port = match selector % 3 {
        0 => 80,
        1 => 443,
        _ => 8080,
    };
    let Some(canonical) = canonical_authority(raw, default_port) else {
        return;
    };
    let text = canonical.as_str();
    let host = canonical.host();
    assert!(!host.is_empty(), "{raw:?} -> {text:?}");
    assert!(text.contains(host), "{raw:?} -> {text:?} / {host:?}");
    assert!(
        !text.bytes().any(|b| b.is_ascii_uppercase() || b == b'@' || !b.is_ascii()),
        "{raw:?} -> {text:?}"
    );
    let port = if text.starts_with('[') {
        text.rsplit_once("]:").map(|(_, p)| p)
    } else {
        text.split_once(':').map(|(_, p)| p)
    };
    if let Some(port) = port {
        assert!(!port.starts_with('0'), "{raw:?} -> {text:?}");
        assert_ne!(port.parse::<u16>().ok(), Some(default_port), "{raw:?} -> {text:?}");
    }
    let again = canonical_authority(text, default_port);
    assert_eq!(
        again.as_ref().map(|a| (a.as_str(), a.host())),
        Some((text, host)),
        "{raw:?} -> {text:?} is not a fixed point"
    );
});
