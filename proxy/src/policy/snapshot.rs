//! The snapshot in force: compiled once per revision and swapped atomically, so a
//! request reads one consistent view without taking a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwapOption;
use portcullis_wire::{ApiVersion, Cors, JwtIssuer, PathMatching, PolicyRule, Snapshot};

use super::authz::Matcher;
use super::identity::{Directory, Keys, Users};
use super::jwt::Verifier;
use super::received::Received;

/// The pod the sidecar guards: which AccessPolicies apply to it.
#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// One snapshot, ready to answer requests.
pub struct Compiled {
    pub revision: i64,
    /// The control plane database's epoch the revision counts in (empty from a file).
    pub epoch: String,
    pub directory: Directory,
    pub matcher: Matcher,
    pub cors: Option<Cors>,
    /// Deprecated API versions, longest prefix first.
    pub deprecated: Vec<ApiVersion>,
    pub jwt: Arc<Verifier>,
    /// Names of the AccessPolicies in force, for logs.
    pub policies: Vec<String>,
    /// Share of allowed requests to audit, by rule index (the matcher's); empty when no
    /// policy of this pod asks for any, so that the common case costs one length check.
    pub audit_allows: Vec<f32>,
    /// Which of `policies` each rule (by the matcher's index) comes from.
    rule_policies: Vec<usize>,
    jwt_issuers: Vec<JwtIssuer>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("AccessPolicy {policy}: rule {rule}: bad path glob {glob:?}")]
    BadGlob { policy: String, rule: String, glob: String },
    #[error("snapshot revision {new} is not newer than revision {current} in force (same epoch)")]
    Stale { new: i64, current: i64 },
}

impl Compiled {
    /// Compiles `snapshot` for `pod`. The JWT verifier (and its cache of verified
    /// tokens) is carried over from `previous` only when the issuers and keys are the
    /// same, so a cached verification can never outlive the keys it was made with.
    /// Returns problems that did not prevent compiling (unusable JWT keys) beside it.
    pub fn build(
        snapshot: &Snapshot,
        pod: &Pod,
        previous: Option<&Compiled>,
        jwt_cache: usize,
    ) -> Result<(Compiled, Vec<String>), SnapshotError> {
        Compiled::build_with_parts(
            snapshot,
            Users::from_entries(&snapshot.users),
            Keys::from_entries(&snapshot.api_keys),
            pod,
            previous,
            jwt_cache,
        )
    }

    /// [`Compiled::build`] with the users and API keys already in their compact forms (a
    /// snapshot parsed as it streamed in: `snapshot.users` and `.api_keys` are not looked at).
    pub fn build_with_parts(
        snapshot: &Snapshot,
        users: Users,
        keys: Keys,
        pod: &Pod,
        previous: Option<&Compiled>,
        jwt_cache: usize,
    ) -> Result<(Compiled, Vec<String>), SnapshotError> {
        // Policies of this pod, in name order; their rules are tried in that order.
        let mut policies: Vec<_> = snapshot
            .policies
            .iter()
            .filter(|p| p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels))
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        // Compiled once, all policies' rules together; which policy a rule came from is
        // only looked up to name a bad glob.
        let rules: Vec<PolicyRule> = policies.iter().flat_map(|p| p.rules.iter().cloned()).collect();
        // One app behind the sidecar: if any of its policies says how it routes, it does.
        let matching = policies
            .iter()
            .fold(PathMatching::default(), |all, p| all.union(p.path_matching));
        let matcher = Matcher::compile_with(&rules, matching).map_err(|bad| {
            let mut first = 0;
            let policy = policies
                .iter()
                .find(|p| {
                    first += p.rules.len();
                    bad.index < first
                })
                .map_or_else(String::new, |p| p.name.clone());
            SnapshotError::BadGlob {
                policy,
                rule: bad.rule,
                glob: bad.glob,
            }
        })?;
        let mut audit_allows: Vec<f32> = policies
            .iter()
            .flat_map(|p| {
                let rate = p.audit.as_ref().map_or(0.0, |a| a.allow_rate() as f32);
                std::iter::repeat_n(rate, p.rules.len())
            })
            .collect();
        if audit_allows.iter().all(|rate| *rate <= 0.0) {
            audit_allows = Vec::new();
        }
        let cors = policies.iter().find_map(|p| p.cors.clone());
        let mut deprecated: Vec<ApiVersion> = policies
            .iter()
            .filter_map(|p| p.api_versions.as_ref())
            .flat_map(|v| v.deprecated.iter().cloned())
            .collect();
        deprecated.sort_by_key(|v| std::cmp::Reverse(v.prefix.len()));

