//! Verbs that talk to a running nrdot through its admin API: `backend`, `health`, `version`,
//! `audit`, `admin`, and `config apply | rollback | diff`. Address and token come from flags,
//! then `NRDOT_ADMIN_URL`/`NRDOT_TOKEN`, then the state directory's `admin-credentials`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api;
use crate::rollout::{Phase, Rollout};

use crate::cli::ClientOpts;

/// Why a call did not produce an answer worth printing.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or URL trouble.
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Cause.
        why: String,
    },
    /// 401/403.
    #[error("the admin API refused the credentials ({0}); pass --token, set NRDOT_TOKEN, or point --state-dir at the directory holding admin-credentials")]
    Refused(StatusCode),
    /// The request could not be built.
    #[error("{0}")]
    Usage(String),
}

impl ClientError {
    /// The exit code for this failure.
    pub fn exit(&self) -> ExitCode {
        match self {
            ClientError::Refused(_) => ExitCode::from(3),
            _ => ExitCode::from(2),
        }
    }
}

/// A connection to one admin API.
pub struct Client {
    base: String,
    token: Option<String>,
    json: bool,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    rt: tokio::runtime::Runtime,
}

/// The state directory client verbs read credentials from.
pub fn default_state_dir(opts: &ClientOpts) -> PathBuf {
    if let Some(d) = &opts.state_dir {
        return d.clone();
    }
    let local = PathBuf::from("./nrdot-state");
    if local.join("admin-credentials").exists() {
        local
    } else {
        PathBuf::from("/var/lib/nrdot")
    }
}

impl Client {
    /// Resolves address and token.
    pub fn new(opts: &ClientOpts) -> Result<Client, ClientError> {
        let creds =
            crate::auth::read_credentials(&default_state_dir(opts).join("admin-credentials"))
                .unwrap_or_default();
        let base = opts
            .admin_url
            .clone()
            .or_else(|| creds.get("NRDOT_ADMIN_URL").cloned())
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
            .trim_end_matches('/')
            .to_string();
        let token = opts
            .token
            .clone()
            .or_else(|| creds.get("NRDOT_TOKEN").cloned());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let http = HttpClient::builder(TokioExecutor::new()).build_http();
        Ok(Client {
            base,
            token,
            json: opts.json,
            http,
            rt,
        })
    }

    /// Sends one call; returns status and JSON body (`Null` when not JSON).
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut b = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let body = match body {
            Some((ct, bytes)) => {
                b = b.header(header::CONTENT_TYPE, ct);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let req = b
            .body(body)
            .map_err(|e| ClientError::Usage(format!("bad admin URL {url}: {e}")))?;
        let unreachable = |why: String| ClientError::Unreachable {
            url: self.base.clone(),
            why,
        };
        let (status, bytes) = self.rt.block_on(async {
            let resp = if self.base.starts_with("https://") {
                tokio::time::timeout(Duration::from_secs(3600), https_request(req))
                    .await
                    .map_err(|_| unreachable("timed out".into()))?
                    .map_err(unreachable)?
            } else {
                tokio::time::timeout(Duration::from_secs(3600), self.http.request(req))
                    .await
                    .map_err(|_| unreachable("timed out".into()))?
                    .map_err(|e| unreachable(format!("{e}")))?
            };
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        })?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ClientError::Refused(status));
        }
        Ok((status, bytes))
    }

    /// An answer for `--json`: pretty-printed when it is JSON, else as it came.
    fn print_json(&self, body: &[u8]) {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => println!("{}", String::from_utf8_lossy(body)),
        }
    }
}

/// One request to an admin API over TLS, verified against the system roots plus the CA file
/// in `NRDOT_ADMIN_CA`, if set.
async fn https_request(
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let host = req.uri().host().unwrap_or("").to_string();
    let port = req.uri().port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Ok(ca) = std::env::var("NRDOT_ADMIN_CA") {
        let pem = std::fs::read(&ca).map_err(|e| format!("NRDOT_ADMIN_CA {ca}: {e}"))?;
        for c in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(c);
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(&host).map_err(|e| e.to_string())?,
    );
    parts.uri = pq
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    send.send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| e.to_string())
}

/// Encodes a path segment.
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}

