//! The request line and Host as a gateway must read them (RFC 9110 6.2, 7.2; RFC 9112 2.3, 3,
//! 3.2; RFC 9113 8.3.1): which versions are served, which targets are well formed, which Host
//! values are, and what an absolute-form target turns into. Each case is sent on the native
//! HTTP/1.1 path and, where the hyper path can see it, on a connection already handed to it
//! (a chunked request first), and over HTTP/2 where the rule has an HTTP/2 form.
use nrdot_tests::{answers, pool_route, raw, raw_h2, Nrdot, Origin};
use std::time::Duration;

use crate::BIN;

/// A chunked POST that the native path hands to the hyper path, so the request after it on
/// the same connection is parsed by hyper.
const HANDED: &str =
    "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// The status of the second answer on a connection that starts with [`HANDED`].
async fn after_handover(addr: std::net::SocketAddr, req: &str) -> String {
    let resp = raw(
        addr,
        format!("{HANDED}{req}").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    let second = resp.match_indices("HTTP/1.1 ").nth(1).map(|(i, _)| i);
    second.map_or(resp.clone(), |i| resp[i..].to_string())
}

/// RFC 9110 6.2, RFC 9112 2.3: an HTTP/1 minor version above 1 is served as HTTP/1.1 (SHOULD);
/// another major version in an HTTP/1 request line is 505; a version not spelled
/// `HTTP/d.d` (the name is case-sensitive) is an invalid request line, 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_minor_versions_are_served_as_http11_other_majors_are_505() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let close = "Host: a\r\nConnection: close\r\n\r\n";
    let cases = [
        ("HTTP/1.2", format!("GET /v12 HTTP/1.2\r\n{close}"), "200"),
        ("HTTP/1.9", format!("GET /v19 HTTP/1.9\r\n{close}"), "200"),
        ("HTTP/2.0", format!("GET /v2 HTTP/2.0\r\n{close}"), "505"),
        ("HTTP/3.0", format!("GET /v3 HTTP/3.0\r\n{close}"), "505"),
        (
            "http/1.1",
            format!("GET /lower HTTP/1.1\r\n{close}").replace("HTTP/1.1", "http/1.1"),
            "400",
        ),
        (
            "HTTP/1.10",
            format!("GET /long HTTP/1.10\r\n{close}"),
            "400",
        ),
    ];
    answers(n.addr, &cases).await;
    assert_eq!(
        o.paths(),
        ["/v12", "/v19"],
        "only the HTTP/1.x requests went on"
    );
    // What went upstream is an HTTP/1.1 request that says it came in as 1.1 (Via).
    let resp = raw(
        n.addr,
        format!("GET /echo HTTP/1.2\r\n{close}").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.contains("1.1 nrdot"), "{resp}");
}

/// RFC 9112 3.2: no request-target form has a fragment (a client strips it). One that arrives
/// is an invalid request line: 400 on both HTTP/1 paths, never forwarded. (HTTP/2: the `http`
/// library drops a `:path` fragment before nrdot sees it, so the request goes on without it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_a_fragment_is_400_on_both_http1_paths() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let req = "GET /page#top HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    answers(n.addr, &[("native", req, "400")]).await;
    let second = after_handover(n.addr, req).await;
    assert!(second.starts_with("HTTP/1.1 400"), "handed over: {second}");
    assert_eq!(o.paths(), ["/first"], "a fragment reached the origin");
}

/// RFC 9112 3.2: a Host field with an invalid value MUST get 400 (as a missing one in
/// HTTP/1.1, or two). `uri-host [":" port]`, where port is digits: `a:x`, `a b`, userinfo, an
/// unclosed IPv6 literal are all invalid; case and a port are fine; HTTP/1.0 may omit Host.
/// The same holds for HTTP/2's `:authority` (RFC 9113 8.3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_host_values_are_400_on_every_path() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let req = |host: &str| format!("GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let bad = ["a:x", "a b", "u@a", "[::1", "[::1]x", "a:80:90", ""];
    let mut cases: Vec<(&str, String, &str)> = bad.iter().map(|h| (*h, req(h), "400")).collect();
    cases.push(("A:8080", req("A:8080"), "200"));
    cases.push(("[::1]:80", req("[::1]:80"), "200"));
    cases.push((
        "HTTP/1.0 without Host",
        "GET /h HTTP/1.0\r\n\r\n".into(),
        "200",
    ));
    for (what, r, want) in &cases {
        let resp = raw(n.addr, r.as_bytes(), Duration::from_secs(3)).await;
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {want}"))
                || resp.starts_with(&format!("HTTP/1.0 {want}")),
            "{what}: {resp}"
        );
        if *want == "400" {
            let second = after_handover(n.addr, r).await;
            assert!(
                second.starts_with("HTTP/1.1 400"),
                "{what}, handed over: {second}"
            );
        }
    }
    // HTTP/2: the same authorities as :authority.
    for authority in ["a:x", "u@a"] {
        let fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/h"),
            (":authority", authority),
        ];
        let kind = raw_h2(n.addr, &fields, None).await;
        // RST_STREAM (3), GOAWAY (7), or HEADERS (1) with nrdot's 400: never forwarded.
        assert!(
            matches!(kind, 1 | 3 | 7),
            ":authority {authority}: frame {kind}"
        );
    }
    let forwarded = o.paths().len();
    let handed = bad.len(); // each handed-over case forwarded its POST /first
    assert_eq!(forwarded, 3 + handed, "{:?}", o.paths());
    assert!(o.paths().iter().all(|p| p == "/h" || p == "/first"));
}

