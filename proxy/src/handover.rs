//! The hyper downstream adapter: a client connection served by hyper's server (HTTP/2 with
//! prior knowledge or ALPN, and HTTP/1 connections the native path hands over with the bytes it
//! already read), under the framing observer and the lingering close, with
//! [`crate::service::ConnService`] answering each request. The worker watches these
//! connections so a stopping worker lets them finish.
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::inspect::{Inspected, Verdict};
use crate::listener::Shared;
use crate::service::ConnService;

thread_local! {
    /// This worker's watcher of hyper connections, taken when the worker stops. A
    /// thread-local because the native path hands connections over from inside its `Send`
    /// tasks, which cannot hold a reference to `RefCell` state.
    static GRACEFUL: std::cell::RefCell<Option<GracefulShutdown>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts watching this worker's hyper connections (called once, when the worker starts).
pub(crate) fn watch_connections() {
    GRACEFUL.with(|g| *g.borrow_mut() = Some(GracefulShutdown::new()));
}

/// Stops watching: what a stopping worker waits on for the connections already watched.
pub(crate) fn stop_watching() -> Option<GracefulShutdown> {
    GRACEFUL.with(|g| g.borrow_mut().take())
}

/// Serves a connection with hyper: HTTP/2, and HTTP/1 requests the native path hands over.
pub(crate) fn serve_hyper<IO>(stream: IO, peer: SocketAddr, shared: &Arc<Shared>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let table = shared.reader.load();
    let limits = &table.config.limits;
    let verdict = Verdict::new();
    let io = TokioIo::new(crate::linger::Linger::new(Inspected::new(
        stream,
        limits.client_header_timeout,
        limits.max_request_line,
        Arc::clone(&verdict),
    )));
    let service = ConnService::new(Arc::clone(shared), peer, verdict);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.keepalive_timeout)
        .max_buf_size(limits.max_header_size.max(8192) as usize)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(limits.max_header_size as u32);
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    drop(table);
    // Watched so a stopping worker lets it finish; after the worker stopped watching, the
    // connection only lives until the runtime is dropped.
    GRACEFUL.with(|g| match g.borrow().as_ref() {
        Some(g) => run_connection(g.watch(conn), peer),
        None => run_connection(conn, peer),
    });
}

fn run_connection<F, E>(conn: F, peer: SocketAddr)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let m = crate::metrics::get();
    tokio::spawn(async move {
        m.open_connections.increment(1.0);
        if let Err(e) = conn.await {
            tracing::debug!(peer = %peer, error = %e, "client connection ended with an error");
        }
        m.open_connections.decrement(1.0);
    });
}

/// A connection whose first bytes were already read: they are read again first.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, read from `prefix` (the bytes the native path already took) first.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(out.remaining());
            let pos = self.pos;
            out.put_slice(&self.prefix[pos..pos + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
