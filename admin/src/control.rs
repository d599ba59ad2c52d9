//! The single writer. Every change goes through [`Control`]: startup, SIGHUP, `PUT
//! /api/v2/config`, rollbacks, backend drains. A configuration change is validated, stored as a
//! new version, compiled against the previous table (so long-lived state carries over) and
//! published with one pointer store; on any error nothing changes and the running table stays
//! live. Operational state (disabled backends) is persisted beside the versions and re-applied
//! to every table.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use nrdot_config::state::Health;
use nrdot_config::swap::{self, Publisher, Reader};
use nrdot_config::{Config, RouteTable, ValidationError};
use serde::{Deserialize, Serialize};

use crate::audit::{Audit, AuditError, Event};
use crate::durable;
use crate::store::{LocalStore, Store, StoreError, Version, VersionMeta};

/// Why a control-plane change was refused. Nothing changed in every case.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid configuration ({} problem(s))", .0.len())]
    Invalid(Vec<ValidationError>),
    /// `If-Match` named another version than the current one.
    #[error("version conflict: current version is {current}")]
    Conflict {
        /// The version in effect.
        current: u64,
    },
    /// No backend matched the selector.
    #[error("no backend matches {0:?}")]
    NoBackend(String),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A certificate, key or CA file named by the configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The version store failed or is damaged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log could not be written (the change itself may have been made).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Runtime state could not be written.
    #[error("runtime state {path}: {source}")]
    Runtime {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl AdminError {
    /// The word the audit log uses for this outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            AdminError::Invalid(_) => "invalid",
            AdminError::Conflict { .. } => "conflict",
            AdminError::NoBackend(_) => "not_found",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::Tls(_) => "invalid",
            _ => "error",
        }
    }
}

/// Errors of starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Audit log trouble.
    #[error("{0}; verify with `nrdot audit verify`, or move the log aside to start a new chain")]
    Audit(#[from] AuditError),
    /// The configuration to serve is invalid.
    #[error("invalid configuration:\n{0}")]
    Invalid(String),
    /// Other disk trouble.
    #[error("{0}")]
    Io(String),
}

#[derive(Serialize, Deserialize, Default)]
struct Runtime {
    disabled: BTreeSet<String>,
    checksum: String,
}

#[derive(Serialize, Deserialize)]
struct Source {
    checksum: String,
}

struct State {
    generation: u64,
    version: VersionMeta,
    disabled: BTreeSet<String>,
}

/// A backend as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackendInfo {
    /// `pool/address`.
    pub id: String,
    /// Pool name.
    pub pool: String,
    /// `host:port`.
    pub address: String,
    /// Configured weight.
    pub weight: u32,
    /// `enabled`, `draining` (disabled with requests in flight) or `disabled`.
    pub admin_state: String,
    /// `unknown` (no check, or no result yet), `healthy` or `unhealthy`.
    pub health: String,
    /// Ejected by passive health checking right now.
    pub ejected: bool,
    /// Share of its weight the server's agent reports (100 without an agent).
    pub agent_percent: u8,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests sent since start.
    pub requests: u64,
    /// Failures since start.
    pub failures: u64,
}

/// Owns the table cell, the version store, the audit log and runtime state.
pub struct Control {
    publisher: Publisher,
    store: Box<dyn Store>,
    audit: Audit,
    state_dir: PathBuf,
    file: Option<PathBuf>,
    environment: Option<String>,
    state: Mutex<State>,
    events: Mutex<std::collections::VecDeque<serde_json::Value>>,
    certs: std::sync::OnceLock<Arc<crate::certs::Certs>>,
    /// `[cluster]`: the etcd connection the store uses, for the watch and the node registry.
    cluster: Option<(Arc<crate::cluster::Etcd>, nrdot_config::Cluster)>,
    /// In a cluster: what this node keeps from its own file.
    local: Option<crate::cluster::Local>,
}

/// Events kept for `GET /api/v2/events`.
const EVENTS_KEPT: usize = 1000;

fn runtime_checksum(disabled: &BTreeSet<String>) -> String {
    durable::sha256_hex(
        disabled
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    )
}

