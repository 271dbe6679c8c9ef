//! Where a request goes: the route table of a config snapshot (inbound
//! routes with their filter chains, egress destinations) and the matching
//! rules. Config types stay in `meshgate-xds`; deciding a match is here.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use meshgate_filters::chain::NamedFilter;
use meshgate_filters::signature::egress::Destination;
use meshgate_filters::{Chain, Rejection};
use meshgate_xds::config::{Config, MatchRule, PathMatch, Responder, Route, RouteAction};

use crate::route_metrics::RouteMetrics;

/// What a matched inbound route does.
pub enum RouteTarget {
    /// Answer from config (a mock route).
    Respond(Responder),
    /// Run the chain, then forward to the app.
    Forward(Chain),
}

/// One inbound route, built once per snapshot.
pub struct CompiledRoute {
    pub route: Route,
    pub target: RouteTarget,
    pub metrics: Arc<RouteMetrics>,
}

/// One egress destination, built once per snapshot.
pub struct EgressRoute {
    pub destination: Destination,
    pub metrics: Arc<RouteMetrics>,
}

/// Every route of one config snapshot, inbound and egress.
pub struct RouteTable {
    routes: Vec<CompiledRoute>,
    destinations: Vec<EgressRoute>,
    /// Metrics of requests that matched no route.
    unrouted: Arc<RouteMetrics>,
}

impl RouteTable {
    /// Builds the routes in config order, their chains from the already built
    /// filter instances.
    pub fn build(config: &Config, instances: &HashMap<&str, Arc<NamedFilter>>) -> RouteTable {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let target = match &route.action {
                    RouteAction::Respond(r) => RouteTarget::Respond(r.clone()),
                    RouteAction::Forward { filters } => RouteTarget::Forward(Chain::new(
                        // Validation guarantees every name exists.
                        filters
                            .iter()
                            .filter_map(|n| instances.get(n.as_str()).cloned())
                            .collect(),
                    )),
                };
                CompiledRoute {
                    route: route.clone(),
                    target,
                    metrics: RouteMetrics::new(route.name.clone()),
                }
            })
            .collect();
        let destinations = config
            .egress
            .iter()
            .flat_map(|e| &e.destinations)
            .map(|d| EgressRoute {
                destination: d.clone(),
                metrics: RouteMetrics::new(Arc::from(format!("egress:{}", d.host))),
            })
            .collect();
        RouteTable {
            routes,
            destinations,
            unrouted: RouteMetrics::new(Arc::from("-")),
        }
    }

    /// The first inbound route matching the request; 404 `route_not_found`
    /// when none does. `host` is the admitted host without port.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        host: &str,
    ) -> Result<&CompiledRoute, Rejection> {
        self.routes
            .iter()
            .find(|r| matches(&r.route.matcher, method, path, Some(host)))
            .ok_or_else(|| {
                Rejection::new(
                    &meshgate_filters::error::ROUTE_NOT_FOUND,
                    format!("no route for {method} {path}"),
                )
            })
    }

    /// The egress destination for a host (without port, any case); 404
    /// `route_not_found` when none is configured for it.
    pub fn destination(&self, host: &str) -> Result<&EgressRoute, Rejection> {
        self.destinations
            .iter()
            .find(|d| d.destination.host.eq_ignore_ascii_case(host))
            .ok_or_else(|| {
                Rejection::new(
                    &meshgate_filters::error::ROUTE_NOT_FOUND,
                    format!("no egress destination for host {host:?}"),
                )
            })
    }

    /// Metrics of requests that matched no route (or were refused before routing).
    pub fn unrouted(&self) -> &Arc<RouteMetrics> {
        &self.unrouted
    }
}

/// Whether a request matches a route's rule: path (any, exact or prefix of
/// the canonical path), method (none listed: any) and host. `host` is the
/// authority without port.
pub fn matches(rule: &MatchRule, method: &Method, path: &str, host: Option<&str>) -> bool {
    let path_ok = match &rule.path {
        PathMatch::Any => true,
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
    };
    if !path_ok || (!rule.methods.is_empty() && !rule.methods.contains(method)) {
        return false;
    }
    match (&rule.host, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(want), Some(got)) => host_matches(want, got),
    }
}

