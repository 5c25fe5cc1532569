//! The auth route: requests under the token service's prefix (and its two
//! `/.well-known` documents) go to the control plane, not to the app, and without
//! authentication — they are how a caller gets a credential. So every app behind a
//! sidecar serves login, refresh and logout on its own origin, and browser cookies stay
//! same-origin.
//!
//! The request keeps the client's headers (cookies included) minus the hop-by-hop ones
//! and those the sidecar reserves; `X-Forwarded-For`, `-Proto` and `-Host` are the
//! sidecar's. The answer comes back as the control plane gave it (`Set-Cookie` included),
//! minus its hop-by-hop headers. The path is normalized as for the app (an ambiguous one is
//! refused) and must still be under the prefix once normalized.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Version};
use hyper_util::client::legacy::Client;

use super::body::RequestBody;
use super::hop;
use super::reply::Reply;
use crate::BoxError;
use crate::control_plane::{Connector, Endpoint};
use crate::policy::answer::{self, Answer};
use crate::policy::gate::{Conn, Gate, Trace};
use crate::policy::headers::{ClientHeaders, X_CORRELATION_ID, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::policy::path;

pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The token service's documents outside its prefix.
pub const WELL_KNOWN: [&str; 2] = ["/.well-known/jwks.json", "/.well-known/openid-configuration"];
/// The `rule` label of these requests in the metrics.
const RULE: &str = "auth-route";

/// Where the auth route leads, and how long the control plane has to answer.
pub struct AuthRoute {
    prefix: String,
    endpoint: Endpoint,
    client: Client<Connector, RequestBody>,
    timeout: Duration,
}

impl AuthRoute {
    /// `prefix` starts and ends with `/` (the configuration checks it).
    pub fn new(endpoint: &Endpoint, prefix: String, timeout: Duration) -> AuthRoute {
        AuthRoute {
            prefix,
            client: endpoint.client(),
            endpoint: endpoint.clone(),
            timeout,
        }
    }

    /// Whether a request target is the control plane's: two comparisons of its first
    /// bytes, so that every other request pays next to nothing for the route.
    pub fn claims(&self, target: &str) -> bool {
        target.starts_with(self.prefix.as_str())
            || (target.starts_with("/.well-known/") && WELL_KNOWN.contains(&target.split('?').next().unwrap_or("")))
    }

    fn under(&self, canonical: &str) -> bool {
        canonical.starts_with(self.prefix.as_str()) || WELL_KNOWN.contains(&canonical)
    }

    /// Forwards a request [`AuthRoute::claims`] to the control plane, and counts it.
    pub async fn serve(&self, gate: &Gate, conn: &Conn, request: Request<RequestBody>, started: Instant) -> Reply {
        let mut trace = Trace {
            correlation_id: answer::correlation_id(request.headers()),
            rule: RULE.into(),
            ..Trace::default()
        };
        trace.http_method = match *request.method() {
            hyper::Method::GET => "GET",
            hyper::Method::POST => "POST",
            hyper::Method::PUT => "PUT",
            hyper::Method::DELETE => "DELETE",
            hyper::Method::PATCH => "PATCH",
            hyper::Method::OPTIONS => "OPTIONS",
            hyper::Method::HEAD => "HEAD",
            _ => "other",
        };
        let reply = match self.forward(gate, conn, request, &trace).await {
            Ok(reply) => reply,
            Err((status, code, message)) => {
                trace.reason = code;
                trace.refusal = Some(message.to_string());
                Reply::from_answer(Answer::error(status, code, message, &trace.correlation_id))
            }
        };
        gate.record(&trace, reply.status, started.elapsed());
        reply
    }

    async fn forward(
        &self,
        gate: &Gate,
        conn: &Conn,
        mut request: Request<RequestBody>,
        trace: &Trace,
    ) -> Result<Reply, (StatusCode, &'static str, &'static str)> {
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let (normalized, query) =
            path::normalize(target).map_err(|_| (StatusCode::BAD_REQUEST, "bad_path", "the path is ambiguous"))?;
        if !self.under(&normalized.canonical) {
            return Err((StatusCode::BAD_REQUEST, "bad_path", "the path is ambiguous"));
        }
        let path_and_query = match query {
            Some(q) => format!("{}?{q}", normalized.canonical),
            None => normalized.canonical,
        };
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > gate.max_body_bytes)
        {
            gate.metrics.limits.with_label_values(&["body_size"]).inc();
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the sidecar accepts",
            ));
        }
        let uri = self
            .endpoint
            .uri(&path_and_query)
            .map_err(|_| (StatusCode::BAD_REQUEST, "bad_path", "the path is ambiguous"))?;
        let host = request.headers().get(header::HOST).cloned().or_else(|| {
            request
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // From an untrusted peer the chain is whatever the client wrote: start it afresh.
        let peer = conn.peer.ip();
        let xff = match (
            gate.trusted.trusts(peer),
            request.headers().get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
        ) {
            (true, Some(chain)) => {
                HeaderValue::try_from(format!("{chain}, {peer}")).unwrap_or_else(|_| conn.peer_ip.clone())
            }
            _ => conn.peer_ip.clone(),
        };
        let headers = request.headers_mut();
        // As strict as for an untrusted client of the app: the sidecar sets the forwarding
        // headers itself, and the token service needs no API key.
        hop::strip(headers, |name| {
            ClientHeaders::default().drops(name) || *name == X_FORWARDED_HOST
        });
        headers.insert(X_FORWARDED_FOR, xff);
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST, host);
        }
        headers.insert(X_CORRELATION_ID, trace.correlation_id.clone());
        // The control plane's own name: what its certificate and routing expect.
        let authority = HeaderValue::from_str(self.endpoint.authority().as_str()).map_err(|_| {
            (
                StatusCode::BAD_GATEWAY,
                "control_plane_unavailable",
                "bad control plane address",
            )
        })?;
        headers.insert(header::HOST, authority);
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => {
                gate.metrics.upstream_errors.with_label_values(&["control_plane"]).inc();
                return Err((
                    StatusCode::BAD_GATEWAY,
                    "control_plane_unavailable",
                    "the control plane could not be reached",
                ));
            }
            Err(_) => {
                gate.metrics.upstream_errors.with_label_values(&["control_plane"]).inc();
                return Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    "control_plane_timeout",
                    "the control plane did not answer in time",
                ));
            }
        };
        let mut response = response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed());
        hop::strip(response.headers_mut(), |_| false);
        let mut reply = Reply::from_response(response);
        reply.headers.set(X_CORRELATION_ID, trace.correlation_id.clone());
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_claims_its_prefix_and_documents_only() {
        let endpoint = Endpoint::new("http://127.0.0.1:1", None, None).unwrap();
        let route = AuthRoute::new(&endpoint, "/api/v1/auth/".into(), Duration::from_secs(1));
        for mine in [
            "/api/v1/auth/login",
            "/api/v1/auth/sessions/1?x=y",
            "/.well-known/jwks.json",
            "/.well-known/openid-configuration?a",
        ] {
            assert!(route.claims(mine), "{mine}");
        }
        for theirs in [
            "/api/v1/authx",
            "/api/v1/auth",
            "/api/v1/items",
            "/.well-known/security.txt",
            "/",
        ] {
            assert!(!route.claims(theirs), "{theirs}");
        }
        assert!(route.under("/api/v1/auth/login"));
        assert!(!route.under("/api/v1/admin"));
    }
}