/// RFC 9112 3.2.1, 3.2.2, 3.2.4: an absolute-form target goes upstream in origin-form, with
/// `/` for an empty path (also before a query); only `http` and `https` are served (a gateway
/// has no other scheme: 400); userinfo is an error (RFC 9110 4.2.4). OPTIONS with an empty
/// path asks about the server as a whole, as `OPTIONS *` does: nrdot answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_go_upstream_in_origin_form() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let req =
        |m: &str, t: &str| format!("{m} {t} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let cases = [
        ("empty path", req("GET", "http://a"), "200"),
        ("empty path with a query", req("GET", "http://a?q=1"), "200"),
        (
            "OPTIONS with an empty path",
            req("OPTIONS", "http://a"),
            "200",
        ),
        ("OPTIONS with /", req("OPTIONS", "http://a/opt"), "200"),
        ("ftp", req("GET", "ftp://a/f"), "400"),
        ("userinfo", req("GET", "http://u@a/u"), "400"),
    ];
    answers(n.addr, &cases).await;
    assert_eq!(o.paths(), ["/", "/", "/opt"]);
    let resp = raw(
        n.addr,
        req("GET", "http://a?q=1").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(resp.contains("\"query\":\"q=1\""), "{resp}");
    let resp = raw(
        n.addr,
        req("OPTIONS", "http://a:80").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        resp.to_lowercase().contains("allow: "),
        "answered by nrdot: {resp}"
    );
    assert_eq!(o.paths().len(), 4);
    // On a handed-over connection too.
    let second = after_handover(n.addr, &req("OPTIONS", "http://a")).await;
    assert!(second.to_lowercase().contains("allow: "), "{second}");
    assert_eq!(o.paths().len(), 5, "only the POST before it went on");
}

/// RFC 9110 8.6 and RFC 9112 7.1: a recipient MUST anticipate large numerals in Content-Length
/// and chunk sizes and not let them overflow. A length past any integer, or a chunk size past
/// 64 bits, is 400; a length that fits but exceeds `client_max_body_size` is 413, at once,
/// without waiting for the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_lengths_too_large_for_an_integer_are_refused() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let post = |field: &str| {
        format!("POST /big HTTP/1.1\r\nHost: a\r\n{field}\r\nConnection: close\r\n\r\nhi")
    };
    let cases = [
        (
            "a length past u64",
            post("Content-Length: 99999999999999999999999"),
            "400",
        ),
        (
            "u64::MAX",
            post("Content-Length: 18446744073709551615"),
            "413",
        ),
        (
            "over the limit",
            post("Content-Length: 1099511627776"),
            "413",
        ),
        (
            "a chunk size past u64",
            post("Transfer-Encoding: chunked")
                .replace("\r\n\r\nhi", "\r\n\r\n1ffffffffffffffff\r\nhi\r\n0\r\n\r\n"),
            "400",
        ),
    ];
    answers(n.addr, &cases).await;
    assert_eq!(o.hits(), 0);
}

/// RFC 9110 7.8: Upgrade is hop-by-hop and needs the `upgrade` connection option; a server
/// MUST ignore Upgrade in an HTTP/1.0 request. Either way the request goes on as an ordinary
/// one, without Upgrade (the test origin would switch protocols if it saw one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_ignored_in_http10_and_without_the_connection_option() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let ws = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for (what, req) in [
        (
            "HTTP/1.0",
            format!("GET /echo HTTP/1.0\r\nHost: a\r\nConnection: Upgrade\r\n{ws}\r\n"),
        ),
        (
            "no Connection: upgrade",
            format!("GET /echo HTTP/1.1\r\nHost: a\r\n{ws}Connection: close\r\n\r\n"),
        ),
    ] {
        let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(3)).await;
        assert!(resp.contains(" 200 OK"), "{what}: {resp}");
        assert!(
            !resp.to_lowercase().contains("\"upgrade\""),
            "{what}: {resp}"
        );
    }
    assert_eq!(o.hits(), 2);
}

/// RFC 9112 2.2, 3, 6.1: a request line or head outside the grammar SHOULD get 400 and a
/// close, never a guess: two spaces, a method that is no token, control bytes or a space in the
/// target, an HTTP/0.9 line without a version; an HTTP/1.0 request with Transfer-Encoding has
/// faulty framing whatever else it says (MUST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_outside_the_grammar_are_400() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let rest = "Host: a\r\nConnection: close\r\n\r\n";
    let cases = [
        ("two spaces", format!("GET  /a HTTP/1.1\r\n{rest}")),
        ("method not a token", format!("G(T /a HTTP/1.1\r\n{rest}")),
        (
            "control byte in the target",
            format!("GET /a\x01b HTTP/1.1\r\n{rest}"),
        ),
        (
            "space in the target",
            format!("GET /a b HTTP/1.1\r\n{rest}"),
        ),
        ("no version", format!("GET /a\r\n{rest}")),
        (
            "HTTP/1.0 with Transfer-Encoding",
            "POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                .into(),
        ),
    ];
    let cases: Vec<(&str, String, &str)> = cases.into_iter().map(|(w, r)| (w, r, "400")).collect();
    answers(n.addr, &cases).await;
    assert_eq!(o.hits(), 0);
}
