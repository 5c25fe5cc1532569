//! Keep-alive HTTP/1.1 connections to the app, reused last-in first-out, and the exchange
//! of one request and its response on one of them.
//!
//! A general-purpose client (hyper's) runs a task per connection and passes every request
//! and response through channels to it; a sidecar has one upstream and one request per
//! connection at a time, so the request's own task writes the request and reads the
//! response head ([`crate::transport::h1_codec`] does the wire format), and the response body reads the
//! rest. The body hands its connection back to the pool the moment its last byte has been
//! read, if the connection can carry another request; otherwise the connection is closed.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::policy::gate::UpstreamFailure;
use crate::transport::h1_codec::{self, Chunk, ChunkedDecoder, Framing, Head, Polled, ProtocolError, WriteError};
use crate::transport::reply::{Reply, ReplyHeaders};
use crate::{Body, BoxError};

pub struct Http1Pool {
    host: String,
    port: u16,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    response_timeout: Duration,
}

struct Idle {
    conn: AppConn,
    since: Instant,
}

/// A connection to the app, what has been read from it but not used yet, and its timer
/// for the response timeout.
struct AppConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Armed once and moved only when it fires early: a request's deadline is never earlier
    /// than one set before it, so a timer left at an earlier request's deadline can only
    /// fire early, and is then moved on. A timer per request, registered with the runtime
    /// and taken out again, cost more than the rest of the exchange's bookkeeping.
    timer: Pin<Box<Sleep>>,
}

/// How an exchange failed, which decides whether the request can go out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// Writing the head failed before any of the body was taken: the app has none of it.
    Unsent,
    /// The app closed the connection without a byte of response.
    Unanswered,
    Protocol,
    /// No response head by the deadline.
    Timeout,
}

