//! The byte relay of an upgraded connection (WebSocket or any other `Upgrade` protocol): the
//! client and the upstream joined until both directions have ended. Reads go through a read
//! buffer borrowed from the worker's free list for the length of one poll, so a tunnel holds
//! a buffer of its own only while the side it writes to is not taking bytes. An idle
//! WebSocket costs its two sockets and this small state — not the two 8 KiB buffers of
//! `tokio::io::copy_bidirectional` (or nginx's `proxy_buffer_size` pair). A tunnel that moves
//! no byte either way for `tunnel_idle_timeout` is closed; its deadline sits in the worker's
//! idle slab (as keep-alive deadlines do), so traffic only notes the time.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::buffers::{give_buffer, take_buffer};
use crate::clock;
use crate::local::{IdleSlot, Kind};

/// Joins `a` and `b`; resolves when both directions have ended (each end's EOF is passed on
/// as a write shutdown of the other), either side failed, or nothing moved for `idle`. `to_b`
/// is what `a` already sent that `b` has not seen yet.
pub(crate) fn join<A, B>(a: A, b: B, to_b: Vec<u8>, idle: Duration) -> Tunnel<A, B> {
    Tunnel {
        a,
        b,
        idle,
        last: clock::recent(),
        slot: None,
        a_to_b: Dir {
            pending: to_b,
            ..Dir::default()
        },
        b_to_a: Dir::default(),
    }
}

pub(crate) struct Tunnel<A, B> {
    a: A,
    b: B,
    idle: Duration,
    /// When a byte last moved.
    last: Instant,
    /// The idle deadline, once the tunnel has waited.
    slot: Option<IdleSlot>,
    a_to_b: Dir,
    b_to_a: Dir,
}

/// What went through a tunnel, when it ended.
pub(crate) struct Moved {
    /// Bytes `a` sent to `b` (client to upstream), and `b` to `a`.
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// Ended by an error on either side rather than by both sides closing.
    pub error: Option<io::Error>,
}

/// One direction of a tunnel.
#[derive(Default)]
struct Dir {
    /// Bytes read but not yet taken by the writer; empty (no allocation) while it keeps up.
    pending: Vec<u8>,
    at: usize,
    /// Written since the last flush (TLS may hold the last record until flushed).
    unflushed: bool,
    /// The reader ended; then the writer is shut down once `pending` is out.
    eof: bool,
    done: bool,
    moved: u64,
}

impl Dir {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            while self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.at += n;
                self.moved += n as u64;
                self.unflushed = true;
            }
            if self.pending.capacity() > 0 {
                self.pending = Vec::new();
                self.at = 0;
            }
            if self.unflushed {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
            let mut buf = take_buffer();
            let step = self.read_through(cx, from, to, &mut buf);
            give_buffer(buf);
            ready!(step)?;
        }
    }

    /// One read into `buf` and as much of it written on as `to` takes now; the rest is kept.
    fn read_through<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        buf: &mut Vec<u8>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
        ready!(Pin::new(&mut *from).poll_read(cx, &mut rb))?;
        let data = rb.filled();
        if data.is_empty() {
            self.eof = true;
            return Poll::Ready(Ok(()));
        }
        let mut off = 0;
        while off < data.len() {
            match Pin::new(&mut *to).poll_write(cx, &data[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        self.moved += off as u64;
        self.unflushed |= off > 0;
        if off < data.len() {
            self.pending = data[off..].to_vec();
            self.at = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<A, B> Future for Tunnel<A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Moved;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Moved> {
        let this = self.get_mut();
        let before = this.a_to_b.moved + this.b_to_a.moved;
        let mut error = None;
        for (dir, from_a) in [(&mut this.a_to_b, true), (&mut this.b_to_a, false)] {
            if dir.done {
                continue;
            }
            let r = if from_a {
                dir.poll(cx, &mut this.a, &mut this.b)
            } else {
                dir.poll(cx, &mut this.b, &mut this.a)
            };
            match r {
                Poll::Ready(Ok(())) => dir.done = true,
                Poll::Ready(Err(e)) => {
                    error = Some(e);
                    break;
                }
                Poll::Pending => {}
            }
        }
        if error.is_none() && !(this.a_to_b.done && this.b_to_a.done) {
            let moved = this.a_to_b.moved + this.b_to_a.moved != before;
            if moved {
                this.last = clock::recent();
            }
            let due = this.last + this.idle;
            match &this.slot {
                None => this.slot = Some(IdleSlot::new(due, cx.waker(), Kind::Tunnel)),
                // Woken with nothing to move: the sweep found the deadline passed, or a
                // spurious wake. Traffic since the deadline was set moves it on.
                Some(slot) if !moved && slot.expired() => {
                    if clock::recent() < due {
                        slot.set_deadline(due);
                        slot.set_waker(cx.waker());
                    } else {
                        error = Some(io::ErrorKind::TimedOut.into());
                    }
                }
                Some(slot) => slot.set_waker(cx.waker()),
            }
            if error.is_none() {
                return Poll::Pending;
            }
        }
        Poll::Ready(Moved {
            a_to_b: this.a_to_b.moved,
            b_to_a: this.b_to_a.moved,
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The side written to takes 64 bytes at a time: what the tunnel could not write is kept
    /// and goes out whole and in order, after the bytes it started with; each end of stream
    /// is passed on as a shutdown, and the tunnel ends when both have.
    #[tokio::test]
    async fn bytes_arrive_whole_and_in_order_under_backpressure_and_ends_pass_through() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut upstream) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(join(a, b, b"early".to_vec(), Duration::from_secs(60)));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("shutdown");
            client
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.expect("read");
        assert_eq!(&got[..5], b"early");
        assert!(got[5..] == data[..], "{} bytes arrived", got.len());
        upstream.write_all(b"reply").await.expect("write");
        upstream.shutdown().await.expect("shutdown");
        let mut client = writer.await.expect("writer");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(&back[..], b"reply");
        let moved = tunnel.await.expect("tunnel");
        assert_eq!((moved.a_to_b, moved.b_to_a), (200_005, 5));
        assert!(moved.error.is_none());
    }
}
