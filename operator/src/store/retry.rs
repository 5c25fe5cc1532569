//! Which database errors are worth retrying, and the retry loop around a transaction.
//!
//! Galera (MariaDB/MySQL clusters) fails a commit that loses certification with a
//! deadlock error, and a node that is joining answers "WSREP has not yet prepared node
//! for application use"; PostgreSQL reports deadlocks and serialization failures;
//! SQLite reports a busy or locked database. All of these succeed when the whole
//! transaction is run again, so every store write runs inside [`with_retry`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::error::DatabaseError;

use super::error::StoreError;

/// MySQL / MariaDB error numbers.
const MYSQL_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// ER_LOCK_DEADLOCK, SQLSTATE 40001: also how Galera reports a certification failure.
const MYSQL_DEADLOCK: u16 = 1213;
/// ER_UNKNOWN_COM_ERROR, SQLSTATE 08S01: Galera's "WSREP has not yet prepared node".
const MYSQL_UNKNOWN_COM_ERROR: u16 = 1047;
const MYSQL_SERVER_SHUTDOWN: u16 = 1053;
const MYSQL_CONNECTION_KILLED: u16 = 1927;
const MYSQL_QUERY_INTERRUPTED: u16 = 1317;

/// Whether a database error is worth retrying.
pub fn is_transient(err: &sqlx::Error) -> bool {
    cause(err).is_transient()
}

/// Why a database operation failed: a bounded label for metrics and logs, and what
/// decides whether the transaction is run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A deadlock, or (Galera) a transaction that lost certification to a write made
    /// through another node, or was aborted by one being applied: MySQL error 1213.
    Deadlock,
    /// PostgreSQL serialization failure.
    Serialization,
    /// MySQL lock wait timeout (1205).
    LockTimeout,
    /// Galera: the node is not part of the primary component (lost quorum, isolated,
    /// joining): "WSREP has not yet prepared node for application use" (1047).
    NodeNotReady,
    /// PostgreSQL is starting up or recovering (57P03).
    StartingUp,
    /// SQLite: the database is busy or locked.
    Busy,
    /// The connection broke (server gone, restarted, connection killed).
    Connection,
    /// No pooled connection within the acquire timeout: the server does not accept
    /// connections (the pool has already waited, so this is not retried).
    PoolTimeout,
    /// Anything else the database said: not retried.
    Other,
}

impl Cause {
    pub const ALL: [Cause; 9] = [
        Cause::Deadlock,
        Cause::Serialization,
        Cause::LockTimeout,
        Cause::NodeNotReady,
        Cause::StartingUp,
        Cause::Busy,
        Cause::Connection,
        Cause::PoolTimeout,
        Cause::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Deadlock => "deadlock",
            Cause::Serialization => "serialization",
            Cause::LockTimeout => "lock_timeout",
            Cause::NodeNotReady => "node_not_ready",
            Cause::StartingUp => "starting_up",
            Cause::Busy => "busy",
            Cause::Connection => "connection",
            Cause::PoolTimeout => "pool_timeout",
            Cause::Other => "other",
        }
    }

    /// Whether running the whole transaction again may succeed.
    pub fn is_transient(self) -> bool {
        !matches!(self, Cause::PoolTimeout | Cause::Other)
    }
}

/// What sqlx says when the connection closes before the answer to its SSLRequest.
const SSL_REQUEST_CLOSED: &str = "unexpected response from SSLRequest: 0x00";

/// Classifies a database error.
pub fn cause(err: &sqlx::Error) -> Cause {
    match err {
        sqlx::Error::Database(db) => database_cause(db.as_ref()),
        // The connection dropped: the database may be restarting or failing over.
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Tls(_) => Cause::Connection,
        // With TLS compiled in, PostgreSQL connections start with an SSLRequest; a server
        // (or a proxy in front of it) that closes the connection before answering is read
        // by sqlx as the byte 0x00, not as the end of the stream: the same dropped connection.
        sqlx::Error::Protocol(message) if message.starts_with(SSL_REQUEST_CLOSED) => Cause::Connection,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Cause::PoolTimeout,
        _ => Cause::Other,
    }
}

