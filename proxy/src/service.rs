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
use nrdot_config::table::{BackendEntry, PoolEntry};
use nrdot_config::RouteTable;

use crate::accesslog::LogFields;
use crate::error::{self, ProxyError};
use crate::http1::NATIVE_BODY_MAX;
use crate::inspect::Verdict;
use crate::listener::Shared;
use crate::relay::Outcome;
use crate::reqbody::RequestBody;
use crate::respbody::{Done, RawBody, ResponseBody};
use crate::rules::retry::{idempotent, ActiveGuard};
use crate::rules::route::{
    decide, https_redirect, peer_value, redirect_port, request_host, Decision, Lookup,
};
use crate::rules::{
    strip_hop_by_hop, via_value, wants_upgrade, BodyLength, ConnectionFields, Forwarding, Hop,
    Target,
};
use crate::{relay, rules, upstream};

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
    macro_rules! fail {
        ($e:expr) => {
            return Err(($e, log))
        };
    }
    let host = match check(conn, table, &req, index) {
        Ok(Checked::Host(h)) => h,
        Ok(Checked::Server) => return Ok(final_recipient(req.method(), log)),
        Err(e) => fail!(e),
    };
    let hops = req
        .headers()
        .get(header::MAX_FORWARDS)
        .map(|v| v.as_bytes());
    let hops = match rules::max_forwards(req.method().as_str(), hops) {
        Hop::Forward => None,
        Hop::Decrement(n) => Some(n),
        Hop::Answer => return Ok(final_recipient(req.method(), log)),
        Hop::Invalid => fail!(ProxyError::BadRequest),
    };
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
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let resp = https_redirect(&host, redirect_port(table, conn.shared.https_port), pq);
        return Ok(resp.map(|()| Either::Right(Full::new(Bytes::new()))));
    }
    let upgrade = req.version() == Version::HTTP_11 && wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let pool_entry = &table.pools[d.pool];
    let path_and_query = match rewrite_request(conn, table, &mut parts, pool_entry, upgrade) {
        Ok(p) => p,
        Err(e) => fail!(e),
    };
    if let Some(n) = hops {
        parts
            .headers
            .insert(header::MAX_FORWARDS, HeaderValue::from(n));
    }
    let limits = &table.config.limits;
    let started = RequestBody::start(
        body,
        limits.client_max_body_size,
        limits.client_body_timeout,
        &pool_entry.state.bytes_in,
    );
    let body = match started.await {
        Ok(b) => b,
        Err(e) => fail!(e),
    };
    let retry_unsafe = table.routes[d.route].retry_unsafe;
    let safe = idempotent(parts.method.as_str()) || retry_unsafe;
    let payload = match payload(body, retry_unsafe && pool_entry.config.retries > 0, upgrade).await
    {
        Ok(p) => p,
        Err(e) => fail!(e),
    };
    let hsts = table.routes[d.route]
        .hsts
        .as_ref()
        .filter(|_| conn.shared.tls.is_some());
    let answer = Answer { table, d, hsts };
    pool_entry.state.active.fetch_add(1, Ordering::Relaxed);
    let _active = ActiveGuard(&pool_entry.state.active);
    match payload {
        // A request complete in memory goes through nrdot's own client, as on the native
        // path: one write, no connection task or channel, the body read by its framing.
        Payload::Replay(bytes) if !upgrade => {
            let out = relay::request_bytes(&parts, path_and_query.as_str(), &bytes);
            send_whole(answer, out, parts.method == Method::HEAD, safe, log).await
        }
        payload => {
            let x = Streamed {
                safe: safe && matches!(payload, Payload::Replay(_)),
                parts,
                path_and_query,
                payload,
                fate: None,
                reused: false,
                resp: None,
            };
            // Boxed: the rarer path (streamed bodies, upgrades) would otherwise widen every
            // request's future, which is copied whole into its box.
            Box::pin(send_streamed(answer, x, client_upgrade, log)).await
        }
    }
}

/// nrdot's answer as the final recipient: of a TRACE or OPTIONS request whose Max-Forwards
/// ran out (RFC 9110 7.6.2), and of `OPTIONS *` (RFC 9112 3.2.4). OPTIONS gets the methods
/// nrdot forwards; TRACE, which would
/// reflect the request's fields (cookies, credentials) back, is not supported here, as nginx
/// refuses it.
fn final_recipient(method: &Method, log: Option<Box<LogFields>>) -> Response<ProxyBody> {
    let status = if method == Method::OPTIONS {
        StatusCode::OK
    } else {
        StatusCode::METHOD_NOT_ALLOWED
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("nrdot"));
    h.insert(header::ALLOW, HeaderValue::from_static(error::ALLOW));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(l) = log {
        l.write(status.as_u16(), 0);
    }
    resp
}

