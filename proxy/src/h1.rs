//! The native HTTP/1.1 path. It owns client connections from accept (or the TLS handshake)
//! and serves the common request — HTTP/1.1, origin-form target, no body or a Content-Length
//! or chunked body up to 64 KiB (a chunked one sent on decoded, with its length), or a GET
//! asking for an upgrade (a `101` turns the connection into a [`crate::tunnel`]) — inside the
//! connection's own task: the head is parsed in place, rewritten straight into the bytes sent
//! upstream (through [`crate::relay::send`]), and the response is relayed from the upstream
//! socket with its own framing (length, chunked, or until close). No request or header map is
//! built, no second task or channel sits between client and upstream, and an idle connection
//! holds no buffer. The parsers it uses (heads, framing, chunks) are [`crate::http1`]'s, and
//! the intermediary rules [`crate::rules`]', shared with the hyper path.
//!
//! HTTP/1.0 requests are served here too (keep-alive when asked for, chunked answers decoded).
//! Anything else (larger bodies, chunked ones with trailers, other expectations, other
//! upgrades, HTTP/2, anything malformed) is handed, with the bytes already read, to the
//! hyper-based path ([`crate::handover`], [`crate::service`]) for the rest of the connection,
//! so every rule that path enforces still holds. Routing, splitting, the request rewrite, and
//! the attempt loop with its retries and passive health are the same functions both paths call.
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method, Version};
use nrdot_config::RouteTable;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::accesslog::LogFields;
use crate::buffers::{give_buffer, take_buffer, READ_BUFFER, RELAY_BUFFER};
use crate::error::{self, ProxyError};
use crate::handover::{self, Rewind};
use crate::http1::{
    chunked_body, content_length, itoa3, parse_response, plain_final_head, put, response_framing,
    serialize, BodyScan, Chunks, Framing, ResponseFraming, MAX_RESPONSE_FIELDS, NATIVE_BODY_MAX,
};
use crate::listener::Shared;
use crate::local::{Busy, IdleSlot, Kind, Open};
use crate::rules::retry::{idempotent, ActiveGuard};
use crate::rules::route::{self, Lookup};
use crate::rules::target::LineVersion;
use crate::rules::{
    framing_field, hop_by_hop, is, tokens, BodyLength, ConnectionFields, Forwarding,
};
use crate::{clock, relay, rules, tunnel, upstream};

/// Request heads with more fields than this go to the hyper path.
const MAX_FIELDS: usize = 64;

/// A client connection this path can serve.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when a read would find something. Polled, not awaited, so an idle connection
    /// keeps no future for it (the readiness lives in the runtime's registration).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Turns Nagle's algorithm off on the socket.
    fn set_nodelay(&self);
    /// Writes bytes after which the connection closes. A plain socket sends them with
    /// `MSG_MORE`, which holds the last segment back until the close: its FIN then leaves in
    /// that segment, and the client's ACK of the answer goes with its own FIN — per connection
    /// two packets fewer for both sides' kernels to carry.
    fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self).poll_write(cx, buf)
    }
    /// The connection has a closing handshake of its own to send before the socket closes.
    const CLOSE_NOTIFY: bool = false;
}

