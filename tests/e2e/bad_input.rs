//! Malformed, ambiguous, oversize and slow requests, and failing upstreams: each gets the status
//! an nginx operator expects, a short answer with `Server: nrdot`, and never reaches an upstream.
use std::time::{Duration, Instant};

use nrdot_tests::{get, pool, pool_route, raw, send_blindly, Nrdot, Origin};
use tokio::io::AsyncWriteExt;

use crate::BIN;

fn one_pool(o: &Origin, limits: &str) -> String {
    format!("{limits}\n{}", pool_route(&[o.addr]))
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_never_reach_upstream() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o, "[limits]\nclient_max_body_size = \"1k\"\nmax_request_line = \"8k\"\nmax_header_size = \"16k\""));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL with TE", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("TE with CL", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("differing CLs", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(), 400),
        ("chunked twice in two fields", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("chunked twice in a list", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("invalid chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(), 400),
        ("invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(), 400),
        ("invalid header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  b\r\n\r\n".to_vec(), 400),
        ("missing host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        ("long request line", long_uri.into_bytes(), 414),
        ("huge header", huge_header.into_bytes(), 431),
        ("too many headers", many_headers.into_bytes(), 431),
        ("declared body over limit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        ("chunked body over limit", [&b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n"[..], &[b'x'; 2048][..], b"\r\n800\r\n", &[b'y'; 2048][..], b"\r\n0\r\n\r\n"].concat(), 413),
    ];
    for (name, bytes, want) in cases {
        let resp = raw(n.addr, &bytes, Duration::from_secs(3)).await;
        assert_eq!(status_of(&resp), want, "{name}: {resp:?}");
        assert!(resp.contains("server: nrdot"), "{name}: {resp:?}");
        assert!(resp.len() < 400, "{name}: long error answer {resp:?}");
        assert_eq!(o.hits(), 0, "{name} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_time_out_without_slowing_others() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &one_pool(
            &o,
            "[limits]\nclient_header_timeout = \"1s\"\nclient_body_timeout = \"1s\"",
        ),
    );
    // A slowloris head: starts, never finishes.
    let mut slow_head = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    slow_head
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .expect("write");
    // A body that stops after 3 of 10 bytes.
    let slow_body = tokio::spawn({
        let addr = n.addr;
        async move {
            raw(
                addr,
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
                Duration::from_secs(5),
            )
            .await
        }
    });
    let started = Instant::now();
    // Meanwhile everyone else is served at once.
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(get(&n.url("/"), &[]).await.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "a fast client waited {:?}",
            t.elapsed()
        );
    }
    let body_resp = slow_body.await.expect("task");
    assert_eq!(status_of(&body_resp), 408, "{body_resp}");
    // The slow head is cut off (hyper closes without a response) within the timeout plus slack.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(
        Duration::from_secs(4),
        tokio::io::AsyncReadExt::read(&mut slow_head, &mut buf),
    )
    .await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "slow head still open: {closed:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // And it is gone, not kept reading (a lingering close is for clients still sending a
    // request, not for one that timed out): more bytes meet a reset.
    let mut refused = false;
    for _ in 0..20 {
        if slow_head.write_all(b"x").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "a timed-out slow head is still read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_502_and_504() {
    let o = Origin::start("o").await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }; // dropped: nothing listens there any more
    let body = format!(
        "{}[[pool]]\nname = \"dead\"\nconnect_timeout = \"1s\"\n[[pool.server]]\naddress = \"{refused}\"\n[[pool]]\nname = \"slow\"\nresponse_timeout = \"300ms\"\n[[pool.server]]\naddress = \"{}\"\n[[route]]\nname = \"r\"\npool = \"o\"\n[[route]]\nname = \"dead\"\npath = \"/dead\"\npool = \"dead\"\n[[route]]\nname = \"slow\"\npath = \"/sleep\"\npool = \"slow\"\n",
        pool("o", &[o.addr]),
        o.addr
    );
    let n = Nrdot::start(BIN, "", &body);
    let r = get(&n.url("/dead"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("server"), "nrdot");
    assert_eq!(get(&n.url("/reset"), &[]).await.status, 502);
    let t = Instant::now();
    let r = get(&n.url("/sleep/3000"), &[]).await;
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        get(&n.url("/"), &[]).await.status,
        200,
        "healthy route still works"
    );
    // Error answers are counted.
    let text = n.metrics_text().await;
    for status in ["502", "504"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "nrdot_proxy_error_responses_total{{status=\"{status}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no {status} counter in {text}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_never_lets_a_body_become_a_request() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o, ""));
    // Each request carries another one where a server reading the framing differently from
    // nrdot would find it: whatever the answer, the origin must never see /smuggled.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cl = inner.len();
    // A chunked body that ends at once, the inner request after it, and a length covering both:
    // a server honouring Transfer-Encoding where nrdot honoured Content-Length (or the other
    // way round) would disagree about where the inner request is.
    let chunked = format!("0\r\n\r\n{inner}");
    let both = chunked.len();
    let cases: Vec<(&str, String)> = vec![
        ("xchunked with CL", format!("Transfer-Encoding: xchunked\r\nContent-Length: {cl}\r\n\r\n{inner}")),
        ("space before colon", format!("Transfer-Encoding : chunked\r\nContent-Length: {both}\r\n\r\n{chunked}")),
        ("chunked, identity", format!("Transfer-Encoding: chunked, identity\r\nContent-Length: {cl}\r\n\r\n{inner}")),
        ("tab before chunked", format!("Transfer-Encoding:\tchunked\r\nContent-Length: {both}\r\n\r\n{chunked}")),
        ("two TE fields", format!("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: {both}\r\n\r\n{chunked}")),
        ("chunked named in Connection", format!("Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\nContent-Length: {both}\r\n\r\n{chunked}")),
        ("length named in Connection", format!("Connection: content-length\r\nContent-Length: {cl}\r\n\r\n{inner}")),
        ("zero then length", format!("Content-Length: 0\r\nContent-Length: {cl}\r\n\r\n{inner}")),
        ("length list", format!("Content-Length: {cl}, {cl}\r\n\r\n{inner}")),
        ("signed length", format!("Content-Length: +{cl}\r\n\r\n{inner}")),
        ("length with a letter", format!("Content-Length: {cl}a\r\n\r\n{inner}")),
        ("HTTP/1.0 chunked", format!("Transfer-Encoding: chunked\r\nContent-Length: {both}\r\n\r\n{chunked}")),
    ];
    for (name, rest) in &cases {
        let version = if name.starts_with("HTTP/1.0") {
            "1.0"
        } else {
            "1.1"
        };
        let req = format!("POST /outer HTTP/{version}\r\nHost: a\r\n{rest}");
        let resp = raw(n.addr, req.as_bytes(), Duration::from_millis(500)).await;
        let status = status_of(&resp);
        assert!(
            status == 200 || status == 400 || status == 501,
            "{name}: {resp:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let paths = o.paths();
        assert!(
            !paths.iter().any(|p| p == "/smuggled"),
            "{name}: origin saw {paths:?}"
        );
    }
}

/// A client still sending a request nrdot refuses (a body over `client_max_body_size`, framing
/// it will not forward) gets its answer whole and can finish sending: nrdot half-closes and
/// reads on before closing (lingering close), instead of closing with unread bytes, which the
/// kernel turns into a reset that breaks the client's upload and can destroy the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_request_gets_the_answer_and_no_reset() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &one_pool(&o, "[limits]\nclient_max_body_size = \"20m\""),
    );
    // Bodies larger than the socket buffers on both ends can hold (several MiB on loopback), so
    // the client is still writing when the answer comes.
    for (name, head, len, want) in [
        (
            "body over the limit",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40000000\r\n\r\n",
            40_000_000,
            413,
        ),
        (
            "Content-Length and Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 16000000\r\nTransfer-Encoding: chunked\r\n\r\n",
            16_000_000,
            400,
        ),
    ] {
        let (sent, read) = send_blindly(n.addr, head.into(), Duration::ZERO, len).await;
        assert!(sent.is_ok(), "{name}: the upload was cut: {sent:?}");
        let answer = read.unwrap_or_else(|e| panic!("{name}: reading the answer failed: {e}"));
        assert_eq!(status_of(&answer), want, "{name}: {answer:?}");
    }
    assert_eq!(o.hits(), 0, "a refused request reached the upstream");
}