/// What a request is for, once checked.
enum Checked {
    /// Routed by this host.
    Host(String),
    /// The server as a whole (`OPTIONS *`): nrdot answers.
    Server,
}

/// What every request is checked for before it is routed.
fn check(
    conn: &Conn,
    table: &RouteTable,
    req: &Request<Incoming>,
    index: u64,
) -> Result<Checked, ProxyError> {
    let limits = &table.config.limits;
    if req.version() != Version::HTTP_2 && conn.verdict.is_bad(index) {
        return Err(ProxyError::BadRequest);
    }
    let uri = req.uri();
    if uri
        .scheme_str()
        .is_some_and(|s| !rules::target::scheme_served(s))
    {
        return Err(ProxyError::BadRequest);
    }
    let target = match (uri.scheme(), uri.authority()) {
        (None, Some(_)) => Target::Authority,
        (None, None) if uri.path() == "*" => Target::Asterisk,
        _ => Target::Resource,
    };
    let codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    let http1 = req.version() != Version::HTTP_2;
    if !http1 && !rules::values_trimmed(req.headers()) {
        return Err(ProxyError::BadRequest);
    }
    if rules::request_form(req.method().as_str(), target, codings)?
        || (http1 && conn.verdict.asks_server(index))
    {
        return Ok(Checked::Server);
    }
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target as u64 > limits.max_request_line {
        return Err(ProxyError::UriTooLong);
    }
    let host = request_host(req).ok_or(ProxyError::BadRequest)?;
    if let Some(n) = req.body().size_hint().upper() {
        if n > limits.client_max_body_size {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    Ok(Checked::Host(host))
}

/// Rewrites the request head for the upstream as an intermediary must (RFC 9110 7.6, with
/// [`rules::forward_fields`], shared with the native path; RFC 9113 8.2.3 for HTTP/2); returns
/// the origin-form target it goes with.
fn rewrite_request(
    conn: &Conn,
    table: &RouteTable,
    parts: &mut http::request::Parts,
    pool: &PoolEntry,
    upgrade: bool,
) -> Result<PathAndQuery, ProxyError> {
    let trusted = table
        .config
        .trusted_proxies
        .iter()
        .any(|c| c.contains(conn.peer.ip()));
    let version = parts.version;
    let mut h = std::mem::take(&mut parts.headers);
    if version == Version::HTTP_2 {
        rules::join_cookie_crumbs(&mut h);
    }
    // An absolute-form target overrides Host (RFC 9112 3.2.2); HTTP/2 has only :authority.
    if version != Version::HTTP_2 && parts.uri.authority().is_some() {
        h.remove(header::HOST);
    }
    if !h.contains_key(header::HOST) {
        // HTTP/2's :authority, else (HTTP/1.0 without Host) the first server's name, as nginx's
        // default `proxy_set_header Host $proxy_host` does.
        let fallback = pool.backends.first().map(|b| &b.authority);
        let host = parts
            .uri
            .authority()
            .or(fallback)
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(ProxyError::BadRequest)?;
        h.insert(header::HOST, host);
    }
    let tokens = rules::connection_tokens(&h);
    let mut connection = ConnectionFields::default();
    connection.push(&tokens);
    let host = h
        .get(header::HOST)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let upgrade = upgrade.then(|| h.get(header::UPGRADE).cloned()).flatten();
    let via = via_value(version);
    let w = Forwarding {
        connection: &connection,
        trusted,
        peer: conn.peer_value.as_bytes(),
        proto: conn.shared.proto.as_bytes(),
        host: host.as_bytes(),
        upgrade: upgrade.as_ref().map(HeaderValue::as_bytes),
        length: BodyLength::AsSent,
        via: via.as_bytes(),
    };
    let mut out = HeaderMap::with_capacity(h.len() + 6);
    let mut last: Option<HeaderName> = None;
    let fields = h.into_iter().filter_map(|(name, value)| {
        let name = name.or_else(|| last.clone())?;
        last = Some(name.clone());
        Some((name, value))
    });
    rules::forward_fields(fields, &w, &mut out).map_err(|_| ProxyError::BadRequest)?;
    parts.headers = out;
    Ok(origin_form(&parts.uri))
}

/// The target in origin-form: an absolute-form target's empty path is sent as `/`, also in
/// front of a query (RFC 9112 3.2.1); hyper's URI would give `?q` alone.
fn origin_form(uri: &Uri) -> PathAndQuery {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('?') => {
            PathAndQuery::try_from(format!("/{}", pq.as_str()))
                .unwrap_or_else(|_| PathAndQuery::from_static("/"))
        }
        Some(pq) => pq.clone(),
        None => PathAndQuery::from_static("/"),
    }
}

/// The request body as the attempts will send it. Bodies are buffered where that is cheap or
/// needed: up to the native path's limit when the length is known (nginx's request buffering:
/// the upstream gets the request in one piece, and a retry can send it again), up to
/// `REPLAY_LIMIT` when the route retries unsafe requests.
async fn payload(
    body: RequestBody,
    replay_unsafe: bool,
    upgrade: bool,
) -> Result<Payload, ProxyError> {
    let known_small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n <= NATIVE_BODY_MAX as u64);
    let buffer_up_to = if replay_unsafe {
        Some(REPLAY_LIMIT)
    } else {
        known_small.then_some(NATIVE_BODY_MAX)
    };
    Ok(match buffer_up_to {
        _ if body.is_end_stream() => Payload::Replay(Bytes::new()),
        Some(limit) if !upgrade => match body.collect(limit).await? {
            Some(bytes) => Payload::Replay(bytes),
            None => return Err(ProxyError::BodyTooLarge),
        },
        _ => Payload::Stream(Some(body)),
    })
}

