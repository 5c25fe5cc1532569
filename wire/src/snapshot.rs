//! The policy snapshot: everything a sidecar needs to decide a request, at one revision.

use serde::{Deserialize, Serialize};

use crate::policy::{ApiVersions, AuditSettings, Cors, LabelSelector, PathMatching, PolicyRule, RateLimit, TeamRole};

/// A consistent view of the control plane's database at `revision`.
///
/// Read in one transaction, so a sidecar never sees half of a write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Monotonic revision: every write to the control plane's database bumps it.
    pub revision: i64,
    /// The epoch of the control plane's database (see [`crate::api`]): a revision is
    /// compared only with revisions of the same epoch. Empty from a snapshot file.
    #[serde(default)]
    pub epoch: String,
    /// Unix seconds at which the snapshot was read.
    pub generated_at: i64,
    pub roles: Vec<RoleEntry>,
    pub users: Vec<UserEntry>,
    pub api_keys: Vec<ApiKeyEntry>,
    pub sources: Vec<SourceEntry>,
    /// Ids of refresh-token sessions revoked and not yet expired; an access token whose
    /// `sid` is listed here is refused even though its signature and `exp` are valid.
    pub revoked_sessions: Vec<String>,
    pub policies: Vec<PolicyEntry>,
    /// Issuers whose JWTs are accepted, with their verification keys (a JWKS per issuer).
    #[serde(default)]
    pub jwt_issuers: Vec<JwtIssuer>,
}

/// An issuer of bearer JWTs: our own token service, or an external OIDC provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtIssuer {
    /// Required value of the `iss` claim.
    pub issuer: String,
    /// The `aud` claim must hold one of these. Never empty: a token for another
    /// audience is a token for another app.
    pub audiences: Vec<String>,
    /// Where the caller's roles, scopes and teams come from.
    #[serde(default)]
    pub claims: ClaimSource,
    /// For `claims: token`: the claims that hold them (an Issuer's `claims` mapping).
    #[serde(default)]
    pub claim_names: ClaimNames,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u32,
    /// Verification keys (JWKS). A token's `alg` must equal its key's `alg`.
    pub keys: Vec<JwtKey>,
}

fn default_leeway() -> u32 {
    30
}

/// Where a verified token's identity comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimSource {
    /// `sub` names a User in this snapshot; roles, scopes and teams are the user's now
    /// (a role removed takes effect at once, not when the token expires). Our token service.
    #[default]
    Directory,
    /// Roles from the `roles` claim, scopes from `scope` (space separated) or `scp`,
    /// e-mail from `email`. External issuers.
    Token,
}

/// The claims of an external token that hold the caller's roles, scopes, teams and
/// e-mail (an Issuer's `spec.claims`). Roles, scopes and teams: a list of strings or one
/// string of space-separated items. A team is `team` (a member) or `team:role`. When
/// `scopes` is `scope` (the default) and the token has none, `scp` is read instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimNames {
    #[serde(default = "ClaimNames::default_roles")]
    pub roles: String,
    #[serde(default = "ClaimNames::default_scopes")]
    pub scopes: String,
    #[serde(default = "ClaimNames::default_teams")]
    pub teams: String,
    #[serde(default = "ClaimNames::default_email")]
    pub email: String,
}

impl ClaimNames {
    /// The default claim names, also the Issuer CRD's defaults.
    pub const ROLES: &'static str = "roles";
    pub const SCOPES: &'static str = "scope";
    pub const TEAMS: &'static str = "teams";
    pub const EMAIL: &'static str = "email";

    fn default_roles() -> String {
        Self::ROLES.into()
    }
    fn default_scopes() -> String {
        Self::SCOPES.into()
    }
    fn default_teams() -> String {
        Self::TEAMS.into()
    }
    fn default_email() -> String {
        Self::EMAIL.into()
    }
}

impl Default for ClaimNames {
    fn default() -> ClaimNames {
        ClaimNames {
            roles: ClaimNames::default_roles(),
            scopes: ClaimNames::default_scopes(),
            teams: ClaimNames::default_teams(),
            email: ClaimNames::default_email(),
        }
    }
}

/// One verification key, as a JWK (RFC 7517: `kid`, `alg`, `n`/`e`, `crv`/`x`/`y`, `k`),
/// or as PEM (`pem`, our extension, for keys configured from files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `ES256`, `ES384` or `EdDSA`.
    pub alg: String,
    /// SPKI public key in PEM (RS*, PS*, ES*, EdDSA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// RSA modulus and exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC / OKP curve and coordinates, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// HMAC secret, base64url (HS*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleEntry {
    pub name: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    pub name: String,
    pub email: String,
    pub disabled: bool,
    pub roles: Vec<String>,
    pub teams: Vec<TeamMembership>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamMembership {
    pub team: String,
    pub role: TeamRole,
}

/// Who an API key acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    User,
    Source,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::User => "user",
            OwnerKind::Source => "source",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(OwnerKind::User),
            "source" => Some(OwnerKind::Source),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyEntry {
    /// Hex SHA-256 of the key; the key itself never leaves the Secret it was written to.
    pub key_hash: String,
    /// First characters of the key, safe to show and log.
    pub prefix: String,
    /// Namespace of the APIKey or Source the key belongs to.
    pub namespace: String,
    pub owner_kind: OwnerKind,
    pub owner_name: String,
    pub scopes: Vec<String>,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Unix seconds; a revoked key stays listed until it expires so that the refusal
    /// can say "revoked" rather than "unknown".
    pub revoked_at: Option<i64>,
    /// Global roles the key carries (a user's key only): those of its owner's roles the
    /// APIKey asked for. Absent (an older control plane): none, the safe reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Teams whose membership role the key carries (a user's key only). Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
    /// Namespaces besides `namespace` whose sidecars honour the key (the owner allowed
    /// them). A key is never honoured by a sidecar of any other namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub honoured_in: Vec<String>,
}

impl ApiKeyEntry {
    /// Whether a sidecar of `namespace` may accept this key.
    pub fn honoured_by(&self, namespace: &str) -> bool {
        self.honoured_namespaces().any(|n| n == namespace)
    }

    /// Every namespace whose sidecars may accept this key: its own, then those its owner
    /// allowed.
    pub fn honoured_namespaces(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.namespace.as_str()).chain(self.honoured_in.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceEntry {
    pub namespace: String,
    pub name: String,
    pub team: Option<String>,
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
}

// Not `Eq`: the audit sample rate is a float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEntry {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub rules: Vec<PolicyRule>,
    pub cors: Option<Cors>,
    pub api_versions: Option<ApiVersions>,
    /// Allowed requests to audit (denials always are); absent from older control planes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSettings>,
    /// How the app routes paths (absent: exactly, with ambiguous spellings refused).
    #[serde(default, skip_serializing_if = "PathMatching::is_exact")]
    pub path_matching: PathMatching,
}
