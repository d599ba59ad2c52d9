//! Long-lived runtime state of pools, servers and routes: atomics the data plane bumps and the
//! control plane reads. A table swap hands these objects to the new table when the identity
//! (pool name, server address, route name) survives, so counters, in-flight numbers and the
//! position in a round-robin sequence do not reset on reload.
//!
//! Metric handles are resolved here, once, when the state is created: the request path then only
//! touches atomics, never a registry lookup. The hottest figures (in-flight and request counts
//! per server, upstream latency per pool) are plain atomics here that the admin API renders at
//! scrape time, so a request pays one relaxed add for each and no float CAS loop or sample
//! buffer.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use metrics::{Counter, Gauge};

/// Status classes counted per route and pool: 1xx..5xx.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Milliseconds since the process started: a cheap monotonic clock for ejection deadlines
/// and slow start, stored in atomics.
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Result of active health checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No check result yet (or no check configured).
    Unknown,
    /// Passing.
    Healthy,
    /// Failing: no new requests.
    Unhealthy,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Healthy,
            2 => Health::Unhealthy,
            _ => Health::Unknown,
        }
    }

    /// Lower-case name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

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
    /// Index of this server's per-worker connection pool; unique for the life of the process.
    pub slot: usize,
    health: AtomicU8,
    /// Passive health: deadline (`now_ms`) until which the server is ejected; 0 when not.
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// When the server last became available (`now_ms`), for slow start; 0 if never away.
    ready_since: AtomicU64,
    /// Agent-reported share of its weight, 0..=100 (0 = drain).
    agent_percent: AtomicU8,
    health_gauge: Gauge,
    ejections_counter: Counter,
    up_gauge: Gauge,
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
            slot: NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
            health: AtomicU8::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ready_since: AtomicU64::new(0),
            agent_percent: AtomicU8::new(100),
            health_gauge: metrics::gauge!("nrdot_backend_health", &labels),
            ejections_counter: metrics::counter!("nrdot_backend_ejections_total", &labels),
            up_gauge: {
                let g = metrics::gauge!("nrdot_backend_up", &labels);
                g.set(1.0);
                g
            },
            failures_counter: metrics::counter!("nrdot_backend_failures_total", &labels),
        }
    }

    /// Whether new requests may go here: enabled by the operator, not failing its health
    /// check, not ejected, not drained by its agent.
    #[inline]
    pub fn available(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && self.health.load(Ordering::Relaxed) != 2
            && self.agent_percent.load(Ordering::Relaxed) > 0
            && !self.ejected()
    }

    /// Whether passive health checking has ejected the server right now. An expired ejection
    /// is cleared here, and the server's slow start begins.
    #[inline]
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        let now = now_ms();
        if now < until {
            return true;
        }
        if self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.ready_since.store(now, Ordering::Relaxed);
        }
        false
    }

    /// Sets the operator's switch; a disabled server gets no new requests.
    pub fn set_enabled(&self, enabled: bool) {
        let was = self.enabled.swap(enabled, Ordering::Relaxed);
        if enabled && !was {
            self.ready_since.store(now_ms(), Ordering::Relaxed);
        }
        self.up_gauge.set(if enabled { 1.0 } else { 0.0 });
    }

    /// Active health as last set.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Sets active health; returns the previous value.
    pub fn set_health(&self, h: Health) -> Health {
        let code = match h {
            Health::Unknown => 0,
            Health::Healthy => 1,
            Health::Unhealthy => 2,
        };
        let prev = Health::from_u8(self.health.swap(code, Ordering::Relaxed));
        if prev == Health::Unhealthy && h != Health::Unhealthy {
            self.ready_since.store(now_ms(), Ordering::Relaxed);
        }
        self.health_gauge.set(match h {
            Health::Healthy => 1.0,
            Health::Unhealthy => 0.0,
            Health::Unknown => -1.0,
        });
        prev
    }

    /// Agent-reported share of the weight (0..=100).
    pub fn agent_percent(&self) -> u8 {
        self.agent_percent.load(Ordering::Relaxed)
    }

    /// Sets the agent-reported share; returns the previous one.
    pub fn set_agent_percent(&self, p: u8) -> u8 {
        let prev = self.agent_percent.swap(p.min(100), Ordering::Relaxed);
        if prev == 0 && p > 0 {
            self.ready_since.store(now_ms(), Ordering::Relaxed);
        }
        prev
    }

    /// Share (0..=1000) of its normal traffic the server should take now: the agent's
    /// percentage, times the slow-start ramp (from 10% up to 100% over `slow_start_ms`).
    #[inline]
    pub fn share_permille(&self, slow_start_ms: u64) -> u32 {
        let agent = self.agent_percent.load(Ordering::Relaxed) as u32 * 10;
        if slow_start_ms == 0 {
            return agent;
        }
        let since = self.ready_since.load(Ordering::Relaxed);
        if since == 0 {
            return agent;
        }
        let elapsed = now_ms().saturating_sub(since);
        if elapsed >= slow_start_ms {
            return agent;
        }
        let ramp = (100 + 900 * elapsed / slow_start_ms) as u32;
        agent * ramp / 1000
    }

    /// Passive health: records the outcome of a request. `Some(ms)` when this failure ejected
    /// the server for that long; `may_eject` says whether the pool's cap allows an ejection.
    pub fn record_outcome(
        &self,
        failed: bool,
        threshold: u32,
        base_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<u64> {
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < threshold || self.ejected() || !may_eject() {
            return None;
        }
        let times = self.ejections.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        let ms = base_ms.saturating_mul(times.min(10));
        self.ejected_until.store(now_ms() + ms, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejections_counter.increment(1);
        Some(ms)
    }

    /// Marks a request as started; pair with [`BackendState::finish`].
    #[inline]
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a request as finished, counting a failure when the server misbehaved.
    #[inline]
    pub fn finish(&self, failed: bool) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.failures_counter.increment(1);
        }
    }
}

