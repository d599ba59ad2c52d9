//! The `nrdot` command line: what each verb takes. Verbs that run nrdot live in [`crate::run`],
//! verbs that only read files in [`crate::offline`], verbs that talk to a running nrdot in
//! [`crate::client`].
//!
//! Exit codes: 0 success; 1 the thing checked or asked for failed (invalid config, unhealthy,
//! refused change, failed expectation); 2 an input could not be read or the admin API could not
//! be reached; 3 the admin API refused the credentials.
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::api::{DurationArg, PercentArg};
use clap::{Args as ClapArgs, Parser, Subcommand};

/// nrdot: edge proxy and deployment control plane in one binary.
#[derive(Debug, Parser)]
#[command(name = "nrdot", version, about)]
pub struct Args {
    /// How to reach a running nrdot (client verbs).
    #[command(flatten)]
    pub client: ClientOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Where the admin API is and how to authenticate; flags win over the environment, which wins
/// over the credentials file in the state directory.
#[derive(Debug, Clone, ClapArgs)]
pub struct ClientOpts {
    /// Admin API base URL.
    #[arg(long, global = true, env = "NRDOT_ADMIN_URL")]
    pub admin_url: Option<String>,
    /// Bearer token.
    #[arg(long, global = true, env = "NRDOT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// State directory: where `demo` keeps its state (default ./nrdot-state), and where client
    /// verbs find `admin-credentials` (default: ./nrdot-state if present, else /var/lib/nrdot).
    #[arg(long, global = true)]
    pub state_dir: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Top-level verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and the admin API from a configuration file.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
        /// Environment overlay to apply (`[environment.NAME]`).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Run a self-contained demo: proxy, admin API and two demo upstreams behind a 90/10 split.
    Demo {
        /// Proxy listen address.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Admin API listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin: SocketAddr,
    },
    /// Configuration: check files, change the running configuration, look at versions.
    Config {
        /// Configuration verb.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Backends of the running nrdot.
    Backend {
        /// Backend verb.
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Health of the running nrdot.
    Health {
        /// Health verb.
        #[command(subcommand)]
        command: HealthCommand,
    },
    /// Print the binary version and the running configuration version; `history` lists versions.
    Version {
        /// `history`: every configuration version, newest first.
        #[command(subcommand)]
        command: Option<VersionCommand>,
        /// Print only this binary's version, one line, without asking the running nrdot.
        #[arg(long)]
        short: bool,
    },
    /// Check this machine for nrdot: ports, fd limit, kernel tuning, state dir, certificates,
    /// configuration. One line per finding with its fix; exit 1 on a failure.
    Doctor {
        /// Configuration file (TOML).
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
        /// Exit 1 on warnings (tuning) too.
        #[arg(long)]
        strict: bool,
    },
    /// Backups of the state directory, configuration and certificates: encrypted, verified.
    Backup {
        /// Backup verb.
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Replace the running nrdot's binary without closing a port or dropping a request.
    Upgrade {
        /// The new binary (default: the path the running one was started from, which a
        /// package or `install.sh` has overwritten).
        #[arg(long, conflicts_with = "rollback")]
        binary: Option<PathBuf>,
        /// Go back to the binary that served before the current one.
        #[arg(long)]
        rollback: bool,
    },
    /// The cluster (`[cluster]`): every node, its region, the version it serves.
    Cluster {
        /// `status`.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The audit log: last entries, or `verify` its hash chain.
    Audit {
        /// `verify`.
        #[command(subcommand)]
        command: Option<AuditCommand>,
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Progressive delivery: canary, blue-green, rolling.
    Rollout {
        /// Rollout verb.
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Credentials.
    Admin {
        /// Admin verb.
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// `nrdot cluster …`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every live node: region, version served, lagging behind the cluster's current one.
    Status,
    /// Import a stopped single node's state directory (versions, credentials, disabled
    /// backends, audit chain, rollouts) into the empty etcd prefix its `[cluster]` names.
    Init {
        /// Configuration file with the `[cluster]` section; names the state directory.
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
    },
}

/// `nrdot backup …`
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Write one archive (AES-256-GCM; the key file is created on first use).
    Create {
        /// Configuration file: names the state directory and the TLS files, and is archived.
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
        /// Directory the archive goes to.
        #[arg(long, short, default_value = crate::backup_cmd::DEFAULT_DIR)]
        output: PathBuf,
        /// Key file (64 hex digits, mode 0600).
        #[arg(long, default_value = crate::backup_cmd::DEFAULT_KEY)]
        key_file: PathBuf,
    },
    /// The archives in a directory, newest first.
    List {
        /// Directory.
        #[arg(long, short, default_value = crate::backup_cmd::DEFAULT_DIR)]
        output: PathBuf,
    },
    /// Remove archives by the retention: older than --keep-days, except the newest --keep-last.
    Prune {
        /// Directory.
        #[arg(long, short, default_value = crate::backup_cmd::DEFAULT_DIR)]
        output: PathBuf,
        /// Keep archives younger than this many days (0: age keeps none).
        #[arg(long, default_value_t = 30)]
        keep_days: u64,
        /// Keep the newest this many whatever their age.
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
    },
    /// Decrypt and check every component of an archive; changes nothing.
    Verify {
        /// The archive.
        archive: PathBuf,
        /// Key file.
        #[arg(long, default_value = crate::backup_cmd::DEFAULT_KEY)]
        key_file: PathBuf,
    },
    /// Rebuild a stopped node's state directory from an archive.
    Restore {
        /// The archive.
        archive: PathBuf,
        /// Configuration file naming the state directory (or pass --state-dir).
        #[arg(long, short, default_value = "/etc/nrdot/nrdot.toml")]
        config: PathBuf,
        /// Key file.
        #[arg(long, default_value = crate::backup_cmd::DEFAULT_KEY)]
        key_file: PathBuf,
        /// Say what would be restored, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Against a running node, through its admin API (admin role): the archive's
        /// configuration becomes a new version and its drained backends are drained again.
        #[arg(long, conflicts_with = "dry_run")]
        live: bool,
    },
}

/// Error-rate triggers of a guarded blue-green switch or of rolling batches.
#[derive(Debug, Clone, ClapArgs)]
pub struct Triggers {
    /// Error rate that fires (default 5%).
    #[arg(long)]
    pub max_error_rate: Option<String>,
    /// Window of the error rate (default 5m; a guard must be at least this long).
    #[arg(long)]
    pub error_for: Option<String>,
    /// Fewest requests a window needs to judge (default 20).
    #[arg(long)]
    pub min_requests: Option<u64>,
}

impl Triggers {
    /// As the triggers of a rollout request.
    pub fn request(&self) -> crate::api::Triggers {
        crate::api::Triggers {
            max_error_rate: self.max_error_rate.clone().map(PercentArg::Text),
            error_for: self.error_for.clone().map(DurationArg::Text),
            min_requests: self.min_requests,
            ..Default::default()
        }
    }
}

/// `nrdot config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check files; print every problem as file:line:column.
    Validate {
        /// Configuration files (TOML); `--file a.toml b.toml` checks each.
        #[arg(long, short, num_args = 1.., required = true)]
        file: Vec<PathBuf>,
        /// Check only this environment overlay (default: the base and every overlay).
        #[arg(long)]
        environment: Option<String>,
    },
    /// Warn about valid but risky settings; exit 0 unless --strict.
    Lint {
        /// Configuration files (TOML).
        #[arg(long, short, num_args = 1.., required = true)]
        file: Vec<PathBuf>,
        /// Environment overlay.
        #[arg(long)]
        environment: Option<String>,
        /// Exit 1 when there are warnings.
        #[arg(long)]
        strict: bool,
    },
    /// Run request → expected route/pool cases against the compiled table.
    Test {
        /// Configuration file (TOML; default ./nrdot.toml when present, else
        /// /etc/nrdot/nrdot.toml).
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Environment overlay.
        #[arg(long)]
        environment: Option<String>,
        /// Cases file (TOML, `[[case]]` with request, headers, expect_route, expect_pool,
        /// expect_status; default: `cases/ENVIRONMENT.toml`, else `cases.toml`, beside the
        /// configuration file).
        #[arg(long)]
        cases: Option<PathBuf>,
        /// One request, e.g. 'GET http://shop.example.com/api/items'.
        #[arg(long)]
        request: Option<String>,
        /// Header of that request, 'name: value' (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Expected route name.
        #[arg(long)]
        expect_route: Option<String>,
        /// Expected pool name.
        #[arg(long)]
        expect_pool: Option<String>,
    },
    /// Validate a file and make it the running configuration, as a new version.
    Apply {
        /// Configuration file (TOML).
        #[arg(long, short)]
        file: PathBuf,
        /// Why (goes into the version and the audit log).
        #[arg(long, short)]
        message: String,
        /// Only apply if this version is the current one.
        #[arg(long)]
        if_match: Option<u64>,
        /// Watch the pools the change touches for this long; a trigger reverts it (exit 1).
        #[arg(long)]
        guard: Option<String>,
    },
    /// Make an old version current again (as a new version).
    Rollback {
        /// Version id.
        version: u64,
        /// Why.
        #[arg(long, short)]
        message: Option<String>,
        /// Watch the pools the rollback touches for this long; a trigger reverts it (exit 1).
        #[arg(long)]
        guard: Option<String>,
    },
    /// Unified diff between two versions (B defaults to the current one).
    Diff {
        /// From version.
        a: u64,
        /// To version.
        b: Option<u64>,
    },
}

/// `nrdot backend …`
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Every backend with admin state, health, in-flight and totals.
    List,
    /// Put a server back into rotation.
    Enable {
        /// `pool/address`, `address`, or host.
        #[arg(long)]
        server: String,
    },
    /// Drain a server: no new requests, in-flight ones complete.
    Disable {
        /// `pool/address`, `address`, or host.
        #[arg(long)]
        server: String,
        /// Wait until drained (optionally at most this long, default 300s); exit 1 if not drained.
        #[arg(long, num_args = 0..=1, default_missing_value = "300s")]
        wait: Option<String>,
    },
}

/// `nrdot health …`
#[derive(Debug, Subcommand)]
pub enum HealthCommand {
    /// Exit 0 when healthy; with --server, when that server answers.
    Check {
        /// `pool/address`, `address`, or host.
        #[arg(long)]
        server: Option<String>,
    },
}

/// `nrdot version …`
#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Every configuration version, newest first: id, time, author, message.
    History {
        /// Only ids.
        #[arg(long, short)]
        quiet: bool,
        /// List the binaries of past upgrades instead (kept under `state_dir/bin/`).
        #[arg(long)]
        binaries: bool,
    },
}

/// `nrdot audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 1 when an entry was edited, removed or reordered.
    Verify,
}

/// `nrdot admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Replace a token's secret; the admin token's new secret also goes to the credentials file.
    RotateToken {
        /// Token name.
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// Create a token for a role (viewer, operator, admin).
    CreateToken {
        /// Token name.
        #[arg(long)]
        name: String,
        /// Role.
        #[arg(long)]
        role: String,
    },
    /// Change the dashboard password (12 characters or more; Argon2-hashed, audited). Asks on
    /// the terminal without echo, or reads one line from stdin with --password-stdin.
    SetPassword {
        /// Read the new password from stdin (for scripts) instead of asking.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// `nrdot rollout …`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Raise a pool's share of a route step by step, rolling back automatically on bad numbers.
    Canary {
        /// Route whose split changes.
        #[arg(long)]
        route: String,
        /// The new version's pool.
        #[arg(long)]
        to: String,
        /// The stable pool (default: the route's other pool with the most weight).
        #[arg(long)]
        from: Option<String>,
        /// Canary weights per step, percent.
        #[arg(long, default_value = "10,50,100")]
        steps: String,
        /// Observation time per step.
        #[arg(long, default_value = "30m")]
        interval: String,
        /// Change only the nodes of this cluster region (widen with the next region, then
        /// without --region).
        #[arg(long)]
        region: Option<String>,
        /// Roll back above this error rate…
        #[arg(long, default_value = "5%")]
        max_error_rate: String,
        /// …measured over this window.
        #[arg(long, default_value = "5m")]
        error_for: String,
        /// Roll back above this p99 latency (same window).
        #[arg(long)]
        max_p99: Option<String>,
        /// Roll back below this share of healthy canary servers…
        #[arg(long, default_value = "50%")]
        min_healthy: String,
        /// …held this long.
        #[arg(long, default_value = "2m")]
        healthy_for: String,
        /// Pause for approval above this memory use…
        #[arg(long, default_value = "90%")]
        memory_threshold: String,
        /// …held this long.
        #[arg(long, default_value = "10m")]
        memory_for: String,
        /// Requests a window needs before its error rate counts.
        #[arg(long, default_value_t = 20)]
        min_requests: u64,
        /// Wait until the rollout ends; exit 0 only when it completed.
        #[arg(long)]
        follow: bool,
    },
    /// Switch a route to a new pool once it is healthy; keep the old pool for a while.
    BlueGreen {
        /// Route to switch.
        #[arg(long)]
        route: String,
        /// The new pool.
        #[arg(long)]
        to: String,
        /// The old pool (default: the route's other pool with the most weight).
        #[arg(long)]
        from: Option<String>,
        /// Switch only the nodes of this cluster region.
        #[arg(long)]
        region: Option<String>,
        /// How long the old pool stays configured (and `rollback` stays instant).
        #[arg(long, default_value = "24h")]
        keep_old: String,
        /// Shell command that must exit 0 before traffic moves (smoke or load tests);
        /// `{pool}` is the new pool's name.
        #[arg(long)]
        check: Option<String>,
        /// After the switch, watch the new pool this long; a trigger switches back at once.
        #[arg(long)]
        guard: Option<String>,
        /// The guard's triggers.
        #[command(flatten)]
        triggers: Triggers,
        /// Wait until the rollout ends.
        #[arg(long)]
        follow: bool,
    },
    /// Upgrade a pool's servers a batch at a time: drain, run the hook, wait for health, enable.
    Rolling {
        /// Pool to upgrade.
        #[arg(long)]
        pool: String,
        /// Servers per batch.
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Shell command run per server; `{server}` is its address.
        #[arg(long)]
        hook: String,
        /// Longest wait for a drain, a hook, or a health check.
        #[arg(long, default_value = "300s")]
        wait: String,
        /// Pause between batches (the playbook's `sleep 300`).
        #[arg(long, default_value = "0s")]
        pause: String,
        /// Triggers judged on the pool between batches.
        #[command(flatten)]
        triggers: Triggers,
        /// Wait until the rollout ends.
        #[arg(long)]
        follow: bool,
    },
    /// Pass the current step now.
    Promote {
        /// Rollout id.
        id: u64,
    },
    /// Stop progressing (traffic stays as it is).
    Pause {
        /// Rollout id.
        id: u64,
    },
    /// Continue after `pause`.
    Resume {
        /// Rollout id.
        id: u64,
    },
    /// Stop and send everyone to the old side at once.
    Abort {
        /// Rollout id.
        id: u64,
    },
    /// Continue after a trigger that asked for approval.
    Approve {
        /// Rollout id.
        id: u64,
    },
    /// Send everyone back to the old side (also inside a blue-green keep window).
    Rollback {
        /// Rollout id.
        id: u64,
    },
    /// One rollout: phase, step, weight, analysis, events.
    Status {
        /// Rollout id.
        id: u64,
    },
    /// Every rollout.
    List,
}
