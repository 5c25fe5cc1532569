//! The reconcilers against an in-memory Kubernetes API and a real database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use portcullis_operator::bootstrap;
use portcullis_operator::controller::{self, Config, Context, Reconciler};
use portcullis_operator::crd::{AccessPolicy, ApiKey, Issuer, Role, Source, Team, User};
use portcullis_operator::credentials;
use portcullis_operator::local;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::store::{Store, unix_now};
use portcullis_wire::{OwnerKind, TeamRole};
use serde_json::json;
use support::{Kind, TestDb};

struct World {
    ctx: Arc<Context>,
    client: Client,
    store: Store,
    _db: TestDb,
}

async fn world(test: &str) -> World {
    let db = TestDb::new(Kind::Sqlite, test).await;
    let client = local::memory_api();
    let config = Config {
        namespace: "portcullis-system".into(),
        ..Config::default()
    };
    let ctx = Context::new(client.clone(), db.store.clone(), config, Arc::new(Metrics::new()));
    World {
        ctx,
        client,
        store: db.store.clone(),
        _db: db,
    }
}

fn obj<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).unwrap()
}

async fn create<K>(api: &Api<K>, value: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &obj::<K>(value)).await.unwrap()
}

/// Reconciles the object as the controller would until its status settles (the first
/// pass only adds the finalizer), returning the fresh object.
async fn settle<K, F, Fut>(api: &Api<K>, name: &str, ctx: &Arc<Context>, reconcile: F) -> K
where
    K: Reconciler,
    F: Fn(Arc<K>, Arc<Context>) -> Fut,
    Fut: std::future::Future<Output = controller::Result<kube::runtime::controller::Action>>,
{
    for _ in 0..3 {
        let current = api.get(name).await.unwrap();
        if let Err(e) = reconcile(Arc::new(current), ctx.clone()).await {
            eprintln!("reconcile {name}: {e}");
        }
    }
    api.get(name).await.unwrap()
}

fn ready<K: Reconciler>(obj: &K) -> (String, String) {
    let c = obj
        .conditions()
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (c.status.clone(), c.reason.clone())
}

fn secret(ns: &str, name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

async fn role(w: &World, name: &str, scopes: &[&str]) -> Role {
    let api: Api<Role> = Api::all(w.client.clone());
    create(&api, json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Role", "metadata": {"name": name}, "spec": {"scopes": scopes}})).await;
    settle(&api, name, &w.ctx, controller::reconcile::<Role>).await
}

fn user_json(name: &str, roles: &[&str]) -> serde_json::Value {
    json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "User", "metadata": {"name": name},
           "spec": {"email": format!("{name}@example.com"), "roles": roles}})
}

