//! Per-worker bookkeeping of client connections: the count of exchanges in flight (what a
//! stopping worker waits for) and the idle slab, which holds keep-alive and tunnel deadlines
//! so an idle connection needs no timer of its own; the worker's one-second sweep wakes the
//! expired ones.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::clock;

/// A worker's count of exchanges in flight and of open native connections, and whether it is
/// stopping.
#[derive(Default)]
pub(crate) struct Drain {
    stopping: AtomicBool,
    busy: AtomicUsize,
    open: AtomicUsize,
    done: tokio::sync::Notify,
    /// Set while the accept loop waits for a connection to close (`[limits] max_connections`).
    full: AtomicBool,
    freed: tokio::sync::Notify,
}

impl Drain {
    /// From now on answers carry `Connection: close`; idle keep-alive connections close at
    /// `close_idle_at` unless a request comes first (see [`CLOSE_IDLE_AT`]).
    pub fn stop(&self, close_idle_at: Instant) {
        CLOSE_IDLE_AT.with(|c| c.set(Some(close_idle_at)));
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Resolves once no exchange is in flight and no native connection is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.busy.load(Ordering::Acquire) == 0 && self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn left(&self, counter: &AtomicUsize) {
        if counter.fetch_sub(1, Ordering::Release) == 1 && self.stopping.load(Ordering::Relaxed) {
            self.done.notify_waiters();
        }
    }
}

thread_local! {
    /// When a stopping worker closes its idle keep-alive connections. Not at once: a client
    /// may be sending its next request on one right now, and would see the close instead of
    /// an answer (the race every keep-alive client must survive, and most do not for POSTs).
    /// Until then a request is still served and answered with `Connection: close`, which
    /// tells the client cleanly to go elsewhere, as HAProxy's `idle-close-on-response` does;
    /// busy clients leave this way within a request, quiet ones are closed at this time.
    static CLOSE_IDLE_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// How long a stopping worker keeps idle keep-alive connections open (at most the grace).
pub(crate) const CLOSE_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// One open native connection on this worker; the stopping worker waits for them all.
pub(crate) struct Open;

impl Open {
    pub(crate) fn begin() -> Open {
        DRAIN.with(|d| d.open.fetch_add(1, Ordering::Relaxed));
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let _ = DRAIN.try_with(|d| {
            d.left(&d.open);
            if d.full.load(Ordering::Relaxed) {
                d.freed.notify_waiters();
            }
        });
    }
}

/// Open native connections on this worker.
pub(crate) fn open_connections() -> usize {
    DRAIN.with(|d| d.open.load(Ordering::Relaxed))
}

/// Resolves once this worker has fewer than `max` open connections: the oldest idle
/// keep-alive connection is closed to make room, and when none is idle the caller waits
/// (new connections stay in the kernel's backlog meanwhile), as nginx does at
/// `worker_connections`.
pub(crate) async fn room(max: usize) {
    let d = drain();
    loop {
        let freed = d.freed.notified();
        if d.open.load(Ordering::Relaxed) < max {
            d.full.store(false, Ordering::Relaxed);
            return;
        }
        d.full.store(true, Ordering::Relaxed);
        close_oldest_idle();
        // The connection told to close may have had a request arriving instead; look again
        // soon rather than wait for a close that may not come.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), freed).await;
    }
}

/// Asks the keep-alive connection idle for the longest to close; false when none is idle.
/// The kernel's backlog holds new connections meanwhile.
/// Its keep-alive deadline is the earliest, since every one is its idle start plus the same
/// timeout (per table).
fn close_oldest_idle() -> bool {
    IDLE.with(|i| {
        let mut i = i.borrow_mut();
        let oldest = i
            .entries
            .iter_mut()
            .flatten()
            .filter(|(_, _, kind)| *kind == Kind::KeepAlive)
            .min_by_key(|(deadline, _, _)| *deadline);
        match oldest {
            Some((_, waker, kind)) => {
                *kind = Kind::Closing;
                waker.wake_by_ref();
                true
            }
            None => false,
        }
    })
}

thread_local! {
    /// This worker's drain: one per thread, so connections need not carry a pointer to it
    /// (8 more bytes in every idle connection's task, which is sized to tokio's smallest cell).
    static DRAIN: Arc<Drain> = Arc::default();
}

/// The drain of the worker running on this thread.
pub(crate) fn drain() -> Arc<Drain> {
    DRAIN.with(Arc::clone)
}

/// One exchange in flight on this worker; whether the worker is stopping when it began.
/// Dropped on the thread that made it (the worker's runtime has one thread), so it finds
/// its drain there instead of holding a reference.
pub(crate) struct Busy;

impl Busy {
    pub(crate) fn begin() -> (Busy, bool) {
        DRAIN.with(|d| {
            d.busy.fetch_add(1, Ordering::Relaxed);
            (Busy, d.stopping.load(Ordering::Relaxed))
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = DRAIN.try_with(|d| d.left(&d.busy));
    }
}

thread_local! {
    /// Keep-alive deadlines of this worker's idle connections (and idle deadlines of its
    /// tunnels), checked by its one-second sweep ([`sweep_idle`]): an idle connection keeps a
    /// slot number instead of a timer, and going idle costs no timer-wheel work. A
    /// thread-local because `IdleSlot::drop` runs where no reference can be handed to it, and
    /// `Send` tasks cannot hold one to `RefCell` state.
    static IDLE: std::cell::RefCell<IdleSlab> = const {
        std::cell::RefCell::new(IdleSlab { entries: Vec::new(), free: Vec::new() })
    };
}

struct IdleSlab {
    entries: Vec<Option<(Instant, Waker, Kind)>>,
    free: Vec<u32>,
}

/// What an idle entry waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A keep-alive connection's next request: a stopping worker ends it early.
    KeepAlive,
    /// A tunnel's idle timer: it keeps the whole grace period.
    Tunnel,
    /// A keep-alive connection told to close to make room (`max_connections`).
    Closing,
}

/// Whether an entry is due at `now`.
fn due(deadline: Instant, kind: Kind, now: Instant) -> bool {
    match kind {
        Kind::Closing => true,
        Kind::Tunnel => deadline <= now,
        Kind::KeepAlive => {
            deadline <= now || CLOSE_IDLE_AT.with(|c| c.get().is_some_and(|at| at <= now))
        }
    }
}

/// A connection's place in [`IDLE`] while it waits; removed when dropped.
pub(crate) struct IdleSlot(u32);

impl IdleSlot {
    pub(crate) fn new(deadline: Instant, waker: &Waker, kind: Kind) -> IdleSlot {
        IDLE.with(|i| {
            let mut i = i.borrow_mut();
            let entry = Some((deadline, waker.clone(), kind));
            match i.free.pop() {
                Some(n) => {
                    i.entries[n as usize] = entry;
                    IdleSlot(n)
                }
                None => {
                    i.entries.push(entry);
                    // Bounded by the worker's open connections, far below 2^32.
                    IdleSlot((i.entries.len() - 1) as u32)
                }
            }
        })
    }

    /// Moves the deadline (a tunnel that saw traffic since it was set).
    pub(crate) fn set_deadline(&self, deadline: Instant) {
        IDLE.with(|i| {
            if let Some(Some((d, _, _))) = i.borrow_mut().entries.get_mut(self.0 as usize) {
                *d = deadline;
            }
        });
    }

    pub(crate) fn set_waker(&self, waker: &Waker) {
        IDLE.with(|i| {
            if let Some(Some((_, w, _))) = i.borrow_mut().entries.get_mut(self.0 as usize) {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
            }
        });
    }

    /// The deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        IDLE.with(|i| match i.borrow().entries.get(self.0 as usize) {
            Some(Some((deadline, _, kind))) => due(*deadline, *kind, clock::recent()),
            _ => true,
        })
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        let _ = IDLE.try_with(|i| {
            let mut i = i.borrow_mut();
            if let Some(e) = i.entries.get_mut(self.0 as usize) {
                *e = None;
                i.free.push(self.0);
            }
        });
    }
}

/// Wakes this worker's idle connections whose keep-alive time is up (they close themselves).
/// Runs every second, so keep-alive timeouts are precise to a second.
pub(crate) fn sweep_idle() {
    let now = clock::now();
    let due: Vec<Waker> = IDLE.with(|i| {
        i.borrow()
            .entries
            .iter()
            .flatten()
            .filter(|(deadline, _, kind)| due(*deadline, *kind, now))
            .map(|(_, w, _)| w.clone())
            .collect()
    });
    for w in due {
        w.wake();
    }
}
