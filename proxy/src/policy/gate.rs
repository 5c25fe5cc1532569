//! The gate: every decision about a request, and nothing else. It sees one request head
//! (method, target, headers) and the connection it came on, whatever protocol carried it,
//! and gives a [`Verdict`]: forward to the app as an [`Admission`] says (identity headers,
//! the canonical target, the edits to make to the response), or answer without the app
//! (an error, a CORS preflight). It does no I/O: the transport reads and writes, and
//! reports back with [`Gate::record`] once the request has been answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use portcullis_wire::api::UnknownKid;
use portcullis_wire::{ClaimSource, HttpMethod, PolicyRule};
use tracing::{debug, info};

use super::answer::{self, Answer, ResponseEdits};
use super::authz::{self, Decision};
use super::certs::{CertIdentity, ForwardedCertVerifier};
use super::client_ip::TrustedProxies;
use super::cors;
use super::headers::*;
use super::identity::Principal;
use super::jwt::JwtRefusal;
use super::path::{self, NormalizedPath};
use super::ratelimit::{self, Limiter};
use super::snapshot::{Compiled, Current, Pod};
use crate::metrics::Metrics;

/// What every connection shares.
pub struct Gate {
    pub current: Arc<Current>,
    pub pod: Pod,
    pub limiter: Limiter,
    pub metrics: Arc<Metrics>,
    pub trusted: TrustedProxies,
    pub forwarded_certs: Option<ForwardedCertVerifier>,
    pub max_body_bytes: u64,
    /// Past this many seconds without word from the snapshot's source, every request is
    /// refused (503 `policy_stale`) rather than decided on an old policy. Off by default.
    pub max_staleness: Option<i64>,
    /// Whether decisions are audited: denials always, allows as their policy asks.
    pub audit: bool,
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
    /// The rule passes the client's `X-API-Key` on to the app.
    pub forward_api_key: bool,
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

    /// The JSON error the client gets.
    fn answer(&self, correlation_id: &HeaderValue) -> Answer {
        let mut answer = Answer::error(self.status, self.code, &self.message, correlation_id);
        if self.status == StatusCode::UNAUTHORIZED {
            answer
                .headers
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            answer.headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        answer
    }
}

/// What to do with a request.
// Made once per request and taken apart at once: boxing the admission would cost an
// allocation per request for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verdict {
    /// Forward it to the app, as the admission says.
    Forward(Admission),
    /// Answer it without the app: a refusal, or a CORS preflight.
    Answer(Answer),
}

/// A request on its way to the app: who sent it, what the app is asked for, what the
/// app is told, and what changes in its response.
#[derive(Debug)]
pub struct Admission {
    pub principal: Option<Arc<Principal>>,
    pub method: AuthMethod,
    /// The one normalized path, and the query without an `api_key` taken out of it: what
    /// was matched is what the app is asked for.
    pub target: String,
    /// Correlation id, auth method, `X-Forwarded-For`, `X-Forwarded-Proto`.
    ours: [(HeaderName, HeaderValue); 4],
    /// Which of the client's headers reach the app (see [`ClientHeaders::drops`]).
    pub client_headers: ClientHeaders,
    /// What changes in the app's response.
    pub response: ResponseEdits,
}

impl Admission {
    /// The headers the app receives from the sidecar, after the client's own (which no
    /// longer hold any of these names: see [`ClientHeaders::drops`]): the principal's
    /// identity headers, then ours.
    pub fn headers(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.principal
            .as_deref()
            .map_or(&[][..], Principal::identity_headers)
            .iter()
            .chain(self.ours.iter())
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
    pub correlation_id: HeaderValue,
    /// The request's method as a metric label.
    pub http_method: &'static str,
    pub rule: String,
    pub subject: Option<String>,
    pub method: AuthMethod,
    pub reason: &'static str,
    /// Why the request was refused, as the client was told.
    pub refusal: Option<String>,
    /// The decision goes to the audit log: a denial, or an allow its policy's sample drew
    /// (only when the gate audits at all).
    pub audited: bool,
    /// Index of the rule that matched in the snapshot's matcher.
    pub rule_index: Option<usize>,
    /// `policy/rule` of the rule that matched, for an audited request.
    pub audit_rule: Option<String>,
    /// A bearer token's `kid` that no key of its (known) issuer has: the control plane is
    /// told, so it can refetch that issuer's keys.
    pub unknown_kid: Option<UnknownKid>,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            correlation_id: HeaderValue::from_static("-"),
            http_method: "other",
            rule: "-".into(),
            subject: None,
            method: AuthMethod::Anonymous,
            reason: "",
            refusal: None,
            audited: false,
            rule_index: None,
            audit_rule: None,
            unknown_kid: None,
        }
    }
}

