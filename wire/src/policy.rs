//! AccessPolicy rule types, shared by the CRD (operator) and the matcher (sidecar).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A team role. Ordered from least to most privileged, so `>=` answers
/// "does this member hold at least that role".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum TeamRole {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TeamRole::Viewer => "viewer",
            TeamRole::Member => "member",
            TeamRole::Admin => "admin",
            TeamRole::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(TeamRole::Viewer),
            "member" => Some(TeamRole::Member),
            "admin" => Some(TeamRole::Admin),
            "owner" => Some(TeamRole::Owner),
            _ => None,
        }
    }
}

/// An HTTP method a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// A token bucket: `requestsPerSecond` sustained, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second allowed per identity.
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub requests_per_second: u32,
    /// Requests allowed at once above the sustained rate (bucket size). Defaults to `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = 1)))]
    pub burst: Option<u32>,
}

/// One access rule. A request matches a rule when its method is listed (or no methods
/// are listed) and its normalized path matches one of the globs. The first matching
/// rule decides; a request that matches no rule is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(extend("x-kubernetes-validations" = [
        {"rule": "!has(self.public) || !self.public || ((!has(self.requireScopes) || size(self.requireScopes) == 0) && (!has(self.requireRoles) || size(self.requireRoles) == 0) && !has(self.requireTeamRole))",
         "message": "a public rule cannot also require scopes, roles or a team role"},
        {"rule": "!has(self.requireTeamRole) || self.paths.all(p, p.contains('{team}'))",
         "message": "requireTeamRole needs a {team} capture in every path"}
    ]))
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Name of the rule, used as the `rule` label in metrics and in audit events.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub name: String,
    /// HTTP methods this rule applies to; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    /// Path globs, each starting with `/`. `*` matches one segment, `**` any number of
    /// trailing segments, `{team}` one segment captured as the team name.
    #[cfg_attr(
        feature = "schema",
        schemars(length(min = 1), extend("x-kubernetes-validations" = [
            {"rule": "self.all(p, p.startsWith('/'))", "message": "every path must start with /"}
        ]))
    )]
    pub paths: Vec<String>,
    /// Allow the request without authentication.
    #[serde(default, skip_serializing_if = "is_false")]
    pub public: bool,
    /// Scopes the caller must hold, all of them (`read`, `write`, `admin` or `resource:verb`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(
        feature = "schema",
        schemars(inner(regex(pattern = r"^(read|write|admin|[a-z][a-z0-9-]*:[a-z][a-z0-9-]*)$")))
    )]
    pub require_scopes: Vec<String>,
    /// Global roles the caller must hold, any one of them (e.g. `admin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_roles: Vec<String>,
    /// Minimum role the caller must hold in the team captured by `{team}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_team_role: Option<TeamRole>,
    /// Rate limit applied per identity to requests matching this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Also accept an API key in the `api_key` query parameter on this rule's routes.
    /// Off by default: query strings end up in access logs and browser history.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_api_key_in_query: bool,
    /// Pass the client's `X-API-Key` on to the app on this rule's routes. Off by default:
    /// the sidecar checked the key, and the app has no use for a credential it could leak.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forward_api_key: bool,
}

/// Cross-origin resource sharing; preflights are answered by the sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(extend("x-kubernetes-validations" = [
        {"rule": "!has(self.allowCredentials) || !self.allowCredentials || !has(self.allowedOrigins) || !self.allowedOrigins.exists(o, o == '*')",
         "message": "allowedOrigins '*' cannot be combined with allowCredentials: any site could call the API with the user's cookies"}
    ]))
)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed to call the API (exact match, e.g. `https://app.example.com`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Methods allowed in cross-origin requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_methods: Vec<HttpMethod>,
    /// Request headers allowed in cross-origin requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// Response headers exposed to the browser.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Whether browsers may send credentials (cookies, Authorization).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_seconds: Option<u32>,
}

impl Cors {
    /// Whether the policy lets any origin (`*`) make credentialed calls: refused when a
    /// policy is applied, and never granted by a sidecar.
    pub fn wildcard_with_credentials(&self) -> bool {
        self.allow_credentials && self.allowed_origins.iter().any(|o| o == "*")
    }
}

/// How the app behind the sidecar routes paths, so that the policy matches what the app
/// will serve. By default the sidecar matches paths exactly and refuses (400) a request
/// whose path another routing (ignoring case, ignoring a trailing slash) would send to a
/// different rule: it cannot know which one the app uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PathMatching {
    /// The app routes paths case-insensitively (ASP.NET Core, Express by default):
    /// rules match ASCII letters in any case, so `/API/v1/Admin` meets the rule for
    /// `/api/v1/admin`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub case_insensitive: bool,
    /// The app serves `/a/` as `/a` (Express without `strict`, Spring before 6): rules
    /// match a path with its trailing slash removed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_trailing_slash: bool,
}

