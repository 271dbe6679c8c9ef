//! Config from the control plane: the xDS subscription, node-local fields,
//! and the state dir that lets a sidecar boot without the control plane.
//!
//! Every pushed config goes through the same `ConfigStore::apply` as a file.
//! Addresses are node-local (each pod binds its own ports and reaches its own
//! app), so `inbound.listen`, `admin.listen`, `admin.health_listen` and
//! `app.address` always come from the bootstrap config (the `--config` file,
//! or the defaults), never from the push.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshgate_xds::client::{ClientOptions, ClientTls};
use meshgate_xds::config::ConfigSpec;
use meshgate_xds::endpoints::parse_list;
use serde::{Deserialize, Serialize};

use crate::cli::XdsArgs;
use crate::config_store::ConfigStore;
use crate::snapshot::ConfigSource;

const STATE_FILE: &str = "xds-last-applied.json";

/// What the state dir keeps: the last config applied from xDS, as pushed.
#[derive(Debug, Serialize, Deserialize)]
struct SavedConfig {
    /// The replica that sent it.
    url: String,
    service: String,
    version: String,
    spec: ConfigSpec,
}

/// The node-local part of a config.
#[derive(Debug, Clone)]
pub struct LocalFields {
    inbound_listen: String,
    admin: meshgate_xds::config::AdminSpec,
    app_address: String,
}

impl LocalFields {
    pub fn of(spec: &ConfigSpec) -> Self {
        LocalFields {
            inbound_listen: spec.inbound.listen.clone(),
            admin: spec.admin.clone(),
            app_address: spec.app.address.clone(),
        }
    }

    pub fn apply_to(&self, mut spec: ConfigSpec) -> ConfigSpec {
        spec.inbound.listen = self.inbound_listen.clone();
        spec.admin = self.admin.clone();
        spec.app.address = self.app_address.clone();
        spec
    }
}

/// A configured, not yet started xDS source.
pub struct XdsSource {
    options: ClientOptions,
    local: LocalFields,
    state_file: Option<PathBuf>,
}

fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("meshgate-{}", std::process::id()))
}

impl XdsSource {
    /// `None` when `--xds` is not given. `bootstrap` is the spec from the
    /// `--config` file, if any.
    pub fn from_args(
        args: &XdsArgs,
        bootstrap: Option<&ConfigSpec>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(list) = &args.urls else {
            return Ok(None);
        };
        let service = args
            .service
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--xds needs --service"))?;
        let tls = match (&args.xds_ca, &args.xds_cert, &args.xds_key) {
            (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                domain: None,
            }),
            (None, None, None) => None,
            _ => anyhow::bail!("xDS TLS needs --xds-ca, --xds-cert and --xds-key together"),
        };
        // TLS and the token apply to every replica, so every URL is checked against them.
        let endpoints = parse_list(list, tls.is_some()).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("{}", lines.join("; "))
        })?;
        let mut options = ClientOptions::new(
            endpoints,
            args.node_id.clone().unwrap_or_else(default_node_id),
            service,
        );
        options.labels = args.labels.iter().cloned().collect();
        options.tls = tls;
        if let Some(path) = &args.xds_token_file {
            // Checked now so that a missing or empty file fails the start, not every reconnect.
            meshgate_xds::client::read_token_file(path)
                .map_err(|e| anyhow::anyhow!("--xds-token-file {e}"))?;
            options.token_file = Some(path.clone());
            for url in options
                .endpoints
                .iter()
                .filter(|u| !u.is_https() && !u.is_loopback())
            {
                tracing::warn!(endpoint = url.as_str(), "the xDS token goes in clear text to a control plane off this machine; use https");
            }
        }
        let default = ConfigSpec::default();
        Ok(Some(XdsSource {
            options,
            local: LocalFields::of(bootstrap.unwrap_or(&default)),
            state_file: args.state_dir.as_ref().map(|d| d.join(STATE_FILE)),
        }))
    }

    /// Applies the config saved by an earlier run, if there is one for this
    /// service; the control plane then need not resend that version.
    pub fn boot_from_state(&mut self, store: &ConfigStore) {
        let Some(path) = &self.state_file else { return };
        let saved: SavedConfig = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(saved) => saved,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable xDS state");
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read xDS state");
                return;
            }
        };
        if saved.service != self.options.service {
            tracing::warn!(saved = %saved.service, service = %self.options.service, "xDS state is for another service; ignored");
            return;
        }
        let spec = self.local.apply_to(saved.spec);
        match store.apply(spec, ConfigSource::StateDir(path.display().to_string())) {
            Ok(snapshot) => {
                tracing::info!(version = %snapshot.version, "booted from the xDS state dir");
                self.options.initial_version = Some(saved.version);
            }
            Err(e) => tracing::warn!(error = %e, "config in the xDS state dir no longer applies"),
        }
    }

    /// Starts the subscription on the current runtime.
    pub fn spawn(self, store: Arc<ConfigStore>) -> anyhow::Result<()> {
        if let Some(dir) = self.state_file.as_ref().and_then(|p| p.parent()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("--state-dir {}: {e}", dir.display()))?;
        }
        let XdsSource {
            options,
            local,
            state_file,
        } = self;
        let service = options.service.clone();
        // `endpoint`: the replica (and address) that sent this config.
        let apply = move |spec: ConfigSpec, endpoint: &str| -> Result<String, String> {
            let pushed = spec.clone();
            let spec = local.apply_to(spec);
            let snapshot = store
                .apply(spec, ConfigSource::Xds(endpoint.to_string()))
                .map_err(|e| e.to_string())?;
            if let Some(path) = &state_file {
                let saved = SavedConfig {
                    url: endpoint.to_string(),
                    service: service.clone(),
                    version: snapshot.version.clone(),
                    spec: pushed,
                };
                if let Err(e) = save(path, &saved) {
                    // Serving goes on; only a restart without the control plane is affected.
                    tracing::warn!(path = %path.display(), error = %e, "cannot save xDS state");
                }
            }
            Ok(snapshot.version.clone())
        };
        meshgate_xds::client::describe_metrics();
        tokio::spawn(meshgate_xds::client::run(options, apply));
        Ok(())
    }
}

/// Replaces the state file atomically; it holds secrets, so owner-only.
fn save(path: &Path, saved: &SavedConfig) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(saved).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_fields_override_pushed_addresses() {
        let mut local = ConfigSpec::default();
        local.inbound.listen = "127.0.0.1:1111".into();
        local.admin.listen = "127.0.0.1:2222".into();
        local.app.address = "127.0.0.1:3333".into();
        let mut pushed = ConfigSpec::default();
        pushed.inbound.listen = "0.0.0.0:15006".into();
        pushed.error_codes.insert("rate_limited".into(), 1029);
        let merged = LocalFields::of(&local).apply_to(pushed);
        assert_eq!(merged.inbound.listen, "127.0.0.1:1111");
        assert_eq!(merged.admin.listen, "127.0.0.1:2222");
        assert_eq!(merged.app.address, "127.0.0.1:3333");
        assert_eq!(merged.error_codes.get("rate_limited"), Some(&1029));
    }

    #[test]
    fn state_file_round_trips() {
        let dir = std::env::temp_dir().join(format!("meshgate-xds-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(STATE_FILE);
        let saved = SavedConfig {
            url: "http://127.0.0.1:1".into(),
            service: "orders".into(),
            version: "v3".into(),
            spec: ConfigSpec::default(),
        };
        save(&path, &saved).expect("save");
        let back: SavedConfig =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parse");
        assert_eq!(back.version, "v3");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
