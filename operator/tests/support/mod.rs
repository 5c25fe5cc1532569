//! Test databases: a fresh SQLite file, or a fresh database on the PostgreSQL / MariaDB
//! server named by `TEST_POSTGRES_URL` / `TEST_MYSQL_URL`, on the Galera cluster named
//! by `TEST_GALERA_URLS` (one URL per node, comma separated; `scripts/galera.sh urls`),
//! or on the private servers of the fault tests (`TEST_FAULT_POSTGRES_URL`,
//! `TEST_FAULT_MYSQL_URL`, started by `scripts/faultdb.sh`).

#![allow(dead_code)] // each test binary uses a part of this module

use portcullis_operator::store::{DbConfig, Store};
use sqlx::Connection;

pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
    /// The Galera cluster, through its first node.
    Galera,
    FaultPostgres,
    FaultMySql,
}

/// A database that lives as long as the test. Server databases are dropped by
/// [`TestDb::finish`] when the test passes; a failed test leaves its database behind
/// for inspection, and the next run of the same test replaces it.
pub struct TestDb {
    pub store: Store,
    pub url: String,
    admin_url: Option<String>,
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(kind: Kind, test: &str) -> TestDb {
        sqlx::any::install_default_drivers();
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/{test}.db", dir.path().display());
                let store = open(&url).await;
                TestDb {
                    store,
                    url,
                    admin_url: None,
                    name: test.into(),
                    _dir: Some(dir),
                }
            }
            Kind::Postgres => Self::server("TEST_POSTGRES_URL", env("TEST_POSTGRES_URL"), test).await,
            Kind::MySql => Self::server("TEST_MYSQL_URL", env("TEST_MYSQL_URL"), test).await,
            Kind::Galera => Self::server("TEST_GALERA_URLS", galera_urls().remove(0), test).await,
            Kind::FaultPostgres => Self::server("TEST_FAULT_POSTGRES_URL", env("TEST_FAULT_POSTGRES_URL"), test).await,
            Kind::FaultMySql => Self::server("TEST_FAULT_MYSQL_URL", env("TEST_FAULT_MYSQL_URL"), test).await,
        }
    }

    /// This test's database through another server: `base` is a URL of that server
    /// (its database part is replaced), e.g. another Galera node.
    pub fn url_via(&self, base: &str) -> String {
        let mut url = url::Url::parse(base).expect("server URL");
        url.set_path(&self.name);
        url.to_string()
    }

    async fn server(var: &str, admin_url: String, test: &str) -> TestDb {
        let mut base = url::Url::parse(&admin_url).unwrap_or_else(|e| panic!("{var}: {e}"));
        let base_db = base.path().trim_start_matches('/').to_string();
        // Unique per base database (fresh per CI run) and per test; short enough for MySQL's 64.
        let name = format!("{}_{}", base_db, test).chars().take(63).collect::<String>();
        let mut admin = sqlx::AnyConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{var} is set but the database cannot be reached: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&mut admin)
            .await
            .expect("drop old test database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        base.set_path(&name);
        let url = base.to_string();
        let store = open(&url).await;
        TestDb {
            store,
            url,
            admin_url: Some(admin_url),
            name,
            _dir: None,
        }
    }

    /// Closes the pool and drops a server database.
    pub async fn finish(self) {
        self.store.close().await;
        if let Some(admin_url) = &self.admin_url {
            let mut admin = sqlx::AnyConnection::connect(admin_url)
                .await
                .expect("reconnect to drop");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {}", self.name)))
                .execute(&mut admin)
                .await
                .expect("drop test database");
        }
    }
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"))
}

/// The Galera nodes' URLs, node 1 first.
pub fn galera_urls() -> Vec<String> {
    let urls: Vec<String> = env("TEST_GALERA_URLS")
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    assert!(urls.len() >= 3, "TEST_GALERA_URLS names {} nodes, 3 needed", urls.len());
    urls
}

