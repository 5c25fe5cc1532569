//! The audit sink (`POST /api/v1/audit`), unknown-`kid` reports
//! (`POST /api/v1/issuers/unknown-kid`) and the audit log's retention.

use std::sync::Arc;
use std::time::Duration;

use portcullis_wire::api::{AuditRecord, UnknownKid};

use crate::metrics::Metrics;
use crate::store::{RequestAudit, Store};

/// Rows deleted per statement by the retention task.
const RETENTION_BATCH: i64 = 5_000;
/// How often the retention task runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// A record as the database stores it, cut to the columns' sizes (a sidecar is
/// trusted with its namespace's records, not with the size of our columns).
pub fn to_row(record: &AuditRecord) -> RequestAudit {
    RequestAudit {
        occurred_at: record.at_ms.div_euclid(1000),
        correlation_id: cut(&record.correlation_id, 64),
        namespace: cut(&record.namespace, 63),
        pod: cut(&record.pod, 253),
        actor: record.actor.as_deref().map(|a| cut(a, 512)),
        method: cut(&record.method, 16),
        path: cut(&record.path, 2048),
        rule: record.rule.as_deref().map(|r| cut(r, 512)),
        decision: record.decision.as_str().to_string(),
        reason: cut(&record.reason, 256),
        status: record.status,
        client: record.client.as_deref().map(|c| cut(c, 64)),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Deletes audit rows older than `max_age`, in batches, every hour, for ever.
pub async fn retain(store: Store, max_age: Duration) {
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    loop {
        let before = portcullis_wire::unix_now().saturating_sub(max_age);
        let mut deleted = 0u64;
        loop {
            match store.delete_audit_before(before, RETENTION_BATCH).await {
                Ok(n) => {
                    deleted += n;
                    if n < RETENTION_BATCH.unsigned_abs() {
                        break;
                    }
                    // Let other writers in between batches.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "audit retention failed; next run in an hour");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "audit rows past retention deleted");
        }
        tokio::time::sleep(RETENTION_EVERY).await;
    }
}

/// Where unknown-`kid` reports go: the issuer refresher, through a bounded channel
/// (a full channel drops the report: the refresher is already busy refetching).
#[derive(Clone)]
pub struct KidReports {
    tx: tokio::sync::mpsc::Sender<UnknownKid>,
    metrics: Arc<Metrics>,
}

impl KidReports {
    pub fn new(metrics: Arc<Metrics>) -> (KidReports, tokio::sync::mpsc::Receiver<UnknownKid>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (KidReports { tx, metrics }, rx)
    }

    pub fn report(&self, kid: UnknownKid) {
        let outcome = match self.tx.try_send(kid) {
            Ok(()) => "queued",
            Err(_) => "dropped",
        };
        self.metrics.unknown_kid_report(outcome);
    }
}

#[cfg(test)]
mod tests {
    use portcullis_wire::api::Decision;

    use super::*;

    #[test]
    fn records_are_cut_to_the_columns_at_character_boundaries() {
        let record = AuditRecord {
            at_ms: 1_700_000_000_999,
            correlation_id: "c".repeat(100),
            namespace: "shop".into(),
            pod: "p".into(),
            actor: Some("é".repeat(400)),
            method: "GET".into(),
            path: "/a".into(),
            rule: None,
            decision: Decision::Deny,
            reason: "forbidden".into(),
            status: 403,
            client: None,
        };
        let row = to_row(&record);
        assert_eq!(row.occurred_at, 1_700_000_000);
        assert_eq!(row.correlation_id.len(), 64);
        let actor = row.actor.unwrap();
        assert!(actor.len() <= 512 && actor.chars().all(|c| c == 'é'));
        assert_eq!(row.decision, "deny");
    }
}