#[tokio::test]
async fn role_create_update_delete() {
    let w = world("role_cud").await;
    let r = role(&w, "auditor", &["read", "audit:read"]).await;
    assert_eq!(ready(&r), ("True".into(), "Reconciled".into()));
    assert!(r.finalizers().contains(&controller::FINALIZER.to_string()));
    assert_eq!(r.status.as_ref().unwrap().observed_generation, r.metadata.generation);
    assert_eq!(
        w.store.get_role("auditor").await.unwrap().unwrap().scopes,
        ["audit:read", "read"]
    );

    let api: Api<Role> = Api::all(w.client.clone());
    // A resync of an unchanged object writes nothing, not even its status.
    role(&w, "other", &["read"]).await;
    controller::reconcile::<Role>(Arc::new(api.get("auditor").await.unwrap()), w.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        api.get("auditor").await.unwrap().metadata.resource_version,
        r.metadata.resource_version
    );
    let mut changed = r.clone();
    changed.spec.scopes = vec!["read".into()];
    api.replace("auditor", &PostParams::default(), &changed).await.unwrap();
    settle(&api, "auditor", &w.ctx, controller::reconcile::<Role>).await;
    assert_eq!(w.store.get_role("auditor").await.unwrap().unwrap().scopes, ["read"]);

    api.delete("auditor", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("auditor").await.unwrap();
    assert!(
        deleting.metadata.deletion_timestamp.is_some(),
        "the finalizer holds the object"
    );
    let _ = controller::reconcile::<Role>(Arc::new(deleting), w.ctx.clone()).await;
    assert!(w.store.get_role("auditor").await.unwrap().is_none(), "rows removed");
    assert!(
        api.get_opt("auditor").await.unwrap().is_none(),
        "finalizer released, object gone"
    );
}

#[tokio::test]
async fn user_waits_for_its_role_then_becomes_ready() {
    let w = world("user_missing_role").await;
    let users: Api<User> = Api::all(w.client.clone());
    create(&users, user_json("alice", &["auditor"])).await;
    let alice = settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    assert_eq!(ready(&alice), ("False".into(), "RoleNotFound".into()));
    assert!(w.store.get_user("alice").await.unwrap().is_none());

    role(&w, "auditor", &["read"]).await;
    let alice = settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    assert_eq!(ready(&alice), ("True".into(), "Reconciled".into()));
    assert_eq!(w.store.get_user("alice").await.unwrap().unwrap().roles, ["auditor"]);
}

#[tokio::test]
async fn user_password_is_hashed_once_per_secret_content() {
    let w = world("user_password").await;
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), "portcullis-system");
    let users: Api<User> = Api::all(w.client.clone());
    let mut alice = user_json("alice", &[]);
    alice["spec"]["passwordSecretRef"] = json!({"name": "alice-password"});
    create(&users, alice).await;
    let status = settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    assert_eq!(ready(&status).1, "SecretNotFound");

    secrets
        .create(
            &PostParams::default(),
            &secret("portcullis-system", "alice-password", "password", "first-pw"),
        )
        .await
        .unwrap();
    let status = settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    assert_eq!(ready(&status).1, "Reconciled");
    let first = w.store.password("alice").await.unwrap().unwrap();
    assert!(credentials::verify_password("first-pw", &first.hash));

    // The user changes the password through the token service; the Secret is unchanged,
    // so a resync must not put the old one back.
    let chosen = credentials::hash_password("chosen-by-alice").unwrap();
    w.store.set_password("alice", &chosen, None).await.unwrap();
    settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    assert_eq!(w.store.password("alice").await.unwrap().unwrap().hash, chosen);

    // The Secret changes: the administrator's new password wins.
    secrets
        .replace(
            "alice-password",
            &PostParams::default(),
            &secret("portcullis-system", "alice-password", "password", "second-pw"),
        )
        .await
        .unwrap();
    settle(&users, "alice", &w.ctx, controller::reconcile::<User>).await;
    let second = w.store.password("alice").await.unwrap().unwrap();
    assert!(credentials::verify_password("second-pw", &second.hash));
    assert_ne!(second.source_digest, first.source_digest);
}

#[tokio::test]
async fn disabling_a_user_revokes_sessions_and_deleting_removes_everything() {
    let w = world("user_disable_delete").await;
    bootstrap::run(&w.store, &w.client, "portcullis-system").await.unwrap();
    let users: Api<User> = Api::all(w.client.clone());
    create(&users, user_json("bob", &["viewer"])).await;
    settle(&users, "bob", &w.ctx, controller::reconcile::<User>).await;
    let now = unix_now();
    let session = portcullis_operator::store::SessionRow {
        id: "s-bob".into(),
        user_name: "bob".into(),
        refresh_hash: "b".repeat(64),
        device: None,
        user_agent: None,
        ip: None,
        created_at: now,
        expires_at: now + 3600,
        last_used_at: now,
        revoked_at: None,
        rotated_from: None,
    };
    w.store.create_session(&session).await.unwrap();
    let mut bob = users.get("bob").await.unwrap();
    bob.spec.disabled = true;
    users.replace("bob", &PostParams::default(), &bob).await.unwrap();
    settle(&users, "bob", &w.ctx, controller::reconcile::<User>).await;
    assert!(w.store.sessions_of("bob").await.unwrap()[0].revoked_at.is_some());

    users.delete("bob", &DeleteParams::default()).await.unwrap();
    let _ = controller::reconcile::<User>(Arc::new(users.get("bob").await.unwrap()), w.ctx.clone()).await;
    assert!(w.store.get_user("bob").await.unwrap().is_none());
    assert!(w.store.sessions_of("bob").await.unwrap().is_empty());
}

