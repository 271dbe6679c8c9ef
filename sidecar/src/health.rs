//! Periodic HTTP health check of the app.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use http::Request;
use meshgate_filters::Body;

use crate::config_store::ConfigStore;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The app's health as last observed. Without a configured `health_path` the
/// app counts as healthy.
#[derive(Default)]
pub struct AppHealth {
    state: AtomicU8,
}

impl AppHealth {
    pub fn is_healthy(&self) -> bool {
        self.state.load(Ordering::Relaxed) != DOWN
    }

    /// Healthy and, when checks are configured, seen healthy at least once.
    pub fn is_ready(&self, checks_configured: bool) -> bool {
        let s = self.state.load(Ordering::Relaxed);
        s == UP || (!checks_configured && s != DOWN)
    }

    fn set(&self, up: bool) {
        let new = if up { UP } else { DOWN };
        let old = self.state.swap(new, Ordering::Relaxed);
        if old != new {
            if up {
                tracing::info!("app is healthy");
            } else {
                tracing::warn!("app is failing its health check");
            }
            metrics::gauge!("meshgate_app_healthy").set(if up { 1.0 } else { 0.0 });
        }
    }

    fn reset(&self) {
        self.state.store(UNKNOWN, Ordering::Relaxed);
    }
}

/// Checks the app at the interval of the current config, forever.
pub async fn run(store: Arc<ConfigStore>, health: Arc<AppHealth>) {
    loop {
        let snapshot = store.load();
        let app = &snapshot.config.app;
        let Some(path) = app.health_path.clone() else {
            health.reset();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        };
        let up = match snapshot.upstream.uri(&path) {
            Ok(uri) => {
                let host = match &app.address {
                    meshgate_xds::config::AppAddress::Tcp(addr) => addr.clone(),
                    meshgate_xds::config::AppAddress::Unix(_) => "localhost".to_string(),
                };
                let h2 = app.protocol == meshgate_xds::config::AppProtocol::Http2;
                let mut req = Request::get(uri);
                if h2 {
                    req = req.version(http::Version::HTTP_2);
                } else {
                    req = req.header(http::header::HOST, host);
                }
                let req = req.body(Body::Empty).unwrap_or_default();
                matches!(
                    tokio::time::timeout(app.health_timeout, snapshot.upstream.send(req)).await,
                    Ok(Ok(rsp)) if rsp.status().is_success()
                )
            }
            Err(_) => false,
        };
        health.set(up);
        let interval = app.health_interval;
        drop(snapshot);
        tokio::time::sleep(interval).await;
    }
}
