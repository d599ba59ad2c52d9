//! Rules about the request line itself (RFC 9112 2.3 and 3): which HTTP versions nrdot serves,
//! which request targets are well formed, and when an absolute-form target means the server as
//! a whole. Pure functions over the bytes a parser saw, so the native path and the observer of
//! the hyper path (`inspect`) decide alike.

use crate::error::ProxyError;

/// What an HTTP/1 request line's version, which the parser refused, asks of nrdot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineVersion {
    /// `HTTP/1.x` with x above 1: served as HTTP/1.1 (RFC 9110 6.2: a recipient SHOULD process
    /// a later minor version as the highest it implements). The minor digit is at this offset.
    NewerMinor(usize),
    /// Another major version (`HTTP/2.0`, `HTTP/3.0`, `HTTP/0.9` spelled out): 505.
    Unsupported,
    /// No HTTP-version at all (400), or the HTTP/2 connection preface (`PRI * HTTP/2.0`),
    /// which the HTTP/2 server takes: either way not for the HTTP/1 parser to answer.
    Invalid,
}

/// The version of the request line at the start of `buf` (after any empty lines, which RFC
/// 9112 2.2 lets a server skip).
pub(crate) fn line_version(buf: &[u8]) -> LineVersion {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    if rest.starts_with(b"PRI * HTTP/2.0") {
        return LineVersion::Invalid;
    }
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return LineVersion::Invalid;
    };
    let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
    let Some(sp) = memchr::memrchr(b' ', line) else {
        return LineVersion::Invalid;
    };
    // HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 2.3).
    match &line[sp + 1..] {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            LineVersion::NewerMinor(start + sp + 8)
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if *major != b'1' && major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            LineVersion::Unsupported
        }
        _ => LineVersion::Invalid,
    }
}

/// The checks an origin-form target gets before anything else: 414 past `max` bytes (RFC 9112
/// 3), 400 with a fragment.
pub(crate) fn check(target: &[u8], max: u64) -> Result<(), ProxyError> {
    if target.len() as u64 > max {
        return Err(ProxyError::UriTooLong);
    }
    if !fragment_free(target) {
        return Err(ProxyError::BadRequest);
    }
    Ok(())
}

/// Whether a request target is free of a fragment: `#` is not part of any request-target form
/// (RFC 9112 3.2); a client strips the fragment before sending, so one that arrives is an
/// invalid request line (400), not something to pass on or guess at.
pub(crate) fn fragment_free(target: &[u8]) -> bool {
    memchr::memchr(b'#', target).is_none()
}

/// Whether an absolute-form target's scheme is one a gateway serves (RFC 9112 3.2.2: the
/// `http` and `https` URI schemes); any other is a 400, not a request for `/`.
pub(crate) fn scheme_served(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

/// Whether `target` is an absolute-form URI with an empty path and no query: for OPTIONS that
/// asks about the server as a whole, as `*` does (RFC 9112 3.2.4), so nrdot answers it as it
/// answers `OPTIONS *` rather than forwarding a request for `/`.
pub(crate) fn options_for_server(method: &[u8], target: &[u8]) -> bool {
    if method != b"OPTIONS" {
        return false;
    }
    let Some(colon) = memchr::memmem::find(target, b"://") else {
        return false;
    };
    let authority = &target[colon + 3..];
    !authority.is_empty() && !authority.iter().any(|b| matches!(b, b'/' | b'?'))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn later_minor_versions_are_served_as_1_1_other_majors_are_505() {
        let v = |s: &[u8]| line_version(s);
        assert_eq!(v(b"GET / HTTP/1.2\r\n"), LineVersion::NewerMinor(13));
        assert_eq!(v(b"\r\nGET / HTTP/1.9\r\n"), LineVersion::NewerMinor(15));
        assert_eq!(v(b"GET / HTTP/2.0\r\n"), LineVersion::Unsupported);
        assert_eq!(v(b"GET / HTTP/3.0\n"), LineVersion::Unsupported);
        assert_eq!(v(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), LineVersion::Invalid);
        assert_eq!(v(b"GET / http/1.1\r\n"), LineVersion::Invalid);
        assert_eq!(v(b"GET / HTTP/1.10\r\n"), LineVersion::Invalid);
        assert_eq!(v(b"GET / HTTP/1.1\r\n"), LineVersion::Invalid);
        assert_eq!(v(b"GET /\r\n"), LineVersion::Invalid);
        assert_eq!(v(b"GET / HTTP/1.2"), LineVersion::Invalid);
        let buf = b"GET / HTTP/1.2\r\n";
        let LineVersion::NewerMinor(at) = v(buf) else {
            unreachable!()
        };
        assert_eq!(buf[at], b'2');
    }

    #[test]
    fn targets_with_fragments_and_other_schemes_are_refused() {
        assert!(fragment_free(b"/a?b=c"));
        assert!(!fragment_free(b"/a#top"));
        assert!(scheme_served("HTTP") && scheme_served("https"));
        assert!(!scheme_served("ftp"));
    }

    #[test]
    fn options_with_an_empty_absolute_path_asks_about_the_server() {
        assert!(options_for_server(b"OPTIONS", b"http://a"));
        assert!(options_for_server(b"OPTIONS", b"http://a:8080"));
        assert!(!options_for_server(b"OPTIONS", b"http://a/"));
        assert!(!options_for_server(b"OPTIONS", b"http://a?x"));
        assert!(!options_for_server(b"GET", b"http://a"));
        assert!(!options_for_server(b"OPTIONS", b"/"));
    }
}
