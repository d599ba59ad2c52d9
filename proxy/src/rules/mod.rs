//! The intermediary rules both downstream adapters apply, each written once: which fields are
//! hop-by-hop (RFC 9110 7.6.1), which upgrades may pass (7.8), how HTTP/2 cookie crumbs reach
//! an HTTP/1.1 origin (RFC 9113 8.2.3), when a request line is too long (RFC 9112 3), and
//! what a response without `Date` gets (RFC 9110 6.6.1). Pure functions over bytes and header
//! maps: no sockets, no tables.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::error::ProxyError;

pub(crate) mod retry;
pub(crate) mod route;
pub(crate) mod target;

/// Comma-separated tokens of a field value.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a field name equals `lower` (given in lower case), ignoring case.
pub(crate) fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// Fields an intermediary never forwards (RFC 9110 7.6.1), in either direction.
pub(crate) fn hop_by_hop(name: &str) -> bool {
    // By length first: this runs for every field of every message.
    match name.len() {
        2 => is(name, "te"),
        7 => is(name, "upgrade"),
        10 => is(name, "connection") || is(name, "keep-alive"),
        16 => is(name, "proxy-connection"),
        18 => is(name, "proxy-authenticate"),
        _ => false,
    }
}

/// Content-Length or Transfer-Encoding: never dropped, not even when a Connection field names
/// them, because the other side finds the message's end by them.
pub(crate) fn framing_field(name: &str) -> bool {
    is(name, "content-length") || is(name, "transfer-encoding")
}

/// The Connection fields of a message (up to four; more is refused as unusual).
#[derive(Default)]
pub(crate) struct ConnectionFields<'a> {
    values: [&'a [u8]; 4],
    n: usize,
    /// One of them says `close`.
    pub(crate) close: bool,
    /// One of them says `upgrade`.
    pub(crate) upgrade: bool,
    /// One of them says `keep-alive` (what an HTTP/1.0 client must say to keep the connection).
    pub(crate) keep_alive: bool,
    /// One of them names a field other than `close` or `keep-alive` (rare: then every field
    /// is checked against them).
    named: bool,
}

impl<'a> ConnectionFields<'a> {
    /// Adds a field; false when there are too many.
    pub(crate) fn push(&mut self, v: &'a [u8]) -> bool {
        if self.n == self.values.len() {
            return false;
        }
        self.values[self.n] = v;
        self.n += 1;
        for t in tokens(v) {
            if t.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if t.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.named = true;
                self.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        }
        true
    }

    /// Whether they name field `name` (which then is hop-by-hop). `keep-alive` is hop-by-hop
    /// anyway; a field called `close` is only checked for when that token was seen.
    pub(crate) fn names(&self, name: &str) -> bool {
        if !self.named {
            return self.close && is(name, "close");
        }
        self.values[..self.n]
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    }
}

/// How a request's body is framed upstream.
#[derive(Clone, Copy)]
pub(crate) enum BodyLength {
    /// As the client framed it with Content-Length, or no body. Transfer-Encoding never
    /// passes: the upstream connection is nrdot's, and its client frames a streamed body.
    AsSent,
    /// Held whole: the client's framing fields are replaced by this length.
    Is(usize),
}

/// What the intermediary adds to a request's fields, and what it needs to drop the rest.
pub(crate) struct Forwarding<'a> {
    /// The request's Connection tokens: the fields they name are hop-by-hop.
    pub connection: &'a ConnectionFields<'a>,
    /// The peer is a trusted proxy: its X-Forwarded-* are extended, not replaced.
    pub trusted: bool,
    /// The client's address as text.
    pub peer: &'a [u8],
    /// `http` or `https`.
    pub proto: &'a [u8],
    /// The Host the request is for, for X-Forwarded-Host.
    pub host: &'a [u8],
    /// An upgrade nrdot relays (WebSocket): `Upgrade` and `Connection: upgrade` go on.
    pub upgrade: Option<&'a [u8]>,
    pub length: BodyLength,
    /// The Via entry (`1.1 nrdot`).
    pub via: &'a [u8],
}

