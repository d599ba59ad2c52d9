//! Validating and compiling a 10,000-route configuration (`NRDOT_SCALE_HOSTS=10000` for about
//! 100,000): the cost of a reload or an admin change.
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use nrdot_config::{Config, RouteTable};

fn compile(c: &mut Criterion) {
    let hosts = nrdot_benches::scale_hosts();
    let text = nrdot_benches::large_config(hosts, 10);
    let config = Arc::new(Config::from_toml(&text).expect("valid"));
    let mut g = c.benchmark_group(format!("{} routes", config.routes.len()));
    g.sample_size(10);
    g.bench_function("validate", |b| {
        b.iter(|| Config::from_toml(black_box(&text)).map(|c| c.routes.len()))
    });
    let previous = RouteTable::compile(Arc::clone(&config), 1, None);
    g.bench_function("compile", |b| {
        b.iter(|| {
            RouteTable::compile(Arc::clone(&config), 2, Some(black_box(&previous)))
                .routes
                .len()
        })
    });
    g.finish();
}

criterion_group!(benches, compile);
criterion_main!(benches);
