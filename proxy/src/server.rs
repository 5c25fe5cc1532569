//! Listeners: accept, apply connection limits, terminate TLS, serve HTTP/1.1 and HTTP/2
//! through the gate, and drain on shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::forward::Upstream;
use crate::front::{self, Served};
use crate::gate::{Conn, Gate};
use crate::http1::AppHeaders;
use crate::metrics::Metrics;
use crate::net::{IdleTimeout, Rewind, TrustedProxies};
use crate::ratelimit::Limiter;
use crate::snapshot::{Current, Pod};
use crate::tls::{self, ForwardedCertVerifier};
use crate::{admin, source};

/// A started sidecar: where it listens, and how to stop it.
pub struct Running {
    pub http: SocketAddr,
    pub tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub current: Arc<Current>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets open requests finish (up to the drain timeout), returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        for task in self.background {
            task.abort();
        }
    }
}

/// Binds every listener, starts the snapshot source and the admin port.
pub async fn start(config: &Config) -> Result<Running, String> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let current = Arc::new(Current::default());
    let pod = Pod {
        namespace: config.namespace.clone(),
        labels: config.pod_labels.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    let forwarded_certs = match &config.client_ca {
        Some(ca) => Some(ForwardedCertVerifier::from_ca_file(ca).map_err(|e| e.to_string())?),
        None => None,
    };
    let tls_acceptor = match (&config.tls_listen, &config.tls_cert, &config.tls_key) {
        (Some(_), Some(cert), Some(key)) => Some(TlsAcceptor::from(
            tls::server_config(cert, key, config.client_ca.as_deref(), config.client_auth)
                .map_err(|e| e.to_string())?,
        )),
        _ => None,
    };
    let gate = Arc::new(Gate {
        current: current.clone(),
        pod: pod.clone(),
        limiter: Limiter::new(config.rate_limit_buckets),
        metrics: metrics.clone(),
        upstream: Upstream::new(&config.upstream, config.upstream_protocol, config.upstream_timeout)?,
        trusted: TrustedProxies::new(config.trusted_proxies.clone()),
        forwarded_certs,
        max_body_bytes: config.max_body_bytes,
    });

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let http_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let tls_listener = match config.tls_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = |l: &TcpListener| l.local_addr().map_err(|e| e.to_string());
    let http = local(&http_listener)?;
    let admin_addr = local(&admin_listener)?;
    let tls_addr = tls_listener.as_ref().map(local).transpose()?;

    if let Some(path) = &config.snapshot_file
        && let Ok(bytes) = std::fs::read(path)
    {
        // Before accepting: a sidecar that listens already enforces its policy.
        source::apply(
            &bytes,
            &current,
            &pod,
            config.jwt_cache_size,
            &metrics,
            &path.display().to_string(),
        );
    }
    let mut background = vec![tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        current.clone(),
    ))];
    background.push(match (&config.snapshot_file, &config.control_plane) {
        (Some(path), _) => tokio::spawn(source::watch_file(
            path.clone(),
            Duration::from_secs(1),
            current.clone(),
            pod.clone(),
            config.jwt_cache_size,
            metrics.clone(),
        )),
        (None, Some(base)) => tokio::spawn(source::poll_control_plane(
            base.clone(),
            config.control_plane_token_file.clone(),
            current.clone(),
            pod.clone(),
            config.jwt_cache_size,
            metrics.clone(),
        )),
        (None, None) => return Err("no policy source".into()),
    });

    let (shutdown, stop) = watch::channel(false);
    let limits = Arc::new(Limits {
        builder: builder(config),
        front: front::Settings {
            max_head_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
            max_body_bytes: config.max_body_bytes,
            header_timeout: config.header_timeout,
        },
        idle: config.idle_timeout,
        drain: config.drain_timeout,
        connections: Arc::new(Semaphore::new(config.max_connections)),
    });
    let mut tasks = vec![tokio::spawn(accept_loop(
        http_listener,
        None,
        gate.clone(),
        limits.clone(),
        stop.clone(),
    ))];
    if let Some(listener) = tls_listener {
        tasks.push(tokio::spawn(accept_loop(listener, tls_acceptor, gate, limits, stop)));
    }
    info!(http = %http, tls = ?tls_addr, admin = %admin_addr, upstream = %config.upstream, "portcullis-proxy listening");
    Ok(Running {
        http,
        tls: tls_addr,
        admin: admin_addr,
        metrics,
        current,
        shutdown,
        tasks,
        background,
    })
}

struct Limits {
    /// hyper, for HTTP/2 and what [`front`] hands over.
    builder: auto::Builder<TokioExecutor>,
    front: front::Settings,
    idle: Duration,
    drain: Duration,
    connections: Arc<Semaphore>,
}

fn builder(config: &Config) -> auto::Builder<TokioExecutor> {
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

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
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
            gate.metrics.limits.with_label_values(&["max_connections"]).inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        gate.metrics.connections.with_label_values(&[listener_label]).inc();
        let gate = gate.clone();
        let limits = limits.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            let _permit = permit;
            gate.metrics.connections_open.inc();
            serve_connection(stream, peer, tls, &gate, &limits, stop).await;
            gate.metrics.connections_open.dec();
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
    gate: &Arc<Gate>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) {
    let metrics = gate.metrics.clone();
    let io = IdleTimeout::new(stream, limits.idle, move || {
        metrics.limits.with_label_values(&["idle_timeout"]).inc();
    });
    match tls {
        None => {
            let conn = Conn::new(peer, false, None);
            serve_http(io, conn, false, gate, limits, stop).await;
        }
        Some(acceptor) => {
            // The handshake gets the header timeout too: a client that stalls it is a slowloris.
            let handshake = tokio::time::timeout(limits.idle.min(Duration::from_secs(10)), acceptor.accept(io)).await;
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(peer = %peer, error = %e, "TLS handshake failed");
                    gate.metrics.limits.with_label_values(&["tls_handshake"]).inc();
                    return;
                }
                Err(_) => {
                    gate.metrics.limits.with_label_values(&["header_timeout"]).inc();
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| tls::cert_identity(leaf).ok())
                .map(Arc::new);
            let conn = Conn::new(peer, true, client_cert);
            serve_http(stream, conn, h2, gate, limits, stop).await;
        }
    }
}

/// HTTP/1.1 through [`front`] until a request is one for hyper; HTTP/2 (ALPN `h2`, or the
/// prior-knowledge preface, which `front` hands over) through hyper.
async fn serve_http<I>(io: I, conn: Conn, h2: bool, gate: &Arc<Gate>, limits: &Limits, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (io, read) = if h2 {
        (io, Bytes::new())
    } else {
        match front::serve(io, &conn, gate, &limits.front, &stop).await {
            Served::Closed => return,
            Served::Handoff(io, read) => (io, read),
        }
    };
    let conn = Arc::new(conn);
    let service_gate = gate.clone();
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let gate = service_gate.clone();
        let conn = conn.clone();
        async move {
            let mut response = gate.handle(&conn, request).await;
            if let Some(app_headers) = response.extensions_mut().remove::<AppHeaders>() {
                app_headers.into_map(response.headers_mut());
            }
            Ok::<_, std::convert::Infallible>(response)
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
        () = front::stopping(&mut stop) => {
            // Open requests finish (HTTP/2: GOAWAY), then the connection closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        let label = classify(&*e);
        if let Some(label) = label {
            gate.metrics.limits.with_label_values(&[label]).inc();
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
