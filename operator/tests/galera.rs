//! The store and the reconcilers on a real three-node MariaDB Galera cluster
//! (`scripts/galera.sh`; `TEST_GALERA_URLS` names its nodes), through several nodes at
//! once and with nodes failing: a node killed in the middle of a stream of writes and
//! brought back, certification conflicts between writers on different nodes, a node
//! that lost quorum answering "WSREP has not yet prepared node for application use".
//!
//! The tests of this file take turns (they kill and isolate nodes); the store suite's
//! `galera::` tests, in another binary, use node 1 only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::Api;
use portcullis_operator::controller::{self, Config, Context, Reconciler};
use portcullis_operator::crd::Role;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::store::{Cause, RoleRow, Store, StoreError, cause};
use portcullis_operator::{health, local};
use sqlx::Connection;
use support::{Kind, TestDb, galera_urls, open_with, script_async};

/// One fault test at a time on the cluster.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings node 3 back when a test ends, even a failed one, so that the next test finds
/// three Synced nodes (nothing to do when it is already back).
struct RestartNode3;

impl Drop for RestartNode3 {
    fn drop(&mut self) {
        support::script("galera.sh", &["start-node", "3"]);
    }
}

/// A status counter of one node (`SHOW GLOBAL STATUS`).
async fn status(url: &str, name: &str) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect for status");
    let row: (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW GLOBAL STATUS LIKE '{name}'")))
        .fetch_one(&mut conn)
        .await
        .expect("status variable");
    let _ = conn.close().await;
    row.1.parse().unwrap_or_else(|_| panic!("{name} = {:?}", row.1))
}

