//! Route lookup plus split pick on a table of about 10,000 routes (`NRDOT_SCALE_HOSTS=10000`
//! for about 100,000): the per-request routing cost. Aim: under 1 µs a lookup.
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use nrdot_config::{Config, RouteTable};

fn lookup(c: &mut Criterion) {
    let hosts = nrdot_benches::scale_hosts();
    let config = Config::from_toml(&nrdot_benches::large_config(hosts, 10)).expect("valid");
    let table = RouteTable::compile(Arc::new(config), 1, None);
    assert!(table.routes.len() > hosts * 10);
    let requests: Vec<(String, String)> = (0..1024)
        .map(|i| match i % 4 {
            0 => (
                format!("svc{}.example.com", i % hosts),
                format!("/api/v{}/users/42", i % 10),
            ),
            1 => (
                format!("x.svc{}.example.com", i % hosts),
                "/anything".to_string(),
            ),
            2 => ("unknown.test".to_string(), "/".to_string()),
            _ => (
                format!("svc{}.example.com", i % hosts),
                "/not/routed/by/prefix".to_string(),
            ),
        })
        .collect();
    let mut i = 0usize;
    let name = format!("route+pick ({} routes)", table.routes.len());
    c.bench_function(&name, |b| {
        b.iter(|| {
            let (host, path) = &requests[i % requests.len()];
            i += 1;
            let r = table
                .route(black_box(host), black_box(path), |_| None)
                .expect("routed");
            let target = table.pick(r, None, None);
            black_box(table.backend(table.routes[r].pools[target.entry], i as u64, None, &[]))
                .map(|c| c.index)
        })
    });
}

criterion_group!(benches, lookup);
criterion_main!(benches);
