//! A test app that shows what reached it. HTTP/1.1 and h2c on one port.
//!
//! - `GET /healthz`: 200, or 503 after `POST /control/unhealthy` (until `POST /control/healthy`)
//! - `/slow?ms=N`: answers after N ms
//! - `/status/N`: answers with status N
//! - `/download?bytes=N`: streams N bytes
//! - `/grpc/...`: a gRPC-framed echo: the request messages back, then trailers `grpc-status: 0`
//! - `/ws`: WebSocket echo
//! - anything else: JSON with method, path, headers, body length and SHA-256,
//!   reading the body as a stream (large uploads are never held in memory)

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut rsp = Response::new(Full::new(body.into()).boxed_unsync());
    *rsp.status_mut() = status;
    rsp
}

fn query_num(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn handle(req: Request<Incoming>, healthy: Arc<AtomicBool>) -> Response<Body> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" => {
            if healthy.load(Ordering::Relaxed) {
                full(StatusCode::OK, "ok")
            } else {
                full(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            }
        }
        "/control/unhealthy" => {
            healthy.store(false, Ordering::Relaxed);
            full(StatusCode::OK, "now unhealthy")
        }
        "/control/healthy" => {
            healthy.store(true, Ordering::Relaxed);
            full(StatusCode::OK, "now healthy")
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_num(&req, "ms"))).await;
            echo(req).await
        }
        "/download" => download(query_num(&req, "bytes")),
        "/ws" => websocket(req),
        p if p.starts_with("/status/") => {
            let code = p.trim_start_matches("/status/").parse().unwrap_or(500);
            full(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                format!("status {code}"),
            )
        }
        p if p.starts_with("/grpc/") => grpc_echo(req).await,
        _ => echo(req).await,
    }
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (head, mut body) = req.into_parts();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    digest.update(data);
                }
            }
            Err(e) => return full(StatusCode::BAD_REQUEST, format!("body error: {e}")),
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = head
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let answer = serde_json::json!({
        "method": head.method.as_str(),
        "path": head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", head.version),
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(digest.finish().as_ref()),
    });
    let mut rsp = full(
        StatusCode::OK,
        serde_json::to_vec(&answer).unwrap_or_default(),
    );
    rsp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    rsp.headers_mut()
        .insert("x-app-secret-hop", HeaderValue::from_static("1"));
    // An instruction header the sidecar must never pass on to clients.
    rsp.headers_mut().insert(
        "x-meshgate-session-set",
        HeaderValue::from_static("{\"sub\":\"leak\"}"),
    );
    rsp.headers_mut()
        .insert("connection", HeaderValue::from_static("x-app-secret-hop"));
    rsp
}

fn download(bytes: u64) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(bytes, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK);
            Some((
                Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                left - n,
            ))
        }
    });
    Response::new(StreamBody::new(stream).boxed_unsync())
}

async fn grpc_echo(req: Request<Incoming>) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("echoed"));
    let frames = futures_util::stream::iter(vec![
        Ok::<_, Infallible>(Frame::data(body)),
        Ok(Frame::trailers(trailers)),
    ]);
    let mut rsp = Response::new(StreamBody::new(frames).boxed_unsync());
    rsp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    rsp
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, "not a websocket request");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_text() || msg.is_binary() {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        }
    });
    let mut rsp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = rsp.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::try_from(derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    rsp
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = if let Some(path) = addr.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        Listener::Unix(tokio::net::UnixListener::bind(path)?)
    } else {
        Listener::Tcp(tokio::net::TcpListener::bind(&addr).await?)
    };
    let healthy = Arc::new(AtomicBool::new(true));
    println!("echo app listening on {addr}");
    loop {
        let healthy = healthy.clone();
        let service = service_fn(move |req| {
            let healthy = healthy.clone();
            async move { Ok::<_, Infallible>(handle(req, healthy).await) }
        });
        match &listener {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept().await?;
                tokio::spawn(serve(TokioIo::new(stream), service));
            }
            Listener::Unix(l) => {
                let (stream, _) = l.accept().await?;
                tokio::spawn(serve(TokioIo::new(stream), service));
            }
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

async fn serve<I, S>(io: I, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await;
}
