//! Alipay open-platform parameter signing (`scheme: alipay-rsa2`).
//!
//! The signed content is every parameter except `sign` (and `sign_type` in
//! the notification variant) with a non-empty value, sorted by name and
//! joined as `k=v&k=v`; the signature is SHA256withRSA (RSASSA-PKCS1-v1_5
//! with SHA-256) in standard base64.
//!
//! That content stays byte-compatible with Alipay's, so what it cannot say is
//! enforced around it: it names neither the HTTP method nor the path (the
//! route must match one exact path and listed methods, and one alipay filter
//! serves one route: `meshgate-xds` validation), it does not cover a
//! non-form body (refused unless `allow_non_form_body`), and `k=v&k=v` is
//! ambiguous when names or values carry `&` or `=` or values are empty
//! ([`AlipayParams::prepare`] refuses every parameter set that another set
//! could share a signed content with).

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::FieldErrors;
use crate::error::Rejection;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlipayVariant {
    /// Open-API requests: only `sign` is left out of the signed content.
    #[default]
    Request,
    /// Asynchronous notifications: `sign` and `sign_type` are left out.
    Notify,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlipaySpec {
    /// `app_id` parameter -> key id; an app_id not listed is looked up as a
    /// key id itself.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub app_ids: IndexMap<String, String>,
    #[serde(default)]
    pub variant: AlipayVariant,
    /// Offset of the `timestamp` parameter's local time, `+08:00` by default.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Let bodies that are not `application/x-www-form-urlencoded` through.
    /// Such a body is not part of the signed content, so it reaches the app
    /// unsigned; off by default, when a non-empty one is refused (415).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_form_body: bool,
}

impl Default for AlipaySpec {
    fn default() -> Self {
        AlipaySpec {
            app_ids: IndexMap::new(),
            variant: AlipayVariant::Request,
            timezone: default_timezone(),
            allow_non_form_body: false,
        }
    }
}

fn default_timezone() -> String {
    "+08:00".into()
}

/// Validated Alipay settings.
#[derive(Debug, Clone)]
pub struct AlipayConfig {
    pub app_ids: IndexMap<String, String>,
    pub variant: AlipayVariant,
    /// Seconds east of UTC.
    pub utc_offset_secs: i64,
    pub allow_non_form_body: bool,
}

impl AlipaySpec {
    pub fn validate(&self, path: &str, errors: &mut FieldErrors) -> AlipayConfig {
        let utc_offset_secs = parse_offset(&self.timezone).unwrap_or_else(|| {
            errors.push(
                format!("{path}.timezone"),
                "expected an offset like +08:00 or -05:30",
            );
            0
        });
        AlipayConfig {
            app_ids: self.app_ids.clone(),
            variant: self.variant,
            utc_offset_secs,
            allow_non_form_body: self.allow_non_form_body,
        }
    }
}

fn parse_offset(tz: &str) -> Option<i64> {
    let tz = tz.trim();
    if tz.eq_ignore_ascii_case("z") || tz.eq_ignore_ascii_case("utc") {
        return Some(0);
    }
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, tz.get(1..)?),
        b'-' => (-1, tz.get(1..)?),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60))
}

/// One decoded `name=value` pair.
pub type Param<'a> = (Cow<'a, str>, Cow<'a, str>);

/// The parameters of one request, decoded; borrowed from the request
/// where decoding changed nothing.
pub struct AlipayParams<'a> {
    pub params: Vec<Param<'a>>,
}

/// What verification needs from the parameters.
pub struct AlipayRequest {
    pub app_id: String,
    pub sign: Vec<u8>,
    /// The signed content.
    pub content: String,
    /// Unix time of `timestamp` (or `notify_time`), when present.
    pub timestamp: Option<i64>,
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(&super::SIGNATURE_MALFORMED, msg.into())
        .with_status(http::StatusCode::BAD_REQUEST)
}

fn ambiguous(msg: impl Into<String>) -> Rejection {
    Rejection::new(&super::PARAMETERS_AMBIGUOUS, msg.into())
}

