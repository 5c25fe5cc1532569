//! HTTP/1.1 as the sidecar speaks it to the app: the request head it writes, the response
//! head it parses, and how a response body is delimited (RFC 9112 §6).
//!
//! The client side of a sidecar is narrow: one upstream, requests already checked by the
//! gate, origin-form targets. Writing the head and reading the response in the request's
//! own task (see [`super::upstream::pool`]) costs a third of what a general client's connection task
//! does. The parsing is strict where a lenient reading could let a response be framed
//! differently by us and by the client: conflicting lengths, a length beside
//! `Transfer-Encoding`, malformed chunk sizes are errors, never guesses.

use std::future::poll_fn;
use std::io::Write;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::hop;
use super::raw_headers::{HeaderSpans, MAX_HEADERS, RawHeaders};
use crate::BoxError;

/// The largest response head (status line, headers) or trailer section accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line with its extensions.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed response head")]
    Head,
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("conflicting or invalid Content-Length")]
    Length,
    #[error("Content-Length beside Transfer-Encoding")]
    LengthAndEncoding,
    #[error("malformed chunked body")]
    Chunk,
    #[error("the app closed the connection before the body ended")]
    Truncated,
    #[error("the app switched protocols unasked")]
    UnaskedUpgrade,
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the app closes the connection (responses only).
    Close,
}

/// How a request body of this method and size goes on the wire: its declared length if it
/// has one, chunked otherwise. An empty POST, PUT or PATCH still says `content-length: 0`,
/// which some servers require.
pub fn request_framing(method: &Method, end_stream: bool, exact_len: Option<u64>) -> Framing {
    let expects_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    match (end_stream, exact_len) {
        (true, _) | (false, Some(0)) if !expects_body => Framing::Empty,
        (true, _) => Framing::Length(0),
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Chunked,
    }
}

