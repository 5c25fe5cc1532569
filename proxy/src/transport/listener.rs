//! Listeners: accept, apply the connection limit, terminate TLS, hand each connection to
//! the HTTP servers, and drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::Proxy;
use super::h1_server;
use super::hyper_server;
use super::io::IdleTimeout;
use crate::policy::certs;
use crate::policy::gate::Conn;

/// What every connection of a listener is held to.
pub struct Limits {
    /// hyper, for HTTP/2 and what [`h1_server`] hands over.
    pub builder: auto::Builder<TokioExecutor>,
    pub h1: h1_server::Settings,
    pub idle: Duration,
    pub drain: Duration,
    pub connections: Arc<Semaphore>,
}

/// hyper's server, with the same limits as ours.
pub fn hyper_builder(config: &crate::config::Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true)
        // Head and a small body in one buffer, one write: cheaper than a two-part writev for
        // the typical API response; large bodies are copied in bounded chunks.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// Accepts until the stop signal, then waits for open connections (at most the drain
/// timeout).
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
) {
    // Every connection task holds a sender; when the last is gone, the drain is done.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let listener_label = if tls.is_some() { "tls" } else { "http" };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = limits.connections.clone().try_acquire_owned() else {
            proxy.gate.metrics.limits.with_label_values(&["max_connections"]).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        proxy
            .gate
            .metrics
            .connections
            .with_label_values(&[listener_label])
            .inc();
        let proxy = proxy.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _permit = permit;
            proxy.gate.metrics.connections_open.inc();
            serve_connection(stream, peer, tls, &proxy, &limits, stop).await;
            proxy.gate.metrics.connections_open.dec();
        });
    }
    drop(listener);
    drop(alive);
    let drain = limits.drain;
    if tokio::time::timeout(drain, all_closed.recv()).await.is_err() {
        warn!(
            after_seconds = drain.as_secs(),
            "drain timed out; closing the remaining connections"
        );
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy: &Arc<Proxy>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) {
    let metrics = proxy.gate.metrics.clone();
    let io = IdleTimeout::new(stream, limits.idle, move || {
        metrics.limits.with_label_values(&["idle_timeout"]).inc();
    });
    match tls {
        None => {
            let conn = Conn::new(peer, false, None);
            serve_http(io, conn, false, proxy, limits, stop).await;
        }
        Some(acceptor) => {
            // The handshake gets the header timeout too: a client that stalls it is a slowloris.
            let handshake = tokio::time::timeout(limits.idle.min(Duration::from_secs(10)), acceptor.accept(io)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(peer = %peer, error = %e, "TLS handshake failed");
                    proxy.gate.metrics.limits.with_label_values(&["tls_handshake"]).inc();
                    return;
                }
                Err(_) => {
                    proxy.gate.metrics.limits.with_label_values(&["header_timeout"]).inc();
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| certs::cert_identity(leaf).ok())
                .map(Arc::new);
            let conn = Conn::new(peer, true, client_cert);
            serve_http(stream, conn, h2, proxy, limits, stop).await;
        }
    }
}

/// HTTP/1.1 through [`h1_server`] until a request is one for hyper; HTTP/2 (ALPN `h2`,
/// or the prior-knowledge preface, which `h1_server` hands over) through hyper.
async fn serve_http<I>(io: I, conn: Conn, h2: bool, proxy: &Arc<Proxy>, limits: &Limits, stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, read) = if h2 {
        (io, bytes::Bytes::new())
    } else {
        match h1_server::serve(io, &conn, proxy, &limits.h1, &stop).await {
            h1_server::Served::Closed => return,
            h1_server::Served::Handoff(io, read) => (io, read),
        }
    };
    hyper_server::serve(io, read, conn, proxy, limits, stop).await;
}
