//! Authorization: AccessPolicy rules compiled once per snapshot into a matcher, and
//! the decision for an identity. Default deny: a request no rule matches is refused.

use portcullis_wire::glob::{self, Segment};
use portcullis_wire::{HttpMethod, PolicyRule, TeamRole};

use crate::path::NormalizedPath;

#[derive(Debug, Clone)]
struct Glob {
    segments: Vec<Segment>,
}

impl Glob {
    /// Matches `path`, returning the captured team (if the glob has `{team}`).
    fn matches<'p>(&self, path: &'p [String]) -> Option<Option<&'p str>> {
        let mut team = None;
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Rest => return Some(team),
                Segment::Literal(lit) => {
                    if path.get(i).is_none_or(|p| p != lit) {
                        return None;
                    }
                }
                Segment::Any => {
                    path.get(i).filter(|p| !p.is_empty())?;
                }
                Segment::Team => {
                    team = Some(path.get(i).filter(|p| !p.is_empty())?.as_str());
                }
            }
        }
        (path.len() == self.segments.len()).then_some(team)
    }
}

/// A rule, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub rule: PolicyRule,
    globs: Vec<Glob>,
}

/// An AccessPolicy's rules, compiled once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    rules: Vec<CompiledRule>,
}

/// Why rules could not be compiled (the operator refuses such policies; a snapshot
/// that holds one anyway is refused by the sidecar too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadGlob {
    pub rule: String,
    pub glob: String,
}

