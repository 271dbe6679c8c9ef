//! Hand-made HTTP/1.1 over a plain TCP socket, for the attacker's tests:
//! requests written byte for byte as given (smuggling shapes, repeated or
//! odd headers, absolute forms, chunked bodies), that no HTTP client would
//! send.
//!
//! - [`raw_exchange`]: one request on a fresh connection, blocking; the
//!   response as an [`HttpResult`].
//! - [`RawConn`]: an async connection for several exchanges, partial writes
//!   and waiting for the sidecar to close it.
//! - [`header_lines`]: headers (a signer's, say) as lines to put in a head.
//! - [`read_head`]: the server side, for a raw app that reads request heads.
//!
//! Response heads are parsed with `httparse`; the body is read by its
//! `Content-Length` (none for 1xx, 204 and 304), or to the end of a response
//! without one. A chunked response fails the test: the sidecar's own
//! answers, and those of the echo app through it, are sized.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::HttpResult;

/// How long one exchange may wait for its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `request` (request line, headers, blank line and any body, exactly
/// as given) to 127.0.0.1:`port` on a fresh connection and reads one
/// response, within [`RESPONSE_TIMEOUT`]. Fails the test when no complete
/// response arrives. Add `connection: close` to have the sidecar close the
/// connection after it.
pub fn raw_exchange(port: u16, request: &str) -> HttpResult {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(RESPONSE_TIMEOUT))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut closed = false;
    loop {
        if let Some(rsp) = take_response(&mut buf, closed) {
            return rsp;
        }
        assert!(
            !closed,
            "no complete response to {request:?}: {:?}",
            String::from_utf8_lossy(&buf)
        );
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "no complete response within {RESPONSE_TIMEOUT:?} to {request:?}: {:?}",
                    String::from_utf8_lossy(&buf)
                )
            }
            // A reset after the response: what arrived is all there is.
            Err(_) => closed = true,
        }
    }
}

/// An async raw connection to 127.0.0.1 with the bytes read but not yet
/// consumed (a response may arrive in pieces, or with tunnel bytes behind it).
pub struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(port: u16) -> RawConn {
        let stream = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("connect in time")
        .expect("connect");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes (a partial request, an HTTP/2 preface, tunnel data).
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads exactly `out.len()` bytes (tunnel data after a 101), starting
    /// with any already read behind the last response.
    pub async fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let buffered = out.len().min(self.buf.len());
        out[..buffered].copy_from_slice(&self.buf[..buffered]);
        self.buf.drain(..buffered);
        self.stream
            .read_exact(&mut out[buffered..])
            .await
            .map(|_| ())
    }

    /// Writes `request` and reads its response within [`RESPONSE_TIMEOUT`]
    /// (failing the test when none comes in time). `None` when the
    /// connection failed or closed before a complete response.
    pub async fn exchange(&mut self, request: &str) -> Option<HttpResult> {
        self.write_all(request.as_bytes()).await.ok()?;
        tokio::time::timeout(RESPONSE_TIMEOUT, self.read_response())
            .await
            .expect("an answer in time")
    }

    /// Reads one response, without a time limit of its own. `None` when the
    /// connection failed or closed before a complete response.
    pub async fn read_response(&mut self) -> Option<HttpResult> {
        let mut closed = false;
        loop {
            if let Some(rsp) = take_response(&mut self.buf, closed) {
                return Some(rsp);
            }
            if closed {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits until the peer closes the connection (reading and discarding),
    /// at most `limit`. Returns when that was, or `None` when it stayed open.
    pub async fn closed_within(&mut self, limit: Duration) -> Option<Instant> {
        let wait = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .ok()
            .map(|()| Instant::now())
    }

    /// The socket, for reading and writing by hand (unread bytes are dropped).
    pub fn into_stream(self) -> tokio::net::TcpStream {
        self.stream
    }
}

/// `name: value\r\n` for each header, to put into a hand-made head.
pub fn header_lines<K: AsRef<str>, V: AsRef<str>>(headers: &[(K, V)]) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{}: {}\r\n", k.as_ref(), v.as_ref()))
        .collect()
}

/// Server side: reads from `stream` until `buf` holds a complete request
/// head; returns the head (without the blank line) and leaves what follows
/// in `buf`. `None` when the connection closed first.
pub async fn read_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Takes one complete response off the front of `buf`, if there is one.
/// `closed`: no more bytes will come (ends a response without a length).
fn take_response(buf: &mut Vec<u8>, closed: bool) -> Option<HttpResult> {
    let mut slots = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Response::new(&mut slots);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(e) => panic!(
            "malformed response head ({e}): {:?}",
            String::from_utf8_lossy(buf)
        ),
    };
    let status = parsed.code.expect("status of a complete head");
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).expect("header name");
        let value = HeaderValue::from_bytes(h.value).expect("header value");
        headers.append(name, value);
    }
    let head_text = || String::from_utf8_lossy(&buf[..head_len]).to_string();
    assert!(
        !headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked")),
        "expected a sized response: {}",
        head_text()
    );
    let body_len = if (100..200).contains(&status) || status == 204 || status == 304 {
        Some(0)
    } else {
        headers.get(http::header::CONTENT_LENGTH).map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("bad content-length: {}", head_text()))
        })
    };
    let body_len = match body_len {
        Some(n) if buf.len() >= head_len + n => n,
        Some(_) => return None,
        None if closed => buf.len() - head_len,
        None => return None,
    };
    let body = Bytes::copy_from_slice(&buf[head_len..head_len + body_len]);
    buf.drain(..head_len + body_len);
    Some(HttpResult {
        status,
        headers,
        body,
        trailers: None,
    })
}
