//! The operator's Prometheus metrics, in a registry of its own.

use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Reconcile and database figures, rendered at `/metrics`.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    pool: IntGaugeVec,
    leader: IntGauge,
    revision: IntGauge,
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
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(pool.clone()),
            Box::new(leader.clone()),
            Box::new(revision.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            pool,
            leader,
            revision,
        }
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
}
