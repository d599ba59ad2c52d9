//! Lingering close (RFC 9112 9.6; nginx's `lingering_close`), for the connections hyper serves
//! and, through [`drain`], for the native path's. When a connection ends while its client is
//! still sending a request (an upload the
//! upstream answered early, a body over `client_max_body_size`, framing nrdot refused), closing
//! the socket with unread bytes makes the kernel send a reset, and a reset can destroy the
//! answer before the client has read it: curl then reports "Send failure" instead of the
//! status. The socket goes to a task instead that half-closes it and reads and discards what
//! still arrives, for at most [`LINGERING_TIME`], giving up after [`LINGERING_TIMEOUT`] of
//! silence, as nginx does with the same defaults.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::inspect::Inspected;

/// Longest a closing connection is read on (nginx `lingering_time`).
const LINGERING_TIME: Duration = Duration::from_secs(30);
/// Longest wait for more bytes while lingering (nginx `lingering_timeout`).
const LINGERING_TIMEOUT: Duration = Duration::from_secs(5);

/// The stream under hyper; lingers when dropped in the middle of a request.
pub struct Linger<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// `None` only once dropped.
    io: Option<Inspected<IO>>,
}

impl<IO> Linger<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub fn new(io: Inspected<IO>) -> Self {
        Linger { io: Some(io) }
    }

    /// Runs `f` on the stream (always there until the drop).
    fn with<R>(
        self: Pin<&mut Self>,
        f: impl FnOnce(Pin<&mut Inspected<IO>>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match self.get_mut().io.as_mut() {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<IO> Drop for Linger<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        let Some(io) = self.io.take() else { return };
        if !io.mid_request() {
            return;
        }
        // Without a runtime (the worker is being torn down) the socket just closes.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(io.into_inner()));
        }
    }
}

/// Half-closes `io`, then reads until the client closes, goes quiet or the time is up.
pub(crate) async fn drain<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let end = tokio::time::Instant::now() + LINGERING_TIME;
    // hyper has usually shut the write side already; a second shutdown is harmless.
    if tokio::time::timeout(LINGERING_TIMEOUT, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut scratch = vec![0u8; 4096];
    loop {
        let quiet =
            LINGERING_TIMEOUT.min(end.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(quiet, io.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

impl<IO> AsyncRead for Linger<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_read(cx, buf))
    }
}

impl<IO> AsyncWrite for Linger<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.with(|io| io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|io| io.poll_shutdown(cx))
    }
}
