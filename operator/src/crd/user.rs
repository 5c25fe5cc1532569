//! `User` (cluster-scoped): a person with an e-mail, roles and an initial password.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{SecretKeyRef, Status};

/// A person who logs in through the token service or is named by API keys.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "User",
    plural = "users",
    shortname = "pcuser",
    category = "portcullis",
    status = "Status",
    doc = "A Portcullis user: an identity with an e-mail, global roles and an initial password from a Secret.",
    printcolumn(
        name = "Email",
        type_ = "string",
        json_path = ".spec.email",
        description = "Login e-mail"
    ),
    printcolumn(
        name = "Roles",
        type_ = "string",
        json_path = ".spec.roles",
        description = "Global roles"
    ),
    printcolumn(
        name = "Disabled",
        type_ = "boolean",
        json_path = ".spec.disabled",
        priority = 1,
        description = "Whether logins and tokens are refused"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the user is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// Login e-mail address; unique across all Users.
    #[schemars(email, length(max = 254), regex(pattern = super::patterns::EMAIL))]
    pub email: String,
    /// Name shown in user interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Names of the Roles this user holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub roles: Vec<String>,
    /// Refuse logins and revoke every session and token of this user.
    #[serde(default)]
    pub disabled: bool,
    /// Secret key holding the initial password. It is hashed (argon2id) when the Secret's
    /// content changes, so a password changed later through the token service is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Free-form user preferences (e.g. `theme: dark`, `reducedMotion: "true"`), returned by `/api/v1/auth/user`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub preferences: BTreeMap<String, String>,
    /// Require a second factor at login.
    #[serde(default)]
    pub require_two_factor: bool,
    /// Namespaces where an APIKey may name this user as its owner (`*`: any namespace).
    /// Empty (the default): no APIKey may act for this user, so that whoever can create
    /// APIKeys in some namespace cannot mint a key with this user's authority. A key is
    /// honoured by the sidecars of its own namespace, and of the namespaces its APIKey
    /// lists in `honouredIn` that are listed here too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 63), regex(pattern = super::patterns::NAMESPACE_OR_ANY)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub api_key_namespaces: Vec<String>,
}
