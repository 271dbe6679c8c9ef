//! The single apply path for configs from every source (file, xDS, state
//! directory, upgrade handover) and the `ArcSwap` that the data path reads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use meshgate_filters::store::{RedisOptions, RedisStore, RedisTarget};
use meshgate_filters::{BuildCx, FieldError, FieldErrors, State, ValidateCx};
use meshgate_xds::config::{validate, ConfigSpec};

use crate::snapshot::{ConfigSource, Snapshot};
use crate::upstream::{PoolSettings, Upstream};

/// The last rejected config, shown by `/config_dump`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub source: ConfigSource,
    pub at: String,
    pub errors: Vec<FieldError>,
}

type AppliedHook = Box<dyn Fn(&Snapshot) + Send + Sync>;

pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    /// Long-lived filter state; outlives every snapshot.
    pub state: Arc<State>,
    base_dir: PathBuf,
    /// Serializes appliers (file watcher, xDS) so versions apply in order.
    apply_lock: Mutex<()>,
    redis: Mutex<Option<Arc<RedisStore>>>,
    last_rejected: Mutex<Option<Rejected>>,
    /// Called after every successful apply (e.g. to persist it to the state dir).
    on_applied: Mutex<Vec<AppliedHook>>,
}

impl ConfigStore {
    /// A store serving the built-in defaults (no routes) until a config is applied.
    pub fn new(base_dir: PathBuf, state: Arc<State>) -> Result<ConfigStore, FieldErrors> {
        let spec = ConfigSpec::default();
        let config = validate(&spec, &ValidateCx::sidecar(&base_dir))?;
        let upstream = Arc::new(Upstream::new(PoolSettings::app(&config.app)));
        let cx = BuildCx {
            state: &state,
            redis: None,
        };
        let mut snapshot = Snapshot::build(
            config,
            "none".into(),
            ConfigSource::Default,
            upstream,
            None,
            &cx,
        );
        snapshot.loaded = false;
        Ok(ConfigStore {
            current: ArcSwap::from_pointee(snapshot),
            state,
            base_dir,
            apply_lock: Mutex::new(()),
            redis: Mutex::new(None),
            last_rejected: Mutex::new(None),
            on_applied: Mutex::new(Vec::new()),
        })
    }

    /// The snapshot for one request. Load it once and use it throughout.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn base_dir(&self) -> &PathBuf {
        &self.base_dir
    }

    pub fn last_rejected(&self) -> Option<Rejected> {
        self.last_rejected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn on_applied(&self, hook: impl Fn(&Snapshot) + Send + Sync + 'static) {
        self.on_applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Validates `spec` completely, builds a new snapshot and swaps it in.
    /// On any error nothing changes and the errors are returned (and kept
    /// for `/config_dump`); the current config keeps serving.
    pub fn apply(
        &self,
        spec: ConfigSpec,
        source: ConfigSource,
    ) -> Result<Arc<Snapshot>, FieldErrors> {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let previous_version = Some(self.load().version.clone());
        let result = self.build(spec, source.clone());
        match &result {
            Ok(snapshot) => {
                metrics::counter!("meshgate_config_reloads_total", "result" => "ok").increment(1);
                metrics::gauge!("meshgate_config_applied_timestamp_seconds").set(unix_now());
                if let Some(previous) = previous_version
                    .as_ref()
                    .filter(|v| **v != snapshot.version)
                {
                    metrics::gauge!("meshgate_config_info", "version" => previous.clone()).set(0.0);
                }
                metrics::gauge!("meshgate_config_info", "version" => snapshot.version.clone())
                    .set(1.0);
                tracing::info!(version = %snapshot.version, source = ?source, "config applied");
                for hook in self
                    .on_applied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    hook(snapshot);
                }
            }
            Err(errors) => {
                metrics::counter!("meshgate_config_reloads_total", "result" => "failed")
                    .increment(1);
                for e in &errors.0 {
                    tracing::error!(field = %e.path, error = %e.message, source = ?source, "config rejected");
                }
                *self.last_rejected.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rejected {
                    source,
                    at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    errors: errors.0.clone(),
                });
            }
        }
        result
    }

    fn build(&self, spec: ConfigSpec, source: ConfigSource) -> Result<Arc<Snapshot>, FieldErrors> {
        let config = validate(&spec, &ValidateCx::sidecar(&self.base_dir))?;
        let previous = self.load();

        // Addresses are bound once; moving them needs a restart or an upgrade.
        if previous.loaded {
            let mut errors = FieldErrors::default();
            if config.inbound.listen != previous.config.inbound.listen {
                errors.push(
                    "inbound.listen",
                    format!(
                        "cannot change at runtime (listening on {}); restart or upgrade to move it",
                        previous.config.inbound.listen
                    ),
                );
            }
            if config.admin_listen != previous.config.admin_listen {
                errors.push(
                    "admin.listen",
                    format!(
                        "cannot change at runtime (listening on {}); restart or upgrade to move it",
                        previous.config.admin_listen
                    ),
                );
            }
            // The egress listener is bound at start too: adding egress,
            // moving it or removing it would otherwise be acknowledged and
            // not served as written.
            let egress_listen =
                |c: &meshgate_xds::config::Config| c.egress.as_ref().map(|e| e.listen);
            if egress_listen(&config) != egress_listen(&previous.config) {
                let now = match egress_listen(&previous.config) {
                    Some(addr) => format!("listening on {addr}"),
                    None => "egress is off".to_string(),
                };
                errors.push(
                    "egress.listen",
                    format!("cannot change at runtime ({now}); restart or upgrade to change it"),
                );
            }
            if config.inbound.tls.is_some() != previous.config.inbound.tls.is_some() {
                errors.push(
                    "inbound.tls",
                    "turning TLS on or off needs a restart or upgrade; certificates can be rotated",
                );
            }
            if !errors.is_empty() {
                return Err(errors);
            }
        }

        let tls = match &config.inbound.tls {
            Some(t) => Some(
                crate::tls::acceptor(t)
                    .map_err(|e| FieldErrors::from(FieldError::new("inbound.tls", e)))?,
            ),
            None => None,
        };
        let redis = match &config.redis {
            Some(r) => Some(self.redis_for(r)?),
            None => None,
        };
        let upstream = if previous.upstream.settings == PoolSettings::app(&config.app) {
            previous.upstream.clone()
        } else {
            Arc::new(Upstream::new(PoolSettings::app(&config.app)))
        };
        let version = config
            .version
            .clone()
            .unwrap_or_else(|| content_version(&spec));
        let cx = BuildCx {
            state: &self.state,
            redis,
        };
        // State the new config no longer asks for (a removed instance, a
        // renamed rule) is dropped once it serves.
        self.state.begin_build();
        let snapshot = Arc::new(Snapshot::build(config, version, source, upstream, tls, &cx));
        self.current.store(snapshot.clone());
        self.state.finish_build();
        Ok(snapshot)
    }

    /// The shared Redis handle; reused while the `redis:` section stays the same.
    fn redis_for(&self, options: &RedisOptions) -> Result<Arc<RedisStore>, FieldErrors> {
        let mut guard = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = guard.as_ref() {
            if store.options() == options {
                return Ok(store.clone());
            }
        }
        let field = match options.target {
            RedisTarget::Single { .. } => "redis.url",
            RedisTarget::Cluster { .. } => "redis.cluster",
            RedisTarget::Sentinel { .. } => "redis.sentinel",
        };
        let store = Arc::new(
            RedisStore::with_options(options.clone())
                .map_err(|e| FieldErrors::from(FieldError::new(field, e.to_string())))?,
        );
        *guard = Some(store.clone());
        Ok(store)
    }
}

