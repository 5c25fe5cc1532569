//! Real sockets, real TLS: a sample app, certificates, tokens, a snapshot, and the
//! sidecar started in-process on ephemeral ports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_proxy::config::Config;
use portcullis_proxy::sidecar::{self, Running};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const HS_SECRET: &[u8] = b"a-test-only-hmac-secret-of-32-bytes!";
pub const EXTERNAL_SECRET: &[u8] = b"another-test-only-secret-for-external";
pub const RSA_KEY: &str = include_str!("../fixtures/rsa-test-only.key");
pub const RSA_PUB: &str = include_str!("../fixtures/rsa-test-only.pub");
pub const ISSUER: &str = "https://auth.test";
pub const AUDIENCE: &str = "shop-api";
pub const ALICE_KEY: &str = "pck_alice0000000000000000000000000000000000";
pub const REVOKED_KEY: &str = "pck_revoked000000000000000000000000000000000";
pub const EXPIRED_KEY: &str = "pck_expired000000000000000000000000000000000";
pub const SOURCE_KEY: &str = "pck_source0000000000000000000000000000000000";

pub fn now() -> i64 {
    portcullis_wire::unix_now()
}

// ---------------------------------------------------------------- the sample app

/// What the app received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
}

pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the app saw a request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// An app serving HTTP/1.1 and h2c: `/slow` answers after 3 s, `/ws` upgrades and
/// echoes, `/grpc.*` answers with gRPC trailers, anything else `ok`.
pub async fn app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    record.lock().unwrap().push(Seen {
                        method: req.method().to_string(),
                        uri: req.uri().to_string(),
                        version: req.version(),
                        headers: req.headers().clone(),
                    });
                    async move {
                        let path = req.uri().path().to_string();
                        let response: Response<AppBody> = if path == "/slow" {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            Response::new(full("slow"))
                        } else if path == "/ws" {
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(upgraded) = upgrade.await {
                                    let mut io = TokioIo::new(upgraded);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            Response::builder()
                                .status(StatusCode::SWITCHING_PROTOCOLS)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .body(full(""))
                                .unwrap()
                        } else if path.ends_with("/echo") {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            Response::new(Full::new(body).boxed())
                        } else if path.starts_with("/grpc.") {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("grpc-message", "echoed".parse().unwrap());
                            let frames = vec![
                                Ok::<_, std::convert::Infallible>(Frame::data(body)),
                                Ok(Frame::trailers(trailers)),
                            ];
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .body(StreamBody::new(futures_stream(frames)).boxed())
                                .unwrap()
                        } else {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                            Response::builder()
                                .header("x-app-body-bytes", body.to_string())
                                .body(full("ok"))
                                .unwrap()
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App { addr, seen }
}

fn full(s: &'static str) -> AppBody {
    Full::new(Bytes::from_static(s.as_bytes())).boxed()
}

fn futures_stream<T: Send + 'static>(items: Vec<T>) -> impl futures_core::Stream<Item = T> + Send {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    impl<T> Unpin for Iter<T> {}
    Iter(items.into_iter())
}

// ---------------------------------------------------------------- certificates

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// alice@example.com, signed by our CA.
    pub alice: (String, String),
    /// A certificate for a name the snapshot does not know, signed by our CA.
    pub stranger: (String, String),
    /// alice@example.com again, but from another CA.
    pub impostor: (String, String),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, sans: Vec<SanType>, server: bool) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ours = ca("portcullis test CA");
    let theirs = ca("someone else's CA");
    let (server_pem, server_key_pem) = leaf(
        &ours,
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
        true,
    );
    let email = |e: &str| SanType::Rfc822Name(e.try_into().unwrap());
    let alice = leaf(&ours, "alice-laptop", vec![email("alice@example.com")], false);
    let stranger = leaf(&ours, "stranger", vec![email("stranger@example.com")], false);
    let impostor = leaf(&theirs, "alice-laptop", vec![email("alice@example.com")], false);
    let write = |name: &str, content: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    Pki {
        ca_file: write("ca.pem", &ours.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server.key", &server_key_pem),
        alice,
        stranger,
        impostor,
        dir,
    }
}

// ---------------------------------------------------------------- tokens

pub fn token(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(HS_SECRET),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// Valid claims for `sub` from our issuer.
pub fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "sid": "sid-live", "iat": now(), "exp": now() + 600})
}

pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------- the snapshot

fn key_entry(key: &str, owner_kind: &str, owner: &str, scopes: &[&str]) -> serde_json::Value {
    json!({
        "key_hash": portcullis_wire::api_key::hash_hex(key),
        "prefix": &key[..8],
        "namespace": "shop",
        "owner_kind": owner_kind,
        "owner_name": owner,
        "scopes": scopes,
        "expires_at": null,
        "revoked_at": null,
    })
}

