//! Authorization: AccessPolicy rules compiled once per snapshot into a matcher, and
//! the decision for an identity. Default deny: a request no rule matches is refused.

use std::collections::HashMap;

use portcullis_wire::glob::{self, Segment};
use portcullis_wire::{HttpMethod, PathMatching, PolicyRule, TeamRole};

use super::path::{NormalizedPath, PathError};

/// An AccessPolicy's rules, compiled once per snapshot into a trie of path segments.
///
/// The first rule (in policy order) whose methods and paths match wins, as if the rules
/// were tried one by one; the trie only makes finding it cost the depth of the path
/// instead of the number of rules. Each trie node is reached by one chain of segments, so
/// a lookup visits every node at most once: no path can make matching blow up.
///
/// A second trie holds the same globs with their literals in lower case: how an app that
/// ignores case reads them (see [`Matcher::route`]).
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    rules: Vec<PolicyRule>,
    root: Node,
    folded: Node,
    /// How the app routes, as its policies say.
    matching: PathMatching,
    /// Some literal has an upper-case letter: the two tries differ even for a path
    /// without one.
    upper_literals: bool,
}

/// Where a glob ends: the rule, and which of its globs (the first matching glob of the
/// first matching rule decides the `{team}` capture).
type Target = (usize, usize);

/// The rule found and where in the path its `{team}` capture is.
type Found = Option<(Target, Option<usize>)>;

#[derive(Debug, Clone, Default)]
struct Node {
    literals: HashMap<String, Node>,
    /// `*`
    any: Option<Box<Node>>,
    /// `{team}`
    team: Option<Box<Node>>,
    /// Globs ending in `**` here: they match whatever follows, nothing included.
    rest: Vec<Target>,
    /// Globs ending exactly here.
    end: Vec<Target>,
}

/// Why rules could not be compiled (the operator refuses such policies; a snapshot
/// that holds one anyway is refused by the sidecar too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadGlob {
    /// Where the rule is in the list compiled.
    pub index: usize,
    pub rule: String,
    pub glob: String,
}

impl Matcher {
    /// Rules for an app that routes paths exactly as given.
    pub fn compile(rules: &[PolicyRule]) -> Result<Matcher, BadGlob> {
        Matcher::compile_with(rules, PathMatching::default())
    }

    /// Rules for an app that routes as `matching` says.
    pub fn compile_with(rules: &[PolicyRule], matching: PathMatching) -> Result<Matcher, BadGlob> {
        let mut root = Node::default();
        let mut folded = Node::default();
        let mut upper_literals = false;
        for (r, rule) in rules.iter().enumerate() {
            for (g, text) in rule.paths.iter().enumerate() {
                let segments = glob::parse(text).map_err(|_| BadGlob {
                    index: r,
                    rule: rule.name.clone(),
                    glob: text.clone(),
                })?;
                root.insert(&segments, (r, g));
                let lower: Vec<Segment> = segments
                    .into_iter()
                    .map(|segment| match segment {
                        Segment::Literal(lit) => {
                            upper_literals |= lit.bytes().any(|b| b.is_ascii_uppercase());
                            Segment::Literal(lit.to_ascii_lowercase())
                        }
                        other => other,
                    })
                    .collect();
                folded.insert(&lower, (r, g));
            }
        }
        Ok(Matcher {
            rules: rules.to_vec(),
            root,
            folded,
            matching,
            upper_literals,
        })
    }

    /// The rule at `index` in the list compiled.
    pub fn rule(&self, index: usize) -> Option<&PolicyRule> {
        self.rules.get(index)
    }

    /// The first rule whose methods and paths match the path exactly as given, with the
    /// captured team.
    pub fn find<'m, 'p>(
        &'m self,
        method: HttpMethod,
        path: &'p NormalizedPath,
    ) -> Option<(&'m PolicyRule, Option<&'p str>)> {
        self.find_indexed(method, path).map(|(_, rule, team)| (rule, team))
    }

    /// [`Matcher::find`], with the rule's index in the list compiled (what per-rule
    /// settings beside the matcher are looked up by).
    pub fn find_indexed<'m, 'p>(
        &'m self,
        method: HttpMethod,
        path: &'p NormalizedPath,
    ) -> Option<(usize, &'m PolicyRule, Option<&'p str>)> {
        self.resolve(self.lookup(&self.root, method, &path.segments), path)
    }

