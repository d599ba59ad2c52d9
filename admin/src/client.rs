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
use serde_json::Value;

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
    ) -> Result<(StatusCode, Value), ClientError> {
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
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    fn print_json(&self, v: &Value) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
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

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn fail(status: StatusCode, body: &Value) -> ExitCode {
    eprintln!(
        "nrdot: {status}: {}",
        body["error"].as_str().unwrap_or("request failed")
    );
    ExitCode::from(1)
}

/// GETs `path` for a listing verb: `Ok(body)` to render as a table, or `Err(exit code)` when
/// the call failed or `--json` already printed the body.
fn list(c: &Client, path: &str) -> Result<Value, ExitCode> {
    request(c, Method::GET, path, None)
}

/// One call for a verb: `Ok(body)` for the verb to print for humans, or `Err(exit code)` when
/// the call failed or `--json` already printed the body.
fn request(c: &Client, method: Method, path: &str, body: Option<Value>) -> Result<Value, ExitCode> {
    let payload = body.map(|b| ("application/json", b.to_string().into_bytes()));
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
    Ok(body)
}

/// The array under `key`, empty when absent.
fn items<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body[key].as_array().map(|a| a.as_slice()).unwrap_or(&[])
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

/// `nrdot backend list`.
pub fn backend_list(c: &Client) -> ExitCode {
    let body = match list(c, "/api/v2/backends") {
        Ok(b) => b,
        Err(code) => return code,
    };
    let rows: Vec<Vec<String>> = items(&body, "backends")
        .iter()
        .map(|b| {
            [
                "id",
                "pool",
                "address",
                "weight",
                "admin_state",
                "health",
                "in_flight",
                "requests",
                "failures",
            ]
            .iter()
            .map(|k| s(&b[*k]))
            .collect()
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
    if c.json {
        c.print_json(&body);
    } else {
        for b in items(&body, "backends") {
            println!(
                "{}: {} (in flight: {})",
                s(&b["id"]),
                s(&b["admin_state"]),
                s(&b["in_flight"])
            );
        }
        if !enable {
            if body["drained"] == Value::Bool(true) {
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
    if wait.is_some() && body["drained"] != Value::Bool(true) {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// `nrdot health check [--server S]`: 0 healthy, 1 unhealthy.
pub fn health_check(c: &Client, server: Option<&str>) -> ExitCode {
    let path = match server {
        Some(sv) => format!("/health?server={}", encode_segment(sv)),
        None => "/health".to_string(),
    };
    let (status, body) = call_or_exit!(c.call(Method::GET, &path, None, &[]));
    if c.json {
        c.print_json(&body);
    } else if let Some(checks) = body["checks"].as_array() {
        for ch in checks {
            println!(
                "{}: {}",
                s(&ch["id"]),
                if ch["reachable"] == Value::Bool(true) {
                    "healthy"
                } else {
                    "unhealthy"
                }
            );
        }
    } else {
        println!("{}", s(&body["status"]));
        for p in items(&body, "pools") {
            println!(
                "  pool {}: {}/{} available",
                s(&p["name"]),
                s(&p["available"]),
                s(&p["total"])
            );
        }
    }
    if status == StatusCode::NOT_FOUND {
        eprintln!(
            "nrdot: {}",
            body["error"].as_str().unwrap_or("no such server")
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
            } else {
                println!(
                    "running config version {} ({}), table generation {}",
                    s(&body["config_version"]),
                    s(&body["config_checksum"])
                        .chars()
                        .take(12)
                        .collect::<String>(),
                    s(&body["generation"])
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
    let (status, body) = call_or_exit!(c.call(Method::GET, "/api/v2/config/versions", None, &[]));
    if !status.is_success() {
        return fail(status, &body);
    }
    if c.json {
        c.print_json(&body);
        return ExitCode::SUCCESS;
    }
    let mut versions: Vec<&Value> = body["versions"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    versions.reverse();
    let oldest = versions.last().and_then(|v| v["id"].as_u64()).unwrap_or(1);
    for v in versions {
        if quiet {
            println!("{}", s(&v["id"]));
        } else {
            println!(
                "{}\t{}\t{}\t{}",
                s(&v["id"]),
                s(&v["time"]),
                s(&v["author"]),
                s(&v["message"])
            );
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
    let body = match request(
        c,
        Method::POST,
        "/api/v2/upgrade",
        serde_json::to_value(&req).ok(),
    ) {
        Ok(b) => b,
        Err(code) => return code,
    };
    match serde_json::from_value::<crate::upgrade::Outcome>(body) {
        Ok(o) => {
            println!(
                "upgraded: PID {} ({} {}) -> PID {} ({} {}); the old process drains and exits",
                o.from_pid,
                o.from.version,
                &o.from.sha256[..12.min(o.from.sha256.len())],
                o.to_pid,
                o.to.version,
                &o.to.sha256[..12.min(o.to.sha256.len())],
            );
            println!("previous binary kept at {}", o.from.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nrdot: unexpected answer: {e}");
            ExitCode::from(2)
        }
    }
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
    let body = match request(
        c,
        Method::POST,
        "/api/v2/restore",
        serde_json::to_value(&live).ok(),
    ) {
        Ok(b) => b,
        Err(code) => return code,
    };
    println!(
        "restored {name}: its configuration (version {} on the node backed up) is version {} here; backends changed: {}",
        live.version,
        s(&body["version"]["id"]),
        body["backends_changed"]
    );
    ExitCode::SUCCESS
}

/// `nrdot version history --binaries`: past upgrades, newest first.
pub fn binaries(c: &Client) -> ExitCode {
    let (status, body) = call_or_exit!(c.call(Method::GET, "/api/v2/binaries", None, &[]));
    if !status.is_success() {
        return fail(status, &body);
    }
    if c.json {
        c.print_json(&body);
        return ExitCode::SUCCESS;
    }
    let records: Vec<crate::binaries::Record> =
        serde_json::from_value(body["binaries"].clone()).unwrap_or_default();
    for r in records.iter().rev() {
        println!(
            "{}\t{}\t{} {} -> {} {}\t{}\tkept: {}",
            r.time,
            r.kind,
            r.from.version,
            &r.from.sha256[..12.min(r.from.sha256.len())],
            r.to.version,
            &r.to.sha256[..12.min(r.to.sha256.len())],
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
            if !c.json {
                println!(
                    "applied as version {} ({})",
                    s(&body["version"]["id"]),
                    s(&body["version"]["checksum"])
                        .chars()
                        .take(12)
                        .collect::<String>()
                );
            }
            // A guarded change: watch it through its window; a revert exits 1.
            match body["guard"]["rollout"].as_u64() {
                Some(id) => {
                    if !c.json {
                        println!(
                            "guarded by rollout {id}: {}",
                            s(&body["guard"]["plan"]["pools"])
                        );
                    }
                    follow_rollout(c, id)
                }
                None => ExitCode::SUCCESS,
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY => {
            if !c.json {
                for p in items(&body, "problems") {
                    eprintln!(
                        "{}:{}:{}: {}: {}",
                        file.display(),
                        s(&p["line"]),
                        s(&p["column"]),
                        s(&p["path"]),
                        s(&p["message"])
                    );
                }
                eprintln!("nrdot: rejected; the running configuration is unchanged");
            }
            ExitCode::from(1)
        }
        _ => fail(status, &body),
    }
}

/// `nrdot config rollback VERSION`.
pub fn rollback(c: &Client, version: u64, message: Option<&str>, guard: Option<&str>) -> ExitCode {
    let mut body = serde_json::json!({ "version": version });
    if let Some(m) = message {
        body["message"] = Value::String(m.to_string());
    }
    if let Some(g) = guard {
        body["guard"] = Value::String(g.to_string());
    }
    let resp = match request(c, Method::POST, "/api/v2/config/rollback", Some(body)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!(
        "rolled back to the content of version {version}: now version {}",
        s(&resp["version"]["id"])
    );
    match resp["guard"]["rollout"].as_u64() {
        Some(id) => {
            println!(
                "guarded by rollout {id}: {}",
                s(&resp["guard"]["plan"]["pools"])
            );
            follow_rollout(c, id)
        }
        None => ExitCode::SUCCESS,
    }
}

/// `nrdot config diff A [B]`.
pub fn diff(c: &Client, a: u64, b: Option<u64>) -> ExitCode {
    let mut path = format!("/api/v2/config/diff?from={a}");
    if let Some(b) = b {
        path.push_str(&format!("&to={b}"));
    }
    let (status, body) = call_or_exit!(c.call(Method::GET, &path, None, &[]));
    if !status.is_success() {
        return fail(status, &body);
    }
    if c.json {
        c.print_json(&body);
    } else {
        print!("{}", body["diff"].as_str().unwrap_or(""));
    }
    ExitCode::SUCCESS
}

/// `nrdot audit [--limit N]`.
pub fn audit(c: &Client, limit: usize) -> ExitCode {
    let body = match list(c, &format!("/api/v2/audit?limit={limit}")) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let rows: Vec<Vec<String>> = items(&body, "entries")
        .iter()
        .map(|e| {
            let versions = format!("{}->{}", s(&e["version_before"]), s(&e["version_after"]));
            vec![
                s(&e["seq"]),
                s(&e["time"]),
                s(&e["actor"]),
                s(&e["action"]),
                s(&e["target"]),
                versions,
                s(&e["outcome"]),
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

/// `nrdot audit verify`: 0 intact, 1 broken.
pub fn audit_verify(c: &Client) -> ExitCode {
    let (status, body) = call_or_exit!(c.call(Method::GET, "/api/v2/audit/verify", None, &[]));
    if c.json {
        c.print_json(&body);
    } else if status.is_success() {
        println!("audit log intact: {} entries", s(&body["entries"]));
    } else {
        println!("audit log BROKEN: {}", s(&body["error"]));
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `nrdot admin rotate-token` / `create-token`.
pub fn token(c: &Client, name: &str, role: Option<&str>) -> ExitCode {
    let (path, body) = match role {
        None => (
            "/api/v2/admin/rotate-token",
            serde_json::json!({ "name": name }),
        ),
        Some(r) => (
            "/api/v2/tokens",
            serde_json::json!({ "name": name, "role": r }),
        ),
    };
    let resp = match request(c, Method::POST, path, Some(body)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    println!("{}", s(&resp["token"]));
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
    let body = serde_json::json!({ "password": password });
    match request(c, Method::POST, "/api/v2/admin/password", Some(body)) {
        Ok(_) => {
            eprintln!(
                "nrdot: dashboard password changed; other dashboard sessions were logged out"
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn print_rollout(r: &Value) {
    println!(
        "rollout {} ({}): {} step {} weight {}%{}",
        s(&r["id"]),
        s(&r["plan"]["kind"]),
        s(&r["phase"]),
        r["step"].as_u64().map(|n| n + 1).unwrap_or(0),
        s(&r["weight"]),
        match r["reason"].as_str() {
            Some(reason) if !reason.is_empty() => format!(" - {reason}"),
            _ => String::new(),
        }
    );
}

/// A canary's steps with their planned and elapsed times.
fn print_plan(r: &Value) {
    let plan = &r["plan"];
    if plan["kind"] != "canary" {
        return;
    }
    let interval = plan["interval_ms"].as_u64().unwrap_or(0);
    let durations: Vec<u64> = plan["durations_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let current = r["step"].as_u64().unwrap_or(0) as usize;
    let finished = r["phase"] == "completed";
    for (i, w) in items(plan, "steps").iter().enumerate() {
        let planned = crate::rollout::step_ms(&durations, interval, i);
        let elapsed = match i.cmp(&current) {
            std::cmp::Ordering::Less => "done".to_string(),
            std::cmp::Ordering::Equal if finished => "done".to_string(),
            std::cmp::Ordering::Equal => format!(
                "{}s elapsed",
                r["step_elapsed_ms"].as_u64().unwrap_or(0) / 1000
            ),
            std::cmp::Ordering::Greater => "pending".to_string(),
        };
        println!(
            "  step {}: {}% planned {}s, {elapsed}",
            i + 1,
            s(w),
            planned / 1000
        );
    }
}

fn terminal(phase: &str) -> bool {
    matches!(
        phase,
        "completed" | "rolled_back" | "aborted" | "failed" | "awaiting_approval"
    )
}

/// `nrdot rollout canary | blue-green | rolling`.
pub fn rollout_create(c: &Client, start: &crate::api::StartRollout, follow: bool) -> ExitCode {
    let body = serde_json::to_value(start).unwrap_or_default();
    let (status, r) = call_or_exit!(c.call(
        Method::POST,
        "/api/v2/rollouts",
        Some(("application/json", body.to_string().into_bytes())),
        &[]
    ));
    if status != StatusCode::CREATED {
        return fail(status, &r);
    }
    if c.json && !follow {
        c.print_json(&r);
        return ExitCode::SUCCESS;
    }
    print_rollout(&r);
    if !follow {
        return ExitCode::SUCCESS;
    }
    follow_rollout(c, r["id"].as_u64().unwrap_or(0))
}

/// Prints a rollout's events as they come; exit 0 when it completes, 1 otherwise.
fn follow_rollout(c: &Client, id: u64) -> ExitCode {
    let mut shown = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let (status, r) =
            call_or_exit!(c.call(Method::GET, &format!("/api/v2/rollouts/{id}"), None, &[]));
        if !status.is_success() {
            return fail(status, &r);
        }
        let events = items(&r, "events");
        for e in events.iter().skip(shown) {
            println!("  {} {}: {}", s(&e["time"]), s(&e["kind"]), s(&e["detail"]));
        }
        shown = events.len();
        let phase = r["phase"].as_str().unwrap_or("");
        if terminal(phase) {
            print_rollout(&r);
            return if phase == "completed" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
    }
}

/// `nrdot rollout promote|pause|resume|abort|approve|rollback ID`.
pub fn rollout_command(c: &Client, id: u64, command: crate::api::RolloutCommand) -> ExitCode {
    let verb = command.as_str();
    match request(
        c,
        Method::POST,
        &format!("/api/v2/rollouts/{id}/{verb}"),
        None,
    ) {
        Ok(r) => print_rollout(&r),
        Err(code) => return code,
    }
    ExitCode::SUCCESS
}

/// `nrdot rollout status ID`.
pub fn rollout_status(c: &Client, id: u64) -> ExitCode {
    let (status, r) =
        call_or_exit!(c.call(Method::GET, &format!("/api/v2/rollouts/{id}"), None, &[]));
    if !status.is_success() {
        return fail(status, &r);
    }
    if c.json {
        c.print_json(&r);
        return ExitCode::SUCCESS;
    }
    print_rollout(&r);
    print_plan(&r);
    if let Some(m) = r["measured"].as_object() {
        println!(
            "  analysis: error rate {:.2}% ({} of {} requests), p99 {} ms, healthy {:.0}%, memory {:.1}%",
            m.get("error_rate").and_then(|v| v.as_f64()).unwrap_or(0.0) * 100.0,
            s(&m["window_errors"]),
            s(&m["window_requests"]),
            s(&m["p99_ms"]),
            m.get("healthy_fraction").and_then(|v| v.as_f64()).unwrap_or(0.0) * 100.0,
            m.get("memory_fraction").and_then(|v| v.as_f64()).unwrap_or(0.0) * 100.0,
        );
    }
    for e in items(&r, "events") {
        println!("  {} {}: {}", s(&e["time"]), s(&e["kind"]), s(&e["detail"]));
    }
    ExitCode::SUCCESS
}

/// `nrdot rollout list`.
pub fn rollout_list(c: &Client) -> ExitCode {
    let body = match list(c, "/api/v2/rollouts") {
        Ok(b) => b,
        Err(code) => return code,
    };
    let rows: Vec<Vec<String>> = items(&body, "rollouts")
        .iter()
        .map(|r| {
            let target = r["plan"]["route"]
                .as_str()
                .or(r["plan"]["pool"].as_str())
                .unwrap_or("-")
                .to_string();
            vec![
                s(&r["id"]),
                s(&r["plan"]["kind"]),
                target,
                s(&r["phase"]),
                (r["step"].as_u64().unwrap_or(0) + 1).to_string(),
                format!("{}%", s(&r["weight"])),
                s(&r["created"]),
            ]
        })
        .collect();
    table(
        &["ID", "KIND", "TARGET", "PHASE", "STEP", "WEIGHT", "CREATED"],
        &rows,
    );
    ExitCode::SUCCESS
}