pub fn snapshot(revision: i64) -> serde_json::Value {
    let mut revoked = key_entry(REVOKED_KEY, "user", "alice", &["read"]);
    revoked["revoked_at"] = json!(now() - 10);
    let mut expired = key_entry(EXPIRED_KEY, "user", "alice", &["read"]);
    expired["expires_at"] = json!(now() - 10);
    json!({
        "revision": revision,
        "generated_at": now(),
        "roles": [
            {"name": "viewer", "scopes": ["read"]},
            {"name": "editor", "scopes": ["read", "write"]},
            {"name": "admin", "scopes": ["read", "write", "admin"]},
        ],
        "users": [
            {"name": "alice", "email": "alice@example.com", "disabled": false, "roles": ["viewer"],
             "teams": [{"team": "platform", "role": "member"}]},
            {"name": "root", "email": "root@example.com", "disabled": false, "roles": ["admin"], "teams": []},
            {"name": "eve", "email": "eve@example.com", "disabled": true, "roles": ["admin"], "teams": []},
        ],
        "api_keys": [
            key_entry(ALICE_KEY, "user", "alice", &["read"]),
            revoked,
            expired,
            key_entry(SOURCE_KEY, "source", "edge-syslog", &["write"]),
        ],
        "sources": [
            {"namespace": "shop", "name": "edge-syslog", "team": null, "enabled": true, "rate_limit": null},
        ],
        "revoked_sessions": ["sid-revoked"],
        "policies": [{
            "namespace": "shop",
            "name": "api",
            "pod_selector": {},
            "rules": [
                {"name": "healthz", "methods": ["GET"], "paths": ["/healthz"], "public": true},
                {"name": "admin", "paths": ["/api/v1/admin/**"], "requireRoles": ["admin"]},
                {"name": "teams", "paths": ["/api/v1/teams/{team}/**"], "requireTeamRole": "member"},
                {"name": "ingest", "methods": ["POST"], "paths": ["/ingest"], "requireScopes": ["write"]},
                {"name": "limited", "methods": ["GET"], "paths": ["/limited"], "requireScopes": ["read"],
                 "rateLimit": {"requestsPerSecond": 1, "burst": 2}},
                {"name": "export", "methods": ["GET"], "paths": ["/export"], "requireScopes": ["read"],
                 "allowApiKeyInQuery": true},
                {"name": "ws", "methods": ["GET"], "paths": ["/ws"], "requireScopes": ["read"]},
                {"name": "grpc", "methods": ["POST"], "paths": ["/grpc.Echo/*"], "requireScopes": ["read"]},
                {"name": "slow", "methods": ["GET"], "paths": ["/slow"], "requireScopes": ["read"]},
                {"name": "read", "methods": ["GET", "HEAD"], "paths": ["/api/**"], "requireScopes": ["read"]},
                {"name": "write", "methods": ["POST", "PUT", "PATCH", "DELETE"], "paths": ["/api/**"],
                 "requireScopes": ["write"]},
            ],
            "cors": {"allowedOrigins": ["https://app.example.com"], "allowedMethods": ["GET", "POST"],
                     "allowedHeaders": ["authorization", "content-type"], "maxAgeSeconds": 600},
            "api_versions": {"current": "/api/v1",
                             "deprecated": [{"prefix": "/api/v0", "deprecated": "2026-01-01", "sunset": "2027-01-01"}]},
        }],
        "jwt_issuers": [
            {"issuer": ISSUER, "audiences": [AUDIENCE], "claims": "directory", "keys": [
                {"alg": "HS256", "k": b64url(HS_SECRET)},
                {"kid": "rs1", "alg": "RS256", "pem": RSA_PUB},
            ]},
            {"issuer": "https://external.test", "audiences": [AUDIENCE], "claims": "token", "keys": [
                {"kid": "ext", "alg": "HS256", "k": b64url(EXTERNAL_SECRET)},
            ]},
        ],
    })
}

pub fn write_snapshot(path: &Path, value: &serde_json::Value) {
    // Rename into place, as the docs tell writers to.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(value).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

// ---------------------------------------------------------------- the sidecar

pub struct Sidecar {
    pub running: Running,
    pub dir: tempfile::TempDir,
    pub snapshot: PathBuf,
}

impl Sidecar {
    pub fn http(&self) -> SocketAddr {
        self.running.http
    }
}

/// Starts the sidecar in front of `app` with the test snapshot (unless `with_snapshot`
/// is false) and extra flags, and waits until it has a snapshot.
pub async fn sidecar(app: &App, extra: &[&str], with_snapshot: bool) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("snapshot.json");
    if with_snapshot {
        write_snapshot(&snapshot, &self::snapshot(1));
    }
    let mut args = vec![
        "portcullis-proxy".to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        app.url(),
        "--snapshot-file".into(),
        snapshot.display().to_string(),
        "--namespace".into(),
        "shop".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::try_parse_from(args).unwrap();
    let running = sidecar::start(&config).await.unwrap();
    if with_snapshot {
        for _ in 0..200 {
            if running.current.load().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(running.current.load().is_some(), "snapshot installed");
    }
    Sidecar { running, dir, snapshot }
}

use clap::Parser;

// ---------------------------------------------------------------- clients

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("JSON body, got {:?}", self.body))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    send_over(stream, method, path, headers, body).await
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers, "").await
}

pub async fn send_over<S>(stream: S, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    try_send_over(stream, method, path, headers, body).await.unwrap()
}

/// [`send_over`], with a failed handshake or exchange as an error rather than a panic.
pub async fn try_send_over<S>(
    stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut builder = Request::builder().method(method).uri(path).header("host", "shop.test");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

/// A GET of `path` over TLS with `client`'s certificate (or none); an error where the
/// handshake or the first exchange fails, as a refused certificate makes it.
pub async fn tls_get(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&(String, String)>,
    path: &str,
) -> std::io::Result<Reply> {
    let stream = tls_connect(addr, pki, client, &[b"http/1.1"]).await?;
    try_send_over(stream, "GET", path, &[], "")
        .await
        .map_err(std::io::Error::other)
}

/// Writes raw bytes and reads until the peer closes or 5 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A TLS connection to the sidecar, with a client certificate or none.
pub async fn tls_connect(
    addr: SocketAddr,
    pki: &Pki,
    client: Option<&(String, String)>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca_file).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // With TLS 1.3 a refused client certificate surfaces on the first read, not in the handshake.
    tls.write_all(b"").await?;
    Ok(tls)
}

/// The admin port's text at `path`.
pub async fn admin(sidecar: &Sidecar, path: &str) -> Reply {
    get(sidecar.running.admin, path, &[]).await
}
