//! The store suite, written once and run on SQLite, PostgreSQL and MariaDB/MySQL.
//!
//! SQLite runs always. PostgreSQL, MySQL and Galera (through its first node) run when
//! `TEST_POSTGRES_URL` / `TEST_MYSQL_URL` / `TEST_GALERA_URLS` are set at build time (CI
//! sets them); otherwise they show as ignored. Galera through several nodes at once,
//! and with nodes failing, is in `galera.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use portcullis_operator::store::{
    ApiKeyRow, AuditEvent, Backend, KeyGrants, PolicyRow, RequestAudit, ResetTokenRow, RetryPolicy, RoleRow,
    SessionRow, SourceRow, Store, StoreError, TeamRow, UserRow, unix_now, with_retry,
};
use portcullis_wire::{HttpMethod, LabelSelector, OwnerKind, PolicyRule, RateLimit, TeamRole};
use support::{Kind, TestDb};

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::new(super::Kind::Sqlite, stringify!($test)).await;
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
                    let db = super::TestDb::new(super::Kind::Postgres, stringify!($test)).await;
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
                    let db = super::TestDb::new(super::Kind::MySql, stringify!($test)).await;
                    super::$test(&db.store).await;
                    db.finish().await;
                }
            )*
        }
        mod galera {
            $(
                #[cfg_attr(not(portcullis_test_galera), ignore = "set TEST_GALERA_URLS to run on a Galera cluster")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = super::TestDb::new(super::Kind::Galera, stringify!($test)).await;
                    super::$test(&db.store).await;
                    db.finish().await;
                }
            )*
        }
    };
}

suite!(
    fresh_database_is_at_revision_zero,
    upserts_are_idempotent,
    updates_bump_the_revision_once,
    revision_is_monotonic_across_writes,
    deleting_a_user_cascades,
    deleting_roles_and_teams_cascades_to_join_tables,
    unique_email_is_a_typed_error,
    missing_references_are_typed_errors_and_write_nothing,
    concurrent_writers_are_serialized,
    concurrent_identical_upserts_change_once,
    api_key_rotation_and_revocation,
    sessions_rotate_once_and_replay_revokes_the_chain,
    reset_tokens_work_once_and_expire,
    audit_appends_do_not_bump_the_revision,
    snapshot_holds_what_sidecars_need,
    migrations_are_idempotent,
    epoch_is_made_once_and_renewed_with_a_revision_bump,
    request_audit_is_written_and_retained_in_batches,
    revision_bumps_are_notified_on_postgres,
);

fn alice() -> UserRow {
    let mut user = UserRow::new("alice", "alice@example.com").with_roles(["admin"]);
    user.display_name = Some("Alice Liddell".into());
    user.preferences = BTreeMap::from([("theme".to_string(), "dark".to_string())]);
    user
}

async fn seed_roles(store: &Store) {
    for (name, scopes) in [("admin", vec!["read", "write", "admin"]), ("viewer", vec!["read"])] {
        store.upsert_role(&RoleRow::new(name, scopes)).await.unwrap();
    }
}

fn session(id: &str, user: &str, refresh: &str, now: i64) -> SessionRow {
    SessionRow {
        id: id.into(),
        user_name: user.into(),
        refresh_hash: refresh.into(),
        device: Some("laptop".into()),
        user_agent: Some("curl/8".into()),
        ip: Some("10.0.0.7".into()),
        created_at: now,
        expires_at: now + 3600,
        last_used_at: now,
        revoked_at: None,
        rotated_from: None,
    }
}

fn key(hash: &str, name: &str, owner: &str) -> ApiKeyRow {
    ApiKeyRow {
        key_hash: hash.into(),
        namespace: "default".into(),
        name: name.into(),
        prefix: format!("pcak_{}", &hash[..4]),
        owner_kind: OwnerKind::User,
        owner_name: owner.into(),
        scopes: vec!["read".into()],
        roles: vec![],
        teams: vec![],
        honoured_in: vec![],
        expires_at: None,
        revoked_at: None,
        created_at: unix_now(),
    }
}