/// Characters of a parameter name. Alipay's names are snake_case; a name
/// with `=` or `&` would make the signed content parse another way.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The `name=value` pairs of `raw` as `application/x-www-form-urlencoded`
/// reads them (`form_urlencoded::parse`: split at `&`, empty pieces
/// skipped, then at the first `=`; `+` is a space, then `%XX` a byte), each
/// name and value required to be UTF-8: a lossy decoding would let different
/// bytes (what the app reads) share one signed content. `urlencoding`
/// copies the runs between escapes whole, where `form_urlencoded` decodes
/// byte by byte: most of the filter's own work for a 2048-bit `sign`. The
/// unit tests hold the two decodings equal.
fn decode_form<'a>(raw: &'a [u8], into: &mut Vec<Param<'a>>) -> Result<(), Rejection> {
    for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        into.push((decode_component(name)?, decode_component(value)?));
    }
    Ok(())
}

fn not_utf8<E>(_: E) -> Rejection {
    malformed("parameters are not UTF-8")
}

fn decode_component(raw: &[u8]) -> Result<Cow<'_, str>, Rejection> {
    if !raw.contains(&b'+') {
        return match urlencoding::decode_binary(raw) {
            Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(not_utf8),
            Cow::Owned(v) => String::from_utf8(v).map(Cow::Owned).map_err(not_utf8),
        };
    }
    let spaced: Vec<u8> = raw
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    let decoded = match urlencoding::decode_binary(&spaced) {
        Cow::Borrowed(_) => None,
        Cow::Owned(v) => Some(v),
    };
    String::from_utf8(decoded.unwrap_or(spaced))
        .map(Cow::Owned)
        .map_err(not_utf8)
}

/// Whether `segment` (text after an `&` inside a value) reads as the start
/// of another `name=value` pair of the signed content.
fn starts_a_pair(segment: &str) -> bool {
    match segment.split_once('=') {
        Some((name, _)) => !name.is_empty() && name.chars().all(is_name_char),
        None => false,
    }
}

impl<'a> AlipayParams<'a> {
    /// Query string plus, for form bodies, the body's parameters. Both must
    /// decode to UTF-8: a lossy decoding would let different bytes (what the
    /// app reads) share one signed content.
    pub fn collect(query: Option<&'a str>, form_body: Option<&'a [u8]>) -> Result<Self, Rejection> {
        let mut params = Vec::new();
        let sources = [query.map(str::as_bytes), form_body];
        for raw in sources.into_iter().flatten() {
            decode_form(raw, &mut params)?;
        }
        Ok(AlipayParams { params })
    }

    /// Checks the parameters and builds the signed content.
    ///
    /// Accepted parameter sets are exactly those the signed content parses
    /// back into (split at `&` that start a `name=` pair, then at the first
    /// `=`), so no two accepted requests share a signed content and a
    /// signature cannot be moved to a different set of parameters: names are
    /// unique and of `[A-Za-z0-9_.-]`, no value is empty (empty values are
    /// left out of the content, so they would reach the app unsigned), and an
    /// `&` inside a value is not followed by `name=`.
    pub fn prepare(&self, config: &AlipayConfig) -> Result<AlipayRequest, Rejection> {
        let mut sorted: Vec<&(Cow<'a, str>, Cow<'a, str>)> = self.params.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        if sorted
            .windows(2)
            .any(|w| w.first().map(|a| &a.0) == w.get(1).map(|b| &b.0))
        {
            return Err(malformed("a parameter appears more than once"));
        }
        for (k, v) in &sorted {
            if k.is_empty() || !k.chars().all(is_name_char) {
                return Err(ambiguous(format!(
                    "parameter name {k:?}: names are letters, digits, '_', '.' and '-'"
                )));
            }
            if v.is_empty() {
                return Err(ambiguous(format!(
                    "parameter {k} is empty; empty parameters are not signed"
                )));
            }
            if v.as_bytes().contains(&b'&') && v.split('&').skip(1).any(starts_a_pair) {
                return Err(ambiguous(format!(
                    "parameter {k} holds '&name=', which the signed content would read as another parameter"
                )));
            }
        }
        let get = |name: &str| {
            sorted
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_ref())
        };
        let Some(sign) = get("sign") else {
            return Err(Rejection::new(
                &super::SIGNATURE_MISSING,
                "the sign parameter is required",
            ));
        };
        if let Some(t) = get("sign_type") {
            if t != "RSA2" {
                return Err(Rejection::new(
                    &super::ALGORITHM_NOT_ALLOWED,
                    format!("sign_type {t} is not accepted; use RSA2"),
                ));
            }
        }
        let sign = base64::engine::general_purpose::STANDARD
            .decode(sign.trim())
            .map_err(|_| malformed("sign is not base64"))?;
        let Some(app_id) = get("app_id") else {
            return Err(malformed("the app_id parameter is required"));
        };
        let time_param = match config.variant {
            AlipayVariant::Request => "timestamp",
            AlipayVariant::Notify => "notify_time",
        };
        let timestamp = match get(time_param) {
            Some(t) => Some(
                parse_local_time(t, config.utc_offset_secs)
                    .ok_or_else(|| malformed(format!("{time_param} is not yyyy-MM-dd HH:mm:ss")))?,
            ),
            None => None,
        };
        let signed = sorted.iter().filter(|(k, _)| {
            k != "sign" && !(config.variant == AlipayVariant::Notify && k == "sign_type")
        });
        let mut content =
            String::with_capacity(signed.clone().map(|(k, v)| k.len() + v.len() + 2).sum());
        for (k, v) in signed {
            if !content.is_empty() {
                content.push('&');
            }
            content.push_str(k);
            content.push('=');
            content.push_str(v);
        }
        Ok(AlipayRequest {
            app_id: app_id.to_string(),
            sign,
            content,
            timestamp,
        })
    }
}

