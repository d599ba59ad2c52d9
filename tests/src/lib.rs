//! nrdot-tests: the end-to-end harness. [`Origin`] is a real HTTP server on a free loopback
//! port whose behaviour is chosen by the request path; [`Nrdot`] runs the real binary on free
//! ports with a generated configuration and stops it (by PID) when dropped.
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod raw;
pub use raw::{big_chunk, h2_connect, h2_request, h2_send, raw_h2, RawOrigin, H2_GET_ECHO};

/// A test origin. Paths choose behaviour:
/// - `/status/N` answers status N;
/// - `/sleep/MS` waits MS milliseconds, then answers;
/// - `/reset` closes the connection without answering; `/slowreset/MS` waits first;
/// - `/big/N` answers N bytes;
/// - `/hop` answers with hop-by-hop headers that nrdot must remove;
/// - `/agent` answers the agent text set with [`Origin::set_agent`];
/// - a request with `Upgrade` is answered 101 and its bytes are echoed back;
/// - anything else answers 200 with a JSON echo of the request (method, path, headers, body
///   length), or the status set with [`Origin::set_status`].
///
/// Every response carries `x-origin: <name>`.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Name it answers with.
    pub name: String,
    shared: Arc<OriginShared>,
    stop: tokio::sync::watch::Sender<bool>,
}

struct OriginShared {
    name: String,
    hits: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    status: AtomicU64,
    fail_every: AtomicU64,
    agent: std::sync::Mutex<String>,
    /// Every request's path, in arrival order.
    paths: std::sync::Mutex<Vec<String>>,
}

impl Origin {
    /// Starts an origin named `name` on a free port of 127.0.0.1.
    pub async fn start(name: &str) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        Origin::serve(name, listener)
    }

    /// Starts an origin on `addr` again (after [`Origin::stop`]), retrying while the port is busy.
    pub async fn restart_on(name: &str, addr: SocketAddr) -> Origin {
        for _ in 0..100 {
            if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                return Origin::serve(name, l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot bind {addr} again");
    }

    /// Starts an origin on an already bound listener.
    pub fn serve(name: &str, listener: tokio::net::TcpListener) -> Origin {
        let addr = listener.local_addr().expect("origin addr");
        let shared = Arc::new(OriginShared {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            status: AtomicU64::new(0),
            fail_every: AtomicU64::new(0),
            agent: std::sync::Mutex::new("up".into()),
            paths: std::sync::Mutex::new(Vec::new()),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let sh = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut stop_accept = stop_rx.clone();
            loop {
                let accepted = tokio::select! {
                    r = listener.accept() => r,
                    _ = stop_accept.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                sh.connections.fetch_add(1, Ordering::SeqCst);
                sh.open.fetch_add(1, Ordering::SeqCst);
                let (sh, mut stop_conn) = (Arc::clone(&sh), stop_rx.clone());
                tokio::spawn(async move {
                    let svc_shared = Arc::clone(&sh);
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        svc_shared.hits.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut p) = svc_shared.paths.lock() {
                            p.push(req.uri().path().to_string());
                        }
                        origin_handle(Arc::clone(&svc_shared), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = stop_conn.changed() => {}
                    }
                    sh.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Origin {
            addr,
            name: name.to_string(),
            shared,
            stop,
        }
    }

    /// Paths of the requests received so far.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .paths
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Makes every ordinary request answer `status` (0: back to normal).
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status as u64, Ordering::SeqCst);
    }

    /// Makes every n-th ordinary request answer 500 (0: never).
    pub fn set_fail_every(&self, n: u64) {
        self.shared.fail_every.store(n, Ordering::SeqCst);
    }

    /// What `/agent` answers.
    pub fn set_agent(&self, text: &str) {
        *self.shared.agent.lock().expect("agent") = text.to_string();
    }

    /// Stops accepting and closes every connection, like a crashed server.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// FNV-1a over a request body as the origin received it, so a test can tell that every byte
/// arrived in order without the origin echoing megabytes back.
/// Bodies are summed up to this size (a debug build hashes about 50 MB/s; the 1 GiB upload
/// test would time out).
const FNV_LIMIT: u64 = 1 << 20;

pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// The sum of `bytes` alone.
    pub fn of(bytes: &[u8]) -> String {
        let mut f = Fnv::default();
        f.add(bytes);
        f.hex()
    }
}

async fn origin_handle(
    shared: Arc<OriginShared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let name = shared.name.clone();
    let path = req.uri().path().to_string();
    let mut resp = Response::new(Full::new(Bytes::new()));
    resp.headers_mut()
        .insert("x-origin", name.parse().expect("header value"));
    if req.headers().contains_key(http::header::UPGRADE) {
        let mut req = req;
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(http::header::UPGRADE, "websocket".parse().expect("v"));
        resp.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().expect("v"));
        return Ok(resp);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        *resp.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        return Ok(resp);
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/reset" {
        return Err(std::io::Error::other("reset on purpose"));
    }
    if let Some(ms) = path.strip_prefix("/slowreset/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return Err(std::io::Error::other("reset on purpose"));
    }
    if path == "/agent" {
        let text = shared.agent.lock().expect("agent").clone();
        *resp.body_mut() = Full::new(Bytes::from(text));
        return Ok(resp);
    }
    let every = shared.fail_every.load(Ordering::SeqCst);
    if every > 0 && shared.hits.load(Ordering::SeqCst).is_multiple_of(every) {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return Ok(resp);
    }
    let forced = shared.status.load(Ordering::SeqCst) as u16;
    if forced != 0 {
        *resp.status_mut() =
            StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/big/") {
        *resp.body_mut() = Full::new(Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]));
        return Ok(resp);
    }
    if path == "/hop" {
        let h = resp.headers_mut();
        h.insert("connection", "x-drop-me".parse().expect("v"));
        h.insert("x-drop-me", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert("x-kept", "1".parse().expect("v"));
        return Ok(resp);
    }
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut sum = Fnv::default();
    let mut trailers = BTreeMap::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Some(d) = frame.data_ref() {
            len += d.len() as u64;
            if len <= FNV_LIMIT {
                sum.add(d);
            }
        }
        if let Some(t) = frame.trailers_ref() {
            for (k, v) in t {
                trailers.insert(
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                );
            }
        }
    }
    let echo = serde_json::json!({
        "origin": name, "method": method, "path": path, "query": query,
        "headers": headers, "body_len": len, "body_fnv": (len <= FNV_LIMIT).then(|| sum.hex()), "trailers": trailers,
    });
    *resp.body_mut() = Full::new(Bytes::from(echo.to_string()));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("v"));
    Ok(resp)
}

