//! The token service over real sockets: its router served on a loopback listener, a
//! raw HTTP/1.1 client, a real SMTP server with STARTTLS written here (it records the
//! messages; the reset link in the mail is followed), a controllable clock, and the
//! sidecar's own JWT verifier fed with the snapshot the store produces.
//!
//! Runs on SQLite always, and on PostgreSQL / MariaDB when `TEST_POSTGRES_URL` /
//! `TEST_MYSQL_URL` are set at build time (otherwise those show as ignored).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use portcullis_operator::credentials;
use portcullis_operator::store::{Store, UserRow, builtin_roles};
use portcullis_operator::tokens::{self, Clock, KekSource, Settings, SmtpSettings, SmtpTls, TokenService};
use serde_json::{Value, json};
use support::{Kind, TestDb};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::new(super::Kind::Sqlite, concat!("tok_", stringify!($test))).await;
                    super::$test(&db.store).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[cfg_attr(not(portcullis_test_postgres), ignore = "set TEST_POSTGRES_URL to run on PostgreSQL")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::new(super::Kind::Postgres, concat!("tok_", stringify!($test))).await;
                    super::$test(&db.store).await;
                    db.finish().await;
                }
            )*
        }
        mod mysql {
            $(
                #[cfg_attr(not(portcullis_test_mysql), ignore = "set TEST_MYSQL_URL to run on MariaDB/MySQL")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::new(super::Kind::MySql, concat!("tok_", stringify!($test))).await;
                    super::$test(&db.store).await;
                    db.finish().await;
                }
            )*
        }
    };
}

suite!(
    login_refresh_logout_then_refused,
    refresh_reuse_revokes_the_session,
    password_change_revokes_other_sessions,
    forgot_and_reset_by_mail_once_and_within_an_hour,
    backoff_with_retry_after_reveals_nothing,
    disabled_users_cannot_log_in_or_refresh,
    key_rotation_keeps_old_tokens_until_they_expire,
    sessions_preferences_and_admin,
);

const START: i64 = 1_900_000_000;
const ISSUER: &str = "https://auth.example.test";
const ALICE_PW: &str = "alice-initial-pw-1";
const BOB_PW: &str = "bob-admin-initial-pw-2";

/// The service on a loopback listener, its clock, and what the SMTP server received.
struct Harness {
    addr: SocketAddr,
    service: TokenService,
    clock: Clock,
    mail: Option<mpsc::UnboundedReceiver<String>>,
    _dir: tempfile::TempDir,
}

/// Cheap argon2 parameters so that a debug build's tests stay fast; the production
/// parameters are measured by bench/tokens.sh.
fn test_settings() -> Settings {
    let mut settings = Settings::new(ISSUER);
    settings.argon2 = argon2::Params::new(1024, 1, 1, None).unwrap();
    settings
}

async fn seed(store: &Store) {
    for role in builtin_roles() {
        store.upsert_role(&role).await.unwrap();
    }
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    for (name, email, role, pw) in [
        ("alice", "alice@example.com", "viewer", ALICE_PW),
        ("bob", "bob@example.com", "admin", BOB_PW),
    ] {
        let mut user = UserRow::new(name, email).with_roles([role]);
        user.preferences.insert("theme".into(), "light".into());
        user.preferences.insert("contrast".into(), "normal".into());
        store.upsert_user(&user).await.unwrap();
        let hash = credentials::hash_password_with(pw, &params).unwrap();
        store
            .set_password(name, &hash, Some(&credentials::sha256_hex(pw.as_bytes())))
            .await
            .unwrap();
    }
}