fn policy() -> PolicyRow {
    PolicyRow {
        namespace: "shop".into(),
        name: "api".into(),
        pod_selector: LabelSelector {
            match_labels: BTreeMap::from([("app".into(), "api".into())]),
            ..Default::default()
        },
        rules: vec![PolicyRule {
            name: "read".into(),
            methods: vec![HttpMethod::Get],
            paths: vec!["/api/v1/**".into()],
            public: false,
            require_scopes: vec!["read".into()],
            require_roles: vec![],
            require_team_role: None,
            allow_api_key_in_query: false,
            forward_api_key: false,
            rate_limit: Some(RateLimit {
                requests_per_second: 10,
                burst: None,
            }),
        }],
        cors: None,
        audit: None,
        api_versions: None,
        path_matching: Default::default(),
    }
}

async fn fresh_database_is_at_revision_zero(store: &Store) {
    assert_eq!(store.revision().await.unwrap(), 0);
    assert!(store.list_roles().await.unwrap().is_empty());
}

async fn upserts_are_idempotent(store: &Store) {
    seed_roles(store).await;
    let rev = store.revision().await.unwrap();
    // Same scopes in another order and with a duplicate: same meaning, no change.
    let again = store
        .upsert_role(&RoleRow::new("admin", ["admin", "write", "read", "read"]))
        .await
        .unwrap();
    assert!(!again.changed);
    assert_eq!(again.revision, rev);

    let first = store.upsert_user(&alice()).await.unwrap();
    assert!(first.changed);
    let second = store.upsert_user(&alice()).await.unwrap();
    assert!(!second.changed, "{second:?}");

    let team = TeamRow::new("platform").with_member("alice", TeamRole::Owner);
    assert!(store.upsert_team(&team).await.unwrap().changed);
    assert!(!store.upsert_team(&team).await.unwrap().changed);

    let source = SourceRow {
        namespace: "default".into(),
        name: "edge-syslog".into(),
        source_type: "syslog".into(),
        team: Some("platform".into()),
        labels: BTreeMap::from([("site".into(), "edge".into())]),
        enabled: true,
        rate_limit: Some(RateLimit {
            requests_per_second: 100,
            burst: Some(200),
        }),
    };
    assert!(store.upsert_source(&source).await.unwrap().changed);
    assert!(!store.upsert_source(&source).await.unwrap().changed);
    assert_eq!(store.get_source("default", "edge-syslog").await.unwrap(), Some(source));

    assert!(store.upsert_policy(&policy()).await.unwrap().changed);
    assert!(!store.upsert_policy(&policy()).await.unwrap().changed);
    assert_eq!(store.get_policy("shop", "api").await.unwrap(), Some(policy()));

    let k = key(&"a".repeat(64), "bob-key", "alice");
    assert!(store.insert_api_key(&k).await.unwrap().changed);
    assert!(!store.insert_api_key(&k).await.unwrap().changed);

    assert_eq!(store.revision().await.unwrap(), rev + 5);
    assert_eq!(store.get_user("alice").await.unwrap(), Some(alice()));
}

async fn updates_bump_the_revision_once(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    let before = store.revision().await.unwrap();
    let mut changed = alice().with_roles(["viewer"]);
    changed.email = "alice@wonderland.example".into();
    changed.preferences.insert("reducedMotion".into(), "true".into());
    let outcome = store.upsert_user(&changed).await.unwrap();
    assert_eq!(outcome.revision, before + 1);
    assert_eq!(store.get_user("alice").await.unwrap(), Some(changed));
    assert_eq!(
        store.users_with_role("viewer").await.unwrap(),
        vec!["alice".to_string()]
    );
    assert!(store.users_with_role("admin").await.unwrap().is_empty());
    assert_eq!(
        store
            .find_user_by_email("ALICE@wonderland.example")
            .await
            .unwrap()
            .map(|u| u.name),
        Some("alice".into())
    );
}

async fn revision_is_monotonic_across_writes(store: &Store) {
    let mut last = store.revision().await.unwrap();
    for i in 0..10 {
        let outcome = store
            .upsert_role(&RoleRow::new(format!("role-{i}"), ["read"]))
            .await
            .unwrap();
        assert_eq!(outcome.revision, last + 1);
        last = outcome.revision;
        let noop = store
            .upsert_role(&RoleRow::new(format!("role-{i}"), ["read"]))
            .await
            .unwrap();
        assert_eq!(noop.revision, last);
    }
    let deleted = store.delete_role("role-3").await.unwrap();
    assert!(deleted.changed);
    assert_eq!(deleted.revision, last + 1);
    let again = store.delete_role("role-3").await.unwrap();
    assert!(!again.changed);
    assert_eq!(store.revision().await.unwrap(), last + 1);
}

