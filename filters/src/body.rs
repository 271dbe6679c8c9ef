//! One body type for requests and responses on both sides of the proxy.
//!
//! Bodies stream by default (`Incoming`); a filter that must see the bytes asks
//! for them through a bounded buffer, after which the body is `Full`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// Error type of a streamed body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: empty, fully buffered, streamed from a peer, or
/// any other body boxed.
#[derive(Default)]
pub enum Body {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Incoming(hyper::body::Incoming),
    Boxed(UnsyncBoxBody<Bytes, BodyError>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Body::Empty
        } else {
            Body::Full(Some(bytes))
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BodyError>,
    {
        Body::Boxed(body.map_err(Into::into).boxed_unsync())
    }

    /// Buffers the whole body, failing with [`BufferError::TooLarge`] as soon as
    /// more than `limit` bytes arrived (the announced length is checked first).
    /// On success the body is replaced by the buffered bytes, so the next reader
    /// (another filter, or the app) sees the same content.
    pub async fn buffer(&mut self, limit: usize) -> Result<Bytes, BufferError> {
        match self {
            Body::Empty => return Ok(Bytes::new()),
            Body::Full(Some(bytes)) if bytes.len() <= limit => return Ok(bytes.clone()),
            Body::Full(Some(_)) => return Err(BufferError::TooLarge),
            Body::Full(None) => return Ok(Bytes::new()),
            _ => {}
        }
        if let Some(upper) = http_body::Body::size_hint(self).exact() {
            if upper > limit as u64 {
                return Err(BufferError::TooLarge);
            }
        }
        let mut taken = std::mem::take(self);
        let mut buf = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = taken.frame().await {
            let frame = frame.map_err(BufferError::Read)?;
            match frame.into_data() {
                Ok(data) => {
                    if buf.len() + data.len() > limit {
                        return Err(BufferError::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
                // gRPC's status travels in trailers: they go on with the bytes.
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        let bytes = buf.freeze();
        *self = match trailers {
            None => Body::full(bytes.clone()),
            Some(trailers) => Body::boxed(
                http_body_util::Full::new(bytes.clone())
                    .with_trailers(std::future::ready(Some(Ok(trailers)))),
            ),
        };
        Ok(bytes)
    }

    /// Whether this body carries (or may still carry) data. Decided from the
    /// body itself, never from headers: a chunked HTTP/1.1 body or HTTP/2
    /// DATA frames count even without `Content-Length`. A body whose framing
    /// already says it is empty (`Content-Length: 0`, no body on HTTP/1.1,
    /// END_STREAM on the HTTP/2 HEADERS frame, or a buffered body that came out
    /// empty) does not. A streamed body that only later turns out to be empty
    /// counts as a body: the safe side for checks that require a digest.
    pub fn may_have_data(&self) -> bool {
        !http_body::Body::is_end_stream(self)
    }

    /// Wraps a streamed body so that a sender who goes quiet for longer than
    /// `idle` between frames fails it with [`BodyStalled`]. The gap counts only
    /// while the reader is waiting for data, so a reader that is slow itself
    /// (backpressure from the app) never trips it. The returned
    /// [`BodyProgress`] tells how far the body got and counts its bytes.
    /// A body that is already finished is returned as it is, without one
    /// (nothing is allocated for the common request without a body).
    pub fn with_idle_timeout(self, idle: Duration) -> (Body, Option<Arc<BodyProgress>>) {
        if !self.may_have_data() {
            return (self, None);
        }
        let progress = Arc::new(BodyProgress::default());
        let guarded = IdleBody {
            inner: self,
            idle,
            timer: None,
            waiting: false,
            progress: progress.clone(),
        };
        (Body::boxed(guarded), Some(progress))
    }
}

const STREAMING: u8 = 0;
const WAITING: u8 = 1;
const DONE: u8 = 2;
const STALLED: u8 = 3;

/// How far a guarded body got, shared between the body and the data path.
#[derive(Debug, Default)]
pub struct BodyProgress {
    state: AtomicU8,
    bytes: AtomicU64,
}

impl BodyProgress {
    /// Data bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The body ended: read to its end, or failed.
    pub fn is_done(&self) -> bool {
        self.state.load(Ordering::Relaxed) == DONE
    }

    /// The body was cut because its sender went quiet for too long.
    pub fn is_stalled(&self) -> bool {
        self.state.load(Ordering::Relaxed) == STALLED
    }

    /// The reader is waiting for the sender's next frame right now.
    pub fn is_waiting_for_sender(&self) -> bool {
        self.state.load(Ordering::Relaxed) == WAITING
    }
}

/// The error of a body whose sender sent nothing for longer than the idle gap.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyStalled(pub Duration);

struct IdleBody {
    inner: Body,
    idle: Duration,
    /// Allocated on the first wait and reset afterwards.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The previous poll was pending: the gap runs since that wait began.
    waiting: bool,
    progress: Arc<BodyProgress>,
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                let state = match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            this.progress
                                .bytes
                                .fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                        STREAMING
                    }
                    Some(Err(_)) | None => DONE,
                };
                this.progress.state.store(state, Ordering::Relaxed);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.progress.state.store(WAITING, Ordering::Relaxed);
                    // A gap too large to add to an Instant means "no limit".
                    let Some(deadline) = tokio::time::Instant::now().checked_add(this.idle) else {
                        this.timer = None;
                        return Poll::Pending;
                    };
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let elapsed = match &mut this.timer {
                    Some(timer) => timer.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if elapsed {
                    this.progress.state.store(STALLED, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress.is_stalled() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("body exceeds the configured limit")]
    TooLarge,
    #[error("reading the body failed: {0}")]
    Read(BodyError),
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::full(bytes)
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(body: hyper::body::Incoming) -> Self {
        Body::Incoming(body)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Body::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(bytes) => bytes.is_none(),
            Body::Incoming(body) => body.is_end_stream(),
            Body::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(body) => body.size_hint(),
            Body::Boxed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::StreamBody;

    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BodyError>(Frame::data(Bytes::from_static(c))));
        Body::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn buffers_streamed_body_and_replays_it() {
        let mut body = chunked(vec![b"hello ", b"world"]);
        let bytes = body.buffer(64).await.expect("fits");
        assert_eq!(&bytes[..], b"hello world");
        let again = body.buffer(64).await.expect("still there");
        assert_eq!(again, bytes);
    }

    #[tokio::test]
    async fn buffering_keeps_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, BodyError>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let mut body = Body::boxed(StreamBody::new(futures_util::stream::iter(frames)));
        let bytes = body.buffer(64).await.expect("fits");
        assert_eq!(&bytes[..], b"\0\0\0\0\x02hi");
        // A second reader (another filter) sees the same bytes...
        assert_eq!(body.buffer(64).await.expect("again"), bytes);
        // ...and whoever sends the body on sends the trailers too.
        let collected = body.collect().await.expect("collect");
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), bytes);
    }

    /// Sends `chunks` with `gap` before each, then ends.
    fn trickled(chunks: Vec<&'static [u8]>, gap: Duration) -> Body {
        let frames = futures_util::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(gap).await;
            Ok::<_, BodyError>(Frame::data(Bytes::from_static(c)))
        });
        Body::boxed(StreamBody::new(frames))
    }

    #[tokio::test]
    async fn idle_gap_cuts_a_stalled_body() {
        let (mut body, progress) = trickled(vec![b"a", b"b"], Duration::from_millis(400))
            .with_idle_timeout(Duration::from_millis(100));
        let progress = progress.expect("a streamed body is guarded");
        let err = body.buffer(64).await.expect_err("stalled");
        let BufferError::Read(e) = err else {
            panic!("not a read error: {err:?}")
        };
        assert!(e.is::<BodyStalled>(), "{e}");
        assert!(progress.is_stalled());
    }

    #[tokio::test]
    async fn idle_gap_lets_a_steady_body_through() {
        let (mut body, progress) = trickled(vec![b"a", b"b", b"c"], Duration::from_millis(20))
            .with_idle_timeout(Duration::from_millis(500));
        let progress = progress.expect("a streamed body is guarded");
        assert!(body.may_have_data());
        assert_eq!(&body.buffer(64).await.expect("steady")[..], b"abc");
        assert!(progress.is_done());
        assert_eq!(progress.bytes(), 3);
    }

    #[tokio::test]
    async fn presence_comes_from_the_body() {
        assert!(!Body::Empty.may_have_data());
        assert!(Body::full(Bytes::from_static(b"x")).may_have_data());
        // A stream of unknown length may carry data, even if it is empty in the end.
        let mut empty_stream = chunked(vec![]);
        assert!(empty_stream.may_have_data());
        empty_stream.buffer(8).await.expect("empty");
        assert!(!empty_stream.may_have_data());
        let (finished, progress) = Body::Empty.with_idle_timeout(Duration::from_secs(1));
        assert!(!finished.may_have_data() && progress.is_none());
    }

    #[tokio::test]
    async fn refuses_body_over_limit() {
        let mut body = chunked(vec![b"0123456789", b"0123456789"]);
        assert!(matches!(body.buffer(15).await, Err(BufferError::TooLarge)));
        let mut full = Body::full(Bytes::from_static(b"0123456789"));
        assert!(matches!(full.buffer(5).await, Err(BufferError::TooLarge)));
    }
}
