//! A client's request body on its way upstream: streamed frame by frame so memory stays flat
//! whatever the size, with the client-side limits (`client_max_body_size`,
//! `client_body_timeout`) enforced on the way, and its fate (why it stopped early) kept for the
//! service to choose the status.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;

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