impl Control {
    /// Opens the state directory and decides what to serve: the store's current version, unless
    /// the store is empty or the configuration file changed since it was last imported, in which
    /// case the file becomes a new version. A damaged store or audit log stops the start.
    ///
    /// `file_config` is `file_text` already validated by the caller (who needed its state
    /// directory): validating a large file again would cost the time and, while both are held,
    /// the memory of a second copy.
    pub fn start(
        state_dir: &Path,
        file: Option<PathBuf>,
        file_text: &str,
        file_config: Config,
        environment: Option<String>,
    ) -> Result<(Control, Option<VersionMeta>), StartError> {
        durable::ensure_dir(state_dir)
            .map_err(|e| StartError::Io(format!("state_dir {}: {e}", state_dir.display())))?;
        let (cluster, store, audit) = open_stores(state_dir, &file_config)?;
        let source_path = state_dir.join("versions").join("source.json");
        let file_checksum = durable::sha256_hex(file_text.as_bytes());
        let imported = std::fs::read(&source_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Source>(&b).ok())
            .map(|s| s.checksum);
        let label = file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in configuration".into());
        let region = file_config.cluster.as_ref().map(|c| c.region.clone());
        let validate = |text: &str| {
            Config::from_toml_at(text, environment.as_deref(), region.as_deref())
                .map_err(|e| StartError::Invalid(e.render(&label).trim_end().to_string()))
        };
        // The caller read the file without this node's region overlay.
        let regional = |text: &str| region.is_some() && text.contains("region");
        let mut created = None;
        let node_local = crate::cluster::Local::of(&file_config);
        // In a cluster the shared history wins: the file only seeds an empty one.
        let in_cluster = cluster.is_some();
        let shared = match &cluster {
            Some((_, c)) => cluster_current(store.as_ref(), state_dir, c)?,
            None => None,
        };
        let current = match &shared {
            Some(v) => Some(v.meta.id),
            None if in_cluster => None,
            None => store.current()?,
        };
        let (meta, config) = match current {
            Some(id) if in_cluster || imported.as_deref() == Some(file_checksum.as_str()) => {
                let v = match shared {
                    Some(v) => v,
                    None => store.get(id)?,
                };
                let mut config = if v.meta.checksum == file_checksum && !regional(&v.content) {
                    file_config
                } else {
                    drop(file_config);
                    validate(&v.content)?
                };
                if let Some(local) = &node_local {
                    local.apply(&mut config);
                    crate::cluster::remember(state_dir, &v);
                }
                (v.meta, config)
            }
            current => {
                let config = match regional(file_text) {
                    true => validate(file_text)?,
                    false => file_config,
                };
                let message = match current {
                    None => format!("initial configuration from {label}"),
                    Some(_) => format!("{label} changed since it was last loaded"),
                };
                let meta = store.create("file", &message, file_text, None)?;
                if in_cluster {
                    crate::cluster::remember(state_dir, &Version::of(&meta, file_text));
                }
                created = Some(meta.clone());
                (meta, config)
            }
        };
        let bytes = serde_json::to_vec(&Source {
            checksum: file_checksum,
        })
        .unwrap_or_default();
        let _ = durable::ensure_dir(&state_dir.join("versions"));
        durable::write(&source_path, &bytes, 0o600)
            .map_err(|e| StartError::Io(format!("{}: {e}", source_path.display())))?;
        let disabled = start_disabled(state_dir, cluster.as_ref().map(|(e, _)| e.as_ref()))?;
        let table = RouteTable::compile(Arc::new(config), 1, None);
        apply_disabled(&table, &disabled);
        let (publisher, _) = swap::channel(table);
        metrics::gauge!("nrdot_table_generation").set(1.0);
        metrics::gauge!("nrdot_config_version").set(meta.id as f64);
        if let Some(m) = &created {
            audit.record(loaded(m, label))?;
        }
        Ok((
            Control {
                publisher,
                store,
                cluster,
                local: node_local,
                audit,
                state_dir: state_dir.to_path_buf(),
                file,
                environment,
                state: Mutex::new(State {
                    generation: 1,
                    version: meta,
                    disabled,
                }),
                events: Mutex::new(std::collections::VecDeque::new()),
                certs: std::sync::OnceLock::new(),
            },
            created,
        ))
    }

    /// The etcd connection and `[cluster]` settings, when this node is in a cluster.
    pub fn cluster(&self) -> Option<&(Arc<crate::cluster::Etcd>, nrdot_config::Cluster)> {
        self.cluster.as_ref()
    }