impl ClientIo for TcpStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }
    fn poll_write_last(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Something arrived after the request (a client breaking its word, or its FIN): the
        // close may become a reset, which would drop a held segment, so send it at once. The
        // runtime's readiness flag, not a syscall, as nginx checks `read->ready`.
        let more = match self.poll_read_ready(cx) {
            Poll::Ready(_) => 0,
            Poll::Pending => libc::MSG_MORE,
        };
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            let sock = socket2::SockRef::from(&*self);
            let flags = more | libc::MSG_NOSIGNAL;
            match self.try_io(tokio::io::Interest::WRITABLE, || {
                sock.send_with_flags(buf, flags)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    /// TLS's `close_notify` (RFC 8446 6.1): without it a client reading to the end of stream
    /// (an answer delimited by the close) cannot tell the end from a cut, and OpenSSL 3
    /// clients report the close as an error.
    const CLOSE_NOTIFY: bool = true;

    fn set_nodelay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        // Records already read may hold plaintext the socket will not announce again.
        match tls.process_new_packets() {
            Ok(s) if s.plaintext_bytes_to_read() == 0 && !s.peer_has_closed() => {
                tcp.poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// What a worker gives each connection of this path. Kept small: idle connections are
/// mostly this.
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// TCP_NODELAY is set. Plain connections start without it (nginx's habit): a response
    /// written in one piece never meets Nagle's algorithm, and the system call is saved for
    /// the many connections that carry one small response.
    pub nodelay: AtomicBool,
}

/// Serves `s` on this path, handing it to the hyper path when a request needs it.
pub(crate) fn spawn<S: ClientIo>(mut s: S, cx: Ctx) {
    // One async block using `s` and `cx` in place (an async fn would store its arguments
    // twice): this future is most of what an idle connection costs, and at up to 152 bytes
    // the task fits tokio's 256-byte cell.
    tokio::spawn(async move {
        let _open = Open::begin();
        crate::metrics::get().open_connections.increment(1.0);
        let mut buf: Vec<u8> = Vec::new();
        let mut index = 0u64;
        // From the table of the last exchange (one table load per request, not two), in
        // milliseconds: four bytes instead of a Duration's sixteen keep the task in 256.
        let mut keepalive = millis(cx.shared.reader.load().config.limits.keepalive_timeout);
        let end = loop {
            if buf.is_empty() {
                give_buffer(std::mem::take(&mut buf)); // nothing held while idle
                let idle = IdleRead {
                    s: &mut s,
                    buf: &mut buf,
                    keepalive,
                    slot: None,
                };
                match idle.await {
                    Ok(n) if n > 0 => {}
                    _ => break End::Quiet,
                }
            }
            // Everything an exchange keeps across its awaits lives in this box (1.5 KiB, from
            // the allocator's per-thread cache): connections are mostly idle, and idle ones
            // carry only the above.
            // Set by an exchange whose upstream switched protocols. Beside `Next`, not in it: a
            // box in `Next` would make it 16 bytes and this task a cell size larger.
            let mut tunnel: Option<Box<Upgraded>> = None;
            let ex = exchange(&mut s, &cx, &mut buf, index, &mut keepalive, &mut tunnel);
            match Box::pin(ex).await {
                Next::KeepAlive => {}
                Next::Close if buf.is_empty() => break End::Closing,
                Next::Close => break End::ClosingUnread,
                Next::Abort => break End::Quiet,
                Next::Handoff => break End::Handoff,
                Next::Tunnel => {
                    if let Some(t) = tunnel {
                        Box::pin((*t).run(&mut s)).await;
                    }
                    break End::Quiet;
                }
            }
            index += 1;
        };
        crate::metrics::get().open_connections.decrement(1.0);
        // Closing on a client that sent more (pipelined requests past the keep-alive limit,
        // bytes after `Connection: close`): closing with those unread would be a reset, which
        // can destroy the answers before the client reads them. A task of its own half-closes
        // and reads on. The readiness is looked at, not awaited, and the lingering is not
        // awaited here: either would widen every connection's task.
        let unread = match end {
            End::ClosingUnread => true,
            End::Closing => s
                .poll_ready(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready(),
            End::Quiet | End::Handoff => false,
        };
        if unread {
            tokio::spawn(crate::linger::drain(s));
        } else if matches!(end, End::Handoff) {
            crate::metrics::get().handed_over.increment(1);
            if !cx.nodelay.load(Ordering::Relaxed) {
                s.set_nodelay(); // the hyper path writes heads and bodies separately
            }
            let io = Rewind::new(buf, s);
            handover::serve_hyper(io, cx.peer, &cx.shared);
        } else if S::CLOSE_NOTIFY {
            // Boxed: this state would otherwise widen every connection's task.
            let close = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, s.shutdown());
            let _ = Box::pin(close).await;
        }
    });
}

/// How a connection's loop ended.
enum End {
    /// The client closed, went quiet past the keep-alive timeout, or a tunnel ended.
    Quiet,
    /// An answer said the connection closes (the client may still be sending).
    Closing,
    /// The same, with bytes the client sent after that request already read.
    ClosingUnread,
    /// The hyper path takes over.
    Handoff,
}

/// Writes all of `buf`; when it is the `last` the connection sends (it closes next), with
/// [`ClientIo::poll_write_last`].
async fn write_answer<S: ClientIo>(s: &mut S, mut buf: &[u8], last: bool) -> io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| {
            if last {
                s.poll_write_last(cx, buf)
            } else {
                Pin::new(&mut *s).poll_write(cx, buf)
            }
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// How long a closing TLS connection may take to send its `close_notify` (a client that reads
/// nothing more must not hold the task).
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

fn millis(d: Duration) -> u32 {
    d.as_millis().try_into().unwrap_or(u32::MAX)
}

/// Waits for a connection's next request without holding a buffer or a timer: readiness is
/// polled, then one read into a buffer from the free list. The keep-alive deadline goes into
/// the worker's [`IDLE`] slab only when the first poll finds nothing to read.
struct IdleRead<'a, S> {
    s: &'a mut S,
    buf: &'a mut Vec<u8>,
    /// Milliseconds.
    keepalive: u32,
    slot: Option<IdleSlot>,
}

impl<S: ClientIo> Future for IdleRead<'_, S> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, c: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(r) = this.s.poll_ready(c) {
            r?;
            if this.buf.capacity() == 0 {
                *this.buf = take_buffer();
            }
            // Polled once and dropped: it holds nothing between polls.
            let read = this.s.read_buf(this.buf);
            tokio::pin!(read);
            if let Poll::Ready(r) = read.poll(c) {
                return Poll::Ready(r);
            }
        }
        match &this.slot {
            None => {
                let deadline = clock::recent() + Duration::from_millis(this.keepalive.into());
                this.slot = Some(IdleSlot::new(deadline, c.waker(), Kind::KeepAlive));
            }
            Some(slot) if slot.expired() => {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            Some(slot) => slot.set_waker(c.waker()),
        }
        Poll::Pending
    }
}

/// How an exchange left the connection.
enum Next {
    KeepAlive,
    /// An answer said the connection closes: the client may still be sending.
    Close,
    /// The exchange broke (the client timed out, went away or failed a write): close without
    /// lingering.
    Abort,
    /// The hyper path takes the connection from this request on.
    Handoff,
    /// The upstream switched protocols: the connection is a tunnel from now on.
    Tunnel,
}

/// A connection whose upstream answered `101`, with what its end is accounted to.
struct Upgraded {
    up: upstream::RawConn,
    /// What the client sent behind its request, for the upstream.
    to_upstream: Vec<u8>,
    table: Arc<RouteTable>,
    pool: usize,
    backend: usize,
    status: u16,
    /// Bytes the upstream sent behind its head (already written to the client).
    early: u64,
    log: Option<Box<LogFields>>,
    /// A stopping worker gives a tunnel the grace period, as any request in flight.
    _busy: Busy,
}

impl Upgraded {
    /// Joins the client and the upstream until both ends close (or the tunnel idles out).
    async fn run<S: ClientIo>(mut self, s: &mut S) {
        let idle = self.table.config.limits.tunnel_idle_timeout;
        let to_upstream = std::mem::take(&mut self.to_upstream);
        let m = tunnel::join(s, &mut self.up.stream, to_upstream, idle).await;
        if let Some(e) = &m.error {
            let be = &self.table.pools[self.pool].backends[self.backend];
            tracing::debug!(upstream = %be.authority, error = %e, "tunnel ended by an error");
        }
        self.finish(m.a_to_b, m.b_to_a);
    }

    /// The request is over: counted, logged, its server and pool no longer busy with it.
    fn finish(self, up: u64, down: u64) {
        let pool = &self.table.pools[self.pool];
        pool.backends[self.backend].state.finish(false);
        pool.state.active.fetch_sub(1, Ordering::Relaxed);
        pool.state.bytes_in.increment(up);
        pool.state.bytes_out.increment(down + self.early);
        if let Some(l) = &self.log {
            l.write(self.status, down + self.early);
        }
    }
}

/// What [`forward`] did with the buffer's first request.
enum Forwarded {
    /// Done: the response was relayed.
    Done(Next),
    /// nrdot's own answer, still to be written once the `unread` rest of the request's body
    /// has been read; then close if the flag says so.
    Reply {
        bytes: Vec<u8>,
        close: bool,
        /// The client said it sends nothing more (see [`write_answer`]).
        last: bool,
        unread: usize,
    },
    /// The head (or a chunked body) is not complete yet: read on, after a `100 Continue` when
    /// `expect` says the client waits for one.
    More { body: bool, expect: bool },
    /// The upstream switched protocols; the client has its `101`.
    Tunnel(Box<Upgraded>),
}

/// One request of the connection: routed, forwarded or answered, its response written.
async fn exchange<S: ClientIo>(
    s: &mut S,
    cx: &Ctx,
    buf: &mut Vec<u8>,
    index: u64,
    keepalive: &mut u32,
    tunnel: &mut Option<Box<Upgraded>>,
) -> Next {
    let (_busy, stopping) = Busy::begin();
    let table = cx.shared.reader.load();
    *keepalive = millis(table.config.limits.keepalive_timeout);
    let mut deadline = None;
    let mut continued = false;
    let mut scan = BodyScan::default();
    loop {
        match forward(s, cx, &table, buf, index, stopping, &mut scan).await {
            Forwarded::Done(next) => return next,
            Forwarded::Tunnel(t) => {
                *tunnel = Some(t);
                return Next::Tunnel;
            }
            Forwarded::Reply {
                bytes,
                close,
                last,
                unread,
            } => {
                // A body comes off the connection with its request even when nobody forwards
                // it, so the next request starts where the client thinks it does.
                if unread > 0 {
                    let timeout = table.config.limits.client_body_timeout;
                    if read_body(s, &mut Vec::new(), unread, timeout)
                        .await
                        .is_err()
                    {
                        return Next::Abort;
                    }
                }
                let w = write_answer(s, &bytes, last && buf.is_empty()).await;
                return if w.is_err() {
                    Next::Abort
                } else if close {
                    Next::Close
                } else {
                    Next::KeepAlive
                };
            }
            // A head cut across reads (a large head, or pipelined requests past the end of a
            // read): the rest must come within `client_header_timeout` of the first part, or
            // the connection closes without an answer, as on the hyper path. A chunked body
            // still coming gets `client_body_timeout` for each read, as nginx gives it.
            Forwarded::More { body, expect } => {
                if expect && !continued {
                    if s.write_all(CONTINUE).await.is_err() {
                        return Next::Abort;
                    }
                    continued = true;
                }
                let limits = &table.config.limits;
                // Where an empty line ending the head could start among the bytes read next.
                let mut from = buf.len().saturating_sub(3);
                loop {
                    let at = if body {
                        buf.reserve(READ_BUFFER);
                        tokio::time::Instant::now() + limits.client_body_timeout
                    } else {
                        *deadline.get_or_insert_with(|| {
                            tokio::time::Instant::now() + limits.client_header_timeout
                        })
                    };
                    match tokio::time::timeout_at(at, s.read_buf(buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return Next::Abort,
                    }
                    // A head is parsed again only once an empty line may have ended it (or it
                    // reached the limit): sent a byte at a time, it would cost its length
                    // squared otherwise. (A chunked body is followed on from where it was.)
                    if body
                        || buf.len() as u64 >= limits.max_header_size
                        || head_may_end(&buf[from..])
                    {
                        break;
                    }
                    from = buf.len().saturating_sub(3);
                }
            }
        }
    }
}

/// Whether `b` holds the empty line that ends a head (httparse takes CRLF or a bare LF).
fn head_may_end(b: &[u8]) -> bool {
    memchr::memmem::find(b, b"\n\r\n").is_some() || memchr::memmem::find(b, b"\n\n").is_some()
}

/// What to do with the request at the start of the buffer.
enum Step {
    /// The hyper path takes the connection from this request on.
    Handoff,
    /// The head, or the chunked body behind it, is not complete.
    Partial {
        body: bool,
        expect: bool,
    },
    /// nrdot answers itself (no route, redirect).
    Reply {
        bytes: Vec<u8>,
        close: bool,
        last: bool,
        /// Bytes of the request: head and body.
        consumed: usize,
    },
    Forward(Prepared),
    /// An `HTTP/1.x` line with x above 1: the minor digit at this offset is made `1` and the
    /// head parsed again (RFC 9110 6.2).
    NewerMinor(usize),
}

/// What the client's request says about the response it can take.
#[derive(Clone, Copy, Default)]
struct Want {
    head_request: bool,
    /// The client asks to switch protocols: a `101` answer turns the connection into a tunnel.
    upgrade: bool,
    /// An HTTP/1.0 client: no chunked framing, keep-alive only when said so.
    v10: bool,
}

/// A request ready to go upstream; nothing in it borrows the client's buffer.
struct Prepared {
    head_len: usize,
    /// Length of the request body that follows the head (as it came: chunked or not).
    body: usize,
    /// The body is chunked (and complete in the buffer): it goes upstream decoded.
    chunked: bool,
    /// The client waits for `100 Continue` before sending the body.
    expect: bool,
    /// The upstream request head.
    out: Vec<u8>,
    d: route::Decision,
    safe: bool,
    want: Want,
    /// The response must end the client connection.
    close: bool,
    /// The client said it sends nothing after this request.
    last: bool,
    log: Option<Box<LogFields>>,
}

/// Parsed request fields as routing reads them.
struct Fields<'a, 'b>(&'a [httparse::Header<'b>]);

/// The first value of field `name`.
fn field<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

impl Lookup for Fields<'_, '_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        field(self.0, name)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        let values = self
            .0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .map(|h| h.value);
        route::cookie_in(values, name)
    }
}

