//! The per-request path: check the request, route it with one table generation, pick a pool and
//! a server, rewrite it as an intermediary must (RFC 9110 7.6), forward it with both bodies
//! streamed, and count the outcome. Nothing here takes a lock or does I/O beyond the proxying.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use nrdot_config::split::stable_hash;
use nrdot_config::swap::Reader;
use nrdot_config::{RouteTable, Sticky};

use crate::accesslog::{AccessLog, Entry};
use crate::body::{Done, RequestBody, ResponseBody};
use crate::error::{self, ProxyError};
use crate::inspect::Verdict;
use crate::upstream;

/// What every connection of a listener shares.
pub struct Shared {
    pub reader: Reader,
    pub log: AccessLog,
    pub proto: HeaderValue,
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
        let ip = peer.ip().to_canonical();
        let peer_value =
            HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value");
        ConnService(Arc::new(Conn {
            shared,
            peer,
            peer_value,
            verdict,
            requests: AtomicU64::new(0),
        }))
    }
}

pub type ProxyBody = Either<ResponseBody<Completion>, Full<Bytes>>;

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
struct LogFields {
    client: std::net::IpAddr,
    method: Method,
    target: String,
    version: Version,
    referer: String,
    user_agent: String,
    start: Instant,
    route: Box<str>,
    upstream: String,
    log: AccessLog,
}