/// Writes `role` until it is written: a write reported as failed (the node went away,
/// its quorum was lost, the retries ran out) is written again, as a reconciler's requeue
/// would. Returns the outcome and how many attempts were reported failed.
async fn write_until_done(
    store: &Store,
    role: &RoleRow,
    within: Duration,
) -> (portcullis_operator::store::WriteOutcome, u32) {
    let deadline = Instant::now() + within;
    let mut failures = 0;
    loop {
        match store.upsert_role(role).await {
            Ok(outcome) => return (outcome, failures),
            Err(err) => {
                assert!(err.is_unavailable(), "only unavailability may fail a write here: {err}");
                failures += 1;
                assert!(
                    Instant::now() < deadline,
                    "{} not written within {within:?}: {err}",
                    role.name
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Samples the revision through every node until `stop`, asserting it never goes back
/// on any node. Returns how many samples each node answered.
fn watch_revisions(stores: Vec<Store>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let mut last = vec![i64::MIN; stores.len()];
        let mut answered = vec![0; stores.len()];
        while !stop.load(Ordering::SeqCst) {
            for (n, store) in stores.iter().enumerate() {
                if let Ok(Ok(revision)) = tokio::time::timeout(Duration::from_secs(1), store.revision()).await {
                    assert!(
                        revision >= last[n],
                        "revision went back on node {}: {} after {}",
                        n + 1,
                        revision,
                        last[n]
                    );
                    last[n] = revision;
                    answered[n] += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    })
}

/// Node 3 is killed (SIGKILL) while three writers write through nodes 1, 2 and 3, and
/// started again (it catches up by IST). Every write ends committed exactly once: the
/// rows are exactly the ones written, the revision moved by exactly one per row on
/// every node, no revision was handed out twice, and it never went back on any node.
#[cfg_attr(
    not(portcullis_test_galera),
    ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_writes_loses_and_duplicates_nothing() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new(Kind::Galera, "galera_kill").await;
    let urls = galera_urls();
    let mut stores = Vec::new();
    for url in &urls {
        stores.push(open_with(&db.url_via(url), 4).await);
    }
    let start = stores[0].revision().await.unwrap();
    const ON_NODE_3: usize = 60;
    let progress = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = watch_revisions(stores.clone(), done.clone());

    let mut writers = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let (store, progress, done) = (store.clone(), progress.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut failures = 0;
            let mut slowest = Duration::ZERO;
            for i in 0.. {
                // Nodes 1 and 2 write until node 3's writer is through.
                if (n == 2 && i == ON_NODE_3) || (n < 2 && done.load(Ordering::SeqCst)) {
                    break;
                }
                let role = RoleRow::new(format!("n{}-r{i:03}", n + 1), ["read"]);
                let began = Instant::now();
                let (outcome, failed) = write_until_done(&store, &role, Duration::from_secs(180)).await;
                slowest = slowest.max(began.elapsed());
                failures += failed;
                outcomes.push((role.name, outcome, failed));
                if n == 2 {
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                if n < 2 {
                    // Paced, so that nodes 1 and 2 write during the whole outage.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            eprintln!(
                "kill: writer through node {}: {} rows, slowest write {slowest:?}, store errors: {}",
                n + 1,
                outcomes.len(),
                support::error_summary(&store)
            );
            (outcomes, failures)
        }));
    }
    // Kill node 3 a third of the way through its writer's stream, then bring it back.
    while progress.load(Ordering::SeqCst) < ON_NODE_3 / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _restart = RestartNode3;
    script_async("galera.sh", &["kill", "3"]).await;
    let killed_at = progress.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    script_async("galera.sh", &["start-node", "3"]).await;
    let third = writers.pop().unwrap().await.unwrap();
    done.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for w in writers {
        results.push(w.await.unwrap());
    }
    results.push(third);
    let answered = sampler.await.unwrap();

    let (third_outcomes, third_failures) = &results[2];
    assert!(
        *third_failures > 0,
        "node 3's writer met the outage (killed after {killed_at} of its writes)"
    );
    let expected: BTreeSet<String> = results
        .iter()
        .flat_map(|(outcomes, _)| outcomes.iter().map(|(name, _, _)| name.clone()))
        .collect();
    let written = expected.len();
    // A write whose answer was lost with the node may have committed: its retry then
    // finds the row and changes nothing. Either way, one revision per row.
    let changed: Vec<i64> = results
        .iter()
        .flat_map(|(outcomes, _)| {
            outcomes
                .iter()
                .filter(|(_, o, _)| o.changed)
                .map(|(_, o, _)| o.revision)
        })
        .collect();
    let ambiguous = results
        .iter()
        .flat_map(|(outcomes, _)| outcomes.iter())
        .filter(|(_, o, failed)| !o.changed && *failed > 0)
        .count();
    assert_eq!(changed.len() + ambiguous, written, "each write committed once");
    let unique: BTreeSet<i64> = changed.iter().copied().collect();
    assert_eq!(unique.len(), changed.len(), "no revision handed out twice");
    for (n, (outcomes, _)) in results.iter().enumerate() {
        let revisions: Vec<i64> = outcomes
            .iter()
            .filter(|(_, o, _)| o.changed)
            .map(|(_, o, _)| o.revision)
            .collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "writer {} saw its revisions go back: {revisions:?}",
            n + 1
        );
    }
    for (n, store) in stores.iter().enumerate() {
        let names: BTreeSet<String> = store.list_roles().await.unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, expected, "node {} holds exactly the rows written", n + 1);
        assert_eq!(
            store.revision().await.unwrap(),
            start + written as i64,
            "node {}: one revision per row",
            n + 1
        );
        assert!(answered[n] > 0, "node {} was sampled", n + 1);
    }
    eprintln!(
        "kill: {written} rows; node 3's writer reported {third_failures} failed attempts ({} rows), {ambiguous} commits whose answer was lost",
        third_outcomes.len(),
    );
    for store in stores {
        store.close().await;
    }
    db.finish().await;
}

/// Two writers update the same rows at the same time through nodes 1 and 2: Galera's
/// certification makes one of each conflicting pair lose (error 1213 at commit); the
/// store runs it again. Every update is applied once and the last one wins.
#[cfg_attr(
    not(portcullis_test_galera),
    ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certification_conflicts_between_nodes_are_retried() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new(Kind::Galera, "galera_certification").await;
    let urls = galera_urls();
    let a = open_with(&db.url_via(&urls[0]), 4).await;
    let b = open_with(&db.url_via(&urls[1]), 4).await;
    const ROWS: usize = 5;
    const EACH: usize = 40;
    for r in 0..ROWS {
        a.upsert_role(&RoleRow::new(format!("shared-{r}"), ["read"]))
            .await
            .unwrap();
    }
    let start = a.revision().await.unwrap();
    let conflicts_before =
        status(&urls[0], "wsrep_local_cert_failures").await + status(&urls[1], "wsrep_local_cert_failures").await;
    let aborts_before =
        status(&urls[0], "wsrep_local_bf_aborts").await + status(&urls[1], "wsrep_local_bf_aborts").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let writer = |store: Store, who: &'static str| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            let mut writes = Vec::new();
            for i in 0..EACH {
                let role = RoleRow::new(format!("shared-{}", i % ROWS), [format!("{who}:{i}")]);
                // Every update changes the row: a reported failure here fails the test.
                let outcome = store.upsert_role(&role).await.expect("retried to success");
                assert!(outcome.changed);
                writes.push((role, outcome.revision));
            }
            writes
        })
    };
    let (wa, wb) = (writer(a.clone(), "a"), writer(b.clone(), "b"));
    let mut writes = wa.await.unwrap();
    writes.extend(wb.await.unwrap());

    let retried = a.error_counts().retried(Cause::Deadlock) + b.error_counts().retried(Cause::Deadlock);
    let conflicts = status(&urls[0], "wsrep_local_cert_failures").await
        + status(&urls[1], "wsrep_local_cert_failures").await
        - conflicts_before;
    let aborts = status(&urls[0], "wsrep_local_bf_aborts").await + status(&urls[1], "wsrep_local_bf_aborts").await
        - aborts_before;
    eprintln!(
        "certification: {retried} retries after 1213; nodes counted {conflicts} certification failures and {aborts} brute-force aborts"
    );
    assert!(retried > 0, "the writers met conflicts and retried them");
    assert!(
        conflicts + aborts > 0,
        "Galera saw the conflicts (certification failures or brute-force aborts)"
    );
    assert_eq!(
        a.error_counts().failed(Cause::Deadlock) + b.error_counts().failed(Cause::Deadlock),
        0
    );

    // Each update committed exactly once, in revision order; the last one per row wins,
    // and all three nodes agree.
    let revisions: BTreeSet<i64> = writes.iter().map(|(_, r)| *r).collect();
    if revisions.len() != 2 * EACH {
        let mut by_revision: BTreeMap<i64, Vec<&RoleRow>> = BTreeMap::new();
        for (role, revision) in &writes {
            by_revision.entry(*revision).or_default().push(role);
        }
        by_revision.retain(|_, roles| roles.len() > 1);
        eprintln!(
            "revisions reported twice: {by_revision:?}; start {start}; now {}",
            a.revision().await.unwrap()
        );
    }
    assert_eq!(revisions.len(), 2 * EACH, "one revision per update");
    assert_eq!(
        revisions.iter().copied().collect::<Vec<_>>(),
        ((start + 1)..=(start + 2 * EACH as i64)).collect::<Vec<_>>()
    );
    let mut last: BTreeMap<String, (i64, Vec<String>)> = BTreeMap::new();
    for (role, revision) in &writes {
        let entry = last.entry(role.name.clone()).or_insert((i64::MIN, Vec::new()));
        if *revision > entry.0 {
            *entry = (*revision, role.scopes.clone());
        }
    }
    for url in &urls {
        let store = open_with(&db.url_via(url), 1).await;
        assert_eq!(store.revision().await.unwrap(), start + 2 * EACH as i64);
        for (name, (_, scopes)) in &last {
            assert_eq!(
                &store.get_role(name).await.unwrap().unwrap().scopes,
                scopes,
                "{name} on {url}"
            );
        }
        store.close().await;
    }
    a.close().await;
    b.close().await;
    db.finish().await;
}

