//! A snapshot document read as it streams in: everything but the users and API keys into
//! the wire types, those two straight into their compact forms ([`Users`], [`Keys`]). A
//! snapshot of 10,000 users and 100,000 keys is then never held as a document plus the
//! wire entries plus the compiled form at once: the caller feeds the parser from the
//! network (or a file) a buffer at a time, and each key costs its 48 bytes as soon as it
//! is read.
//!
//! The fields are those of [`Snapshot`] (the wire crate's reference): a field this sidecar
//! does not know is skipped, one that `Snapshot` requires is required here too. One more
//! is read: `api_key_count`, which the control plane sends ahead of `api_keys` so that
//! the key table is allocated once at its size (a 100,000-key table that doubles as it
//! fills peaks at twice its size while it copies).

use std::fmt;

use portcullis_wire::{OwnerKind, Snapshot, TeamRole};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::identity::{KeyFields, Keys, UserFields, Users};

/// A snapshot as received: its users in `users` and API keys in `keys`,
/// `snapshot.users` and `snapshot.api_keys` empty.
#[derive(Debug, Default)]
pub struct Received {
    pub snapshot: Snapshot,
    pub users: Users,
    pub keys: Keys,
}

impl Received {
    /// A snapshot already in memory (tests, tools), its users and keys moved to the
    /// compact forms.
    pub fn from_snapshot(mut snapshot: Snapshot) -> Received {
        let keys = Keys::from_entries(&snapshot.api_keys);
        let users = Users::from_entries(&snapshot.users);
        snapshot.api_keys = Vec::new();
        snapshot.users = Vec::new();
        Received { snapshot, users, keys }
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Revision,
    Epoch,
    GeneratedAt,
    Roles,
    Users,
    ApiKeys,
    Sources,
    RevokedSessions,
    Policies,
    JwtIssuers,
    ApiKeyCount,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Received {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Received, D::Error> {
        deserializer.deserialize_map(ReceivedVisitor)
    }
}

struct ReceivedVisitor;

impl<'de> Visitor<'de> for ReceivedVisitor {
    type Value = Received;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a policy snapshot")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Received, A::Error> {
        let mut received = Received::default();
        let s = &mut received.snapshot;
        // Required as `Snapshot` requires them: revision, generated_at, roles, users,
        // api_keys, sources, revoked_sessions, policies.
        let mut seen = [false; 8];
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Revision => {
                    s.revision = map.next_value()?;
                    seen[0] = true;
                }
                Field::Epoch => s.epoch = map.next_value()?,
                Field::GeneratedAt => {
                    s.generated_at = map.next_value()?;
                    seen[1] = true;
                }
                Field::Roles => {
                    s.roles = map.next_value()?;
                    seen[2] = true;
                }
                Field::Users => {
                    map.next_value_seed(UserList(&mut received.users))?;
                    seen[3] = true;
                }
                Field::ApiKeys => {
                    map.next_value_seed(KeyList(&mut received.keys))?;
                    seen[4] = true;
                }
                Field::Sources => {
                    s.sources = map.next_value()?;
                    seen[5] = true;
                }
                Field::RevokedSessions => {
                    s.revoked_sessions = map.next_value()?;
                    seen[6] = true;
                }
                Field::Policies => {
                    s.policies = map.next_value()?;
                    seen[7] = true;
                }
                Field::JwtIssuers => s.jwt_issuers = map.next_value()?,
                // The control plane's announcement of how many keys follow.
                Field::ApiKeyCount => received.keys.reserve(map.next_value()?),
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        const NAMES: [&str; 8] = [
            "revision",
            "generated_at",
            "roles",
            "users",
            "api_keys",
            "sources",
            "revoked_sessions",
            "policies",
        ];
        if let Some((name, _)) = NAMES.iter().zip(seen).find(|(_, seen)| !seen) {
            return Err(de::Error::missing_field(name));
        }
        Ok(received)
    }
}

/// Buffers one element's strings are read into, reused from element to element: a
/// snapshot's 10,000 users and 100,000 keys are read without an allocation per field.
/// What outlives the parse (interned names, users' names and e-mails) is then allocated
/// together, not scattered among the pages of a hundred thousand freed temporaries that
/// the allocator could not give back while one live string sat on each.
#[derive(Default)]
struct Scratch {
    strings: [String; 4],
    lists: [List; 4],
    teams: Vec<(String, TeamRole)>,
    team_count: usize,
}

/// A list of strings read into reused buffers: `items[..len]`.
#[derive(Default)]
struct List {
    items: Vec<String>,
    len: usize,
}

impl List {
    fn as_slice(&self) -> &[String] {
        self.items.get(..self.len).unwrap_or_default()
    }
}

/// Reads a string into a reused buffer.
struct IntoString<'s>(&'s mut String);

