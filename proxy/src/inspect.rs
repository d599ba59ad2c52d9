//! A read-side observer of HTTP/1 framing on client connections, for the two things hyper does
//! not do the way an edge proxy must:
//! - a request carrying both Content-Length and Transfer-Encoding is a request-smuggling attempt;
//!   hyper quietly drops the Content-Length and serves it, we answer 400 and close (RFC 9112 6.3
//!   allows either; nginx and HAProxy reject), and so is one naming chunked twice (HAProxy
//!   rejects it; hyper would decode one layer);
//! - `client_header_timeout` counts from the first byte of a request head, while hyper's only
//!   head timer also covers the idle time between keep-alive requests (which is
//!   `keepalive_timeout`).
//!
//! - hyper answers unparseable heads itself (400, 414, 431) with a bare response; on the write
//!   side those canned answers get `Server: nrdot` and a short body like every other error nrdot
//!   writes, and are counted. Proxied responses always carry `Via` and nrdot's own errors
//!   `Server`, so a head with neither that says `connection: close` and `content-length: 0` can
//!   only be hyper's.
//!
//! It follows message boundaries (head, Content-Length body, chunked body) over the bytes hyper
//! reads, without copying them except for a head split over several reads. Anything it cannot
//! follow (HTTP/2, upgrades, framing errors that hyper rejects anyway) turns it off.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::rules::target;

/// Shared with the connection's service: the index of the first request whose framing was
/// ambiguous (`u64::MAX` while none was).
#[derive(Debug)]
pub struct Verdict {
    first_bad: AtomicU64,
    /// The latest request that is `OPTIONS` with an absolute-form target and an empty path
    /// (`u64::MAX` while none was): hyper's URI makes that path `/`, so only the bytes tell.
    asks_server: AtomicU64,
    /// A Content-Length in digits too large for hyper's counter (it answers 431, as if the
    /// head were too large): nrdot's answer is 413.
    huge_length: AtomicBool,
}

impl Verdict {
    pub fn new() -> Arc<Verdict> {
        Arc::new(Verdict {
            first_bad: AtomicU64::new(u64::MAX),
            asks_server: AtomicU64::new(u64::MAX),
            huge_length: AtomicBool::new(false),
        })
    }

    /// Whether request number `index` asks about the server as a whole (RFC 9112 3.2.4).
    pub fn asks_server(&self, index: u64) -> bool {
        self.asks_server.load(Ordering::Relaxed) == index
    }

    /// Whether request number `index` (0-based, in arrival order) must be refused.
    pub fn is_bad(&self, index: u64) -> bool {
        index >= self.first_bad.load(Ordering::Relaxed)
    }
}

enum State {
    /// Collecting a head; `started` once a non-CRLF byte arrived.
    Head { started: bool },
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines until an empty one.
    Trailers,
    /// Framing hyper or nrdot refuses: the connection is answered and closed, while the
    /// client may still be sending the rest.
    Refused,
    /// Not following this connection any more.
    Off,
}

pin_project_lite::pin_project! {
    /// The wrapped client stream.
    pub struct Inspected<IO> {
        #[pin]
        io: IO,
        state: State,
        line: Vec<u8>,
        index: u64,
        first_read: bool,
        header_timeout: Duration,
        head_deadline: Option<Instant>,
        deadline: Option<Pin<Box<Sleep>>>,
        verdict: Arc<Verdict>,
        rewrite: Option<(Vec<u8>, usize)>,
        // `max_request_line`, and whether the head being collected already has a longer
        // target: hyper answers such a head 431 (its buffer is full), rewritten as 414.
        max_target: u64,
        long_target: bool,
    }
}

const MAX_LINE: usize = 64 * 1024;

impl<IO> Inspected<IO> {
    /// Whether the connection is inside a request (its head or body) or after framing that
    /// was refused: if it closes now, the client may still be sending.
    pub fn mid_request(&self) -> bool {
        match self.state {
            State::Head { started } => started,
            State::Off => false,
            State::Fixed(_)
            | State::ChunkSize
            | State::ChunkData(_)
            | State::Trailers
            | State::Refused => true,
        }
    }

    /// The stream, for reading on without following it.
    pub fn into_inner(self) -> IO {
        self.io
    }

    pub fn new(io: IO, header_timeout: Duration, max_target: u64, verdict: Arc<Verdict>) -> Self {
        Inspected {
            io,
            state: State::Head { started: false },
            line: Vec::new(),
            index: 0,
            first_read: true,
            header_timeout,
            head_deadline: None,
            deadline: None,
            verdict,
            rewrite: None,
            max_target,
            long_target: false,
        }
    }
}

/// Outcome of following one buffer of bytes.
struct Follow {
    head_started: bool,
    head_done: bool,
}

