//! The control plane and three sidecars as real processes on loopback (SQLite, and
//! PostgreSQL when `TEST_POSTGRES_URL` is set): revocations reach every sidecar within a
//! second, sidecars ride out a control-plane outage and catch up, a token reads its own
//! namespace only, and an external Issuer's tokens are accepted, rotated keys included.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use portcullis_e2e::{ControlPlane, Jwks, Sidecar, copy_examples, free_port, http, until, upstream};

/// The one-second goal of the issue, with nothing added.
const REVOCATION_BUDGET: Duration = Duration::from_secs(1);

/// One scenario at a time: each runs a control plane and three sidecars, and the
/// one-second budget is about the control plane, not about a machine shared by five.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    plane: ControlPlane,
    sidecars: Vec<Sidecar>,
    key: String,
    dir: tempfile::TempDir,
}

async fn setup(database_url: Option<&str>, extra_manifests: &[(&str, String)]) -> Setup {
    setup_with(database_url, extra_manifests, &[]).await
}

/// [`setup`] with more arguments for each sidecar.
async fn setup_with(database_url: Option<&str>, extra_manifests: &[(&str, String)], sidecar_args: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    copy_examples(&manifests).unwrap();
    for (name, text) in extra_manifests {
        std::fs::write(manifests.join(name), text).unwrap();
    }
    let plane = ControlPlane::start(
        &manifests,
        &dir.path().join("state"),
        database_url,
        free_port().unwrap(),
    )
    .await
    .unwrap();
    plane.ready("shop").await.unwrap();
    let app = upstream().await.unwrap();
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        sidecars.push(
            Sidecar::start_with(&plane, "shop", app, dir.path(), sidecar_args)
                .await
                .unwrap(),
        );
    }
    let key = plane.api_key("shop", "bob-cli-apikey").unwrap();
    Setup {
        plane,
        sidecars,
        key,
        dir,
    }
}

/// Starts the (stopped) control plane again on the same state, database and address.
async fn restart(setup: &mut Setup) {
    let plane = ControlPlane::start(&setup.plane.manifests, &setup.plane.state, None, setup.plane.api)
        .await
        .unwrap();
    plane.ready("shop").await.unwrap();
    setup.plane = plane;
}

/// Waits until every sidecar answers `status` to bob's key; the slowest sidecar's time.
async fn all_answer(setup: &Setup, status: u16, within: Duration) -> Option<Duration> {
    let mut slowest = Duration::ZERO;
    let started = std::time::Instant::now();
    for sidecar in &setup.sidecars {
        let left = within.saturating_sub(started.elapsed());
        until(left, || async move {
            sidecar
                .get("/api/v1/items", &[("X-API-Key", setup.key.as_str())])
                .await
                .is_ok_and(|a| a.status == status)
        })
        .await?;
        slowest = started.elapsed();
    }
    Some(slowest)
}

