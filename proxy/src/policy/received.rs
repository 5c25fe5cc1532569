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

use portcullis_wire::{OwnerKind, Snapshot, UserEntry};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::identity::{KeyFields, Keys, Users};

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
        while let Some(user) = seq.next_element::<UserEntry>()? {
            self.0.push(&user);
        }
        Ok(())
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
        while seq.next_element_seed(OneKey(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// One element of `api_keys`, the fields of the wire `ApiKeyEntry`.
struct OneKey<'k>(&'k mut Keys);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum KeyField {
    KeyHash,
    Prefix,
    Namespace,
    OwnerKind,
    OwnerName,
    Scopes,
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
        let mut key_hash: Option<String> = None;
        let mut prefix: Option<String> = None;
        let mut namespace: Option<String> = None;
        let mut owner_kind: Option<OwnerKind> = None;
        let mut owner_name: Option<String> = None;
        let mut scopes: Option<Vec<String>> = None;
        // Absent from control planes before keys carried roles, teams and namespaces.
        let (mut roles, mut teams, mut honoured_in) = (Vec::new(), Vec::new(), Vec::new());
        let mut expires_at: Option<i64> = None;
        let mut revoked_at: Option<i64> = None;
        while let Some(field) = map.next_key::<KeyField>()? {
            match field {
                KeyField::KeyHash => key_hash = Some(map.next_value()?),
                KeyField::Prefix => prefix = Some(map.next_value()?),
                KeyField::Namespace => namespace = Some(map.next_value()?),
                KeyField::OwnerKind => owner_kind = Some(map.next_value()?),
                KeyField::OwnerName => owner_name = Some(map.next_value()?),
                KeyField::Scopes => scopes = Some(map.next_value()?),
                KeyField::Roles => roles = map.next_value()?,
                KeyField::Teams => teams = map.next_value()?,
                KeyField::HonouredIn => honoured_in = map.next_value()?,
                KeyField::ExpiresAt => expires_at = map.next_value()?,
                KeyField::RevokedAt => revoked_at = map.next_value()?,
                KeyField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = de::Error::missing_field;
        self.0.push(KeyFields {
            key_hash: &key_hash.ok_or_else(|| missing("key_hash"))?,
            prefix: &prefix.ok_or_else(|| missing("prefix"))?,
            namespace: &namespace.ok_or_else(|| missing("namespace"))?,
            owner_kind: owner_kind.ok_or_else(|| missing("owner_kind"))?,
            owner_name: &owner_name.ok_or_else(|| missing("owner_name"))?,
            scopes: scopes.ok_or_else(|| missing("scopes"))?,
            roles,
            teams,
            honoured_in,
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
