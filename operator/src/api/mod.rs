//! The control plane's HTTP API, served by every replica (leader or not) in cluster mode
//! and by local mode alike:
//!
//! - `GET /api/v1/snapshots/{namespace}`: the namespace's policy snapshot, long-polled
//!   ([`snapshots`]; the contract is `portcullis_wire::api`);
//! - `POST /api/v1/audit`: sidecars' audit batches ([`audit`]);
//! - `POST /api/v1/issuers/unknown-kid`: a sidecar met a `kid` no issuer key has;
//! - the token service's routes, merged in [`router`].
//!
//! Every caller is a sidecar with a bearer token ([`auth`]) and may act for its own
//! namespace only. TLS ([`tls`]) unless the address is loopback. Errors use the JSON
//! envelope of [`envelope`].

pub mod audit;
pub mod auth;
pub mod envelope;
pub mod snapshots;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis_wire::api::{
    AUDIT_PATH, AuditBatch, MAX_AUDIT_BATCH, MAX_VIEW_LEN, MAX_WAIT_SECONDS, SnapshotQuery, UNKNOWN_KID_PATH,
    UnknownKid,
};
use tower::ServiceExt;

use self::audit::KidReports;
use self::auth::{AuthFailure, Authenticator};
use self::envelope::{correlation_id, error};
use self::snapshots::Feed;
use crate::metrics::Metrics;
use crate::store::Store;

/// What keeps the API server from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    TlsFile { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    #[error(
        "the API address {0} is not loopback: give --api-tls-cert and --api-tls-key (plain HTTP is only served on loopback)"
    )]
    PlainHttpNotLoopback(SocketAddr),
    #[error("--api-tls-cert and --api-tls-key go together")]
    HalfTls,
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers share.
pub struct ApiState {
    pub feed: Feed,
    pub auth: Authenticator,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub kid_reports: KidReports,
}

/// Every route of the API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/snapshots/{namespace}", get(get_snapshot))
        .route(AUDIT_PATH, post(post_audit))
        .route(UNKNOWN_KID_PATH, post(post_unknown_kid))
        .with_state(state)
        // The token service (`crate::tokens::router`: `/api/v1/auth/*`, `/.well-known/*`,
        // `/api/v1/openapi.json`) is merged beside this by the caller (main.rs), which
        // owns its state; `serve` gives it the peer address for throttling.
        .fallback(not_found)
}

async fn not_found(headers: HeaderMap) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route",
        &correlation_id(&headers),
    )
}

/// The caller's namespace, or the answer that refuses it (counted by reason).
async fn authenticate(state: &ApiState, headers: &HeaderMap, cid: &str) -> Result<String, Response> {
    state.auth.namespace(headers).await.map_err(|failure: AuthFailure| {
        state.metrics.auth_failure(failure.reason());
        error(failure.status(), "unauthenticated", failure.message(), cid)
    })
}

fn forbidden(state: &ApiState, cid: &str) -> Response {
    state.metrics.auth_failure("wrong_namespace");
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this token may only act for its own namespace",
        cid,
    )
}

fn parse_query(raw: Option<&str>) -> Result<SnapshotQuery, String> {
    let mut query = SnapshotQuery {
        revision: -1,
        epoch: String::new(),
        wait: 0,
        view: String::new(),
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "revision" => {
                query.revision = value
                    .parse()
                    .map_err(|_| format!("revision {value:?} is not a number"))?
            }
            "epoch" if value.len() <= 64 => query.epoch = value.into_owned(),
            "epoch" => return Err("epoch too long".into()),
            "view" if value.len() <= MAX_VIEW_LEN => query.view = value.into_owned(),
            "view" => return Err("view too long".into()),
            "wait" => query.wait = value.parse().map_err(|_| format!("wait {value:?} is not a number"))?,
            _ => {}
        }
    }
    query.wait = query.wait.min(MAX_WAIT_SECONDS);
    Ok(query)
}

/// Counts a long poll while it waits.
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.long_polls_waiting(1);
        Waiting(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.long_polls_waiting(-1);
    }
}

async fn get_snapshot(
    State(state): State<Arc<ApiState>>,
    Path(namespace): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let cid = correlation_id(&headers);
    let response = snapshot_answer(&state, &namespace, raw.as_deref(), &headers, &cid).await;
    state.metrics.snapshot_served(response.status().as_u16());
    response
}