/// Appends the request head to `out`: `headers`, then `added`. Framing headers come from
/// `framing` alone: whatever `Content-Length` or `Transfer-Encoding` the map holds is not
/// written.
pub fn encode_request_head<'a>(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    added: impl Iterator<Item = &'a (HeaderName, HeaderValue)>,
    framing: Framing,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let own = headers
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_LENGTH && *name != header::TRANSFER_ENCODING);
    for (name, value) in own.chain(added.map(|(name, value)| (name, value))) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Empty | Framing::Close => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        // A zero-size chunk would end the body.
        return;
    }
    encode_chunk_size(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes.
pub fn encode_chunk_size(len: usize, out: &mut Vec<u8>) {
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk of a chunked body, without trailers (the app gets none from us).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Body bytes gathered before a write; larger frames are written as they come.
const WRITE_BATCH: usize = 16 * 1024;

/// How writing a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// Nothing of the body was taken and the head did not go out whole: the peer has not
    /// got this message.
    Unsent,
    /// The write failed midway, or the body failed or did not match its declared length.
    Broken,
}

pub type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// The body's next frame if it is already here.
fn frame_now<B>(body: &mut B) -> Option<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

/// Writes the head already encoded in `out`, then `body` in `framing`: requests to the app
/// and responses to the client alike. Frames that are already here go out with the head in one
/// write; the rest as they come. With [`Framing::Empty`] (a response to `HEAD`, a 204, a
/// 304) the body is read to its end and its bytes dropped. Trailers are dropped: HTTP/1.1
/// peers of ours get none (gRPC, which needs them, goes over HTTP/2).
pub async fn write_message<W, B>(
    writer: &mut W,
    body: &mut B,
    framing: Framing,
    out: &mut Vec<u8>,
) -> Result<(), WriteError>
where
    W: AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut taken = false;
    let mut written = 0u64;
    let fail = |taken: bool| if taken { WriteError::Broken } else { WriteError::Unsent };
    loop {
        let frame = if out.is_empty() {
            poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
        } else {
            match frame_now(body) {
                Some(frame) => frame,
                None => {
                    writer.write_all(out).await.map_err(|_| fail(taken))?;
                    out.clear();
                    continue;
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(WriteError::Broken),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        taken = true;
        if matches!(framing, Framing::Empty) {
            continue;
        }
        written += data.len() as u64;
        if let Framing::Length(declared) = framing
            && written > declared
        {
            return Err(WriteError::Broken);
        }
        if data.len() < WRITE_BATCH {
            match framing {
                Framing::Chunked => encode_chunk(&data, out),
                _ => out.extend_from_slice(&data),
            }
            if out.len() >= WRITE_BATCH {
                writer.write_all(out).await.map_err(|_| WriteError::Broken)?;
                out.clear();
            }
            continue;
        }
        // A large frame is written from where it is, not copied.
        if framing == Framing::Chunked {
            encode_chunk_size(data.len(), out);
        }
        writer.write_all(out).await.map_err(|_| WriteError::Broken)?;
        out.clear();
        writer.write_all(&data).await.map_err(|_| WriteError::Broken)?;
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(declared) if written != declared => return Err(WriteError::Broken),
        Framing::Chunked => out.extend_from_slice(LAST_CHUNK),
        _ => {}
    }
    if !out.is_empty() {
        writer.write_all(out).await.map_err(|_| fail(taken))?;
    }
    Ok(())
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// As read, hop-by-hop ones and `Content-Length` left out.
    pub headers: RawHeaders,
    pub framing: Framing,
    /// Whether the connection can carry another request once this body has been read.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`, removing it (and any interim `1xx`
/// response before it) from `buf`. `Ok(None)`: more bytes are needed.
pub fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
    asked_upgrade: bool,
) -> Result<Option<Head>, ProtocolError> {
    loop {
        // Uninitialised slots: zeroing 100 of them would cost more than the parse.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ProtocolError::HeadTooLarge);
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadTooLarge),
                Err(_) => return Err(ProtocolError::Head),
            };
        if len > MAX_HEAD_BYTES {
            return Err(ProtocolError::HeadTooLarge);
        }
        let code = parsed.code.ok_or(ProtocolError::Head)?;
        let status = StatusCode::from_u16(code).map_err(|_| ProtocolError::Head)?;
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // 100 Continue, 103 Early Hints: the final response follows.
            let _ = buf.split_to(len);
            continue;
        }
        let mut storage = HeaderSpans::STORAGE;
        let raw = HeaderSpans::of(parsed.headers, buf, len, &mut storage).split(buf);
        let spans = raw.spans().ok_or(ProtocolError::Head)?;
        let mut kept = Vec::with_capacity(spans.len());
        let mut close = version == Version::HTTP_10;
        let mut options = None;
        // The last Transfer-Encoding value: its last coding decides the framing.
        let mut encoding = None;
        let mut length = None;
        let mut dated = false;
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        for span in spans {
            let (name, value) = (raw.name(span), raw.value(span));
            if name.eq_ignore_ascii_case(b"connection") {
                let connection = hop::Connection::read(value);
                if connection.close {
                    close = true;
                } else if connection.keep_alive && version == Version::HTTP_10 {
                    close = false;
                }
                if connection.names_headers {
                    options = Some(value);
                }
            }
            // Hop-by-hop headers end here (the framing is ours to write to the client), except
            // the protocol a 101 switches to, which the client must see.
            if hop::is_hop_by_hop(name, value) && !(switching && name.eq_ignore_ascii_case(b"upgrade")) {
                if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    encoding = Some(value);
                }
                continue;
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                // Framing is each hop's own: kept aside, as a number.
                length = content_length(value, length)?;
                continue;
            }
            dated |= name.eq_ignore_ascii_case(b"date");
            kept.push(*span);
        }
        if let Some(options) = options {
            kept.retain(|span| !hop::named(options).any(|token| token.eq_ignore_ascii_case(raw.name(span))));
        }
        let framing = if switching {
            if !asked_upgrade {
                return Err(ProtocolError::UnaskedUpgrade);
            }
            close = true;
            Framing::Empty
        } else {
            body_framing(length, encoding, method, status)?
        };
        if framing == Framing::Close {
            close = true;
        }
        return Ok(Some(Head {
            status,
            headers: raw.into_headers(kept, length, dated),
            framing,
            keep_alive: !close,
        }));
    }
}

