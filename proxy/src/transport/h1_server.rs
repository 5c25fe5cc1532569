//! HTTP/1.1 from clients: served here in the common case, by hyper otherwise.
//!
//! Nearly every request a sidecar sees is a keep-alive request without a body, or with a
//! small one that came with its head. For those, hyper's server was about 40 % of the
//! instructions of a whole proxied request (its dispatcher and service futures, a timer per
//! request, a second pass over the headers to encode them). Here the head is parsed into a
//! map whose values share the read buffer, the request goes to the gate, and the response
//! head and body go out in one write.
//!
//! Anything else hands the connection, with every byte read from it so far, to hyper,
//! which serves it from there on: an HTTP/2 preface, an upgrade, `Expect`,
//! `Transfer-Encoding`, a body larger than [`BUFFERED_BODY`] or not allowed at all,
//! HTTP/1.0, a target that is not origin-form, a head that does not parse or breaks a
//! limit. Every unusual case keeps one implementation, with the errors (400, 431, 413) and
//! the limit metrics it had; nothing here guesses at a request hyper would refuse.

use std::cell::RefCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Proxy;
use super::body::RequestBody;
use super::h1_codec::{self, Framing, READ_CHUNK, WriteError};
use super::hop;
use super::raw_headers::{HeaderSpans, MAX_HEADERS};
use super::reply::{Reply, ReplyHeaders};
use crate::policy::gate::Conn;

/// The largest request body read together with its head; larger ones stream through hyper.
pub const BUFFERED_BODY: usize = 16 * 1024;

/// The limits of [`crate::config::Config`] that a request head is held to.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    /// From the first read of a head to its last byte, body included when it is read with
    /// the head.
    pub header_timeout: Duration,
}

/// How a connection left [`serve`].
pub enum Served<I> {
    Closed,
    /// The connection, and the bytes read from it that hyper is to read first.
    Handoff(I, Bytes),
}

/// Serves requests on `io` until the client closes, asks to close, the sidecar stops, or a
/// request is one for hyper.
pub async fn serve<I>(
    mut io: I,
    conn: &Conn,
    proxy: &Proxy,
    settings: &Settings,
    stop: &watch::Receiver<bool>,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(READ_CHUNK);
    // One wait for the stop signal for the connection's life: waiting between requests then
    // costs a poll, not a registration with the channel each time.
    let mut waiter = stop.clone();
    let mut stopped = pin!(stopping(&mut waiter));
    loop {
        let next = next_request(&mut io, &mut buf, proxy, settings, stopped.as_mut()).await;
        let (request, close) = match next {
            Next::Request(request, close) => (request, close),
            Next::Unusual => return Served::Handoff(io, buf.freeze()),
            Next::Close => return Served::Closed,
        };
        let head_request = request.method() == Method::HEAD;
        let reply = proxy.serve(conn, request).await;
        // Draining: this response is the connection's last.
        let close = close || *stop.borrow();
        let written = write_reply(&mut io, reply, head_request, close, &mut out).await;
        if close || written.is_err() {
            // For TLS, the close_notify that tells the client nothing was cut.
            let _ = io.shutdown().await;
            return Served::Closed;
        }
    }
}

/// Resolves once the sidecar drains (or its stop signal is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopping| *stopping).await;
}

// Returned once per request and moved at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request, and whether the client asked to close after it.
    Request(Request<RequestBody>, bool),
    Unusual,
    Close,
}