fn database_cause(db: &dyn DatabaseError) -> Cause {
    if db.message().contains("WSREP") {
        return Cause::NodeNotReady;
    }
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return match my.number() {
            MYSQL_DEADLOCK => Cause::Deadlock,
            MYSQL_LOCK_WAIT_TIMEOUT => Cause::LockTimeout,
            MYSQL_UNKNOWN_COM_ERROR => Cause::NodeNotReady,
            // The server is shutting down or killed this connection's query/connection.
            MYSQL_SERVER_SHUTDOWN | MYSQL_CONNECTION_KILLED | MYSQL_QUERY_INTERRUPTED => Cause::Connection,
            _ => Cause::Other,
        };
    }
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes carry the primary code in their low byte.
        return match code.parse::<i64>().map(|c| c & 0xff) {
            Ok(5 | 6) => Cause::Busy, // SQLITE_BUSY, SQLITE_LOCKED
            _ => Cause::Other,
        };
    }
    match code {
        "40001" => Cause::Serialization,
        "40P01" => Cause::Deadlock,
        "57P03" => Cause::StartingUp,
        // admin_shutdown, crash_shutdown: the server is going down (pg_ctl stop -m fast,
        // pg_terminate_backend); the next connection may reach it again.
        "57P01" | "57P02" => Cause::Connection,
        _ => Cause::Other,
    }
}

/// Errors met by a store's transactions, by cause: retried, or given up on (handed to
/// the caller). Shared by every clone of a `Store`; read by the operator's metrics.
#[derive(Debug, Default)]
pub struct ErrorCounts {
    retried: [AtomicU64; Cause::ALL.len()],
    failed: [AtomicU64; Cause::ALL.len()],
}

impl ErrorCounts {
    /// How many times a transaction was run again after this cause.
    pub fn retried(&self, cause: Cause) -> u64 {
        self.retried[cause as usize].load(Ordering::Relaxed)
    }

    /// How many transactions failed for good with this cause.
    pub fn failed(&self, cause: Cause) -> u64 {
        self.failed[cause as usize].load(Ordering::Relaxed)
    }

