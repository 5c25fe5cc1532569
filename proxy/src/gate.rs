//! The per-request pipeline: correlate, normalize, answer preflights, authenticate,
//! authorize, rate-limit, forward with identity headers, decorate the response.
//! Every refusal is a JSON error and a metric; nothing reaches the app unless a rule
//! allowed it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use portcullis_wire::{ClaimSource, HttpMethod, PolicyRule};
use tracing::{debug, info};

use crate::authz::{self, Decision};
use crate::forward::{self, Added, Upstream, UpstreamError};
use crate::headers::*;
use crate::http1::AppHeaders;
use crate::identity::Principal;
use crate::jwt::JwtRefusal;
use crate::metrics::Metrics;
use crate::net::TrustedProxies;
use crate::path::{self, NormalizedPath};
use crate::ratelimit::{self, Limiter};
use crate::response;
use crate::snapshot::{Compiled, Current, Pod};
use crate::tls::{CertIdentity, ForwardedCertVerifier};
use crate::{Body, BoxError, cors};

/// Identity headers the app trusts; a client never gets to set them.
const IDENTITY_PREFIX: &[u8] = b"x-auth-";

/// A request body the gate can forward.
pub trait RequestBody: hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}

impl<B> RequestBody for B where B: hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}

/// What every connection shares.
pub struct Gate {
    pub current: Arc<Current>,
    pub pod: Pod,
    pub limiter: Limiter,
    pub metrics: Arc<Metrics>,
    pub upstream: Upstream,
    pub trusted: TrustedProxies,
    pub forwarded_certs: Option<ForwardedCertVerifier>,
    pub max_body_bytes: u64,
}

/// What is known about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The verified client certificate of a TLS connection, read once per connection.
    pub client_cert: Option<Arc<CertIdentity>>,
    /// The peer's address as the `X-Forwarded-For` entry, written once per connection.
    pub peer_ip: HeaderValue,
}

