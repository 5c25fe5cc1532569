//! The operator's Prometheus metrics, in a registry of its own.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::store::{Cause, ErrorCounts, Store};

/// Reconcile and database figures, rendered at `/metrics`.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pool: IntGaugeVec,
    leader: IntGauge,
    revision: IntGauge,
    database_up: IntGauge,
    store_errors: Arc<OnceLock<Arc<ErrorCounts>>>,
    webhook_requests: IntCounterVec,
    webhook_cert_expiry: IntGauge,
    api: ApiMetrics,
}

/// The control-plane API's figures (`portcullis_operator_api_*`).
struct ApiMetrics {
    long_polls_waiting: IntGauge,
    snapshots_served: IntCounterVec,
    snapshot_build: Histogram,
    bytes_sent: IntCounter,
    audit_records: IntCounterVec,
    auth_failures: IntCounterVec,
    revision_seen: IntGauge,
    unknown_kids: IntCounterVec,
}

impl ApiMetrics {
    fn new(registry: &Registry) -> prometheus::Result<ApiMetrics> {
        let api = ApiMetrics {
            long_polls_waiting: IntGauge::new(
                "portcullis_operator_api_long_polls_waiting",
                "Snapshot long polls waiting for a new revision now.",
            )?,
            snapshots_served: IntCounterVec::new(
                Opts::new(
                    "portcullis_operator_api_snapshot_requests_total",
                    "Snapshot requests answered, by HTTP status (200 a snapshot, 304 nothing newer within the wait).",
                ),
                &["code"],
            )?,
            snapshot_build: Histogram::with_opts(
                HistogramOpts::new(
                    "portcullis_operator_api_snapshot_build_seconds",
                    "Time to read a snapshot from the database at a new revision.",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            bytes_sent: IntCounter::new(
                "portcullis_operator_api_snapshot_bytes_sent_total",
                "Snapshot bytes sent to sidecars (compressed size when gzipped).",
            )?,
            audit_records: IntCounterVec::new(
                Opts::new(
                    "portcullis_operator_api_audit_records_total",
                    "Audit records received from sidecars, by result (written, dropped: the database refused the batch).",
                ),
                &["result"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "portcullis_operator_api_auth_failures_total",
                    "API callers refused, by reason (missing, malformed, rejected, not_service_account, review_unavailable, wrong_namespace).",
                ),
                &["reason"],
            )?,
            revision_seen: IntGauge::new(
                "portcullis_operator_api_revision_seen",
                "Revision of the snapshot this replica serves.",
            )?,
            unknown_kids: IntCounterVec::new(
                Opts::new(
                    "portcullis_operator_api_unknown_kid_reports_total",
                    "Unknown-kid reports from sidecars, by outcome (queued for the issuer refresher, dropped when it is busy).",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(api.long_polls_waiting.clone()))?;
        registry.register(Box::new(api.snapshots_served.clone()))?;
        registry.register(Box::new(api.snapshot_build.clone()))?;
        registry.register(Box::new(api.bytes_sent.clone()))?;
        registry.register(Box::new(api.audit_records.clone()))?;
        registry.register(Box::new(api.auth_failures.clone()))?;
        registry.register(Box::new(api.revision_seen.clone()))?;
        registry.register(Box::new(api.unknown_kids.clone()))?;
        Ok(api)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[allow(
        clippy::expect_used,
        reason = "names and label sets are constants: building them cannot fail at run time, and the unit test builds them"
    )]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconcile_total",
                "Reconciles by controller and result.",
            ),
            &["controller", "result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconcile_errors_total",
                "Failed reconciles by controller and reason.",
            ),
            &["controller", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_operator_reconcile_duration_seconds",
                "Time spent in one reconcile.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let pool = IntGaugeVec::new(
            Opts::new(
                "portcullis_operator_db_pool_connections",
                "Database pool connections by state.",
            ),
            &["state"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "portcullis_operator_leader",
            "1 when this replica holds the leader lease.",
        )
        .expect("valid metric");
        let revision = IntGauge::new(
            "portcullis_operator_store_revision",
            "Current revision of the database.",
        )
        .expect("valid metric");
        let database_up = IntGauge::new(
            "portcullis_operator_database_up",
            "1 when the database answered the last probe (every 5 s and at each /readyz), 0 when it did not.",
        )
        .expect("valid metric");
        let webhook_requests = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_webhook_requests_total",
                "Admission requests of the sidecar injection webhook by result (injected, skipped, refused, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let webhook_cert_expiry = IntGauge::new(
            "portcullis_operator_webhook_cert_expiry_timestamp_seconds",
            "End of validity (Unix seconds) of the webhook's serving certificate in force; 0 before one is loaded.",
        )
        .expect("valid metric");
        let store_errors = Arc::new(OnceLock::new());
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(pool.clone()),
            Box::new(leader.clone()),
            Box::new(revision.clone()),
            Box::new(database_up.clone()),
            Box::new(webhook_requests.clone()),
            Box::new(webhook_cert_expiry.clone()),
            Box::new(DatabaseErrors::new(store_errors.clone()).expect("valid metric")),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        let api = ApiMetrics::new(&registry).expect("valid, unique API metrics");
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            pool,
            leader,
            revision,
            database_up,
            store_errors,
            webhook_requests,
            webhook_cert_expiry,
            api,
        }
    }

    /// A long poll starts (`+1`) or ends (`-1`) waiting.
    pub fn long_polls_waiting(&self, delta: i64) {
        self.api.long_polls_waiting.add(delta);
    }

    pub fn snapshot_served(&self, code: u16) {
        self.api
            .snapshots_served
            .with_label_values(&[code.to_string().as_str()])
            .inc();
    }

    pub fn observe_snapshot_build(&self, took: std::time::Duration, revision: i64) {
        self.api.snapshot_build.observe(took.as_secs_f64());
        self.api.revision_seen.set(revision);
    }

    pub fn bytes_sent(&self, bytes: usize) {
        self.api.bytes_sent.inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// `result`: `written` or `dropped`.
    pub fn audit_records(&self, result: &str, count: usize) {
        self.api
            .audit_records
            .with_label_values(&[result])
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    pub fn auth_failure(&self, reason: &str) {
        self.api.auth_failures.with_label_values(&[reason]).inc();
    }

    pub fn unknown_kid_report(&self, outcome: &str) {
        self.api.unknown_kids.with_label_values(&[outcome]).inc();
    }

    /// Reports `store`'s database errors (`portcullis_operator_database_errors_total`).
    /// The first store observed is the one reported.
    pub fn observe_store(&self, store: &Store) {
        let _ = self.store_errors.set(store.error_counts());
    }

    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// Starts timing a reconcile of `controller`.
    pub fn reconcile_timer(&self, controller: &str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller: controller.to_string(),
            histogram: self.duration.with_label_values(&[controller]),
            started: Instant::now(),
        }
    }

    pub fn set_pool(&self, open: u32, idle: usize) {
        self.pool.with_label_values(&["open"]).set(i64::from(open));
        self.pool
            .with_label_values(&["idle"])
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_revision(&self, revision: i64) {
        self.revision.set(revision);
    }

    /// Counts one admission request of the injection webhook; `result` is one of
    /// `injected`, `skipped`, `refused`, `error` (a bounded set).
    pub fn webhook_request(&self, result: &str) {
        self.webhook_requests.with_label_values(&[result]).inc();
    }

    pub fn set_webhook_cert_expiry(&self, not_after: i64) {
        self.webhook_cert_expiry.set(not_after);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

const DATABASE_ERRORS: &str = "portcullis_operator_database_errors_total";
const DATABASE_ERRORS_HELP: &str =
    "Database errors met by the operator's transactions, by cause, retried or failed (handed to the caller).";

/// `portcullis_operator_database_errors_total`, read from the store's counters at each
/// scrape (the store counts with atomics and knows nothing of Prometheus).
struct DatabaseErrors {
    desc: Desc,
    counts: Arc<OnceLock<Arc<ErrorCounts>>>,
}

impl DatabaseErrors {
    fn new(counts: Arc<OnceLock<Arc<ErrorCounts>>>) -> prometheus::Result<Self> {
        let desc = Desc::new(
            DATABASE_ERRORS.into(),
            DATABASE_ERRORS_HELP.into(),
            vec!["cause".into(), "result".into()],
            Default::default(),
        )?;
        Ok(DatabaseErrors { desc, counts })
    }
}

impl Collector for DatabaseErrors {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(counts) = self.counts.get() else {
            return Vec::new();
        };
        let Ok(vec) = IntCounterVec::new(Opts::new(DATABASE_ERRORS, DATABASE_ERRORS_HELP), &["cause", "result"]) else {
            return Vec::new();
        };
        for cause in Cause::ALL {
            vec.with_label_values(&[cause.as_str(), "retried"])
                .inc_by(counts.retried(cause));
            vec.with_label_values(&[cause.as_str(), "failed"])
                .inc_by(counts.failed(cause));
        }
        vec.collect()
    }
}

/// Observes a reconcile's duration and result.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: String,
    histogram: Histogram,
    started: Instant,
}

impl ReconcileTimer<'_> {
    /// `Err(reason)` counts a failure under that (bounded) reason.
    pub fn finish(self, result: Result<(), &str>) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reconciles
            .with_label_values(&[self.controller.as_str(), outcome])
            .inc();
        if let Err(reason) = result {
            self.metrics
                .errors
                .with_label_values(&[self.controller.as_str(), reason])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reconciles_errors_and_durations() {
        let m = Metrics::new();
        m.reconcile_timer("user").finish(Ok(()));
        m.reconcile_timer("user").finish(Err("DatabaseUnavailable"));
        m.set_pool(5, 3);
        m.set_leader(true);
        m.set_revision(42);
        let text = m.render();
        for line in [
            r#"portcullis_operator_reconcile_total{controller="user",result="ok"} 1"#,
            r#"portcullis_operator_reconcile_total{controller="user",result="error"} 1"#,
            r#"portcullis_operator_reconcile_errors_total{controller="user",reason="DatabaseUnavailable"} 1"#,
            r#"portcullis_operator_reconcile_duration_seconds_count{controller="user"} 2"#,
            r#"portcullis_operator_db_pool_connections{state="idle"} 3"#,
            "portcullis_operator_leader 1",
            "portcullis_operator_store_revision 42",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn renders_database_health_and_errors_by_cause() {
        let m = Metrics::new();
        assert!(!m.render().contains("portcullis_operator_database_errors_total"));
        let config = crate::store::DbConfig::from_url("sqlite::memory:").unwrap();
        let store = Store::open(&config).await.unwrap();
        m.observe_store(&store);
        m.set_database_up(false);
        let text = m.render();
        for line in [
            "portcullis_operator_database_up 0",
            r#"portcullis_operator_database_errors_total{cause="node_not_ready",result="retried"} 0"#,
            r#"portcullis_operator_database_errors_total{cause="connection",result="failed"} 0"#,
            "# TYPE portcullis_operator_database_errors_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        m.set_database_up(true);
        assert!(m.render().lines().any(|l| l == "portcullis_operator_database_up 1"));
    }
}