/// Where an answer goes back, and what it gets on the way.
struct Answer<'a> {
    table: &'a Arc<RouteTable>,
    d: Decision,
    /// The route's HSTS, on HTTPS listeners.
    hsts: Option<&'a HeaderValue>,
}

impl Answer<'_> {
    /// Counts the status and rewrites the response head, received in `version`, for the
    /// client.
    fn head(&mut self, status: u16, h: &mut HeaderMap, upgraded: bool, version: Version) {
        self.table.count(self.d.target(), status);
        if !rules::length_allowed(status) {
            h.remove(header::CONTENT_LENGTH);
        }
        let sticky = self.d.new_sticky.take();
        response_fields(h, upgraded, via_value(version), self.hsts, sticky);
    }

    fn completion(
        &self,
        backend: usize,
        status: u16,
        upstream: Option<upstream::Conn>,
        log: Option<Box<LogFields>>,
    ) -> Completion {
        Completion {
            table: Arc::clone(self.table),
            pool: self.d.pool,
            backend,
            status,
            upstream,
            log,
        }
    }
}

/// Sends a request held whole (`out`) through nrdot's own client; the body comes back as a
/// [`RawBody`] read straight from the pooled connection.
async fn send_whole(
    mut a: Answer<'_>,
    out: Vec<u8>,
    head_request: bool,
    safe: bool,
    mut log: Option<Box<LogFields>>,
) -> Result<Response<ProxyBody>, Failed> {
    let mut x = relay::Whole::new(out, false, safe, |buf: &[u8], out| {
        relay::raw_head(buf, head_request).ok_or(out)
    });
    let (pool, hash_key) = (a.d.pool, a.d.hash_key);
    let sent = match relay::send(a.table, pool, hash_key, safe, &mut log, &mut x).await {
        Ok(s) => s,
        Err(e) => return Err((e, log)),
    };
    let head = sent.head;
    let mut resp = Response::new(());
    *resp.status_mut() = head.status;
    *resp.headers_mut() = head.headers;
    a.head(sent.status, resp.headers_mut(), false, head.version);
    let completion = a.completion(sent.backend, sent.status, None, log);
    let pcfg = &a.table.pools[pool].config;
    let body = RawBody::new(
        sent.conn,
        x.rbuf,
        head.len,
        head.framing,
        head.upstream_close,
        pcfg,
        completion,
    );
    Ok(resp.map(|()| Either::Left(Either::Right(body))))
}

