//! The single writer of the routing table. Every change (startup, SIGHUP, later the admin API)
//! goes through [`Control`]: validate, compile against the previous table so long-lived state
//! carries over, then publish with one pointer store. On any error the running table stays live.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nrdot_config::swap::{self, Publisher, Reader};
use nrdot_config::{Config, RouteTable};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is invalid; every problem, one per line.
    #[error("invalid configuration, keeping the running one:\n{0}")]
    Invalid(String),
    /// This process was not started from a file.
    #[error("no configuration file to reload")]
    NoFile,
}

struct State {
    generation: u64,
    checksum: String,
}

/// Owns the table cell and the configuration it was compiled from.
pub struct Control {
    publisher: Publisher,
    path: Option<PathBuf>,
    state: Mutex<State>,
}

impl Control {
    /// Compiles the first table (generation 1).
    pub fn new(path: Option<PathBuf>, text: &str, config: Config) -> Control {
        let table = RouteTable::compile(Arc::new(config), 1, None);
        let (publisher, _) = swap::channel(table);
        metrics::gauge!("nrdot_table_generation").set(1.0);
        Control {
            publisher,
            path,
            state: Mutex::new(State {
                generation: 1,
                checksum: Config::checksum(text),
            }),
        }
    }

    /// A reader for a worker.
    pub fn reader(&self) -> Reader {
        self.publisher.reader()
    }

    /// The table in effect.
    pub fn current(&self) -> Arc<RouteTable> {
        self.publisher.current()
    }

    /// SHA-256 of the configuration text in effect.
    pub fn checksum(&self) -> String {
        self.state
            .lock()
            .expect("control state poisoned")
            .checksum
            .clone()
    }

    /// Re-reads the file this process was started with and publishes it if valid.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let path = self.path.as_deref().ok_or(ReloadError::NoFile)?;
        let result = self.reload_from(path);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("nrdot_config_reloads_total", "result" => outcome).increment(1);
        metrics::gauge!("nrdot_config_last_reload_success").set(if result.is_ok() {
            1.0
        } else {
            0.0
        });
        result
    }

    fn reload_from(&self, path: &Path) -> Result<u64, ReloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReloadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::from_toml(&text)
            .map_err(|e| ReloadError::Invalid(e.render(&path.display().to_string())))?;
        self.publish(&text, config)
    }

    /// Publishes an already validated configuration as the next generation.
    pub fn publish(&self, text: &str, config: Config) -> Result<u64, ReloadError> {
        let mut state = self.state.lock().expect("control state poisoned");
        let previous = self.publisher.current();
        if previous.config.listeners != config.listeners
            || previous.config.worker_threads != config.worker_threads
            || previous.config.admin_bind != config.admin_bind
        {
            tracing::warn!(
                "listener, worker_threads and admin changes take effect at the next restart"
            );
        }
        let generation = state.generation + 1;
        let table = RouteTable::compile(Arc::new(config), generation, Some(&previous));
        self.publisher.publish(table);
        state.generation = generation;
        state.checksum = Config::checksum(text);
        metrics::gauge!("nrdot_table_generation").set(generation as f64);
        metrics::counter!("nrdot_table_swaps_total").increment(1);
        Ok(generation)
    }
}