/// A request field, as either adapter holds it.
pub(crate) trait Field {
    fn name(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl Field for &httparse::Header<'_> {
    fn name(&self) -> &str {
        self.name
    }
    fn value(&self) -> &[u8] {
        self.value
    }
}

impl Field for (HeaderName, HeaderValue) {
    fn name(&self) -> &str {
        self.0.as_str()
    }
    fn value(&self) -> &[u8] {
        self.1.as_bytes()
    }
}

/// Where the forwarded fields go: bytes of an HTTP/1.1 head, or a header map.
pub(crate) trait FieldSink<F> {
    /// A client field that goes on unchanged.
    fn keep(&mut self, f: F);
    /// A field the intermediary adds.
    fn add(&mut self, name: &'static str, value: &[u8]);
}

/// Too many X-Forwarded-For fields from a trusted peer to keep.
#[derive(Debug)]
pub(crate) struct ChainTooLong;

/// Most X-Forwarded-For fields a trusted peer's request may carry.
const MAX_CHAIN: usize = 8;

/// The request fields an intermediary sends on (RFC 9110 7.6), written once for both
/// downstream adapters: hop-by-hop fields and those `Connection` names go (the body's framing
/// fields excepted: without them the upstream would read the body as a request of its own),
/// `Expect` goes (nrdot meets it: the upstream gets the body with the head), X-Forwarded-* are
/// replaced or, from a trusted peer, extended, and `Via`, the relayed upgrade and the body's
/// length are added.
pub(crate) fn forward_fields<F: Field>(
    fields: impl Iterator<Item = F>,
    w: &Forwarding,
    out: &mut impl FieldSink<F>,
) -> Result<(), ChainTooLong> {
    // A trusted peer's chain, joined; allocated only when there is one.
    let mut chain: Vec<u8> = Vec::new();
    let mut chained = 0;
    let (mut has_proto, mut has_fwd_host) = (false, false);
    let replace_length = !matches!(w.length, BodyLength::AsSent);
    for f in fields {
        let name = f.name();
        if hop_by_hop(name)
            || (w.connection.names(name) && !framing_field(name))
            || is(name, "expect")
            || is(name, "transfer-encoding")
            || (replace_length && is(name, "content-length"))
        {
            continue;
        }
        if is(name, "x-forwarded-for") {
            if w.trusted {
                if chained == MAX_CHAIN {
                    return Err(ChainTooLong);
                }
                chain.extend_from_slice(f.value());
                chain.extend_from_slice(b", ");
                chained += 1;
            }
            continue;
        }
        if is(name, "x-forwarded-proto") {
            if !w.trusted {
                continue;
            }
            has_proto = true;
        } else if is(name, "x-forwarded-host") {
            if !w.trusted {
                continue;
            }
            has_fwd_host = true;
        }
        out.keep(f);
    }
    if chained == 0 {
        out.add("x-forwarded-for", w.peer);
    } else {
        chain.extend_from_slice(w.peer);
        out.add("x-forwarded-for", &chain);
    }
    if !has_proto {
        out.add("x-forwarded-proto", w.proto);
    }
    if !has_fwd_host {
        out.add("x-forwarded-host", w.host);
    }
    if let Some(u) = w.upgrade {
        out.add("upgrade", u);
        out.add("connection", b"upgrade");
    }
    if let BodyLength::Is(n) = w.length {
        out.add("content-length", n.to_string().as_bytes());
    }
    out.add("via", w.via);
    Ok(())
}

/// Fields collected into a header map (for the hyper path).
impl FieldSink<(HeaderName, HeaderValue)> for HeaderMap {
    fn keep(&mut self, (name, value): (HeaderName, HeaderValue)) {
        self.append(name, value);
    }
    fn add(&mut self, name: &'static str, value: &[u8]) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.append(HeaderName::from_static(name), v);
        }
    }
}

/// Whether a request's `Upgrade` may reach an origin: only when every protocol it offers is
/// WebSocket (RFC 9110 7.8 lets an intermediary pass only the upgrades it can relay, and nrdot
/// relays WebSocket). Anything else, `h2c` above all, is dropped with its `Connection` token and
/// the request goes on as an ordinary one: an origin switched to cleartext HTTP/2 behind the
/// proxy would take requests the proxy never checked ("h2c smuggling").
pub(crate) fn upgrade_allowed(value: &[u8]) -> bool {
    let mut any = false;
    for t in tokens(value) {
        let name = t.split(|b| *b == b'/').next().unwrap_or(t);
        if !name.eq_ignore_ascii_case(b"websocket") {
            return false;
        }
        any = true;
    }
    any
}

/// What an intermediary does with a request's Max-Forwards (RFC 9110 7.6.2): it binds only
/// TRACE and OPTIONS, which a chain of proxies must not pass on forever.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hop {
    /// Forward as it is (another method, or no Max-Forwards).
    Forward,
    /// Forward with Max-Forwards set to this (the received value less one).
    Decrement(u64),
    /// The value is zero: nrdot is the final recipient and answers itself.
    Answer,
    /// Not a number: a malformed request.
    Invalid,
}