/// A running `nrdot serve` process on free ports.
pub struct Nrdot {
    child: Child,
    /// The client-facing listener.
    pub addr: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    /// Every listener by name.
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    /// Working directory: config file, state directory, access log.
    pub dir: PathBuf,
    /// The configuration file.
    pub config: PathBuf,
    prelude: String,
    bin: String,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system temp dir, removed by [`Nrdot`]'s drop.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nrdot-test-{}-{}-{tag}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A pool section with the given servers.
pub fn pool(name: &str, servers: &[SocketAddr]) -> String {
    pool_with(name, "", servers)
}

/// A pool section with more pool keys (`keys`: whole lines, no tables) and the given servers.
pub fn pool_with(name: &str, keys: &str, servers: &[SocketAddr]) -> String {
    let mut s = format!(
        "[[pool]]\nname = \"{name}\"\nresponse_timeout = \"5s\"\nconnect_timeout = \"1s\"\n{keys}"
    );
    for a in servers {
        s.push_str(&format!("[[pool.server]]\naddress = \"{a}\"\n"));
    }
    s
}

/// Pool `o` with `servers` and one route `r` to it: the configuration most tests start from.
pub fn pool_route(servers: &[SocketAddr]) -> String {
    pool_route_with("", servers)
}

/// [`pool_route`] with more keys in pool `o` (see [`pool_with`]).
pub fn pool_route_with(keys: &str, servers: &[SocketAddr]) -> String {
    format!(
        "{}[[route]]\nname = \"r\"\npool = \"o\"\n",
        pool_with("o", keys, servers)
    )
}

impl Nrdot {
    /// Starts the binary at `bin` with `body` (pools, routes, optional [limits]/[access_log]).
    /// `prelude` holds top-level keys, which TOML needs before any table.
    pub fn start(bin: &str, prelude: &str, body: &str) -> Nrdot {
        let dir = temp_dir("nrdot");
        let config = dir.join("nrdot.toml");
        // A test may set its own grace period in `prelude`.
        let grace = if prelude.contains("shutdown_grace") {
            ""
        } else {
            "shutdown_grace = \"10s\"\n"
        };
        let workers = if prelude.contains("worker_threads") {
            ""
        } else {
            "worker_threads = 2\n"
        };
        let prelude = format!(
            "state_dir = {:?}\n{grace}{workers}{prelude}\n[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:0\"\n",
            dir.join("state").display().to_string()
        );
        let text = format!("{prelude}\n{body}");
        if !body.contains("[access_log]") {
            std::fs::write(&config, format!("{text}\n[access_log]\nenabled = false\n"))
                .expect("write config");
        } else {
            std::fs::write(&config, &text).expect("write config");
        }
        let (child, addr, admin, listeners) = spawn(bin, &config);
        Nrdot {
            child,
            addr,
            admin,
            listeners,
            dir,
            config,
            prelude,
            bin: bin.to_string(),
        }
    }