async fn start(store: &Store, mail: bool) -> Harness {
    seed(store).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings();
    let mut receiver = None;
    if mail {
        let (port, ca, rx) = smtp_server(dir.path()).await;
        settings.smtp = Some(SmtpSettings {
            host: "localhost".into(),
            port,
            username: Some("mailer".into()),
            password: Some("smtp-secret".into()),
            from: "portcullis@example.com".into(),
            tls: SmtpTls::StartTls,
            ca_file: Some(ca),
        });
        receiver = Some(rx);
    }
    let clock = Clock::manual(START);
    let service = TokenService::start(
        store.clone(),
        settings,
        &KekSource::File(dir.path().join("kek")),
        clock.clone(),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tokens::router(service.clone());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    Harness {
        addr,
        service,
        clock,
        mail: receiver,
        _dir: dir,
    }
}

/// An answer: status, headers (lower-case names), body as JSON (Null when not JSON).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn data(&self) -> &Value {
        &self.body["data"]
    }

    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Harness {
    async fn call(&self, method: &str, path: &str, bearer: Option<&str>, body: Option<Value>) -> Answer {
        self.call_with(method, path, bearer, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
        extra: &[(&str, &str)],
    ) -> Answer {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = bearer {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_string()))
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")),
            "fixed-length answers expected"
        );
        Answer {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        self.call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }

    async fn login_ok(&self, email: &str, password: &str) -> (String, String, String) {
        let answer = self.login(email, password).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let d = answer.data();
        (
            d["access_token"].as_str().unwrap().to_string(),
            d["refresh_token"].as_str().unwrap().to_string(),
            d["session_id"].as_str().unwrap().to_string(),
        )
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        self.call(
            "POST",
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh_token})),
        )
        .await
    }

    async fn whoami(&self, token: &str) -> Answer {
        self.call("GET", "/api/v1/auth/user", Some(token), None).await
    }

    /// Whether the sidecar, given the snapshot the store holds now, accepts `token` at
    /// the service's clock: the sidecar's own verifier, plus the snapshot's revoked
    /// sessions and disabled users as the sidecar checks them on every request.
    async fn sidecar_accepts(&self, token: &str) -> bool {
        let now = self.clock.now();
        let snapshot = self.service.store().read_snapshot(now).await.unwrap();
        let (verifier, problems) = portcullis_proxy::policy::jwt::Verifier::new(&snapshot.jwt_issuers, 16);
        assert!(problems.is_empty(), "{problems:?}");
        match verifier.verify(token, now) {
            Ok(claims) => {
                let revoked = claims
                    .session
                    .as_ref()
                    .is_some_and(|sid| snapshot.revoked_sessions.contains(sid));
                let enabled = snapshot.users.iter().any(|u| u.name == claims.subject && !u.disabled);
                !revoked && enabled
            }
            Err(_) => false,
        }
    }
}

fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn audit_actions(store: &Store) -> Vec<String> {
    store
        .recent_audit(200)
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{}:{}", e.action, e.decision))
        .collect()
}

async fn login_refresh_logout_then_refused(store: &Store) {
    let h = start(store, false).await;
    let (access, refresh, sid) = h.login_ok("Alice@Example.com", ALICE_PW).await;
    let header = jwt_header(&access);
    assert_eq!(header["alg"], "EdDSA");
    let claims = jwt_claims(&access);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], "portcullis");
    assert_eq!(claims["sid"], sid.as_str());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(
        h.sidecar_accepts(&access).await,
        "the sidecar accepts our token through the snapshot"
    );

    let me = h.whoami(&access).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.body["status"], "ok");
    assert_eq!(me.body["meta"]["version"], 1);
    assert_eq!(me.data()["name"], "alice");
    assert_eq!(me.data()["roles"], json!(["viewer"]));
    assert_eq!(me.data()["scopes"], json!(["read"]));

    h.clock.advance(60);
    let refreshed = h.refresh(&refresh).await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    let access2 = refreshed.data()["access_token"].as_str().unwrap().to_string();
    let refresh2 = refreshed.data()["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh2, refresh);
    assert_eq!(refreshed.data()["session_id"], sid.as_str(), "the session keeps its id");
    assert_eq!(h.whoami(&access2).await.status, 200);

    let out = h
        .call_with(
            "POST",
            "/api/v1/auth/logout",
            Some(&access2),
            None,
            &[("X-Correlation-ID", "corr-1")],
        )
        .await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.body["meta"]["correlation_id"], "corr-1");
    assert_eq!(out.header("x-correlation-id"), Some("corr-1"));
    for token in [&access, &access2] {
        let refused = h.whoami(token).await;
        assert_eq!(refused.status, 401);
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
        assert!(
            !h.sidecar_accepts(token).await,
            "the sidecar refuses a logged-out session"
        );
    }
    assert_eq!(h.refresh(&refresh2).await.status, 401);
    let snapshot = store.read_snapshot(h.clock.now()).await.unwrap();
    assert!(snapshot.revoked_sessions.contains(&sid));
    let actions = audit_actions(store).await;
    assert!(actions.contains(&"auth.login:allow".to_string()), "{actions:?}");
    assert!(actions.contains(&"auth.logout:allow".to_string()), "{actions:?}");
}