    /// Validates `text` as this node reads it: its environment, and in a cluster its region.
    pub fn parse(&self, text: &str) -> Result<Config, AdminError> {
        let region = self.cluster.as_ref().map(|(_, c)| c.region.as_str());
        Config::from_toml_at(text, self.environment.as_deref(), region)
            .map_err(|e| AdminError::Invalid(e.problems().to_vec()))
    }

    /// Remembers the version a cluster node serves (its last known good copy).
    fn remember(&self, meta: &VersionMeta, content: &str) {
        if self.cluster.is_some() {
            crate::cluster::remember(&self.state_dir, &Version::of(meta, content));
        }
    }

    /// What stays this node's own whatever version of the shared history it serves: its
    /// state directory, its `[cluster]` identity and where it listens ([`crate::cluster::Local`]).
    fn localize(&self, config: &mut Config) {
        config.state_dir = self.state_dir.clone();
        if let Some(local) = &self.local {
            local.apply(config);
        }
    }

    /// Serves version `id` of the shared history when it is newer than the one served: what
    /// another node stored. Not audited here (the node that made the change audited it).
    pub fn adopt(&self, id: u64) -> Result<bool, AdminError> {
        let mut state = self.state.lock().expect("control poisoned");
        if id <= state.version.id {
            return Ok(false);
        }
        let v = self.store.get(id)?;
        let mut config = self.parse(&v.content)?;
        self.localize(&mut config);
        if let Some(certs) = self.certs.get() {
            let prepared = crate::certs::prepare(&config).map_err(AdminError::Tls)?;
            certs.commit(prepared, &config);
        }
        let from = state.version.id;
        self.remember(&v.meta, &v.content);
        self.publish_locked(&mut state, config, v.meta);
        drop(state);
        self.event(
            "config.adopted",
            "config",
            &format!("version {id} from the cluster (was {from})"),
        );
        Ok(true)
    }

    /// Makes the cluster's set of disabled backends this node's (saved locally too, so a
    /// restart without etcd keeps draining them).
    pub fn adopt_disabled(&self, disabled: BTreeSet<String>) {
        let mut state = self.state.lock().expect("control poisoned");
        if state.disabled == disabled {
            return;
        }
        if let Err(e) = self.save_runtime(&disabled) {
            tracing::error!("cannot save the cluster's disabled backends: {e}");
        }
        apply_disabled(&self.current(), &disabled);
        let n = disabled.len();
        state.disabled = disabled;
        drop(state);
        self.event(
            "backends.adopted",
            "backends",
            &format!("{n} backend(s) disabled cluster-wide"),
        );
    }

    /// Records a runtime event (health transitions, ejections, agent changes, rollout steps):
    /// logged, counted, and kept for `GET /api/v2/events`.
    pub fn event(&self, kind: &str, target: &str, detail: &str) {
        tracing::info!(event = kind, target, "{detail}");
        metrics::counter!("nrdot_events_total", "kind" => kind.to_string()).increment(1);
        let mut events = self.events.lock().expect("events poisoned");
        if events.len() >= EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(serde_json::json!({
            "time": crate::store::now_rfc3339(),
            "kind": kind,
            "target": target,
            "detail": detail,
        }));
    }

