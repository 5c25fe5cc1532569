//! Keep-alive HTTP/1.1 connections to the app, reused last-in first-out.
//!
//! A general-purpose client pool (hyper-util's) keys connections by scheme and host, parses
//! URIs, and hands connections back through a background task; a sidecar has one upstream,
//! so this pool is a stack of idle connections. A connection goes back on the stack when the
//! response body it carried has been read to the end, and is dropped (closed) otherwise.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::http::uri::Authority;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::forward::UpstreamError;
use crate::{Body, BoxError};

pub struct Http1Pool {
    host: String,
    port: u16,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Http1Pool {
    pub fn new(authority: &Authority, max_idle: usize, idle_timeout: Duration, connect_timeout: Duration) -> Http1Pool {
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
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one.
    pub async fn send(self: &Arc<Self>, mut request: Request<Body>) -> Result<Response<Body>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.lend(response, sender)),
                Err(mut e) => match e.take_message() {
                    // The app closed the idle connection before the request was written:
                    // nothing reached it, so the request goes out again on another one.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Protocol),
                },
            }
        }
    }

    /// Idle connections waiting in the pool.
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                while idle.front().is_some_and(|i| i.since.elapsed() >= self.idle_timeout) {
                    idle.pop_front();
                }
                idle.pop_back()?.sender
            };
            if sender.is_ready() {
                return Some(sender);
            }
            // Its last response has just ended and its connection task has not caught up yet;
            // a connection the app closed fails here and is dropped.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, UpstreamError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| UpstreamError::Connect)?
        .map_err(|_| UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        // One buffer per request (see the server's builder).
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| UpstreamError::Connect)?;
        tokio::spawn(async move {
            // Errors end the connection; the request that saw them has already been answered.
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }

    /// The response, its body holding the connection until the body has been read.
    fn lend(self: &Arc<Self>, response: Response<Incoming>, sender: SendRequest<Body>) -> Response<Body> {
        // After a 101 the connection belongs to the upgraded protocol.
        let returnable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        response.map(|body| {
            Body::new(Lent {
                body,
                ended: false,
                loan: returnable.then(|| (self.clone(), sender)),
            })
        })
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// A response body that returns its connection to the pool once read to the end.
struct Lent {
    body: Incoming,
    ended: bool,
    loan: Option<(Arc<Http1Pool>, SendRequest<Body>)>,
}

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled.map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if (self.ended || self.body.is_end_stream())
            && let Some((pool, sender)) = self.loan.take()
        {
            pool.put(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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
        Arc::new(Http1Pool::new(
            authority,
            8,
            Duration::from_secs(60),
            Duration::from_secs(1),
        ))
    }

    #[tokio::test]
    async fn a_read_body_returns_its_connection() {
        let (authority, accepted) = app(false).await;
        let pool = pool(&authority);
        for _ in 0..5 {
            let response = pool.send(get()).await.unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection, reused"
        );
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn an_unread_body_closes_its_connection() {
        let (authority, accepted) = app(false).await;
        let pool = pool(&authority);
        // Not read to the end: the connection cannot carry another request.
        drop(pool.send(get()).await.unwrap());
        assert_eq!(pool.idle_len(), 0);
        let response = pool.send(get()).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(pool.idle_len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_an_error() {
        let (authority, accepted) = app(true).await;
        let pool = pool(&authority);
        for _ in 0..3 {
            let response = pool.send(get()).await.unwrap();
            assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority: Authority = format!("{}", listener.local_addr().unwrap()).parse().unwrap();
        drop(listener);
        assert_eq!(pool(&authority).send(get()).await.err(), Some(UpstreamError::Connect));
    }
}
