//! Intermediary rules written once in `proxy::rules` and checked on both downstream protocols
//! (the native HTTP/1.1 path, the hyper path an HTTP/1.1 connection is handed to, and HTTP/2):
//! only WebSocket upgrades are forwarded, HTTP/2 cookie crumbs reach an HTTP/1.1 origin as one
//! field, a request line over `max_request_line` is 414, and every response carries `Date`.
use std::time::Duration;

use nrdot_tests::{
    answers, h2_connect, h2_request, pool_route, raw, raw_h2, KeepAlive, Nrdot, Origin, RawOrigin,
    H2_GET_ECHO,
};

use crate::BIN;

/// An `Upgrade` other than `websocket` (h2c above all: a client that gets an origin to switch
/// to HTTP/2 behind the proxy talks to it unchecked, "h2c smuggling") is not forwarded, nor is
/// the `Connection` token or the `HTTP2-Settings` field that come with it. The test origin
/// answers 101 to any request with `Upgrade`, so a forwarded one would show as a switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_other_than_websocket_is_not_forwarded() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    // A GET (native path), a POST with a body (the hyper path), and a GET asking for both.
    for (what, req) in [
        ("GET", format!("GET /echo HTTP/1.1\r\nHost: a\r\n{h2c}Connection: close\r\n\r\n")),
        (
            "POST",
            format!("POST /echo HTTP/1.1\r\nHost: a\r\n{h2c}Content-Length: 2\r\nConnection: close\r\n\r\nhi"),
        ),
        (
            "GET h2c+websocket",
            "GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\nConnection: close\r\n\r\n".to_string(),
        ),
    ] {
        let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{what}: upgraded or refused: {resp}");
        let lower = resp.to_lowercase();
        for gone in ["\"upgrade\"", "\"http2-settings\"", "\"connection\""] {
            assert!(!lower.contains(gone), "{what}: {gone} reached the origin: {resp}");
        }
    }
    // WebSocket still switches, on both HTTP/1.1 paths.
    for req in [
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nExpect: x-other\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let resp = raw(n.addr, req.as_bytes(), Duration::from_millis(500)).await;
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    }
    // HTTP/2 cannot carry Upgrade at all (a connection-specific field, RFC 9113 8.2.2): its
    // client library refuses to send one, and its server refuses the stream; an ordinary
    // HTTP/2 request reaches the origin with no upgrade of its own.
    let mut h2 = h2_connect(n.addr).await;
    let (status, _, body) = h2_request(&mut h2, "GET", "/echo").await;
    assert_eq!(status, 200);
    let body = String::from_utf8(body.expect("body")).expect("utf-8");
    assert!(!body.contains("\"upgrade\""), "{body}");
}

/// RFC 9113 8.2.3: an HTTP/2 client may split Cookie into crumbs; before the request goes to
/// an HTTP/1.1 origin they are joined with "; " into one field (HTTP/1.1 allows only one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_are_joined_into_one_field() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut h2 = h2_connect(n.addr).await;
    for _ in 0..2 {
        let req = http::Request::builder()
            .uri("http://a/echo")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "c=3")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = h2.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        let e: serde_json::Value = serde_json::from_slice(&body).expect("json echo");
        assert_eq!(
            e["headers"]["cookie"],
            serde_json::json!(["a=1; b=2; c=3"]),
            "{e}"
        );
    }
}

