//! Upstream response bodies on their way to the client: relayed from hyper's client, or read
//! straight from a pooled connection of nrdot's own client and decoded by its framing, with
//! `response_timeout` between two reads; their completion returns the connection to the pool.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::buffers::{give_buffer, RELAY_BUFFER};
use crate::http1::Framing;
use crate::upstream::RawConn;

/// The longest wait between two reads of an upstream response body (the pool's
/// `response_timeout`, as nginx's `proxy_read_timeout`). The timer is made only when a read
/// has to wait, and reused for later waits.
struct Stall {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A read is waiting and `timer` runs for it.
    waiting: bool,
}

impl Stall {
    fn new(timeout: Duration) -> Stall {
        Stall {
            timeout,
            timer: None,
            waiting: false,
        }
    }

    /// A read returned pending: true once the upstream has been silent for the whole timeout
    /// (told to `done`, which counts it; never once the body is done).
    fn expired<D: Done>(&mut self, cx: &mut Context<'_>, done: &Option<D>) -> bool {
        let Some(done) = done else {
            return false;
        };
        if !self.waiting {
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.waiting = true;
        }
        let expired = self
            .timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready());
        if expired {
            done.timed_out();
        }
        expired
    }

    /// A read returned something: the next wait starts its own clock.
    fn progressed(&mut self) {
        self.waiting = false;
    }
}

/// Called once when a response body is finished or abandoned, with the bytes sent.
pub trait Done: Send + Unpin {
    /// `complete` is false when the client or the upstream went away mid-body.
    fn done(self, sent: u64, complete: bool);
    /// The upstream stalled longer than the response timeout between two reads of the body.
    fn timed_out(&self) {}
}

/// An upstream response body on its way to the client. Its [`Done`] runs when the body is
/// finished or abandoned, whichever comes first.
pub struct ResponseBody<D: Done> {
    inner: Incoming,
    sent: u64,
    done: Option<D>,
    stall: Stall,
}

impl<D: Done> ResponseBody<D> {
    /// `read_timeout`: the longest wait between two frames from the upstream.
    pub fn new(inner: Incoming, read_timeout: Duration, done: D) -> Self {
        ResponseBody {
            inner,
            sent: 0,
            done: Some(done),
            stall: Stall::new(read_timeout),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done.done(self.sent, complete);
        }
    }
}

