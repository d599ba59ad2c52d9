//! The admin API: credentials, versioned configuration, rollback, drains, audit, metrics.
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool, Nrdot, Origin};

use crate::BIN;

fn two_pools(target: &str, a: &Origin, b: &Origin) -> String {
    format!(
        "{}{}[[route]]\nname = \"r\"\npool = \"{target}\"\n",
        pool("a", &[a.addr]),
        pool("b", &[b.addr])
    )
}

/// The whole config file as the harness writes it, with `body` swapped in.
fn full_config(n: &Nrdot, body: &str) -> String {
    let current = std::fs::read_to_string(&n.config).expect("config");
    let prelude_end = current.find("[[pool]]").expect("pools in config");
    format!(
        "{}{body}\n[access_log]\nenabled = false\n",
        &current[..prelude_end]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_valid_credentials_change_nothing() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    let new_config = full_config(&n, &two_pools("b", &a, &b));
    let mut source = 10u8;
    for token in ["", "nrd_0000", "Bearer-less"] {
        for (method, path, body) in [
            ("PUT", "/api/v2/config", new_config.as_str()),
            ("POST", "/api/v2/config/rollback", "{\"version\": 1}"),
            (
                "POST",
                &format!("/api/v2/backends/a%2F{}/disable", a.addr),
                "",
            ),
            ("POST", "/api/v2/admin/rotate-token", ""),
            (
                "POST",
                "/api/v2/tokens",
                "{\"name\": \"x\", \"role\": \"admin\"}",
            ),
            ("GET", "/api/v2/config", ""),
        ] {
            // A fresh source address each time, so the failure throttle stays out of the way.
            source += 1;
            let from = Some(std::net::IpAddr::from([127, 0, 0, source]));
            let r = n.api_from(from, method, path, body, Some(token), &[]).await;
            assert_eq!(r.status, 401, "{method} {path} with {token:?}");
            assert_eq!(r.body, "{\"error\":\"unauthorized\"}");
            assert_eq!(r.header("www-authenticate"), "Bearer");
        }
    }
    // Nothing changed: same version, same routing, backend still enabled, token still valid.
    let v = n.api("GET", "/api/v2/version", "", None).await.json();
    assert_eq!(v["config_version"], 1);
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "a");
    let backends = n.api("GET", "/api/v2/backends", "", None).await.json();
    assert!(backends["backends"]
        .as_array()
        .expect("list")
        .iter()
        .all(|b| b["admin_state"] == "enabled"));
    // The refused mutations were audited.
    let audit = n
        .api("GET", "/api/v2/audit?limit=100", "", None)
        .await
        .json();
    let refused = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["outcome"] == "unauthorized")
        .count();
    assert_eq!(refused, 15);
    // Repeated failures from one address are answered ever more slowly: attempts 4..=7 wait
    // 100 + 200 + 400 + 800 ms; other addresses are not affected.
    let guesser = Some(std::net::IpAddr::from([127, 0, 0, 200]));
    let t = Instant::now();
    for _ in 0..7 {
        let r = n
            .api_from(guesser, "GET", "/api/v2/config", "", Some("nrd_bad"), &[])
            .await;
        assert_eq!(r.status, 401);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "no slowdown after many failures: {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(n.api("GET", "/api/v2/version", "", None).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(1500));
    // The health endpoint needs no credentials.
    assert_eq!(
        get(&format!("http://{}/health", n.admin), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_limit_what_a_token_can_do() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    let viewer = n
        .api(
            "POST",
            "/api/v2/tokens",
            "{\"name\": \"ci\", \"role\": \"viewer\"}",
            None,
        )
        .await
        .json()["token"]
        .as_str()
        .expect("token")
        .to_string();
    let operator = n
        .api(
            "POST",
            "/api/v2/tokens",
            "{\"name\": \"ops\", \"role\": \"operator\"}",
            None,
        )
        .await
        .json()["token"]
        .as_str()
        .expect("token")
        .to_string();
    assert_eq!(
        n.api("GET", "/api/v2/config", "", Some(&viewer))
            .await
            .status,
        200
    );
    assert_eq!(
        n.api(
            "PUT",
            "/api/v2/config",
            &full_config(&n, &two_pools("b", &a, &b)),
            Some(&viewer)
        )
        .await
        .status,
        403
    );
    let sel = format!("/api/v2/backends/{}/disable", a.addr);
    assert_eq!(n.api("POST", &sel, "", Some(&viewer)).await.status, 403);
    assert_eq!(n.api("POST", &sel, "", Some(&operator)).await.status, 200);
    assert_eq!(
        n.api(
            "PUT",
            "/api/v2/config",
            &full_config(&n, &two_pools("b", &a, &b)),
            Some(&operator)
        )
        .await
        .status,
        403
    );
    assert_eq!(
        n.api("GET", "/api/v2/tokens", "", Some(&operator))
            .await
            .status,
        403
    );
    let tokens = n.api("GET", "/api/v2/tokens", "", None).await;
    assert!(
        !tokens.body.windows(4).any(|w| w == b"nrd_"),
        "a secret leaked in the token list"
    );
    // Rotation: the old admin token stops working, the new one works and is in the file.
    let old = n.token();
    let rotated = n
        .api("POST", "/api/v2/admin/rotate-token", "", None)
        .await
        .json();
    let new = rotated["token"].as_str().expect("token").to_string();
    assert_eq!(
        n.api("GET", "/api/v2/version", "", Some(&old)).await.status,
        401
    );
    assert_eq!(
        n.api("GET", "/api/v2/version", "", Some(&new)).await.status,
        200
    );
    assert_eq!(n.token(), new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_validates_stores_swaps_and_rollback_restores() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    let got = n.api("GET", "/api/v2/config", "", None).await.json();
    assert_eq!(got["version"]["id"], 1);
    assert_eq!(got["version"]["checksum"].as_str().map(str::len), Some(64));
    assert!(got["toml"].as_str().expect("toml").contains("[[pool]]"));
    assert_eq!(got["json"]["route"][0]["pool"], "a");

    let to_b = full_config(&n, &two_pools("b", &a, &b));
    let r = n
        .api_with(
            "PUT",
            "/api/v2/config",
            &to_b,
            None,
            &[
                ("x-nrdot-message", "send traffic to b"),
                ("if-match", "\"1\""),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["version"]["id"], 2);
    assert_eq!(r.json()["version"]["message"], "send traffic to b");
    assert_eq!(r.json()["version"]["author"], "admin");
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");

    // Stale If-Match: 409, nothing changes.
    let r = n
        .api_with(
            "PUT",
            "/api/v2/config",
            &full_config(&n, &two_pools("a", &a, &b)),
            None,
            &[("if-match", "1")],
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["current_version"], 2);
    // Invalid: 422 with every problem and its position, nothing changes.
    let bad = full_config(
        &n,
        &format!(
            "{}[[route]]\nname = \"r\"\npool = \"ghost\"\ncolour = 1\n",
            pool("a", &[a.addr])
        ),
    );
    let r = n.api("PUT", "/api/v2/config", &bad, None).await;
    assert_eq!(r.status, 422);
    let problems = r.json()["problems"].as_array().expect("problems").clone();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .all(|p| p["line"].as_u64().unwrap_or(0) > 0 && p["column"].as_u64().unwrap_or(0) > 0));
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
    assert_eq!(
        n.api("GET", "/api/v2/version", "", None).await.json()["config_version"],
        2
    );

    // Rollback to 1: a new version with 1's content; traffic back on a.
    let r = n
        .api("POST", "/api/v2/config/rollback", "{\"version\": 1}", None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"]["id"], 3);
    assert_eq!(r.json()["version"]["parent"], 2);
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "a");
    let v1 = n
        .api("GET", "/api/v2/config/versions/1", "", None)
        .await
        .json();
    let v3 = n
        .api("GET", "/api/v2/config/versions/3", "", None)
        .await
        .json();
    assert_eq!(v1["checksum"], v3["checksum"]);
    assert_eq!(
        n.api("GET", "/api/v2/config/versions/99", "", None)
            .await
            .status,
        404
    );
    let list = n
        .api("GET", "/api/v2/config/versions", "", None)
        .await
        .json();
    assert_eq!(list["current"], 3);
    assert_eq!(list["versions"].as_array().map(Vec::len), Some(3));
    let diff = n
        .api("GET", "/api/v2/config/diff?from=1&to=2", "", None)
        .await
        .json();
    let text = diff["diff"].as_str().expect("diff");
    assert!(
        text.contains("-pool = \"a\"") && text.contains("+pool = \"b\""),
        "{text}"
    );
    assert_eq!(
        n.api("POST", "/api/v2/config/rollback", "{\"version\": 42}", None)
            .await
            .status,
        404
    );
    // A restart serves the current version, not the file it was started with.
    let mut n = n;
    let r = n.api("PUT", "/api/v2/config", &to_b, None).await;
    assert_eq!(r.json()["version"]["id"], 4);
    n.restart();
    assert_eq!(
        n.api("GET", "/api/v2/version", "", None).await.json()["config_version"],
        4
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_backend_gets_no_new_requests_while_its_in_flight_request_completes() {
    let (s1, s2) = (Origin::start("s1").await, Origin::start("s2").await);
    let body = format!(
        "{}[[route]]\nname = \"r\"\npool = \"p\"\n",
        pool("p", &[s1.addr, s2.addr])
    );
    let mut n = Nrdot::start(BIN, "", &body);
    let url = n.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&url, &[]).await });
    let mut busy = None;
    for _ in 0..200 {
        if s1.hits() + s2.hits() == 1 {
            busy = Some(if s1.hits() == 1 {
                (&s1, &s2)
            } else {
                (&s2, &s1)
            });
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (busy, other) = busy.expect("slow request reached a server");
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/p%2F{}/disable", busy.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 202, "not drained yet: {:?}", r.body);
    let j = r.json();
    assert_eq!(j["drained"], false);
    assert_eq!(j["backends"][0]["admin_state"], "draining");
    assert_eq!(j["backends"][0]["in_flight"], 1);
    let (busy_before, other_before) = (busy.hits(), other.hits());
    for _ in 0..20 {
        assert_eq!(get(&n.url("/"), &[]).await.status, 200);
    }
    assert_eq!(
        busy.hits(),
        busy_before,
        "a draining backend got new requests"
    );
    assert_eq!(other.hits(), other_before + 20);
    // Waiting returns once the in-flight request is done.
    let t = Instant::now();
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/{}/disable?wait=10s", busy.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["drained"], true);
    assert!(t.elapsed() < Duration::from_secs(5));
    let done = slow.await.expect("task");
    assert_eq!(done.status, 200, "the in-flight request was cut");
    assert_eq!(done.header("x-origin"), busy.name);
    // Admin state survives a restart.
    n.restart();
    let list = n.api("GET", "/api/v2/backends", "", None).await.json();
    let state = |addr: std::net::SocketAddr| {
        list["backends"]
            .as_array()
            .expect("list")
            .iter()
            .find(|b| b["address"] == addr.to_string())
            .map(|b| b["admin_state"].clone())
    };
    assert_eq!(state(busy.addr), Some("disabled".into()));
    assert_eq!(state(other.addr), Some("enabled".into()));
    for _ in 0..10 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), other.name);
    }
    let r = n
        .api(
            "POST",
            &format!("/api/v2/backends/{}/enable", busy.addr),
            "",
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(get(&n.url("/"), &[]).await.header("x-origin").to_string());
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(
        n.api("POST", "/api/v2/backends/nowhere/disable", "", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_config_puts_leaves_a_valid_store() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let mut n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    let configs = [
        full_config(&n, &two_pools("a", &a, &b)),
        full_config(&n, &two_pools("b", &a, &b)),
    ];
    for round in 0..3u64 {
        let admin = n.admin;
        let token = n.token();
        let configs = configs.clone();
        let writer = tokio::spawn(async move {
            let client = nrdot_tests::http_client();
            let mut ok = 0;
            for i in 0.. {
                let req = http::Request::put(format!("http://{admin}/api/v2/config"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        configs[i % 2].clone(),
                    )))
                    .expect("req");
                match client.request(req).await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    _ => break,
                }
            }
            ok
        });
        tokio::time::sleep(Duration::from_millis(150 + round * 70)).await;
        n.kill9();
        let accepted = writer.await.expect("writer");
        assert!(accepted > 0, "no PUT went through before the kill");
        n.restart();
        // Every stored version verifies, the current one is served, and traffic flows.
        let list = n.api("GET", "/api/v2/config/versions", "", None).await;
        assert_eq!(
            list.status, 200,
            "damaged store after kill -9: {:?}",
            list.body
        );
        let current = n.api("GET", "/api/v2/config", "", None).await.json();
        let id = current["version"]["id"].as_u64().expect("id");
        assert!(
            id as usize >= accepted,
            "an acknowledged version was lost: {id} < {accepted}"
        );
        assert!(["a", "b"].contains(&get(&n.url("/"), &[]).await.header("x-origin")));
        assert_eq!(
            n.api("GET", "/api/v2/audit/verify", "", None).await.status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chain_detects_an_edited_line() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    n.api(
        "PUT",
        "/api/v2/config",
        &full_config(&n, &two_pools("b", &a, &b)),
        None,
    )
    .await;
    n.api(
        "POST",
        &format!("/api/v2/backends/{}/disable", a.addr),
        "",
        None,
    )
    .await;
    n.api(
        "POST",
        &format!("/api/v2/backends/{}/enable", a.addr),
        "",
        None,
    )
    .await;
    let entries = n.api("GET", "/api/v2/audit", "", None).await.json()["entries"].clone();
    let actions: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "config.load",
            "config.apply",
            "backend.disable",
            "backend.enable"
        ]
    );
    assert_eq!(entries[1]["version_before"], 1);
    assert_eq!(entries[1]["version_after"], 2);
    let ok = n.api("GET", "/api/v2/audit/verify", "", None).await;
    assert_eq!(ok.json()["entries"], 4);
    let log = n.state_dir().join("audit.log");
    let text = std::fs::read_to_string(&log).expect("log");
    std::fs::write(
        &log,
        text.replacen("\"actor\":\"admin\"", "\"actor\":\"mallory\"", 1),
    )
    .expect("edit");
    let broken = n.api("GET", "/api/v2/audit/verify", "", None).await;
    assert_eq!(broken.status, 409);
    assert!(
        broken.json()["error"]
            .as_str()
            .expect("error")
            .contains("audit.log:2: content does not match"),
        "{:?}",
        broken.body
    );
    let out = n.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Parses Prometheus text format strictly enough to catch malformed output.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                matches!(words.first(), Some(&"TYPE") | Some(&"HELP")),
                "bad comment: {line}"
            );
            if words[0] == "TYPE" {
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&words[2]),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "bad labels: {line}");
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.push((series.to_string(), v));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_request_counters_match_requests_sent() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    // Route `r` is opted in to series of its own; `e` is not (issue 24: per-route series
    // multiply with the table).
    let body = format!("{}{}[[route]]\nname = \"r\"\nhost = \"r.test\"\npool = \"a\"\n[[route]]\nname = \"e\"\nhost = \"e.test\"\npool = \"b\"\n[metrics]\nroutes = [\"r*\"]\n", pool("a", &[a.addr]), pool("b", &[b.addr]));
    let n = Nrdot::start(BIN, "", &body);
    for _ in 0..137 {
        assert_eq!(get(&n.url("/"), &[("host", "r.test")]).await.status, 200);
    }
    for _ in 0..5 {
        assert_eq!(
            get(&n.url("/status/503"), &[("host", "e.test")])
                .await
                .status,
            503
        );
    }
    for _ in 0..3 {
        assert_eq!(
            get(&n.url("/"), &[("host", "nowhere.test")]).await.status,
            404
        );
    }
    get(&n.url("/big/1000"), &[("host", "r.test")]).await;
    let text = n.metrics_text().await;
    let samples = parse_prometheus(&text);
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(
        value("nrdot_requests_total{route=\"r\",pool=\"a\",class=\"2xx\"}"),
        138.0
    );
    assert!(
        !text.contains("route=\"e\""),
        "a route not opted in has series:\n{text}"
    );
    // Per pool, whatever the route.
    assert_eq!(
        value("nrdot_pool_requests_total{pool=\"a\",class=\"2xx\"}"),
        138.0
    );
    assert_eq!(
        value("nrdot_pool_requests_total{pool=\"b\",class=\"5xx\"}"),
        5.0
    );
    assert_eq!(
        value("nrdot_proxy_error_responses_total{status=\"404\"}"),
        3.0
    );
    assert_eq!(
        value("nrdot_upstream_response_seconds_count{pool=\"a\"}"),
        138.0
    );
    assert!(value("nrdot_pool_response_bytes_total{pool=\"a\"}") >= 1000.0);
    assert_eq!(value("nrdot_table_generation"), 1.0);
    assert_eq!(value("nrdot_config_version"), 1.0);
    assert_eq!(
        value(&format!(
            "nrdot_backend_up{{pool=\"a\",backend=\"{}\"}}",
            a.addr
        )),
        1.0
    );
    assert_eq!(
        value(&format!(
            "nrdot_backend_in_flight_requests{{pool=\"a\",backend=\"{}\"}}",
            a.addr
        )),
        0.0
    );
    assert!(value("nrdot_connections_total") >= 146.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_endpoint_and_each_answers() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let n = Nrdot::start(BIN, "", &two_pools("a", &a, &b));
    let doc = n.api("GET", "/api/v2/openapi.json", "", None).await.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["components"]["schemas"]["StartRollout"].is_object());
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 16);
    for (path, ops) in paths {
        if path.contains('{') || ops.get("get").is_none() {
            continue;
        }
        let r = n.api("GET", path, "", None).await;
        assert!(r.status.is_success(), "GET {path}: {}", r.status);
    }
    for path in [
        "/api/v2/config/versions/1",
        "/api/v2/config/diff?from=1&to=1",
    ] {
        assert_eq!(n.api("GET", path, "", None).await.status, 200, "{path}");
    }
    assert_eq!(
        n.api("DELETE", "/api/v2/config", "", None).await.status,
        405
    );
    assert_eq!(n.api("GET", "/api/v2/nothing", "", None).await.status, 404);
}
