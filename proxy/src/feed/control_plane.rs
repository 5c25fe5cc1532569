//! The control plane, long-polled for the next snapshot of this namespace (the contract
//! of [`portcullis_wire::api`]): over the verified channel of [`crate::control_plane`],
//! with the token read afresh each poll, gzip accepted and inflated within a bound.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis_wire::api::SNAPSHOTS_PATH;
use tracing::warn;

use super::Installer;
use crate::control_plane::{ChannelError, Connector, Endpoint};

/// Largest snapshot accepted, once inflated (a policy of 100,000 API keys is about 30 MiB):
/// a compressed answer that inflates past it is refused, not held.
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// Seconds the control plane is asked to hold the poll (at most `MAX_WAIT_SECONDS`).
const WAIT_SECONDS: u64 = 30;
/// A poll that brings no answer this long after it was sent has failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(WAIT_SECONDS + 15);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a poll brought nothing.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("control plane did not answer within {} s", POLL_TIMEOUT.as_secs())]
    Timeout,
    #[error("control plane unreachable: {0}")]
    Unreachable(#[from] hyper_util::client::legacy::Error),
    #[error("reading snapshot: {0}")]
    Body(crate::BoxError),
    #[error("snapshot sent with Content-Encoding {0:?}; only gzip was offered")]
    Encoding(String),
    #[error("snapshot does not inflate: {0}")]
    Inflate(std::io::Error),
    #[error("snapshot inflates past {} MiB; refused", MAX_SNAPSHOT_BYTES >> 20)]
    TooLarge,
    #[error("control plane answered {0}")]
    Status(StatusCode),
}

/// What one poll brought.
enum Fetched {
    /// 304: what the sidecar holds is current.
    Unchanged,
    /// 200: a snapshot document, inflated.
    Snapshot(Vec<u8>),
}