/// Why the app gave no answer, as the transport saw it; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Nothing accepted the connection (refused, unreachable, no answer to the connect).
    Connect,
    /// No response head by the upstream timeout.
    Timeout,
    /// The app closed (or reset) the connection before a whole response head.
    Closed,
    /// What the app sent is not an HTTP/1.1 response head we can frame unambiguously.
    Malformed,
    /// The app's response head is larger than the sidecar reads.
    HeadTooLarge,
    /// Anything else: the request body could not be sent, an h2c stream failed.
    Protocol,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Closed => "closed",
            UpstreamFailure::Malformed => "malformed",
            UpstreamFailure::HeadTooLarge => "head_too_large",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

impl Gate {
    /// Decides a request, from its head and the connection it came on.
    pub fn check(&self, conn: &Conn, method: &Method, target: &str, headers: &HeaderMap) -> (Verdict, Trace) {
        let mut trace = Trace {
            correlation_id: answer::correlation_id(headers),
            http_method: method_label(method),
            ..Trace::default()
        };
        let verdict = match self.decide(conn, method, target, headers, &mut trace) {
            Ok(verdict) => verdict,
            Err(refused) => {
                // Denials are always audited; allows were sampled as they were admitted.
                if self.audit {
                    trace.audited = true;
                    if let Some(index) = trace.rule_index {
                        trace.audit_rule = self.current.load().map(|s| s.rule_label(index));
                    }
                }
                Verdict::Answer(self.refuse(refused, &mut trace))
            }
        };
        (verdict, trace)
    }

