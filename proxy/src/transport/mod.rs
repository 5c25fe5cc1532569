//! The transport: bytes in, bytes out, and the one boundary with the policy.
//!
//! A request's path through it: [`listener`] accepts a connection (TLS, connection limit,
//! idle timeout, drain) → [`h1_server`] reads HTTP/1.1 requests itself, or hands the
//! connection with the bytes it read to hyper ([`hyper_server`]: HTTP/2 and the unusual
//! request) → [`Proxy::serve`] asks the gate ([`crate::policy::gate`]) for a verdict on the
//! request's head → forwards an admitted request through [`upstream`] (HTTP/1.1
//! connections of our own in [`upstream::pool`], h2c for gRPC) → applies the gate's edits
//! to the [`reply`] → the server writes it. The gate sees one request head and hands back
//! decisions; how bodies stream, how the app's headers stay as read ([`raw_headers`], the
//! one `unsafe`) and how a connection moves between servers stays on this side.

pub mod auth_route;
pub mod body;
pub mod h1_codec;
pub mod h1_server;
pub mod hop;
pub mod hyper_server;
pub mod io;
pub mod listener;
pub mod raw_headers;
pub mod reply;
pub mod tls;
pub mod upgrade;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use portcullis_wire::api::{AuditRecord, Decision};

use self::auth_route::AuthRoute;
use self::body::RequestBody;
use self::reply::Reply;
use self::upstream::Upstream;
use crate::policy::answer;
use crate::policy::gate::{Admission, Conn, Gate, Trace, UpstreamFailure, Verdict};
use crate::policy::headers::{X_FORWARDED_FOR, is_reserved};
use crate::report::{self, Reporter};

/// The gate and the app behind it: what every connection serves requests with.
pub struct Proxy {
    pub gate: Gate,
    pub upstream: Upstream,
    /// The token service's paths, sent to the control plane (with a control plane only).
    pub auth_route: Option<AuthRoute>,
    /// Audit records and unknown key ids, for the control plane (with one only).
    pub reporter: Option<Arc<Reporter>>,
}

impl Proxy {
    /// Answers one request, whichever server read it.
    pub async fn serve(&self, conn: &Conn, request: Request<RequestBody>) -> Reply {
        let started = Instant::now();
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if let Some(route) = &self.auth_route
            && route.claims(target)
        {
            return route.serve(&self.gate, conn, request, started).await;
        }
        let (verdict, mut trace) = self.gate.check(conn, request.method(), target, request.headers());
        // Only a denial or a sampled allow is audited: nothing is built for the rest.
        let mut audit = match &self.reporter {
            Some(reporter) if trace.audited => Some(self.audit_record(reporter, conn, &request, &trace)),
            _ => None,
        };
        if let (Some(reporter), Some(kid)) = (&self.reporter, trace.unknown_kid.take()) {
            reporter.unknown_kid(kid);
        }
        let reply = match verdict {
            Verdict::Answer(answer) => Reply::from_answer(answer),
            Verdict::Forward(admission) => match self.forward(request, &admission).await {
                Ok(mut reply) => {
                    reply.apply(&admission.response);
                    reply
                }
                Err(failure) => Reply::from_answer(self.gate.upstream_failed(failure, &mut trace)),
            },
        };
        self.gate.record(&trace, reply.status, started.elapsed());
        if let (Some(reporter), Some(mut record)) = (&self.reporter, audit.take()) {
            record.status = reply.status.as_u16();
            reporter.audit(record);
        }
        reply
    }

    /// The audit record of a decision (its status filled in once answered).
    fn audit_record(
        &self,
        reporter: &Reporter,
        conn: &Conn,
        request: &Request<RequestBody>,
        trace: &Trace,
    ) -> AuditRecord {
        let denied = trace.refusal.is_some();
        let client = self.gate.trusted.client_ip(
            conn.peer.ip(),
            request.headers().get_all(X_FORWARDED_FOR).iter().map(|v| v.as_bytes()),
        );
        AuditRecord {
            at_ms: report::unix_millis(),
            correlation_id: answer::id_text(&trace.correlation_id).to_string(),
            namespace: reporter.namespace.clone(),
            pod: reporter.pod.clone(),
            actor: trace.subject.clone(),
            method: request.method().as_str().chars().take(16).collect(),
            // The path only: a query can carry secrets (an `api_key` parameter).
            path: request.uri().path().chars().take(1024).collect(),
            rule: trace.audit_rule.clone(),
            decision: if denied { Decision::Deny } else { Decision::Allow },
            reason: match (denied, trace.reason) {
                (false, _) => "allowed".into(),
                (true, "") => "refused".into(),
                (true, reason) => reason.into(),
            },
            status: 0,
            client: Some(client.to_string()),
        }
    }

    /// The request as the app sees it — hop-by-hop headers and the client's copies of the
    /// headers the sidecar reserves gone, the admission's headers added — and the app's
    /// answer. An upgrade the app agrees to is spliced.
    async fn forward(
        &self,
        mut request: Request<RequestBody>,
        admission: &Admission,
    ) -> Result<Reply, UpstreamFailure> {
        let upgrade = upgrade::requested(&request);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let headers = request.headers_mut();
        hop::strip(headers, |name| admission.client_headers.drops(name));
        if let Some(protocol) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        let mut reply = self
            .upstream
            .send(request, &admission.target, admission.headers())
            .await?;
        if let Some(client) = client_upgrade {
            upgrade::splice(client, &mut reply);
        }
        // The protocol a 101 switches to needs its `Connection` on the client's hop too.
        if reply.status == StatusCode::SWITCHING_PROTOCOLS && reply.headers.contains(&header::UPGRADE) {
            reply
                .headers
                .set(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        Ok(reply)
    }
}