/// The interim answer to `Expect: 100-continue`, sent just before the body is read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Most bytes a chunked request body may take on the wire and still be read whole here: the
/// limit above plus room for chunk framing.
const CHUNKED_RAW_MAX: usize = NATIVE_BODY_MAX + 8 * 1024;

/// Reads the `missing` last bytes of a request body from the client onto the end of `out`.
/// The timeout runs between two reads, as nginx's `client_body_timeout` does; a client that
/// closes early is a `BadRequest` nobody hears.
async fn read_body<S: ClientIo>(
    s: &mut S,
    out: &mut Vec<u8>,
    mut missing: usize,
    timeout: Duration,
) -> Result<(), ProxyError> {
    out.reserve_exact(missing);
    while missing > 0 {
        let mut rest = (&mut *s).take(missing as u64);
        match tokio::time::timeout(timeout, rest.read_buf(out)).await {
            Err(_) => return Err(ProxyError::ClientTimeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(ProxyError::BadRequest),
            Ok(Ok(n)) => missing -= n,
        }
    }
    Ok(())
}

/// nrdot's own answer to a request it will not read further: the connection closes after it
/// (lingering over whatever the client still sends).
fn refuse(cx: &Ctx, e: ProxyError, read: usize) -> Step {
    Step::Reply {
        bytes: error_reply(cx, None, e, true),
        close: true,
        last: false,
        consumed: read,
    }
}

/// What a head httparse did not complete (`error`: or refused) comes to: more to read, a
/// refusal nrdot writes itself (414, 505), a later minor version to serve as 1.1, or the hyper
/// path, which answers the rest as it always has.
fn unparsed(
    buf: &[u8],
    cx: &Ctx,
    limits: &nrdot_config::Limits,
    error: Option<httparse::Error>,
) -> Step {
    if error.is_none() && (buf.len() as u64) < limits.max_header_size {
        return Step::Partial {
            body: false,
            expect: false,
        };
    }
    if rules::target::target_too_long(buf, limits.max_request_line) {
        return refuse(cx, ProxyError::UriTooLong, buf.len());
    }
    match (error, rules::target::line_version(buf)) {
        (Some(httparse::Error::Version), LineVersion::NewerMinor(at)) => Step::NewerMinor(at),
        (Some(httparse::Error::Version), LineVersion::Unsupported) => {
            refuse(cx, ProxyError::VersionNotSupported, buf.len())
        }
        _ => Step::Handoff,
    }
}

/// Parses and routes the request at the start of `buf` and writes its upstream head. Runs
/// without awaiting, so the header arrays live on the stack, not in the connection's future.
fn prepare(
    buf: &[u8],
    cx: &Ctx,
    table: &RouteTable,
    index: u64,
    stopping: bool,
    scan: &mut BodyScan,
) -> Step {
    let limits = &table.config.limits;
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(n)) => n,
        other => return unparsed(buf, cx, limits, other.err()),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Step::Handoff;
    };
    if let Err(e) = rules::target::check(target.as_bytes(), limits.max_request_line) {
        return refuse(cx, e, buf.len());
    }
    if head_len as u64 > limits.max_header_size
        || req.headers.len() > limits.max_headers
        || !target.starts_with('/')
        || method == "CONNECT"
    {
        return Step::Handoff;
    }
    let headers: &[httparse::Header] = req.headers;
    // HTTP/1.0 (ApacheBench, many health checkers) is served here too: persistent only when it
    // asks for keep-alive, and a chunked answer is decoded for it.
    let mut f = RequestFields::new(minor == 0);
    if !f.scan(headers, method) {
        return Step::Handoff;
    }
    let (body, decoded) = match body_extent(&buf[head_len..], &f, limits, scan) {
        Ok(extent) => extent,
        Err(step) => return step,
    };
    let client_close = f.connection.close || (f.v10 && !f.connection.keep_alive);
    let Some(host) = std::str::from_utf8(f.host).ok().and_then(route::host_of) else {
        return Step::Handoff;
    };
    let close = client_close || stopping || index + 1 >= limits.keepalive_requests;
    let consumed = head_len + body;
    let reply = |bytes| Step::Reply {
        bytes,
        close,
        last: client_close,
        consumed,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let mut log = log_fields(cx, headers, method, target, f.v10);
    let Some(route) = table.route(&host, path, |name| field(headers, name)) else {
        return reply(error_reply(cx, log, ProxyError::NoRoute, close));
    };
    let r = &table.routes[route];
    let mut peer_buf = [0u8; 48];
    let peer = route::peer_text(cx.peer, &mut peer_buf);
    let d = route::decide(table, route, &Fields(headers), peer);
    if let Some(l) = log.as_mut() {
        l.route = r.name.clone();
    }
    if r.https_redirect && cx.shared.tls.is_none() {
        let port = route::redirect_port(table, cx.shared.https_port);
        return reply(redirect_reply(&host, port, target, close, log));
    }
    let trusted = table
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(cx.peer.ip()));
    let w = Forwarding {
        connection: &f.connection,
        trusted,
        peer,
        proto: cx.shared.proto.as_bytes(),
        host: f.host,
        upgrade: f.upgrade,
        length: decoded.map_or(BodyLength::AsSent, BodyLength::Is),
        via: if f.v10 { b"1.0 nrdot" } else { b"1.1 nrdot" },
    };
    let Some(out) = upstream_head(method, target, headers, &w, head_len) else {
        return Step::Handoff;
    };
    Step::Forward(Prepared {
        head_len,
        body,
        chunked: f.chunked,
        expect: f.expect,
        out,
        safe: idempotent(method) || r.retry_unsafe,
        want: Want {
            head_request: method == "HEAD",
            upgrade: f.upgrade.is_some(),
            v10: f.v10,
        },
        d,
        close,
        last: client_close,
        log,
    })
}

