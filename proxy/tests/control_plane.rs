//! The sidecar against a control plane over real sockets and real TLS: snapshots long-polled
//! and verified against a CA, maximum staleness, the audit sink, unknown key ids, and the
//! auth route. The control plane here is a small stand-in that speaks the contract of
//! `portcullis_wire::api` and records what it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use portcullis_proxy::config::Config;
use portcullis_proxy::sidecar::{self, Running};
use portcullis_wire::api::{AuditBatch, Decision, UnknownKid};
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the stand-in control plane holds and what it was sent.
#[derive(Default)]
struct State {
    snapshot: Value,
    /// Answer every snapshot poll 503, as a control plane that is down (or cut off) does.
    down: bool,
    /// Hold audit posts without answering, as an overloaded control plane does.
    hang_audit: bool,
    audits: Vec<AuditBatch>,
    audit_posts: usize,
    kids: Vec<UnknownKid>,
    /// Auth-route requests: method, URI, headers, body.
    auth: Vec<(String, String, HeaderMap, Bytes)>,
    polls: Vec<(String, Option<String>)>,
}

#[derive(Clone)]
struct ControlPlane {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl ControlPlane {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn set(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap());
    }

    fn read<T>(&self, look: impl FnOnce(&State) -> T) -> T {
        look(&self.state.lock().unwrap())
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn json_reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn answer(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if let Some(namespace) = path.strip_prefix("/api/v1/snapshots/") {
        let auth = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let gzip_ok = request
            .headers()
            .get("accept-encoding")
            .is_some_and(|v| v.to_str().unwrap().contains("gzip"));
        state.lock().unwrap().polls.push((query.clone(), auth.clone()));
        if !auth.as_deref().is_some_and(|a| a.starts_with("Bearer sidecar-token")) {
            return json_reply(StatusCode::UNAUTHORIZED, b"{}".to_vec());
        }
        if namespace != "shop" {
            return json_reply(StatusCode::FORBIDDEN, b"{}".to_vec());
        }
        // A short long poll: a change is seen within 200 ms.
        for _ in 0..10 {
            let (down, snapshot) = {
                let s = state.lock().unwrap();
                (s.down, s.snapshot.clone())
            };
            if down {
                return json_reply(StatusCode::SERVICE_UNAVAILABLE, b"{}".to_vec());
            }
            let held = format!(
                "revision={}&epoch={}&",
                snapshot["revision"],
                snapshot["epoch"].as_str().unwrap()
            );
            if !query.starts_with(&held) {
                let body = serde_json::to_vec(&snapshot).unwrap();
                let mut response = json_reply(StatusCode::OK, if gzip_ok { gzip(&body) } else { body });
                if gzip_ok {
                    response
                        .headers_mut()
                        .insert("content-encoding", "gzip".parse().unwrap());
                }
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let headers = request.headers().clone();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    match path.as_str() {
        "/api/v1/audit" => {
            let hang = {
                let mut s = state.lock().unwrap();
                s.audit_posts += 1;
                s.hang_audit
            };
            if hang {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let batch: AuditBatch = serde_json::from_slice(&body).unwrap();
            state.lock().unwrap().audits.push(batch);
            json_reply(StatusCode::ACCEPTED, b"{}".to_vec())
        }
        "/api/v1/issuers/unknown-kid" => {
            state.lock().unwrap().kids.push(serde_json::from_slice(&body).unwrap());
            json_reply(StatusCode::ACCEPTED, b"{}".to_vec())
        }
        _ => {
            state.lock().unwrap().auth.push((method, uri, headers, body));
            let mut response = json_reply(
                StatusCode::OK,
                br#"{"status":"ok","data":{"access_token":"t"}}"#.to_vec(),
            );
            response
                .headers_mut()
                .insert("set-cookie", "refresh=r1; HttpOnly; Secure".parse().unwrap());
            response
        }
    }
}

/// A control plane over TLS with `pki`'s server certificate, serving `snapshot`.
async fn control_plane(pki: &Pki, snapshot: Value) -> ControlPlane {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State {
        snapshot,
        ..State::default()
    }));
    let config = portcullis_proxy::transport::tls::server_config(
        &pki.server_cert,
        &pki.server_key,
        None,
        portcullis_proxy::transport::tls::ClientAuth::None,
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(config);
    let serving = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let state = serving.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(state, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    ControlPlane { addr, state }
}

/// The test snapshot at `revision` of epoch `e1`, its policy auditing every allow when
/// `audit_allows`.
fn served(revision: i64, audit_allows: bool) -> Value {
    let mut snapshot = snapshot(revision);
    snapshot["epoch"] = json!("e1");
    if audit_allows {
        snapshot["policies"][0]["audit"] = json!({"allows": 1.0});
    }
    snapshot
}

struct Started {
    running: Running,
    _dir: tempfile::TempDir,
}

/// A sidecar in front of `app`, fed by `cp` over TLS verified with `ca`.
async fn sidecar_of(app: &App, cp: &ControlPlane, ca: &std::path::Path, extra: &[&str]) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sidecar-token\n").unwrap();
    let mut args: Vec<String> = [
        "portcullis-proxy",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--namespace",
        "shop",
        "--pod-name",
        "shop-api-0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--upstream".into(),
        app.url(),
        "--control-plane".into(),
        cp.url(),
        "--control-plane-ca".into(),
        ca.display().to_string(),
        "--control-plane-token-file".into(),
        token.display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let config = Config::try_parse_from(args).unwrap();
    let running = sidecar::start(&config).await.unwrap();
    Started { running, _dir: dir }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn snapshots_come_over_verified_tls_and_a_wrong_ca_gets_none() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &[]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let r = get(sidecar.running.http, "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(r.status, 200);
    // A revocation on the control plane reaches the sidecar through the long poll.
    let mut next = served(2, false);
    next["api_keys"][0]["revoked_at"] = json!(now() - 1);
    cp.set(|s| s.snapshot = next);
    eventually("revision 2", || {
        sidecar.running.current.load().is_some_and(|c| c.revision == 2)
    })
    .await;
    let r = get(sidecar.running.http, "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(r.status, 401);
    let polls = cp.read(|s| s.polls.clone());
    assert!(polls[0].0.starts_with("revision=-1&epoch=&wait="), "{polls:?}");
    assert!(
        polls.iter().any(|(q, _)| q.starts_with("revision=1&epoch=e1&")),
        "{polls:?}"
    );
    sidecar.running.shutdown().await;

    // A CA that did not sign the control plane's certificate: no snapshot, ever.
    let other = support::pki();
    let blind = sidecar_of(&app, &cp, &other.ca_file, &[]).await;
    std::fs::write(blind._dir.path().join("token"), "sidecar-token-blind").unwrap();
    eventually("fetch errors counted", || {
        blind
            .running
            .metrics
            .snapshot_updates
            .with_label_values(&["error"])
            .get()
            >= 2
    })
    .await;
    assert!(blind.running.current.load().is_none());
    assert!(
        !cp.read(|s| s
            .polls
            .iter()
            .any(|(_, auth)| auth.as_deref() == Some("Bearer sidecar-token-blind"))),
        "no request crossed the refused TLS"
    );
    let r = get(blind.running.http, "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (503, "no_policy"));
    blind.running.shutdown().await;
}

#[tokio::test]
async fn past_the_maximum_staleness_requests_are_refused_until_the_control_plane_answers() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &["--max-staleness", "1"]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let ok = || async { get(sidecar.running.http, "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await };
    assert_eq!(ok().await.status, 200);

    cp.set(|s| s.down = true);
    let mut refused = None;
    for _ in 0..100 {
        let r = ok().await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "the last good snapshot is enforced until then");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = refused.expect("refused once stale");
    assert_eq!(refused.error_code(), "policy_stale");
    assert!(refused.json()["meta"]["correlation_id"].is_string());
    let metrics = String::from_utf8(admin_text(&sidecar.running).await).unwrap();
    let age: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_proxy_snapshot_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age >= 2, "{age}");

    cp.set(|s| s.down = false);
    let mut back = false;
    for _ in 0..150 {
        if ok().await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "enforcing again once the control plane answered");
    sidecar.running.shutdown().await;
}

async fn admin_text(running: &Running) -> Vec<u8> {
    get(running.admin, "/metrics", &[]).await.body.to_vec()
}

#[tokio::test]
async fn decisions_are_audited_denials_always_allows_as_the_policy_asks() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &[]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let http = sidecar.running.http;
    let denied = get(
        http,
        "/api/v1/admin/users?api_key=secret",
        &[("x-api-key", ALICE_KEY), ("x-correlation-id", "corr-403")],
    )
    .await;
    assert_eq!(denied.status, 403);
    let anonymous = get(http, "/api/v1/items", &[("x-correlation-id", "corr-401")]).await;
    assert_eq!(anonymous.status, 401);
    let allowed = get(
        http,
        "/api/v1/items",
        &[("x-api-key", ALICE_KEY), ("x-correlation-id", "corr-200")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    eventually("two records", || {
        cp.read(|s| s.audits.iter().map(|b| b.records.len()).sum::<usize>() >= 2)
    })
    .await;
    // A flush later, still only the denials: this policy does not ask for allows.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let records: Vec<_> = cp.read(|s| s.audits.iter().flat_map(|b| b.records.clone()).collect());
    assert_eq!(records.len(), 2, "{records:?}");
    let forbidden = records.iter().find(|r| r.correlation_id == "corr-403").unwrap();
    assert_eq!(forbidden.decision, Decision::Deny);
    assert_eq!((forbidden.status, forbidden.reason.as_str()), (403, "forbidden"));
    assert_eq!(forbidden.actor.as_deref(), Some("user:alice"));
    assert_eq!(forbidden.rule.as_deref(), Some("shop/api/admin"));
    assert_eq!(forbidden.path, "/api/v1/admin/users", "no query: it can hold secrets");
    assert_eq!(
        (forbidden.namespace.as_str(), forbidden.pod.as_str()),
        ("shop", "shop-api-0")
    );
    assert_eq!(forbidden.client.as_deref(), Some("127.0.0.1"));
    assert_eq!(forbidden.method, "GET");
    let unauthenticated = records.iter().find(|r| r.correlation_id == "corr-401").unwrap();
    assert_eq!((unauthenticated.status, unauthenticated.actor.as_deref()), (401, None));

    // The policy now asks for every allow.
    cp.set(|s| s.snapshot = served(2, true));
    eventually("revision 2", || {
        sidecar.running.current.load().is_some_and(|c| c.revision == 2)
    })
    .await;
    let allowed = get(
        http,
        "/api/v1/items",
        &[("x-api-key", ALICE_KEY), ("x-correlation-id", "corr-allow")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    eventually("the allow audited", || {
        cp.read(|s| {
            s.audits
                .iter()
                .flat_map(|b| &b.records)
                .any(|r| r.correlation_id == "corr-allow")
        })
    })
    .await;
    let record = cp.read(|s| {
        s.audits
            .iter()
            .flat_map(|b| b.records.clone())
            .find(|r| r.correlation_id == "corr-allow")
            .unwrap()
    });
    assert_eq!(
        (
            record.decision,
            record.status,
            record.reason.as_str(),
            record.actor.as_deref()
        ),
        (Decision::Allow, 200, "allowed", Some("user:alice"))
    );
    eventually("three records taken", || sidecar.running.metrics.audit_sent.get() == 3).await;
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn a_full_audit_queue_drops_and_counts_and_never_holds_a_request() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    cp.set(|s| s.hang_audit = true);
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &["--audit-queue", "1"]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let http = sidecar.running.http;
    assert_eq!(get(http, "/api/v1/items", &[]).await.status, 401);
    // The first batch is on its way, held by the control plane.
    eventually("first batch posted", || cp.read(|s| s.audit_posts >= 1)).await;
    for _ in 0..6 {
        // Answered at once while the sender is stuck.
        let r = tokio::time::timeout(Duration::from_secs(2), get(http, "/api/v1/items", &[]))
            .await
            .expect("a request is never held by the audit");
        assert_eq!(r.status, 401);
    }
    assert!(
        sidecar.running.metrics.audit_dropped.get() >= 5,
        "one fits in the queue"
    );
    let metrics = String::from_utf8(admin_text(&sidecar.running).await).unwrap();
    assert!(metrics.contains("portcullis_audit_dropped_total"), "{metrics}");
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn an_unknown_kid_of_a_known_issuer_is_reported_once_per_issuer() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &[]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let http = sidecar.running.http;
    let rotated = token(Algorithm::HS256, Some("rotated-1"), claims("alice"));
    let again = token(Algorithm::HS256, Some("rotated-2"), claims("alice"));
    let mut stranger = claims("alice");
    stranger["iss"] = json!("https://nobody.test");
    let stranger = token(Algorithm::HS256, Some("whatever"), stranger);
    for t in [&rotated, &again, &stranger] {
        let r = get(http, "/api/v1/items", &[("authorization", &bearer(t))]).await;
        assert_eq!(r.status, 401);
    }
    eventually("reported", || cp.read(|s| !s.kids.is_empty())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kids = cp.read(|s| s.kids.clone());
    assert_eq!(
        kids,
        [UnknownKid {
            issuer: ISSUER.into(),
            kid: "rotated-1".into()
        }],
        "once per issuer; an unknown issuer is never reported"
    );
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn the_auth_prefix_goes_to_the_control_plane_without_authentication() {
    let pki = pki();
    let app = app().await;
    let cp = control_plane(&pki, served(1, false)).await;
    let sidecar = sidecar_of(&app, &cp, &pki.ca_file, &["--max-body-bytes", "1024"]).await;
    eventually("snapshot installed", || sidecar.running.current.load().is_some()).await;
    let http = sidecar.running.http;
    let r = request(
        http,
        "POST",
        "/api/v1/auth/login?remember=1",
        &[
            ("content-type", "application/json"),
            ("cookie", "refresh=r0"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-auth-user", "root"),
            ("x-correlation-id", "corr-login"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
        ],
        r#"{"email":"alice@example.com","password":"pw"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["set-cookie"], "refresh=r1; HttpOnly; Secure");
    assert_eq!(r.headers["x-correlation-id"], "corr-login");
    assert_eq!(app.count(), 0, "the app never sees the auth route");
    let (method, uri, headers, body) = cp.read(|s| s.auth[0].clone());
    assert_eq!(
        (method.as_str(), uri.as_str()),
        ("POST", "/api/v1/auth/login?remember=1")
    );
    assert_eq!(body, r#"{"email":"alice@example.com","password":"pw"}"#);
    assert_eq!(headers["cookie"], "refresh=r0");
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "the client's own chain is not believed"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.test");
    assert_eq!(headers["x-correlation-id"], "corr-login");
    assert!(headers.get("x-auth-user").is_none());
    assert!(headers.get("x-hop").is_none());
    assert_eq!(headers["host"], format!("127.0.0.1:{}", cp.addr.port()));

    let jwks = get(http, "/.well-known/jwks.json", &[]).await;
    assert_eq!(jwks.status, 200);
    assert_eq!(cp.read(|s| s.auth[1].1.clone()), "/.well-known/jwks.json");
    let big = "x".repeat(2048);
    let r = request(http, "POST", "/api/v1/auth/login", &[], &big).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (413, "body_too_large"));
    let r = get(http, "/api/v1/auth/%2e%2e/admin", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(cp.read(|s| s.auth.len()), 2, "refused requests never left the sidecar");
    // Anything else is the app's, as before.
    assert_eq!(get(http, "/api/v1/authx", &[]).await.status, 401);
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn without_a_control_plane_the_auth_prefix_is_the_apps() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let r = get(sidecar.http(), "/api/v1/auth/login", &[]).await;
    assert_eq!(r.status, 401, "decided by the policy like any path");
    sidecar.running.shutdown().await;
}
