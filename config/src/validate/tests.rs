use super::*;

fn problems(text: &str) -> Vec<ValidationError> {
    match config(text, None) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().to_vec(),
    }
}

const VALID: &str = r#"
worker_threads = 2
state_dir = "/tmp/nrdot"

[[listener]]
name = "http"
bind = "127.0.0.1:8000"

[[pool]]
name = "stable"
  [[pool.server]]
  address = "127.0.0.1:9001"

[[pool]]
name = "canary"
  [[pool.server]]
  address = "localhost:9002"
  weight = 3

[[route]]
name = "api"
host = ["example.com", "*.example.com"]
path = "/api"
split = [{ pool = "stable", weight = 90 }, { pool = "canary", weight = 10 }]
sticky = { cookie = "nrdot_id" }
override = { header = "X-Nrdot-Pool" }

[[route]]
name = "default"
pool = "stable"
"#;

#[test]
fn validate_accepts_full_config() {
    let c = config(VALID, None).expect("valid");
    assert_eq!(c.listeners[0].bind.port(), 8000);
    assert_eq!(c.routes[0].split[1].weight, 10);
    assert_eq!(c.routes[0].override_header.as_deref(), Some("x-nrdot-pool"));
    assert_eq!(c.pools[1].servers[0].weight, 3);
    assert_eq!(c.limits.client_max_body_size, 10 * 1024 * 1024);
    assert_eq!(c.limits.keepalive_timeout.as_secs(), 65);
}

#[test]
fn validate_reports_every_problem_with_position() {
    let text = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:80"
colour = "red"

[[listener]]
name = "a"
bind = "127.0.0.1:80"

[limits]
client_max_body_size = "10q"
keepalive_timeout = "soon"

[[pool]]
name = "p"
  [[pool.server]]
  address = "not an address"
  weight = 0

[[route]]
name = "r"
split = [{ pool = "p", weight = 0 }, { pool = "ghost", weight = 0 }]
"#;
    let p = problems(text);
    let find = |path: &str| {
        p.iter()
            .find(|e| e.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {p:#?}"))
    };
    let unknown = find("listener[0].colour");
    assert_eq!((unknown.line, unknown.column), (5, 1));
    let dup = find("listener[1].name");
    assert!(dup.message.contains("duplicate"), "{dup:?}");
    assert_eq!((dup.line, dup.column), (8, 8));
    assert!(find("listener[1].bind").message.contains("already bound"));
    let size = find("limits.client_max_body_size");
    assert_eq!((size.line, size.column), (12, 24));
    find("limits.keepalive_timeout");
    find("pool[0].server[0].address");
    assert!(find("pool[0]").message.contains("weight 0"));
    assert!(find("route[0].split[1].pool")
        .message
        .contains("undefined pool"));
    assert!(find("route[0].split").message.contains("all weights"));
    assert!(p.len() >= 9, "{p:#?}");
    // Sorted by position, so an editor can walk them top to bottom.
    assert!(p
        .windows(2)
        .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
}

#[test]
fn validate_syntax_error_has_position() {
    let p = problems("[[listener]]\nname = \"a\nbind = 1\n");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, 2);
    assert!(p[0].message.contains("TOML syntax error"), "{:?}", p[0]);
}

#[test]
fn validate_rejects_bad_values() {
    const CASES: &[(&str, &str)] = &[
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1\"\n", "listener[0].bind"),
        ("worker_threads = 0\n[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n", "worker_threads"),
        ("version = 2\n[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n", "version"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:8080\"\n", "listener[0].bind"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[route]]\nname=\"r\"\npath=\"x\"\npool=\"p\"\n", "route[0].path"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[access_log]\nformat=\"xml\"\n", "access_log.format"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[pool]]\nname=\"p\"\nlb=\"fastest\"\n[[pool.server]]\naddress=\"a:1\"\n", "pool[0].lb"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[pool]]\nname=\"p\"\n", "pool[0]"),
        ("trusted_proxies=[\"10.0.0.0/33\"]\n[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n", "trusted_proxies[0]"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[metrics]\nroutes=[\"\"]\n", "metrics.routes[0]"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[metrics]\nper_route=\"yes\"\n", "metrics.per_route"),
        ("[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[metrics]\nroute=[\"a\"]\n", "metrics.route"),
    ];
    for (text, path) in CASES {
        let p = problems(text);
        assert!(p.iter().any(|e| e.path == *path), "{path}: {p:#?}");
    }
}