/// What the request's fields say about its framing, host and connection, as the native path
/// reads them.
struct RequestFields<'b> {
    /// The one Host field.
    host: &'b [u8],
    connection: ConnectionFields<'b>,
    /// Content-Length.
    length: Option<u64>,
    /// `Expect: 100-continue`.
    expect: bool,
    /// An upgrade this path relays (WebSocket's handshake).
    upgrade: Option<&'b [u8]>,
    /// `Transfer-Encoding: chunked`.
    chunked: bool,
    v10: bool,
}

impl<'b> RequestFields<'b> {
    fn new(v10: bool) -> Self {
        RequestFields {
            host: b"",
            connection: ConnectionFields::default(),
            length: None,
            expect: false,
            upgrade: None,
            chunked: false,
            v10,
        }
    }

    /// Reads the fields (in place: the struct is large enough that returning it costs a
    /// copy on every request); false when the request is for the full path's rules
    /// (repeated or listed framing fields, other expectations, an upgrade other than a plain
    /// GET's, a missing or repeated Host).
    fn scan(&mut self, headers: &[httparse::Header<'b>], method: &str) -> bool {
        let (mut host, mut hosts) = (None, 0);
        let hop_limited = rules::hop_limited(method);
        let v10 = self.v10;
        let f = self;
        for h in headers {
            if is(h.name, "host") {
                hosts += 1;
                host = Some(h.value);
            } else if is(h.name, "content-length") {
                // One plain decimal length; a second field, a list or a sign is for the full
                // path's checks (which refuse what is ambiguous).
                match (f.length, content_length(h.value)) {
                    (None, Some(n)) => f.length = Some(n),
                    _ => return false,
                }
            } else if is(h.name, "expect") {
                // `100-continue` is answered here, just before the body is read (nginx's
                // way); any other expectation goes to the full path, which ignores it (as
                // nginx does).
                if f.expect || !h.value.eq_ignore_ascii_case(b"100-continue") {
                    return false;
                }
                f.expect = true;
            } else if is(h.name, "upgrade") {
                if f.upgrade.is_some() {
                    return false;
                }
                f.upgrade = Some(h.value);
            } else if is(h.name, "transfer-encoding") {
                // Plain `chunked` once; codings, lists and repeats are for the full path's
                // rules.
                if f.chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                    return false;
                }
                f.chunked = true;
            } else if is(h.name, "connection") && !f.connection.push(h.value) {
                // more Connection fields than kept is unusual enough for the full path
                return false;
            } else if hop_limited && is(h.name, "max-forwards") {
                // TRACE or OPTIONS with a hop limit: the full path applies the rule.
                return false;
            }
        }
        // Only upgrades nrdot relays are forwarded; any other `Upgrade` (h2c) is dropped with
        // the Connection tokens that name it, and the request goes on as an ordinary one.
        f.upgrade = f.upgrade.filter(|u| rules::upgrade_allowed(u));
        // An upgrade this path relays itself: a GET without a body asking for it in
        // Connection (WebSocket's handshake). Anything else naming Upgrade is for the full
        // path's rules.
        if let Some(u) = f.upgrade {
            if v10
                || method != "GET"
                || f.length.is_some()
                || f.expect
                || !f.connection.upgrade
                || u.is_empty()
            {
                return false;
            }
        }
        // A chunked body with a length too (refused there) or from HTTP/1.0: the full path's.
        if (v10 && f.expect) || (f.chunked && (v10 || f.length.is_some() || f.upgrade.is_some())) {
            return false;
        }
        f.host = match (hosts, host) {
            (1, Some(h)) => h,
            _ => return false,
        };
        true
    }
}

