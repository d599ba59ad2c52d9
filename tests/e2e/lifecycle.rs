//! Process lifecycle: graceful shutdown on SIGTERM, the admin health summary.
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool_route, KeepAlive, Nrdot, Origin};

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    let o = Origin::start("o").await;
    let mut n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    // An idle keep-alive connection does not hold the exit back (it is closed, as nginx does).
    let mut idle = KeepAlive::connect(n.addr).await;
    assert_eq!(idle.get("/").await.0, 200);
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
    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 200, "in-flight request was cut");
    let status = n.wait_exit(Duration::from_secs(10)).expect("did not exit");
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(idle.closed().await);
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
