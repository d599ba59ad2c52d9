//! Backend health and resilience with real servers: active checks, passive ejection, retries,
//! circuit breaking, hashing, agent checks, fail-open, drains that close idle connections.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nrdot_tests::{get, http_client, send, Nrdot, Origin};

use crate::BIN;

fn servers(origins: &[&Origin]) -> String {
    origins
        .iter()
        .map(|o| format!("[[pool.server]]\naddress = \"{}\"\n", o.addr))
        .collect()
}

async fn backend_field(n: &Nrdot, addr: std::net::SocketAddr, field: &str) -> serde_json::Value {
    let list = n.api("GET", "/api/v2/backends", "", None).await.json();
    list["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .map(|b| b[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

async fn wait_for(
    n: &Nrdot,
    addr: std::net::SocketAddr,
    field: &str,
    want: serde_json::Value,
    within: Duration,
) -> Duration {
    let t = Instant::now();
    while t.elapsed() < within {
        if backend_field(n, addr, field).await == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} {field} never became {want} within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_fails_no_request_and_health_follows() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let body = format!(
        "[[pool]]\nname = \"p\"\nconnect_timeout = \"500ms\"\n[pool.health_check]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\nrise = 2\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        servers(&[&a, &b, &c])
    );
    let n = Nrdot::start(BIN, "", &body);
    wait_for(
        &n,
        b.addr,
        "health",
        "healthy".into(),
        Duration::from_secs(3),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, sent, failed) = (
            n.url("/"),
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&failed),
        );
        load.push(tokio::spawn(async move {
            let client = http_client();
            while !stop.load(Ordering::SeqCst) {
                let r = send(
                    &client,
                    Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await;
                sent.fetch_add(1, Ordering::SeqCst);
                if r.status != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_addr = b.addr;
    let killed_at = Instant::now();
    b.stop();
    let down = wait_for(
        &n,
        b_addr,
        "health",
        "unhealthy".into(),
        Duration::from_secs(3),
    )
    .await;
    // fall (2) x interval (200 ms) plus one check timeout and scheduling slack.
    assert!(
        down <= Duration::from_millis(1200),
        "marked down after {down:?}"
    );
    let hits_while_down = (a.hits(), c.hits());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.hits() > hits_while_down.0 && c.hits() > hits_while_down.1);
    // Restart it on the same port: back in rotation after `rise` passing checks.
    let b = Origin::restart_on("b", b_addr).await;
    wait_for(
        &n,
        b_addr,
        "health",
        "healthy".into(),
        Duration::from_secs(3),
    )
    .await;
    let before = b.hits();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load");
    }
    assert!(b.hits() > before, "the restarted backend got no traffic");
    assert!(
        sent.load(Ordering::SeqCst) > 100,
        "too little load: {}",
        sent.load(Ordering::SeqCst)
    );
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed while a backend died ({:?} after kill)",
        killed_at.elapsed()
    );
    let events = n.api("GET", "/api/v2/events", "", None).await.json();
    let kinds: Vec<String> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| {
            e["target"]
                .as_str()
                .is_some_and(|t| t.ends_with(&b_addr.to_string()))
        })
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        kinds.contains(&"backend.unhealthy".to_string())
            && kinds.contains(&"backend.healthy".to_string()),
        "{kinds:?}"
    );
    assert_eq!(n.cli(&["health", "check"]).status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_500_is_ejected_and_traffic_moves_to_its_peers() {
    let (good1, good2, bad) = (
        Origin::start("g1").await,
        Origin::start("g2").await,
        Origin::start("bad").await,
    );
    bad.set_status(500);
    let body = format!(
        "[[pool]]\nname = \"p\"\n[pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\nmax_ejection_percent = 50\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        servers(&[&good1, &good2, &bad])
    );
    let n = Nrdot::start(BIN, "", &body);
    for _ in 0..30 {
        get(&n.url("/"), &[]).await;
    }
    assert_eq!(bad.hits(), 3, "ejected after exactly 3 consecutive 500s");
    assert_eq!(backend_field(&n, bad.addr, "ejected").await, true);
    for _ in 0..30 {
        assert_eq!(get(&n.url("/"), &[]).await.status, 200);
    }
    assert_eq!(bad.hits(), 3, "an ejected backend got traffic");
    assert!(
        n.metric(&format!(
            "nrdot_backend_ejections_total{{pool=\"p\",backend=\"{}\"}}",
            bad.addr
        ))
        .await
            >= 1.0
    );
    // The cap: with 50%, a second failing server of three is not ejected as well.
    good2.set_status(500);
    for _ in 0..20 {
        get(&n.url("/"), &[]).await;
    }
    assert_eq!(
        backend_field(&n, good2.addr, "ejected").await,
        false,
        "cap exceeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_answers_503_at_once_and_retry_budget_caps_retries() {
    let slow = Origin::start("slow").await;
    let body = format!(
        "[[pool]]\nname = \"p\"\nmax_connections = 1\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        servers(&[&slow])
    );
    let n = Nrdot::start(BIN, "", &body);
    let url = n.url("/sleep/1500");
    let busy = tokio::spawn(async move { get(&url, &[]).await });
    while slow.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = Instant::now();
    let r = get(&n.url("/"), &[]).await;
    assert_eq!(r.status, 503);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the breaker queued the request for {:?}",
        t.elapsed()
    );
    assert_eq!(busy.await.expect("busy").status, 200);
    assert_eq!(n.metric("nrdot_pool_overflow_total{pool=\"p\"}").await, 1.0);
    drop(n);

    // Two servers that fail every request after 300 ms; 40 at once. Budget 20%: at most
    // max(10, 20% of 40) = 10 retries in flight.
    let (f1, f2) = (Origin::start("f1").await, Origin::start("f2").await);
    let body = format!("[[pool]]\nname = \"p\"\nretries = 1\nretry_budget = 20\n{}[[route]]\nname = \"r\"\npool = \"p\"\n", servers(&[&f1, &f2]));
    let n = Nrdot::start(BIN, "", &body);
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = n.url("/slowreset/300");
        tasks.push(tokio::spawn(async move { get(&url, &[]).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 502);
    }
    let retries = n.metric("nrdot_upstream_retries_total{pool=\"p\"}").await;
    let exhausted = n
        .metric("nrdot_upstream_retry_budget_exhausted_total{pool=\"p\"}")
        .await;
    assert!((1.0..=12.0).contains(&retries), "{retries} retries");
    assert!(exhausted >= 20.0, "budget refused only {exhausted} retries");
    assert_eq!(f1.hits() + f2.hits(), 40 + retries as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_moves_few_when_a_server_joins() {
    let os = [
        Origin::start("h0").await,
        Origin::start("h1").await,
        Origin::start("h2").await,
        Origin::start("h3").await,
    ];
    let pool_body = |k: usize| {
        format!(
            "[[pool]]\nname = \"p\"\nlb = \"hash\"\nhash_key = {{ header = \"x-user\" }}\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
            servers(&os.iter().take(k).collect::<Vec<_>>())
        )
    };
    let n = Nrdot::start(BIN, "", &pool_body(3));
    let mut before = HashMap::new();
    for u in 0..300 {
        let user = format!("user-{u}");
        let first = get(&n.url("/"), &[("x-user", &user)])
            .await
            .header("x-origin")
            .to_string();
        assert_eq!(
            get(&n.url("/"), &[("x-user", &user)])
                .await
                .header("x-origin"),
            first,
            "{user} moved without a change"
        );
        before.insert(user, first);
    }
    n.rewrite_and_reload(&pool_body(4));
    for _ in 0..200 {
        if n.generation().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut moved = 0;
    for (user, side) in &before {
        let now = get(&n.url("/"), &[("x-user", user)])
            .await
            .header("x-origin")
            .to_string();
        if &now != side {
            moved += 1;
        }
    }
    // 1/4 of the keys belong on the new server; allow a little Maglev reshuffle.
    assert!((40..=105).contains(&moved), "{moved} of 300 keys moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_drains_and_restores_a_backend() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let body = format!("[[pool]]\nname = \"p\"\n[pool.agent]\npath = \"/agent\"\ninterval = \"100ms\"\n{}[[route]]\nname = \"r\"\npool = \"p\"\n", servers(&[&a, &b]));
    let n = Nrdot::start(BIN, "", &body);
    b.set_agent("drain");
    wait_for(
        &n,
        b.addr,
        "agent_percent",
        0.into(),
        Duration::from_secs(3),
    )
    .await;
    let before = b.hits();
    for _ in 0..20 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "a");
    }
    // Only agent polls reached b while drained.
    assert!(b.hits() - before < 10);
    b.set_agent("up 100%");
    wait_for(
        &n,
        b.addr,
        "agent_percent",
        100.into(),
        Duration::from_secs(3),
    )
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(get(&n.url("/"), &[]).await.header("x-origin").to_string());
    }
    assert!(seen.contains("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_serves_when_every_check_fails_and_fail_closed_does_not() {
    let o = Origin::start("o").await;
    let check = "[pool.health_check]\npath = \"/status/500\"\ninterval = \"100ms\"\nfall = 1\n";
    let body = format!(
        "[[pool]]\nname = \"open\"\nwhen_unavailable = \"fail_open\"\n{check}{s}[[pool]]\nname = \"closed\"\n{check}{s}[[route]]\nname = \"open\"\npath = \"/open\"\npool = \"open\"\n[[route]]\nname = \"closed\"\npath = \"/closed\"\npool = \"closed\"\n",
        s = servers(&[&o])
    );
    let n = Nrdot::start(BIN, "", &body);
    wait_for(
        &n,
        o.addr,
        "health",
        "unhealthy".into(),
        Duration::from_secs(3),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(get(&n.url("/open"), &[]).await.status, 200);
    assert_eq!(get(&n.url("/closed"), &[]).await.status, 503);
    assert!(n.metric("nrdot_pool_fail_open_total{pool=\"open\"}").await >= 1.0);
    assert_eq!(
        get(&format!("http://{}/health", n.admin), &[]).await.status,
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_closes_idle_keepalive_connections() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let body = format!(
        "[[pool]]\nname = \"p\"\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        servers(&[&a, &b])
    );
    let n = Nrdot::start(BIN, "", &body);
    for _ in 0..10 {
        get(&n.url("/"), &[]).await;
    }
    assert!(a.open_connections() >= 1, "no keep-alive connection to a");
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/{}/disable?wait=5s", a.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.json()["drained"], true);
    let t = Instant::now();
    while a.open_connections() > 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.open_connections(),
        0,
        "idle connections to a drained backend stay open"
    );
    assert!(
        b.open_connections() >= 1,
        "connections to the other backend were closed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_status_sends_idempotent_requests_to_another_server_only() {
    let bad = Origin::start("bad").await;
    let good = Origin::start("good").await;
    bad.set_status(503);
    let body = format!(
        "[[pool]]\nname = \"p\"\nretries = 1\nretry_on = [\"503\"]\n{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        servers(&[&bad, &good])
    );
    let n = Nrdot::start(BIN, "", &body);
    // Keep-alive on one connection, so the retried attempt's answer is the one relayed.
    let mut c = nrdot_tests::KeepAlive::connect(n.addr).await;
    for _ in 0..10 {
        let (status, _, body) = c.get("/x").await;
        assert_eq!(status, 200);
        let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(e["origin"], "good");
    }
    assert!(bad.hits() >= 1, "the failing server was never tried");
    // A POST is not idempotent: its 503 is the answer.
    let hits = good.hits();
    let mut saw_503 = false;
    for _ in 0..10 {
        c.send(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            .await;
        let (status, _, _) = c.response().await;
        saw_503 |= status == 503;
    }
    assert!(saw_503, "POSTs were retried");
    assert!(good.hits() - hits < 10);
}