async fn deleting_a_user_cascades(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    store
        .upsert_user(&UserRow::new("bob", "bob@example.com").with_roles(["viewer"]))
        .await
        .unwrap();
    store
        .upsert_team(
            &TeamRow::new("platform")
                .with_member("alice", TeamRole::Owner)
                .with_member("bob", TeamRole::Viewer),
        )
        .await
        .unwrap();
    let now = unix_now();
    store
        .create_session(&session("s1", "alice", &"1".repeat(64), now))
        .await
        .unwrap();
    store
        .create_reset_token(&ResetTokenRow {
            token_hash: "r".repeat(64),
            user_name: "alice".into(),
            created_at: now,
            expires_at: now + 3600,
            used_at: None,
        })
        .await
        .unwrap();
    store
        .insert_api_key(&key(&"b".repeat(64), "alice-key", "alice"))
        .await
        .unwrap();
    store
        .insert_api_key(&key(&"c".repeat(64), "bob-key", "bob"))
        .await
        .unwrap();
    store
        .set_password("alice", "$argon2id$v=19$stub", Some("digest"))
        .await
        .unwrap();

    assert!(store.delete_user("alice").await.unwrap().changed);

    assert_eq!(store.get_user("alice").await.unwrap(), None);
    assert!(store.users_with_role("admin").await.unwrap().is_empty());
    let team = store.get_team("platform").await.unwrap().unwrap();
    assert_eq!(team.members, vec![("bob".to_string(), TeamRole::Viewer)]);
    assert!(store.sessions_of("alice").await.unwrap().is_empty());
    assert_eq!(store.consume_reset_token(&"r".repeat(64), now).await.unwrap(), None);
    assert!(store.api_keys_of("default", "alice-key").await.unwrap().is_empty());
    assert_eq!(
        store.api_keys_of("default", "bob-key").await.unwrap().len(),
        1,
        "other users' keys stay"
    );
    assert_eq!(store.password("alice").await.unwrap(), None);
    assert!(store.get_user("bob").await.unwrap().is_some());
}

async fn deleting_roles_and_teams_cascades_to_join_tables(store: &Store) {
    seed_roles(store).await;
    store
        .upsert_user(&alice().with_roles(["admin", "viewer"]))
        .await
        .unwrap();
    store
        .upsert_team(&TeamRow::new("platform").with_member("alice", TeamRole::Admin))
        .await
        .unwrap();
    store.delete_role("admin").await.unwrap();
    assert_eq!(
        store.get_user("alice").await.unwrap().unwrap().roles,
        vec!["viewer".to_string()]
    );
    store.delete_team("platform").await.unwrap();
    assert_eq!(store.get_team("platform").await.unwrap(), None);
    let snapshot = store.read_snapshot(unix_now()).await.unwrap();
    let user = snapshot.users.iter().find(|u| u.name == "alice").unwrap();
    assert!(user.teams.is_empty());
    // Re-creating the team does not resurrect old memberships.
    store.upsert_team(&TeamRow::new("platform")).await.unwrap();
    assert!(store.get_team("platform").await.unwrap().unwrap().members.is_empty());
}

async fn unique_email_is_a_typed_error(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    let rev = store.revision().await.unwrap();
    let err = store
        .upsert_user(&UserRow::new("mallory", "ALICE@example.com"))
        .await
        .unwrap_err();
    match err {
        StoreError::EmailTaken { email, owner } => {
            assert_eq!(email, "ALICE@example.com");
            assert_eq!(owner, "alice");
        }
        other => panic!("expected EmailTaken, got {other:?}"),
    }
    assert_eq!(store.get_user("mallory").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), rev, "a failed write bumps nothing");
}

