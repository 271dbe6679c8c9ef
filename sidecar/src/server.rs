//! The inbound listener: accept, optional TLS with ALPN, HTTP/1.1 and HTTP/2
//! (prior knowledge or ALPN) on the same port, graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::proxy::{self, ConnInfo, Shared};

/// Binds a listening socket with a deep accept queue. Shared with the
/// upgrade handover, which passes these same sockets to the next process.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts connections until draining starts.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = drain.started() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let guard = drain.track_connection();
        let shared = shared.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let snapshot = shared.store.load();
            match &snapshot.tls {
                None => {
                    serve_connection(stream, ConnInfo { peer, tls: false }, shared.clone(), drain)
                        .await
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        snapshot.config.inbound.header_timeout,
                        acceptor.accept(stream),
                    );
                    drop(snapshot);
                    match handshake.await {
                        Ok(Ok(tls)) => {
                            serve_connection(
                                tls,
                                ConnInfo { peer, tls: true },
                                shared.clone(),
                                drain,
                            )
                            .await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    tracing::info!("inbound listener stopped accepting");
}

/// Serves HTTP on one connection; on drain, finishes in-flight requests and closes.
pub async fn serve_connection<I>(io: I, info: ConnInfo, shared: Arc<Shared>, drain: Drain)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let inbound = shared.store.load().config.inbound.clone();
    let info = Arc::new(info);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(proxy::handle(shared, info, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own buffer must hold a head a little over our limit, so that the
    // data path can answer an oversized head with the JSON 431.
    let buffer = (inbound.max_header_bytes * 2 + 4096).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(inbound.header_timeout)
        .max_buf_size(buffer)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(buffer).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(1024);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = drain.started() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error while draining");
            }
        }
    }
}
