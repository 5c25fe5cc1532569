//! `Role` (cluster-scoped): a named set of scopes that Users hold.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// A global role: a named set of scopes granted to the Users that hold it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "Role",
    plural = "roles",
    shortname = "pcrole",
    category = "portcullis",
    status = "Status",
    doc = "A Portcullis role: a named set of scopes that Users hold (admin, maintainer and viewer are built in).",
    printcolumn(
        name = "Scopes",
        type_ = "string",
        json_path = ".spec.scopes",
        description = "Scopes the role grants"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the role is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Scopes granted by this role: `read`, `write`, `admin`, or `resource:verb` (e.g. `sources:write`).
    #[schemars(length(min = 1, max = 64), inner(length(max = 128), regex(pattern = super::patterns::SCOPE)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,
    /// What the role is for, shown to administrators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}
