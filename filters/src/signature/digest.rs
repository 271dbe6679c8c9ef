//! `Content-Digest` (RFC 9530) with sha-256 and sha-512.

use sfv::{key_ref, BareItem, DictSerializer, Dictionary, Item, ListEntry, RefBareItem};
use sha2::{Digest, Sha256, Sha512};

use super::base::parser;

/// The `Content-Digest` value for `body` with sha-256
/// (`sha-256=:base64:`).
pub fn content_digest(body: &[u8]) -> String {
    let mut ser = DictSerializer::new();
    let _ = ser.bare_item(
        key_ref("sha-256"),
        RefBareItem::ByteSequence(&Sha256::digest(body)),
    );
    // A dictionary of one member always serializes.
    ser.finish().unwrap_or_default()
}

/// Why a `Content-Digest` did not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("Content-Digest header is missing")]
    Missing,
    #[error("Content-Digest is not a valid structured dictionary")]
    Malformed,
    #[error("Content-Digest has no sha-256 or sha-512 member")]
    NoSupportedAlgorithm,
    #[error("Content-Digest {0} does not match the body")]
    Mismatch(&'static str),
}

/// Checks the combined `Content-Digest` field value(s) against `body`. Every
/// supported member present must match; unknown algorithms are ignored, but
/// at least one supported algorithm must be present.
pub fn verify_content_digest(values: &[&[u8]], body: &[u8]) -> Result<(), DigestError> {
    if values.is_empty() {
        return Err(DigestError::Missing);
    }
    let combined = values.join(&b", "[..]);
    let dict = parser(&combined)
        .parse::<Dictionary>()
        .map_err(|_| DigestError::Malformed)?;
    let mut checked = 0;
    for (alg, entry) in &dict {
        let expected: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(given),
            ..
        }) = entry
        else {
            return Err(DigestError::Malformed);
        };
        // Digests are public values; a plain comparison leaks nothing.
        if *given != expected {
            return Err(DigestError::Mismatch(if alg.as_str() == "sha-256" {
                "sha-256"
            } else {
                "sha-512"
            }));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(DigestError::NoSupportedAlgorithm);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"hello": "world"}"#;

    #[test]
    fn rfc9530_examples() {
        assert_eq!(
            content_digest(BODY),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        verify_content_digest(
            &[b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"],
            BODY,
        )
        .expect("sha-256 matches");
        verify_content_digest(
            &[b"sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"],
            BODY,
        )
        .expect("sha-512 matches");
    }

    #[test]
    fn mismatch_missing_and_unknown() {
        assert_eq!(
            verify_content_digest(
                &[b"sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"],
                b"{\"hello\": \"there\"}"
            ),
            Err(DigestError::Mismatch("sha-256"))
        );
        assert_eq!(verify_content_digest(&[], BODY), Err(DigestError::Missing));
        assert_eq!(
            verify_content_digest(&[b"md5=:AAAA:"], BODY),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert_eq!(
            verify_content_digest(&[b"sha-256=abc"], BODY),
            Err(DigestError::Malformed)
        );
        // every supported member must match, not just one
        let mixed = format!(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:{}:",
            "A".repeat(88)
        );
        assert!(verify_content_digest(&[mixed.as_bytes()], BODY).is_err());
    }
}
