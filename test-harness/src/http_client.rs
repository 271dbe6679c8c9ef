//! A small blocking-friendly HTTP client for tests (HTTP/1.1, h2c, TLS),
//! built on hyper so tests speak the real protocols.
//!
//! - [`get`], [`request`]: one request on a fresh HTTP/1.1 connection.
//! - [`send_request`]: the same from a method, URL, headers and body (the
//!   shape of a signed request), failing the test when nothing answers.
//! - [`send_h1`], [`send_h2c`], [`send_tls`]: async, per protocol.
//! - [`HttpResult`]: a complete response; [`HttpResult::error`] is the JSON
//!   error code of a rejection (see [`crate::rejection`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpResult {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl HttpResult {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` field of a JSON body: the stable code of a rejection
    /// (`"signature_invalid"`). Empty when the body is not JSON or has no
    /// string `error`, so a comparison with the expected code fails and
    /// shows it. [`crate::assert_error`] checks the whole rejection.
    pub fn error(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// GET `url` on a fresh HTTP/1.1 connection.
pub fn get(url: &str) -> anyhow::Result<HttpResult> {
    request(Request::get(url).body(Bytes::new())?)
}

/// Sends one request on a fresh HTTP/1.1 connection, blocking. Runs on its
/// own thread so it may be called from inside an async test too.
pub fn request(req: Request<Bytes>) -> anyhow::Result<HttpResult> {
    std::thread::spawn(move || runtime().block_on(send_h1(req)))
        .join()
        .map_err(|_| anyhow::anyhow!("request thread panicked"))?
}

/// Sends `method url` with `headers` and `body` on a fresh HTTP/1.1
/// connection; fails the test when the request cannot be built or gets no
/// response. Headers are pairs of names and values (`&str` or `String`), as
/// [`crate::py_sign`] returns them.
pub fn send_request<K, V>(
    method: &str,
    url: &str,
    headers: &[(K, V)],
    body: impl AsRef<[u8]>,
) -> HttpResult
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(name.as_ref(), value.as_ref());
    }
    let req = req
        .body(Bytes::copy_from_slice(body.as_ref()))
        .unwrap_or_else(|e| panic!("{method} {url}: bad request: {e}"));
    request(req).unwrap_or_else(|e| panic!("{method} {url}: no response: {e:#}"))
}

async fn connect(req: &Request<Bytes>) -> anyhow::Result<tokio::net::TcpStream> {
    let host = req
        .uri()
        .host()
        .ok_or_else(|| anyhow::anyhow!("no host"))?
        .to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    Ok(tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await??)
}

fn origin_form(mut req: Request<Bytes>) -> Request<Full<Bytes>> {
    let authority = req.uri().authority().map(|a| a.to_string());
    if let Some(a) = authority {
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::try_from(a) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = pq.parse().expect("path");
    req.map(Full::new)
}

/// One request over HTTP/1.1 (async).
pub async fn send_h1(req: Request<Bytes>) -> anyhow::Result<HttpResult> {
    let stream = connect(&req).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    collect(sender.send_request(origin_form(req)).await?).await
}

/// One request over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2c(req: Request<Bytes>) -> anyhow::Result<HttpResult> {
    let stream = connect(&req).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    collect(sender.send_request(req.map(Full::new)).await?).await
}

/// One request over TLS, trusting `ca_pem`; ALPN offers h2 and http/1.1.
/// Returns the response and the negotiated protocol.
pub async fn send_tls(
    req: Request<Bytes>,
    ca_pem: &[u8],
    server_name: &str,
) -> anyhow::Result<(HttpResult, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem)? {
        roots.add(cert)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let stream = connect(&req).await?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await?;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).to_string())
        .unwrap_or_default();
    let io = TokioIo::new(tls);
    let rsp = if alpn == "h2" {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        collect(sender.send_request(req.map(Full::new)).await?).await?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        collect(sender.send_request(origin_form(req)).await?).await?
    };
    Ok((rsp, alpn))
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?)
}

async fn collect(rsp: http::Response<hyper::body::Incoming>) -> anyhow::Result<HttpResult> {
    let (head, body) = rsp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok(HttpResult {
        status: head.status.as_u16(),
        headers: head.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// Status of a response, for matching in tests.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).expect("status")
}
