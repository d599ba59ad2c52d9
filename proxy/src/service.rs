//! The per-request path: check the request, route it with one table generation, pick a pool and
//! a server, rewrite it as an intermediary must (RFC 9110 7.6), forward it (through nrdot's own
//! client when the request is complete in memory, else with hyper's client and both bodies
//! streamed), and count the outcome. Nothing here takes a lock or does I/O beyond the proxying.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nrdot_config::split::stable_hash;
use nrdot_config::swap::Reader;
use nrdot_config::table::{BackendEntry, NoBackend, PoolEntry};
use nrdot_config::{HashKey, RouteTable, Sticky};

use crate::accesslog::{AccessLog, Entry};
use crate::body::{Done, RawBody, RequestBody, ResponseBody};
use crate::error::{self, ProxyError};
use crate::inspect::Verdict;
use crate::rules::{strip_hop_by_hop, wants_upgrade};
use crate::{clock, relay, rules, upstream};

/// What every connection of a listener shares.
pub struct Shared {
    pub reader: Reader,
    pub log: AccessLog,
    pub proto: HeaderValue,
    /// Present on HTTPS listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub handshake_errors: metrics::Counter,
}

/// The service of one client connection.
#[derive(Clone)]
pub struct ConnService(Arc<Conn>);

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    peer_value: HeaderValue,
    verdict: Arc<Verdict>,
    requests: AtomicU64,
}

impl ConnService {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, verdict: Arc<Verdict>) -> ConnService {
        ConnService(Arc::new(Conn {
            shared,
            peer,
            peer_value: peer_value(peer),
            verdict,
            requests: AtomicU64::new(0),
        }))
    }
}

/// The client address as X-Forwarded-For carries it.
pub(crate) fn peer_value(peer: SocketAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    HeaderValue::from_bytes(peer_text(peer, &mut buf))
        .expect("an IP address is a valid header value")
}

/// The client address as text, written into `buf` (no allocation, for the native path).
/// IPv4 — nearly every peer — is written by hand: `fmt` costs twenty times as much, and this
/// runs for every request.
pub(crate) fn peer_text(peer: SocketAddr, buf: &mut [u8; 48]) -> &[u8] {
    match peer.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            &buf[..n]
        }
        ip => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            let n = cursor.position() as usize;
            &buf[..n]
        }
    }
}

/// The response body: relayed from hyper's client, read by nrdot's own client, or nrdot's own.
pub type ProxyBody = Either<Either<ResponseBody<Completion>, RawBody<Completion>>, Full<Bytes>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let conn = Arc::clone(&self.0);
        Box::pin(async move { Ok(handle(conn, req).await) })
    }
}

/// Fields of the access log line, copied only when the log is on.
pub(crate) struct LogFields {
    client: std::net::IpAddr,
    method: Method,
    target: String,
    version: Version,
    referer: String,
    user_agent: String,
    start: Instant,
    pub route: Box<str>,
    pub upstream: String,
    log: AccessLog,
}

impl LogFields {
    pub fn new(
        log: &AccessLog,
        client: std::net::IpAddr,
        method: Method,
        target: &str,
        version: Version,
        referer: Option<&str>,
        user_agent: Option<&str>,
    ) -> Box<LogFields> {
        Box::new(LogFields {
            client: client.to_canonical(),
            method,
            target: target.to_string(),
            version,
            referer: referer.unwrap_or("-").to_string(),
            user_agent: user_agent.unwrap_or("-").to_string(),
            start: Instant::now(),
            route: "-".into(),
            upstream: "-".to_string(),
            log: log.clone(),
        })
    }

