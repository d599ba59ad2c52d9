//! The validated configuration. Values of these types only come out of validation, so every
//! consumer may assume the invariants the validator checks (defined pools, non-zero split totals,
//! unique names, parseable addresses).
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole validated configuration file. Non-exhaustive so that, outside this crate, a `Config`
/// can only come out of validation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Worker threads of the data plane; `None` means one per core.
    pub worker_threads: Option<usize>,
    /// Where versions, runtime state, audit log and credentials live.
    pub state_dir: PathBuf,
    /// How long in-flight requests may run after SIGTERM before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Admin API bind address.
    pub admin_bind: SocketAddr,
    /// TLS for the admin API (optional).
    pub admin_tls: Option<CertFiles>,
    /// A dashboard session unused this long ends (`[admin] session_idle`, default 30 minutes).
    pub admin_session_idle: Duration,
    /// Client-facing listeners.
    pub listeners: Vec<Listener>,
    /// Limits and timeouts towards clients.
    pub limits: Limits,
    /// Access log settings.
    pub access_log: AccessLog,
    /// nrdot's own log (`[log]`).
    pub log: Logging,
    /// Scheduled backups (`[backup]`); none without the section.
    pub backup: Option<Backup>,
    /// `[guard]`: how changes are watched after they go live.
    pub guard: Guard,
    /// `[metrics]`: which routes get series of their own.
    pub metrics: Metrics,
    /// `[cluster]`: versions, audit and runtime state shared through etcd; `None` alone.
    pub cluster: Option<Cluster>,
    /// `[store] keep_versions`: the version store prunes its oldest versions beyond this
    /// many (0: never), sparing the current one and any not yet in a backup.
    pub keep_versions: usize,
    /// Peers whose X-Forwarded-* headers are believed and appended to.
    pub trusted_proxies: Vec<Cidr>,
    /// Upstream pools, in file order.
    pub pools: Vec<Pool>,
    /// Routes, in file order.
    pub routes: Vec<Route>,
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// Socket address to bind.
    pub bind: SocketAddr,
    /// TLS (HTTPS) settings; plaintext when absent.
    pub tls: Option<ListenerTls>,
    /// Wake the proxy for a new connection only once its first bytes have arrived (Linux
    /// `TCP_DEFER_ACCEPT`, nginx's `listen … deferred`). HTTP and TLS clients speak first, so
    /// this saves one wakeup per connection and keeps silent connections out of the proxy;
    /// one that stays silent is accepted after about a second and then meets the header
    /// timeout as before. Default on.
    pub defer_accept: bool,
}

/// Certificates of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Served when no SNI certificate matches (or the client sends no SNI).
    pub default: CertFiles,
    /// Certificates chosen by SNI.
    pub sni: Vec<SniCert>,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A certificate served for some names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Names (exact or `*.suffix`); empty means the certificate's own DNS names.
    pub names: Vec<String>,
    /// The files.
    pub files: CertFiles,
}

/// TLS towards a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA bundle to verify servers with; the system's roots when absent.
    pub ca_file: Option<PathBuf>,
    /// SNI and verified name; the server's host when absent.
    pub server_name: Option<String>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<CertFiles>,
}

/// Client-side limits and timeouts; the defaults are nginx's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted (413 beyond). nginx: client_max_body_size 1m; ours 10m.
    pub client_max_body_size: u64,
    /// Time allowed to send a request head once it has started.
    pub client_header_timeout: Duration,
    /// Longest gap between two reads of a request body.
    pub client_body_timeout: Duration,
    /// How long an idle keep-alive connection is kept open.
    pub keepalive_timeout: Duration,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: u64,
    /// Longest request target (414 beyond).
    pub max_request_line: u64,
    /// Largest header section (431 beyond).
    pub max_header_size: u64,
    /// Most header fields in one request (431 beyond).
    pub max_headers: usize,
    /// How long an upgraded connection (WebSocket) may pass no byte either way before it is
    /// closed (HAProxy's `timeout tunnel`; nginx applies `proxy_read_timeout`, 60 s).
    pub tunnel_idle_timeout: Duration,
    /// Client connections per worker (nginx `worker_connections`); 0 is unlimited. At the
    /// limit the oldest idle keep-alive connection is closed, else new ones wait in the backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_max_body_size: 10 * 1024 * 1024,
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(65),
            keepalive_requests: 1000,
            max_request_line: 8 * 1024,
            max_header_size: 32 * 1024,
            max_headers: 100,
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_connections: 0,
        }
    }
}

/// nrdot's own log: level, destination, format (the access log is separate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    pub level: String,
    /// File to append to (reopened on SIGUSR1); `-` is standard error.
    pub file: String,
    /// Line format.
    pub format: LogFormat,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "info".into(),
            file: "-".into(),
            format: LogFormat::Text,
        }
    }
}

