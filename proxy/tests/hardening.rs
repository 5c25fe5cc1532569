//! Issue 15, tried as an attacker would against a running sidecar: identity that cannot
//! be borrowed, headers the app cannot misread, CORS, rate limits, and paths that mean
//! one thing to every app. Each test fails on the code before the fix.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;

const ROOT_KEY: &str = "pck_root00000000000000000000000000000000000";
const ROOT_ADMIN_KEY: &str = "pck_rootadmin000000000000000000000000000000";
const FOREIGN_KEY: &str = "pck_foreign000000000000000000000000000000000";
const ROAMING_KEY: &str = "pck_roaming000000000000000000000000000000000";

fn key_entry(key: &str, namespace: &str, owner: &str, scopes: &[&str]) -> Value {
    json!({
        "key_hash": portcullis_wire::api_key::hash_hex(key),
        "prefix": &key[..8],
        "namespace": namespace,
        "owner_kind": "user",
        "owner_name": owner,
        "scopes": scopes,
        "expires_at": null,
        "revoked_at": null,
    })
}

/// The test snapshot, with `edit` applied.
fn snapshot_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut snapshot = snapshot(1);
    let keys = snapshot["api_keys"].as_array_mut().unwrap();
    // root is an admin; a key of his that did not ask for roles carries none.
    keys.push(key_entry(ROOT_KEY, "shop", "root", &["read", "write", "admin"]));
    let mut with_role = key_entry(ROOT_ADMIN_KEY, "shop", "root", &["read", "write", "admin"]);
    with_role["roles"] = json!(["admin"]);
    keys.push(with_role);
    // Minted in another namespace: never honoured here unless its owner allowed it.
    keys.push(key_entry(FOREIGN_KEY, "elsewhere", "root", &["read", "write", "admin"]));
    let mut roaming = key_entry(ROAMING_KEY, "elsewhere", "alice", &["read"]);
    roaming["honoured_in"] = json!(["shop"]);
    keys.push(roaming);
    edit(&mut snapshot);
    snapshot
}

async fn sidecar_with(app: &App, extra: &[&str], snapshot: &Value) -> Sidecar {
    let sidecar = sidecar(app, extra, false).await;
    write_snapshot(&sidecar.snapshot, snapshot);
    for _ in 0..300 {
        if sidecar.running.current.load().is_some() {
            return sidecar;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("snapshot never installed");
}

// ------------------------------------------------------------ identity that cannot be borrowed

#[tokio::test]
async fn a_key_of_another_namespace_is_refused_unless_its_owner_allowed_this_one() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &[], &snapshot_with(|_| {})).await;
    let r = get(sidecar.http(), "/api/v1/items", &[("x-api-key", FOREIGN_KEY)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "invalid_credentials")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong namespace")
    );
    let r = get(sidecar.http(), "/api/v1/items", &[("x-api-key", ROAMING_KEY)]).await;
    assert_eq!(r.status, 200, "alice's key, honoured in shop as she allowed");
    assert_eq!(app.last().headers["x-auth-subject"], "user:alice");
}

#[tokio::test]
async fn a_key_carries_its_owners_roles_only_when_it_asked_for_them() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &[], &snapshot_with(|_| {})).await;
    let r = get(sidecar.http(), "/api/v1/admin/users", &[("x-api-key", ROOT_KEY)]).await;
    assert_eq!(r.status, 403, "root's read-write key is not root: {:?}", r.body);
    let r = get(sidecar.http(), "/api/v1/items", &[("x-api-key", ROOT_KEY)]).await;
    assert_eq!(r.status, 200);
    let seen = app.last();
    assert_eq!(seen.headers["x-auth-roles"], "");
    assert_eq!(seen.headers["x-auth-teams"], "");
    let r = get(sidecar.http(), "/api/v1/admin/users", &[("x-api-key", ROOT_ADMIN_KEY)]).await;
    assert_eq!(r.status, 200, "asked for admin, which root holds");
    assert_eq!(app.last().headers["x-auth-roles"], "admin");
}