    pub fn write(&self, status: u16, bytes: u64) {
        self.log.log(&Entry {
            client: self.client,
            method: self.method.as_str(),
            target: &self.target,
            version: version_str(self.version),
            status,
            bytes,
            referer: &self.referer,
            user_agent: &self.user_agent,
            duration: self.start.elapsed().as_secs_f64(),
            route: &self.route,
            upstream: &self.upstream,
        });
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Runs when the response body is done: the request stops counting as in flight on its server,
/// the upstream connection goes back to the worker's pool if the exchange completed, and the
/// access log line is written.
pub struct Completion {
    table: Arc<RouteTable>,
    pool: usize,
    backend: usize,
    status: u16,
    upstream: Option<upstream::Conn>,
    log: Option<Box<LogFields>>,
}

impl Done for Completion {
    fn done(self, sent: u64, complete: bool) {
        let pool = &self.table.pools[self.pool];
        pool.backends[self.backend].state.finish(false);
        pool.state.bytes_out.increment(sent);
        if let (true, Some(c)) = (complete, self.upstream) {
            c.release(pool.config.keepalive);
        }
        if let Some(log) = &self.log {
            log.write(self.status, sent);
        }
    }

    fn timed_out(&self) {
        self.table.pools[self.pool].state.timeouts.increment(1);
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let index = conn.requests.fetch_add(1, Ordering::Relaxed);
    let table = conn.shared.reader.load();
    let limits = &table.config.limits;
    let log = conn.shared.log.enabled().then(|| {
        let h = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
        LogFields::new(
            &conn.shared.log,
            conn.peer.ip(),
            req.method().clone(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            req.version(),
            h(header::REFERER),
            h(header::USER_AGENT),
        )
    });
    let is_h1 = req.version() != Version::HTTP_2;
    // Keep-alive request limit: the last allowed request gets `Connection: close`.
    let last = is_h1 && index + 1 >= limits.keepalive_requests;

    match proxy(&conn, &table, req, log, index).await {
        Ok(mut resp) => {
            if last {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
        Err((e, log)) => {
            tracing::debug!(error = %e, source = e.source_label(), peer = %conn.peer, "request answered by nrdot");
            let resp = error::response(e.status(), is_h1 && (e.closes() || last));
            if let Some(log) = log {
                log.write(
                    e.status().as_u16(),
                    resp.body().size_hint().exact().unwrap_or(0),
                );
            }
            resp.map(Either::Right)
        }
    }
}

type Failed = (ProxyError, Option<Box<LogFields>>);

/// Methods that may be sent twice (RFC 9110 9.2.2).
pub(crate) fn idempotent(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// Retries in flight a pool always allows, whatever its budget percentage: enough that one
/// server dying under moderate load (every connection to it reset at once) is absorbed.
const MIN_RETRY_CONCURRENCY: u64 = 10;

/// Largest body kept in memory so a `retry_unsafe` route can send it again.
const REPLAY_LIMIT: usize = 1024 * 1024;

/// The request body as the retry loop sees it.
enum Payload {
    /// Streams once; after the first attempt that sent it, no retry.
    Stream(Option<RequestBody>),
    /// In memory (or empty): can be sent any number of times.
    Replay(Bytes),
}

async fn proxy(
    conn: &Conn,
    table: &Arc<RouteTable>,
    mut req: Request<Incoming>,
    mut log: Option<Box<LogFields>>,
    index: u64,
) -> Result<Response<ProxyBody>, Failed> {
    let limits = &table.config.limits;
    macro_rules! fail {
        ($e:expr) => {
            return Err(($e, log))
        };
    }
    if req.version() != Version::HTTP_2 && conn.verdict.is_bad(index) {
        fail!(ProxyError::BadRequest);
    }
    if req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0) as u64
        > limits.max_request_line
    {
        fail!(ProxyError::UriTooLong);
    }
    let Some(host) = request_host(&req) else {
        fail!(ProxyError::BadRequest)
    };
    if let Some(n) = req.body().size_hint().upper() {
        if n > limits.client_max_body_size {
            fail!(ProxyError::BodyTooLarge);
        }
    }

    // Route and split with this one table; only indexes leave this block.
    let headers = req.headers();
    let Some(route) = table.route(&host, req.uri().path(), |name| headers.header(name)) else {
        fail!(ProxyError::NoRoute)
    };
    let d = decide(table, route, headers, conn.peer_value.as_bytes());
    if let Some(l) = log.as_mut() {
        l.route = table.routes[d.route].name.clone();
    }
    if table.routes[d.route].https_redirect && conn.shared.tls.is_none() {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let resp = https_redirect(&host, redirect_port(table), pq);
        return Ok(resp.map(|()| Either::Right(Full::new(Bytes::new()))));
    }
    let Decision {
        route,
        entry,
        pool,
        hash_key,
        new_sticky,
    } = d;
    let pool_entry = &table.pools[pool];
    let pcfg = &pool_entry.config;

    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let trusted = table
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()));

    // Rewrite the request for the upstream.
    let (mut parts, body) = req.into_parts();
    let version = parts.version;
    let via = via_value(version);
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    if version == Version::HTTP_2 {
        rules::join_cookie_crumbs(h);
    }
    h.remove(header::EXPECT); // nrdot answers 100-continue itself
                              // An absolute-form target overrides Host (RFC 9112 3.2.2); HTTP/2 has only :authority.
    if version != Version::HTTP_2 && parts.uri.authority().is_some() {
        h.remove(header::HOST);
    }
    if !h.contains_key(header::HOST) {
        // HTTP/2's :authority, else (HTTP/1.0 without Host) the first server's name, as nginx's
        // default `proxy_set_header Host $proxy_host` does.
        let fallback = pool_entry.backends.first().map(|b| &b.authority);
        match parts
            .uri
            .authority()
            .or(fallback)
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            Some(v) => {
                h.insert(header::HOST, v);
            }
            None => fail!(ProxyError::BadRequest),
        }
    }
    forwarded_headers(h, trusted, &conn.peer_value, &conn.shared.proto);
    h.append(header::VIA, via.clone());
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let body = match RequestBody::start(
        body,
        limits.client_max_body_size,
        limits.client_body_timeout,
        &pool_entry.state.bytes_in,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => fail!(e),
    };
    let retry_unsafe = table.routes[route].retry_unsafe;
    let safe = idempotent(parts.method.as_str()) || retry_unsafe;
    // Bodies are buffered where that is cheap or needed: up to the native path's limit when
    // the length is known (nginx's request buffering: the upstream gets the request in one
    // piece, and a retry can send it again), up to `REPLAY_LIMIT` for `retry_unsafe` routes.
    let known_small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= crate::h1::NATIVE_BODY_MAX as u64);
    let buffer_up_to = if retry_unsafe && pcfg.retries > 0 {
        Some(REPLAY_LIMIT)
    } else {
        known_small.then_some(crate::h1::NATIVE_BODY_MAX)
    };
    let mut payload = match buffer_up_to {
        _ if body.is_end_stream() => Payload::Replay(Bytes::new()),
        Some(limit) if !upgrade => match body.collect(limit).await {
            Ok(Some(bytes)) => Payload::Replay(bytes),
            Ok(None) => fail!(ProxyError::BodyTooLarge),
            Err(e) => fail!(e),
        },
        _ => Payload::Stream(Some(body)),
    };

    let hsts = table.routes[route]
        .hsts
        .as_ref()
        .filter(|_| conn.shared.tls.is_some());

    // A request complete in memory goes through nrdot's own client, as on the native path: one
    // write, no connection task or channel, the body read by its framing.
    if let (false, Payload::Replay(bytes)) = (upgrade, &payload) {
        if crate::worker::native_upstream() {
            let head_request = parts.method == Method::HEAD;
            let out = relay::request_bytes(&parts, path_and_query.as_str(), bytes);
            pool_entry.state.active.fetch_add(1, Ordering::Relaxed);
            let _active = ActiveGuard(&pool_entry.state.active);
            let kind = relay::Kind {
                safe,
                upgrade: false,
            };
            let sent = relay::send(table, pool, hash_key, kind, out, &mut log, |buf, out| {
                relay::raw_head(buf, head_request).ok_or(out)
            })
            .await;
            let relay::Sent {
                backend,
                conn: upstream_conn,
                status,
                head,
                buf,
            } = match sent {
                Ok(s) => s,
                Err(e) => fail!(e),
            };
            table.routes[route].counters[entry].count(status);
            let mut resp = Response::new(());
            *resp.status_mut() = head.status;
            *resp.headers_mut() = head.headers;
            response_fields(resp.headers_mut(), false, via, hsts, new_sticky);
            let completion = Completion {
                table: Arc::clone(table),
                pool,
                backend,
                status,
                upstream: None,
                log,
            };
            let body = RawBody::new(
                upstream_conn,
                buf,
                head.len,
                head.framing,
                head.upstream_close,
                pcfg,
                completion,
            );
            return Ok(resp.map(|()| Either::Left(Either::Right(body))));
        }
    }

    // Pick, connect, send; retry on another server where that is safe.
    pool_entry.state.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&pool_entry.state.active);
    let mut tried: Vec<usize> = Vec::new();
    let mut retries_left = pcfg.retries;
    // Counts this request in the pool's retries in flight while a retry attempt runs.
    let mut retry_slot: Option<ActiveGuard> = None;
    // What the previous attempt failed with: when a retry finds no other server, the client
    // hears about the real failure, not about the empty pool.
    let mut last_error: Option<ProxyError> = None;
    let (backend, resp, upstream_conn) = loop {
        let chosen = match table.backend(pool, fastrand::u64(..), hash_key, &tried) {
            Ok(c) => c,
            Err(e) => fail!(no_backend(pool_entry, e, last_error)),
        };
        if chosen.fail_open {
            pool_entry.state.fail_open.increment(1);
        }
        let b = chosen.index;
        let backend_entry = &pool_entry.backends[b];
        let state = &backend_entry.state;
        if let Some(l) = log.as_mut() {
            l.upstream = backend_entry.authority.as_str().to_string();
        }
        let passive = |failed: bool| passive(pool_entry, backend_entry, failed);

        state.start();
        let mut upstream = match upstream::acquire(pool_entry, backend_entry).await {
            Ok(c) => c,
            Err(e) => match retry_after_connect_failure(
                pool_entry,
                b,
                &e,
                &mut tried,
                &mut last_error,
                &mut retries_left,
                &mut retry_slot,
            ) {
                Ok(()) => continue,
                Err(err) => fail!(err),
            },
        };
        let (request_body, replayable) = match &mut payload {
            Payload::Replay(bytes) => (RequestBody::full(bytes.clone()), true),
            Payload::Stream(b) => match b.take() {
                Some(b) => (b, false),
                None => fail!(ProxyError::UpstreamConnect),
            },
        };
        let fate = request_body.fate();
        // Origin-form, as nginx sends it: hyper's client writes the target as given, and an
        // absolute-form target confuses servers that only expect a path.
        let uri = Uri::from(path_and_query.clone());
        let mut builder = Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .version(Version::HTTP_11);
        if let Some(h) = builder.headers_mut() {
            *h = if replayable {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
        }
        let upstream_req = match builder.body(request_body) {
            Ok(r) => r,
            Err(_) => fail!(ProxyError::BadRequest),
        };
        let sent_at = clock::now();
        let result = tokio::time::timeout(
            pcfg.response_timeout,
            upstream.sender.try_send_request(upstream_req),
        )
        .await;
        drop(retry_slot.take()); // this attempt is over
        match result {
            Ok(Ok(resp)) => {
                let took = clock::elapsed(sent_at);
                pool_entry.state.outcomes.record_latency(took);
                let status = resp.status().as_u16();
                passive(status >= 500);
                // Only when another server could answer: otherwise this answer is the best one.
                if pcfg.retry_on.statuses.contains(&status)
                    && safe
                    && replayable
                    && tried.len() + 1 < pool_entry.backends.len()
                    && retry_allowed(pool_entry, retries_left)
                {
                    state.finish(true);
                    tried.push(b);
                    retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
                    continue;
                }
                break (b, resp, upstream);
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                let client_fault = fate.get();
                // A reused connection the server had already closed is not the server's fault.
                let server_fault = client_fault.is_none() && !(unsent.is_some() && upstream.reused);
                state.finish(server_fault);
                if let Some(fault) = client_fault {
                    fail!(fault);
                }
                tracing::debug!(upstream = %backend_entry.authority, error = %e.error(), reused = upstream.reused, "upstream request failed");
                if server_fault {
                    passive(true);
                }
                if let Some(req) = unsent {
                    // Never sent: send it again, untouched, on a fresh connection.
                    if let Payload::Stream(slot) = &mut payload {
                        let (sent_parts, sent_body) = req.into_parts();
                        parts.headers = sent_parts.headers;
                        *slot = Some(sent_body);
                    }
                    if server_fault {
                        tried.push(b);
                    }
                    continue;
                }
                tried.push(b);
                last_error = Some(ProxyError::UpstreamConnect);
                if pcfg.retry_on.reset
                    && safe
                    && replayable
                    && retry_allowed(pool_entry, retries_left)
                {
                    retry_slot.replace(begin_retry(&pool_entry.state, &mut retries_left));
                    continue;
                }
                fail!(ProxyError::UpstreamConnect);
            }
            Err(_) => {
                state.finish(true);
                passive(true);
                pool_entry.state.timeouts.increment(1);
                fail!(ProxyError::UpstreamTimeout);
            }
        }
    };
    drop(retry_slot);
    let mut resp = resp;
    let status = resp.status();
    table.routes[route].counters[entry].count(status.as_u16());

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    response_fields(
        resp.headers_mut(),
        switching && upgrade,
        via,
        hsts,
        new_sticky,
    );

    let completion = Completion {
        table: Arc::clone(table),
        pool,
        backend,
        status: status.as_u16(),
        upstream: (!switching).then_some(upstream_conn),
        log,
    };
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 to a request that asked for no upgrade is an upstream protocol error.
            completion.done(0, false);
            return Err((ProxyError::UpstreamConnect, None));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = table.config.limits.tunnel_idle_timeout;
        tokio::spawn(async move {
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => {
                    let (c, u) = (TokioIo::new(c), TokioIo::new(u));
                    let moved = crate::tunnel::join(c, u, Vec::new(), idle).await;
                    completion.done(moved.b_to_a, false);
                }
                (c, u) => {
                    tracing::debug!(client = ?c.err(), upstream = ?u.err(), "upgrade failed");
                    completion.done(0, false);
                }
            }
        });
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    let read_timeout = pcfg.response_timeout;
    Ok(resp.map(|b| Either::Left(Either::Left(ResponseBody::new(b, read_timeout, completion)))))
}

/// The response fields an intermediary changes: hop-by-hop ones go, `Via` is added, and the
/// route's HSTS and a newly assigned sticky cookie.
fn response_fields(
    h: &mut HeaderMap,
    keep_upgrade: bool,
    via: HeaderValue,
    hsts: Option<&HeaderValue>,
    new_sticky: Option<String>,
) {
    strip_hop_by_hop(h, keep_upgrade);
    rules::add_date(h);
    h.append(header::VIA, via);
    if let Some(hsts) = hsts {
        h.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    if let Some(cookie) = new_sticky.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, cookie);
    }
}

