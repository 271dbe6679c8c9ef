//! An immutable, fully built config: the route table with its filter chains,
//! the upstream client, the TLS acceptor. Swapped whole on every reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use indexmap::IndexMap;
use meshgate_filters::chain::NamedFilter;
use meshgate_filters::{AnyFilter, BuildCx};
use meshgate_xds::config::Config;
use tokio_rustls::TlsAcceptor;

use crate::routing::RouteTable;
use crate::upstream::Upstream;

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ConfigSource {
    /// Built-in defaults before any config was loaded.
    Default,
    File(String),
    Xds(String),
    /// The state directory written by an earlier run.
    StateDir(String),
    /// Handed over by the previous process at upgrade.
    Upgrade,
}

pub struct Snapshot {
    pub version: String,
    pub source: ConfigSource,
    pub applied_at: SystemTime,
    pub config: Config,
    /// Inbound routes and egress destinations.
    pub routes: RouteTable,
    pub upstream: Arc<Upstream>,
    pub tls: Option<TlsAcceptor>,
    pub error_codes: IndexMap<&'static str, u32>,
    /// False only for the built-in default before the first real config.
    pub loaded: bool,
}

impl Snapshot {
    /// Builds every filter instance once and the chains from them. Filters
    /// fetch their long-lived state from `cx.state`, so counters and caches
    /// carry over from the previous snapshot.
    pub fn build(
        config: Config,
        version: String,
        source: ConfigSource,
        upstream: Arc<Upstream>,
        tls: Option<TlsAcceptor>,
        cx: &BuildCx<'_>,
    ) -> Snapshot {
        let instances: HashMap<&str, Arc<NamedFilter>> = config
            .filters
            .iter()
            .map(|(name, fc)| {
                let filter = AnyFilter::build(name, fc, cx);
                (
                    name.as_str(),
                    Arc::new(NamedFilter {
                        name: Arc::from(name.as_str()),
                        filter,
                    }),
                )
            })
            .collect();
        let routes = RouteTable::build(&config, &instances);
        Snapshot {
            version,
            source,
            applied_at: SystemTime::now(),
            error_codes: config.error_codes.clone(),
            routes,
            upstream,
            tls,
            loaded: true,
            config,
        }
    }
}