    /// The most recent events, oldest first.
    pub fn events(&self, limit: usize) -> Vec<serde_json::Value> {
        let events = self.events.lock().expect("events poisoned");
        events
            .iter()
            .skip(events.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Hands over the TLS material loaded at start; later changes reload it. The table is
    /// published again with the pools' TLS client configurations.
    pub fn attach_certs(&self, certs: Arc<crate::certs::Certs>) {
        let upstream = certs.upstream();
        let _ = self.certs.set(certs);
        // At start, before the data plane runs: the same generation, now with the material.
        let state = self.state.lock().expect("control poisoned");
        let previous = self.publisher.current();
        let config = Arc::clone(&previous.config);
        let mut table = RouteTable::compile(config, state.generation, Some(&previous));
        table.attach_tls(&upstream);
        apply_disabled(&table, &state.disabled);
        self.publisher.publish(table);
    }

    /// Reloads the TLS files the current configuration names (a changed certificate, SIGHUP,
    /// `POST /api/v2/tls/reload`). Listener certificates swap in their stores; the pools'
    /// client configurations arrive with a new table generation, so the data plane sees one
    /// publication per change.
    pub fn reload_certs(&self) -> Result<(), String> {
        let Some(certs) = self.certs.get() else {
            return Ok(());
        };
        let config = self.current().config.clone();
        certs.reload(&config)?;
        self.republish();
        Ok(())
    }

    /// Publishes the current configuration again as a new generation (same version).
    fn republish(&self) {
        let mut state = self.state.lock().expect("control poisoned");
        let config = (*self.current().config).clone();
        let meta = state.version.clone();
        self.publish_locked(&mut state, config, meta);
    }

    /// The TLS material, once attached.
    pub fn certs(&self) -> Option<&Arc<crate::certs::Certs>> {
        self.certs.get()
    }

    /// A reader for a worker.
    pub fn reader(&self) -> Reader {
        self.publisher.reader()
    }

    /// The table in effect.
    pub fn current(&self) -> Arc<RouteTable> {
        self.publisher.current()
    }

    /// The version in effect.
    pub fn version(&self) -> VersionMeta {
        self.state.lock().expect("control poisoned").version.clone()
    }

    /// The environment overlay this process serves, if any.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// The version store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Validates `text`, stores it as a new version and publishes it. `if_match` guards against
    /// lost updates: it must name the version in effect.
    pub fn apply(
        &self,
        text: &str,
        actor: &str,
        message: &str,
        if_match: Option<u64>,
    ) -> Result<VersionMeta, AdminError> {
        let mut state = self.state.lock().expect("control poisoned");
        let before = state.version.id;
        let result = self.apply_locked(&mut state, text, actor, message, if_match);
        let after = state.version.id;
        self.audit_result(
            actor,
            "config.apply",
            "config",
            before,
            after,
            &result,
            message,
        )?;
        result
    }

    /// Audits a configuration change, successful or refused.
    #[allow(clippy::too_many_arguments)]
    fn audit_result<T>(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        before: u64,
        after: u64,
        result: &Result<T, AdminError>,
        message: &str,
    ) -> Result<(), AuditError> {
        self.audit.record(Event {
            actor: actor.to_string(),
            action: action.into(),
            target: target.into(),
            version_before: Some(before),
            version_after: Some(after),
            outcome: result
                .as_ref()
                .map(|_| "ok")
                .unwrap_or_else(|e| e.outcome())
                .into(),
            detail: match result {
                Ok(_) => message.to_string(),
                Err(e) => e.to_string(),
            },
        })
    }

    fn apply_locked(
        &self,
        state: &mut State,
        text: &str,
        actor: &str,
        message: &str,
        if_match: Option<u64>,
    ) -> Result<VersionMeta, AdminError> {
        if let Some(want) = if_match {
            if want != state.version.id {
                return Err(AdminError::Conflict {
                    current: state.version.id,
                });
            }
        }
        if self.cluster.is_some() {
            // Every node reads the change in its own region: it must be valid in each.
            Config::from_toml_env(text, self.environment.as_deref())
                .map_err(|e| AdminError::Invalid(e.problems().to_vec()))?;
        }
        let mut config = self.parse(text)?;
        self.localize(&mut config);
        // Certificates are loaded before anything changes: a bad file refuses the version.
        let tls = match self.certs.get() {
            Some(_) => Some(crate::certs::prepare(&config).map_err(AdminError::Tls)?),
            None => None,
        };
        let meta = self
            .store
            .create(actor, message, text, Some(state.version.id))?;
        if let (Some(certs), Some(prepared)) = (self.certs.get(), tls) {
            certs.commit(prepared, &config);
        }
        self.remember(&meta, text);
        let keep = config.keep_versions;
        self.publish_locked(state, config, meta.clone());
        self.prune_versions(keep);
        Ok(meta)
    }

    /// `[store] keep_versions`: drops the oldest versions that a backup already holds.
    fn prune_versions(&self, keep: usize) {
        let backed_up = crate::backup::last_backup(&self.state_dir).map_or(0, |b| b.config_version);
        match self.store.prune(keep, backed_up) {
            Ok(removed) if !removed.is_empty() => self.event(
                "store.pruned",
                "versions",
                &format!(
                    "versions {}..={} removed (keep_versions = {keep}); they are in the backups",
                    removed[0],
                    removed[removed.len() - 1]
                ),
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("cannot prune old versions: {e}"),
        }
    }

    fn publish_locked(&self, state: &mut State, config: Config, meta: VersionMeta) {
        let previous = self.publisher.current();
        let sockets = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.name.clone(), l.bind, l.tls.is_some(), l.defer_accept))
                .collect::<Vec<_>>()
        };
        if sockets(&previous.config) != sockets(&config)
            || previous.config.worker_threads != config.worker_threads
            || previous.config.admin_bind != config.admin_bind
        {
            tracing::warn!(
                "listener, worker_threads and admin changes take effect at the next restart"
            );
        }
        let generation = state.generation + 1;
        let mut table = RouteTable::compile(Arc::new(config), generation, Some(&previous));
        if let Some(certs) = self.certs.get() {
            table.attach_tls(&certs.upstream());
        }
        apply_disabled(&table, &state.disabled);
        self.publisher.publish(table);
        state.generation = generation;
        state.version = meta;
        metrics::gauge!("nrdot_table_generation").set(generation as f64);
        metrics::gauge!("nrdot_config_version").set(state.version.id as f64);
        metrics::counter!("nrdot_table_swaps_total").increment(1);
    }

