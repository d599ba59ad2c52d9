use super::*;
use std::sync::atomic::Ordering;

fn table(text: &str) -> RouteTable {
    let config = Config::from_toml(text).unwrap_or_else(|e| panic!("{}", e.render("t")));
    RouteTable::compile(Arc::new(config), 1, None)
}

const ROUTES: &str = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:1"
[[pool]]
name = "p"
[[pool.server]]
address = "127.0.0.1:2"
[[route]]
name = "any-root"
pool = "p"
[[route]]
name = "any-api"
path = "/api"
pool = "p"
[[route]]
name = "any-api-v2"
path = "/api/v2"
pool = "p"
[[route]]
name = "beta"
path = "/api"
header = { name = "x-beta", value = "1" }
pool = "p"
[[route]]
name = "exact"
host = "example.com"
path = "/"
pool = "p"
[[route]]
name = "wild"
host = "*.example.com"
path = "/"
pool = "p"
[[route]]
name = "deep-wild"
host = "*.eu.example.com"
path = "/"
pool = "p"
[[route]]
name = "exact-only-static"
host = "static.test"
path = "/static"
pool = "p"
"#;

#[test]
fn route_longest_prefix_host_and_header() {
    let t = table(ROUTES);
    const CASES: &[(&str, &str, Option<&str>, &str)] = &[
        ("other.test", "/", None, "any-root"),
        ("other.test", "/apix", None, "any-api"),
        ("other.test", "/api/v2/users", None, "any-api-v2"),
        ("other.test", "/api/v1", Some("1"), "beta"),
        ("other.test", "/api/v1", Some("2"), "any-api"),
        ("other.test", "/api/v2", Some("1"), "any-api-v2"),
        ("example.com", "/api", None, "exact"),
        ("a.example.com", "/", None, "wild"),
        ("a.b.example.com", "/", None, "wild"),
        ("x.eu.example.com", "/", None, "deep-wild"),
        ("static.test", "/static/a.css", None, "exact-only-static"),
        ("static.test", "/other", None, "any-root"),
    ];
    for (host, path, beta, want) in CASES {
        let r = t
            .route(host, path, |name| {
                (name == "x-beta")
                    .then_some(())
                    .and(beta.map(str::as_bytes))
            })
            .map(|r| &*t.routes[r].name);
        assert_eq!(r, Some(*want), "{host}{path} beta={beta:?}");
    }
}

#[test]
fn route_none_without_catch_all() {
    let t = table(
        "[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[pool]]\nname=\"p\"\n[[pool.server]]\naddress=\"a:1\"\n[[route]]\nname=\"r\"\nhost=\"x.test\"\npool=\"p\"\n",
    );
    assert_eq!(t.route("y.test", "/", |_| None), None);
    assert_eq!(t.route("x.test", "/", |_| None), Some(0));
}

const SPLIT: &str = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:1"
[[pool]]
name = "stable"
[[pool.server]]
address = "127.0.0.1:2"
[[pool.server]]
address = "127.0.0.1:3"
weight = 3
[[pool]]
name = "canary"
[[pool.server]]
address = "127.0.0.1:4"
[[route]]
name = "r"
split = [{ pool = "stable", weight = 90 }, { pool = "canary", weight = 10 }]
"#;

#[test]
fn pick_override_sticky_and_weights() {
    let t = table(SPLIT);
    assert_eq!(t.pick(0, Some(b"canary"), None).entry, 1);
    assert_eq!(t.pick(0, Some(b"nope"), Some(0)).entry, 0);
    let mut counts = [0; 2];
    for _ in 0..1000 {
        counts[t.pick(0, None, None).entry] += 1;
    }
    assert_eq!(counts, [900, 100]);
}

