//! The decision layer: whether a request may reach the app, as whom, and what the app and
//! the client are told. It reads a request's head and the snapshot in force, and nothing
//! else: no sockets, no files, no `unsafe` (tests/layers.rs keeps it so) — so it can be
//! read, tested and fuzzed without a network.
//!
//! [`gate`] is the entry point; it uses [`path`] (one normalization), [`cors`], [`jwt`] /
//! [`identity`] / [`certs`] (who is calling), [`authz`] (the compiled rules),
//! [`ratelimit`], [`client_ip`] and [`answer`] (what the sidecar answers itself).
//! [`snapshot`] compiles a snapshot once per revision.
#![forbid(unsafe_code)]

pub mod answer;
pub mod authz;
pub mod certs;
pub mod client_ip;
pub mod cors;
pub mod gate;
pub mod headers;
pub mod identity;
pub mod jwt;
pub mod path;
pub mod ratelimit;
pub mod received;
pub mod snapshot;