/// Reads until `buf` holds a whole request. Waiting for the first byte is bounded by the
/// idle timeout (the connection's wrapper) and ends when the sidecar drains; from the first
/// byte on, the header timeout runs: the timer is only set when a head arrives in pieces.
async fn next_request<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    proxy: &Proxy,
    settings: &Settings,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
) -> Next {
    let mut deadline = None;
    loop {
        if !buf.is_empty() {
            match parse(buf, settings) {
                Parse::Request(request, close) => return Next::Request(request, close),
                Parse::Unusual => return Next::Unusual,
                Parse::More => {}
            }
        }
        h1_codec::make_room(buf);
        let read = if buf.is_empty() {
            tokio::select! {
                biased;
                read = io.read_buf(buf) => read,
                // Once it has fired, the connection closes: it is never polled again.
                () = stopped.as_mut() => return Next::Close,
            }
        } else {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
            match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
                Ok(read) => read,
                Err(_) => {
                    proxy.gate.metrics.limits.with_label_values(&["header_timeout"]).inc();
                    return Next::Close;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum Parse {
    Request(Request<RequestBody>, bool),
    /// Hyper's to serve (see the module's comment).
    Unusual,
    /// The head, or the body that belongs with it, is not all here yet.
    More,
}

/// Takes the request at the start of `buf` out of it, if it is whole and one of ours.
/// When it is not ours, `buf` is left as it was.
fn parse(buf: &mut BytesMut, settings: &Settings) -> Parse {
    // Uninitialised slots: zeroing 100 of them would cost more than the parse.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < settings.max_head_bytes => return Parse::More,
            // Too large, too many headers, malformed: hyper answers 431 or 400.
            _ => return Parse::Unusual,
        };
    if head_len > settings.max_head_bytes || parsed.headers.len() > settings.max_headers || parsed.version != Some(1) {
        return Parse::Unusual;
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Parse::Unusual;
    };
    // Origin-form only: absolute-form, authority-form (CONNECT) and `*` are hyper's.
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parse::Unusual;
    };
    if !target.starts_with('/') || method == Method::CONNECT {
        return Parse::Unusual;
    }
    let Some(Framed { length, close }) = framed(parsed.headers) else {
        return Parse::Unusual;
    };
    if length > settings.max_body_bytes || length > BUFFERED_BODY as u64 {
        return Parse::Unusual;
    }
    // At most BUFFERED_BODY.
    let length = length as usize;
    if buf.len() - head_len < length {
        return Parse::More;
    }
    let target_at = (target.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    let target_end = target_at.wrapping_add(target.len());
    if target_end > head_len || target_at > target_end {
        return Parse::Unusual;
    }
    let mut storage = HeaderSpans::STORAGE;
    let head = HeaderSpans::of(parsed.headers, buf, head_len, &mut storage).split(buf);
    let body = buf.split_to(length).freeze();
    let built = (|| {
        let uri = Uri::from_maybe_shared(head.bytes.slice(target_at..target_end)).ok()?;
        let mut headers = HeaderMap::with_capacity(head.header_count());
        for header in head.headers() {
            let (name, value) = header?;
            headers.append(name, value);
        }
        Some((uri, headers))
    })();
    let Some((uri, headers)) = built else {
        // Put back what was taken, for hyper to read (and refuse) from the start.
        let mut all = BytesMut::with_capacity(head.bytes.len() + body.len() + buf.len());
        all.extend_from_slice(&head.bytes);
        all.extend_from_slice(&body);
        all.extend_from_slice(buf);
        *buf = all;
        return Parse::Unusual;
    };
    let mut request = Request::new(RequestBody::buffered(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Parse::Request(request, close)
}

/// The request at the start of `bytes` as [`serve`] reads it (method, target, headers,
/// body, and whether the client asked to close), or `None` when it would hand the
/// connection to hyper or wait for more bytes. For the differential test against hyper and
/// the fuzz targets: the server itself calls [`parse`].
#[doc(hidden)]
pub fn parse_one(bytes: &[u8], settings: &Settings) -> Option<(Request<Bytes>, bool)> {
    let mut buf = BytesMut::from(bytes);
    let Parse::Request(request, close) = parse(&mut buf, settings) else {
        return None;
    };
    let (parts, body) = request.into_parts();
    let body = match body {
        RequestBody::Buffered(bytes) => bytes.unwrap_or_default(),
        RequestBody::Streaming(_) => return None,
    };
    Some((Request::from_parts(parts, body), close))
}

/// What the headers say about a request's body and its connection.
struct Framed {
    /// The body's length: `Content-Length`, or 0 without one.
    length: u64,
    /// `Connection: close`.
    close: bool,
}

/// Reads the headers that decide how a request is framed and whether it is ours: `None`
/// for `Transfer-Encoding`, `Expect`, `Upgrade`, `Connection: upgrade`, more than one
/// `Content-Length` or one that is not a plain number.
fn framed(headers: &[httparse::Header<'_>]) -> Option<Framed> {
    let mut length = None;
    let mut close = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return None;
            }
            length = Some(h1_codec::decimal(h.value)?);
        } else if name.eq_ignore_ascii_case(b"connection") {
            let connection = hop::Connection::read(h.value);
            if connection.upgrade {
                return None;
            }
            close |= connection.close;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return None;
        }
    }
    Some(Framed {
        length: length.unwrap_or(0),
        close,
    })
}

/// Writes the reply: head and body (or its first frames) in one write. A body that fails
/// or ends short of its length is an error: the connection must then close, so that the
/// client sees the response cut rather than a shorter one.
async fn write_reply<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut reply: Reply,
    head_request: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<(), WriteError> {
    let framing = encode_response_head(
        reply.status,
        &reply.headers,
        head_request,
        reply.body.size_hint().exact(),
        close,
        out,
    );
    h1_codec::write_message(io, &mut reply.body, framing, out).await
}

/// Encodes a response head into `out` (cleared first) and returns how its body is framed:
/// the app's headers as read (if it was the app that answered), then the map's. The
/// framing headers are ours: `Content-Length` when the length is known (as the app
/// declared it, or from the body), chunked otherwise; none for the bodiless (a `HEAD`
/// response or a 304 keeps the length the app declared).
fn encode_response_head(
    status: StatusCode,
    headers: &ReplyHeaders,
    head_request: bool,
    exact_len: Option<u64>,
    close: bool,
    out: &mut Vec<u8>,
) -> Framing {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut push = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    // The app's, as read: no framing or hop-by-hop header among them.
    let app = headers.raw();
    app.iter().for_each(|(name, value)| push(name, value));
    let (mut declared, mut dated) = (app.length, app.dated);
    for (name, value) in headers.map() {
        if *name == header::CONTENT_LENGTH {
            declared = h1_codec::decimal(value.as_bytes());
            continue;
        }
        if *name == header::TRANSFER_ENCODING || *name == header::CONNECTION {
            continue;
        }
        dated |= *name == header::DATE;
        push(name.as_str().as_bytes(), value.as_bytes());
    }
    let no_content = status == StatusCode::NO_CONTENT || status.is_informational();
    let bodiless = head_request || no_content || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, declared.or(exact_len)) {
        (true, _) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Chunked,
    };
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty if !no_content => declared,
        _ => None,
    };
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends the HTTP date of now (RFC 9110 §6.6.1: a server with a clock sends one),
/// formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *text = httpdate::fmt_http_date(now);
            *at = secs;
        }
        out.extend_from_slice(text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn settings() -> Settings {
        Settings {
            max_head_bytes: 8192,
            max_headers: 20,
            max_body_bytes: 1024,
            header_timeout: Duration::from_secs(1),
        }
    }

    fn parse_all(bytes: &[u8]) -> (Parse, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf, &settings()), buf)
    }

    #[tokio::test]
    async fn requests_with_their_bodies_are_taken_one_at_a_time() {
        let mut buf = BytesMut::from(
            &b"POST /a?q=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nX-Two: a\r\nx-two: b\r\n\r\nhelloGET /b HTTP/1.1\r\nhost: t\r\nconnection: keep-alive, close\r\n\r\nGET"[..],
        );
        let Parse::Request(first, close) = parse(&mut buf, &settings()) else {
            panic!("first request")
        };
        assert!(!close);
        assert_eq!(first.method(), Method::POST);
        assert_eq!(first.uri(), "/a?q=1");
        assert_eq!(first.headers()["host"], "t");
        let twos: Vec<_> = first.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"], "repeated headers kept in order");
        assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "hello");
        let Parse::Request(second, close) = parse(&mut buf, &settings()) else {
            panic!("second request")
        };
        assert!(close, "Connection: close is seen among other tokens");
        assert_eq!(second.uri(), "/b");
        assert!(second.into_body().collect().await.unwrap().to_bytes().is_empty());
        assert!(matches!(parse(&mut buf, &settings()), Parse::More));
        assert_eq!(&buf[..], b"GET", "the partial third request stays");
    }

    #[test]
    fn a_body_not_all_here_waits_for_the_rest() {
        let partial = b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\nhello";
        let (parsed, buf) = parse_all(partial);
        assert!(matches!(parsed, Parse::More));
        assert_eq!(&buf[..], partial, "nothing taken");
        let (parsed, _) = parse_all(b"GET / HTTP/1.1\r\nhost: t\r\n");
        assert!(matches!(parsed, Parse::More));
    }

    #[test]
    fn unusual_requests_are_left_whole_for_hyper() {
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
        let many: String = (0..21).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let big_body = format!("POST / HTTP/1.1\r\ncontent-length: 1025\r\n\r\n{}", "x".repeat(1025));
        let unusual: &[&[u8]] = &[
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET http://example.com/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\na",
            b"POST / HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\na",
            b"POST / HTTP/1.1\r\ncontent-length: \r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n",
            b"GET /\x7f HTTP/1.1\r\n\r\n",
            b"G@T / HTTP/1.1\r\n\r\n",
            long.as_bytes(),
            many.as_bytes(),
            big_body.as_bytes(),
        ];
        for bytes in unusual {
            let (parsed, buf) = parse_all(bytes);
            assert!(matches!(parsed, Parse::Unusual), "{:?}", String::from_utf8_lossy(bytes));
            assert_eq!(&buf[..], *bytes, "left whole");
        }
    }

    fn head(
        status: StatusCode,
        headers: &[(&str, &str)],
        head_request: bool,
        exact: Option<u64>,
        close: bool,
    ) -> (Framing, String) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut out = Vec::new();
        let headers = ReplyHeaders::from_map(map);
        let framing = encode_response_head(status, &headers, head_request, exact, close, &mut out);
        (framing, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_carry_our_framing_only() {
        let (framing, text) = head(
            StatusCode::OK,
            &[("content-type", "text/plain"), ("date", "x"), ("content-length", "5")],
            false,
            None,
            false,
        );
        assert_eq!(framing, Framing::Length(5));
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: x\r\ncontent-length: 5\r\n\r\n"
        );
        // Length from the body; the date added when the app sent none; closing said.
        let (framing, text) = head(StatusCode::NOT_FOUND, &[], false, Some(12), true);
        assert_eq!(framing, Framing::Length(12));
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\nconnection: close\r\n\r\n"), "{text}");
        // Unknown length: chunked; a stray Transfer-Encoding or Connection is not copied.
        let (framing, text) = head(
            StatusCode::OK,
            &[("transfer-encoding", "gzip"), ("connection", "x"), ("date", "x")],
            false,
            None,
            false,
        );
        assert_eq!(framing, Framing::Chunked);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ndate: x\r\ntransfer-encoding: chunked\r\n\r\n");
        // The app's headers as read, then ours; its length and date are believed.
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nDate: Sun\r\nContent-Length: 2\r\n\r\n"[..]);
        let app = h1_codec::parse_response_head(&mut buf, &Method::GET, false)
            .unwrap()
            .unwrap();
        let mut headers = ReplyHeaders::from_raw(app.headers);
        headers.set(
            hyper::header::HeaderName::from_static("x-correlation-id"),
            "c1".parse().unwrap(),
        );
        let mut out = Vec::new();
        let framing = encode_response_head(StatusCode::OK, &headers, false, Some(2), false, &mut out);
        assert_eq!(framing, Framing::Length(2));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nDate: Sun\r\nx-correlation-id: c1\r\ncontent-length: 2\r\n\r\n"
        );
        // HEAD and 304 keep the declared length and send no body; 204 has no length.
        let (framing, text) = head(
            StatusCode::OK,
            &[("content-length", "42"), ("date", "x")],
            true,
            Some(0),
            false,
        );
        assert_eq!(framing, Framing::Empty);
        assert_eq!(text, "HTTP/1.1 200 OK\r\ndate: x\r\ncontent-length: 42\r\n\r\n");
        let (framing, text) = head(
            StatusCode::NOT_MODIFIED,
            &[("content-length", "42"), ("date", "x")],
            false,
            None,
            false,
        );
        assert_eq!(framing, Framing::Empty);
        assert!(text.contains("content-length: 42\r\n"), "{text}");
        let (framing, text) = head(
            StatusCode::NO_CONTENT,
            &[("content-length", "0"), ("date", "x")],
            false,
            Some(0),
            false,
        );
        assert_eq!(framing, Framing::Empty);
        assert_eq!(text, "HTTP/1.1 204 No Content\r\ndate: x\r\n\r\n");
    }
}
