//! The filter contract.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::body::{Body, BodyStalled, BufferError};
use crate::context::RequestCtx;
use crate::error::Rejection;

/// The request as a filter sees it: the head, and the body behind a bounded
/// buffer.
pub struct RequestView<'a> {
    pub head: &'a mut http::request::Parts,
    body: &'a mut Body,
    max_body: usize,
    body_timeout: Duration,
}

impl<'a> RequestView<'a> {
    pub fn new(head: &'a mut http::request::Parts, body: &'a mut Body, max_body: usize) -> Self {
        RequestView {
            head,
            body,
            max_body,
            body_timeout: Duration::MAX,
        }
    }

    /// Bounds the time [`RequestView::body`] may take to buffer the body (the
    /// route timeout); beyond it the answer is 408 `request_timeout`, so a
    /// client trickling its body cannot hold a filter forever.
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Buffers the request body (at most the route's `max_body_bytes`; beyond
    /// that the answer is 413 `body_too_large`; slower than the body timeout:
    /// 408 `request_timeout`). Without this call bodies stream to the app
    /// untouched.
    pub async fn body(&mut self) -> Result<Bytes, Rejection> {
        // `timeout` treats a deadline too far to represent as no limit.
        match tokio::time::timeout(self.body_timeout, self.body.buffer(self.max_body)).await {
            Ok(buffered) => buffered.map_err(body_rejection),
            Err(_) => Err(Rejection::new(
                &crate::error::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:?}",
                    self.body_timeout
                ),
            )),
        }
    }

    /// Whether the request carries a body, decided from the body stream
    /// (chunked and HTTP/2 bodies count without `Content-Length`); see
    /// [`Body::may_have_data`].
    pub fn has_body(&self) -> bool {
        self.body.may_have_data()
    }
}

/// The app's response as a filter sees it.
pub struct ResponseView<'a> {
    pub head: &'a mut http::response::Parts,
    body: &'a mut Body,
    max_body: usize,
}

impl<'a> ResponseView<'a> {
    pub fn new(head: &'a mut http::response::Parts, body: &'a mut Body, max_body: usize) -> Self {
        ResponseView {
            head,
            body,
            max_body,
        }
    }

    /// Buffers the response body, bounded like [`RequestView::body`].
    pub async fn body(&mut self) -> Result<Bytes, Rejection> {
        self.body
            .buffer(self.max_body)
            .await
            .map_err(body_rejection)
    }

    /// Replaces the response body.
    pub fn set_body(&mut self, body: Bytes) {
        *self.body = Body::full(body);
    }
}

fn body_rejection(err: BufferError) -> Rejection {
    match err {
        BufferError::TooLarge => Rejection::new(
            &crate::error::BODY_TOO_LARGE,
            "body exceeds the configured limit",
        ),
        BufferError::Read(e) if e.is::<BodyStalled>() => Rejection::new(
            &crate::error::REQUEST_TIMEOUT,
            format!("the request body stalled: {e}"),
        ),
        BufferError::Read(e) => Rejection::new(
            &crate::error::BAD_REQUEST,
            format!("reading the body failed: {e}"),
        ),
    }
}

/// One filter instance. Instances are built from validated config for each
/// config snapshot; long-lived state they need (counters, caches, store
/// connections) comes from [`crate::State`] so it survives reloads.
///
/// The sidecar dispatches statically through [`crate::AnyFilter`], so these
/// futures are never boxed.
pub trait Filter: Send + Sync {
    /// Runs before the app is called. `Ok` goes on with the next filter (or
    /// the app); `Err` answers the client now and the app is not called.
    fn on_request(
        &self,
        req: &mut RequestView<'_>,
        cx: &mut RequestCtx,
    ) -> impl Future<Output = Result<(), Rejection>> + Send;

    /// Runs on the app's response, in reverse chain order. An error replaces
    /// the app's response with the rejection.
    fn on_response(
        &self,
        _rsp: &mut ResponseView<'_>,
        _cx: &mut RequestCtx,
    ) -> impl Future<Output = Result<(), Rejection>> + Send {
        async { Ok(()) }
    }

    /// Whether [`Filter::on_response`] does anything; lets the data path skip
    /// the response phase entirely for chains that do not need it.
    fn has_response_phase(&self) -> bool {
        false
    }
}