/// The Max-Forwards rule for `method` with the field's value, if it has one.
pub(crate) fn max_forwards(method: &str, value: Option<&[u8]>) -> Hop {
    if !hop_limited(method) {
        return Hop::Forward;
    }
    let Some(v) = value else {
        return Hop::Forward;
    };
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Hop::Invalid;
    }
    match v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')) {
        0 => Hop::Answer,
        n => Hop::Decrement(n - 1),
    }
}

/// Methods Max-Forwards applies to.
pub(crate) fn hop_limited(method: &str) -> bool {
    matches!(method, "TRACE" | "OPTIONS")
}

/// The form of a request target (RFC 9112 3.2), as far as the rules need it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// origin-form or absolute-form: a resource.
    Resource,
    /// `*`: the server as a whole.
    Asterisk,
    /// `host:port`.
    Authority,
}

/// The request forms a gateway serves (RFC 9110 9.3.6, RFC 9112 3.2 and 6.1): CONNECT is for
/// forward proxies (405); an asterisk-form target only goes with OPTIONS (`Ok(true)`: nrdot
/// answers for the server as a whole); a transfer coding other than a final chunked is not
/// understood (501), and chunked anywhere but last cannot be framed (400).
pub(crate) fn request_form(
    method: &str,
    target: Target,
    codings: impl Iterator<Item = impl AsRef<[u8]>>,
) -> Result<bool, ProxyError> {
    if method == "CONNECT" {
        return Err(ProxyError::MethodNotAllowed);
    }
    // Authority-form is CONNECT's alone (RFC 9112 3.2.3).
    let asterisk = match target {
        Target::Asterisk if method != "OPTIONS" => return Err(ProxyError::BadRequest),
        Target::Authority => return Err(ProxyError::BadRequest),
        t => t == Target::Asterisk,
    };
    let (mut count, mut last_chunked) = (0, false);
    for v in codings {
        for t in tokens(v.as_ref()) {
            count += 1;
            last_chunked = t.eq_ignore_ascii_case(b"chunked");
        }
    }
    match (count, last_chunked) {
        (0, _) | (1, true) => Ok(asterisk),
        // Another coding under the chunked framing: nrdot would pass on a body it does not
        // understand as if it were plain.
        (_, true) => Err(ProxyError::NotImplemented),
        // Chunked not last (or not at all): the body's end cannot be found (RFC 9112 6.3).
        (_, false) => Err(ProxyError::BadRequest),
    }
}

/// Whether an origin's status code is one a client can act on: RFC 9110 15 makes codes
/// outside 100..=599 invalid (libraries use 600-999 for their own errors); nrdot answers 502
/// rather than relay one.
pub(crate) fn status_valid(status: u16) -> bool {
    (100..=599).contains(&status)
}

/// Whether a response with `status` may carry Content-Length (RFC 9110 8.6: a sender MUST NOT
/// send it on 1xx or 204; RFC 9112 6.1: nor Transfer-Encoding). An origin's stray one is
/// dropped; a 304's stays (it describes the representation).
pub(crate) fn length_allowed(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204
}

