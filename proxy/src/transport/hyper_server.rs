//! hyper's server, for HTTP/2 and for the HTTP/1.1 requests [`super::h1_server`] hands
//! over (with the bytes it read): each request through [`Proxy::serve`], each reply made
//! into hyper's response.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing::debug;

use super::Proxy;
use super::body::RequestBody;
use super::h1_server;
use super::io::Rewind;
use super::listener::Limits;
use crate::policy::gate::Conn;

/// Serves `io` (whose first bytes, already read, are `read`) until it closes or the
/// sidecar drains.
pub async fn serve<I>(
    io: I,
    read: Bytes,
    conn: Conn,
    proxy: &Arc<Proxy>,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service_proxy = proxy.clone();
    let max_body = proxy.gate.max_body_bytes;
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let proxy = service_proxy.clone();
        let conn = conn.clone();
        async move {
            let request = request.map(|body| RequestBody::streaming(body, max_body));
            let reply = proxy.serve(&conn, request).await;
            Ok::<_, std::convert::Infallible>(reply.into_response())
        }
    });
    // On the heap: hyper's connection state is twice the size of the rest of the task, and
    // inline it would spread every connection's task over more memory (and the cache).
    let mut connection = Box::pin(
        limits
            .builder
            .serve_connection_with_upgrades(TokioIo::new(Rewind::new(io, read)), service),
    );
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = h1_server::stopping(&mut stop) => {
            // Open requests finish (HTTP/2: GOAWAY), then the connection closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        let label = classify(&*e);
        if let Some(label) = label {
            proxy.gate.metrics.limits.with_label_values(&[label]).inc();
        }
        debug!(error = %e, "connection ended with an error");
    }
}

/// Which limit (if any) ended a connection.
fn classify(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some("header_size");
            }
            if h.is_timeout() {
                return Some("header_timeout");
            }
            if h.is_parse() {
                return Some("bad_request");
            }
        }
        source = e.source();
    }
    None
}