/// Whether a `Content-Type` value is `application/x-www-form-urlencoded`
/// (parameters such as `charset` allowed).
pub fn is_form_content_type(value: &str) -> bool {
    value.split(';').next().is_some_and(|media| {
        media
            .trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    })
}

/// `yyyy-MM-dd HH:mm:ss` in local time at `offset` seconds east of UTC.
pub fn parse_local_time(text: &str, offset: i64) -> Option<i64> {
    if text.len() != "yyyy-MM-dd HH:mm:ss".len() || text.as_bytes().get(10) != Some(&b' ') {
        return None;
    }
    let as_utc = humantime::parse_rfc3339_weak(text).ok()?;
    let secs = as_utc.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok().map(|s| s - offset)
}

/// Checks `timestamp` freshness: within `max_age` in the past and `skew`
/// in the future.
pub fn check_fresh(
    timestamp: Option<i64>,
    now: u64,
    max_age: Duration,
    skew: Duration,
) -> Result<(), Rejection> {
    let Some(ts) = timestamp else {
        return Err(malformed("the timestamp parameter is required"));
    };
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if ts > now.saturating_add(i64::try_from(skew.as_secs()).unwrap_or(i64::MAX)) {
        return Err(Rejection::new(
            &super::SIGNATURE_EXPIRED,
            "timestamp is in the future",
        ));
    }
    if now.saturating_sub(ts) > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
        return Err(Rejection::new(
            &super::SIGNATURE_EXPIRED,
            format!("timestamp is older than {}s", max_age.as_secs()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_offsets() {
        assert_eq!(parse_offset("+08:00"), Some(8 * 3600));
        assert_eq!(parse_offset("-05:30"), Some(-(5 * 3600 + 30 * 60)));
        assert_eq!(parse_offset("08:00"), None);
        // 2014-07-24 03:07:50 at +08:00 is 2014-07-23T19:07:50Z
        assert_eq!(
            parse_local_time("2014-07-24 03:07:50", 8 * 3600),
            Some(1_406_142_470)
        );
        assert_eq!(parse_local_time("2014-07-24T03:07:50", 0), None);
        assert_eq!(parse_local_time("2014-07-24 03:07", 0), None);
    }

    /// `form_urlencoded::parse` after a UTF-8 check of the whole percent-decoded
    /// input: what `collect` did before `decode_form`, and what it must equal.
    fn reference(raw: &[u8]) -> Option<Vec<(String, String)>> {
        percent_encoding::percent_decode(raw).decode_utf8().ok()?;
        Some(
            form_urlencoded::parse(raw)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn decoded(raw: &[u8]) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        decode_form(raw, &mut params).ok()?;
        Some(
            params
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    #[test]
    fn form_decoding_equals_form_urlencoded_with_a_utf8_check() {
        // Separators, escapes valid and not, plus, and bytes that are or
        // are not UTF-8 alone and together (C3 A9 is "é").
        let alphabet = b"%2Bc3A9g+&=\xC3\xA9\xFF";
        let alphabet: Vec<u8> = alphabet.to_vec();
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        let mut layer: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |b| {
                        let mut next = prefix.clone();
                        next.push(*b);
                        next
                    })
                })
                .collect();
            inputs.extend(layer.iter().cloned());
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9421);
        for _ in 0..20_000 {
            let len = rng.random_range(5..40);
            inputs.push(
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect(),
            );
        }
        for raw in [
            &b"timestamp=2014-07-24+03%3A07%3A50&sign=ab%2Bc%3D%3d"[..],
            "subject=%E4%B8%AD&body=\u{4e2d}".as_bytes(),
            b"a=%C3&b=%A9",
            b"%%41%4%4G%G4%",
            b"&&=&a==b&=c&",
        ] {
            inputs.push(raw.to_vec());
        }
        for raw in &inputs {
            assert_eq!(
                decoded(raw),
                reference(raw),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // Borrowed where nothing changed: the usual name and value.
        let mut params = Vec::new();
        decode_form(b"app_id=2014&sign=ab%2B", &mut params).expect("ASCII pairs decode");
        assert!(matches!(
            params[0],
            (Cow::Borrowed("app_id"), Cow::Borrowed("2014"))
        ));
        assert_eq!(params[1].1, "ab+");
    }

    #[test]
    fn parameters_that_do_not_decode_to_utf8_are_refused() {
        for raw in [&b"a=%FF"[..], b"a=%C3", b"a=%e9t%C3%A9"] {
            assert!(AlipayParams::collect(None, Some(raw)).is_err(), "{raw:?}");
            let query = std::str::from_utf8(raw).expect("ascii");
            assert!(AlipayParams::collect(Some(query), None).is_err(), "{raw:?}");
        }
        let p = AlipayParams::collect(Some("a=%C3%A9"), Some("b=\u{4e2d}".as_bytes()))
            .expect("valid UTF-8");
        assert_eq!(
            p.params,
            [
                ("a".into(), "\u{e9}".into()),
                ("b".into(), "\u{4e2d}".into())
            ]
        );
    }

    #[test]
    fn content_is_sorted_without_sign_and_empty_values() {
        let p = AlipayParams::collect(
            Some("method=alipay.trade.pay&app_id=2014072300007148&sign=AAAA&sign_type=RSA2&charset=utf-8"),
            Some(b"biz_content=%7B%22a%22%3A1%7D&timestamp=2014-07-24+03%3A07%3A50"),
        )
        .expect("utf-8");
        let mut config = AlipaySpec::default().validate("x", &mut FieldErrors::default());
        let r = p.prepare(&config).expect("prepared");
        assert_eq!(
            r.content,
            "app_id=2014072300007148&biz_content={\"a\":1}&charset=utf-8&method=alipay.trade.pay&sign_type=RSA2&timestamp=2014-07-24 03:07:50"
        );
        config.variant = AlipayVariant::Notify;
        let notify = AlipayParams::collect(
            Some("app_id=1&sign=AAAA&sign_type=RSA2&notify_time=2014-07-24+03%3A07%3A50&b=2"),
            None,
        )
        .expect("utf-8");
        assert_eq!(
            notify.prepare(&config).expect("prepared").content,
            "app_id=1&b=2&notify_time=2014-07-24 03:07:50"
        );
    }

    #[test]
    fn rejects_other_sign_types_and_duplicates() {
        let config = AlipaySpec::default().validate("x", &mut FieldErrors::default());
        let reason =
            |query: &str, body: Option<&[u8]>| match AlipayParams::collect(Some(query), body)
                .and_then(|p| p.prepare(&config))
            {
                Ok(_) => "ok",
                Err(r) => r.reason,
            };
        assert_eq!(
            reason("app_id=1&sign=AAAA&sign_type=RSA", None),
            "algorithm_not_allowed"
        );
        assert_eq!(
            reason("app_id=1&app_id=2&sign=AAAA", None),
            "signature_malformed"
        );
        // in the query and the body: the app might read either
        assert_eq!(
            reason("app_id=1&sign=AAAA", Some(&b"app_id=2"[..])),
            "signature_malformed"
        );
        assert_eq!(reason("app_id=1", None), "signature_missing");
    }

    /// The class: two parameter sets with one signed content. Every such
    /// pair has a member that is refused.
    #[test]
    fn parameter_sets_sharing_a_signed_content_are_refused() {
        let config = AlipaySpec::default().validate("x", &mut FieldErrors::default());
        let prepared =
            |query: &str| AlipayParams::collect(Some(query), None).and_then(|p| p.prepare(&config));
        let content = |query: &str| prepared(query).map(|r| r.content).ok();
        let reason = |query: &str| prepared(query).err().map(|r| r.reason);
        // `a=1&b=2` as one value or as two parameters
        assert_eq!(
            content("app_id=1&sign=AAAA&a=1&b=2").as_deref(),
            Some("a=1&app_id=1&b=2")
        );
        assert_eq!(
            reason("app_id=1&sign=AAAA&a=1%26app_id%3D1%26b%3D2"),
            Some("parameters_ambiguous")
        );
        // a name carrying `=`: `a=b` + `c` reads as `a` + `b=c`
        assert_eq!(
            reason("app_id=1&sign=AAAA&a%3Db=c"),
            Some("parameters_ambiguous")
        );
        assert_eq!(
            reason("app_id=1&sign=AAAA&a%26x=c"),
            Some("parameters_ambiguous")
        );
        // an empty parameter is left out of the content: it would be unsigned
        assert_eq!(
            reason("app_id=1&sign=AAAA&refund="),
            Some("parameters_ambiguous")
        );
        assert_eq!(
            reason("app_id=1&sign=AAAA&refund"),
            Some("parameters_ambiguous")
        );
        assert_eq!(
            reason("app_id=1&sign=AAAA&=x"),
            Some("parameters_ambiguous")
        );
        // `&` and `=` that cannot start a pair are fine (JSON, prose)
        let json = "biz_content=%7B%22subject%22%3A%22Tom+%26+Jerry%22%2C%22q%22%3A%22a%3Db%22%7D";
        assert_eq!(
            content(&format!("app_id=1&sign=AAAA&{json}")).as_deref(),
            Some(r#"app_id=1&biz_content={"subject":"Tom & Jerry","q":"a=b"}"#)
        );
        assert_eq!(
            reason("app_id=1&sign=AAAA&biz_content=%7B%22s%22%3A%22x%26y%3D1%22%7D"),
            Some("parameters_ambiguous")
        );
        // bytes that are not UTF-8 would decode lossily
        assert_eq!(
            reason("app_id=1&sign=AAAA&a=%FF"),
            Some("signature_malformed")
        );
        assert_eq!(
            content("app_id=1&sign=AAAA&a=%E4%B8%AD").as_deref(),
            Some("a=中&app_id=1")
        );
    }

    #[test]
    fn the_signed_content_parses_back_into_its_parameters() {
        // greedy parse: split at `&` that start `name=`, then at the first `=`
        fn parse(content: &str) -> Vec<(String, String)> {
            let mut out: Vec<(String, String)> = Vec::new();
            for piece in content.split('&') {
                match (starts_a_pair(piece), out.last_mut()) {
                    (true, _) | (false, None) => {
                        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
                        out.push((k.to_string(), v.to_string()));
                    }
                    (false, Some(last)) => {
                        last.1.push('&');
                        last.1.push_str(piece);
                    }
                }
            }
            out
        }
        let config = AlipaySpec::default().validate("x", &mut FieldErrors::default());
        let values = [
            "1",
            "a&b",
            "x=y",
            "&",
            "a& b=c",
            "{\"k\":\"v&w\"}",
            "=",
            "&&",
            "a&=b",
        ];
        for v in values {
            for w in values {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("app_id", "1").append_pair("sign", "AA");
                q.append_pair("m", v).append_pair("n", w);
                let query = q.finish();
                let Ok(r) =
                    AlipayParams::collect(Some(&query), None).and_then(|p| p.prepare(&config))
                else {
                    continue;
                };
                let expected = vec![
                    ("app_id".to_string(), "1".to_string()),
                    ("m".to_string(), v.to_string()),
                    ("n".to_string(), w.to_string()),
                ];
                assert_eq!(parse(&r.content), expected, "{v:?} {w:?}");
            }
        }
    }

    #[test]
    fn form_content_types() {
        assert!(is_form_content_type("application/x-www-form-urlencoded"));
        assert!(is_form_content_type(
            "Application/X-WWW-Form-Urlencoded ; charset=utf-8"
        ));
        assert!(!is_form_content_type("application/x-www-form-urlencodedx"));
        assert!(!is_form_content_type("application/json"));
        assert!(!is_form_content_type("multipart/form-data; boundary=x"));
    }
}
