//! Snapshot serving: one snapshot read per revision, shared by every waiting sidecar;
//! one serialized (and, on demand, gzipped) view per (revision, namespace).
//!
//! Each namespace's view has a digest of its content ([`VIEW_HEADER`]), computed for every
//! namespace in one pass when the snapshot is read. A sidecar that sends back the digest
//! it holds is answered only when its namespace's view changed: revoking one namespace's
//! key answers that namespace's sidecars, not the cluster's (the other long polls wake
//! on the watch, compare two strings, and wait on). Digests are of content, not of this
//! replica's history, so they hold across replicas and revisions this replica never saw.
//!
//! [`Publisher::run`] follows the database's revision — PostgreSQL: `LISTEN` on the
//! revision trigger's channel, with a poll every second in case a notification was lost
//! with its connection; MariaDB/MySQL and SQLite: a `SELECT value FROM revision` every
//! 100 ms, since neither can notify another process (MySQL has no such statement;
//! SQLite's update hook sees only its own connection, and the token service or another
//! process writes the same file). One indexed one-row read ten times a second is
//! nothing to the database and keeps a revocation well inside the one-second budget.
//! Writes this process commits (local mode's reconcilers, the token service's logouts)
//! wake the publisher at once through [`Store::commits`], on every backend: the poll is
//! for the other writers.
//! On a new revision it reads the snapshot once and publishes it on a
//! `tokio::sync::watch`; every long poll waits on that channel.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use portcullis_wire::api::{EPOCH_HEADER, REVISION_HEADER, SnapshotQuery, VIEW_HEADER};
use portcullis_wire::{ApiKeyEntry, JwtIssuer, PolicyEntry, RoleEntry, Snapshot, SourceEntry, UserEntry};
use serde::Serialize;
use sha2::{Digest, Sha256};
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
    /// What each namespace with keys, sources or policies of its own receives of them.
    own: HashMap<String, Own>,
    /// The view digest of a namespace with nothing of its own.
    bare_view: String,
    views: Mutex<HashMap<String, Arc<View>>>,
}

/// A namespace's own part of the snapshot (indices into the full snapshot's lists, in
/// their order) and its view's digest.
#[derive(Default)]
struct Own {
    keys: Vec<u32>,
    sources: Vec<u32>,
    policies: Vec<u32>,
    view: String,
}

/// One namespace's view, serialized once.
pub struct View {
    json: OnceCell<Bytes>,
    gzip: OnceCell<Bytes>,
}

impl Built {
    /// Indexes `full` by namespace in one pass over its keys, sources and policies, and
    /// digests every namespace's view.
    pub fn new(full: Snapshot) -> Built {
        let mut own: HashMap<String, Own> = HashMap::new();
        let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        for (i, key) in full.api_keys.iter().enumerate() {
            // A key goes where it is honoured: its own namespace and those its owner allowed.
            for namespace in key.honoured_namespaces() {
                own.entry(namespace.to_owned()).or_default().keys.push(index(i));
            }
        }
        for (i, source) in full.sources.iter().enumerate() {
            own.entry(source.namespace.clone()).or_default().sources.push(index(i));
        }
        for (i, policy) in full.policies.iter().enumerate() {
            own.entry(policy.namespace.clone()).or_default().policies.push(index(i));
        }
        let mut shared = Sha256::new();
        digest_json(
            &mut shared,
            &(&full.roles, &full.users, &full.revoked_sessions, &full.jwt_issuers),
        );
        let shared = shared.finalize();
        let view_digest = |part: Option<&Own>| {
            let mut view = Sha256::new();
            view.update(shared);
            if let Some(part) = part {
                for &i in &part.keys {
                    digest_json(&mut view, &full.api_keys[i as usize]);
                }
                view.update(b"\0sources");
                for &i in &part.sources {
                    digest_json(&mut view, &full.sources[i as usize]);
                }
                view.update(b"\0policies");
                for &i in &part.policies {
                    digest_json(&mut view, &full.policies[i as usize]);
                }
            }
            // 128 bits: the digest only tells one view from another.
            portcullis_wire::api_key::to_hex(&view.finalize()[..16])
        };
        for part in own.values_mut() {
            part.view = view_digest(Some(part));
        }
        Built {
            revision: full.revision,
            epoch: full.epoch.clone(),
            bare_view: view_digest(None),
            full,
            own,
            views: Mutex::default(),
        }
    }

