//! The store: the only place in Portcullis that speaks SQL.
//!
//! One implementation serves PostgreSQL, MySQL/MariaDB and SQLite through sqlx's `Any`
//! driver. Statements are written once with `?` placeholders (rewritten to `$n` for
//! PostgreSQL) and in the common subset of the three dialects: no upsert syntax (a
//! write reads the current row first, under the revision lock, and then inserts or
//! updates), `RETURNING` only beside a MySQL fallback, times as Unix seconds, JSON as text.
//!
//! An upsert ([`Store::upsert`], for every row type that implements [`Upsert`]) first
//! reads without any lock: when the database already holds what is asked (a resync of
//! thousands of unchanged objects), it returns without a write transaction. Otherwise
//! it runs a snapshot-changing write (`versioned_write!`): the first statement bumps
//! the revision row, so every such writer takes the same lock first (no deadlocks
//! between our own writers, commit order equals revision order), the row is read again
//! under that lock and compared, and a write that turns out to change nothing rolls
//! back without bumping, which makes every upsert idempotent.

/// Runs `$body` (which evaluates to `Result<bool>`: did it change anything) as one
/// snapshot-changing transaction, retried as a whole on transient errors. `$tx` is the
/// `&mut Transaction`. A macro rather than a closure-taking method because async
/// closures lose `Send` through higher-ranked lifetimes, and reconcilers spawn these.
macro_rules! versioned_write {
    ($store:ident, $what:expr, |$tx:ident| $body:block) => {{
        // Set when an attempt found its transaction gone at commit: its statements may
        // have run on their own, so the next attempt publishes a revision even when
        // it finds nothing left to change.
        let lost = ::std::sync::atomic::AtomicBool::new(false);
        $crate::store::with_retry_counted($store.retry, Some(&$store.errors), $what, || async {
            let mut write = $store.begin_write().await?;
            let changed: $crate::store::Result<bool> = async {
                let $tx = &mut write.tx;
                $body
            }
            .await;
            let changed = changed? || lost.load(::std::sync::atomic::Ordering::Relaxed);
            let outcome = write.finish(changed).await;
            if matches!(outcome, Err($crate::store::StoreError::TransactionLost)) {
                lost.store(true, ::std::sync::atomic::Ordering::Relaxed);
            }
            outcome
        })
        .await
    }};
}

/// Runs `$body` (a `Result<T>`) in a transaction that does not touch the revision
/// (audit, session book-keeping: nothing a snapshot holds), retried on transient errors.
macro_rules! unversioned_write {
    ($store:ident, $what:literal, |$tx:ident| $body:block) => {
        $crate::store::with_retry_counted($store.retry, Some(&$store.errors), $what, || async {
            let mut tx = $store.pool.begin().await?;
            let value: $crate::store::Result<_> = async {
                let $tx = &mut tx;
                $body
            }
            .await;
            let value = value?;
            tx.commit().await?;
            Ok(value)
        })
        .await
    };
}

mod api_keys;
mod audit;
mod config;
mod control_plane;
mod error;
mod issuers;
mod policies;
mod retry;
mod roles;
mod sessions;
mod snapshot;
mod sources;
mod teams;
mod tokens;
mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::{Query, QueryScalar};
use sqlx::{Any, AnyConnection, AnyPool, AssertSqlSafe, Connection, SqlSafeStr, SqlStr, Transaction};

pub use api_keys::{ApiKeyRow, KeyGrants};
pub use audit::AuditEvent;
pub use config::{Backend, DbConfig, default_pool_size};
pub use control_plane::{REVISION_CHANNEL, RequestAudit, RevisionListener};
pub use error::{ConfigError, Result, StoreError};
pub use issuers::{IssuerKeys, IssuerRow};
pub use policies::PolicyRow;
pub use retry::{Cause, ErrorCounts, RetryPolicy, cause, is_transient, with_retry, with_retry_counted};
pub use roles::{RoleRow, builtin_role, builtin_roles};
pub use sessions::{ResetTokenRow, SessionRow};
pub use snapshot::{MAX_ACCESS_TOKEN_SECS, TOKEN_AUDIENCE, TOKEN_LEEWAY_SECS};
pub use sources::SourceRow;
pub use teams::TeamRow;
pub use tokens::{AuthSession, RefreshOutcome, SigningKeyRow, ThrottleState};
pub use users::{PasswordRow, UserRow};

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static MYSQL: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// What a snapshot-changing write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The revision after the write (unchanged when `changed` is false).
    pub revision: i64,
    pub changed: bool,
}

