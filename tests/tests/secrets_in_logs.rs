//! Secrets never reach a log: the control plane (local mode, SQLite) and a sidecar run at
//! debug level through key issuance, password hashing, login, refresh (and its reuse),
//! logout, password change and reset, and authentication with keys and tokens, right and
//! wrong; then every line either process wrote is searched for every secret that passed
//! through it: API keys (and near misses of them), passwords (right and wrong), access and
//! refresh tokens and their signatures, the sidecars' API token, the key-encryption key.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::path::Path;

use base64::Engine;
use portcullis_e2e::{Answer, ControlPlane, Sidecar, copy_examples, free_port, http, upstream};

/// Alice's password in examples/20-users.yaml.
const ALICE: (&str, &str) = ("alice@example.com", "example-Alice-pw-7f3a9c");

fn data(answer: &Answer) -> serde_json::Value {
    let body: serde_json::Value =
        serde_json::from_slice(&answer.body).unwrap_or_else(|e| panic!("{e}: {} {}", answer.status, answer.text()));
    body["data"].clone()
}

async fn post(sidecar: &Sidecar, path: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Answer {
    http(sidecar.listen, "POST", path, headers, &body.to_string())
        .await
        .unwrap()
}

/// The value of `key:` in the Secret headed `# name` of a local-mode Secrets file, decoded.
fn secret_value(state: &Path, namespace: &str, name: &str, key: &str) -> String {
    let text = std::fs::read_to_string(state.join("secrets").join(format!("{namespace}.yaml"))).unwrap();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("# ") {
            inside = line == format!("# {name}");
        }
        if inside && let Some(value) = line.trim().strip_prefix(&format!("{key}:")) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(value.trim()).unwrap();
            return String::from_utf8(bytes).unwrap();
        }
    }
    panic!("no {key} in Secret {name} of {namespace}");
}

