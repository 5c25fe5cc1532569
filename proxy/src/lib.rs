//! Portcullis sidecar proxy (data plane).
//!
//! It enforces a [`portcullis_wire::Snapshot`] in front of an app: authentication
//! (mTLS, JWT, API keys), authorization against compiled AccessPolicy rules, rate
//! limits, CORS and metrics. It never talks to the database and has no Kubernetes
//! client: everything it knows arrives as a snapshot.
//!
//! Built so far (issue #4 is in progress): [`path`], the one normalization of request
//! paths; [`authz`], the compiled rule matcher and the authorization decision;
//! [`identity`], the snapshot indexed for authentication (API keys so far);
//! [`ratelimit`], token buckets per identity and rule. The HTTP proxy, TLS, JWT, CORS
//! and metrics are not here yet.

pub mod authz;
pub mod identity;
pub mod path;
pub mod ratelimit;
