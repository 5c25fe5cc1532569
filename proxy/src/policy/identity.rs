//! Who a request is: the snapshot indexed for authentication. Built once per snapshot,
//! so the per-request work is a hash and a map lookup.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use hyper::header::{HeaderName, HeaderValue};

use portcullis_wire::api_key;
use portcullis_wire::{ApiKeyEntry, OwnerKind, RateLimit, Snapshot, TeamRole, UserEntry};

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

/// One API key, as little as deciding on it takes: 48 bytes, where the wire form with its
/// strings was several hundred. The owner's name is an index into a table the keys share
/// (a hundred thousand keys name a few thousand owners); everything else a key says — its
/// namespace, scopes, roles, teams, where it is honoured, its owner's kind, the length of
/// its display prefix (the first characters of the key itself) — is one [`Grant`] that
/// keys share (a hundred thousand keys make a handful of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRecord {
    hash: [u8; 32],
    /// Unix seconds; 0 for never (see [`compact_time`]).
    expires_at: u32,
    revoked_at: u32,
    owner: u32,
    grant: u32,
}

/// What many keys say alike. Indices into the shared name and string-list tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Grant {
    namespace: u32,
    /// The key's scopes, the roles and teams it carries, the further namespaces that
    /// honour it.
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
    grants: HashMap<Grant, u32>,
}

/// The fields of one wire `ApiKeyEntry`, borrowed.
pub struct KeyFields<'a> {
    pub key_hash: &'a str,
    pub prefix: &'a str,
    pub namespace: &'a str,
    pub owner_kind: OwnerKind,
    pub owner_name: &'a str,
    pub scopes: &'a [String],
    pub roles: &'a [String],
    pub teams: &'a [String],
    pub honoured_in: &'a [String],
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
        let grant = Grant {
            namespace: intern(&mut self.names, key.namespace),
            scopes: intern_list(&mut self.lists, key.scopes),
            roles: intern_list(&mut self.lists, key.roles),
            teams: intern_list(&mut self.lists, key.teams),
            honoured_in: intern_list(&mut self.lists, key.honoured_in),
            kind: key.owner_kind,
            prefix_len: u8::try_from(key.prefix.len()).unwrap_or(u8::MAX),
        };
        let next = u32::try_from(self.grants.len()).unwrap_or(u32::MAX);
        let grant = *self.grants.entry(grant).or_insert(next);
        self.records.push(KeyRecord {
            hash,
            expires_at: compact_time(key.expires_at),
            revoked_at: compact_time(key.revoked_at),
            owner,
            grant,
        });
    }

    /// Room for `count` more keys, as the control plane announces them (so that the table
    /// is allocated once, at its size, instead of doubling as keys arrive). Bounded: a
    /// count is a hint, and a larger one than a snapshot can hold is not believed.
    pub fn reserve(&mut self, count: u64) {
        /// The most keys a snapshot within the sidecar's size bound could carry.
        const MOST: u64 = 2 << 20;
        self.records
            .reserve_exact(usize::try_from(count.min(MOST)).unwrap_or(0));
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
                scopes: &e.scopes,
                roles: &e.roles,
                teams: &e.teams,
                honoured_in: &e.honoured_in,
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
            grants: table(self.grants),
        }
    }
}

/// A list of names, shared by every key with the same (keys repeat a few lists).
fn intern_list<T: Clone + Eq + std::hash::Hash>(lists: &mut HashMap<Box<[T]>, u32>, list: &[T]) -> u32 {
    if let Some(id) = lists.get(list) {
        return *id;
    }
    let id = u32::try_from(lists.len()).unwrap_or(u32::MAX);
    lists.insert(list.into(), id);
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
    grants: Box<[Grant]>,
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

/// Users as they arrive, one at a time (see [`super::received`]): their role and team
/// lists interned as they come (ten thousand users hold a few dozen lists), so that the
/// wire form of the users is never held whole.
#[derive(Default)]
pub struct Users {
    records: Vec<UserRecord>,
    role_lists: HashMap<Box<[String]>, u32>,
    team_lists: HashMap<Box<[(String, TeamRole)]>, u32>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("len", &self.records.len()).finish()
    }
}

/// The fields of one wire `UserEntry`, borrowed.
pub struct UserFields<'a> {
    pub name: &'a str,
    pub email: &'a str,
    pub disabled: bool,
    pub roles: &'a [String],
    pub teams: &'a [(String, TeamRole)],
}

impl Users {
    /// Adds one user: its name and e-mail are the only allocations unless its role or
    /// team list is new.
    pub fn push(&mut self, user: UserFields<'_>) {
        let roles = intern_list(&mut self.role_lists, user.roles);
        let teams = intern_list(&mut self.team_lists, user.teams);
        self.records.push(UserRecord {
            name: user.name.into(),
            email: user.email.into(),
            disabled: user.disabled,
            roles,
            teams,
            principal: OnceLock::new(),
        });
    }