/// Whether every field value of an HTTP/2 request is free of leading and trailing whitespace,
/// which RFC 9113 8.2.1 makes malformed (an HTTP/1 parser strips it as optional whitespace; the
/// h2 library refuses NUL, CR and LF but passes spaces on).
pub(crate) fn values_trimmed(h: &HeaderMap) -> bool {
    h.values().all(|v| {
        let b = v.as_bytes();
        !matches!(b.first(), Some(b' ' | b'\t')) && !matches!(b.last(), Some(b' ' | b'\t'))
    })
}

/// Joins HTTP/2 cookie crumbs into the one field HTTP/1.1 allows, with "; " (RFC 9113 8.2.3).
pub(crate) fn join_cookie_crumbs(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let joined = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

/// Every Connection field's tokens, as one list for [`ConnectionFields`] (a message may carry
/// any number of Connection fields).
pub(crate) fn connection_tokens(h: &HeaderMap) -> Vec<u8> {
    h.get_all(header::CONNECTION)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b","[..])
}

/// Removes hop-by-hop fields from a header map (RFC 9110 7.6.1), by the same rules the native
/// path applies to bytes: [`hop_by_hop`], every field the Connection tokens name except the
/// body's length, and Transfer-Encoding (hyper frames the body itself). `Trailer` stays: it
/// describes the message end to end. A relayed upgrade keeps `Upgrade` and gets
/// `Connection: upgrade`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let tokens = connection_tokens(h);
    let mut connection = ConnectionFields::default();
    connection.push(&tokens);
    let mut gone: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        let n = name.as_str();
        let hop = hop_by_hop(n)
            || (connection.names(n) && !framing_field(n))
            || is(n, "transfer-encoding");
        if hop && !(keep_upgrade && is(n, "upgrade")) {
            gone.push(name.clone());
        }
    }
    for name in gone {
        h.remove(name);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks for an upgrade nrdot relays: `Upgrade` with only WebSocket in it,
/// and `upgrade` among the Connection tokens.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(header::UPGRADE).iter();
    let allowed = match (upgrades.next(), upgrades.next()) {
        (Some(v), None) => upgrade_allowed(v.as_bytes()),
        _ => false,
    };
    allowed
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"upgrade")))
}

/// Adds `Date` to a response whose origin sent none.
pub(crate) fn add_date(h: &mut HeaderMap) {
    if !h.contains_key(header::DATE) {
        if let Ok(v) = HeaderValue::from_bytes(&crate::clock::http_date()) {
            h.insert(header::DATE, v);
        }
    }
}

