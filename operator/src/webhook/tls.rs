//! A serving certificate read from two PEM files and read again when they change, so
//! that a rotated certificate (written by the bootstrap, or by the kubelet from a
//! cert-manager Secret) is served without a restart. Handshakes pick the certificate in
//! force at that moment; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use x509_cert::der::Decode;

/// Why a certificate could not be loaded (the one in force, if any, stays).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a usable private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path}: not an X.509 certificate: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate in force and where it comes from.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Option<Loaded>>,
    /// What the files held when last read: unchanged files are not parsed again.
    last_read: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    not_after: i64,
}

impl ReloadingCert {
    /// Nothing is loaded until [`Self::reload`] succeeds (the files may not exist yet).
    pub fn new(cert_path: PathBuf, key_path: PathBuf) -> Arc<Self> {
        Arc::new(ReloadingCert {
            cert_path,
            key_path,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            current: RwLock::new(None),
            last_read: Mutex::new(None),
        })
    }

    /// Reads the files; `Ok(true)` when a different certificate is now in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| TlsError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let (cert_pem, key_pem) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut last = self.last_read.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref().is_some_and(|(c, k)| *c == cert_pem && *k == key_pem) {
            return Ok(false);
        }
        let loaded = self.parse(&cert_pem, &key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        *last = Some((cert_pem, key_pem));
        Ok(true)
    }

    fn parse(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::File {
                path: self.cert_path.clone(),
                reason: e.to_string(),
            })?;
        let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
            path: self.cert_path.clone(),
        })?;
        let not_after = not_after(leaf).map_err(|reason| TlsError::Parse {
            path: self.cert_path.clone(),
            reason,
        })?;
        let key_error = |reason: String| TlsError::Key {
            path: self.key_path.clone(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_error(e.to_string()))?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| key_error(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        // A key that does not match the certificate would fail every handshake.
        certified.keys_match().map_err(|e| key_error(e.to_string()))?;
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
        })
    }

    /// The end of validity of the certificate in force (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.loaded().map(|l| l.not_after)
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded().is_some()
    }

    fn loaded(&self) -> Option<Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1) that serves the
    /// certificate in force at each handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reads the files every `period`, forever; `changed` is told the new expiry.
    pub async fn watch(self: Arc<Self>, period: Duration, changed: impl Fn(i64) + Send + 'static) {
        let mut complained = false;
        loop {
            match self.reload() {
                Ok(true) => {
                    complained = false;
                    if let Some(not_after) = self.not_after() {
                        tracing::info!(cert = %self.cert_path.display(), not_after, "serving certificate loaded");
                        changed(not_after);
                    }
                }
                Ok(false) => {}
                // Once per spell of trouble: the bootstrap may not have written the files yet.
                Err(err) if !complained => {
                    tracing::warn!(error = %err, "cannot load the serving certificate; keeping the one in force");
                    complained = true;
                }
                Err(_) => {}
            }
            tokio::time::sleep(period).await;
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.loaded().map(|l| l.key)
    }
}

/// A certificate's `notAfter`, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let secs = cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    i64::try_from(secs).map_err(|e| e.to_string())
}

/// A certificate's `notBefore`, in Unix seconds.
pub fn not_before(der: &[u8]) -> Result<i64, String> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    let secs = cert.tbs_certificate.validity.not_before.to_unix_duration().as_secs();
    i64::try_from(secs).map_err(|e| e.to_string())
}
