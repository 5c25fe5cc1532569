//! Command line and environment: every limit and timeout is a flag with a safe default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::policy::client_ip::Cidr;
use crate::transport::tls::ClientAuth;
use crate::transport::upstream::{UpstreamUrlError, upstream_authority};

/// Portcullis sidecar: authentication, authorization, rate limits, CORS and metrics in front of an app.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis-proxy", version)]
pub struct Config {
    /// Plain HTTP listener (HTTP/1.1 and h2c).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// TLS listener (HTTP/1.1 and h2 by ALPN); needs --tls-cert and --tls-key.
    #[arg(long, env = "PORTCULLIS_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_listen")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,
    /// How often the TLS certificate and key files are checked for a rotated pair, seconds.
    #[arg(long = "tls-reload-seconds", env = "PORTCULLIS_TLS_RELOAD_SECONDS", default_value = "10", value_parser = seconds)]
    pub tls_reload: Duration,
    /// CA bundle for client certificates: on the TLS listener, and for X-Client-Cert.
    #[arg(long, env = "PORTCULLIS_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Client certificates on the TLS listener: none, optional or required.
    #[arg(long, env = "PORTCULLIS_CLIENT_AUTH", default_value = "none")]
    pub client_auth: ClientAuth,
    /// Admin listener: /metrics, /healthz, /readyz. Loopback by default (local use); an
    /// injected sidecar listens on 0.0.0.0:9090 for the kubelet's probes and Prometheus.
    #[arg(
        long,
        visible_alias = "admin-addr",
        env = "PORTCULLIS_ADMIN_LISTEN",
        default_value = "127.0.0.1:9901"
    )]
    pub admin_listen: SocketAddr,

    /// The app, on localhost (e.g. http://127.0.0.1:3000).
    #[arg(long, env = "PORTCULLIS_UPSTREAM")]
    pub upstream: String,
    /// HTTP version towards the app: auto (gRPC over h2c, the rest HTTP/1.1), http1 or http2.
    #[arg(long, env = "PORTCULLIS_UPSTREAM_PROTOCOL", default_value = "auto")]
    pub upstream_protocol: crate::transport::upstream::UpstreamProtocol,
    /// Longest wait for the app's response headers before answering 504.
    #[arg(long, env = "PORTCULLIS_UPSTREAM_TIMEOUT", default_value = "30", value_parser = seconds)]
    pub upstream_timeout: Duration,

    /// Policy snapshot from a JSON file, re-read when it changes.
    #[arg(long, env = "PORTCULLIS_SNAPSHOT_FILE", conflicts_with = "control_plane")]
    pub snapshot_file: Option<PathBuf>,
    /// The control plane, e.g. https://portcullis.portcullis-system:8443: policy snapshots
    /// (long poll), the audit sink, and the auth route. https:// needs --control-plane-ca;
    /// plain http:// is accepted only to a loopback address.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// CA bundle (PEM) the control plane's certificate is verified against.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// Bearer token presented to the control plane (a projected service-account token in a
    /// cluster), re-read before every request.
    #[arg(long, env = "PORTCULLIS_CONTROL_PLANE_TOKEN_FILE")]
    pub control_plane_token_file: Option<PathBuf>,
    /// Refuse every request (503 policy_stale) once the snapshot's source has been silent
    /// this long, seconds. Off by default: the last good snapshot is enforced (fail-static).
    #[arg(long, env = "PORTCULLIS_MAX_STALENESS", value_parser = seconds)]
    pub max_staleness: Option<Duration>,
    /// Requests under this path prefix (and /.well-known/jwks.json,
    /// /.well-known/openid-configuration) go to the control plane's token service, not to
    /// the app, without authentication. Only with --control-plane.
    #[arg(long, env = "PORTCULLIS_AUTH_PREFIX", default_value = portcullis_wire::api::AUTH_PREFIX)]
    pub auth_prefix: String,
    /// Audit records held for sending to the control plane; more are dropped (counted).
    #[arg(long, env = "PORTCULLIS_AUDIT_QUEUE", default_value = "10000")]
    pub audit_queue: usize,
    /// The pod's name, in audit records.
    #[arg(long, env = "POD_NAME", default_value = "")]
    pub pod_name: String,
    /// The pod's namespace: AccessPolicies of this namespace apply.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The pod's labels (`key=value`, repeatable), matched against AccessPolicy pod selectors.
    #[arg(long = "pod-label", env = "PORTCULLIS_POD_LABELS", value_delimiter = ',', value_parser = label)]
    pub pod_labels: Vec<(String, String)>,

    /// Peers whose X-Forwarded-For and X-Client-Cert are believed (CIDR, repeatable). None by default.
    #[arg(long = "trusted-proxy", env = "PORTCULLIS_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<Cidr>,

    /// Largest request head (request line and headers), bytes.
    #[arg(long, env = "PORTCULLIS_MAX_HEADER_BYTES", default_value = "16384")]
    pub max_header_bytes: usize,
    /// Most request headers.
    #[arg(long, env = "PORTCULLIS_MAX_HEADERS", default_value = "100")]
    pub max_headers: usize,
    /// Largest request body, bytes (413 beyond).
    #[arg(long, env = "PORTCULLIS_MAX_BODY_BYTES", default_value = "10485760")]
    pub max_body_bytes: u64,
    /// Time a client has to send a request head (slowloris), seconds.
    #[arg(long, env = "PORTCULLIS_HEADER_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub header_timeout: Duration,
    /// A connection that moves no byte for this long is closed, seconds.
    #[arg(long, env = "PORTCULLIS_IDLE_TIMEOUT", default_value = "60", value_parser = seconds)]
    pub idle_timeout: Duration,
    /// Most open client connections; more are closed at once.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value = "10000")]
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "PORTCULLIS_MAX_STREAMS", default_value = "256")]
    pub max_concurrent_streams: u32,
    /// Time open requests get to finish after SIGTERM, seconds.
    #[arg(long, env = "PORTCULLIS_DRAIN_TIMEOUT", default_value = "25", value_parser = seconds)]
    pub drain_timeout: Duration,

    /// Verified JWTs remembered (until each expires).
    #[arg(long, env = "PORTCULLIS_JWT_CACHE_SIZE", default_value = "65536")]
    pub jwt_cache_size: usize,
    /// Rate-limit buckets remembered.
    #[arg(long, env = "PORTCULLIS_RATE_LIMIT_BUCKETS", default_value = "100000")]
    pub rate_limit_buckets: usize,
    /// Worker threads (default: one per core).
    #[arg(long, env = "PORTCULLIS_WORKERS")]
    pub workers: Option<usize>,
    /// Log filter (tracing syntax), e.g. info or portcullis_proxy=debug.
    #[arg(long, env = "PORTCULLIS_LOG", default_value = "info")]
    pub log: String,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// A combination of flags that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no policy source: give --snapshot-file or --control-plane")]
    NoSnapshotSource,
    #[error("--tls-listen needs --tls-cert and --tls-key")]
    TlsWithoutKeys,
    #[error("--client-auth optional|required needs --client-ca")]
    ClientAuthWithoutCa,
    #[error("--max-header-bytes must be at least 8192")]
    HeaderLimitTooSmall,
    #[error(transparent)]
    Upstream(#[from] UpstreamUrlError),
    #[error("{0}")]
    ControlPlane(String),
    #[error("--auth-prefix {0:?}: must start and end with /")]
    AuthPrefix(String),
}