/// Source of per-server slots, so each worker can keep its upstream connections in a vector
/// indexed by server instead of a map keyed by address.
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

/// One pool, as long as its name stays in the configuration.
#[derive(Debug)]
pub struct PoolState {
    /// Pool name.
    pub name: Box<str>,
    /// Position in the pool's round-robin sequence.
    pub cursor: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: Counter,
    /// Responses that did not arrive within the response timeout.
    pub timeouts: Counter,
    /// Requests answered 503 because no server of the pool was available.
    pub unavailable: Counter,
    /// Requests answered 503 because every server was at `max_connections`.
    pub overflow: Counter,
    /// Requests sent to unhealthy servers because the pool fails open.
    pub fail_open: Counter,
    /// Retries sent.
    pub retries: Counter,
    /// Retries not sent because the retry budget was spent.
    pub retry_budget_exhausted: Counter,
    /// Requests of this pool in flight (for the retry budget).
    pub active: AtomicU64,
    /// Retries of this pool in flight.
    pub active_retries: AtomicU64,
    /// Monotonic outcome totals, sampled by the rollout analysis.
    pub outcomes: Outcomes,
    /// Request body bytes sent to the pool's servers.
    pub bytes_in: Counter,
    /// Response body bytes received from them and sent to clients.
    pub bytes_out: Counter,
    /// Responses to clients by status class (1xx…5xx), whatever route they came through:
    /// `nrdot_pool_requests_total{pool, class}`, rendered from these atomics.
    pub responses: [AtomicU64; 5],
}

impl PoolState {
    /// Fresh state for a pool not seen before.
    pub fn new(name: &str) -> PoolState {
        let labels = [("pool", name.to_string())];
        PoolState {
            name: name.into(),
            cursor: AtomicU64::new(0),
            connect_errors: metrics::counter!("nrdot_upstream_connect_errors_total", &labels),
            timeouts: metrics::counter!("nrdot_upstream_timeouts_total", &labels),
            unavailable: metrics::counter!("nrdot_pool_unavailable_total", &labels),
            overflow: metrics::counter!("nrdot_pool_overflow_total", &labels),
            fail_open: metrics::counter!("nrdot_pool_fail_open_total", &labels),
            retries: metrics::counter!("nrdot_upstream_retries_total", &labels),
            retry_budget_exhausted: metrics::counter!(
                "nrdot_upstream_retry_budget_exhausted_total",
                &labels
            ),
            active: AtomicU64::new(0),
            active_retries: AtomicU64::new(0),
            outcomes: Outcomes::default(),
            bytes_in: metrics::counter!("nrdot_pool_request_bytes_total", &labels),
            bytes_out: metrics::counter!("nrdot_pool_response_bytes_total", &labels),
            responses: Default::default(),
        }
    }

    /// Counts one response to a client.
    #[inline]
    pub fn count_response(&self, status: u16) {
        self.responses[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Index of a status code's class in [`STATUS_CLASSES`] (anything out of range counts as the
/// nearest class).
#[inline]
pub fn status_class(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Upper bounds (ms) of the latency buckets the analysis computes percentiles from.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1,
    2,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    u64::MAX,
];

/// Totals of upstream attempts of one pool: every attempt counts, and an error is a 5xx
/// answer, a connect failure, a reset or a timeout. Only ever increases; readers diff two
/// samples to get a window.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// Attempts.
    pub requests: AtomicU64,
    /// Failed attempts.
    pub errors: AtomicU64,
    /// Answered attempts by latency bucket (see [`LATENCY_BOUNDS_MS`]).
    pub latency: [AtomicU64; 16],
    /// Sum of those latencies, in microseconds.
    pub latency_sum_us: AtomicU64,
}

impl Outcomes {
    /// Counts one attempt.
    #[inline]
    pub fn record(&self, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the time an answered attempt took to its response head.
    #[inline]
    pub fn record_latency(&self, took: std::time::Duration) {
        let ms = took.as_millis() as u64;
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(15);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot: (requests, errors, latency buckets).
    pub fn sample(&self) -> (u64, u64, [u64; 16]) {
        (
            self.requests.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            std::array::from_fn(|i| self.latency[i].load(Ordering::Relaxed)),
        )
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
        self.0[status_class(status)].increment(1);
    }
}
