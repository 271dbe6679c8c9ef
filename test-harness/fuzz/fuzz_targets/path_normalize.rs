//! The request-path normaliser of admission, under every policy: it never
//! panics, and what it accepts is canonical (a fixed point that starts with
//! `/` and has no dot segment, nor `//` when slashes are merged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_xds::config::{normalize_path, EscapedSlashes, PathNormalizationSpec, Semicolons};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    for merge_slashes in [true, false] {
        for escaped_slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Keep,
            EscapedSlashes::Decode,
        ] {
            for semicolons in [Semicolons::Reject, Semicolons::Keep] {
                let policy = PathNormalizationSpec {
                    merge_slashes,
                    escaped_slashes,
                    semicolons,
                };
                let Ok(normal) = normalize_path(path, &policy) else {
                    continue;
                };
                assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
                assert!(
                    !normal[1..].split('/').any(|s| s == "." || s == ".."),
                    "{path:?} -> {normal:?}"
                );
                if merge_slashes {
                    assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
                }
                let again = normalize_path(&normal, &policy);
                assert_eq!(
                    again.as_deref(),
                    Ok(normal.as_ref()),
                    "{path:?} -> {normal:?} is not a fixed point"
                );
            }
        }
    }
});