fn follow(
    state: &mut State,
    line: &mut Vec<u8>,
    index: &mut u64,
    verdict: &Verdict,
    mut data: &[u8],
) -> Follow {
    let mut out = Follow {
        head_started: false,
        head_done: false,
    };
    while !data.is_empty() {
        match state {
            State::Off | State::Refused => return out,
            State::Head { started } => {
                if !*started {
                    // Tolerate empty lines before a request line (RFC 9112 2.2).
                    let skip = data
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    data = &data[skip..];
                    if data.is_empty() {
                        return out;
                    }
                    *started = true;
                    out.head_started = true;
                    line.clear();
                }
                // Find the end of the head, looking back into what was collected before.
                let prev = line.len();
                let search_from = prev.saturating_sub(3);
                line.extend_from_slice(data);
                let end = line[search_from..]
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| search_from + p + 4);
                let Some(end) = end else {
                    if line.len() > MAX_LINE * 4 {
                        *state = State::Refused; // hyper answers 431 for this.
                        line.clear();
                    }
                    return out;
                };
                let consumed_here = end - prev;
                data = &data[consumed_here..];
                line.truncate(end);
                out.head_done = true;
                *state = head_framing(line, *index, verdict);
                *index += 1;
                line.clear();
            }
            State::Fixed(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                data = &data[take as usize..];
                if *n == 0 {
                    *state = State::Head { started: false };
                }
            }
            State::ChunkSize | State::Trailers => {
                let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                    line.extend_from_slice(data);
                    if line.len() > MAX_LINE {
                        *state = State::Refused;
                    }
                    return out;
                };
                line.extend_from_slice(&data[..=nl]);
                data = &data[nl + 1..];
                let text = std::mem::take(line);
                let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                if matches!(state, State::Trailers) {
                    if trimmed.is_empty() {
                        *state = State::Head { started: false };
                    }
                    continue;
                }
                let hex = trimmed.split(|b| *b == b';').next().unwrap_or(b"");
                let hex = std::str::from_utf8(hex).unwrap_or("").trim_end();
                match u64::from_str_radix(hex, 16) {
                    Ok(0) => *state = State::Trailers,
                    Ok(n) if !hex.starts_with('+') => *state = State::ChunkData(n + 2),
                    _ => *state = State::Refused, // hyper rejects the body.
                }
            }
            State::ChunkData(n) => {
                let take = (*n).min(data.len() as u64);
                *n -= take;
                data = &data[take as usize..];
                if *n == 0 {
                    *state = State::ChunkSize;
                }
            }
        }
    }
    out
}