async fn revocations_reach_every_sidecar_within_a_second(database_url: Option<&str>) {
    let setup = setup(database_url, &[]).await;
    assert!(
        all_answer(&setup, 200, Duration::from_secs(5)).await.is_some(),
        "bob reads at first"
    );
    let store = setup.plane.store().await.unwrap();

    // A role removed: bob's key is capped at what bob holds now, which is nothing.
    let mut bob = store.get_user("bob").await.unwrap().unwrap();
    let roles = std::mem::take(&mut bob.roles);
    store.upsert_user(&bob).await.unwrap();
    let took = all_answer(&setup, 403, REVOCATION_BUDGET).await;
    assert!(took.is_some(), "role removal not enforced by every sidecar within 1 s");
    bob.roles = roles;
    store.upsert_user(&bob).await.unwrap();
    assert!(all_answer(&setup, 200, Duration::from_secs(5)).await.is_some());

    // A user disabled.
    bob.disabled = true;
    store.upsert_user(&bob).await.unwrap();
    let took = all_answer(&setup, 401, REVOCATION_BUDGET).await;
    assert!(took.is_some(), "disabled user not refused by every sidecar within 1 s");
    bob.disabled = false;
    store.upsert_user(&bob).await.unwrap();
    assert!(all_answer(&setup, 200, Duration::from_secs(5)).await.is_some());

    // A write that changes only another namespace's view (a key made in `billing`): the
    // revision moves, but no `shop` sidecar is answered — they hold the same view.
    let held = setup.sidecars[0]
        .metric("portcullis_proxy_snapshot_revision")
        .await
        .unwrap();
    let outcome = store
        .insert_api_key(&portcullis_operator::store::ApiKeyRow::user_key(
            "billing-key",
            "billing",
            "billing-cli",
            "bob",
            ["read"],
        ))
        .await
        .unwrap();
    assert!(outcome.revision as f64 > held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for sidecar in &setup.sidecars {
        let revision = sidecar.metric("portcullis_proxy_snapshot_revision").await.unwrap();
        assert_eq!(revision, held, "a shop sidecar was sent billing's write");
    }

    // A key revoked.
    store
        .revoke_api_keys("shop", "bob-cli", portcullis_wire::unix_now())
        .await
        .unwrap();
    let took = all_answer(&setup, 401, REVOCATION_BUDGET).await;
    assert!(took.is_some(), "revoked key not refused by every sidecar within 1 s");
    drop(setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_revocations_reach_every_sidecar_within_a_second() {
    let _serial = SERIAL.lock().await;
    revocations_reach_every_sidecar_within_a_second(None).await;
}

#[cfg_attr(not(portcullis_test_postgres), ignore = "set TEST_POSTGRES_URL to run on PostgreSQL")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_revocations_reach_every_sidecar_within_a_second() {
    let _serial = SERIAL.lock().await;
    let base = std::env::var("TEST_POSTGRES_URL").expect("TEST_POSTGRES_URL");
    let url = portcullis_e2e::fresh_postgres(&base, "e2e_revocations").await.unwrap();
    revocations_reach_every_sidecar_within_a_second(Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_maximum_staleness_sidecars_answer_503_until_the_control_plane_is_back() {
    let _serial = SERIAL.lock().await;
    let mut setup = setup_with(None, &[], &["--max-staleness", "3"]).await;
    // Healthy and idle for longer than the maximum: each poll is answered within it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for sidecar in &setup.sidecars {
        let answer = sidecar
            .get("/api/v1/items", &[("X-API-Key", setup.key.as_str())])
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "a healthy sidecar went stale: {}", answer.text());
    }
    setup.plane.process.stop().await;
    let stale = all_answer(&setup, 503, Duration::from_secs(8)).await;
    assert!(stale.is_some(), "past --max-staleness, requests are refused");
    let answer = setup.sidecars[0]
        .get("/api/v1/items", &[("X-API-Key", setup.key.as_str())])
        .await
        .unwrap();
    assert!(answer.text().contains("policy_stale"), "{}", answer.text());
    restart(&mut setup).await;
    // Backoff while it was down is a few seconds at most here.
    assert!(
        all_answer(&setup, 200, Duration::from_secs(35)).await.is_some(),
        "sidecars did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_trusts_the_control_plane_only_through_the_ca_it_is_given() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType};
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    };
    let (ours, theirs) = (ca("control plane CA"), ca("another CA"));
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ours).unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("api.crt"), cert.pem()).unwrap();
    std::fs::write(path("api.key"), key.serialize_pem()).unwrap();
    std::fs::write(path("ours.pem"), ours.pem()).unwrap();
    std::fs::write(path("theirs.pem"), theirs.pem()).unwrap();

    let manifests = path("manifests");
    copy_examples(&manifests).unwrap();
    let crt = path("api.crt").display().to_string();
    let key_file = path("api.key").display().to_string();
    let plane = ControlPlane::start_with(
        &manifests,
        &path("state"),
        None,
        free_port().unwrap(),
        &["--api-tls-cert", &crt, "--api-tls-key", &key_file],
    )
    .await
    .unwrap();
    let url = format!("https://{}", plane.api);
    let app = upstream().await.unwrap();
    // Local mode writes the token file once it has read the manifests.
    let token = plane.token_path("shop");
    assert!(
        until(Duration::from_secs(60), || async { token.exists() })
            .await
            .is_some(),
        "{}",
        plane.process.output()
    );
    let start = |ca: &str| {
        let ca = path(ca).display().to_string();
        Sidecar::spawn(&url, &token, "shop", app, dir.path(), &["--control-plane-ca", &ca]).unwrap()
    };
    let trusting = start("ours.pem");
    let fooled = start("theirs.pem");
    trusting.ready().await.unwrap();
    let key = plane.api_key("shop", "bob-cli-apikey").unwrap();
    let read = |sidecar: &Sidecar| {
        let key = key.clone();
        let listen = sidecar.listen;
        async move {
            http(listen, "GET", "/api/v1/items", &[("X-API-Key", key.as_str())], "")
                .await
                .unwrap()
                .status
        }
    };
    // Local mode applies the manifests in steps: the key may come a revision after the
    // first snapshot.
    assert!(
        until(Duration::from_secs(30), || async { read(&trusting).await == 200 })
            .await
            .is_some(),
        "{}",
        trusting.process.output()
    );
    // The other CA never gets a snapshot from this control plane: nothing is let through.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(read(&fooled).await, 503);
    assert_eq!(
        fooled.metric("portcullis_proxy_snapshot_revision").await.unwrap_or(0.0),
        0.0
    );
    assert!(
        fooled.process.output().contains("cannot fetch snapshot"),
        "{}",
        fooled.process.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_keep_enforcing_while_the_control_plane_is_down_and_catch_up_after() {
    let _serial = SERIAL.lock().await;
    let mut setup = setup(None, &[]).await;
    assert!(all_answer(&setup, 200, Duration::from_secs(5)).await.is_some());
    setup.plane.process.stop().await;
    // Fail-static: the last snapshot stays in force — bob still reads, nobody else does.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for sidecar in &setup.sidecars {
        assert_eq!(
            sidecar
                .get("/api/v1/items", &[("X-API-Key", setup.key.as_str())])
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(sidecar.get("/api/v1/items", &[]).await.unwrap().status, 401);
        // Staleness is reported: the snapshot's age grows while nothing confirms it.
        let age = sidecar.metric("portcullis_proxy_snapshot_age_seconds").await.unwrap();
        assert!(age >= 1.0, "snapshot age {age}");
    }
    // A write while the control plane is down (another replica, a restore script).
    let store = setup.plane.store().await.unwrap();
    store
        .revoke_api_keys("shop", "bob-cli", portcullis_wire::unix_now())
        .await
        .unwrap();
    store.close().await;
    restart(&mut setup).await;
    // Sidecars back off while it is down (to 30 s at most); they catch up on their next try.
    assert!(
        all_answer(&setup, 401, Duration::from_secs(35)).await.is_some(),
        "sidecars did not catch up"
    );
    for sidecar in &setup.sidecars {
        let age = sidecar.metric("portcullis_proxy_snapshot_age_seconds").await.unwrap();
        assert!(age < 5.0, "snapshot age {age} after catching up");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_namespace_is_refused() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    copy_examples(&manifests).unwrap();
    let plane = ControlPlane::start(&manifests, &dir.path().join("state"), None, free_port().unwrap())
        .await
        .unwrap();
    plane.ready("shop").await.unwrap();
    // A second namespace's token, as an operator would hand it to that namespace's pods.
    std::fs::write(plane.token_path("billing"), "billing-token-0123456789abcdef0123456789").unwrap();
    let api = plane.api;
    let ask = |token: String| async move {
        http(
            api,
            "GET",
            "/api/v1/snapshots/shop?revision=-1",
            &[("Authorization", format!("Bearer {token}").as_str())],
            "",
        )
        .await
        .unwrap()
    };
    let refused = ask("billing-token-0123456789abcdef0123456789".into()).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(ask("nobody".into()).await.status, 401);
    assert_eq!(ask(plane.token("shop").unwrap()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_batches_land_in_the_database_with_their_correlation_id() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    copy_examples(&manifests).unwrap();
    let plane = ControlPlane::start(&manifests, &dir.path().join("state"), None, free_port().unwrap())
        .await
        .unwrap();
    plane.ready("shop").await.unwrap();
    // What a sidecar posts after a denial (the sidecar's sending side is its own issue).
    let batch = serde_json::json!({"records": [{
        "at_ms": portcullis_wire::unix_now() * 1000, "correlation_id": "e2e-denied-1", "namespace": "shop",
        "pod": "sample-api-0", "method": "POST", "path": "/api/v1/items", "decision": "deny",
        "reason": "forbidden", "status": 403, "rule": "sample-api/write", "actor": "user:bob", "client": "127.0.0.1"
    }]});
    let token = plane.token("shop").unwrap();
    let answer = http(
        plane.api,
        "POST",
        "/api/v1/audit",
        &[("Authorization", format!("Bearer {token}").as_str())],
        &batch.to_string(),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.text());
    let rows = plane
        .store()
        .await
        .unwrap()
        .request_audit_by_correlation("e2e-denied-1")
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].decision.as_str(), rows[0].status), ("deny", 403));
}

/// An EC P-256 signing key: (PKCS#8 PEM, JWK of its public half with `kid`).
fn signing_key(kid: &str) -> (String, serde_json::Value) {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = key.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    (key.serialize_pem(), jwk)
}

fn token(pem: &str, kid: &str, issuer: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let now = portcullis_wire::unix_now();
    let claims = serde_json::json!({
        "iss": issuer, "aud": "sample-api", "sub": "ci-robot", "scope": "read",
        "iat": now, "exp": now + 600,
    });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuers_tokens_are_accepted_and_a_rotated_key_is_picked_up() {
    let _serial = SERIAL.lock().await;
    let jwks = Jwks::default();
    let (pem1, jwk1) = signing_key("k1");
    let (pem2, jwk2) = signing_key("k2");
    jwks.set(serde_json::json!({"keys": [jwk1]}).to_string());
    let idp = jwks.serve().await.unwrap();
    let issuer = format!("http://{idp}");
    let manifest = format!(
        "apiVersion: portcullis.io/v1alpha1\nkind: Issuer\nmetadata:\n  name: local-idp\nspec:\n  issuer: {issuer}\n  jwksUri: {issuer}/jwks\n  audiences: [sample-api]\n  algorithms: [ES256]\n"
    );
    let setup = setup(None, &[("70-issuer.yaml", manifest)]).await;
    let sidecar = &setup.sidecars[0];
    let bearer = |t: &str| format!("Bearer {t}");
    let first_token = token(&pem1, "k1", &issuer);
    let first = first_token.as_str();
    let accepted = until(Duration::from_secs(10), || async move {
        sidecar
            .get("/api/v1/items", &[("Authorization", bearer(first).as_str())])
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    assert!(accepted.is_some(), "the issuer's token was not accepted");
    // The provider rotates to k2 (k1 gone): a k2 token is refused until the keys are
    // refetched — here on the unknown-kid report a sidecar sends.
    jwks.set(serde_json::json!({"keys": [jwk2]}).to_string());
    let second_token = token(&pem2, "k2", &issuer);
    let second = second_token.as_str();
    let report = serde_json::json!({"issuer": issuer, "kid": "k2"}).to_string();
    let shop = setup.plane.token("shop").unwrap();
    let answer = http(
        setup.plane.api,
        "POST",
        "/api/v1/issuers/unknown-kid",
        &[("Authorization", bearer(&shop).as_str())],
        &report,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 202);
    let rotated = until(Duration::from_secs(10), || async move {
        sidecar
            .get("/api/v1/items", &[("Authorization", bearer(second).as_str())])
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
    assert!(rotated.is_some(), "the rotated key was not picked up");
    assert_eq!(
        sidecar
            .get("/api/v1/items", &[("Authorization", bearer(first).as_str())])
            .await
            .unwrap()
            .status,
        401,
        "the retired key no longer verifies"
    );
}