pub(crate) fn via_value(v: Version) -> HeaderValue {
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
    fn max_forwards_binds_only_trace_and_options() {
        assert_eq!(max_forwards("GET", Some(b"0")), Hop::Forward);
        assert_eq!(max_forwards("OPTIONS", None), Hop::Forward);
        assert_eq!(max_forwards("OPTIONS", Some(b"0")), Hop::Answer);
        assert_eq!(max_forwards("TRACE", Some(b" 5 ")), Hop::Decrement(4));
        assert_eq!(max_forwards("TRACE", Some(b"-1")), Hop::Invalid);
        assert_eq!(max_forwards("OPTIONS", Some(b"")), Hop::Invalid);
    }

    #[test]
    fn request_forms_a_gateway_does_not_forward() {
        let none: [&[u8]; 0] = [];
        let (res, star, auth) = (Target::Resource, Target::Asterisk, Target::Authority);
        assert_eq!(request_form("GET", res, none.iter()), Ok(false));
        assert_eq!(request_form("OPTIONS", star, none.iter()), Ok(true));
        assert_eq!(
            request_form("GET", star, none.iter()),
            Err(ProxyError::BadRequest)
        );
        assert_eq!(
            request_form("GET", auth, none.iter()),
            Err(ProxyError::BadRequest)
        );
        assert_eq!(
            request_form("CONNECT", auth, none.iter()),
            Err(ProxyError::MethodNotAllowed)
        );
        let te = |v: &'static [u8]| request_form("POST", res, [v].into_iter());
        assert_eq!(te(b"chunked"), Ok(false));
        assert_eq!(te(b"gzip, chunked"), Err(ProxyError::NotImplemented));
        assert_eq!(te(b"chunked, gzip"), Err(ProxyError::BadRequest));
        assert_eq!(te(b"gzip"), Err(ProxyError::BadRequest));
    }

    #[test]
    fn only_websocket_upgrades_pass() {
        for ok in [
            &b"websocket"[..],
            b"WebSocket",
            b"websocket/13",
            b" websocket , websocket",
        ] {
            assert!(upgrade_allowed(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for no in [
            &b"h2c"[..],
            b"h2c, websocket",
            b"websocket, h2c",
            b"",
            b" , ",
            b"TLS/1.2",
        ] {
            assert!(!upgrade_allowed(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn http2_values_with_outer_whitespace_are_malformed() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("in side"));
        h.insert("x-b", HeaderValue::from_static(""));
        assert!(values_trimmed(&h));
        for bad in [" lead", "trail ", "\tx"] {
            let mut h = h.clone();
            h.insert("x-c", HeaderValue::from_static(bad));
            assert!(!values_trimmed(&h), "{bad:?}");
        }
    }

    #[test]
    fn cookie_crumbs_become_one_field() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookie_crumbs(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookie_crumbs(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
    }

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
    fn an_h2c_upgrade_is_not_one_nrdot_relays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&h));
    }

    /// The hyper path's use of the shared rewrite: a header map in, a header map out.
    fn forwarded(h: HeaderMap, trusted: bool) -> HeaderMap {
        let connection = ConnectionFields::default();
        let w = Forwarding {
            connection: &connection,
            trusted,
            peer: b"10.0.0.1",
            proto: b"http",
            host: b"example.com",
            upgrade: None,
            length: BodyLength::AsSent,
            via: b"1.1 nrdot",
        };
        let mut out = HeaderMap::new();
        let mut last = None;
        let fields = h.into_iter().filter_map(|(n, v)| {
            let n = n.or_else(|| last.clone())?;
            last = Some(n.clone());
            Some((n, v))
        });
        forward_fields(fields, &w, &mut out).expect("chain within the limit");
        out
    }

    #[test]
    fn forwarded_for_trusts_only_trusted_peers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        h.insert("x-forwarded-host", HeaderValue::from_static("forged"));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let untrusted = forwarded(h.clone(), false);
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.1");
        assert_eq!(untrusted["x-forwarded-host"], "example.com");
        assert_eq!(untrusted["via"], "1.1 nrdot");
        assert!(
            untrusted.get(header::EXPECT).is_none(),
            "Expect is met by nrdot"
        );
        assert_eq!(
            untrusted[header::CONTENT_LENGTH],
            "5",
            "the body's length goes on"
        );
        let trusted = forwarded(h, true);
        assert_eq!(trusted["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
        assert_eq!(trusted["x-forwarded-host"], "forged");
    }

    #[test]
    fn fields_named_by_connection_go_but_framing_fields_stay() {
        let mut connection = ConnectionFields::default();
        assert!(connection.push(b"keep-alive, X-Secret, Content-Length"));
        let w = Forwarding {
            connection: &connection,
            trusted: false,
            peer: b"10.0.0.1",
            proto: b"https",
            host: b"a",
            upgrade: Some(b"websocket"),
            length: BodyLength::Is(3),
            via: b"1.1 nrdot",
        };
        let raw = b"GET / HTTP/1.1\r\nX-Secret: 1\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\nX-Kept: 1\r\nTE: trailers\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut fields);
        req.parse(raw).expect("a head");
        let mut out = Vec::new();
        forward_fields(req.headers.iter(), &w, &mut out).expect("no chain");
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "X-Kept: 1\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\nx-forwarded-host: a\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 3\r\nvia: 1.1 nrdot\r\n"
        );
    }
}
