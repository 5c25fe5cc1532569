//! The API server over real sockets (plain HTTP on loopback, and real TLS) against a
//! real SQLite store: long polls, namespaces, gzip, audit, TokenReview.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_wire::Snapshot;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::audit::KidReports;
use super::auth::{Authenticator, FileTokens, TokenReviewer};
use super::*;
use crate::store::{DbConfig, RoleRow};

struct Server {
    addr: SocketAddr,
    store: Store,
    metrics: Arc<Metrics>,
    shop: String,
    billing: String,
    _dir: tempfile::TempDir,
}

async fn start(tls: Option<Arc<tls::TlsFiles>>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbConfig::from_url(&format!("sqlite://{}/api.db", dir.path().display())).unwrap())
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (publisher, feed) = snapshots::channel();
    tokio::spawn(publisher.run(store.clone(), metrics.clone()));
    let tokens = FileTokens::open(&dir.path().join("tokens")).unwrap();
    tokens.ensure(["shop", "billing"]).unwrap();
    let shop = std::fs::read_to_string(tokens.path("shop")).unwrap();
    let billing = std::fs::read_to_string(tokens.path("billing")).unwrap();
    // The receiver is kept for the server's life, as the issuer refresher would.
    let (kid_reports, kid_rx) = KidReports::new(metrics.clone());
    tokio::spawn(async move {
        let mut kid_rx = kid_rx;
        while kid_rx.recv().await.is_some() {}
    });
    let state = Arc::new(ApiState {
        feed,
        auth: Authenticator::Files(Arc::new(tokens)),
        store: store.clone(),
        metrics: metrics.clone(),
        kid_reports,
    });
    let listener = bind("127.0.0.1:0".parse().unwrap(), tls.as_deref()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, tls, router(state), std::future::pending()));
    Server {
        addr,
        store,
        metrics,
        shop,
        billing,
        _dir: dir,
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One HTTP/1.1 exchange with `Connection: close`, read to the end.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: String) -> Answer {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn request(method: &str, path: &str, token: Option<&str>, extra: &[(&str, &str)], body: &str) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: cp\r\nConnection: close\r\n");
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (n, v) in extra {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    exchange(stream, request(method, path, token, extra, body)).await
}

fn role(name: &str) -> RoleRow {
    RoleRow {
        name: name.into(),
        scopes: vec!["read".into()],
        description: None,
        builtin: false,
    }
}

/// The first snapshot, once the publisher has read one.
async fn first(server: &Server) -> (i64, String) {
    let answer = call(
        server,
        "GET",
        "/api/v1/snapshots/shop?revision=-1&wait=10",
        Some(&server.shop),
        &[],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let snapshot: Snapshot = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        answer.header("portcullis-revision"),
        Some(snapshot.revision.to_string().as_str())
    );
    assert_eq!(answer.header("portcullis-epoch"), Some(snapshot.epoch.as_str()));
    assert_eq!(snapshot.epoch.len(), 32);
    (snapshot.revision, snapshot.epoch)
}

#[tokio::test]
async fn a_long_poll_answers_with_the_next_revision_and_304_when_nothing_changed() {
    let server = start(None).await;
    let (revision, epoch) = first(&server).await;

    let unchanged = call(
        &server,
        "GET",
        &format!("/api/v1/snapshots/shop?revision={revision}&epoch={epoch}&wait=0"),
        Some(&server.shop),
        &[],
        "",
    )
    .await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(
        unchanged.header("portcullis-revision"),
        Some(revision.to_string().as_str())
    );

    let path = format!("/api/v1/snapshots/shop?revision={revision}&epoch={epoch}&wait=30");
    let shop = server.shop.clone();
    let addr = server.addr;
    let waiting = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        exchange(stream, request("GET", &path, Some(&shop), &[], "")).await
    });
    // The poll is parked before the write (the gauge says so), so it is the write that wakes it.
    for _ in 0..500 {
        if server
            .metrics
            .render()
            .contains("portcullis_operator_api_long_polls_waiting 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiting.is_finished());
    server.store.upsert_role(&role("auditor")).await.unwrap();
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status, 200);
    let snapshot: Snapshot = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(snapshot.revision, revision + 1);
    assert!(snapshot.roles.iter().any(|r| r.name == "auditor"));

    // Another epoch (a restored database) is answered at once, whatever the revision held.
    let reset = call(
        &server,
        "GET",
        "/api/v1/snapshots/shop?revision=999999&epoch=0123&wait=30",
        Some(&server.shop),
        &[],
        "",
    )
    .await;
    assert_eq!(reset.status, 200);
    let text = server.metrics.render();
    assert!(
        text.contains(r#"portcullis_operator_api_snapshot_requests_total{code="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_operator_api_snapshot_requests_total{code="304"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_token_fetches_its_own_namespace_only() {
    let server = start(None).await;
    first(&server).await;
    let other = call(
        &server,
        "GET",
        "/api/v1/snapshots/shop?revision=-1",
        Some(&server.billing),
        &[],
        "",
    )
    .await;
    assert_eq!(other.status, 403);
    let body = other.json();
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(body["meta"]["version"], 1);
    assert!(body["meta"]["correlation_id"].as_str().is_some());
    let none = call(&server, "GET", "/api/v1/snapshots/shop?revision=-1", None, &[], "").await;
    assert_eq!(none.status, 401);
    let wrong = call(
        &server,
        "GET",
        "/api/v1/snapshots/shop?revision=-1",
        Some("guessed"),
        &[("X-Correlation-ID", "c-1")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["meta"]["correlation_id"], "c-1");
    let text = server.metrics.render();
    for line in [
        r#"portcullis_operator_api_auth_failures_total{reason="wrong_namespace"} 1"#,
        r#"portcullis_operator_api_auth_failures_total{reason="missing"} 1"#,
        r#"portcullis_operator_api_auth_failures_total{reason="rejected"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    let missing = call(&server, "GET", "/api/v1/nothing", None, &[], "").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn snapshots_are_gzipped_when_the_caller_takes_it() {
    let server = start(None).await;
    let (revision, _) = first(&server).await;
    let plain = call(
        &server,
        "GET",
        "/api/v1/snapshots/shop?revision=-1",
        Some(&server.shop),
        &[],
        "",
    )
    .await;
    let gz = call(
        &server,
        "GET",
        "/api/v1/snapshots/shop?revision=-1",
        Some(&server.shop),
        &[("Accept-Encoding", "gzip")],
        "",
    )
    .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(plain.header("content-encoding"), None);
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut out)
        .unwrap();
    assert_eq!(out, plain.body);
    assert!(gz.body.len() < plain.body.len());
    let snapshot: Snapshot = serde_json::from_slice(&out).unwrap();
    assert_eq!(snapshot.revision, revision);
}

fn audit_body(namespace: &str, correlation_id: &str, count: usize) -> String {
    let record = serde_json::json!({
        "at_ms": 1_700_000_000_000i64, "correlation_id": correlation_id, "namespace": namespace,
        "pod": "api-1", "actor": "user:bob", "method": "POST", "path": "/api/v1/items",
        "rule": "shop-api/0", "decision": "deny", "reason": "forbidden", "status": 403, "client": "10.0.0.1"
    });
    serde_json::json!({"records": vec![record; count]}).to_string()
}

#[tokio::test]
async fn audit_batches_are_written_for_the_tokens_namespace_only() {
    let server = start(None).await;
    let answer = call(
        &server,
        "POST",
        "/api/v1/audit",
        Some(&server.shop),
        &[],
        &audit_body("shop", "corr-77", 2),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json()["status"], "ok");
    let rows = server.store.request_audit_by_correlation("corr-77").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].namespace.as_str(),
            rows[0].decision.as_str(),
            rows[0].status,
            rows[0].rule.as_deref()
        ),
        ("shop", "deny", 403, Some("shop-api/0"))
    );
    let foreign = call(
        &server,
        "POST",
        "/api/v1/audit",
        Some(&server.shop),
        &[],
        &audit_body("billing", "corr-78", 1),
    )
    .await;
    assert_eq!(foreign.status, 403);
    assert!(
        server
            .store
            .request_audit_by_correlation("corr-78")
            .await
            .unwrap()
            .is_empty()
    );
    let big = audit_body("shop", "corr-79", portcullis_wire::api::MAX_AUDIT_BATCH + 1);
    assert_eq!(
        call(&server, "POST", "/api/v1/audit", Some(&server.shop), &[], &big)
            .await
            .status,
        413
    );
    assert_eq!(
        call(&server, "POST", "/api/v1/audit", Some(&server.shop), &[], "{")
            .await
            .status,
        400
    );
    let kid = r#"{"issuer":"https://idp.example.com","kid":"k9"}"#;
    assert_eq!(
        call(
            &server,
            "POST",
            "/api/v1/issuers/unknown-kid",
            Some(&server.shop),
            &[],
            kid
        )
        .await
        .status,
        202
    );
    assert_eq!(
        call(&server, "POST", "/api/v1/issuers/unknown-kid", None, &[], kid)
            .await
            .status,
        401
    );
    let text = server.metrics.render();
    assert!(
        text.contains(r#"portcullis_operator_api_audit_records_total{result="written"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_operator_api_unknown_kid_reports_total{outcome="queued"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn plain_http_is_refused_off_loopback() {
    assert!(matches!(
        check_listen("0.0.0.0:8443".parse().unwrap(), None),
        Err(Error::PlainHttpNotLoopback(_))
    ));
    assert!(check_listen("127.0.0.1:7070".parse().unwrap(), None).is_ok());
    assert!(check_listen("[::1]:7070".parse().unwrap(), None).is_ok());
}

/// A CA, and a server certificate for 127.0.0.1 it signed, as PEM files.
fn certificates(
    dir: &std::path::Path,
    name: &str,
) -> (
    rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca, cert_path, key_path)
}

async fn tls_call(
    addr: SocketAddr,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    request: String,
) -> std::io::Result<Answer> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let stream = connector.connect(name, tcp).await?;
    Ok(exchange(stream, request).await)
}

