//! Building a request and running a filter over it, for unit tests of
//! filters here and in other crates (the `testing` feature).

use std::sync::Arc;

use bytes::Bytes;

use crate::body::Body;
use crate::context::RequestCtx;
use crate::error::Rejection;
use crate::filter::{Filter, RequestView};

/// A request as the chain hands it to a filter, with its context.
pub struct TestRequest {
    pub head: http::request::Parts,
    pub body: Body,
    pub cx: RequestCtx,
    /// The route's `max_body_bytes`.
    pub max_body: usize,
}

impl TestRequest {
    /// `GET uri` on route `route-a` from 10.0.0.1 over plain HTTP.
    pub fn get(uri: &str) -> Self {
        Self::new(http::Method::GET, uri)
    }

    pub fn new(method: http::Method, uri: &str) -> Self {
        let (head, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap_or_default()
            .into_parts();
        TestRequest {
            head,
            body: Body::Empty,
            cx: RequestCtx::new(Arc::from("route-a"), [10, 0, 0, 1].into(), false),
            max_body: 1024 * 1024,
        }
    }

    /// Adds a request header; a name or value that is not valid HTTP panics
    /// (it is the test's own input).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = http::HeaderName::try_from(name).expect("test header name");
        let value = http::HeaderValue::try_from(value).expect("test header value");
        self.head.headers.append(name, value);
        self
    }

    pub fn body(mut self, bytes: impl Into<Bytes>) -> Self {
        self.body = Body::full(bytes);
        self
    }

    /// The client id an earlier (signature) filter verified.
    pub fn client_id(mut self, id: &str) -> Self {
        self.cx.client_id = Some(id.into());
        self
    }

    /// The user an earlier (session) filter verified.
    pub fn user(mut self, user: &str) -> Self {
        self.cx.user = Some(user.into());
        self
    }

    /// Runs the request `later` than now: the context's `now` and `instant`
    /// are moved forward by that much (filters take the time from there).
    pub fn later(mut self, later: std::time::Duration) -> Self {
        self.cx.now += later;
        self.cx.instant += later;
        self
    }

    /// Runs `filter`'s request phase.
    pub async fn run<F: Filter>(&mut self, filter: &F) -> Result<(), Rejection> {
        let mut view = RequestView::new(&mut self.head, &mut self.body, self.max_body);
        filter.on_request(&mut view, &mut self.cx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ValidateCx;
    use crate::header::{HeaderFilter, HeaderSpec};

    #[tokio::test]
    async fn runs_a_filter_over_a_built_request() {
        let spec: HeaderSpec =
            serde_json::from_value(serde_json::json!({"require": ["x-app"]})).expect("spec");
        let config = spec
            .validate("filters.h", &ValidateCx::control_plane())
            .expect("valid");
        let filter = HeaderFilter::new(config);
        let without = TestRequest::get("/").run(&filter).await;
        assert!(matches!(without, Err(r) if r.reason == "header_required"));
        let mut with = TestRequest::get("/").header("x-app", "a").user("u-1");
        assert!(matches!(with.run(&filter).await, Ok(())));
        assert_eq!(with.cx.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn later_moves_both_clocks_of_the_context() {
        let now = TestRequest::get("/");
        let (wall, mono) = (now.cx.now, now.cx.instant);
        let later = TestRequest::get("/").later(std::time::Duration::from_secs(90));
        let wall_gap = later.cx.now.duration_since(wall).expect("later");
        let mono_gap = later.cx.instant.duration_since(mono);
        // both moved by 90 s (plus the microseconds between the two builds)
        for gap in [wall_gap, mono_gap] {
            assert!(gap >= std::time::Duration::from_secs(90), "{gap:?}");
            assert!(gap < std::time::Duration::from_secs(91), "{gap:?}");
        }
    }
}
