//! The worker's cached clock, as nginx keeps `ngx_current_msec`: deadlines that are precise to
//! a second (keep-alive) or guard against an upstream closing an idle connection (pool idle
//! times) read the time a worker last took instead of asking the kernel again. Each reading
//! is a vDSO call of ~25 ns; a keep-alive request took five or six of them (≈ 1 % of nrdot's
//! CPU per request) where two measure something (an upstream's latency).
//!
//! The cache is fresh to within one scheduling step: a worker refreshes it when its runtime
//! wakes from `epoll_wait`, on every precise reading ([`now`]), and once a second from its
//! sweeper, which runs even when the worker never parks. Threads that never [`enable`] it
//! (tests, the admin runtime) read the real clock every time.
use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// `None` on threads that do not keep the cache current.
    static RECENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Starts keeping the cache on this thread; called on a worker thread before its runtime runs.
pub(crate) fn enable() {
    RECENT.with(|r| r.set(Some(Instant::now())));
}

/// The time now, read from the kernel; also refreshes the cache where it is kept.
pub(crate) fn now() -> Instant {
    let t = Instant::now();
    RECENT.with(|r| {
        if r.get().is_some() {
            r.set(Some(t));
        }
    });
    t
}

/// Time since `t`, read from the kernel (an upstream's latency); refreshes the cache too.
pub(crate) fn elapsed(t: Instant) -> std::time::Duration {
    now().saturating_duration_since(t)
}

/// Refreshes the cache (the runtime's unpark hook and the sweeper).
pub(crate) fn refresh() {
    now();
}

/// The time the worker last took: for deadlines and ages that need no better than a
/// scheduling step's precision. The real clock on threads without the cache.
pub(crate) fn recent() -> Instant {
    RECENT.with(|r| r.get()).unwrap_or_else(Instant::now)
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) is always this long.
pub(crate) const HTTP_DATE_LEN: usize = 29;

thread_local! {
    /// The `Date` value of the current second and when it stops being current (nginx's
    /// `ngx_cached_http_time`): formatting a date costs about twenty clock readings.
    static DATE: Cell<(Option<Instant>, [u8; HTTP_DATE_LEN])> =
        const { Cell::new((None, [0; HTTP_DATE_LEN])) };
}

/// The time as a `Date` field value (RFC 9110 5.6.7), formatted at most once a second per
/// worker; it goes by the cached clock, so it is as fresh as the worker's last wakeup.
pub(crate) fn http_date() -> [u8; HTTP_DATE_LEN] {
    let now = recent();
    let (until, cached) = DATE.with(Cell::get);
    if until.is_some_and(|u| now < u) {
        return cached;
    }
    let wall = std::time::SystemTime::now();
    let mut out = [0; HTTP_DATE_LEN];
    let text = httpdate::fmt_http_date(wall);
    if text.len() == HTTP_DATE_LEN {
        out.copy_from_slice(text.as_bytes());
    }
    // Current until the wall clock's next whole second.
    let into_second = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let left = std::time::Duration::from_nanos(1_000_000_000 - u64::from(into_second));
    DATE.with(|d| d.set((Some(now + left), out)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn without_the_cache_recent_is_the_real_clock() {
        std::thread::spawn(|| {
            let a = recent();
            std::thread::sleep(Duration::from_millis(5));
            assert!(recent() >= a + Duration::from_millis(5));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn with_the_cache_recent_moves_only_when_refreshed() {
        std::thread::spawn(|| {
            enable();
            let a = recent();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(recent(), a, "no refresh in between");
            let b = now();
            assert_eq!(recent(), b, "a precise reading refreshes it");
            std::thread::sleep(Duration::from_millis(5));
            refresh();
            assert!(recent() >= b + Duration::from_millis(5));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn the_date_is_an_http_date_of_the_current_second() {
        let d = http_date();
        let text = std::str::from_utf8(&d).expect("ascii");
        let when = httpdate::parse_http_date(text).expect("an IMF-fixdate");
        let skew = std::time::SystemTime::now()
            .duration_since(when)
            .expect("not in the future");
        assert!(skew < Duration::from_secs(2), "{text}");
    }
}