    /// The digest of `namespace`'s view: equal for equal content, whatever the revision.
    pub fn view(&self, namespace: &str) -> &str {
        self.own.get(namespace).map_or(&self.bare_view, |own| &own.view)
    }

    /// What the sidecars of `namespace` receive of the snapshot (see [`ViewRef`]).
    fn view_ref(&self, namespace: &str) -> ViewRef<'_> {
        let full = &self.full;
        let own = self.own.get(namespace);
        let pick = |ids: fn(&Own) -> &Vec<u32>| own.map_or(&[][..], |o| ids(o).as_slice());
        ViewRef {
            revision: full.revision,
            epoch: &full.epoch,
            generated_at: full.generated_at,
            roles: &full.roles,
            users: &full.users,
            api_key_count: pick(|o| &o.keys).len(),
            api_keys: Picked(&full.api_keys, pick(|o| &o.keys)),
            sources: Picked(&full.sources, pick(|o| &o.sources)),
            revoked_sessions: &full.revoked_sessions,
            policies: Picked(&full.policies, pick(|o| &o.policies)),
            jwt_issuers: &full.jwt_issuers,
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
                Bytes::from(serde_json::to_vec(&self.view_ref(namespace)).unwrap_or_default())
            })
            .await
            .clone();
        if !gzip {
            return json;
        }
        view.gzip.get_or_init(|| async { gzip_bytes(&json) }).await.clone()
    }
}

/// What the sidecars of a namespace receive of the whole snapshot — the one place that
/// decides it ([`Built::new`] indexes by it), serialized as a [`Snapshot`] is:
/// - AccessPolicies and Sources of that namespace only;
/// - the API keys it honours: those made in it, and those whose owner allowed it
///   (`honoured_in`);
/// - every role, user and revoked session, and every JWT issuer: a user may log in once
///   and call any namespace's app with the token, so the directory a JWT refers to is
///   needed everywhere.
#[derive(Serialize)]
struct ViewRef<'a> {
    revision: i64,
    epoch: &'a str,
    generated_at: i64,
    roles: &'a [RoleEntry],
    users: &'a [UserEntry],
    /// Ahead of the keys, so that a sidecar can size its key table before they arrive
    /// (not a field of [`Snapshot`]; readers that do not know it skip it).
    api_key_count: usize,
    api_keys: Picked<'a, ApiKeyEntry>,
    sources: Picked<'a, SourceEntry>,
    revoked_sessions: &'a [String],
    policies: Picked<'a, PolicyEntry>,
    jwt_issuers: &'a [JwtIssuer],
}

/// The items of a list at some indices, serialized as a list (never copied).
struct Picked<'a, T>(&'a [T], &'a [u32]);

impl<T: Serialize> Serialize for Picked<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().filter_map(|&i| self.0.get(i as usize)))
    }
}

/// Feeds the JSON of `value` to a digest, without building the JSON.
fn digest_json(digest: &mut Sha256, value: &impl Serialize) {
    struct Feed<'d>(&'d mut Sha256);
    impl std::io::Write for Feed<'_> {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.update(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Our wire types serialize without error (no maps with non-string keys).
    let _ = serde_json::to_writer(Feed(digest), value);
    digest.update(b"\n");
}