/// The pieces of a secret worth looking for: the whole, and for long ones a stretch from
/// the middle (a log that cut or re-encoded the value would still show it).
fn needles(name: &str, value: &str) -> Vec<(String, String)> {
    let mut out = vec![(name.to_string(), value.to_string())];
    if value.len() >= 24 {
        let mid = value.len() / 2;
        out.push((format!("{name} (middle)"), value[mid - 8..mid + 8].to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    copy_examples(&manifests).unwrap();
    let state = dir.path().join("state");
    let plane = ControlPlane::start_logging(&manifests, &state, None, free_port().unwrap(), "debug")
        .await
        .unwrap();
    plane.ready("shop").await.unwrap();
    let app = upstream().await.unwrap();
    let sidecar = Sidecar::start_with(&plane, "shop", app, dir.path(), &["--log", "debug"])
        .await
        .unwrap();

    let mut secrets: Vec<(String, String)> = Vec::new();
    let key = plane.api_key("shop", "bob-cli-apikey").unwrap();
    secrets.extend(needles("bob's API key", &key));
    let admin_password = secret_value(&state, "portcullis-system", "portcullis-initial-admin", "password");
    secrets.extend(needles("the bootstrap admin's password", &admin_password));
    secrets.extend(needles("alice's password", ALICE.1));
    secrets.extend(needles("bob's password", "example-Bob-pw-41d2e8"));
    secrets.extend(needles("the sidecars' API token", &plane.token("shop").unwrap()));

    // API keys: right, wrong by one character, unknown, in the query string.
    let mut near_miss = key.clone();
    let last = near_miss.pop().unwrap();
    near_miss.push(if last == 'A' { 'B' } else { 'A' });
    secrets.extend(needles("a near miss of bob's key", &near_miss));
    let guessed = "pck_guessedguessedguessedguessedguessedguessed1";
    secrets.extend(needles("a guessed key", guessed));
    // Local mode converges in passes (a User before the Role it names, say): wait for
    // bob's key to read before the checks.
    let reads = portcullis_e2e::until(std::time::Duration::from_secs(10), || async {
        sidecar
            .get("/api/v1/items", &[("X-API-Key", &key)])
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    assert!(reads.is_some(), "bob's key never read:\n{}", sidecar.process.output());
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("X-API-Key", &near_miss)])
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("X-API-Key", guessed)])
            .await
            .unwrap()
            .status,
        401
    );
    let in_query = format!("/api/v1/items?api_key={key}");
    assert_ne!(sidecar.get(&in_query, &[]).await.unwrap().status, 500);

    // Login through the sidecar's route to the token service: wrong password, then right.
    let wrong_password = "not-Alice's-password-91";
    secrets.extend(needles("a wrong password", wrong_password));
    let refused = post(
        &sidecar,
        "/api/v1/auth/login",
        &[],
        &serde_json::json!({"email": ALICE.0, "password": wrong_password}),
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    let login = post(
        &sidecar,
        "/api/v1/auth/login",
        &[],
        &serde_json::json!({"email": ALICE.0, "password": ALICE.1}),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let pair = data(&login);
    let access = pair["access_token"].as_str().unwrap().to_string();
    let refresh = pair["refresh_token"].as_str().unwrap().to_string();
    secrets.extend(needles("alice's access token", &access));
    secrets.extend(needles(
        "alice's access token's signature",
        access.rsplit('.').next().unwrap(),
    ));
    secrets.extend(needles("alice's refresh token", &refresh));
    let bearer = format!("Bearer {access}");
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("Authorization", &bearer)])
            .await
            .unwrap()
            .status,
        200
    );
    // A token with its signature altered, and one that is not a token at all.
    let mut forged = access.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    let forged_bearer = format!("Bearer {forged}");
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("Authorization", &forged_bearer)])
            .await
            .unwrap()
            .status,
        401
    );
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("Authorization", "Bearer not.a-token.at-all")])
            .await
            .unwrap()
            .status,
        401
    );

    // Refresh, then the spent refresh token again (reuse: the session is revoked).
    let refreshed = post(
        &sidecar,
        "/api/v1/auth/refresh",
        &[],
        &serde_json::json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let second = data(&refreshed);
    secrets.extend(needles(
        "alice's second access token",
        second["access_token"].as_str().unwrap(),
    ));
    secrets.extend(needles(
        "alice's second refresh token",
        second["refresh_token"].as_str().unwrap(),
    ));
    let reused = post(
        &sidecar,
        "/api/v1/auth/refresh",
        &[],
        &serde_json::json!({"refresh_token": refresh}),
    )
    .await;
    assert_eq!(reused.status, 401, "{}", reused.text());

    // A new session; password change with a wrong and then the right current password;
    // forgot-password (no SMTP here: the log says mail is off, never the link); logout.
    let login = post(
        &sidecar,
        "/api/v1/auth/login",
        &[],
        &serde_json::json!({"email": ALICE.0, "password": ALICE.1}),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.text());
    let pair = data(&login);
    let access = pair["access_token"].as_str().unwrap().to_string();
    secrets.extend(needles("alice's third access token", &access));
    secrets.extend(needles(
        "alice's third refresh token",
        pair["refresh_token"].as_str().unwrap(),
    ));
    let bearer = format!("Bearer {access}");
    let new_password = "a-New-passphrase-of-hers-3318";
    secrets.extend(needles("alice's new password", new_password));
    let change = |current: &'static str| serde_json::json!({"current_password": current, "new_password": "a-New-passphrase-of-hers-3318"});
    let wrong = post(
        &sidecar,
        "/api/v1/auth/password",
        &[("Authorization", &bearer)],
        &change("not-Alice's-password-91"),
    )
    .await;
    assert!(matches!(wrong.status, 400 | 401 | 403), "{}", wrong.text());
    let changed = post(
        &sidecar,
        "/api/v1/auth/password",
        &[("Authorization", &bearer)],
        &change(ALICE.1),
    )
    .await;
    assert_eq!(changed.status, 200, "{}", changed.text());
    for email in [ALICE.0, "nobody@example.com"] {
        let forgot = post(
            &sidecar,
            "/api/v1/auth/password/forgot",
            &[],
            &serde_json::json!({"email": email}),
        )
        .await;
        assert!(matches!(forgot.status, 200 | 202), "{}", forgot.text());
    }
    let bogus_reset = "reset-token-that-was-never-issued-7781";
    secrets.extend(needles("a bogus reset token", bogus_reset));
    let reset = post(
        &sidecar,
        "/api/v1/auth/password/reset",
        &[],
        &serde_json::json!({"token": bogus_reset, "new_password": "another-Passphrase-5521"}),
    )
    .await;
    assert!(matches!(reset.status, 400 | 401), "{}", reset.text());
    let logout = post(
        &sidecar,
        "/api/v1/auth/logout",
        &[("Authorization", &bearer)],
        &serde_json::json!({}),
    )
    .await;
    assert!(matches!(logout.status, 200 | 204), "{}", logout.text());

    // The key-encryption key of the signing keys (local mode keeps it in a 0600 file).
    if let Ok(kek) = std::fs::read_to_string(state.join("signing-kek")) {
        secrets.extend(needles("the signing keys' key-encryption key", kek.trim()));
    }

    // Let the last lines reach the files, then read both logs.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let logs = [
        ("the control plane", plane.process.output()),
        ("the sidecar", sidecar.process.output()),
    ];
    for (who, log) in &logs {
        assert!(
            log.lines().count() > 20,
            "{who} logged {} lines at debug level: is the level applied?\n{log}",
            log.lines().count()
        );
        for (what, value) in &secrets {
            if let Some(at) = log.find(value.as_str()) {
                let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
                let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
                panic!("{what} appears in the log of {who}:\n{}", &log[line_start..line_end]);
            }
        }
    }
}