/// Runs `scripts/<script> <args>` (the Galera cluster's or the fault servers'
/// controls), failing the test with the script's output when it fails.
pub fn script(script: &str, args: &[&str]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = std::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`script`] off the async runtime's threads (it may take seconds).
pub async fn script_async(script: &'static str, args: &'static [&'static str]) {
    tokio::task::spawn_blocking(move || self::script(script, args))
        .await
        .expect("script task");
}

/// Opens a store on `url` with a pool of `pool_size`.
pub async fn open_with(url: &str, pool_size: u32) -> Store {
    let mut config = DbConfig::from_url(url).expect("test URL");
    config.pool_size = pool_size;
    Store::open(&config).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn open(url: &str) -> Store {
    let mut config = DbConfig::from_url(url).expect("test URL");
    config.pool_size = 8;
    Store::open(&config).await.unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// A TCP proxy in front of a database server that a test can cut and restore: the
/// database "goes away" for the code under test while the server keeps running.
pub struct Outage {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Outage {
    pub async fn start(target: std::net::SocketAddr) -> Outage {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, connections2) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client); // refused: the database is "down"
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections2.lock().unwrap().push(task);
            }
        });
        Outage { addr, up, connections }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("URL");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }
}

/// A bulk of manifests that reference each other: `users` Users (roles `reader`, every
/// third also `writer`), `teams` Teams of up to five members, `keys` APIKeys (namespace
/// `bulk`, owned by the users in turn) and one AccessPolicy.
pub fn bulk_manifests(users: usize, teams: usize, keys: usize) -> Vec<portcullis_operator::local::Manifest> {
    use serde_json::json;
    let mut out = Vec::new();
    let mut push = |kind: &str, namespace: Option<&str>, name: String, value: serde_json::Value| {
        out.push(portcullis_operator::local::Manifest {
            file: "bulk.yaml".into(),
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name,
            value,
        });
    };
    let api = "portcullis.io/v1alpha1";
    for (name, scopes) in [("reader", vec!["read"]), ("writer", vec!["read", "write"])] {
        push(
            "Role",
            None,
            name.into(),
            json!({"apiVersion": api, "kind": "Role", "metadata": {"name": name}, "spec": {"scopes": scopes}}),
        );
    }
    for i in 0..users {
        let name = format!("u{i:04}");
        let roles = if i.is_multiple_of(3) {
            vec!["reader", "writer"]
        } else {
            vec!["reader"]
        };
        push(
            "User",
            None,
            name.clone(),
            json!({"apiVersion": api, "kind": "User", "metadata": {"name": name},
            "spec": {"email": format!("{name}@bulk.example"), "roles": roles, "apiKeyNamespaces": ["bulk"]}}),
        );
    }
    for t in 0..teams {
        let name = format!("t{t:03}");
        let members: Vec<_> = (0..5)
            .map(|m| t * 5 + m)
            .filter(|&u| u < users)
            .map(|u| json!({"user": format!("u{u:04}"), "role": if u.is_multiple_of(5) { "owner" } else { "member" }}))
            .collect();
        push(
            "Team",
            None,
            name.clone(),
            json!({"apiVersion": api, "kind": "Team", "metadata": {"name": name}, "spec": {"members": members}}),
        );
    }
    for k in 0..keys {
        let name = format!("k{k:04}");
        push(
            "APIKey",
            Some("bulk"),
            name.clone(),
            json!({"apiVersion": api, "kind": "APIKey",
            "metadata": {"name": name, "namespace": "bulk"},
            "spec": {"owner": {"user": format!("u{:04}", k % users.max(1))}, "scopes": ["read"]}}),
        );
    }
    push(
        "AccessPolicy",
        Some("bulk"),
        "api".into(),
        json!({"apiVersion": api, "kind": "AccessPolicy",
        "metadata": {"name": "api", "namespace": "bulk"},
        "spec": {"podSelector": {"matchLabels": {"app": "bulk"}},
                 "rules": [{"name": "read", "methods": ["GET"], "paths": ["/api/v1/**"], "requireScopes": ["read"]}]}}),
    );
    out
}