/// RFC 9112 §6.3, for a response to `method` with `status`, its `Content-Length` and its
/// last `Transfer-Encoding` value.
fn body_framing(
    length: Option<u64>,
    encoding: Option<&[u8]>,
    method: &Method,
    status: StatusCode,
) -> Result<Framing, ProtocolError> {
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if let Some(encoding) = encoding {
        if length.is_some() {
            // Which one the next hop would believe is the whole of request smuggling.
            return Err(ProtocolError::LengthAndEncoding);
        }
        let last = encoding
            .rsplit(|&b| b == b',')
            .next()
            .map(<[u8]>::trim_ascii)
            .unwrap_or_default();
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Folds one `Content-Length` value into the length found so far: every value (and list
/// member) must be the same number.
fn content_length(value: &[u8], found: Option<u64>) -> Result<Option<u64>, ProtocolError> {
    let mut found = found;
    for member in value.split(|&b| b == b',') {
        let n = decimal(member.trim_ascii()).ok_or(ProtocolError::Length)?;
        if found.is_some_and(|f| f != n) {
            return Err(ProtocolError::Length);
        }
        found = Some(n);
    }
    Ok(found)
}

/// A length as HTTP writes one: 1 to 19 ASCII digits, nothing else (no sign, no space).
pub fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Read buffers grow by this much when less than a quarter of it is free.
pub const READ_CHUNK: usize = 8 * 1024;

/// Readies `buf` for the next read: back to the start of its allocation when it is empty
/// (the first lines are still in cache; only possible once the bytes handed out of it have
/// all been dropped), and grown when little room is left.
pub fn make_room(buf: &mut BytesMut) {
    if buf.is_empty() {
        let _ = buf.try_reclaim(READ_CHUNK);
    }
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// What a chunked decoder took from the buffer.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Data(Bytes),
    /// The body ended with these trailers (possibly none).
    End(HeaderMap),
}

/// Decodes a chunked body as its bytes arrive.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Takes what it can from the start of `buf`. `Ok(None)`: more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(ProtocolError::Chunk)
                        } else {
                            Ok(None)
                        };
                    };
                    if end > MAX_CHUNK_LINE {
                        return Err(ProtocolError::Chunk);
                    }
                    let size = chunk_size(&buf[..end])?;
                    let _ = buf.split_to(end + 2);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::Chunk);
                    }
                    let _ = buf.split_to(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        let _ = buf.split_to(2);
                        self.state = ChunkState::Done;
                        return Ok(Some(Chunk::End(HeaderMap::new())));
                    }
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut slots) {
                        Ok(httparse::Status::Complete((len, parsed))) => (len, parsed),
                        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
                        _ => return Err(ProtocolError::Chunk),
                    };
                    let mut map = HeaderMap::with_capacity(trailers.len());
                    for t in trailers {
                        let name = HeaderName::from_bytes(t.name.as_bytes()).map_err(|_| ProtocolError::Chunk)?;
                        let value = HeaderValue::from_bytes(t.value).map_err(|_| ProtocolError::Chunk)?;
                        map.append(name, value);
                    }
                    let _ = buf.split_to(len);
                    self.state = ChunkState::Done;
                    return Ok(Some(Chunk::End(map)));
                }
                ChunkState::Done => return Ok(Some(Chunk::End(HeaderMap::new()))),
            }
        }
    }
}