#[tokio::test]
async fn team_members_must_exist() {
    let w = world("team_members").await;
    let teams: Api<Team> = Api::all(w.client.clone());
    create(
        &teams,
        json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Team", "metadata": {"name": "platform"},
                          "spec": {"members": [{"user": "carol", "role": "owner"}]}}),
    )
    .await;
    let team = settle(&teams, "platform", &w.ctx, controller::reconcile::<Team>).await;
    assert_eq!(ready(&team).1, "UserNotFound");
    let users: Api<User> = Api::all(w.client.clone());
    create(&users, user_json("carol", &[])).await;
    settle(&users, "carol", &w.ctx, controller::reconcile::<User>).await;
    let team = settle(&teams, "platform", &w.ctx, controller::reconcile::<Team>).await;
    assert_eq!(ready(&team).1, "Reconciled");
    assert_eq!(
        w.store.get_team("platform").await.unwrap().unwrap().members,
        vec![("carol".to_string(), TeamRole::Owner)]
    );
}

async fn api_key_world(test: &str) -> (World, Api<ApiKey>, Api<Secret>) {
    let w = world(test).await;
    bootstrap::run(&w.store, &w.client, "portcullis-system").await.unwrap();
    let users: Api<User> = Api::all(w.client.clone());
    let mut bob = user_json("bob", &["viewer"]);
    bob["spec"]["apiKeyNamespaces"] = json!(["shop", "web"]);
    create(&users, bob).await;
    settle(&users, "bob", &w.ctx, controller::reconcile::<User>).await;
    let keys: Api<ApiKey> = Api::namespaced(w.client.clone(), "shop");
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), "shop");
    (w, keys, secrets)
}

fn key_json(name: &str, scopes: &[&str]) -> serde_json::Value {
    json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "APIKey", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"owner": {"user": "bob"}, "scopes": scopes}})
}

fn key_in(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["api-key"].0.clone()).unwrap()
}

#[tokio::test]
async fn api_key_is_generated_once_hashed_and_owned() {
    let (w, keys, secrets) = api_key_world("apikey_once").await;
    create(&keys, key_json("bob-cli", &["read"])).await;
    let key = settle(&keys, "bob-cli", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key).1, "Reconciled");
    let secret = secrets.get("bob-cli-apikey").await.unwrap();
    let plain = key_in(&secret);
    assert!(plain.starts_with("pck_") && plain.len() > 40);
    assert_eq!(secret.owner_references()[0].uid, key.metadata.uid.clone().unwrap());
    let row = w
        .store
        .find_api_key(&credentials::hash_api_key(&plain))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.owner_kind, row.owner_name.as_str(), row.scopes.clone()),
        (OwnerKind::User, "bob", vec!["read".to_string()])
    );
    assert_eq!(key.status.as_ref().unwrap().prefix.as_deref(), Some(&plain[..12]));

    // Resync: same key, nothing regenerated; a row deleted behind our back comes back.
    w.store.delete_api_keys("shop", "bob-cli").await.unwrap();
    settle(&keys, "bob-cli", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(key_in(&secrets.get("bob-cli-apikey").await.unwrap()), plain);
    assert!(
        w.store
            .find_api_key(&credentials::hash_api_key(&plain))
            .await
            .unwrap()
            .is_some(),
        "drift repaired"
    );

    // Deleting the APIKey revokes it at once.
    keys.delete("bob-cli", &DeleteParams::default()).await.unwrap();
    let _ = controller::reconcile::<ApiKey>(Arc::new(keys.get("bob-cli").await.unwrap()), w.ctx.clone()).await;
    assert!(
        w.store
            .find_api_key(&credentials::hash_api_key(&plain))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn api_key_scopes_are_capped_at_the_owners() {
    let (w, keys, _) = api_key_world("apikey_scopes").await;
    create(&keys, key_json("too-wide", &["read", "write"])).await;
    let key = settle(&keys, "too-wide", &w.ctx, controller::reconcile::<ApiKey>).await;
    let (status, reason) = ready(&key);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ScopesExceedOwner"));
    let rows = w.store.api_keys_of("shop", "too-wide").await.unwrap();
    assert_eq!(rows[0].scopes, vec!["read".to_string()], "write is not granted");
}

#[tokio::test]
async fn no_key_is_minted_for_a_user_who_did_not_allow_the_namespace() {
    let (w, keys, secrets) = api_key_world("apikey_borrowed").await;
    // The bootstrap admin allows keys nowhere; bob allows `shop` and `web`, not `other`.
    let mut borrow = key_json("borrow-admin", &["read", "write", "admin"]);
    borrow["spec"]["owner"] = json!({"user": bootstrap::ADMIN_USER});
    create(&keys, borrow).await;
    let key = settle(&keys, "borrow-admin", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key), ("False".into(), "NamespaceNotAllowed".into()));
    assert!(
        secrets.get_opt("borrow-admin-apikey").await.unwrap().is_none(),
        "no Secret minted"
    );
    assert!(w.store.api_keys_of("shop", "borrow-admin").await.unwrap().is_empty());

    let elsewhere: Api<ApiKey> = Api::namespaced(w.client.clone(), "other");
    let mut other = key_json("bob-other", &["read"]);
    other["metadata"]["namespace"] = json!("other");
    create(&elsewhere, other).await;
    let key = settle(&elsewhere, "bob-other", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key), ("False".into(), "NamespaceNotAllowed".into()));
    let other_secrets: Api<Secret> = Api::namespaced(w.client.clone(), "other");
    assert!(other_secrets.get_opt("bob-other-apikey").await.unwrap().is_none());

    // Allowed, then withdrawn: the key issued before goes at once.
    create(&keys, key_json("bob-cli", &["read"])).await;
    settle(&keys, "bob-cli", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(w.store.api_keys_of("shop", "bob-cli").await.unwrap().len(), 1);
    let users: Api<User> = Api::all(w.client.clone());
    let mut bob = users.get("bob").await.unwrap();
    bob.spec.api_key_namespaces = vec!["web".into()];
    users.replace("bob", &PostParams::default(), &bob).await.unwrap();
    let key = settle(&keys, "bob-cli", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key).1, "NamespaceNotAllowed");
    assert!(
        w.store.api_keys_of("shop", "bob-cli").await.unwrap().is_empty(),
        "revoked"
    );
}