// ------------------------------------------------------------ headers the app cannot misread

/// Client headers, each in a spelling an app server (WSGI, Rack, CGI) reads as a header
/// the sidecar sets or reserves, or another proxy's identity or rewrite header.
const SPOOFED: &[&str] = &[
    "X_Auth_User: root",
    "X-Auth_Roles: admin",
    "x_auth_subject: user:root",
    "X_AUTH_EMAIL: root@example.com",
    "X-Forwarded-User: root",
    "X_Forwarded_Email: root@example.com",
    "X-Forwarded-Preferred-Username: root",
    "X-Forwarded-Groups: admins",
    "X-Remote-User: root",
    "X-Remote-Group: admins",
    "Remote-User: root",
    "Remote_User: root",
    "X-Webauth-User: root",
    "X-Forwarded-Client-Cert: Hash=1;Subject=\"CN=root\"",
    "X-SSL-Client-S-DN: CN=root",
    "X_Client_Cert: x",
    "X-HTTP-Method-Override: DELETE",
    "X-HTTP-Method: DELETE",
    "X-Method-Override: DELETE",
    "X-Original-URL: /api/v1/admin/users",
    "X-Rewrite-URL: /api/v1/admin/users",
    "X-Original-URI: /api/v1/admin/users",
    "X_Correlation_ID: forged",
    "Forwarded: for=1.2.3.4;host=admin.internal;proto=https",
    "X-Forwarded-Host: admin.internal",
    "X_Forwarded_Host: admin.internal",
    "X-Forwarded-Port: 443",
    "X-Forwarded-Prefix: /admin",
    "X-Real-IP: 1.2.3.4",
    "True-Client-IP: 1.2.3.4",
    "X_Forwarded_For: 1.2.3.4",
    "X_API_KEY: pck_guess",
];