/// A row kept by read-compare-write (see the module comment): [`Store::upsert`] reads
/// what the database holds under the row's identity, compares, and writes only when
/// they differ. The row is normalised (sorted lists) before it gets here, so that
/// comparing rows compares meaning.
trait Upsert: PartialEq + Sync {
    /// Names the write in retry logs.
    const WHAT: &'static str;

    /// What the database holds now under this row's identity (name, or namespace and
    /// name), child rows included.
    fn load(&self, store: &Store, conn: &mut AnyConnection) -> impl Future<Output = Result<Option<Self>>> + Send
    where
        Self: Sized;

    /// Makes the database hold this row, given what it held (`None`: nothing). Runs in
    /// the write transaction after the revision bump; an error rolls it all back.
    fn write(
        &self,
        store: &Store,
        conn: &mut AnyConnection,
        current: Option<&Self>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A connection pool to the control plane's database.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    retry: RetryPolicy,
    /// Database errors met by this store's transactions (shared by its clones).
    errors: Arc<ErrorCounts>,
    /// A Galera node: write transactions check they are still open before committing
    /// (see [`StoreError::TransactionLost`]).
    galera: bool,
    /// The last revision this process committed (shared by its clones), so that what
    /// follows the revision in-process hears of its own writes at once.
    committed: Arc<tokio::sync::watch::Sender<i64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Connects, waiting for the database with exponential backoff up to `config.wait`
    /// and saying what it waits for. Errors that waiting cannot fix (bad credentials,
    /// unknown database, unreadable SQLite file) end the wait at once.
    pub async fn connect(config: &DbConfig) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = config.redacted_url();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1u32;
        // Probe with single connections: the pool's own retries would hide the reason
        // ("connection refused") behind "pool timed out".
        loop {
            match AnyConnection::connect(config.url()).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    break;
                }
                Err(err) if !worth_waiting_for(&err) => {
                    return Err(StoreError::Rejected {
                        url,
                        reason: one_line(&err),
                    });
                }
                Err(err) => {
                    let remaining = config.wait.saturating_sub(started.elapsed());
                    if remaining.is_zero() {
                        return Err(StoreError::Unreachable {
                            url,
                            waited_secs: started.elapsed().as_secs(),
                            reason: one_line(&err),
                        });
                    }
                    let pause = backoff.min(remaining);
                    tracing::warn!(
                        backend = config.backend.as_str(),
                        url = %url,
                        attempt,
                        retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                        error = %one_line(&err),
                        "waiting for the database"
                    );
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
        let backend = config.backend;
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    match backend {
                        // With WAL, NORMAL is safe against crashes of the process and
                        // fsyncs at checkpoints instead of at every commit.
                        Backend::Sqlite => {
                            sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = NORMAL").await?;
                        }
                        Backend::MySql => galera_session(conn).await?,
                        Backend::Postgres => {}
                    }
                    Ok(())
                })
            })
            .max_connections(config.pool_size)
            .acquire_timeout(config.acquire_timeout)
            .connect(config.url())
            .await?;
        if config.backend == Backend::Sqlite && !config.url().contains(":memory:") {
            // WAL lets snapshot readers run beside the writer; the setting sticks to the file.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let galera = match config.backend {
            Backend::MySql => wsrep_on(&mut *pool.acquire().await?).await?,
            Backend::Postgres | Backend::Sqlite => false,
        };
        tracing::info!(backend = config.backend.as_str(), url = %url, pool_size = config.pool_size, galera, "connected to the database");
        Ok(Store {
            pool,
            backend: config.backend,
            retry: RetryPolicy::default(),
            errors: Arc::default(),
            galera,
            committed: Arc::new(tokio::sync::watch::Sender::new(0)),
        })
    }

    /// Connects and brings the schema up to date.
    pub async fn open(config: &DbConfig) -> Result<Store> {
        let store = Store::connect(config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES,
            Backend::MySql => &MYSQL,
            Backend::Sqlite => &SQLITE,
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The revisions this process commits, as they commit (the value is the last one).
    /// Writers in other processes are not seen here: see `api::snapshots` for how those
    /// are followed.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// Database errors this store's transactions met, by cause.
    pub fn error_counts(&self) -> Arc<ErrorCounts> {
        self.errors.clone()
    }

    /// Pool figures for metrics: (open connections, idle connections).
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The current revision.
    pub async fn revision(&self) -> Result<i64> {
        let revision = self
            .scalar_i64("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(revision)
    }

    /// On a Galera node, why it is not serving: `None` when it is Synced and in the
    /// primary component (or the server is no Galera node, or cannot say), else the
    /// node's state in words. A node without quorum refuses statements with 1047
    /// ("WSREP has not yet prepared node") but causal reads with 1205 ("Lock wait
    /// timeout"), which says nothing about quorum: this is what tells them apart.
    pub async fn galera_trouble(&self) -> Option<String> {
        if self.backend != Backend::MySql {
            return None;
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')",
        )
        .fetch_all(&self.pool)
        .await
        .ok()?;
        let get = |name: &str| {
            rows.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let (ready, cluster, state) = (
            get("wsrep_ready")?,
            get("wsrep_cluster_status")?,
            get("wsrep_local_state_comment")?,
        );
        (ready != "ON" || cluster != "Primary" || state != "Synced").then(|| {
            format!("Galera node not ready: wsrep_ready={ready}, wsrep_cluster_status={cluster}, wsrep_local_state_comment={state}")
        })
    }

    /// Why a new connection cannot be made right now ("Connection refused", "the
    /// database system is shutting down"), or `None` when one can: what a pool that
    /// timed out waiting for a connection does not say.
    pub async fn connect_trouble(&self) -> Option<String> {
        use sqlx::ConnectOptions;
        match self.pool.connect_options().connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
                None
            }
            Err(err) => Some(one_line(&err)),
        }
    }

    /// Builds a statement written with `?` placeholders for this backend.
    fn query(&self, sql: &'static str) -> Query<'static, Any, AnyArguments> {
        sqlx::query(self.sql(sql))
    }

    fn scalar_i64(&self, sql: &'static str) -> QueryScalar<'static, Any, i64, AnyArguments> {
        sqlx::query_scalar(self.sql(sql))
    }

    fn sql(&self, sql: &'static str) -> SqlStr {
        match self.backend {
            Backend::Postgres => AssertSqlSafe(numbered_placeholders(sql)).into_sql_str(),
            Backend::MySql | Backend::Sqlite => sql.into_sql_str(),
        }
    }

    /// Fails with [`StoreError::MissingReference`], naming the missing ones in the
    /// order given, unless every one of `names` exists in `table`.
    async fn require_names(&self, conn: &mut sqlx::AnyConnection, table: NameTable, names: &[String]) -> Result<()> {
        let found = self.existing_names(conn, table, names).await?;
        let missing: Vec<String> = names.iter().filter(|n| !found.contains(*n)).cloned().collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::MissingReference {
                kind: table.kind(),
                names: missing,
            })
        }
    }

    /// Which of `names` exist in `table` (`users` or `roles`), in one query.
    async fn existing_names(
        &self,
        conn: &mut sqlx::AnyConnection,
        table: NameTable,
        names: &[String],
    ) -> Result<std::collections::BTreeSet<String>> {
        let mut found = std::collections::BTreeSet::new();
        for chunk in names.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT name FROM {} WHERE name IN ({placeholders})", table.as_str());
            let sql = match self.backend {
                Backend::Postgres => numbered_placeholders(&sql),
                Backend::MySql | Backend::Sqlite => sql,
            };
            // The text is built from a fixed table name and placeholders only.
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            for name in chunk {
                query = query.bind(name);
            }
            found.extend(query.fetch_all(&mut *conn).await?);
        }
        Ok(found)
    }

    /// Read-compare-write of one row and its children: nothing at all when a lock-free
    /// read finds the row as asked; otherwise one snapshot-changing transaction that
    /// reads again under the revision lock and writes (and bumps) only on a difference.
    async fn upsert<R: Upsert>(&self, row: &R) -> Result<WriteOutcome> {
        let unchanged = {
            let mut conn = self.pool.acquire().await?;
            row.load(self, &mut conn).await?.as_ref() == Some(row)
        };
        if unchanged {
            return self.unchanged().await;
        }
        versioned_write!(self, R::WHAT, |tx| {
            let current = row.load(self, tx).await?;
            if current.as_ref() == Some(row) {
                return Ok(false);
            }
            row.write(self, tx, current.as_ref()).await?;
            Ok(true)
        })
    }

    /// The outcome of a write that a lock-free read showed to be unnecessary.
    async fn unchanged(&self) -> Result<WriteOutcome> {
        Ok(WriteOutcome {
            revision: self.revision().await?,
            changed: false,
        })
    }

    /// Starts a snapshot-changing transaction: bumps the revision first (see the
    /// module comment for why first).
    async fn begin_write(&self) -> Result<WriteTx> {
        let mut tx = self.pool.begin().await?;
        let revision = match self.backend {
            // One round trip where the dialect allows it.
            Backend::Postgres | Backend::Sqlite => {
                self.scalar_i64("UPDATE revision SET value = value + 1 WHERE id = 1 RETURNING value")
                    .fetch_one(&mut *tx)
                    .await?
            }
            // LAST_INSERT_ID(expr) hands the new value back in the statement's own answer:
            // the revision is the one this transaction wrote, in one round trip. A second
            // read would be causal on Galera (`wsrep_sync_wait`), waiting for the very
            // write from another node that then aborts this transaction.
            Backend::MySql => self
                .query("UPDATE revision SET value = LAST_INSERT_ID(value + 1) WHERE id = 1")
                .execute(&mut *tx)
                .await?
                .last_insert_id()
                .filter(|revision| *revision > 0)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "revision",
                    reason: "the revision bump returned no value".into(),
                })?,
        };
        Ok(WriteTx {
            tx,
            revision,
            check_open: self.galera,
            committed: self.committed.clone(),
        })
    }
}