    /// The answer when the app could not be reached or did not answer in time.
    pub fn upstream_failed(&self, failure: UpstreamFailure, trace: &mut Trace) -> Answer {
        self.metrics
            .upstream_errors
            .with_label_values(&[failure.as_str()])
            .inc();
        trace.reason = failure.as_str();
        let refused = match failure {
            UpstreamFailure::Timeout => Refused::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                "the app did not answer in time",
            ),
            UpstreamFailure::Connect => Refused::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the app could not be reached",
            ),
            UpstreamFailure::Closed
            | UpstreamFailure::Malformed
            | UpstreamFailure::HeadTooLarge
            | UpstreamFailure::Protocol => Refused::new(
                StatusCode::BAD_GATEWAY,
                "upstream_unavailable",
                "the app gave no usable answer",
            ),
        };
        self.refuse(refused, trace)
    }

    /// Counts and logs a request once it has been answered with `status`, `elapsed`
    /// after its head arrived.
    pub fn record(&self, trace: &Trace, status: StatusCode, elapsed: Duration) {
        self.metrics
            .requests
            .with_label_values(&[trace.rule.as_str(), trace.http_method, status.as_str()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[trace.rule.as_str()])
            .observe(elapsed.as_secs_f64());
        let correlation_id = answer::id_text(&trace.correlation_id);
        match &trace.refusal {
            Some(message) => info!(
                correlation_id,
                method = trace.http_method,
                rule = %trace.rule,
                status = status.as_u16(),
                auth = trace.method.as_str(),
                reason = trace.reason,
                subject = trace.subject.as_deref().unwrap_or(""),
                message = %message,
                "request refused"
            ),
            None => {
                debug!(correlation_id, method = trace.http_method, rule = %trace.rule, status = status.as_u16(), "request")
            }
        }
    }

    fn refuse(&self, refused: Refused, trace: &mut Trace) -> Answer {
        let answer = refused.answer(&trace.correlation_id);
        trace.refusal = Some(refused.message);
        answer
    }

    /// The answer to every request while the snapshot is older than the maximum
    /// staleness allows.
    fn stale(&self, max: i64) -> Refused {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_stale",
            format!(
                "the sidecar has not heard from the control plane for more than {max} s (its maximum staleness); requests are refused until it does"
            ),
        )
    }

    fn decide(
        &self,
        conn: &Conn,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        trace: &mut Trace,
    ) -> Result<Verdict, Refused> {
        let snapshot = self.current.load().ok_or_else(|| {
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_policy",
                "the sidecar has no policy snapshot yet; requests are refused until it has one",
            )
        })?;
        if let Some(max) = self.max_staleness
            && self.current.older_than(max, portcullis_wire::unix_now())
        {
            trace.reason = "policy_stale";
            return Err(self.stale(max));
        }
        if let Some(cors) = &snapshot.cors
            && cors::is_preflight(method, headers)
        {
            trace.rule = "cors-preflight".into();
            let mut answer = cors::preflight(cors, headers)
                .map_err(|why| Refused::new(StatusCode::FORBIDDEN, "cors_refused", why.to_string()))?;
            answer.headers.insert(X_CORRELATION_ID, trace.correlation_id.clone());
            return Ok(Verdict::Answer(answer));
        }
        let admitted = self.admit(&snapshot, conn, method, target, headers, trace)?;
        if headers
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
        let target = match &admitted.query {
            Some(q) if !q.is_empty() => format!("{}?{q}", admitted.path.canonical),
            _ => admitted.path.canonical.clone(),
        };
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
        let proto = if conn.tls { "https" } else { "http" };
        let mut response = ResponseEdits::new(trace.correlation_id.clone());
        if let Some(cors) = &snapshot.cors
            && headers.contains_key(header::ORIGIN)
        {
            cors::decorate(cors, headers, &mut response);
        }
        if let Some(version) = snapshot.deprecated_version(&admitted.path.canonical) {
            cors::deprecation(version, &mut response);
        }
        Ok(Verdict::Forward(Admission {
            ours: [
                (X_CORRELATION_ID, trace.correlation_id.clone()),
                (X_AUTH_METHOD, HeaderValue::from_static(admitted.method.as_str())),
                (X_FORWARDED_FOR, xff),
                (X_FORWARDED_PROTO, HeaderValue::from_static(proto)),
            ],
            client_headers: ClientHeaders {
                trusted_peer: self.trusted.trusts(conn.peer.ip()),
                forward_api_key: admitted.forward_api_key,
            },
            principal: admitted.principal,
            method: admitted.method,
            target,
            response,
        }))
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
        // A forwarded certificate counts only from a trusted peer, and only one: two are
        // ambiguous (which one did the proxy in front mean?), whoever sent them.
        let forwarded_cert = single(headers, &X_CLIENT_CERT)?.filter(|_| self.trusted.trusts(peer));

        let found = snapshot.matcher.route(method, &path).map_err(|e| {
            self.metrics.limits.with_label_values(&["bad_request"]).inc();
            Refused::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string())
        })?;
        let rule = found.map(|(_, rule, _)| rule);
        trace.rule = rule.map_or_else(|| "none".into(), |r| r.name.clone());
        let rule_index = found.map(|(index, _, _)| index);
        trace.rule_index = rule_index;

        let Authenticated {
            principal,
            method: auth_method,
            query,
        } = self.authenticate(snapshot, conn, headers, rule, forwarded_cert, query, trace)?;
        trace.method = auth_method;

        let identity = principal.as_deref().map(Principal::identity);
        match authz::decide(found.map(|(_, rule, team)| (rule, team)), identity.as_ref()) {
            Decision::Allow { .. } => {
                self.count_auth(auth_method, "allow", "ok");
                // The empty list (no policy asks) is the common case: one length check.
                if self.audit
                    && let Some(rate) = rule_index.and_then(|i| snapshot.audit_allows.get(i))
                    && sampled(*rate)
                {
                    trace.audited = true;
                    trace.subject = principal.as_ref().map(|p| p.subject.clone());
                    trace.audit_rule = rule_index.map(|i| snapshot.rule_label(i));
                }
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
            forward_api_key: rule.is_some_and(|r| r.forward_api_key),
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
        let now = portcullis_wire::unix_now();
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
            let claims = match snapshot.jwt.verify(token, now) {
                Ok(claims) => claims,
                Err(r) => {
                    if r == JwtRefusal::UnknownKey {
                        trace.unknown_kid = snapshot.jwt.unknown_kid(token);
                    }
                    let mut refused = refuse(AuthMethod::Jwt, r.as_str(), trace);
                    if r == JwtRefusal::UnsafeClaim {
                        // Its own code: the token is genuine, the issuer's values are the problem.
                        refused.code = "unsafe_claim";
                        refused.message =
                            "bearer token refused: a claim holds a separator, whitespace, a control byte or non-ASCII"
                                .into();
                    }
                    return Err(refused);
                }
            };
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
                .api_key(&key, &self.pod.namespace, now)
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
        let who = || principal.map_or_else(|| ratelimit::anonymous_key(client_ip), |p| p.subject.clone());
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

    fn count_auth(&self, method: AuthMethod, result: &str, reason: &str) {
        self.metrics
            .auth
            .with_label_values(&[method.as_str(), result, reason])
            .inc();
    }
}

/// Whether an allowed request is audited, at `rate` (0 never, 1 always).
fn sampled(rate: f32) -> bool {
    rate >= 1.0 || (rate > 0.0 && fastrand::f32() < rate)
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
}
