//! The sidecar assembled: the policy gate, the app behind it, the snapshot feed, the
//! admin port and the listeners, started from the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::info;

use crate::admin;
use crate::config::{Config, ConfigError};
use crate::control_plane::{ChannelError, Endpoint};
use crate::feed::{self, Installer};
use crate::metrics::Metrics;
use crate::policy::certs::{CertError, ForwardedCertVerifier};
use crate::policy::client_ip::TrustedProxies;
use crate::policy::gate::Gate;
use crate::policy::ratelimit::Limiter;
use crate::policy::snapshot::{Current, Pod};
use crate::report::Reporter;
use crate::transport::auth_route::AuthRoute;
use crate::transport::listener::{self, Limits};
use crate::transport::tls::{self, TlsError};
use crate::transport::upstream::{Upstream, UpstreamUrlError};
use crate::transport::{Proxy, h1_server};

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("client CA bundle: {0}")]
    ClientCa(#[from] CertError),
    #[error(transparent)]
    Upstream(#[from] UpstreamUrlError),
    #[error(transparent)]
    ControlPlane(#[from] ChannelError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

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
pub async fn start(config: &Config) -> Result<Running, StartError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let current = Arc::new(Current::default());
    let pod = Pod {
        namespace: config.namespace.clone(),
        labels: config.pod_labels.iter().cloned().collect::<BTreeMap<_, _>>(),
    };
    let forwarded_certs = match &config.client_ca {
        Some(ca) => Some(ForwardedCertVerifier::new(tls::read_certificates(ca)?)?),
        None => None,
    };
    let (tls_acceptor, cert_files) = match (&config.tls_listen, &config.tls_cert, &config.tls_key) {
        (Some(_), Some(cert), Some(key)) => {
            let files = tls::CertFiles::load(cert, key)?;
            let acceptor = TlsAcceptor::from(tls::reloading_server_config(
                files.clone(),
                config.client_ca.as_deref(),
                config.client_auth,
            )?);
            (Some(acceptor), Some(files))
        }
        _ => (None, None),
    };
    let control_plane = match &config.control_plane {
        Some(url) => Some(Endpoint::new(
            url,
            config.control_plane_ca.as_deref(),
            config.control_plane_token_file.clone(),
        )?),
        None => None,
    };
    let mut background = Vec::new();
    let reporter = control_plane.as_ref().map(|endpoint| {
        let (reporter, tasks) = Reporter::start(
            endpoint.clone(),
            config.audit_queue,
            metrics.clone(),
            config.namespace.clone(),
            config.pod_name.clone(),
        );
        background.extend(tasks);
        reporter
    });
    let proxy = Arc::new(Proxy {
        gate: Gate {
            current: current.clone(),
            pod: pod.clone(),
            limiter: Limiter::new(config.rate_limit_buckets),
            metrics: metrics.clone(),
            trusted: TrustedProxies::new(config.trusted_proxies.clone()),
            forwarded_certs,
            max_body_bytes: config.max_body_bytes,
            max_staleness: config
                .max_staleness
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
            audit: reporter.is_some(),
        },
        upstream: Upstream::new(
            &config.upstream,
            config.upstream_protocol,
            config.upstream_timeout,
            metrics.upstream_errors.with_label_values(&["body_truncated"]),
        )?,
        auth_route: control_plane
            .as_ref()
            .map(|endpoint| AuthRoute::new(endpoint, config.auth_prefix.clone(), config.upstream_timeout)),
        reporter,
    });

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let http_listener = bind(config.listen).await?;
    let admin_listener = bind(config.admin_listen).await?;
    let tls_listener = match config.tls_listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let local = |l: &TcpListener| {
        l.local_addr().map_err(|source| StartError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
    };
    let http = local(&http_listener)?;
    let admin_addr = local(&admin_listener)?;
    let tls_addr = tls_listener.as_ref().map(local).transpose()?;

    let installer = Installer {
        current: current.clone(),
        pod: pod.clone(),
        jwt_cache: config.jwt_cache_size,
        metrics: metrics.clone(),
    };
    if let Some(path) = &config.snapshot_file
        && let Ok(file) = std::fs::File::open(path)
    {
        // Before accepting: a sidecar that listens already enforces its policy.
        installer.apply_reader(file, &path.display().to_string());
    }
    if let Some(files) = cert_files {
        // cert-manager (or the operator) rotates the mounted files: served without a restart.
        background.push(tokio::spawn(files.watch(config.tls_reload)));
    }
    background.push(tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        current.clone(),
    )));
    background.push(match (&config.snapshot_file, control_plane) {
        (Some(path), _) => tokio::spawn(feed::file::watch(path.clone(), Duration::from_secs(1), installer)),
        (None, Some(endpoint)) => tokio::spawn(feed::control_plane::poll(
            endpoint,
            installer,
            feed::control_plane::poll_wait(config.max_staleness),
        )),
        (None, None) => return Err(ConfigError::NoSnapshotSource.into()),
    });

    let (shutdown, stop) = watch::channel(false);
    let limits = Arc::new(Limits {
        builder: listener::hyper_builder(config),
        h1: h1_server::Settings {
            max_head_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
            max_body_bytes: config.max_body_bytes,
            header_timeout: config.header_timeout,
        },
        idle: config.idle_timeout,
        drain: config.drain_timeout,
        connections: Arc::new(Semaphore::new(config.max_connections)),
    });
    let mut tasks = vec![tokio::spawn(listener::accept_loop(
        http_listener,
        None,
        proxy.clone(),
        limits.clone(),
        stop.clone(),
    ))];
    if let Some(tls_listener) = tls_listener {
        tasks.push(tokio::spawn(listener::accept_loop(
            tls_listener,
            tls_acceptor,
            proxy,
            limits,
            stop,
        )));
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