#[test]
fn backend_round_robin_follows_weights_and_skips_disabled() {
    let t = table(SPLIT);
    let mut counts = HashMap::new();
    for _ in 0..400 {
        let b = &t.pools[0].backends[t.backend(0, 0, None, &[]).unwrap().index];
        *counts.entry(b.authority.as_str().to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts["127.0.0.1:2"], 100);
    assert_eq!(counts["127.0.0.1:3"], 300);
    t.pools[0].backends[1].state.set_enabled(false);
    for _ in 0..10 {
        assert_eq!(t.backend(0, 0, None, &[]).unwrap().index, 0);
    }
    // A retry excludes the server already tried.
    t.pools[0].backends[1].state.set_enabled(true);
    for _ in 0..10 {
        assert_eq!(t.backend(0, 0, None, &[0]).unwrap().index, 1);
    }
    t.pools[0].backends[1].state.set_enabled(false);
    t.pools[0].backends[0].state.set_enabled(false);
    assert_eq!(t.backend(0, 0, None, &[]), Err(NoBackend::Unavailable));
}

#[test]
fn backend_least_requests_prefers_idle() {
    let text = SPLIT.replace(
        "name = \"stable\"",
        "name = \"stable\"\nlb = \"least_requests\"",
    );
    let t = table(&text);
    t.pools[0].backends[1]
        .state
        .in_flight
        .store(5, Ordering::Relaxed);
    for roll in 0..200u64 {
        let i = t
            .backend(0, roll.wrapping_mul(0x9E37_79B9_7F4A_7C15), None, &[])
            .unwrap()
            .index;
        let b = &t.pools[0].backends[i];
        // Either both choices were the busy server's peer, or the idle one won.
        if b.authority.as_str() == "127.0.0.1:3" {
            let p = &t.pools[0];
            let a = p.order.bucket(roll.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let c = p
                .order
                .bucket(roll.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32));
            assert_eq!((a, c), (1, 1));
        }
    }
}

#[test]
fn compile_keeps_state_of_surviving_backends() {
    let t1 = table(SPLIT);
    t1.pools[0].backends[0]
        .state
        .requests
        .store(42, Ordering::Relaxed);
    let changed = SPLIT.replace("weight = 90", "weight = 50");
    let config = Config::from_toml(&changed).unwrap();
    let t2 = RouteTable::compile(Arc::new(config), 2, Some(&t1));
    assert!(Arc::ptr_eq(
        &t1.pools[0].backends[0].state,
        &t2.pools[0].backends[0].state
    ));
    assert!(Arc::ptr_eq(&t1.pools[0].state, &t2.pools[0].state));
    assert!(Arc::ptr_eq(&t1.routes[0].state, &t2.routes[0].state));
    assert_eq!(
        t2.pools[0].backends[0]
            .state
            .requests
            .load(Ordering::Relaxed),
        42
    );
}

fn pool_table(extra: &str, servers: usize) -> RouteTable {
    let mut text = format!(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[pool]]\nname = \"p\"\n{extra}\n"
    );
    for i in 0..servers {
        text.push_str(&format!("[[pool.server]]\naddress = \"10.0.0.{i}:80\"\n"));
    }
    text.push_str("[[route]]\nname = \"r\"\npool = \"p\"\n");
    table(&text)
}

#[test]
fn backend_hash_is_stable_and_moves_about_one_nth_when_a_server_is_added() {
    let before = pool_table("lb = \"hash\"\nhash_key = { header = \"x-user\" }", 9);
    let after = pool_table("lb = \"hash\"\nhash_key = { header = \"x-user\" }", 10);
    let keys: Vec<u64> = (0..20_000u64)
        .map(|k| crate::split::stable_hash(&k.to_le_bytes()))
        .collect();
    let pick = |t: &RouteTable, k: u64| {
        t.pools[0].backends[t.backend(0, 1, Some(k), &[]).unwrap().index]
            .authority
            .to_string()
    };
    let mut moved = 0;
    let mut reshuffled = 0;
    let mut per_server: HashMap<String, u32> = HashMap::new();
    for &k in &keys {
        let a = pick(&before, k);
        assert_eq!(a, pick(&before, k), "the same key went to two servers");
        let b = pick(&after, k);
        *per_server.entry(b.clone()).or_default() += 1;
        if a != b {
            moved += 1;
            if b != "10.0.0.9:80" {
                reshuffled += 1;
            }
        }
    }
    let share = moved as f64 / keys.len() as f64;
    assert!(
        (0.07..0.13).contains(&share),
        "{:.1}% of keys moved, expected about 10%",
        share * 100.0
    );
    // Maglev trades a little disruption for balance: few keys move between old servers.
    assert!(
        reshuffled * 50 < keys.len(),
        "{reshuffled} keys moved between old servers"
    );
    // Balanced: every server has roughly 1/10 of the keys.
    for (server, n) in &per_server {
        assert!((1_600..2_400).contains(n), "{server} has {n} keys");
    }
    // A server that goes away only moves its own keys.
    after.pools[0].backends[3].state.set_enabled(false);
    for &k in keys.iter().take(2000) {
        let b = pick(&after, k);
        assert_ne!(b, "10.0.0.3:80");
    }
}

#[test]
fn backend_circuit_breaker_reports_overload() {
    let t = pool_table("max_connections = 2", 2);
    for b in &t.pools[0].backends {
        b.state.in_flight.store(2, Ordering::Relaxed);
    }
    assert_eq!(t.backend(0, 7, None, &[]), Err(NoBackend::Overloaded));
    t.pools[0].backends[1]
        .state
        .in_flight
        .store(1, Ordering::Relaxed);
    assert_eq!(t.backend(0, 7, None, &[]).unwrap().index, 1);
}