/// Tables whose rows are named, for [`Store::existing_names`].
#[derive(Clone, Copy)]
enum NameTable {
    Users,
    Roles,
}

impl NameTable {
    fn as_str(self) -> &'static str {
        match self {
            NameTable::Users => "users",
            NameTable::Roles => "roles",
        }
    }

    /// What a missing name is, in [`StoreError::MissingReference`].
    fn kind(self) -> &'static str {
        match self {
            NameTable::Users => "user",
            NameTable::Roles => "role",
        }
    }
}

/// A transaction opened by [`Store::begin_write`].
struct WriteTx {
    tx: Transaction<'static, Any>,
    revision: i64,
    /// Whether to make sure, before committing, that the transaction is still open.
    check_open: bool,
    /// Told the revision once it is committed.
    committed: Arc<tokio::sync::watch::Sender<i64>>,
}

impl WriteTx {
    /// Commits if something changed; otherwise rolls back, taking the bump back.
    async fn finish(mut self, changed: bool) -> Result<WriteOutcome> {
        if changed {
            // A Galera node aborts a transaction that holds rows a write from another
            // node needs. The abort is reported on the next statement, but a statement
            // that was waiting for that very write (a causal read) can come back with
            // rows instead; the transaction is then gone, and what followed ran on its
            // own with autocommit. COMMIT would succeed on nothing. Ask first, without a
            // causal wait (which could hide the abort the same way).
            if self.check_open {
                let open =
                    sqlx::query_scalar::<_, i64>("SET STATEMENT wsrep_sync_wait = 0 FOR SELECT @@in_transaction")
                        .fetch_one(&mut *self.tx)
                        .await?;
                if open != 1 {
                    tracing::warn!(
                        revision = self.revision,
                        "write transaction found ended before its commit (Galera abort not reported); running it again"
                    );
                    return Err(StoreError::TransactionLost);
                }
            }
            self.tx.commit().await?;
            let revision = self.revision;
            self.committed.send_if_modified(|last| {
                let newer = revision > *last;
                if newer {
                    *last = revision;
                }
                newer
            });
            Ok(WriteOutcome {
                revision: self.revision,
                changed: true,
            })
        } else {
            self.tx.rollback().await?;
            Ok(WriteOutcome {
                revision: self.revision - 1,
                changed: false,
            })
        }
    }
}

