//! The numbers a canary is judged by, from the proxy's own per-pool totals: error rate and p99
//! latency over a sliding window, the share of healthy servers, and the process's memory use.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nrdot_config::state::LATENCY_BOUNDS_MS;
use nrdot_config::RouteTable;

use crate::cluster::Totals;
use serde::{Deserialize, Serialize};

/// Triggers of a canary (the playbook's defaults).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq)]
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
    #[serde(deserialize_with = "limit_or_none")]
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

/// A limit stored by an older nrdot as `null` (its infinity): no limit.
fn limit_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::MAX))
}

/// One analysis result.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq, Default)]
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
    /// Takes a sample of every pool, at most once per 250 ms: this node's totals plus
    /// `others`, the rest of a cluster's.
    pub fn sample(&mut self, table: &RouteTable, others: &HashMap<String, Totals>) {
        let now = Instant::now();
        for p in &table.pools {
            let (mut req, mut err, mut lat) = p.state.outcomes.sample();
            if let Some(o) = others.get(&p.config.name) {
                req += o.requests;
                err += o.errors;
                for (l, o) in lat.iter_mut().zip(o.latency) {
                    *l += o;
                }
            }
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
        m.p99_ms = p99(newest, oldest);
        m
    }
}

/// 99th percentile (bucket upper bound, ms) of the answers between two samples; 0 without any.
fn p99(newest: &Sample, oldest: &Sample) -> u64 {
    let buckets: Vec<u64> = (0..16)
        .map(|i| newest.3[i].saturating_sub(oldest.3[i]))
        .collect();
    let answered: u64 = buckets.iter().sum();
    if answered == 0 {
        return 0;
    }
    let need = (answered as f64 * 0.99).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= need {
            return LATENCY_BOUNDS_MS[i].min(3_600_000);
        }
    }
    0
}

/// One point of a pool's recent traffic, for the dashboard's charts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq)]
pub struct Point {
    /// Seconds before now at which the interval ends.
    pub ago_s: u64,
    /// Requests answered per second over the interval.
    pub rps: f64,
    /// Failed share of them.
    pub error_rate: f64,
    /// Their 99th percentile latency (bucket upper bound), ms.
    pub p99_ms: u64,
}

impl Sampler {
    /// `pool`'s traffic over the last `span`, one point per `step`, oldest first: the same
    /// once-a-second samples the analysis reads, so the chart and the verdicts agree.
    pub fn series(&self, pool: &str, span: Duration, step: Duration) -> Vec<Point> {
        let Some(ring) = self.rings.get(pool) else {
            return Vec::new();
        };
        let Some(newest) = ring.back() else {
            return Vec::new();
        };
        let mut marks: Vec<&Sample> = Vec::new();
        let mut next = Duration::ZERO;
        for sample in ring.iter().rev() {
            let age = newest.0.duration_since(sample.0);
            if age > span + step {
                break;
            }
            if age >= next {
                marks.push(sample);
                next = age + step;
            }
        }
        marks
            .windows(2)
            .rev()
            .map(|w| {
                let (end, start) = (w[0], w[1]);
                let secs = end.0.duration_since(start.0).as_secs_f64().max(0.001);
                let requests = end.1.saturating_sub(start.1);
                Point {
                    ago_s: newest.0.duration_since(end.0).as_secs(),
                    rps: requests as f64 / secs,
                    error_rate: if requests == 0 {
                        0.0
                    } else {
                        end.2.saturating_sub(start.2) as f64 / requests as f64
                    },
                    p99_ms: p99(end, start),
                }
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample `secs` after `t0` with `req` requests, `err` errors, every answer under 5 ms.
    fn at(t0: Instant, secs: u64, req: u64, err: u64) -> Sample {
        let mut lat = [0u64; 16];
        lat[0] = req;
        (t0 + Duration::from_secs(secs), req, err, lat)
    }

    #[test]
    fn a_guard_without_a_memory_limit_survives_json_both_ways() {
        let a = crate::rollout::guard::analysis(&nrdot_config::Guard::default());
        let text = serde_json::to_string(&a).expect("json");
        let back: Analysis = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, a);
        // What an older nrdot stored for its infinity.
        let old = text.replace(&format!("{}", f64::MAX), "null");
        let old = old.replace("1.7976931348623157e308", "null");
        let back: Analysis = serde_json::from_str(&old).expect("read null");
        assert_eq!(back.max_memory, f64::MAX);
    }

    #[test]
    fn series_has_one_point_per_step_with_rates_oldest_first() {
        let t0 = Instant::now();
        let mut s = Sampler::default();
        // 10 requests a second for 60 s, errors only in the last 20 s (1 a second).
        let ring: VecDeque<Sample> = (0..=60)
            .map(|i| at(t0, i, i * 10, i.saturating_sub(40)))
            .collect();
        s.rings.insert("p".into(), ring);
        let points = s.series("p", Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(points.len(), 6);
        assert_eq!(points.first().map(|p| p.ago_s), Some(50));
        assert_eq!(points.last().map(|p| p.ago_s), Some(0));
        assert!(points.iter().all(|p| (p.rps - 10.0).abs() < 1e-9));
        assert_eq!(points[0].error_rate, 0.0);
        assert!((points[5].error_rate - 0.1).abs() < 1e-9);
        assert_eq!(points[5].p99_ms, LATENCY_BOUNDS_MS[0]);
        assert!(s
            .series("other", Duration::from_secs(60), Duration::from_secs(10))
            .is_empty());
    }
}
