//! The webhook's HTTPS server: AdmissionReview v1 in, AdmissionReview with a JSON patch
//! out. `POST /inject` serves pods of namespaces without the injection label (the pod's
//! annotation decides), `POST /inject/namespace` those of labelled namespaces (injected
//! unless the pod says `disabled`); the webhook configuration routes each namespace to
//! one of them by `namespaceSelector`, so no request needs a read of the API.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio_rustls::TlsAcceptor;

use super::inject::{Decision, Injector};
use crate::metrics::Metrics;

/// Path of pods whose namespace is not labelled for injection.
pub const PATH_POD: &str = "/inject";
/// Path of pods whose namespace is labelled `portcullis.io/inject=enabled`.
pub const PATH_NAMESPACE: &str = "/inject/namespace";
/// Largest AdmissionReview read (the API server's own limit on an object is 1.5 MiB).
const MAX_BODY: usize = 4 << 20;

#[derive(Clone)]
struct State {
    injector: Arc<Injector>,
    metrics: Arc<Metrics>,
}

/// Serves HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    injector: Arc<Injector>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = TlsAcceptor::from(tls);
    let state = State { injector, metrics };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(error = %err, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| handle(req, state.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %err, "webhook connection ended");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

async fn handle(req: Request<Incoming>, state: State) -> Result<Response<Full<Bytes>>, Infallible> {
    let namespace_opted_in = match (req.method(), req.uri().path()) {
        (&Method::POST, PATH_POD) => false,
        (&Method::POST, PATH_NAMESPACE) => true,
        (&Method::GET, "/healthz") => return Ok(reply(StatusCode::OK, "text/plain", "ok\n")),
        _ => return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not found\n")),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => {
            state.metrics.webhook_request("error");
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("unreadable body: {err}\n"),
            ));
        }
    };
    let (status, answer) = review(&body, &state, namespace_opted_in);
    Ok(reply(status, "application/json", answer))
}

/// Answers one AdmissionReview (the bytes of the request body).
fn review(body: &[u8], state: &State, namespace_opted_in: bool) -> (StatusCode, Vec<u8>) {
    let parsed = serde_json::from_slice::<AdmissionReview<Pod>>(body)
        .map_err(|e| e.to_string())
        .and_then(|review| {
            TryInto::<AdmissionRequest<Pod>>::try_into(review)
                .map_err(|_| "no request in the AdmissionReview".to_string())
        });
    let request = match parsed {
        Ok(request) => request,
        Err(why) => {
            state.metrics.webhook_request("error");
            return (
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {why}\n").into_bytes(),
            );
        }
    };
    let response = AdmissionResponse::from(&request);
    let namespace = request
        .namespace
        .clone()
        .or_else(|| request.object.as_ref().and_then(|p| p.metadata.namespace.clone()))
        .unwrap_or_default();
    let decision = match (&request.operation, &request.object) {
        (Operation::Create, Some(pod)) => state.injector.decide(&namespace, pod, namespace_opted_in),
        _ => Decision::Skip("not a pod creation"),
    };
    let pod_name = request
        .object
        .as_ref()
        .and_then(|p| p.metadata.name.clone().or_else(|| p.metadata.generate_name.clone()))
        .unwrap_or_default();
    let response = match decision {
        Decision::Skip(why) => {
            state.metrics.webhook_request("skipped");
            tracing::debug!(%namespace, pod = %pod_name, why, "not injected");
            response
        }
        Decision::Inject(patch) => match response.clone().with_patch(patch) {
            Ok(patched) => {
                state.metrics.webhook_request("injected");
                tracing::info!(%namespace, pod = %pod_name, "sidecar injected");
                patched
            }
            Err(err) => {
                state.metrics.webhook_request("error");
                response.deny(format!("portcullis: cannot encode the patch: {err}"))
            }
        },
        Decision::Refuse(message) => {
            state.metrics.webhook_request("refused");
            tracing::info!(%namespace, pod = %pod_name, %message, "pod refused");
            response.deny(message)
        }
    };
    match serde_json::to_value(response.into_review()).and_then(|review| serde_json::to_vec(&base64_patch(review))) {
        Ok(bytes) => (StatusCode::OK, bytes),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {err}\n").into_bytes(),
        ),
    }
}

/// The patch as the API documents it, a base64 string (kube serializes the bytes as a
/// JSON array of numbers, which Go's decoder happens to accept too).
fn base64_patch(mut review: serde_json::Value) -> serde_json::Value {
    use base64::Engine;
    let Some(patch) = review.get_mut("response").and_then(|r| r.get_mut("patch")) else {
        return review;
    };
    if let Some(numbers) = patch.as_array() {
        let bytes: Option<Vec<u8>> = numbers
            .iter()
            .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        if let Some(bytes) = bytes {
            *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    review
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