/// A version label derived from the content, for configs that carry none.
pub fn content_version(spec: &ConfigSpec) -> String {
    let json = serde_json::to_vec(spec).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &json);
    format!("sha256:{}", &hex::encode(digest.as_ref())[..12])
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EGRESS: &str = "egress:\n  listen: \"127.0.0.1:15001\"\n  destinations:\n    - host: wallet.internal\n      upstream: 127.0.0.1:1\n      key: { id: orders, alg: hmac-sha256, secret_base64: \"c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=\" }\n";

    fn spec(inbound: &str, extra: &str) -> ConfigSpec {
        let yaml = format!(
            "inbound: {{ listen: \"{inbound}\" }}\napp: {{ address: \"127.0.0.1:8080\" }}\n{extra}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n"
        );
        serde_yaml::from_str(&yaml).expect("yaml")
    }

    fn store_with(extra: &str) -> ConfigStore {
        let store = ConfigStore::new(std::env::temp_dir(), Arc::new(State::new())).expect("store");
        store
            .apply(
                spec("127.0.0.1:15006", extra),
                ConfigSource::File("test".into()),
            )
            .map(|_| ())
            .expect("first config");
        store
    }

    /// The fields a reload to `inbound` + `extra` is refused with; the last
    /// good config keeps serving.
    fn refused_fields(store: &ConfigStore, inbound: &str, extra: &str) -> Vec<String> {
        let version = store.load().version.clone();
        let errors = store
            .apply(spec(inbound, extra), ConfigSource::File("test".into()))
            .err()
            .expect("refused");
        assert_eq!(store.load().version, version);
        errors.0.into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn bound_addresses_cannot_change_on_reload() {
        let store = store_with(EGRESS);
        assert!(
            store
                .apply(
                    spec("127.0.0.1:15006", EGRESS),
                    ConfigSource::File("test".into())
                )
                .is_ok(),
            "the same addresses apply"
        );
        let inbound = "127.0.0.1:15006";
        assert_eq!(
            refused_fields(&store, inbound, ""),
            ["egress.listen"],
            "egress removed"
        );
        let moved = EGRESS.replace("127.0.0.1:15001", "127.0.0.1:15002");
        assert_eq!(refused_fields(&store, inbound, &moved), ["egress.listen"]);
        assert_eq!(
            refused_fields(&store, "127.0.0.1:15007", EGRESS),
            ["inbound.listen"]
        );
        let admin = format!("{EGRESS}admin: {{ listen: \"127.0.0.1:15999\" }}\n");
        assert_eq!(refused_fields(&store, inbound, &admin), ["admin.listen"]);

        // started without egress: a reload cannot turn it on
        let store = store_with("");
        assert_eq!(
            refused_fields(&store, inbound, EGRESS),
            ["egress.listen"],
            "egress added"
        );
    }
}