#[tokio::test]
async fn a_key_carries_roles_teams_and_namespaces_only_when_asked_and_held() {
    let (w, keys, _) = api_key_world("apikey_roles").await;
    let teams: Api<Team> = Api::all(w.client.clone());
    create(
        &teams,
        json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Team", "metadata": {"name": "platform"},
                          "spec": {"members": [{"user": "bob", "role": "member"}]}}),
    )
    .await;
    settle(&teams, "platform", &w.ctx, controller::reconcile::<Team>).await;

    create(&keys, key_json("plain", &["read"])).await;
    settle(&keys, "plain", &w.ctx, controller::reconcile::<ApiKey>).await;
    let plain = &w.store.api_keys_of("shop", "plain").await.unwrap()[0];
    assert!(plain.roles.is_empty() && plain.teams.is_empty() && plain.honoured_in.is_empty());

    let mut asks = key_json("asks", &["read"]);
    asks["spec"]["roles"] = json!(["viewer"]);
    asks["spec"]["teams"] = json!(["platform"]);
    asks["spec"]["honouredIn"] = json!(["web"]);
    create(&keys, asks).await;
    let key = settle(&keys, "asks", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key).1, "Reconciled");
    let row = &w.store.api_keys_of("shop", "asks").await.unwrap()[0];
    assert_eq!(
        (row.roles.clone(), row.teams.clone(), row.honoured_in.clone()),
        (
            vec!["viewer".to_string()],
            vec!["platform".to_string()],
            vec!["web".to_string()]
        )
    );
    let snapshot = w.store.read_snapshot(unix_now()).await.unwrap();
    let entry = snapshot.api_keys.iter().find(|k| k.key_hash == row.key_hash).unwrap();
    assert_eq!(
        (entry.roles.as_slice(), entry.honoured_in.as_slice()),
        (&["viewer".to_string()][..], &["web".to_string()][..])
    );

    let mut greedy = key_json("greedy", &["read"]);
    greedy["spec"]["roles"] = json!(["admin", "viewer"]);
    greedy["spec"]["teams"] = json!(["secret-team"]);
    create(&keys, greedy).await;
    let key = settle(&keys, "greedy", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key), ("False".into(), "RolesExceedOwner".into()));
    let row = &w.store.api_keys_of("shop", "greedy").await.unwrap()[0];
    assert_eq!(
        (row.roles.clone(), row.teams.clone()),
        (vec!["viewer".to_string()], Vec::<String>::new())
    );

    let mut roams = key_json("roams", &["read"]);
    roams["spec"]["honouredIn"] = json!(["web", "prod"]);
    create(&keys, roams).await;
    let key = settle(&keys, "roams", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(ready(&key), ("False".into(), "NamespaceNotAllowed".into()));
    let row = &w.store.api_keys_of("shop", "roams").await.unwrap()[0];
    assert_eq!(row.honoured_in, vec!["web".to_string()], "prod is not bob's to allow");
}

