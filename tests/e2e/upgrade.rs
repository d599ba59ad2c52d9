//! Binary upgrades: the running nrdot hands its sockets, lock and state to a new binary under
//! steady traffic, open WebSockets and a canary rollout; a failing binary leaves the old one
//! serving; `--rollback` returns to the binary before; the state directory admits one nrdot.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nrdot_tests::{pool, Nrdot, Origin};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BIN;

/// A copy of the binary with a few bytes appended: the same program (an ELF file ignores
/// what follows its sections) with a checksum of its own.
fn variant(dir: &Path, tag: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("nrdot-{tag}"));
    std::fs::copy(BIN, &path).expect("copy binary");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open copy");
    std::io::Write::write_all(&mut f, tag.as_bytes()).expect("append");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A "binary" that passes the version probe and then dies at start, as a build for the wrong
/// system or with a broken dependency would.
fn broken(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("nrdot-broken");
    std::fs::write(
        &path,
        "#!/bin/sh\nif [ \"$1\" = version ]; then echo 0.1.0-broken; exit 0; fi\necho 'nrdot-broken: cannot start' >&2\nexit 3\n",
    )
    .expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Requests until stopped, counting answers and failures; `fresh` clients open a connection
/// per request, the others keep theirs alive.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Traffic {
    fn start(url: &str, keepalive: usize, fresh: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..keepalive + fresh)
            .map(|i| {
                let (url, stop, ok, failures) = (
                    url.to_string(),
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failures),
                );
                let mut b = Client::builder(TokioExecutor::new());
                if i >= keepalive {
                    b.pool_max_idle_per_host(0);
                }
                let client = b.build_http::<Full<Bytes>>();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = Request::get(&url)
                            .body(Full::new(Bytes::new()))
                            .expect("req");
                        let outcome = match client.request(req).await {
                            Ok(r) if r.status() == 200 => match r.into_body().collect().await {
                                Ok(_) => Ok(()),
                                Err(e) => Err(format!("body: {e}")),
                            },
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures.lock().expect("failures").push(e);
                                0
                            }
                        };
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failures,
            tasks,
            started: Instant::now(),
        }
    }

    async fn finish(self) -> (u64, f64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        let ok = self.ok.load(Ordering::Relaxed);
        let rate = ok as f64 / self.started.elapsed().as_secs_f64();
        let failures = self.failures.lock().expect("failures").clone();
        (ok, rate, failures)
    }
}

/// An open WebSocket through nrdot (the test origin echoes after its 101).
struct Socket(tokio::net::TcpStream);

impl Socket {
    async fn open(addr: std::net::SocketAddr) -> Socket {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.expect("101 head");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Socket(s)
    }

    /// Sends a message and reads its echo; false when the tunnel is gone.
    async fn echo(&mut self, msg: &str) -> bool {
        if self.0.write_all(msg.as_bytes()).await.is_err() {
            return false;
        }
        let mut buf = vec![0u8; msg.len()];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.0.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && buf == msg.as_bytes()
    }
}