/// The body's length on the wire, and its decoded length when it is chunked. Small bodies are
/// read whole before an upstream is chosen (nginx's request buffering), so the request goes
/// out in one write and can be sent again on a retry; larger ones stream on the full path,
/// which also answers a length over the limit with 413. A chunked body is read whole the same
/// way, then sent on with its length (as nginx does); one that does not end within the limit
/// (or is malformed, or has trailers) goes to the full path with every byte read so far.
fn body_extent(
    after_head: &[u8],
    f: &RequestFields,
    limits: &nrdot_config::Limits,
    scan: &mut BodyScan,
) -> Result<(usize, Option<usize>), Step> {
    match f.length {
        None if f.chunked => match chunked_body(after_head, scan) {
            Ok(Some((raw, len)))
                if len <= NATIVE_BODY_MAX && len as u64 <= limits.client_max_body_size =>
            {
                Ok((raw, Some(len)))
            }
            Ok(None) if after_head.len() <= CHUNKED_RAW_MAX => Err(Step::Partial {
                body: true,
                expect: f.expect,
            }),
            _ => Err(Step::Handoff),
        },
        None => Ok((0, None)),
        Some(n) if n <= NATIVE_BODY_MAX as u64 && n <= limits.client_max_body_size => {
            Ok((n as usize, None))
        }
        Some(_) => Err(Step::Handoff),
    }
}

/// The access log's fields of a request, when the log is on.
fn log_fields(
    cx: &Ctx,
    headers: &[httparse::Header],
    method: &str,
    target: &str,
    v10: bool,
) -> Option<Box<LogFields>> {
    cx.shared.log.enabled().then(|| {
        let f = |name| field(headers, name).and_then(|v| std::str::from_utf8(v).ok());
        LogFields::new(
            &cx.shared.log,
            cx.peer.ip(),
            Method::from_bytes(method.as_bytes()).unwrap_or_default(),
            target,
            if v10 {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            },
            f("referer"),
            f("user-agent"),
        )
    })
}

