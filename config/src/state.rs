//! Long-lived runtime state of pools, servers and routes: atomics the data plane bumps and the
//! control plane reads. A table swap hands these objects to the new table when the identity
//! (pool name, server address, route name) survives, so counters, in-flight numbers and the
//! position in a round-robin sequence do not reset on reload.
//!
//! Metric handles are resolved here, once, when the state is created: the request path then only
//! touches atomics, never a registry lookup.
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use metrics::{Counter, Gauge, Histogram};

/// Status classes counted per route and pool: 1xx..5xx.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// One upstream server, as long as its pool and address stay in the configuration.
#[derive(Debug)]
pub struct BackendState {
    /// Pool name.
    pub pool: Box<str>,
    /// `host:port`.
    pub address: Box<str>,
    /// Operator's switch: a disabled server gets no new requests.
    pub enabled: AtomicBool,
    /// Requests being proxied to it right now.
    pub in_flight: AtomicU64,
    /// Requests sent to it since start.
    pub requests: AtomicU64,
    /// Connect failures, resets and timeouts since start.
    pub failures: AtomicU64,
    in_flight_gauge: Gauge,
    up_gauge: Gauge,
    requests_counter: Counter,
    failures_counter: Counter,
}

impl BackendState {
    /// Fresh state for a server that has not been seen before.
    pub fn new(pool: &str, address: &str) -> BackendState {
        let labels = [("pool", pool.to_string()), ("backend", address.to_string())];
        BackendState {
            pool: pool.into(),
            address: address.into(),
            enabled: AtomicBool::new(true),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            in_flight_gauge: metrics::gauge!("nrdot_backend_in_flight_requests", &labels),
            up_gauge: {
                let g = metrics::gauge!("nrdot_backend_up", &labels);
                g.set(1.0);
                g
            },
            requests_counter: metrics::counter!("nrdot_backend_requests_total", &labels),
            failures_counter: metrics::counter!("nrdot_backend_failures_total", &labels),
        }
    }

    /// Whether new requests may go here.
    #[inline]
    pub fn available(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Sets the operator's switch; a disabled server gets no new requests.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
        self.up_gauge.set(if enabled { 1.0 } else { 0.0 });
    }

    /// Marks a request as started; pair with [`BackendState::finish`].
    #[inline]
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.increment(1.0);
        self.requests_counter.increment(1);
    }

    /// Marks a request as finished, counting a failure when the server misbehaved.
    #[inline]
    pub fn finish(&self, failed: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge.decrement(1.0);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.failures_counter.increment(1);
        }
    }
}

/// Source of per-pool slots, so each worker can keep its upstream connections in a vector indexed
/// by pool instead of a map keyed by name.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// One pool, as long as its name stays in the configuration.
#[derive(Debug)]
pub struct PoolState {
    /// Pool name.
    pub name: Box<str>,
    /// Index of this pool's per-worker connection pool; unique for the life of the process.
    pub slot: usize,
    /// Position in the pool's round-robin sequence.
    pub cursor: AtomicU64,
    /// Time from sending a request until its response head arrived.
    pub latency: Histogram,
    /// Failed connection attempts.
    pub connect_errors: Counter,
    /// Responses that did not arrive within the response timeout.
    pub timeouts: Counter,
    /// Requests answered 503 because no server of the pool was available.
    pub unavailable: Counter,
    /// Request body bytes sent to the pool's servers.
    pub bytes_in: Counter,
    /// Response body bytes received from them and sent to clients.
    pub bytes_out: Counter,
}

impl PoolState {
    /// Fresh state for a pool not seen before.
    pub fn new(name: &str) -> PoolState {
        let labels = [("pool", name.to_string())];
        PoolState {
            name: name.into(),
            slot: NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
            cursor: AtomicU64::new(0),
            latency: metrics::histogram!("nrdot_upstream_response_seconds", &labels),
            connect_errors: metrics::counter!("nrdot_upstream_connect_errors_total", &labels),
            timeouts: metrics::counter!("nrdot_upstream_timeouts_total", &labels),
            unavailable: metrics::counter!("nrdot_pool_unavailable_total", &labels),
            bytes_in: metrics::counter!("nrdot_pool_request_bytes_total", &labels),
            bytes_out: metrics::counter!("nrdot_pool_response_bytes_total", &labels),
        }
    }
}

/// One route, as long as its name stays in the configuration.
#[derive(Debug)]
pub struct RouteState {
    /// Route name.
    pub name: Box<str>,
    /// Requests routed here since start; drives the smooth split sequence.
    pub cursor: AtomicU64,
}

impl RouteState {
    /// Fresh state for a route not seen before.
    pub fn new(name: &str) -> RouteState {
        RouteState {
            name: name.into(),
            cursor: AtomicU64::new(0),
        }
    }
}

/// Response counters of one (route, pool) pair, one per status class.
#[derive(Debug, Clone)]
pub struct StatusCounters([Counter; 5]);

impl StatusCounters {
    /// Resolves the five handles of `nrdot_requests_total{route, pool, class}`.
    pub fn new(route: &str, pool: &str) -> StatusCounters {
        StatusCounters(STATUS_CLASSES.map(|class| {
            metrics::counter!(
                "nrdot_requests_total",
                "route" => route.to_string(),
                "pool" => pool.to_string(),
                "class" => class
            )
        }))
    }

    /// Counts one response.
    #[inline]
    pub fn count(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.0[class].increment(1);
    }
}