async fn upgrade(n: &Nrdot, body: &str) -> (u16, Value) {
    let r = n.api("POST", "/api/v2/upgrade", body, None).await;
    (r.status.as_u16(), r.json())
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_traffic_lose_no_request_and_keep_websockets() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let body = format!(
        "{}{}[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n",
        pool("stable", &[stable.addr]),
        pool("canary", &[canary.addr])
    );
    // A grace longer than the test: WebSockets on replaced processes must stay up throughout.
    let n = Nrdot::start(BIN, "shutdown_grace = \"120s\"", &body);
    let dir = n.dir.clone();
    let (b, bad) = (variant(&dir, "b"), broken(&dir));
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(Socket::open(n.addr).await);
    }
    let traffic = Traffic::start(&n.url("/"), 3, 2);
    let r = n
        .api(
            "POST",
            "/api/v2/rollouts",
            r#"{"kind":"canary","route":"app","to":"canary","steps":"10,50,100","interval":"4s"}"#,
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let rollout = r.json()["id"].as_u64().expect("rollout id");
    let first_pid = n.pid();
    let mut pids = vec![first_pid];
    let plan: [(&str, u16); 5] = [
        (
            &format!(r#"{{"binary":{:?}}}"#, b.display().to_string()),
            200,
        ),
        (
            &format!(r#"{{"binary":{:?}}}"#, bad.display().to_string()),
            502,
        ),
        ("", 200), // the path the running binary was started from: b
        (r#"{"rollback":true}"#, 200),
        (
            &format!(r#"{{"binary":{:?}}}"#, b.display().to_string()),
            200,
        ),
    ];
    for (i, (req, want)) in plan.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = n.pid();
        let (status, out) = upgrade(&n, req).await;
        assert_eq!(status, *want, "upgrade {i}: {out}");
        if status == 200 {
            let to = out["to_pid"].as_u64().expect("to_pid") as u32;
            assert_eq!(out["from_pid"].as_u64(), Some(before as u64), "{out}");
            assert_eq!(n.pid(), to, "the lock names the new process");
            pids.push(to);
        } else {
            assert_eq!(n.pid(), before, "a failed upgrade leaves the old process");
            assert!(
                out["error"].as_str().unwrap_or("").contains("exited"),
                "{out}"
            );
        }
        // Every WebSocket opened so far still echoes, and a new one opens on the new process.
        for (j, s) in sockets.iter_mut().enumerate() {
            assert!(
                s.echo(&format!("u{i}s{j}")).await,
                "websocket {j} dropped after upgrade {i}"
            );
        }
        sockets.push(Socket::open(n.addr).await);
    }
    // The rollout, begun in the first process, finishes in the last one.
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{rollout}"), "", None)
            .await
            .json();
        if r["phase"] != "progressing" || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (ok, rate, failures) = traffic.finish().await;
    assert_eq!(status["phase"], "completed", "{status}");
    eprintln!(
        "upgrade under traffic: {ok} requests, {rate:.0}/s, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {ok} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(rate >= 1000.0, "only {rate:.0} requests/s");
    for (j, s) in sockets.iter_mut().enumerate() {
        assert!(s.echo("end").await, "websocket {j} dropped");
    }
    // History: four upgrades made, one failed; the rollback ran the first binary's copy.
    let history = n.api("GET", "/api/v2/binaries", "", None).await.json();
    let records = history["binaries"].as_array().expect("records");
    assert_eq!(records.len(), 5, "{history}");
    assert_eq!(records.iter().filter(|r| r["outcome"] == "ok").count(), 4);
    assert_eq!(records[3]["kind"], "rollback");
    assert_eq!(records[3]["to"]["sha256"], records[0]["from"]["sha256"]);
    assert_ne!(records[0]["to"]["sha256"], records[0]["from"]["sha256"]);
    let verify = n.api("GET", "/api/v2/audit/verify", "", None).await;
    assert_eq!(
        verify.status,
        200,
        "{}",
        String::from_utf8_lossy(&verify.body)
    );
    // Replaced processes exit once their WebSockets close.
    drop(sockets);
    let last = *pids.last().expect("pid");
    for pid in &pids[..pids.len() - 1] {
        let t = Instant::now();
        while alive(*pid) && t.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(*pid), "replaced process {pid} still running");
    }
    assert!(alive(last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_binary_is_refused_before_anything_changes() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &nrdot_tests::pool_route(&[o.addr]));
    let pid = n.pid();
    let text = n.dir.join("not-executable");
    std::fs::write(&text, "hello").expect("write");
    for (binary, why) in [
        ("/nonexistent/nrdot", "No such file"),
        (text.to_str().expect("path"), "not an executable"),
        ("/bin/false", "not an nrdot binary"),
    ] {
        let (status, out) = upgrade(&n, &format!(r#"{{"binary":{binary:?}}}"#)).await;
        assert_eq!(status, 422, "{out}");
        assert!(out["error"].as_str().unwrap_or("").contains(why), "{out}");
    }
    // No earlier binary yet.
    let (status, out) = upgrade(&n, r#"{"rollback":true}"#).await;
    assert_eq!(status, 422, "{out}");
    let out = n.cli(&["upgrade", "--binary", "/bin/false"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an nrdot binary"));
    assert_eq!(n.pid(), pid);
    assert_eq!(nrdot_tests::get(&n.url("/"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_nrdot_on_the_same_state_dir_is_refused_with_the_holders_pid() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &nrdot_tests::pool_route(&[o.addr]));
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&n.config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("in use by nrdot PID {}", n.pid())),
        "{err}"
    );
    assert_eq!(nrdot_tests::get(&n.url("/"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_in_place_and_a_second_upgrade_waits_its_turn() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &nrdot_tests::pool_route(&[o.addr]));
    let before = n.pid();
    // Two at once: one runs, the other is refused with 409.
    let (a, b) = tokio::join!(upgrade(&n, ""), upgrade(&n, ""));
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    let second = n.pid();
    assert_ne!(second, before);
    n.signal("USR2");
    let t = Instant::now();
    while n.pid() == second && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(n.pid(), second, "SIGUSR2 started no new process");
    assert_eq!(nrdot_tests::get(&n.url("/"), &[]).await.status, 200);
    // And the command line, as an operator runs it.
    let third = n.pid();
    let out = n.cli(&["upgrade"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains(&format!("upgraded: PID {third}")), "{said}");
    assert_ne!(n.pid(), third);
    let out = n.cli(&["version", "history", "--binaries"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let short = std::process::Command::new(BIN)
        .args(["version", "--short"])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&short.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
}