/// An upstream that answers an upload before reading it and closes (an application refusing
/// it): the client gets the upstream's answer, not a 502, and can finish its upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_answers_early_gets_the_upstreams_answer() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &one_pool(&o, "[limits]\nclient_max_body_size = \"20m\""),
    );
    // Streamed (over 64 KiB) and larger than the socket buffers: the upstream stops reading
    // and closes while nrdot is still sending.
    for _ in 0..3 {
        let head = "POST /status/413 HTTP/1.1\r\nHost: a\r\nContent-Length: 16000000\r\n\r\n";
        let (sent, read) = send_blindly(n.addr, head.into(), Duration::ZERO, 16_000_000).await;
        assert!(sent.is_ok(), "the upload was cut: {sent:?}");
        let answer = read.expect("the answer");
        assert_eq!(status_of(&answer), 413, "{answer:?}");
        assert!(
            answer.contains("x-origin: o"),
            "not the upstream's: {answer:?}"
        );
    }
}

/// The same through nrdot's own client, which sends a request it holds whole (a body up to
/// 64 KiB, or up to 1 MiB on a `retry_unsafe` route) with its head in one write: an upstream
/// with a small receive window answers after the head and resets, so the write fails partway
/// while the answer waits in the socket. The client gets the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_upload_answered_early_by_the_upstream_gets_the_answer() {
    use tokio::io::AsyncReadExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let upstream = socket.listen(16).expect("listen");
    let addr = upstream.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = upstream.accept().await {
            tokio::spawn(async move {
                // Read the head only, answer, and close on the unread body (a reset).
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = c
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "{}[[route]]\nname = \"r\"\npool = \"o\"\nretry_unsafe = true\n",
            pool("o", &[addr])
        ),
    );
    for _ in 0..3 {
        // Buffered whole (under 1 MiB) and more than the socket buffers hold.
        let body = "x".repeat(900_000);
        let req = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw(n.addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 413, "{answer:?}");
    }
}