async fn refresh_reuse_revokes_the_session(store: &Store) {
    let h = start(store, false).await;
    let (_, r1, sid) = h.login_ok("alice@example.com", ALICE_PW).await;
    let second = h.refresh(&r1).await;
    assert_eq!(second.status, 200);
    let access2 = second.data()["access_token"].as_str().unwrap().to_string();
    let r2 = second.data()["refresh_token"].as_str().unwrap().to_string();
    // A thief replays the first token: the whole session goes.
    let replay = h.refresh(&r1).await;
    assert_eq!(replay.status, 401);
    assert_eq!(replay.code(), "refresh_token_reused");
    assert_eq!(
        h.refresh(&r2).await.status,
        401,
        "the legitimate holder's token is dead too"
    );
    assert_eq!(h.whoami(&access2).await.status, 401);
    assert!(!h.sidecar_accepts(&access2).await);
    assert!(
        store
            .read_snapshot(h.clock.now())
            .await
            .unwrap()
            .revoked_sessions
            .contains(&sid)
    );
    assert!(
        audit_actions(store)
            .await
            .contains(&"auth.refresh_reuse:deny".to_string())
    );
    // Garbage is just invalid.
    assert_eq!(h.refresh("pcr_nonsense").await.code(), "invalid_refresh_token");
}

async fn password_change_revokes_other_sessions(store: &Store) {
    let h = start(store, false).await;
    let (laptop, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    let (phone, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    let change = |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let wrong = h
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&laptop),
            Some(change("nope-nope-nope", "a-brand-new-pw-9")),
        )
        .await;
    assert_eq!((wrong.status, wrong.code()), (403, "wrong_password"));
    let same = h
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&laptop),
            Some(change(ALICE_PW, ALICE_PW)),
        )
        .await;
    assert_eq!(same.status, 400);
    assert!(same.body["error"]["message"].as_str().unwrap().contains("differ"));
    let short = h
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&laptop),
            Some(change(ALICE_PW, "short")),
        )
        .await;
    assert_eq!(short.status, 400);
    let named = h
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&laptop),
            Some(change(ALICE_PW, "my-name-is-alice!")),
        )
        .await;
    assert_eq!(named.status, 400, "the policy refuses the user's own name");
    let ok = h
        .call(
            "POST",
            "/api/v1/auth/password",
            Some(&laptop),
            Some(change(ALICE_PW, "a-brand-new-pw-9")),
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.data()["sessions_revoked"], 1);
    assert_eq!(h.whoami(&phone).await.status, 401, "the other session is logged out");
    assert!(!h.sidecar_accepts(&phone).await);
    assert_eq!(h.whoami(&laptop).await.status, 200, "the session that changed it stays");
    assert_eq!(h.login("alice@example.com", ALICE_PW).await.status, 401);
    h.login_ok("alice@example.com", "a-brand-new-pw-9").await;
    // The Secret's digest is kept: the operator's resync will not put the old password back.
    let stored = store.password("alice").await.unwrap().unwrap();
    assert_eq!(stored.source_digest, Some(credentials::sha256_hex(ALICE_PW.as_bytes())));
    assert!(
        audit_actions(store)
            .await
            .contains(&"auth.password_change:allow".to_string())
    );
}

