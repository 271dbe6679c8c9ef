//! One body type for requests and responses on both sides of the proxy.
//!
//! Bodies stream by default (`Incoming`); a filter that must see the bytes asks
//! for them through a bounded buffer, after which the body is `Full`.

use std::pin::Pin;
use std::task::{Context, Poll};

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
        while let Some(frame) = taken.frame().await {
            let frame = frame.map_err(BufferError::Read)?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(BufferError::TooLarge);
                }
                buf.extend_from_slice(&data);
            }
        }
        let bytes = buf.freeze();
        *self = Body::full(bytes.clone());
        Ok(bytes)
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
    async fn refuses_body_over_limit() {
        let mut body = chunked(vec![b"0123456789", b"0123456789"]);
        assert!(matches!(body.buffer(15).await, Err(BufferError::TooLarge)));
        let mut full = Body::full(Bytes::from_static(b"0123456789"));
        assert!(matches!(full.buffer(5).await, Err(BufferError::TooLarge)));
    }
}