impl LogFields {
    fn write(&self, status: u16, bytes: u64) {
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
/// and its access log line is written.
pub struct Completion {
    table: Arc<RouteTable>,
    pool: usize,
    backend: usize,
    status: u16,
    log: Option<Box<LogFields>>,
}

impl Done for Completion {
    fn done(self, sent: u64, _complete: bool) {
        let pool = &self.table.pools[self.pool];
        pool.backends[self.backend].state.finish(false);
        pool.state.bytes_out.increment(sent);
        if let Some(log) = &self.log {
            log.write(self.status, sent);
        }
    }
}

async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Response<ProxyBody> {
    let index = conn.requests.fetch_add(1, Ordering::Relaxed);
    let table = conn.shared.reader.load();
    let limits = &table.config.limits;
    let log = conn.shared.log.enabled().then(|| {
        let h = |name: HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        Box::new(LogFields {
            client: conn.peer.ip().to_canonical(),
            method: req.method().clone(),
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_string(),
            version: req.version(),
            referer: h(header::REFERER),
            user_agent: h(header::USER_AGENT),
            start: Instant::now(),
            route: "-".into(),
            upstream: "-".to_string(),
            log: conn.shared.log.clone(),
        })
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

    // Route, split and balance with this one table; only indexes leave this block.
    let (route, entry, pool, backend, new_sticky) = {
        let headers = req.headers();
        let Some(route) = table.route(&host, req.uri().path(), |name| {
            headers.get(name).map(|v| v.as_bytes())
        }) else {
            fail!(ProxyError::NoRoute)
        };
        let r = &table.routes[route];
        let override_pool = r
            .override_header
            .as_deref()
            .and_then(|h| headers.get(h).map(|v| v.as_bytes()))
            .or_else(|| {
                r.override_cookie
                    .as_deref()
                    .and_then(|c| cookie(headers, c))
            });
        let mut new_sticky = None;
        let sticky_hash = match &r.sticky {
            None => None,
            Some(Sticky::Header(h)) => headers.get(h.as_str()).map(|v| stable_hash(v.as_bytes())),
            Some(Sticky::Cookie(c)) => match cookie(headers, c) {
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
        let Some(backend) = table.backend(pool, fastrand::u64(..)) else {
            table.pools[pool].state.unavailable.increment(1);
            if let Some(l) = log.as_mut() {
                l.route = r.name.clone();
            }
            fail!(ProxyError::NoAvailableBackend)
        };
        let backend = table.pools[pool]
            .backends
            .iter()
            .position(|b| std::ptr::eq(b, backend))
            .unwrap_or(0);
        (route, target.entry, pool, backend, new_sticky)
    };
    let pool_entry = &table.pools[pool];
    let backend_entry = &pool_entry.backends[backend];
    if let Some(l) = log.as_mut() {
        l.route = table.routes[route].name.clone();
        l.upstream = backend_entry.authority.as_str().to_string();
    }

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
    h.remove(header::EXPECT); // nrdot answers 100-continue itself
                              // An absolute-form target overrides Host (RFC 9112 3.2.2); HTTP/2 has only :authority.
    if version != Version::HTTP_2 && parts.uri.authority().is_some() {
        h.remove(header::HOST);
    }
    if !h.contains_key(header::HOST) {
        // HTTP/2's :authority, else (HTTP/1.0 without Host) the server's own name, as nginx's
        // default `proxy_set_header Host $proxy_host` does.
        let authority = parts.uri.authority().unwrap_or(&backend_entry.authority);
        match HeaderValue::from_str(authority.as_str()) {
            Ok(v) => {
                h.insert(header::HOST, v);
            }
            Err(_) => fail!(ProxyError::BadRequest),
        }
    }
    forwarded_headers(h, trusted, &conn.peer_value, &conn.shared.proto);
    h.append(header::VIA, via.clone());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend_entry.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => fail!(ProxyError::BadRequest),
    };
    parts.version = Version::HTTP_11;

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
    let fate = body.fate();
    let upstream_req = Request::from_parts(parts, body);

    // Forward.
    let backend_state = &backend_entry.state;
    backend_state.start();
    let client = upstream::client(pool_entry);
    let sent_at = Instant::now();
    let result = tokio::time::timeout(
        pool_entry.config.response_timeout,
        client.request(upstream_req),
    )
    .await;
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            if let Some(client_fault) = fate.get() {
                backend_state.finish(false);
                fail!(client_fault);
            }
            backend_state.finish(true);
            let timed_out = is_timeout(&e);
            if e.is_connect() {
                pool_entry.state.connect_errors.increment(1);
            }
            tracing::debug!(upstream = %backend_entry.authority, error = ?e, "upstream request failed");
            if timed_out {
                pool_entry.state.timeouts.increment(1);
                fail!(ProxyError::UpstreamTimeout);
            }
            fail!(ProxyError::UpstreamConnect);
        }
        Err(_) => {
            backend_state.finish(true);
            pool_entry.state.timeouts.increment(1);
            fail!(ProxyError::UpstreamTimeout);
        }
    };
    pool_entry
        .state
        .latency
        .record(sent_at.elapsed().as_secs_f64());
    let status = resp.status();
    table.routes[route].counters[entry].count(status.as_u16());

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    strip_hop_by_hop(h, switching && upgrade);
    h.append(header::VIA, via);
    if let Some(cookie) = new_sticky.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, cookie);
    }

    let completion = Completion {
        table: Arc::clone(table),
        pool,
        backend,
        status: status.as_u16(),
        log,
    };
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            // A 101 to a request that asked for no upgrade is an upstream protocol error.
            completion.done(0, false);
            return Err((ProxyError::UpstreamConnect, None));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    let r = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    let bytes = r.map(|(_, down)| down).unwrap_or(0);
                    completion.done(bytes, true);
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
    Ok(resp.map(|b| Either::Left(ResponseBody::new(b, completion))))
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = s.source();
    }
    false
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

/// Value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for v in headers.get_all(header::COOKIE) {
        for pair in v.as_bytes().split(|b| *b == b';') {
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

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    v.as_bytes()
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop fields (RFC 9110 7.6.1): the fixed list and every field the Connection
/// header names. `Trailer` stays: it describes the message end to end, and hyper sends only
/// the trailer fields it announces. An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = h.get(header::CONNECTION) {
        if !conn.as_bytes().is_empty() {
            let named: Vec<HeaderName> = h
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(tokens)
                .filter(|t| {
                    let consumed = t.eq_ignore_ascii_case(b"close")
                        || t.eq_ignore_ascii_case(b"keep-alive")
                        || (keep_upgrade && t.eq_ignore_ascii_case(b"upgrade"));
                    !consumed
                })
                .filter_map(|t| HeaderName::from_bytes(t).ok())
                .collect();
            for name in named {
                h.remove(name);
            }
        }
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(name);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
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
    fn hop_by_hop_fields_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
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
        assert_eq!(cookie(&h, "nrdot_id"), Some(&b"abc"[..]));
        assert_eq!(cookie(&h, "nrdot"), None);
    }
}
