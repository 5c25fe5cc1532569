//! `Team` (cluster-scoped): Users with a team role each.

use kube::CustomResource;
use portcullis_wire::TeamRole;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// A group of Users, each with a team role; `{team}` captures in AccessPolicies check it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "Team",
    plural = "teams",
    shortname = "pcteam",
    category = "portcullis",
    status = "Status",
    doc = "A Portcullis team: Users with a team role each (owner > admin > member > viewer).",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName",
        description = "Human-readable name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the team is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TeamSpec {
    /// Name shown in user interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// What the team is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// Members of the team; each User appears at most once.
    #[serde(default)]
    #[schemars(length(max = 5000))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["user"]))]
    pub members: Vec<TeamMember>,
}

/// One member of a Team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TeamMember {
    /// Name of the User.
    #[schemars(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME))]
    pub user: String,
    /// The member's role in this team: `owner`, `admin`, `member` or `viewer`.
    pub role: TeamRole,
}