/// A field for a table cell: `-` when absent.
fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |v| v.to_string())
}

fn short(sum: &str) -> &str {
    &sum[..12.min(sum.len())]
}

/// Reports a refused call with the server's reason; exit 1.
fn fail(status: StatusCode, body: &[u8]) -> ExitCode {
    let why = serde_json::from_slice::<api::ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| "request failed".into());
    eprintln!("nrdot: {status}: {why}");
    ExitCode::from(1)
}

/// An answer's body as `T`; a body of another shape is an error (exit 2).
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ExitCode> {
    serde_json::from_slice(body).map_err(|e| {
        eprintln!("nrdot: unexpected answer from the admin API: {e}");
        ExitCode::from(2)
    })
}

/// One call for a verb: `Ok(answer)` for the verb to print for humans, or `Err(exit code)`
/// when the call failed or `--json` already printed the answer.
fn request<T: DeserializeOwned>(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T, ExitCode> {
    let payload = body.map(|b| {
        (
            "application/json",
            serde_json::to_vec(b).unwrap_or_default(),
        )
    });
    let (status, body) = c.call(method, path, payload, &[]).map_err(|e| {
        eprintln!("nrdot: {e}");
        e.exit()
    })?;
    if !status.is_success() {
        return Err(fail(status, &body));
    }
    if c.json {
        c.print_json(&body);
        return Err(ExitCode::SUCCESS);
    }
    decode(&body)
}

/// [`request`] without a body.
fn get<T: DeserializeOwned>(c: &Client, path: &str) -> Result<T, ExitCode> {
    request(c, Method::GET, path, None::<&()>)
}

macro_rules! call_or_exit {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                eprintln!("nrdot: {e}");
                return e.exit();
            }
        }
    };
}

macro_rules! or_exit {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

/// `nrdot backend list`.
pub fn backend_list(c: &Client) -> ExitCode {
    let list: api::BackendList = or_exit!(get(c, "/api/v2/backends"));
    let rows: Vec<Vec<String>> = list
        .backends
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.pool.clone(),
                b.address.clone(),
                b.weight.to_string(),
                b.admin_state.clone(),
                b.health.clone(),
                b.in_flight.to_string(),
                b.requests.to_string(),
                b.failures.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "POOL",
            "ADDRESS",
            "WEIGHT",
            "STATE",
            "HEALTH",
            "IN-FLIGHT",
            "REQUESTS",
            "FAILURES",
        ],
        &rows,
    );
    ExitCode::SUCCESS
}