/// Long-polls the control plane: answers with a snapshot are installed, 304s confirm the
/// one in force (both reset the staleness clock). Errors, and snapshots that are refused,
/// back off exponentially (to 30 s) and keep the last good snapshot in force.
pub async fn poll(endpoint: Endpoint, installer: Installer) {
    let client: Client<Connector, Empty<Bytes>> = endpoint.client();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let held = installer.current.load();
        let (revision, epoch) = held.as_ref().map_or((-1, ""), |c| (c.revision, c.epoch.as_str()));
        let fetched = fetch(&client, &endpoint, &installer.pod.namespace, revision, epoch).await;
        drop(held);
        let failure = match fetched {
            Ok(Fetched::Unchanged) => {
                installer.current.confirm();
                None
            }
            Ok(Fetched::Snapshot(document)) => {
                // Parsing and compiling a large snapshot takes a while: off the runtime's
                // threads, so requests are not held up behind it.
                let installing = installer.clone();
                let origin = format!("{endpoint:?}");
                let installed = tokio::task::spawn_blocking(move || installing.apply(&document, &origin))
                    .await
                    .unwrap_or(false);
                // The control plane answered either way; a snapshot it keeps sending and we
                // keep refusing must not be fetched in a tight loop.
                installer.current.confirm();
                (!installed).then_some("snapshot not installed")
            }
            Err(e) => {
                installer.metrics.snapshot_updates.with_label_values(&["error"]).inc();
                warn!(control_plane = ?endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot fetch snapshot; keeping the one in force");
                Some("fetch failed")
            }
        };
        match failure {
            None => backoff = FIRST_BACKOFF,
            Some(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn fetch(
    client: &Client<Connector, Empty<Bytes>>,
    endpoint: &Endpoint,
    namespace: &str,
    revision: i64,
    epoch: &str,
) -> Result<Fetched, FeedError> {
    let path = format!(
        "{SNAPSHOTS_PATH}{}?revision={revision}&epoch={}&wait={WAIT_SECONDS}",
        utf8_percent_encode(namespace, NON_ALPHANUMERIC),
        utf8_percent_encode(epoch, NON_ALPHANUMERIC),
    );
    let mut request =
        Request::get(endpoint.uri(&path)?).header(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    if let Some(authorization) = endpoint.authorization().await? {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let request = request.body(Empty::new())?;
    let response = tokio::time::timeout(POLL_TIMEOUT, client.request(request))
        .await
        .map_err(|_| FeedError::Timeout)??;
    match response.status() {
        StatusCode::NOT_MODIFIED => Ok(Fetched::Unchanged),
        StatusCode::OK => {
            let gzip = match response.headers().get(header::CONTENT_ENCODING) {
                None => false,
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"gzip") => true,
                Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => false,
                Some(other) => return Err(FeedError::Encoding(String::from_utf8_lossy(other.as_bytes()).into())),
            };
            let body = tokio::time::timeout(
                POLL_TIMEOUT,
                Limited::new(response.into_body(), MAX_SNAPSHOT_BYTES).collect(),
            )
            .await
            .map_err(|_| FeedError::Timeout)?
            .map_err(FeedError::Body)?
            .to_bytes();
            if gzip {
                inflate(&body, MAX_SNAPSHOT_BYTES).map(Fetched::Snapshot)
            } else {
                Ok(Fetched::Snapshot(body.to_vec()))
            }
        }
        other => Err(FeedError::Status(other)),
    }
}

/// Inflates a gzip body, refusing one that would grow past `limit` bytes: a small
/// compressed answer must not be able to exhaust the sidecar's memory.
fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, FeedError> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(FeedError::Inflate)?;
    if out.len() > limit {
        return Err(FeedError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::{Response, service::service_fn};
    use hyper_util::rt::TokioIo;
    use portcullis_wire::Snapshot;
    use tokio::net::TcpListener;

    use super::*;
    use crate::feed::tests::installer;

    /// What the fake control plane was asked: URI, `Authorization`, `Accept-Encoding`.
    type Requests = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;
    /// What it answers: status, body, gzipped.
    type Script = Arc<dyn Fn(&str) -> (StatusCode, Vec<u8>, bool) + Send + Sync>;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn document(epoch: &str, revision: i64) -> Vec<u8> {
        serde_json::to_vec(&Snapshot {
            revision,
            epoch: epoch.into(),
            ..Default::default()
        })
        .unwrap()
    }

    async fn control_plane(script: Script) -> (String, Requests) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Requests = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let record = record.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let header = |name: hyper::header::HeaderName| {
                            request
                                .headers()
                                .get(name)
                                .map(|v: &HeaderValue| v.to_str().unwrap().to_string())
                        };
                        let uri = request.uri().to_string();
                        record.lock().unwrap().push((
                            uri.clone(),
                            header(header::AUTHORIZATION),
                            header(header::ACCEPT_ENCODING),
                        ));
                        let (status, body, gzipped) = script(&uri);
                        async move {
                            if status == StatusCode::NOT_MODIFIED {
                                // Nothing newer within the wait.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let mut response = Response::builder().status(status);
                            if gzipped {
                                response = response.header(header::CONTENT_ENCODING, "gzip");
                            }
                            Ok::<_, std::convert::Infallible>(response.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (base, seen)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..300 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_control_plane_is_long_polled_with_token_epoch_and_revision() {
        let script: Script = Arc::new(|uri: &str| {
            if uri.contains("revision=-1") {
                (StatusCode::OK, gzip(&document("ep/1", 5)), true)
            } else {
                (StatusCode::NOT_MODIFIED, Vec::new(), false)
            }
        });
        let (base, seen) = control_plane(script).await;
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "tok-123\n").unwrap();
        let installer = installer();
        let current = installer.current.clone();
        let endpoint = Endpoint::new(&base, None, Some(token_file.clone())).unwrap();
        let poller = tokio::spawn(poll(endpoint, installer));
        until(|| seen.lock().unwrap().len() >= 3).await;
        // The projected token rotates on disk: the next poll presents the new one.
        std::fs::write(&token_file, "tok-456").unwrap();
        let before = seen.lock().unwrap().len();
        until(|| seen.lock().unwrap().len() >= before + 2).await;
        poller.abort();
        let installed = current.load().unwrap();
        assert_eq!((installed.epoch.as_str(), installed.revision), ("ep/1", 5));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "/api/v1/snapshots/shop?revision=-1&epoch=&wait=30");
        assert_eq!(seen[1].0, "/api/v1/snapshots/shop?revision=5&epoch=ep%2F1&wait=30");
        assert!(seen.iter().all(|(_, _, enc)| enc.as_deref() == Some("gzip")));
        assert_eq!(seen[0].1.as_deref(), Some("Bearer tok-123"));
        assert_eq!(seen.last().unwrap().1.as_deref(), Some("Bearer tok-456"));
    }

    #[tokio::test]
    async fn a_new_epoch_resets_the_sidecar_and_an_old_revision_of_the_same_epoch_does_not() {
        // The control plane answers by what the sidecar says it holds.
        let script: Script = Arc::new(|uri: &str| {
            if uri.contains("revision=-1") {
                (StatusCode::OK, document("old", 900), false)
            } else if uri.contains("epoch=old") {
                // A restored database: a new epoch, at a lower revision.
                (StatusCode::OK, document("new", 3), false)
            } else {
                (StatusCode::NOT_MODIFIED, Vec::new(), false)
            }
        });
        let (base, _seen) = control_plane(script).await;
        let installer = installer();
        let current = installer.current.clone();
        let poller = tokio::spawn(poll(Endpoint::new(&base, None, None).unwrap(), installer.clone()));
        until(|| current.load().is_some_and(|c| c.epoch == "new")).await;
        poller.abort();
        assert_eq!(current.load().map(|c| c.revision), Some(3));
        // Within the new epoch, an older revision is refused.
        assert!(!installer.apply(&document("new", 2), "test"));
        assert!(installer.apply(&document("new", 4), "test"));
    }

    #[test]
    fn gzip_is_inflated_within_a_bound() {
        let doc = document("e", 1);
        assert_eq!(inflate(&gzip(&doc), 1 << 20).unwrap(), doc);
        // A bomb: 64 MiB of zeros in about 64 KiB, refused at 1 MiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert!(matches!(inflate(&bomb, 1 << 20), Err(FeedError::TooLarge)));
        assert!(matches!(inflate(b"not gzip", 1 << 20), Err(FeedError::Inflate(_))));
    }

    #[tokio::test]
    async fn refusals_and_errors_keep_the_snapshot_and_are_counted() {
        let script: Script = Arc::new(|uri: &str| {
            if uri.contains("revision=-1") {
                (StatusCode::OK, document("e", 1), false)
            } else {
                (StatusCode::FORBIDDEN, b"{}".to_vec(), false)
            }
        });
        let (base, seen) = control_plane(script).await;
        let installer = installer();
        let metrics = installer.metrics.clone();
        let current = installer.current.clone();
        let poller = tokio::spawn(poll(Endpoint::new(&base, None, None).unwrap(), installer));
        until(|| seen.lock().unwrap().len() >= 3).await;
        poller.abort();
        assert_eq!(current.load().map(|c| c.revision), Some(1));
        assert!(metrics.snapshot_updates.with_label_values(&["error"]).get() >= 1);
    }
}