impl<'de> DeserializeSeed<'de> for IntoString<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IntoString<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.0.clear();
        self.0.push_str(value);
        Ok(())
    }
}

/// Reads a list of strings into a reused [`List`].
struct IntoList<'l>(&'l mut List);

impl<'de> DeserializeSeed<'de> for IntoList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for IntoList<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let list = self.0;
        list.len = 0;
        loop {
            if list.len == list.items.len() {
                list.items.push(String::new());
            }
            let Some(slot) = list.items.get_mut(list.len) else {
                return Ok(());
            };
            match seq.next_element_seed(IntoString(slot))? {
                Some(()) => list.len += 1,
                None => return Ok(()),
            }
        }
    }
}

/// The `users` array, each element added to the users as it is read.
struct UserList<'u>(&'u mut Users);

impl<'de> DeserializeSeed<'de> for UserList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for UserList<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of users")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut scratch = Scratch::default();
        while seq
            .next_element_seed(OneUser {
                users: &mut *self.0,
                scratch: &mut scratch,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One element of `users`, the fields of the wire `UserEntry`.
struct OneUser<'a> {
    users: &'a mut Users,
    scratch: &'a mut Scratch,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum UserField {
    Name,
    Email,
    Disabled,
    Roles,
    Teams,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for OneUser<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneUser<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Scratch {
            strings: [name, email, ..],
            lists: [roles, ..],
            teams,
            team_count,
        } = self.scratch;
        // name, email, disabled, roles, teams: all required, as `UserEntry` has them.
        let mut seen = [false; 5];
        let mut disabled = false;
        while let Some(field) = map.next_key::<UserField>()? {
            match field {
                UserField::Name => map.next_value_seed(IntoString(name))?,
                UserField::Email => map.next_value_seed(IntoString(email))?,
                UserField::Disabled => disabled = map.next_value()?,
                UserField::Roles => map.next_value_seed(IntoList(roles))?,
                UserField::Teams => map.next_value_seed(IntoTeams {
                    teams: &mut *teams,
                    count: &mut *team_count,
                })?,
                UserField::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            }
            seen[field as usize] = true;
        }
        const NAMES: [&str; 5] = ["name", "email", "disabled", "roles", "teams"];
        if let Some((name, _)) = NAMES.iter().zip(seen).find(|(_, seen)| !seen) {
            return Err(de::Error::missing_field(name));
        }
        self.users.push(UserFields {
            name,
            email,
            disabled,
            roles: roles.as_slice(),
            teams: teams.get(..*team_count).unwrap_or_default(),
        });
        Ok(())
    }
}

/// A user's `teams` (`{"team", "role"}` objects) read into reused buffers.
struct IntoTeams<'t> {
    teams: &'t mut Vec<(String, TeamRole)>,
    count: &'t mut usize,
}

impl<'de> DeserializeSeed<'de> for IntoTeams<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for IntoTeams<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of team memberships")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        *self.count = 0;
        loop {
            if *self.count == self.teams.len() {
                self.teams.push((String::new(), TeamRole::Member));
            }
            let Some(slot) = self.teams.get_mut(*self.count) else {
                return Ok(());
            };
            match seq.next_element_seed(IntoTeam(slot))? {
                Some(()) => *self.count += 1,
                None => return Ok(()),
            }
        }
    }
}

/// One `{"team", "role"}` membership into a reused slot.
struct IntoTeam<'t>(&'t mut (String, TeamRole));

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum TeamField {
    Team,
    Role,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for IntoTeam<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IntoTeam<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a team membership")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (team, role) = self.0;
        let (mut has_team, mut has_role) = (false, false);
        while let Some(field) = map.next_key::<TeamField>()? {
            match field {
                TeamField::Team => {
                    map.next_value_seed(IntoString(team))?;
                    has_team = true;
                }
                TeamField::Role => {
                    *role = map.next_value()?;
                    has_role = true;
                }
                TeamField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (has_team, has_role) {
            (false, _) => Err(de::Error::missing_field("team")),
            (_, false) => Err(de::Error::missing_field("role")),
            _ => Ok(()),
        }
    }
}

/// The `api_keys` array, each element added to the keys as it is read.
struct KeyList<'k>(&'k mut Keys);

impl<'de> DeserializeSeed<'de> for KeyList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeyList<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of API keys")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut scratch = Scratch::default();
        while seq
            .next_element_seed(OneKey {
                keys: &mut *self.0,
                scratch: &mut scratch,
            })?
            .is_some()
        {}
        Ok(())
    }
}