    fn record(&self, cause: Cause, retried: bool) {
        let counts = if retried { &self.retried } else { &self.failed };
        counts[cause as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1`: exponential, with jitter so that the two
    /// sides of a deadlock do not collide again in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.first_backoff.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Jitter in [50 %, 100 %] of the backoff.
        capped.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
    }
}

/// Runs `op` until it succeeds, fails with a non-transient error, or `policy` runs out.
/// `op` must be a whole transaction: each call starts from scratch.
pub async fn with_retry<T, F, Fut>(policy: RetryPolicy, what: &str, op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    with_retry_counted(policy, None, what, op).await
}

/// [`with_retry`], counting the database errors met in `counts`.
pub async fn with_retry_counted<T, F, Fut>(
    policy: RetryPolicy,
    counts: Option<&ErrorCounts>,
    what: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        let err = match op().await {
            Err(err @ (StoreError::Database(_) | StoreError::TransactionLost)) => err,
            other => return other,
        };
        let cause = match &err {
            StoreError::Database(err) => cause(err),
            // An abort by a conflicting write, reported late.
            _ => Cause::Deadlock,
        };
        let retry = cause.is_transient() && attempt + 1 < policy.max_attempts;
        if let Some(counts) = counts {
            counts.record(cause, retry);
        }
        if !retry {
            if cause.is_transient() {
                tracing::warn!(operation = what, attempts = attempt + 1, cause = cause.as_str(), error = %err, "database error persisted through every retry");
            }
            return Err(err);
        }
        let wait = policy.backoff(attempt);
        tracing::debug!(operation = what, attempt, ?wait, cause = cause.as_str(), error = %err, "transient database error, retrying");
        attempt += 1;
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;
    use std::fmt;
    use std::sync::atomic::AtomicU32;

    use sqlx::error::ErrorKind;

    use super::*;

    #[test]
    fn a_connection_closed_before_the_tls_answer_is_a_dropped_connection() {
        let closed = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x00".into());
        assert_eq!(cause(&closed), Cause::Connection);
        assert!(is_transient(&closed));
        let garbage = sqlx::Error::Protocol("unexpected response from SSLRequest: 0x45".into());
        assert_eq!(
            cause(&garbage),
            Cause::Other,
            "a server answering nonsense is not retried"
        );
    }

    /// A database error as a Galera node or any SQLSTATE-speaking server would report it;
    /// the real ones cannot be provoked without a cluster.
    #[derive(Debug)]
    struct FakeDbError {
        code: &'static str,
        message: &'static str,
    }

    impl fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message)
        }
    }

    impl StdError for FakeDbError {}

    impl DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn db_error(code: &'static str, message: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError { code, message }))
    }

    #[test]
    fn classifies_transient_errors() {
        assert!(is_transient(&db_error(
            "08S01",
            "WSREP has not yet prepared node for application use"
        )));
        assert!(is_transient(&db_error(
            "40001",
            "Deadlock found when trying to get lock; try restarting transaction"
        )));
        assert!(is_transient(&db_error("40P01", "deadlock detected")));
        assert!(is_transient(&db_error("57P03", "the database system is starting up")));
        assert!(!is_transient(&sqlx::Error::PoolTimedOut), "the pool already waited");
        assert!(is_transient(&sqlx::Error::Protocol(
            "unexpected response from SSLRequest: 0x00".into()
        )));
        assert!(!is_transient(&sqlx::Error::Protocol("unexpected message".into())));
        assert!(is_transient(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));

        assert!(!is_transient(&db_error(
            "23505",
            "duplicate key value violates unique constraint"
        )));
        assert!(!is_transient(&db_error("28P01", "password authentication failed")));
        assert!(!is_transient(&db_error("42601", "syntax error")));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn causes_name_what_went_wrong() {
        assert_eq!(
            cause(&db_error(
                "08S01",
                "WSREP has not yet prepared node for application use"
            )),
            Cause::NodeNotReady
        );
        assert_eq!(
            cause(&db_error("40001", "could not serialize access")),
            Cause::Serialization
        );
        assert_eq!(cause(&db_error("40P01", "deadlock detected")), Cause::Deadlock);
        assert_eq!(
            cause(&db_error("57P03", "the database system is starting up")),
            Cause::StartingUp
        );
        assert_eq!(
            cause(&db_error(
                "57P01",
                "terminating connection due to administrator command"
            )),
            Cause::Connection,
            "a server shutting down or a terminated backend: the next connection may work"
        );
        assert_eq!(cause(&sqlx::Error::PoolTimedOut), Cause::PoolTimeout);
        assert_eq!(cause(&sqlx::Error::WorkerCrashed), Cause::Connection);
        assert_eq!(cause(&db_error("23505", "duplicate key")), Cause::Other);
        let labels: std::collections::BTreeSet<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels.len(), Cause::ALL.len(), "one label per cause");
        for (i, c) in Cause::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "ALL is in declaration order (counts are indexed by it)");
        }
    }

    #[tokio::test]
    async fn counts_retried_and_failed_errors_by_cause() {
        let counts = ErrorCounts::default();
        let calls = AtomicU32::new(0);
        let result = with_retry_counted(fast(), Some(&counts), "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(StoreError::Database(db_error("40001", "Deadlock found"))),
                1 => Err(StoreError::Database(sqlx::Error::WorkerCrashed)),
                _ => Ok(()),
            }
        })
        .await;
        assert!(result.is_ok());
        let failed: Result<(), _> = with_retry_counted(fast(), Some(&counts), "test", || async {
            Err(StoreError::Database(sqlx::Error::PoolTimedOut))
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(counts.retried(Cause::Serialization), 1);
        assert_eq!(counts.retried(Cause::Connection), 1);
        assert_eq!(
            counts.failed(Cause::PoolTimeout),
            1,
            "not retried: the pool already waited"
        );
        assert_eq!(counts.retried(Cause::PoolTimeout), 0);
        assert_eq!(counts.failed(Cause::Serialization), 0);
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_wsrep_not_ready_until_the_node_is_ready() {
        let calls = AtomicU32::new(0);
        let result = with_retry(fast(), "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(StoreError::Database(db_error(
                    "08S01",
                    "WSREP has not yet prepared node for application use",
                ))),
                _ => Ok("committed"),
            }
        })
        .await;
        assert_eq!(result.unwrap(), "committed");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retry(fast(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Database(db_error("40001", "Deadlock found")))
        })
        .await;
        assert!(result.unwrap_err().to_string().contains("Deadlock found"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retry(fast(), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(StoreError::Database(db_error("23505", "duplicate key")))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
