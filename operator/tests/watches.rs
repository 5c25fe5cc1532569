//! What the controllers ask the API server for: the real `manager::run` against a
//! recording API that answers every list with nothing and holds every watch open. The
//! Secrets the operator owns are listed and watched once per watched scope, only by
//! the operator's label; other Secrets only in the operator's own namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response};
use kube::client::Body;
use portcullis_operator::controller::manager::{self, Namespaces, Synced};
use portcullis_operator::controller::{Config, Context};
use portcullis_operator::metrics::Metrics;
use portcullis_operator::store::{DbConfig, Store};

/// (path, query) of every request.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn recording_client(seen: Seen) -> kube::Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let watch = query.contains("watch=true") || query.contains("watch=1");
            seen.lock().unwrap().push((path, query));
            let body: BoxBody<Bytes, Infallible> = if watch {
                // A watch that never sends an event (nor ends).
                http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, Infallible>>()).boxed()
            } else {
                http_body_util::Full::new(Bytes::from_static(
                    br#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":[]}"#,
                ))
                .boxed()
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    });
    kube::Client::new(service, "default")
}

/// Runs the controllers until every Secret request expected has been made; returns
/// the Secret requests.
async fn secret_requests(namespaces: Namespaces, expected: usize) -> Vec<(String, String)> {
    let seen: Seen = Arc::default();
    let client = recording_client(seen.clone());
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/portcullis.db", db.path().display());
    let store = Store::open(&DbConfig::from_url(&url).unwrap()).await.unwrap();
    let config = Config {
        namespace: "portcullis-system".into(),
        events: false,
        ..Config::default()
    };
    let ctx = Context::new(client, store, config, Arc::new(Metrics::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(manager::run(
        ctx,
        namespaces,
        Arc::new(Synced::default()),
        stopped.map(|_| ()).boxed(),
    ));
    let secrets = |seen: &Seen| -> Vec<(String, String)> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.ends_with("/secrets"))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // Lists and watches both: each watcher lists, then watches.
    while secrets(&seen).len() < expected * 2 {
        assert!(
            Instant::now() < deadline,
            "controllers did not start: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A moment more: any further Secret watch would start now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    secrets(&seen)
}

fn label_selector(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn owned_secrets_are_watched_once_by_label_and_others_only_in_the_operators_namespace() {
    let requests = secret_requests(Namespaces::All, 2).await;
    let cluster_wide: Vec<_> = requests.iter().filter(|(p, _)| p == "/api/v1/secrets").collect();
    assert_eq!(cluster_wide.len(), 2, "one list and one watch: {requests:?}");
    for (_, query) in &cluster_wide {
        assert_eq!(
            label_selector(query).as_deref(),
            Some("app.kubernetes.io/managed-by=portcullis-operator"),
            "{query}"
        );
    }
    // Users' password Secrets: the operator's namespace only, unlabelled (users make them).
    let rest: Vec<_> = requests.iter().filter(|(p, _)| p != "/api/v1/secrets").collect();
    assert!(
        rest.iter()
            .all(|(p, _)| p == "/api/v1/namespaces/portcullis-system/secrets"),
        "{rest:?}"
    );
    assert_eq!(rest.len(), 2, "{rest:?}");
}

#[tokio::test]
async fn with_watched_namespaces_each_gets_one_labelled_secret_watch() {
    let requests = secret_requests(Namespaces::Only(vec!["shop".into(), "billing".into()]), 3).await;
    for ns in ["shop", "billing"] {
        let path = format!("/api/v1/namespaces/{ns}/secrets");
        let of_ns: Vec<_> = requests.iter().filter(|(p, _)| *p == path).collect();
        assert_eq!(of_ns.len(), 2, "one list and one watch in {ns}: {requests:?}");
        assert!(of_ns.iter().all(|(_, q)| label_selector(q).is_some()));
    }
    assert!(
        requests.iter().all(|(p, _)| p != "/api/v1/secrets"),
        "nothing cluster-wide: {requests:?}"
    );
}
