//! The TLS listener's certificate rotated on disk (as cert-manager and the kubelet do it:
//! whole files swapped) is served from the next handshake on, without a restart, while
//! a connection opened before keeps working; a half-written rotation keeps the old one.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use support::*;

fn new_pair() -> (String, String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ca.distinguished_name.push(DnType::CommonName, "rotated CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn shown(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let app = app().await;
    let pki = pki();
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let sidecar = sidecar(
        &app,
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-reload-seconds",
            "0.05",
        ],
        true,
    )
    .await;
    let addr = sidecar.running.tls.unwrap();
    let first = std::fs::read_to_string(&pki.server_cert).unwrap();
    let mut before = tls_connect(addr, &pki, None, &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown(&before), der(&first));

    // A new key under a new CA; clients trust both CAs during the change.
    let old_ca = std::fs::read_to_string(&pki.ca_file).unwrap();
    let (new_ca, new_cert, new_key) = new_pair();
    replace(&pki.ca_file, &format!("{old_ca}{new_ca}"));
    replace(&pki.server_key, &new_key);
    replace(&pki.server_cert, &new_cert);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = tls_connect(addr, &pki, None, &[b"http/1.1"]).await.unwrap();
        if shown(&stream) == der(&new_cert) {
            let reply = send_over(stream, "GET", "/healthz", &[], "").await;
            assert_eq!(reply.status, 200, "requests go through on the new certificate");
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before the rotation still works.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    before
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    before.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // Half a rotation (a key that is not the certificate's) keeps the pair in force.
    let (_, _, stray_key) = new_pair();
    replace(&pki.server_key, &stray_key);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = tls_connect(addr, &pki, None, &[b"http/1.1"]).await.unwrap();
    assert_eq!(shown(&stream), der(&new_cert));
}

#[test]
fn the_admin_address_is_configurable_for_probes_and_prometheus() {
    use clap::Parser;
    use portcullis_proxy::config::Config;
    let base = ["p", "--upstream", "http://127.0.0.1:3000", "--snapshot-file", "s.json"];
    let local = Config::try_parse_from(base).unwrap();
    assert_eq!(local.admin_listen.to_string(), "127.0.0.1:9901", "loopback by default");
    let pod = Config::try_parse_from(base.iter().copied().chain(["--admin-addr", "0.0.0.0:9090"])).unwrap();
    assert_eq!(pod.admin_listen.to_string(), "0.0.0.0:9090");
}
