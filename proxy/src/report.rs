//! What the sidecar tells the control plane besides asking for snapshots: audit records of
//! its decisions, in batches, and JWT key ids it could not find. Neither ever holds up a
//! request: each goes through a bounded queue that drops (and counts) what does not fit,
//! and is sent by a task of its own, with bounded retries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use portcullis_wire::api::{AUDIT_PATH, AuditBatch, AuditRecord, MAX_AUDIT_BATCH, UNKNOWN_KID_PATH, UnknownKid};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::control_plane::{ChannelError, Connector, Endpoint};
use crate::metrics::Metrics;

/// Records are sent at least this often (and as soon as a batch is full).
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Tries per batch before it is dropped (counted): the queue keeps filling meanwhile, and
/// what does not fit is dropped too, so a control plane that is down costs bounded memory.
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(8);
/// One report per issuer per this long at most: a client with a stale token retried in a
/// loop must not turn into a stream of refetches.
const KID_REPORT_EVERY: Duration = Duration::from_secs(30);
const KID_QUEUE: usize = 16;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("control plane unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("control plane did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error("control plane answered {0}")]
    Status(StatusCode),
}

/// The sending ends of both queues; shared by every connection.
pub struct Reporter {
    audit: mpsc::Sender<AuditRecord>,
    kids: mpsc::Sender<UnknownKid>,
    /// When each issuer was last reported.
    kid_reported: Mutex<HashMap<String, Instant>>,
    metrics: Arc<Metrics>,
    pub namespace: String,
    pub pod: String,
}

impl Reporter {
    /// The reporter, and the tasks that send what it queues (`queue` audit records at most).
    pub fn start(
        endpoint: Endpoint,
        queue: usize,
        metrics: Arc<Metrics>,
        namespace: String,
        pod: String,
    ) -> (Arc<Reporter>, Vec<JoinHandle<()>>) {
        let (audit, audit_rx) = mpsc::channel(queue.max(1));
        let (kids, kids_rx) = mpsc::channel(KID_QUEUE);
        let tasks = vec![
            tokio::spawn(send_audit(endpoint.clone(), audit_rx, metrics.clone())),
            tokio::spawn(send_unknown_kids(endpoint, kids_rx, metrics.clone())),
        ];
        let reporter = Reporter {
            audit,
            kids,
            kid_reported: Mutex::default(),
            metrics,
            namespace,
            pod,
        };
        (Arc::new(reporter), tasks)
    }

    /// Queues a record; a full queue drops it (counted), never waits.
    pub fn audit(&self, record: AuditRecord) {
        if self.audit.try_send(record).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Queues a report of an unknown `kid`, unless its issuer was reported in the last 30 s.
    pub fn unknown_kid(&self, kid: UnknownKid) {
        let now = Instant::now();
        {
            let mut reported = self.kid_reported.lock().unwrap_or_else(PoisonError::into_inner);
            if reported
                .get(&kid.issuer)
                .is_some_and(|at| now.duration_since(*at) < KID_REPORT_EVERY)
            {
                return;
            }
            // Bounded: only issuers of the snapshot are ever reported (see Verifier::unknown_kid).
            reported.insert(kid.issuer.clone(), now);
        }
        if self.kids.try_send(kid).is_err() {
            self.metrics.unknown_kid_reports.with_label_values(&["dropped"]).inc();
        }
    }
}

/// Unix milliseconds now.
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Collects records into batches of at most [`MAX_AUDIT_BATCH`], sent when full or every
/// second, until the queue closes (what is left is sent then).
async fn send_audit(endpoint: Endpoint, mut queue: mpsc::Receiver<AuditRecord>, metrics: Arc<Metrics>) {
    let client: Client<Connector, Full<Bytes>> = endpoint.client();
    let mut batch: Vec<AuditRecord> = Vec::new();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            received = queue.recv() => match received {
                Some(record) => {
                    batch.push(record);
                    while batch.len() < MAX_AUDIT_BATCH && let Ok(record) = queue.try_recv() {
                        batch.push(record);
                    }
                    if batch.len() < MAX_AUDIT_BATCH {
                        continue;
                    }
                    false
                }
                None => true,
            },
            _ = tick.tick() => false,
        };
        if !batch.is_empty() {
            let records = std::mem::take(&mut batch);
            let count = records.len() as u64;
            match deliver(&client, &endpoint, AUDIT_PATH, &AuditBatch { records }).await {
                Ok(()) => metrics.audit_sent.inc_by(count),
                Err(e) => {
                    metrics.audit_dropped.inc_by(count);
                    warn!(control_plane = ?endpoint, error = %e, records = count, "audit records dropped: the control plane did not take them");
                }
            }
        }
        if closed {
            return;
        }
    }
}

async fn send_unknown_kids(endpoint: Endpoint, mut queue: mpsc::Receiver<UnknownKid>, metrics: Arc<Metrics>) {
    let client: Client<Connector, Full<Bytes>> = endpoint.client();
    while let Some(kid) = queue.recv().await {
        let result = post(&client, &endpoint, UNKNOWN_KID_PATH, &kid).await;
        let outcome = if result.is_ok() { "sent" } else { "failed" };
        metrics.unknown_kid_reports.with_label_values(&[outcome]).inc();
        match result {
            Ok(()) => debug!(issuer = %kid.issuer, kid = %kid.kid, "unknown key id reported"),
            Err(e) => warn!(issuer = %kid.issuer, kid = %kid.kid, error = %e, "cannot report an unknown key id"),
        }
    }
}

/// Posts `body`, retrying with backoff up to [`ATTEMPTS`] times.
async fn deliver<T: Serialize>(
    client: &Client<Connector, Full<Bytes>>,
    endpoint: &Endpoint,
    path: &str,
    body: &T,
) -> Result<(), ReportError> {
    let mut wait = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        match post(client, endpoint, path, body).await {
            Ok(()) => return Ok(()),
            // Too large or malformed will not get better by asking again.
            Err(ReportError::Status(status))
                if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::BAD_REQUEST =>
            {
                return Err(ReportError::Status(status));
            }
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(e) => {
                debug!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64, "audit batch not taken; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_RETRY);
                attempt += 1;
            }
        }
    }
}

async fn post<T: Serialize>(
    client: &Client<Connector, Full<Bytes>>,
    endpoint: &Endpoint,
    path: &str,
    body: &T,
) -> Result<(), ReportError> {
    let mut request =
        Request::post(endpoint.uri(path)?).header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(authorization) = endpoint.authorization().await? {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let request = request.body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| ReportError::Timeout)??;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(ReportError::Status(response.status()))
    }
}