    /// Makes the content of version `id` current again, as a new version.
    pub fn rollback(
        &self,
        id: u64,
        actor: &str,
        message: Option<&str>,
    ) -> Result<VersionMeta, AdminError> {
        let mut state = self.state.lock().expect("control poisoned");
        let before = state.version.id;
        let message = message
            .map(str::to_string)
            .unwrap_or_else(|| format!("rollback to version {id}"));
        let result = self
            .store
            .get(id)
            .map_err(AdminError::from)
            .and_then(|v| self.apply_locked(&mut state, &v.content, actor, &message, None));
        let after = state.version.id;
        self.audit_result(
            actor,
            "config.rollback",
            &format!("version {id}"),
            before,
            after,
            &result,
            &message,
        )?;
        result
    }

    /// SIGHUP: re-reads the file this process was started with. An unchanged file is a no-op, so
    /// a reload never undoes changes made through the API since the file was last loaded.
    pub fn reload(&self) -> Result<Option<VersionMeta>, AdminError> {
        let Some(path) = self.file.clone() else {
            return Err(AdminError::BadRequest(
                "no configuration file to reload".into(),
            ));
        };
        let result = self.reload_from(&path);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("nrdot_config_reloads_total", "result" => outcome).increment(1);
        metrics::gauge!("nrdot_config_last_reload_success").set(if result.is_ok() {
            1.0
        } else {
            0.0
        });
        result
    }

