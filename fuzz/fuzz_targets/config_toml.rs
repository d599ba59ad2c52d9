//! Any text: validation never panics, and every accepted config compiles and routes.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nrdot_config::{Config, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_toml(text) {
        Ok(config) => {
            let table = RouteTable::compile(Arc::new(config), 1, None);
            for r in 0..table.routes.len() {
                let t = table.pick(r, None, Some(7));
                assert!(t.entry < table.routes[r].pools.len());
            }
        }
        Err(e) => {
            // Every problem points inside the text.
            let lines = text.lines().count().max(1);
            for p in e.problems() {
                assert!(p.line >= 1 && p.line <= lines + 1, "{p:?}");
            }
        }
    }
});
