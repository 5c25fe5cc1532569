//! `AccessPolicy` (namespaced): who may call what on the pods it selects.

use kube::CustomResource;
use portcullis_wire::{ApiVersions, AuditSettings, Cors, LabelSelector, PathMatching, PolicyRule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// Who may call what on the pods it selects. Enforced by their sidecars; a request that
/// matches no rule is denied.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "AccessPolicy",
    plural = "accesspolicies",
    shortname = "ap",
    category = "portcullis",
    namespaced,
    status = "Status",
    doc = "A Portcullis access policy: ordered rules (method, path globs, required scopes, roles, team role, rate limit), CORS and API versions for the pods it selects.",
    printcolumn(
        name = "Rules",
        type_ = "string",
        json_path = ".spec.rules[*].name",
        description = "Rule names, in match order"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the policy is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// Pods of this namespace whose sidecars enforce the policy; empty selects them all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// Rules, tried in order; the first whose methods and paths match decides.
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub rules: Vec<PolicyRule>,
    /// Cross-origin resource sharing; without it cross-origin preflights are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Current and deprecated API versions; deprecated ones get `Deprecation` and `Sunset` headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_versions: Option<ApiVersions>,
    /// Allowed requests the sidecars send to the audit log (denials always are), e.g.
    /// `{allows: 0.01}` for one in a hundred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSettings>,
    /// How the app routes paths: `caseInsensitive`, `ignoreTrailingSlash`. Without them
    /// a path that would meet another rule under such routing is refused (400).
    #[serde(flatten)]
    pub path_matching: PathMatching,
}
