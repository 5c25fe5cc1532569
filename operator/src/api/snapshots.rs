//! Snapshot serving: one snapshot read per revision, shared by every waiting sidecar;
//! one serialized (and, on demand, gzipped) view per (revision, namespace).
//!
//! [`Publisher::run`] follows the database's revision — PostgreSQL: `LISTEN` on the
//! revision trigger's channel, with a poll every second in case a notification was lost
//! with its connection; MariaDB/MySQL and SQLite: a `SELECT value FROM revision` every
//! 100 ms, since neither can notify another process (MySQL has no such statement;
//! SQLite's update hook sees only its own connection, and the token service or another
//! process writes the same file). One indexed one-row read ten times a second is
//! nothing to the database and keeps a revocation well inside the one-second budget.
//! On a new revision it reads the snapshot once and publishes it on a
//! `tokio::sync::watch`; every long poll waits on that channel.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use portcullis_wire::Snapshot;
use portcullis_wire::api::{EPOCH_HEADER, REVISION_HEADER, SnapshotQuery};
use tokio::sync::{OnceCell, watch};

use crate::metrics::Metrics;
use crate::store::Store;

/// Revision poll period on the backends that cannot notify.
pub const POLL: Duration = Duration::from_millis(100);
/// Revision poll period beside PostgreSQL notifications (a safety net).
pub const POLL_WITH_NOTIFY: Duration = Duration::from_secs(1);

/// A snapshot read at one revision, and the namespace views made of it so far.
pub struct Built {
    pub revision: i64,
    pub epoch: String,
    full: Snapshot,
    views: Mutex<HashMap<String, Arc<View>>>,
}

/// One namespace's view, serialized once.
pub struct View {
    json: OnceCell<Bytes>,
    gzip: OnceCell<Bytes>,
}

impl Built {
    pub fn new(full: Snapshot) -> Built {
        Built {
            revision: full.revision,
            epoch: full.epoch.clone(),
            full,
            views: Mutex::default(),
        }
    }

    /// The JSON of `namespace`'s view (gzipped when asked), made by the first caller
    /// and shared with every other.
    pub async fn body(&self, namespace: &str, gzip: bool) -> Bytes {
        let view = {
            let mut views = match self.views.lock() {
                Ok(v) => v,
                Err(poisoned) => poisoned.into_inner(),
            };
            views
                .entry(namespace.to_string())
                .or_insert_with(|| {
                    Arc::new(View {
                        json: OnceCell::new(),
                        gzip: OnceCell::new(),
                    })
                })
                .clone()
        };
        let json = view
            .json
            .get_or_init(|| async {
                // A Snapshot serializes without error (no maps with non-string keys).
                Bytes::from(serde_json::to_vec(&namespace_view(&self.full, namespace)).unwrap_or_default())
            })
            .await
            .clone();
        if !gzip {
            return json;
        }
        view.gzip.get_or_init(|| async { gzip_bytes(&json) }).await.clone()
    }
}

/// What the sidecars of `namespace` receive of the whole snapshot — the one place that
/// decides it (the hardening work may tighten it):
/// - AccessPolicies and Sources of that namespace only;
/// - API keys whose `namespace` is that namespace (an APIKey or Source key is made for
///   the namespace it lives in, and the store keeps no other grant);
/// - every role, user and revoked session, and every JWT issuer: a user may log in once
///   and call any namespace's app with the token, so the directory a JWT refers to is
///   needed everywhere.
pub fn namespace_view(full: &Snapshot, namespace: &str) -> Snapshot {
    Snapshot {
        revision: full.revision,
        epoch: full.epoch.clone(),
        generated_at: full.generated_at,
        roles: full.roles.clone(),
        users: full.users.clone(),
        api_keys: full
            .api_keys
            .iter()
            .filter(|k| k.namespace == namespace)
            .cloned()
            .collect(),
        sources: full
            .sources
            .iter()
            .filter(|s| s.namespace == namespace)
            .cloned()
            .collect(),
        revoked_sessions: full.revoked_sessions.clone(),
        policies: full
            .policies
            .iter()
            .filter(|p| p.namespace == namespace)
            .cloned()
            .collect(),
        jwt_issuers: full.jwt_issuers.clone(),
    }
}

