//! The worker's free list of read buffers. Large allocations are the slow ones in malloc, and
//! an idle connection holds no buffer: it takes one for a read and gives it back after.
/// Size of the buffer a response is relayed through.
pub(crate) const RELAY_BUFFER: usize = 32 * 1024;

/// Size of the buffers requests and response heads are read into.
pub(crate) const READ_BUFFER: usize = 8192;

thread_local! {
    /// Read buffers this worker reuses: large allocations are the slow ones in malloc.
    /// Per worker, and a thread-local rather than a value passed down: connection tasks must
    /// be `Send` (tokio's `spawn`), so they cannot hold a reference to `RefCell` state, and a
    /// mutex would cost an atomic read-modify-write on every take and give.
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty read buffer from this worker's free list.
pub(crate) fn take_buffer() -> Vec<u8> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(READ_BUFFER))
}

/// Gives a read buffer back (kept only if it did not grow and the list is short).
pub(crate) fn give_buffer(mut b: Vec<u8>) {
    if b.capacity() != READ_BUFFER {
        return;
    }
    b.clear();
    let _ = BUFFERS.try_with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < 32 {
            l.push(b);
        }
    });
}
