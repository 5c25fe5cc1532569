//! The store's errors: configuration errors at start-up, typed errors for callers.

use thiserror::Error;

/// A database configuration that cannot work; reported as one line at start-up.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(
        "no database configured: set DATABASE_URL (e.g. sqlite://portcullis.db) or DB_TYPE with DB_HOST, DB_NAME, DB_USER, DB_PASS"
    )]
    Missing,
    #[error("unknown DB_TYPE {0:?}: use postgres, mysql, mariadb or sqlite")]
    UnknownDbType(String),
    #[error("malformed DATABASE_URL: {0}")]
    MalformedUrl(String),
    #[error("invalid {var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("conflicting database configuration: {0}")]
    Conflict(String),
}

/// What can go wrong in the store. Callers match on the typed variants; `Database` is
/// everything the database said that is not one of them.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The database cannot be used with this configuration: retrying will not help.
    #[error("cannot use the database at {url}: {reason}")]
    Rejected { url: String, reason: String },
    /// The database did not answer within the start-up wait.
    #[error("database at {url} still unreachable after {waited_secs} s: {reason}")]
    Unreachable {
        url: String,
        waited_secs: u64,
        reason: String,
    },
    #[error("e-mail {email:?} already belongs to user {owner:?}")]
    EmailTaken { email: String, owner: String },
    /// An object names others that are not in the database (yet).
    #[error("{kind} not found: {}", names.join(", "))]
    MissingReference { kind: &'static str, names: Vec<String> },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("corrupt {what} in the database: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The transaction was no longer open when it came to commit: a Galera node aborted
    /// it for a conflicting write from another node and the abort was not reported on
    /// the statement it hit, so the statements after it may have run on their own.
    /// Retried like a certification failure, and the retry publishes a revision even if
    /// it finds nothing left to change (see `versioned_write!`).
    #[error("the transaction ended before its commit (aborted for a conflicting write on another Galera node)")]
    TransactionLost,
}

impl StoreError {
    /// Whether the database is out of reach (down, failing over, pool exhausted) rather
    /// than refusing this particular change: callers report "unavailable" and retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)) => true,
            StoreError::Unreachable { .. } => true,
            other => other.is_transient(),
        }
    }

    /// Whether the same operation may succeed if tried again (deadlock, Galera
    /// certification failure, node not ready, connection lost).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(e) => super::retry::is_transient(e),
            StoreError::TransactionLost => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
