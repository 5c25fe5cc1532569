//! Who a request is: the snapshot indexed for authentication. Built once per snapshot,
//! so the per-request work is a hash and a map lookup.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use hyper::header::{HeaderName, HeaderValue};

use portcullis_wire::api_key;
use portcullis_wire::{ApiKeyEntry, OwnerKind, RateLimit, Snapshot, TeamRole};

use super::authz::Identity;
use super::certs::CertIdentity;
use super::headers::{X_AUTH_EMAIL, X_AUTH_ROLES, X_AUTH_SCOPES, X_AUTH_SUBJECT, X_AUTH_TEAMS, X_AUTH_USER};

/// Longest credential value looked at; longer ones are refused unread.
const MAX_KEY_LEN: usize = 256;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Typed and unambiguous: `user:<name>`, `source:<namespace>/<name>`, or
    /// `<issuer>#<sub>` for an external token's subject. Sent as `X-Auth-Subject`; also
    /// the rate-limit key.
    pub subject: String,
    /// The user's name, or the source's.
    pub name: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub teams: Vec<(String, TeamRole)>,
    /// Display prefix of the API key used, safe to log.
    pub key_prefix: Option<String>,
    /// A source's own rate limit, applied on top of the rule's.
    pub rate_limit: Option<RateLimit>,
    /// The identity headers, built on first use: a principal from the snapshot or the
    /// token cache is shared by every request of its caller.
    pub headers: HeaderCache,
}

impl Principal {
    /// A principal with these names and nothing else (no roles, scopes, teams or limits).
    pub fn named(subject: String, name: String, email: Option<String>) -> Principal {
        Principal {
            subject,
            name,
            email,
            roles: Vec::new(),
            scopes: Vec::new(),
            teams: Vec::new(),
            key_prefix: None,
            rate_limit: None,
            headers: HeaderCache::default(),
        }
    }

    pub fn identity(&self) -> Identity<'_> {
        Identity {
            roles: &self.roles,
            scopes: &self.scopes,
            teams: &self.teams,
        }
    }

    /// `X-Auth-User`, `-Subject`, `-Email`, `-Roles`, `-Scopes` and `-Teams` as the app
    /// receives them.
    /// A value that cannot be a header (a control byte in a name) is left out.
    pub fn identity_headers(&self) -> &[(HeaderName, HeaderValue)] {
        self.headers.0.get_or_init(|| {
            let mut teams = String::new();
            for (team, role) in &self.teams {
                if !teams.is_empty() {
                    teams.push(',');
                }
                teams.push_str(team);
                teams.push(':');
                teams.push_str(role.as_str());
            }
            let values = [
                (X_AUTH_USER, Some(self.name.clone())),
                (X_AUTH_SUBJECT, Some(self.subject.clone())),
                (X_AUTH_EMAIL, self.email.clone()),
                (X_AUTH_ROLES, Some(self.roles.join(","))),
                (X_AUTH_SCOPES, Some(self.scopes.join(","))),
                (X_AUTH_TEAMS, Some(teams)),
            ];
            values
                .into_iter()
                .filter_map(|(name, value)| Some((name, HeaderValue::try_from(value?).ok()?)))
                .collect()
        })
    }
}

/// A principal's identity headers once built. A clone starts empty, because a cloned
/// principal is about to be changed (an API key narrows its owner's scopes); equality
/// ignores it, because it only restates the other fields.
#[derive(Default)]
pub struct HeaderCache(OnceLock<Vec<(HeaderName, HeaderValue)>>);

impl Clone for HeaderCache {
    fn clone(&self) -> HeaderCache {
        HeaderCache::default()
    }
}

impl PartialEq for HeaderCache {
    fn eq(&self, _: &HeaderCache) -> bool {
        true
    }
}

impl Eq for HeaderCache {}

impl std::fmt::Debug for HeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderCache")
    }
}

/// Why a credential was refused (all are 401s; the reason is for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Expired,
    Revoked,
    OwnerDisabled,
    OwnerUnknown,
    /// A certificate that names both a user and a source, or several users.
    Ambiguous,
    /// An API key of another namespace, which its owner did not allow here.
    WrongNamespace,
}

