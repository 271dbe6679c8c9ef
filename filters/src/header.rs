//! `type: header`: a small header policy filter.
//!
//! ```yaml
//! filters:
//!   policy:
//!     type: header
//!     require: [x-app-version]          # missing -> 400 header_required
//!     deny: [x-debug-token]             # present -> 403 header_forbidden
//!     methods: [GET, POST]              # other methods -> 405 method_not_allowed
//!     add_request_headers: { x-env: prod }
//!     add_response_headers: { x-frame-options: DENY }
//!     remove_response_headers: [server]
//! ```

use http::{HeaderName, HeaderValue, Method};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{FieldErrors, ValidateCx};
use crate::context::RequestCtx;
use crate::error::{Reason, Rejection};
use crate::filter::{Filter, RequestView, ResponseView};

// The reasons this filter answers with (listed in `crate::error::REASONS`).
pub const HEADER_REQUIRED: Reason = Reason::new("header_required", 400, 40002);
pub const HEADER_FORBIDDEN: Reason = Reason::new("header_forbidden", 403, 40301);
pub const METHOD_NOT_ALLOWED: Reason = Reason::new("method_not_allowed", 405, 40501);

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub add_request_headers: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub add_response_headers: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_response_headers: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderConfig {
    pub require: Vec<HeaderName>,
    pub deny: Vec<HeaderName>,
    pub methods: Vec<Method>,
    pub add_request_headers: Vec<(HeaderName, HeaderValue)>,
    pub add_response_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_response_headers: Vec<HeaderName>,
}

fn names(list: &[String], path: &str, errors: &mut FieldErrors) -> Vec<HeaderName> {
    list.iter()
        .enumerate()
        .filter_map(|(i, n)| match HeaderName::try_from(n.as_str()) {
            Ok(h) => Some(h),
            Err(_) => {
                errors.push(format!("{path}[{i}]"), format!("invalid header name {n:?}"));
                None
            }
        })
        .collect()
}

fn pairs(
    map: &IndexMap<String, String>,
    path: &str,
    errors: &mut FieldErrors,
) -> Vec<(HeaderName, HeaderValue)> {
    map.iter()
        .filter_map(|(k, v)| {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| errors.push(format!("{path}.{k}"), "invalid header name"))
                .ok()?;
            if name.as_str().starts_with(crate::IDENTITY_HEADER_PREFIX) {
                errors.push(
                    format!("{path}.{k}"),
                    "x-meshgate-* headers are reserved for verified identity",
                );
                return None;
            }
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|_| errors.push(format!("{path}.{k}"), "invalid header value"))
                .ok()?;
            Some((name, value))
        })
        .collect()
}

impl HeaderSpec {
    pub fn validate(&self, path: &str, _cx: &ValidateCx) -> Result<HeaderConfig, FieldErrors> {
        let mut errors = FieldErrors::default();
        let config = HeaderConfig {
            require: names(&self.require, &format!("{path}.require"), &mut errors),
            deny: names(&self.deny, &format!("{path}.deny"), &mut errors),
            methods: self
                .methods
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| {
                            errors.push(
                                format!("{path}.methods[{i}]"),
                                format!("invalid method {m:?}"),
                            )
                        })
                        .ok()
                })
                .collect(),
            add_request_headers: pairs(
                &self.add_request_headers,
                &format!("{path}.add_request_headers"),
                &mut errors,
            ),
            add_response_headers: pairs(
                &self.add_response_headers,
                &format!("{path}.add_response_headers"),
                &mut errors,
            ),
            remove_response_headers: names(
                &self.remove_response_headers,
                &format!("{path}.remove_response_headers"),
                &mut errors,
            ),
        };
        errors.into_result(config)
    }
}

/// The header policy filter. Stateless.
pub struct HeaderFilter {
    config: HeaderConfig,
}

impl HeaderFilter {
    pub fn new(config: HeaderConfig) -> Self {
        HeaderFilter { config }
    }
}

