//! Process lifecycle: graceful shutdown on SIGTERM, the admin health summary.
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool_route, KeepAlive, Nrdot, Origin};

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let o = Origin::start("o").await;
    let mut n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    // Idle keep-alive connections: one sends another request during the drain and is answered
    // with `Connection: close`; one stays silent and is closed after a few seconds.
    let mut idle = KeepAlive::connect(n.addr).await;
    assert_eq!(idle.get("/").await.0, 200);
    let mut silent = KeepAlive::connect(n.addr).await;
    assert_eq!(silent.get("/").await.0, 200);
    let url = n.url("/sleep/1000");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    n.signal("TERM");
    // New connections are refused soon after the signal.
    let addr = n.addr;
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "still accepting after SIGTERM");
    let (status, head, _) = idle.get("/").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(idle.closed().await);
    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "in-flight request was cut");
    assert!(silent.closed().await || silent.closed().await);
    let status = n.wait_exit(Duration::from_secs(10)).expect("did not exit");
    assert!(status.success(), "{status}");
    // The silent connection got `CLOSE_IDLE_AFTER` (5 s), not the 10 s grace.
    let took = t.elapsed();
    assert!(
        took > Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_pools_and_generation() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let h = n.health().await;
    assert_eq!(h["status"], "ok");
    assert_eq!(h["generation"], 1);
    assert_eq!(h["pools"][0]["name"], "o");
    assert_eq!(h["pools"][0]["available"], 1);
    assert_eq!(h["config_checksum"].as_str().map(str::len), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_both_logs_after_logrotate_moved_them() {
    let o = Origin::start("o").await;
    let dir = nrdot_tests::temp_dir("logs");
    let (log, access) = (dir.join("nrdot.log"), dir.join("access.log"));
    let body = format!(
        "{}[log]\nlevel = \"info\"\nfile = {:?}\nformat = \"json\"\n[access_log]\nenabled = true\npath = {:?}\n",
        pool_route(&[o.addr]),
        log.display().to_string(),
        access.display().to_string()
    );
    let n = Nrdot::start(BIN, "", &body);
    assert_eq!(get(&n.url("/first"), &[]).await.status, 200);
    // nrdot's own log is JSON lines in its file (the fd limit is logged at start).
    let wait_for = |path: std::path::PathBuf, needle: &'static str| async move {
        for _ in 0..100 {
            if std::fs::read_to_string(&path)
                .unwrap_or_default()
                .contains(needle)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(wait_for(access.clone(), "/first").await);
    let first = std::fs::read_to_string(&log).expect("nrdot.log");
    let line = first
        .lines()
        .find(|l| l.contains("open-file limit"))
        .expect("limit line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert!(v["fields"]["limit"].as_u64().is_some(), "{line}");
    // logrotate: move both away, then USR1.
    std::fs::rename(&log, dir.join("nrdot.log.1")).expect("rotate");
    std::fs::rename(&access, dir.join("access.log.1")).expect("rotate");
    n.signal("USR1");
    assert!(
        wait_for(log.clone(), "log files reopened").await,
        "nrdot.log not reopened"
    );
    assert_eq!(get(&n.url("/second"), &[]).await.status, 200);
    assert!(
        wait_for(access.clone(), "/second").await,
        "access.log not reopened"
    );
    let old = std::fs::read_to_string(dir.join("access.log.1")).expect("old access log");
    assert!(old.contains("/first") && !old.contains("/second"), "{old}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_oldest_idle_connection_then_makes_new_ones_wait() {
    let o = Origin::start("o").await;
    let body = format!("{}[limits]\nmax_connections = 2\n", pool_route(&[o.addr]));
    let n = Nrdot::start(BIN, "worker_threads = 1", &body);
    let mut a = KeepAlive::connect(n.addr).await;
    assert_eq!(a.get("/").await.0, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = KeepAlive::connect(n.addr).await;
    assert_eq!(b.get("/").await.0, 200);
    // A third: the oldest idle one (a) is closed to make room; b stays.
    let mut c = KeepAlive::connect(n.addr).await;
    assert_eq!(c.get("/").await.0, 200);
    assert!(a.closed().await, "the oldest idle connection was kept");
    assert_eq!(b.get("/").await.0, 200);
    drop((b, c));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Both slots busy with slow requests: a new connection waits in the backlog, then is served.
    let slow = |path: &'static str| {
        let url = n.url(path);
        tokio::spawn(async move { get(&url, &[]).await.status })
    };
    let (d, e) = (slow("/sleep/1500"), slow("/sleep/1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let mut f = KeepAlive::connect(n.addr).await;
    assert_eq!(f.get("/").await.0, 200);
    let waited = t.elapsed();
    assert!(
        waited > Duration::from_millis(800),
        "served at once: {waited:?}"
    );
    assert_eq!(d.await.expect("d"), 200);
    assert_eq!(e.await.expect("e"), 200);
}