impl Http1Pool {
    /// `response_timeout`: from the request's start to the app's response head.
    pub fn new(
        authority: &Authority,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Http1Pool {
        Http1Pool {
            // `[::1]` is a URI's spelling; the resolver wants `::1`.
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: authority.port_u16().unwrap_or(80),
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
            connect_timeout,
            response_timeout,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one.
    /// `added` go after the request's own headers.
    pub async fn send<'a, B>(
        self: &Arc<Self>,
        request: Request<B>,
        added: impl Iterator<Item = &'a (HeaderName, HeaderValue)>,
    ) -> Result<Reply, UpstreamFailure>
    where
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + self.response_timeout;
        let (parts, mut body) = request.into_parts();
        let framing = h1_codec::request_framing(&parts.method, body.is_end_stream(), body.size_hint().exact());
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // Enough for a typical head with a bearer token, so that it is not grown on the way.
        let mut head = Vec::with_capacity(1024);
        h1_codec::encode_request_head(&parts.method, target, &parts.headers, added, framing, &mut head);
        let asked_upgrade = parts.headers.contains_key(header::UPGRADE);
        // A request that may have reached the app goes out again only if it has no body to
        // lose and sending it twice means the same as once (RFC 9110 §9.2.2).
        let replayable = framing == Framing::Empty && parts.method.is_idempotent();
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect(deadline).await?, false),
            };
            match conn
                .exchange(&head, &mut body, framing, &parts.method, asked_upgrade, deadline)
                .await
            {
                Ok(head) => return Ok(self.lend(conn, head)),
                // The app closed an idle connection as the request went out on it.
                Err(Failed::Unsent) if reused => continue,
                Err(Failed::Unanswered) if reused && replayable => continue,
                Err(Failed::Timeout) => return Err(UpstreamFailure::Timeout),
                Err(_) => return Err(UpstreamFailure::Protocol),
            }
        }
    }

    /// Idle connections waiting in the pool.
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn checkout(&self) -> Option<AppConn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while idle.front().is_some_and(|i| i.since.elapsed() >= self.idle_timeout) {
            idle.pop_front();
        }
        while let Some(Idle { conn, .. }) = idle.pop_back() {
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self, deadline: tokio::time::Instant) -> Result<AppConn, UpstreamFailure> {
        let until = deadline.min(tokio::time::Instant::now() + self.connect_timeout);
        let stream = match tokio::time::timeout_at(until, TcpStream::connect((self.host.as_str(), self.port))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => return Err(UpstreamFailure::Connect),
            Err(_) if until == deadline => return Err(UpstreamFailure::Timeout),
            Err(_) => return Err(UpstreamFailure::Connect),
        };
        let _ = stream.set_nodelay(true);
        Ok(AppConn {
            stream,
            buf: BytesMut::with_capacity(h1_codec::READ_CHUNK),
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        })
    }

    /// The response, its body holding the connection until the body has been read.
    fn lend(self: &Arc<Self>, mut conn: AppConn, head: Head) -> Reply {
        let headers = ReplyHeaders::from_raw(head.headers);
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the upgraded protocol.
            let early = conn.buf.split().freeze();
            let mut reply = Reply::new(head.status, headers, Body::new(AppBody::ended(self.clone())));
            reply.upgraded = Some((conn.stream, early));
            return reply;
        }
        let mut body = AppBody {
            conn: Some(conn),
            pool: self.clone(),
            decoder: match head.framing {
                Framing::Empty => Decoder::Done,
                Framing::Length(n) => Decoder::Length(n),
                Framing::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
                Framing::Close => Decoder::Close,
            },
            keep_alive: head.keep_alive,
        };
        if matches!(body.decoder, Decoder::Done) {
            body.finish();
        }
        Reply::new(head.status, headers, Body::new(body))
    }

    fn put(&self, conn: AppConn) {
        // Bytes past the end of the response: the app and we disagree on its framing.
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl AppConn {
    /// An idle connection must have nothing to read: readable means the app closed it (or
    /// sent bytes no request asked for). Asks the readiness the runtime already has, so a
    /// quiet connection costs no system call.
    fn is_quiet(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut byte = [0u8; 1];
                matches!(self.stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// [`exchange`] on this connection, given up at `deadline`.
    async fn exchange<B>(
        &mut self,
        head: &[u8],
        body: &mut B,
        framing: Framing,
        method: &Method,
        asked_upgrade: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Head, Failed>
    where
        B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
    {
        let AppConn { stream, buf, timer } = self;
        let mut exchange = pin!(exchange(stream, buf, head, body, framing, method, asked_upgrade));
        loop {
            tokio::select! {
                biased;
                done = &mut exchange => return done,
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Failed::Timeout);
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}

/// Writes the request and reads the response head. A body is sent while the response is
/// awaited: an app may answer (a 413, say) before reading all of it.
async fn exchange<B>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head: &[u8],
    body: &mut B,
    framing: Framing,
    method: &Method,
    asked_upgrade: bool,
) -> Result<Head, Failed>
where
    B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Unpin,
{
    if framing == Framing::Empty {
        stream.write_all(head).await.map_err(|_| Failed::Unsent)?;
        return read_head(stream, buf, method, asked_upgrade).await;
    }
    let (mut reader, mut writer) = stream.split();
    let upload = pin!(async {
        let mut out = Vec::with_capacity(head.len() + 1024);
        out.extend_from_slice(head);
        h1_codec::write_message(&mut writer, body, framing, &mut out)
            .await
            .map_err(|e| match e {
                WriteError::Unsent => Failed::Unsent,
                WriteError::Broken => Failed::Protocol,
            })
    });
    let mut download = pin!(read_head(&mut reader, buf, method, asked_upgrade));
    tokio::select! {
        biased;
        answered = &mut download => {
            // Part of the body is still unsent: the connection cannot carry another request.
            answered.map(|head| Head { keep_alive: false, ..head })
        }
        sent = upload => {
            sent?;
            download.await
        }
    }
}

/// Reads until a whole response head is in `buf`, and parses it.
async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    method: &Method,
    asked_upgrade: bool,
) -> Result<Head, Failed> {
    let mut answered = false;
    loop {
        if !buf.is_empty()
            && let Some(head) =
                h1_codec::parse_response_head(buf, method, asked_upgrade).map_err(|_| Failed::Protocol)?
        {
            return Ok(head);
        }
        h1_codec::make_room(buf);
        match reader.read_buf(buf).await {
            Ok(0) | Err(_) if !answered => return Err(Failed::Unanswered),
            Ok(0) | Err(_) => return Err(Failed::Protocol),
            Ok(_) => answered = true,
        }
    }
}

/// A response body read from the app's connection, which goes back to the pool once the
/// body has been read to its end (and is closed if the body is dropped before).
struct AppBody {
    conn: Option<AppConn>,
    pool: Arc<Http1Pool>,
    decoder: Decoder,
    keep_alive: bool,
}

enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// What the buffered bytes gave.
enum Step {
    Data(Bytes),
    End(Option<HeaderMap>),
    More,
}

impl AppBody {
    fn ended(pool: Arc<Http1Pool>) -> AppBody {
        AppBody {
            conn: None,
            pool,
            decoder: Decoder::Done,
            keep_alive: false,
        }
    }

    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
        {
            self.pool.put(conn);
        }
    }

    fn step(&mut self) -> Result<Step, ProtocolError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Step::End(None));
        };
        let buf = &mut conn.buf;
        Ok(match &mut self.decoder {
            Decoder::Done => Step::End(None),
            _ if buf.is_empty() => Step::More,
            Decoder::Length(left) => {
                let take = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                *left -= take as u64;
                Step::Data(buf.split_to(take).freeze())
            }
            Decoder::Chunked(chunks) => match chunks.decode(buf)? {
                Some(Chunk::Data(data)) => Step::Data(data),
                Some(Chunk::End(trailers)) => Step::End((!trailers.is_empty()).then_some(trailers)),
                None => Step::More,
            },
            Decoder::Close => Step::Data(buf.split().freeze()),
        })
    }
}