/// `nrdot backend enable|disable --server S [--wait [D]]`.
pub fn backend_set(c: &Client, server: &str, enable: bool, wait: Option<&str>) -> ExitCode {
    let mut path = format!(
        "/api/v2/backends/{}/{}",
        encode_segment(server),
        if enable { "enable" } else { "disable" }
    );
    if let Some(w) = wait {
        path.push_str(&format!("?wait={}", encode_segment(w)));
    }
    let (status, body) = call_or_exit!(c.call(Method::POST, &path, None, &[]));
    if !(status.is_success()) {
        return fail(status, &body);
    }
    let change: api::BackendChange = or_exit!(decode(&body));
    if c.json {
        c.print_json(&body);
    } else {
        for b in &change.backends {
            println!("{}: {} (in flight: {})", b.id, b.admin_state, b.in_flight);
        }
        if !enable {
            if change.drained {
                println!("drained");
            } else if wait.is_some() {
                println!("still draining at the deadline");
            } else {
                println!(
                    "draining: in-flight requests are completing (use --wait to wait for them)"
                );
            }
        }
    }
    if wait.is_some() && !change.drained {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `GET /health` (and `?server=`), as the client reads it.
#[derive(serde::Deserialize)]
struct Health {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    pools: Vec<PoolHealth>,
    #[serde(default)]
    checks: Option<Vec<Probe>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(serde::Deserialize)]
struct PoolHealth {
    name: String,
    available: u64,
    total: u64,
}

#[derive(serde::Deserialize)]
struct Probe {
    id: String,
    reachable: bool,
}

/// `nrdot health check [--server S]`: 0 healthy, 1 unhealthy.
pub fn health_check(c: &Client, server: Option<&str>) -> ExitCode {
    let path = match server {
        Some(sv) => format!("/health?server={}", encode_segment(sv)),
        None => "/health".to_string(),
    };
    let (status, body) = call_or_exit!(c.call(Method::GET, &path, None, &[]));
    let health: Health = or_exit!(decode(&body));
    if c.json {
        c.print_json(&body);
    } else if let Some(checks) = &health.checks {
        for ch in checks {
            let state = if ch.reachable { "healthy" } else { "unhealthy" };
            println!("{}: {state}", ch.id);
        }
    } else {
        println!("{}", opt(&health.status));
        for p in &health.pools {
            println!("  pool {}: {}/{} available", p.name, p.available, p.total);
        }
    }
    if status == StatusCode::NOT_FOUND {
        eprintln!(
            "nrdot: {}",
            health.error.as_deref().unwrap_or("no such server")
        );
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `nrdot version`: binary version always; running config version when the API answers.
pub fn version(c: &Client) -> ExitCode {
    println!("nrdot {}", env!("CARGO_PKG_VERSION"));
    match c.call(Method::GET, "/api/v2/version", None, &[]) {
        Ok((status, body)) if status.is_success() => {
            if c.json {
                c.print_json(&body);
            } else if let Ok(v) = serde_json::from_slice::<api::VersionInfo>(&body) {
                println!(
                    "running config version {} ({}), table generation {}",
                    v.config_version,
                    short(&v.config_checksum),
                    v.generation
                );
            }
        }
        Ok((status, _)) => eprintln!("nrdot: admin API answered {status}"),
        Err(e) => eprintln!("nrdot: {e}"),
    }
    ExitCode::SUCCESS
}

/// `nrdot version history`: newest first, one per line, id first.
pub fn history(c: &Client, quiet: bool) -> ExitCode {
    let list: api::VersionList = or_exit!(get(c, "/api/v2/config/versions"));
    let oldest = list.versions.first().map(|v| v.id).unwrap_or(1);
    for v in list.versions.iter().rev() {
        if quiet {
            println!("{}", v.id);
        } else {
            println!("{}\t{}\t{}\t{}", v.id, v.time, v.author, v.message);
        }
    }
    if oldest > 1 && !quiet {
        eprintln!(
            "versions 1 to {} were pruned ([store] keep_versions); they are in the backups (nrdot backup list)",
            oldest - 1
        );
    }
    ExitCode::SUCCESS
}

/// `nrdot upgrade [--binary PATH | --rollback]`: answers once the new process serves, or
/// with why the old one keeps serving (exit 1).
pub fn upgrade(c: &Client, binary: Option<std::path::PathBuf>, rollback: bool) -> ExitCode {
    let binary = binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    let req = crate::upgrade::UpgradeRequest { binary, rollback };
    let o: crate::upgrade::Outcome =
        or_exit!(request(c, Method::POST, "/api/v2/upgrade", Some(&req)));
    println!(
        "upgraded: PID {} ({} {}) -> PID {} ({} {}); the old process drains and exits",
        o.from_pid,
        o.from.version,
        short(&o.from.sha256),
        o.to_pid,
        o.to.version,
        short(&o.to.sha256),
    );
    println!("previous binary kept at {}", o.from.path.display());
    ExitCode::SUCCESS
}

/// The answer of a live restore.
#[derive(serde::Deserialize)]
struct Restored {
    version: crate::store::VersionMeta,
    backends_changed: Vec<String>,
}

/// `nrdot backup restore ARCHIVE --live`: opens and verifies the archive here, then sends its
/// configuration and drained backends to the running node.
pub fn restore_live(c: &Client, archive: &Path, key_file: &Path) -> ExitCode {
    let opened = crate::backup_cmd::open(archive, key_file);
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("archive");
    let live = match opened.and_then(|o| crate::backup::LiveRestore::from_archive(name, &o)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("nrdot: {e}");
            return ExitCode::from(1);
        }
    };
    let r: Restored = or_exit!(request(c, Method::POST, "/api/v2/restore", Some(&live)));
    println!(
        "restored {name}: its configuration (version {} on the node backed up) is version {} here; backends changed: {:?}",
        live.version, r.version.id, r.backends_changed
    );
    ExitCode::SUCCESS
}

/// The answer of `GET /api/v2/binaries`.
#[derive(serde::Deserialize)]
struct Binaries {
    binaries: Vec<crate::binaries::Record>,
}

/// `nrdot version history --binaries`: past upgrades, newest first.
pub fn binaries(c: &Client) -> ExitCode {
    let list: Binaries = or_exit!(get(c, "/api/v2/binaries"));
    for r in list.binaries.iter().rev() {
        println!(
            "{}\t{}\t{} {} -> {} {}\t{}\tkept: {}",
            r.time,
            r.kind,
            r.from.version,
            short(&r.from.sha256),
            r.to.version,
            short(&r.to.sha256),
            r.outcome,
            r.from.path.display()
        );
    }
    ExitCode::SUCCESS
}

/// `nrdot config apply --file F -m MSG`.
pub fn apply(
    c: &Client,
    file: &Path,
    message: &str,
    if_match: Option<u64>,
    guard: Option<&str>,
) -> ExitCode {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nrdot: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let mut headers = vec![("x-nrdot-message", message.to_string())];
    if let Some(v) = if_match {
        headers.push(("if-match", format!("\"{v}\"")));
    }
    if let Some(g) = guard {
        headers.push(("x-nrdot-guard", g.to_string()));
    }
    let (status, body) = call_or_exit!(c.call(
        Method::PUT,
        "/api/v2/config",
        Some(("application/toml", text)),
        &headers
    ));
    if c.json {
        c.print_json(&body);
    }
    match status {
        StatusCode::OK => {
            let changed: api::Changed = or_exit!(decode(&body));
            if !c.json {
                println!(
                    "applied as version {} ({})",
                    changed.version.id,
                    short(&changed.version.checksum)
                );
            }
            guarded(c, &changed)
        }
        StatusCode::UNPROCESSABLE_ENTITY => {
            if !c.json {
                let invalid: api::Invalid = or_exit!(decode(&body));
                for p in &invalid.problems {
                    eprintln!(
                        "{}:{}:{}: {}: {}",
                        file.display(),
                        p.line,
                        p.column,
                        p.path,
                        p.message
                    );
                }
                eprintln!("nrdot: rejected; the running configuration is unchanged");
            }
            ExitCode::from(1)
        }
        _ => fail(status, &body),
    }
}

/// A guarded change: watch it through its window; a revert exits 1.
fn guarded(c: &Client, changed: &api::Changed) -> ExitCode {
    let Some(g) = &changed.guard else {
        return ExitCode::SUCCESS;
    };
    if !c.json {
        let pools = match &g.plan {
            crate::rollout::Plan::Guard { pools, .. } => pools.join(", "),
            other => other.target(),
        };
        println!("guarded by rollout {}: {pools}", g.rollout);
    }
    follow_rollout(c, g.rollout)
}

/// `nrdot config rollback VERSION`.
pub fn rollback(c: &Client, version: u64, message: Option<&str>, guard: Option<&str>) -> ExitCode {
    let req = api::RollbackRequest {
        version,
        message: message.map(str::to_string),
        guard: guard.map(str::to_string),
    };
    let changed: api::Changed = or_exit!(request(
        c,
        Method::POST,
        "/api/v2/config/rollback",
        Some(&req)
    ));
    println!(
        "rolled back to the content of version {version}: now version {}",
        changed.version.id
    );
    guarded(c, &changed)
}

/// `nrdot config diff A [B]`.
pub fn diff(c: &Client, a: u64, b: Option<u64>) -> ExitCode {
    let mut path = format!("/api/v2/config/diff?from={a}");
    if let Some(b) = b {
        path.push_str(&format!("&to={b}"));
    }
    let d: api::Diff = or_exit!(get(c, &path));
    print!("{}", d.diff);
    ExitCode::SUCCESS
}

/// `nrdot audit [--limit N]`.
pub fn audit(c: &Client, limit: usize) -> ExitCode {
    let list: api::AuditList = or_exit!(get(c, &format!("/api/v2/audit?limit={limit}")));
    let rows: Vec<Vec<String>> = list
        .entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                e.time.clone(),
                e.actor.clone(),
                e.action.clone(),
                e.target.clone(),
                format!("{}->{}", opt(&e.version_before), opt(&e.version_after)),
                e.outcome.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "VERSION", "OUTCOME",
        ],
        &rows,
    );
    ExitCode::SUCCESS
}

/// `nrdot cluster status`: exit 1 when a node lags (or this node is not in a cluster).
pub fn cluster_status(c: &Client) -> ExitCode {
    let view: api::ClusterView = or_exit!(get(c, "/api/v2/cluster"));
    if !view.clustered {
        eprintln!("nrdot: this node is not in a cluster (no [cluster] in its configuration)");
        return ExitCode::from(1);
    }
    let rows: Vec<Vec<String>> = view
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.region.clone(),
                n.version.to_string(),
                if n.lagging { "lagging" } else { "current" }.into(),
                n.updated.clone(),
            ]
        })
        .collect();
    println!(
        "cluster version {}; rollouts run by {}",
        view.current,
        view.leader
            .as_deref()
            .unwrap_or("no node (no leader elected)")
    );
    table(&["NODE", "REGION", "VERSION", "STATE", "UPDATED"], &rows);
    if view.nodes.iter().any(|n| n.lagging) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `nrdot audit verify`: 0 intact, 1 broken.