    /// Kills the process with SIGKILL (no cleanup at all) and waits for it.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Starts the binary again on the same config file and state directory (new ports).
    pub fn restart(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let (child, addr, admin, listeners) = spawn(&self.bin, &self.config);
        self.child = child;
        self.addr = addr;
        self.admin = admin;
        self.listeners = listeners;
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The admin token written on first start.
    pub fn token(&self) -> String {
        let text = std::fs::read_to_string(self.state_dir().join("admin-credentials"))
            .expect("admin-credentials");
        text.lines()
            .find_map(|l| l.strip_prefix("NRDOT_TOKEN="))
            .expect("token line")
            .to_string()
    }

    /// The dashboard password written on first start.
    pub fn dashboard_password(&self) -> String {
        std::fs::read_to_string(self.state_dir().join("admin-credentials"))
            .expect("admin-credentials")
            .lines()
            .find_map(|l| l.strip_prefix("NRDOT_DASHBOARD_PASSWORD="))
            .expect("password line")
            .to_string()
    }

    /// Calls the admin API with the admin token (or `token` when given).
    pub async fn api(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> Reply {
        self.api_with(method, path, body, token, &[]).await
    }

    /// Like [`Nrdot::api`], with extra headers.
    pub async fn api_with(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.api_from(None, method, path, body, token, headers)
            .await
    }

    /// Like [`Nrdot::api_with`], from a chosen loopback source address (the admin API slows
    /// down repeated failures per address).
    pub async fn api_from(
        &self,
        source: Option<std::net::IpAddr>,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let token = token.map(str::to_string).unwrap_or_else(|| self.token());
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_local_address(source);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin));
        if !token.is_empty() {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        send(
            &client,
            b.body(Full::new(Bytes::from(body.to_string())))
                .expect("request"),
        )
        .await
    }

    /// Runs the binary as a client of this instance (`--state-dir` and `--admin-url` set).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--admin-url")
            .arg(format!("http://{}", self.admin))
            .args(args)
            .env_remove("NRDOT_TOKEN")
            .env_remove("NRDOT_ADMIN_URL")
            .output()
            .expect("run cli")
    }

