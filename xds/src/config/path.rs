//! The one normal form of a request path, shared by the sidecar's admission
//! step (every request) and config validation (route paths must already be
//! in it, or they could never match).
//!
//! Always: percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//! decoded, other escapes get upper-case hex, characters a URI may not carry
//! raw are percent-encoded, and dot segments are resolved (RFC 3986 §5.2.4),
//! encoded ones included. Refused: invalid escapes, control characters
//! (raw or encoded) and targets that are not a path (`*`). The policy decides
//! slashes (`//`), escaped slashes (`%2F`, `%5C`, raw `\`) and `;`.

use std::borrow::Cow;
use std::fmt::Write as _;

use percent_encoding::{AsciiSet, CONTROLS};

use super::spec::{EscapedSlashes, PathNormalizationSpec, Semicolons};

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`*`, or no leading `/`).
    NotAPath,
    /// `%` not followed by two hex digits.
    InvalidEscape,
    /// A control character, raw or percent-encoded (`%00`, `%0A`, ...).
    ControlCharacter,
    /// `%2F`, `%5C` or `\` while the policy refuses them.
    EscapedSlash,
    /// `;` while the policy refuses it.
    Semicolon,
    /// `.` or `..` followed by `;` parameters (`/..;x/`).
    DotSegmentParameter,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAPath => "the request target is not a path",
            PathError::InvalidEscape => "the path has an invalid percent-encoding",
            PathError::ControlCharacter => "the path has a control character",
            PathError::EscapedSlash => "the path has an encoded slash or a backslash",
            PathError::Semicolon => "the path has a ';' parameter",
            PathError::DotSegmentParameter => "the path has a dot segment with parameters",
        })
    }
}

/// Characters that never appear raw in a normalised path: everything that is
/// not `pchar` or `/` (RFC 3986 §3.3). `%`, `\` and `;` are handled before
/// this set is consulted.
const NOT_PCHAR: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes that pass through unchanged and need no further look.
fn is_plain(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'/' | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Whether any segment is `.` or `..`, or the path has `//`.
fn has_dot_segment_or_empty(path: &str) -> bool {
    path.contains("//")
        || path[1..]
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// The normalised form of `path` (the path of the request target, without
/// its query). Borrowed when it is already normal, the usual case.
pub fn normalize_path<'a>(
    path: &'a str,
    policy: &PathNormalizationSpec,
) -> Result<Cow<'a, str>, PathError> {
    if path.is_empty() {
        // An absolute-form target without a path (`http://a.example`).
        return Ok(Cow::Borrowed("/"));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAPath);
    }
    if path.bytes().all(is_plain) && !has_dot_segment_or_empty(path) {
        return Ok(Cow::Borrowed(path));
    }

    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                // `percent_decode` passes invalid escapes through; refuse them first.
                let escape = bytes
                    .get(i..i + 3)
                    .filter(|e| e[1].is_ascii_hexdigit() && e[2].is_ascii_hexdigit());
                let Some(value) = escape.and_then(|e| percent_encoding::percent_decode(e).next())
                else {
                    return Err(PathError::InvalidEscape);
                };
                i += 3;
                if is_unreserved(value) {
                    decoded.push(value as char);
                } else if value < 0x20 || value == 0x7f {
                    return Err(PathError::ControlCharacter);
                } else if value == b'/' || value == b'\\' {
                    escaped_slash(&mut decoded, value, policy.escaped_slashes)?;
                } else {
                    let _ = write!(decoded, "%{value:02X}");
                }
                continue;
            }
            b'\\' => escaped_slash(&mut decoded, b, policy.escaped_slashes)?,
            b';' => match policy.semicolons {
                Semicolons::Reject => return Err(PathError::Semicolon),
                Semicolons::Keep => decoded.push(';'),
            },
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            _ if is_plain(b) => decoded.push(b as char),
            // Raw bytes a URI may not carry (space, `"`, `{`, UTF-8, ...).
            _ => decoded.extend(percent_encoding::percent_encode(&[b], NOT_PCHAR)),
        }
        i += 1;
    }

    let merged = if policy.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    if policy.semicolons == Semicolons::Keep {
        let dot_with_params = merged[1..].split('/').any(|segment| {
            segment
                .split_once(';')
                .is_some_and(|(name, _)| name == "." || name == "..")
        });
        if dot_with_params {
            return Err(PathError::DotSegmentParameter);
        }
    }
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

