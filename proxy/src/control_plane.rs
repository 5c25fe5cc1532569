//! The channel to the control plane, as every part of the sidecar that talks to it uses
//! it (the snapshot feed, the audit and unknown-kid reports, the auth route): its address,
//! the TLS that verifies it against the CA file the sidecar is given, and the token the
//! sidecar presents.
//!
//! HTTPS always, except plain `http://` to a loopback address (local mode, tests): a
//! snapshot decides who gets in, so it must come from a peer the sidecar has verified.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use hyper::header::HeaderValue;
use hyper::http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Connections to the control plane, over TLS or (loopback only) plain.
pub type Connector = HttpsConnector<HttpConnector>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why the control plane's address, CA or token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("--control-plane {0:?}: not a URL with scheme and host")]
    Url(String),
    #[error("--control-plane {0:?}: give scheme, host and port only")]
    HasPath(String),
    #[error(
        "--control-plane {0:?}: plain http:// is allowed only to a loopback address (127.0.0.0/8, ::1, localhost); use https:// with --control-plane-ca"
    )]
    PlainNotLoopback(String),
    #[error("--control-plane {0:?}: only https:// (or http:// on loopback) is supported")]
    Scheme(String),
    #[error("--control-plane {0:?} is https:// but no --control-plane-ca was given to verify it with")]
    NoCa(String),
    #[error("--control-plane-ca {path}: {why}")]
    Ca { path: PathBuf, why: String },
    #[error("cannot read token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("token file {0} does not hold a usable bearer token")]
    BadToken(PathBuf),
}

/// Checks an address without reading anything: `https://host[:port]` (verified against a
/// CA, so one must be given), or `http://` to a loopback address.
pub fn check_address(url: &str, has_ca: bool) -> Result<(Scheme, Authority), ChannelError> {
    let uri: Uri = url.parse().map_err(|_| ChannelError::Url(url.to_string()))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ChannelError::Url(url.to_string()))?;
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(ChannelError::HasPath(url.to_string()));
    }
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| ChannelError::Url(url.to_string()))?;
    if scheme == Scheme::HTTP {
        if !is_loopback(authority.host()) {
            return Err(ChannelError::PlainNotLoopback(url.to_string()));
        }
    } else if scheme == Scheme::HTTPS {
        if !has_ca {
            return Err(ChannelError::NoCa(url.to_string()));
        }
    } else {
        return Err(ChannelError::Scheme(url.to_string()));
    }
    Ok((scheme, authority))
}

/// The control plane: where it is, how it is verified, what the sidecar presents.
#[derive(Clone)]
pub struct Endpoint {
    scheme: Scheme,
    authority: Authority,
    /// Re-read before every request: projected tokens are rotated on disk.
    token_file: Option<PathBuf>,
    connector: Connector,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl Endpoint {
    /// Checks the address (plain HTTP only to loopback), reads the CA file and builds
    /// the TLS client configuration once.
    pub fn new(url: &str, ca: Option<&Path>, token_file: Option<PathBuf>) -> Result<Endpoint, ChannelError> {
        let (scheme, authority) = check_address(url, ca.is_some())?;
        let tls = match ca {
            Some(ca) if scheme == Scheme::HTTPS => Some(client_config(ca)?),
            _ => None,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = match tls {
            Some(config) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .wrap_connector(http),
            // Loopback: no TLS config is ever used, but the connector type is the same.
            None => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(empty_client_config()?)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
        };
        Ok(Endpoint {
            scheme,
            authority,
            token_file,
            connector,
        })
    }

    /// A pooled client of the control plane for request bodies of type `B`.
    pub fn client<B>(&self) -> Client<Connector, B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
    {
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(self.connector.clone())
    }

    /// `path_and_query` on the control plane.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, hyper::http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// `Bearer <token>` from the token file, read now; `None` without a token file.
    pub async fn authorization(&self) -> Result<Option<HeaderValue>, ChannelError> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| ChannelError::TokenFile {
                path: path.clone(),
                source,
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(ChannelError::BadToken(path.clone()));
        }
        let mut value =
            HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ChannelError::BadToken(path.clone()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Whether `host` (a URI host: an IP, `[::1]`, or a name) is a loopback address.
/// `localhost` counts; no other name does (resolving it could lead anywhere).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2+ verifying the control plane's certificate against the CAs in `ca` only.
fn client_config(ca: &Path) -> Result<rustls::ClientConfig, ChannelError> {
    let bad = |why: String| ChannelError::Ca {
        path: ca.to_path_buf(),
        why,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?;
    for cert in certs {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A configuration that trusts nothing: what the plain-HTTP (loopback) connector carries.
fn empty_client_config() -> Result<rustls::ClientConfig, ChannelError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ChannelError::Tls(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_only() {
        for ok in [
            "http://127.0.0.1:7070",
            "http://[::1]:7070",
            "http://localhost:7070",
            "http://127.9.9.9",
        ] {
            assert!(Endpoint::new(ok, None, None).is_ok(), "{ok}");
        }
        for (bad, expect) in [
            ("http://10.0.0.1:7070", "loopback"),
            ("http://portcullis.portcullis-system:8443", "loopback"),
            ("https://portcullis:8443", "no --control-plane-ca"),
            ("ftp://127.0.0.1", "only https"),
            ("http://127.0.0.1:7070/api", "scheme, host and port only"),
            ("127.0.0.1:7070", "not a URL"),
        ] {
            let err = Endpoint::new(bad, None, None).unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "").unwrap();
        let err = Endpoint::new("https://cp:8443", Some(&empty), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[tokio::test]
    async fn the_token_file_is_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "one\n").unwrap();
        let endpoint = Endpoint::new("http://127.0.0.1:1", None, Some(path.clone())).unwrap();
        assert_eq!(endpoint.authorization().await.unwrap().unwrap(), "Bearer one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(endpoint.authorization().await.unwrap().unwrap(), "Bearer two");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(endpoint.authorization().await, Err(ChannelError::BadToken(_))));
        assert!(
            Endpoint::new("http://127.0.0.1:1", None, None)
                .unwrap()
                .authorization()
                .await
                .unwrap()
                .is_none()
        );
    }
}
