//! Who a client certificate names, and the check of certificates an ingress forwarded.
//!
//! Client certificates reach us two ways: in the handshake on our TLS listener
//! ([`crate::transport::tls`]), or forwarded by an ingress that terminated TLS
//! (`X-Client-Cert`, URL-encoded PEM). Both are verified against the same CA bundle with the
//! same WebPKI rules (the one [`client_verifier`]), and both yield a [`CertIdentity`] that
//! [`crate::policy::identity::Directory::certificate`] maps to a user or source.

use std::sync::Arc;

use percent_encoding::percent_decode;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Forwarded certificate headers above this are refused unread (a chain of a few certs is ~6 KiB).
const MAX_FORWARDED_CERT_LEN: usize = 16 * 1024;
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// Why a certificate or a CA bundle is not usable.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in the CA bundle")]
    NoCa,
    #[error("not a usable CA certificate ({0})")]
    BadCa(rustls::Error),
    #[error("client CA bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("certificate: {0}")]
    Malformed(String),
}

/// The names a verified client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub emails: Vec<String>,
    pub common_name: Option<String>,
}

/// The ring provider, named explicitly so that no other provider a dependency enables
/// can change which algorithms we accept.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The WebPKI verifier of client certificates issued by `ca`; with `optional`, a client
/// may also send none.
pub fn client_verifier(
    ca: Vec<CertificateDer<'static>>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, CertError> {
    if ca.is_empty() {
        return Err(CertError::NoCa);
    }
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(CertError::BadCa)?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    Ok(builder.build()?)
}

/// Reads the subject alternative names and the common name of a DER certificate.
///
/// Only called on certificates that already passed verification.
pub fn cert_identity(der: &CertificateDer<'_>) -> Result<CertIdentity, CertError> {
    let cert = Certificate::from_der(der.as_ref()).map_err(|e| CertError::Malformed(e.to_string()))?;
    let tbs = &cert.tbs_certificate;
    let mut identity = CertIdentity::default();
    // More than one SAN extension is a malformed certificate, refused rather than merged.
    let sans = tbs
        .get::<SubjectAltName>()
        .map_err(|e| CertError::Malformed(format!("subject alternative names: {e}")))?;
    for name in sans.map(|(_, san)| san.0).unwrap_or_default() {
        match name {
            GeneralName::UniformResourceIdentifier(s) => identity.uris.push(s.to_string()),
            GeneralName::DnsName(s) => identity.dns_names.push(s.to_string()),
            GeneralName::Rfc822Name(s) => identity.emails.push(s.to_string()),
            _ => {}
        }
    }
    let mut common_names = tbs
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == COMMON_NAME);
    if let Some(cn) = common_names.next() {
        if common_names.next().is_some() {
            return Err(CertError::Malformed("more than one common name".into()));
        }
        let text = match cn.value.tag() {
            Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => std::str::from_utf8(cn.value.value()).ok(),
            _ => None,
        };
        let text = text.ok_or_else(|| CertError::Malformed("common name is not a text string".into()))?;
        identity.common_name = Some(text.to_owned());
    }
    Ok(identity)
}

/// Why a forwarded certificate was refused; values are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedCertError {
    /// Too long, not URL-encoded PEM, or not a certificate.
    Malformed,
    /// Not issued by the client CA bundle, expired, or not for client auth.
    Untrusted,
}

impl ForwardedCertError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_client_cert",
            Self::Untrusted => "untrusted_client_cert",
        }
    }
}

/// Verifies certificates an ingress forwarded in `X-Client-Cert`.
///
/// The caller decides whether the peer may forward at all (trusted proxies only); this only
/// checks the certificate, exactly as the TLS listener would.
pub struct ForwardedCertVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl ForwardedCertVerifier {
    /// Verifies against the certificates of `ca` (the client CA bundle).
    pub fn new(ca: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        Ok(Self {
            verifier: client_verifier(ca, false)?,
        })
    }

