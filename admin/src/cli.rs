//! The `nrdot` command line: what each verb takes. The verbs themselves live in [`crate::run`].
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// nrdot: edge proxy and deployment control plane in one binary.
#[derive(Debug, Parser)]
#[command(name = "nrdot", version, about)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin API from a configuration file.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
    },
    /// Run a self-contained demo: proxy, admin API and two demo upstreams behind a 90/10 split.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Admin API listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin: SocketAddr,
        /// State directory (created if missing).
        #[arg(long, default_value = "./nrdot-state")]
        state_dir: PathBuf,
    },
    /// Configuration tools.
    Config {
        /// Configuration verb.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the version.
    Version,
}

/// `nrdot config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a file; print every problem as file:line:column. Exit 0 valid, 1 invalid, 2 unreadable.
    Validate {
        /// Configuration file (TOML).
        #[arg(long, short)]
        file: PathBuf,
    },
}
