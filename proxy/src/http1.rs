//! HTTP/1 on the wire, as bytes: request and response head parsing, message framing
//! (Content-Length, chunked, until close), the chunk decoder, the Connection field's tokens, and
//! serialising a head. No sockets and no tables: both downstream adapters and nrdot's own
//! upstream client build on it, and the fuzz targets call it directly.
use std::io;
use std::mem::MaybeUninit;

use crate::rules::{is, tokens, ConnectionFields, Field, FieldSink};

/// Largest upstream response head accepted.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Upstream response heads with more fields than this are refused (502).
pub(crate) const MAX_RESPONSE_FIELDS: usize = 128;

/// Largest request body the native path reads into memory before forwarding (nginx's
/// `client_body_buffer_size` is 16 KiB on 64-bit; API requests are mostly far below it).
pub(crate) const NATIVE_BODY_MAX: usize = 64 * 1024;

/// How far a chunked request body has been followed across reads: each byte is scanned once,
/// so a body arriving a byte at a time costs its length, not its length squared.
#[derive(Default)]
pub(crate) struct BodyScan {
    chunks: Chunks,
    /// Bytes of the body followed so far (on the wire) and the data among them.
    at: usize,
    len: usize,
}

/// A chunked body complete at the start of `data` (which only grows between calls with the
/// same `scan`): its length on the wire and decoded. `Ok(None)` while its end has not come;
/// `Err` when the framing is broken or the body has trailers (which a length cannot carry:
/// the full path forwards them).
pub(crate) fn chunked_body(data: &[u8], scan: &mut BodyScan) -> Result<Option<(usize, usize)>, ()> {
    while scan.at < data.len() {
        let (used, run, ended) = scan.chunks.next_data(&data[scan.at..])?;
        scan.len += run.map_or(0, |r| r.len());
        scan.at += used;
        if scan.chunks.trailers {
            return Err(());
        }
        if ended {
            return Ok(Some((scan.at, scan.len)));
        }
    }
    Ok(None)
}

/// A Content-Length value: decimal digits only, no sign, no list, no overflow.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

pub(crate) fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response head frames its body, checked as a client would read it.
pub(crate) struct ResponseFraming<'a> {
    pub framing: Framing,
    /// Transfer-Encoding ends in chunked (a Content-Length beside it is dropped).
    pub chunked: bool,
    /// The same Content-Length twice (accepted, RFC 9112 6.3, and sent on once).
    pub repeated_length: bool,
    pub connection: ConnectionFields<'a>,
    /// The server closes the connection after this response.
    pub upstream_close: bool,
}

/// The framing of a parsed response head; `Err` when a client could read it differently from
/// nrdot (lengths that are not plain digits or disagree, a last transfer coding other than
/// chunked, too many Connection fields): such a response is refused, as nginx refuses it.
pub(crate) fn response_framing<'b>(
    resp: &httparse::Response<'_, 'b>,
    head_request: bool,
) -> Result<ResponseFraming<'b>, ()> {
    let status = resp.code.unwrap_or(0);
    if !crate::rules::status_valid(status) {
        return Err(());
    }
    let mut length: Option<u64> = None;
    let mut repeated_length = false;
    let mut chunked = None;
    let mut connection = ConnectionFields::default();
    for h in resp.headers.iter() {
        if is(h.name, "content-length") {
            // Digits only, as for requests: `+5` would pass Rust's parser and go on verbatim
            // to a client that reads it differently.
            let n = content_length(h.value);
            match (n, length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(l)) if n == l => repeated_length = true,
                _ => return Err(()),
            }
        } else if is(h.name, "transfer-encoding") {
            chunked = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
            );
        } else if is(h.name, "connection") && !connection.push(h.value) {
            return Err(());
        }
    }
    let upstream_close = connection.close || resp.version != Some(1);
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunks::default()),
            // A transfer coding other than chunked last (RFC 9112 6.3 allows reading until
            // close) is refused, as nginx does: a client could read it otherwise.
            (Some(false), _) => return Err(()),
            (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    Ok(ResponseFraming {
        framing,
        chunked: chunked == Some(true),
        repeated_length,
        connection,
        upstream_close,
    })
}