/// Node 3 is cut off the group: it loses quorum and answers every statement with
/// "WSREP has not yet prepared node for application use". The store retries, then
/// reports the node unavailable with that reason (a reconcile says DatabaseUnavailable,
/// `/readyz` says why); nodes 1 and 2 keep working; when node 3 is back the same store
/// works again, without a restart.
#[cfg_attr(
    not(portcullis_test_galera),
    ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quorum_is_reported_and_recovers() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new(Kind::Galera, "galera_quorum").await;
    let urls = galera_urls();
    let healthy = open_with(&db.url_via(&urls[0]), 2).await;
    let isolated = open_with(&db.url_via(&urls[2]), 2).await;
    isolated.upsert_role(&RoleRow::new("before", ["read"])).await.unwrap();

    struct Heal;
    impl Drop for Heal {
        fn drop(&mut self) {
            support::script("galera.sh", &["heal", "3"]);
        }
    }
    script_async("galera.sh", &["isolate", "3"]).await;
    let heal = Heal;

    // An upsert's first, lock-free read is refused at once: reported, not retried (the
    // reconcile's requeue retries it); a write transaction is retried, then reported.
    for attempt in [
        isolated.upsert_role(&RoleRow::new("during", ["read"])).await,
        isolated.delete_role("before").await,
    ] {
        let err = attempt.expect_err("a node without quorum refuses reads and writes");
        let StoreError::Database(inner) = &err else {
            panic!("expected a database error, got {err:?}")
        };
        eprintln!("quorum: {err}");
        // Reads wait for the cluster (wsrep_sync_wait) and fail with 1205, the rest
        // with 1047; both are worth retrying, and both end as "unavailable".
        assert!(
            matches!(cause(inner), Cause::NodeNotReady | Cause::LockTimeout),
            "{err}"
        );
        assert!(err.is_unavailable(), "reported as unavailable, not as a refused change");
    }
    let counts = isolated.error_counts();
    assert!(
        counts.retried(Cause::NodeNotReady) + counts.retried(Cause::LockTimeout) > 0,
        "the transaction was retried before giving up"
    );
    assert_eq!(
        counts.failed(Cause::NodeNotReady) + counts.failed(Cause::LockTimeout),
        1
    );

    // What the operator says about it: the reconcile's status, the readiness probe, metrics.
    let client = local::memory_api();
    let metrics = Arc::new(Metrics::new());
    metrics.observe_store(&isolated);
    let ctx = Context::new(client.clone(), isolated.clone(), Config::default(), metrics.clone());
    let roles: Api<portcullis_operator::crd::Role> = Api::all(client.clone());
    roles
        .create(
            &Default::default(),
            &serde_json::from_value(
                serde_json::json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Role",
                "metadata": {"name": "during-reconcile"}, "spec": {"scopes": ["read"]}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let role = roles.get("during-reconcile").await.unwrap();
        let _ = controller::reconcile::<Role>(Arc::new(role), ctx.clone()).await;
    }
    let role = roles.get("during-reconcile").await.unwrap();
    let ready = role.conditions().iter().find(|c| c.type_ == "Ready").unwrap().clone();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DatabaseUnavailable")
    );
    let probe = health::probe_and_record(&isolated, &metrics).await.unwrap_err();
    // Reads are causal (wsrep_sync_wait): on a node without quorum they fail with 1205,
    // "Lock wait timeout exceeded"; /readyz adds the node's own account of its state.
    assert!(
        probe.contains("Galera node not ready: wsrep_ready=OFF, wsrep_cluster_status=non-Primary"),
        "{probe}"
    );
    eprintln!("quorum: reconcile said {:?}; /readyz says {probe:?}", ready.message);
    let text = metrics.render();
    assert!(text.lines().any(|l| l == "portcullis_operator_database_up 0"), "{text}");
    for counted in [
        r#"portcullis_operator_database_errors_total{cause="node_not_ready",result="retried"} "#,
        r#"portcullis_operator_reconcile_errors_total{controller="role",reason="DatabaseUnavailable"} "#,
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(counted))
            .unwrap_or_else(|| panic!("no {counted} in {text}"));
        assert!(value.parse::<u64>().unwrap() >= 1, "{counted}{value}");
    }

    // The rest of the cluster has quorum and goes on.
    healthy.upsert_role(&RoleRow::new("elsewhere", ["read"])).await.unwrap();

    drop(heal); // node 3 rejoins and is Synced again
    isolated
        .upsert_role(&RoleRow::new("after", ["read"]))
        .await
        .expect("the same store works again");
    assert_eq!(
        health::probe_and_record(&isolated, &metrics).await.unwrap(),
        healthy.revision().await.unwrap()
    );
    assert!(
        metrics
            .render()
            .lines()
            .any(|l| l == "portcullis_operator_database_up 1")
    );
    let names: Vec<String> = isolated
        .list_roles()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["after", "before", "elsewhere"],
        "node 3 caught up; the refused write is not there"
    );
    healthy.close().await;
    isolated.close().await;
    db.finish().await;
}