async fn forgot_and_reset_by_mail_once_and_within_an_hour(store: &Store) {
    let mut h = start(store, true).await;
    let mut mail = h.mail.take().unwrap();
    let (before, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;

    let known = h
        .call(
            "POST",
            "/api/v1/auth/password/forgot",
            None,
            Some(json!({"email": "alice@example.com"})),
        )
        .await;
    let unknown = h
        .call(
            "POST",
            "/api/v1/auth/password/forgot",
            None,
            Some(json!({"email": "nobody@example.com"})),
        )
        .await;
    assert_eq!(known.status, 202);
    assert_eq!(
        (known.status, known.data()),
        (unknown.status, unknown.data()),
        "the same answer"
    );

    let message = tokio::time::timeout(Duration::from_secs(20), mail.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(message.contains("RCPT TO:<alice@example.com>"), "{message}");
    assert!(message.contains("AUTH PLAIN"), "authenticated over TLS");
    assert!(message.contains("STARTTLS"), "{message}");
    let link = message
        .split_whitespace()
        .find(|w| w.starts_with("https://auth.example.test/reset-password?token="))
        .unwrap()
        .to_string();
    let token = link.split("token=").nth(1).unwrap().to_string();
    // Nothing else comes: the unknown address got no mail.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), mail.recv())
            .await
            .is_err()
    );

    let reset = |token: &str, pw: &str| json!({"token": token, "new_password": pw});
    let weak = h
        .call(
            "POST",
            "/api/v1/auth/password/reset",
            None,
            Some(reset(&token, "short")),
        )
        .await;
    assert_eq!(weak.status, 400, "a weak password does not burn the link");
    let done = h
        .call(
            "POST",
            "/api/v1/auth/password/reset",
            None,
            Some(reset(&token, "reset-by-mail-pw-3")),
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    let again = h
        .call(
            "POST",
            "/api/v1/auth/password/reset",
            None,
            Some(reset(&token, "reset-again-pw-44")),
        )
        .await;
    assert_eq!((again.status, again.code()), (400, "invalid_reset_token"), "single use");
    assert_eq!(h.whoami(&before).await.status, 401, "a reset ends every session");
    h.login_ok("alice@example.com", "reset-by-mail-pw-3").await;

    // A second link, an hour and a second later: expired.
    h.clock.advance(120);
    let asked = h
        .call(
            "POST",
            "/api/v1/auth/password/forgot",
            None,
            Some(json!({"email": "alice@example.com"})),
        )
        .await;
    assert_eq!(asked.status, 202);
    let message = tokio::time::timeout(Duration::from_secs(20), mail.recv())
        .await
        .unwrap()
        .unwrap();
    let token = message
        .split_whitespace()
        .find_map(|w| w.strip_prefix("https://auth.example.test/reset-password?token="))
        .unwrap()
        .to_string();
    h.clock.advance(3601);
    let late = h
        .call(
            "POST",
            "/api/v1/auth/password/reset",
            None,
            Some(reset(&token, "too-late-pw-555")),
        )
        .await;
    assert_eq!((late.status, late.code()), (400, "invalid_reset_token"));
    let actions = audit_actions(store).await;
    assert!(
        actions.contains(&"auth.password_reset:allow".to_string()),
        "{actions:?}"
    );
}

async fn backoff_with_retry_after_reveals_nothing(store: &Store) {
    let h = start(store, false).await;
    for email in ["alice@example.com", "ghost@example.com"] {
        for _ in 0..4 {
            assert_eq!(h.login(email, "wrong-password").await.status, 401);
        }
        // The fifth failure locks the account key for 1 s.
        let fifth = h.login(email, "wrong-password").await;
        assert_eq!((fifth.status, fifth.code()), (401, "invalid_credentials"));
        let locked = h
            .login(email, if email.starts_with("alice") { ALICE_PW } else { "x" })
            .await;
        assert_eq!(locked.status, 429, "even the right password waits: {locked:?}");
        assert_eq!(locked.header("retry-after"), Some("1"));
        assert_eq!(locked.code(), "rate_limited");
        assert_eq!(
            locked.body["error"]["message"], "too many attempts; retry later",
            "known and unknown e-mails get the same words"
        );
        h.clock.advance(1);
        assert_eq!(h.login(email, "wrong-password").await.status, 401);
        let doubled = h.login(email, "wrong-password").await;
        assert_eq!(doubled.header("retry-after"), Some("2"), "exponential: {doubled:?}");
        h.clock.advance(2);
    }
    h.login_ok("alice@example.com", ALICE_PW).await;
    // Per client address: 20 failures from one address lock it for every account.
    for i in 0..20 {
        let _ = h.login(&format!("spray{i}@example.com"), "wrong-password").await;
    }
    let sprayed = h.login("bob@example.com", BOB_PW).await;
    assert_eq!(sprayed.status, 429, "{sprayed:?}");
    assert!(audit_actions(store).await.contains(&"auth.lockout:deny".to_string()));
}

async fn disabled_users_cannot_log_in_or_refresh(store: &Store) {
    let h = start(store, false).await;
    let (access, refresh, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    let mut alice = store.get_user("alice").await.unwrap().unwrap();
    alice.disabled = true;
    store.upsert_user(&alice).await.unwrap();
    assert_eq!(h.refresh(&refresh).await.status, 401);
    assert_eq!(h.whoami(&access).await.status, 401);
    assert!(!h.sidecar_accepts(&access).await);
    let login = h.login("alice@example.com", ALICE_PW).await;
    assert_eq!((login.status, login.code()), (401, "invalid_credentials"));
}

async fn key_rotation_keeps_old_tokens_until_they_expire(store: &Store) {
    let h = start(store, false).await;
    let (old, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    let old_kid = jwt_header(&old)["kid"].as_str().unwrap().to_string();
    let (admin, _, _) = h.login_ok("bob@example.com", BOB_PW).await;
    let denied = h.call("POST", "/api/v1/auth/keys/rotate", Some(&old), None).await;
    assert_eq!(denied.status, 403, "alice is no admin");
    let rotated = h.call("POST", "/api/v1/auth/keys/rotate", Some(&admin), None).await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    let new_kid = rotated.data()["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    // Published at once, before it signs.
    let jwks = h.call("GET", "/.well-known/jwks.json", None, None).await;
    let kids: Vec<&str> = jwks.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);
    let snapshot = store.read_snapshot(h.clock.now()).await.unwrap();
    assert_eq!(snapshot.jwt_issuers.len(), 1);
    assert_eq!(snapshot.jwt_issuers[0].issuer, ISSUER);
    assert_eq!(snapshot.jwt_issuers[0].keys.len(), 2);

    h.clock.advance(61);
    let (fresh, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    assert_eq!(
        jwt_header(&fresh)["kid"],
        new_kid.as_str(),
        "the new key signs after the publish delay"
    );
    assert_eq!(h.whoami(&old).await.status, 200, "the old key's token is still good");
    assert!(h.sidecar_accepts(&old).await);

    // The old token expires (900 s after it was issued): refused.
    h.clock.advance(900 - 61);
    assert_eq!(h.whoami(&old).await.status, 401);
    h.clock.advance(30);
    assert!(!h.sidecar_accepts(&old).await, "expired, beyond the sidecar's leeway");
    // Once no token of it can be valid, the old key leaves JWKS and snapshots.
    h.clock.advance(61);
    h.service.maintain().await.unwrap();
    let jwks = h.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks.body["keys"][0]["kid"], new_kid.as_str());
    let snapshot = store.read_snapshot(h.clock.now()).await.unwrap();
    assert_eq!(snapshot.jwt_issuers[0].keys.len(), 1);
    assert!(!h.sidecar_accepts(&fresh).await, "issued 930 s ago: expired too");
    let (latest, _, _) = h.login_ok("alice@example.com", ALICE_PW).await;
    assert!(h.sidecar_accepts(&latest).await);

    // Scheduled rotation: after 30 days the maintenance makes a new key, once.
    h.clock.advance(30 * 24 * 3600);
    h.service.maintain().await.unwrap();
    h.service.maintain().await.unwrap();
    let jwks = h.call("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 2, "{jwks:?}");
}

async fn sessions_preferences_and_admin(store: &Store) {
    let h = start(store, false).await;
    let (a1, _, s1) = h.login_ok("alice@example.com", ALICE_PW).await;
    let remembered = h
        .call(
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "alice@example.com", "password": ALICE_PW, "remember_me": true})),
        )
        .await;
    let s2 = remembered.data()["session_id"].as_str().unwrap().to_string();
    assert_eq!(
        remembered.data()["refresh_expires_at"].as_i64().unwrap() - START,
        30 * 24 * 3600
    );
    let list = h.call("GET", "/api/v1/auth/sessions", Some(&a1), None).await;
    assert_eq!(list.status, 200);
    let sessions = list.data().as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let mine = sessions.iter().find(|s| s["id"] == s1.as_str()).unwrap();
    assert_eq!(mine["current"], true);
    assert_eq!(mine["device"], "Firefox on Linux");
    assert_eq!(mine["client_address"], "127.0.0.1");
    // Alice cannot see or end Bob's sessions; Bob (admin) can see and end hers.
    let (b, _, bob_sid) = h.login_ok("bob@example.com", BOB_PW).await;
    assert_eq!(
        h.call("GET", "/api/v1/auth/sessions?user=bob", Some(&a1), None)
            .await
            .status,
        403
    );
    let theirs = format!("/api/v1/auth/sessions/{bob_sid}");
    assert_eq!(h.call("DELETE", &theirs, Some(&a1), None).await.status, 404);
    let hers = h.call("GET", "/api/v1/auth/sessions?user=alice", Some(&b), None).await;
    assert_eq!(hers.data().as_array().unwrap().len(), 2);
    let kill = h
        .call("DELETE", &format!("/api/v1/auth/sessions/{s2}"), Some(&b), None)
        .await;
    assert_eq!(kill.status, 200, "{kill:?}");
    let list = h.call("GET", "/api/v1/auth/sessions", Some(&a1), None).await;
    assert_eq!(list.data().as_array().unwrap().len(), 1);

    // Preferences: the user's keys win over the User's; null falls back.
    let put = h
        .call(
            "PUT",
            "/api/v1/auth/user/preferences",
            Some(&a1),
            Some(json!({"preferences": {"theme": "dark", "fontSize": "large"}})),
        )
        .await;
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(
        put.data()["preferences"],
        json!({"contrast": "normal", "fontSize": "large", "theme": "dark"})
    );
    // The operator re-applies the User (resync): the user's choices survive.
    let mut alice = store.get_user("alice").await.unwrap().unwrap();
    alice.preferences.insert("contrast".into(), "high".into());
    store.upsert_user(&alice).await.unwrap();
    let me = h.whoami(&a1).await;
    assert_eq!(
        me.data()["preferences"],
        json!({"contrast": "high", "fontSize": "large", "theme": "dark"})
    );
    let cleared = h
        .call(
            "PUT",
            "/api/v1/auth/user/preferences",
            Some(&a1),
            Some(json!({"preferences": {"theme": null}})),
        )
        .await;
    assert_eq!(cleared.data()["preferences"]["theme"], "light");
    let bad = h
        .call(
            "PUT",
            "/api/v1/auth/user/preferences",
            Some(&a1),
            Some(json!({"preferences": {"a b": "x"}})),
        )
        .await;
    assert_eq!(bad.status, 400);
    // Logout everywhere.
    let all = h.call("POST", "/api/v1/auth/logout?all=true", Some(&a1), None).await;
    assert_eq!(all.status, 200);
    assert_eq!(h.whoami(&a1).await.status, 401);
    // Malformed bodies are enveloped 400s.
    let junk = h
        .call("POST", "/api/v1/auth/login", None, Some(json!({"email": 3})))
        .await;
    assert_eq!((junk.status, junk.body["status"].as_str()), (400, Some("error")));
    let discovery = h.call("GET", "/.well-known/openid-configuration", None, None).await;
    assert_eq!(discovery.body["issuer"], ISSUER);
    assert_eq!(discovery.body["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route_with_the_envelope() {
    let db = TestDb::new(Kind::Sqlite, "tok_openapi").await;
    let h = start(&db.store, false).await;
    let doc = h.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.body["openapi"], "3.1.0");
    let paths = doc.body["paths"].as_object().unwrap();
    for op in tokens::openapi::operations() {
        let entry = &paths[op.path][op.method];
        assert!(entry.is_object(), "{} {} documented", op.method, op.path);
        let ok = &entry["responses"][op.ok.0.to_string()]["content"]["application/json"]["schema"];
        assert_eq!(ok["required"], json!(["status", "data", "meta"]), "{}", op.path);
        // Every documented route is served (no 404 from the router).
        let path = op.path.replace("{id}", "x");
        let answer = h.call(&op.method.to_uppercase(), &path, None, Some(json!({}))).await;
        assert_ne!(answer.status, 404, "{} {path} served", op.method);
        assert_ne!(answer.status, 405, "{} {path} served", op.method);
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for name in [
        "LoginRequest",
        "TokenPair",
        "UserInfo",
        "SessionInfo",
        "ErrorEnvelope",
        "Meta",
    ] {
        assert!(schemas.contains_key(name), "{name} in components");
    }
    let text = doc.body.to_string();
    assert!(!text.contains("#/$defs"), "refs point into components");
    db.finish().await;
}

/// A real SMTP server on loopback: greeting, EHLO offering STARTTLS, TLS with a
/// certificate of a CA made here, AUTH PLAIN, MAIL, RCPT, DATA. Each conversation
/// (commands and message) is sent on the channel as text.
async fn smtp_server(dir: &std::path::Path) -> (u16, std::path::PathBuf, mpsc::UnboundedReceiver<String>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.distinguished_name.push(DnType::CommonName, "test mail CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let ca_path = dir.join("mail-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let mut log = String::new();
                let mut plain = BufReader::new(stream);
                plain.get_mut().write_all(b"220 test ESMTP\r\n").await.unwrap();
                loop {
                    let line = read_line(&mut plain).await;
                    log.push_str(&line);
                    log.push('\n');
                    if line.starts_with("EHLO") {
                        plain
                            .get_mut()
                            .write_all(b"250-test\r\n250 STARTTLS\r\n")
                            .await
                            .unwrap();
                    } else if line == "STARTTLS" {
                        plain.get_mut().write_all(b"220 go ahead\r\n").await.unwrap();
                        break;
                    } else {
                        plain.get_mut().write_all(b"530 STARTTLS first\r\n").await.unwrap();
                        return;
                    }
                }
                let tls = acceptor.accept(plain.into_inner()).await.unwrap();
                let mut conn = BufReader::new(tls);
                converse(&mut conn, &mut log).await;
                let _ = tx.send(log);
            });
        }
    });
    (port, ca_path, rx)
}