/// Sends a request through hyper's client (a streamed body, or an upgrade): the response body
/// streams back, or a `101` joins both upgraded connections in a tunnel.
async fn send_streamed(
    mut a: Answer<'_>,
    mut x: Streamed,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    mut log: Option<Box<LogFields>>,
) -> Result<Response<ProxyBody>, Failed> {
    let (pool, hash_key, safe) = (a.d.pool, a.d.hash_key, x.safe);
    let sent = match relay::send(a.table, pool, hash_key, safe, &mut log, &mut x).await {
        Ok(s) => s,
        Err(e) => return Err((e, log)),
    };
    let mut resp = sent.head;
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let version = resp.version();
    a.head(
        status.as_u16(),
        resp.headers_mut(),
        switching && client_upgrade.is_some(),
        version,
    );
    let upstream = (!switching).then_some(sent.conn);
    let completion = a.completion(sent.backend, status.as_u16(), upstream, log);
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 to a request that asked for no upgrade is an upstream protocol error.
            completion.done(0, false);
            return Err((ProxyError::UpstreamConnect, None));
        };
        let idle = a.table.config.limits.tunnel_idle_timeout;
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, idle, completion));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            Either::Right(Full::new(Bytes::new())),
        ));
    }
    let read_timeout = a.table.pools[pool].config.response_timeout;
    Ok(resp.map(|b| Either::Left(Either::Left(ResponseBody::new(b, read_timeout, completion)))))
}

/// Joins the client's and the upstream's upgraded connections until both end.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: std::time::Duration,
    completion: Completion,
) {
    match tokio::join!(client, upstream) {
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
}

/// hyper's client as a [`relay::Exchange`]: the request from `parts`, its body streamed (sent
/// once) or replayed from memory.
struct Streamed {
    /// The request may be sent twice: it is safe and its body is in memory.
    safe: bool,
    parts: http::request::Parts,
    path_and_query: PathAndQuery,
    payload: Payload,
    /// The body of the attempt in flight: why it stopped early, if it did.
    fate: Option<Arc<crate::reqbody::BodyFate>>,
    reused: bool,
    resp: Option<Response<Incoming>>,
}

impl relay::Exchange for Streamed {
    type Conn = upstream::Conn;
    type Head = Response<Incoming>;

    async fn connect(
        &mut self,
        pool: &PoolEntry,
        be: &BackendEntry,
    ) -> Result<upstream::Conn, upstream::ConnectError> {
        let c = upstream::acquire(pool, be).await?;
        self.reused = c.reused;
        Ok(c)
    }

    async fn attempt(&mut self, up: &mut upstream::Conn) -> Outcome {
        let body = match &mut self.payload {
            Payload::Replay(bytes) => RequestBody::full(bytes.clone()),
            Payload::Stream(b) => match b.take() {
                Some(b) => b,
                None => return Outcome::Client(ProxyError::UpstreamConnect),
            },
        };
        self.fate = Some(body.fate());
        // Origin-form, as nginx sends it: hyper's client writes the target as given, and an
        // absolute-form target confuses servers that only expect a path.
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = Uri::from(self.path_and_query.clone());
        *req.headers_mut() = match self.payload {
            Payload::Replay(_) => self.parts.headers.clone(),
            Payload::Stream(_) => std::mem::take(&mut self.parts.headers),
        };
        match up.sender.try_send_request(req).await {
            Ok(resp) if !rules::status_valid(resp.status().as_u16()) => Outcome::Failed {
                server_fault: true,
                resend: false,
            },
            Ok(resp) => {
                let status = resp.status().as_u16();
                self.resp = Some(resp);
                Outcome::Answered(status)
            }
            Err(mut e) => {
                let unsent = e.take_message();
                if let Some(fault) = self.fate.as_ref().and_then(|f| f.get()) {
                    return Outcome::Client(fault);
                }
                tracing::debug!(error = %e.error(), reused = self.reused, "upstream request failed");
                let Some(req) = unsent else {
                    return Outcome::Failed {
                        server_fault: true,
                        resend: false,
                    };
                };
                // Never sent: send it again, untouched, on a fresh connection.
                if let Payload::Stream(slot) = &mut self.payload {
                    let (sent_parts, sent_body) = req.into_parts();
                    self.parts.headers = sent_parts.headers;
                    *slot = Some(sent_body);
                }
                // A reused connection the server had already closed is not the server's fault.
                Outcome::Failed {
                    server_fault: !self.reused,
                    resend: true,
                }
            }
        }
    }

    fn head(&mut self) -> Option<Response<Incoming>> {
        self.resp.take()
    }
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
