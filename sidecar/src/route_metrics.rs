//! Per-route metric handles, resolved once per config snapshot so the hot
//! path does not look labels up in the registry on every request.

use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram};

/// Handles for one route (or `-` for requests that matched none).
pub struct RouteMetrics {
    route: Arc<str>,
    duration: Histogram,
    /// `meshgate_requests_total{route, status}`, created on first use per status.
    by_status: Box<[OnceLock<Counter>]>,
}

const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;

impl RouteMetrics {
    pub fn new(route: Arc<str>) -> Arc<RouteMetrics> {
        let duration =
            metrics::histogram!("meshgate_request_duration_seconds", "route" => route.to_string());
        let by_status = (STATUS_MIN..=STATUS_MAX).map(|_| OnceLock::new()).collect();
        Arc::new(RouteMetrics {
            route,
            duration,
            by_status,
        })
    }

    pub fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Counts one finished request.
    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.record(seconds);
        let counter = status
            .checked_sub(STATUS_MIN)
            .and_then(|i| self.by_status.get(usize::from(i)))
            .map(|slot| {
                slot.get_or_init(|| {
                    metrics::counter!("meshgate_requests_total", "route" => self.route.to_string(), "status" => status.to_string())
                })
            });
        match counter {
            Some(c) => c.increment(1),
            None => metrics::counter!("meshgate_requests_total", "route" => self.route.to_string(), "status" => status.to_string())
                .increment(1),
        }
    }
}