/// Guarded changes: after a configuration change goes live, the pools it touched are watched
/// with the canary's triggers, and a trigger reverts the change. Thresholds are the
/// playbook's; `window` set makes every API change guarded.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Guard every API change for this long (none: only changes that ask).
    pub window: Option<Duration>,
    /// Revert when the error rate over `error_for` exceeds this (0.05).
    pub max_error_rate: f64,
    /// Window of the error rate (5 minutes).
    pub error_for: Duration,
    /// A window with fewer requests says nothing (20).
    pub min_requests: u64,
    /// Revert when fewer than this share of a pool's servers are healthy (0.5)…
    pub min_healthy: f64,
    /// …for this long (2 minutes).
    pub healthy_for: Duration,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            window: None,
            max_error_rate: 0.05,
            error_for: Duration::from_secs(300),
            min_requests: 20,
            min_healthy: 0.5,
            healthy_for: Duration::from_secs(120),
        }
    }
}

/// `[metrics]`: per-pool and per-server series are always exported; per-route series
/// multiply with the routing table (five per route and pool of its split), so a table of
/// `[cluster]`: several nodes sharing one configuration history through etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// etcd endpoints, `http://host:port` (or `https://`).
    pub etcd: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// This node's region (`eu-west`), for region-scoped rollouts.
    pub region: String,
    /// Key prefix in etcd, so several clusters can share one etcd (default `/nrdot`).
    pub prefix: String,
    /// Credentials and TLS for etcd.
    pub access: EtcdAccess,
}

/// How a node proves itself to etcd: a user (its password in a file, so it never lands in the
/// shared configuration history) and TLS files for `https://` endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdAccess {
    /// etcd user.
    pub user: Option<String>,
    /// File holding its password (first line).
    pub password_file: Option<PathBuf>,
    /// CA that signed etcd's server certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for etcd's `--client-cert-auth` (PEM).
    pub cert_file: Option<PathBuf>,
    /// Its key (PEM).
    pub key_file: Option<PathBuf>,
}

/// 100,000 routes would make every scrape megabytes long and Prometheus slow. They are opt-in,
/// by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metrics {
    /// Every route gets `nrdot_requests_total{route, pool, class}`.
    pub per_route: bool,
    /// Routes whose name matches one of these patterns get it (`*` matches any run of
    /// characters: `"shop*"`, `"*-api"`, `"api"`).
    pub routes: Vec<String>,
}

impl Metrics {
    /// Whether route `name` gets series of its own.
    pub fn exports(&self, name: &str) -> bool {
        self.per_route || self.routes.iter().any(|p| glob_match(p, name))
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters (none included)
/// and every other character itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole name
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Default of `[store] keep_versions`.
pub const DEFAULT_KEEP_VERSIONS: usize = 1000;

/// Scheduled backups, run by the admin thread, and their retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Time between two backups.
    pub interval: Duration,
    /// Directory the archives go to.
    pub dir: PathBuf,
    /// Archives older than this many days are removed (0: never by age).
    pub keep_days: u64,
    /// The newest this many archives are kept whatever their age (0: no such floor).
    pub keep_last: usize,
    /// The encryption key (created on first use).
    pub key_file: PathBuf,
}

impl Default for Backup {
    fn default() -> Self {
        Backup {
            interval: Duration::from_secs(24 * 3600),
            dir: PathBuf::from("/var/backups/nrdot"),
            keep_days: 30,
            keep_last: 0,
            key_file: PathBuf::from("/etc/nrdot/backup.key"),
        }
    }
}

/// Format of nrdot's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Access log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// Whether a line is written per request.
    pub enabled: bool,
    /// File to append to; `-` is standard output.
    pub path: String,
    /// Line format.
    pub format: AccessLogFormat,
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// nginx's `combined`.
    Combined,
    /// One JSON object per line.
    Json,
}

/// An IPv4 or IPv6 network, for trusted proxy lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: std::net::IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::*;
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map(V4).unwrap_or(V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (V4(a), V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (V6(a), V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

/// Load-balancing policy inside a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lb {
    /// Smooth weighted round robin (nginx's default).
    RoundRobin,
    /// Weighted random.
    Random,
    /// Fewest in-flight requests of two random choices.
    LeastRequests,
    /// Consistent hashing (Maglev) on `hash_key`: a key keeps its server while the server set
    /// changes, and adding a server moves about 1/N of the keys.
    Hash,
}

/// What a consistent-hash pool hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower case).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's address.
    ClientIp,
}

/// What a pool does when no server is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnavailable {
    /// Answer 503 (default).
    FailClosed,
    /// Ignore health and ejections and use every enabled server.
    FailOpen,
}

/// Which failures a request is retried on (on a different server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be established (nothing was sent): always safe.
    pub connect_failure: bool,
    /// The connection broke after the request was sent: idempotent requests only.
    pub reset: bool,
    /// These response statuses: idempotent requests only.
    pub statuses: Vec<u16>,
}

