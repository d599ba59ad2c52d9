//! `nrdot cluster init`: the way from one node to a cluster. Imports a stopped node's state
//! directory (its versions, credentials, disabled backends, audit chain and rollouts) into an
//! empty etcd prefix, so the first node of the cluster starts with its whole history.
use std::path::Path;
use std::sync::Arc;

use crate::audit::SharedLog;
use crate::cluster::Etcd;
use crate::store::{encode, LocalStore, Store, StoreError};

/// What was imported.
#[derive(Debug, Default)]
pub struct Imported {
    /// Versions copied.
    pub versions: usize,
    /// The current one.
    pub current: Option<u64>,
    /// Audit entries.
    pub audit: u64,
    /// Rollout records.
    pub rollouts: usize,
    /// Backends disabled.
    pub disabled: usize,
    /// Whether credentials were copied.
    pub credentials: bool,
}

/// Why nothing (or not everything) was imported.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The prefix already holds a cluster.
    #[error("{prefix} in etcd already holds a cluster (current version {current}); init imports only into an empty prefix")]
    NotEmpty {
        /// Prefix.
        prefix: String,
        /// Its current version.
        current: String,
    },
    /// The state directory has nothing to import.
    #[error("{0} holds no configuration versions; start nrdot there once, or start the cluster from its file")]
    Empty(String),
    /// etcd or the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Files of the state directory.
    #[error("{0}")]
    Io(String),
}

/// Imports `state_dir` under `settings`' prefix. The `current` key is written last: a run cut
/// short leaves no cluster, and can be run again.
pub fn import(state_dir: &Path, settings: &nrdot_config::Cluster) -> Result<Imported, InitError> {
    let etcd = Etcd::connect(settings)?;
    if let Some(current) = etcd.value("current")? {
        return Err(InitError::NotEmpty {
            prefix: settings.prefix.clone(),
            current: String::from_utf8_lossy(&current).into_owned(),
        });
    }
    let local = LocalStore::open(state_dir)?;
    let current = local.current()?;
    let metas = local.list()?;
    if metas.is_empty() {
        return Err(InitError::Empty(state_dir.display().to_string()));
    }
    let mut out = Imported {
        versions: metas.len(),
        current,
        ..Imported::default()
    };
    for meta in &metas {
        let v = local.get(meta.id)?;
        let bytes = encode(&v).map_err(InitError::Io)?;
        etcd.put(&format!("versions/{:08}", meta.id), bytes)?;
    }
    if let Ok(bytes) = std::fs::read(state_dir.join("auth.json")) {
        etcd.put("auth", bytes)?;
        out.credentials = true;
    }
    let disabled =
        crate::control::load_disabled(state_dir).map_err(|e| InitError::Io(e.to_string()))?;
    out.disabled = disabled.len();
    crate::cluster::put_disabled(&etcd, &disabled)?;
    let log = state_dir.join("audit.log");
    if log.exists() {
        out.audit = SharedLog::new(Arc::clone(&etcd)).import(&log)?;
    }
    out.rollouts = import_rollouts(&etcd, state_dir)?;
    if let Some(id) = current {
        etcd.put("current", id.to_string().into_bytes())?;
    }
    Ok(out)
}

fn import_rollouts(etcd: &Etcd, state_dir: &Path) -> Result<usize, InitError> {
    let Ok(dir) = std::fs::read_dir(state_dir.join("rollouts")) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in dir.flatten() {
        let path = e.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().and_then(|x| x.to_str()) != Some("json") || stem.parse::<u64>().is_err()
        {
            continue;
        }
        let bytes =
            std::fs::read(&path).map_err(|e| InitError::Io(format!("{}: {e}", path.display())))?;
        etcd.put(&format!("rollouts/{stem}"), bytes)?;
        n += 1;
    }
    Ok(n)
}