async fn missing_references_are_typed_errors_and_write_nothing(store: &Store) {
    seed_roles(store).await;
    let rev = store.revision().await.unwrap();
    let err = store
        .upsert_user(&alice().with_roles(["admin", "ghost", "phantom"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::MissingReference { kind: "role", names } if names == &["ghost", "phantom"]),
        "{err:?}"
    );
    assert_eq!(store.get_user("alice").await.unwrap(), None);
    let err = store
        .upsert_team(&TeamRow::new("platform").with_member("nobody", TeamRole::Member))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::MissingReference { kind: "user", .. }),
        "{err:?}"
    );
    assert_eq!(store.get_team("platform").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), rev);
}

async fn concurrent_writers_are_serialized(store: &Store) {
    const WRITERS: usize = 8;
    const EACH: usize = 10;
    let before = store.revision().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..EACH {
                let outcome = store
                    .upsert_role(&RoleRow::new(format!("w{w}-r{i}"), ["read"]))
                    .await
                    .unwrap();
                assert!(outcome.changed);
                revisions.push(outcome.revision);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    let expected: Vec<i64> = (1..=(WRITERS * EACH) as i64).map(|i| before + i).collect();
    assert_eq!(
        all, expected,
        "every write got its own revision, none lost, none shared"
    );
    assert_eq!(store.list_roles().await.unwrap().len(), WRITERS * EACH);
}

async fn concurrent_identical_upserts_change_once(store: &Store) {
    seed_roles(store).await;
    let before = store.revision().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.upsert_user(&alice()).await.unwrap().changed
        }));
    }
    let mut changed = 0;
    for task in tasks {
        changed += usize::from(task.await.unwrap());
    }
    assert_eq!(changed, 1);
    assert_eq!(store.revision().await.unwrap(), before + 1);
}

async fn api_key_rotation_and_revocation(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    let now = unix_now();
    let old = ApiKeyRow {
        created_at: now - 10,
        ..key(&"d".repeat(64), "ci", "alice")
    };
    let new = ApiKeyRow {
        created_at: now,
        ..key(&"e".repeat(64), "ci", "alice")
    };
    store.insert_api_key(&old).await.unwrap();
    // Rotation: the old key is retired at the end of a grace period, the new one issued.
    store.revoke_api_key(&old.key_hash, now + 300).await.unwrap();
    store.insert_api_key(&new).await.unwrap();
    // Widening scopes applies to the current key only.
    let scopes = vec!["write".to_string(), "read".to_string()];
    let grants = KeyGrants {
        roles: vec!["viewer".into()],
        ..KeyGrants::scopes_only(OwnerKind::User, "alice", &scopes, Some(now + 86400))
    };
    assert!(
        store
            .update_api_key_grants("default", "ci", &grants)
            .await
            .unwrap()
            .changed
    );
    assert!(
        !store
            .update_api_key_grants("default", "ci", &grants)
            .await
            .unwrap()
            .changed
    );
    let keys = store.api_keys_of("default", "ci").await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].key_hash, new.key_hash);
    assert_eq!(keys[0].scopes, vec!["read", "write"]);
    assert_eq!(keys[0].expires_at, Some(now + 86400));
    assert_eq!(keys[0].roles, vec!["viewer"], "roles are written with the scopes");
    assert!(
        keys[1].roles.is_empty(),
        "a key in its rotation grace keeps what it had"
    );
    assert_eq!(keys[1].scopes, vec!["read"]);
    assert_eq!(keys[1].revoked_at, Some(now + 300));
    // Deleting the object revokes everything at once, even keys in their grace period.
    assert!(store.revoke_api_keys("default", "ci", now).await.unwrap().changed);
    let keys = store.api_keys_of("default", "ci").await.unwrap();
    assert!(keys.iter().all(|k| k.revoked_at == Some(now)), "{keys:?}");
    assert!(store.delete_api_keys("default", "ci").await.unwrap().changed);
    assert_eq!(store.find_api_key(&new.key_hash).await.unwrap(), None);
}

