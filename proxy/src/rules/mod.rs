//! The intermediary rules both downstream adapters apply, each written once: which fields are
//! hop-by-hop (RFC 9110 7.6.1), which upgrades may pass (7.8), how HTTP/2 cookie crumbs reach
//! an HTTP/1.1 origin (RFC 9113 8.2.3), when a request line is too long (RFC 9112 3), and
//! what a response without `Date` gets (RFC 9110 6.6.1). Pure functions over bytes and header
//! maps: no sockets, no tables.
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

pub(crate) mod retry;
pub(crate) mod route;

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

/// Whether the request line at the start of `buf` has a target longer than `max` (RFC 9112 3:
/// 414, not 431, which is for header fields, RFC 6585 5). Also true for a line not yet ended
/// whose target already is that long. Only called for heads that failed another check, so it
/// costs the common request nothing.
pub(crate) fn target_too_long(buf: &[u8], max: u64) -> bool {
    let line = match memchr::memchr(b'\n', buf) {
        Some(nl) => &buf[..nl],
        None => buf,
    };
    let Some(sp) = memchr::memchr(b' ', line) else {
        return false;
    };
    let rest = &line[sp + 1..];
    let target = match memchr::memchr(b' ', rest) {
        Some(end) => &rest[..end],
        None => rest,
    };
    target.len() as u64 > max
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

/// Removes hop-by-hop fields (RFC 9110 7.6.1): the fixed list and every field the Connection
/// header names. `Trailer` stays: it describes the message end to end, and hyper sends only
/// the trailer fields it announces. An upgrade keeps `Connection: upgrade` and `Upgrade`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = h.get(header::CONNECTION) {
        if !conn.as_bytes().is_empty() {
            let named: Vec<HeaderName> = h
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| tokens(v.as_bytes()))
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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// X-Forwarded-*: a trusted peer's chain is extended, anyone else's is replaced, so a client
/// cannot make an upstream believe a forged address.
pub(crate) fn forwarded_headers(
    h: &mut HeaderMap,
    trusted: bool,
    peer: &HeaderValue,
    proto: &HeaderValue,
) {
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
    fn a_long_target_is_found_whether_or_not_the_line_ended() {
        assert!(!target_too_long(b"GET /abc HTTP/1.1\r\nHost: a\r\n", 4));
        assert!(target_too_long(b"GET /abcd HTTP/1.1\r\n", 4));
        assert!(target_too_long(b"GET /abcdefgh", 4), "line not ended yet");
        assert!(!target_too_long(b"GET /a", 4));
        assert!(
            !target_too_long(b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaa\r\n", 4),
            "a long field is not a long target"
        );
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
}
