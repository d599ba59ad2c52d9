//! The native HTTP/1.1 path: pipelining, hand-over to the hyper path in the middle of a
//! connection, response framings it must follow itself (chunked with trailers, until close,
//! informational heads), and upstream keep-alive connections the server closed while idle.
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use nrdot_tests::{
    big_chunk, h2_connect, h2_request, h2_send, pool, pool_route, pool_route_with, raw, read_until,
    send_blindly, Fnv, KeepAlive, Nrdot, Origin, RawOrigin,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BIN;

/// A raw origin, nrdot in front of it (with `limits` prepended to the config), and one client
/// connection to nrdot.
async fn through_nrdot(limits: &str) -> (RawOrigin, Nrdot, KeepAlive) {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &format!("{limits}{}", pool_route(&[o.addr])));
    let c = KeepAlive::connect(n.addr).await;
    (o, n, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_then_a_body_hand_over_to_the_full_path_on_one_connection() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    // Two requests in one write: answered in order.
    c.send(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    for path in ["/one", "/two"] {
        let (status, _, body) = c.response().await;
        assert_eq!(status, 200);
        let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(e["path"], path);
    }
    // A chunked body with trailers: the connection moves to the hyper path, which keeps
    // serving it.
    c.send(b"POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n")
        .await;
    let (status, _, body) = c.response().await;
    assert_eq!(status, 200);
    let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (e["path"].as_str(), e["body_len"].as_u64()),
        (Some("/three"), Some(5))
    );
    let (status, _, body) = c.get("/four").await;
    assert_eq!(status, 200);
    let e: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(e["path"], "/four");
    assert_eq!(o.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_are_relayed_with_trailers_and_the_connection_stays_usable() {
    let (o, _n, mut c) = through_nrdot("").await;
    c.send(b"GET /chunked HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        .await;
    let got = c.read_through(b"0\r\nx-t: 1\r\n\r\n").await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(
        text.contains("\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"),
        "{text}"
    );
    // The end of the chunked body was found: the next request on the connection works, and
    // the upstream connection was reused for it.
    let (status, _, body) = c.get("/plain").await;
    assert_eq!((status, &body[..]), (200, &b"hi"[..]));
    assert_eq!(o.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_responses_end_the_client_connection() {
    let (_o, _n, mut c) = through_nrdot("").await;
    c.send(b"GET /until-close HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let (status, head, body) = c.response().await;
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(&body[..], b"until close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_heads_are_dropped_and_the_final_response_relayed() {
    let (_o, _n, mut c) = through_nrdot("").await;
    let (status, _, body) = c.get("/early-hints").await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_while_idle_is_replaced_without_an_error() {
    let (o, _n, mut c) = through_nrdot("").await;
    for _ in 0..5 {
        // The origin closes each connection after answering, without saying so.
        let (status, _, body) = c.get("/then-close").await;
        assert_eq!((status, &body[..]), (200, &b"bye!"[..]));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(o.connections.load(Ordering::SeqCst), 5);
}

/// A pooled upstream connection is reused while fresh and closed once idle past the pool's
/// `keepalive_idle_timeout` (kept below the upstream's own keep-alive time, so nrdot never
/// sends on a connection the server is about to close). Ages are read from the worker's
/// cached clock: this is what shows the cache moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_close_after_keepalive_idle_timeout() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &pool_route_with("keepalive_idle_timeout = \"1s\"\n", &[o.addr]),
    );
    // One client connection: one worker, one pool.
    let mut c = KeepAlive::connect(n.addr).await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.0, 200);
    }
    assert_eq!(o.connections(), 1, "reused while fresh");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        o.open_connections(),
        1,
        "closed before its idle time was up"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while o.open_connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle upstream connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.get("/").await.0, 200);
    assert_eq!(
        o.connections(),
        2,
        "a new connection after the idle one closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_close_is_honoured() {
    let (_o, _n, mut c) = through_nrdot("").await;
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let (status, head, _) = c.response().await;
    assert_eq!(status, 200);
    assert!(head.contains("connection: close"), "{head}");
    assert!(c.closed().await);
}

/// A client still sending when its connection is closed (requests pipelined past
/// `keepalive_requests`, bytes after `Connection: close`) reads every answer and a clean end,
/// and can finish writing: nrdot half-closes and reads on (lingering close) instead of closing
/// on unread bytes, which the kernel turns into a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_before_a_close_survive_a_client_that_keeps_sending() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "[limits]\nkeepalive_requests = 2\n{}",
            pool_route(&[o.addr])
        ),
    );
    let pipelined = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n".repeat(3);
    let close = format!(
        "GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{}",
        "x".repeat(1000)
    );
    let slow = "GET /sleep/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_string();
    // (case, head, pause before the rest, answers): more bytes either come with the request
    // (read with it), or arrive while its answer is on its way (seen by the socket's
    // readiness). Bytes arriving between that look and the close still meet a reset, as with
    // nginx's `lingering_close on`.
    for (name, head, pause, answers) in [
        ("past keepalive_requests", pipelined, 0, 2),
        ("after Connection: close", close, 0, 1),
        ("while the answer is on its way", slow, 50, 1),
    ] {
        // More than the socket buffers on both ends hold: still writing at the close.
        let (sent, read) = send_blindly(n.addr, head, Duration::from_millis(pause), 16 << 20).await;
        assert!(
            sent.is_ok(),
            "{name}: the client's writes were cut: {sent:?}"
        );
        let got = read.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            got.matches("HTTP/1.1 200").count(),
            answers,
            "{name}: {got}"
        );
        assert!(got.contains("connection: close"), "{name}: {got}");
    }
}

/// A client that said it sends nothing more gets the answer and the end of the connection in
/// one segment: the moment the answer can be read, so can the end of stream. (Sent apart, the
/// end would come a close(2) later, and a read right after the answer would find nothing.)
/// So do nrdot's own answers: a redirect to HTTPS (port 80's usual traffic) and a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_answer_and_the_close_arrive_together() {
    let o = RawOrigin::start().await;
    let routes = "[[route]]\nname = \"redir\"\npool = \"o\"\nhost = \"a\"\npath = \"/secure\"\nhttps_redirect = true\n[[route]]\nname = \"r\"\npool = \"o\"\nhost = \"a\"\n";
    let n = Nrdot::start(BIN, "", &format!("{}{routes}", pool("o", &[o.addr])));
    let cases: [(&[u8], &str); 4] = [
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 200 OK\r\n",
        ),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", "HTTP/1.1 200 OK\r\n"),
        (
            b"GET /secure HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 308 ",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 ",
        ),
    ];
    for i in 0..20 {
        let (req, status) = cases[i % cases.len()];
        let mut s = tokio::net::TcpStream::connect(n.addr)
            .await
            .expect("connect");
        s.write_all(req).await.expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                s.readable().await.expect("readable");
                // Everything readable now, without waiting again.
                loop {
                    match s.try_read(&mut chunk) {
                        Ok(0) => return true,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                if !got.is_empty() {
                    return false; // the answer came without the end
                }
            }
        })
        .await
        .expect("an answer within 5 s");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(status), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            ended,
            "connection {i}: the answer came before the end of stream: {text}"
        );
    }
}