impl Config {
    /// Checks what clap cannot: combinations of flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.snapshot_file.is_none() && self.control_plane.is_none() {
            return Err(ConfigError::NoSnapshotSource);
        }
        if self.tls_listen.is_some() && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(ConfigError::TlsWithoutKeys);
        }
        if self.client_auth != ClientAuth::None && self.client_ca.is_none() {
            return Err(ConfigError::ClientAuthWithoutCa);
        }
        if self.max_header_bytes < 8192 {
            return Err(ConfigError::HeaderLimitTooSmall);
        }
        upstream_authority(&self.upstream)?;
        if let Some(url) = &self.control_plane {
            crate::control_plane::check_address(url, self.control_plane_ca.is_some())
                .map_err(|e| ConfigError::ControlPlane(e.to_string()))?;
        }
        if !(self.auth_prefix.starts_with('/') && self.auth_prefix.ends_with('/') && self.auth_prefix.len() > 1) {
            return Err(ConfigError::AuthPrefix(self.auth_prefix.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe_and_combinations_checked() {
        let c =
            Config::try_parse_from(["p", "--upstream", "http://127.0.0.1:3000", "--snapshot-file", "s.json"]).unwrap();
        assert_eq!(c.client_auth, ClientAuth::None);
        assert!(c.trusted_proxies.is_empty(), "no proxy is trusted by default");
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        c.validate().unwrap();

        let no_source = Config::try_parse_from(["p", "--upstream", "http://127.0.0.1:3000"]).unwrap();
        assert_eq!(no_source.validate(), Err(ConfigError::NoSnapshotSource));
        let bad = Config::try_parse_from(["p", "--upstream", "x", "--snapshot-file", "s", "--idle-timeout", "-1"]);
        assert!(bad.is_err());
        let mtls = Config::try_parse_from([
            "p",
            "--upstream",
            "http://127.0.0.1:1",
            "--snapshot-file",
            "s",
            "--client-auth",
            "required",
        ])
        .unwrap();
        assert_eq!(mtls.validate(), Err(ConfigError::ClientAuthWithoutCa));
        let labels = Config::try_parse_from([
            "p",
            "--upstream",
            "http://127.0.0.1:1",
            "--snapshot-file",
            "s",
            "--pod-label",
            "app=api,tier=web",
        ])
        .unwrap();
        assert_eq!(
            labels.pod_labels,
            [("app".into(), "api".into()), ("tier".into(), "web".into())]
        );
    }

    #[test]
    fn the_control_plane_is_verified_or_on_loopback() {
        let with = |extra: &[&str]| {
            let mut args = vec!["p", "--upstream", "http://127.0.0.1:1"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).unwrap().validate()
        };
        assert_eq!(with(&["--control-plane", "http://127.0.0.1:7070"]), Ok(()));
        let remote = with(&["--control-plane", "http://cp.portcullis-system:8443"]).unwrap_err();
        assert!(remote.to_string().contains("loopback"), "{remote}");
        let no_ca = with(&["--control-plane", "https://cp:8443"]).unwrap_err();
        assert!(no_ca.to_string().contains("--control-plane-ca"), "{no_ca}");
        assert_eq!(
            with(&["--control-plane", "https://cp:8443", "--control-plane-ca", "ca.pem"]),
            Ok(())
        );
        assert_eq!(
            with(&["--control-plane", "http://127.0.0.1:7070", "--auth-prefix", "/auth"]),
            Err(ConfigError::AuthPrefix("/auth".into()))
        );
        let c = Config::try_parse_from([
            "p",
            "--upstream",
            "http://127.0.0.1:1",
            "--control-plane",
            "http://[::1]:1",
        ])
        .unwrap();
        assert_eq!(c.auth_prefix, "/api/v1/auth/");
        assert_eq!(c.max_staleness, None, "fail-static unless asked");
    }
}
