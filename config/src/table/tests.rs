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
        let b = t.backend(0, 0).unwrap();
        *counts.entry(b.authority.as_str().to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts["127.0.0.1:2"], 100);
    assert_eq!(counts["127.0.0.1:3"], 300);
    t.pools[0].backends[1]
        .state
        .enabled
        .store(false, Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(t.backend(0, 0).unwrap().authority.as_str(), "127.0.0.1:2");
    }
    t.pools[0].backends[0]
        .state
        .enabled
        .store(false, Ordering::Relaxed);
    assert!(t.backend(0, 0).is_none());
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
        let b = t
            .backend(0, roll.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .unwrap();
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