fn gzip_bytes(bytes: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Whether `built` is what a caller of `namespace` holding `query` should get now.
///
/// Another epoch: always (a restored or replaced database resets the sidecar, whatever
/// revision it holds). The same epoch: only a higher revision — a replica that lags
/// behind the one the sidecar last asked waits instead of sending an older snapshot
/// the sidecar would refuse (and ask again at once) — and, when the caller says which
/// view it holds, only if the namespace's view is another. A caller that sends no epoch
/// but a revision (a client older than epochs) is compared by revision alone, so that it
/// waits too instead of being answered at once, for ever.
pub fn is_news(built: &Built, namespace: &str, query: &SnapshotQuery) -> bool {
    if query.revision < 0 {
        return true;
    }
    if query.epoch.is_empty() {
        return built.revision > query.revision;
    }
    if query.epoch != built.epoch {
        return true;
    }
    built.revision > query.revision && (query.view.is_empty() || query.view != built.view(namespace))
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
    /// How often the revision is read on the backends that cannot notify.
    poll: Duration,
}

/// A publisher and the feed it fills.
pub fn channel() -> (Publisher, Feed) {
    let (tx, rx) = watch::channel(None);
    (Publisher { tx, poll: POLL }, Feed { rx })
}

impl Publisher {
    /// Reads the revision every `poll` on the backends that cannot notify (default
    /// [`POLL`]).
    pub fn poll_every(self, poll: Duration) -> Publisher {
        Publisher { poll, ..self }
    }

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
        let mut own_commits = store.commits();
        let mut seen: Option<i64> = None;
        let mut failing = false;
        let mut listener_lost_at = Instant::now();
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
                        _ = own_commits.changed() => None,
                        _ = tokio::time::sleep(POLL_WITH_NOTIFY) => None,
                    };
                    if let Some(e) = lost {
                        tracing::warn!(error = %e, "revision notifications lost; polling until they are back");
                        listener = None;
                        listener_lost_at = Instant::now();
                    }
                }
                None => {
                    tokio::select! {
                        _ = own_commits.changed() => {}
                        _ = tokio::time::sleep(self.poll) => {}
                    }
                    // On PostgreSQL, try to get notifications back every 10 s.
                    if store.backend() == crate::store::Backend::Postgres
                        && listener_lost_at.elapsed() >= Duration::from_secs(10)
                    {
                        listener_lost_at = Instant::now();
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

/// The snapshot answer: `200` with the body, epoch, revision and view headers.
pub fn snapshot_response(built: &Built, namespace: &str, body: Bytes, gzip: bool, correlation_id: &str) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    version_headers(headers, built, namespace, correlation_id);
    response
}

/// `304`: nothing newer within the wait; the headers say what is current.
pub fn not_modified(built: &Built, namespace: &str, correlation_id: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    version_headers(response.headers_mut(), built, namespace, correlation_id);
    response
}

fn version_headers(headers: &mut HeaderMap, built: &Built, namespace: &str, correlation_id: &str) {
    if let Ok(v) = HeaderValue::from_str(&built.epoch) {
        headers.insert(EPOCH_HEADER, v);
    }
    headers.insert(REVISION_HEADER, HeaderValue::from(built.revision));
    if let Ok(v) = HeaderValue::from_str(built.view(namespace)) {
        headers.insert(VIEW_HEADER, v);
    }
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
            roles: Vec::new(),
            teams: Vec::new(),
            honoured_in: Vec::new(),
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

    /// A namespace's view as its sidecars parse it.
    fn view(built: &Built, namespace: &str) -> Snapshot {
        serde_json::from_slice(&serde_json::to_vec(&built.view_ref(namespace)).unwrap()).unwrap()
    }

    fn hashes(view: &Snapshot) -> Vec<&str> {
        view.api_keys.iter().map(|k| k.key_hash.as_str()).collect()
    }

    #[test]
    fn a_namespace_gets_its_own_keys_and_sources_only() {
        let shop = view(&Built::new(full()), "shop");
        assert_eq!(hashes(&shop), ["a"]);
        assert!(shop.sources.is_empty());
        assert_eq!((shop.revision, shop.epoch.as_str()), (7, "e1"));
        let billing = view(&Built::new(full()), "billing");
        assert_eq!(hashes(&billing), ["b"]);
        assert_eq!(billing.sources.len(), 1);
        assert!(view(&Built::new(full()), "empty").api_keys.is_empty());
        // A key its owner let "web" honour goes to web's sidecars too, and nowhere else.
        let mut snapshot = full();
        snapshot.api_keys[0].honoured_in = vec!["web".into()];
        let built = Built::new(snapshot.clone());
        assert_eq!(hashes(&view(&built, "web")), ["a"]);
        assert_eq!(hashes(&view(&built, "shop")), ["a"]);
        assert_eq!(hashes(&view(&built, "billing")), ["b"]);
        // The whole view is the full snapshot with another namespace's parts left out.
        let expected = Snapshot {
            api_keys: snapshot
                .api_keys
                .iter()
                .filter(|k| k.honoured_by("web"))
                .cloned()
                .collect(),
            sources: Vec::new(),
            policies: Vec::new(),
            ..snapshot
        };
        assert_eq!(view(&built, "web"), expected);
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
        assert_eq!(parsed, view(&built, "shop"));
    }

    #[test]
    fn a_view_digest_changes_with_that_namespaces_content_only() {
        let before = Built::new(full());
        // Another revision, another read time: the same content, the same views.
        let same = Built::new(Snapshot {
            revision: 8,
            generated_at: 99,
            ..full()
        });
        for namespace in ["shop", "billing", "empty"] {
            assert_eq!(before.view(namespace), same.view(namespace), "{namespace}");
            assert_eq!(before.view(namespace).len(), 32);
        }
        assert_ne!(before.view("shop"), before.view("billing"));
        assert_eq!(before.view("empty"), before.view("other-empty"));
        // Billing's key revoked: billing's view changes, shop's and the others' do not.
        let mut revoked = full();
        revoked.revision = 9;
        revoked.api_keys[1].revoked_at = Some(5);
        let after = Built::new(revoked);
        assert_ne!(after.view("billing"), before.view("billing"));
        assert_eq!(after.view("shop"), before.view("shop"));
        assert_eq!(after.view("empty"), before.view("empty"));
        // A user changed: every namespace's view changes.
        let mut user = full();
        user.users.push(portcullis_wire::UserEntry {
            name: "carol".into(),
            email: "c@example.com".into(),
            disabled: true,
            roles: Vec::new(),
            teams: Vec::new(),
        });
        let after = Built::new(user);
        for namespace in ["shop", "billing", "empty"] {
            assert_ne!(after.view(namespace), before.view(namespace), "{namespace}");
        }
    }

    #[test]
    fn news_is_another_epoch_or_a_higher_revision_with_another_view() {
        let built = Built::new(full());
        let q = |revision: i64, epoch: &str, view: &str| SnapshotQuery {
            revision,
            epoch: epoch.into(),
            wait: 0,
            view: view.into(),
        };
        assert!(is_news(&built, "shop", &q(-1, "", "")));
        assert!(is_news(&built, "shop", &q(6, "e1", "")));
        assert!(!is_news(&built, "shop", &q(7, "e1", "")));
        assert!(!is_news(&built, "shop", &q(9, "e1", "")), "a lagging replica waits");
        assert!(
            is_news(&built, "shop", &q(1_000_000, "bogus", "")),
            "another epoch resets whatever the revision"
        );
        assert!(
            !is_news(&built, "shop", &q(7, "", "")),
            "a client without epochs is compared by revision"
        );
        assert!(is_news(&built, "shop", &q(6, "", "")));
        // A caller that holds this view waits, whatever revision it was sent at.
        let shop = built.view("shop").to_string();
        assert!(!is_news(&built, "shop", &q(3, "e1", &shop)));
        assert!(is_news(&built, "shop", &q(3, "e1", "0123")), "another view is news");
        assert!(
            !is_news(&built, "shop", &q(9, "e1", "0123")),
            "but never an older revision"
        );
        assert!(is_news(&built, "shop", &q(3, "e2", &shop)), "nor holds across epochs");
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