    /// The users of a whole wire snapshot.
    pub fn from_entries(entries: &[UserEntry]) -> Users {
        let mut users = Users::default();
        for user in entries {
            let teams: Vec<(String, TeamRole)> = user.teams.iter().map(|t| (t.team.clone(), t.role)).collect();
            users.push(UserFields {
                name: &user.name,
                email: &user.email,
                disabled: user.disabled,
                roles: &user.roles,
                teams: &teams,
            });
        }
        users
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl Directory {
    /// The directory of a whole wire snapshot (its users and API keys included).
    pub fn new(snapshot: &Snapshot) -> Directory {
        Directory::with_parts(
            snapshot,
            Users::from_entries(&snapshot.users),
            Keys::from_entries(&snapshot.api_keys),
        )
    }

    /// The directory of `snapshot`'s roles, sources and sessions, with `users` and `keys`
    /// (the snapshot's own `users` and `api_keys` are not looked at: a received snapshot
    /// has them in compact form already).
    pub fn with_parts(snapshot: &Snapshot, users: Users, keys: Keys) -> Directory {
        let role_scopes: HashMap<&str, &[String]> = snapshot
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.scopes.as_slice()))
            .collect();
        let Users {
            records: mut users,
            role_lists,
            team_lists,
        } = users;
        // Each role list with the scopes its roles grant, now that the roles are known.
        let role_sets: Box<[RoleSet]> = table(role_lists)
            .into_iter()
            .map(|roles| {
                let scopes: BTreeSet<&String> = roles
                    .iter()
                    .filter_map(|r| role_scopes.get(r.as_str()))
                    .flat_map(|s| s.iter())
                    .collect();
                RoleSet {
                    scopes: scopes.into_iter().cloned().collect(),
                    roles,
                }
            })
            .collect();
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
            role_sets,
            team_sets: table(team_lists),
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
        let grant = self.keys.grants.get(entry.grant as usize).ok_or(Refusal::Unknown)?;
        if self.keys.name(grant.namespace) != namespace
            && !self.keys.list(grant.honoured_in).iter().any(|n| n == namespace)
        {
            return Err(Refusal::WrongNamespace);
        }
        let scopes = self.keys.list(grant.scopes);
        let owner = self.keys.name(entry.owner);
        let mut principal = match grant.kind {
            OwnerKind::User => {
                let mut user = (*self.user(owner)?).clone();
                // A key carries what it grants and its owner still holds: its scopes
                // always, roles and team roles only those the APIKey asked for.
                let (roles, teams) = (self.keys.list(grant.roles), self.keys.list(grant.teams));
                user.scopes.retain(|s| scopes.contains(s));
                user.roles.retain(|r| roles.contains(r));
                user.teams.retain(|(team, _)| teams.contains(team));
                user
            }
            OwnerKind::Source => Principal {
                scopes: scopes.to_vec(),
                ..(*self.source(self.keys.name(grant.namespace), owner)?).clone()
            },
        };
        // The prefix is the key's first characters (all ASCII: checked above).
        principal.key_prefix = Some(presented[..usize::from(grant.prefix_len).min(presented.len())].to_string());
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
        // What a hundred thousand keys cost: 4.8 MB, where their wire form was about 40.
        assert_eq!(std::mem::size_of::<KeyRecord>(), 48);
        let bob = directory().api_key("pck_bob", "shop", NOW).unwrap();
        assert_eq!(bob.key_prefix.as_deref(), Some("pck_bob"));
        assert_eq!(compact_time(None), 0);
        assert_eq!(compact_time(Some(-5)), 1);
        assert_eq!(compact_time(Some(i64::MAX)), u32::MAX);
        assert!(reached(1, NOW) && !reached(0, NOW) && !reached(u32::MAX, NOW));
    }

    #[test]
    fn keys_alike_share_one_grant_and_an_announced_count_is_allocated_once() {
        let mut keys = Keys::default();
        keys.reserve(1000);
        let capacity = keys.records.capacity();
        assert!(capacity >= 1000);
        for i in 0..1000 {
            keys.push(KeyFields {
                key_hash: &api_key::hash_hex(&format!("pck_{i}")),
                prefix: "pck_",
                namespace: "shop",
                owner_kind: OwnerKind::User,
                owner_name: if i % 2 == 0 { "bob" } else { "eve" },
                scopes: &["read".to_string()],
                roles: &[],
                teams: &[],
                honoured_in: &[],
                expires_at: None,
                revoked_at: Some(NOW),
            });
        }
        assert_eq!(keys.records.capacity(), capacity, "filled without growing");
        let table = keys.finish();
        assert_eq!((table.records.len(), table.grants.len()), (1000, 1));
        assert_eq!(table.names.len(), 3, "bob, eve and shop");
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
