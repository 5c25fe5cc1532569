//! Portcullis sidecar proxy (data plane).
//!
//! It enforces a [`portcullis_wire::Snapshot`] in front of an app. It never talks to the
//! database and has no Kubernetes client: everything it knows arrives as a snapshot.
//!
//! Three layers, each a folder, and a thin binary that wires them ([`sidecar`]):
//! - [`transport`]: bytes in and out — listeners, TLS, our HTTP/1.1 server and client,
//!   hyper for HTTP/2, the app's connections. The request path starts and ends here.
//! - [`policy`]: every decision — paths, credentials, rules, rate limits, CORS, identity
//!   headers, error answers — from a request's head alone. No I/O, no `unsafe`.
//! - [`feed`]: where snapshots come from (a file, the control plane) and how each is
//!   compiled and installed.
//!
//! [`metrics`] and [`admin`] report on all three; [`config`] is the command line.
//! [`control_plane`] is the verified channel to the control plane that the feed, the
//! [`report`]s (audit records, unknown key ids) and the transport's auth route share.

pub mod admin;
pub mod config;
pub mod control_plane;
pub mod feed;
pub mod metrics;
pub mod policy;
pub mod report;
pub mod sidecar;
pub mod transport;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response bodies: streamed, never buffered whole.
pub type Body = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;
