//! The upstream direction: what nrdot relays from an origin that answers in an older version,
//! misbehaves on purpose, or sends fields HTTP/2 cannot carry (RFC 9110 7.6.3, 15.2.2;
//! RFC 9112 5, 6.3; RFC 9113 8.2.2), to HTTP/1.1 and HTTP/2 clients.
use std::time::Duration;

use nrdot_tests::{
    h2_connect, h2_request, pool_route, raw, raw_h2, read_until, KeepAlive, Nrdot, Origin,
    RawOrigin, H2_GET_ECHO,
};

use crate::BIN;

/// RFC 9110 7.6.3: each Via entry names the protocol the message was received in. A request
/// that came over HTTP/2 goes upstream with `2.0 nrdot`; a response an HTTP/1.0 origin sent
/// reaches the client with `1.0 nrdot`, whichever protocol the client speaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_names_the_version_each_message_was_received_in() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    let (status, head, _) = c.get("/http10").await;
    assert_eq!(status, 200);
    assert!(head.contains("via: 1.0 nrdot"), "{head}");
    let (_, head, _) = c.get("/plain").await;
    assert!(head.contains("via: 1.1 nrdot"), "{head}");
    let mut h2 = h2_connect(n.addr).await;
    let (status, h, _) = h2_request(&mut h2, "GET", "/http10").await;
    assert_eq!(status, 200);
    assert_eq!(h["via"], "1.0 nrdot");
    let (_, h, _) = h2_request(&mut h2, "GET", "/plain").await;
    assert_eq!(
        h["via"], "1.1 nrdot",
        "the response came over HTTP/1.1, not 2"
    );
    // Request direction: the Via the origin sees is the client's protocol.
    let echo = Origin::start("echo").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[echo.addr]));
    let mut h2 = h2_connect(n.addr).await;
    let (_, _, body) = h2_request(&mut h2, "GET", "/echo").await;
    let body = String::from_utf8(body.expect("body")).expect("utf-8");
    assert!(body.contains("\"via\":[\"2.0 nrdot\"]"), "{body}");
    // A Via the client sent is kept, and nrdot's entry follows it.
    let resp = raw(
        n.addr,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nVia: 1.0 edge\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        resp.contains("\"via\":[\"1.0 edge\",\"1.1 nrdot\"]"),
        "{resp}"
    );
}

/// RFC 9112 2.2, 5, 5.2, 6.3 and RFC 9110 15, 15.2.2, the upstream direction: a response head
/// a client could read otherwise than nrdot (a NUL in a value, whitespace before the colon or
/// before the first field, obs-fold, a version other than HTTP/1.x, a Content-Length list, a
/// status outside 100-599) or a switch of protocols nobody asked for is not relayed: 502, to
/// HTTP/1.1 and HTTP/2 clients alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_a_client_could_misread_are_502() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let paths = [
        "/nul-field",
        "/space-colon",
        "/version-2",
        "/length-list",
        "/switch-unasked",
        "/obs-fold",
        "/space-first-field",
        "/status-600",
    ];
    let mut h2 = h2_connect(n.addr).await;
    for path in paths {
        let mut c = KeepAlive::connect(n.addr).await;
        let (status, _, _) = c.get(path).await;
        assert_eq!(status, 502, "HTTP/1.1 {path}");
        let (status, _, _) = h2_request(&mut h2, "GET", path).await;
        assert_eq!(status, 502, "HTTP/2 {path}");
    }
}

/// RFC 9113 8.2.2: an intermediary turning an HTTP/1.x response into HTTP/2 MUST remove the
/// connection-specific fields (Connection and every field it names, Keep-Alive,
/// Proxy-Connection, Transfer-Encoding, Upgrade), or the client would find the response
/// malformed. The rest, and the chunked body, arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_fields_never_reach_an_http2_client() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut h2 = h2_connect(n.addr).await;
    let (status, h, body) = h2_request(&mut h2, "GET", "/connection-specific").await;
    assert_eq!((status, body.as_deref()), (200, Ok(&b"ok"[..])));
    for gone in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "x-gone",
    ] {
        assert!(
            !h.contains_key(gone),
            "{gone} reached the HTTP/2 client: {h:?}"
        );
    }
    assert_eq!(h["x-stays"], "1");
    // The same over HTTP/1.1: hop-by-hop fields go, the framing stays for the client to read.
    let mut c = KeepAlive::connect(n.addr).await;
    c.send(b"GET /connection-specific HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let got = String::from_utf8_lossy(&c.read_through(b"0\r\n\r\n").await).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("\r\n\r\n2\r\nok\r\n0\r\n\r\n"), "{got}");
    let lower = got.to_lowercase();
    for gone in ["keep-alive", "proxy-connection", "upgrade:", "x-gone"] {
        assert!(!lower.contains(gone), "{gone}: {got}");
    }
}

