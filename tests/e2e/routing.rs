//! Routing by host, path and header; the weighted split, stickiness and overrides.
use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nrdot_tests::{get, http_client, pool, pool_route, send, Nrdot, Origin};

use crate::BIN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_and_header_and_404s_the_rest() {
    let (a, b, c, d) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
        Origin::start("d").await,
    );
    let body = format!(
        "{}{}{}{}
[[route]]
name = \"exact\"
host = \"shop.test\"
path = \"/\"
pool = \"a\"
[[route]]
name = \"wild\"
host = \"*.shop.test\"
pool = \"b\"
[[route]]
name = \"api\"
host = \"shop.test\"
path = \"/api\"
pool = \"c\"
[[route]]
name = \"beta\"
host = \"shop.test\"
path = \"/api\"
header = {{ name = \"x-beta\", value = \"yes\" }}
pool = \"d\"
",
        pool("a", &[a.addr]),
        pool("b", &[b.addr]),
        pool("c", &[c.addr]),
        pool("d", &[d.addr]),
    );
    let n = Nrdot::start(BIN, "", &body);
    const CASES: &[(&str, &str, Option<&str>, &str)] = &[
        ("shop.test", "/", None, "a"),
        ("SHOP.test:8080", "/x", None, "a"),
        ("eu.shop.test", "/", None, "b"),
        ("shop.test", "/api/items", None, "c"),
        ("shop.test", "/api/items", Some("yes"), "d"),
        ("shop.test", "/api/items", Some("no"), "c"),
    ];
    for (host, path, beta, want) in CASES {
        let mut h = vec![("host", *host)];
        if let Some(v) = beta {
            h.push(("x-beta", v));
        }
        let r = get(&n.url(path), &h).await;
        assert_eq!(r.status, 200, "{host}{path}");
        assert_eq!(r.header("x-origin"), *want, "{host}{path} beta={beta:?}");
    }
    let r = get(&n.url("/"), &[("host", "other.test")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("server"), "nrdot");
}

fn split_body(stable: &Origin, canary: &Origin, sticky: &str) -> String {
    format!(
        "{}{}
[[route]]
name = \"app\"
split = [{{ pool = \"stable\", weight = 90 }}, {{ pool = \"canary\", weight = 10 }}]
{sticky}
override = {{ header = \"x-nrdot-pool\", cookie = \"nrdot_pool\" }}
",
        pool("stable", &[stable.addr]),
        pool("canary", &[canary.addr]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_90_10_is_accurate_over_10000_requests() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(BIN, "", &split_body(&stable, &canary, ""));
    let client = http_client();
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), n.url("/"));
        tasks.push(tokio::spawn(async move {
            let mut local: HashMap<String, u32> = HashMap::new();
            for _ in 0..2500 {
                let r = send(
                    &client,
                    Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .expect("req"),
                )
                .await;
                assert_eq!(r.status, 200);
                *local.entry(r.header("x-origin").to_string()).or_default() += 1;
            }
            local
        }));
    }
    for t in tasks {
        for (k, v) in t.await.expect("task") {
            *counts.entry(k).or_default() += v;
        }
    }
    let canary_share = counts.get("canary").copied().unwrap_or(0) as f64 / 10_000.0;
    assert!(
        (canary_share - 0.10).abs() <= 0.01,
        "canary got {:.2}% ({counts:?})",
        canary_share * 100.0
    );
    assert_eq!(stable.hits() + canary.hits(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_keeps_each_client_on_one_side() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(
        BIN,
        "",
        &split_body(&stable, &canary, "sticky = { header = \"x-user\" }"),
    );
    let mut sides = HashMap::new();
    for round in 0..5 {
        for user in 0..200 {
            let u = format!("user-{user}");
            let r = get(&n.url("/"), &[("x-user", &u)]).await;
            let side = r.header("x-origin").to_string();
            let first = sides.entry(u.clone()).or_insert(side.clone());
            assert_eq!(*first, side, "{u} changed side in round {round}");
        }
    }
    let on_canary = sides.values().filter(|s| *s == "canary").count();
    assert!(
        (5..=45).contains(&on_canary),
        "{on_canary} of 200 users on canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_set_once_and_then_honoured() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(
        BIN,
        "",
        &split_body(&stable, &canary, "sticky = { cookie = \"nrdot_id\" }"),
    );
    for _ in 0..30 {
        let first = get(&n.url("/"), &[]).await;
        let set = first.header("set-cookie").to_string();
        assert!(set.starts_with("nrdot_id="), "{set}");
        let cookie = set.split(';').next().expect("pair").to_string();
        let side = first.header("x-origin").to_string();
        for _ in 0..5 {
            let r = get(&n.url("/"), &[("cookie", &cookie)]).await;
            assert_eq!(r.header("x-origin"), side);
            assert_eq!(r.header("set-cookie"), "", "cookie set again");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_header_and_cookie_force_a_pool() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(BIN, "", &split_body(&stable, &canary, ""));
    for _ in 0..20 {
        assert_eq!(
            get(&n.url("/"), &[("x-nrdot-pool", "canary")])
                .await
                .header("x-origin"),
            "canary"
        );
        assert_eq!(
            get(&n.url("/"), &[("cookie", "a=b; nrdot_pool=canary")])
                .await
                .header("x-origin"),
            "canary"
        );
        assert_eq!(
            get(&n.url("/"), &[("x-nrdot-pool", "stable")])
                .await
                .header("x-origin"),
            "stable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_round_robin_follows_server_weights() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let body = format!(
        "[[pool]]\nname = \"p\"\n[[pool.server]]\naddress = \"{}\"\nweight = 1\n[[pool.server]]\naddress = \"{}\"\nweight = 3\n[[route]]\nname = \"r\"\npool = \"p\"\n",
        a.addr, b.addr
    );
    let n = Nrdot::start(BIN, "", &body);
    for _ in 0..400 {
        assert_eq!(get(&n.url("/"), &[]).await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (100, 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_served() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for i in 0..10 {
        let r = send(
            &client,
            Request::get(n.url(&format!("/h2/{i}")))
                .body(Full::new(Bytes::new()))
                .expect("req"),
        )
        .await;
        assert_eq!(r.status, 200);
        let echo = r.json();
        assert_eq!(echo["path"], format!("/h2/{i}"));
        // The upstream got an HTTP/1.1 request with a Host header built from :authority.
        assert_eq!(echo["headers"]["host"][0], n.addr.to_string());
        assert_eq!(echo["headers"]["via"][0], "2.0 nrdot");
    }
}
