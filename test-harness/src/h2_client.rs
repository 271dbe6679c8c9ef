//! HTTP/2 frames from the `h2` crate, for requests hyper's client would not
//! send: an explicit `:authority` beside a differing `host`, DATA frames
//! without `Content-Length`, CONNECT.
//!
//! - [`h2_connect`]: a prior-knowledge (h2c) connection to 127.0.0.1 and its
//!   driver task, which ends when the connection closes.
//! - [`h2_send`]: one request on it, optionally with a body in DATA frames.
//! - [`h2_get`]: one GET on a fresh connection.
//!
//! Responses come back as an [`HttpResult`] (status, headers, body, trailers).

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::task::JoinHandle;

use crate::HttpResult;

/// How long connecting, and each response, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Opens an h2c connection to 127.0.0.1:`port`. The returned task drives
/// the connection and ends when it closes (drop it to detach).
pub async fn h2_connect(port: u16) -> (SendRequest<Bytes>, JoinHandle<()>) {
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        h2::client::handshake(tcp).await.expect("h2 handshake")
    };
    let (client, conn) = tokio::time::timeout(TIMEOUT, handshake)
        .await
        .expect("h2 connection in time");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, driver)
}

/// Sends `req` on `client`, with `body` in DATA frames when given (and no
/// `Content-Length` unless `req` has one); returns the whole response.
/// Fails the test when no response comes within 10 s.
pub async fn h2_send(
    client: &mut SendRequest<Bytes>,
    req: http::Request<()>,
    body: Option<&[u8]>,
) -> HttpResult {
    let ready = client.clone().ready().await.expect("h2 ready");
    *client = ready;
    let (rsp, mut stream) = client
        .send_request(req, body.is_none())
        .expect("send request");
    if let Some(body) = body {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .expect("send data");
    }
    let rsp = tokio::time::timeout(TIMEOUT, rsp)
        .await
        .expect("h2 answer in time")
        .expect("h2 answer");
    let (head, mut recv) = rsp.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.expect("h2 data");
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.ok().flatten();
    HttpResult {
        status: head.status.as_u16(),
        headers: head.headers,
        body: Bytes::from(body),
        trailers,
    }
}

/// One GET of `uri` (its authority becomes `:authority`) with `headers`,
/// `host` included if given, on a fresh connection to 127.0.0.1:`port`.
pub async fn h2_get(port: u16, uri: &str, headers: &[(&str, &str)]) -> HttpResult {
    let (mut client, _driver) = h2_connect(port).await;
    let mut req = http::Request::get(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    h2_send(&mut client, req.body(()).expect("request"), None).await
}
