//! Logging (JSON lines, level changeable at runtime) and the Prometheus recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl LogLevel {
    /// Applies a filter such as `debug` or `info,access=off`.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }

    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}

/// Installs the global subscriber. `json` selects JSON lines (the default).
pub fn init_logging(directives: &str, json: bool) -> Result<LogLevel, String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| format!("--log-level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout))
            .try_init()
    };
    result.map_err(|e| e.to_string())?;
    crate::access_log::init(json);
    Ok(LogLevel { handle })
}

/// Installs the Prometheus recorder and describes the core metrics.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    let latency = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!("meshgate_requests_total", "Requests by route and status");
    metrics::describe_histogram!(
        "meshgate_request_duration_seconds",
        "Request latency by route"
    );
    metrics::describe_counter!(
        "meshgate_upstream_connect_errors_total",
        "Failed connects to the app"
    );
    metrics::describe_counter!(
        "meshgate_config_reloads_total",
        "Config applies by result (ok, failed)"
    );
    metrics::describe_gauge!("meshgate_config_info", "Current config version (label) = 1");
    metrics::describe_gauge!("meshgate_active_connections", "Open inbound connections");
    metrics::describe_counter!(
        "meshgate_filter_rejections_total",
        "Filter rejections by filter and reason"
    );
    metrics::describe_gauge!(
        "meshgate_app_healthy",
        "1 when the app passes its health check"
    );
    metrics::describe_gauge!(
        "meshgate_signature_nonces",
        "Nonces held by a signature filter's memory replay store"
    );
    metrics::describe_counter!(
        "meshgate_sessions_evicted_total",
        "Live sessions ended to bound the store (store_full, subject_limit)"
    );
    crate::memory::describe();
    Ok(handle)
}