/// Two operators (two contexts, as during a leader handover) reconcile the same objects
/// at the same time, one writing through node 1, the other through node 2: conflicting
/// writes are retried, idempotent upserts make the second writer's work a no-op, and
/// every node ends with exactly the same rows.
#[cfg_attr(
    not(portcullis_test_galera),
    ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_through_two_nodes_converge_to_one_state() {
    let _turn = CLUSTER.lock().await;
    let db = TestDb::new(Kind::Galera, "galera_two_operators").await;
    let urls = galera_urls();
    let one = open_with(&db.url_via(&urls[0]), 4).await;
    let two = open_with(&db.url_via(&urls[1]), 4).await;
    let client = local::memory_api();
    // No APIKeys or Sources: a key is generated by whoever reconciles first, and only the
    // leader reconciles (two replicas issuing keys for one object is what the Lease prevents).
    const USERS: usize = 60;
    const TEAMS: usize = 12;
    let manifests = support::bulk_manifests(USERS, TEAMS, 0);
    local::sync_objects(&client, &manifests, &Default::default())
        .await
        .unwrap();
    let config = Config {
        events: false,
        ..Config::default()
    };
    let ctx_one = Context::new(client.clone(), one.clone(), config.clone(), Arc::new(Metrics::new()));
    let ctx_two = Context::new(client.clone(), two.clone(), config, Arc::new(Metrics::new()));
    let within = Duration::from_secs(300);
    let (a, b) = tokio::join!(
        support::converge_until_ready(&ctx_one, within),
        support::converge_until_ready(&ctx_two, within)
    );
    assert_eq!(a.len(), 2 + USERS + TEAMS + 1);
    assert_eq!(b.len(), a.len());
    eprintln!(
        "two operators: retries after 1213: node 1 {}, node 2 {}",
        one.error_counts().retried(Cause::Deadlock),
        two.error_counts().retried(Cause::Deadlock)
    );
    let reference = one.read_snapshot(0).await.unwrap();
    for url in &urls {
        let store = open_with(&db.url_via(url), 1).await;
        support::assert_bulk_applied(&client, &store, USERS, TEAMS, 0).await;
        let snapshot = store.read_snapshot(0).await.unwrap();
        assert_eq!(snapshot.revision, reference.revision, "{url}");
        assert_eq!(snapshot.users, reference.users, "{url}");
        assert_eq!(snapshot.roles, reference.roles, "{url}");
        assert_eq!(snapshot.policies, reference.policies, "{url}");
        store.close().await;
    }
    one.close().await;
    two.close().await;
    db.finish().await;
}
