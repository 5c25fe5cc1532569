//! Portcullis sidecar proxy (data plane).
//!
//! It enforces a [`portcullis_wire::Snapshot`] in front of an app. It never talks to the
//! database and has no Kubernetes client: everything it knows arrives as a snapshot.
//!
//! A request crosses [`server`] (listeners, TLS, limits, drain) and [`front`] (HTTP/1.1;
//! hyper for HTTP/2 and the unusual) into [`gate`] (the pipeline), which uses [`path`] (one normalization), [`cors`], [`jwt`] / [`identity`] /
//! [`tls`] (who is calling), [`authz`] (the compiled rules), [`ratelimit`] and
//! [`forward`] (the app). [`snapshot`] holds the compiled snapshot in force, fed by
//! [`source`]; [`metrics`] and [`admin`] report.

pub mod admin;
pub mod authz;
pub mod config;
pub mod cors;
pub mod forward;
pub mod front;
pub mod gate;
pub mod headers;
pub mod http1;
pub mod identity;
pub mod jwt;
pub mod metrics;
pub mod net;
pub mod path;
pub mod pool;
pub mod ratelimit;
pub mod response;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod tls;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Bodies in both directions: streamed, never buffered whole.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