/// A response head and body as bytes, with Content-Length and Date.
pub(crate) fn serialize(parts: &http::response::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(parts.status.as_u16()).as_slice());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        put(&mut out, name.as_str(), value.as_bytes());
    }
    put(&mut out, "date", &crate::clock::http_date());
    end_with_body(&mut out, body, true);
    out
}

/// Ends a head: its `content-length` (when `length`), the empty line, then the body.
pub(crate) fn end_with_body(out: &mut Vec<u8>, body: &[u8], length: bool) {
    if length {
        put(out, "content-length", body.len().to_string().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

pub(crate) fn itoa3(status: u16) -> [u8; 3] {
    [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// The connection ended after this many bytes, before a complete head.
    #[error("connection closed after {0} bytes, before a complete response head")]
    Closed(usize),
    #[error("{0}")]
    Io(io::Error),
    #[error("malformed response head")]
    Malformed,
    #[error("response head larger than 64 KiB")]
    TooLarge,
}

/// Parses the response head at the start of `buf`, its fields into `fields` — uninitialised,
/// so no array of them is zeroed per response. Every reader of upstream heads parses here.
pub(crate) fn parse_response<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> (httparse::Response<'h, 'b>, httparse::Result<usize>) {
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, fields);
    (resp, parsed)
}

/// The status of the final response head at the start of `buf`, once complete; informational
/// heads before it are removed.
pub(crate) fn final_head(buf: &mut Vec<u8>, upgrade: bool) -> Result<Option<u16>, HeadError> {
    if let Some(status) = plain_final_head(buf) {
        return Ok(Some(status));
    }
    loop {
        let mut fields = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_RESPONSE_FIELDS];
        let (resp, parsed) = parse_response(buf, &mut fields);
        match parsed {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                if status == 101 {
                    return if upgrade {
                        Ok(Some(101))
                    } else {
                        Err(HeadError::Malformed) // never asked for
                    };
                }
                if (100..200).contains(&status) {
                    buf.drain(..n);
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    continue;
                }
                return Ok(Some(status));
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

/// The status of a complete final head recognised without a full parse (which
/// `response_head` does next, once): the status line starts `HTTP/1.x NNN` with NNN in
/// 200..=599 and an empty line ends the head. `None` sends the head through httparse.
pub(crate) fn plain_final_head(buf: &[u8]) -> Option<u16> {
    let line = buf.get(..13)?;
    let digits = &line[9..12];
    if &line[..7] != b"HTTP/1."
        || !line[7].is_ascii_digit()
        || line[8] != b' '
        || !digits.iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&digits[0])
        || !matches!(line[12], b' ' | b'\r' | b'\n')
    {
        return None;
    }
    // The empty line: LF followed by LF or CRLF (httparse takes bare LF line ends too).
    memchr::memchr_iter(b'\n', buf).find(|&i| match buf.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => buf.get(i + 2) == Some(&b'\n'),
        _ => false,
    })?;
    let n = |i: usize| u16::from(digits[i] - b'0');
    Some(n(0) * 100 + n(1) * 10 + n(2))
}

/// How the end of a response body is found (RFC 9112 6.3).
pub(crate) enum Framing {
    Length(u64),
    Chunked(Chunks),
    UntilClose,
}

impl Framing {
    /// How many bytes of `data` belong to the body, and whether the body ends there.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        match self {
            Framing::Length(left) => {
                let take = (*left).min(data.len() as u64);
                *left -= take;
                Ok((take as usize, *left == 0))
            }
            Framing::Chunked(c) => match c.feed(data)? {
                Some(end) => Ok((end, true)),
                None => Ok((data.len(), false)),
            },
            Framing::UntilClose => Ok((data.len(), false)),
        }
    }
}

/// Follows chunked framing (relayed as is) to find where the message ends.
#[derive(Default, Clone)]
pub(crate) struct Chunks {
    state: ChunkState,
    size: u64,
    digits: bool,
    /// The message has a trailer section.
    trailers: bool,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    EndLf,
}

impl Chunks {
    /// The offset just past the end of the message if it ends inside `data`.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, ()> {
        let mut at = 0;
        loop {
            let (used, _, ended) = self.next_data(&data[at..])?;
            at += used;
            if ended {
                return Ok(Some(at));
            }
            if at == data.len() {
                return Ok(None);
            }
        }
    }

    /// Appends the chunk data in `data` to `out`: how many bytes of `data` that consumed, and
    /// whether the message ended (for HTTP/1.0 clients, which cannot read chunks).
    pub(crate) fn decode_into(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ()> {
        let mut at = 0;
        loop {
            let (used, run, ended) = self.next_data(&data[at..])?;
            if let Some(r) = run {
                out.extend_from_slice(&data[at + r.start..at + r.end]);
            }
            at += used;
            if ended || at == data.len() {
                return Ok((at, ended));
            }
        }
    }

    /// Follows the framing in `data` up to the next run of chunk data, the message's end or
    /// the end of `data`: how many bytes that consumed, the data run's range within them, and
    /// whether the message ended. The relay and the hyper path's decoder share this one state
    /// machine (fuzzed through [`relay_parse`]).
    pub(crate) fn next_data(
        &mut self,
        data: &[u8],
    ) -> Result<(usize, Option<std::ops::Range<usize>>, bool), ()> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() {
            if self.state == Data {
                let take = self.size.min((data.len() - i) as u64);
                self.size -= take;
                if self.size == 0 {
                    self.state = DataCr;
                }
                let end = i + take as usize;
                return Ok((end, Some(i..end), false));
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(d))
                        .ok_or(())?;
                    self.digits = true;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits => Extension,
                (Size, b'\r') if self.digits => SizeLf,
                (Extension, b'\r') => SizeLf,
                // A bare LF inside a chunk line is refused, as hyper refuses it.
                (Extension, b'\n') => return Err(()),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = false;
                    Size
                }
                (TrailerStart, b'\r') => EndLf,
                (TrailerStart, b'\n') => return Err(()),
                (TrailerStart, _) => {
                    self.trailers = true;
                    TrailerLine
                }
                (TrailerLine, b'\r') => TrailerLineLf,
                (TrailerLine, b'\n') => return Err(()),
                (TrailerLine, _) => TrailerLine,
                (TrailerLineLf, b'\n') => TrailerStart,
                (EndLf, b'\n') => return Ok((i, None, true)),
                _ => return Err(()),
            };
        }
        Ok((i, None, false))
    }
}

