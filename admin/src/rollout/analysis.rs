//! The numbers a canary is judged by, from the proxy's own per-pool totals: error rate and p99
//! latency over a sliding window, the share of healthy servers, and the process's memory use.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nrdot_config::state::LATENCY_BOUNDS_MS;
use nrdot_config::RouteTable;
use serde::{Deserialize, Serialize};

/// Triggers of a canary (the playbook's defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Analysis {
    /// Roll back when the error rate over `error_for_ms` exceeds this (0.05).
    pub max_error_rate: f64,
    /// Window of the error rate and p99 (5 minutes).
    pub error_for_ms: u64,
    /// Roll back when fewer than this share of the canary's servers are healthy (0.5)…
    pub min_healthy: f64,
    /// …for this long (2 minutes).
    pub healthy_for_ms: u64,
    /// Pause for approval when memory use exceeds this share (0.9)…
    pub max_memory: f64,
    /// …for this long (10 minutes).
    pub memory_for_ms: u64,
    /// Optional p99 bound.
    pub max_p99_ms: Option<u64>,
    /// A window with fewer requests says nothing about error rate or latency.
    pub min_requests: u64,
}

impl Analysis {
    /// The error-rate trigger: enough requests in the window, and too many of them failed.
    pub fn errors_exceeded(&self, m: &Measured) -> bool {
        m.window_requests >= self.min_requests && m.error_rate > self.max_error_rate
    }
}

/// Whether `cond` has held for `for_ms`, remembering since when under `key` in `since`; a
/// condition that stops holding starts over. One clock for every "… for 2m" trigger.
pub fn held<K: std::hash::Hash + Eq>(
    since: &mut HashMap<K, Instant>,
    key: K,
    cond: bool,
    for_ms: u64,
) -> bool {
    if !cond {
        since.remove(&key);
        return false;
    }
    let start = *since.entry(key).or_insert_with(Instant::now);
    start.elapsed() >= Duration::from_millis(for_ms)
}

/// One analysis result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Measured {
    /// Requests to the canary pool in the window.
    pub window_requests: u64,
    /// Failed ones.
    pub window_errors: u64,
    /// Their ratio.
    pub error_rate: f64,
    /// 99th percentile latency in the window (bucket upper bound), ms.
    pub p99_ms: u64,
    /// Available servers / servers of the canary pool.
    pub healthy_fraction: f64,
    /// Process memory / memory available to it.
    pub memory_fraction: f64,
}

type Sample = (Instant, u64, u64, [u64; 16]);

/// Once-a-second samples of every pool's totals.
#[derive(Default)]
pub struct Sampler {
    rings: HashMap<String, VecDeque<Sample>>,
    /// Samples before this instant are ignored (the start of the current step).
    since: HashMap<String, Instant>,
}

const MAX_SAMPLES: usize = 3600;

impl Sampler {
    /// Takes a sample of every pool, at most once per 250 ms.
    pub fn sample(&mut self, table: &RouteTable) {
        let now = Instant::now();
        for p in &table.pools {
            let (req, err, lat) = p.state.outcomes.sample();
            let ring = self.rings.entry(p.config.name.clone()).or_default();
            if ring
                .back()
                .is_some_and(|(t, ..)| now.duration_since(*t) < Duration::from_millis(200))
            {
                continue;
            }
            ring.push_back((now, req, err, lat));
            if ring.len() > MAX_SAMPLES {
                ring.pop_front();
            }
        }
    }

    /// Forgets `pool`'s history: a new step is judged on its own traffic.
    pub fn reset(&mut self, pool: &str) {
        self.since.insert(pool.to_string(), Instant::now());
    }

    /// Measures `pool` over the analysis window.
    pub fn measure(&self, table: &RouteTable, pool: &str, a: &Analysis) -> Measured {
        let mut m = Measured {
            memory_fraction: memory_fraction(),
            ..Measured::default()
        };
        if let Some(p) = table.pools.iter().find(|p| p.config.name == pool) {
            let total = p.backends.len().max(1);
            let up = p
                .backends
                .iter()
                .filter(|b| b.weight > 0 && b.state.available())
                .count();
            m.healthy_fraction = up as f64 / total as f64;
        }
        let Some(ring) = self.rings.get(pool) else {
            return m;
        };
        let Some(newest) = ring.back() else { return m };
        let window = Duration::from_millis(a.error_for_ms.max(250));
        let floor = self.since.get(pool).copied();
        let oldest = ring
            .iter()
            .find(|(t, ..)| newest.0.duration_since(*t) <= window && floor.is_none_or(|f| *t >= f))
            .unwrap_or(newest);
        m.window_requests = newest.1 - oldest.1;
        m.window_errors = newest.2 - oldest.2;
        m.error_rate = if m.window_requests == 0 {
            0.0
        } else {
            m.window_errors as f64 / m.window_requests as f64
        };
        let buckets: Vec<u64> = (0..16).map(|i| newest.3[i] - oldest.3[i]).collect();
        let answered: u64 = buckets.iter().sum();
        if answered > 0 {
            let need = (answered as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, n) in buckets.iter().enumerate() {
                seen += n;
                if seen >= need {
                    m.p99_ms = LATENCY_BOUNDS_MS[i].min(3_600_000);
                    break;
                }
            }
        }
        m
    }
}

/// Resident memory of this process over the memory it may use (the cgroup limit when one is
/// set, else the machine's memory).
pub fn memory_fraction() -> f64 {
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let total = cgroup.or_else(|| {
        std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        })
    });
    match total {
        Some(t) if t > 0 => rss as f64 / t as f64,
        _ => 0.0,
    }
}
