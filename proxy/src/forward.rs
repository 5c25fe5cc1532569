//! The way to the app: pooled keep-alive connections over HTTP/1.1 and h2c, hop-by-hop
//! headers removed, upgrades (WebSocket) spliced after the app agrees.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use crate::headers::{connection_options, is_hop_by_hop};
use crate::pool::{AppUpgrade, Http1Pool};
use crate::{Body, BoxError};

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
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(UpstreamProtocol::Auto),
            "http1" => Ok(UpstreamProtocol::Http1),
            "http2" => Ok(UpstreamProtocol::Http2),
            other => Err(format!("{other:?}: expected auto, http1 or http2")),
        }
    }
}

/// Parses the upstream URL: `http://host:port`, nothing else (the app is on localhost;
/// TLS to it would only cost).
pub fn upstream_authority(url: &str) -> Result<Authority, String> {
    let uri: Uri = url.parse().map_err(|e| format!("--upstream {url:?}: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "--upstream {url:?}: only http:// is supported (the app is on localhost)"
        ));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!("--upstream {url:?}: give scheme, host and port only"));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| format!("--upstream {url:?}: missing host"))
}

/// Headers the sidecar sets on a forwarded request, kept beside it: written straight into
/// an HTTP/1.1 request head after the client's headers (which no longer hold these names),
/// they are never hashed into the request's map; for h2c they go into it.
pub struct Added<'a> {
    /// `X-Auth-User` and the rest, as the principal built them once.
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// Correlation id, auth method, `X-Forwarded-For`, `X-Forwarded-Proto`.
    pub ours: [(HeaderName, HeaderValue); 4],
}

impl Added<'_> {
    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.identity.iter().chain(self.ours.iter())
    }
}

/// Why the app did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamError {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
        }
    }
}

pub struct Upstream {
    authority: Authority,
    protocol: UpstreamProtocol,
    timeout: Duration,
    http1: Arc<Http1Pool>,
    /// h2c multiplexes every request on one connection; hyper-util's client keeps it.
    http2: Client<HttpConnector, Body>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE: usize = 1024;

impl Upstream {
    pub fn new(url: &str, protocol: UpstreamProtocol, timeout: Duration) -> Result<Upstream, String> {
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

    fn wants_http2(&self, request: &Request<Body>) -> bool {
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

    /// Sends `request` to the app at `path_and_query` (the canonical path and the query)
    /// and waits at most the upstream timeout for the response head.
    pub async fn send(
        &self,
        mut request: Request<Body>,
        path_and_query: &str,
        added: &Added<'_>,
    ) -> Result<Response<Body>, UpstreamError> {
        if self.wants_http2(&request) {
            for (name, value) in added.iter() {
                request.headers_mut().insert(name.clone(), value.clone());
            }
            let uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(self.authority.clone())
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| UpstreamError::Protocol)?;
            *request.uri_mut() = uri;
            *request.version_mut() = Version::HTTP_2;
            // Host becomes :authority; a Host header beside it is a protocol error in h2.
            request.headers_mut().remove(header::HOST);
            let response = async {
                match self.http2.request(request).await {
                    Ok(mut response) => {
                        // HTTP/2 has none to send (RFC 9113 §8.2.2), but one never passes.
                        strip_hop_by_hop(response.headers_mut());
                        Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()))
                    }
                    Err(e) if e.is_connect() => Err(UpstreamError::Connect),
                    Err(_) => Err(UpstreamError::Protocol),
                }
            };
            tokio::time::timeout(self.timeout, response)
                .await
                .unwrap_or(Err(UpstreamError::Timeout))
        } else {
            // An HTTP/2 client names the host in its URI only; HTTP/1.1 needs a Host header.
            if !request.headers().contains_key(header::HOST) {
                let host = request.uri().authority().unwrap_or(&self.authority).as_str();
                let host = HeaderValue::from_str(host).map_err(|_| UpstreamError::Protocol)?;
                request.headers_mut().insert(header::HOST, host);
            }
            *request.uri_mut() = Uri::try_from(path_and_query).map_err(|_| UpstreamError::Protocol)?;
            *request.version_mut() = Version::HTTP_11;
            // The pool keeps the timeout itself, with a timer per connection.
            self.http1.send(request, added.iter()).await
        }
    }
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), and any header the
/// `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_and(headers, |_| false);
}

/// [`strip_hop_by_hop`], and in the same pass the headers `also` picks.
pub fn strip_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // One pass over what is there (usually none of these), rather than a hashed removal
    // of every name that could be.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let hop = is_hop_by_hop(name, value);
        if !hop && !also(name) {
            continue;
        }
        if !doomed.contains(name) {
            doomed.push(name.clone());
        }
        if hop && *name == header::CONNECTION {
            doomed.extend(connection_options(value));
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
pub fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let asks = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| request.headers().get(header::UPGRADE).cloned()).flatten()
}

/// Once the app answered 101, splices the client's connection to the app's.
pub fn splice_upgrade(client: hyper::upgrade::OnUpgrade, app: &mut Response<Body>) {
    if app.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let Some((mut app_side, early)) = app.extensions_mut().remove::<AppUpgrade>().and_then(|u| u.take()) else {
        return;
    };
    tokio::spawn(async move {
        let Ok(client) = client.await else {
            return;
        };
        let mut client = TokioIo::new(client);
        // What the app sent right behind its 101 was read with the head.
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        // Ends when either side closes; errors are the peers' to see.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut app_side).await;
    });
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

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers");
        // Named by Connection, even `te: trailers` is this hop's alone.
        let mut named = HeaderMap::new();
        named.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        named.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut named);
        assert!(named.is_empty(), "{named:?}");
    }
}