impl HttpBody for AppBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled> {
        let this = &mut *self;
        loop {
            match this.step() {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(Step::Data(data)) => {
                    if matches!(this.decoder, Decoder::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End(trailers)) => {
                    this.finish();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Ok(Step::More) => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            h1_codec::make_room(&mut conn.buf);
            let read = ready!(pin!(conn.stream.read_buf(&mut conn.buf)).poll(cx));
            match read {
                Ok(0) if matches!(this.decoder, Decoder::Close) => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ProtocolError::Truncated.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    fn get() -> Request<Body> {
        Request::get("/x")
            .header("host", "app")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    /// An app that answers every request on a connection, counting connections; with
    /// `close_after_first`, it closes each connection after its first response.
    async fn app(close_after_first: bool) -> (Authority, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() || close_after_first {
                            return;
                        }
                    }
                });
            }
        });
        (format!("{addr}").parse().unwrap(), accepted)
    }

    fn pool(authority: &Authority) -> Arc<Http1Pool> {
        pool_answering_within(authority, Duration::from_secs(5))
    }

    fn pool_answering_within(authority: &Authority, response_timeout: Duration) -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(
            authority,
            8,
            Duration::from_secs(60),
            Duration::from_secs(1),
            response_timeout,
        ))
    }

    #[tokio::test]
    async fn a_read_body_returns_its_connection() {
        let (authority, accepted) = app(false).await;
        let pool = pool(&authority);
        for _ in 0..5 {
            let response = pool.send(get(), std::iter::empty()).await.unwrap();
            assert_eq!(response.body.collect().await.unwrap().to_bytes(), "ok");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection, reused"
        );
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn each_response_is_read_from_the_start_of_the_buffer() {
        let (authority, _) = app(false).await;
        let pool = pool(&authority);
        let mut ends = Vec::new();
        for _ in 0..4 {
            let response = pool.send(get(), std::iter::empty()).await.unwrap();
            response.body.collect().await.unwrap();
            let idle = pool.idle.lock().unwrap();
            ends.push(idle.back().unwrap().conn.buf.as_ptr() as usize);
        }
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{ends:?}");
    }

    #[tokio::test]
    async fn an_unread_body_closes_its_connection() {
        let (authority, accepted) = app(false).await;
        let pool = pool(&authority);
        // Not read to the end: the connection cannot carry another request.
        drop(pool.send(get(), std::iter::empty()).await.unwrap());
        assert_eq!(pool.idle_len(), 0);
        let response = pool.send(get(), std::iter::empty()).await.unwrap();
        assert_eq!(response.body.collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_an_error() {
        let (authority, accepted) = app(true).await;
        let pool = pool(&authority);
        for _ in 0..3 {
            let response = pool.send(get(), std::iter::empty()).await.unwrap();
            assert_eq!(response.body.collect().await.unwrap().to_bytes(), "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = format!("{}", listener.local_addr().unwrap()).parse().unwrap();
        drop(listener);
        assert_eq!(
            pool(&authority).send(get(), std::iter::empty()).await.err(),
            Some(UpstreamFailure::Connect)
        );
    }

    #[tokio::test]
    async fn the_response_timeout_runs_from_each_request_on_a_reused_connection() {
        // One connection; the app answers after these delays. The margins are seconds, so
        // that a loaded machine cannot turn an answer into a timeout or the reverse; what
        // is asserted is which of the two happened, and that a timeout does not wait for
        // the app.
        let timeout = Duration::from_secs(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = format!("{}", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut pending = Vec::new();
            for delay in [0, 1000, 30_000] {
                if read_request(&mut stream, &mut pending).await.is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        let pool = pool_answering_within(&authority, timeout);
        let (status, _) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        // The connection's timer still says the first request's deadline, half a second
        // into this one: it fires early and is moved, and the answer after a second is taken.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        let (status, _) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(1000));
        // An answer after the deadline is a timeout: not before the deadline, and long
        // before the app's answer.
        let started = Instant::now();
        let failed = pool.send(get(), std::iter::empty()).await.err();
        assert_eq!(failed, Some(UpstreamFailure::Timeout));
        let waited = started.elapsed();
        assert!(waited >= timeout && waited < Duration::from_secs(20), "{waited:?}");
        assert_eq!(pool.idle_len(), 0, "a timed-out connection is not reused");
    }

    /// An app that reads each whole request (`Content-Length` or chunked), records its
    /// bytes and answers with the next of `replies`; a `None` after a reply closes the connection.
    async fn scripted(replies: Vec<Option<&'static [u8]>>) -> (Authority, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter().peekable();
            'conns: loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut pending = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream, &mut pending).await else {
                        continue 'conns;
                    };
                    log.lock().unwrap().push(request);
                    match replies.next() {
                        Some(Some(reply)) => stream.write_all(reply).await.unwrap(),
                        _ => continue 'conns,
                    }
                    if let Some(None) = replies.peek() {
                        replies.next();
                        continue 'conns;
                    }
                }
            }
        });
        (format!("{addr}").parse().unwrap(), seen)
    }

    async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                let body_end = if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|n| n.parse::<usize>().unwrap())
                {
                    Some(end + 4 + len).filter(|&e| e <= pending.len())
                } else if head.contains("transfer-encoding: chunked") {
                    pending.windows(5).position(|w| w == b"0\r\n\r\n").map(|p| p + 5)
                } else {
                    Some(end + 4)
                };
                if let Some(body_end) = body_end {
                    return Some(pending.drain(..body_end).collect());
                }
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn request(method: Method, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "app")
            .body(body)
            .unwrap()
    }

    fn full(bytes: &'static [u8]) -> Body {
        Full::new(Bytes::from_static(bytes))
            .map_err(|never| match never {})
            .boxed()
    }

    /// A body of unknown length whose frames the test sends.
    fn streamed() -> (mpsc::Sender<Bytes>, Body) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(4);
        let stream = futures_core_stream(move |cx| rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))));
        (tx, StreamBody::new(stream).boxed())
    }

    fn futures_core_stream<F>(f: F) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>>
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> + Unpin,
    {
        struct PollStream<F>(F);
        impl<F> futures_core::Stream for PollStream<F>
        where
            F: FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> + Unpin,
        {
            type Item = Result<Frame<Bytes>, BoxError>;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
                (self.0)(cx)
            }
        }
        PollStream(f)
    }

    async fn read_all(reply: Reply) -> (StatusCode, http_body_util::Collected<Bytes>) {
        (reply.status, reply.body.collect().await.unwrap())
    }

    #[tokio::test]
    async fn chunked_responses_are_decoded_with_their_trailers_and_reuse_the_connection() {
        let reply: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-sum: 42\r\n\r\n";
        let (authority, seen) = scripted(vec![Some(reply), Some(reply)]).await;
        let pool = pool(&authority);
        for _ in 0..2 {
            let (status, collected) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(collected.trailers().unwrap()["x-sum"], "42");
            assert_eq!(collected.to_bytes(), "hello world");
        }
        assert_eq!(seen.lock().unwrap().len(), 2);
        assert_eq!(pool.idle_len(), 1, "one connection carried both");
    }

    #[tokio::test]
    async fn bodiless_responses_read_nothing_more() {
        let replies: Vec<Option<&'static [u8]>> = vec![
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
            Some(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"),
            Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ];
        let (authority, seen) = scripted(replies).await;
        let pool = pool(&authority);
        let response = pool
            .send(request(Method::HEAD, full(b"")), std::iter::empty())
            .await
            .unwrap();
        assert_eq!(
            response.headers.raw().length,
            Some(1000),
            "a HEAD response keeps its length"
        );
        assert!(response.body.is_end_stream());
        for expected in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            let (status, body) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
            assert_eq!(status, expected);
            assert!(body.to_bytes().is_empty());
        }
        let (_, body) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
        assert_eq!(body.to_bytes(), "ok");
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert_eq!(pool.idle_len(), 1, "all four on one connection");
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_the_connection_is_not_reused() {
        let (authority, _) = scripted(vec![Some(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), None]).await;
        let pool = pool(&authority);
        let (_, body) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
        assert_eq!(body.to_bytes(), "until the end");
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test]
    async fn bytes_past_the_declared_length_keep_the_connection_out_of_the_pool() {
        let (authority, _) = scripted(vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")]).await;
        let pool = pool(&authority);
        let (_, body) = read_all(pool.send(get(), std::iter::empty()).await.unwrap()).await;
        assert_eq!(body.to_bytes(), "ok");
        assert_eq!(pool.idle_len(), 0);
    }

    #[tokio::test]
    async fn ambiguous_or_truncated_responses_are_errors() {
        let (authority, _) = scripted(vec![Some(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )])
        .await;
        assert_eq!(
            pool(&authority).send(get(), std::iter::empty()).await.err(),
            Some(UpstreamFailure::Protocol)
        );

        let (authority, _) = scripted(vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), None]).await;
        let pool = pool(&authority);
        let response = pool.send(get(), std::iter::empty()).await.unwrap();
        assert!(
            response.body.collect().await.is_err(),
            "a short body is an error, not an end"
        );
        assert_eq!(pool.idle_len(), 0);

        let (authority, _) = scripted(vec![Some(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        )])
        .await;
        assert_eq!(
            self::pool(&authority).send(get(), std::iter::empty()).await.err(),
            Some(UpstreamFailure::Protocol),
            "a switch nobody asked for"
        );
    }

    #[tokio::test]
    async fn request_bodies_go_out_with_their_length_or_chunked() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (authority, seen) = scripted(vec![Some(ok), Some(ok), Some(ok)]).await;
        let pool = pool(&authority);
        pool.send(request(Method::POST, full(b"hello")), std::iter::empty())
            .await
            .unwrap();
        pool.send(request(Method::POST, full(b"")), std::iter::empty())
            .await
            .unwrap();
        let (tx, body) = streamed();
        let sending = tokio::spawn(async move {
            tx.send(Bytes::from_static(b"part one, ")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(Bytes::from_static(b"part two")).await.unwrap();
        });
        let response = pool.send(request(Method::PUT, body), std::iter::empty()).await.unwrap();
        sending.await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        let seen = seen.lock().unwrap();
        let text: Vec<String> = seen.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
        assert_eq!(
            text[0],
            "POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert_eq!(text[1], "POST /x HTTP/1.1\r\nhost: app\r\ncontent-length: 0\r\n\r\n");
        assert_eq!(
            text[2],
            "PUT /x HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\na\r\npart one, \r\n8\r\npart two\r\n0\r\n\r\n"
        );
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn an_answer_before_the_upload_ends_is_returned_and_the_connection_closed() {
        // The app answers as soon as it has the head, and never reads the body.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = format!("{}", listener.local_addr().unwrap()).parse().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            let reply = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig";
            stream.write_all(reply).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let pool = pool(&authority);
        let (tx, body) = streamed();
        tx.send(Bytes::from_static(b"the first of many parts")).await.unwrap();
        // `tx` stays open: the upload never ends.
        let response = tokio::time::timeout(
            Duration::from_secs(2),
            pool.send(request(Method::POST, body), std::iter::empty()),
        )
        .await
        .expect("the answer does not wait for the upload")
        .unwrap();
        let (status, body) = read_all(response).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body.to_bytes(), "big");
        assert_eq!(pool.idle_len(), 0, "half a body went out: the connection is done");
        drop(tx);
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (authority, _) = scripted(vec![Some(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await;
        let (status, body) = read_all(
            pool(&authority)
                .send(request(Method::POST, full(b"x")), std::iter::empty())
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.to_bytes(), "ok");
    }
}
