//! The sidecar injection webhook: a mutating admission webhook served by every operator
//! replica over HTTPS, with its certificate bootstrapped and rotated by the operator (or
//! written by cert-manager) and reloaded from disk without a restart.
//!
//! - [`inject`]: which pods get the sidecar and the JSON patch (pure, no I/O).
//! - [`server`]: the HTTPS endpoint (`/inject`, `/inject/namespace`).
//! - [`tls`]: the serving certificate, reloaded when its files change.
//! - [`bootstrap`]: the CA and serving certificate in a Secret, the `caBundle`.

pub mod bootstrap;
pub mod inject;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

pub use inject::{Decision, Injector, SidecarDefaults};

/// How often the certificate files are checked for a new certificate.
pub const RELOAD_PERIOD: Duration = Duration::from_secs(10);
/// How often the bootstrap checks the Secret, the expiry and the `caBundle` (a Helm
/// upgrade that empties the `caBundle` is repaired within this).
pub const BOOTSTRAP_PERIOD: Duration = Duration::from_secs(60);

/// The webhook's flags (each also an environment variable).
#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Serve the injection webhook.
    #[arg(long = "webhook", env = "WEBHOOK_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// HTTPS address of the webhook.
    #[arg(long, env = "WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Directory of the serving certificate (`tls.crt`, `tls.key`), written by the
    /// bootstrap or mounted from cert-manager's Secret; reloaded when it changes.
    #[arg(long, env = "WEBHOOK_TLS_DIR", default_value = "/var/run/portcullis/webhook")]
    pub webhook_tls_dir: PathBuf,
    /// Secret (in the operator's namespace) holding the webhook's CA and serving certificate.
    #[arg(long, env = "WEBHOOK_SECRET", default_value = "portcullis-webhook-tls")]
    pub webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the bootstrap sets.
    #[arg(long, env = "WEBHOOK_CONFIG", default_value = "portcullis-sidecar-injector")]
    pub webhook_config: String,
    /// The webhook's Service: the names in the serving certificate.
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "portcullis-webhook")]
    pub webhook_service: String,
    /// cert-manager writes the certificate and the caBundle: no bootstrap.
    #[arg(long, env = "WEBHOOK_CERT_MANAGER", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_cert_manager: bool,
    /// The injected sidecar's image (overrides `image` of SIDECAR_DEFAULTS).
    #[arg(long, env = "SIDECAR_IMAGE")]
    pub sidecar_image: Option<String>,
    /// The injected sidecar's defaults, as JSON: image, cpu, memory, logLevel,
    /// nativeSidecar, tls, clientCert, proxyPort, adminPort.
    #[arg(long, env = "SIDECAR_DEFAULTS")]
    pub sidecar_defaults: Option<String>,
    /// The control plane injected sidecars fetch snapshots from.
    #[arg(long, env = "CONTROL_PLANE_URL")]
    pub control_plane_url: Option<String>,
    /// ConfigMap (`ca.crt`, in each injected pod's namespace) that verifies the control plane.
    #[arg(long, env = "CONTROL_PLANE_CA_CONFIGMAP")]
    pub control_plane_ca_configmap: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("SIDECAR_DEFAULTS is not valid JSON of the sidecar's defaults: {0}")]
    DefaultsJson(#[from] serde_json::Error),
    #[error(transparent)]
    Defaults(#[from] inject::DefaultsError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

impl WebhookArgs {
    /// The sidecar's defaults: SIDECAR_DEFAULTS, then the single-value variables, checked.
    pub fn injector(&self, operator_namespace: &str) -> Result<Injector, WebhookError> {
        let mut defaults: SidecarDefaults = match &self.sidecar_defaults {
            Some(json) if !json.trim().is_empty() => serde_json::from_str(json)?,
            _ => SidecarDefaults::default(),
        };
        if let Some(image) = self.sidecar_image.as_ref().filter(|i| !i.is_empty()) {
            defaults.image = image.clone();
        }
        match self.control_plane_url.as_ref().filter(|u| !u.is_empty()) {
            Some(url) => defaults.control_plane = url.clone(),
            None => {
                defaults.control_plane = format!("https://portcullis-api.{operator_namespace}.svc:8443");
            }
        }
        if let Some(map) = self.control_plane_ca_configmap.as_ref().filter(|m| !m.is_empty()) {
            defaults.control_plane_ca_config_map = Some(map.clone());
        }
        Ok(Injector::new(defaults, operator_namespace)?)
    }
}

/// A running webhook: where it listens and whether it can serve.
pub struct Webhook {
    pub addr: SocketAddr,
    cert: Arc<tls::ReloadingCert>,
}

impl Webhook {
    /// Ready when a serving certificate is loaded (before that, every handshake fails).
    pub fn readiness(&self) -> Result<(), String> {
        if self.cert.is_loaded() {
            Ok(())
        } else {
            Err("webhook: no serving certificate loaded yet".to_string())
        }
    }

    /// A readiness check that outlives `self`.
    pub fn check(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let cert = self.cert.clone();
        move || {
            if cert.is_loaded() {
                Ok(())
            } else {
                Err("webhook: no serving certificate loaded yet".to_string())
            }
        }
    }
}

/// Binds the webhook, loads (or bootstraps, then loads) its certificate and serves
/// until `shutdown`; the bootstrap and the reload keep running in the background.
pub async fn start(
    args: &WebhookArgs,
    namespace: &str,
    client: kube::Client,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Webhook, WebhookError> {
    let injector = Arc::new(args.injector(namespace)?);
    let cert = tls::ReloadingCert::new(
        args.webhook_tls_dir.join(bootstrap::TLS_CRT),
        args.webhook_tls_dir.join(bootstrap::TLS_KEY),
    );
    if !args.webhook_cert_manager {
        let cfg = bootstrap::TlsBootstrap::new(
            namespace,
            &args.webhook_secret,
            &args.webhook_config,
            &args.webhook_service,
            args.webhook_tls_dir.clone(),
        );
        // One pass now, so that a healthy cluster serves from the first second.
        if let Err(err) = bootstrap::reconcile(&client, &cfg, jiff::Timestamp::now().as_second()).await {
            tracing::warn!(error = %err, "webhook TLS bootstrap failed; retrying in the background");
        }
        tokio::spawn(bootstrap::run(client, cfg, BOOTSTRAP_PERIOD, |_| {}));
    }
    let expiry_metrics = metrics.clone();
    if let Err(err) = cert.reload() {
        tracing::warn!(error = %err, "no webhook certificate yet");
    }
    if let Some(not_after) = cert.not_after() {
        metrics.set_webhook_cert_expiry(not_after);
    }
    tokio::spawn(cert.clone().watch(RELOAD_PERIOD, move |not_after| {
        expiry_metrics.set_webhook_cert_expiry(not_after);
    }));
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .map_err(|source| WebhookError::Bind {
            addr: args.webhook_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| WebhookError::Bind {
        addr: args.webhook_addr,
        source,
    })?;
    let config = cert.server_config()?;
    tokio::spawn(server::serve(listener, config, injector, metrics, shutdown));
    tracing::info!(%addr, cert_manager = args.webhook_cert_manager, "injection webhook listening");
    Ok(Webhook { addr, cert })
}
