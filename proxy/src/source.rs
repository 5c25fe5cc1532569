//! Where snapshots come from: a file (standalone, tests) or the control plane (long
//! poll). Both feed [`Current::install`]; neither ever blocks a request, and when the
//! source fails the last good snapshot stays in force (fail-static).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_wire::Snapshot;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::snapshot::{Current, Pod};

/// Largest snapshot accepted (a policy of 100,000 API keys is about 30 MiB).
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// Parses and installs one snapshot document, recording the outcome.
pub fn apply(bytes: &[u8], current: &Current, pod: &Pod, jwt_cache: usize, metrics: &Metrics, origin: &str) -> bool {
    let snapshot: Snapshot = match serde_json::from_slice(bytes) {
        Ok(s) => s,
        Err(e) => {
            metrics.snapshot_updates.with_label_values(&["error"]).inc();
            warn!(source = origin, error = %e, "snapshot is not valid JSON; keeping the one in force");
            return false;
        }
    };
    match current.install(&snapshot, pod, jwt_cache) {
        Ok(problems) => {
            for problem in problems {
                warn!(source = origin, problem = %problem, "JWT key not usable");
            }
            metrics.snapshot_updates.with_label_values(&["installed"]).inc();
            metrics.snapshot_revision.set(snapshot.revision);
            info!(source = origin, revision = snapshot.revision, "snapshot installed");
            true
        }
        Err(e) => {
            metrics.snapshot_updates.with_label_values(&["refused"]).inc();
            warn!(source = origin, error = %e, "snapshot refused; keeping the one in force");
            false
        }
    }
}

/// Watches a snapshot file: read at start, then again whenever its modification time
/// or size changes (checked every `interval`; writers should rename into place).
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    current: Arc<Current>,
    pod: Pod,
    jwt_cache: usize,
    metrics: Arc<Metrics>,
) {
    let origin = path.display().to_string();
    let mut seen: Option<(SystemTime, u64)> = None;
    // The caller may have loaded the file already (before listening): do not load it twice.
    if current.load().is_some()
        && let Ok(meta) = std::fs::metadata(&path)
    {
        seen = Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
    }
    loop {
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
                if seen != Some(stamp) {
                    match tokio::fs::read(&path).await {
                        Ok(bytes) => {
                            apply(&bytes, &current, &pod, jwt_cache, &metrics, &origin);
                            seen = Some(stamp);
                        }
                        Err(e) => warn!(source = %origin, error = %e, "cannot read snapshot file"),
                    }
                } else if current.load().is_some() {
                    // The file is the source of truth and it has not changed: still current.
                    current.confirm();
                }
            }
            Err(e) => warn!(source = %origin, error = %e, "cannot read snapshot file"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Long-polls the control plane: `GET {base}/api/v1/snapshots/{namespace}?revision={n}&wait=30`
/// answers 200 with a newer snapshot, or 304 when none arrived within the wait. Errors
/// back off exponentially (to 30 s) and keep the last good snapshot in force.
pub async fn poll_control_plane(
    base: String,
    token_file: Option<PathBuf>,
    current: Arc<Current>,
    pod: Pod,
    jwt_cache: usize,
    metrics: Arc<Metrics>,
) {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut backoff = Duration::from_millis(250);
    loop {
        let revision = current.load().map_or(-1, |c| c.revision);
        match fetch(&client, &base, token_file.as_ref(), &pod.namespace, revision).await {
            Ok(None) => {
                current.confirm();
                backoff = Duration::from_millis(250);
            }
            Ok(Some(bytes)) => {
                apply(&bytes, &current, &pod, jwt_cache, &metrics, &base);
                backoff = Duration::from_millis(250);
            }
            Err(e) => {
                metrics.snapshot_updates.with_label_values(&["error"]).inc();
                warn!(control_plane = %base, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot fetch snapshot; keeping the one in force");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    token_file: Option<&PathBuf>,
    namespace: &str,
    revision: i64,
) -> Result<Option<Bytes>, String> {
    let uri: Uri = format!(
        "{}/api/v1/snapshots/{namespace}?revision={revision}&wait=30",
        base.trim_end_matches('/')
    )
    .parse()
    .map_err(|e| format!("bad control-plane URL: {e}"))?;
    let mut request = Request::get(uri);
    if let Some(path) = token_file {
        // Re-read every time: projected tokens are rotated on disk.
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(45), client.request(request))
        .await
        .map_err(|_| "control plane did not answer within 45 s".to_string())?
        .map_err(|e| format!("control plane unreachable: {e}"))?;
    match response.status() {
        StatusCode::NOT_MODIFIED => Ok(None),
        StatusCode::OK => {
            let body = Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading snapshot: {e}"))?;
            Ok(Some(body.to_bytes()))
        }
        other => Err(format!("control plane answered {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Response, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// What the fake control plane was asked: URI and `Authorization`.
    type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

    fn pod() -> Pod {
        Pod {
            namespace: "shop".into(),
            labels: Default::default(),
        }
    }

    fn document(revision: i64) -> Vec<u8> {
        serde_json::to_vec(&Snapshot {
            revision,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_bad_or_older_snapshot_keeps_the_one_in_force() {
        let (current, metrics) = (Current::default(), Metrics::new());
        assert!(apply(&document(2), &current, &pod(), 16, &metrics, "test"));
        assert!(!apply(
            b"{\"revision\": 3, \"users\": 7",
            &current,
            &pod(),
            16,
            &metrics,
            "test"
        ));
        assert!(!apply(&document(1), &current, &pod(), 16, &metrics, "test"), "older");
        assert_eq!(current.load().unwrap().revision, 2);
        let counted = |outcome: &str| metrics.snapshot_updates.with_label_values(&[outcome]).get();
        assert_eq!((counted("installed"), counted("error"), counted("refused")), (1, 1, 1));
    }

    #[tokio::test]
    async fn the_control_plane_is_long_polled_with_the_token_and_the_revision_held() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Requests = Arc::default();
        let record = seen.clone();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let auth = request
                            .headers()
                            .get(header::AUTHORIZATION)
                            .map(|v| v.to_str().unwrap().to_string());
                        let uri = request.uri().to_string();
                        record.lock().unwrap().push((uri.clone(), auth));
                        async move {
                            let response = if uri.contains("revision=-1") {
                                Response::new(Full::new(Bytes::from(document(5))))
                            } else {
                                // Nothing newer within the wait.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                Response::builder()
                                    .status(StatusCode::NOT_MODIFIED)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok-123\n").unwrap();
        let current = Arc::new(Current::default());
        let poller = tokio::spawn(poll_control_plane(
            base,
            Some(token_file),
            current.clone(),
            pod(),
            16,
            Arc::new(Metrics::new()),
        ));
        for _ in 0..200 {
            if seen.lock().unwrap().len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        poller.abort();
        server.abort();
        assert_eq!(current.load().map(|c| c.revision), Some(5));
        let seen = seen.lock().unwrap();
        assert!(seen.len() >= 3, "{seen:?}");
        assert_eq!(seen[0].0, "/api/v1/snapshots/shop?revision=-1&wait=30");
        assert_eq!(seen[1].0, "/api/v1/snapshots/shop?revision=5&wait=30");
        assert!(seen.iter().all(|(_, auth)| auth.as_deref() == Some("Bearer tok-123")));
    }
}
