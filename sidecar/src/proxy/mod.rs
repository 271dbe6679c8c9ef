//! The data path: one request through the sidecar as a sequence of phases
//! over one [`Exchange`], which lives from accept to the access log line.
//!
//! Inbound (`inbound.rs`): admit → route → request filters → upstream
//! request → send → response filters → log. Egress (`egress.rs`): admit →
//! route (destination) → sign → upstream request → send → log. Both
//! listeners share the accept loop (`server.rs`), the send with its error
//! mapping (`send.rs`) and the access log (`context.rs`).

mod context;
mod egress;
mod inbound;
mod send;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use context::{Exchange, LoggedBody};
pub use egress::EgressPools;

use crate::config_store::ConfigStore;
use crate::headers;
use crate::health::AppHealth;
use crate::reply;
use crate::server::InFlight;

/// What every request handler shares.
pub struct Shared {
    pub store: Arc<ConfigStore>,
    pub health: Arc<AppHealth>,
    /// Upgraded connections (WebSocket tunnels) count as connections for the drain.
    pub drain: crate::drain::Drain,
    /// One pooled client per egress upstream, kept across reloads.
    pub egress_pools: EgressPools,
}

/// Which listener a connection came in on, and so which routes it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Calls to the app (`inbound.listen`): the routes and their filter chains.
    Inbound,
    /// The app's outbound calls (`egress.listen`): destinations and signing.
    Egress,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Inbound => "inbound",
            Side::Egress => "egress",
        }
    }
}

/// The client side of one connection.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer address as an `x-forwarded-for` value, formatted once.
    pub(crate) client_value: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            client_value: headers::client_value(peer.ip()),
        }
    }
}

/// Handles one request. Never fails: every problem becomes a JSON answer.
/// The config snapshot is read once here; every phase uses it.
pub(crate) fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    side: Side,
    req: Request<Incoming>,
    in_flight: InFlight,
) -> impl Future<Output = Response<LoggedBody>> + Send {
    let snapshot = shared.store.load();
    let mut exchange = Exchange::accept(&req, &conn, snapshot.routes.unrouted(), in_flight);
    async move {
        let answer = match side {
            Side::Inbound => inbound::run(&shared, &snapshot, &conn, req, &mut exchange).await,
            Side::Egress => egress::run(&shared, &snapshot, req, &mut exchange).await,
        };
        let rsp = answer.unwrap_or_else(|rej| {
            reply::rejection(rej, &snapshot.error_codes, exchange.request_id.as_str())
        });
        exchange.respond(rsp)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builds what the phases need from a config, as a real process would.
    use std::sync::Arc;

    use meshgate_filters::State;

    use crate::config_store::ConfigStore;
    use crate::snapshot::{ConfigSource, Snapshot};

    pub fn snapshot(yaml: &str) -> Arc<Snapshot> {
        let store = ConfigStore::new(std::env::temp_dir(), Arc::new(State::new())).expect("store");
        let spec = serde_yaml::from_str(yaml).expect("yaml");
        store
            .apply(spec, ConfigSource::File("test".into()))
            .expect("valid config");
        store.load()
    }
}
