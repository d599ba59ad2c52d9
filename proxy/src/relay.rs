//! The one attempt loop and nrdot's own HTTP/1.1 client. [`send`] picks a server, connects or
//! reuses a pooled connection, runs one attempt, and retries on another server where the
//! pool's policy and budget allow, charging passive health as it goes; an [`Exchange`] is how
//! one attempt is made. [`Whole`] is nrdot's own client (a request written in one piece, the
//! response head read and checked), used by the native path and by the hyper path for
//! requests held whole (its body comes back as a [`crate::respbody::RawBody`]); hyper's client
//! (`service::Streamed`) serves streamed request bodies and the hyper path's upgrades.
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use nrdot_config::table::{BackendEntry, PoolEntry};
use nrdot_config::RouteTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::buffers::{take_buffer, RELAY_BUFFER};

use crate::accesslog::LogFields;
use crate::clock;
use crate::error::ProxyError;
use crate::http1::{
    final_head, parse_response, response_framing, Framing, HeadError, MAX_RESPONSE_FIELDS,
    MAX_RESPONSE_HEAD,
};
use crate::rules::retry::{self, begin_retry, passive, ActiveGuard};
use crate::upstream::{self, RawConn};

/// A request that got a final response head from server `backend`.
pub(crate) struct Sent<C, T> {
    pub backend: usize,
    pub conn: C,
    pub status: u16,
    /// What the exchange made of the head.
    pub head: T,
}

/// How one attempt on one connection ended.
pub(crate) enum Outcome {
    /// A final response head with this status arrived.
    Answered(u16),
    /// No answer. `server_fault`: the server is charged (passive health, tried, no second
    /// attempt on it); a reused connection the server had closed in the meantime is not its
    /// fault. `resend`: the request can go again at no risk (it never left, or it left on a
    /// connection the server had closed), so the retry budget does not apply.
    Failed { server_fault: bool, resend: bool },
    /// The client's own body failed (timed out, too large, cut short): no retry, no blame.
    Client(ProxyError),
}

/// One way of sending a request to a chosen server, for [`send`]: nrdot's own HTTP/1.1 client
/// ([`Whole`]) or hyper's (streamed bodies and the hyper path's upgrades). The attempt loop,
/// retry policy and accounting are [`send`]'s alone, so both clients follow the same rules.
pub(crate) trait Exchange: Send {
    type Conn: Send;
    type Head: Send;
    /// A pooled connection to `be`, or a new one.
    fn connect(
        &mut self,
        pool: &PoolEntry,
        be: &BackendEntry,
    ) -> impl Future<Output = Result<Self::Conn, upstream::ConnectError>> + Send;
    /// Sends the request on `conn` and waits for the final response head.
    fn attempt(&mut self, conn: &mut Self::Conn) -> impl Future<Output = Outcome> + Send;
    /// What the caller relays, from the head that arrived: `None` when it is malformed (a
    /// failed attempt; the request is kept for the next).
    fn head(&mut self) -> Option<Self::Head>;
}

