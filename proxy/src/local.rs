//! Per-worker bookkeeping of client connections: the count of exchanges in flight (what a
//! stopping worker waits for) and the idle slab, which holds keep-alive and tunnel deadlines
//! so an idle connection needs no timer of its own; the worker's one-second sweep wakes the
//! expired ones.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use crate::clock;

/// A worker's count of exchanges in flight on this path, and whether it is stopping.
#[derive(Default)]
pub(crate) struct Drain {
    stopping: AtomicBool,
    busy: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Drain {
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Resolves once no exchange is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.busy.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
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
        let _ = DRAIN.try_with(|d| {
            if d.busy.fetch_sub(1, Ordering::Release) == 1 && d.stopping.load(Ordering::Relaxed) {
                d.done.notify_waiters();
            }
        });
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
    entries: Vec<Option<(Instant, Waker)>>,
    free: Vec<u32>,
}

/// A connection's place in [`IDLE`] while it waits; removed when dropped.
pub(crate) struct IdleSlot(u32);

impl IdleSlot {
    pub(crate) fn new(deadline: Instant, waker: &Waker) -> IdleSlot {
        IDLE.with(|i| {
            let mut i = i.borrow_mut();
            let entry = Some((deadline, waker.clone()));
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
            if let Some(Some((d, _))) = i.borrow_mut().entries.get_mut(self.0 as usize) {
                *d = deadline;
            }
        });
    }

    pub(crate) fn set_waker(&self, waker: &Waker) {
        IDLE.with(|i| {
            if let Some(Some((_, w))) = i.borrow_mut().entries.get_mut(self.0 as usize) {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
            }
        });
    }

    /// The deadline has passed.
    pub(crate) fn expired(&self) -> bool {
        IDLE.with(|i| match i.borrow().entries.get(self.0 as usize) {
            Some(Some((deadline, _))) => clock::recent() >= *deadline,
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
            .filter(|(deadline, _)| *deadline <= now)
            .map(|(_, w)| w.clone())
            .collect()
    });
    for w in due {
        w.wake();
    }
}
