//! Database faults during a bulk apply of manifests: the reconcilers (local mode's
//! convergence, in-memory Kubernetes API) write hundreds of objects into a private
//! PostgreSQL or MariaDB (`scripts/faultdb.sh`, never the machine's shared servers) that
//! is stopped and started again in the middle, and whose connections are cut in the
//! middle of a second apply that deletes and changes objects. Nothing is lost, nothing
//! is orphaned, `/readyz` and the metrics say what happened, and the same operator
//! recovers without a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_operator::admin::{self, AdminState};
use portcullis_operator::controller::{Config, Context};
use portcullis_operator::metrics::Metrics;
use portcullis_operator::store::{DbConfig, Store};
use portcullis_operator::{health, local};
use sqlx::Connection;
use support::{Kind, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USERS: usize = 300;
const TEAMS: usize = 40;
const KEYS: usize = 150;

#[derive(Clone, Copy)]
enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::MariaDb => "mariadb",
        }
    }
}

/// Starts the server again when a test ends, even a failed one (nothing to do when it is up).
struct UpAgain(Server);

impl Drop for UpAgain {
    fn drop(&mut self) {
        support::script("faultdb.sh", &["up", self.0.name()]);
    }
}

/// `GET path` on the admin port: (status code, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin port");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("response");
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The value of the sample `line` (name with labels, as rendered) at `/metrics`.
async fn metric(addr: std::net::SocketAddr, line: &str) -> Option<f64> {
    let (_, body) = get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
}

/// Polls `check` every 100 ms until it holds, or panics after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cuts every connection of this test's database but the one it uses to do so
/// (`pg_terminate_backend`, MariaDB's `KILL`); returns how many it cut.
async fn cut_connections(server: Server, admin_url: &str, database: &str) -> usize {
    let mut admin = sqlx::AnyConnection::connect(admin_url).await.expect("admin connection");
    let sql = match server {
        Server::Postgres => {
            "SELECT CAST(pid AS BIGINT) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
        }
        Server::MariaDb => {
            "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()"
        }
    };
    let ids: Vec<i64> = sqlx::query_scalar(sql)
        .bind(database)
        .fetch_all(&mut admin)
        .await
        .expect("list connections");
    for id in &ids {
        let kill = match server {
            Server::Postgres => format!("SELECT pg_terminate_backend({id})"),
            Server::MariaDb => format!("KILL {id}"),
        };
        // A connection may have ended by itself in between.
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(kill)).execute(&mut admin).await;
    }
    let _ = admin.close().await;
    ids.len()
}