fn gzip_bytes(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Whether `built` is what a caller holding `query` should get now.
///
/// Another epoch: always (a restored or replaced database resets the sidecar, whatever
/// revision it holds). The same epoch: only a higher revision — a replica that lags
/// behind the one the sidecar last asked waits instead of sending an older snapshot
/// the sidecar would refuse (and ask again at once). A caller that sends no epoch but a
/// revision (a client older than epochs) is compared by revision alone, so that it waits
/// too instead of being answered at once, for ever.
pub fn is_news(built: &Built, query: &SnapshotQuery) -> bool {
    if query.revision < 0 {
        return true;
    }
    if query.epoch.is_empty() {
        return built.revision > query.revision;
    }
    query.epoch != built.epoch || built.revision > query.revision
}

/// Where long polls wait for snapshots.
#[derive(Clone)]
pub struct Feed {
    rx: watch::Receiver<Option<Arc<Built>>>,
}

impl Feed {
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Built>>> {
        self.rx.clone()
    }

    /// The snapshot being served, if one was read yet.
    pub fn current(&self) -> Option<Arc<Built>> {
        self.rx.borrow().clone()
    }
}

/// Reads snapshots and publishes them to the [`Feed`].
pub struct Publisher {
    tx: watch::Sender<Option<Arc<Built>>>,
}

/// A publisher and the feed it fills.
pub fn channel() -> (Publisher, Feed) {
    let (tx, rx) = watch::channel(None);
    (Publisher { tx }, Feed { rx })
}

impl Publisher {
    /// Reads a new snapshot whenever the revision moves (see the module comment), for
    /// ever. Database errors are logged and retried; the last snapshot stays served.
    pub async fn run(self, store: Store, metrics: Arc<Metrics>) {
        let mut listener = match store.revision_listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for revisions; polling instead");
                None
            }
        };
        let mut seen: Option<i64> = None;
        let mut failing = false;
        let mut polls_without_listener = 0u32;
        let mut epoch_made = false;
        loop {
            // The epoch exists before the first snapshot is served (made on first start).
            let refreshed = async {
                if !epoch_made {
                    store.epoch().await?;
                    epoch_made = true;
                }
                self.refresh(&store, &metrics, seen).await
            }
            .await;
            match refreshed {
                Ok(revision) => {
                    seen = Some(revision);
                    if failing {
                        tracing::info!(revision, "snapshot source back");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the revision or the snapshot; serving the last one");
                    }
                    failing = true;
                }
            }
            match listener.as_mut() {
                Some(l) => {
                    let lost = tokio::select! {
                        got = l.next() => got.err(),
                        _ = tokio::time::sleep(POLL_WITH_NOTIFY) => None,
                    };
                    if let Some(e) = lost {
                        tracing::warn!(error = %e, "revision notifications lost; polling until they are back");
                        listener = None;
                    }
                }
                None => {
                    tokio::time::sleep(POLL).await;
                    // On PostgreSQL, try to get notifications back every 10 s.
                    polls_without_listener += 1;
                    if store.backend() == crate::store::Backend::Postgres && polls_without_listener >= 100 {
                        polls_without_listener = 0;
                        listener = store.revision_listener().await.ok().flatten();
                    }
                }
            }
        }
    }

    /// Publishes a new snapshot if the revision is not `seen`; returns the revision served.
    async fn refresh(&self, store: &Store, metrics: &Metrics, seen: Option<i64>) -> crate::store::Result<i64> {
        let revision = store.revision().await?;
        if seen == Some(revision) {
            return Ok(revision);
        }
        let started = Instant::now();
        let snapshot = store.read_snapshot(portcullis_wire::unix_now()).await?;
        let revision = snapshot.revision;
        let built = Arc::new(Built::new(snapshot));
        metrics.observe_snapshot_build(started.elapsed(), revision);
        self.tx.send_replace(Some(built));
        Ok(revision)
    }
}

