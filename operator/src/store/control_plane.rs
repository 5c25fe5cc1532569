//! What the control-plane API needs of the database: the epoch, a cheap way to learn
//! of new revisions (PostgreSQL notifications), and the sidecars' audit records.

use rand::RngCore;
use sqlx::Row;

use super::{Backend, Result, Store, StoreError, unix_now};

/// Channel on which PostgreSQL announces revision bumps (trigger of migration 0002).
pub const REVISION_CHANNEL: &str = "portcullis_revision";

/// One sidecar decision to append to `audit_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAudit {
    /// Unix seconds.
    pub occurred_at: i64,
    pub correlation_id: String,
    pub namespace: String,
    pub pod: String,
    pub actor: Option<String>,
    pub method: String,
    pub path: String,
    pub rule: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    pub reason: String,
    pub status: u16,
    pub client: Option<String>,
}

/// A connection that receives PostgreSQL's revision notifications.
pub struct RevisionListener {
    listener: sqlx::postgres::PgListener,
}

impl RevisionListener {
    /// Waits for the next notification. `Ok(false)`: the connection was lost (and is
    /// re-established on the next call), so bumps may have been missed: poll once.
    pub async fn next(&mut self) -> Result<bool> {
        Ok(self.listener.try_recv().await?.is_some())
    }
}

impl Store {
    /// The database's epoch, made (random, 128 bits, hex) the first time it is asked for.
    /// Replicas starting together race on the insert; the loser reads the winner's.
    pub async fn epoch(&self) -> Result<String> {
        if let Some(epoch) = self.read_epoch().await? {
            return Ok(epoch);
        }
        let inserted = self
            .query("INSERT INTO epoch (id, value, created_at) VALUES (1, ?, ?)")
            .bind(random_epoch())
            .bind(unix_now())
            .execute(&self.pool)
            .await;
        match (inserted, self.read_epoch().await?) {
            (_, Some(epoch)) => Ok(epoch),
            (Err(e), None) => Err(e.into()),
            (Ok(_), None) => Err(StoreError::Corrupt {
                what: "epoch",
                reason: "inserted but not found".into(),
            }),
        }
    }

    async fn read_epoch(&self) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(self.sql("SELECT value FROM epoch WHERE id = 1"))
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Replaces the epoch (after a restore, or to reset every sidecar) and bumps the
    /// revision so that every replica notices and serves the new epoch at once.
    pub async fn new_epoch(&self) -> Result<String> {
        let epoch = random_epoch();
        versioned_write!(self, "new_epoch", |tx| {
            self.query("DELETE FROM epoch WHERE id = 1").execute(&mut **tx).await?;
            self.query("INSERT INTO epoch (id, value, created_at) VALUES (1, ?, ?)")
                .bind(&epoch)
                .bind(unix_now())
                .execute(&mut **tx)
                .await?;
            Ok(true)
        })?;
        Ok(epoch)
    }

    /// A listener of revision notifications on PostgreSQL; `None` on the other
    /// backends, which have no such thing (callers poll [`Store::revision`]).
    pub async fn revision_listener(&self) -> Result<Option<RevisionListener>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let options = sqlx::postgres::PgConnectOptions::try_from(&*self.pool.connect_options())?;
        // A pool of its own: the listener holds its connection for good, and must not
        // take one of the store's.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
        listener.listen(REVISION_CHANNEL).await?;
        Ok(Some(RevisionListener { listener }))
    }

    /// Appends sidecars' request decisions in one transaction (outside the revision:
    /// no snapshot holds the audit log).
    pub async fn append_request_audit(&self, records: &[RequestAudit]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        unversioned_write!(self, "append_request_audit", |tx| {
            for r in records {
                self.query("INSERT INTO audit_log (occurred_at, correlation_id, actor, action, resource, decision, reason, source_ip, namespace, pod, method, path, rule, status) VALUES (?, ?, ?, 'request', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                    .bind(r.occurred_at)
                    .bind(&r.correlation_id)
                    .bind(&r.actor)
                    .bind(&r.path)
                    .bind(&r.decision)
                    .bind(&r.reason)
                    .bind(&r.client)
                    .bind(&r.namespace)
                    .bind(&r.pod)
                    .bind(&r.method)
                    .bind(&r.path)
                    .bind(&r.rule)
                    .bind(i32::from(r.status))
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        })
    }

    /// Sidecar decisions recorded under `correlation_id`, oldest first.
    pub async fn request_audit_by_correlation(&self, correlation_id: &str) -> Result<Vec<RequestAudit>> {
        let rows = self
            .query("SELECT occurred_at, correlation_id, actor, decision, reason, source_ip, namespace, pod, method, path, rule, status FROM audit_log WHERE correlation_id = ? AND action = 'request' ORDER BY id")
            .bind(correlation_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RequestAudit {
                    occurred_at: row.try_get("occurred_at")?,
                    correlation_id: row.try_get::<Option<String>, _>("correlation_id")?.unwrap_or_default(),
                    namespace: row.try_get::<Option<String>, _>("namespace")?.unwrap_or_default(),
                    pod: row.try_get::<Option<String>, _>("pod")?.unwrap_or_default(),
                    actor: row.try_get("actor")?,
                    method: row.try_get::<Option<String>, _>("method")?.unwrap_or_default(),
                    path: row.try_get::<Option<String>, _>("path")?.unwrap_or_default(),
                    rule: row.try_get("rule")?,
                    decision: row.try_get("decision")?,
                    reason: row.try_get::<Option<String>, _>("reason")?.unwrap_or_default(),
                    status: u16::try_from(row.try_get::<Option<i64>, _>("status")?.unwrap_or(0)).unwrap_or(0),
                    client: row.try_get("source_ip")?,
                })
            })
            .collect()
    }

    /// Deletes at most `batch` audit rows older than `before` (Unix seconds); returns
    /// how many went. Callers repeat until fewer than `batch` go, so that no single
    /// statement holds locks on millions of rows.
    pub async fn delete_audit_before(&self, before: i64, batch: i64) -> Result<u64> {
        let sql = match self.backend {
            // MySQL and MariaDB refuse LIMIT inside an IN subquery but take it on DELETE.
            Backend::MySql => "DELETE FROM audit_log WHERE occurred_at < ? ORDER BY id LIMIT ?",
            // SQLite's DELETE … LIMIT is a compile-time option; a subquery works everywhere.
            Backend::Postgres | Backend::Sqlite => {
                "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE occurred_at < ? ORDER BY id LIMIT ?)"
            }
        };
        let done = self.query(sql).bind(before).bind(batch).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}

/// 128 random bits in hex.
fn random_epoch() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
