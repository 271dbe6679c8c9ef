//! Per-request context that filters read and write.

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderName, HeaderValue};

/// What the chain learned about one request. Created by the sidecar before the
/// chain runs, dropped when the response has been sent (which releases any
/// [`RequestCtx::hold`] guards, such as concurrency-limit permits).
pub struct RequestCtx {
    /// The matched route's name (`-` until routing).
    pub route: Arc<str>,
    pub client_ip: IpAddr,
    /// The client connected over TLS (decides the `Secure` cookie flag).
    pub tls: bool,
    /// The request's time: wall-clock, read once when it arrived (absolute
    /// expiry, issuance). Filters read this and [`RequestCtx::instant`],
    /// never the clocks, so a test can run a filter at any time.
    pub now: SystemTime,
    /// The request's time: the monotonic clock, read together with
    /// [`RequestCtx::now`] (idle timers, cache ages). Filters read these,
    /// never the clocks.
    pub instant: Instant,
    /// Verified calling application (signature key id); shared with the
    /// key's config, so setting it copies nothing.
    pub client_id: Option<Arc<str>>,
    /// Verified end user (session subject); shared with the verified token.
    pub user: Option<Arc<str>>,
    /// Headers to add to the request that goes to the app, e.g.
    /// `x-meshgate-user`. Identity headers from the client were already removed.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to add to the response that goes to the client.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// One entry per filter that ran: (filter instance, outcome), for the access log.
    pub verdicts: Vec<(Arc<str>, &'static str)>,
    /// Per-request scratch data a filter hands from its request phase to its
    /// response phase (for example the request's signature, for binding).
    pub extensions: http::Extensions,
    guards: Vec<Box<dyn Any + Send>>,
}

impl RequestCtx {
    pub fn new(route: Arc<str>, client_ip: IpAddr, tls: bool) -> Self {
        RequestCtx {
            route,
            client_ip,
            tls,
            now: SystemTime::now(),
            instant: Instant::now(),
            client_id: None,
            user: None,
            upstream_headers: Vec::new(),
            response_headers: Vec::new(),
            verdicts: Vec::new(),
            extensions: http::Extensions::new(),
            guards: Vec::new(),
        }
    }

    /// The same context at another time: `now` and `instant` replace the
    /// clock readings taken by [`RequestCtx::new`] (tests run a filter "later"
    /// this way instead of sleeping).
    pub fn at(mut self, now: SystemTime, instant: Instant) -> Self {
        self.now = now;
        self.instant = instant;
        self
    }

    /// Keeps `guard` alive until the request is finished (response body sent
    /// or connection gone).
    pub fn hold(&mut self, guard: impl Any + Send) {
        self.guards.push(Box::new(guard));
    }

    /// Adds an identity header for the app, replacing an earlier value of the
    /// same name set by another filter.
    pub fn set_upstream_header(&mut self, name: HeaderName, value: HeaderValue) {
        self.upstream_headers.retain(|(n, _)| n != name);
        self.upstream_headers.push((name, value));
    }

    /// The value an earlier filter of the chain set for the app under
    /// `name`, e.g. `x-meshgate-tenant` from the session filter. Never a
    /// client-sent header: those are stripped before the chain runs and are
    /// not in this list.
    pub fn upstream_header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.upstream_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Takes the guards out, for a connection that outlives the response (a
    /// WebSocket tunnel holds them until it closes).
    pub fn take_guards(&mut self) -> Vec<Box<dyn Any + Send>> {
        std::mem::take(&mut self.guards)
    }
}
