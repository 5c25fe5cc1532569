//! The audit log: appended in batches, outside the revision (no snapshot holds it).

use sqlx::Row;

use super::{Result, Store};

/// One audit record: who did what to which resource, and what was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub occurred_at: i64,
    pub correlation_id: Option<String>,
    pub actor: Option<String>,
    pub action: String,
    pub resource: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    pub reason: Option<String>,
    pub source_ip: Option<String>,
}

impl Store {
    /// Appends a batch of audit events in one transaction. The audit log is not part
    /// of any snapshot, so appending does not bump the revision (sidecars would
    /// otherwise refetch their snapshot for every batch of audit events).
    pub async fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        unversioned_write!(self, "append_audit", |tx| {
            for e in events {
                self.query("INSERT INTO audit_log (occurred_at, correlation_id, actor, action, resource, decision, reason, source_ip) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                    .bind(e.occurred_at)
                    .bind(&e.correlation_id)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.resource)
                    .bind(&e.decision)
                    .bind(&e.reason)
                    .bind(&e.source_ip)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        })
    }

    /// The most recent audit events, newest first.
    pub async fn recent_audit(&self, limit: i64) -> Result<Vec<AuditEvent>> {
        let rows = self
            .query("SELECT occurred_at, correlation_id, actor, action, resource, decision, reason, source_ip FROM audit_log ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    occurred_at: row.try_get("occurred_at")?,
                    correlation_id: row.try_get("correlation_id")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    resource: row.try_get("resource")?,
                    decision: row.try_get("decision")?,
                    reason: row.try_get("reason")?,
                    source_ip: row.try_get("source_ip")?,
                })
            })
            .collect()
    }
}