#[tokio::test]
async fn tls_serves_with_the_certificate_and_follows_its_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path(), "one");
    let files = tls::TlsFiles::load(&cert, &key).unwrap();
    let server = start(Some(files.clone())).await;
    let get = |token: &str| {
        request(
            "GET",
            "/api/v1/snapshots/shop?revision=-1&wait=10",
            Some(token),
            &[],
            "",
        )
    };
    let answer = tls_call(server.addr, &ca, get(&server.shop)).await.unwrap();
    assert_eq!(answer.status, 200);
    // A client that trusts another CA does not get through.
    let (other_ca, new_cert, new_key) = certificates(dir.path(), "two");
    assert!(tls_call(server.addr, &other_ca, get(&server.shop)).await.is_err());
    // The files are replaced in place: the next connection presents the new pair.
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    files.reload_if_changed();
    assert_eq!(
        tls_call(server.addr, &other_ca, get(&server.shop))
            .await
            .unwrap()
            .status,
        200
    );
    assert!(tls_call(server.addr, &ca, get(&server.shop)).await.is_err());
}

#[tokio::test]
async fn token_reviews_name_the_namespace_and_are_cached() {
    let api = crate::local::MemoryApi::new();
    api.register_token("sa-token", "system:serviceaccount:shop:default", &["portcullis"]);
    api.register_token("other-audience", "system:serviceaccount:shop:default", &["vault"]);
    api.register_token("a-person", "alice", &["portcullis"]);
    let auth = Authenticator::TokenReview(TokenReviewer::new(api.client()));
    let headers = |token: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    };
    assert_eq!(auth.namespace(&headers("sa-token")).await.unwrap(), "shop");
    assert_eq!(auth.namespace(&headers("unknown")).await, Err(AuthFailure::Rejected));
    assert_eq!(
        auth.namespace(&headers("other-audience")).await,
        Err(AuthFailure::Rejected)
    );
    assert_eq!(
        auth.namespace(&headers("a-person")).await,
        Err(AuthFailure::NotServiceAccount)
    );
    let reviews = api.token_reviews();
    assert_eq!(auth.namespace(&headers("sa-token")).await.unwrap(), "shop");
    assert_eq!(api.token_reviews(), reviews, "answered from the cache");
}

/// A write this process commits (local mode's reconcilers, the token service) is
/// published without waiting for the revision poll, which is an hour here.
#[tokio::test]
async fn a_write_of_this_process_is_published_without_waiting_for_the_poll() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbConfig::from_url(&format!("sqlite://{}/own.db", dir.path().display())).unwrap())
        .await
        .unwrap();
    let (publisher, feed) = snapshots::channel();
    let mut published = feed.subscribe();
    tokio::spawn(
        publisher
            .poll_every(Duration::from_secs(3600))
            .run(store.clone(), Arc::new(Metrics::new())),
    );
    let first = published
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .as_ref()
        .unwrap()
        .revision;
    let written = store
        .upsert_role(&RoleRow::new("auditor", ["audit:read"]))
        .await
        .unwrap();
    assert!(written.changed && written.revision > first);
    let seen = tokio::time::timeout(
        Duration::from_secs(60),
        published.wait_for(|built| built.as_ref().is_some_and(|b| b.revision >= written.revision)),
    )
    .await
    .expect("published before the poll")
    .unwrap()
    .as_ref()
    .unwrap()
    .revision;
    assert_eq!(seen, written.revision);
}