/// Decides how the body of a complete head is framed, and records ambiguous framing.
fn head_framing(head: &[u8], index: u64, verdict: &Verdict) -> State {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return State::Refused; // hyper answers 400 (or 431) for this.
    }
    if req.method == Some("CONNECT") {
        return State::Off;
    }
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    if !target::fragment_free(target.as_bytes()) {
        // hyper's URI would drop the fragment; the request line is invalid (RFC 9112 3.2).
        verdict.first_bad.fetch_min(index, Ordering::Relaxed);
    } else if target::options_for_server(method.as_bytes(), target.as_bytes()) {
        verdict.asks_server.store(index, Ordering::Relaxed);
    }
    let (mut te, mut cl, mut upgrade) = (false, None, false);
    let mut chunked = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = true;
            chunked += crate::rules::tokens(h.value)
                .filter(|t| t.eq_ignore_ascii_case(b"chunked"))
                .count();
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .or(Some(0));
            // hyper counts a body in u64 less two sentinel values.
            if cl.is_some_and(|n| n >= u64::MAX - 1) {
                verdict.huge_length.store(true, Ordering::Relaxed);
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            // Only an upgrade nrdot relays can switch the connection; any other is dropped
            // and the bytes after the request stay HTTP/1, followed as such.
            upgrade |= crate::rules::upgrade_allowed(h.value);
        }
    }
    // Chunked applied twice (RFC 9112 7: a sender must not) is a smuggling probe, refused as
    // HAProxy refuses it; hyper would decode one layer.
    if (te && cl.is_some()) || chunked > 1 {
        verdict.first_bad.fetch_min(index, Ordering::Relaxed);
        return State::Refused; // the connection is answered 400 and closed.
    }
    if upgrade {
        // After a 101 the bytes are no longer HTTP/1; without a 101 they would be, but we
        // cannot see the response from here.
        return State::Off;
    }
    if te {
        State::ChunkSize
    } else {
        match cl {
            Some(n) if n > 0 => State::Fixed(n),
            _ => State::Head { started: false },
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Inspected<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.io.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if *this.first_read && !new.is_empty() {
                    *this.first_read = false;
                    if new.starts_with(b"PRI * HTTP/2.0") {
                        *this.state = State::Off;
                    }
                }
                if !matches!(this.state, State::Off | State::Refused) {
                    let f = follow(this.state, this.line, this.index, this.verdict, new);
                    match this.state {
                        // A head started in this read: its clock starts now. Only the deadline
                        // is noted; a timer is armed only if the head is still incomplete when
                        // the socket runs dry, which a well-behaved client almost never causes.
                        State::Head { started: true } if f.head_started => {
                            *this.head_deadline = Some(Instant::now() + *this.header_timeout);
                            *this.long_target = false;
                        }
                        // Still collecting the same head: keep its clock.
                        State::Head { started: true } => {}
                        _ => *this.head_deadline = None,
                    }
                    // A head still incomplete past the target limit is rare: only then is its
                    // request line measured.
                    if matches!(this.state, State::Head { started: true })
                        && this.line.len() as u64 > *this.max_target
                        && !*this.long_target
                    {
                        *this.long_target = target::target_too_long(this.line, *this.max_target);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let (State::Head { started: true }, Some(at)) =
                    (&*this.state, *this.head_deadline)
                {
                    let sleep = match this.deadline {
                        Some(d) => {
                            if d.deadline() != at {
                                d.as_mut().reset(at);
                            }
                            d
                        }
                        None => this.deadline.insert(Box::pin(tokio::time::sleep_until(at))),
                    };
                    if sleep.as_mut().poll(cx).is_ready() {
                        // A client this slow gets no lingering close either (nginx resets it).
                        *this.state = State::Off;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "client_header_timeout",
                        )));
                    }
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

/// hyper's canned error answer rewritten as nrdot's, or `None` for any other write.
fn canned_error(buf: &[u8], long_target: bool, huge_length: bool) -> Option<Vec<u8>> {
    if buf.len() > 512 || !buf.starts_with(b"HTTP/1.1 4") || !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(buf).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let rest = rest.strip_prefix("connection: close\r\ncontent-length: 0\r\n")?;
    let mut code: u16 = status_line.get(9..12)?.parse().ok()?;
    let mut reason = status_line.get(13..).unwrap_or("Error");
    let mut status_line = status_line.to_string();
    if code == 431 && long_target {
        // RFC 9112 3: a target over the limit is 414, whatever else overflowed.
        (code, reason) = (414, "URI Too Long");
        status_line = "HTTP/1.1 414 URI Too Long".to_string();
    } else if code == 431 && huge_length {
        (code, reason) = (413, "Payload Too Large");
        status_line = "HTTP/1.1 413 Payload Too Large".to_string();
    }
    crate::metrics::get().error(code);
    let body = format!("{code} {reason}\n");
    Some(
        format!(
            "{status_line}\r\nserver: nrdot\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: {}\r\n{rest}{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<IO: AsyncWrite> AsyncWrite for Inspected<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if this.rewrite.is_none() {
            let huge = this.verdict.huge_length.load(Ordering::Relaxed);
            match canned_error(buf, *this.long_target, huge) {
                Some(r) => *this.rewrite = Some((r, 0)),
                None => return this.io.poll_write(cx, buf),
            }
        }
        // Write the whole replacement, then report the original as written.
        while let Some((bytes, off)) = this.rewrite.as_mut() {
            if *off >= bytes.len() {
                *this.rewrite = None;
                return Poll::Ready(Ok(buf.len()));
            }
            match this.io.as_mut().poll_write(cx, &bytes[*off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (nonempty.next(), nonempty.next()) {
            if self.rewrite.is_some() || canned_error(only, false, false).is_some() {
                return self.poll_write(cx, only);
            }
        }
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (u64, Arc<Verdict>, bool) {
        let verdict = Verdict::new();
        let (mut state, mut line, mut index) = (State::Head { started: false }, Vec::new(), 0);
        for c in chunks {
            follow(&mut state, &mut line, &mut index, &verdict, c);
        }
        let off = matches!(state, State::Off | State::Refused);
        (index, verdict, off)
    }

    #[test]
    fn inspect_counts_pipelined_requests_with_bodies() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        // Whole, and split at every byte boundary.
        let (n, v, off) = run(&[stream]);
        assert_eq!((n, off), (4, false));
        assert!(!v.is_bad(3));
        for split in 1..stream.len() {
            let (n, _, off) = run(&[&stream[..split], &stream[split..]]);
            assert_eq!((n, off), (4, false), "split at {split}");
        }
    }

    #[test]
    fn canned_hyper_errors_become_nrdot_errors() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 23:17:59 GMT\r\n\r\n";
        let out =
            String::from_utf8(canned_error(hyper, false, false).expect("rewritten")).expect("utf8");
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\nserver: nrdot\r\n"),
            "{out}"
        );
        assert!(
            out.ends_with("GMT\r\n\r\n431 Request Header Fields Too Large\n"),
            "{out}"
        );
        let huge = canned_error(hyper, false, true).expect("rewritten");
        assert!(huge.starts_with(b"HTTP/1.1 413 Payload Too Large\r\n"));
        let long = canned_error(hyper, true, false).expect("rewritten");
        assert!(long.starts_with(b"HTTP/1.1 414 URI Too Long\r\n"));
        let proxied = b"HTTP/1.1 404 Not Found\r\nvia: 1.1 nrdot\r\ncontent-length: 0\r\n\r\n";
        assert!(canned_error(proxied, false, false).is_none());
    }

    #[test]
    fn inspect_flags_content_length_with_transfer_encoding() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let (_, v, off) = run(&[stream]);
        assert!(off);
        assert!(!v.is_bad(0));
        assert!(v.is_bad(1));
    }
}
