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

/// One API key, as little as deciding on it takes: 68 bytes, where the wire form with its
/// strings was several hundred. The owner's name, the namespace and the scope list are
/// indices into tables the keys share (a hundred thousand keys name a few thousand owners
/// and a handful of scope lists); the display prefix is the first `prefix_len` characters
/// of the key itself, so only its length is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRecord {
    hash: [u8; 32],
    /// Unix seconds; 0 for never (see [`compact_time`]).
    expires_at: u32,
    revoked_at: u32,
    owner: u32,
    namespace: u32,
    /// Indices into the shared string lists: the key's scopes, the roles and teams it
    /// carries, the further namespaces that honour it.
    scopes: u32,
    roles: u32,
    teams: u32,
    honoured_in: u32,
    kind: OwnerKind,
    prefix_len: u8,
}

/// Unix seconds in 32 bits: `None` is 0 (never), a time at or before the epoch is 1 (long
/// past), one past 2106 is `u32::MAX` (as good as never, and still compared as a time).
fn compact_time(at: Option<i64>) -> u32 {
    match at {
        None => 0,
        Some(t) if t <= 0 => 1,
        Some(t) => u32::try_from(t).unwrap_or(u32::MAX),
    }
}

/// Whether a compact time is set and reached at `now`.
fn reached(at: u32, now: i64) -> bool {
    at != 0 && i64::from(at) <= now
}

/// API keys as they arrive, one at a time (see [`super::received`]): names and scope lists
/// interned as they come, so that the wire form of the keys is never held whole.
#[derive(Debug, Default)]
pub struct Keys {
    records: Vec<KeyRecord>,
    names: HashMap<Box<str>, u32>,
    lists: HashMap<Box<[String]>, u32>,
}

/// The fields of one wire `ApiKeyEntry`, borrowed.
pub struct KeyFields<'a> {
    pub key_hash: &'a str,
    pub prefix: &'a str,
    pub namespace: &'a str,
    pub owner_kind: OwnerKind,
    pub owner_name: &'a str,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub honoured_in: Vec<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl Keys {
    /// Adds one key; a hash that is not 64 hex digits is left out (no key can match it).
    pub fn push(&mut self, key: KeyFields<'_>) {
        let Some(hash) = decode_hex(key.key_hash) else {
            return;
        };
        let owner = intern(&mut self.names, key.owner_name);
        let namespace = intern(&mut self.names, key.namespace);
        let scopes = intern_list(&mut self.lists, key.scopes);
        let roles = intern_list(&mut self.lists, key.roles);
        let teams = intern_list(&mut self.lists, key.teams);
        let honoured_in = intern_list(&mut self.lists, key.honoured_in);
        self.records.push(KeyRecord {
            hash,
            expires_at: compact_time(key.expires_at),
            revoked_at: compact_time(key.revoked_at),
            owner,
            namespace,
            scopes,
            roles,
            teams,
            honoured_in,
            kind: key.owner_kind,
            prefix_len: u8::try_from(key.prefix.len()).unwrap_or(u8::MAX),
        });
    }

    /// The keys of a whole wire snapshot.
    pub fn from_entries(entries: &[ApiKeyEntry]) -> Keys {
        let mut keys = Keys::default();
        for e in entries {
            keys.push(KeyFields {
                key_hash: &e.key_hash,
                prefix: &e.prefix,
                namespace: &e.namespace,
                owner_kind: e.owner_kind,
                owner_name: &e.owner_name,
                scopes: e.scopes.clone(),
                roles: e.roles.clone(),
                teams: e.teams.clone(),
                honoured_in: e.honoured_in.clone(),
                expires_at: e.expires_at,
                revoked_at: e.revoked_at,
            });
        }
        keys
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Sorted by hash for the lookup, the interning maps turned into plain tables.
    fn finish(self) -> KeyTable {
        let mut records = self.records;
        records.sort_unstable_by_key(|k| k.hash);
        records.dedup_by(|a, b| a.hash == b.hash);
        KeyTable {
            records: records.into_boxed_slice(),
            names: table(self.names),
            lists: table(self.lists),
        }
    }
}

/// A list of names, shared by every key with the same (keys repeat a few lists).
fn intern_list(lists: &mut HashMap<Box<[String]>, u32>, list: Vec<String>) -> u32 {
    if let Some(id) = lists.get(list.as_slice()) {
        return *id;
    }
    let id = u32::try_from(lists.len()).unwrap_or(u32::MAX);
    lists.insert(list.into_boxed_slice(), id);
    id
}

fn intern(names: &mut HashMap<Box<str>, u32>, name: &str) -> u32 {
    if let Some(id) = names.get(name) {
        return *id;
    }
    let id = u32::try_from(names.len()).unwrap_or(u32::MAX);
    names.insert(name.into(), id);
    id
}

/// An interning map as the table its ids index.
fn table<T>(interned: HashMap<T, u32>) -> Box<[T]> {
    let mut entries: Vec<(T, u32)> = interned.into_iter().collect();
    entries.sort_unstable_by_key(|(_, id)| *id);
    entries.into_iter().map(|(value, _)| value).collect()
}

