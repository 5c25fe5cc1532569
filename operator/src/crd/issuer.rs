//! `Issuer` (cluster-scoped): an external OIDC/JWT issuer whose tokens sidecars accept.

use kube::CustomResource;
use portcullis_wire::ClaimNames;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// `https://…`, or `http://` to a loopback address only (a local identity provider in
/// development and tests): keys fetched in clear text from anywhere else could be anyone's.
pub const ISSUER_URL: &str = r"^(https://[^\s]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?(/[^\s]*)?)$";

/// An external issuer of bearer JWTs (an OIDC provider, a CI system, another cluster).
/// The operator fetches its keys, keeps them fresh and ships them to every sidecar.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "Issuer",
    plural = "issuers",
    shortname = "pciss",
    category = "portcullis",
    status = "IssuerStatus",
    doc = "A Portcullis issuer: an external OIDC/JWT issuer whose tokens the sidecars accept, with its keys fetched by the operator.",
    printcolumn(
        name = "Issuer",
        type_ = "string",
        json_path = ".spec.issuer",
        description = "Required iss claim"
    ),
    printcolumn(
        name = "Keys",
        type_ = "integer",
        json_path = ".status.keyCount",
        description = "Verification keys held"
    ),
    printcolumn(
        name = "Refreshed",
        type_ = "date",
        json_path = ".status.lastRefresh",
        description = "When the keys were last fetched"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the issuer's keys are in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    /// The issuer's identifier: the `iss` claim its tokens carry, and where OIDC
    /// discovery (`/.well-known/openid-configuration`) starts when `jwksUri` is not given.
    #[schemars(regex(pattern = ISSUER_URL), length(max = 2048))]
    pub issuer: String,
    /// Where the issuer publishes its keys (a JWKS document). Found by OIDC discovery when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ISSUER_URL), length(max = 2048))]
    pub jwks_uri: Option<String>,
    /// Accepted `aud` values: a token must be for one of them.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 512)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,
    /// Which claims carry the caller's roles, scopes, teams and e-mail.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// Signature algorithms accepted from this issuer; keys of other algorithms are ignored.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<Algorithm>,
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256]
}

/// Claim names of a token's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMapping {
    /// Claim holding the caller's roles (a list or a space-separated string).
    #[serde(default = "default_roles_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub roles: String,
    /// Claim holding the caller's scopes.
    #[serde(default = "default_scopes_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub scopes: String,
    /// Claim holding the caller's teams.
    #[serde(default = "default_teams_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub teams: String,
    /// Claim holding the caller's e-mail.
    #[serde(default = "default_email_claim")]
    #[schemars(length(min = 1, max = 128))]
    pub email: String,
}

fn default_roles_claim() -> String {
    ClaimNames::ROLES.into()
}
fn default_scopes_claim() -> String {
    ClaimNames::SCOPES.into()
}
fn default_teams_claim() -> String {
    ClaimNames::TEAMS.into()
}
fn default_email_claim() -> String {
    ClaimNames::EMAIL.into()
}

impl Default for ClaimMapping {
    fn default() -> Self {
        ClaimMapping {
            roles: default_roles_claim(),
            scopes: default_scopes_claim(),
            teams: default_teams_claim(),
            email: default_email_claim(),
        }
    }
}

/// An asymmetric JWS algorithm (an external issuer never shares an HMAC secret).
#[allow(clippy::upper_case_acronyms, reason = "the algorithms' registered names")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// What the operator made of an Issuer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = super::bound_status_conditions)]
pub struct IssuerStatus {
    #[serde(flatten)]
    pub common: Status,
    /// Verification keys held (and shipped to sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i64>,
    /// When the keys were last fetched successfully (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_refresh: Option<String>,
}

impl AsRef<Status> for IssuerStatus {
    fn as_ref(&self) -> &Status {
        &self.common
    }
}
