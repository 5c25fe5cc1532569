//! Whether the database answers: the readiness check of the admin port and the
//! background probe behind `portcullis_operator_database_up`, the pool gauges and the
//! revision gauge. Readiness never depends on leadership: every replica serves its API
//! and webhook, so it is Ready when the database answers and those serve (a follower
//! that waited for the Lease would never become Ready during a rolling update). Both say what is wrong in words (`/readyz`) and in numbers (metrics),
//! and both recover by themselves when the database is back: nothing here needs a restart.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::Readiness;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How long one probe waits for the database: below Kubernetes' default probe timeout
/// (1 s would be too tight for a loaded database; the kubelet's is configurable).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often [`watch`] probes.
pub const PROBE_PERIOD: Duration = Duration::from_secs(5);

/// Reads the revision within [`PROBE_TIMEOUT`]; the error says why not (for a Galera
/// node out of the primary component, in its own words: the SQL error alone may only
/// say "Lock wait timeout").
pub async fn probe(store: &Store) -> Result<i64, String> {
    let (why, pool_starved) = match tokio::time::timeout(PROBE_TIMEOUT, store.revision()).await {
        Ok(Ok(revision)) => return Ok(revision),
        Ok(Err(err)) => {
            let starved = matches!(err, StoreError::Database(sqlx::Error::PoolTimedOut));
            (err.to_string(), starved)
        }
        Err(_) => (format!("no answer within {} s", PROBE_TIMEOUT.as_secs()), true),
    };
    // Say what is wrong in the database's words where the error does not.
    let detail = async {
        if pool_starved && let Some(trouble) = store.connect_trouble().await {
            return Some(format!("cannot connect: {trouble}"));
        }
        store.galera_trouble().await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, detail).await {
        Ok(Some(detail)) => Err(format!("database: {detail} ({why})")),
        _ => Err(format!("database: {why}")),
    }
}

/// Probes once and records the outcome in the gauges.
pub async fn probe_and_record(store: &Store, metrics: &Metrics) -> Result<i64, String> {
    let result = probe(store).await;
    metrics.set_database_up(result.is_ok());
    if let Ok(revision) = result {
        metrics.set_revision(revision);
    }
    let (open, idle) = store.pool_stats();
    metrics.set_pool(open, idle);
    result
}

/// A check of something this replica serves (the webhook, the API): `Err` says why not.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// `/readyz`: the database answers and every check passes. Whether this replica leads
/// is not asked.
pub fn readiness(store: Store, metrics: Arc<Metrics>, checks: Vec<Check>) -> Readiness {
    Readiness::new(move || {
        let (store, metrics, checks) = (store.clone(), metrics.clone(), checks.clone());
        async move {
            probe_and_record(&store, &metrics).await?;
            checks.iter().try_for_each(|check| check())
        }
    })
}

/// Probes every `period`, forever, so that the gauges are fresh when nobody asks
/// `/readyz`; a scrape never waits on SQL. Logs when the database goes and comes back.
pub async fn watch(store: Store, metrics: Arc<Metrics>, period: Duration) {
    metrics.observe_store(&store);
    let mut was_up = true;
    loop {
        match probe_and_record(&store, &metrics).await {
            Ok(_) if !was_up => {
                tracing::info!("database reachable again");
                was_up = true;
            }
            Err(reason) if was_up => {
                tracing::warn!(%reason, "database unreachable");
                was_up = false;
            }
            _ => {}
        }
        tokio::time::sleep(period).await;
    }
}