/// Runs local mode's convergence until every object is Ready (a pass may fail while the
/// database is away: it is run again), or panics after `within` with the statuses.
pub async fn converge_until_ready(
    ctx: &std::sync::Arc<portcullis_operator::controller::Context>,
    within: std::time::Duration,
) -> Vec<portcullis_operator::local::ObjectStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let last = portcullis_operator::local::converge(ctx).await;
        if let Ok(statuses) = &last
            && statuses.iter().all(|s| s.ready == "True")
        {
            return last.unwrap_or_default();
        }
        if std::time::Instant::now() > deadline {
            let not_ready: Vec<String> = match &last {
                Ok(statuses) => statuses
                    .iter()
                    .filter(|s| s.ready != "True")
                    .map(|s| s.to_string())
                    .collect(),
                Err(e) => vec![e.to_string()],
            };
            panic!("not converged within {within:?}: {not_ready:#?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Checks that the database holds exactly what [`bulk_manifests`] asked for: every user,
/// team and membership once, every APIKey with exactly one live key, the one its Secret
/// holds (a key issued by an attempt whose answer was lost is revoked, never live).
pub async fn assert_bulk_applied(client: &kube::Client, store: &Store, users: usize, teams: usize, keys: usize) {
    use k8s_openapi::api::core::v1::Secret;
    let snapshot = store
        .read_snapshot(portcullis_operator::store::unix_now())
        .await
        .expect("snapshot");
    let bulk_users: Vec<_> = snapshot.users.iter().filter(|u| u.name.starts_with('u')).collect();
    assert_eq!(bulk_users.len(), users, "every user once");
    for user in &bulk_users {
        let i: usize = user.name[1..].parse().expect("user number");
        let mut roles = if i.is_multiple_of(3) {
            vec!["reader", "writer"]
        } else {
            vec!["reader"]
        };
        roles.sort_unstable();
        assert_eq!(user.roles, roles, "{}", user.name);
    }
    for t in 0..teams {
        let team = store
            .get_team(&format!("t{t:03}"))
            .await
            .expect("team")
            .unwrap_or_else(|| panic!("team t{t:03} missing"));
        let expected = (0..5).filter(|m| t * 5 + m < users).count();
        assert_eq!(team.members.len(), expected, "members of {}", team.name);
    }
    let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "bulk");
    for k in 0..keys {
        let name = format!("k{k:04}");
        let rows = store.api_keys_of("bulk", &name).await.expect("keys");
        let live: Vec<_> = rows.iter().filter(|r| r.revoked_at.is_none()).collect();
        assert_eq!(live.len(), 1, "{name}: exactly one live key, got {rows:?}");
        let secret = secrets
            .get(&format!("{name}-apikey"))
            .await
            .unwrap_or_else(|e| panic!("{name}'s Secret: {e}"));
        let plain = String::from_utf8(secret.data.expect("data")["api-key"].0.clone()).expect("utf-8");
        assert_eq!(
            live[0].key_hash,
            portcullis_operator::credentials::hash_api_key(&plain),
            "{name}: the live key is the one in its Secret"
        );
    }
    let live_keys = snapshot
        .api_keys
        .iter()
        .filter(|k| k.namespace == "bulk" && k.revoked_at.is_none())
        .count();
    assert_eq!(live_keys, keys, "no live key beyond one per APIKey");
}

/// The database errors a store met, by cause: "connection retried 3 failed 0, …".
pub fn error_summary(store: &Store) -> String {
    let counts = store.error_counts();
    portcullis_operator::store::Cause::ALL
        .iter()
        .filter(|c| counts.retried(**c) + counts.failed(**c) > 0)
        .map(|c| {
            format!(
                "{} retried {} failed {}",
                c.as_str(),
                counts.retried(*c),
                counts.failed(*c)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