/// Counts a retry: one fewer left, one more in flight until the guard drops.
pub(crate) fn begin_retry<'a>(
    pool: &'a nrdot_config::state::PoolState,
    left: &mut u32,
) -> ActiveGuard<'a> {
    *left -= 1;
    pool.retries.increment(1);
    pool.active_retries.fetch_add(1, Ordering::Relaxed);
    ActiveGuard(&pool.active_retries)
}

/// Where a request goes, decided with one table generation; only indexes leave it.
pub(crate) struct Decision {
    pub route: usize,
    /// Index into the route's split.
    pub entry: usize,
    pub pool: usize,
    /// Hash of the pool's `hash_key`, for consistent server choice.
    pub hash_key: Option<u64>,
    /// A `Set-Cookie` value when a sticky cookie was just assigned.
    pub new_sticky: Option<String>,
}

/// Request headers as routing reads them, whichever parser produced them.
pub(crate) trait Lookup {
    /// The first value of `name` (lower case).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The value of cookie `name` across all Cookie fields.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

impl Lookup for HeaderMap {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(|v| v.as_bytes())
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie_in(
            self.get_all(header::COOKIE).iter().map(|v| v.as_bytes()),
            name,
        )
    }
}

/// Splits a routed request (override, sticky key, weighted sequence) and computes the pool's
/// hash key.
pub(crate) fn decide(
    table: &RouteTable,
    route: usize,
    headers: &impl Lookup,
    peer: &[u8],
) -> Decision {
    let r = &table.routes[route];
    let override_pool = r
        .override_header
        .as_deref()
        .and_then(|h| headers.header(h))
        .or_else(|| r.override_cookie.as_deref().and_then(|c| headers.cookie(c)));
    let mut new_sticky = None;
    let sticky_hash = match &r.sticky {
        None => None,
        Some(Sticky::Header(h)) => headers.header(h.as_str()).map(stable_hash),
        Some(Sticky::Cookie(c)) => match headers.cookie(c) {
            Some(v) => Some(stable_hash(v)),
            None => {
                let key = format!("{:016x}", fastrand::u64(..));
                let h = stable_hash(key.as_bytes());
                new_sticky = Some(format!(
                    "{c}={key}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax"
                ));
                Some(h)
            }
        },
    };
    let target = table.pick(route, override_pool, sticky_hash);
    let pool = r.pools[target.entry];
    let hash_key = match &table.pools[pool].config.hash_key {
        None => None,
        Some(HashKey::Header(h)) => headers.header(h.as_str()).map(stable_hash),
        Some(HashKey::Cookie(c)) => headers.cookie(c).map(stable_hash),
        Some(HashKey::ClientIp) => Some(stable_hash(peer)),
    };
    Decision {
        route,
        entry: target.entry,
        pool,
        hash_key,
        new_sticky,
    }
}