impl Matcher {
    pub fn compile(rules: &[PolicyRule]) -> Result<Matcher, BadGlob> {
        let rules = rules
            .iter()
            .map(|rule| {
                let globs = rule
                    .paths
                    .iter()
                    .map(|g| {
                        glob::parse(g).map(|segments| Glob { segments }).map_err(|_| BadGlob {
                            rule: rule.name.clone(),
                            glob: g.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(CompiledRule {
                    rule: rule.clone(),
                    globs,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Matcher { rules })
    }

    /// The first rule whose methods and paths match, with the captured team.
    pub fn find<'m, 'p>(
        &'m self,
        method: HttpMethod,
        path: &'p NormalizedPath,
    ) -> Option<(&'m PolicyRule, Option<&'p str>)> {
        self.rules.iter().find_map(|compiled| {
            let rule = &compiled.rule;
            if !rule.methods.is_empty() && !rule.methods.contains(&method) {
                return None;
            }
            compiled
                .globs
                .iter()
                .find_map(|g| g.matches(&path.segments))
                .map(|team| (rule, team))
        })
    }
}

/// Who is asking, as far as authorization cares.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub teams: Vec<(String, TeamRole)>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: String,
    },
    /// 401: the rule needs an identity and there is none.
    Unauthenticated {
        rule: Option<String>,
    },
    /// 403, with a reason safe to show.
    Forbidden {
        rule: Option<String>,
        reason: String,
    },
}

/// Decides a request: `identity` is `None` for an anonymous caller.
pub fn decide(matcher: &Matcher, method: HttpMethod, path: &NormalizedPath, identity: Option<&Identity>) -> Decision {
    let Some((rule, team)) = matcher.find(method, path) else {
        return match identity {
            None => Decision::Unauthenticated { rule: None },
            Some(_) => Decision::Forbidden {
                rule: None,
                reason: "no rule allows this request".into(),
            },
        };
    };
    let name = Some(rule.name.clone());
    if rule.public {
        return Decision::Allow {
            rule: rule.name.clone(),
        };
    }
    let Some(who) = identity else {
        return Decision::Unauthenticated { rule: name };
    };
    if let Some(missing) = rule.require_scopes.iter().find(|s| !who.scopes.contains(s)) {
        return Decision::Forbidden {
            rule: name,
            reason: format!("missing scope {missing}"),
        };
    }
    if !rule.require_roles.is_empty() && !rule.require_roles.iter().any(|r| who.roles.contains(r)) {
        return Decision::Forbidden {
            rule: name,
            reason: format!("requires role {}", rule.require_roles.join(" or ")),
        };
    }
    if let Some(required) = rule.require_team_role {
        let held = team
            .and_then(|t| who.teams.iter().find(|(name, _)| name == t))
            .map(|(_, role)| *role);
        if held.is_none_or(|role| role < required) {
            return Decision::Forbidden {
                rule: name,
                reason: format!("requires team role {} in {}", required.as_str(), team.unwrap_or("?")),
            };
        }
    }
    Decision::Allow {
        rule: rule.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::normalize;

    fn rules() -> Vec<PolicyRule> {
        serde_json::from_str(
            r#"[
            {"name": "healthz", "methods": ["GET"], "paths": ["/healthz"], "public": true},
            {"name": "admin", "paths": ["/api/v1/admin/**"], "requireRoles": ["admin"]},
            {"name": "teams", "paths": ["/api/v1/teams/{team}/**"], "requireTeamRole": "member"},
            {"name": "read", "methods": ["GET", "HEAD"], "paths": ["/api/v1/**"], "requireScopes": ["read"]},
            {"name": "write", "methods": ["POST", "PUT", "PATCH", "DELETE"], "paths": ["/api/v1/**"], "requireScopes": ["write"]},
            {"name": "one", "paths": ["/x/*/y"], "requireScopes": ["read"]}
        ]"#,
        )
        .unwrap()
    }

    fn decide_for(method: HttpMethod, path: &str, who: Option<&Identity>) -> Decision {
        let matcher = Matcher::compile(&rules()).unwrap();
        let (p, _) = normalize(path).unwrap();
        decide(&matcher, method, &p, who)
    }

    fn viewer() -> Identity {
        Identity {
            roles: vec!["viewer".into()],
            scopes: vec!["read".into()],
            teams: vec![("platform".into(), TeamRole::Member)],
        }
    }

    #[test]
    fn public_routes_need_nobody_and_unmatched_routes_are_denied() {
        assert_eq!(
            decide_for(HttpMethod::Get, "/healthz", None),
            Decision::Allow { rule: "healthz".into() }
        );
        assert_eq!(
            decide_for(HttpMethod::Post, "/healthz", None),
            Decision::Unauthenticated { rule: None }
        );
        assert!(matches!(
            decide_for(HttpMethod::Get, "/elsewhere", Some(&viewer())),
            Decision::Forbidden { rule: None, .. }
        ));
    }

    #[test]
    fn scopes_roles_and_team_roles_decide() {
        let v = viewer();
        assert_eq!(
            decide_for(HttpMethod::Get, "/api/v1/items", Some(&v)),
            Decision::Allow { rule: "read".into() }
        );
        assert_eq!(
            decide_for(HttpMethod::Get, "/api/v1/items", None),
            Decision::Unauthenticated {
                rule: Some("read".into())
            }
        );
        assert!(
            matches!(decide_for(HttpMethod::Post, "/api/v1/items", Some(&v)), Decision::Forbidden { reason, .. } if reason == "missing scope write")
        );
        assert!(
            matches!(decide_for(HttpMethod::Get, "/api/v1/admin/users", Some(&v)), Decision::Forbidden { rule: Some(r), .. } if r == "admin")
        );
        let admin = Identity {
            roles: vec!["admin".into()],
            ..Identity::default()
        };
        assert_eq!(
            decide_for(HttpMethod::Delete, "/api/v1/admin/users/1", Some(&admin)),
            Decision::Allow { rule: "admin".into() }
        );
        assert_eq!(
            decide_for(HttpMethod::Get, "/api/v1/teams/platform/svc", Some(&v)),
            Decision::Allow { rule: "teams".into() }
        );
        assert!(
            matches!(decide_for(HttpMethod::Get, "/api/v1/teams/payments/svc", Some(&v)), Decision::Forbidden { rule: Some(r), .. } if r == "teams")
        );
        let team_viewer = Identity {
            teams: vec![("platform".into(), TeamRole::Viewer)],
            ..viewer()
        };
        assert!(matches!(
            decide_for(HttpMethod::Get, "/api/v1/teams/platform/svc", Some(&team_viewer)),
            Decision::Forbidden { .. }
        ));
    }

    #[test]
    fn globs_match_whole_segments() {
        let v = viewer();
        assert_eq!(
            decide_for(HttpMethod::Get, "/x/anything/y", Some(&v)),
            Decision::Allow { rule: "one".into() }
        );
        for path in ["/x/y", "/x/a/b/y", "/xx/a/y"] {
            assert!(
                matches!(
                    decide_for(HttpMethod::Get, path, Some(&v)),
                    Decision::Forbidden { rule: None, .. }
                ),
                "{path}"
            );
        }
        // `**` also matches the prefix itself.
        assert_eq!(
            decide_for(HttpMethod::Get, "/api/v1", Some(&v)),
            Decision::Allow { rule: "read".into() }
        );
        // Decoding happens before matching: `%61dmin` is `admin`.
        assert!(
            matches!(decide_for(HttpMethod::Get, "/api/v1/%61dmin/users", Some(&v)), Decision::Forbidden { rule: Some(r), .. } if r == "admin")
        );
    }

    #[test]
    fn bad_globs_are_refused() {
        let bad: Vec<PolicyRule> = serde_json::from_str(r#"[{"name": "r", "paths": ["/a/**/b"]}]"#).unwrap();
        assert_eq!(
            Matcher::compile(&bad).unwrap_err(),
            BadGlob {
                rule: "r".into(),
                glob: "/a/**/b".into()
            }
        );
    }
}
