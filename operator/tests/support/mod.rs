//! Test databases: a fresh SQLite file, or a fresh database on the PostgreSQL / MariaDB
//! server named by `TEST_POSTGRES_URL` / `TEST_MYSQL_URL`.

#![allow(dead_code)] // each test binary uses a part of this module

use portcullis_operator::store::{DbConfig, Store};
use sqlx::Connection;

pub enum Kind {
    Sqlite,
    Postgres,
    MySql,
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
            Kind::Postgres => Self::server("TEST_POSTGRES_URL", test).await,
            Kind::MySql => Self::server("TEST_MYSQL_URL", test).await,
        }
    }

    async fn server(var: &str, test: &str) -> TestDb {
        let admin_url = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set"));
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