impl Filter for HeaderFilter {
    async fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        let c = &self.config;
        if !c.methods.is_empty() && !c.methods.contains(&req.head.method) {
            return Err(Rejection::new(
                &METHOD_NOT_ALLOWED,
                format!("method {} is not allowed on this route", req.head.method),
            ));
        }
        if let Some(missing) = c
            .require
            .iter()
            .find(|h| !req.head.headers.contains_key(*h))
        {
            return Err(Rejection::new(
                &HEADER_REQUIRED,
                format!("header {missing} is required"),
            ));
        }
        if let Some(present) = c.deny.iter().find(|h| req.head.headers.contains_key(*h)) {
            return Err(Rejection::new(
                &HEADER_FORBIDDEN,
                format!("header {present} is not allowed"),
            ));
        }
        for (name, value) in &c.add_request_headers {
            cx.set_upstream_header(name.clone(), value.clone());
        }
        Ok(())
    }

    async fn on_response(
        &self,
        rsp: &mut ResponseView<'_>,
        _cx: &mut RequestCtx,
    ) -> Result<(), Rejection> {
        for name in &self.config.remove_response_headers {
            rsp.head.headers.remove(name);
        }
        for (name, value) in &self.config.add_response_headers {
            rsp.head.headers.insert(name.clone(), value.clone());
        }
        Ok(())
    }

    fn has_response_phase(&self) -> bool {
        !self.config.add_response_headers.is_empty()
            || !self.config.remove_response_headers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use std::sync::Arc;

    fn filter(yaml: &str) -> HeaderFilter {
        let spec: HeaderSpec = serde_json::from_str(yaml).expect("spec");
        HeaderFilter::new(
            spec.validate("filters.h", &ValidateCx::control_plane())
                .expect("valid"),
        )
    }

    async fn run(f: &HeaderFilter, req: http::Request<()>) -> (Result<(), Rejection>, RequestCtx) {
        let (mut head, ()) = req.into_parts();
        let mut body = Body::Empty;
        let mut cx = RequestCtx::new(Arc::from("route"), [127, 0, 0, 1].into(), false);
        let v = f
            .on_request(&mut RequestView::new(&mut head, &mut body, 1024), &mut cx)
            .await;
        (v, cx)
    }

    #[tokio::test]
    async fn enforces_methods_required_and_denied_headers() {
        let f = filter(
            r#"{"require":["x-app"],"deny":["x-debug"],"methods":["get"],"add_request_headers":{"x-env":"prod"}}"#,
        );
        let ok = http::Request::get("/")
            .header("x-app", "1")
            .body(())
            .expect("req");
        let (v, cx) = run(&f, ok).await;
        assert!(matches!(v, Ok(())));
        assert_eq!(cx.upstream_headers[0].1, "prod");

        let post = http::Request::post("/")
            .header("x-app", "1")
            .body(())
            .expect("req");
        assert!(
            matches!(run(&f, post).await.0, Err(r) if r.reason == "method_not_allowed" && r.status == 405)
        );
        let missing = http::Request::get("/").body(()).expect("req");
        assert!(matches!(run(&f, missing).await.0, Err(r) if r.reason == "header_required"));
        let denied = http::Request::get("/")
            .header("x-app", "1")
            .header("x-debug", "1")
            .body(())
            .expect("req");
        assert!(matches!(run(&f, denied).await.0, Err(r) if r.reason == "header_forbidden"));
    }

    #[test]
    fn rejects_bad_names_with_paths() {
        let spec: HeaderSpec = serde_json::from_str(
            r#"{"require":["bad name"],"add_request_headers":{"x-meshgate-user":"x"}}"#,
        )
        .expect("spec");
        let errs = spec
            .validate("filters.h", &ValidateCx::control_plane())
            .expect_err("invalid");
        let paths: Vec<_> = errs.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "filters.h.require[0]",
                "filters.h.add_request_headers.x-meshgate-user"
            ]
        );
    }
}
