//! nrdot's own HTTP/1.1 client over the pooled upstream connections: one request written
//! in one piece, the response head read and checked, retried on another server where that is
//! safe. Both server paths send through [`send`]: the native HTTP/1.1 path relays the response
//! bytes itself, the hyper path (HTTP/2, HTTP/1.0, other bodies) gets the head as a header map
//! and the body as a [`crate::body::RawBody`]. Upstreams are plain or TLS
//! ([`crate::upstream::UpStream`]); only streamed request bodies and the hyper path's upgrades
//! still go through hyper's client.
use std::io;
use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use nrdot_config::RouteTable;
use tokio::io::AsyncWriteExt;

use crate::clock;
use crate::error::ProxyError;
use crate::h1::{
    parse_response, read_head, response_framing, Framing, HeadError, MAX_RESPONSE_FIELDS,
};
use crate::service::{self, begin_retry, ActiveGuard, LogFields};
use crate::upstream::{self, RawConn};

/// A request that got a final response head from server `backend`.
pub(crate) struct Sent<T> {
    pub backend: usize,
    pub conn: RawConn,
    pub status: u16,
    /// What `parse` made of the head.
    pub head: T,
    /// The head and whatever of the body came with it.
    pub buf: Vec<u8>,
}

/// What [`send`] may do with a request.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    /// It may be sent twice (idempotent, or the route allows retrying it).
    pub safe: bool,
    /// It asks to switch protocols, so `101` is a final answer to it.
    pub upgrade: bool,
}

/// Sends `out` (a complete request: head and body) to a server of `pool` and reads the final
/// response head, trying other servers as the pool's retry policy and budget allow. `parse` turns the head into what the caller relays; it
/// hands `out` back when the head is malformed, which counts as a failed attempt. On success
/// the server's request stays started: the caller finishes it when the body is done.
pub(crate) async fn send<T>(
    table: &RouteTable,
    pool: usize,
    hash_key: Option<u64>,
    kind: Kind,
    mut out: Vec<u8>,
    log: &mut Option<Box<LogFields>>,
    mut parse: impl FnMut(&[u8], Vec<u8>) -> Result<T, Vec<u8>>,
) -> Result<Sent<T>, ProxyError> {
    let Kind { safe, upgrade } = kind;
    let pool_entry = &table.pools[pool];
    let pcfg = &pool_entry.config;
    let mut tried: Vec<usize> = Vec::new();
    let mut retries_left = pcfg.retries;
    // Counts this request in the pool's retries in flight while a retry attempt runs.
    let mut retry_slot: Option<ActiveGuard> = None;
    // What the previous attempt failed with: when a retry finds no other server, the client
    // hears about the real failure, not about the empty pool.
    let mut last_error: Option<ProxyError> = None;
    let mut rbuf = Vec::new();
    loop {
        let chosen = table
            .backend(pool, fastrand::u64(..), hash_key, &tried)
            .map_err(|e| service::no_backend(pool_entry, e, last_error))?;
        if chosen.fail_open {
            pool_entry.state.fail_open.increment(1);
        }
        let b = chosen.index;
        let be = &pool_entry.backends[b];
        if let Some(l) = log.as_mut() {
            l.upstream = be.authority.as_str().to_string();
        }
        be.state.start();
        let mut up = match upstream::acquire_raw(pool_entry, be).await {
            Ok(c) => c,
            Err(e) => {
                service::retry_after_connect_failure(
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
        rbuf.clear(); // a retried attempt starts afresh
        let deadline = tokio::time::Instant::from_std(sent_at + pcfg.response_timeout);
        let result = tokio::time::timeout_at(deadline, async {
            if write_request(&mut up.stream, &out)
                .await
                .map_err(HeadError::Io)?
            {
                // TLS: rustls may hold the last record until flushed (plain: nothing to do).
                up.stream.flush().await.map_err(HeadError::Io)?;
            }
            read_head(&mut up.stream, &mut rbuf, upgrade).await
        })
        .await;
        drop(retry_slot.take()); // this attempt is over
        let error = match result {
            Ok(Ok(status)) => {
                pool_entry
                    .state
                    .outcomes
                    .record_latency(clock::elapsed(sent_at));
                // Only when another server could answer: otherwise this answer is the best one.
                if pcfg.retry_on.statuses.contains(&status)
                    && safe
                    && tried.len() + 1 < pool_entry.backends.len()
                    && service::retry_allowed(pool_entry, retries_left)
                {
                    service::passive(pool_entry, be, status >= 500);
                    be.state.finish(true);
                    tried.push(b);
                    retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
                    continue;
                }
                match parse(&rbuf, out) {
                    Ok(head) => {
                        service::passive(pool_entry, be, status >= 500);
                        return Ok(Sent {
                            backend: b,
                            conn: up,
                            status,
                            head,
                            buf: rbuf,
                        });
                    }
                    Err(request) => {
                        out = request;
                        HeadError::Malformed
                    }
                }
            }
            Ok(Err(e)) => e,
            Err(_) => {
                be.state.finish(true);
                service::passive(pool_entry, be, true);
                pool_entry.state.timeouts.increment(1);
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        if matches!(error, HeadError::Closed(0)) && up.reused && safe {
            // The server closed the idle connection as it was reused: not its fault.
            be.state.finish(false);
            continue;
        }
        be.state.finish(true);
        service::passive(pool_entry, be, true);
        tracing::debug!(upstream = %be.authority, error = %error, reused = up.reused, "upstream request failed");
        tried.push(b);
        last_error = Some(ProxyError::UpstreamConnect);
        if pcfg.retry_on.reset && safe && service::retry_allowed(pool_entry, retries_left) {
            retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
            continue;
        }
        return Err(ProxyError::UpstreamConnect);
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
        crate::h1::put(&mut out, name.as_str(), value.as_bytes());
    }
    // As hyper's client does: a length for any body, and 0 where a body is expected.
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        crate::h1::put(
            &mut out,
            "content-length",
            body.len().to_string().as_bytes(),
        );
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
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
    })
}