/// Header names as an app server folds them.
fn fold(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

async fn spoofed_request(sidecar: &Sidecar, extra: &str) -> String {
    let mut head = format!("GET /api/v1/items HTTP/1.1\r\nhost: t\r\nx-api-key: {ALICE_KEY}\r\n{extra}");
    for line in SPOOFED {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("connection: close\r\n\r\n");
    raw(sidecar.http(), head.as_bytes()).await
}

#[tokio::test]
async fn no_spelling_of_a_reserved_or_foreign_identity_header_reaches_the_app() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &[], &snapshot_with(|_| {})).await;
    let answer = spoofed_request(&sidecar, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app.last();
    let ours = [
        "x-auth-user",
        "x-auth-roles",
        "x-auth-subject",
        "x-auth-email",
        "x-correlation-id",
        "x-forwarded-for",
    ];
    for line in SPOOFED {
        let (name, spoofed) = line.split_once(": ").unwrap();
        for (have, value) in &seen.headers {
            if fold(have.as_str()) != fold(name) {
                continue;
            }
            // Only the sidecar's own copy, under its own spelling, may be there.
            assert!(
                ours.contains(&have.as_str()) && value.as_bytes() != spoofed.as_bytes(),
                "{line} reached the app as {have}: {value:?}"
            );
        }
    }
    assert_eq!(seen.headers["x-auth-user"], "alice");
    assert_eq!(seen.headers["x-auth-subject"], "user:alice");
    assert_eq!(seen.method, "GET");
    assert!(
        !seen.headers.contains_key("x-api-key"),
        "the consumed key is not forwarded"
    );
}

#[tokio::test]
async fn forwarding_headers_pass_from_a_trusted_proxy_only_and_the_key_when_a_rule_asks() {
    let app = app().await;
    let snapshot = snapshot_with(|s| {
        let rules = s["policies"][0]["rules"].as_array_mut().unwrap();
        rules.insert(
            0,
            json!({"name": "keyed", "methods": ["GET"], "paths": ["/api/v1/items"], "requireScopes": ["read"],
                   "forwardApiKey": true}),
        );
    });
    let sidecar = sidecar_with(&app, &["--trusted-proxy", "127.0.0.1/32"], &snapshot).await;
    let answer = spoofed_request(&sidecar, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app.last();
    assert_eq!(
        seen.headers["x-forwarded-host"], "admin.internal",
        "from a trusted proxy"
    );
    assert_eq!(seen.headers["forwarded"], "for=1.2.3.4;host=admin.internal;proto=https");
    assert_eq!(seen.headers["x-real-ip"], "1.2.3.4");
    assert_eq!(seen.headers["x-api-key"], ALICE_KEY, "the rule forwards the key");
    assert_eq!(
        seen.headers.get_all("x-api-key").iter().count(),
        1,
        "the X_API_KEY copy is gone"
    );
    assert!(!seen.headers.contains_key("x_forwarded_host"), "never another spelling");
    assert!(!seen.headers.contains_key("x-forwarded-user"), "never an identity");
    assert!(!seen.headers.contains_key("x-http-method-override"));

    // The same from an untrusted peer: none of it.
    let untrusted = sidecar_with(&app, &[], &snapshot).await;
    let answer = spoofed_request(&untrusted, "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = app.last();
    for name in [
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "true-client-ip",
    ] {
        assert!(!seen.headers.contains_key(name), "{name}");
    }
}

#[tokio::test]
async fn a_repeated_client_certificate_header_is_refused() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &["--trusted-proxy", "127.0.0.1/32"], &snapshot_with(|_| {})).await;
    let r = get(
        sidecar.http(),
        "/healthz",
        &[("x-client-cert", "a"), ("x-client-cert", "b")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "ambiguous_credentials")
    );
    let untrusted = sidecar_with(&app, &[], &snapshot_with(|_| {})).await;
    let r = get(
        untrusted.http(),
        "/healthz",
        &[("x-client-cert", "a"), ("x-client-cert", "b")],
    )
    .await;
    assert_eq!(r.status, 400, "whoever sends two");
}

fn external_token(claims: Value) -> String {
    let mut all = json!({"iss": "https://external.test", "aud": AUDIENCE, "sub": "ext-1", "exp": now() + 600});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ext".into());
    jsonwebtoken::encode(&header, &all, &EncodingKey::from_secret(EXTERNAL_SECRET)).unwrap()
}

#[tokio::test]
async fn external_tokens_give_typed_subjects_safe_values_and_only_verified_emails() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &[], &snapshot_with(|_| {})).await;
    let bearer = |t: &str| format!("Bearer {t}");

    let t = external_token(json!({"scope": "read", "email": "ext@example.com"}));
    let r = get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&t))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = app.last();
    assert_eq!(seen.headers["x-auth-subject"], "https://external.test#ext-1");
    assert_eq!(seen.headers["x-auth-user"], "ext-1");
    assert!(!seen.headers.contains_key("x-auth-email"), "not verified, not passed");

    let t = external_token(json!({"scope": "read", "email": "ext@example.com", "email_verified": true}));
    assert_eq!(
        get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&t))])
            .await
            .status,
        200
    );
    assert_eq!(app.last().headers["x-auth-email"], "ext@example.com");

    let count = app.count();
    for claims in [
        json!({"scope": "read", "sub": "ext-1,root"}),
        json!({"scope": "read", "roles": ["viewer,admin"]}),
        json!({"scope": "read", "sub": "ext\u{1}1"}),
        json!({"scope": "read", "email": "a@x.com\r\nX-Auth-Roles: admin", "email_verified": true}),
    ] {
        let t = external_token(claims.clone());
        let r = get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&t))]).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "unsafe_claim"),
            "{claims}"
        );
    }
    assert_eq!(app.count(), count, "none reached the app");

    // Our own users and keys are typed too.
    let hs = token(Algorithm::HS256, None, claims("alice"));
    get(sidecar.http(), "/api/v1/items", &[("authorization", &bearer(&hs))]).await;
    assert_eq!(app.last().headers["x-auth-subject"], "user:alice");
    request(sidecar.http(), "POST", "/ingest", &[("x-api-key", SOURCE_KEY)], "x").await;
    assert_eq!(app.last().headers["x-auth-subject"], "source:shop/edge-syslog");
}