impl Conn {
    pub fn new(peer: SocketAddr, tls: bool, client_cert: Option<Arc<CertIdentity>>) -> Conn {
        let peer_ip =
            HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            peer,
            tls,
            client_cert,
            peer_ip,
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    Mtls,
    ForwardedCert,
    Anonymous,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Mtls => "mtls",
            AuthMethod::ForwardedCert => "forwarded_cert",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// A refusal: the status, a stable code, and a message safe to show.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// A request a rule allowed, and who sent it.
#[derive(Debug)]
pub struct Admitted {
    pub principal: Option<Arc<Principal>>,
    pub method: AuthMethod,
    /// The one normalized path: matched, and forwarded.
    pub path: NormalizedPath,
    /// The query as forwarded (an `api_key` parameter taken out).
    pub query: Option<String>,
}

impl Refused {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refused {
        Refused {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// Who the credential says is calling, how it was shown, and the query left once an
/// `api_key` parameter was taken out of it.
struct Authenticated {
    principal: Option<Arc<Principal>>,
    method: AuthMethod,
    query: Option<String>,
}

impl Authenticated {
    fn new(principal: Option<Arc<Principal>>, method: AuthMethod, query: Option<String>) -> Authenticated {
        Authenticated {
            principal,
            method,
            query,
        }
    }
}

/// What the log line and metrics of a request say.
#[derive(Debug)]
pub struct Trace {
    pub rule: String,
    pub subject: Option<String>,
    pub method: AuthMethod,
    pub reason: &'static str,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            rule: "-".into(),
            subject: None,
            method: AuthMethod::Anonymous,
            reason: "",
        }
    }
}

impl Gate {
    /// Answers one request: from hyper (`Incoming` bodies) or from [`crate::front`]
    /// (bodies read whole with the head).
    pub async fn handle<B: RequestBody>(&self, conn: &Conn, request: Request<B>) -> Response<Body> {
        let started = Instant::now();
        let correlation_id = response::correlation_id(request.headers());
        let method_label = method_label(request.method());
        let http_method = request.method().clone();
        let mut trace = Trace::default();
        let response = match self.pass(conn, request, &correlation_id, &mut trace).await {
            Ok(response) => response,
            Err(refused) => {
                let mut r = response::error(refused.status, refused.code, &refused.message, &correlation_id);
                if refused.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                if let Some(secs) = refused.retry_after {
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                info!(
                    correlation_id = response::id_text(&correlation_id),
                    method = %http_method,
                    rule = %trace.rule,
                    status = refused.status.as_u16(),
                    auth = trace.method.as_str(),
                    reason = trace.reason,
                    subject = trace.subject.as_deref().unwrap_or(""),
                    message = %refused.message,
                    "request refused"
                );
                r
            }
        };
        let status = response.status();
        self.metrics
            .requests
            .with_label_values(&[trace.rule.as_str(), method_label, status.as_str()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[trace.rule.as_str()])
            .observe(started.elapsed().as_secs_f64());
        debug!(correlation_id = response::id_text(&correlation_id), method = %http_method, rule = %trace.rule, status = status.as_u16(), "request");
        response
    }

    async fn pass<B: RequestBody>(
        &self,
        conn: &Conn,
        mut request: Request<B>,
        correlation_id: &HeaderValue,
        trace: &mut Trace,
    ) -> Result<Response<Body>, Refused> {
        let snapshot = self.current.load().ok_or_else(|| {
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_policy",
                "the sidecar has no policy snapshot yet; requests are refused until it has one",
            )
        })?;
        if let Some(cors) = &snapshot.cors
            && cors::is_preflight(request.method(), request.headers())
        {
            trace.rule = "cors-preflight".into();
            return cors::preflight(cors, request.headers(), response::empty)
                .map_err(|why| Refused::new(StatusCode::FORBIDDEN, "cors_refused", why));
        }
        let raw = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string();
        let admitted = self.admit(&snapshot, conn, request.method(), &raw, request.headers(), trace)?;

        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > self.max_body_bytes)
        {
            self.metrics.limits.with_label_values(&["body_size"]).inc();
            return Err(Refused::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {} bytes", self.max_body_bytes),
            ));
        }

        let upgrade = forward::upgrade_protocol(&request);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let origin_headers = snapshot.cors.as_ref().map(|_| request.headers().clone());
        let target = match &admitted.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", admitted.path.canonical),
            _ => admitted.path.canonical.clone(),
        };
        let (forwarded, added) = self.prepare(request, &admitted, correlation_id, conn, upgrade);
        let mut app_response = self.upstream.send(forwarded, &target, &added).await.map_err(|e| {
            self.metrics.upstream_errors.with_label_values(&[e.as_str()]).inc();
            trace.reason = e.as_str();
            match e {
                UpstreamError::Timeout => Refused::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "the app did not answer in time",
                ),
                UpstreamError::Connect | UpstreamError::Protocol => Refused::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "the app could not be reached",
                ),
            }
        })?;
        if let Some(client) = client_upgrade {
            forward::splice_upgrade(client, &mut app_response);
        }
        Ok(self.finish(
            app_response,
            &snapshot,
            &admitted.path,
            origin_headers.as_ref(),
            correlation_id,
        ))
    }

    /// Everything that decides whether a request may reach the app, and as whom:
    /// normalize the path, authenticate, authorize, rate-limit. Reads the request only.
    pub fn admit(
        &self,
        snapshot: &Compiled,
        conn: &Conn,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        trace: &mut Trace,
    ) -> Result<Admitted, Refused> {
        let method = http_method(method).ok_or_else(|| {
            Refused::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not supported",
            )
        })?;
        let (path, query) = path::normalize(path_and_query).map_err(|e| {
            self.metrics.limits.with_label_values(&["bad_request"]).inc();
            Refused::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string())
        })?;
        let query = query.map(str::to_string);
        let peer = conn.peer.ip();
        // A forwarded certificate counts only from a trusted peer.
        let forwarded_cert = if self.trusted.trusts(peer) {
            headers.get(X_CLIENT_CERT)
        } else {
            None
        };

        let found = snapshot.matcher.find(method, &path);
        let rule = found.map(|(rule, _)| rule);
        trace.rule = rule.map_or_else(|| "none".into(), |r| r.name.clone());

        let Authenticated {
            principal,
            method: auth_method,
            query,
        } = self.authenticate(snapshot, conn, headers, rule, forwarded_cert, query, trace)?;
        trace.method = auth_method;

        let identity = principal.as_deref().map(Principal::identity);
        match authz::decide(found, identity.as_ref()) {
            Decision::Allow { .. } => {
                self.count_auth(auth_method, "allow", "ok");
            }
            Decision::Unauthenticated { .. } => {
                trace.reason = "unauthenticated";
                self.count_auth(auth_method, "deny", "unauthenticated");
                return Err(Refused::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "authentication required: send a bearer token, an API key or a client certificate",
                ));
            }
            Decision::Forbidden { reason, .. } => {
                trace.reason = "forbidden";
                trace.subject = principal.as_ref().map(|p| p.subject.clone());
                self.count_auth(auth_method, "deny", "forbidden");
                return Err(Refused::new(StatusCode::FORBIDDEN, "forbidden", reason));
            }
        }
        if rule.is_some_and(|r| r.rate_limit.is_some()) || principal.as_ref().is_some_and(|p| p.rate_limit.is_some()) {
            let client_ip = self
                .trusted
                .client_ip(peer, headers.get_all(X_FORWARDED_FOR).iter().map(|v| v.as_bytes()));
            self.rate_limit(rule, principal.as_deref(), client_ip, trace)?;
        }
        Ok(Admitted {
            principal,
            method: auth_method,
            path,
            query,
        })
    }

    /// Finds and checks the caller's credential. Presenting a credential that fails is a
    /// 401 even on public routes: a broken client should learn it, not be served anonymously.
    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &self,
        snapshot: &Compiled,
        conn: &Conn,
        headers: &HeaderMap,
        rule: Option<&PolicyRule>,
        forwarded_cert: Option<&HeaderValue>,
        query: Option<String>,
        trace: &mut Trace,
    ) -> Result<Authenticated, Refused> {
        let now = crate::unix_now();
        let bearer = single(headers, &header::AUTHORIZATION)?
            .filter(|v| v.len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer "));
        let header_key = single(headers, &X_API_KEY)?;
        let (query, query_key) = match (rule, query) {
            (Some(rule), Some(q)) if rule.allow_api_key_in_query => take_query_key(&q),
            (_, q) => (q, None),
        };
        let presented = [bearer.is_some(), header_key.is_some(), query_key.is_some()];
        if presented.iter().filter(|p| **p).count() > 1 {
            trace.reason = "ambiguous";
            self.count_auth(AuthMethod::Anonymous, "deny", "ambiguous");
            return Err(Refused::new(
                StatusCode::BAD_REQUEST,
                "ambiguous_credentials",
                "send one credential: a bearer token or an API key, not both",
            ));
        }
        let refuse = |method: AuthMethod, reason: &'static str, trace: &mut Trace| {
            trace.method = method;
            trace.reason = reason;
            self.count_auth(method, "deny", reason);
            Refused::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                credential_message(method, reason),
            )
        };
        if let Some(value) = bearer {
            let token = value.to_str().map(|v| v[7..].trim()).unwrap_or_default();
            let claims = snapshot
                .jwt
                .verify(token, now)
                .map_err(|r| refuse(AuthMethod::Jwt, r.as_str(), trace))?;
            // Checked on every request, cache hit or not: a logout takes effect at once.
            if claims
                .session
                .as_deref()
                .is_some_and(|sid| snapshot.directory.session_revoked(sid))
            {
                return Err(refuse(AuthMethod::Jwt, "session_revoked", trace));
            }
            let principal = match claims.source {
                ClaimSource::Directory => snapshot
                    .directory
                    .user(&claims.subject)
                    .map_err(|r| refuse(AuthMethod::Jwt, r.as_str(), trace))?,
                ClaimSource::Token => claims
                    .bearer
                    .clone()
                    .ok_or_else(|| refuse(AuthMethod::Jwt, JwtRefusal::Malformed.as_str(), trace))?,
            };
            return Ok(Authenticated::new(Some(principal), AuthMethod::Jwt, query));
        }
        if let Some(key) = header_key
            .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
            .or(query_key)
        {
            let principal = snapshot
                .directory
                .api_key(&key, now)
                .map_err(|r| refuse(AuthMethod::ApiKey, r.as_str(), trace))?;
            return Ok(Authenticated::new(Some(principal), AuthMethod::ApiKey, query));
        }
        if let Some(cert) = &conn.client_cert {
            let principal = snapshot
                .directory
                .certificate(cert, &self.pod.namespace)
                .map_err(|r| refuse(AuthMethod::Mtls, r.as_str(), trace))?;
            return Ok(Authenticated::new(Some(principal), AuthMethod::Mtls, query));
        }
        if let Some(value) = forwarded_cert {
            let verifier = self
                .forwarded_certs
                .as_ref()
                .ok_or_else(|| refuse(AuthMethod::ForwardedCert, "no_client_ca", trace))?;
            let cert = verifier
                .verify(value.as_bytes(), rustls_pki_types::UnixTime::now())
                .map_err(|e| refuse(AuthMethod::ForwardedCert, e.as_str(), trace))?;
            let principal = snapshot
                .directory
                .certificate(&cert, &self.pod.namespace)
                .map_err(|r| refuse(AuthMethod::ForwardedCert, r.as_str(), trace))?;
            return Ok(Authenticated::new(Some(principal), AuthMethod::ForwardedCert, query));
        }
        Ok(Authenticated::new(None, AuthMethod::Anonymous, query))
    }

    fn rate_limit(
        &self,
        rule: Option<&PolicyRule>,
        principal: Option<&Principal>,
        client_ip: IpAddr,
        trace: &mut Trace,
    ) -> Result<(), Refused> {
        let now = std::time::Instant::now();
        let who = || principal.map_or_else(|| format!("ip:{client_ip}"), |p| p.subject.clone());
        let mut checks = Vec::new();
        if let Some((rule, limit)) = rule.and_then(|r| r.rate_limit.as_ref().map(|l| (r.name.as_str(), l))) {
            checks.push((rule, limit));
        }
        if let Some(limit) = principal.and_then(|p| p.rate_limit.as_ref()) {
            checks.push(("source:*", limit));
        }
        if checks.is_empty() {
            return Ok(());
        }
        let who = who();
        for (bucket, limit) in checks {
            if let Err(wait) = self.limiter.check(&who, bucket, limit, now) {
                trace.reason = "rate_limited";
                trace.subject = principal.map(|p| p.subject.clone());
                self.metrics.limits.with_label_values(&["rate_limit"]).inc();
                let mut refused = Refused::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; retry later",
                );
                refused.retry_after = Some(ratelimit::retry_after_secs(wait));
                return Err(refused);
            }
        }
        Ok(())
    }

    /// The request as the app sees it: hop-by-hop headers gone, the client's copies of the
    /// headers we set removed, body size capped while streaming. What we set comes back
    /// beside the request (see [`Added`]).
    fn prepare<'a, B: RequestBody>(
        &self,
        request: Request<B>,
        admitted: &'a Admitted,
        correlation_id: &HeaderValue,
        conn: &Conn,
        upgrade: Option<HeaderValue>,
    ) -> (Request<Body>, Added<'a>) {
        let (mut parts, body) = request.into_parts();
        let headers = &mut parts.headers;
        // From an untrusted peer the chain is whatever the client wrote: start it afresh.
        let xff = match (
            self.trusted.trusts(conn.peer.ip()),
            headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
        ) {
            (true, Some(chain)) => {
                HeaderValue::try_from(format!("{chain}, {}", conn.peer.ip())).unwrap_or_else(|_| conn.peer_ip.clone())
            }
            _ => conn.peer_ip.clone(),
        };
        forward::strip_hop_by_hop_and(headers, is_ours);
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let proto = if conn.tls { "https" } else { "http" };
        let added = Added {
            identity: admitted.principal.as_ref().map_or(&[], |p| p.identity_headers()),
            ours: [
                (X_CORRELATION_ID, correlation_id.clone()),
                (X_AUTH_METHOD, HeaderValue::from_static(admitted.method.as_str())),
                (X_FORWARDED_FOR, xff),
                (X_FORWARDED_PROTO, HeaderValue::from_static(proto)),
            ],
        };
        let limit = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        let body = Limited::new(body, limit).boxed();
        (Request::from_parts(parts, body), added)
    }

    fn finish(
        &self,
        app: Response<Body>,
        snapshot: &Compiled,
        path: &NormalizedPath,
        request_headers: Option<&HeaderMap>,
        correlation_id: &HeaderValue,
    ) -> Response<Body> {
        let upgraded = app.status() == StatusCode::SWITCHING_PROTOCOLS;
        let (mut parts, body) = app.into_parts();
        let deprecated = snapshot.deprecated_version(&path.canonical);
        let cors = snapshot
            .cors
            .as_ref()
            .zip(request_headers.filter(|h| h.contains_key(header::ORIGIN)));
        if let Some(app_headers) = parts.extensions.get_mut::<AppHeaders>() {
            if cors.is_none() && deprecated.is_none() {
                // Ours replaces the app's; the rest stay as read, for the client's hop.
                app_headers.remove(&X_CORRELATION_ID);
            } else if let Some(app_headers) = parts.extensions.remove::<AppHeaders>() {
                // CORS and deprecation add to the app's headers (`Vary`, `Link`): in a map.
                app_headers.into_map(&mut parts.headers);
            }
        }
        // Hop-by-hop headers are gone already (the upstream client drops them as it reads),
        // except the protocol a 101 switches to, which the client's hop needs with its
        // `Connection`.
        if upgraded && parts.headers.contains_key(header::UPGRADE) {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        parts.headers.insert(X_CORRELATION_ID, correlation_id.clone());
        if let Some((cors, request)) = cors {
            cors::decorate(cors, request, &mut parts.headers);
        }
        if let Some(version) = deprecated {
            cors::deprecation(version, &mut parts.headers);
        }
        Response::from_parts(parts, body)
    }

    fn count_auth(&self, method: AuthMethod, result: &str, reason: &str) {
        self.metrics
            .auth
            .with_label_values(&[method.as_str(), result, reason])
            .inc();
    }
}