#[test]
fn validate_rejects_shadowed_route() {
    let text = "[[listener]]\nname=\"a\"\nbind=\"127.0.0.1:1\"\n[[pool]]\nname=\"p\"\n[[pool.server]]\naddress=\"a:1\"\n[[route]]\nname=\"r1\"\npool=\"p\"\n[[route]]\nname=\"r2\"\npool=\"p\"\n";
    let p = problems(text);
    assert!(
        p.iter().any(|e| e.message.contains("matches exactly")),
        "{p:#?}"
    );
}

#[test]
fn validate_render_has_file_line_column() {
    let p = problems("[[listener]]\nname=\"a\"\nbind=\"x\"\n");
    assert_eq!(
        p[0].render("nrdot.toml"),
        "nrdot.toml:3:6: listener[0].bind: invalid address \"x\": expected ip:port, like 0.0.0.0:80 or [::]:443"
    );
}

#[test]
fn cidr_contains() {
    let c = parse_cidr("10.0.0.0/8").unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(parse_cidr("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(parse_cidr("0.0.0.0/0")
        .unwrap()
        .contains("1.2.3.4".parse().unwrap()));
}

const WITH_ENVS: &str = r#"
[[listener]]
name = "http"
bind = "0.0.0.0:80"

[limits]
client_max_body_size = "10m"
keepalive_requests = 500

[[pool]]
name = "web"
  [[pool.server]]
  address = "10.0.0.1:80"

[[route]]
name = "r"
pool = "web"

[environment.staging]
worker_threads = 1
limits = { client_max_body_size = "1m" }
[[environment.staging.listener]]
name = "http"
bind = "127.0.0.1:8000"
[[environment.staging.pool]]
name = "web"
  [[environment.staging.pool.server]]
  address = "127.0.0.1:9000"
"#;

#[test]
fn environment_overlay_replaces_and_merges() {
    let base = config(WITH_ENVS, None).expect("base valid");
    assert_eq!(base.listeners[0].bind.port(), 80);
    let staging = config(WITH_ENVS, Some("staging")).expect("staging valid");
    assert_eq!(staging.worker_threads, Some(1));
    assert_eq!(staging.listeners[0].bind.port(), 8000);
    assert_eq!(staging.pools[0].servers[0].address, "127.0.0.1:9000");
    assert_eq!(staging.limits.client_max_body_size, 1024 * 1024);
    // Merged, not replaced: the base's other limits stay.
    assert_eq!(staging.limits.keepalive_requests, 500);
    let p = match config(WITH_ENVS, Some("prod")) {
        Err(e) => e.problems().to_vec(),
        Ok(_) => panic!("unknown environment accepted"),
    };
    assert!(p[0]
        .message
        .contains("unknown environment \"prod\" (defined: staging)"));
}

#[test]
fn environment_errors_are_found_without_selecting_it() {
    let text = WITH_ENVS.replace("address = \"127.0.0.1:9000\"", "address = \"nope\"");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].message.contains("in environment \"staging\""),
        "{p:#?}"
    );
    assert_eq!(p[0].line, 28);
    let text = WITH_ENVS.replace("worker_threads = 1", "colour = 1");
    assert!(problems(&text)
        .iter()
        .any(|e| e.path == "environment.staging.colour"));
}

#[test]
fn log_and_max_connections_are_read_and_bad_values_are_placed() {
    let text = format!(
        "{VALID}\n[log]\nlevel = \"debug\"\nfile = \"/var/log/nrdot/nrdot.log\"\nformat = \"json\"\n[limits]\nmax_connections = 1024\n"
    );
    let c = config(&text, None).expect("valid");
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.file, "/var/log/nrdot/nrdot.log");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.limits.max_connections, 1024);
    let defaults = config(VALID, None).expect("valid");
    assert_eq!(defaults.log, Logging::default());
    assert_eq!(defaults.limits.max_connections, 0);
    let bad = format!(
        "{VALID}\n[log]\nlevel = \"loud\"\nformat = \"xml\"\n[limits]\nmax_connections = -1\n"
    );
    let p = problems(&bad);
    let paths: Vec<&str> = p.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["log.level", "log.format", "limits.max_connections"],
        "{p:?}"
    );
    let at = bad.find("level = \"loud\"").expect("in text");
    assert_eq!(p[0].line, bad[..at].matches('\n').count() + 1, "{p:?}");
    assert_eq!(p[0].column, 9, "{p:?}");
}

