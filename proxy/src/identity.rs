//! Who a request is: the snapshot indexed for authentication. Built once per snapshot,
//! so the per-request work is a hash and a map lookup.

use std::collections::{BTreeSet, HashMap};

use portcullis_wire::api_key;
use portcullis_wire::{ApiKeyEntry, OwnerKind, Snapshot, TeamRole};

use crate::authz::Identity;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `user:<name>` or `source:<namespace>/<name>`.
    pub subject: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub teams: Vec<(String, TeamRole)>,
    /// Display prefix of the key used, safe to log.
    pub key_prefix: String,
}

impl Principal {
    pub fn identity(&self) -> Identity {
        Identity {
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            teams: self.teams.clone(),
        }
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
        }
    }
}

struct UserInfo {
    email: String,
    disabled: bool,
    roles: Vec<String>,
    scopes: BTreeSet<String>,
    teams: Vec<(String, TeamRole)>,
}

/// The snapshot, indexed.
pub struct Directory {
    keys: HashMap<[u8; 32], ApiKeyEntry>,
    users: HashMap<String, UserInfo>,
    /// (namespace, name) → enabled
    sources: HashMap<(String, String), bool>,
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
                let scopes = u
                    .roles
                    .iter()
                    .filter_map(|r| role_scopes.get(r.as_str()))
                    .flat_map(|s| s.iter().cloned())
                    .collect();
                let teams = u.teams.iter().map(|t| (t.team.clone(), t.role)).collect();
                let info = UserInfo {
                    email: u.email.clone(),
                    disabled: u.disabled,
                    roles: u.roles.clone(),
                    scopes,
                    teams,
                };
                (u.name.clone(), info)
            })
            .collect();
        let keys = snapshot
            .api_keys
            .iter()
            .filter_map(|k| Some((decode_hex(&k.key_hash)?, k.clone())))
            .collect();
        let sources = snapshot
            .sources
            .iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), s.enabled))
            .collect();
        Directory { keys, users, sources }
    }

    /// Authenticates an `X-API-Key` value at `now` (Unix seconds). The key is hashed
    /// and looked up by hash; the stored hash is then compared in constant time.
    pub fn api_key(&self, presented: &str, now: i64) -> Result<Principal, Refusal> {
        if !presented.starts_with(api_key::PREFIX) || presented.len() > 128 {
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
        match entry.owner_kind {
            OwnerKind::User => {
                let user = self.users.get(&entry.owner_name).ok_or(Refusal::OwnerUnknown)?;
                if user.disabled {
                    return Err(Refusal::OwnerDisabled);
                }
                // A key never holds more than its owner holds now.
                let scopes = entry
                    .scopes
                    .iter()
                    .filter(|s| user.scopes.contains(*s))
                    .cloned()
                    .collect();
                Ok(Principal {
                    subject: format!("user:{}", entry.owner_name),
                    email: Some(user.email.clone()),
                    roles: user.roles.clone(),
                    scopes,
                    teams: user.teams.clone(),
                    key_prefix: entry.prefix.clone(),
                })
            }
            OwnerKind::Source => {
                let namespace = &entry.namespace;
                match self.sources.get(&(namespace.clone(), entry.owner_name.clone())) {
                    None => Err(Refusal::OwnerUnknown),
                    Some(false) => Err(Refusal::OwnerDisabled),
                    Some(true) => Ok(Principal {
                        subject: format!("source:{namespace}/{}", entry.owner_name),
                        email: None,
                        roles: Vec::new(),
                        scopes: entry.scopes.clone(),
                        teams: Vec::new(),
                        key_prefix: entry.prefix.clone(),
                    }),
                }
            }
        }
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
        }
    }

    fn directory() -> Directory {
        let snapshot = Snapshot {
            revision: 7,
            generated_at: NOW,
            roles: vec![RoleEntry {
                name: "viewer".into(),
                scopes: vec!["read".into()],
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
            revoked_sessions: vec![],
            policies: vec![],
        };
        Directory::new(&snapshot)
    }

    #[test]
    fn a_user_key_carries_the_owners_identity_capped_at_its_scopes() {
        let bob = directory().api_key("pck_bob", NOW).unwrap();
        assert_eq!(bob.subject, "user:bob");
        assert_eq!(bob.email.as_deref(), Some("bob@example.com"));
        assert_eq!(bob.scopes, ["read"], "write is not bob's to give");
        assert_eq!(bob.teams, [("platform".to_string(), TeamRole::Member)]);
        assert_eq!(
            directory().api_key("pck_grace", NOW).unwrap().subject,
            "user:bob",
            "still in its rotation grace"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let d = directory();
        assert_eq!(d.api_key("not-a-key", NOW), Err(Refusal::Malformed));
        assert_eq!(
            d.api_key(&format!("pck_{}", "x".repeat(200)), NOW),
            Err(Refusal::Malformed)
        );
        assert_eq!(d.api_key("pck_nope", NOW), Err(Refusal::Unknown));
        assert_eq!(d.api_key("pck_old", NOW), Err(Refusal::Expired));
        assert_eq!(d.api_key("pck_gone", NOW), Err(Refusal::Revoked));
        assert_eq!(d.api_key("pck_grace", NOW + 61), Err(Refusal::Revoked));
        assert_eq!(d.api_key("pck_eve", NOW), Err(Refusal::OwnerDisabled));
        assert_eq!(d.api_key("pck_ghost", NOW), Err(Refusal::OwnerUnknown));
        assert_eq!(d.api_key("pck_muted", NOW), Err(Refusal::OwnerDisabled));
    }

    #[test]
    fn a_source_key_is_the_source() {
        let source = directory().api_key("pck_syslog", NOW).unwrap();
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
}