/// The keys, looked up by hash with a binary search.
#[derive(Debug, Default)]
struct KeyTable {
    records: Box<[KeyRecord]>,
    names: Box<[Box<str>]>,
    lists: Box<[Box<[String]>]>,
}

impl KeyTable {
    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", |n| &**n)
    }

    fn list(&self, id: u32) -> &[String] {
        self.lists.get(id as usize).map_or(&[][..], |s| &**s)
    }
}

/// A user, compact: roles and teams as shared lists (users share a few role lists), the
/// principal built on first use and kept (every request of the user shares it).
struct UserRecord {
    name: Box<str>,
    email: Box<str>,
    disabled: bool,
    roles: u32,
    teams: u32,
    principal: OnceLock<Arc<Principal>>,
}

/// A user's teams and roles in them, shared by the users with the same.
type TeamList = Box<[(String, TeamRole)]>;

/// A list of roles, and the scopes they grant (sorted, without repeats).
struct RoleSet {
    roles: Box<[String]>,
    scopes: Box<[String]>,
}

struct SourceInfo {
    enabled: bool,
    principal: Arc<Principal>,
}

/// The snapshot, indexed.
pub struct Directory {
    keys: KeyTable,
    /// Sorted by name.
    users: Box<[UserRecord]>,
    role_sets: Box<[RoleSet]>,
    team_sets: Box<[TeamList]>,
    /// lower-cased e-mail → index in `users`, sorted by e-mail.
    emails: Box<[(Box<str>, u32)]>,
    sources: HashMap<(String, String), SourceInfo>,
    revoked_sessions: HashSet<String>,
}

impl Directory {
    /// The directory of a whole wire snapshot (its API keys included).
    pub fn new(snapshot: &Snapshot) -> Directory {
        Directory::with_keys(snapshot, Keys::from_entries(&snapshot.api_keys))
    }