/// Runs the request-side chunked reader over `data` as a client's body, first over the part
/// before `split` (as if the rest had not come yet), then on over the whole: returns the body's
/// length on the wire and decoded when it is complete. For the fuzzer
/// (`fuzz/fuzz_targets/request_chunked.rs`): a prefix never sees an end the whole does not,
/// reading on gives what one read would, and the decoder forwards exactly that length.
#[doc(hidden)]
pub fn request_chunked_parse(data: &[u8], split: usize) -> Option<(usize, usize)> {
    let whole = chunked_body(data, &mut BodyScan::default());
    let mut scan = BodyScan::default();
    match chunked_body(&data[..split.min(data.len())], &mut scan) {
        Ok(Some(early)) => assert_eq!(whole, Ok(Some(early)), "a prefix ended elsewhere"),
        // The rest read on from where the prefix left off: as if read at once.
        Ok(None) => assert_eq!(chunked_body(data, &mut scan), whole, "resumed differently"),
        Err(()) => assert!(whole.is_err(), "a prefix failed where the whole does not"),
    }
    let (raw, len) = whole.ok()??;
    assert!(len <= raw && raw <= data.len());
    let mut out = Vec::new();
    assert_eq!(
        Chunks::default().decode_into(&data[..raw], &mut out),
        Ok((raw, true))
    );
    assert_eq!(out.len(), len);
    Some((raw, len))
}

