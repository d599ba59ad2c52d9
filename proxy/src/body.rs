//! Request and response bodies as they pass through: streamed frame by frame so memory stays
//! flat whatever the size, with the client-side limits (`client_max_body_size`,
//! `client_body_timeout`) enforced on the way.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::h1::{give_buffer, Framing, RELAY_BUFFER};
use crate::upstream::RawConn;

/// Why a request body stopped early; read by the service to choose the status.
#[derive(Debug, Default)]
pub struct BodyFate(AtomicU8);

impl BodyFate {
    fn set(&self, e: ProxyError) {
        let code = match e {
            ProxyError::BodyTooLarge => 1,
            ProxyError::ClientTimeout => 2,
            _ => 3,
        };
        self.0.store(code, Ordering::Relaxed);
    }

    /// The client-side cause, if the body failed because of the client.
    pub fn get(&self) -> Option<ProxyError> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(ProxyError::BodyTooLarge),
            2 => Some(ProxyError::ClientTimeout),
            3 => Some(ProxyError::BadRequest),
            _ => None,
        }
    }
}

/// The error a request body yields to the upstream client when the client misbehaves.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub struct ClientBodyError(pub ProxyError);

/// A client's request body on its way upstream.
pub struct RequestBody {
    first: Option<Frame<Bytes>>,
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    fate: Arc<BodyFate>,
    done: bool,
    counter: Option<metrics::Counter>,
}

impl RequestBody {
    /// Reads the first frame before anything is sent upstream, so a body that is broken from
    /// its first byte (an invalid chunk size, a client that never sends) never reaches an
    /// upstream. Also answers `Expect: 100-continue`, since hyper sends 100 on the first read.
    pub async fn start(
        mut inner: Incoming,
        limit: u64,
        timeout: Duration,
        counter: &metrics::Counter,
    ) -> Result<RequestBody, ProxyError> {
        let fate = Arc::new(BodyFate::default());
        let mut first = None;
        let mut seen = 0;
        let mut done = inner.is_end_stream();
        if !done {
            match tokio::time::timeout(timeout, http_body_util::BodyExt::frame(&mut inner)).await {
                Err(_) => return Err(ProxyError::ClientTimeout),
                Ok(None) => done = true,
                Ok(Some(Err(_))) => return Err(ProxyError::BadRequest),
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        seen = d.len() as u64;
                        if seen > limit {
                            return Err(ProxyError::BodyTooLarge);
                        }
                    }
                    first = Some(frame);
                }
            }
        }
        let counter = (!done).then(|| counter.clone());
        if let Some(c) = &counter {
            c.increment(seen);
        }
        Ok(RequestBody {
            first,
            inner: Some(inner),
            seen,
            limit,
            timeout,
            sleep: None,
            fate,
            done,
            counter,
        })
    }

    /// A body that is already in memory, so it can be sent again on a retry.
    pub fn full(bytes: Bytes) -> RequestBody {
        let empty = bytes.is_empty();
        RequestBody {
            first: (!empty).then(|| Frame::data(bytes)),
            inner: None,
            seen: 0,
            limit: u64::MAX,
            timeout: Duration::from_secs(60),
            sleep: None,
            fate: Arc::new(BodyFate::default()),
            done: true,
            counter: None,
        }
    }

    /// Reads the rest of the body into memory (for bodies that may be sent twice). Fails with
    /// the client's fault, or `None` when the body is larger than `max`.
    pub async fn collect(mut self, max: usize) -> Result<Option<Bytes>, ProxyError> {
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut self).await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        if buf.len() + d.len() > max {
                            return Ok(None);
                        }
                        buf.extend_from_slice(d);
                    }
                }
                Err(ClientBodyError(e)) => return Err(e),
            }
        }
        Ok(Some(buf.freeze()))
    }

    /// Shared record of why the body failed, if it does.
    pub fn fate(&self) -> Arc<BodyFate> {
        Arc::clone(&self.fate)
    }

    fn fail(&mut self, e: ProxyError) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.fate.set(e);
        self.done = true;
        Poll::Ready(Some(Err(ClientBodyError(e))))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(f) = self.first.take() {
            return Poll::Ready(Some(Ok(f)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    self.seen += n;
                    if self.seen > self.limit {
                        return self.fail(ProxyError::BodyTooLarge);
                    }
                    if let Some(c) = &self.counter {
                        c.increment(n);
                    }
                }
                let at = Instant::now() + self.timeout;
                if let Some(s) = self.sleep.as_mut() {
                    s.as_mut().reset(at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => self.fail(ProxyError::BadRequest),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return self.fail(ProxyError::ClientTimeout);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && (self.done || self.inner.as_ref().is_none_or(|i| i.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        let inner = match &self.inner {
            Some(i) if !self.done => i.size_hint(),
            _ => SizeHint::with_exact(0),
        };
        let n = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(u) = inner.upper() {
            hint.set_upper(u + n);
        }
        hint.set_lower(inner.lower() + n);
        hint
    }
}

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