/// One element of `api_keys`, the fields of the wire `ApiKeyEntry`.
struct OneKey<'a> {
    keys: &'a mut Keys,
    scratch: &'a mut Scratch,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum KeyField {
    KeyHash,
    Prefix,
    Namespace,
    OwnerName,
    Scopes,
    OwnerKind,
    Roles,
    Teams,
    HonouredIn,
    ExpiresAt,
    RevokedAt,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for OneKey<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for OneKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an API key")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Scratch {
            strings: [key_hash, prefix, namespace, owner_name],
            lists: [scopes, roles, teams, honoured_in],
            ..
        } = self.scratch;
        // Absent from control planes before keys carried roles, teams and namespaces.
        for list in [&mut *roles, &mut *teams, &mut *honoured_in] {
            list.len = 0;
        }
        // Required, as `ApiKeyEntry` has them: key_hash, prefix, namespace, owner_name,
        // scopes, owner_kind (the first six fields, in that order).
        let mut seen = [false; 6];
        let mut owner_kind = OwnerKind::User;
        let (mut expires_at, mut revoked_at) = (None, None);
        while let Some(field) = map.next_key::<KeyField>()? {
            match field {
                KeyField::KeyHash => map.next_value_seed(IntoString(key_hash))?,
                KeyField::Prefix => map.next_value_seed(IntoString(prefix))?,
                KeyField::Namespace => map.next_value_seed(IntoString(namespace))?,
                KeyField::OwnerName => map.next_value_seed(IntoString(owner_name))?,
                KeyField::Scopes => map.next_value_seed(IntoList(scopes))?,
                KeyField::OwnerKind => owner_kind = map.next_value()?,
                KeyField::Roles => map.next_value_seed(IntoList(roles))?,
                KeyField::Teams => map.next_value_seed(IntoList(teams))?,
                KeyField::HonouredIn => map.next_value_seed(IntoList(honoured_in))?,
                KeyField::ExpiresAt => expires_at = map.next_value()?,
                KeyField::RevokedAt => revoked_at = map.next_value()?,
                KeyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if let Some(seen) = seen.get_mut(field as usize) {
                *seen = true;
            }
        }
        const NAMES: [&str; 6] = ["key_hash", "prefix", "namespace", "owner_name", "scopes", "owner_kind"];
        if let Some((name, _)) = NAMES.iter().zip(seen).find(|(_, seen)| !seen) {
            return Err(de::Error::missing_field(name));
        }
        self.keys.push(KeyFields {
            key_hash,
            prefix,
            namespace,
            owner_kind,
            owner_name,
            scopes: scopes.as_slice(),
            roles: roles.as_slice(),
            teams: teams.as_slice(),
            honoured_in: honoured_in.as_slice(),
            expires_at,
            revoked_at,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use portcullis_wire::ApiKeyEntry;

    use super::*;

    fn key(hash: &str, owner: &str) -> ApiKeyEntry {
        ApiKeyEntry {
            key_hash: hash.into(),
            prefix: "pck_abc".into(),
            namespace: "shop".into(),
            owner_kind: OwnerKind::User,
            owner_name: owner.into(),
            scopes: vec!["read".into()],
            roles: vec!["viewer".into()],
            teams: Vec::new(),
            honoured_in: vec!["web".into()],
            expires_at: Some(5),
            revoked_at: None,
        }
    }

    #[test]
    fn a_wire_snapshot_reads_the_same_streamed_as_whole() {
        let snapshot = Snapshot {
            revision: 7,
            epoch: "e".into(),
            generated_at: 1,
            api_keys: vec![
                key(&portcullis_wire::api_key::hash_hex("pck_a"), "alice"),
                key(&portcullis_wire::api_key::hash_hex("pck_b"), "alice"),
                key("not-hex", "bob"),
            ],
            users: vec![portcullis_wire::UserEntry {
                name: "alice".into(),
                email: "alice@example.com".into(),
                disabled: false,
                roles: vec!["viewer".into()],
                teams: Vec::new(),
            }],
            revoked_sessions: vec!["s".into()],
            ..Default::default()
        };
        let json = serde_json::to_vec(&snapshot).unwrap();
        let received: Received = serde_json::from_reader(&json[..]).unwrap();
        assert_eq!(received.keys.len(), 2, "a hash that is not hex is left out");
        assert_eq!(received.users.len(), 1);
        assert!(received.snapshot.api_keys.is_empty() && received.snapshot.users.is_empty());
        let whole = Snapshot {
            api_keys: Vec::new(),
            users: Vec::new(),
            ..snapshot.clone()
        };
        assert_eq!(received.snapshot, whole);
        let from = Received::from_snapshot(snapshot);
        assert_eq!((from.keys.len(), from.users.len()), (2, 1));
    }

    #[test]
    fn streamed_into_reused_buffers_answers_as_the_whole_snapshot_does() {
        use portcullis_wire::{RoleEntry, TeamMembership, UserEntry};

        use crate::policy::identity::Directory;
        let user = |name: &str, roles: &[&str], teams: &[(&str, TeamRole)]| UserEntry {
            name: name.into(),
            email: format!("{name}@example.com"),
            disabled: name == "eve",
            roles: roles.iter().map(|r| r.to_string()).collect(),
            teams: teams
                .iter()
                .map(|(team, role)| TeamMembership {
                    team: team.to_string(),
                    role: *role,
                })
                .collect(),
        };
        let granted = |hash: &str, owner: &str, scopes: &[&str], roles: &[&str], honoured: &[&str]| ApiKeyEntry {
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            teams: vec!["ops".into()],
            honoured_in: honoured.iter().map(|s| s.to_string()).collect(),
            ..key(&portcullis_wire::api_key::hash_hex(hash), owner)
        };
        let snapshot = Snapshot {
            revision: 3,
            roles: vec![
                RoleEntry {
                    name: "viewer".into(),
                    scopes: vec!["read".into()],
                },
                RoleEntry {
                    name: "editor".into(),
                    scopes: vec!["read".into(), "write".into()],
                },
            ],
            // Lists of different lengths one after the other: a reused buffer must not
            // keep a longer predecessor's tail.
            users: vec![
                user(
                    "alice",
                    &["viewer", "editor"],
                    &[("ops", TeamRole::Admin), ("web", TeamRole::Member)],
                ),
                user("bob", &["viewer"], &[("ops", TeamRole::Viewer)]),
                user("carol", &[], &[]),
                user("eve", &["editor"], &[]),
            ],
            api_keys: vec![
                granted(
                    "pck_a",
                    "alice",
                    &["read", "write"],
                    &["viewer", "editor"],
                    &["web", "api"],
                ),
                granted("pck_b", "alice", &["read"], &[], &[]),
                granted("pck_c", "bob", &["read", "write"], &["viewer"], &["web"]),
                granted("pck_d", "eve", &["read"], &[], &[]),
            ],
            ..Default::default()
        };
        let json = serde_json::to_vec(&snapshot).unwrap();
        let streamed: Received = serde_json::from_reader(&json[..]).unwrap();
        let streamed = Directory::with_parts(&streamed.snapshot, streamed.users, streamed.keys);
        let whole = Directory::new(&snapshot);
        for name in ["alice", "bob", "carol", "eve", "nobody"] {
            assert_eq!(streamed.user(name), whole.user(name), "{name}");
        }
        for presented in ["pck_a", "pck_b", "pck_c", "pck_d", "pck_e"] {
            for namespace in ["shop", "web", "api"] {
                assert_eq!(
                    streamed.api_key(presented, namespace, 4),
                    whole.api_key(presented, namespace, 4),
                    "{presented} in {namespace}"
                );
            }
        }
        assert_eq!(whole.user("alice").unwrap().teams.len(), 2);
        assert!(whole.api_key("pck_a", "web", 4).is_ok());
    }

    #[test]
    fn unknown_fields_are_skipped_and_required_ones_required() {
        let json = r#"{"revision":1,"generated_at":0,"roles":[],"users":[],"api_keys":[],"sources":[],
            "revoked_sessions":[],"policies":[],"future":{"x":[1,2]}}"#;
        assert!(serde_json::from_str::<Received>(json).is_ok());
        // The control plane's count ahead of the keys (a hint; a wrong one changes nothing).
        let counted = r#"{"revision":1,"generated_at":0,"roles":[],"users":[],"api_key_count":3,"api_keys":[],
            "sources":[],"revoked_sessions":[],"policies":[]}"#;
        assert_eq!(serde_json::from_str::<Received>(counted).unwrap().keys.len(), 0);
        let bad_count = counted.replace("3", "-3");
        assert!(serde_json::from_str::<Received>(&bad_count).is_err());
        let err = serde_json::from_str::<Received>(r#"{"revision":1}"#).unwrap_err();
        assert!(err.to_string().contains("generated_at"), "{err}");
        let bad_key = r#"{"revision":1,"generated_at":0,"roles":[],"users":[],"sources":[],
            "revoked_sessions":[],"policies":[],"api_keys":[{"key_hash":"00"}]}"#;
        assert!(serde_json::from_str::<Received>(bad_key).is_err());
    }
}
