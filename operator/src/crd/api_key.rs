//! `APIKey` (namespaced): a generated key for a User or a Source, and its status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// An API key for a User or a Source. The operator generates the key, stores only its
/// hash, and writes the key once into a Secret owned by this object.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "APIKey",
    root = "ApiKey",
    plural = "apikeys",
    singular = "apikey",
    shortname = "ak",
    category = "portcullis",
    namespaced,
    status = "ApiKeyStatus",
    doc = "A Portcullis API key: a generated key for a User or Source, with scopes no wider than its owner's.",
    printcolumn(
        name = "User",
        type_ = "string",
        json_path = ".spec.owner.user",
        description = "Owning User, if any"
    ),
    printcolumn(
        name = "Source",
        type_ = "string",
        json_path = ".spec.owner.source",
        description = "Owning Source, if any"
    ),
    printcolumn(
        name = "Prefix",
        type_ = "string",
        json_path = ".status.prefix",
        description = "First characters of the key, safe to show"
    ),
    printcolumn(
        name = "Expires",
        type_ = "date",
        json_path = ".spec.expiresAt",
        description = "When the key stops working"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the key is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Who the key acts for: exactly one of `user` or `source`.
    pub owner: ApiKeyOwner,
    /// Scopes of the key; must be a subset of the owner's scopes.
    #[schemars(length(min = 1, max = 64), inner(length(max = 128), regex(pattern = super::patterns::SCOPE)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<String>,
    /// Global roles of the owning User the key also carries (each must be one the user
    /// holds). Without it the key carries no role: a rule that asks for a role refuses it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub roles: Vec<String>,
    /// Teams whose membership role (the owning User's, in that team) the key also
    /// carries. Without it the key carries no team role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub teams: Vec<String>,
    /// Namespaces besides this one whose sidecars honour the key; each must be allowed by
    /// the owning User's `apiKeyNamespaces`. Without it only this namespace's sidecars do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63), regex(pattern = super::patterns::NAMESPACE)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub honoured_in: Vec<String>,
    /// When the key stops working (RFC 3339). Without it the key lives until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Secret the key is written to, in this namespace; defaults to `<name>-apikey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME))]
    pub secret_name: Option<String>,
}

/// The owner of an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.user) != has(self.source)", "message": "an APIKey names exactly one owner: user or source"}
]))]
pub struct ApiKeyOwner {
    /// Name of the owning User (cluster-scoped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME))]
    pub user: Option<String>,
    /// Name of the owning Source, in the APIKey's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME))]
    pub source: Option<String>,
}

/// What the operator made of an APIKey.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    #[serde(flatten)]
    pub common: Status,
    /// First characters of the key, safe to show and to search logs for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// Secret the key was written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub secret_name: Option<String>,
    /// When the current key was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// The `portcullis.io/rotate` annotation value last acted on; setting the annotation
    /// to another value rotates the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub rotation: Option<String>,
}

impl AsRef<Status> for ApiKeyStatus {
    fn as_ref(&self) -> &Status {
        &self.common
    }
}
