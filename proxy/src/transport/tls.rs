//! TLS for the sidecar's listener: TLS 1.2 and 1.3 with ALPN, optional client certificates
//! (verified by [`crate::policy::certs::client_verifier`]), key material read from PEM files.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

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

/// The listener's configuration: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.to_path_buf(),
        reason: format!("no usable private key ({e})"),
    })?;
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
    let mut config = builder.with_single_cert(chain, key)?;
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