async fn snapshot_answer(
    state: &ApiState,
    namespace: &str,
    raw: Option<&str>,
    headers: &HeaderMap,
    cid: &str,
) -> Response {
    let caller = match authenticate(state, headers, cid).await {
        Ok(ns) => ns,
        Err(refused) => return refused,
    };
    if caller != namespace {
        return forbidden(state, cid);
    }
    let query = match parse_query(raw) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_query", &message, cid),
    };
    let gzip = snapshots::accepts_gzip(headers);
    let mut rx = state.feed.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.wait);
    let _waiting = Waiting::new(&state.metrics);
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(built) = &current
            && snapshots::is_news(built, namespace, &query)
        {
            let body = built.body(namespace, gzip).await;
            state.metrics.bytes_sent(body.len());
            return snapshots::snapshot_response(built, namespace, body, gzip, cid);
        }
        let woke = tokio::time::timeout_at(deadline, rx.changed()).await;
        if !matches!(woke, Ok(Ok(()))) {
            return match current.or_else(|| state.feed.current()) {
                Some(built) => snapshots::not_modified(&built, namespace, cid),
                None => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_snapshot",
                    "the control plane has not read a snapshot from its database yet",
                    cid,
                ),
            };
        }
    }
}

async fn post_audit(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let cid = correlation_id(&headers);
    let caller = match authenticate(&state, &headers, &cid).await {
        Ok(ns) => ns,
        Err(refused) => return refused,
    };
    let batch: AuditBatch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("not an audit batch: {e}"),
                &cid,
            );
        }
    };
    if batch.records.len() > MAX_AUDIT_BATCH {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            &format!("at most {MAX_AUDIT_BATCH} records per batch"),
            &cid,
        );
    }
    if batch.records.iter().any(|r| r.namespace != caller) {
        return forbidden(&state, &cid);
    }
    let rows: Vec<_> = batch.records.iter().map(audit::to_row).collect();
    match state.store.append_request_audit(&rows).await {
        Ok(()) => {
            state.metrics.audit_records("written", rows.len());
            envelope::ok(StatusCode::ACCEPTED, serde_json::json!({"written": rows.len()}), &cid)
        }
        Err(e) => {
            tracing::warn!(error = %e, records = rows.len(), namespace = %caller, "audit batch not written");
            state.metrics.audit_records("dropped", rows.len());
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the audit log cannot be written right now; retry later",
                &cid,
            )
        }
    }
}

async fn post_unknown_kid(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let cid = correlation_id(&headers);
    if let Err(refused) = authenticate(&state, &headers, &cid).await {
        return refused;
    }
    let report: UnknownKid = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                &format!("not an unknown-kid report: {e}"),
                &cid,
            );
        }
    };
    if report.issuer.len() > 2048 || report.kid.len() > 256 {
        return error(StatusCode::BAD_REQUEST, "bad_body", "issuer or kid too long", &cid);
    }
    state.kid_reports.report(report);
    envelope::ok(StatusCode::ACCEPTED, serde_json::Value::Null, &cid)
}

/// Checks the address against the TLS settings: plain HTTP only on loopback.
pub fn check_listen(addr: SocketAddr, tls: Option<&tls::TlsFiles>) -> Result<(), Error> {
    if tls.is_none() && !addr.ip().is_loopback() {
        return Err(Error::PlainHttpNotLoopback(addr));
    }
    Ok(())
}

/// Binds `addr` (see [`check_listen`]).
pub async fn bind(addr: SocketAddr, tls: Option<&tls::TlsFiles>) -> Result<tokio::net::TcpListener, Error> {
    check_listen(addr, tls)?;
    let bound = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        // Every sidecar of the cluster reconnects at once when a replica restarts: a
        // short accept queue drops their SYNs, and each dropped one costs a second (the
        // first retransmission). The kernel caps this at net.core.somaxconn.
        socket.listen(LISTEN_BACKLOG)
    };
    bound().map_err(|source| Error::Bind { addr, source })
}

/// Connections waiting to be accepted (tokio's default is 1,024).
const LISTEN_BACKLOG: u32 = 8192;

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown`, then lets
/// requests in flight finish for a few seconds (long polls are cut: sidecars retry).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<tls::TlsFiles>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::debug!(error = %err, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            // The token service throttles per client address (axum's `ConnectInfo`).
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let builder = {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
            b
        };
        match &tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
                let watcher = graceful.watcher();
                // The handshake runs in the connection's task: a slow client holds up
                // only itself.
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await;
                });
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests;
