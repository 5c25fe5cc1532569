//! Portcullis sidecar proxy (data plane).
//!
//! It enforces a [`portcullis_wire::Snapshot`] in front of an app: authentication
//! (mTLS, JWT, API keys), authorization against compiled AccessPolicy rules, rate
//! limits, CORS and metrics. It never talks to the database and has no Kubernetes
//! client: everything it knows arrives as a snapshot. The proxy itself lands with
//! issue #4; today this crate only fixes that boundary (it depends on the wire crate
//! alone).

pub use portcullis_wire::Snapshot;
