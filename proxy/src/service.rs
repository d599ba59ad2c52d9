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

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nrdot_config::RouteTable;

use crate::accesslog::LogFields;
use crate::error::{self, ProxyError};
use crate::http1::NATIVE_BODY_MAX;
use crate::inspect::Verdict;
use crate::listener::Shared;
use crate::relay::retry_after_connect_failure;
use crate::reqbody::RequestBody;
use crate::respbody::{Done, RawBody, ResponseBody};
use crate::rules::retry::{
    begin_retry, idempotent, no_backend, passive, retry_allowed, ActiveGuard,
};
use crate::rules::route::{
    decide, https_redirect, peer_value, redirect_port, request_host, Decision, Lookup,
};
use crate::rules::{forwarded_headers, strip_hop_by_hop, via_value, wants_upgrade};
use crate::{clock, relay, rules, upstream};

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
        let resp = https_redirect(&host, redirect_port(table, conn.shared.https_port), pq);
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
        .is_some_and(|n| n <= NATIVE_BODY_MAX as u64);
    let buffer_up_to = if retry_unsafe && pcfg.retries > 0 {
        Some(REPLAY_LIMIT)
    } else {
        known_small.then_some(NATIVE_BODY_MAX)
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
        {
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