/// Fields written as the lines of an HTTP/1.1 head.
impl<F: Field> FieldSink<F> for Vec<u8> {
    fn keep(&mut self, f: F) {
        put(self, f.name(), f.value());
    }
    fn add(&mut self, name: &'static str, value: &[u8]) {
        put(self, name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_plain_decimal_or_left_to_the_full_path() {
        for (v, n) in [
            (&b"0"[..], Some(0)),
            (b"000", Some(0)),
            (b"65536", Some(65536)),
            (
                b"18446744073709551615"[..19].as_ref(),
                Some(1_844_674_407_370_955_161),
            ),
            (b"", None),
            (b"+5", None),
            (b"-1", None),
            (b" 5", None),
            (b"5,5", None),
            (b"0x10", None),
            (b"18446744073709551616", None), // 20 digits: could overflow
        ] {
            assert_eq!(content_length(v), n, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn plain_final_heads_are_recognised_and_everything_else_is_left_to_httparse() {
        let ok: &[(&[u8], u16)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200),
            (b"HTTP/1.0 404 Not Found\r\n\r\nbody", 404),
            (b"HTTP/1.1 503\r\nA: b\r\n\r\n", 503),
            (b"HTTP/1.1 302 Found\nLocation: /\n\n", 302),
        ];
        for (head, status) in ok {
            assert_eq!(plain_final_head(head), Some(*status));
            let mut buf = head.to_vec();
            assert_eq!(final_head(&mut buf, false).ok().flatten(), Some(*status));
        }
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"[..], // not complete
            b"HTTP/1.1 100 Continue\r\n\r\n",                 // informational
            b"HTTP/1.1 101 Switching\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert_eq!(
                plain_final_head(head),
                None,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        // An informational head before the final one is still removed by the full parse.
        let mut buf =
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n".to_vec();
        assert_eq!(final_head(&mut buf, false).ok().flatten(), Some(200));
        assert!(buf.starts_with(b"HTTP/1.1 200"));
    }

    #[test]
    fn chunked_end_is_found_across_pieces() {
        let msg = b"5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 0..msg.len() {
            let mut c = Chunks::default();
            let (a, b) = msg.split_at(split);
            let end = match c.feed(a).expect("valid") {
                Some(e) => e,
                None => split + c.feed(b).expect("valid").expect("ends"),
            };
            assert_eq!(&msg[end..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn chunked_data_is_decoded_whatever_the_pieces() {
        let msg = b"5;x=1\r\nhello\r\nA\r\n world!!!!\r\n0\r\nx-t: 1\r\n\r\nNEXT";
        for split in 0..msg.len() {
            let mut c = Chunks::default();
            let (mut data, mut end) = (Vec::new(), None);
            let mut offset = 0;
            for piece in [&msg[..split], &msg[split..]] {
                let mut at = 0;
                while at < piece.len() && end.is_none() {
                    let (used, span, ended) = c.next_data(&piece[at..]).expect("valid");
                    if let Some(r) = span {
                        data.extend_from_slice(&piece[at + r.start..at + r.end]);
                    }
                    at += used;
                    if ended {
                        end = Some(offset + at);
                    }
                }
                offset += piece.len();
            }
            assert_eq!(data, b"hello world!!!!", "split at {split}");
            assert_eq!(
                end.map(|e| &msg[e..]),
                Some(&b"NEXT"[..]),
                "split at {split}"
            );
        }
    }

    #[test]
    fn chunked_garbage_is_an_error() {
        assert!(Chunks::default().feed(b"zz\r\n").is_err());
        assert!(Chunks::default().feed(b"\r\n").is_err());
        assert!(Chunks::default().feed(b"3\r\nabcX").is_err());
        assert!(Chunks::default().feed(b"ffffffffffffffffff\r\n").is_err());
    }

    #[test]
    fn length_framing_stops_at_the_length() {
        let mut f = Framing::Length(5);
        assert_eq!(f.feed(b"abc").expect("ok"), (3, false));
        assert_eq!(f.feed(b"defgh").expect("ok"), (2, true));
    }
}
