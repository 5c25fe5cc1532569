//! Prometheus metrics. Every label is bounded: rule names come from the policy,
//! never from the request; methods outside the known set are `other`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::policy::snapshot::Current;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub auth: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub limits: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections: IntCounterVec,
    pub snapshot_revision: IntGauge,
    pub snapshot_age: IntGauge,
    pub snapshot_updates: IntCounterVec,
    pub audit_sent: IntCounter,
    pub audit_dropped: IntCounter,
    pub unknown_kid_reports: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let requests = counter(
            "portcullis_proxy_requests_total",
            "Requests answered, by matched rule (none: no rule matched; -: refused before routing), method and status.",
            &["rule", "method", "status"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_proxy_request_duration_seconds",
                "Time from request head to response head, by matched rule.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["rule"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(latency.clone()))
            .expect("metric registered once");
        let auth = counter(
            "portcullis_proxy_auth_decisions_total",
            "Authentication and authorization decisions, by credential (jwt, api_key, mtls, forwarded_cert, anonymous), result (allow, deny) and reason.",
            &["method", "result", "reason"],
        );
        let upstream_errors = counter(
            "portcullis_proxy_upstream_errors_total",
            "Requests the app did not answer, by kind (connect, timeout, closed, malformed, head_too_large, protocol), response bodies the app broke off (body_truncated), and auth-route requests the control plane did not answer (control_plane).",
            &["kind"],
        );
        let limits = counter(
            "portcullis_proxy_limit_hits_total",
            "Requests or connections stopped by a limit (header_size, header_timeout, idle_timeout, body_size, max_connections, rate_limit, bad_request).",
            &["limit"],
        );
        let connections = counter(
            "portcullis_proxy_connections_total",
            "Client connections accepted, by listener (http, tls).",
            &["listener"],
        );
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        Metrics {
            audit_sent: plain(
                "portcullis_audit_sent_total",
                "Audit records the control plane accepted.",
            ),
            audit_dropped: plain(
                "portcullis_audit_dropped_total",
                "Audit records dropped: the queue was full, or the control plane did not take them after retries.",
            ),
            unknown_kid_reports: counter(
                "portcullis_proxy_unknown_kid_reports_total",
                "Reports to the control plane of a JWT key id its issuer has no key for, by result (sent, failed, dropped).",
                &["result"],
            ),
            requests,
            latency,
            auth,
            upstream_errors,
            limits,
            connections,
            connections_open: gauge("portcullis_proxy_connections_open", "Client connections open now."),
            snapshot_revision: gauge(
                "portcullis_proxy_snapshot_revision",
                "Revision of the policy snapshot in force.",
            ),
            snapshot_age: gauge(
                "portcullis_proxy_snapshot_age_seconds",
                "Seconds since the control plane last answered (or the file was last checked); grows while it is unreachable. Past --max-staleness requests are refused.",
            ),
            snapshot_updates: counter(
                "portcullis_proxy_snapshot_updates_total",
                "Snapshots received, by result (installed, refused, error).",
                &["result"],
            ),
            registry,
        }
    }

    /// The text exposition, with the snapshot gauges brought up to date.
    pub fn render(&self, current: &Current) -> Vec<u8> {
        if let Some(compiled) = current.load() {
            self.snapshot_revision.set(compiled.revision);
        }
        self.snapshot_age.set(current.age_seconds().unwrap_or(-1));
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
