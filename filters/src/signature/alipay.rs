//! Alipay open-platform parameter signing (`scheme: alipay-rsa2`).
//!
//! The signed content is every parameter except `sign` (and `sign_type` in
//! the notification variant) with a non-empty value, sorted by name and
//! joined as `k=v&k=v`; the signature is SHA256withRSA (RSASSA-PKCS1-v1_5
//! with SHA-256) in standard base64.

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
}

impl Default for AlipaySpec {
    fn default() -> Self {
        AlipaySpec {
            app_ids: IndexMap::new(),
            variant: AlipayVariant::Request,
            timezone: default_timezone(),
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

/// The parameters of one request, decoded.
pub struct AlipayParams {
    pub params: Vec<(String, String)>,
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
    Rejection::new("signature_malformed", msg.into()).with_status(http::StatusCode::BAD_REQUEST)
}

impl AlipayParams {
    /// Query string plus, for form bodies, the body's parameters.
    pub fn collect(query: Option<&str>, form_body: Option<&[u8]>) -> Self {
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if let Some(body) = form_body {
            params.extend(form_urlencoded::parse(body).into_owned());
        }
        AlipayParams { params }
    }

    pub fn prepare(&self, config: &AlipayConfig) -> Result<AlipayRequest, Rejection> {
        let mut sorted: Vec<&(String, String)> = self.params.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        if sorted
            .windows(2)
            .any(|w| w.first().map(|a| &a.0) == w.get(1).map(|b| &b.0))
        {
            return Err(malformed("a parameter appears more than once"));
        }
        let get = |name: &str| {
            sorted
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let Some(sign) = get("sign").filter(|s| !s.is_empty()) else {
            return Err(Rejection::new(
                "signature_missing",
                "the sign parameter is required",
            ));
        };
        if let Some(t) = get("sign_type").filter(|t| !t.is_empty()) {
            if t != "RSA2" {
                return Err(Rejection::new(
                    "algorithm_not_allowed",
                    format!("sign_type {t} is not accepted; use RSA2"),
                ));
            }
        }
        let sign = base64::engine::general_purpose::STANDARD
            .decode(sign.trim())
            .map_err(|_| malformed("sign is not base64"))?;
        let Some(app_id) = get("app_id").filter(|a| !a.is_empty()) else {
            return Err(malformed("the app_id parameter is required"));
        };
        let time_param = match config.variant {
            AlipayVariant::Request => "timestamp",
            AlipayVariant::Notify => "notify_time",
        };
        let timestamp = match get(time_param) {
            Some(t) if !t.is_empty() => Some(
                parse_local_time(t, config.utc_offset_secs)
                    .ok_or_else(|| malformed(format!("{time_param} is not yyyy-MM-dd HH:mm:ss")))?,
            ),
            _ => None,
        };
        let content = sorted
            .iter()
            .filter(|(k, v)| {
                !v.is_empty()
                    && k != "sign"
                    && !(config.variant == AlipayVariant::Notify && k == "sign_type")
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        Ok(AlipayRequest {
            app_id: app_id.to_string(),
            sign,
            content,
            timestamp,
        })
    }
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
            "signature_expired",
            "timestamp is in the future",
        ));
    }
    if now.saturating_sub(ts) > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
        return Err(Rejection::new(
            "signature_expired",
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

    #[test]
    fn content_is_sorted_without_sign_and_empty_values() {
        let p = AlipayParams::collect(
            Some("method=alipay.trade.pay&app_id=2014072300007148&sign=AAAA&sign_type=RSA2&charset=utf-8&empty="),
            Some(b"biz_content=%7B%22a%22%3A1%7D&timestamp=2014-07-24+03%3A07%3A50"),
        );
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
        );
        assert_eq!(
            notify.prepare(&config).expect("prepared").content,
            "app_id=1&b=2&notify_time=2014-07-24 03:07:50"
        );
    }

    #[test]
    fn rejects_other_sign_types_and_duplicates() {
        let config = AlipaySpec::default().validate("x", &mut FieldErrors::default());
        let rsa1 = AlipayParams::collect(Some("app_id=1&sign=AAAA&sign_type=RSA"), None);
        assert!(matches!(rsa1.prepare(&config), Err(r) if r.reason == "algorithm_not_allowed"));
        let dup = AlipayParams::collect(Some("app_id=1&app_id=2&sign=AAAA"), None);
        assert!(matches!(dup.prepare(&config), Err(r) if r.reason == "signature_malformed"));
        let unsigned = AlipayParams::collect(Some("app_id=1"), None);
        assert!(matches!(unsigned.prepare(&config), Err(r) if r.reason == "signature_missing"));
    }
}