#[tokio::test]
async fn api_key_rotation_keeps_the_old_key_for_the_grace_period() {
    let (w, keys, secrets) = api_key_world("apikey_rotation").await;
    create(&keys, key_json("ci", &["read"])).await;
    settle(&keys, "ci", &w.ctx, controller::reconcile::<ApiKey>).await;
    let old = key_in(&secrets.get("ci-apikey").await.unwrap());
    let mut key = keys.get("ci").await.unwrap();
    key.metadata.annotations = Some(BTreeMap::from([(
        "portcullis.io/rotate".to_string(),
        "2026-11-24".to_string(),
    )]));
    keys.replace("ci", &PostParams::default(), &key).await.unwrap();
    let before = unix_now();
    let rotated = settle(&keys, "ci", &w.ctx, controller::reconcile::<ApiKey>).await;
    let new = key_in(&secrets.get("ci-apikey").await.unwrap());
    assert_ne!(new, old);
    assert_eq!(rotated.status.as_ref().unwrap().rotation.as_deref(), Some("2026-11-24"));
    let old_row = w
        .store
        .find_api_key(&credentials::hash_api_key(&old))
        .await
        .unwrap()
        .unwrap();
    let grace = w.ctx.config.rotation_grace.as_secs() as i64;
    let retire = old_row.revoked_at.expect("old key retires");
    assert!(
        retire >= before + grace && retire <= unix_now() + grace,
        "old key works for the grace period"
    );
    assert_eq!(
        w.store
            .find_api_key(&credentials::hash_api_key(&new))
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    // The same annotation value does not rotate again.
    settle(&keys, "ci", &w.ctx, controller::reconcile::<ApiKey>).await;
    assert_eq!(key_in(&secrets.get("ci-apikey").await.unwrap()), new);
}

#[tokio::test]
async fn source_gets_its_own_write_key() {
    let w = world("source_key").await;
    let sources: Api<Source> = Api::namespaced(w.client.clone(), "shop");
    create(&sources, json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Source", "metadata": {"name": "edge-syslog", "namespace": "shop"},
                            "spec": {"type": "syslog"}})).await;
    let source = settle(&sources, "edge-syslog", &w.ctx, controller::reconcile::<Source>).await;
    assert_eq!(ready(&source).1, "Reconciled");
    let secret: Api<Secret> = Api::namespaced(w.client.clone(), "shop");
    let plain = key_in(&secret.get("edge-syslog-source-key").await.unwrap());
    let row = w
        .store
        .find_api_key(&credentials::hash_api_key(&plain))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (row.owner_kind, row.scopes.clone()),
        (OwnerKind::Source, vec!["write".to_string()])
    );
    sources.delete("edge-syslog", &DeleteParams::default()).await.unwrap();
    let _ = controller::reconcile::<Source>(Arc::new(sources.get("edge-syslog").await.unwrap()), w.ctx.clone()).await;
    assert!(w.store.find_api_key(&row.key_hash).await.unwrap().is_none());
    assert!(w.store.get_source("shop", "edge-syslog").await.unwrap().is_none());
}