/// nrdot's 308 to HTTPS, logged.
fn redirect_reply(
    host: &str,
    port: Option<u16>,
    target: &str,
    close: bool,
    log: Option<Box<LogFields>>,
) -> Vec<u8> {
    let resp = route::https_redirect(host, port, target);
    let (mut parts, ()) = resp.into_parts();
    if close {
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(l) = &log {
        l.write(308, 0);
    }
    serialize(&parts, b"")
}

/// The upstream request head: the request line, then the client's fields as an intermediary
/// forwards them ([`rules::forward_fields`], shared with the hyper path). `None` when a trusted
/// chain is longer than kept (for the full path).
fn upstream_head(
    method: &str,
    target: &str,
    headers: &[httparse::Header],
    w: &Forwarding,
    head_len: usize,
) -> Option<Vec<u8>> {
    // Room for the added fields, and later for the common response head (this allocation is
    // reused for it).
    let mut out = Vec::with_capacity((head_len + 128).max(512));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    rules::forward_fields(headers.iter(), w, &mut out).ok()?;
    out.extend_from_slice(b"\r\n");
    Some(out)
}

/// [`prepare`], serving a later HTTP/1 minor version as HTTP/1.1 (RFC 9110 6.2): its digit
/// is rewritten in the buffer, so the hyper path, if the request goes there, reads 1.1 too.
fn prepare_any_minor(
    buf: &mut [u8],
    cx: &Ctx,
    table: &RouteTable,
    index: u64,
    stopping: bool,
    scan: &mut BodyScan,
) -> Step {
    match prepare(buf, cx, table, index, stopping, scan) {
        Step::NewerMinor(at) => {
            buf[at] = b'1';
            prepare(buf, cx, table, index, stopping, scan)
        }
        step => step,
    }
}

/// Routes the request at the start of `buf`, sends it upstream (retrying where safe) and
/// relays the response. nrdot's own answers are returned for the caller to write, so this
/// future carries no second write state.
async fn forward<S: ClientIo>(
    s: &mut S,
    cx: &Ctx,
    table: &Arc<RouteTable>,
    buf: &mut Vec<u8>,
    index: u64,
    stopping: bool,
    scan: &mut BodyScan,
) -> Forwarded {
    // No await inside this match: the step is gone before the first suspension, so the
    // request's fields are stored once in this future.
    let Prepared {
        head_len,
        body,
        chunked,
        expect,
        mut out,
        d,
        safe,
        want,
        close,
        last,
        mut log,
    } = match prepare_any_minor(buf, cx, table, index, stopping, scan) {
        Step::NewerMinor(_) | Step::Handoff => return Forwarded::Done(Next::Handoff),
        Step::Partial { body, expect } => return Forwarded::More { body, expect },
        Step::Reply {
            bytes,
            close,
            last,
            consumed,
        } => {
            let have = consumed.min(buf.len());
            buf.drain(..have);
            return Forwarded::Reply {
                bytes,
                close,
                last,
                unread: consumed - have,
            };
        }
        Step::Forward(p) => p,
    };
    let missing = take_request(buf, &mut out, head_len, body, chunked);
    // Nothing pipelined behind a last request: the answer may go out with the close's FIN.
    let last = last && buf.is_empty();
    let pool_entry = &table.pools[d.pool];
    if body > 0 {
        if missing > 0 {
            if let Err(f) = read_rest(s, cx, table, &mut out, missing, expect, &mut log).await {
                return f;
            }
        }
        pool_entry.state.bytes_in.increment(body as u64);
    }
    let r = &table.routes[d.route];
    pool_entry.state.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&pool_entry.state.active);
    let hsts = match (&r.hsts, &cx.shared.tls) {
        (Some(v), Some(_)) => Some(v),
        _ => None,
    };
    let sticky = d.new_sticky.as_deref();
    let mut x = relay::Whole::new(out, want.upgrade, safe, |rbuf: &[u8], out| {
        response_head(rbuf, want, hsts, sticky, close, out)
    });
    let sent = relay::send(table, d.pool, d.hash_key, safe, &mut log, &mut x).await;
    let rbuf = x.rbuf;
    let sent = match sent {
        Ok(s) => s,
        // Written by the caller, so this future carries no second write state.
        Err(e) => {
            return Forwarded::Reply {
                bytes: error_reply(cx, log, e, close),
                close,
                last,
                unread: 0,
            }
        }
    };
    table.count(d.target(), sent.status);
    if want.upgrade && sent.status == 101 {
        return switch(s, table, d.pool, sent, rbuf, buf, log).await;
    }
    let status = sent.status;
    let be = &pool_entry.backends[sent.backend];
    let close = sent.head.close;
    let relayed = relay_response(s, cx, table, d.pool, sent, rbuf, last).await;
    be.state.finish(false);
    pool_entry.state.bytes_out.increment(relayed.sent);
    if let Some(l) = &log {
        l.write(status, relayed.sent);
    }
    let (client_ok, complete) = (relayed.client_ok, relayed.complete);
    if !client_ok || !complete || close {
        let _ = s.flush().await;
        return Forwarded::Done(if client_ok && complete {
            Next::Close
        } else {
            Next::Abort
        });
    }
    Forwarded::Done(Next::KeepAlive)
}

/// Moves the request's body bytes already read behind the head in `out` (decoded when it is
/// chunked), takes the request off the buffer (which goes back to the worker when empty), and
/// returns how many body bytes are still to be read from the client.
fn take_request(
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head_len: usize,
    body: usize,
    chunked: bool,
) -> usize {
    let end = (head_len + body).min(buf.len());
    if chunked {
        // Checked whole by `prepare`.
        let _ = Chunks::default().decode_into(&buf[head_len..end], out);
    } else {
        out.extend_from_slice(&buf[head_len..end]);
    }
    buf.drain(..end);
    if buf.is_empty() {
        give_buffer(std::mem::take(buf));
    }
    head_len + body - end
}

/// Reads the `missing` rest of a request body onto `out`, after a `100 Continue` when the
/// client waits for one. `Err` is what the exchange ends with: nothing when the client left,
/// else nrdot's answer (a body that stalls past `client_body_timeout` is a 408).
async fn read_rest<S: ClientIo>(
    s: &mut S,
    cx: &Ctx,
    table: &RouteTable,
    out: &mut Vec<u8>,
    missing: usize,
    expect: bool,
    log: &mut Option<Box<LogFields>>,
) -> Result<(), Forwarded> {
    if expect && s.write_all(CONTINUE).await.is_err() {
        return Err(Forwarded::Done(Next::Abort));
    }
    let timeout = table.config.limits.client_body_timeout;
    match read_body(s, out, missing, timeout).await {
        Ok(()) => Ok(()),
        // Nobody is left to answer.
        Err(ProxyError::BadRequest) => {
            if let Some(l) = log.take() {
                l.write(400, 0);
            }
            Err(Forwarded::Done(Next::Abort))
        }
        Err(e) => Err(Forwarded::Reply {
            bytes: error_reply(cx, log.take(), e, true),
            close: true,
            last: false,
            unread: 0,
        }),
    }
}

/// A `101` to an upgrade: the head and whatever the upstream sent after it go out in one
/// write; then the connection is a tunnel until both sides end, and never returns to the pool.
async fn switch<S: ClientIo>(
    s: &mut S,
    table: &Arc<RouteTable>,
    pool: usize,
    sent: Answered,
    rbuf: Vec<u8>,
    buf: &mut Vec<u8>,
    log: Option<Box<LogFields>>,
) -> Forwarded {
    let relay::Sent {
        backend,
        conn,
        status,
        head: mut rh,
    } = sent;
    let mut head = std::mem::take(&mut rh.head);
    let early = (rbuf.len() - rh.len) as u64;
    head.extend_from_slice(&rbuf[rh.len..]);
    give_buffer(rbuf);
    let wrote = s.write_all(&head).await;
    drop(head);
    // The tunnel runs outside this exchange's future (1.5 KiB), which an idle WebSocket would
    // otherwise keep for its whole life.
    let upgraded = Upgraded {
        up: conn,
        to_upstream: std::mem::take(buf),
        table: Arc::clone(table),
        pool,
        backend,
        status,
        early,
        log,
        _busy: Busy::begin().0,
    };
    // Until the tunnel ends.
    table.pools[pool]
        .state
        .active
        .fetch_add(1, Ordering::Relaxed);
    if wrote.is_err() {
        upgraded.finish(0, 0);
        return Forwarded::Done(Next::Abort);
    }
    Forwarded::Tunnel(Box::new(upgraded))
}