/// Whether the caller takes gzip (`Accept-Encoding: gzip`, not with `q=0`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// The snapshot answer: `200` with the body, epoch and revision headers.
pub fn snapshot_response(built: &Built, body: Bytes, gzip: bool, correlation_id: &str) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    version_headers(headers, built, correlation_id);
    response
}

/// `304`: nothing newer within the wait; the headers say what is current.
pub fn not_modified(built: &Built, correlation_id: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    version_headers(response.headers_mut(), built, correlation_id);
    response
}

fn version_headers(headers: &mut HeaderMap, built: &Built, correlation_id: &str) {
    if let Ok(v) = HeaderValue::from_str(&built.epoch) {
        headers.insert(EPOCH_HEADER, v);
    }
    headers.insert(REVISION_HEADER, HeaderValue::from(built.revision));
    if let Ok(v) = HeaderValue::from_str(correlation_id) {
        headers.insert(super::envelope::CORRELATION_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use portcullis_wire::{ApiKeyEntry, OwnerKind, SourceEntry};

    use super::*;

    fn key(namespace: &str, hash: &str) -> ApiKeyEntry {
        ApiKeyEntry {
            key_hash: hash.into(),
            prefix: "pck_x".into(),
            namespace: namespace.into(),
            owner_kind: OwnerKind::User,
            owner_name: "bob".into(),
            scopes: vec!["read".into()],
            expires_at: None,
            revoked_at: None,
        }
    }

    fn full() -> Snapshot {
        Snapshot {
            revision: 7,
            epoch: "e1".into(),
            api_keys: vec![key("shop", "a"), key("billing", "b")],
            sources: vec![SourceEntry {
                namespace: "billing".into(),
                name: "logs".into(),
                team: None,
                enabled: true,
                rate_limit: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_namespace_gets_its_own_keys_and_sources_only() {
        let view = namespace_view(&full(), "shop");
        assert_eq!(
            view.api_keys.iter().map(|k| k.key_hash.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(view.sources.is_empty());
        assert_eq!((view.revision, view.epoch.as_str()), (7, "e1"));
        let view = namespace_view(&full(), "billing");
        assert_eq!(view.api_keys.len(), 1);
        assert_eq!(view.sources.len(), 1);
    }

    #[tokio::test]
    async fn views_are_serialized_once_and_gzip_round_trips() {
        let built = Built::new(full());
        let plain = built.body("shop", false).await;
        let again = built.body("shop", false).await;
        assert_eq!(
            plain.as_ptr(),
            again.as_ptr(),
            "the same bytes, not a second serialization"
        );
        let gz = built.body("shop", true).await;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
        let parsed: Snapshot = serde_json::from_slice(&plain).unwrap();
        assert_eq!(parsed, namespace_view(&full(), "shop"));
    }

    #[test]
    fn news_is_another_epoch_or_a_higher_revision() {
        let built = Built::new(full());
        let q = |revision: i64, epoch: &str| SnapshotQuery {
            revision,
            epoch: epoch.into(),
            wait: 0,
        };
        assert!(is_news(&built, &q(-1, "")));
        assert!(is_news(&built, &q(6, "e1")));
        assert!(!is_news(&built, &q(7, "e1")));
        assert!(!is_news(&built, &q(9, "e1")), "a lagging replica waits");
        assert!(
            is_news(&built, &q(1_000_000, "bogus")),
            "another epoch resets whatever the revision"
        );
        assert!(
            !is_news(&built, &q(7, "")),
            "a client without epochs is compared by revision"
        );
        assert!(is_news(&built, &q(6, "")));
    }

    #[test]
    fn gzip_is_taken_only_when_offered() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("br, gzip;q=0.5"));
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0, identity"));
        assert!(!accepts_gzip(&h));
    }
}
