//! Upstream HTTP/1.1 connections, pooled per worker thread and per server. A worker's idle
//! connections are only touched by that worker, so the pool needs no lock; it is found by the
//! server's long-lived slot, so it survives table swaps. Connecting is separate from sending:
//! a failed connect has sent nothing, so the request can go to another server untouched.
//! A sweep every second closes idle connections that expired or whose server is no longer
//! available (drained, disabled, ejected, removed).
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nrdot_config::state::BackendState;
use nrdot_config::table::{BackendEntry, PoolEntry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::clock;
use crate::reqbody::RequestBody;

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

struct Slot {
    idle: Vec<Idle>,
    /// Plain connections of the native HTTP/1 path, with when they went idle.
    raw: Vec<(UpStream, Instant)>,
    backend: Weak<BackendState>,
    idle_timeout: Duration,
}

thread_local! {
    /// This worker's upstream keep-alive pools, by pool slot. A thread-local because a pooled
    /// connection is returned from `Drop`/completion paths (a response body finishing inside
    /// hyper) that cannot be handed a reference, and `Send` tasks cannot hold one to `RefCell`
    /// state; a mutex would put an atomic read-modify-write on every request.
    static SLOTS: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Refused, unreachable, reset during the handshake, or the name did not resolve.
    #[error("connect to {0} failed: {1}")]
    Failed(String, std::io::Error),
    /// No answer within `connect_timeout`.
    #[error("connect to {0} timed out")]
    Timeout(String),
}

/// A connection ready for one request.
pub struct Conn {
    /// The request sender.
    pub sender: SendRequest<RequestBody>,
    slot: usize,
    /// Whether it came from the idle pool (a reused connection may have been closed by the
    /// server in the meantime; such a failure is not the server's fault).
    pub reused: bool,
}

impl Conn {
    /// Returns the connection to this worker's pool after a complete exchange.
    pub fn release(self, keepalive: usize) {
        if self.sender.is_closed() || keepalive == 0 {
            return;
        }
        SLOTS.with(|s| {
            if let Some(Some(slot)) = s.borrow_mut().get_mut(self.slot) {
                if slot.idle.len() < keepalive {
                    slot.idle.push(Idle {
                        sender: self.sender,
                        since: clock::recent(),
                    });
                }
            }
        });
    }
}

/// Runs `f` on this worker's slot for `backend`, creating it on first use.
/// How long a pooled connection has been idle, on the worker's cached clock: idle limits are
/// seconds, and this runs on every reuse.
fn age(since: Instant) -> Duration {
    clock::recent().saturating_duration_since(since)
}

fn with_slot<R>(pool: &PoolEntry, backend: &BackendEntry, f: impl FnOnce(&mut Slot) -> R) -> R {
    let slot = backend.state.slot;
    let idle_timeout = pool.config.keepalive_idle_timeout;
    SLOTS.with(|s| {
        let mut slots = s.borrow_mut();
        if slots.len() <= slot {
            slots.resize_with(slot + 1, || None);
        }
        let entry = slots[slot].get_or_insert_with(|| Slot {
            idle: Vec::new(),
            raw: Vec::new(),
            backend: Arc::downgrade(&backend.state),
            idle_timeout,
        });
        entry.idle_timeout = idle_timeout;
        f(entry)
    })
}

/// An idle connection to `backend` if one is usable, else a new one.
pub async fn acquire(pool: &PoolEntry, backend: &BackendEntry) -> Result<Conn, ConnectError> {
    let slot = backend.state.slot;
    let idle_timeout = pool.config.keepalive_idle_timeout;
    let reused = with_slot(pool, backend, |entry| {
        while let Some(c) = entry.idle.pop() {
            if age(c.since) < idle_timeout && !c.sender.is_closed() && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    });
    if let Some(sender) = reused {
        return Ok(Conn {
            sender,
            slot,
            reused: true,
        });
    }
    // Boxed as in `acquire_raw`: the connect and handshakes are 3.5 KiB of future state, which
    // inline would sit in every hyper-path request's future (copied whole into its box).
    let sender = Box::pin(async {
        let addr = backend.authority.as_str();
        let stream = connect(pool, backend).await?;
        match &pool.config.tls {
            None => handshake(stream, addr).await,
            Some(_) => handshake(tls_connect(pool, backend, stream).await?, addr).await,
        }
    })
    .await?;
    Ok(Conn {
        sender,
        slot,
        reused: false,
    })
}

async fn handshake<IO>(io: IO, addr: &str) -> Result<SendRequest<RequestBody>, ConnectError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(EarlyAnswer {
            io,
            written: false,
            deaf: false,
        }))
        .await
        .map_err(|e| ConnectError::Failed(addr.to_string(), std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// The TLS handshake with `backend` on `stream`, verified against the pool's configuration,
/// within the pool's `connect_timeout`.
async fn tls_connect(
    pool: &PoolEntry,
    backend: &BackendEntry,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let addr = backend.authority.as_str();
    let cfg = pool.tls_client.clone();
    let name = pool
        .config
        .tls
        .as_ref()
        .and_then(|tls| crate::tls::server_name(tls, addr));
    let (Some(cfg), Some(name)) = (cfg, name) else {
        return Err(ConnectError::Failed(
            addr.to_string(),
            std::io::Error::other("no TLS configuration for this pool"),
        ));
    };
    let connector = tokio_rustls::TlsConnector::from(cfg);
    match tokio::time::timeout(pool.config.connect_timeout, connector.connect(name, stream)).await {
        Err(_) => Err(ConnectError::Timeout(addr.to_string())),
        Ok(Err(e)) => Err(ConnectError::Failed(addr.to_string(), e)),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Opens a TCP connection to `backend` within the pool's `connect_timeout`.
async fn connect(pool: &PoolEntry, backend: &BackendEntry) -> Result<TcpStream, ConnectError> {
    let addr = backend.authority.as_str();
    let stream = match tokio::time::timeout(
        pool.config.connect_timeout,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Err(_) => return Err(ConnectError::Timeout(addr.to_string())),
        Ok(Err(e)) => return Err(ConnectError::Failed(addr.to_string(), e)),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection of nrdot's own HTTP/1.1 client ([`crate::relay`]): plain, or TLS for pools
/// with `[pool.tls]`.
pub enum UpStream {
    Plain(TcpStream),
    /// Boxed: rustls' connection state is large and most pools are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpStream {
    /// Ready when a read may find something. Plain: the socket's readiness, so no buffer is
    /// taken while the upstream thinks. TLS: at once (rustls may hold decrypted bytes already).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            UpStream::Plain(s) => s.readable().await,
            UpStream::Tls(_) => Ok(()),
        }
    }

    /// Reads into the spare capacity of `buf` (0: the connection ended).
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            UpStream::Plain(s) => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    r => return Poll::Ready(r),
                }
            },
            UpStream::Tls(t) => tokio_util::io::poll_read_buf(Pin::new(&mut **t), cx, buf),
        }
    }

    /// Whether an idle connection still looks usable: the server has neither closed it nor
    /// sent anything unasked. Uses the readiness the runtime already knows, so a quiet plain
    /// connection costs no system call. A TLS server's session tickets after the handshake
    /// are consumed by rustls here and do not count.
    fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            UpStream::Plain(s) => match s.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => matches!(
                    s.try_read(&mut [0u8; 1]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ),
            },
            UpStream::Tls(t) => {
                let mut byte = [0u8; 1];
                let mut rb = ReadBuf::new(&mut byte);
                Pin::new(&mut **t).poll_read(&mut cx, &mut rb).is_pending()
            }
        }
    }
}