async fn sessions_rotate_once_and_replay_revokes_the_chain(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    let now = unix_now();
    store
        .create_session(&session("s1", "alice", &"1".repeat(64), now))
        .await
        .unwrap();
    let s2 = SessionRow {
        rotated_from: Some("s1".into()),
        ..session("s2", "alice", &"2".repeat(64), now)
    };
    store.rotate_session("s1", &s2, now).await.unwrap();
    // The rotated token cannot be rotated again: that is a replay.
    let s3 = SessionRow {
        rotated_from: Some("s1".into()),
        ..session("s3", "alice", &"3".repeat(64), now)
    };
    let err = store.rotate_session("s1", &s3, now).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(
        store.find_session_by_refresh_hash(&"3".repeat(64)).await.unwrap(),
        None,
        "nothing half-written"
    );
    // The replay revokes the chain that grew from it.
    assert!(store.revoke_session_chain("s1", now).await.unwrap().changed);
    let sessions = store.sessions_of("alice").await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s.revoked_at.is_some()));
    let snapshot = store.read_snapshot(now).await.unwrap();
    assert_eq!(snapshot.revoked_sessions, vec!["s1".to_string(), "s2".to_string()]);
    store.touch_session("s2", now + 5, Some("10.0.0.8")).await.unwrap();
    let s2 = store
        .find_session_by_refresh_hash(&"2".repeat(64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s2.last_used_at, s2.ip.as_deref()), (now + 5, Some("10.0.0.8")));
    // Disabling a user revokes its sessions in the same write.
    store
        .create_session(&session("s4", "alice", &"4".repeat(64), now))
        .await
        .unwrap();
    store
        .upsert_user(&UserRow {
            disabled: true,
            ..alice()
        })
        .await
        .unwrap();
    let s4 = store
        .find_session_by_refresh_hash(&"4".repeat(64))
        .await
        .unwrap()
        .unwrap();
    assert!(s4.revoked_at.is_some());
}