/// `1a;ext=v` → 26. Hex digits only, at most 16 of them; extensions are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let digits_end = line.iter().position(|b| !b.is_ascii_hexdigit()).unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 16 {
        return Err(ProtocolError::Chunk);
    }
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtocolError::Chunk);
    }
    let mut size = 0u64;
    for &d in digits {
        let v = (d as char).to_digit(16).ok_or(ProtocolError::Chunk)?;
        size = (size << 4) | u64::from(v);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, ProtocolError> {
        let mut buf = BytesMut::from(raw);
        parse_response_head(&mut buf, &method, false)
    }

    fn all_headers(head: &Head) -> HeaderMap {
        let mut map = HeaderMap::new();
        head.headers.clone().into_map(&mut map);
        map
    }

    fn framing(raw: &str) -> Result<Framing, ProtocolError> {
        head(raw, Method::GET).map(|h| h.expect("complete head").framing)
    }

    #[test]
    fn request_heads_carry_our_framing_only() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let mut out = Vec::new();
        let added = [(HeaderName::from_static("x-ours"), HeaderValue::from_static("1"))];
        encode_request_head(
            &Method::POST,
            "/a?b=c",
            &headers,
            added.iter(),
            Framing::Length(12),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=c HTTP/1.1\r\nhost: app\r\nx-multi: a\r\nx-multi: b\r\nx-ours: 1\r\ncontent-length: 12\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_request_head(
            &Method::GET,
            "/",
            &HeaderMap::new(),
            std::iter::empty(),
            Framing::Empty,
            &mut out,
        );
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn request_framing_follows_the_body() {
        assert_eq!(request_framing(&Method::GET, true, Some(0)), Framing::Empty);
        assert_eq!(request_framing(&Method::POST, true, Some(0)), Framing::Length(0));
        assert_eq!(request_framing(&Method::POST, false, Some(7)), Framing::Length(7));
        assert_eq!(request_framing(&Method::PUT, false, None), Framing::Chunked);
        assert_eq!(request_framing(&Method::DELETE, false, Some(0)), Framing::Empty);
        let mut out = Vec::new();
        encode_chunk(b"hello world, 17 b", &mut out);
        encode_chunk(b"", &mut out);
        assert_eq!(out, b"11\r\nhello world, 17 b\r\n");
    }

    #[test]
    fn app_headers_pass_as_read_until_a_map_is_needed() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Correlation-ID: app\r\nConnection: X-Hop\r\nx-hop: 1\r\nVary: Accept\r\nContent-Length: 2\r\n\r\nok";
        let mut buf = BytesMut::from(raw);
        let h = parse_response_head(&mut buf, &Method::GET, false).unwrap().unwrap();
        let mut app = h.headers;
        let read: Vec<(&[u8], &[u8])> = app.iter().collect();
        assert_eq!(
            read,
            [
                (&b"Content-Type"[..], &b"text/plain"[..]),
                (b"X-Correlation-ID", b"app"),
                (b"Vary", b"Accept"),
            ],
            "spelled as the app did; Connection and what it names are gone"
        );
        assert_eq!((app.length, app.dated), (Some(2), false));
        app.remove(&HeaderName::from_static("x-correlation-id"));
        assert_eq!(app.len(), 2);
        let mut map = HeaderMap::new();
        map.insert("x-correlation-id", HeaderValue::from_static("ours"));
        map.append(header::VARY, HeaderValue::from_static("Origin"));
        map.append(header::VARY, HeaderValue::from_static("Cookie"));
        app.into_map(&mut map);
        let names: Vec<_> = map.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "vary", "content-length", "x-correlation-id"]);
        let vary: Vec<_> = map.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Origin", "Cookie"], "the app's first, then ours");
        assert_eq!(map["x-correlation-id"], "ours");
    }

    #[test]
    fn response_heads_parse_with_their_framing() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: a\r\nX-App: b\r\n\r\nhello";
        let mut buf = BytesMut::from(raw);
        let h = parse_response_head(&mut buf, &Method::GET, false).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        let headers = all_headers(&h);
        let apps: Vec<_> = headers.get_all("x-app").iter().collect();
        assert_eq!(apps, ["a", "b"]);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Ok(Framing::Close)
        );
        assert_eq!(framing("HTTP/1.1 200 OK\r\n\r\n"), Ok(Framing::Close));
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"),
            Ok(Framing::Length(3))
        );
        let to_head = head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(to_head.framing, Framing::Empty);
        assert!(to_head.keep_alive);
    }

    #[test]
    fn hop_by_hop_headers_end_at_the_parse() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nX-App: kept\r\n\r\n";
        let h = head(raw, Method::GET).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Chunked, "framing read before the header is dropped");
        assert!(h.keep_alive);
        let headers = all_headers(&h);
        let names: Vec<_> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-app"]);
        let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let mut buf = BytesMut::from(raw);
        let h = parse_response_head(&mut buf, &Method::GET, true).unwrap().unwrap();
        assert_eq!(
            all_headers(&h)["upgrade"],
            "websocket",
            "the protocol switched to stays"
        );
    }

    #[test]
    fn ambiguous_lengths_are_errors() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(ProtocolError::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n"),
            Err(ProtocolError::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Err(ProtocolError::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n"),
            Err(ProtocolError::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            Err(ProtocolError::Length)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ProtocolError::LengthAndEncoding)
        );
        let empty = head("HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(all_headers(&empty)["x-empty"], "");
        assert_eq!(
            head("HTTP/1.1 abc OK\r\n\r\n", Method::GET).err(),
            Some(ProtocolError::Head)
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", Method::GET).err(),
            Some(ProtocolError::Head)
        );
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET).unwrap().is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&huge, Method::GET).err(), Some(ProtocolError::HeadTooLarge));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(head(&many, Method::GET).err(), Some(ProtocolError::HeadTooLarge));
    }

    #[test]
    fn interim_responses_are_skipped_and_close_is_honoured() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        let h = head(raw, Method::POST).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert!(!h.keep_alive);
        let old = head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", Method::GET)
            .unwrap()
            .unwrap();
        assert!(!old.keep_alive, "HTTP/1.0 closes unless it says keep-alive");
        let old = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            Method::GET,
        )
        .unwrap()
        .unwrap();
        assert!(old.keep_alive);
    }

    #[test]
    fn switching_protocols_only_when_asked() {
        let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        assert_eq!(head(raw, Method::GET).err(), Some(ProtocolError::UnaskedUpgrade));
        let mut buf = BytesMut::from(raw);
        let h = parse_response_head(&mut buf, &Method::GET, true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(h.framing, Framing::Empty);
        assert!(!h.keep_alive, "the connection belongs to the new protocol");
    }

    /// Decodes `raw` fed `step` bytes at a time: the result must not depend on how the
    /// bytes were split across reads.
    fn dechunk(raw: &[u8], step: usize) -> Result<(Vec<u8>, HeaderMap, Vec<u8>), ProtocolError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Some(Chunk::Data(d)) => body.extend_from_slice(&d),
                Some(Chunk::End(trailers)) => return Ok((body, trailers, [&buf[..], &raw[fed..]].concat())),
                None if fed < raw.len() => {
                    let end = (fed + step).min(raw.len());
                    buf.extend_from_slice(&raw[fed..end]);
                    fed = end;
                }
                None => return Err(ProtocolError::Truncated),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let raw = b"5;name=value\r\nhello\r\n7 \r\n, world\r\nA\r\n0123456789\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, raw.len()] {
            let (body, trailers, rest) = dechunk(raw, step).unwrap();
            assert_eq!(body, b"hello, world0123456789", "step {step}");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(rest, b"NEXT", "bytes after the body are left for the next response");
        }
        let (body, trailers, _) = dechunk(b"0\r\n\r\n", 1).unwrap();
        assert!(body.is_empty() && trailers.is_empty());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                dechunk(bad, 1).err(),
                Some(ProtocolError::Chunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless_line = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert_eq!(dechunk(&endless_line, 64).err(), Some(ProtocolError::Chunk));
        assert_eq!(dechunk(b"5\r\nhel", 1).err(), Some(ProtocolError::Truncated));
    }
}