impl AsyncRead for UpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}

/// A connection for one exchange of nrdot's own client.
pub struct RawConn {
    pub stream: UpStream,
    slot: usize,
    /// Whether it came from the idle pool (see [`Conn::reused`]).
    pub reused: bool,
}

impl RawConn {
    /// Returns the connection to this worker's pool after a complete exchange that left
    /// nothing unread.
    pub fn release(self, keepalive: usize) {
        if keepalive == 0 {
            return;
        }
        SLOTS.with(|s| {
            if let Some(Some(slot)) = s.borrow_mut().get_mut(self.slot) {
                if slot.raw.len() < keepalive {
                    slot.raw.push((self.stream, clock::recent()));
                }
            }
        });
    }
}

/// An idle connection of nrdot's own client to `backend` if one is usable, else a new one
/// (with the TLS handshake for pools that have `[pool.tls]`).
pub async fn acquire_raw(
    pool: &PoolEntry,
    backend: &BackendEntry,
) -> Result<RawConn, ConnectError> {
    let slot = backend.state.slot;
    let idle_timeout = pool.config.keepalive_idle_timeout;
    let reused = with_slot(pool, backend, |entry| {
        while let Some((mut stream, since)) = entry.raw.pop() {
            if age(since) < idle_timeout && stream.quiet() {
                return Some(stream);
            }
        }
        None
    });
    if let Some(stream) = reused {
        return Ok(RawConn {
            stream,
            slot,
            reused: true,
        });
    }
    // Boxed: rare on a warm pool, and large; kept out of every exchange's future.
    let stream = Box::pin(async {
        let tcp = connect(pool, backend).await?;
        Ok::<_, ConnectError>(match pool.config.tls {
            None => UpStream::Plain(tcp),
            Some(_) => UpStream::Tls(Box::new(tls_connect(pool, backend, tcp).await?)),
        })
    })
    .await?;
    Ok(RawConn {
        stream,
        slot,
        reused: false,
    })
}