async fn reset_tokens_work_once_and_expire(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    let now = unix_now();
    let token = ResetTokenRow {
        token_hash: "t".repeat(64),
        user_name: "alice".into(),
        created_at: now,
        expires_at: now + 3600,
        used_at: None,
    };
    store.create_reset_token(&token).await.unwrap();
    let expired = ResetTokenRow {
        token_hash: "x".repeat(64),
        expires_at: now - 1,
        ..token.clone()
    };
    store.create_reset_token(&expired).await.unwrap();
    assert_eq!(
        store
            .consume_reset_token(&token.token_hash, now)
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    assert_eq!(
        store.consume_reset_token(&token.token_hash, now).await.unwrap(),
        None,
        "used once"
    );
    assert_eq!(
        store.consume_reset_token(&expired.token_hash, now).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.consume_reset_token(&"n".repeat(64), now).await.unwrap(),
        None,
        "unknown"
    );
}

async fn audit_appends_do_not_bump_the_revision(store: &Store) {
    let rev = store.revision().await.unwrap();
    let events: Vec<AuditEvent> = (0..3)
        .map(|i| AuditEvent {
            occurred_at: 1_700_000_000 + i,
            correlation_id: Some(format!("corr-{i}")),
            actor: Some("user:alice".into()),
            action: "GET".into(),
            resource: Some("/api/v1/admin/users".into()),
            decision: "deny".into(),
            reason: Some("missing role admin".into()),
            source_ip: Some("10.0.0.9".into()),
        })
        .collect();
    store.append_audit(&events).await.unwrap();
    let recent = store.recent_audit(2).await.unwrap();
    assert_eq!(recent, vec![events[2].clone(), events[1].clone()]);
    assert_eq!(store.revision().await.unwrap(), rev);
}

async fn snapshot_holds_what_sidecars_need(store: &Store) {
    seed_roles(store).await;
    store.upsert_user(&alice()).await.unwrap();
    store
        .upsert_user(&UserRow::new("bob", "bob@example.com").with_roles(["viewer"]))
        .await
        .unwrap();
    store
        .upsert_team(&TeamRow::new("platform").with_member("bob", TeamRole::Member))
        .await
        .unwrap();
    store.upsert_policy(&policy()).await.unwrap();
    let now = unix_now();
    store
        .insert_api_key(&key(&"f".repeat(64), "live", "bob"))
        .await
        .unwrap();
    store
        .insert_api_key(&ApiKeyRow {
            expires_at: Some(now - 1),
            ..key(&"0".repeat(64), "expired", "bob")
        })
        .await
        .unwrap();
    store
        .insert_api_key(&ApiKeyRow {
            revoked_at: Some(now - 2 * 86400),
            ..key(&"9".repeat(64), "long-gone", "bob")
        })
        .await
        .unwrap();
    // Keys with every field set, inserted out of hash order; one revoked an hour ago
    // (still shipped, so that a refusal can say "revoked").
    let granted = ApiKeyRow {
        namespace: "shop".into(),
        roles: vec!["viewer".into()],
        teams: vec!["platform".into()],
        honoured_in: vec!["web".into(), "billing".into()],
        scopes: vec!["write".into(), "read".into()],
        expires_at: Some(now + 3600),
        ..key(&"c".repeat(64), "granted", "bob")
    };
    store.insert_api_key(&granted).await.unwrap();
    let recently_revoked = ApiKeyRow {
        revoked_at: Some(now - 3600),
        ..key(&"a".repeat(64), "recently-revoked", "alice")
    };
    store.insert_api_key(&recently_revoked).await.unwrap();

    let snapshot = store.read_snapshot(now).await.unwrap();
    assert_eq!(snapshot.revision, store.revision().await.unwrap());
    // Exactly the keys in force or revoked within the day, by hash, every field as stored.
    let entry = |k: &ApiKeyRow| {
        let mut sorted = k.clone();
        for list in [
            &mut sorted.scopes,
            &mut sorted.roles,
            &mut sorted.teams,
            &mut sorted.honoured_in,
        ] {
            list.sort();
        }
        portcullis_wire::ApiKeyEntry {
            key_hash: sorted.key_hash,
            prefix: sorted.prefix,
            namespace: sorted.namespace,
            owner_kind: sorted.owner_kind,
            owner_name: sorted.owner_name,
            scopes: sorted.scopes,
            roles: sorted.roles,
            teams: sorted.teams,
            honoured_in: sorted.honoured_in,
            expires_at: sorted.expires_at,
            revoked_at: sorted.revoked_at,
        }
    };
    assert_eq!(
        snapshot.api_keys,
        vec![
            entry(&recently_revoked),
            entry(&granted),
            entry(&key(&"f".repeat(64), "live", "bob")),
        ]
    );
    assert_eq!(
        snapshot.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["admin", "viewer"]
    );
    let bob = snapshot.users.iter().find(|u| u.name == "bob").unwrap();
    assert_eq!(bob.roles, ["viewer"]);
    assert_eq!(bob.teams.len(), 1);
    assert_eq!(
        (bob.teams[0].team.as_str(), bob.teams[0].role),
        ("platform", TeamRole::Member)
    );
    assert_eq!(snapshot.policies.len(), 1);
    assert_eq!(snapshot.policies[0].rules, policy().rules);
    assert_eq!(snapshot.policies[0].pod_selector, policy().pod_selector);
}

async fn migrations_are_idempotent(store: &Store) {
    store.upsert_role(&RoleRow::new("keep", ["read"])).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert!(
        store.get_role("keep").await.unwrap().is_some(),
        "migrating again loses nothing"
    );
}

/// Two transactions that lock two rows in opposite orders deadlock for real; the
/// server kills one, and `with_retry` runs it again to success.
async fn deadlocks_are_retried(url: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE deadlock_probe (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deadlock_probe (id, v) VALUES (1, 0), (2, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy::default();
    let run = |first: i32, second: i32| {
        let (pool, barrier, attempts) = (pool.clone(), barrier.clone(), attempts.clone());
        tokio::spawn(async move {
            let mut attempt = 0;
            with_retry(policy, "deadlock probe", || {
                attempt += 1;
                let (pool, barrier, attempts) = (pool.clone(), barrier.clone(), attempts.clone());
                let first_try = attempt == 1;
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let mut tx = pool.begin().await?;
                    let update = |id: i32| {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE deadlock_probe SET v = v + 1 WHERE id = {id}"
                        )))
                    };
                    update(first).execute(&mut *tx).await?;
                    if first_try {
                        barrier.wait().await; // both hold their first row now
                    }
                    update(second).execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok::<_, StoreError>(())
                }
            })
            .await
        })
    };
    let a = run(1, 2);
    let b = run(2, 1);
    a.await.unwrap().expect("first writer committed");
    b.await.unwrap().expect("second writer committed");
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "one side was a deadlock victim and retried"
    );
    let rows = sqlx::query("SELECT v FROM deadlock_probe ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let values: Vec<i64> = rows.iter().map(|r| sqlx::Row::get::<i64, _>(r, 0)).collect();
    assert_eq!(values, vec![2, 2], "both transactions applied exactly once");
    pool.close().await;
}

