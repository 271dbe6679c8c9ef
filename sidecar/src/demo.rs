//! `meshgate demo`: a sample app and the sidecar in front of it, on the
//! embedded quick-start config. One command to see the sidecar work.

use std::convert::Infallible;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::cli::RunArgs;

/// The quick-start config compiled into the binary.
pub const QUICKSTART: &str = include_str!("../../examples/quickstart.yaml");

pub fn run(args: RunArgs, app_port: u16) -> ExitCode {
    let mut spec = match meshgate_xds::config::parse_yaml(QUICKSTART) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("meshgate demo: embedded config: {e}");
            return ExitCode::from(1);
        }
    };
    spec.app.address = format!("127.0.0.1:{app_port}");
    let runtime = match crate::runtime(&args) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshgate demo: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", app_port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("meshgate demo: sample app cannot listen on 127.0.0.1:{app_port}: {e}");
                return ExitCode::from(1);
            }
        };
        tokio::spawn(sample_app(listener));
        let listen = spec.inbound.listen.clone();
        eprintln!(
            "meshgate demo: sample app on 127.0.0.1:{app_port}, sidecar on {listen}, admin on {}\n\
             try:\n  curl -i http://{listen}/mock/bill\n  curl -i http://{listen}/api/balance            # 400 header_required\n  \
             curl -i -H 'x-app-version: 1' -H 'x-meshgate-user: spoofed' http://{listen}/api/balance\n  \
             curl -s http://{}/config_dump\n  curl -s http://{}/metrics | grep meshgate_requests",
            spec.admin.listen, spec.admin.listen, spec.admin.listen
        );
        match crate::run_async(args, Some(spec)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshgate demo: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Answers every request with what it received, so the effect of the
/// sidecar (identity headers, stripped headers, request id) is visible.
async fn sample_app(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let (head, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let headers: serde_json::Map<String, serde_json::Value> = head
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect();
                let answer = if head.uri.path() == "/healthz" {
                    serde_json::json!({"status": "ok"})
                } else {
                    serde_json::json!({
                        "app": "meshgate demo app",
                        "method": head.method.as_str(),
                        "path": head.uri.to_string(),
                        "headers": headers,
                        "body_bytes": body.len(),
                    })
                };
                let mut rsp = Response::new(Full::new(Bytes::from(
                    serde_json::to_vec_pretty(&answer).unwrap_or_default(),
                )));
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(rsp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