/// The port HTTPS redirects name: the configured one, else the one the HTTPS listener bound.
pub(crate) fn redirect_port(table: &RouteTable) -> Option<u16> {
    match table.https_port {
        Some(0) | None => {
            Some(crate::worker::HTTPS_PORT.load(Ordering::Relaxed)).filter(|p| *p != 0)
        }
        p => p,
    }
}

/// The answer when no server can be chosen (counted): after a failed attempt the client hears
/// about the real failure, not about the now empty pool.
pub(crate) fn no_backend(pool: &PoolEntry, e: NoBackend, last: Option<ProxyError>) -> ProxyError {
    if let Some(last) = last {
        return last;
    }
    match e {
        NoBackend::Unavailable => {
            pool.state.unavailable.increment(1);
            ProxyError::NoAvailableBackend
        }
        NoBackend::Overloaded => {
            pool.state.overflow.increment(1);
            ProxyError::Overloaded
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

/// Whether one more retry fits the pool's budget (retries in flight as a share of requests in
/// flight, never below [`MIN_RETRY_CONCURRENCY`]).
pub(crate) fn retry_allowed(pool: &PoolEntry, retries_left: u32) -> bool {
    if retries_left == 0 {
        return false;
    }
    let active = pool.state.active.load(Ordering::Relaxed);
    let retrying = pool.state.active_retries.load(Ordering::Relaxed);
    let budget =
        (active * pool.config.retry_budget_percent as u64 / 100).max(MIN_RETRY_CONCURRENCY);
    if retrying >= budget {
        pool.state.retry_budget_exhausted.increment(1);
        return false;
    }
    true
}

/// Records an attempt's outcome for analysis and passive health; ejects the server after
/// enough consecutive failures while the pool's ejection cap allows.
pub(crate) fn passive(pool: &PoolEntry, backend: &BackendEntry, failed: bool) {
    pool.state.outcomes.record(failed);
    let Some(o) = pool.config.outlier.as_ref() else {
        return;
    };
    let may_eject = || {
        let n = pool.backends.len();
        let ejected = pool.backends.iter().filter(|x| x.state.ejected()).count();
        (ejected + 1) * 100 <= n * o.max_ejection_percent as usize
    };
    if let Some(ms) = backend.state.record_outcome(
        failed,
        o.consecutive_failures,
        o.base_ejection.as_millis() as u64,
        may_eject,
    ) {
        tracing::warn!(pool = %pool.config.name, backend = %backend.authority, ejected_ms = ms, "backend ejected after consecutive failures");
    }
}

/// 308 to the same host, path and query over HTTPS (the TLS listener's port unless 443).
pub(crate) fn https_redirect(host: &str, port: Option<u16>, pq: &str) -> Response<()> {
    let location = match port {
        Some(p) if p != 443 => format!("https://{host}:{p}{pq}"),
        _ => format!("https://{host}{pq}"),
    };
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("nrdot"));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    resp
}

/// Decrements one of a pool's in-flight counts when dropped.
pub(crate) struct ActiveGuard<'a>(pub &'a std::sync::atomic::AtomicU64);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The host a request is for: lower case, without port. `None` when missing or malformed
/// (HTTP/1.1 requires exactly one Host header, RFC 9112 3.2).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let raw: &str = match (req.uri().authority(), from_header) {
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h.to_str().ok()?,
        // HTTP/1.0 predates Host: such requests match routes without a host.
        (None, None) if req.version() == Version::HTTP_10 => return Some(String::new()),
        (None, None) => return None,
    };
    host_of(raw)
}