/// Closes this worker's idle connections that expired or whose server no longer takes
/// requests. Runs every second on each worker.
pub fn sweep() {
    SLOTS.with(|s| {
        for entry in s.borrow_mut().iter_mut() {
            let Some(slot) = entry else { continue };
            match slot.backend.upgrade() {
                None => *entry = None, // removed from the configuration
                Some(b) if !b.available() => {
                    slot.idle.clear();
                    slot.raw.clear();
                }
                Some(_) => {
                    let timeout = slot.idle_timeout;
                    slot.idle
                        .retain(|c| age(c.since) < timeout && !c.sender.is_closed());
                    slot.raw
                        .retain_mut(|(s, since)| age(*since) < timeout && s.quiet());
                }
            }
        }
    });
}

/// The upstream side of hyper's client (requests with streamed bodies). A server may answer
/// before it has read the whole body and close (an application refusing an upload with 413 or
/// 401): writing then fails with a reset or a broken pipe while its answer already waits in the
/// socket, and hyper reports the write error and never reads the answer, so the client got a
/// 502 instead of the server's status. Once the request has started going out, such a failure
/// makes this stream swallow the rest of the body instead (RFC 9112 9.5: a client seeing the
/// server stop reading stops sending), and hyper reads on: the answer if there is one, else
/// the reset, which is the 502 it was before. A failure of the very first write is reported
/// as it is, so a stale pooled connection is still retried.
struct EarlyAnswer<IO> {
    io: IO,
    /// Something was written: the server has started receiving this request.
    written: bool,
    /// The server stopped reading: writes are dropped.
    deaf: bool,
}

impl<IO> EarlyAnswer<IO> {
    /// The write's outcome, with a vanished reader after the first write turned into "written".
    fn outcome(&mut self, r: io::Result<usize>, len: usize) -> io::Result<usize> {
        match r {
            Ok(n) => {
                self.written |= n > 0;
                Ok(n)
            }
            Err(e) if self.written && peer_gone(&e) => {
                self.deaf = true;
                Ok(len)
            }
            Err(e) => Err(e),
        }
    }
}

/// A write failed because the server closed or reset the connection.
pub(crate) fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for EarlyAnswer<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for EarlyAnswer<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.deaf {
            return Poll::Ready(Ok(buf.len()));
        }
        let r = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf));
        Poll::Ready(this.outcome(r, buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len = bufs.iter().map(|b| b.len()).sum();
        if this.deaf {
            return Poll::Ready(Ok(len));
        }
        let r = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs));
        Poll::Ready(this.outcome(r, len))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deaf {
            return Poll::Ready(Ok(()));
        }
        let r = std::task::ready!(Pin::new(&mut this.io).poll_flush(cx));
        Poll::Ready(this.outcome(r.map(|()| 0), 0).map(|_| ()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deaf {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
