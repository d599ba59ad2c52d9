//! The weighted split alone: smooth sequence pick and sticky bucket.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use nrdot_config::split::{stable_hash, Split};

fn split(c: &mut Criterion) {
    let s = Split::new(&[90, 10]);
    let mut n = 0u64;
    c.bench_function("split pick 90/10", |b| {
        b.iter(|| {
            n += 1;
            s.pick(black_box(n))
        })
    });
    c.bench_function("split sticky bucket", |b| {
        b.iter(|| s.bucket(stable_hash(black_box(b"user-1234567"))))
    });
}

criterion_group!(benches, split);
criterion_main!(benches);