#[test]
fn metrics_export_routes_by_pattern_only_when_asked() {
    let c = config(VALID, None).expect("valid");
    assert!(!c.metrics.exports("api"), "per-route series are opt-in");
    let text = format!("{VALID}\n[metrics]\nroutes = [\"ap*\", \"*-admin\"]\n");
    let c = config(&text, None).expect("valid");
    assert!(c.metrics.exports("api") && c.metrics.exports("shop-admin"));
    assert!(!c.metrics.exports("default"));
    let c = config(&format!("{VALID}\n[metrics]\nper_route = true\n"), None).expect("valid");
    assert!(c.metrics.exports("default"));
}

#[test]
fn glob_patterns_match_runs_of_any_characters() {
    use crate::model::glob_match as m;
    assert!(m("api", "api") && !m("api", "api2") && !m("api", "ap"));
    assert!(m("shop*", "shop") && m("shop*", "shop-eu") && !m("shop*", "eshop"));
    assert!(m("*", "") && m("*", "anything"));
    assert!(m("*-api", "eu-api") && !m("*-api", "eu-api-2"));
    assert!(m("a*b*c", "a-b-c") && m("a*b*c", "abc") && !m("a*b*c", "acb"));
    assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
}

/// Route sections parsed one by one must answer exactly as the whole document does, for valid
/// files and for problems in the sections, around them and in overlays.
#[test]
fn route_sections_answer_like_the_whole_document() {
    let edits: &[(&str, &str)] = &[
        ("# end", ""),
        ("path = \"/api\"", "path = \"api\""),
        ("pool = \"stable\"\n# end", "pool = \"nope\"\n# end"),
        ("name = \"default\"", "name = \"api\""),
        ("name = \"default\"", "name = \"default\"\nbogus = 1"),
        ("name = \"default\"", "name = \"default\n"),
        ("worker_threads = 2", "worker_threads = 0"),
        (
            "[[route]]\nname = \"api\"",
            "[route.x]\n[[route]]\nname = \"api\"",
        ),
        ("# end", "[route.sticky]\ncookie = 1\n"),
        (
            "# end",
            "[environment.prod]\nroute = [{ name = \"x\", pool = \"no\" }]\n",
        ),
        ("# end", "[environment.prod]\nworker_threads = 0\n"),
        ("# end", "[[region.eu.pool]]\nname = \"x\"\n"),
        (
            "name = \"default\"",
            "name = \"default\"\nnote = '''\n[[route]]'''",
        ),
    ];
    let valid = format!("{VALID}# end\n");
    for (from, to) in edits {
        let text = valid.replacen(from, to, 1);
        let text = text.as_str();
        let cut = config(text, None).map_err(|e| e.problems().to_vec());
        let whole = whole_document(text, Place::default()).map_err(|e| e.problems().to_vec());
        assert_eq!(cut.is_ok(), whole.is_ok(), "{to}");
        if let (Err(a), Err(b)) = (&cut, &whole) {
            assert_eq!(a, b, "{to}");
        }
        if to.is_empty() {
            assert!(sections::route_sections(text).is_some());
            assert_eq!(cut.map(|c| c.routes.len()), Ok(2));
        }
    }
}

#[test]
fn cluster_needs_endpoints_with_a_scheme_and_a_node_name() {
    let ok = format!("{VALID}\n[cluster]\netcd = [\"http://10.0.0.1:2379\"]\nnode = \"edge-1\"\n");
    let c = config(&ok, None).expect("valid").cluster.expect("cluster");
    assert_eq!(
        (c.node.as_str(), c.region.as_str(), c.prefix.as_str()),
        ("edge-1", "default", "/nrdot")
    );
    let bad = format!("{VALID}\n[cluster]\netcd = [\"10.0.0.1:2379\"]\n");
    let p = problems(&bad);
    assert!(p.iter().any(|e| e.path == "cluster.etcd[0]"), "{p:?}");
    assert!(
        p.iter().any(|e| e.message.contains("missing key \"node\"")),
        "{p:?}"
    );
}