    /// `header` is the raw header value: URL-encoded PEM, the leaf first, then any intermediates.
    pub fn verify(&self, header: &[u8], now: UnixTime) -> Result<CertIdentity, ForwardedCertError> {
        if header.is_empty() || header.len() > MAX_FORWARDED_CERT_LEN {
            return Err(ForwardedCertError::Malformed);
        }
        let pem: Vec<u8> = percent_decode(header).collect();
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ForwardedCertError::Malformed)?;
        let (leaf, intermediates) = chain.split_first().ok_or(ForwardedCertError::Malformed)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|_| ForwardedCertError::Untrusted)?;
        cert_identity(leaf).map_err(|_| ForwardedCertError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn client(issuer: &CertifiedIssuer<'static, KeyPair>, cn: &str, sans: Vec<SanType>) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        params.signed_by(&KeyPair::generate().unwrap(), issuer).unwrap().pem()
    }

    fn encoded(pem: &str) -> Vec<u8> {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .into_bytes()
    }

    fn verifier_for(issuer: &CertifiedIssuer<'static, KeyPair>) -> ForwardedCertVerifier {
        let ca = CertificateDer::from_pem_slice(issuer.pem().as_bytes()).unwrap();
        ForwardedCertVerifier::new(vec![ca]).unwrap()
    }

    #[test]
    fn identity_carries_every_san_kind_and_the_cn() {
        let ours = ca("ours");
        let pem = client(
            &ours,
            "svc-a",
            vec![
                SanType::URI("portcullis:source:shop/edge".try_into().unwrap()),
                SanType::DnsName("edge.shop.svc".try_into().unwrap()),
                SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
            ],
        );
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let identity = cert_identity(&der).unwrap();
        assert_eq!(
            identity,
            CertIdentity {
                uris: vec!["portcullis:source:shop/edge".into()],
                dns_names: vec!["edge.shop.svc".into()],
                emails: vec!["ops@example.com".into()],
                common_name: Some("svc-a".into()),
            }
        );
        assert!(cert_identity(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
    }

    #[test]
    fn forwarded_certificates_are_verified_against_the_bundle() {
        let ours = ca("ours");
        let theirs = ca("theirs");
        let verifier = verifier_for(&ours);
        let email = |e: &str| SanType::Rfc822Name(e.try_into().unwrap());
        let good = client(&ours, "alice", vec![email("alice@example.com")]);
        let identity = verifier.verify(&encoded(&good), UnixTime::now()).unwrap();
        assert_eq!(identity.emails, ["alice@example.com"]);
        // Unencoded PEM decodes to itself.
        assert!(verifier.verify(good.as_bytes(), UnixTime::now()).is_ok());

        let foreign = client(&theirs, "alice", vec![email("alice@example.com")]);
        assert_eq!(
            verifier.verify(&encoded(&foreign), UnixTime::now()),
            Err(ForwardedCertError::Untrusted)
        );
        let far_future = UnixTime::since_unix_epoch(std::time::Duration::from_secs(4_000_000_000));
        assert_eq!(
            verifier.verify(&encoded(&good), far_future),
            Err(ForwardedCertError::Untrusted),
            "expired"
        );
        assert_eq!(
            verifier.verify(&encoded(&good), UnixTime::since_unix_epoch(std::time::Duration::ZERO)),
            Err(ForwardedCertError::Untrusted),
            "not yet valid"
        );
        for bad in [
            &b""[..],
            b"garbage",
            b"-----BEGIN CERTIFICATE-----%0A!!!!%0A-----END CERTIFICATE-----",
        ] {
            assert_eq!(
                verifier.verify(bad, UnixTime::now()),
                Err(ForwardedCertError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Well-formed PEM around bytes that are no certificate.
        let not_a_cert = b"-----BEGIN CERTIFICATE-----%0AAAAA%0A-----END CERTIFICATE-----";
        assert!(verifier.verify(not_a_cert, UnixTime::now()).is_err());
        let huge = vec![b'A'; MAX_FORWARDED_CERT_LEN + 1];
        assert_eq!(
            verifier.verify(&huge, UnixTime::now()),
            Err(ForwardedCertError::Malformed)
        );
    }
}