fn escaped_slash(out: &mut String, byte: u8, policy: EscapedSlashes) -> Result<(), PathError> {
    match policy {
        EscapedSlashes::Reject => Err(PathError::EscapedSlash),
        EscapedSlashes::Keep => {
            out.push_str(if byte == b'/' { "%2F" } else { "%5C" });
            Ok(())
        }
        EscapedSlashes::Decode => {
            out.push('/');
            Ok(())
        }
    }
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// RFC 3986 §5.2.4 for an absolute path (starts with `/`).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let ends_in_dot = matches!(segments.last(), Some(&".") | Some(&".."));
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for segment in segments {
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    result.push('/');
    result.push_str(&out.join("/"));
    if ends_in_dot && !out.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        merge_slashes: bool,
        escaped_slashes: EscapedSlashes,
        semicolons: Semicolons,
    ) -> PathNormalizationSpec {
        PathNormalizationSpec {
            merge_slashes,
            escaped_slashes,
            semicolons,
        }
    }

    #[test]
    fn default_policy_table() {
        let p = PathNormalizationSpec::default();
        let ok: &[(&str, &str)] = &[
            ("/", "/"),
            ("", "/"),
            ("/private/x", "/private/x"),
            ("/%70rivate/x", "/private/x"),
            ("/%70%72ivate/x", "/private/x"),
            ("//private/x", "/private/x"),
            ("///private//x", "/private/x"),
            ("/pub/../private/x", "/private/x"),
            ("/pub/%2e%2e/private/x", "/private/x"),
            ("/pub/%2E%2E/private/x", "/private/x"),
            ("/pub/.%2e/private/x", "/private/x"),
            ("/pub/./private/x", "/pub/private/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../private", "/private"),
            ("/a//../b", "/b"),
            ("/a/", "/a/"),
            ("/%7Euser", "/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/a%25b", "/a%25b"),
            ("/a%3Fb", "/a%3Fb"),
            ("/a\"{b}", "/a%22%7Bb%7D"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
        ];
        for (input, want) in ok {
            assert_eq!(
                normalize_path(input, &p).as_deref(),
                Ok(*want),
                "input {input:?}"
            );
            // Normal form is a fixed point.
            assert_eq!(
                normalize_path(want, &p).as_deref(),
                Ok(*want),
                "again {want:?}"
            );
        }
        let refused: &[(&str, PathError)] = &[
            ("*", PathError::NotAPath),
            ("private", PathError::NotAPath),
            ("/a%2Fb", PathError::EscapedSlash),
            ("/a%2fb", PathError::EscapedSlash),
            ("/a%5Cb", PathError::EscapedSlash),
            ("/a\\b", PathError::EscapedSlash),
            ("/private;x/y", PathError::Semicolon),
            ("/a%zz", PathError::InvalidEscape),
            ("/a%4", PathError::InvalidEscape),
            ("/a%", PathError::InvalidEscape),
            ("/a%00b", PathError::ControlCharacter),
            ("/a%0Ab", PathError::ControlCharacter),
            ("/a%7F", PathError::ControlCharacter),
            ("/a\u{1}b", PathError::ControlCharacter),
        ];
        for (input, want) in refused {
            assert_eq!(normalize_path(input, &p), Err(*want), "input {input:?}");
        }
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        let p = PathNormalizationSpec::default();
        assert!(matches!(
            normalize_path("/api/v1/items-2_x~", &p),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize_path("/api/../x", &p), Ok(Cow::Owned(_))));
    }

    #[test]
    fn escaped_slash_policies() {
        let keep = policy(true, EscapedSlashes::Keep, Semicolons::Reject);
        assert_eq!(
            normalize_path("/a%2fb/..%5Cc\\d", &keep).as_deref(),
            Ok("/a%2Fb/..%5Cc%5Cd")
        );
        // An encoded slash is not a separator: `..%2F` is no dot segment.
        assert_eq!(
            normalize_path("/a/..%2Fprivate", &keep).as_deref(),
            Ok("/a/..%2Fprivate")
        );
        let decode = policy(true, EscapedSlashes::Decode, Semicolons::Reject);
        assert_eq!(
            normalize_path("/pub/..%2Fprivate%5Cx\\y", &decode).as_deref(),
            Ok("/private/x/y")
        );
        assert_eq!(
            normalize_path("/%2F%2Fprivate", &decode).as_deref(),
            Ok("/private")
        );
    }

    #[test]
    fn semicolon_policies() {
        let keep = policy(true, EscapedSlashes::Reject, Semicolons::Keep);
        assert_eq!(
            normalize_path("/a;jsessionid=1/b", &keep).as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(
            normalize_path("/pub/..;x/private", &keep),
            Err(PathError::DotSegmentParameter)
        );
        assert_eq!(
            normalize_path("/pub/.;/private", &keep),
            Err(PathError::DotSegmentParameter)
        );
        // `%3B` is data, not a parameter, and stays encoded.
        let p = PathNormalizationSpec::default();
        assert_eq!(normalize_path("/a%3bb", &p).as_deref(), Ok("/a%3Bb"));
    }

    #[test]
    fn without_merging_slashes_follows_rfc_3986() {
        let p = policy(false, EscapedSlashes::Reject, Semicolons::Reject);
        assert_eq!(normalize_path("//a//b", &p).as_deref(), Ok("//a//b"));
        assert_eq!(normalize_path("/a//../b", &p).as_deref(), Ok("/a/b"));
        assert_eq!(normalize_path("/a/./b/../c", &p).as_deref(), Ok("/a/c"));
    }
}
