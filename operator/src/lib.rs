//! Portcullis control plane.
//!
//! - [`crd`]: the custom resources, the source of truth for `crds/*.yaml`.
//! - [`store`]: the database, the only module that speaks SQL.
//! - [`controller`]: one reconciler per kind, and what they share.
//! - [`bootstrap`]: built-in roles and the first administrator.
//! - [`credentials`]: API keys, password hashes, digests.
//! - [`metrics`], [`admin`]: Prometheus metrics and the health/metrics HTTP port.
//! - [`issuers`]: external issuers' keys, fetched and kept fresh.
//! - [`health`]: whether the database answers (readiness, `database_up`).
//! - [`leader`]: leader election, so that one replica reconciles.
//! - [`local`]: local mode, the control plane without a cluster.
//! - [`api`]: the control-plane API every replica serves to sidecars (snapshots, audit).
//! - [`tokens`]: the token service (login, refresh, logout, sessions, passwords, JWKS).
//! - [`webhook`]: the sidecar injection webhook and its TLS.

pub mod admin;
pub mod api;
pub mod bootstrap;
pub mod controller;
pub mod crd;
pub mod credentials;
pub mod health;
pub mod issuers;
pub mod leader;
pub mod local;
pub mod metrics;
pub mod store;
pub mod tokens;
pub mod webhook;