async fn read_line<S: AsyncRead + Unpin>(conn: &mut BufReader<S>) -> String {
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    line.trim_end_matches(['\r', '\n']).to_string()
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut BufReader<S>, log: &mut String) {
    loop {
        let line = read_line(conn).await;
        log.push_str(&line);
        log.push('\n');
        let reply: &[u8] = match line.split(' ').next().unwrap_or_default() {
            "EHLO" => b"250-test\r\n250 AUTH PLAIN\r\n",
            "AUTH" => {
                let token = line.rsplit(' ').next().unwrap();
                let decoded = base64::engine::general_purpose::STANDARD.decode(token).unwrap();
                assert_eq!(decoded, b"\0mailer\0smtp-secret");
                b"235 ok\r\n"
            }
            "MAIL" | "RCPT" => b"250 ok\r\n",
            "DATA" => {
                conn.get_mut().write_all(b"354 go\r\n").await.unwrap();
                loop {
                    let body = read_line(conn).await;
                    if body == "." {
                        break;
                    }
                    log.push_str(&body);
                    log.push('\n');
                }
                b"250 queued\r\n"
            }
            "QUIT" => {
                conn.get_mut().write_all(b"221 bye\r\n").await.unwrap();
                return;
            }
            _ => b"500 what\r\n",
        };
        conn.get_mut().write_all(reply).await.unwrap();
    }
}
