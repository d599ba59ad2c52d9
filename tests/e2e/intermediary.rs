//! nrdot as an HTTP intermediary (RFC 9110 7.6, RFC 9112): headers it must rewrite, bodies it
//! must stream, upgrades it must pass through.
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use nrdot_tests::{get, http_client, pool_route, raw, send, Nrdot, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BIN;

fn one_pool(o: &Origin) -> String {
    pool_route(&[o.addr])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways_and_forwarding_headers_set() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o));
    let r = get(
        &n.url("/echo?q=1"),
        &[
            ("host", "app.test"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-app", "kept"),
        ],
    )
    .await;
    let e = r.json();
    let h = &e["headers"];
    for gone in [
        "x-private",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h}");
    }
    assert_eq!(h["x-app"][0], "kept");
    assert_eq!(h["host"][0], "app.test", "Host is preserved");
    assert_eq!(e["query"], "q=1");
    // The client is not a trusted proxy: its claims are replaced, not extended.
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "app.test");
    assert_eq!(h["via"][0], "1.1 nrdot");

    let r = get(&n.url("/hop"), &[]).await;
    assert_eq!(r.header("x-kept"), "1");
    assert_eq!(
        r.header("x-drop-me"),
        "",
        "a field named by Connection reached the client"
    );
    assert_eq!(r.header("keep-alive"), "");
    assert_eq!(r.header("via"), "1.1 nrdot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_chain_is_extended() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "trusted_proxies = [\"127.0.0.0/8\"]", &one_pool(&o));
    let r = get(
        &n.url("/"),
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_with_content_length_and_chunked_and_expect_continue() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o));
    // Content-Length body.
    let r = send(
        &http_client(),
        Request::post(n.url("/up"))
            .body(Full::new(Bytes::from(vec![7u8; 100_000])))
            .expect("req"),
    )
    .await;
    assert_eq!(r.json()["body_len"], 100_000);
    // Chunked body with trailers, and Expect: 100-continue, written by hand.
    let resp = raw(
        n.addr,
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    // The body came with the head: the interim answer may be left out (RFC 9110 10.1.1), as
    // the native path does; when sent, it comes first.
    let rest = resp
        .strip_prefix("HTTP/1.1 100 Continue\r\n\r\n")
        .unwrap_or(&resp);
    assert!(rest.starts_with("HTTP/1.1 200 OK"), "{resp}");
    assert!(resp.contains("\"body_len\":11"), "{resp}");
    assert!(
        !resp.contains("\"expect\""),
        "Expect reached the upstream: {resp}"
    );
    // HEAD gets headers and no body.
    let head = raw(
        n.addr,
        b"HEAD /big/1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-length: 1000"), "{head}");
    assert!(
        head.ends_with("\r\n\r\n"),
        "HEAD answered with a body: {head:?}"
    );
    // A large download arrives whole.
    let big = get(&n.url("/big/5000000"), &[]).await;
    assert_eq!(big.body.len(), 5_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_without_growing_memory() {
    let o = Origin::start("o").await;
    let body = format!("[limits]\nclient_max_body_size = \"2g\"\n{}", one_pool(&o));
    let n = Nrdot::start(BIN, "", &body);
    // Warm up so allocator pools exist before the baseline.
    for _ in 0..20 {
        get(&n.url("/"), &[]).await;
    }
    let (rss_before, _) = n.memory_kib();
    const CHUNK: usize = 256 * 1024;
    const TOTAL: u64 = 1 << 30;
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let stream = futures_stream(chunk, (TOTAL / CHUNK as u64) as usize);
    let req = Request::post(n.url("/upload"))
        .header("content-length", TOTAL.to_string())
        .body(StreamBody::new(stream))
        .expect("req");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<ChunkStream>>();
    let resp = client.request(req).await.expect("upload");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(echo["body_len"], TOTAL);
    let (rss_after, _) = n.memory_kib();
    let grew = rss_after.saturating_sub(rss_before);
    assert!(
        grew < 64 * 1024,
        "RSS grew by {grew} KiB during a 1 GiB upload ({rss_before} -> {rss_after})"
    );
}

type ChunkStream = tokio_stream_shim::Chunks;

fn futures_stream(chunk: Bytes, count: usize) -> ChunkStream {
    tokio_stream_shim::Chunks { chunk, left: count }
}

/// A minimal `Stream` of body frames, so the test needs no extra crate.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    pub struct Chunks {
        pub chunk: Bytes,
        pub left: usize,
    }

    impl futures_core::Stream for Chunks {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_passed_through() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o));
    let mut s = tokio::net::TcpStream::connect(n.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("timeout")
            .expect("read");
        assert!(k > 0, "closed before 101");
        got.extend_from_slice(&buf[..k]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping-1"[..], b"second message", b"x"] {
        s.write_all(msg).await.expect("write");
        let mut echo = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("timeout")
            .expect("read");
        assert_eq!(&echo[..], msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    let o = Origin::start("o").await;
    let dir = nrdot_tests::temp_dir("log");
    let log = dir.join("access.log");
    let body = format!(
        "[access_log]\nenabled = true\nformat = \"json\"\npath = {:?}\n{}",
        log.display().to_string(),
        one_pool(&o)
    );
    let n = Nrdot::start(BIN, "", &body);
    for i in 0..5 {
        get(&n.url(&format!("/logged/{i}")), &[("user-agent", "e2e")]).await;
    }
    get(&n.url("/status/503"), &[]).await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 6, "{lines:?}");
    // Lines of requests on different connections may be written by different workers, so
    // their order is not the requests' order.
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let find = |target: &str| {
        parsed
            .iter()
            .find(|v| v["target"] == target)
            .unwrap_or_else(|| panic!("no line for {target}: {lines:?}"))
    };
    let first = find("/logged/0");
    assert_eq!(first["status"], 200);
    assert_eq!(first["user_agent"], "e2e");
    assert_eq!(first["route"], "r");
    assert_eq!(first["upstream"], o.addr.to_string());
    assert_eq!(find("/status/503")["status"], 503);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_limit_closes_the_connection() {
    let o = Origin::start("o").await;
    let body = format!("[limits]\nkeepalive_requests = 3\n{}", one_pool(&o));
    let n = Nrdot::start(BIN, "", &body);
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let all: Vec<u8> = req.iter().copied().cycle().take(req.len() * 5).collect();
    let out = raw(n.addr, &all, Duration::from_secs(3)).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    assert!(out.contains("connection: close"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_http10_and_absolute_form() {
    let o = Origin::start("o").await;
    let n = Nrdot::start(BIN, "", &one_pool(&o));
    let resp = raw(
        n.addr,
        b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-checksum: 42\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        resp.contains("\"trailers\":{\"x-checksum\":\"42\"}"),
        "{resp}"
    );
    // HTTP/1.0 without Host matches routes without a host.
    let resp = raw(n.addr, b"GET /old HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.0 200"), "{resp}");
    assert!(resp.contains("\"via\":[\"1.0 nrdot\"]"), "{resp}");
    // An absolute-form target wins over Host, and the upstream sees it as Host.
    let resp = raw(
        n.addr,
        b"GET http://abs.test/p HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.contains("\"host\":[\"abs.test\"]"), "{resp}");
}