/// A request answered by an upstream, with the client's response head.
type Answered = relay::Sent<upstream::RawConn, ResponseHead>;

/// How relaying a response body ended.
struct Relayed {
    /// Bytes of body sent to the client.
    sent: u64,
    /// The message ended where its framing says.
    complete: bool,
    /// Every write to the client succeeded.
    client_ok: bool,
}

/// Relays the response whose head `sent` holds, by its framing: what came with the head goes
/// out in the same write, then each read from the upstream is written on. The upstream
/// connection goes back to the pool when the message ended cleanly.
async fn relay_response<S: ClientIo>(
    s: &mut S,
    cx: &Ctx,
    table: &RouteTable,
    pool: usize,
    sent: Answered,
    mut rbuf: Vec<u8>,
    last: bool,
) -> Relayed {
    let relay::Sent {
        backend,
        conn: mut up,
        head: mut rh,
        ..
    } = sent;
    let pool_entry = &table.pools[pool];
    let pcfg = &pool_entry.config;
    let mut head = std::mem::take(&mut rh.head);
    let mut out = Relayed {
        sent: 0,
        complete: false,
        client_ok: true,
    };
    let mut clean = true; // nothing beyond the message came from upstream
    let mut from = rh.len;
    // Chunk data decoded for an HTTP/1.0 client when the head went out already.
    let mut plain = Vec::new();
    loop {
        let chunk = &rbuf[from..];
        let Some((take, ended, decoded)) = frame(&mut rh, chunk, &mut head, &mut plain) else {
            clean = false;
            break;
        };
        if take < chunk.len() {
            clean = false;
        }
        let w = if head.is_empty() {
            // A response written in several pieces: without TCP_NODELAY the last small piece
            // could wait for the client's delayed ACK. Set once, on the first such response.
            if !cx.nodelay.swap(true, Ordering::Relaxed) {
                s.set_nodelay();
            }
            let piece = if rh.decode {
                &plain[..]
            } else {
                &chunk[..take]
            };
            let w = write_answer(s, piece, ended && last).await;
            plain.clear();
            w
        } else {
            if !rh.decode {
                head.extend_from_slice(&chunk[..take]);
            }
            let w = write_answer(s, &head, ended && last).await;
            head = Vec::new();
            w
        };
        if w.is_err() {
            out.client_ok = false;
            break;
        }
        out.sent += if rh.decode { decoded } else { take } as u64;
        if ended {
            out.complete = true;
            break;
        }
        rbuf.clear();
        from = 0;
        if rbuf.capacity() < RELAY_BUFFER {
            rbuf.reserve(RELAY_BUFFER);
        }
        // `response_timeout` also bounds the wait between two reads of the body, as nginx's
        // `proxy_read_timeout` does: a server that stalls mid-body does not hold the client.
        match tokio::time::timeout(pcfg.response_timeout, up.stream.read_buf(&mut rbuf)).await {
            Ok(Ok(0)) => {
                out.complete = matches!(rh.framing, Framing::UntilClose);
                clean = false;
                break;
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                clean = false;
                break;
            }
            Err(_) => {
                pool_entry.state.timeouts.increment(1);
                let be = &pool_entry.backends[backend];
                tracing::debug!(upstream = %be.authority, "upstream stalled mid-body");
                clean = false;
                break;
            }
        }
    }
    give_buffer(rbuf);
    if out.complete && clean && !rh.upstream_close {
        up.release(pcfg.keepalive);
    }
    out
}

/// Follows the response body's framing over `chunk`: (bytes of it that belong to the message,
/// whether the message ended, bytes decoded for an HTTP/1.0 client into the head, or into
/// `plain` once the head went out). `None` when the framing is broken.
fn frame(
    rh: &mut ResponseHead,
    chunk: &[u8],
    head: &mut Vec<u8>,
    plain: &mut Vec<u8>,
) -> Option<(usize, bool, usize)> {
    match &mut rh.framing {
        Framing::Chunked(c) if rh.decode => {
            let out = if head.is_empty() { plain } else { head };
            let before = out.len();
            let (take, ended) = c.decode_into(chunk, out).ok()?;
            Some((take, ended, out.len() - before))
        }
        framing => framing.feed(chunk).ok().map(|(t, e)| (t, e, 0)),
    }
}

/// The client's response head, built from the upstream's, and how its body ends.
struct ResponseHead {
    head: Vec<u8>,
    /// Length of the upstream head in the buffer.
    len: usize,
    framing: Framing,
    upstream_close: bool,
    close: bool,
    /// The body is chunked and the client speaks HTTP/1.0: only the data goes on.
    decode: bool,
}