        let mut problems = Vec::new();
        let jwt = match previous {
            Some(prev) if prev.jwt_issuers == snapshot.jwt_issuers => prev.jwt.clone(),
            _ => {
                let (verifier, issues) = Verifier::new(&snapshot.jwt_issuers, jwt_cache);
                problems.extend(issues);
                Arc::new(verifier)
            }
        };
        let compiled = Compiled {
            revision: snapshot.revision,
            epoch: snapshot.epoch.clone(),
            directory: Directory::with_parts(snapshot, users, keys),
            matcher,
            cors,
            deprecated,
            jwt,
            policies: policies.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
            audit_allows,
            rule_policies: policies
                .iter()
                .enumerate()
                .flat_map(|(i, p)| std::iter::repeat_n(i, p.rules.len()))
                .collect(),
            jwt_issuers: snapshot.jwt_issuers.clone(),
        };
        Ok((compiled, problems))
    }

    /// `policy/rule` of the rule at `index` of the matcher, as audit records name it.
    pub fn rule_label(&self, index: usize) -> String {
        let policy = self
            .rule_policies
            .get(index)
            .and_then(|p| self.policies.get(*p))
            .map_or("-", String::as_str);
        let rule = self.matcher.rule(index).map_or("-", |r| r.name.as_str());
        format!("{policy}/{rule}")
    }

    /// The deprecated API version a normalized path falls under.
    pub fn deprecated_version(&self, path: &str) -> Option<&ApiVersion> {
        self.deprecated.iter().find(|v| {
            let prefix = v.prefix.trim_end_matches('/');
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// The snapshot in force, shared by every connection.
#[derive(Default)]
pub struct Current {
    compiled: ArcSwapOption<Compiled>,
    /// Unix seconds of the last time the source confirmed the snapshot (new or unchanged).
    confirmed_at: AtomicI64,
}

impl Current {
    /// What requests see; `None` until a first snapshot arrives (requests then get 503).
    pub fn load(&self) -> Option<Arc<Compiled>> {
        self.compiled.load_full()
    }

    /// Compiles and swaps in `snapshot`. Within one epoch a snapshot older than the one
    /// in force is refused (a replayed or lagging answer must not roll revocations back);
    /// a snapshot of another epoch is installed whatever its revision, so a control plane
    /// whose database was restored or replaced can always reset the sidecar (only a peer
    /// the sidecar verified can send one). One that does not compile leaves the last good
    /// one in force.
    pub fn install(&self, snapshot: &Snapshot, pod: &Pod, jwt_cache: usize) -> Result<Vec<String>, SnapshotError> {
        self.install_received(Received::from_snapshot(snapshot.clone()), pod, jwt_cache)
    }

    /// [`Current::install`] of a snapshot as received (its keys compact already). The
    /// parts of it that compiling copies (users, policies) are dropped as soon as the
    /// compiled form stands, before it is swapped in.
    pub fn install_received(
        &self,
        received: Received,
        pod: &Pod,
        jwt_cache: usize,
    ) -> Result<Vec<String>, SnapshotError> {
        let Received { snapshot, users, keys } = received;
        let previous = self.load();
        if let Some(prev) = &previous
            && prev.epoch == snapshot.epoch
            && (snapshot.revision < prev.revision
                // The control plane answers a revision only when it changed; a file (no
                // epoch) may be rewritten in place at the same one.
                || (snapshot.revision == prev.revision && !snapshot.epoch.is_empty()))
        {
            return Err(SnapshotError::Stale {
                new: snapshot.revision,
                current: prev.revision,
            });
        }
        let (compiled, problems) =
            Compiled::build_with_parts(&snapshot, users, keys, pod, previous.as_deref(), jwt_cache)?;
        drop(snapshot);
        drop(previous);
        self.compiled.store(Some(Arc::new(compiled)));
        self.confirm();
        Ok(problems)
    }

    /// Records that the source still says the snapshot in force is current.
    pub fn confirm(&self) {
        self.confirmed_at.store(portcullis_wire::unix_now(), Ordering::Relaxed);
    }

    /// Seconds since the snapshot in force was last confirmed (fail-static staleness).
    pub fn age_seconds(&self) -> Option<i64> {
        self.load()?;
        Some(portcullis_wire::unix_now() - self.confirmed_at.load(Ordering::Relaxed))
    }

    /// Whether the source has not confirmed the snapshot for more than `max_seconds` at
    /// `now` (Unix seconds): past a configured maximum staleness, requests are refused.
    pub fn older_than(&self, max_seconds: i64, now: i64) -> bool {
        now - self.confirmed_at.load(Ordering::Relaxed) > max_seconds
    }
}

#[cfg(test)]
mod tests {
    use portcullis_wire::{ApiVersions, JwtKey, LabelSelector, PolicyEntry};

    use super::*;

    fn policy(name: &str, selector: &str, rules: &str) -> PolicyEntry {
        PolicyEntry {
            namespace: "shop".into(),
            name: name.into(),
            pod_selector: serde_json::from_str::<LabelSelector>(selector).unwrap(),
            rules: serde_json::from_str(rules).unwrap(),
            cors: None,
            api_versions: None,
            audit: None,
            path_matching: Default::default(),
        }
    }

    fn pod() -> Pod {
        Pod {
            namespace: "shop".into(),
            labels: [("app".to_string(), "api".to_string())].into(),
        }
    }

    #[test]
    fn only_this_pods_policies_apply_in_name_order() {
        let snapshot = Snapshot {
            revision: 3,
            policies: vec![
                policy("b-second", "{}", r#"[{"name":"b","paths":["/x"],"public":true}]"#),
                policy(
                    "a-first",
                    r#"{"matchLabels":{"app":"api"}}"#,
                    r#"[{"name":"a","paths":["/x"]}]"#,
                ),
                policy(
                    "other-app",
                    r#"{"matchLabels":{"app":"web"}}"#,
                    r#"[{"name":"w","paths":["/**"]}]"#,
                ),
                PolicyEntry {
                    namespace: "elsewhere".into(),
                    ..policy("z", "{}", r#"[{"name":"z","paths":["/**"],"public":true}]"#)
                },
            ],
            ..Default::default()
        };
        let (compiled, _) = Compiled::build(&snapshot, &pod(), None, 16).unwrap();
        assert_eq!(compiled.policies, ["shop/a-first", "shop/b-second"]);
        let (path, _) = crate::policy::path::normalize("/x").unwrap();
        let (rule, _) = compiled.matcher.find(portcullis_wire::HttpMethod::Get, &path).unwrap();
        assert_eq!(rule.name, "a");
        let (anything, _) = crate::policy::path::normalize("/y").unwrap();
        assert!(
            compiled
                .matcher
                .find(portcullis_wire::HttpMethod::Get, &anything)
                .is_none()
        );
    }

    #[test]
    fn a_bad_or_older_snapshot_leaves_the_last_good_one_in_force() {
        let current = Current::default();
        assert!(current.load().is_none() && current.age_seconds().is_none());
        let good = Snapshot {
            revision: 5,
            policies: vec![policy("p", "{}", r#"[{"name":"a","paths":["/x"]}]"#)],
            ..Default::default()
        };
        current.install(&good, &pod(), 16).unwrap();
        let bad = Snapshot {
            revision: 6,
            policies: vec![
                policy(
                    "p",
                    "{}",
                    r#"[{"name":"a","paths":["/x"]},{"name":"b","paths":["/y"]}]"#,
                ),
                policy(
                    "q",
                    "{}",
                    r#"[{"name":"c","paths":["/z"]},{"name":"d","paths":["/x/**/y"]}]"#,
                ),
            ],
            ..Default::default()
        };
        match current.install(&bad, &pod(), 16) {
            Err(SnapshotError::BadGlob { policy, rule, glob }) => {
                assert_eq!((policy.as_str(), rule.as_str(), glob.as_str()), ("q", "d", "/x/**/y"));
            }
            other => panic!("{:?}", other.err()),
        }
        let older = Snapshot {
            revision: 4,
            ..good.clone()
        };
        assert!(matches!(
            current.install(&older, &pod(), 16),
            Err(SnapshotError::Stale { .. })
        ));
        assert_eq!(current.load().unwrap().revision, 5);
    }

    #[test]
    fn another_epoch_resets_the_revision_and_the_same_epoch_only_moves_forward() {
        let current = Current::default();
        let at = |epoch: &str, revision| Snapshot {
            revision,
            epoch: epoch.into(),
            ..Default::default()
        };
        current.install(&at("e1", 900), &pod(), 16).unwrap();
        assert!(matches!(
            current.install(&at("e1", 899), &pod(), 16),
            Err(SnapshotError::Stale { new: 899, current: 900 })
        ));
        // A restored database: a new epoch, counting from a lower revision.
        current.install(&at("e2", 3), &pod(), 16).unwrap();
        let now = current.load().unwrap();
        assert_eq!((now.epoch.as_str(), now.revision), ("e2", 3));
        current.install(&at("e2", 4), &pod(), 16).unwrap();
        assert_eq!(current.load().unwrap().revision, 4);
    }

    #[test]
    fn allows_are_audited_at_the_rate_of_the_rules_policy() {
        let mut audited = policy(
            "a-audited",
            "{}",
            r#"[{"name":"a","paths":["/a"]},{"name":"b","paths":["/b"]}]"#,
        );
        audited.audit = Some(portcullis_wire::AuditSettings { allows: 0.25 });
        let quiet = policy("b-quiet", "{}", r#"[{"name":"c","paths":["/c"]}]"#);
        let snapshot = Snapshot {
            policies: vec![quiet.clone(), audited],
            ..Default::default()
        };
        let (compiled, _) = Compiled::build(&snapshot, &pod(), None, 16).unwrap();
        assert_eq!(compiled.audit_allows, [0.25, 0.25, 0.0]);
        let snapshot = Snapshot {
            policies: vec![quiet],
            ..Default::default()
        };
        let (compiled, _) = Compiled::build(&snapshot, &pod(), None, 16).unwrap();
        assert!(compiled.audit_allows.is_empty(), "nothing asked: nothing to look up");
    }

    #[test]
    fn the_jwt_verifier_survives_only_an_unchanged_key_set() {
        let issuer = |secret: &str| JwtIssuer {
            issuer: "iss".into(),
            audiences: vec!["app".into()],
            claims: Default::default(),
            claim_names: Default::default(),
            leeway_seconds: 30,
            keys: vec![JwtKey {
                alg: "HS256".into(),
                k: Some(secret.into()),
                ..Default::default()
            }],
        };
        let current = Current::default();
        let snap = |rev, secret| Snapshot {
            revision: rev,
            jwt_issuers: vec![issuer(secret)],
            ..Default::default()
        };
        current.install(&snap(1, "c2VjcmV0LW9uZQ"), &pod(), 16).unwrap();
        let first = current.load().unwrap().jwt.clone();
        current.install(&snap(2, "c2VjcmV0LW9uZQ"), &pod(), 16).unwrap();
        assert!(
            Arc::ptr_eq(&first, &current.load().unwrap().jwt),
            "same keys: cache kept"
        );
        current.install(&snap(3, "c2VjcmV0LXR3bw"), &pod(), 16).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &current.load().unwrap().jwt),
            "new keys: new verifier, empty cache"
        );
    }

    #[test]
    fn deprecated_versions_match_whole_segments() {
        let mut p = policy("p", "{}", r#"[{"name":"a","paths":["/**"],"public":true}]"#);
        p.api_versions = Some(ApiVersions {
            current: Some("/api/v2".into()),
            deprecated: vec![ApiVersion {
                prefix: "/api/v1".into(),
                deprecated: Some("2026-01-01".into()),
                sunset: Some("2027-01-01".into()),
                link: None,
            }],
        });
        let snapshot = Snapshot {
            policies: vec![p],
            ..Default::default()
        };
        let (compiled, _) = Compiled::build(&snapshot, &pod(), None, 16).unwrap();
        assert!(compiled.deprecated_version("/api/v1/items").is_some());
        assert!(compiled.deprecated_version("/api/v1").is_some());
        assert!(compiled.deprecated_version("/api/v10/items").is_none());
        assert!(compiled.deprecated_version("/api/v2/items").is_none());
    }
}
