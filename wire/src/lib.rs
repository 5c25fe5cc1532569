//! Types that cross the wire between the Portcullis control plane and its sidecars.
//!
//! The sidecar depends on this crate alone (no kube, no sqlx), so everything it needs
//! to enforce a policy is here: the [`Snapshot`] it receives and the AccessPolicy rule
//! types it compiles. The operator embeds the same rule types in its AccessPolicy CRD,
//! which is why they carry optional `schemars` derives (feature `schema`): one
//! definition, so the CRD and the enforcement can never disagree on a field.

pub mod api;
pub mod api_key;
pub mod glob;
pub mod policy;
pub mod process;
pub mod snapshot;

pub use policy::{
    ApiVersion, ApiVersions, AuditSettings, Cors, HttpMethod, LabelSelector, LabelSelectorRequirement, PathMatching,
    PolicyRule, RateLimit, SelectorOperator, TeamRole,
};
pub use process::unix_now;
pub use snapshot::{
    ApiKeyEntry, ClaimNames, ClaimSource, JwtIssuer, JwtKey, OwnerKind, PolicyEntry, RoleEntry, Snapshot, SourceEntry,
    TeamMembership, UserEntry,
};
