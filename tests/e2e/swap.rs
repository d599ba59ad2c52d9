//! Hot swaps: SIGHUP reloads, invalid files keep the running table, and a swap storm under load
//! loses no request and never mixes generations.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nrdot_tests::{get, http_client, pool, send, KeepAlive, Nrdot, Origin};

use crate::BIN;

fn routes(target: &str, a: &Origin, b: &Origin) -> String {
    format!(
        "{}{}[[route]]\nname = \"r\"\npool = \"{target}\"\n",
        pool("a", &[a.addr]),
        pool("b", &[b.addr])
    )
}

async fn wait_generation(n: &Nrdot, want: u64) {
    for _ in 0..500 {
        if n.generation().await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("generation {want} never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_valid_and_rejects_invalid_config() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &routes("a", &a, &b));
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "a");
    n.rewrite_and_reload(&routes("b", &a, &b));
    wait_generation(&n, 2).await;
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
    // An invalid file: logged, and the running table keeps serving.
    n.rewrite_and_reload("[[route]]\nname = \"r\"\npool = \"ghost\"\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(n.generation().await, 2);
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
    let text = n.metrics_text().await;
    assert!(
        text.contains("nrdot_config_reloads_total{result=\"error\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_storm_under_load_loses_no_request() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    // Generation A routes to a; generation B splits between b and c. No generation allows
    // a mix such as a and c.
    let gen_a = format!(
        "{}{}{}[[route]]\nname = \"r\"\npool = \"a\"\n",
        pool("a", &[a.addr]),
        pool("b", &[b.addr]),
        pool("c", &[c.addr])
    );
    let gen_b = format!("{}{}{}[[route]]\nname = \"r\"\nsplit = [{{ pool = \"b\", weight = 50 }}, {{ pool = \"c\", weight = 50 }}]\n", pool("a", &[a.addr]), pool("b", &[b.addr]), pool("c", &[c.addr]));
    let n = Arc::new(Nrdot::start(BIN, "", &gen_a));
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (url, done) = (n.url("/"), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            let client = http_client();
            let mut sent = 0u32;
            while !done.load(Ordering::SeqCst) || sent < 2500 {
                let r = send(
                    &client,
                    Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await;
                assert_eq!(r.status, 200, "request {sent} failed: {:?}", r.body);
                assert!(["a", "b", "c"].contains(&r.header("x-origin")));
                sent += 1;
            }
            sent
        }));
    }
    let mut generation = 1;
    for i in 0..200 {
        n.rewrite_and_reload(if i % 2 == 0 { &gen_b } else { &gen_a });
        generation += 1;
        wait_generation(&n, generation).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client");
    }
    assert!(total >= 5000, "only {total} requests");
    assert_eq!(n.generation().await, 201);
    assert!(a.hits() > 0 && b.hits() > 0 && c.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_finishes_on_the_table_it_started_with() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &routes("a", &a, &b));
    let url = n.url("/sleep/800");
    let slow = tokio::spawn(async move { get(&url, &[]).await });
    // Wait until the slow request reached a, then swap the route to b.
    for _ in 0..200 {
        if a.hits() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.hits(), 1);
    n.rewrite_and_reload(&routes("b", &a, &b));
    wait_generation(&n, 2).await;
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
    let r = slow.await.expect("task");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_connections_survive_swaps() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &routes("a", &a, &b));
    // One client connection lands on one worker, which keeps one upstream connection.
    let mut conn = KeepAlive::connect(n.addr).await;
    for _ in 0..20 {
        assert_eq!(conn.get("/").await.0, 200);
    }
    assert_eq!(a.connections(), 1);
    for generation in 2..=6 {
        // Same pool and server, other settings elsewhere: a new table, same backend state.
        let body = format!("{}\n[[route]]\nname = \"extra{generation}\"\npath = \"/x{generation}\"\npool = \"b\"\n", routes("a", &a, &b));
        n.rewrite_and_reload(&body);
        wait_generation(&n, generation).await;
        for _ in 0..20 {
            let (_, head, _) = conn.get("/").await;
            assert!(head.contains("x-origin: a"), "{head}");
        }
    }
    assert_eq!(a.hits(), 120);
    assert_eq!(
        a.connections(),
        1,
        "a swap dropped the upstream keep-alive pool"
    );
}
