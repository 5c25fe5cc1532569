//! TLS for the sidecar's listener: TLS 1.2 and 1.3 with ALPN, optional client certificates
//! (verified by [`crate::policy::certs::client_verifier`]), key material read from PEM files
//! and read again when they change ([`CertFiles`]): a certificate rotated by cert-manager
//! (the kubelet swaps the mounted Secret's files) is served from the next handshake on,
//! without a restart; connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::policy::certs::{self, CertError};

/// Whether the TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Never asked for; identity comes from tokens and keys.
    #[default]
    None,
    /// Asked for and verified if sent; a client without one is anonymous.
    Optional,
    /// No verified certificate, no connection.
    Required,
}

impl FromStr for ClientAuth {
    type Err = UnknownClientAuth;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "optional" => Ok(Self::Optional),
            "required" => Ok(Self::Required),
            other => Err(UnknownClientAuth(other.to_string())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected none, optional or required")]
pub struct UnknownClientAuth(String);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificates need a client CA bundle")]
    NoClientCa,
    #[error("{path}: {source}")]
    ClientCa { path: PathBuf, source: CertError },
}

/// The serving certificate and key, from two PEM files; [`CertFiles::reload`] reads them
/// again and swaps in what they hold when it changed and is usable.
#[derive(Debug)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes when last loaded: unchanged files are not parsed again.
    last: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl CertFiles {
    /// Reads both files; a sidecar does not start without a usable pair.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertFiles>, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certified = certified_key(cert, &cert_pem, key, &key_pem)?;
        Ok(Arc::new(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: ArcSwap::from_pointee(certified),
            last: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// `Ok(true)` when a new certificate is now served; on error the old one stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        let certified = certified_key(&self.cert, &cert_pem, &self.key, &key_pem)?;
        self.current.store(Arc::new(certified));
        *last = (cert_pem, key_pem);
        Ok(true)
    }

    /// Checks the files every `period`, forever.
    pub async fn watch(self: Arc<Self>, period: Duration) {
        let mut complained = false;
        loop {
            tokio::time::sleep(period).await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    complained = false;
                }
                Ok(false) => {}
                // Mid-rotation the two files may disagree for a moment: say it once.
                Err(e) if !complained => {
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; serving the previous one");
                    complained = true;
                }
                Err(_) => {}
            }
        }
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn certified_key(cert: &Path, cert_pem: &[u8], key: &Path, key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let file_error = |e: rustls_pki_types::pem::Error| TlsError::File {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_error = |reason: String| TlsError::File {
        path: key.to_path_buf(),
        reason: format!("no usable private key ({reason})"),
    };
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_error(e.to_string()))?;
    let signing = certs::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| key_error(e.to_string()))?;
    Ok(certified)
}

/// The listener's configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1, the
/// certificate read from `cert` and `key` once.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    reloading_server_config(CertFiles::load(cert, key)?, client_ca, client_auth)
}

/// [`server_config`] serving whatever `files` holds at each handshake.
pub fn reloading_server_config(
    files: Arc<CertFiles>,
    client_ca: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder =
        rustls::ServerConfig::builder_with_provider(certs::provider()).with_safe_default_protocol_versions()?;
    let builder = match (client_auth, client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => return Err(TlsError::NoClientCa),
        (mode, Some(ca)) => {
            let verifier =
                certs::client_verifier(read_certificates(ca)?, mode == ClientAuth::Optional).map_err(|source| {
                    TlsError::ClientCa {
                        path: ca.to_path_buf(),
                        source,
                    }
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(files);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; none is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |e: rustls_pki_types::pem::Error| TlsError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(file_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    #[test]
    fn server_config_needs_a_ca_for_client_auth() {
        let ours = ca("ours");
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ours).unwrap();
        let write = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let (cert, key, ca) = (
            write("c.pem", &cert.pem()),
            write("k.pem", &key.serialize_pem()),
            write("ca.pem", &ours.pem()),
        );
        let config = server_config(&cert, &key, None, ClientAuth::None).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(server_config(&cert, &key, Some(&ca), ClientAuth::Required).is_ok());
        assert!(matches!(
            server_config(&cert, &key, None, ClientAuth::Optional),
            Err(TlsError::NoClientCa)
        ));
        let empty = write("empty.pem", "");
        assert!(matches!(
            server_config(&empty, &key, None, ClientAuth::None),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(
            server_config(&cert, &cert, None, ClientAuth::None).is_err(),
            "a certificate is not a key"
        );
    }

    #[test]
    fn client_auth_parses() {
        assert_eq!("required".parse::<ClientAuth>(), Ok(ClientAuth::Required));
        assert_eq!("optional".parse::<ClientAuth>(), Ok(ClientAuth::Optional));
        assert_eq!("none".parse::<ClientAuth>(), Ok(ClientAuth::None));
        assert!("yes".parse::<ClientAuth>().is_err());
    }
}
