//! The control plane, long-polled for the next snapshot of this namespace (the contract
//! of [`portcullis_wire::api`]): over the verified channel of [`crate::control_plane`],
//! with the token read afresh each poll, gzip accepted and inflated within a bound, and
//! the view digest of the snapshot in force sent back, so that writes that do not change
//! this namespace's view do not wake this sidecar.
//!
//! A snapshot is parsed as it streams in (on a blocking thread, fed the body's chunks
//! through a short channel), never held whole: a document of 100,000 API keys is 24 MB,
//! its compact form a quarter of that.

use std::io::{self, Read};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use portcullis_wire::api::{EPOCH_HEADER, MAX_VIEW_LEN, REVISION_HEADER, SNAPSHOTS_PATH, VIEW_HEADER};
use tokio::sync::mpsc;
use tracing::warn;

use super::Installer;
use crate::control_plane::{ChannelError, Connector, Endpoint};

/// Largest snapshot accepted, once inflated (a policy of 100,000 API keys is about 30 MiB):
/// a compressed answer that inflates past it is refused, not held.
const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// Seconds the control plane is asked to hold the poll (at most `MAX_WAIT_SECONDS`),
/// unless a maximum staleness asks for less (see [`poll_wait`]).
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
    #[error("snapshot sent with Content-Encoding {0:?}; only gzip was offered")]
    Encoding(String),
    #[error("control plane answered {0}")]
    Status(StatusCode),
}

/// What one poll brought.
enum Fetched {
    /// 304: what the sidecar holds is current.
    Unchanged,
    /// 200: a snapshot document on its way, gzipped or not, and the view it is of.
    Snapshot {
        body: Incoming,
        gzip: bool,
        view: Option<View>,
    },
}

/// Which view of the namespace a snapshot is, as the control plane's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    epoch: String,
    revision: i64,
    digest: String,
}

impl View {
    fn from_headers(headers: &hyper::HeaderMap) -> Option<View> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let digest = text(VIEW_HEADER).filter(|d| !d.is_empty() && d.len() <= MAX_VIEW_LEN)?;
        Some(View {
            epoch: text(EPOCH_HEADER)?.to_string(),
            revision: text(REVISION_HEADER)?.parse().ok()?,
            digest: digest.to_string(),
        })
    }
}

/// How long each poll asks the control plane to hold it, in seconds: 30, or a third of
/// the maximum staleness (at least 1) — a healthy sidecar is confirmed by the answer to
/// each poll, so with nothing changing it must hear back well within the maximum.
pub fn poll_wait(max_staleness: Option<Duration>) -> u64 {
    max_staleness.map_or(WAIT_SECONDS, |max| (max.as_secs() / 3).clamp(1, WAIT_SECONDS))
}

/// Long-polls the control plane, asking it to hold each poll `wait` seconds: answers with
/// a snapshot are installed, 304s confirm the one in force (both reset the staleness
/// clock). Errors, and snapshots that are refused, back off exponentially (to 30 s) and
/// keep the last good snapshot in force.
pub async fn poll(endpoint: Endpoint, installer: Installer, wait: u64) {
    let client: Client<Connector, Empty<Bytes>> = endpoint.client();
    let mut backoff = FIRST_BACKOFF;
    // The view of the last snapshot installed from the control plane.
    let mut installed_view: Option<View> = None;
    loop {
        let held = installer.current.load();
        let (revision, epoch) = held.as_ref().map_or((-1, ""), |c| (c.revision, c.epoch.as_str()));
        // Sent only while the snapshot in force is the one it describes.
        let view = installed_view
            .as_ref()
            .filter(|v| v.revision == revision && v.epoch == epoch)
            .map_or("", |v| v.digest.as_str());
        let fetched = fetch(
            &client,
            &endpoint,
            &installer.pod.namespace,
            (revision, epoch, view),
            wait,
        )
        .await;
        drop(held);
        let failure = match fetched {
            Ok(Fetched::Unchanged) => {
                installer.current.confirm();
                None
            }
            Ok(Fetched::Snapshot { body, gzip, view }) => {
                // Parsing and compiling a large snapshot takes a while: off the runtime's
                // threads, so requests are not held up behind it, and fed as it arrives.
                let (chunks, received) = mpsc::channel(4);
                let installing = installer.clone();
                let origin = format!("{endpoint:?}");
                let parsing = tokio::task::spawn_blocking(move || {
                    let chunks = Chunks {
                        received,
                        current: Bytes::new(),
                    };
                    installing.apply_reader(document(chunks, gzip, MAX_SNAPSHOT_BYTES), &origin)
                });
                pump(body, chunks).await;
                let installed = parsing.await.unwrap_or(false);
                if installed {
                    installed_view = view;
                    // The buffers the document arrived in were this thread's.
                    super::release_memory();
                }
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
    (revision, epoch, view): (i64, &str, &str),
    wait: u64,
) -> Result<Fetched, FeedError> {
    let mut path = format!(
        "{SNAPSHOTS_PATH}{}?revision={revision}&epoch={}&wait={wait}",
        utf8_percent_encode(namespace, NON_ALPHANUMERIC),
        utf8_percent_encode(epoch, NON_ALPHANUMERIC),
    );
    if !view.is_empty() {
        path.push_str("&view=");
        path.extend(utf8_percent_encode(view, NON_ALPHANUMERIC));
    }
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
            Ok(Fetched::Snapshot {
                view: View::from_headers(response.headers()),
                body: response.into_body(),
                gzip,
            })
        }
        other => Err(FeedError::Status(other)),
    }
}

/// Hands the body's chunks to the parser as they arrive, within the poll's timeout; a
/// failure reaches the parser as a read error.
async fn pump(mut body: Incoming, chunks: mpsc::Sender<io::Result<Bytes>>) {
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    loop {
        let next = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Ok(data),
                Err(_) => continue, // trailers: nothing to parse
            },
            Ok(Some(Err(e))) => Err(io::Error::other(e)),
            Ok(None) => return,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the snapshot did not arrive in time",
            )),
        };
        let failed = next.is_err();
        // The parser gave up (a bad document): nothing more to send.
        if chunks.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// The body's chunks, as a blocking reader for the parser.
