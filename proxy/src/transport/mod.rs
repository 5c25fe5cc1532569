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

use std::time::Instant;

use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};

use self::body::RequestBody;
use self::reply::Reply;
use self::upstream::Upstream;
use crate::policy::gate::{Admission, Conn, Gate, UpstreamFailure, Verdict};

/// The gate and the app behind it: what every connection serves requests with.
pub struct Proxy {
    pub gate: Gate,
    pub upstream: Upstream,
}

impl Proxy {
    /// Answers one request, whichever server read it.
    pub async fn serve(&self, conn: &Conn, request: Request<RequestBody>) -> Reply {
        let started = Instant::now();
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let (verdict, mut trace) = self.gate.check(conn, request.method(), target, request.headers());
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
        reply
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