    fn reload_from(&self, path: &Path) -> Result<Option<VersionMeta>, AdminError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AdminError::BadRequest(format!("cannot read {}: {e}", path.display())))?;
        let checksum = durable::sha256_hex(text.as_bytes());
        let source_path = self.state_dir.join("versions").join("source.json");
        let imported = std::fs::read(&source_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Source>(&b).ok())
            .map(|s| s.checksum);
        if imported.as_deref() == Some(checksum.as_str()) {
            return Ok(None);
        }
        let meta = self
            .apply(
                &text,
                "sighup",
                &format!("reload of {}", path.display()),
                None,
            )
            .map_err(|e| match e {
                AdminError::Invalid(p) => AdminError::BadRequest(
                    nrdot_config::ConfigError::Invalid(p).render(&path.display().to_string()),
                ),
                other => other,
            })?;
        let bytes = serde_json::to_vec(&Source { checksum }).unwrap_or_default();
        durable::write(&source_path, &bytes, 0o600).map_err(|source| AdminError::Runtime {
            path: source_path,
            source,
        })?;
        Ok(Some(meta))
    }

    /// Every backend of the table in effect.
    pub fn backends(&self) -> Vec<BackendInfo> {
        let table = self.current();
        table
            .pools
            .iter()
            .flat_map(|p| {
                p.backends.iter().map(move |b| {
                    let s = &b.state;
                    let in_flight = s.in_flight.load(Ordering::Relaxed);
                    BackendInfo {
                        id: format!("{}/{}", p.config.name, s.address),
                        pool: p.config.name.clone(),
                        address: s.address.to_string(),
                        weight: b.weight,
                        admin_state: match (s.enabled.load(Ordering::Relaxed), in_flight) {
                            (true, _) => "enabled",
                            (false, 0) => "disabled",
                            (false, _) => "draining",
                        }
                        .to_string(),
                        health: s.health().as_str().to_string(),
                        ejected: s.ejected(),
                        agent_percent: s.agent_percent(),
                        in_flight,
                        requests: s.requests.load(Ordering::Relaxed),
                        failures: s.failures.load(Ordering::Relaxed),
                    }
                })
            })
            .collect()
    }

    /// The configuration file this node was started with, if any.
    pub fn config_file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Each backend's active health, for a binary upgrade to carry over.
    pub fn health_snapshot(&self) -> Vec<(String, String)> {
        self.backends()
            .into_iter()
            .map(|b| (b.id, b.health.to_string()))
            .collect()
    }

    /// Sets health from a snapshot taken by the process this one replaces, so a backend that
    /// was failing stays out and a healthy one needs no new `rise` passes.
    pub fn restore_health(&self, snapshot: &[(String, String)]) {
        let by_id: std::collections::HashMap<&str, &str> = snapshot
            .iter()
            .map(|(id, h)| (id.as_str(), h.as_str()))
            .collect();
        let table = self.current();
        for p in &table.pools {
            for b in &p.backends {
                let id = format!("{}/{}", p.config.name, b.state.address);
                let h = match by_id.get(id.as_str()) {
                    Some(&"healthy") => Health::Healthy,
                    Some(&"unhealthy") => Health::Unhealthy,
                    _ => continue,
                };
                b.state.set_health(h);
            }
        }
    }

    /// Enables or disables every backend matching `selector` (`pool/address`, `address`, or a
    /// bare host), persists the admin state, and returns the ids changed.
    pub fn set_enabled(
        &self,
        selector: &str,
        enabled: bool,
        actor: &str,
    ) -> Result<Vec<String>, AdminError> {
        let mut state = self.state.lock().expect("control poisoned");
        let ids: Vec<String> = self
            .backends()
            .into_iter()
            .filter(|b| matches_selector(b, selector))
            .map(|b| b.id)
            .collect();
        let result = if ids.is_empty() {
            Err(AdminError::NoBackend(selector.to_string()))
        } else {
            let mut next = state.disabled.clone();
            for id in &ids {
                if enabled {
                    next.remove(id);
                } else {
                    next.insert(id.clone());
                }
            }
            // In a cluster the shared set goes first: every node follows it.
            let shared = match &self.cluster {
                Some((etcd, _)) => {
                    crate::cluster::put_disabled(etcd, &next).map_err(AdminError::from)
                }
                None => Ok(()),
            };
            shared.and_then(|()| {
                self.save_runtime(&next).map(|()| {
                    apply_disabled(&self.current(), &next);
                    state.disabled = next;
                    ids.clone()
                })
            })
        };
        let version = state.version.id;
        self.audit.record(Event {
            actor: actor.to_string(),
            action: if enabled {
                "backend.enable"
            } else {
                "backend.disable"
            }
            .into(),
            target: selector.to_string(),
            version_before: Some(version),
            version_after: Some(version),
            outcome: result
                .as_ref()
                .map(|_| "ok")
                .unwrap_or_else(|e| e.outcome())
                .into(),
            detail: match &result {
                Ok(ids) => ids.join(", "),
                Err(e) => e.to_string(),
            },
        })?;
        result
    }

    fn save_runtime(&self, disabled: &BTreeSet<String>) -> Result<(), AdminError> {
        save_runtime_in(&self.state_dir, disabled)
    }
}

/// Writes `state_dir/runtime.json` (the disabled backends, checksummed).
fn save_runtime_in(state_dir: &Path, disabled: &BTreeSet<String>) -> Result<(), AdminError> {
    let path = state_dir.join("runtime.json");
    let r = Runtime {
        disabled: disabled.clone(),
        checksum: runtime_checksum(disabled),
    };
    let bytes = serde_json::to_vec_pretty(&r).unwrap_or_default();
    durable::write(&path, &bytes, 0o600).map_err(|source| AdminError::Runtime { path, source })
}

/// Whether a backend answers to `selector`: its id, its address, or its host.
pub fn matches_selector(b: &BackendInfo, selector: &str) -> bool {
    b.id == selector
        || b.address == selector
        || b.address.rsplit_once(':').map(|(h, _)| h) == Some(selector)
}