// ------------------------------------------------------------ CORS

#[tokio::test]
async fn any_origin_with_credentials_is_never_granted() {
    let app = app().await;
    let snapshot = snapshot_with(|s| {
        s["policies"][0]["cors"] = json!({"allowedOrigins": ["*"], "allowCredentials": true});
    });
    let sidecar = sidecar_with(&app, &[], &snapshot).await;
    let r = request(
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
    assert_eq!(r.status, 403);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = get(
        sidecar.http(),
        "/api/v1/items",
        &[("x-api-key", ALICE_KEY), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        r.headers
    );
    assert!(!r.headers.contains_key("access-control-allow-credentials"));
}

// ------------------------------------------------------------ rate limits

fn limited_snapshot() -> Value {
    snapshot_with(|s| {
        let rules = s["policies"][0]["rules"].as_array_mut().unwrap();
        rules.insert(
            0,
            json!({"name": "open", "methods": ["GET"], "paths": ["/open"], "public": true,
                   "rateLimit": {"requestsPerSecond": 1, "burst": 2}}),
        );
    })
}

#[tokio::test]
async fn anonymous_ipv6_callers_share_a_bucket_per_64() {
    let app = app().await;
    let sidecar = sidecar_with(&app, &["--trusted-proxy", "127.0.0.1/32"], &limited_snapshot()).await;
    let mut statuses = Vec::new();
    // Six addresses of one /64 against a burst of 2 at 1 request per second.
    for i in 1..=6 {
        let ip = format!("2001:db8:1:2::{i:x}");
        statuses.push(
            get(sidecar.http(), "/open", &[("x-forwarded-for", ip.as_str())])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "rotating within the /64 does not reset the limit: {statuses:?}"
    );
    let other = get(sidecar.http(), "/open", &[("x-forwarded-for", "2001:db8:1:3::1")]).await;
    assert_eq!(other.status, 200, "another /64, another bucket");
}

#[tokio::test]
async fn a_full_bucket_table_still_serves_new_callers() {
    let app = app().await;
    let sidecar = sidecar_with(
        &app,
        &["--trusted-proxy", "127.0.0.1/32", "--rate-limit-buckets", "16"],
        &limited_snapshot(),
    )
    .await;
    // Many addresses, each spending its burst: every bucket is busy.
    for i in 0..64 {
        let ip = format!("198.51.100.{i}");
        for _ in 0..2 {
            get(sidecar.http(), "/open", &[("x-forwarded-for", ip.as_str())]).await;
        }
    }
    // Someone new is served, not turned away because the table is full.
    for i in 0..16 {
        let ip = format!("203.0.113.{i}");
        let r = get(sidecar.http(), "/open", &[("x-forwarded-for", ip.as_str())]).await;
        assert_eq!(r.status, 200, "new caller {ip}");
    }
}

// ------------------------------------------------------------ paths

/// `/api/v1/admin/**` needs the admin role; everything else under `/api/v1/**` is public.
fn admin_under_public(matching: Value) -> Value {
    snapshot_with(|s| {
        let policy = &mut s["policies"][0];
        policy["rules"] = json!([
            {"name": "admin", "paths": ["/api/v1/admin/**"], "requireRoles": ["admin"]},
            {"name": "admin-exact", "paths": ["/api/v1/settings"], "requireRoles": ["admin"]},
            {"name": "public", "paths": ["/api/v1/**"], "public": true},
        ]);
        policy["path_matching"] = matching;
    })
}

/// Spellings of an admin path an app could route to its admin handler.
const SPELLINGS: &[&str] = &[
    "/api/v1/admin/users",
    "/api/v1/Admin/users",
    "/API/v1/admin/users",
    "/api/v1/ADMIN",
    "/api/v1/admin",
    "/api/v1/admin/",
    "/api/v1/settings/",
    "/api/v1/Settings",
    "/api/v1/%61dmin/users",
    "/api/v1/%41dmin/users",
    "/api/v1/admin%2fusers",
    "/api/v1/admin%2Fusers",
    "/api/v1/x%2F..%2Fadmin/users",
    "/api/v1/admin%5cusers",
    "/api/v1/admin\\users",
    "/api/v1/admin;jsessionid=1/users",
    "/api/v1/admin%3bx=1/users",
    "/api/v1;x=1/admin/users",
    "/api/v1/%252e%252e/v1/admin/users",
    "/api/v1/x/%2e%2e/admin/users",
    "/api/v1/x/../admin/users",
    "/api/v1/./admin/users",
    "/api/v1//admin/users",
    "/api//v1/admin/users",
    "/api/v1/admin%00/users",
    "/api/v1/admin%20/users",
    "/api/v1/%20admin/users",
    "/api/v1/admin%09/users",
    "/api/v1/%C0%AE%C0%AE/admin/users",
    "/api/v1/%EF%BD%81dmin/users",
    "/api/v1/\u{212a}/users",
    "/api/v1/admin.json",
];

/// How an app could read a forwarded path: decoded, case folded, without a trailing slash.
fn app_reads_admin(uri: &str) -> bool {
    let path = uri.split('?').next().unwrap();
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    let trimmed = decoded.trim_end_matches('/');
    trimmed == "/api/v1/admin" || trimmed.starts_with("/api/v1/admin/") || trimmed == "/api/v1/settings"
}

async fn every_spelling(matching: Value) -> Vec<(String, u16)> {
    let app = app().await;
    let sidecar = sidecar_with(&app, &[], &admin_under_public(matching)).await;
    let mut answers = Vec::new();
    for path in SPELLINGS {
        let before = app.count();
        let answer = raw(
            sidecar.http(),
            format!("GET {path} HTTP/1.1\r\nhost: t\r\nx-api-key: {ALICE_KEY}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        if app.count() > before {
            let seen = app.last();
            assert!(
                !app_reads_admin(&seen.uri),
                "{path} reached the app as {} ({status}), allowed without the admin role",
                seen.uri
            );
        }
        answers.push((path.to_string(), status));
    }
    answers
}

#[tokio::test]
async fn no_spelling_of_a_protected_path_slips_under_a_broader_public_rule() {
    let answers = every_spelling(json!({})).await;
    let status = |p: &str| answers.iter().find(|(path, _)| path == p).unwrap().1;
    assert_eq!(status("/api/v1/admin/users"), 403);
    assert_eq!(
        status("/api/v1/Admin/users"),
        400,
        "an app ignoring case would serve admin"
    );
    assert_eq!(
        status("/api/v1/settings/"),
        400,
        "an app ignoring the slash would serve settings"
    );
    assert_eq!(status("/api/v1/%252e%252e/v1/admin/users"), 400);
    assert_eq!(status("/api/v1/admin%3bx=1/users"), 400);
    assert_eq!(status("/api/v1/admin%20/users"), 400);
    assert_eq!(status("/api/v1/%EF%BD%81dmin/users"), 400);
    assert_eq!(status("/api/v1/admin.json"), 200, "another resource, public");
}

#[tokio::test]
async fn an_app_that_ignores_case_and_trailing_slashes_gets_rules_matched_its_way() {
    let answers = every_spelling(json!({"caseInsensitive": true, "ignoreTrailingSlash": true})).await;
    let status = |p: &str| answers.iter().find(|(path, _)| path == p).unwrap().1;
    for path in [
        "/api/v1/Admin/users",
        "/API/v1/admin/users",
        "/api/v1/ADMIN",
        "/api/v1/settings/",
        "/api/v1/Settings",
    ] {
        assert_eq!(status(path), 403, "{path}: the admin rule, as the app routes it");
    }
}