/// Sends a request to a server of `pool` and waits for the final response head, trying
/// other servers as the pool's retry policy and budget allow (`safe`: the request may be sent
/// twice). On success the server's request stays started: the caller finishes it when the
/// body is done.
pub(crate) async fn send<X: Exchange>(
    table: &RouteTable,
    pool: usize,
    hash_key: Option<u64>,
    safe: bool,
    log: &mut Option<Box<LogFields>>,
    x: &mut X,
) -> Result<Sent<X::Conn, X::Head>, ProxyError> {
    let pool_entry = &table.pools[pool];
    let pcfg = &pool_entry.config;
    let mut tried: Vec<usize> = Vec::new();
    let mut retries_left = pcfg.retries;
    // Counts this request in the pool's retries in flight while a retry attempt runs.
    let mut retry_slot: Option<ActiveGuard> = None;
    // What the previous attempt failed with: when a retry finds no other server, the client
    // hears about the real failure, not about the empty pool.
    let mut last_error: Option<ProxyError> = None;
    loop {
        let chosen = table
            .backend(pool, fastrand::u64(..), hash_key, &tried)
            .map_err(|e| retry::no_backend(pool_entry, e, last_error))?;
        if chosen.fail_open {
            pool_entry.state.fail_open.increment(1);
        }
        let b = chosen.index;
        let be = &pool_entry.backends[b];
        if let Some(l) = log.as_mut() {
            l.upstream = be.authority.as_str().to_string();
        }
        be.state.start();
        let mut conn = match x.connect(pool_entry, be).await {
            Ok(c) => c,
            Err(e) => {
                retry_after_connect_failure(
                    pool_entry,
                    b,
                    &e,
                    &mut tried,
                    &mut last_error,
                    &mut retries_left,
                    &mut retry_slot,
                )?;
                continue;
            }
        };
        let sent_at = clock::now();
        let deadline = tokio::time::Instant::from_std(sent_at + pcfg.response_timeout);
        let outcome = tokio::time::timeout_at(deadline, x.attempt(&mut conn)).await;
        drop(retry_slot.take()); // this attempt is over
        let (server_fault, resend) = match outcome {
            Ok(Outcome::Answered(status)) => {
                pool_entry
                    .state
                    .outcomes
                    .record_latency(clock::elapsed(sent_at));
                // Only when another server could answer: otherwise this answer is the best one.
                if pcfg.retry_on.statuses.contains(&status)
                    && safe
                    && tried.len() + 1 < pool_entry.backends.len()
                    && retry::retry_allowed(pool_entry, retries_left)
                {
                    passive(pool_entry, be, status >= 500);
                    be.state.finish(true);
                    tried.push(b);
                    retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
                    continue;
                }
                match x.head() {
                    Some(head) => {
                        passive(pool_entry, be, status >= 500);
                        return Ok(Sent {
                            backend: b,
                            conn,
                            status,
                            head,
                        });
                    }
                    None => (true, false), // a malformed head
                }
            }
            Ok(Outcome::Failed {
                server_fault,
                resend,
            }) => (server_fault, resend),
            Ok(Outcome::Client(e)) => {
                be.state.finish(false);
                return Err(e);
            }
            Err(_) => {
                be.state.finish(true);
                passive(pool_entry, be, true);
                pool_entry.state.timeouts.increment(1);
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        be.state.finish(server_fault);
        if server_fault {
            passive(pool_entry, be, true);
            tried.push(b);
        }
        if resend {
            continue;
        }
        tracing::debug!(upstream = %be.authority, "upstream request failed");
        last_error = Some(ProxyError::UpstreamConnect);
        if pcfg.retry_on.reset && safe && retry::retry_allowed(pool_entry, retries_left) {
            retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
            continue;
        }
        return Err(ProxyError::UpstreamConnect);
    }
}

/// nrdot's own HTTP/1.1 client as an [`Exchange`]: `out` (a complete request, head and body)
/// written in one piece on a pooled plain or TLS connection, the final head read into `rbuf`
/// and made into `T` by `parse`, which hands `out` back when the head is malformed.
pub(crate) struct Whole<F> {
    out: Vec<u8>,
    /// The head and whatever of the body came with it.
    pub rbuf: Vec<u8>,
    /// It asks to switch protocols, so `101` is a final answer to it.
    upgrade: bool,
    safe: bool,
    reused: bool,
    parse: F,
}

impl<T, F> Whole<F>
where
    F: FnMut(&[u8], Vec<u8>) -> Result<T, Vec<u8>> + Send,
{
    pub(crate) fn new(out: Vec<u8>, upgrade: bool, safe: bool, parse: F) -> Whole<F> {
        Whole {
            out,
            rbuf: Vec::new(),
            upgrade,
            safe,
            reused: false,
            parse,
        }
    }
}

impl<T, F> Exchange for Whole<F>
where
    T: Send,
    F: FnMut(&[u8], Vec<u8>) -> Result<T, Vec<u8>> + Send,
{
    type Conn = RawConn;
    type Head = T;

    async fn connect(
        &mut self,
        pool: &PoolEntry,
        be: &BackendEntry,
    ) -> Result<RawConn, upstream::ConnectError> {
        let c = upstream::acquire_raw(pool, be).await?;
        self.reused = c.reused;
        Ok(c)
    }

    async fn attempt(&mut self, up: &mut RawConn) -> Outcome {
        self.rbuf.clear(); // a retried attempt starts afresh
        let result = async {
            if write_request(&mut up.stream, &self.out)
                .await
                .map_err(HeadError::Io)?
            {
                // TLS: rustls may hold the last record until flushed (plain: nothing to do).
                up.stream.flush().await.map_err(HeadError::Io)?;
            }
            read_head(&mut up.stream, &mut self.rbuf, self.upgrade).await
        }
        .await;
        match result {
            Ok(status) => Outcome::Answered(status),
            // The server closed the idle connection as it was reused: not its fault.
            Err(HeadError::Closed(0)) if self.reused && self.safe => Outcome::Failed {
                server_fault: false,
                resend: true,
            },
            Err(e) => {
                tracing::debug!(error = %e, reused = self.reused, "upstream exchange failed");
                Outcome::Failed {
                    server_fault: true,
                    resend: false,
                }
            }
        }
    }

    fn head(&mut self) -> Option<T> {
        let out = std::mem::take(&mut self.out);
        match (self.parse)(&self.rbuf, out) {
            Ok(head) => Some(head),
            Err(out) => {
                self.out = out;
                None
            }
        }
    }
}

/// Writes a whole request; false when the server stopped reading it partway. A server may
/// answer before it has read the body and reset the connection (an application refusing an
/// upload), and its answer then waits in the socket: a reset or broken pipe after the request
/// started going out is left for the read of the head, which finds the answer or reports the
/// end (RFC 9112 9.5). A failure of the first write is the error it always was, so a stale
/// pooled connection is still retried.
async fn write_request(stream: &mut upstream::UpStream, mut out: &[u8]) -> io::Result<bool> {
    let mut written = false;
    while !out.is_empty() {
        match stream.write(out).await {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                out = &out[n..];
                written = true;
            }
            Err(e) if written && upstream::peer_gone(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The request as the hyper path hands it over, written as one HTTP/1.1 message: the head
/// from `parts` (already rewritten for the upstream, Host included), then `body` with its
/// length. The client's own framing fields are replaced: the body is complete in memory.
pub(crate) fn request_bytes(
    parts: &http::request::Parts,
    path_and_query: &str,
    body: &Bytes,
) -> Vec<u8> {
    let method = parts.method.as_str();
    let mut out = Vec::with_capacity(256 + path_and_query.len() + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        crate::http1::put(&mut out, name.as_str(), value.as_bytes());
    }
    // As hyper's client does: a length for any body, and 0 where a body is expected.
    let length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    crate::http1::end_with_body(&mut out, body, length);
    out
}

/// An upstream response head as the hyper path relays it.
pub(crate) struct RawHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Length of the head in the buffer.
    pub len: usize,
    pub framing: Framing,
    /// The server will close the connection after this response.
    pub upstream_close: bool,
    /// The version the response came in, for `Via`.
    pub version: http::Version,
}

/// Parses the final response head at the start of `buf` into a header map, with the framing
/// checks the native path applies (`None`: malformed or ambiguous, a failed attempt). The
/// framing fields are left for the hyper server to rewrite for its client.
pub(crate) fn raw_head(buf: &[u8], head_request: bool) -> Option<RawHead> {
    let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_FIELDS];
    let (resp, parsed) = parse_response(buf, &mut fields);
    let Ok(httparse::Status::Complete(len)) = parsed else {
        return None;
    };
    let f = response_framing(&resp, head_request).ok()?;
    let status = StatusCode::from_u16(resp.code?).ok()?;
    let mut headers = HeaderMap::with_capacity(resp.headers.len() + 4);
    let mut length_seen = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            // Chunked wins over a length; a repeated identical length goes on once.
            if f.chunked || length_seen {
                continue;
            }
            length_seen = true;
        } else if h.name.eq_ignore_ascii_case("trailer") {
            continue; // the trailers it announces are not passed on
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    Some(RawHead {
        status,
        headers,
        len,
        framing: f.framing,
        upstream_close: f.upstream_close,
        version: if resp.version == Some(0) {
            http::Version::HTTP_10
        } else {
            http::Version::HTTP_11
        },
    })
}

/// Reads until a final response head is in `buf` (informational 1xx heads are skipped; `101`
/// is final when the request asked for an `upgrade`, an error otherwise) and returns its
/// status; the head starts at `buf[0]`.
pub(crate) async fn read_head(
    stream: &mut upstream::UpStream,
    buf: &mut Vec<u8>,
    upgrade: bool,
) -> Result<u16, HeadError> {
    let mut received = 0;
    loop {
        if !buf.is_empty() {
            match final_head(buf, upgrade) {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(HeadError::TooLarge);
        }
        if buf.capacity() == 0 {
            // No memory is held while the upstream thinks.
            stream.readable().await.map_err(HeadError::Io)?;
            *buf = take_buffer(); // sized for the common response: head and body in one read
        } else if buf.capacity() - buf.len() < 1024 {
            buf.reserve(RELAY_BUFFER);
        }
        match stream.read_buf(buf).await {
            Ok(0) => return Err(HeadError::Closed(received)),
            Ok(n) => received += n,
            Err(e) => return Err(HeadError::Io(e)),
        }
    }
}

/// A failed connect to server `b` of `pool`: the attempt's retry slot is released, the failure
/// accounted, and a new slot taken when the request may go to another server (`Ok`: try
/// again); otherwise the error to answer with. Nothing was sent, so any request may be retried,
/// and the retry costs the failing server nothing: the retry budget (which protects servers
/// from retry storms) does not apply. Both HTTP/1 paths call this.
pub(crate) fn retry_after_connect_failure<'a>(
    pool: &'a PoolEntry,
    b: usize,
    e: &upstream::ConnectError,
    tried: &mut Vec<usize>,
    last_error: &mut Option<ProxyError>,
    retries_left: &mut u32,
    retry_slot: &mut Option<ActiveGuard<'a>>,
) -> Result<(), ProxyError> {
    drop(retry_slot.take()); // this attempt is over
    let err = connect_failed(pool, &pool.backends[b], e);
    tried.push(b);
    *last_error = Some(err);
    if pool.config.retry_on.connect_failure && *retries_left > 0 {
        *retry_slot = Some(begin_retry(&pool.state, retries_left));
        return Ok(());
    }
    Err(err)
}

/// Accounts a failed connect (nothing was sent: the server is charged, the pool counts it) and
/// returns what the client hears if no retry follows.
pub(crate) fn connect_failed(
    pool: &PoolEntry,
    backend: &BackendEntry,
    e: &upstream::ConnectError,
) -> ProxyError {
    backend.state.finish(true);
    pool.state.connect_errors.increment(1);
    passive(pool, backend, true);
    tracing::debug!(error = %e, "upstream connect failed");
    if matches!(e, upstream::ConnectError::Timeout(_)) {
        pool.state.timeouts.increment(1);
        ProxyError::UpstreamTimeout
    } else {
        ProxyError::UpstreamConnect
    }
}