    /// The rule that decides a request, matched as the app will route its path: ignoring
    /// ASCII case if the policy says the app does (`caseInsensitive`), without a trailing
    /// slash if it says so (`ignoreTrailingSlash`). A routing the policy does not declare
    /// is still one the app might do: when a path would meet a different rule under it,
    /// the path is refused rather than guessed. Only a path with an upper-case letter or a
    /// trailing slash (or a policy with upper-case literals) costs more than one lookup.
    pub fn route<'m, 'p>(
        &'m self,
        method: HttpMethod,
        path: &'p NormalizedPath,
    ) -> Result<Option<(usize, &'m PolicyRule, Option<&'p str>)>, PathError> {
        let segments = &path.segments;
        let trailing = segments.len() > 1 && segments.last().is_some_and(String::is_empty);
        let upper = segments.iter().any(|s| s.bytes().any(|b| b.is_ascii_uppercase()));
        if !trailing && !upper && !self.upper_literals {
            // Every reading of this path is the path itself, and both tries agree on it.
            return Ok(self.find_indexed(method, path));
        }
        let declared = self.matching;
        let read = |lower: bool, strip: bool| -> Found {
            let node = if lower { &self.folded } else { &self.root };
            let keep = if strip && trailing {
                segments.len() - 1
            } else {
                segments.len()
            };
            if lower && upper {
                let lowered: Vec<String> = segments[..keep].iter().map(|s| s.to_ascii_lowercase()).collect();
                self.lookup(node, method, &lowered)
            } else {
                self.lookup(node, method, &segments[..keep])
            }
        };
        let chosen = read(declared.case_insensitive, declared.ignore_trailing_slash);
        for lower in [declared.case_insensitive, true] {
            for strip in [declared.ignore_trailing_slash, true] {
                if read(lower, strip).map(|((rule, _), _)| rule) != chosen.map(|((rule, _), _)| rule) {
                    return Err(PathError::AmbiguousRoute);
                }
            }
        }
        Ok(self.resolve(chosen, path))
    }

    fn lookup(&self, node: &Node, method: HttpMethod, segments: &[String]) -> Found {
        let mut best = None;
        let allows = |(r, _): Target| {
            self.rules
                .get(r)
                .is_some_and(|rule| rule.methods.is_empty() || rule.methods.contains(&method))
        };
        node.walk(segments, 0, None, &allows, &mut best);
        best
    }

    fn resolve<'m, 'p>(
        &'m self,
        found: Found,
        path: &'p NormalizedPath,
    ) -> Option<(usize, &'m PolicyRule, Option<&'p str>)> {
        let ((r, _), team) = found?;
        let team = team.and_then(|i| path.segments.get(i)).map(String::as_str);
        self.rules.get(r).map(|rule| (r, rule, team))
    }
}

impl Node {
    fn insert(&mut self, segments: &[Segment], target: Target) {
        let Some((first, rest)) = segments.split_first() else {
            self.end.push(target);
            return;
        };
        let child = match first {
            Segment::Rest => {
                self.rest.push(target);
                return;
            }
            Segment::Literal(lit) => self.literals.entry(lit.clone()).or_default(),
            Segment::Any => self.any.get_or_insert_default().as_mut(),
            Segment::Team => self.team.get_or_insert_default().as_mut(),
        };
        child.insert(rest, target);
    }

    /// Walks `path` (the segments from `depth` on); `team` is where the `{team}` capture
    /// so far is.
    fn walk(
        &self,
        path: &[String],
        depth: usize,
        team: Option<usize>,
        allows: &impl Fn(Target) -> bool,
        best: &mut Found,
    ) {
        let mut offer = |targets: &[Target]| {
            // Targets are in insertion order, i.e. sorted: the first allowed one is this node's best.
            if let Some(&t) = targets.iter().find(|&&t| allows(t))
                && best.is_none_or(|(b, _)| t < b)
            {
                *best = Some((t, team));
            }
        };
        offer(&self.rest);
        let Some((segment, remaining)) = path.split_first() else {
            offer(&self.end);
            return;
        };
        if let Some(child) = self.literals.get(segment.as_str()) {
            child.walk(remaining, depth + 1, team, allows, best);
        }
        if segment.is_empty() {
            return;
        }
        if let Some(child) = &self.any {
            child.walk(remaining, depth + 1, team, allows, best);
        }
        if let Some(child) = &self.team {
            child.walk(remaining, depth + 1, Some(depth), allows, best);
        }
    }
}

/// Who is asking, as far as authorization cares (borrowed from the principal: deciding
/// copies nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Identity<'a> {
    pub roles: &'a [String],
    pub scopes: &'a [String],
    pub teams: &'a [(String, TeamRole)],
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