/// Active health check of every server of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP request or TCP connect.
    pub kind: CheckKind,
    /// Time between checks of one server.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive successes that make a server healthy.
    pub rise: u32,
    /// Consecutive failures that make it unhealthy.
    pub fall: u32,
    /// Random extra delay of up to this much per check, so checks do not align.
    pub jitter: Duration,
    /// Whether a new server takes traffic before its first check result (`unknown`) or only
    /// after `rise` successes (`unhealthy`).
    pub initial_unhealthy: bool,
}

/// The kind of active check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// An HTTP request; healthy when the status is in range and the body contains `body`.
    Http {
        /// Method.
        method: String,
        /// Path and query.
        path: String,
        /// Host header (default: the server's address).
        host: Option<String>,
        /// Inclusive range of healthy statuses.
        status: (u16, u16),
        /// Text the body must contain.
        body: Option<String>,
    },
    /// A TCP connect.
    Tcp,
}

/// Passive health: ejecting servers that fail live traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive connect failures or 5xx answers that eject a server.
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times as long.
    pub base_ejection: Duration,
    /// At most this share of the pool is ejected at once.
    pub max_ejection_percent: u32,
}

/// HAProxy-style agent check: the server reports `drain`, `up`, `down` or a weight percentage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Path fetched over HTTP on the server (or on `port`).
    pub path: String,
    /// Port of the agent, if not the server's own.
    pub port: Option<u16>,
    /// Time between reports.
    pub interval: Duration,
    /// Time one report may take.
    pub timeout: Duration,
}

/// A named group of upstream servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// Policy choosing a server per request.
    pub lb: Lb,
    /// Idle keep-alive connections kept per worker and server.
    pub keepalive: usize,
    /// How long an idle upstream connection is kept.
    pub keepalive_idle_timeout: Duration,
    /// Time allowed to establish a TCP connection.
    pub connect_timeout: Duration,
    /// Time allowed from sending the request until the response head arrives, and between two
    /// reads of the response body (nginx's `proxy_read_timeout`).
    pub response_timeout: Duration,
    /// Key of `lb = "hash"`.
    pub hash_key: Option<HashKey>,
    /// A server that (re)joins ramps up from a trickle to its full share over this time.
    pub slow_start: Duration,
    /// Behaviour when no server is available.
    pub when_unavailable: WhenUnavailable,
    /// Most requests in flight (= upstream connections in use) per server; beyond, 503 at
    /// once. 0: unlimited.
    pub max_connections: u32,
    /// Retries per request, each on another server.
    pub retries: u32,
    /// What is retried.
    pub retry_on: RetryOn,
    /// Retries in flight may be at most this percentage of requests in flight (at least 10).
    pub retry_budget_percent: u32,
    /// Active health check.
    pub health_check: Option<HealthCheck>,
    /// Passive health check.
    pub outlier: Option<Outlier>,
    /// Agent check.
    pub agent: Option<Agent>,
    /// TLS to the servers (`https` upstreams).
    pub tls: Option<UpstreamTls>,
    /// Servers, in file order.
    pub servers: Vec<Server>,
    /// `prefer_region = true`: a cluster node sends to the servers of its own region while
    /// at least half of them are available, and to every server when fewer are.
    pub prefer_region: bool,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `host:port`, as written (an IP literal or a DNS name).
    pub address: String,
    /// Relative share of the pool's traffic; 0 keeps it configured but idle.
    pub weight: u32,
    /// The cluster region it is in, for pools that prefer their node's region.
    pub region: Option<String>,
}

/// One route: which requests it takes and where they go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// Hosts matched (exact, or `*.suffix`); empty matches any host.
    pub hosts: Vec<String>,
    /// Path prefix; the longest matching prefix wins.
    pub path: String,
    /// Optional header condition.
    pub header: Option<HeaderMatch>,
    /// Weighted pools. Weights need not sum to 100; they are relative.
    pub split: Vec<SplitEntry>,
    /// Keeps one client on one side of the split.
    pub sticky: Option<Sticky>,
    /// Header that forces a pool of the split by name, for testers.
    pub override_header: Option<String>,
    /// Cookie that forces a pool of the split by name, for testers.
    pub override_cookie: Option<String>,
    /// Also retry non-idempotent methods and requests with bodies (buffered up to 1 MiB so
    /// they can be sent again).
    pub retry_unsafe: bool,
    /// On plaintext listeners, answer 308 to the same URL over HTTPS.
    pub https_redirect: bool,
    /// `Strict-Transport-Security` value added to responses over HTTPS.
    pub hsts: Option<String>,
}

/// A header condition on a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderMatch {
    /// Header name, lower case.
    pub name: String,
    /// Exact value required; `None` means present with any value.
    pub value: Option<String>,
}

/// One pool of a route's split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitEntry {
    /// Pool name (validated to exist).
    pub pool: String,
    /// Relative weight.
    pub weight: u32,
}

/// Where the sticky key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A cookie; nrdot sets it when the client has none.
    Cookie(String),
    /// A request header; requests without it are split by weight.
    Header(String),
}