impl Refusal {
    /// Bounded label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::OwnerDisabled => "owner_disabled",
            Refusal::OwnerUnknown => "owner_unknown",
            Refusal::Ambiguous => "ambiguous",
            Refusal::WrongNamespace => "wrong_namespace",
        }
    }
}

struct UserInfo {
    disabled: bool,
    /// Built once per snapshot; every request of this user shares it.
    principal: Arc<Principal>,
}

struct SourceInfo {
    enabled: bool,
    principal: Arc<Principal>,
}

/// The snapshot, indexed.
pub struct Directory {
    keys: HashMap<[u8; 32], ApiKeyEntry>,
    users: HashMap<String, UserInfo>,
    /// lower-cased e-mail → user name
    emails: HashMap<String, String>,
    sources: HashMap<(String, String), SourceInfo>,
    revoked_sessions: HashSet<String>,
}

impl Directory {
    pub fn new(snapshot: &Snapshot) -> Directory {
        let role_scopes: HashMap<&str, &[String]> = snapshot
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.scopes.as_slice()))
            .collect();
        let users = snapshot
            .users
            .iter()
            .map(|u| {
                let scopes: BTreeSet<String> = u
                    .roles
                    .iter()
                    .filter_map(|r| role_scopes.get(r.as_str()))
                    .flat_map(|s| s.iter().cloned())
                    .collect();
                let principal = Principal {
                    roles: u.roles.clone(),
                    scopes: scopes.into_iter().collect(),
                    teams: u.teams.iter().map(|t| (t.team.clone(), t.role)).collect(),
                    ..Principal::named(format!("user:{}", u.name), u.name.clone(), Some(u.email.clone()))
                };
                let info = UserInfo {
                    disabled: u.disabled,
                    principal: Arc::new(principal),
                };
                (u.name.clone(), info)
            })
            .collect();
        let emails = snapshot
            .users
            .iter()
            .map(|u| (u.email.to_ascii_lowercase(), u.name.clone()))
            .collect();
        let keys = snapshot
            .api_keys
            .iter()
            .filter_map(|k| Some((decode_hex(&k.key_hash)?, k.clone())))
            .collect();
        let sources = snapshot
            .sources
            .iter()
            .map(|s| {
                let principal = Principal {
                    rate_limit: s.rate_limit.clone(),
                    ..Principal::named(format!("source:{}/{}", s.namespace, s.name), s.name.clone(), None)
                };
                let info = SourceInfo {
                    enabled: s.enabled,
                    principal: Arc::new(principal),
                };
                ((s.namespace.clone(), s.name.clone()), info)
            })
            .collect();
        let revoked_sessions = snapshot.revoked_sessions.iter().cloned().collect();
        Directory {
            keys,
            users,
            emails,
            sources,
            revoked_sessions,
        }
    }

    /// Authenticates an API key at `now` (Unix seconds) for a sidecar of `namespace`. The
    /// key is hashed and looked up by hash; the stored hash is then compared in constant
    /// time. A key is honoured only in its own namespace and those its owner allowed.
    pub fn api_key(&self, presented: &str, namespace: &str, now: i64) -> Result<Arc<Principal>, Refusal> {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN || !presented.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::Malformed);
        }
        let digest = api_key::digest(presented);
        let (stored, entry) = self.keys.get_key_value(&digest).ok_or(Refusal::Unknown)?;
        if !constant_time_eq(stored, &digest) {
            return Err(Refusal::Unknown);
        }
        if entry.revoked_at.is_some_and(|at| at <= now) {
            return Err(Refusal::Revoked);
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return Err(Refusal::Expired);
        }
        if !entry.honoured_by(namespace) {
            return Err(Refusal::WrongNamespace);
        }
        let mut principal = match entry.owner_kind {
            OwnerKind::User => {
                let mut user = (*self.user(&entry.owner_name)?).clone();
                // A key carries what it grants and its owner still holds: its scopes
                // always, roles and team roles only those the APIKey asked for.
                user.scopes.retain(|s| entry.scopes.contains(s));
                user.roles.retain(|r| entry.roles.contains(r));
                user.teams.retain(|(team, _)| entry.teams.contains(team));
                user
            }
            OwnerKind::Source => Principal {
                scopes: entry.scopes.clone(),
                ..(*self.source(&entry.namespace, &entry.owner_name)?).clone()
            },
        };
        principal.key_prefix = Some(entry.prefix.clone());
        Ok(Arc::new(principal))
    }

    /// The user called `name`, with the roles, scopes and teams the snapshot gives them.
    pub fn user(&self, name: &str) -> Result<Arc<Principal>, Refusal> {
        let user = self.users.get(name).ok_or(Refusal::OwnerUnknown)?;
        if user.disabled {
            return Err(Refusal::OwnerDisabled);
        }
        Ok(user.principal.clone())
    }

    /// The source `namespace/name`. Sources hold no roles; their scopes come with their keys.
    pub fn source(&self, namespace: &str, name: &str) -> Result<Arc<Principal>, Refusal> {
        match self.sources.get(&(namespace.to_string(), name.to_string())) {
            None => Err(Refusal::OwnerUnknown),
            Some(info) if !info.enabled => Err(Refusal::OwnerDisabled),
            Some(info) => Ok(info.principal.clone()),
        }
    }

    /// Whether a refresh-token session (an access token's `sid`) has been revoked.
    pub fn session_revoked(&self, session: &str) -> bool {
        self.revoked_sessions.contains(session)
    }

    /// Maps a verified client certificate to a user or a source of `namespace`:
    /// an e-mail SAN names a user by e-mail; a URI SAN `portcullis:user:<name>` or
    /// `portcullis:source:<namespace>/<name>` names either explicitly; otherwise DNS SANs
    /// and the CN are tried as a user name, then as a source of this namespace. A
    /// certificate whose names lead to two different principals is refused, not guessed.
    pub fn certificate(&self, cert: &CertIdentity, namespace: &str) -> Result<Arc<Principal>, Refusal> {
        let mut candidates: Vec<Result<Arc<Principal>, Refusal>> = Vec::new();
        for email in &cert.emails {
            let user = self
                .emails
                .get(&email.to_ascii_lowercase())
                .ok_or(Refusal::OwnerUnknown);
            candidates.push(user.and_then(|name| self.user(name)));
        }
        for uri in &cert.uris {
            if let Some(name) = uri.strip_prefix("portcullis:user:") {
                candidates.push(self.user(name));
            } else if let Some((ns, name)) = uri.strip_prefix("portcullis:source:").and_then(|r| r.split_once('/')) {
                candidates.push(self.source(ns, name));
            }
        }
        if !candidates.iter().any(Result::is_ok) {
            for name in cert.dns_names.iter().chain(cert.common_name.iter()) {
                candidates.push(self.user(name));
                candidates.push(self.source(namespace, name));
            }
        }
        let mut found: Option<Arc<Principal>> = None;
        for candidate in candidates {
            match candidate {
                Ok(p) => match &found {
                    Some(existing) if existing.subject != p.subject => return Err(Refusal::Ambiguous),
                    _ => found = Some(p),
                },
                // A disabled owner is a refusal, not a reason to try the next name.
                Err(Refusal::OwnerDisabled) => return Err(Refusal::OwnerDisabled),
                Err(_) => {}
            }
        }
        found.ok_or(Refusal::Unknown)
    }
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