#[tokio::test]
async fn access_policy_with_a_bad_glob_is_not_ready() {
    let w = world("policy_glob").await;
    let policies: Api<AccessPolicy> = Api::namespaced(w.client.clone(), "shop");
    create(&policies, json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "api", "namespace": "shop"},
                             "spec": {"rules": [{"name": "r", "paths": ["/a/**/b"]}]}})).await;
    let policy = settle(&policies, "api", &w.ctx, controller::reconcile::<AccessPolicy>).await;
    assert_eq!(ready(&policy).1, "InvalidPolicy");
    assert!(w.store.get_policy("shop", "api").await.unwrap().is_none());
    let mut fixed = policy.clone();
    fixed.spec.rules[0].paths = vec!["/a/**".into()];
    policies.replace("api", &PostParams::default(), &fixed).await.unwrap();
    let policy = settle(&policies, "api", &w.ctx, controller::reconcile::<AccessPolicy>).await;
    assert_eq!(ready(&policy).1, "Reconciled");
    assert_eq!(
        w.store.get_policy("shop", "api").await.unwrap().unwrap().rules[0].paths,
        ["/a/**"]
    );
}

#[tokio::test]
async fn access_policy_granting_credentials_to_any_origin_is_not_applied() {
    let w = world("policy_cors").await;
    let policies: Api<AccessPolicy> = Api::namespaced(w.client.clone(), "shop");
    create(&policies, json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "api", "namespace": "shop"},
                             "spec": {"rules": [{"name": "r", "paths": ["/a/**"]}],
                                      "cors": {"allowedOrigins": ["*"], "allowCredentials": true}}})).await;
    let policy = settle(&policies, "api", &w.ctx, controller::reconcile::<AccessPolicy>).await;
    assert_eq!(ready(&policy).1, "InvalidPolicy");
    assert!(w.store.get_policy("shop", "api").await.unwrap().is_none());
    let mut fixed = policy.clone();
    fixed.spec.cors.as_mut().unwrap().allowed_origins = vec!["https://app.example.com".into()];
    policies.replace("api", &PostParams::default(), &fixed).await.unwrap();
    let policy = settle(&policies, "api", &w.ctx, controller::reconcile::<AccessPolicy>).await;
    assert_eq!(ready(&policy).1, "Reconciled");
}

#[tokio::test]
async fn paused_objects_are_left_alone() {
    let w = world("paused").await;
    let api: Api<Role> = Api::all(w.client.clone());
    create(&api, json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Role",
                        "metadata": {"name": "frozen", "annotations": {"portcullis.io/paused": "true"}}, "spec": {"scopes": ["read"]}})).await;
    let role = settle(&api, "frozen", &w.ctx, controller::reconcile::<Role>).await;
    assert!(w.store.get_role("frozen").await.unwrap().is_none());
    assert!(
        role.conditions()
            .iter()
            .any(|c| c.type_ == "Paused" && c.status == "True")
    );
}

#[tokio::test]
async fn bootstrap_is_idempotent_and_never_logs_a_known_password() {
    let w = world("bootstrap").await;
    let first = bootstrap::run(&w.store, &w.client, "portcullis-system").await.unwrap();
    assert_eq!(first.roles_created, ["admin", "maintainer", "viewer"]);
    assert!(first.admin_created && first.secret_created);
    let secrets: Api<Secret> = Api::namespaced(w.client.clone(), "portcullis-system");
    let secret = secrets.get(bootstrap::ADMIN_SECRET).await.unwrap();
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert_eq!(password.len(), 24);
    let hash = w.store.password("admin").await.unwrap().unwrap().hash;
    assert!(credentials::verify_password(&password, &hash));
    assert_eq!(
        w.store.get_user("admin").await.unwrap().unwrap().email,
        bootstrap::ADMIN_EMAIL
    );

    let rev = w.store.revision().await.unwrap();
    let second = bootstrap::run(&w.store, &w.client, "portcullis-system").await.unwrap();
    assert_eq!(second, bootstrap::Report::default());
    assert_eq!(w.store.revision().await.unwrap(), rev, "a second run writes nothing");
    assert_eq!(w.store.password("admin").await.unwrap().unwrap().hash, hash);
}

