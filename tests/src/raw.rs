//! Peers written against raw sockets: an origin that sends framings hyper would normalise
//! (and no `Date`), and a prior-knowledge HTTP/2 client.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin written against raw sockets, so it can send framings hyper would normalise.
/// Answers by path; counts connections.
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicU64>,
}

impl RawOrigin {
    pub async fn start() -> RawOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        let generated: Vec<u8>;
                        let (resp, close): (&[u8], bool) = match path.as_str() {
                            "/chunked-big" => {
                                generated = chunked_big();
                                (&generated, false)
                            }
                            // The server dies 3 bytes into a 10-byte body.
                            "/truncated" => (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true),
                            // More than the response: the connection cannot be trusted after it.
                            "/extra" => (
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra",
                                false,
                            ),
                            // No body, and no length to say so.
                            "/no-content" => (b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n", false),
                            "/not-modified" => (b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n", false),
                            // Misbehaving: a length on a 204 (RFC 9110 8.6 forbids it), and a
                            // body after a 304 (which ends at its head, RFC 9112 6.3).
                            "/no-content-length" => (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false),
                            "/not-modified-body" => (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\nbody", false),
                            // For HEAD: a length and no body.
                            "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
                            "/chunked" => (
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
                                false,
                            ),
                            "/until-close" => (
                                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
                                true,
                            ),
                            "/early-hints" => (
                                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                false,
                            ),
                            // Keep-alive by the headers, but the server closes right after.
                            "/then-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbye!", true),
                            // An upstream naming its framing field in Connection.
                            "/named-length" => (
                                b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nnamed",
                                false,
                            ),
                            "/named-chunked" => (
                                b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnamed\r\n0\r\n\r\n",
                                false,
                            ),
                            "/gzip-coded" => (
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot gzip",
                                true,
                            ),
                            "/signed-length" => (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nhi", true),
                            "/same-length-twice" => (
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
                                false,
                            ),
                            "/bad-head" => (b"HTTP/1.1 200 OK\r\nBad Field\r\n\r\nhi", true),
                            "/ws-refused" => (
                                b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope",
                                false,
                            ),
                            // RFC 9110 7.6.3: the Via nrdot adds names the version received.
                            "/http10" => (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", true),
                            // Heads a client could not read as nrdot does: 502.
                            "/nul-field" => (b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nhi", true),
                            "/space-colon" => (b"HTTP/1.1 200 OK\r\nX-Bad : a\r\nContent-Length: 2\r\n\r\nhi", true),
                            "/version-2" => (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", true),
                            "/obs-fold" => (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nhi", true),
                            "/space-first-field" => (b"HTTP/1.1 200 OK\r\n X-A: 1\r\nContent-Length: 2\r\n\r\nhi", true),
                            "/status-600" => (b"HTTP/1.1 600 Library Error\r\nContent-Length: 2\r\n\r\nhi", true),
                            // RFC 9112 6.1: no Transfer-Encoding on a 204 (and no body).
                            "/no-content-chunked" => (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", false),
                            "/length-list" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi", true),
                            // A switch nobody asked for (RFC 9110 15.2.2): 502.
                            "/switch-unasked" => (
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                                true,
                            ),
                            // Every connection-specific field HTTP/2 forbids (RFC 9113 8.2.2).
                            "/connection-specific" => (
                                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Gone\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: foo\r\nX-Gone: 1\r\nX-Stays: 1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                                false,
                            ),
                            "/two-lengths" => (
                                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nhi",
                                true,
                            ),
                            _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", false),
                        };
                        if path == "/ws" {
                            // Switches protocols with bytes of its own right behind the head,
                            // then echoes; at the client's end of stream it says bye and closes.
                            let lower = head.to_lowercase();
                            let welcome = format!(
                                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nwelcome upgrade={} connection={}\n",
                                lower.contains("\r\nupgrade: websocket"),
                                lower.contains("\r\nconnection: upgrade"),
                            );
                            if s.write_all(welcome.as_bytes()).await.is_err()
                                || s.write_all(&buf).await.is_err()
                            {
                                return;
                            }
                            loop {
                                match s.read(&mut chunk).await {
                                    Ok(0) => {
                                        let _ = s.write_all(b"bye").await;
                                        return;
                                    }
                                    Ok(n) => {
                                        if s.write_all(&chunk[..n]).await.is_err() {
                                            return;
                                        }
                                    }
                                    Err(_) => return,
                                }
                            }
                        }
                        if path == "/stall" {
                            // Part of the body, then nothing for longer than any test waits.
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                                .await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        if s.write_all(resp).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        RawOrigin { addr, connections }
    }
}

/// Bytes of chunk `i` of `/chunked-big` (100 chunks of 1,000 bytes, sizes in mixed case).
pub fn big_chunk(i: usize) -> Vec<u8> {
    vec![b'a' + (i % 26) as u8; 1000]
}

fn chunked_big() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n".to_vec();
    for i in 0..100 {
        r.extend_from_slice(if i % 2 == 0 {
            b"3E8\r\n"
        } else {
            b"3e8;x=y\r\n"
        });
        r.extend_from_slice(&big_chunk(i));
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\nx-sum: 1\r\n\r\n");
    r
}

/// The fields of a well-formed HTTP/2 `GET /echo` for [`raw_h2`], which tests extend or break.
pub const H2_GET_ECHO: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/echo"),
    (":authority", "a"),
];

/// One HTTP/2 request written frame by frame (the h2 library refuses to send malformed ones):
/// the connection preface, an empty SETTINGS, then HEADERS with `fields` as HPACK literals
/// (and a DATA frame when `data` is given, ending the stream). Returns the type of the first
/// frame the server sends on stream 1, or of a GOAWAY.
pub async fn raw_h2(addr: SocketAddr, fields: &[(&str, &str)], data: Option<&[u8]>) -> u8 {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let mut block = Vec::new();
    for (name, value) in fields {
        // Literal without indexing, new name, no Huffman coding (RFC 7541 6.2.2).
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let end_stream = if data.is_some() { 0 } else { 1 };
    out.extend(frame(1, 4 | end_stream, 1, &block));
    if let Some(d) = data {
        out.extend(frame(0, 1, 1, d));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("write");
    loop {
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head)).await;
        let Ok(Ok(_)) = read else { return 0 };
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.expect("frame payload");
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        // A GOAWAY, or anything on the request's stream (HEADERS, RST_STREAM, DATA).
        if head[3] == 7 || (stream == 1 && head[3] != 4) {
            return head[3];
        }
        if head[3] == 4 && head[4] & 1 == 0 {
            s.write_all(&frame(4, 1, 0, &[]))
                .await
                .expect("settings ack");
        }
    }
}

/// An HTTP/2 connection (prior knowledge) to nrdot's plaintext listener.
pub async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// One request on an HTTP/2 connection: status, fields, and the body or the error that cut
/// it short.
pub async fn h2_request(
    s: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
) -> (u16, http::HeaderMap, Result<Vec<u8>, String>) {
    h2_send(s, method, path, Vec::new()).await
}

/// [`h2_request`] with a request body.
pub async fn h2_send(
    s: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, http::HeaderMap, Result<Vec<u8>, String>) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://a{path}"))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let resp = s.send_request(req).await.expect("response head");
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    (parts.status.as_u16(), parts.headers, body)
}