    /// The directory of `snapshot`'s users and sources, with `keys` (the snapshot's own
    /// `api_keys` are not looked at: a received snapshot has them in `keys` already).
    pub fn with_keys(snapshot: &Snapshot, keys: Keys) -> Directory {
        let role_scopes: HashMap<&str, &[String]> = snapshot
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.scopes.as_slice()))
            .collect();
        let mut role_ids: HashMap<&[String], u32> = HashMap::new();
        let mut role_sets: Vec<RoleSet> = Vec::new();
        let mut team_ids: HashMap<Vec<(String, TeamRole)>, u32> = HashMap::new();
        let mut users: Vec<UserRecord> = Vec::with_capacity(snapshot.users.len());
        for u in &snapshot.users {
            let roles = *role_ids.entry(u.roles.as_slice()).or_insert_with(|| {
                let scopes: BTreeSet<&String> = u
                    .roles
                    .iter()
                    .filter_map(|r| role_scopes.get(r.as_str()))
                    .flat_map(|s| s.iter())
                    .collect();
                role_sets.push(RoleSet {
                    roles: u.roles.clone().into_boxed_slice(),
                    scopes: scopes.into_iter().cloned().collect(),
                });
                u32::try_from(role_sets.len() - 1).unwrap_or(u32::MAX)
            });
            let team_list: Vec<(String, TeamRole)> = u.teams.iter().map(|t| (t.team.clone(), t.role)).collect();
            let next = u32::try_from(team_ids.len()).unwrap_or(u32::MAX);
            let teams = *team_ids.entry(team_list).or_insert(next);
            users.push(UserRecord {
                name: u.name.as_str().into(),
                email: u.email.as_str().into(),
                disabled: u.disabled,
                roles,
                teams,
                principal: OnceLock::new(),
            });
        }
        users.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        // A name listed twice: the first one counts, as a lookup would find one of them.
        users.dedup_by(|a, b| a.name == b.name);
        let mut emails: Vec<(Box<str>, u32)> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                (
                    u.email.to_ascii_lowercase().into(),
                    u32::try_from(i).unwrap_or(u32::MAX),
                )
            })
            .collect();
        emails.sort_unstable();
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
            keys: keys.finish(),
            users: users.into_boxed_slice(),
            role_sets: role_sets.into_boxed_slice(),
            team_sets: table(team_ids).into_iter().map(Vec::into_boxed_slice).collect(),
            emails: emails.into_boxed_slice(),
            sources,
            revoked_sessions,
        }
    }

    /// Authenticates an API key at `now` (Unix seconds) for a sidecar of `namespace`. The
    /// key is hashed and the hash found by binary search (over hashes, which no caller can
    /// steer); the stored hash is then compared in constant time. A key is honoured only
    /// in its own namespace and those its owner allowed.
    pub fn api_key(&self, presented: &str, namespace: &str, now: i64) -> Result<Arc<Principal>, Refusal> {
        if presented.is_empty() || presented.len() > MAX_KEY_LEN || !presented.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::Malformed);
        }
        let digest = api_key::digest(presented);
        let index = self
            .keys
            .records
            .binary_search_by(|k| k.hash.cmp(&digest))
            .map_err(|_| Refusal::Unknown)?;
        let entry = self.keys.records.get(index).ok_or(Refusal::Unknown)?;
        if !constant_time_eq(&entry.hash, &digest) {
            return Err(Refusal::Unknown);
        }
        if reached(entry.revoked_at, now) {
            return Err(Refusal::Revoked);
        }
        if reached(entry.expires_at, now) {
            return Err(Refusal::Expired);
        }
        if self.keys.name(entry.namespace) != namespace
            && !self.keys.list(entry.honoured_in).iter().any(|n| n == namespace)
        {
            return Err(Refusal::WrongNamespace);
        }
        let scopes = self.keys.list(entry.scopes);
        let owner = self.keys.name(entry.owner);
        let mut principal = match entry.kind {
            OwnerKind::User => {
                let mut user = (*self.user(owner)?).clone();
                // A key carries what it grants and its owner still holds: its scopes
                // always, roles and team roles only those the APIKey asked for.
                let (roles, teams) = (self.keys.list(entry.roles), self.keys.list(entry.teams));
                user.scopes.retain(|s| scopes.contains(s));
                user.roles.retain(|r| roles.contains(r));
                user.teams.retain(|(team, _)| teams.contains(team));
                user
            }
            OwnerKind::Source => Principal {
                scopes: scopes.to_vec(),
                ..(*self.source(self.keys.name(entry.namespace), owner)?).clone()
            },
        };
        // The prefix is the key's first characters (all ASCII: checked above).
        principal.key_prefix = Some(presented[..usize::from(entry.prefix_len).min(presented.len())].to_string());
        Ok(Arc::new(principal))
    }

    /// The user called `name`, with the roles, scopes and teams the snapshot gives them.
    pub fn user(&self, name: &str) -> Result<Arc<Principal>, Refusal> {
        let index = self
            .users
            .binary_search_by(|u| (*u.name).cmp(name))
            .map_err(|_| Refusal::OwnerUnknown)?;
        self.user_at(index)
    }

    fn user_at(&self, index: usize) -> Result<Arc<Principal>, Refusal> {
        let user = self.users.get(index).ok_or(Refusal::OwnerUnknown)?;
        if user.disabled {
            return Err(Refusal::OwnerDisabled);
        }
        Ok(user
            .principal
            .get_or_init(|| {
                let roles = self.role_sets.get(user.roles as usize);
                Arc::new(Principal {
                    roles: roles.map_or_else(Vec::new, |r| r.roles.to_vec()),
                    scopes: roles.map_or_else(Vec::new, |r| r.scopes.to_vec()),
                    teams: self
                        .team_sets
                        .get(user.teams as usize)
                        .map_or_else(Vec::new, |t| t.to_vec()),
                    ..Principal::named(
                        format!("user:{}", user.name),
                        user.name.to_string(),
                        Some(user.email.to_string()),
                    )
                })
            })
            .clone())
    }

    fn user_by_email(&self, email: &str) -> Result<Arc<Principal>, Refusal> {
        let email = email.to_ascii_lowercase();
        let at = self
            .emails
            .binary_search_by(|(e, _)| (**e).cmp(email.as_str()))
            .map_err(|_| Refusal::OwnerUnknown)?;
        let index = self.emails.get(at).map_or(usize::MAX, |(_, i)| *i as usize);
        self.user_at(index)
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
            candidates.push(self.user_by_email(email));
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
    fn a_key_is_compact_and_its_prefix_the_keys_own() {
        // What a hundred thousand keys cost: 6.8 MB, where their wire form was about 40.
        assert_eq!(std::mem::size_of::<KeyRecord>(), 68);
        let bob = directory().api_key("pck_bob", "shop", NOW).unwrap();
        assert_eq!(bob.key_prefix.as_deref(), Some("pck_bob"));
        assert_eq!(compact_time(None), 0);
        assert_eq!(compact_time(Some(-5)), 1);
        assert_eq!(compact_time(Some(i64::MAX)), u32::MAX);
        assert!(reached(1, NOW) && !reached(0, NOW) && !reached(u32::MAX, NOW));
    }

    #[test]
    fn users_with_the_same_roles_share_them_and_names_are_found_by_search() {
        let d = directory();
        assert_eq!(d.users.len(), 2);
        assert_eq!(d.role_sets.len(), 2, "viewer, and none");
        assert_eq!(d.user("eve"), Err(Refusal::OwnerDisabled));
        assert_eq!(d.user("nobody"), Err(Refusal::OwnerUnknown));
        assert_eq!(d.user_by_email("BOB@example.com").unwrap().subject, "user:bob");
    }

    #[test]
    fn revoked_sessions_are_known() {
        let d = directory();
        assert!(d.session_revoked("s-revoked"));
        assert!(!d.session_revoked("s-live"));
    }
}