    /// The admin API's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        String::from_utf8(
            get(&format!("http://{}/metrics", self.admin), &[])
                .await
                .body
                .to_vec(),
        )
        .expect("utf8")
    }

    /// The value of one series (name with labels, exactly as exported) on `/metrics`; 0 when
    /// it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// PID of the serving process: the one the state-directory lock names (after a binary
    /// upgrade that is not the process this harness started), else the child's.
    pub fn pid(&self) -> u32 {
        std::fs::read_to_string(self.state_dir().join("nrdot.lock"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| self.child.id())
    }

    /// Writes a new body (same prelude) to the config file and sends SIGHUP.
    pub fn rewrite_and_reload(&self, body: &str) {
        let text = format!("{}\n{body}\n[access_log]\nenabled = false\n", self.prelude);
        self.write_raw_and_reload(&text);
    }

    /// Writes `text` as the whole config file and sends SIGHUP.
    pub fn write_raw_and_reload(&self, text: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
        self.signal("HUP");
    }

    /// Sends a signal by name to this process only.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.child.wait().expect("wait")
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A URL on the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `/health` as JSON.
    pub async fn health(&self) -> serde_json::Value {
        let r = http_client()
            .get(
                format!("http://{}/health", self.admin)
                    .parse()
                    .expect("uri"),
            )
            .await
            .expect("health");
        let body = r.into_body().collect().await.expect("body").to_bytes();
        serde_json::from_slice(&body).expect("health json")
    }

    /// The generation of the table in effect.
    pub async fn generation(&self) -> u64 {
        self.health().await["generation"]
            .as_u64()
            .expect("generation")
    }

    /// Resident and peak resident memory of the process, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Nrdot {
    fn drop(&mut self) {
        let serving = self.pid();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A process started by a binary upgrade is not our child: stop it by its PID.
        if serving != self.child.id() && std::path::Path::new(&format!("/proc/{serving}")).exists()
        {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(serving.to_string())
                .status();
            for _ in 0..100 {
                if !std::path::Path::new(&format!("/proc/{serving}")).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Spawned = (
    Child,
    SocketAddr,
    SocketAddr,
    std::collections::HashMap<String, SocketAddr>,
);

fn spawn(bin: &str, config: &std::path::Path) -> Spawned {
    let mut command = Command::new(bin);
    command.args(["serve", "--config"]).arg(config);
    // A test that configures `[log]` gets its level; the others log warnings only.
    if std::fs::read_to_string(config).is_ok_and(|t| t.contains("\n[log]")) {
        command.env_remove("RUST_LOG");
    } else {
        command.env(
            "RUST_LOG",
            std::env::var("NRDOT_TEST_LOG").unwrap_or("warn".into()),
        );
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nrdot");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut admin, mut listeners) = (None, std::collections::HashMap::new());
    while admin.is_none() {
        let Some(Ok(line)) = lines.next() else {
            let status = child.wait().expect("wait");
            panic!("nrdot exited before listening: {status}");
        };
        if let Some(rest) = line.strip_prefix("nrdot: listener ") {
            if let Some((name, a)) = rest.split_once(" on ") {
                if let Ok(a) = a.trim().parse() {
                    listeners.insert(name.to_string(), a);
                }
            }
        } else if let Some(rest) = line.strip_prefix("nrdot: admin on ") {
            admin = rest.trim().parse().ok();
        }
    }
    let addr = listeners.get("http").copied();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, addr.expect("addr"), admin.expect("admin"), listeners)
}

/// An HTTP/1.1 keep-alive client.
pub fn http_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read to the end.
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// Body as JSON (the origin's echo).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` with `client` and reads the whole response.
pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Reply {
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(
        &http_client(),
        b.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

/// Writes raw bytes to `addr` and returns everything read until the peer closes or `wait`
/// passes without data.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One client connection used for sequential HTTP/1.1 requests, so every request is served by
/// the same nrdot worker.
pub struct KeepAlive {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            stream: tokio::net::TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Sends a GET and returns (status, head, body); the response must have Content-Length.
    pub async fn get(&mut self, path: &str) -> (u16, String, Vec<u8>) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.send(req.as_bytes()).await;
        self.response().await
    }

    /// The client end's address, to find the connection in the kernel's tables.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Writes raw bytes: one request, several pipelined ones, or part of one.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the next response: (status, lower-cased head, body). Bodies are delimited by
    /// Content-Length, or read to the end of the connection when there is none.
    pub async fn response(&mut self) -> (u16, String, Vec<u8>) {
        let mut chunk = [0u8; 16384];
        let mut eof = false;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
                let len: Option<usize> = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok());
                let len = match len {
                    Some(n) => Some(n),
                    None if eof => Some(self.buf.len() - end - 4),
                    None => None,
                };
                if let Some(len) = len.filter(|n| self.buf.len() >= end + 4 + n) {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    let status = head
                        .split_whitespace()
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .expect("status");
                    return (status, head, body);
                }
            }
            assert!(
                !eof,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("response timed out")
                .expect("read");
            eof = n == 0;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the next response to a request whose answer has no body (HEAD, 204, 304), however
    /// it is framed: (status, lower-cased head, whatever arrived after the head within 200 ms,
    /// which should be nothing).
    pub async fn response_without_body(&mut self) -> (u16, String, Vec<u8>) {
        let mut chunk = [0u8; 16384];
        let end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("response timed out")
                .expect("read");
            assert!(n > 0, "connection closed before a head");
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_lowercase();
        self.buf.drain(..end + 4);
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), self.stream.read(&mut chunk)).await
        {
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let extra = std::mem::take(&mut self.buf);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, head, extra)
    }

    /// Reads until `marker` has arrived and returns everything up to and including it.
    pub async fn read_through(&mut self, marker: &[u8]) -> Vec<u8> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(at) = self.buf.windows(marker.len()).position(|w| w == marker) {
                return self.buf.drain(..at + marker.len()).collect();
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("response timed out")
                .expect("read");
            assert!(
                n > 0,
                "connection closed before {:?}",
                String::from_utf8_lossy(marker)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server closed the connection (nothing more to read).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// The kernel's TCP state (`/proc/net/tcp`: 1 established, 3 SYN received, …) of the IPv4
/// socket at `local` connected to `remote`, if there is one. Lets a test see what a server's
/// side of a connection is doing without asking the server.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&l.as_str()) && f.get(2) == Some(&r.as_str()))
            .then(|| u8::from_str_radix(f.get(3)?, 16).ok())
            .flatten()
    })
}

/// Writes `head`, waits `pause`, then `len` more bytes and a FIN, without waiting for an
/// answer, while reading everything the server sends until it closes: a client that goes on
/// sending after the server has answered. Returns how the writes ended and what was read (or
/// how reading failed); each side has 10 s.
pub async fn send_blindly(
    addr: SocketAddr,
    head: String,
    pause: Duration,
    len: usize,
) -> (std::io::Result<()>, std::io::Result<String>) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        tokio::time::sleep(pause).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let k = left.min(chunk.len());
            wr.write_all(&chunk[..k]).await?;
            left -= k;
        }
        wr.shutdown().await
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got))
        .await
        .expect("the server closes within 10 s");
    let sent = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("writes end within 10 s")
        .expect("writer task");
    (
        sent,
        read.map(|_| String::from_utf8_lossy(&got).into_owned()),
    )
}