#[tokio::test]
async fn local_mode_applies_the_examples() {
    let w = world("local_examples").await;
    bootstrap::run(&w.store, &w.client, "portcullis-system").await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let (manifests, problems) = local::load_dir(&dir).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let applied = local::sync_objects(&w.client, &manifests, &Default::default())
        .await
        .unwrap();
    let statuses = local::converge(&w.ctx).await.unwrap();
    assert_eq!(statuses.len(), 7, "{statuses:#?}");
    for s in &statuses {
        assert_eq!((s.ready.as_str(), s.reason.as_str()), ("True", "Reconciled"), "{s}");
    }
    let snapshot = w.store.read_snapshot(unix_now()).await.unwrap();
    let bob = snapshot.users.iter().find(|u| u.name == "bob").unwrap();
    assert_eq!(bob.teams[0].team, "platform");
    assert_eq!(snapshot.policies[0].rules.len(), 6);
    assert_eq!(snapshot.api_keys.len(), 2, "bob-cli and the edge-syslog source key");

    // Removing a manifest deletes the object and, through the finalizer, its rows.
    let without_key: Vec<_> = manifests.iter().filter(|m| m.kind != "APIKey").cloned().collect();
    local::sync_objects(&w.client, &without_key, &applied).await.unwrap();
    local::converge(&w.ctx).await.unwrap();
    assert!(w.store.api_keys_of("shop", "bob-cli").await.unwrap().is_empty());
}

/// The database goes away in the middle of the work: status says so, nothing is lost
/// or duplicated, the finalizer holds a deleted object until its rows are gone, and
/// everything recovers when the database is back.
#[cfg_attr(not(portcullis_test_postgres), ignore = "set TEST_POSTGRES_URL to run on PostgreSQL")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_mid_reconcile_recovers_without_loss() {
    let db = TestDb::new(Kind::Postgres, "controller_outage").await;
    let target = {
        let u = url::Url::parse(&db.url).unwrap();
        let host = u.host_str().unwrap().to_string();
        tokio::net::lookup_host((host.as_str(), u.port().unwrap_or(5432)))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let outage = support::Outage::start(target).await;
    let mut config = portcullis_operator::store::DbConfig::from_url(&outage.url_for(&db.url)).unwrap();
    config.acquire_timeout = std::time::Duration::from_millis(500);
    config.pool_size = 2;
    let store = Store::open(&config).await.unwrap();
    let client = local::memory_api();
    let ctx = Context::new(
        client.clone(),
        store.clone(),
        Config::default(),
        Arc::new(Metrics::new()),
    );
    bootstrap::run(&store, &client, "portcullis-system").await.unwrap();

    let users: Api<User> = Api::all(client.clone());
    create(&users, user_json("dora", &["viewer"])).await;
    // First pass adds the finalizer; then the database goes away.
    let _ = controller::reconcile::<User>(Arc::new(users.get("dora").await.unwrap()), ctx.clone()).await;
    outage.cut();
    let err = controller::reconcile::<User>(Arc::new(users.get("dora").await.unwrap()), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "DatabaseUnavailable", "{err}");
    assert_eq!(
        controller::error_policy(Arc::new(()), &err, ctx.clone()),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(5))
    );
    let dora = users.get("dora").await.unwrap();
    assert_eq!(ready(&dora), ("False".into(), "DatabaseUnavailable".into()));

    outage.restore();
    let dora = settle(&users, "dora", &ctx, controller::reconcile::<User>).await;
    assert_eq!(ready(&dora), ("True".into(), "Reconciled".into()));
    let snapshot = db.store.read_snapshot(unix_now()).await.unwrap();
    assert_eq!(
        snapshot.users.iter().filter(|u| u.name == "dora").count(),
        1,
        "one row, not two"
    );
    assert_eq!(db.store.get_user("dora").await.unwrap().unwrap().roles, ["viewer"]);

    // Deleted while the database is down: the finalizer keeps the object.
    users.delete("dora", &DeleteParams::default()).await.unwrap();
    outage.cut();
    let _ = controller::reconcile::<User>(Arc::new(users.get("dora").await.unwrap()), ctx.clone()).await;
    assert!(
        users.get_opt("dora").await.unwrap().is_some(),
        "kept until its rows are gone"
    );
    assert!(db.store.get_user("dora").await.unwrap().is_some());
    outage.restore();
    let _ = controller::reconcile::<User>(Arc::new(users.get("dora").await.unwrap()), ctx.clone()).await;
    assert!(users.get_opt("dora").await.unwrap().is_none());
    assert!(db.store.get_user("dora").await.unwrap().is_none(), "nothing orphaned");
    store.close().await;
    db.finish().await;
}

