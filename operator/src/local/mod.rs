//! Local mode: the control plane without a cluster. Applies a directory of manifests
//! (the same YAML a user would `kubectl apply`, Secrets included) to a database through
//! the same reconcilers, with an in-memory Kubernetes API standing in for the API
//! server, reports each object's resulting status, and keeps watching the directory.
//!
//! - [`manifests`]: reads and validates the directory.
//! - [`apply`]: makes the in-memory API hold the manifests (`kubectl apply`).
//! - [`converge`]: reconciles every object, pass after pass, until nothing changes.
//! - [`report`]: the status line of every object.
//! - [`state`]: the state directory: operator-made Secrets (so that keys survive a
//!   restart as they would in a cluster) and the snapshot file.
//! - [`watch`]: notices edits to the directory.
//! - [`api`]: the in-memory Kubernetes API.

pub mod api;
pub mod apply;
pub mod converge;
pub mod manifests;
pub mod report;
pub mod state;
pub mod watch;

pub use api::MemoryApi;
pub use apply::sync_objects;
pub use converge::converge;
pub use manifests::{Manifest, ManifestKey, Problem, load_dir, parse_file};
pub use report::{ObjectStatus, statuses};
pub use state::{operator_secrets, restore_secrets, save_secrets, save_snapshot};
pub use watch::{POLL, fingerprint};

use kube::Client;

use crate::store::StoreError;

/// Objects listed per request: bounds memory whatever the number of objects.
const PAGE: u32 = 500;

/// What stops a local-mode step (a refused manifest is not an error: it is reported).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The in-memory API refused a request.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// Creating, updating or deleting one object failed.
    #[error("{action} {kind} {name}: {source}")]
    Object {
        action: &'static str,
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A manifest that passed validation does not fit its Rust type.
    #[error("{file}: {source}")]
    Manifest {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// An object could not be converted to or from JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A saved Secrets file could not be read.
    #[error("{0}")]
    Read(#[source] std::io::Error),
    /// A saved Secrets file does not hold Secrets.
    #[error("{path}: {source}")]
    SavedSecret {
        path: String,
        #[source]
        source: yaml_serde::Error,
    },
}

/// A client of a fresh in-memory Kubernetes API that serves our kinds and Secrets.
pub fn memory_api() -> Client {
    MemoryApi::new().client()
}
