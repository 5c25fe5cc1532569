//! The sample app of the README's demo: answers every request with what it learned
//! from the sidecar (method, path, identity headers, correlation id) as JSON.
//!
//!     cargo run -p portcullis-proxy --example sample_app -- 127.0.0.1:3000

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("sample app on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let identity: serde_json::Map<String, serde_json::Value> = request
                    .headers()
                    .iter()
                    .filter(|(name, _)| name.as_str().starts_with("x-auth-") || name.as_str() == "x-correlation-id")
                    .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into()))
                    .collect();
                let body = serde_json::json!({
                    "app": "sample-api",
                    "method": request.method().as_str(),
                    "path": request.uri().to_string(),
                    "seen": identity,
                });
                let mut response = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
                response.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