const WITH_REGIONS: &str = r#"
[[listener]]
name = "http"
bind = "0.0.0.0:80"

[[pool]]
name = "web"
  [[pool.server]]
  address = "10.0.0.1:80"
[[pool]]
name = "api"
  [[pool.server]]
  address = "10.0.0.2:80"

[[route]]
name = "r"
pool = "web"
[[route]]
name = "a"
path = "/api"
pool = "api"

[[region.eu-west.pool]]
name = "web"
  [[region.eu-west.pool.server]]
  address = "10.1.0.1:80"

[region.us-east]
route = [{ name = "a", path = "/api", split = [{ pool = "api", weight = 50 }, { pool = "web", weight = 50 }] }]
"#;

#[test]
fn region_overlay_replaces_by_name_and_keeps_the_rest() {
    let at = |region| config_at(WITH_REGIONS, Place { env: None, region });
    let base = at(None).expect("base valid");
    assert_eq!(base.pools[0].servers[0].address, "10.0.0.1:80");
    let eu = at(Some("eu-west")).expect("eu-west valid");
    assert_eq!(eu.pools.len(), 2, "replaced in place, not appended");
    assert_eq!(eu.pools[0].servers[0].address, "10.1.0.1:80");
    assert_eq!(eu.pools[1].servers[0].address, "10.0.0.2:80");
    assert_eq!(eu.routes, base.routes);
    let us = at(Some("us-east")).expect("us-east valid");
    assert_eq!(us.routes.len(), 2);
    assert_eq!(us.routes[0], base.routes[0]);
    assert_eq!(us.routes[1].split.len(), 2);
    assert_eq!(us.pools, base.pools);
    // A region without a section reads the base.
    assert_eq!(at(Some("ap-south")).expect("valid").pools, base.pools);
}

#[test]
fn region_errors_are_found_without_being_in_it() {
    let text = WITH_REGIONS.replace("address = \"10.1.0.1:80\"", "address = \"nope\"");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(p[0].message.contains("in region \"eu-west\""), "{p:#?}");
    assert_eq!(p[0].line, 26, "{p:#?}");
    let text = WITH_REGIONS.replace("[region.us-east]", "[region.us-east]\nworker_threads = 2");
    assert!(problems(&text)
        .iter()
        .any(|e| e.path == "region.us-east.worker_threads"));
}

#[test]
fn cluster_access_settings_that_cannot_work_are_refused() {
    let base = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[pool]]\nname = \"p\"\n[[pool.server]]\naddress = \"127.0.0.1:2\"\n[[route]]\nname = \"r\"\npool = \"p\"\n[cluster]\nnode = \"n\"\n";
    let with = |extra: &str| format!("{base}{extra}");
    for (extra, says) in [
        (
            "etcd = [\"http://h:1\"]\nuser = \"root\"\n",
            "user and password_file go together",
        ),
        ("etcd = [\"https://h:1\"]\n", "need ca_file"),
        (
            "etcd = [\"http://h:1\"]\nca_file = \"/ca.pem\"\n",
            "need https://",
        ),
        (
            "etcd = [\"https://h:1\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\n",
            "cert_file and key_file go together",
        ),
    ] {
        let p = problems(&with(extra));
        assert!(
            p.iter().any(|e| e.message.contains(says)),
            "{extra}: {p:#?}"
        );
    }
    let ok = with("etcd = [\"https://h:1\"]\nuser = \"u\"\npassword_file = \"/p\"\nca_file = \"/ca\"\ncert_file = \"/c\"\nkey_file = \"/k\"\n");
    let c = config(&ok, None).expect("valid");
    let access = c.cluster.expect("cluster").access;
    assert_eq!(access.user.as_deref(), Some("u"));
    assert!(access.key_file.is_some());
}