/// A JWKS endpoint on loopback whose answer (status, body) the test sets.
async fn jwks_server(answer: Arc<std::sync::Mutex<(u16, String)>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (status, body) = answer.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nCache-Control: max-age=600\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_issuers_keys_are_fetched_shipped_and_kept_when_the_provider_fails() {
    let w = world("issuer_keys").await;
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "x": "eA", "y": "eQ"},
        {"kty": "oct", "kid": "shared", "alg": "HS256", "k": "c2VjcmV0"}
    ]});
    let answer = Arc::new(std::sync::Mutex::new((200, jwks.to_string())));
    let base = jwks_server(answer.clone()).await;
    let api: Api<Issuer> = Api::all(w.client.clone());
    create(
        &api,
        json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Issuer", "metadata": {"name": "idp"},
               "spec": {"issuer": base, "jwksUri": format!("{base}/jwks"), "audiences": ["shop-api"], "algorithms": ["ES256"],
                        "claims": {"roles": "groups", "teams": "org_teams"}}}),
    )
    .await;
    let issuer = settle(&api, "idp", &w.ctx, controller::reconcile::<Issuer>).await;
    assert_eq!(ready(&issuer).0, "True", "{:?}", issuer.status);
    let status = issuer.status.clone().unwrap();
    assert_eq!(
        status.key_count,
        Some(1),
        "the symmetric key is never taken from outside"
    );
    assert!(status.last_refresh.is_some());
    let snapshot = w.store.read_snapshot(unix_now()).await.unwrap();
    assert_eq!(snapshot.jwt_issuers.len(), 1);
    let shipped = &snapshot.jwt_issuers[0];
    assert_eq!(
        (shipped.issuer.as_str(), shipped.audiences.as_slice()),
        (base.as_str(), &["shop-api".to_string()][..])
    );
    assert_eq!(shipped.keys[0].kid.as_deref(), Some("k1"));
    // The claim mapping goes with the keys; claims not named keep their defaults.
    assert_eq!(
        shipped.claim_names,
        portcullis_wire::ClaimNames {
            roles: "groups".into(),
            scopes: "scope".into(),
            teams: "org_teams".into(),
            email: "email".into(),
        }
    );

    // The provider fails: a refetch keeps the last good keys, and the status says so.
    *answer.lock().unwrap() = (500, "{}".into());
    let revision = w.store.revision().await.unwrap();
    let fetcher = w.ctx.issuer_fetcher();
    assert!(
        portcullis_operator::issuers::refresh(&w.store, &fetcher, "idp")
            .await
            .is_err()
    );
    assert_eq!(
        w.store.revision().await.unwrap(),
        revision,
        "nothing changed for sidecars"
    );
    assert_eq!(
        w.store.read_snapshot(unix_now()).await.unwrap().jwt_issuers[0]
            .keys
            .len(),
        1
    );
    // Make the held keys stale, as max-age running out would, and reconcile.
    w.store
        .store_issuer_keys(
            "idp",
            &portcullis_operator::store::IssuerKeys {
                keys: shipped.keys.clone(),
                fetched_at: Some(unix_now() - 700),
                expires_at: Some(unix_now() - 100),
            },
        )
        .await
        .unwrap();
    let issuer = settle(&api, "idp", &w.ctx, controller::reconcile::<Issuer>).await;
    let (ready_status, reason) = ready(&issuer);
    assert_eq!((ready_status.as_str(), reason.as_str()), ("False", "RefreshFailed"));
    assert_eq!(issuer.status.unwrap().key_count, Some(1));

    // Deleting the Issuer removes it from snapshots.
    api.delete("idp", &DeleteParams::default()).await.unwrap();
    settle_deleted(&api, "idp", &w.ctx).await;
    assert!(w.store.read_snapshot(unix_now()).await.unwrap().jwt_issuers.is_empty());
}

async fn settle_deleted(api: &Api<Issuer>, name: &str, ctx: &Arc<Context>) {
    for _ in 0..3 {
        match api.get_opt(name).await.unwrap() {
            Some(current) => {
                let _ = controller::reconcile(Arc::new(current), ctx.clone()).await;
            }
            None => return,
        }
    }
    assert!(
        api.get_opt(name).await.unwrap().is_none(),
        "the finalizer let the Issuer go"
    );
}