/// Compares without an early exit, so timing says nothing about where bytes differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use portcullis_wire::{RoleEntry, SourceEntry, TeamMembership, UserEntry};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn hash(key: &str) -> String {
        api_key::hash_hex(key)
    }

    fn key(plain: &str, owner_kind: OwnerKind, owner: &str, scopes: &[&str]) -> ApiKeyEntry {
        ApiKeyEntry {
            key_hash: hash(plain),
            prefix: plain[..12.min(plain.len())].to_string(),
            namespace: "shop".into(),
            owner_kind,
            owner_name: owner.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: None,
            revoked_at: None,
            roles: Vec::new(),
            teams: Vec::new(),
            honoured_in: Vec::new(),
        }
    }

    fn directory() -> Directory {
        let snapshot = Snapshot {
            revision: 7,
            epoch: String::new(),
            generated_at: NOW,
            roles: vec![RoleEntry {
                name: "viewer".into(),
                scopes: vec!["list".into(), "read".into()],
            }],
            users: vec![
                UserEntry {
                    name: "bob".into(),
                    email: "bob@example.com".into(),
                    disabled: false,
                    roles: vec!["viewer".into()],
                    teams: vec![TeamMembership {
                        team: "platform".into(),
                        role: TeamRole::Member,
                    }],
                },
                UserEntry {
                    name: "eve".into(),
                    email: "eve@example.com".into(),
                    disabled: true,
                    roles: vec![],
                    teams: vec![],
                },
            ],
            api_keys: vec![
                key("pck_bob", OwnerKind::User, "bob", &["read", "write"]),
                ApiKeyEntry {
                    expires_at: Some(NOW - 1),
                    ..key("pck_old", OwnerKind::User, "bob", &["read"])
                },
                ApiKeyEntry {
                    revoked_at: Some(NOW - 1),
                    ..key("pck_gone", OwnerKind::User, "bob", &["read"])
                },
                ApiKeyEntry {
                    revoked_at: Some(NOW + 60),
                    ..key("pck_grace", OwnerKind::User, "bob", &["read"])
                },
                key("pck_eve", OwnerKind::User, "eve", &["read"]),
                key("pck_ghost", OwnerKind::User, "ghost", &["read"]),
                key("pck_syslog", OwnerKind::Source, "edge-syslog", &["write"]),
                ApiKeyEntry {
                    roles: vec!["viewer".into(), "admin".into()],
                    teams: vec!["platform".into()],
                    honoured_in: vec!["web".into()],
                    ..key("pck_bob_full", OwnerKind::User, "bob", &["read"])
                },
                key("pck_muted", OwnerKind::Source, "muted", &["write"]),
            ],
            sources: vec![
                SourceEntry {
                    namespace: "shop".into(),
                    name: "edge-syslog".into(),
                    team: None,
                    enabled: true,
                    rate_limit: None,
                },
                SourceEntry {
                    namespace: "shop".into(),
                    name: "muted".into(),
                    team: None,
                    enabled: false,
                    rate_limit: None,
                },
            ],
            revoked_sessions: vec!["s-revoked".into()],
            ..Default::default()
        };
        Directory::new(&snapshot)
    }

    #[test]
    fn a_user_key_carries_the_owners_identity_capped_at_its_scopes() {
        let bob = directory().api_key("pck_bob", "shop", NOW).unwrap();
        assert_eq!(bob.subject, "user:bob");
        assert_eq!(bob.email.as_deref(), Some("bob@example.com"));
        assert_eq!(bob.scopes, ["read"], "write is not bob's to give");
        assert!(bob.roles.is_empty(), "the key asked for none of bob's roles");
        assert!(bob.teams.is_empty(), "nor for his team roles");
        assert_eq!(
            directory().api_key("pck_grace", "shop", NOW).unwrap().subject,
            "user:bob",
            "still in its rotation grace"
        );
    }

    #[test]
    fn a_key_carries_only_the_roles_and_teams_it_asked_for_that_its_owner_holds() {
        let full = directory().api_key("pck_bob_full", "shop", NOW).unwrap();
        assert_eq!(full.roles, ["viewer"], "admin is not bob's to give");
        assert_eq!(full.teams, [("platform".to_string(), TeamRole::Member)]);
    }

    #[test]
    fn a_key_is_honoured_only_in_its_namespace_and_those_its_owner_allowed() {
        let d = directory();
        assert_eq!(d.api_key("pck_bob", "other", NOW), Err(Refusal::WrongNamespace));
        assert_eq!(d.api_key("pck_syslog", "other", NOW), Err(Refusal::WrongNamespace));
        assert_eq!(d.api_key("pck_bob_full", "web", NOW).unwrap().subject, "user:bob");
        assert_eq!(d.api_key("pck_bob_full", "other", NOW), Err(Refusal::WrongNamespace));
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let d = directory();
        assert_eq!(d.api_key("with space", "shop", NOW), Err(Refusal::Malformed));
        assert_eq!(d.api_key("", "shop", NOW), Err(Refusal::Malformed));
        assert_eq!(
            d.api_key(&format!("pck_{}", "x".repeat(300)), "shop", NOW),
            Err(Refusal::Malformed)
        );
        assert_eq!(d.api_key("not-a-key", "shop", NOW), Err(Refusal::Unknown));
        assert_eq!(d.api_key("pck_nope", "shop", NOW), Err(Refusal::Unknown));
        assert_eq!(d.api_key("pck_old", "shop", NOW), Err(Refusal::Expired));
        assert_eq!(d.api_key("pck_gone", "shop", NOW), Err(Refusal::Revoked));
        assert_eq!(d.api_key("pck_grace", "shop", NOW + 61), Err(Refusal::Revoked));
        assert_eq!(d.api_key("pck_eve", "shop", NOW), Err(Refusal::OwnerDisabled));
        assert_eq!(d.api_key("pck_ghost", "shop", NOW), Err(Refusal::OwnerUnknown));
        assert_eq!(d.api_key("pck_muted", "shop", NOW), Err(Refusal::OwnerDisabled));
    }

    #[test]
    fn a_source_key_is_the_source() {
        let source = directory().api_key("pck_syslog", "shop", NOW).unwrap();
        assert_eq!(
            (source.subject.as_str(), source.scopes.as_slice()),
            ("source:shop/edge-syslog", &["write".to_string()][..])
        );
    }

    #[test]
    fn hex_and_comparison_helpers() {
        assert_eq!(decode_hex(&hash("abc")).map(|h| h[0]), Some(0xba));
        assert_eq!(decode_hex("zz"), None);
        let a = [1u8; 32];
        let mut b = a;
        assert!(constant_time_eq(&a, &b));
        b[31] = 0;
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn identity_headers_follow_the_principal_a_key_narrows() {
        let d = directory();
        let header = |p: &Principal, name: &HeaderName| {
            p.identity_headers()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        let user = d.user("bob").unwrap();
        // Built from the user's own scopes first, so a stale cache would show them below.
        let user_scopes = header(&user, &X_AUTH_SCOPES).unwrap();
        assert_eq!(user_scopes, "list,read");
        assert_eq!(header(&user, &X_AUTH_USER).as_deref(), Some("bob"));
        assert_eq!(header(&user, &X_AUTH_TEAMS).as_deref(), Some("platform:member"));
        let key = d.api_key("pck_bob", "shop", NOW).unwrap();
        assert_eq!(header(&key, &X_AUTH_SCOPES).as_deref(), Some("read"));
        assert!(Arc::ptr_eq(&user, &d.user("bob").unwrap()), "one principal per user");
    }

    #[test]
    fn certificates_map_to_one_principal_or_none() {
        let d = directory();
        let cert = |emails: &[&str], uris: &[&str], dns: &[&str], cn: Option<&str>| CertIdentity {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            emails: emails.iter().map(|s| s.to_string()).collect(),
            common_name: cn.map(str::to_string),
        };
        let by_email = d
            .certificate(&cert(&["Bob@Example.com"], &[], &[], None), "shop")
            .unwrap();
        assert_eq!(
            (by_email.subject.as_str(), by_email.scopes.as_slice()),
            ("user:bob", &["list".to_string(), "read".to_string()][..])
        );
        assert_eq!(
            d.certificate(&cert(&[], &[], &[], Some("bob")), "shop")
                .unwrap()
                .subject,
            "user:bob"
        );
        let source = d.certificate(&cert(&[], &[], &["edge-syslog"], None), "shop").unwrap();
        assert_eq!(source.subject, "source:shop/edge-syslog");
        assert_eq!(
            d.certificate(&cert(&[], &[], &["edge-syslog"], None), "other")
                .unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(
            d.certificate(&cert(&[], &["portcullis:source:shop/edge-syslog"], &[], None), "x")
                .unwrap()
                .subject,
            "source:shop/edge-syslog"
        );
        assert_eq!(
            d.certificate(
                &cert(&["bob@example.com"], &["portcullis:source:shop/edge-syslog"], &[], None),
                "shop"
            ),
            Err(Refusal::Ambiguous)
        );
        assert_eq!(
            d.certificate(&cert(&[], &[], &[], Some("eve")), "shop"),
            Err(Refusal::OwnerDisabled)
        );
        assert_eq!(
            d.certificate(&cert(&[], &[], &["stranger"], Some("nobody")), "shop"),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            d.certificate(&cert(&[], &[], &[], Some("muted")), "shop"),
            Err(Refusal::OwnerDisabled)
        );
    }

    #[test]
    fn revoked_sessions_are_known() {
        let d = directory();
        assert!(d.session_revoked("s-revoked"));
        assert!(!d.session_revoked("s-live"));
    }
}