/// Whether a header is one the client could use to impersonate, or one that we set: our
/// identity headers, a forwarded client certificate (read beforehand, from trusted peers
/// only), and the client's correlation id and forwarding headers (read beforehand; ours
/// replace them). The client's copies never reach the app.
fn is_ours(name: &HeaderName) -> bool {
    name.as_str().as_bytes().starts_with(IDENTITY_PREFIX)
        || matches!(
            name.as_str(),
            "x-client-cert" | "x-correlation-id" | "x-forwarded-for" | "x-forwarded-proto"
        )
}

/// The value of a header that may appear at most once: two values are ambiguous (which
/// one did the app's framework read?), so the request is refused.
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h HeaderValue>, Refused> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_credentials",
            format!("{name} sent more than once"),
        ));
    }
    Ok(first)
}

/// Takes `api_key=` out of the query (the app never sees it) and returns it.
fn take_query_key(query: &str) -> (Option<String>, Option<String>) {
    let mut key = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("api_key=") {
            Some(v) => {
                key = Some(percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
                false
            }
            None => true,
        })
        .collect();
    (Some(rest.join("&")), key)
}

fn credential_message(method: AuthMethod, reason: &str) -> String {
    let what = match method {
        AuthMethod::Jwt => "bearer token",
        AuthMethod::ApiKey => "API key",
        AuthMethod::Mtls | AuthMethod::ForwardedCert => "client certificate",
        AuthMethod::Anonymous => "credential",
    };
    format!("{what} refused: {}", reason.replace('_', " "))
}

fn http_method(m: &Method) -> Option<HttpMethod> {
    Some(match *m {
        Method::GET => HttpMethod::Get,
        Method::HEAD => HttpMethod::Head,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        Method::OPTIONS => HttpMethod::Options,
        _ => return None,
    })
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_key_is_taken_out() {
        let (rest, key) = take_query_key("a=1&api_key=pck_x%2By&b=2");
        assert_eq!((rest.as_deref(), key.as_deref()), (Some("a=1&b=2"), Some("pck_x+y")));
        assert_eq!(take_query_key("a=1").1, None);
    }

    #[test]
    fn identity_headers_from_clients_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-auth-user", HeaderValue::from_static("admin"));
        h.insert("X-Auth-Roles", HeaderValue::from_static("admin"));
        h.insert(X_CLIENT_CERT, HeaderValue::from_static("pem"));
        h.insert("x-authority", HeaderValue::from_static("kept: not ours"));
        forward::strip_hop_by_hop_and(&mut h, is_ours);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-authority"));
    }
}
