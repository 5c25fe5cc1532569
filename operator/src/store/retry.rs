//! Which database errors are worth retrying, and the retry loop around a transaction.
//!
//! Galera (MariaDB/MySQL clusters) fails a commit that loses certification with a
//! deadlock error, and a node that is joining answers "WSREP has not yet prepared node
//! for application use"; PostgreSQL reports deadlocks and serialization failures;
//! SQLite reports a busy or locked database. All of these succeed when the whole
//! transaction is run again, so every store write runs inside [`with_retry`].

use std::future::Future;
use std::time::Duration;

use sqlx::error::DatabaseError;

use super::error::StoreError;

/// PostgreSQL / MySQL SQLSTATEs that mean "run the transaction again".
const TRANSIENT_SQLSTATES: &[&str] = &[
    "40001", // serialization_failure; MySQL's ER_LOCK_DEADLOCK (1213) reports it too
    "40P01", // PostgreSQL deadlock_detected
    "57P03", // PostgreSQL cannot_connect_now (starting up, recovering)
];

/// MySQL / MariaDB error numbers that mean "run the transaction again".
const TRANSIENT_MYSQL_ERRORS: &[u16] = &[
    1205, // ER_LOCK_WAIT_TIMEOUT
    1213, // ER_LOCK_DEADLOCK (also Galera certification failures)
    1047, // ER_UNKNOWN_COM_ERROR: Galera's "WSREP has not yet prepared node"
];

/// SQLite primary result codes: SQLITE_BUSY, SQLITE_LOCKED.
const TRANSIENT_SQLITE_CODES: &[i64] = &[5, 6];

/// Whether a database error is worth retrying.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => is_transient_database_error(db.as_ref()),
        // The connection dropped: the database may be restarting or failing over.
        // (`PoolTimedOut` is not retried here: the pool has already waited.)
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

fn is_transient_database_error(db: &dyn DatabaseError) -> bool {
    if db.message().contains("WSREP") {
        return true;
    }
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return TRANSIENT_MYSQL_ERRORS.contains(&my.number());
    }
    let code = db.code();
    let code = code.as_deref().unwrap_or("");
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Extended result codes carry the primary code in their low byte.
        return code
            .parse::<i64>()
            .is_ok_and(|c| TRANSIENT_SQLITE_CODES.contains(&(c & 0xff)));
    }
    TRANSIENT_SQLSTATES.contains(&code)
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
pub async fn with_retry<T, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(err) if err.is_transient() && attempt + 1 < policy.max_attempts => {
                let wait = policy.backoff(attempt);
                tracing::debug!(operation = what, attempt, ?wait, error = %err, "transient database error, retrying");
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error as StdError;
    use std::fmt;
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::error::ErrorKind;

    use super::*;

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