/// `want` is a lower-case host or `*.suffix`, which matches any name below
/// `suffix` (not `suffix` itself, nor a name that merely ends in it).
fn host_matches(want: &str, got: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(suffix) => {
            got.len() > suffix.len() + 1
                && got[got.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && got.as_bytes()[got.len() - suffix.len() - 1] == b'.'
        }
        None => want.eq_ignore_ascii_case(got),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_filters::ValidateCx;
    use meshgate_xds::config::{validate, ConfigSpec};

    fn table(yaml: &str) -> RouteTable {
        let spec: ConfigSpec = serde_yaml::from_str(yaml).expect("yaml");
        let config = validate(&spec, &ValidateCx::control_plane()).expect("valid");
        RouteTable::build(&config, &HashMap::new())
    }

    #[test]
    fn host_matching() {
        let rule = MatchRule {
            path: PathMatch::Any,
            methods: vec![],
            host: Some("*.example.com".into()),
        };
        assert!(matches(&rule, &Method::GET, "/", Some("api.example.com")));
        assert!(matches(&rule, &Method::GET, "/", Some("API.Example.com")));
        assert!(!matches(&rule, &Method::GET, "/", Some("example.com")));
        assert!(!matches(&rule, &Method::GET, "/", Some("evilexample.com")));
        assert!(!matches(&rule, &Method::GET, "/", None));
    }

    #[test]
    fn path_and_method_rules() {
        let exact = MatchRule {
            path: PathMatch::Exact("/pay".into()),
            methods: vec![Method::POST],
            host: None,
        };
        assert!(matches(&exact, &Method::POST, "/pay", None));
        assert!(!matches(&exact, &Method::GET, "/pay", None));
        assert!(!matches(&exact, &Method::POST, "/pay/x", None));
        let prefix = MatchRule {
            path: PathMatch::Prefix("/api/".into()),
            methods: vec![],
            host: None,
        };
        assert!(matches(&prefix, &Method::DELETE, "/api/x", None));
        assert!(!matches(&prefix, &Method::GET, "/apix", None));
    }

    #[test]
    fn first_matching_route_wins_and_none_is_404() {
        let routes = table(
            r#"
routes:
  - { name: pay, match: { path: /pay, methods: [POST] } }
  - { name: api-host, match: { path_prefix: /, host: api.example.com } }
  - { name: rest, match: { path_prefix: /p } }
"#,
        );
        let name = |m: Method, p: &str, h: &str| {
            routes
                .route(&m, p, h)
                .map(|r| r.route.name.to_string())
                .map_err(|e| e.reason)
        };
        assert_eq!(name(Method::POST, "/pay", "x"), Ok("pay".into()));
        assert_eq!(name(Method::GET, "/pay", "x"), Ok("rest".into()));
        assert_eq!(
            name(Method::GET, "/pay", "api.example.com"),
            Ok("api-host".into())
        );
        assert_eq!(name(Method::GET, "/other", "x"), Err("route_not_found"));
    }

    #[test]
    fn egress_destinations_match_their_host_in_any_case() {
        let routes = table(
            r#"
egress:
  destinations:
    - host: wallet.internal
      upstream: "127.0.0.1:9"
      key: { id: k, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=" }
    - host: "[::1]"
      upstream: "127.0.0.1:9"
      key: { id: k6, alg: hmac-sha256, secret_base64: "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=" }
"#,
        );
        let found = routes.destination("Wallet.Internal").expect("found");
        assert_eq!(found.destination.host, "wallet.internal");
        assert_eq!(found.metrics.route().as_ref(), "egress:wallet.internal");
        assert_eq!(
            routes.destination("::1").expect("v6").destination.host,
            "::1"
        );
        assert_eq!(
            routes.destination("other").err().map(|e| e.reason),
            Some("route_not_found")
        );
    }
}