/// A client that said `close` and sends more while its answer is on the way (RFC 9112 9.6
/// forbids it) makes the close a reset; the answer still leaves before it, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_not_held_back_when_the_client_sends_after_close() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(n.addr)
            .await
            .expect("connect");
        s.write_all(b"GET /sleep/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"junk").await.expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the end or the reset, whichever comes.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = s.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
        assert!(text.ends_with('}'), "the answer was cut: {text:?}");
    }
}

/// A new connection reaches the proxy with its first bytes (deferred accept): until then the
/// kernel holds it half-open and the proxy spends no wakeup on it. `defer_accept = false`
/// restores an immediate accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_accepted_with_its_first_bytes_unless_defer_accept_is_off() {
    const ESTABLISHED: u8 = 1;
    const SYN_RECEIVED: u8 = 3;
    let (o, n, _) = through_nrdot("").await;
    let mut c = KeepAlive::connect(n.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        nrdot_tests::tcp_state(n.addr, c.local_addr()),
        Some(SYN_RECEIVED)
    );
    assert_eq!(c.get("/").await.0, 200);
    assert_eq!(
        nrdot_tests::tcp_state(n.addr, c.local_addr()),
        Some(ESTABLISHED)
    );
    // The listener table comes last in the generated config, so a bare key here is its own.
    let n = Nrdot::start(
        BIN,
        "",
        &format!("defer_accept = false\n{}", pool_route(&[o.addr])),
    );
    let c = KeepAlive::connect(n.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        nrdot_tests::tcp_state(n.addr, c.local_addr()),
        Some(ESTABLISHED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_close_after_keepalive_timeout_busy_ones_stay() {
    let (_o, n, mut busy) = through_nrdot("[limits]\nkeepalive_timeout = \"1s\"\n").await;
    let mut idle = KeepAlive::connect(n.addr).await;
    assert_eq!(idle.get("/").await.0, 200);
    let start = std::time::Instant::now();
    // Requests every 300 ms keep one connection open past the timeout.
    while start.elapsed() < std::time::Duration::from_millis(2500) {
        assert_eq!(busy.get("/").await.0, 200);
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    // The idle one was closed (the sweep is precise to a second).
    assert!(idle.closed().await, "idle connection still open");
    // A connection that never sends a request is closed too.
    let mut silent = KeepAlive::connect(n.addr).await;
    let t = std::time::Instant::now();
    assert!(silent.closed().await);
    assert!(
        t.elapsed() < std::time::Duration::from_millis(2900),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_head_is_a_502_or_a_retry_on_another_server() {
    let (_o, _n, mut c) = through_nrdot("").await;
    // Framing a client could read differently from nrdot is refused too, as nginx does.
    for path in ["/bad-head", "/two-lengths", "/gzip-coded", "/signed-length"] {
        let (status, _, _) = c.get(path).await;
        assert_eq!(status, 502, "{path}");
    }
    // The same length twice is one length: sent on once.
    let (status, head, body) = c.get("/same-length-twice").await;
    assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
    assert_eq!(head.matches("content-length").count(), 1, "{head}");
    // With a second server, a GET whose answer was malformed is retried there (round robin
    // sends every other first attempt to the broken one).
    let raw = RawOrigin::start().await;
    let good = Origin::start("good").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[raw.addr, good.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    for _ in 0..4 {
        let (status, _, body) = c.get("/bad-head").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert!(raw.connections.load(Ordering::SeqCst) >= 1);
    assert_eq!(good.hits(), 4);
}

/// The origin's echo of one response, checked against what was sent.
fn echoed(resp: (u16, String, Vec<u8>), method: &str, path: &str, body: &[u8]) {
    let (status, _, echo) = resp;
    assert_eq!(status, 200, "{path}");
    let e: serde_json::Value = serde_json::from_slice(&echo).expect("json");
    assert_eq!(
        (
            e["method"].as_str(),
            e["path"].as_str(),
            e["body_len"].as_u64(),
            e["body_fnv"].as_str()
        ),
        (
            Some(method),
            Some(path),
            Some(body.len() as u64),
            Some(Fnv::of(body).as_str())
        ),
        "{path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_origin_whole_however_they_arrive() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    // Head and body in one write, with the next request right behind the body.
    let json = br#"{"a":1}"#;
    c.send(
        &[
            &b"POST /in-one HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n"[..],
            json,
            b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat(),
    )
    .await;
    echoed(c.response().await, "POST", "/in-one", json);
    echoed(c.response().await, "GET", "/after", b"");
    // The head first, the body in three pieces with pauses between them.
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    c.send(b"PUT /pieces HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n")
        .await;
    for piece in body.chunks(2000) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(piece).await;
    }
    echoed(c.response().await, "PUT", "/pieces", &body);
    // The largest body read into memory, and one byte more (streamed by the full path).
    for len in [64 * 1024, 64 * 1024 + 1] {
        let body: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let head = format!("POST /len-{len} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n");
        c.send(&[head.as_bytes(), &body].concat()).await;
        echoed(c.response().await, "POST", &format!("/len-{len}"), &body);
    }
    echoed(c.get("/last").await, "GET", "/last", b"");
    assert_eq!(o.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_sent_again_only_where_the_route_allows_it() {
    let bad = Origin::start("bad").await;
    let good = Origin::start("good").await;
    bad.set_status(503);
    let pool = format!(
        "[[pool]]\nname = \"p\"\nretries = 1\nretry_on = [\"503\"]\n[[pool.server]]\naddress = \"{}\"\n[[pool.server]]\naddress = \"{}\"\n",
        bad.addr, good.addr
    );
    let routes = "[[route]]\nname = \"replay\"\npool = \"p\"\npath = \"/replay\"\nretry_unsafe = true\n[[route]]\nname = \"once\"\npool = \"p\"\n";
    let n = Nrdot::start(BIN, "", &format!("{pool}{routes}"));
    let mut c = KeepAlive::connect(n.addr).await;
    let body = b"order=42&qty=3";
    let post = |path: &str| {
        [
            format!(
                "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body.to_vec(),
        ]
        .concat()
    };
    // On the replay route every POST ends at the good server with its body intact.
    for _ in 0..8 {
        c.send(&post("/replay")).await;
        let (status, _, echo) = c.response().await;
        assert_eq!(status, 200);
        let e: serde_json::Value = serde_json::from_slice(&echo).expect("json");
        assert_eq!(e["origin"], "good");
        assert_eq!(e["body_fnv"].as_str(), Some(Fnv::of(body).as_str()));
    }
    assert!(bad.hits() >= 1, "the failing server was never tried");
    // Elsewhere a POST is sent once: the 503 is the answer when it lands on the bad server.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        c.send(&post("/other")).await;
        statuses.push(c.response().await.0);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 200),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "[limits]\nclient_max_body_size = \"4k\"\n{}",
            pool_route(&[o.addr])
        ),
    );
    let mut c = KeepAlive::connect(n.addr).await;
    let body = vec![b'j'; 2000];
    c.send(
        b"POST /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n",
    )
    .await;
    // libcurl's way: nothing more is sent until the interim answer arrives.
    let interim = c.read_through(b"\r\n\r\n").await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    c.send(&body).await;
    let (status, _, echo) = c.response().await;
    assert_eq!(status, 200);
    let e: serde_json::Value = serde_json::from_slice(&echo).expect("json");
    assert_eq!(e["body_fnv"].as_str(), Some(Fnv::of(&body).as_str()));
    assert!(e["headers"].get("expect").is_none(), "{e}");
    // Over the limit: refused without asking for the body, and nothing reaches the origin.
    c.send(b"POST /too-big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        .await;
    assert_eq!(c.response().await.0, 413);
    assert_eq!(o.hits(), 1);
}

/// A reproducible stream of numbers (xorshift), so a failing sequence can be replayed.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_pipeline_of_bodies_cut_at_random_places_arrives_request_by_request() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    // Edges around the read buffer (8 KiB) and the in-memory limit (64 KiB), then random sizes.
    let edges = [0usize, 1, 8191, 8192, 8193, 65535, 65536];
    let mut sent = Vec::new();
    let mut stream = Vec::new();
    for i in 0..100 {
        let len = edges
            .get(i)
            .copied()
            .unwrap_or_else(|| rng.below(20_000) as usize);
        let body: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
        let method = ["POST", "PUT", "PATCH"][i % 3];
        let path = format!("/r{i}");
        stream.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n")
                .as_bytes(),
        );
        stream.extend_from_slice(&body);
        sent.push((method, path, body));
    }
    // Written in slices of 1 byte to 24 KiB, with a pause now and then: heads and bodies are cut
    // anywhere, and several requests often arrive in one read.
    let mut at = 0;
    while at < stream.len() {
        let take = (1 + rng.below(24 * 1024) as usize).min(stream.len() - at);
        c.send(&stream[at..at + take]).await;
        at += take;
        if rng.below(8) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for (method, path, body) in &sent {
        echoed(c.response().await, method, path, body);
    }
    assert_eq!(o.hits(), 100);
    // Heads that certainly arrive in two reads: cut in the request line, in a field name, in a
    // value and between the last field and the empty line.
    for cut in [3, 20, 33, 47] {
        let head = b"POST /cut HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        c.send(&head[..cut]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.send(&head[cut..]).await;
        echoed(c.response().await, "POST", "/cut", b"hi");
    }
    // All of it on the native path: heads cut across reads are read on, not handed over.
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
    // A chunked body is read here too; one with trailers is what the full path is for.
    c.send(b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .await;
    echoed(c.response().await, "POST", "/chunked", b"ok");
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
    c.send(b"POST /trailers HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 1\r\n\r\n")
        .await;
    echoed(c.response().await, "POST", "/trailers", b"ok");
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 1.0);
}

/// Chunked as `chunks` says: each piece its own chunk (the first with an extension).
fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let ext = if i == 0 { ";name=\"v\"" } else { "" };
        out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A chunked request body (Go's and Java's clients send one whenever the length is not known
/// up front) is read whole on the native path and sent upstream with its length, as nginx
/// does: the origin sees `Content-Length`, never the client's chunk framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_are_read_whole_and_sent_on_with_a_length() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    let head = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    };
    // In one write, with a request pipelined behind it.
    let body = chunked(&[b"hello", b" ", b"world"]);
    c.send(
        &[
            head("/one").as_bytes(),
            &body,
            b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n",
        ]
        .concat(),
    )
    .await;
    let resp = c.response().await;
    let e: serde_json::Value = serde_json::from_slice(&resp.2).expect("json");
    assert_eq!(e["headers"]["content-length"][0], "11", "{e}");
    assert!(e["headers"].get("transfer-encoding").is_none(), "{e}");
    echoed(resp, "POST", "/one", b"hello world");
    echoed(c.response().await, "GET", "/after", b"");
    // Cut everywhere: framing byte by byte, data in pieces with pauses.
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 249) as u8).collect();
    let pieces: Vec<&[u8]> = data.chunks(7_000).collect();
    let wire = [head("/pieces").into_bytes(), chunked(&pieces)].concat();
    for (i, piece) in wire.chunks(4_001).enumerate() {
        if i % 3 == 0 {
            for b in piece.chunks(1).take(8) {
                c.send(b).await;
            }
            c.send(&piece[8.min(piece.len())..]).await;
        } else {
            c.send(piece).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    echoed(c.response().await, "POST", "/pieces", &data);
    // A byte at a time, head and body: each read is looked at once, and nothing is missed
    // where the head's empty line or the body's last chunk is split across reads.
    let wire = [head("/bytes").into_bytes(), chunked(&[b"ab", b"cdef"])].concat();
    for b in wire.chunks(1) {
        c.send(b).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    echoed(c.response().await, "POST", "/bytes", b"abcdef");
    // An empty body, and the largest read here in many small chunks.
    c.send(&[head("/empty").as_bytes(), b"0\r\n\r\n"].concat())
        .await;
    echoed(c.response().await, "POST", "/empty", b"");
    let big: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 241) as u8).collect();
    let small: Vec<&[u8]> = big.chunks(1024).collect();
    c.send(&[head("/64k").into_bytes(), chunked(&small)].concat())
        .await;
    echoed(c.response().await, "POST", "/64k", &big);
    // curl's chunked upload: `Expect: 100-continue`, and the body only after the interim answer.
    c.send(b"PUT /curl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = c.read_through(b"\r\n\r\n").await;
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    c.send(&chunked(&[b"up", b"loaded"])).await;
    let resp = c.response().await;
    let e: serde_json::Value = serde_json::from_slice(&resp.2).expect("json");
    assert!(e["headers"].get("expect").is_none(), "{e}");
    echoed(resp, "PUT", "/curl", b"uploaded");
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
    // One byte more goes on to the full path (streamed), whole all the same.
    let over: Vec<u8> = (0..64 * 1024 + 1u32).map(|i| (i % 239) as u8).collect();
    let pieces: Vec<&[u8]> = over.chunks(8192).collect();
    c.send(&[head("/over").into_bytes(), chunked(&pieces)].concat())
        .await;
    echoed(c.response().await, "POST", "/over", &over);
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 1.0);
    assert_eq!(o.hits(), 8);
}

/// Broken chunk framing never reaches an upstream, whether it is found in the first read or
/// after the body has been arriving for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunked_request_bodies_are_refused_and_never_forwarded() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let cases: [&[u8]; 6] = [
        b"5\r\nhello\r\nzz\r\n",         // not a size
        b"5;a\nb\r\nhello\r\n0\r\n\r\n", // bare LF in an extension
        b"5\r\nhelloXX0\r\n\r\n",        // no CRLF after the data
        b"ffffffffffffffffff\r\n",       // size overflows
        b"-5\r\nhello\r\n0\r\n\r\n",     // a sign
        b"\r\n0\r\n\r\n",                // no size at all
    ];
    for body in cases {
        let mut c = KeepAlive::connect(n.addr).await;
        c.send(b"POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.send(body).await;
        let (status, _, _) = c.response().await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
    }
    assert_eq!(o.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_whose_length_field_is_named_hop_by_hop_is_never_a_second_request() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut c = KeepAlive::connect(n.addr).await;
    // Dropping Content-Length because Connection names it would leave the upstream reading the
    // body as a request of its own.
    let inner = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let head = format!(
        "POST /outer HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    );
    c.send(&[head.as_bytes(), inner].concat()).await;
    echoed(c.response().await, "POST", "/outer", inner);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(o.hits(), 1, "the body reached the origin as a request");
    // The same on the full path (a body too large to hold).
    let big = [&inner[..], &vec![b' '; 70_000][..]].concat();
    let head = format!(
        "POST /outer HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    c.send(&[head.as_bytes(), &big].concat()).await;
    echoed(c.response().await, "POST", "/outer", &big);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(o.hits(), 2, "the body reached the origin as a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_keeps_its_framing_fields_even_when_connection_names_them() {
    let (_o, _n, mut c) = through_nrdot("").await;
    let (status, head, body) = c.get("/named-length").await;
    assert_eq!((status, body.as_slice()), (200, &b"named"[..]), "{head}");
    c.send(b"GET /named-chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let got = c.read_through(b"0\r\n\r\n").await;
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n5\r\nnamed\r\n0\r\n\r\n"), "{text}");
    // The connection is still in step: the next answer is the next request's.
    let (status, _, body) = c.get("/plain").await;
    assert_eq!((status, body.as_slice()), (200, &b"hi"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_of_a_request_nrdot_answers_itself_is_not_read_as_the_next_request() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "{}[[route]]\nname = \"r\"\nhost = \"test\"\npool = \"o\"\n",
            pool("o", &[o.addr])
        ),
    );
    let mut c = KeepAlive::connect(n.addr).await;
    let inner = b"GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let head = format!(
        "POST / HTTP/1.1\r\nHost: nowhere\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    );
    // Whole, then with most of the body arriving after a pause.
    c.send(&[head.as_bytes(), inner].concat()).await;
    assert_eq!(c.response().await.0, 404);
    c.send(&[head.as_bytes(), &inner[..5]].concat()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&inner[5..]).await;
    assert_eq!(c.response().await.0, 404);
    // The connection is in step: the next answer is this request's, and the bodies above never
    // reached the origin as requests.
    echoed(c.get("/next").await, "GET", "/next", b"");
    assert_eq!(o.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_get_every_upstream_framing_decoded_and_the_connection_reused() {
    let (o, n, _c) = through_nrdot("").await;
    let mut h2 = h2_connect(n.addr).await;
    // Each body must end exactly where its framing says, or the next response on the one
    // upstream connection would be garbage (or a new connection would be opened).
    for (path, body) in [
        ("/chunked", &b"hello world"[..]),
        ("/named-chunked", b"named"),
        ("/named-length", b"named"),
        ("/same-length-twice", b"hi"),
        ("/early-hints", b"ok"),
        ("/plain", b"hi"),
    ] {
        let (status, headers, got) = h2_request(&mut h2, "GET", path).await;
        assert_eq!((status, got.as_deref()), (200, Ok(body)), "{path}");
        // The response came over HTTP/1.1 (RFC 9110 7.6.3), whatever the client speaks.
        assert_eq!(headers["via"], "1.1 nrdot", "{path}");
        // Trailers are not passed on, so neither is their announcement.
        assert!(!headers.contains_key("trailer"), "{path}: {headers:?}");
    }
    let (status, _, got) = h2_request(&mut h2, "GET", "/chunked-big").await;
    let want: Vec<u8> = (0..100).flat_map(big_chunk).collect();
    assert_eq!(status, 200);
    assert!(
        got.as_ref().is_ok_and(|b| *b == want),
        "chunked body decoded whole"
    );
    for (path, want) in [("/no-content", 204), ("/not-modified", 304)] {
        let (status, _, got) = h2_request(&mut h2, "GET", path).await;
        assert_eq!((status, got.as_deref()), (want, Ok(&b""[..])), "{path}");
    }
    let (status, headers, got) = h2_request(&mut h2, "HEAD", "/head").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b""[..])));
    assert_eq!(headers["content-length"], "5");
    let (status, _, got) = h2_request(&mut h2, "GET", "/plain").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b"hi"[..])));
    assert_eq!(
        o.connections.load(Ordering::SeqCst),
        1,
        "one upstream connection served all"
    );
    // A connection that sent more than the response is not reused.
    let (status, _, got) = h2_request(&mut h2, "GET", "/extra").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b"hi"[..])));
    let (status, _, got) = h2_request(&mut h2, "GET", "/plain").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b"hi"[..])));
    assert_eq!(o.connections.load(Ordering::SeqCst), 2);

    let (status, _, got) = h2_request(&mut h2, "GET", "/until-close").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b"until close"[..])));
    // Framings a client could read otherwise are refused.
    for path in ["/gzip-coded", "/signed-length", "/bad-head", "/two-lengths"] {
        let (status, _, _) = h2_request(&mut h2, "GET", path).await;
        assert_eq!(status, 502, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_body_cut_short_resets_only_that_http2_stream() {
    let (_o, n, _c) = through_nrdot("").await;
    let mut h2 = h2_connect(n.addr).await;
    let req = http::Request::get("http://a/truncated")
        .body(Full::new(Bytes::new()))
        .expect("request");
    // The head goes out before the body breaks, but the reset can overtake it at the client.
    match h2.send_request(req).await {
        Err(e) => assert!(format!("{e:?}").contains("INTERNAL_ERROR"), "{e:?}"),
        Ok(resp) => {
            assert_eq!(resp.headers()["content-length"], "10");
            let body = resp.into_body().collect().await;
            assert!(body.is_err(), "a cut body must not look complete");
        }
    }
    let (status, _, got) = h2_request(&mut h2, "GET", "/plain").await;
    assert_eq!((status, got.as_deref()), (200, Ok(&b"hi"[..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_a_chunked_upstream_response_delimited_by_close() {
    let (_o, n, _c) = through_nrdot("").await;
    let text = raw(
        n.addr,
        b"GET /chunked HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    // nginx's status line too: the highest version nrdot speaks, same major version.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_lowercase().contains("transfer-encoding"), "{head}");
    assert!(head.to_lowercase().contains("connection: close"), "{head}");
    assert_eq!(body, "hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_is_served_on_the_native_path_and_chunks_are_decoded_for_it() {
    let (o, n, mut c) = through_nrdot("").await;
    for _ in 0..3 {
        c.send(b"GET /plain HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let (status, head, body) = c.response().await;
        assert_eq!((status, &body[..]), (200, &b"hi"[..]));
        assert!(head.contains("\r\nconnection: keep-alive"), "{head}");
    }
    // A chunked answer the client cannot read as such: the data, then the end of the connection.
    c.send(b"GET /chunked-big HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let (status, head, body) = c.response().await;
    assert_eq!(status, 200);
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(
        !head.contains("transfer-encoding") && !head.contains("content-length"),
        "{head}"
    );
    let want: Vec<u8> = (0..100).flat_map(big_chunk).collect();
    assert!(
        body == want,
        "{} bytes of data, {} wanted",
        body.len(),
        want.len()
    );
    // One upstream connection served all of them (the decoded answer ended cleanly).
    assert_eq!(o.connections.load(Ordering::SeqCst), 1);
    // Without keep-alive an HTTP/1.0 exchange ends the connection.
    let mut d = KeepAlive::connect(n.addr).await;
    d.send(b"GET /plain HTTP/1.0\r\nHost: a\r\n\r\n").await;
    let (status, head, _) = d.response().await;
    assert_eq!(status, 200);
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(d.closed().await);
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_of_known_small_length_are_buffered_so_a_put_is_retried_elsewhere() {
    let bad = Origin::start("bad").await;
    let good = Origin::start("good").await;
    bad.set_status(503);
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "[[pool]]\nname = \"p\"\nretries = 1\nretry_on = [\"503\"]\n[[pool.server]]\naddress = \"{}\"\n[[pool.server]]\naddress = \"{}\"\n[[route]]\nname = \"r\"\npool = \"p\"\n",
            bad.addr, good.addr
        ),
    );
    let mut h2 = h2_connect(n.addr).await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for _ in 0..10 {
        let (status, _, got) = h2_send(&mut h2, "PUT", "/up", body.clone()).await;
        assert_eq!(status, 200, "a PUT sent to the failing server is retried");
        let e: serde_json::Value = serde_json::from_slice(&got.expect("body")).expect("json");
        assert_eq!(e["origin"], "good");
        assert_eq!(e["body_len"], 10_000);
        assert_eq!(e["body_fnv"], Fnv::of(&body));
    }
    assert!(bad.hits() >= 1, "the failing server was never tried");
    // Over the buffering limit the body streams (sent once, so it could not be retried): still
    // whole. (Both servers healthy: a server answering before reading a streamed body may close
    // the connection under it, which is a 502, not part of this test.)
    bad.set_status(0);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    for _ in 0..4 {
        let (status, _, got) = h2_send(&mut h2, "PUT", "/up", big.clone()).await;
        assert_eq!(status, 200);
        let e: serde_json::Value = serde_json::from_slice(&got.expect("body")).expect("json");
        assert_eq!(e["body_fnv"], Fnv::of(&big));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_stalling_mid_body_is_cut_off_after_the_response_timeout() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(
        BIN,
        "",
        &format!(
            "[[pool]]\nname = \"p\"\nresponse_timeout = \"1s\"\nretries = 0\n[[pool.server]]\naddress = \"{}\"\n[[route]]\nname = \"r\"\npool = \"p\"\n",
            o.addr
        ),
    );
    // Over HTTP/1.1 the head and the first bytes arrive, then nrdot closes short of the length
    // (so the client knows the body is incomplete): after the timeout, not before, and long
    // before the origin's 30 s (`raw` would wait 8 s for a silent connection).
    let addr = n.addr;
    let cut_off = move |request: &'static [u8]| async move {
        let started = std::time::Instant::now();
        let text = raw(addr, request, Duration::from_secs(8)).await;
        let took = started.elapsed();
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nabc"),
            "{text}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(6),
            "cut off after {took:?}"
        );
    };
    // The native path.
    cut_off(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // HTTP/2 (hyper path): the stream is reset.
    let mut h2 = h2_connect(n.addr).await;
    let req = http::Request::get("http://a/stall")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        match h2.send_request(req).await {
            Err(e) => Err(format!("{e:?}")),
            Ok(resp) => resp
                .into_body()
                .collect()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}")),
        }
    })
    .await
    .expect("nrdot gave up on the stalled upstream");
    assert!(outcome.is_err(), "a stalled body must not look complete");
    // A chunked request body streams through hyper's client: the same limit applies there.
    // (This origin reads the target as a path: hyper's client used to send absolute-form.)
    cut_off(
        b"POST /stall HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let timeouts = n.metric("nrdot_upstream_timeouts_total{pool=\"p\"}").await;
    assert_eq!(timeouts, 3.0);
}

/// A connection to nrdot upgraded to a tunnel to `RawOrigin`'s `/ws` echo, its welcome read.
async fn open_tunnel(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    read_until(&mut s, &mut Vec::new(), b"connection=true\n").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_tunnelled_on_the_native_path_with_early_bytes_and_half_close() {
    let o = RawOrigin::start().await;
    let n = Nrdot::start(BIN, "", &pool_route(&[o.addr]));
    let mut s = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    // A frame right behind the handshake, in the same write.
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly-frame")
        .await
        .expect("write");
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"early-frame").await;
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, after) = text.split_once("\r\n\r\n").expect("a head");
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(head.contains("\r\nupgrade: websocket"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade"), "{head}");
    assert!(head.contains("\r\nvia: 1.1 nrdot"), "{head}");
    assert!(
        !head.contains("content-length") && !head.contains("close"),
        "{head}"
    );
    // The upstream was asked to upgrade, and its own bytes after the head came through.
    assert_eq!(
        after, "welcome upgrade=true connection=true\nearly-frame",
        "{text}"
    );
    for msg in [
        &b"second"[..],
        &[0u8, 255, 13, 10, 13, 10][..],
        &vec![b'w'; 100_000][..],
    ] {
        s.write_all(msg).await.expect("write");
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("timeout")
            .expect("read");
        assert!(echo == msg, "echo of {} bytes differs", msg.len());
    }
    // The client's end of stream reaches the upstream, whose last words and close come back.
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the tunnel ends")
        .expect("read");
    assert_eq!(&rest[..], b"bye");
    // Served without the hyper path; the upgraded upstream connection is not pooled.
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
    let mut c = KeepAlive::connect(n.addr).await;
    assert_eq!(c.get("/").await.0, 200);
    assert_eq!(o.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_upstream_refuses_is_an_ordinary_response_on_a_kept_connection() {
    let (o, n, mut c) = through_nrdot("").await;
    c.send(
        b"GET /ws-refused HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let (status, head, body) = c.response().await;
    assert_eq!((status, &body[..]), (426, &b"nope"[..]), "{head}");
    assert!(
        !head.contains("\r\nupgrade:") && !head.contains("connection: upgrade"),
        "{head}"
    );
    // The client connection and the upstream one both stay in use.
    let (status, _, body) = c.get("/").await;
    assert_eq!((status, &body[..]), (200, &b"hi"[..]));
    assert_eq!(o.connections.load(Ordering::SeqCst), 1);
    assert_eq!(n.metric("nrdot_http1_handed_over_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_idle_past_tunnel_idle_timeout_is_closed_a_busy_one_stays() {
    let o = RawOrigin::start().await;
    let config = format!(
        "[limits]\ntunnel_idle_timeout = \"1s\"\n{}",
        pool_route(&[o.addr])
    );
    let n = Nrdot::start(BIN, "", &config);
    let (mut busy, mut idle) = (open_tunnel(n.addr).await, open_tunnel(n.addr).await);
    // A byte each way every 300 ms keeps one open well past the timeout (and the sweep).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        busy.write_all(b"x").await.expect("write");
        let mut echo = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(2), busy.read_exact(&mut echo))
            .await
            .expect("the busy tunnel answers")
            .expect("read");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut rest = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut rest)).await;
    assert!(
        matches!(ended, Ok(Ok(0)) | Ok(Err(_))),
        "the idle tunnel is still open: {ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_nrdot_gives_an_open_tunnel_the_grace_period_then_ends_it() {
    let o = RawOrigin::start().await;
    let mut n = Nrdot::start(BIN, "shutdown_grace = \"2s\"", &pool_route(&[o.addr]));
    let mut s = open_tunnel(n.addr).await;
    n.signal("TERM");
    let stopped = std::time::Instant::now();
    // During the grace period the tunnel still carries bytes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"still here").await.expect("write");
    let mut echo = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut echo))
        .await
        .expect("echo during the grace period")
        .expect("read");
    assert_eq!(&echo, b"still here");
    // Then it is cut and the process exits.
    let mut rest = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
    assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "{ended:?}");
    let exited = n.wait_exit(Duration::from_secs(5));
    assert!(exited.is_some(), "still running after the grace period");
    let took = stopped.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "cut before the grace period: {took:?}"
    );
}