/// The backends left disabled by the last run (`runtime.json`), checksum verified.
/// The audit event of a version made from the configuration file at start.
fn loaded(m: &VersionMeta, label: String) -> Event {
    Event {
        actor: m.author.clone(),
        action: "config.load".into(),
        target: label,
        version_before: m.parent,
        version_after: Some(m.id),
        outcome: "ok".into(),
        detail: m.message.clone(),
    }
}

/// A cluster node's etcd connection, the version store and the audit log.
type Stores = (
    Option<(Arc<crate::cluster::Etcd>, nrdot_config::Cluster)>,
    Box<dyn Store>,
    Audit,
);

/// The stores `file_config` asks for: local files, or etcd with `[cluster]`.
fn open_stores(state_dir: &Path, file_config: &Config) -> Result<Stores, StartError> {
    let cluster = match &file_config.cluster {
        Some(c) => Some((crate::cluster::Etcd::connect(c)?, c.clone())),
        None => None,
    };
    let store: Box<dyn Store> = match &cluster {
        Some((etcd, _)) => Box::new(crate::cluster::EtcdStore::new(Arc::clone(etcd), state_dir)),
        None => Box::new(LocalStore::open(state_dir)?),
    };
    let mut audit = Audit::open(state_dir)?;
    if let Some((etcd, _)) = &cluster {
        audit.share(crate::audit::SharedLog::new(Arc::clone(etcd)));
    }
    Ok((cluster, store, audit))
}

/// The backends disabled at start: this node's, or in a cluster the cluster's (kept locally
/// too; this node's copy while etcd is away).
fn start_disabled(
    state_dir: &Path,
    etcd: Option<&crate::cluster::Etcd>,
) -> Result<BTreeSet<String>, StartError> {
    let disabled = load_disabled(state_dir)?;
    let Some(Ok(Some(bytes))) = etcd.map(|e| e.value("runtime/disabled")) else {
        return Ok(disabled);
    };
    let shared: BTreeSet<String> = serde_json::from_slice(&bytes).unwrap_or_default();
    if shared != disabled {
        if let Err(e) = save_runtime_in(state_dir, &shared) {
            tracing::error!("cannot save the cluster's disabled backends: {e}");
        }
    }
    Ok(shared)
}

/// The cluster's current version (`None`: an empty cluster, which this node's file seeds), or,
/// while etcd cannot be reached, the version this node served last.
fn cluster_current(
    store: &dyn Store,
    state_dir: &Path,
    settings: &nrdot_config::Cluster,
) -> Result<Option<Version>, StartError> {
    let why = match store.current() {
        Ok(None) => return Ok(None),
        Ok(Some(id)) => return Ok(Some(store.get(id)?)),
        Err(StoreError::Unavailable(why)) => why,
        Err(e) => return Err(e.into()),
    };
    match crate::cluster::last_known_good(state_dir) {
        Some(v) => {
            tracing::warn!(
                "cannot reach etcd {:?} ({why}); serving this node's last known good version {} \
                 until it can",
                settings.etcd,
                v.meta.id
            );
            Ok(Some(v))
        }
        None => Err(StartError::Io(format!(
            "cannot reach etcd {:?} ({why}), and this node has no last known good version \
             (it never joined); a new cluster node needs etcd to start",
            settings.etcd
        ))),
    }
}

/// The backends disabled in `state_dir` (its `runtime.json`, checksum verified).
pub fn load_disabled(state_dir: &Path) -> Result<BTreeSet<String>, StartError> {
    let runtime_path = state_dir.join("runtime.json");
    match std::fs::read(&runtime_path) {
        Ok(b) => {
            let r: Runtime = serde_json::from_slice(&b).map_err(|e| {
                StartError::Io(format!("{} is damaged: {e}", runtime_path.display()))
            })?;
            if runtime_checksum(&r.disabled) != r.checksum {
                return Err(StartError::Io(format!(
                    "{} is damaged: checksum mismatch",
                    runtime_path.display()
                )));
            }
            Ok(r.disabled)
        }
        Err(_) => Ok(BTreeSet::new()),
    }
}

fn apply_disabled(table: &RouteTable, disabled: &BTreeSet<String>) {
    for p in &table.pools {
        for b in &p.backends {
            let id = format!("{}/{}", p.config.name, b.state.address);
            b.state.set_enabled(!disabled.contains(&id));
        }
    }
}
