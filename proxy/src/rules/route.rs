//! The route decision, written once for both downstream adapters: the host a request is
//! for (RFC 9112 3.2, RFC 9113 8.3.1), the split (override, sticky key, weighted sequence), the
//! pool's hash key, and the answers nrdot gives without an upstream (HTTPS redirect).
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use nrdot_config::split::stable_hash;
use nrdot_config::{HashKey, RouteTable, Sticky};

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

impl Decision {
    /// The route and split entry, as the table counts responses by them.
    pub(crate) fn target(&self) -> nrdot_config::table::Target {
        nrdot_config::table::Target {
            route: self.route,
            entry: self.entry,
        }
    }
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
pub(crate) fn redirect_port(table: &RouteTable, bound: Option<u16>) -> Option<u16> {
    match table.https_port {
        Some(0) | None => bound,
        p => p,
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

/// The host a request is for: lower case, without port. `None` when missing or malformed
/// (HTTP/1.1 requires exactly one Host header, RFC 9112 3.2).
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<String> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let from_header = hosts.next();
    if hosts.next().is_some() {
        return None;
    }
    let raw: &str = match (req.uri().authority(), from_header) {
        // HTTP/2 with both: they must name the same host (RFC 9113 8.3.1), or the request
        // would be routed by one and reach the upstream with the other.
        (Some(a), Some(h)) if req.version() == Version::HTTP_2 => {
            let host = host_of(a.as_str())?;
            return (host_of(h.to_str().ok()?)? == host).then_some(host);
        }
        (Some(a), _) => a.as_str(),
        (None, Some(h)) => h.to_str().ok()?,
        // HTTP/1.0 predates Host: such requests match routes without a host.
        (None, None) if req.version() == Version::HTTP_10 => return Some(String::new()),
        (None, None) => return None,
    };
    host_of(raw)
}

/// A Host value (or authority) as routing wants it: lower case, without port; `None` when
/// malformed (RFC 9112 3.2: a Host with an invalid value is a 400). `uri-host [":" port]`: a
/// bracketed IPv6 literal or a name of letters, digits, `.`, `-` and `_`, and a port of digits
/// only (RFC 3986 3.2.3); `a:x`, `a b` or `[::1]junk` are not hosts.
pub(crate) fn host_of(raw: &str) -> Option<String> {
    let (host, rest, literal) = match raw.strip_prefix('[') {
        Some(r) => {
            let end = r.find(']')? + 2;
            (&raw[..end], &raw[end..], true)
        }
        None => match raw.find(':') {
            Some(i) => (&raw[..i], &raw[i..], false),
            None => (raw, "", false),
        },
    };
    let port_ok = rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if literal {
        host.len() > 2
            && host[1..host.len() - 1]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    (port_ok && name_ok).then(|| host.to_ascii_lowercase())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_names_or_bracketed_literals_with_a_numeric_port() {
        assert_eq!(
            host_of("Shop.Example:8080").as_deref(),
            Some("shop.example")
        );
        assert_eq!(host_of("a:").as_deref(), Some("a"));
        assert_eq!(host_of("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(host_of("[2001:DB8::1]").as_deref(), Some("[2001:db8::1]"));
        for bad in [
            "a:x",
            "a b",
            "u@a",
            "",
            ":80",
            "[::1]junk",
            "[]",
            "[::1",
            "a:80:90",
            "a#b",
        ] {
            assert_eq!(host_of(bad), None, "{bad:?}");
        }
    }

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