/// RFC 9113 8.2.1: a field value MUST NOT start or end with whitespace, nor hold NUL, CR or
/// LF; a request with such a field is malformed and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_values_with_outer_whitespace_or_control_bytes_are_malformed() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let base = H2_GET_ECHO;
    for value in [" lead", "trail ", "\tlead", "a\0b", "a\rb", "a\nb"] {
        let mut fields = base.to_vec();
        fields.push(("x-a", value));
        let kind = raw_h2(n.addr, &fields, None).await;
        assert!(matches!(kind, 1 | 3 | 7), "{value:?}: frame {kind}");
    }
    assert_eq!(o.hits(), 0, "a malformed HTTP/2 request reached the origin");
    let mut fields = base.to_vec();
    fields.push(("x-a", "in side"));
    assert_eq!(raw_h2(n.addr, &fields, None).await, 1);
    assert_eq!(o.hits(), 1);
}

/// RFC 9112 6.1: a server MUST NOT send Transfer-Encoding on a 204 (nor Content-Length, RFC
/// 9110 8.6); an origin's stray one is dropped, and the 204 ends at its head, so the next
/// response on the connection is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transfer_encoding_goes_out_on_a_204() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    c.send(b"GET /no-content-chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let (status, head, after) = c.response_without_body().await;
    assert_eq!(status, 204);
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(after.is_empty(), "bytes after a 204 head: {after:?}");
    let (status, _, body) = c.get("/plain").await;
    assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
    let mut h2 = h2_connect(n.addr).await;
    let (status, h, body) = h2_request(&mut h2, "GET", "/no-content-chunked").await;
    assert_eq!((status, body.as_deref()), (204, Ok(&b""[..])));
    assert!(!h.contains_key("transfer-encoding"));
}

/// RFC 9112 6.3: a message whose connection closes before the indicated length arrived is
/// incomplete, and the recipient MUST close the connection. nrdot relays what came and then
/// closes the HTTP/1.1 client's connection, though the client asked to keep it, so the client
/// sees the body cut short instead of waiting for bytes that never come or reading a next
/// response as the rest. (HTTP/2: the stream is reset,
/// `native::an_upstream_body_cut_short_resets_only_that_http2_stream`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_body_cut_short_closes_the_http1_client_connection() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let started = std::time::Instant::now();
    let resp = raw(
        n.addr,
        b"GET /truncated HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the client connection stayed open after a cut body: {resp}"
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Content-Length: 10"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nabc"), "{resp}");
}

/// RFC 9110 15.2 and 10.1.1: a server MUST NOT send a 1xx to an HTTP/1.0 client, and MUST
/// ignore a 100-continue expectation in an HTTP/1.0 request. nrdot sends no `100 Continue`
/// to it (an HTTP/1.1 client that waits gets one,
/// `native::expect_100_continue_is_answered_before_the_body_and_not_forwarded`), and the
/// origin's own 1xx are never relayed (`native::informational_heads_are_dropped_and_the_final_response_relayed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_interim_response_reaches_an_http10_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut s = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    s.write_all(
        b"POST /plain HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .await
    .expect("head");
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(early.is_err(), "answered before the body: {early:?}");
    s.write_all(b"hi").await.expect("body");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") || got.starts_with("HTTP/1.0 200"),
        "{got}"
    );
    assert!(!got.contains(" 100 "), "{got}");
    // An HTTP/1.0 client of an origin that sends 103 Early Hints gets only the final response.
    let resp = raw(
        n.addr,
        b"GET /early-hints HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(!resp.contains(" 103 "), "{resp}");
    assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
}

/// RFC 6455 4.1, 4.2.2: the opening handshake passes through with every `Sec-WebSocket-*`
/// field, both ways (nrdot is no WebSocket endpoint: key, accept, subprotocol and extensions
/// are the origin's to check and choose), and after the 101 the bytes are the origin's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_passes_with_its_fields_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let origin = listener.local_addr().expect("addr");
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read_exact(&mut byte).await.is_err() {
                return;
            }
            head.push(byte[0]);
        }
        let _ = seen_tx.send(String::from_utf8_lossy(&head).to_lowercase());
        let _ = s
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\nframes")
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let n = Nrdot::start(BIN, "", &pool_route(&[origin]));
    let mut s = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate\r\nOrigin: http://a\r\n\r\n")
        .await
        .expect("write");
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx)
        .await
        .expect("origin saw the handshake")
        .expect("head");
    for field in [
        "upgrade: websocket",
        "connection: upgrade",
        "sec-websocket-version: 13",
        "sec-websocket-key: dghlihnhbxbszsbub25jzq==",
        "sec-websocket-protocol: chat, superchat",
        "sec-websocket-extensions: permessage-deflate",
        "origin: http://a",
    ] {
        assert!(
            seen.contains(field),
            "{field} did not reach the origin: {seen}"
        );
    }
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"frames").await;
    let got = String::from_utf8_lossy(&got).to_lowercase();
    assert!(got.starts_with("http/1.1 101 "), "{got}");
    for field in [
        "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
        "sec-websocket-protocol: chat",
        "sec-websocket-extensions: permessage-deflate",
    ] {
        assert!(
            got.contains(field),
            "{field} did not reach the client: {got}"
        );
    }
}