#[test]
fn backend_fail_open_uses_unhealthy_servers() {
    let closed = pool_table("", 2);
    let open = pool_table("when_unavailable = \"fail_open\"", 2);
    for t in [&closed, &open] {
        for b in &t.pools[0].backends {
            b.state.set_health(crate::state::Health::Unhealthy);
        }
    }
    assert_eq!(closed.backend(0, 3, None, &[]), Err(NoBackend::Unavailable));
    let chosen = open.backend(0, 3, None, &[]).unwrap();
    assert!(chosen.fail_open);
    // Operator-disabled servers stay out even when failing open.
    for b in &open.pools[0].backends {
        b.state.set_enabled(false);
    }
    assert_eq!(open.backend(0, 3, None, &[]), Err(NoBackend::Unavailable));
}

#[test]
fn backend_slow_start_and_agent_weight_reduce_share() {
    let t = pool_table("slow_start = \"1h\"", 2);
    // Server 1 just came back: it takes about 10% of its share at first.
    t.pools[0].backends[1].state.set_enabled(false);
    t.pools[0].backends[1].state.set_enabled(true);
    let mut counts = [0u32; 2];
    for roll in 0..10_000u64 {
        counts[t
            .backend(0, crate::split::stable_hash(&roll.to_le_bytes()), None, &[])
            .unwrap()
            .index] += 1;
    }
    let share = counts[1] as f64 / 10_000.0;
    assert!(
        (0.03..0.09).contains(&share),
        "ramping server got {:.1}%",
        share * 100.0
    );
    // Agent drain: no traffic at all; 50%: the server takes half of its turns, the turns it
    // skips go to the next server, so a quarter of a two-server pool.
    let t = pool_table("", 2);
    t.pools[0].backends[0].state.set_agent_percent(0);
    for roll in 0..100u64 {
        assert_eq!(t.backend(0, roll, None, &[]).unwrap().index, 1);
    }
    t.pools[0].backends[0].state.set_agent_percent(50);
    let mut counts = [0u32; 2];
    for roll in 0..10_000u64 {
        counts[t
            .backend(0, crate::split::stable_hash(&roll.to_le_bytes()), None, &[])
            .unwrap()
            .index] += 1;
    }
    let share = counts[0] as f64 / 10_000.0;
    assert!(
        (0.20..0.30).contains(&share),
        "half-weight server got {:.1}%",
        share * 100.0
    );
}

#[test]
fn passive_ejection_grows_and_respects_the_cap() {
    let t = pool_table("[pool.outlier]\nconsecutive_failures = 3\nbase_ejection = \"10s\"\nmax_ejection_percent = 50", 2);
    let s0 = &t.pools[0].backends[0].state;
    assert_eq!(s0.record_outcome(true, 3, 10_000, || true), None);
    assert_eq!(
        s0.record_outcome(false, 3, 10_000, || true),
        None,
        "a success resets the count"
    );
    assert_eq!(s0.record_outcome(true, 3, 10_000, || true), None);
    assert_eq!(s0.record_outcome(true, 3, 10_000, || true), None);
    assert_eq!(s0.record_outcome(true, 3, 10_000, || true), Some(10_000));
    assert!(s0.ejected() && !s0.available());
    assert_eq!(t.backend(0, 0, None, &[]).unwrap().index, 1);
    // The cap says no: the second server stays in even after failing.
    let s1 = &t.pools[0].backends[1].state;
    for _ in 0..5 {
        assert_eq!(s1.record_outcome(true, 3, 10_000, || false), None);
    }
    assert!(s1.available());
}

#[test]
fn a_region_preferring_pool_stays_home_while_half_its_region_is_up() {
    let mut text = String::from(
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[pool]]\nname = \"p\"\nprefer_region = true\n",
    );
    for (port, region) in [(2, "eu"), (3, "us"), (4, "eu"), (5, "us")] {
        text.push_str(&format!(
            "[[pool.server]]\naddress = \"127.0.0.1:{port}\"\nregion = \"{region}\"\n"
        ));
    }
    text.push_str("[[route]]\nname = \"r\"\npool = \"p\"\n[cluster]\netcd = [\"http://127.0.0.1:1\"]\nnode = \"n\"\nregion = \"eu\"\n");
    let t = table(&text);
    let picks = |t: &RouteTable| -> std::collections::BTreeSet<usize> {
        (0..200u64)
            .map(|roll| t.backend(0, roll.wrapping_mul(0x9E37_79B9_7F4A_7C15), None, &[]))
            .filter_map(|c| c.ok().map(|c| c.index))
            .collect()
    };
    assert_eq!(picks(&t), [0, 2].into(), "only the node's own region");
    // Half of the region up: still at home.
    t.pools[0].backends[0]
        .state
        .set_health(crate::state::Health::Unhealthy);
    assert_eq!(picks(&t), [2].into());
    // Fewer than half: every available server.
    t.pools[0].backends[2]
        .state
        .set_health(crate::state::Health::Unhealthy);
    assert_eq!(picks(&t), [1, 3].into());
    // Without the preference (or outside a cluster) every server takes traffic.
    let plain = table(&text.replace("prefer_region = true\n", ""));
    assert_eq!(picks(&plain), [0, 1, 2, 3].into());
}
