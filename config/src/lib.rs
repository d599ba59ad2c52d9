//! nrdot-config: the shared vocabulary of nrdot. It owns the TOML schema, validation that reports
//! every problem with file:line:column, the validated [`Config`], the compiled [`RouteTable`] with
//! its weighted [`Split`], and the one [`swap`] cell through which the data plane reads it.
//!
//! It must never open a socket or start a runtime: the fuzzers and the benches reach everything
//! here as pure data.
//!
//! `nrdot.toml --Config::from_toml--> Config --RouteTable::compile--> RouteTable --Publisher::publish--> Reader::load`
#![warn(missing_docs)]

pub mod document;
pub mod edit;
pub mod error;
pub mod lint;
pub mod model;
pub mod split;
pub mod state;
pub mod swap;
pub mod table;
pub mod units;
mod validate;

pub use error::{ConfigError, ValidationError};
pub use model::{
    AccessLog, AccessLogFormat, Agent, Backup, CertFiles, CheckKind, Cluster, Config, EtcdAccess,
    Guard, HashKey, HeaderMatch, HealthCheck, Lb, Limits, Listener, ListenerTls, LogFormat,
    Logging, Outlier, Pool, RetryOn, Route, Server, SniCert, SplitEntry, Sticky, UpstreamTls,
    WhenUnavailable,
};
pub use split::Split;
pub use table::{RouteTable, Target};

impl Config {
    /// Parses and validates a whole file, reporting every problem, not only the first.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        validate::config(text, None)
    }

    /// Like [`Config::from_toml`], with the `[environment.<name>]` overlay applied.
    pub fn from_toml_env(text: &str, environment: Option<&str>) -> Result<Config, ConfigError> {
        validate::config(text, environment)
    }

    /// Like [`Config::from_toml_env`], on a node of region `region`: its `[region.<name>]`
    /// pools and routes replace the base's of the same name. A region without a section reads
    /// the base.
    pub fn from_toml_at(
        text: &str,
        environment: Option<&str>,
        region: Option<&str>,
    ) -> Result<Config, ConfigError> {
        validate::config_at(
            text,
            validate::Place {
                env: environment,
                region,
            },
        )
    }

    /// SHA-256 of the exact text a config was read from, hex encoded: versions are identified
    /// by what the operator wrote, so a diff and a checksum always talk about the same bytes.
    pub fn checksum(text: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}
