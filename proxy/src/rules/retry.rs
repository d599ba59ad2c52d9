//! Retry policy and budget, and passive health: whether a request may be sent again, whether
//! the pool's budget allows one more retry in flight, and how an attempt's outcome counts
//! towards ejecting its server. Written once; both upstream clients follow it.
use std::sync::atomic::Ordering;

use nrdot_config::table::{BackendEntry, NoBackend, PoolEntry};

use crate::error::ProxyError;

/// Methods that may be sent twice (RFC 9110 9.2.2).
pub(crate) fn idempotent(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Retries in flight a pool always allows, whatever its budget percentage: enough that one
/// server dying under moderate load (every connection to it reset at once) is absorbed.
const MIN_RETRY_CONCURRENCY: u64 = 10;

/// Counts a retry: one fewer left, one more in flight until the guard drops.
pub(crate) fn begin_retry<'a>(
    pool: &'a nrdot_config::state::PoolState,
    left: &mut u32,
) -> ActiveGuard<'a> {
    *left -= 1;
    pool.retries.increment(1);
    pool.active_retries.fetch_add(1, Ordering::Relaxed);
    ActiveGuard(&pool.active_retries)
}

/// The answer when no server can be chosen (counted): after a failed attempt the client hears
/// about the real failure, not about the now empty pool.
pub(crate) fn no_backend(pool: &PoolEntry, e: NoBackend, last: Option<ProxyError>) -> ProxyError {
    if let Some(last) = last {
        return last;
    }
    match e {
        NoBackend::Unavailable => {
            pool.state.unavailable.increment(1);
            ProxyError::NoAvailableBackend
        }
        NoBackend::Overloaded => {
            pool.state.overflow.increment(1);
            ProxyError::Overloaded
        }
    }
}

/// Whether one more retry fits the pool's budget (retries in flight as a share of requests in
/// flight, never below [`MIN_RETRY_CONCURRENCY`]).
pub(crate) fn retry_allowed(pool: &PoolEntry, retries_left: u32) -> bool {
    if retries_left == 0 {
        return false;
    }
    let active = pool.state.active.load(Ordering::Relaxed);
    let retrying = pool.state.active_retries.load(Ordering::Relaxed);
    let budget =
        (active * pool.config.retry_budget_percent as u64 / 100).max(MIN_RETRY_CONCURRENCY);
    if retrying >= budget {
        pool.state.retry_budget_exhausted.increment(1);
        return false;
    }
    true
}

/// Records an attempt's outcome for analysis and passive health; ejects the server after
/// enough consecutive failures while the pool's ejection cap allows.
pub(crate) fn passive(pool: &PoolEntry, backend: &BackendEntry, failed: bool) {
    pool.state.outcomes.record(failed);
    let Some(o) = pool.config.outlier.as_ref() else {
        return;
    };
    let may_eject = || {
        let n = pool.backends.len();
        let ejected = pool.backends.iter().filter(|x| x.state.ejected()).count();
        (ejected + 1) * 100 <= n * o.max_ejection_percent as usize
    };
    if let Some(ms) = backend.state.record_outcome(
        failed,
        o.consecutive_failures,
        o.base_ejection.as_millis() as u64,
        may_eject,
    ) {
        tracing::warn!(pool = %pool.config.name, backend = %backend.authority, ejected_ms = ms, "backend ejected after consecutive failures");
    }
}

/// Decrements one of a pool's in-flight counts when dropped.
pub(crate) struct ActiveGuard<'a>(pub &'a std::sync::atomic::AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