/// Sends each raw request on its own connection and checks the status nrdot answers with.
pub async fn answers(addr: SocketAddr, cases: &[(&str, impl AsRef<[u8]>, &str)]) {
    for (what, req, want) in cases {
        let resp = raw(addr, req.as_ref(), Duration::from_secs(3)).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {want}")),
            "{what}: {}",
            &resp[..resp.len().min(300)]
        );
    }
}

/// Reads from `s` into `got` until `marker` has arrived (5 s for each read).
pub async fn read_until(s: &mut tokio::net::TcpStream, got: &mut Vec<u8>, marker: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !got.windows(marker.len()).any(|w| w == marker) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("timed out")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// Steady traffic until stopped; counts answers by origin and status.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<HashMap<(String, u16), u64>>>,
}

impl Load {
    /// Starts `clients` tasks, each sending `GET url` every 2 ms.
    pub fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let tasks = (0..clients)
            .map(|_| {
                let (url, stop, seen) = (url.clone(), Arc::clone(&stop), Arc::clone(&seen));
                tokio::spawn(async move {
                    let client = http_client();
                    while !stop.load(Ordering::SeqCst) {
                        let r = send(
                            &client,
                            Request::get(&url)
                                .body(Full::new(Bytes::new()))
                                .expect("req"),
                        )
                        .await;
                        *seen
                            .lock()
                            .expect("seen")
                            .entry((r.header("x-origin").to_string(), r.status.as_u16()))
                            .or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks, seen }
    }

    /// Stops; (answers other than 200, all answers).
    pub async fn failures(self) -> (u64, u64) {
        let seen = self.finish().await;
        let failed = seen
            .iter()
            .filter(|((_, s), _)| *s != 200)
            .map(|(_, n)| n)
            .sum();
        (failed, seen.values().sum())
    }

    /// Stops; every answer counted by (`x-origin`, status).
    pub async fn finish(self) -> HashMap<(String, u16), u64> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let seen = self.seen.lock().expect("seen").clone();
        seen
    }
}
