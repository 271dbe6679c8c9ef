//! The config file: loaded at start, then watched and re-applied on change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshgate_filters::{FieldError, FieldErrors};
use meshgate_xds::config::{parse_yaml, ConfigSpec};
use notify::{RecursiveMode, Watcher};

use crate::config_store::ConfigStore;
use crate::snapshot::ConfigSource;

/// Reads and parses a YAML config file.
pub fn read(path: &Path) -> Result<ConfigSpec, FieldErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        FieldErrors::from(FieldError::new(
            "(file)",
            format!("cannot read {}: {e}", path.display()),
        ))
    })?;
    parse_yaml(&text)
}

/// Applies the file once.
pub fn apply(store: &ConfigStore, path: &Path) -> Result<String, FieldErrors> {
    let spec = read(path)?;
    store
        .apply(spec, ConfigSource::File(path.display().to_string()))
        .map(|s| s.version.clone())
}

/// Edits come as bursts of events (write, truncate, rename); wait this long
/// after the last one before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches the file's directory (editors and ConfigMaps replace files rather
/// than writing them in place) and re-applies the file after each change.
pub fn watch(store: Arc<ConfigStore>, path: PathBuf) -> notify::Result<()> {
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Kubernetes swaps a `..data` symlink; any event in the directory may change the file.
            let relevant = event.paths.iter().any(|p| {
                p.file_name() == file_name.as_deref() || p.to_string_lossy().contains("..data")
            });
            if relevant && !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (and unwatched) with this task
        let mut last = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Debounce: wait until no event arrived for DEBOUNCE.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let current = std::fs::read(&path).ok();
            if current.is_none() || current == last {
                continue;
            }
            last = current;
            match apply(&store, &path) {
                Ok(version) => {
                    tracing::info!(%version, file = %path.display(), "config file reloaded")
                }
                Err(errors) => {
                    tracing::error!(file = %path.display(), errors = %errors, "config file rejected; the previous config keeps serving")
                }
            }
        }
    });
    Ok(())
}