struct Chunks {
    received: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.received.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// The document `body` carries, inflated when `gzip`, and cut off with an error past
/// `limit` bytes: a small compressed answer must not be able to exhaust the sidecar's
/// memory (nor a plain one that never ends).
fn document(body: impl Read + Send + 'static, gzip: bool, limit: usize) -> Bounded<Box<dyn Read + Send>> {
    let inner: Box<dyn Read + Send> = if gzip {
        Box::new(flate2::read::GzDecoder::new(body))
    } else {
        Box::new(body)
    };
    Bounded { inner, left: limit }
}

/// A reader that fails once more than its limit was read.
struct Bounded<R> {
    inner: R,
    left: usize,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n).ok_or_else(|| {
            io::Error::other(format!(
                "the snapshot inflates past {} MiB; refused",
                MAX_SNAPSHOT_BYTES >> 20
            ))
        })?;
        Ok(n)
    }
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
                            // A snapshot's epoch, revision and view (`v<revision>`), as the
                            // control plane sends them.
                            let plain = if gzipped {
                                let mut out = Vec::new();
                                flate2::read::GzDecoder::new(&body[..])
                                    .read_to_end(&mut out)
                                    .map(|_| out)
                                    .ok()
                            } else {
                                Some(body.clone())
                            };
                            if status == StatusCode::OK
                                && let Some(s) = plain.and_then(|b| serde_json::from_slice::<Snapshot>(&b).ok())
                            {
                                response = response
                                    .header(EPOCH_HEADER, s.epoch)
                                    .header(REVISION_HEADER, s.revision)
                                    .header(VIEW_HEADER, format!("v{}", s.revision));
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
        let poller = tokio::spawn(poll(endpoint, installer, WAIT_SECONDS));
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
        // The view of the snapshot in force goes back with the next poll.
        assert_eq!(
            seen[1].0,
            "/api/v1/snapshots/shop?revision=5&epoch=ep%2F1&wait=30&view=v5"
        );
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
        let poller = tokio::spawn(poll(
            Endpoint::new(&base, None, None).unwrap(),
            installer.clone(),
            WAIT_SECONDS,
        ));
        until(|| current.load().is_some_and(|c| c.epoch == "new")).await;
        poller.abort();
        assert_eq!(current.load().map(|c| c.revision), Some(3));
        // Within the new epoch, an older revision is refused.
        assert!(!installer.apply(&document("new", 2), "test"));
        assert!(installer.apply(&document("new", 4), "test"));
    }

    #[test]
    fn a_maximum_staleness_shortens_the_poll_to_a_third_of_it() {
        assert_eq!(poll_wait(None), 30);
        assert_eq!(poll_wait(Some(Duration::from_secs(600))), 30);
        assert_eq!(poll_wait(Some(Duration::from_secs(10))), 3);
        assert_eq!(poll_wait(Some(Duration::from_secs(2))), 1);
    }

    #[test]
    fn gzip_is_inflated_within_a_bound() {
        let read = |bytes: Vec<u8>, gzip: bool, limit| {
            let mut out = Vec::new();
            super::document(io::Cursor::new(bytes), gzip, limit)
                .read_to_end(&mut out)
                .map(|_| out)
        };
        let doc = document("e", 1);
        assert_eq!(read(gzip(&doc), true, 1 << 20).unwrap(), doc);
        assert_eq!(read(doc.clone(), false, 1 << 20).unwrap(), doc);
        // A bomb: 64 MiB of zeros in about 64 KiB, refused at 1 MiB.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        let refused = read(bomb, true, 1 << 20).unwrap_err();
        assert!(refused.to_string().contains("refused"), "{refused}");
        assert!(read(b"not gzip".to_vec(), true, 1 << 20).is_err());
        assert!(
            read(vec![b' '; 2 << 20], false, 1 << 20).is_err(),
            "plain bodies are bounded too"
        );
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
        let poller = tokio::spawn(poll(Endpoint::new(&base, None, None).unwrap(), installer, WAIT_SECONDS));
        until(|| seen.lock().unwrap().len() >= 3).await;
        poller.abort();
        assert_eq!(current.load().map(|c| c.revision), Some(1));
        assert!(metrics.snapshot_updates.with_label_values(&["error"]).get() >= 1);
    }
}