#[cfg_attr(not(portcullis_test_postgres), ignore = "set TEST_POSTGRES_URL to run on PostgreSQL")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_deadlocks_are_retried() {
    let db = TestDb::new(Kind::Postgres, "deadlocks_are_retried").await;
    deadlocks_are_retried(&db.url).await;
    db.finish().await;
}

#[cfg_attr(not(portcullis_test_mysql), ignore = "set TEST_MYSQL_URL to run on MariaDB/MySQL")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_deadlocks_are_retried() {
    let db = TestDb::new(Kind::MySql, "deadlocks_are_retried").await;
    deadlocks_are_retried(&db.url).await;
    db.finish().await;
}

#[cfg_attr(
    not(portcullis_test_galera),
    ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galera_deadlocks_are_retried() {
    let db = TestDb::new(Kind::Galera, "deadlocks_are_retried").await;
    deadlocks_are_retried(&db.url).await;
    db.finish().await;
}

async fn epoch_is_made_once_and_renewed_with_a_revision_bump(store: &Store) {
    let first = store.epoch().await.unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(store.epoch().await.unwrap(), first, "made once, then read");
    assert_eq!(store.read_snapshot(unix_now()).await.unwrap().epoch, first);
    let rev = store.revision().await.unwrap();
    let second = store.new_epoch().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(store.epoch().await.unwrap(), second);
    assert_eq!(
        store.revision().await.unwrap(),
        rev + 1,
        "replicas notice a new epoch as a new revision"
    );
    let snapshot = store.read_snapshot(unix_now()).await.unwrap();
    assert_eq!((snapshot.epoch.as_str(), snapshot.revision), (second.as_str(), rev + 1));
}

fn request(at: i64, correlation_id: &str) -> RequestAudit {
    RequestAudit {
        occurred_at: at,
        correlation_id: correlation_id.into(),
        namespace: "shop".into(),
        pod: "api-7d9f".into(),
        actor: Some("user:bob".into()),
        method: "POST".into(),
        path: "/api/v1/items".into(),
        rule: Some("shop-api/1".into()),
        decision: "deny".into(),
        reason: "forbidden".into(),
        status: 403,
        client: Some("10.1.2.3".into()),
    }
}

async fn request_audit_is_written_and_retained_in_batches(store: &Store) {
    let rev = store.revision().await.unwrap();
    let old: Vec<RequestAudit> = (0..7).map(|i| request(1_000 + i, &format!("old-{i}"))).collect();
    let new = request(unix_now(), "corr-new");
    store.append_request_audit(&old).await.unwrap();
    store.append_request_audit(std::slice::from_ref(&new)).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), rev, "audit is outside the revision");
    assert_eq!(
        store.request_audit_by_correlation("corr-new").await.unwrap(),
        vec![new.clone()]
    );
    assert_eq!(
        store.request_audit_by_correlation("old-3").await.unwrap(),
        vec![old[3].clone()]
    );
    // Seven rows past the cut, three at a time: 3, 3, 1, then none.
    let cut = unix_now() - 3600;
    let mut batches = Vec::new();
    loop {
        let n = store.delete_audit_before(cut, 3).await.unwrap();
        batches.push(n);
        if n < 3 {
            break;
        }
    }
    assert_eq!(batches, [3, 3, 1]);
    assert!(store.request_audit_by_correlation("old-0").await.unwrap().is_empty());
    assert_eq!(store.request_audit_by_correlation("corr-new").await.unwrap(), vec![new]);
}

async fn revision_bumps_are_notified_on_postgres(store: &Store) {
    let listener = store.revision_listener().await.unwrap();
    if store.backend() != Backend::Postgres {
        assert!(listener.is_none(), "only PostgreSQL can notify; the others are polled");
        return;
    }
    let mut listener = listener.unwrap();
    store.new_epoch().await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), listener.next())
        .await
        .expect("a notification for the committed bump")
        .unwrap();
    assert!(got);
}