/// On a Galera node, makes this session's reads causal: a read waits until the node has
/// applied every write the cluster committed before it, so that what one operator
/// replica wrote through one node is what another reads through the next (the snapshot
/// a sidecar gets never goes back in time, a lock-free "already up to date" check never
/// sees a stale row). Sets bit 1 (READ) of `wsrep_sync_wait`, keeping any other bits
/// the server's configuration sets. Nothing on a server without Galera.
async fn galera_session(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    if wsrep_on(conn).await? {
        sqlx::Executor::execute(&mut *conn, "SET SESSION wsrep_sync_wait = @@wsrep_sync_wait | 1").await?;
    }
    Ok(())
}

/// Whether this MySQL-protocol server is a Galera node replicating.
async fn wsrep_on(conn: &mut AnyConnection) -> std::result::Result<bool, sqlx::Error> {
    let wsrep: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(wsrep.is_some_and(|(_, value)| value.eq_ignore_ascii_case("ON")))
}

/// Whether a connection error may go away by itself (server starting, network, too
/// many connections) rather than needing the operator's configuration fixed.
fn worth_waiting_for(err: &sqlx::Error) -> bool {
    if is_transient(err) {
        return true;
    }
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            // too_many_connections (PostgreSQL), ER_CON_COUNT_ERROR (MySQL)
            matches!(code.as_deref(), Some("53300" | "08004"))
                || db
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .is_some_and(|e| e.number() == 1040)
        }
        _ => false,
    }
}

