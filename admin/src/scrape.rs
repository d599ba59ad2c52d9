//! The per-request figures the data plane keeps as plain atomics (see
//! `nrdot_config::state`), rendered in Prometheus text format next to what the
//! metrics-exporter-prometheus recorder renders.
use std::fmt::Write;
use std::sync::atomic::Ordering;

use nrdot_config::state::{BackendState, LATENCY_BOUNDS_MS, STATUS_CLASSES};
use nrdot_config::RouteTable;

/// Appends `nrdot_backend_in_flight_requests`, `nrdot_backend_requests_total`,
/// `nrdot_pool_requests_total` and the `nrdot_upstream_response_seconds` histograms of `table`'s pools and servers to `out`.
pub fn render_atomics(table: &RouteTable, out: &mut String) {
    let per_backend =
        |out: &mut String, name: &str, kind: &str, value: &dyn Fn(&BackendState) -> u64| {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for p in &table.pools {
                for b in &p.backends {
                    let _ = writeln!(
                        out,
                        "{name}{{pool=\"{}\",backend=\"{}\"}} {}",
                        p.config.name,
                        b.state.address,
                        value(&b.state)
                    );
                }
            }
        };
    per_backend(out, "nrdot_backend_in_flight_requests", "gauge", &|s| {
        s.in_flight.load(Ordering::Relaxed)
    });
    per_backend(out, "nrdot_backend_requests_total", "counter", &|s| {
        s.requests.load(Ordering::Relaxed)
    });
    let _ = writeln!(out, "# TYPE nrdot_pool_requests_total counter");
    for p in &table.pools {
        for (class, n) in STATUS_CLASSES.iter().zip(&p.state.responses) {
            let _ = writeln!(
                out,
                "nrdot_pool_requests_total{{pool=\"{}\",class=\"{class}\"}} {}",
                p.config.name,
                n.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(out, "# TYPE nrdot_upstream_response_seconds histogram");
    for p in &table.pools {
        let o = &p.state.outcomes;
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
            cumulative += o.latency[i].load(Ordering::Relaxed);
            let le = if *bound == u64::MAX {
                "+Inf".to_string()
            } else {
                format!("{}", *bound as f64 / 1000.0)
            };
            let _ = writeln!(
                out,
                "nrdot_upstream_response_seconds_bucket{{pool=\"{}\",le=\"{le}\"}} {cumulative}",
                p.config.name
            );
        }
        let _ = writeln!(
            out,
            "nrdot_upstream_response_seconds_sum{{pool=\"{}\"}} {}",
            p.config.name,
            o.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "nrdot_upstream_response_seconds_count{{pool=\"{}\"}} {cumulative}",
            p.config.name
        );
    }
}
