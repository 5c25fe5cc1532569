//! Portcullis control plane.
//!
//! - [`crd`]: the custom resources, the source of truth for `crds/*.yaml`.
//! - [`store`]: the database, the only module that speaks SQL.

pub mod crd;
pub mod store;