/// RFC 9112 3 and RFC 6585 5: a request line over `max_request_line` is 414 URI Too Long (431
/// is for header fields), on both HTTP/1.1 paths and on HTTP/2, even when the line is also
/// longer than `max_header_size`. Nothing reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_line_over_max_request_line_is_414() {
    let o = Origin::start("o").await;
    let limits = "[limits]\nmax_request_line = \"1k\"\nmax_header_size = \"8k\"\n";
    let n = Nrdot::start(BIN, "", &format!("{limits}{}", pool_route(&[o.addr])));
    for len in [1500, 10_000, 40_000] {
        let path = format!("/{}", "a".repeat(len));
        for req in [
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
            format!("POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\nx-t: 1\r\n\r\n"),
        ] {
            let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(5)).await;
            assert!(
                resp.starts_with("HTTP/1.1 414"),
                "{len}: {}",
                &resp[..resp.len().min(200)]
            );
        }
        // HTTP/2: past the head limit, :path is a field like any other, and the HTTP/2
        // server's own header-list limit answers (431, or a GOAWAY for one far over it).
        if len < 20_000 {
            let mut h2 = h2_connect(n.addr).await;
            let (status, _, _) = h2_request(&mut h2, "GET", &path).await;
            if len < 8000 {
                assert_eq!(status, 414, "HTTP/2, {len}");
            } else {
                assert!(status == 414 || status == 431, "HTTP/2, {len}: {status}");
            }
        }
    }
    // On a connection the native path handed to the hyper path (its first request is chunked
    // with trailers), a head whose target alone overflows the head limit is 414 too.
    for len in [10_000, 40_000] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\nGET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(len)
        );
        let resp = raw(n.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{}",
            &resp[..resp.len().min(200)]
        );
        let second = resp.find("HTTP/1.1 4").map(|i| &resp[i..]).unwrap_or("");
        assert!(
            second.starts_with("HTTP/1.1 414"),
            "handed over, {len}: {}",
            &resp[..resp.len().min(400)]
        );
    }
    // A long path within the limit is served, and a long header is 431, not 414.
    let ok = raw(
        n.addr,
        format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "a".repeat(900)
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let big = raw(
        n.addr,
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "b".repeat(9000)
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    assert_eq!(
        o.hits(),
        3,
        "only the requests within the limits reached the origin (two handed over, one long path)"
    );
}

/// RFC 9110 6.6.1: an origin server with a clock must send Date; nrdot adds one to responses
/// whose origin sent none (as nginx does), and keeps the origin's own when it sent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_date_is_added_to_responses_whose_origin_sent_none() {
    let raw_origin = RawOrigin::start().await; // sends no Date
    let dated = Origin::start("dated").await; // hyper: sends Date
    let body = format!(
        "{}[[pool]]\nname = \"dated\"\n[[pool.server]]\naddress = \"{}\"\n[[route]]\nname = \"dated\"\npath = \"/dated\"\npool = \"dated\"\n",
        pool_route(&[raw_origin.addr]),
        dated.addr
    );
    let n = Nrdot::start(BIN, "", &body);
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut c = KeepAlive::connect(n.addr).await;
    for path in ["/", "/early-hints", "/same-length-twice", "/dated/x"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await;
        let (_, head, _) = c.response().await;
        let dates: Vec<&str> = head.lines().filter(|l| l.starts_with("date: ")).collect();
        assert_eq!(dates.len(), 1, "{path}: {head}");
        let when =
            httpdate::parse_http_date(&title_case(&dates[0]["date: ".len()..])).expect("HTTP date");
        let skew = when
            .duration_since(httpdate::parse_http_date(&now).expect("now"))
            .unwrap_or_default();
        assert!(skew < Duration::from_secs(30), "{path}: {head}");
    }
    // The hyper path (a chunked request with trailers) and HTTP/2.
    let resp = raw(
        n.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\nx-t: 1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(
        resp.to_lowercase().matches("\r\ndate: ").count(),
        1,
        "{resp}"
    );
    let mut h2 = h2_connect(n.addr).await;
    let (status, fields, _) = h2_request(&mut h2, "GET", "/").await;
    assert_eq!(status, 200);
    assert_eq!(fields.get_all("date").iter().count(), 1, "{fields:?}");
}

/// An HTTP date read back from a lower-cased head: `sun, 06 nov 1994 08:49:37 gmt` as sent.
fn title_case(date: &str) -> String {
    date.split(' ')
        .map(|w| match w {
            "gmt" => "GMT".to_string(),
            w => {
                let mut c = w.chars();
                c.next().map_or_else(String::new, |f| {
                    f.to_ascii_uppercase().to_string() + c.as_str()
                })
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// RFC 9110 7.6.2: a TRACE or OPTIONS request with Max-Forwards: 0 is answered by nrdot as the
/// final recipient and never forwarded; a larger value goes on decremented. Other methods
/// ignore the field. On HTTP/1.1 (the native path hands these rare requests over) and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_binds_trace_and_options() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let ask = |req: &'static str| raw(n.addr, req.as_bytes(), Duration::from_secs(5));
    let options0 =
        ask("OPTIONS /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n")
            .await;
    assert!(options0.starts_with("HTTP/1.1 200"), "{options0}");
    assert!(
        options0.to_lowercase().contains("\r\nallow: get"),
        "{options0}"
    );
    let trace0 =
        ask("TRACE /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n")
            .await;
    assert!(trace0.starts_with("HTTP/1.1 405"), "{trace0}");
    let bad =
        ask("OPTIONS /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: x\r\nConnection: close\r\n\r\n")
            .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert_eq!(o.hits(), 0, "a request out of hops reached the origin");
    let options5 =
        ask("OPTIONS /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\nConnection: close\r\n\r\n")
            .await;
    assert!(options5.contains("\"max-forwards\":[\"4\"]"), "{options5}");
    let get0 =
        ask("GET /echo HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n").await;
    assert!(get0.contains("\"max-forwards\":[\"0\"]"), "{get0}");
    let mut h2 = h2_connect(n.addr).await;
    for (hops, want) in [("0", 200), ("3", 200)] {
        let req = http::Request::builder()
            .method("OPTIONS")
            .uri("http://a/echo")
            .header("max-forwards", hops)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = h2.send_request(req).await.expect("response");
        assert_eq!(resp.status(), want);
    }
    assert_eq!(
        o.hits(),
        3,
        "OPTIONS 5, GET 0 and HTTP/2 OPTIONS 3 reached the origin"
    );
}

/// RFC 9110 8.6, 15.3.5, 15.4.5 and RFC 9112 6.3, from a misbehaving origin: a 204 ends at its
/// head and carries no Content-Length to the client (a sender MUST NOT send one); a 304 ends at
/// its head (its Content-Length describes the representation and may stay) and bytes the origin
/// sent after it are not relayed; HEAD gets no body. The client's connection stays usable, on
/// the native path, on a handed-over connection and over HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_on_204_304_and_head_whatever_the_origin_sends() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    // Native path, then the same requests after a hand-over on one connection.
    let handover =
        "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nx-t: 1\r\n\r\n";
    for prefix in ["", handover] {
        let mut c = KeepAlive::connect(n.addr).await;
        if !prefix.is_empty() {
            c.send(prefix.as_bytes()).await;
            let (status, _, _) = c.response().await;
            assert_eq!(status, 200);
        }
        c.send(b"GET /no-content-length HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let (status, head, body) = c.response_without_body().await;
        assert_eq!(status, 204, "{head}");
        assert!(
            !head.contains("content-length"),
            "a 204 with a length: {head}"
        );
        assert!(body.is_empty());
        c.send(b"GET /not-modified-body HTTP/1.1\r\nHost: a\r\n\r\n")
            .await;
        let (status, head, body) = c.response_without_body().await;
        assert_eq!(status, 304, "{head}");
        assert!(body.is_empty(), "a body after a 304 was relayed");
        c.send(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let (status, head, _) = c.response_without_body().await;
        assert_eq!(status, 200);
        assert!(head.contains("content-length: 5"), "{head}");
        // The connection is still in step: the next answer is the next request's.
        let (status, _, body) = c.get("/").await;
        assert_eq!((status, &body[..]), (200, &b"hi"[..]), "prefix {prefix:?}");
    }
    let mut h2 = h2_connect(n.addr).await;
    let (status, fields, body) = h2_request(&mut h2, "GET", "/no-content-length").await;
    assert_eq!(status, 204);
    assert!(fields.get("content-length").is_none(), "{fields:?}");
    assert_eq!(body.expect("body"), b"");
    let (status, _, body) = h2_request(&mut h2, "GET", "/not-modified-body").await;
    assert_eq!((status, body.expect("body")), (304, Vec::new()));
}

/// Request forms and methods a gateway does not serve by forwarding (RFC 9110 9.3.6, RFC 9112
/// 3.2.3, 3.2.4, 6.1, 7): CONNECT gets 405 (nrdot is not a forward proxy); an asterisk-form
/// target is only for OPTIONS, answered by nrdot for the server as a whole; a transfer coding
/// other than chunked is 501 (not understood), and chunked not last is 400. None reaches the
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_asterisk_form_and_unknown_transfer_codings_are_answered_by_nrdot() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let cases = [
        ("CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "405"),
        ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "200"),
        ("GET *", "GET * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "400"),
        (
            "GET authority-form",
            "GET a:80 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "gzip, chunked",
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "501",
        ),
        (
            "chunked, gzip",
            "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n0\r\n\r\n",
            "400",
        ),
    ];
    answers(n.addr, &cases).await;
    assert_eq!(
        o.hits(),
        0,
        "a request nrdot must answer itself reached the origin"
    );
}

/// RFC 9113 8.3.1: an HTTP/2 request whose Host names another authority than `:authority` is
/// malformed (routing by one and forwarding the other would let a client reach a route it was
/// not routed to): 400. The same Host is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_must_match_authority() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut h2 = h2_connect(n.addr).await;
    for (host, want) in [("a", 200), ("A:80", 200), ("b", 400)] {
        let req = http::Request::builder()
            .uri("http://a:80/echo")
            .header("host", host)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let resp = h2.send_request(req).await.expect("response");
        assert_eq!(resp.status(), want, "Host {host} with :authority a:80");
    }
    assert_eq!(o.hits(), 2);
}

/// RFC 9112 2.2: message parsing robustness. A bare CR in a field and whitespace between the
/// request line and the first field MUST be rejected (or handled without processing them);
/// empty lines before a request line SHOULD be ignored; bare LF line ends MAY be accepted.
/// nrdot rejects the first two with 400 and never forwards them, and accepts the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_parsing_robustness() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "bare CR in a value",
            &b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\nConnection: close\r\n\r\n"[..],
            "400",
        ),
        (
            "whitespace before the first field",
            b"GET / HTTP/1.1\r\n Host: a\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "whitespace after a field name",
            b"GET / HTTP/1.1\r\nHost : a\r\nConnection: close\r\n\r\n",
            "400",
        ),
        (
            "empty lines before the request",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "200",
        ),
        (
            "bare LF line ends",
            b"GET / HTTP/1.1\nHost: a\nConnection: close\n\n",
            "200",
        ),
    ];
    answers(n.addr, &cases).await;
    assert_eq!(
        o.hits(),
        2,
        "only the two well-formed requests reached the origin"
    );
}

/// RFC 9113 8.1, 8.2.1, 8.2.2, 8.3, 8.5: malformed HTTP/2 requests (connection-specific
/// fields, `te` other than `trailers`, upper-case names, a body that disagrees with its
/// content-length, unknown, repeated, misplaced or missing pseudo-headers, no authority at all,
/// an extended CONNECT nrdot never offered) are refused (stream reset, or nrdot's 400) and
/// never reach an origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_never_reach_an_origin() {
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let base = H2_GET_ECHO;
    let with = |extra: (&'static str, &'static str)| {
        let mut f = base.to_vec();
        f.push(extra);
        f
    };
    for (what, fields) in [
        ("connection", with(("connection", "keep-alive"))),
        ("transfer-encoding", with(("transfer-encoding", "chunked"))),
        ("te: gzip", with(("te", "gzip"))),
        ("upper-case name", with(("X-Upper", "1"))),
        // RFC 9113 8.3: pseudo-header fields.
        ("unknown pseudo-header", with((":foo", "1"))),
        ("a response pseudo-header", with((":status", "200"))),
        ("a second :method", with((":method", "POST"))),
        (
            "a pseudo-header after a field",
            vec![
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "http"),
                (":path", "/echo"),
                (":authority", "a"),
            ],
        ),
        (
            "no :path",
            vec![(":method", "GET"), (":scheme", "http"), (":authority", "a")],
        ),
        (
            "an empty :path",
            vec![
                (":method", "GET"),
                (":scheme", "http"),
                (":path", ""),
                (":authority", "a"),
            ],
        ),
        (
            "no :authority and no Host",
            vec![(":method", "GET"), (":scheme", "http"), (":path", "/echo")],
        ),
        // RFC 9113 8.5, RFC 8441: nrdot does not offer extended CONNECT.
        (
            "extended CONNECT",
            vec![
                (":method", "CONNECT"),
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/ws"),
                (":authority", "a"),
            ],
        ),
    ] {
        let kind = raw_h2(n.addr, &fields, None).await;
        assert!(
            kind == RST_STREAM || kind == 7 || kind == HEADERS,
            "{what}: frame type {kind}"
        );
    }
    let post = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/echo"),
        (":authority", "a"),
        ("content-length", "5"),
    ];
    let kind = raw_h2(n.addr, &post, Some(b"hi")).await;
    assert!(
        kind == RST_STREAM || kind == 7 || kind == HEADERS,
        "short body: frame type {kind}"
    );
    assert_eq!(o.hits(), 0, "a malformed HTTP/2 request reached the origin");
    // The same client, well-formed: answered by the origin (the raw client itself works).
    let kind = raw_h2(n.addr, &with(("te", "trailers")), None).await;
    assert_eq!(kind, HEADERS);
    assert_eq!(o.hits(), 1);
}
