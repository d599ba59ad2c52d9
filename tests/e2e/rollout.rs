//! Progressive delivery end to end, with windows of seconds: canary steps and automatic
//! rollbacks, the memory approval gate, blue-green, rolling upgrades, restarts, stickiness.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use nrdot_tests::{get, pool, Load, Nrdot, Origin};
use serde_json::{json, Value};

use crate::BIN;

fn app(stable: &Origin, canary: &Origin, sticky: &str) -> String {
    format!(
        "{}{}[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n{sticky}\n",
        pool("stable", &[stable.addr]),
        pool("canary", &[canary.addr])
    )
}

/// Pools blue and green, route `app` on blue.
fn blue_green(blue: &Origin, green: &Origin) -> String {
    format!(
        "{}{}[[route]]\nname = \"app\"\npool = \"blue\"\n",
        pool("blue", &[blue.addr]),
        pool("green", &[green.addr])
    )
}

async fn wait_phase(n: &Nrdot, id: u64, want: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["phase"] == want {
            return r;
        }
        assert!(
            t.elapsed() < within,
            "rollout {id} not {want} within {within:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start(n: &Nrdot, body: Value) -> u64 {
    let r = n
        .api("POST", "/api/v2/rollouts", &body.to_string(), None)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["id"].as_u64().expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_goes_10_50_100_and_completes() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(BIN, "", &app(&stable, &canary, ""));
    let load = Load::start(n.url("/"), 2);
    let out = n.cli(&[
        "rollout",
        "canary",
        "--route",
        "app",
        "--to",
        "canary",
        "--steps",
        "10,50,100",
        "--interval",
        "1s",
        "--error-for",
        "1s",
        "--follow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = load.finish().await;
    assert!(
        text.contains("step 2/3: 50%") && text.contains("completed"),
        "{text}"
    );
    assert!(seen.keys().all(|(_, status)| *status == 200), "{seen:?}");
    // Each step is a config version with a message; the canary now takes everything.
    let versions = n.cli(&["version", "history"]);
    let history = String::from_utf8_lossy(&versions.stdout);
    for m in [
        "rollout 1 step 1/3: 10%",
        "rollout 1 step 2/3: 50%",
        "rollout 1 step 3/3: 100%",
    ] {
        assert!(history.contains(m), "{m} missing from\n{history}");
    }
    for _ in 0..10 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "canary");
    }
    let audit = String::from_utf8_lossy(&n.cli(&["audit", "--limit", "100"]).stdout).to_string();
    assert!(
        audit.contains("rollout.step_passed") && audit.contains("rollout.completed"),
        "{audit}"
    );
    let m = n.metrics_text().await;
    assert!(
        m.contains("nrdot_rollout_weight_percent{rollout=\"1\",target=\"route app\"} 100"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_failing_20_percent_is_rolled_back_within_one_window() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    canary.set_fail_every(5);
    let n = Nrdot::start(BIN, "", &app(&stable, &canary, ""));
    let load = Load::start(n.url("/"), 3);
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": [50, 100], "interval": "30s", "error_for": "2s", "max_error_rate": "5%", "min_requests": 10})).await;
    let started = Instant::now();
    let r = wait_phase(&n, id, "rolled_back", Duration::from_secs(10)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.finish().await;
    assert!(took < Duration::from_secs(5), "rolled back after {took:?}");
    assert!(
        r["reason"].as_str().expect("reason").contains("error rate"),
        "{r}"
    );
    let rollback = r["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["kind"] == "rollback")
        .expect("rollback event")
        .clone();
    assert!(
        rollback["numbers"]["error_rate"].as_f64().expect("rate") > 0.1,
        "{rollback}"
    );
    // The stable side served no errors at any time; everyone is back on stable.
    let stable_errors: u64 = seen
        .iter()
        .filter(|((o, s), _)| o == "stable" && *s != 200)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(stable_errors, 0, "{seen:?}");
    for _ in 0..20 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "stable");
    }
    assert_eq!(
        n.cli(&["rollout", "status", &id.to_string()]).status.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_with_failing_health_checks_is_rolled_back() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let body = format!(
        "{}[[pool]]\nname = \"canary\"\n[pool.health_check]\npath = \"/status/200\"\ninterval = \"100ms\"\nfall = 1\n[[pool.server]]\naddress = \"{}\"\n[[route]]\nname = \"app\"\nsplit = [{{ pool = \"stable\", weight = 100 }}, {{ pool = \"canary\", weight = 0 }}]\n",
        pool("stable", &[stable.addr]),
        canary.addr
    );
    let n = Nrdot::start(BIN, "", &body);
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": [10, 100], "interval": "30s", "healthy_for": "1s", "min_requests": 100000})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    canary.stop();
    let r = wait_phase(&n, id, "rolled_back", Duration::from_secs(8)).await;
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("healthy backends 0% < 50%"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_trigger_pauses_for_approval_and_approve_continues() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(BIN, "", &app(&stable, &canary, ""));
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": [20, 100], "interval": "1s", "memory_threshold": "0.0001%", "memory_for": "500ms"})).await;
    let r = wait_phase(&n, id, "awaiting_approval", Duration::from_secs(8)).await;
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("memory usage"),
        "{r}"
    );
    // Paused where it was: no further step until approved.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = n
        .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
        .await
        .json();
    assert_eq!(still["phase"], "awaiting_approval");
    assert_eq!(still["weight"], 20);
    let out = n.cli(&["rollout", "approve", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_phase(&n, id, "completed", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_then_rolls_back_at_once_inside_the_keep_window() {
    let (blue, green) = (Origin::start("blue").await, Origin::start("green").await);
    let body = blue_green(&blue, &green);
    let n = Nrdot::start(BIN, "", &body);
    let out = n.cli(&[
        "rollout",
        "blue-green",
        "--route",
        "app",
        "--to",
        "green",
        "--keep-old",
        "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    while get(&n.url("/"), &[]).await.header("x-origin") != "green" {
        assert!(t.elapsed() < Duration::from_secs(5), "never switched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            get(&n.url("/"), &[]).await.header("x-origin"),
            "green",
            "the switch is not atomic"
        );
    }
    let r = n.api("POST", "/api/v2/rollouts/1/rollback", "", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["phase"], "rolled_back");
    // Instant: the very next request is on blue.
    for _ in 0..10 {
        assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "blue");
    }
    // A short keep window removes the old pool in a new version.
    let id = start(
        &n,
        json!({"kind": "blue-green", "route": "app", "to": "green", "keep_old": "500ms"}),
    )
    .await;
    wait_phase(&n, id, "completed", Duration::from_secs(8)).await;
    let cfg = n.api("GET", "/api/v2/config", "", None).await.json();
    assert!(
        !cfg["toml"]
            .as_str()
            .expect("toml")
            .contains("name = \"blue\""),
        "blue still configured"
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_of_four_backends_serves_zero_errors() {
    let origins: Arc<Mutex<HashMap<String, Origin>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut addrs = Vec::new();
    for i in 0..4 {
        let o = Origin::start(&format!("v1-{i}")).await;
        addrs.push(o.addr);
        origins
            .lock()
            .expect("origins")
            .insert(o.addr.to_string(), o);
    }
    // The hook calls this control server, which restarts the server on a new version.
    let control = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let control_addr = control.local_addr().expect("addr");
    let restarted = Arc::new(AtomicU64::new(0));
    {
        let (origins, restarted) = (Arc::clone(&origins), Arc::clone(&restarted));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = control.accept().await else {
                    continue;
                };
                let (origins, restarted) = (Arc::clone(&origins), Arc::clone(&restarted));
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (origins, restarted) =
                                (Arc::clone(&origins), Arc::clone(&restarted));
                            async move {
                                let server = req
                                    .uri()
                                    .query()
                                    .and_then(|q| q.strip_prefix("server="))
                                    .unwrap_or("")
                                    .to_string();
                                let addr: std::net::SocketAddr =
                                    server.parse().expect("server address");
                                if let Some(old) = origins.lock().expect("origins").remove(&server)
                                {
                                    old.stop();
                                }
                                let fresh =
                                    Origin::restart_on(&format!("v2-{}", addr.port()), addr).await;
                                origins.lock().expect("origins").insert(server, fresh);
                                restarted.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                    Bytes::from("restarted\n"),
                                )))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }
    let servers: String = addrs
        .iter()
        .map(|a| format!("[[pool.server]]\naddress = \"{a}\"\n"))
        .collect();
    let body = format!("[[pool]]\nname = \"web\"\n[pool.health_check]\npath = \"/\"\ninterval = \"200ms\"\n{servers}[[route]]\nname = \"r\"\npool = \"web\"\n");
    let n = Nrdot::start(BIN, "", &body);
    let load = Load::start(n.url("/"), 2);
    let hook = format!("curl -fsS 'http://{control_addr}/restart?server={{server}}'");
    let out = n.cli(&[
        "rollout", "rolling", "--pool", "web", "--batch", "2", "--hook", &hook, "--wait", "10s",
        "--follow",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = load.finish().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(restarted.load(Ordering::SeqCst), 4);
    let errors: u64 = seen
        .iter()
        .filter(|((_, s), _)| *s != 200)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(errors, 0, "errors during the rolling upgrade: {seen:?}");
    assert!(
        text.contains("batch 1/2") && text.contains("batch 2/2"),
        "{text}"
    );
    let mut now_serving = std::collections::HashSet::new();
    for _ in 0..20 {
        now_serving.insert(get(&n.url("/"), &[]).await.header("x-origin").to_string());
    }
    assert!(
        now_serving.iter().all(|o| o.starts_with("v2-")),
        "{now_serving:?}"
    );
    // A failing hook stops the rollout and reports it.
    let id = start(
        &n,
        json!({"kind": "rolling", "pool": "web", "batch": 2, "hook": "false", "wait": "5s"}),
    )
    .await;
    let r = wait_phase(&n, id, "failed", Duration::from_secs(10)).await;
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("hook failed"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_rollout_resumes_at_the_same_step() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let mut n = Nrdot::start(BIN, "", &app(&stable, &canary, ""));
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": [10, 50, 100], "interval": "60s"})).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = n
        .api("POST", &format!("/api/v2/rollouts/{id}/promote"), "", None)
        .await;
    assert_eq!(r.status, 200);
    let t = Instant::now();
    loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["step"] == 1 && r["weight"] == 50 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = n
        .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
        .await
        .json();
    n.restart();
    let after = n
        .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
        .await
        .json();
    assert_eq!(after["phase"], "progressing");
    assert_eq!(after["step"], 1);
    assert_eq!(after["weight"], 50);
    let (b, a) = (
        before["step_elapsed_ms"].as_u64().expect("ms"),
        after["step_elapsed_ms"].as_u64().expect("ms"),
    );
    assert!(
        a >= b.saturating_sub(1500) && a < 10_000,
        "time left not kept: {b} ms before, {a} ms after"
    );
    // The traffic split survived with the config version.
    let mut canary_seen = 0;
    for _ in 0..100 {
        if get(&n.url("/"), &[]).await.header("x-origin") == "canary" {
            canary_seen += 1;
        }
    }
    assert!(
        (40..=60).contains(&canary_seen),
        "{canary_seen}% on canary after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_never_flip_back_while_the_canary_grows() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(
        BIN,
        "",
        &app(&stable, &canary, "sticky = { header = \"x-user\" }"),
    );
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": [10, 30, 60, 100], "interval": "700ms", "error_for": "1s"})).await;
    let mut on_canary: HashMap<String, bool> = HashMap::new();
    let t = Instant::now();
    loop {
        for u in 0..60 {
            let user = format!("user-{u}");
            let side = get(&n.url("/"), &[("x-user", &user)])
                .await
                .header("x-origin")
                .to_string();
            let was = on_canary.entry(user.clone()).or_insert(false);
            if *was {
                assert_eq!(side, "canary", "{user} flipped back to stable");
            }
            *was = side == "canary";
        }
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["phase"] == "completed" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{r}");
    }
    assert!(on_canary.values().all(|c| *c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_step_plan_takes_its_planned_times() {
    let (stable, canary) = (Origin::start("stable").await, Origin::start("canary").await);
    let n = Nrdot::start(BIN, "", &app(&stable, &canary, ""));
    // Plans that do not increase or do not end at 100 are refused before anything starts.
    for bad in ["10,50", "50,10,100", "10:xs,100", "10:1s,100:1s,100"] {
        let r = n
            .api(
                "POST",
                "/api/v2/rollouts",
                &json!({"kind": "canary", "route": "app", "to": "canary", "steps": bad})
                    .to_string(),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(
        n.api("GET", "/api/v2/rollouts", "", None).await.json()["rollouts"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let load = Load::start(n.url("/"), 2);
    let t0 = Instant::now();
    let id = start(&n, json!({"kind": "canary", "route": "app", "to": "canary", "steps": "30:1s,60:3s,100", "interval": "1s", "min_requests": 1})).await;
    // When each step began, as seen from outside.
    let mut began = vec![Duration::ZERO];
    let status = loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        let step = r["step"].as_u64().unwrap_or(0) as usize;
        while began.len() <= step {
            began.push(t0.elapsed());
        }
        if r["phase"] != "progressing" || t0.elapsed() > Duration::from_secs(20) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let done = t0.elapsed();
    let (failed, total) = load.failures().await;
    eprintln!("per-step plan: steps began at {began:?}, completed at {done:?}; {failed} failed requests of {}", total);
    assert_eq!(status["phase"], "completed", "{status}");
    assert_eq!(failed, 0);
    let first = began[1] - began[0];
    let second = began[2] - began[1];
    assert!(
        first >= Duration::from_millis(900) && first < Duration::from_millis(2500),
        "step 1 took {first:?}"
    );
    assert!(
        second >= Duration::from_millis(2900) && second < Duration::from_millis(4500),
        "step 2 took {second:?}"
    );
    let out = n.cli(&["rollout", "status", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("step 2: 60% planned 3s, done"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_pauses_between_batches_but_not_after_the_last() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let body = format!(
        "{}[[route]]\nname = \"r\"\npool = \"web\"\n",
        pool("web", &[a.addr, b.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let load = Load::start(n.url("/"), 2);
    let t0 = Instant::now();
    let id = start(&n, json!({"kind": "rolling", "pool": "web", "batch": 1, "hook": "true", "wait": "10s", "pause": "2s"})).await;
    let (mut paused_at, mut resumed_at) = (None, None);
    let status = loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        match (r["stage"].as_str(), paused_at, resumed_at) {
            (Some("pause"), None, _) => paused_at = Some(t0.elapsed()),
            (s, Some(_), None) if s != Some("pause") => resumed_at = Some(t0.elapsed()),
            _ => {}
        }
        if r["phase"] != "progressing" || t0.elapsed() > Duration::from_secs(20) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (failed, total) = load.failures().await;
    eprintln!(
        "rolling with pause: paused {paused_at:?} to {resumed_at:?}; {failed} failed of {}",
        total
    );
    assert_eq!(status["phase"], "completed", "{status}");
    assert_eq!(failed, 0);
    let pause = resumed_at.expect("resumed") - paused_at.expect("paused");
    assert!(
        pause >= Duration::from_millis(1900) && pause < Duration::from_millis(3500),
        "{pause:?}"
    );
    let pauses = status["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "pause_over")
        .count();
    assert_eq!(pauses, 1, "one pause for two batches: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_moves_traffic_only_after_its_check_passes() {
    let (blue, green) = (Origin::start("blue").await, Origin::start("green").await);
    let body = blue_green(&blue, &green);
    let n = Nrdot::start(BIN, "", &body);
    let load = Load::start(n.url("/"), 2);
    // A check that cannot run is refused before anything starts.
    let r = n
        .api("POST", "/api/v2/rollouts", &json!({"kind": "blue-green", "route": "app", "to": "green", "check": "no-such-smoke-test --all"}).to_string(), None)
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("cannot be run"));
    // A failing check: the rollout fails and traffic never moves.
    let failing = start(&n, json!({"kind": "blue-green", "route": "app", "to": "green", "check": "sh -c 'echo smoke failed on {pool} >&2; exit 1'"})).await;
    let r = wait_phase(&n, failing, "failed", Duration::from_secs(10)).await;
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("smoke failed on green"),
        "{r}"
    );
    assert_eq!(
        nrdot_tests::get(&n.url("/"), &[]).await.header("x-origin"),
        "blue"
    );
    // A check that takes a second and passes: the switch waits for it.
    let t = Instant::now();
    let passing = start(&n, json!({"kind": "blue-green", "route": "app", "to": "green", "keep_old": "1h", "check": "sleep 1"})).await;
    let r = wait_phase_or_switched(&n, passing).await;
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "switched before the check ended: {r}"
    );
    assert_eq!(
        nrdot_tests::get(&n.url("/"), &[]).await.header("x-origin"),
        "green"
    );
    let (failed, total) = load.failures().await;
    eprintln!("blue-green with check: {failed} failed of {}", total);
    assert_eq!(failed, 0);
}

/// Waits until a blue-green rollout has switched (step 1).
async fn wait_phase_or_switched(n: &Nrdot, id: u64) -> Value {
    let t = Instant::now();
    loop {
        let r = n
            .api("GET", &format!("/api/v2/rollouts/{id}"), "", None)
            .await
            .json();
        if r["step"].as_u64() >= Some(1) || t.elapsed() > Duration::from_secs(15) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_change_that_breaks_a_pool_is_reverted_and_a_good_one_is_kept() {
    let (good, bad, good2) = (
        Origin::start("good").await,
        Origin::start("bad").await,
        Origin::start("good2").await,
    );
    bad.set_status(500);
    let body = format!(
        "{}{}{}[guard]\nerror_for = \"1s\"\nmin_requests = 5\n[[route]]\nname = \"app\"\npool = \"good\"\n",
        pool("good", &[good.addr]),
        pool("bad", &[bad.addr]),
        pool("good2", &[good2.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let original = std::fs::read_to_string(&n.config).expect("config");
    let v1 = n.api("GET", "/api/v2/version", "", None).await.json();
    let load = Load::start(n.url("/"), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to = |p: &str| original.replace("pool = \"good\"", &format!("pool = \"{p}\""));
    // A window shorter than the analysis is refused, and nothing changes.
    let short = n
        .api_with(
            "PUT",
            "/api/v2/config",
            &to("bad"),
            None,
            &[("x-nrdot-guard", "500ms")],
        )
        .await;
    assert_eq!(
        short.status,
        400,
        "{}",
        String::from_utf8_lossy(&short.body)
    );
    assert!(String::from_utf8_lossy(&short.body).contains("shorter than the analysis window"));
    assert_eq!(
        n.api("GET", "/api/v2/version", "", None).await.json()["config_version"],
        v1["config_version"]
    );
    // A change that sends the route to a failing pool: reverted within the window.
    let t = Instant::now();
    let r = n
        .api_with(
            "PUT",
            "/api/v2/config",
            &to("bad"),
            None,
            &[("x-nrdot-guard", "10s")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bad_version = r.json()["version"]["id"].as_u64().expect("version");
    let guard = r.json()["guard"]["rollout"]
        .as_u64()
        .expect("guard rollout");
    let reverted = wait_phase(&n, guard, "rolled_back", Duration::from_secs(10)).await;
    let took = t.elapsed();
    assert!(
        reverted["reason"]
            .as_str()
            .unwrap_or("")
            .contains("pool bad: error rate"),
        "{reverted}"
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "good");
    let now = n.api("GET", "/api/v2/version", "", None).await.json();
    assert_eq!(
        now["config_checksum"], v1["config_checksum"],
        "the old content is back"
    );
    let audit = n
        .api("GET", "/api/v2/audit?limit=20", "", None)
        .await
        .json()
        .to_string();
    assert!(
        audit.contains("rollout.rollback") && audit.contains("window_requests"),
        "{audit}"
    );
    let (failed, total) = load.failures().await;
    // A good change, guarded from the command line: kept, exit 0 after its window.
    let file = n.dir.join("good2.toml");
    std::fs::write(&file, to("good2")).expect("write");
    let t2 = Instant::now();
    let out = n.cli(&[
        "config",
        "apply",
        "--file",
        file.to_str().expect("path"),
        "-m",
        "to good2",
        "--guard",
        "2s",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t2.elapsed() >= Duration::from_secs(2));
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "good2");
    // A guarded rollback to the bad version is reverted too, and the command says so.
    let load = Load::start(n.url("/"), 2);
    let out = n.cli(&[
        "config",
        "rollback",
        &bad_version.to_string(),
        "--guard",
        "10s",
    ]);
    let _ = load.finish().await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "good2");
    eprintln!(
        "guarded apply: the bad change was reverted after {took:?}; {failed} of {} requests failed meanwhile",
        total
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_blue_green_switch_to_a_failing_pool_switches_back_on_its_own() {
    let (blue, green) = (Origin::start("blue").await, Origin::start("green").await);
    green.set_status(500);
    let body = blue_green(&blue, &green);
    let n = Nrdot::start(BIN, "", &body);
    // A guard shorter than its analysis window is refused.
    let r = n
        .api("POST", "/api/v2/rollouts", &json!({"kind": "blue-green", "route": "app", "to": "green", "guard": "1s", "error_for": "5s"}).to_string(), None)
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let load = Load::start(n.url("/"), 2);
    let t = Instant::now();
    let id = start(&n, json!({"kind": "blue-green", "route": "app", "to": "green", "keep_old": "1h", "guard": "10s", "error_for": "1s", "min_requests": 5})).await;
    let r = wait_phase(&n, id, "rolled_back", Duration::from_secs(10)).await;
    let took = t.elapsed();
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("pool green: error rate"),
        "{r}"
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "blue");
    let (failed, total) = load.failures().await;
    eprintln!("guarded blue-green: switched back after {took:?}; {failed} of {} requests failed meanwhile", total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_batch_that_raises_errors_stops_the_rollout_and_leaves_the_rest() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let body = format!(
        "{}[[route]]\nname = \"r\"\npool = \"web\"\n",
        pool("web", &[a.addr, b.addr, c.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    // The hook marks the server it "upgraded"; the new version of a answers 500.
    let marks = n.dir.join("upgraded");
    std::fs::create_dir_all(&marks).expect("marks");
    let a = Arc::new(a);
    let watcher = {
        let (a, mark) = (Arc::clone(&a), marks.join(a.addr.to_string()));
        tokio::spawn(async move {
            while !mark.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            a.set_status(500);
        })
    };
    let load = Load::start(n.url("/"), 2);
    let hook = format!("touch {}/{{server}}", marks.display());
    let id = start(&n, json!({"kind": "rolling", "pool": "web", "batch": 1, "hook": hook, "wait": "10s", "pause": "5s", "error_for": "1s", "min_requests": 5, "max_error_rate": "10%"})).await;
    let r = wait_phase(&n, id, "failed", Duration::from_secs(15)).await;
    watcher.abort();
    let (failed, total) = load.failures().await;
    eprintln!(
        "rolling with a bad batch: {} ; {failed} of {} requests failed",
        r["reason"], total
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("batch 1 raised the error rate"),
        "{r}"
    );
    assert!(
        !marks.join(b.addr.to_string()).exists() && !marks.join(c.addr.to_string()).exists(),
        "later batches ran"
    );
    let backends = n.api("GET", "/api/v2/backends", "", None).await.json();
    assert!(
        backends["backends"]
            .as_array()
            .expect("list")
            .iter()
            .all(|x| x["admin_state"] == "enabled"),
        "{backends}"
    );
}

/// Whether `series` is 1 on `/metrics` (None: not there).
async fn firing(n: &Nrdot, series: &str) -> Option<bool> {
    n.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim() == "1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_rollouts_the_triggers_raise_events_and_a_gauge() {
    let o = Origin::start("o").await;
    let body = format!(
        "{}[guard]\nerror_for = \"1s\"\nmin_requests = 5\n",
        nrdot_tests::pool_route(&[o.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let load = Load::start(n.url("/"), 2);
    let series = "nrdot_trigger_firing{trigger=\"error_rate\",pool=\"o\"}";
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        firing(&n, series).await,
        Some(false),
        "quiet while the pool answers 200"
    );
    o.set_status(503);
    let t = Instant::now();
    while firing(&n, series).await != Some(true) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fired_after = t.elapsed();
    assert_eq!(firing(&n, series).await, Some(true));
    o.set_status(200);
    let t = Instant::now();
    while firing(&n, series).await != Some(false) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(firing(&n, series).await, Some(false));
    let _ = load.finish().await;
    let events = n
        .api("GET", "/api/v2/events", "", None)
        .await
        .json()
        .to_string();
    assert!(
        events.contains("trigger.firing") && events.contains("trigger.resolved"),
        "{events}"
    );
    eprintln!("steady-state watch: fired {fired_after:?} after the pool began failing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_window_in_the_config_guards_every_api_change() {
    let (good, bad) = (Origin::start("good").await, Origin::start("bad").await);
    bad.set_status(500);
    let body = format!(
        "{}{}[guard]\nwindow = \"5s\"\nerror_for = \"1s\"\nmin_requests = 5\n[[route]]\nname = \"app\"\npool = \"good\"\n",
        pool("good", &[good.addr]),
        pool("bad", &[bad.addr])
    );
    let n = Nrdot::start(BIN, "", &body);
    let load = Load::start(n.url("/"), 2);
    let text = std::fs::read_to_string(&n.config)
        .expect("config")
        .replace("pool = \"good\"", "pool = \"bad\"");
    // No header: the configuration's [guard] window applies.
    let r = n.api("PUT", "/api/v2/config", &text, None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let guard = r.json()["guard"]["rollout"]
        .as_u64()
        .expect("guarded by default");
    wait_phase(&n, guard, "rolled_back", Duration::from_secs(10)).await;
    let (failed, total) = load.failures().await;
    eprintln!(
        "[guard] window: reverted; {failed} of {} requests failed",
        total
    );
    assert_eq!(get(&n.url("/"), &[]).await.header("x-origin"), "good");
}
