//! The control plane, long-polled for the next revision of this namespace's snapshot.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::warn;

use super::Installer;

/// Largest snapshot accepted (a policy of 100,000 API keys is about 30 MiB).
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// Why a poll brought nothing.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("bad control-plane URL: {0}")]
    Url(#[from] hyper::http::uri::InvalidUri),
    #[error("cannot read token file {path}: {source}")]
    TokenFile { path: PathBuf, source: std::io::Error },
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("control plane did not answer within 45 s")]
    Timeout,
    #[error("control plane unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("reading snapshot: {0}")]
    Body(crate::BoxError),
    #[error("control plane answered {0}")]
    Status(StatusCode),
}

/// Long-polls the control plane: `GET {base}/api/v1/snapshots/{namespace}?revision={n}&wait=30`
/// answers 200 with a newer snapshot, or 304 when none arrived within the wait. Errors
/// back off exponentially (to 30 s) and keep the last good snapshot in force.
pub async fn poll(base: String, token_file: Option<PathBuf>, installer: Installer) {
    let Installer {
        current, pod, metrics, ..
    } = &installer;
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
                installer.apply(&bytes, &base);
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
) -> Result<Option<Bytes>, FeedError> {
    let uri: Uri = format!(
        "{}/api/v1/snapshots/{namespace}?revision={revision}&wait=30",
        base.trim_end_matches('/')
    )
    .parse()?;
    let mut request = Request::get(uri);
    if let Some(path) = token_file {
        // Re-read every time: projected tokens are rotated on disk.
        let token = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| FeedError::TokenFile {
                path: path.clone(),
                source,
            })?;
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let request = request.body(Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(45), client.request(request))
        .await
        .map_err(|_| FeedError::Timeout)??;
    match response.status() {
        StatusCode::NOT_MODIFIED => Ok(None),
        StatusCode::OK => {
            let body = Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES)
                .collect()
                .await
                .map_err(FeedError::Body)?;
            Ok(Some(body.to_bytes()))
        }
        other => Err(FeedError::Status(other)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Response, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::feed::tests::{document, installer};

    /// What the fake control plane was asked: URI and `Authorization`.
    type Requests = Arc<Mutex<Vec<(String, Option<String>)>>>;

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
        let installer = installer();
        let current = installer.current.clone();
        let poller = tokio::spawn(poll(base, Some(token_file), installer));
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