/// Rewrites the upstream response head at the start of `buf` for the client into `head`
/// (emptied first; sized for the head and the body bytes already read, so the relay's first
/// write needs no reallocation). When the head is malformed or its framing contradictory,
/// `head` comes back untouched: it still holds the request, for a retry.
fn response_head(
    buf: &[u8],
    want: Want,
    hsts: Option<&HeaderValue>,
    sticky: Option<&str>,
    close: bool,
    mut head: Vec<u8>,
) -> Result<ResponseHead, Vec<u8>> {
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_FIELDS];
    let (resp, parsed) = parse_response(buf, &mut fields);
    let Ok(httparse::Status::Complete(len)) = parsed else {
        return Err(head);
    };
    let status = resp.code.unwrap_or(0);
    let headers: &[httparse::Header] = resp.headers;
    let Ok(ResponseFraming {
        framing,
        chunked,
        repeated_length,
        connection,
        upstream_close,
    }) = response_framing(&resp, want.head_request)
    else {
        return Err(head);
    };
    // An HTTP/1.0 client cannot read chunks: it gets the data, delimited by the close.
    let decode = want.v10 && chunked;
    // A switch of protocols keeps the fields that say so; the connection is a tunnel after
    // this head, so it has no framing and no `close`.
    let switching = want.upgrade && status == 101;
    let close = !switching && (close || decode || matches!(framing, Framing::UntilClose));
    head.clear();
    if head.capacity() < buf.len() + 160 {
        head = Vec::with_capacity(buf.len() + 160); // nothing to copy
    }
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(itoa3(status).as_slice());
    head.push(b' ');
    head.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut length_sent = false;
    let mut dated = false;
    for h in headers {
        dated |= is(h.name, "date");
        // The framing fields stay whatever Connection names: the client delimits the body by
        // them.
        if switching && is(h.name, "upgrade") {
            put(&mut head, h.name, h.value);
            continue;
        }
        if hop_by_hop(h.name)
            || (connection.names(h.name) && !framing_field(h.name))
            || (hsts.is_some() && is(h.name, "strict-transport-security"))
            || ((chunked || !rules::length_allowed(status)) && is(h.name, "content-length"))
            || ((decode || !rules::length_allowed(status)) && is(h.name, "transfer-encoding"))
        {
            continue;
        }
        if repeated_length && is(h.name, "content-length") {
            if length_sent {
                continue;
            }
            length_sent = true;
        }
        put(&mut head, h.name, h.value);
    }
    // Via names the protocol the response was received in (RFC 9110 7.6.3).
    head.extend_from_slice(if resp.version == Some(0) {
        b"via: 1.0 nrdot\r\n"
    } else {
        b"via: 1.1 nrdot\r\n"
    });
    if !dated {
        put(&mut head, "date", &clock::http_date());
    }
    if let Some(v) = hsts {
        put(&mut head, "strict-transport-security", v.as_bytes());
    }
    if let Some(c) = sticky {
        put(&mut head, "set-cookie", c.as_bytes());
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    } else if switching {
        head.extend_from_slice(b"connection: upgrade\r\n");
    } else if want.v10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(ResponseHead {
        head,
        len,
        framing,
        upstream_close,
        close,
        decode,
    })
}

/// nrdot's own response for `e`, logged.
fn error_reply(cx: &Ctx, log: Option<Box<LogFields>>, e: ProxyError, close: bool) -> Vec<u8> {
    tracing::debug!(error = %e, source = e.source_label(), peer = %cx.peer, "request answered by nrdot");
    let (parts, body) = error::answer(e.status(), close);
    if let Some(l) = log {
        l.write(e.status().as_u16(), body.len() as u64);
    }
    serialize(&parts, &body)
}

/// Runs the response-side parsers over `data` as an upstream's answer, its body arriving in two
/// reads split at `split`; returns the body bytes that would be relayed. For the fuzzer
/// (`fuzz/fuzz_targets/upstream_response.rs`): it must never panic or relay more than it got.
#[doc(hidden)]
pub fn relay_parse(data: &[u8], split: usize, head_request: bool) -> Option<usize> {
    if let Some(status) = plain_final_head(data) {
        // The quick recognition agrees with the full parser whenever that one accepts.
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        match resp.parse(data) {
            Ok(httparse::Status::Complete(_)) => assert_eq!(resp.code, Some(status)),
            Ok(httparse::Status::Partial) => panic!("quick head end where httparse sees none"),
            Err(_) => {}
        }
    }
    let rh = response_head(
        data,
        Want {
            head_request,
            ..Want::default()
        },
        None,
        Some("k=v"),
        false,
        Vec::new(),
    )
    .ok()?;
    // A client reading the rewritten head finds the body's end where nrdot does.
    let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS + 8];
    let mut out = httparse::Response::new(&mut fields);
    let Ok(httparse::Status::Complete(_)) = out.parse(&rh.head) else {
        panic!("nrdot wrote a head it cannot read back");
    };
    let named = |name: &'static str| out.headers.iter().filter(move |h| is(h.name, name));
    let lengths: Vec<_> = named("content-length").map(|h| h.value).collect();
    // Transfer-Encoding fields form one list (RFC 9110 5.3): whatever reaches the client ends
    // in chunked.
    let codings: Vec<_> = named("transfer-encoding").collect();
    let chunked = !codings.is_empty();
    let bodiless = head_request || matches!(out.code, Some(204) | Some(304));
    assert!(
        bodiless
            || codings.last().is_none_or(|h| tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))),
        "a transfer coding other than chunked reaches the client"
    );
    let says_close =
        named("connection").any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close")));
    match &rh.framing {
        Framing::Length(n) if !bodiless => {
            assert!(!chunked, "length framing, chunked head");
            // Leading zeros are fine: the client reads the same number.
            let read: Vec<_> = lengths.iter().map(|v| content_length(v)).collect();
            assert_eq!(read, [Some(*n)], "length lost or changed");
        }
        Framing::Chunked(_) => assert!(
            chunked && lengths.is_empty(),
            "chunked framing, head says otherwise"
        ),
        Framing::UntilClose => assert!(
            rh.close && says_close && lengths.is_empty() && !chunked,
            "until-close body on a kept connection"
        ),
        Framing::Length(_) => {}
    }
    let mut framing = rh.framing;
    let body = &data[rh.len..];
    let (a, b) = body.split_at(split.min(body.len()));
    // What an HTTP/1.0 client gets of a chunked body: the same end, never more data than came.
    let mut decoder = matches!(framing, Framing::Chunked(_)).then(Chunks::default);
    let mut decoded = Vec::new();
    let mut decode = |piece: &[u8], relayed: usize, ended: bool| {
        if let Some(d) = decoder.as_mut() {
            let (used, end) = d
                .decode_into(piece, &mut decoded)
                .expect("relayed, so valid");
            assert_eq!((used, end), (relayed, ended), "decoder and relay disagree");
            assert!(decoded.len() <= body.len(), "more data decoded than came");
        }
    };
    let (first, ended) = framing.feed(a).ok()?;
    assert!(first <= a.len());
    decode(&a[..first], first, ended);
    if ended {
        return Some(first);
    }
    let (second, ended) = framing.feed(b).ok()?;
    assert!(second <= b.len());
    decode(&b[..second], second, ended);
    Some(first + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_response_head_gives_the_request_back_for_a_retry() {
        let request = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        for head in [
            &b"HTTP/1.1 200 OK\r\nBad Field\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let back = response_head(head, Want::default(), None, None, false, request.clone());
            assert_eq!(back.err().as_deref(), Some(&request[..]));
        }
        let Ok(rh) = response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            Want::default(),
            None,
            None,
            false,
            request.clone(),
        ) else {
            panic!("a good head is accepted");
        };
        assert!(rh.head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
}
