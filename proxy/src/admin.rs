//! The admin port: `/metrics`, `/healthz` (the process answers) and `/readyz` (a
//! snapshot is in force). Separate from the traffic port so that a policy can never
//! expose it and load on one cannot starve the other.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::Body;
use crate::metrics::Metrics;
use crate::policy::snapshot::Current;
use crate::transport::reply::full;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, current: Arc<Current>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let current = current.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = answer(request.uri().path(), &metrics, &current);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, current: &Current) -> Response<Body> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            Bytes::from(metrics.render(current)),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", Bytes::from_static(b"ok\n")),
        "/readyz" => match current.load() {
            Some(c) => (
                StatusCode::OK,
                "text/plain",
                Bytes::from(format!("ready: revision {}\n", c.revision)),
            ),
            None => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"not ready: no policy snapshot yet\n"),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