impl<D: Done> Drop for ResponseBody<D> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl<D: Done> Body for ResponseBody<D> {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {
                if this.stall.expired(cx, &this.done) {
                    this.finish(false);
                    return Poll::Ready(Some(Err(UpstreamBodyError::Timeout)));
                }
                return Poll::Pending;
            }
        }
        this.stall.progressed();
        r.map(|f| f.map(|f| f.map_err(UpstreamBodyError::Hyper)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why an upstream response body read by nrdot itself stopped early.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream body: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before the end of the body")]
    Truncated,
    #[error("malformed chunked framing from upstream")]
    Framing,
    #[error("upstream sent nothing for the response timeout mid-body")]
    Timeout,
    /// From hyper's client (upgrades and streamed request bodies go through it).
    #[error("upstream body: {0}")]
    Hyper(#[from] hyper::Error),
}

/// An upstream response body read straight from a pooled plain connection (nrdot's own
/// HTTP/1.1 client, [`crate::relay`]), decoded by its framing into data frames for the hyper
/// server (HTTP/2 or HTTP/1.x). Trailers are dropped, as nginx drops them. Once the body
/// ended exactly where the framing says, the connection goes back to the worker's pool; its
/// [`Done`] runs then, or when the body is abandoned.
pub struct RawBody<D: Done> {
    conn: Option<RawConn>,
    /// Received and not yet passed on.
    buf: BytesMut,
    framing: Framing,
    /// The server closes after this response: the connection is not reused.
    upstream_close: bool,
    keepalive: usize,
    sent: u64,
    done: Option<D>,
    stall: Stall,
}

impl<D: Done> RawBody<D> {
    /// `buf` holds the response head (its first `head_len` bytes) and whatever of the body
    /// came with it.
    pub(crate) fn new(
        conn: RawConn,
        buf: Vec<u8>,
        head_len: usize,
        framing: Framing,
        upstream_close: bool,
        pool: &nrdot_config::model::Pool,
        done: D,
    ) -> Self {
        // The body bytes that came with the head are copied (usually all of a small body) so
        // the read buffer goes back to the worker's free list.
        let body = &buf[head_len.min(buf.len())..];
        let rest = if body.is_empty() {
            BytesMut::new() // allocated when the body is read, if there is one
        } else {
            BytesMut::from(body)
        };
        give_buffer(buf);
        let buf = rest;
        let mut body = RawBody {
            conn: Some(conn),
            buf,
            framing,
            upstream_close,
            keepalive: pool.keepalive,
            sent: 0,
            done: Some(done),
            stall: Stall::new(pool.response_timeout),
        };
        // When all of it came with the head (the common small response), the connection
        // serves the next request while this body waits for the client.
        let whole = match &body.framing {
            Framing::Length(0) => {
                body.finish(true);
                None
            }
            Framing::Length(n) => (body.buf.len() as u64 >= *n).then_some(*n as usize),
            Framing::Chunked(c) => c.clone().feed(&body.buf).ok().flatten(),
            Framing::UntilClose => None,
        };
        if let Some(end) = whole {
            if let Some(conn) = body.conn.take() {
                if end == body.buf.len() && !body.upstream_close {
                    conn.release(body.keepalive);
                } else {
                    body.buf.truncate(end); // nothing beyond the message is passed on
                }
            }
        }
        body
    }

    /// Ends the body once: a complete one returns its connection to the pool when nothing
    /// beyond the message arrived.
    fn finish(&mut self, complete: bool) {
        if let Some(conn) = self.conn.take() {
            let reusable = complete
                && self.buf.is_empty()
                && !self.upstream_close
                && !matches!(self.framing, Framing::UntilClose);
            if reusable {
                conn.release(self.keepalive);
            }
        }
        if let Some(done) = self.done.take() {
            done.done(self.sent, complete);
        }
    }

    /// The next data frame from what is buffered (`None` when more must be read) and whether
    /// the message ended with it.
    fn decode(&mut self) -> Result<(Option<Bytes>, bool), UpstreamBodyError> {
        match &mut self.framing {
            Framing::Length(left) => {
                let take = (*left).min(self.buf.len() as u64);
                *left -= take;
                let data = (take > 0).then(|| self.buf.split_to(take as usize).freeze());
                Ok((data, *left == 0))
            }
            Framing::Chunked(c) => {
                let (used, span, ended) = c
                    .next_data(&self.buf)
                    .map_err(|()| UpstreamBodyError::Framing)?;
                let data = span.map(|r| {
                    self.buf.advance(r.start);
                    self.buf.split_to(r.end - r.start).freeze()
                });
                if data.is_none() {
                    self.buf.advance(used);
                }
                Ok((data, ended))
            }
            Framing::UntilClose => Ok((
                (!self.buf.is_empty()).then(|| self.buf.split().freeze()),
                false,
            )),
        }
    }
}

impl<D: Done> Drop for RawBody<D> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl<D: Done> Body for RawBody<D> {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done.is_none() {
                return Poll::Ready(None);
            }
            if !this.buf.is_empty() {
                match this.decode() {
                    Err(e) => {
                        this.finish(false);
                        return Poll::Ready(Some(Err(e)));
                    }
                    Ok((data, ended)) => {
                        if let Some(d) = &data {
                            this.sent += d.len() as u64;
                        }
                        if ended {
                            // Before the frame goes out, so the hyper server sees the end with
                            // it (HTTP/2: END_STREAM on the last DATA frame).
                            this.finish(true);
                        }
                        match data {
                            Some(d) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                            None if ended => return Poll::Ready(None),
                            None => continue,
                        }
                    }
                }
            }
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            if this.buf.capacity() - this.buf.len() < 1024 {
                this.buf.reserve(RELAY_BUFFER);
            }
            let read = match conn.stream.poll_read_buf(cx, &mut this.buf) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    if this.stall.expired(cx, &this.done) {
                        this.finish(false);
                        return Poll::Ready(Some(Err(UpstreamBodyError::Timeout)));
                    }
                    return Poll::Pending;
                }
            };
            this.stall.progressed();
            match read {
                Ok(0) => {
                    if matches!(this.framing, Framing::UntilClose) {
                        this.finish(true);
                        return Poll::Ready(None);
                    }
                    this.finish(false);
                    return Poll::Ready(Some(Err(UpstreamBodyError::Truncated)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.finish(false);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            _ if self.done.is_none() => SizeHint::with_exact(0),
            Framing::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