/// An error as one line, for logs and start-up failures.
fn one_line(err: &sqlx::Error) -> String {
    let text = match err {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `?` → `$1`, `$2`, … (our statements never contain `?` inside string literals).
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// Seconds since the Unix epoch, as the store and snapshots write times.
pub use portcullis_wire::process::unix_now;

/// JSON columns: encode.
fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what: "value to encode",
        reason: e.to_string(),
    })
}

/// JSON columns: decode, naming the column when the database holds something else.
fn from_json<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

fn flag(value: bool) -> i32 {
    i32::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered_placeholders("UPDATE t SET a = ?, b = ? WHERE c = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE c = $3"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }

    /// What a Galera abort that was not reported leaves behind, made on purpose: the
    /// transaction ends after the revision bump (here by a ROLLBACK of its own) and the
    /// body's write then commits on its own. The write must not be reported at a
    /// revision that was never committed: the check before COMMIT finds the transaction
    /// gone, the retry finds the row written and still publishes a revision for it.
    #[cfg_attr(
        not(portcullis_test_galera),
        ignore = "set TEST_GALERA_URLS to run on a Galera cluster"
    )]
    #[tokio::test]
    #[allow(clippy::unwrap_used, clippy::expect_used, reason = "a test")]
    async fn a_transaction_that_ended_under_a_write_is_found_and_its_write_published() {
        use std::sync::atomic::{AtomicU32, Ordering};

        sqlx::any::install_default_drivers();
        let node1 = std::env::var("TEST_GALERA_URLS").unwrap();
        let mut url = url::Url::parse(node1.split(',').next().unwrap()).unwrap();
        let name = format!("{}_lost_tx", url.path().trim_start_matches('/'));
        let mut admin = AnyConnection::connect(url.as_str()).await.expect("node 1");
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
        }
        url.set_path(&name);
        let store = Store::open(&DbConfig::from_url(url.as_str()).unwrap()).await.unwrap();
        assert!(store.galera, "TEST_GALERA_URLS names a Galera node");
        sqlx::raw_sql("CREATE TABLE probe (id INT PRIMARY KEY)")
            .execute(&store.pool)
            .await
            .unwrap();
        let before = store.revision().await.unwrap();

        let attempts = AtomicU32::new(0);
        let outcome = versioned_write!(store, "probe", |tx| {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                sqlx::raw_sql("ROLLBACK").execute(&mut **tx).await?;
            }
            let present: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM probe WHERE id = 1")
                .fetch_one(&mut **tx)
                .await?;
            if present > 0 {
                return Ok(false);
            }
            sqlx::raw_sql("INSERT INTO probe (id) VALUES (1)")
                .execute(&mut **tx)
                .await?;
            Ok(true)
        })
        .expect("retried to success");

        assert_eq!(attempts.load(Ordering::SeqCst), 2, "the lost transaction was run again");
        assert_eq!(
            outcome,
            WriteOutcome {
                revision: before + 1,
                changed: true
            },
            "the write is published, once"
        );
        assert_eq!(
            store.revision().await.unwrap(),
            before + 1,
            "the reported revision committed"
        );
        assert_eq!(store.error_counts().retried(Cause::Deadlock), 1);
        store.close().await;
        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}
