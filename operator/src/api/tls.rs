//! TLS of the API port: a certificate and key from PEM files, re-read when either file
//! changes (cert-manager and the operator's own rotation replace them in place), the
//! last good pair kept when a new one does not load.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Error;

/// How often the files are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What identifies a version of a file: modification time and size.
type Stamp = Option<(SystemTime, u64)>;

/// The API port's TLS configuration, following its files.
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Stamp, Stamp, Arc<ServerConfig>)>,
}

impl TlsFiles {
    /// Loads the pair once; an unusable pair at start is an error.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<TlsFiles>, Error> {
        let stamps = (stamp(cert), stamp(key));
        let config = server_config(cert, key)?;
        Ok(Arc::new(TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new((stamps.0, stamps.1, config)),
        }))
    }

    /// The configuration for the next connection.
    pub fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(current) => current.2.clone(),
            Err(poisoned) => poisoned.into_inner().2.clone(),
        }
    }

    /// Reloads when a file changed; keeps the current pair (and says why) when the new
    /// one does not load, e.g. the certificate written but the key not yet.
    pub fn reload_if_changed(&self) {
        let (cert_stamp, key_stamp) = (stamp(&self.cert), stamp(&self.key));
        let changed = match self.current.read() {
            Ok(current) => current.0 != cert_stamp || current.1 != key_stamp,
            Err(_) => true,
        };
        if !changed {
            return;
        }
        match server_config(&self.cert, &self.key) {
            Ok(config) => {
                let mut current = match self.current.write() {
                    Ok(c) => c,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *current = (cert_stamp, key_stamp, config);
                tracing::info!(cert = %self.cert.display(), "API TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "API TLS files changed but do not load; keeping the previous pair"),
        }
    }

    /// Checks the files every few seconds, for ever.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            self.reload_if_changed();
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// TLS 1.2 and 1.3 (ring, as the rest of the workspace), HTTP/1.1.
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let file_error = |path: &Path, reason: String| Error::TlsFile {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, format!("no usable private key ({e})")))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(Error::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