/// A Host value (or authority) as routing wants it: lower case, without port; `None` when
/// malformed.
pub(crate) fn host_of(raw: &str) -> Option<String> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        &raw[..rest.find(']')? + 2]
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    if host.is_empty()
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        })
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Value of cookie `name` in Cookie field values, if any.
pub(crate) fn cookie_in<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    for v in values {
        for pair in v.split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name.as_bytes()) {
                if let Some(value) = rest.strip_prefix(b"=") {
                    return Some(value);
                }
            }
        }
    }
    None
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// X-Forwarded-*: a trusted peer's chain is extended, anyone else's is replaced, so a client
/// cannot make an upstream believe a forged address.
fn forwarded_headers(h: &mut HeaderMap, trusted: bool, peer: &HeaderValue, proto: &HeaderValue) {
    let existing: Vec<&[u8]> = if trusted {
        h.get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if existing.is_empty() {
        peer.clone()
    } else {
        let mut v = existing.join(&b", "[..]);
        v.extend_from_slice(b", ");
        v.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| peer.clone())
    };
    h.insert(X_FORWARDED_FOR.clone(), xff);
    if !(trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    }
    if !(trusted && h.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
}

fn via_value(v: Version) -> HeaderValue {
    HeaderValue::from_static(match v {
        Version::HTTP_10 => "1.0 nrdot",
        Version::HTTP_2 => "2.0 nrdot",
        _ => "1.1 nrdot",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_matches_display_for_every_octet_width_and_for_ipv6() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::ffff:10.1.2.3",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let addr: std::net::IpAddr = ip.parse().expect("test address");
            let mut buf = [0u8; 48];
            let text = peer_text(SocketAddr::new(addr, 9), &mut buf);
            assert_eq!(text, addr.to_canonical().to_string().as_bytes(), "{ip}");
        }
    }

    #[test]
    fn forwarded_for_trusts_only_trusted_peers() {
        let peer = HeaderValue::from_static("10.0.0.1");
        let proto = HeaderValue::from_static("http");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        let mut trusted = h.clone();
        forwarded_headers(&mut h, false, &peer, &proto);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com");
        forwarded_headers(&mut trusted, true, &peer, &proto);
        assert_eq!(trusted["x-forwarded-for"], "1.2.3.4, 10.0.0.1");
    }

    #[test]
    fn host_is_lowercased_without_port() {
        let req = |host: &str| {
            Request::builder()
                .uri("/")
                .header(header::HOST, host)
                .body(())
                .expect("request")
        };
        assert_eq!(
            request_host(&req("Example.COM:8080")).as_deref(),
            Some("example.com")
        );
        assert_eq!(request_host(&req("[::1]:80")).as_deref(), Some("[::1]"));
        assert_eq!(request_host(&req("bad host")), None);
        let two = Request::builder()
            .uri("/")
            .header(header::HOST, "a")
            .header(header::HOST, "b")
            .body(())
            .expect("request");
        assert_eq!(request_host(&two), None);
    }

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; nrdot_id=abc; b=2"),
        );
        assert_eq!(h.cookie("nrdot_id"), Some(&b"abc"[..]));
        assert_eq!(h.cookie("nrdot"), None);
    }
}
