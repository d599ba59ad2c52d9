//! Any host and path against a fixed table: lookup never panics and only returns real routes.
#![no_main]
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nrdot_config::{Config, RouteTable};

const CONFIG: &str = r#"
[[listener]]
name = "a"
bind = "127.0.0.1:1"
[[pool]]
name = "p"
[[pool.server]]
address = "127.0.0.1:2"
[[route]]
name = "root"
pool = "p"
[[route]]
name = "api"
host = ["example.com", "*.example.com"]
path = "/api/é"
header = { name = "x-beta" }
pool = "p"
[[route]]
name = "deep"
host = "*.a.example.com"
path = "/x"
pool = "p"
"#;

fuzz_target!(|data: &[u8]| {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        RouteTable::compile(Arc::new(Config::from_toml(CONFIG).expect("valid")), 1, None)
    });
    let text = String::from_utf8_lossy(data);
    let (host, path) = text.split_once(' ').unwrap_or((&text, "/"));
    if let Some(r) = table.route(host, path, |_| Some(b"1")) {
        assert!(r < table.routes.len());
    }
});