pub fn audit_verify(c: &Client) -> ExitCode {
    let (status, body) = call_or_exit!(c.call(Method::GET, "/api/v2/audit/verify", None, &[]));
    if c.json {
        c.print_json(&body);
    } else if status.is_success() {
        let v: api::AuditVerified = or_exit!(decode(&body));
        println!("audit log intact: {} entries", v.entries);
    } else {
        let e: api::ErrorBody = or_exit!(decode(&body));
        println!("audit log BROKEN: {}", e.error);
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `nrdot admin rotate-token` / `create-token`.
pub fn token(c: &Client, name: &str, role: Option<&str>) -> ExitCode {
    let secret: Result<api::TokenSecret, ExitCode> = match role {
        None => {
            let req = api::RotateRequest {
                name: Some(name.to_string()),
            };
            request(c, Method::POST, "/api/v2/admin/rotate-token", Some(&req))
        }
        Some(r) => {
            let role = match r.parse() {
                Ok(role) => role,
                Err(e) => {
                    eprintln!("nrdot: {e}");
                    return ExitCode::from(2);
                }
            };
            let req = api::TokenRequest {
                name: name.to_string(),
                role,
            };
            request(c, Method::POST, "/api/v2/tokens", Some(&req))
        }
    };
    let secret = or_exit!(secret);
    println!("{}", secret.token);
    eprintln!("nrdot: token {name:?}: shown once; nrdot keeps only its hash");
    ExitCode::SUCCESS
}

/// The new dashboard password: one line of stdin, or asked twice on the terminal.
pub fn read_new_password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("new dashboard password: ")
        .map_err(|e| format!("cannot read the password ({e}); use --password-stdin"))?;
    let again = rpassword::prompt_password("again: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("the two passwords differ; nothing changed".into());
    }
    Ok(first)
}

/// `nrdot admin set-password`.
pub fn set_password(c: &Client, password: &str) -> ExitCode {
    let req = api::PasswordChange {
        password: password.to_string(),
        current: None,
    };
    match request::<api::PasswordChanged>(c, Method::POST, "/api/v2/admin/password", Some(&req)) {
        Ok(_) => {
            eprintln!(
                "nrdot: dashboard password changed; other dashboard sessions were logged out"
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn print_rollout(r: &Rollout) {
    println!(
        "rollout {} ({}): {} step {} weight {}%{}",
        r.id,
        r.plan.kind(),
        r.phase.name(),
        r.step + 1,
        r.weight,
        if r.reason.is_empty() {
            String::new()
        } else {
            format!(" - {}", r.reason)
        }
    );
}

/// A canary's steps with their planned and elapsed times.
fn print_plan(r: &Rollout) {
    let crate::rollout::Plan::Canary {
        steps,
        interval_ms,
        durations_ms,
        ..
    } = &r.plan
    else {
        return;
    };
    let finished = r.phase == Phase::Completed;
    for (i, w) in steps.iter().enumerate() {
        let planned = crate::rollout::step_ms(durations_ms, *interval_ms, i);
        let elapsed = match i.cmp(&r.step) {
            std::cmp::Ordering::Less => "done".to_string(),
            std::cmp::Ordering::Equal if finished => "done".to_string(),
            std::cmp::Ordering::Equal => format!("{}s elapsed", r.step_elapsed_ms / 1000),
            std::cmp::Ordering::Greater => "pending".to_string(),
        };
        println!(
            "  step {}: {w}% planned {}s, {elapsed}",
            i + 1,
            planned / 1000
        );
    }
}

fn terminal(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Completed
            | Phase::RolledBack
            | Phase::Aborted
            | Phase::Failed
            | Phase::AwaitingApproval
    )
}

/// `nrdot rollout canary | blue-green | rolling`.
pub fn rollout_create(c: &Client, start: &api::StartRollout, follow: bool) -> ExitCode {
    let body = serde_json::to_vec(start).unwrap_or_default();
    let (status, answer) = call_or_exit!(c.call(
        Method::POST,
        "/api/v2/rollouts",
        Some(("application/json", body)),
        &[]
    ));
    if status != StatusCode::CREATED {
        return fail(status, &answer);
    }
    if c.json && !follow {
        c.print_json(&answer);
        return ExitCode::SUCCESS;
    }
    let r: Rollout = or_exit!(decode(&answer));
    print_rollout(&r);
    if !follow {
        return ExitCode::SUCCESS;
    }
    follow_rollout(c, r.id)
}

/// Prints a rollout's events as they come; exit 0 when it completes, 1 otherwise.
fn follow_rollout(c: &Client, id: u64) -> ExitCode {
    let mut shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (status, body) =
            call_or_exit!(c.call(Method::GET, &format!("/api/v2/rollouts/{id}"), None, &[]));
        if !status.is_success() {
            return fail(status, &body);
        }
        let r: Rollout = or_exit!(decode(&body));
        for e in r.events.iter().skip(shown) {
            println!("  {} {}: {}", e.time, e.kind, e.detail);
        }
        shown = r.events.len();
        if terminal(r.phase) {
            print_rollout(&r);
            return if r.phase == Phase::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
    }
}

/// `nrdot rollout promote|pause|resume|abort|approve|rollback ID`.
pub fn rollout_command(c: &Client, id: u64, command: api::RolloutCommand) -> ExitCode {
    let path = format!("/api/v2/rollouts/{id}/{}", command.as_str());
    let r: Rollout = or_exit!(request(c, Method::POST, &path, None::<&()>));
    print_rollout(&r);
    ExitCode::SUCCESS
}

/// `nrdot rollout status ID`.
pub fn rollout_status(c: &Client, id: u64) -> ExitCode {
    let r: Rollout = or_exit!(get(c, &format!("/api/v2/rollouts/{id}")));
    print_rollout(&r);
    print_plan(&r);
    if let Some(m) = &r.measured {
        println!(
            "  analysis: error rate {:.2}% ({} of {} requests), p99 {} ms, healthy {:.0}%, memory {:.1}%",
            m.error_rate * 100.0,
            m.window_errors,
            m.window_requests,
            m.p99_ms,
            m.healthy_fraction * 100.0,
            m.memory_fraction * 100.0,
        );
    }
    for e in &r.events {
        println!("  {} {}: {}", e.time, e.kind, e.detail);
    }
    ExitCode::SUCCESS
}

/// `nrdot rollout list`.
pub fn rollout_list(c: &Client) -> ExitCode {
    let list: api::RolloutList = or_exit!(get(c, "/api/v2/rollouts"));
    let rows: Vec<Vec<String>> = list
        .rollouts
        .iter()
        .map(|r| {
            let target = match &r.plan {
                crate::rollout::Plan::Canary { route, .. }
                | crate::rollout::Plan::BlueGreen { route, .. } => route.clone(),
                crate::rollout::Plan::Rolling { pool, .. } => pool.clone(),
                crate::rollout::Plan::Guard { .. } => "-".into(),
            };
            vec![
                r.id.to_string(),
                r.plan.kind().to_string(),
                target,
                r.phase.name().to_string(),
                (r.step + 1).to_string(),
                format!("{}%", r.weight),
                r.created.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "KIND", "TARGET", "PHASE", "STEP", "WEIGHT", "CREATED"],
        &rows,
    );
    ExitCode::SUCCESS
}
