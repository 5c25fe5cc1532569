//! The way to the app: pooled keep-alive connections over HTTP/1.1 ([`pool`]), h2c for
//! gRPC, each answer a [`Reply`].

pub mod pool;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use self::pool::Http1Pool;
use super::body::RequestBody;
use super::hop;
use super::reply::Reply;
use crate::BoxError;
use crate::policy::gate::UpstreamFailure;

/// HTTP version spoken to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// gRPC (`content-type: application/grpc*`) over h2c, everything else over HTTP/1.1:
    /// what an app that serves both on one port expects.
    Auto,
    Http1,
    Http2,
}

impl FromStr for UpstreamProtocol {
    type Err = UpstreamUrlError;

    fn from_str(s: &str) -> Result<Self, UpstreamUrlError> {
        match s {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" => Ok(UpstreamProtocol::Http1),
            "http2" => Ok(UpstreamProtocol::Http2),
            other => Err(UpstreamUrlError::Protocol(other.to_string())),
        }
    }
}

/// Why the app's address or protocol was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("--upstream {0:?}: not a URL")]
    Malformed(String),
    #[error("--upstream {0:?}: only http:// is supported (the app is on localhost)")]
    NotHttp(String),
    #[error("--upstream {0:?}: give scheme, host and port only")]
    HasPath(String),
    #[error("--upstream {0:?}: missing host")]
    NoHost(String),
    #[error("{0:?}: expected auto, http1 or http2")]
    Protocol(String),
}

/// Parses the upstream URL: `http://host:port`, nothing else (the app is on localhost;
/// TLS to it would only cost).
pub fn upstream_authority(url: &str) -> Result<Authority, UpstreamUrlError> {
    let uri: Uri = url.parse().map_err(|_| UpstreamUrlError::Malformed(url.to_string()))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(UpstreamUrlError::NotHttp(url.to_string()));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(UpstreamUrlError::HasPath(url.to_string()));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| UpstreamUrlError::NoHost(url.to_string()))
}

pub struct Upstream {
    authority: Authority,
    protocol: UpstreamProtocol,
    timeout: Duration,
    http1: Arc<Http1Pool>,
    /// h2c multiplexes every request on one connection; hyper-util's client keeps it.
    http2: Client<HttpConnector, RequestBody>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE: usize = 1024;

impl Upstream {
    pub fn new(url: &str, protocol: UpstreamProtocol, timeout: Duration) -> Result<Upstream, UpstreamUrlError> {
        let authority = upstream_authority(url)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http2 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector);
        Ok(Upstream {
            http1: Arc::new(Http1Pool::new(
                &authority,
                POOL_MAX_IDLE,
                POOL_IDLE_TIMEOUT,
                CONNECT_TIMEOUT,
                timeout,
            )),
            authority,
            protocol,
            timeout,
            http2,
        })
    }

    fn wants_http2(&self, request: &Request<RequestBody>) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => {
                request.version() == Version::HTTP_2
                    && request
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            }
        }
    }

    /// Sends `request` to the app at `path_and_query` (the canonical path and the query),
    /// with `added` after its own headers (an HTTP/1.1 head gets them written straight
    /// in, never hashed into the request's map), and waits at most the upstream timeout
    /// for the response head.
    pub async fn send<'a>(
        &self,
        mut request: Request<RequestBody>,
        path_and_query: &str,
        added: impl Iterator<Item = &'a (HeaderName, HeaderValue)>,
    ) -> Result<Reply, UpstreamFailure> {
        if self.wants_http2(&request) {
            for (name, value) in added {
                request.headers_mut().insert(name.clone(), value.clone());
            }
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(self.authority.clone())
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| UpstreamFailure::Protocol)?;
            *request.uri_mut() = uri;
            *request.version_mut() = Version::HTTP_2;
            // Host becomes :authority; a Host header beside it is a protocol error in h2.
            request.headers_mut().remove(header::HOST);
            let response = async {
                match self.http2.request(request).await {
                    Ok(mut response) => {
                        // HTTP/2 has none to send (RFC 9113 §8.2.2), but one never passes.
                        hop::strip(response.headers_mut(), |_| false);
                        Ok(Reply::from_response(
                            response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()),
                        ))
                    }
                    Err(e) if e.is_connect() => Err(UpstreamFailure::Connect),
                    Err(_) => Err(UpstreamFailure::Protocol),
                }
            };
            tokio::time::timeout(self.timeout, response)
                .await
                .unwrap_or(Err(UpstreamFailure::Timeout))
        } else {
            // An HTTP/2 client names the host in its URI only; HTTP/1.1 needs a Host header.
            if !request.headers().contains_key(header::HOST) {
                let host = request.uri().authority().unwrap_or(&self.authority).as_str();
                let host = HeaderValue::from_str(host).map_err(|_| UpstreamFailure::Protocol)?;
                request.headers_mut().insert(header::HOST, host);
            }
            *request.uri_mut() = Uri::try_from(path_and_query).map_err(|_| UpstreamFailure::Protocol)?;
            *request.version_mut() = Version::HTTP_11;
            // The pool keeps the timeout itself, with a timer per connection.
            self.http1.send(request, added).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_is_plain_http_host_and_port() {
        assert_eq!(
            upstream_authority("http://127.0.0.1:3000").unwrap().as_str(),
            "127.0.0.1:3000"
        );
        assert!(upstream_authority("https://127.0.0.1:3000").is_err());
        assert!(upstream_authority("http://127.0.0.1:3000/api").is_err());
        assert!(upstream_authority("127.0.0.1:3000").is_err());
    }
}