async fn bulk_apply_survives_database_faults(server: Server, kind: Kind, test: &str) {
    let db = TestDb::new(kind, test).await;
    let database = url::Url::parse(&db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let admin_url = {
        let mut u = url::Url::parse(&db.url).unwrap();
        u.set_path(match server {
            Server::Postgres => "postgres",
            Server::MariaDb => "mysql",
        });
        u.to_string()
    };
    // The operator's own store: short waits for a connection, so that an outage is
    // reported within a second rather than after the default 5 s.
    let mut config = DbConfig::from_url(&db.url).unwrap();
    config.pool_size = 4;
    config.acquire_timeout = Duration::from_secs(1);
    let store = Store::open(&config).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let client = local::memory_api();
    let ctx = Context::new(
        client.clone(),
        store.clone(),
        Config {
            events: false,
            ..Config::default()
        },
        metrics.clone(),
    );
    // The admin port, as `portcullis-operator run` serves it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let state = AdminState {
        metrics: metrics.clone(),
        ready: health::readiness(store.clone(), metrics.clone(), Vec::new()),
    };
    tokio::spawn(admin::serve(listener, state, std::future::pending()));
    tokio::spawn(health::watch(
        store.clone(),
        metrics.clone(),
        Duration::from_millis(200),
    ));
    assert_eq!(get(admin_addr, "/readyz").await.0, 200);

    // 1. A bulk apply; the server is stopped a little way in and started again.
    let manifests = support::bulk_manifests(USERS, TEAMS, KEYS);
    let applied = local::sync_objects(&client, &manifests, &Default::default())
        .await
        .unwrap();
    let start = store.revision().await.unwrap();
    let apply = {
        let ctx = ctx.clone();
        tokio::spawn(async move { support::converge_until_ready(&ctx, Duration::from_secs(600)).await })
    };
    let probe = db.store.clone(); // a pool of its own, to watch progress
    eventually("the bulk apply under way", Duration::from_secs(120), || async {
        probe.revision().await.is_ok_and(|r| r >= start + 40)
    })
    .await;
    let _up_again = UpAgain(server);
    support::script_async(
        "faultdb.sh",
        if matches!(server, Server::Postgres) {
            &["down", "postgres"]
        } else {
            &["down", "mariadb"]
        },
    )
    .await;
    let stopped_at = probe.revision().await.err().map(|e| e.to_string());
    assert!(stopped_at.is_some(), "the server is down");
    eventually("/readyz says the database is down", Duration::from_secs(30), || async {
        let (code, body) = get(admin_addr, "/readyz").await;
        code == 503 && body.contains("not ready: database: cannot connect:")
    })
    .await;
    let (_, why) = get(admin_addr, "/readyz").await;
    eventually("database_up 0", Duration::from_secs(30), || async {
        metric(admin_addr, "portcullis_operator_database_up").await == Some(0.0)
    })
    .await;
    assert!(!apply.is_finished(), "the apply waits for the database");
    tokio::time::sleep(Duration::from_secs(2)).await; // reconciles meet the outage
    support::script_async(
        "faultdb.sh",
        if matches!(server, Server::Postgres) {
            &["up", "postgres"]
        } else {
            &["up", "mariadb"]
        },
    )
    .await;
    let statuses = apply.await.expect("bulk apply");
    assert_eq!(statuses.len(), 2 + USERS + TEAMS + KEYS + 1);
    assert_eq!(get(admin_addr, "/readyz").await.0, 200, "ready again, same process");
    eventually("database_up 1", Duration::from_secs(30), || async {
        metric(admin_addr, "portcullis_operator_database_up").await == Some(1.0)
    })
    .await;
    let unavailable: f64 = {
        let (_, body) = get(admin_addr, "/metrics").await;
        body.lines()
            .filter(|l| {
                l.starts_with("portcullis_operator_reconcile_errors_total{")
                    && l.contains(r#"reason="DatabaseUnavailable""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        unavailable > 0.0,
        "reconciles counted the outage as DatabaseUnavailable"
    );
    support::assert_bulk_applied(&client, &store, USERS, TEAMS, KEYS).await;
    eprintln!(
        "{}: stopped at revision ~{}; /readyz said {why:?}; {unavailable} reconciles failed DatabaseUnavailable; store errors: {}",
        server.name(),
        start + 40,
        support::error_summary(&store)
    );

    // 2. Delete a third of the users' keys and every team, change every user; the
    // pool's connections are cut again and again in the middle.
    let kept: Vec<_> = manifests
        .iter()
        .filter(|m| m.kind != "Team" && !(m.kind == "APIKey" && m.name.as_str() >= "k0100"))
        .map(|m| {
            let mut m = m.clone();
            if m.kind == "User" {
                m.value["spec"]["displayName"] = serde_json::json!(format!("{} (renamed)", m.name));
            }
            m
        })
        .collect();
    local::sync_objects(&client, &kept, &applied).await.unwrap();
    let before = store.revision().await.unwrap();
    let apply = {
        let ctx = ctx.clone();
        tokio::spawn(async move { support::converge_until_ready(&ctx, Duration::from_secs(600)).await })
    };
    let mut cut = 0;
    while !apply.is_finished() && cut < 200 {
        if probe.revision().await.is_ok_and(|r| r > before) {
            cut += cut_connections(server, &admin_url, &database).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let statuses = apply.await.expect("second apply");
    assert_eq!(
        statuses.len(),
        2 + USERS + 100 + 1,
        "teams and 50 keys gone: {statuses:#?}"
    );
    assert!(cut > 0, "connections were cut during the apply");
    for t in 0..TEAMS {
        assert_eq!(
            store.get_team(&format!("t{t:03}")).await.unwrap(),
            None,
            "team t{t:03} orphaned"
        );
    }
    for k in 100..KEYS {
        assert!(
            store.api_keys_of("bulk", &format!("k{k:04}")).await.unwrap().is_empty(),
            "key k{k:04} orphaned"
        );
    }
    support::assert_bulk_applied(&client, &store, USERS, 0, 100).await;
    let snapshot = store.read_snapshot(0).await.unwrap();
    assert!(
        snapshot
            .users
            .iter()
            .all(|u| !u.name.starts_with('u') || u.teams.is_empty())
    );
    for user in ["u0000", "u0150", "u0299"] {
        assert_eq!(
            store.get_user(user).await.unwrap().unwrap().display_name.as_deref(),
            Some(format!("{user} (renamed)").as_str())
        );
    }
    // A cut connection or a stopped server is "unavailable" (requeued in 5 s), never a
    // change the database refused (`DatabaseError`, requeued in 30 s).
    let (_, body) = get(admin_addr, "/metrics").await;
    let refused: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("portcullis_operator_reconcile_errors_total{") && !l.contains("DatabaseUnavailable"))
        .collect();
    assert!(refused.is_empty(), "outages misclassified: {refused:?}");
    eprintln!(
        "{}: {cut} connections cut during the second apply; store errors: {}",
        server.name(),
        support::error_summary(&store)
    );
    store.close().await;
    probe.close().await;
    db.finish().await;
}

/// The two servers are stopped in turn by the tests of this file: one at a time.
static SERVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[cfg_attr(
    not(portcullis_test_fault_postgres),
    ignore = "set TEST_FAULT_POSTGRES_URL (scripts/faultdb.sh) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_cut_during_a_bulk_apply() {
    let _turn = SERVERS.lock().await;
    bulk_apply_survives_database_faults(Server::Postgres, Kind::FaultPostgres, "fault_bulk").await;
}

#[cfg_attr(
    not(portcullis_test_fault_mysql),
    ignore = "set TEST_FAULT_MYSQL_URL (scripts/faultdb.sh) to run"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_stopped_and_cut_during_a_bulk_apply() {
    let _turn = SERVERS.lock().await;
    bulk_apply_survives_database_faults(Server::MariaDb, Kind::FaultMySql, "fault_bulk").await;
}
