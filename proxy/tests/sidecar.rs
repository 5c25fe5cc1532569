//! The sidecar over real sockets: every auth method accepted, every bad input refused.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn jwts_from_each_issuer_are_accepted_and_identity_reaches_the_app() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;

    // HS256, no kid, our issuer: identity from the directory.
    let hs = token(Algorithm::HS256, None, claims("alice"));
    let r = get(
        sidecar.http(),
        "/api/v1/items?page=2",
        &[
            ("authorization", &bearer(&hs)),
            ("x-auth-user", "root"),
            ("x-auth-roles", "admin"),
            ("x-auth-method", "none"),
            ("x-correlation-id", "req-42"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-correlation-id"], "req-42");
    let seen = app.last();
    assert_eq!(seen.uri, "/api/v1/items?page=2");
    assert_eq!(
        seen.headers["x-auth-user"], "alice",
        "the client's X-Auth-User is replaced"
    );
    assert_eq!(
        seen.headers["x-auth-roles"], "viewer",
        "the client's X-Auth-Roles is replaced"
    );
    assert_eq!(seen.headers["x-auth-email"], "alice@example.com");
    assert_eq!(seen.headers["x-auth-scopes"], "read");
    assert_eq!(seen.headers["x-auth-teams"], "platform:member");
    // Each header we set reaches the app once, with our value: the client's copy is gone.
    let only = |name: &str| {
        let values: Vec<_> = seen.headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].to_str().unwrap().to_string()
    };
    assert_eq!(only("x-auth-user"), "alice");
    assert_eq!(only("x-auth-method"), "jwt");
    assert_eq!(only("x-correlation-id"), "req-42");
    assert_eq!(
        only("x-forwarded-for"),
        "127.0.0.1",
        "an untrusted peer's chain starts afresh"
    );
    assert_eq!(only("x-forwarded-proto"), "http");
    assert!(!seen.headers.contains_key("authorization") || seen.headers["authorization"] == bearer(&hs).as_str());

    // RS256 by kid.
    let rs = token(Algorithm::RS256, Some("rs1"), claims("root"));
    let r = get(
        sidecar.http(),
        "/api/v1/admin/users",
        &[("authorization", &bearer(&rs))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(app.last().headers["x-auth-user"], "root");

    // An external issuer: roles and scopes from the token's own claims.
    let mut ext = json!({"iss": "https://external.test", "aud": AUDIENCE, "sub": "partner-7", "exp": now() + 60,
                         "roles": ["auditor"], "scope": "read audit:read"});
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("ext".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &ext,
        &jsonwebtoken::EncodingKey::from_secret(EXTERNAL_SECRET),
    )
    .unwrap();
    let r = get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&signed))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.last().headers["x-auth-roles"], "auditor");
    assert_eq!(app.last().headers["x-auth-scopes"], "read,audit:read");
    // Scope lacking: 403, not 401.
    ext["scope"] = json!("audit:read");
    let signed = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("ext".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &ext,
        &jsonwebtoken::EncodingKey::from_secret(EXTERNAL_SECRET),
    )
    .unwrap();
    let r = get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&signed))]).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (403, "forbidden"));
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_never_reach_the_app() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let hs = |c: serde_json::Value| token(Algorithm::HS256, None, c);
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut future = claims("alice");
    future["nbf"] = json!(now() + 3600);
    let mut revoked = claims("alice");
    revoked["sid"] = json!("sid-revoked");
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!("other-app");
    let wrong_signature = {
        let good = hs(claims("alice"));
        let (head, _) = good.rsplit_once('.').unwrap();
        format!("{head}.{}", b64url(b"not the signature at all, not at all"))
    };
    let tampered = {
        let good = hs(claims("alice"));
        let parts: Vec<&str> = good.split('.').collect();
        let evil = hs(claims("root"));
        format!("{}.{}.{}", parts[0], evil.split('.').nth(1).unwrap(), parts[2])
    };
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("root").to_string().as_bytes())
    );
    // HS256 "signed" with the RS256 public key: the classic algorithm confusion.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("rs1".into()),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &claims("root"),
        &jsonwebtoken::EncodingKey::from_secret(RSA_PUB.as_bytes()),
    )
    .unwrap();
    let unknown_kid = token(Algorithm::RS256, Some("rs-unknown"), claims("root"));
    let disabled = hs(claims("eve"));
    let cases = [
        ("garbled", "Bearer abc.def.ghi".to_string()),
        ("no exp", bearer(&hs(no_exp))),
        ("expired", bearer(&hs(expired))),
        ("not yet valid", bearer(&hs(future))),
        ("revoked session", bearer(&hs(revoked))),
        ("wrong audience", bearer(&hs(wrong_aud))),
        ("wrong signature", bearer(&wrong_signature)),
        ("tampered", bearer(&tampered)),
        ("alg none", bearer(&alg_none)),
        ("HS256 with the RS public key", bearer(&confused)),
        ("unknown kid", bearer(&unknown_kid)),
        ("disabled user", bearer(&disabled)),
    ];
    let before = app.count();
    for (what, header) in &cases {
        let r = get(
            sidecar.http(),
            "/api/v1/items",
            &[("authorization", header), ("x-request-id", "cid-7")],
        )
        .await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(r.error_code(), "invalid_credentials", "{what}");
        assert_eq!(r.json()["meta"]["correlation_id"], "cid-7", "{what}");
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{what}");
    }
    let missing = get(sidecar.http(), "/api/v1/items", &[]).await;
    assert_eq!(
        (missing.status.as_u16(), missing.error_code().as_str()),
        (401, "unauthenticated")
    );
    assert_eq!(app.count(), before, "no refused request reached the app");

    // A cached token is still refused once its session is revoked.
    let live = hs(claims("alice"));
    assert_eq!(
        get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&live))])
            .await
            .status,
        200
    );
    let mut snapshot = snapshot(2);
    snapshot["revoked_sessions"] = json!(["sid-revoked", "sid-live"]);
    write_snapshot(&sidecar.snapshot, &snapshot);
    wait_for_revision(&sidecar, 2).await;
    let r = get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&live))]).await;
    assert_eq!(r.status, 401, "revocation is checked on cache hits too");

    let metrics = String::from_utf8(admin(&sidecar, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics
            .contains(r#"portcullis_proxy_auth_decisions_total{method="jwt",reason="session_revoked",result="deny"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"reason="expired""#));
    assert!(metrics.contains("portcullis_proxy_snapshot_revision 2"));
    sidecar.running.shutdown().await;
}

async fn wait_for_revision(sidecar: &Sidecar, revision: i64) {
    for _ in 0..400 {
        if sidecar.running.current.load().is_some_and(|c| c.revision == revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("revision {revision} never installed");
}

#[tokio::test]
async fn api_keys_in_the_header_and_only_where_allowed_in_the_query() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let r = get(sidecar.http(), "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.last().headers["x-auth-method"], "api_key");
    assert_eq!(app.last().headers["x-auth-user"], "alice");
    for (what, key) in [
        ("revoked", REVOKED_KEY),
        ("expired", EXPIRED_KEY),
        ("unknown", "pck_nope"),
        ("garbage", "a b"),
    ] {
        let r = get(sidecar.http(), "/api/v1/items", &[("x-api-key", key)]).await;
        assert_eq!(r.status, 401, "{what}");
    }
    // A source's write key may ingest but not read.
    assert_eq!(
        request(sidecar.http(), "POST", "/ingest", &[("x-api-key", SOURCE_KEY)], "line")
            .await
            .status,
        200
    );
    assert_eq!(app.last().headers["x-auth-user"], "edge-syslog");
    assert_eq!(
        get(sidecar.http(), "/api/v1/items", &[("x-api-key", SOURCE_KEY)])
            .await
            .status,
        403
    );

    // Query parameter: refused where the rule does not allow it, stripped where it does.
    let q = format!("/api/v1/items?api_key={ALICE_KEY}");
    assert_eq!(get(sidecar.http(), &q, &[]).await.status, 401);
    let q = format!("/export?format=csv&api_key={ALICE_KEY}");
    assert_eq!(get(sidecar.http(), &q, &[]).await.status, 200);
    assert_eq!(app.last().uri, "/export?format=csv", "the key never reaches the app");

    // Two credentials, or one header twice: ambiguous.
    let hs = token(Algorithm::HS256, None, claims("alice"));
    let r = get(
        sidecar.http(),
        "/api/v1/items",
        &[("x-api-key", ALICE_KEY), ("authorization", &bearer(&hs))],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "ambiguous_credentials")
    );
    let r = get(
        sidecar.http(),
        "/api/v1/items",
        &[("x-api-key", ALICE_KEY), ("x-api-key", REVOKED_KEY)],
    )
    .await;
    assert_eq!(r.status, 400);
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn authorization_is_default_deny_with_roles_teams_and_public_routes() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let alice = bearer(&token(Algorithm::HS256, None, claims("alice")));
    let auth = [("authorization", alice.as_str())];
    assert_eq!(get(sidecar.http(), "/healthz", &[]).await.status, 200, "public");
    assert_eq!(
        get(sidecar.http(), "/api/v1/admin/users", &auth).await.status,
        403,
        "role"
    );
    assert_eq!(
        get(sidecar.http(), "/api/v1/teams/platform/x", &auth).await.status,
        200,
        "member of platform"
    );
    assert_eq!(
        get(sidecar.http(), "/api/v1/teams/billing/x", &auth).await.status,
        403,
        "not in billing"
    );
    assert_eq!(
        request(sidecar.http(), "POST", "/api/v1/items", &auth, "{}")
            .await
            .status,
        403,
        "scope"
    );
    let r = get(sidecar.http(), "/nowhere", &auth).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (403, "forbidden"),
        "no rule: deny"
    );
    assert_eq!(get(sidecar.http(), "/nowhere", &[]).await.status, 401);
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn path_tricks_are_refused_before_matching() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let before = app.count();
    for path in [
        "/api/v1/../admin",
        "/api/v1/%2e%2e/admin",
        "/api/v1/%2E%2E/admin",
        "/api/v1/admin%2Fusers",
        "/api//v1/items",
        "/api/v1\\..\\admin",
        "/api/v1/%5cadmin",
        "/api/v1/items;jsessionid=1",
        "/api/v1/%00",
        "/api/v1/%c0%ae%c0%ae/admin",
        "/api/v1/%zz",
    ] {
        let response = raw(
            sidecar.http(),
            format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-api-key: {ALICE_KEY}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
    }
    assert_eq!(app.count(), before);
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn oversized_slow_and_smuggled_requests_are_stopped() {
    let app = app().await;
    let sidecar = sidecar(
        &app,
        &[
            "--max-body-bytes",
            "1024",
            "--header-timeout",
            "1",
            "--max-header-bytes",
            "8192",
            "--max-headers",
            "20",
        ],
        true,
    )
    .await;
    let key = ("x-api-key", ALICE_KEY);
    // Headers too large and too many.
    let big = "a".repeat(10_000);
    let r = raw(
        sidecar.http(),
        format!("GET /api/v1/x HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let r = raw(
        sidecar.http(),
        format!("GET /api/v1/x HTTP/1.1\r\nhost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // Body too large, declared.
    let bob = bearer(&token(Algorithm::HS256, None, claims("root")));
    let r = request(
        sidecar.http(),
        "POST",
        "/api/v1/items",
        &[("authorization", &bob)],
        &"x".repeat(2048),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (413, "body_too_large"));
    // Body too large, chunked: cut off while streaming, never delivered whole.
    let chunk = "x".repeat(800);
    let r = raw(
        sidecar.http(),
        format!(
            "POST /api/v1/items HTTP/1.1\r\nhost: t\r\nauthorization: {bob}\r\ntransfer-encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(!r.contains("x-app-body-bytes: 1600"), "{r}");
    // Smuggling: Content-Length and Transfer-Encoding together, or two lengths.
    let before = app.count();
    let smuggle = format!(
        "POST /api/v1/items HTTP/1.1\r\nhost: t\r\nauthorization: {bob}\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/admin/x HTTP/1.1\r\nhost: t\r\n\r\n"
    );
    let r = raw(sidecar.http(), smuggle.as_bytes()).await;
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and the connection is closed
    // after the response, so the bytes after the chunked body are never read as a request.
    assert!(r.contains("connection: close"), "{r}");
    let seen = app.seen.lock().unwrap()[before..].to_vec();
    assert_eq!(seen.len(), 1, "one request reached the app, not two");
    assert_eq!(seen[0].uri, "/api/v1/items");
    assert!(
        !seen[0].headers.contains_key("content-length"),
        "the app never sees both framings"
    );
    let r = raw(
        sidecar.http(),
        b"POST /api/v1/items HTTP/1.1\r\nhost: t\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // Slow headers (slowloris): the connection is closed after the header timeout.
    let mut slow = TcpStream::connect(sidecar.http()).await.unwrap();
    slow.write_all(b"GET /api/v1/items HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "closed by the sidecar, not by our timeout");
    assert!(started.elapsed() < Duration::from_secs(4));
    let _ = key;
    let metrics = String::from_utf8(admin(&sidecar, "/metrics").await.body.to_vec()).unwrap();
    for limit in ["header_size", "header_timeout", "body_size"] {
        assert!(
            metrics.contains(&format!("portcullis_proxy_limit_hits_total{{limit=\"{limit}\"}}")),
            "{limit}: {metrics}"
        );
    }
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let key = [("x-api-key", ALICE_KEY)];
    assert_eq!(get(sidecar.http(), "/limited", &key).await.status, 200);
    assert_eq!(get(sidecar.http(), "/limited", &key).await.status, 200);
    let r = get(sidecar.http(), "/limited", &key).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // Another identity has its own bucket.
    let root = bearer(&token(Algorithm::HS256, None, claims("root")));
    assert_eq!(
        get(sidecar.http(), "/limited", &[("authorization", &root)])
            .await
            .status,
        200
    );
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn cors_preflights_are_answered_and_deprecated_versions_say_so() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let before = app.count();
    let ok = request(
        sidecar.http(),
        "OPTIONS",
        "/api/v1/items",
        &[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization"),
        ],
        "",
    )
    .await;
    assert_eq!(ok.status, 204);
    assert_eq!(ok.headers["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(ok.headers["access-control-max-age"], "600");
    let evil = request(
        sidecar.http(),
        "OPTIONS",
        "/api/v1/items",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        "",
    )
    .await;
    assert_eq!(evil.status, 403);
    assert!(!evil.headers.contains_key("access-control-allow-origin"));
    assert_eq!(app.count(), before, "preflights never reach the app");

    let r = get(
        sidecar.http(),
        "/api/v0/items",
        &[("x-api-key", ALICE_KEY), ("origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["deprecation"], "@1767225600");
    assert_eq!(r.headers["sunset"], "Fri, 01 Jan 2027 00:00:00 GMT");
    assert_eq!(r.headers["access-control-allow-origin"], "https://app.example.com");
    assert!(
        !get(sidecar.http(), "/api/v1/items", &[("x-api-key", ALICE_KEY)])
            .await
            .headers
            .contains_key("deprecation")
    );
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn http2_and_grpc_pass_through_with_trailers() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let stream = TcpStream::connect(sidecar.http()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Plain HTTP/2 (h2c prior knowledge) to an HTTP/1.1 route.
    let request = Request::get(format!("http://{}/api/v1/items", sidecar.http()))
        .header("x-api-key", ALICE_KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.last().version,
        hyper::Version::HTTP_11,
        "auto: plain requests go to the app over HTTP/1.1"
    );
    // gRPC: h2c to the app, trailers back to the client.
    let request = Request::post(format!("http://{}/grpc.Echo/Say", sidecar.http()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", ALICE_KEY)
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.last().version, hyper::Version::HTTP_2);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "echoed");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x05hello");
    // Unauthenticated gRPC is refused like anything else.
    let request = Request::post(format!("http://{}/grpc.Echo/Say", sidecar.http()))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 401);
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn websockets_upgrade_only_after_auth() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let handshake = |key: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nhost: t\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-api-key: {key}\r\n\r\n"
        )
    };
    let refused = raw(sidecar.http(), handshake("pck_wrong").as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let mut stream = TcpStream::connect(sidecar.http()).await.unwrap();
    stream.write_all(handshake(ALICE_KEY).as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping-frame").await.unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping-frame", "bytes flow both ways after the upgrade");
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn mtls_identifies_users_by_certificate_and_refuses_other_cas() {
    let app = app().await;
    let pki = pki();
    let sidecar = tls_sidecar(&app, &pki, "optional").await;
    let tls = sidecar.running.tls.unwrap();

    let r = tls_get(tls, &pki, Some(&pki.alice), "/api/v1/items").await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.last().headers["x-auth-method"], "mtls");
    assert_eq!(app.last().headers["x-auth-user"], "alice");
    assert_eq!(app.last().headers["x-forwarded-proto"], "https");

    // A certificate of our CA that names nobody we know: 401.
    let r = tls_get(tls, &pki, Some(&pki.stranger), "/api/v1/items").await.unwrap();
    assert_eq!(r.status, 401);

    // Another CA's certificate for the same e-mail: the handshake fails.
    assert!(
        tls_get(tls, &pki, Some(&pki.impostor), "/api/v1/items").await.is_err(),
        "a certificate from another CA is refused in the handshake"
    );

    // No certificate on an optional listener: anonymous, so the token decides.
    let stream = tls_connect(tls, &pki, None, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    sidecar.running.shutdown().await;

    // Required: no certificate, no connection.
    let required = tls_sidecar(&app, &pki, "required").await;
    let tls = required.running.tls.unwrap();
    assert!(tls_get(tls, &pki, None, "/healthz").await.is_err());
    required.running.shutdown().await;
}

#[tokio::test]
async fn forwarded_client_certificates_count_only_from_trusted_proxies() {
    let app = app().await;
    let pki = pki();
    let ca = pki.ca_file.display().to_string();
    let encoded = percent_encoding::utf8_percent_encode(&pki.alice.0, percent_encoding::NON_ALPHANUMERIC).to_string();
    let header = [("x-client-cert", encoded.as_str())];

    let untrusting = sidecar(&app, &["--client-ca", &ca], true).await;
    let r = get(untrusting.http(), "/api/v1/items", &header).await;
    assert_eq!(
        r.status, 401,
        "from an untrusted peer the header is ignored (anonymous)"
    );
    untrusting.running.shutdown().await;

    let trusting = sidecar(&app, &["--client-ca", &ca, "--trusted-proxy", "127.0.0.1/32"], true).await;
    let r = get(
        trusting.http(),
        "/api/v1/items",
        &[header[0], ("x-forwarded-for", "6.6.6.6, 198.51.100.7")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = app.last();
    assert_eq!(seen.headers["x-auth-method"], "forwarded_cert");
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert!(
        !seen.headers.contains_key("x-client-cert"),
        "the certificate header is not passed on"
    );
    assert_eq!(seen.headers["x-forwarded-for"], "6.6.6.6, 198.51.100.7, 127.0.0.1");
    let impostor =
        percent_encoding::utf8_percent_encode(&pki.impostor.0, percent_encoding::NON_ALPHANUMERIC).to_string();
    let r = get(trusting.http(), "/api/v1/items", &[("x-client-cert", &impostor)]).await;
    assert_eq!(r.status, 401, "a forwarded certificate from another CA");
    trusting.running.shutdown().await;
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let app = app().await;
    let sidecar = sidecar(&app, &["--upstream-timeout", "1"], true).await;
    let key = [("x-api-key", ALICE_KEY)];
    let r = get(sidecar.http(), "/slow", &key).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (504, "upstream_timeout"));
    sidecar.running.shutdown().await;

    // Nothing listens on the app's port any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = App {
        addr: closed,
        seen: Default::default(),
    };
    let sidecar = support::sidecar(&dead, &[], true).await;
    let r = get(sidecar.http(), "/api/v1/items", &key).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (502, "upstream_unavailable")
    );
    let metrics = String::from_utf8(admin(&sidecar, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"portcullis_proxy_upstream_errors_total{kind="connect"} 1"#),
        "{metrics}"
    );
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn without_a_snapshot_it_is_not_ready_and_refuses_everything() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], false).await;
    let r = get(sidecar.http(), "/healthz", &[]).await;
    assert_eq!((r.status.as_u16(), r.error_code().as_str()), (503, "no_policy"));
    assert_eq!(admin(&sidecar, "/healthz").await.status, 200);
    assert_eq!(admin(&sidecar, "/readyz").await.status, 503);
    write_snapshot(&sidecar.snapshot, &snapshot(9));
    wait_for_revision(&sidecar, 9).await;
    assert_eq!(admin(&sidecar, "/readyz").await.status, 200);
    assert_eq!(get(sidecar.http(), "/healthz", &[]).await.status, 200);
    // A broken file leaves the last good snapshot in force.
    std::fs::write(&sidecar.snapshot, b"{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(sidecar.http(), "/healthz", &[]).await.status, 200);
    let metrics = String::from_utf8(admin(&sidecar, "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(r#"portcullis_proxy_snapshot_updates_total{result="error"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_proxy_requests_total{method=\"GET\",rule=\"healthz\",status=\"200\"}"));
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn connection_limits_and_graceful_drain() {
    let app = app().await;
    let sidecar = sidecar(&app, &["--max-connections", "1"], true).await;
    // The one connection is busy with a slow request; a second connection is closed at once.
    let addr = sidecar.http();
    let slow = tokio::spawn(async move { get(addr, "/slow", &[("x-api-key", ALICE_KEY)]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = raw(addr, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(second, "", "refused at the connection limit");
    // Shutdown waits for the slow request to finish.
    sidecar.running.shutdown().await;
    assert_eq!(slow.await.unwrap().status, 200, "drained, not cut");
    assert!(TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let app = app().await;
    let sidecar = sidecar(&app, &["--idle-timeout", "1"], true).await;
    let mut stream = TcpStream::connect(sidecar.http()).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(started.elapsed() >= Duration::from_millis(800));
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn large_bodies_cross_both_ways_unchanged() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let root = token(Algorithm::HS256, None, claims("root"));
    // 3 MiB, a pattern that shows any reordered, lost or repeated chunk.
    let body: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect();
    let r = request(
        sidecar.http(),
        "POST",
        "/api/v1/echo",
        &[("authorization", &bearer(&root))],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body.as_bytes(), "the echoed body differs");
}

/// The sidecar with a TLS listener that asks for client certificates (`client_auth`).
async fn tls_sidecar(app: &App, pki: &Pki, client_auth: &str) -> Sidecar {
    let ca = pki.ca_file.display().to_string();
    let cert = pki.server_cert.display().to_string();
    let key = pki.server_key.display().to_string();
    let flags = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--client-ca",
        &ca,
        "--client-auth",
        client_auth,
    ];
    sidecar(app, &flags, true).await
}

/// Reads one response off `stream`: its head (lowercased) and its `Content-Length` body
/// (none for a `HEAD`).
async fn read_response(stream: &mut TcpStream, head_request: bool) -> (String, Vec<u8>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; if head_request { 0 } else { length }];
    stream.read_exact(&mut body).await.unwrap();
    (head, body)
}

/// Sends `request` on `stream` and reads the response.
async fn ask(stream: &mut TcpStream, request: &[u8], head_request: bool) -> (String, Vec<u8>) {
    stream.write_all(request).await.unwrap();
    read_response(stream, head_request).await
}

#[tokio::test]
async fn keep_alive_connections_carry_pipelined_split_and_unusual_requests() {
    let app = app().await;
    let sidecar = sidecar(&app, &[], true).await;
    let before = app.count();
    let read = format!("host: t\r\nx-api-key: {ALICE_KEY}\r\n");
    let write = format!("host: t\r\nx-api-key: {SOURCE_KEY}\r\n");
    let mut stream = TcpStream::connect(sidecar.http()).await.unwrap();
    // Two requests in one write, answered in order.
    stream
        .write_all(format!("GET /api/v1/a HTTP/1.1\r\n{read}\r\nGET /api/v1/b?x=1 HTTP/1.1\r\n{read}\r\n").as_bytes())
        .await
        .unwrap();
    for _ in 0..2 {
        let (head, body) = read_response(&mut stream, false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "{head}");
        assert_eq!(body, b"ok");
    }
    // A head in two pieces, then its body on its own.
    let pieces = [
        format!("POST /ingest HTTP/1.1\r\n{write}cont"),
        "ent-length: 5\r\n\r\n".to_string(),
        "hello".to_string(),
    ];
    for piece in pieces {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (head, _) = read_response(&mut stream, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-app-body-bytes: 5\r\n"), "{head}");
    // HEAD: the length the app declared, and no body.
    let (head, _) = ask(
        &mut stream,
        format!("HEAD /api/v1/c HTTP/1.1\r\n{read}\r\n").as_bytes(),
        true,
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 2\r\n"), "{head}");
    // A refusal keeps the connection open.
    let (head, body) = ask(
        &mut stream,
        b"GET /api/v1/d HTTP/1.1\r\nhost: t\r\nx-api-key: pck_wrong\r\n\r\n",
        false,
    )
    .await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("invalid_credentials"));
    // A chunked upload: hyper serves the connection from here on.
    let (head, _) = ask(
        &mut stream,
        format!(
            "POST /ingest HTTP/1.1\r\n{write}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        .as_bytes(),
        false,
    )
    .await;
    assert!(head.contains("x-app-body-bytes: 8\r\n"), "{head}");
    let (head, _) = ask(
        &mut stream,
        format!("GET /api/v1/e HTTP/1.1\r\n{read}connection: close\r\n\r\n").as_bytes(),
        false,
    )
    .await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "closed after the response it was asked to close after");
    let seen: Vec<String> = app.seen.lock().unwrap()[before..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(
        seen,
        [
            "GET /api/v1/a",
            "GET /api/v1/b?x=1",
            "POST /ingest",
            "HEAD /api/v1/c",
            "POST /ingest",
            "GET /api/v1/e"
        ]
    );

    // The same on a fresh connection that starts unusual: HTTP/1.0, then Expect.
    let r = raw(
        sidecar.http(),
        format!("GET /api/v1/f HTTP/1.0\r\n{read}\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.0 200"), "{r}");
    let mut stream = TcpStream::connect(sidecar.http()).await.unwrap();
    stream
        .write_all(
            format!("POST /ingest HTTP/1.1\r\n{write}expect: 100-continue\r\ncontent-length: 3\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"abc").await.unwrap();
    let (head, _) = read_response(&mut stream, false).await;
    assert!(head.contains("x-app-body-bytes: 3\r\n"), "{head}");
    sidecar.running.shutdown().await;
}

#[tokio::test]
async fn draining_closes_idle_connections_and_tells_open_requests() {
    let app = app().await;
    let sidecar = sidecar(&app, &["--drain-timeout", "20"], true).await;
    let addr = sidecar.http();
    let request = format!("GET /slow HTTP/1.1\r\nhost: t\r\nx-api-key: {ALICE_KEY}\r\n\r\n");
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut idle, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(sidecar.running.shutdown());
    // The idle connection is closed at once, not at the end of the drain.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest))
        .await
        .expect("closed at once")
        .unwrap();
    assert!(rest.is_empty());
    // The open request is answered, and told the connection ends.
    let (head, body) = read_response(&mut busy, false).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(body, b"slow");
    shutdown.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the drain ends when the last connection does"
    );
}