impl PathMatching {
    pub fn is_exact(&self) -> bool {
        *self == PathMatching::default()
    }

    /// Both: what an app could do, when policies disagree.
    pub fn union(self, other: PathMatching) -> PathMatching {
        PathMatching {
            case_insensitive: self.case_insensitive || other.case_insensitive,
            ignore_trailing_slash: self.ignore_trailing_slash || other.ignore_trailing_slash,
        }
    }
}

/// One deprecated API version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApiVersion {
    /// Path prefix of the version, e.g. `/api/v0`.
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/")))]
    pub prefix: String,
    /// Date (RFC 3339 date, `YYYY-MM-DD`) the version was deprecated; sent as the `Deprecation` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$")))]
    pub deprecated: Option<String>,
    /// Date (`YYYY-MM-DD`) after which the version is removed; sent as the `Sunset` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^\d{4}-\d{2}-\d{2}$")))]
    pub sunset: Option<String>,
    /// Link to migration notes; sent as a `Link: <…>; rel="deprecation"` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// API versioning of the protected app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApiVersions {
    /// Path prefix of the current version, e.g. `/api/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Older versions still served, with their deprecation and sunset dates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deprecated: Vec<ApiVersion>,
}

/// What the sidecars enforcing a policy send to the audit log besides denials (which are
/// always sent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditSettings {
    /// Share of allowed requests audited, from 0 (none, the default) to 1 (every one);
    /// each allowed request is sampled independently.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "schema", schemars(range(min = 0.0, max = 1.0)))]
    pub allows: f64,
}

impl AuditSettings {
    /// The sample rate, clamped to `0.0..=1.0` (NaN is 0: audit nothing extra).
    pub fn allow_rate(&self) -> f64 {
        if self.allows.is_nan() {
            0.0
        } else {
            self.allows.clamp(0.0, 1.0)
        }
    }
}

fn is_zero(f: &f64) -> bool {
    *f == 0.0
}

/// Selects pods by label, with the semantics of a Kubernetes `LabelSelector`: every
/// `matchLabels` entry and every `matchExpressions` requirement must hold. An empty
/// selector selects every pod in the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels the pod must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements on the pod's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One set-based label requirement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key the requirement applies to.
    pub key: String,
    /// How the label's value relates to `values`.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`; must be empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operator of a [`LabelSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether a pod with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => !value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn team_roles_are_ordered_by_privilege() {
        assert!(TeamRole::Owner > TeamRole::Admin);
        assert!(TeamRole::Admin > TeamRole::Member);
        assert!(TeamRole::Member > TeamRole::Viewer);
        for r in [TeamRole::Viewer, TeamRole::Member, TeamRole::Admin, TeamRole::Owner] {
            assert_eq!(TeamRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(TeamRole::parse("root"), None);
    }

    #[test]
    fn rule_round_trips_in_camel_case() {
        let json = r#"{"name":"teams","methods":["GET"],"paths":["/api/v1/teams/{team}/**"],"requireTeamRole":"member","rateLimit":{"requestsPerSecond":5}}"#;
        let rule: PolicyRule = serde_json::from_str(json).unwrap();
        assert_eq!(rule.require_team_role, Some(TeamRole::Member));
        assert_eq!(rule.methods, vec![HttpMethod::Get]);
        assert!(!rule.public);
        assert_eq!(serde_json::to_string(&rule).unwrap(), json);
    }

    #[test]
    fn label_selector_has_kubernetes_semantics() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "api".to_string()),
            ("tier".to_string(), "web".to_string()),
        ]
        .into();
        assert!(LabelSelector::default().matches(&labels));
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"app":"api"},"matchExpressions":[{"key":"tier","operator":"In","values":["web","edge"]},{"key":"canary","operator":"DoesNotExist"}]}"#,
        )
        .unwrap();
        assert!(sel.matches(&labels));
        let mut other = labels.clone();
        other.insert("canary".into(), "true".into());
        assert!(!sel.matches(&other));
        other.remove("canary");
        other.insert("app".into(), "worker".into());
        assert!(!sel.matches(&other));
        let not_in: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["web"]}]}"#)
                .unwrap();
        assert!(!not_in.matches(&labels));
        assert!(not_in.matches(&BTreeMap::new()));
    }

    #[test]
    fn unknown_method_is_an_error() {
        let err = serde_json::from_str::<PolicyRule>(r#"{"name":"x","methods":["BREW"],"paths":["/"]}"#).unwrap_err();
        assert!(err.to_string().contains("BREW"), "{err}");
    }
}