/// Decides a request, given the rule [`Matcher::find`] found for it (with the captured
/// team): `identity` is `None` for an anonymous caller.
pub fn decide(found: Option<(&PolicyRule, Option<&str>)>, identity: Option<&Identity>) -> Decision {
    let Some((rule, team)) = found else {
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
    use crate::policy::path::normalize;

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
        decide(matcher.find(method, &p), who)
    }

    fn leak<T>(items: Vec<T>) -> &'static [T] {
        Box::leak(items.into_boxed_slice())
    }

    fn viewer() -> Identity<'static> {
        Identity {
            roles: leak(vec!["viewer".into()]),
            scopes: leak(vec!["read".into()]),
            teams: leak(vec![("platform".into(), TeamRole::Member)]),
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
            roles: leak(vec!["admin".into()]),
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
            teams: leak(vec![("platform".into(), TeamRole::Viewer)]),
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

    /// The rules tried one by one, the definition the trie must agree with.
    fn linear<'r, 'p>(
        rules: &'r [PolicyRule],
        method: HttpMethod,
        path: &'p [String],
    ) -> Option<(&'r str, Option<&'p str>)> {
        rules.iter().find_map(|rule| {
            if !rule.methods.is_empty() && !rule.methods.contains(&method) {
                return None;
            }
            rule.paths.iter().find_map(|g| {
                let segments = glob::parse(g).unwrap();
                let mut team = None;
                for (i, segment) in segments.iter().enumerate() {
                    match segment {
                        Segment::Rest => return Some((rule.name.as_str(), team)),
                        Segment::Literal(lit) => {
                            if path.get(i) != Some(lit) {
                                return None;
                            }
                        }
                        Segment::Any => {
                            path.get(i).filter(|p| !p.is_empty())?;
                        }
                        Segment::Team => team = Some(path.get(i).filter(|p| !p.is_empty())?.as_str()),
                    }
                }
                (path.len() == segments.len()).then_some((rule.name.as_str(), team))
            })
        })
    }

    #[test]
    fn the_trie_agrees_with_trying_rules_in_order() {
        // Every glob of up to three segments over a small alphabet, so that rules overlap
        // in every way (prefixes, wildcards against literals, `**` against exact ends).
        let parts = ["a", "b", "*", "{team}", "**"];
        let mut globs = vec!["/".to_string()];
        for x in parts {
            globs.push(format!("/{x}"));
            for y in parts {
                globs.push(format!("/{x}/{y}"));
                for z in ["a", "*", "**"] {
                    globs.push(format!("/{x}/{y}/{z}"));
                }
            }
        }
        globs.retain(|g| glob::parse(g).is_ok());
        let methods = [
            vec![],
            vec![HttpMethod::Get],
            vec![HttpMethod::Post, HttpMethod::Delete],
        ];
        // Rules of two globs each, in an order that is not the order of specificity.
        let rules: Vec<PolicyRule> = globs
            .chunks(2)
            .rev()
            .enumerate()
            .map(|(i, pair)| {
                serde_json::from_value(serde_json::json!({
                    "name": format!("r{i}"),
                    "methods": methods[i % 3],
                    "paths": pair,
                }))
                .unwrap()
            })
            .collect();
        let matcher = Matcher::compile(&rules).unwrap();
        let words = ["a", "b", "c"];
        let mut paths = vec!["/".to_string()];
        for x in words {
            paths.push(format!("/{x}"));
            paths.push(format!("/{x}/"));
            for y in words {
                paths.push(format!("/{x}/{y}"));
                for z in words {
                    paths.push(format!("/{x}/{y}/{z}"));
                    paths.push(format!("/{x}/{y}/{z}/a"));
                }
            }
        }
        let mut matched = 0;
        for path in &paths {
            let (p, _) = normalize(path).unwrap();
            for method in [HttpMethod::Get, HttpMethod::Post, HttpMethod::Put] {
                let fast = matcher.find(method, &p).map(|(r, team)| (r.name.as_str(), team));
                assert_eq!(fast, linear(&rules, method, &p.segments), "{method:?} {path}");
                matched += usize::from(fast.is_some());
            }
        }
        assert!(matched > paths.len(), "the table exercises matches, not just misses");
    }

    #[test]
    fn bad_globs_are_refused() {
        let bad: Vec<PolicyRule> = serde_json::from_str(r#"[{"name": "r", "paths": ["/a/**/b"]}]"#).unwrap();
        assert_eq!(
            Matcher::compile(&bad).unwrap_err(),
            BadGlob {
                index: 0,
                rule: "r".into(),
                glob: "/a/**/b".into()
            }
        );
    }
}
