//! API keys: hashes of issued keys with owner, scopes, expiry and rotation grace.

use portcullis_wire::OwnerKind;
use sqlx::Row;

use super::{Result, Store, StoreError, WriteOutcome, from_json, to_json};

/// One issued API key. An APIKey object has one current key, plus the keys it replaced
/// while their rotation grace period runs (`revoked_at` in the future).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRow {
    /// Hex SHA-256 of the key.
    pub key_hash: String,
    pub namespace: String,
    pub name: String,
    pub prefix: String,
    pub owner_kind: OwnerKind,
    pub owner_name: String,
    /// Sorted and without duplicates.
    pub scopes: Vec<String>,
    /// Global roles of its owner the key carries (none unless the APIKey asked for them).
    /// Sorted and without duplicates, like the next two.
    pub roles: Vec<String>,
    /// Teams whose membership role the key carries.
    pub teams: Vec<String>,
    /// Namespaces besides `namespace` whose sidecars honour the key.
    pub honoured_in: Vec<String>,
    pub expires_at: Option<i64>,
    /// When the key stops being accepted (may be in the future during a rotation grace).
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

impl ApiKeyRow {
    /// A User's key in `namespace` made now from the key itself, granting `scopes` and
    /// nothing else (no roles, teams or other namespaces, no expiry): for tools and
    /// tests. The APIKey controller builds its rows from the object's grants.
    pub fn user_key(
        key: &str,
        namespace: impl Into<String>,
        name: impl Into<String>,
        owner: impl Into<String>,
        scopes: impl IntoIterator<Item = impl Into<String>>,
    ) -> ApiKeyRow {
        ApiKeyRow {
            key_hash: crate::credentials::hash_api_key(key),
            namespace: namespace.into(),
            name: name.into(),
            prefix: crate::credentials::display_prefix(key),
            owner_kind: OwnerKind::User,
            owner_name: owner.into(),
            scopes: scopes.into_iter().map(Into::into).collect(),
            roles: Vec::new(),
            teams: Vec::new(),
            honoured_in: Vec::new(),
            expires_at: None,
            revoked_at: None,
            created_at: portcullis_wire::unix_now(),
        }
        .normalized()
    }

    /// Lists sorted and without duplicates, as they are stored and compared.
    fn normalized(&self) -> ApiKeyRow {
        let mut key = self.clone();
        for list in [&mut key.scopes, &mut key.roles, &mut key.teams, &mut key.honoured_in] {
            list.sort();
            list.dedup();
        }
        key
    }
}

/// What the current keys of an APIKey object grant: set together, in one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGrants {
    pub owner_kind: OwnerKind,
    pub owner_name: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub teams: Vec<String>,
    pub honoured_in: Vec<String>,
    pub expires_at: Option<i64>,
}

impl KeyGrants {
    /// A grant of `scopes` alone, in the key's own namespace: what a key gets unless its
    /// APIKey asks for more.
    pub fn scopes_only(
        owner_kind: OwnerKind,
        owner_name: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> KeyGrants {
        KeyGrants {
            owner_kind,
            owner_name: owner_name.to_string(),
            scopes: scopes.to_vec(),
            roles: Vec::new(),
            teams: Vec::new(),
            honoured_in: Vec::new(),
            expires_at,
        }
    }

    /// Lists sorted and without duplicates, as they are stored and compared.
    pub fn normalized(&self) -> KeyGrants {
        let mut grants = self.clone();
        for list in [
            &mut grants.scopes,
            &mut grants.roles,
            &mut grants.teams,
            &mut grants.honoured_in,
        ] {
            list.sort();
            list.dedup();
        }
        grants
    }

    /// Whether a (current) key row already grants exactly this.
    pub fn held_by(&self, key: &ApiKeyRow) -> bool {
        key.owner_kind == self.owner_kind
            && key.owner_name == self.owner_name
            && key.scopes == self.scopes
            && key.roles == self.roles
            && key.teams == self.teams
            && key.honoured_in == self.honoured_in
            && key.expires_at == self.expires_at
    }
}

/// `SELECT <every column> FROM api_keys <rest>`, as the `&'static str` sqlx wants.
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT key_hash, namespace, name, prefix, owner_kind, owner_name, scopes, roles, teams, honoured_in, expires_at, revoked_at, created_at FROM api_keys ",
            $rest
        )
    };
}
pub(super) use select_keys;

impl Store {
    /// Records a newly issued key. Recording the same key again changes nothing.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<WriteOutcome> {
        let key = key.normalized();
        versioned_write!(self, "insert_api_key", |tx| {
            let existing = self
                .query(select_keys!("WHERE key_hash = ?"))
                .bind(&key.key_hash)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| decode_api_key(&row))
                .transpose()?;
            match existing {
                Some(current) if current == key => Ok(false),
                Some(current) => Err(StoreError::Corrupt {
                    what: "api_keys",
                    reason: format!(
                        "key with prefix {} already issued to {}/{}",
                        current.prefix, current.namespace, current.name
                    ),
                }),
                None => {
                    self.insert_key_row(tx, &key).await?;
                    Ok(true)
                }
            }
        })
    }

    /// Issues a new key for an APIKey object and, when `retire_others_at` is given,
    /// retires its other keys then (now, or the end of a rotation grace period), in one
    /// transaction.
    pub async fn issue_api_key(&self, key: &ApiKeyRow, retire_others_at: Option<i64>) -> Result<WriteOutcome> {
        let key = key.normalized();
        versioned_write!(self, "issue_api_key", |tx| {
            if let Some(at) = retire_others_at {
                self.query(
                    "UPDATE api_keys SET revoked_at = ? WHERE namespace = ? AND name = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                )
                .bind(at)
                .bind(&key.namespace)
                .bind(&key.name)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            self.insert_key_row(tx, &key).await?;
            Ok(true)
        })
    }

    /// Sets owner, scopes, roles, teams, namespaces and expiry of every key of an APIKey object that is not
    /// being retired (keys in a rotation grace keep what they had).
    pub async fn update_api_key_grants(&self, namespace: &str, name: &str, grants: &KeyGrants) -> Result<WriteOutcome> {
        let grants = grants.normalized();
        let stale = |keys: &[ApiKeyRow]| keys.iter().any(|k| k.revoked_at.is_none() && !grants.held_by(k));
        if !stale(&self.api_keys_of(namespace, name).await?) {
            return self.unchanged().await;
        }
        let scopes = to_json(&grants.scopes)?;
        let roles = to_json(&grants.roles)?;
        let teams = to_json(&grants.teams)?;
        let honoured_in = to_json(&grants.honoured_in)?;
        versioned_write!(self, "update_api_key_grants", |tx| {
            if !stale(&self.keys_of(tx, namespace, name).await?) {
                return Ok(false);
            }
            self.query("UPDATE api_keys SET owner_kind = ?, owner_name = ?, scopes = ?, roles = ?, teams = ?, honoured_in = ?, expires_at = ? WHERE namespace = ? AND name = ? AND revoked_at IS NULL")
                .bind(grants.owner_kind.as_str())
                .bind(&grants.owner_name)
                .bind(&scopes)
                .bind(&roles)
                .bind(&teams)
                .bind(&honoured_in)
                .bind(grants.expires_at)
                .bind(namespace)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(true)
        })
    }

    /// Retires every current key of an APIKey object at `at` (now, or the end of a
    /// rotation grace period). Keys already retired earlier keep their date.
    pub async fn revoke_api_keys(&self, namespace: &str, name: &str, at: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_api_keys", |tx| {
            let updated = self
                .query("UPDATE api_keys SET revoked_at = ? WHERE namespace = ? AND name = ? AND (revoked_at IS NULL OR revoked_at > ?)")
                .bind(at)
                .bind(namespace)
                .bind(name)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Retires one key (by hash) at `at`.
    pub async fn revoke_api_key(&self, key_hash: &str, at: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_api_key", |tx| {
            let updated = self
                .query(
                    "UPDATE api_keys SET revoked_at = ? WHERE key_hash = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                )
                .bind(at)
                .bind(key_hash)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Forgets every key of an APIKey object.
    pub async fn delete_api_keys(&self, namespace: &str, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_api_keys", |tx| {
            let deleted = self
                .query("DELETE FROM api_keys WHERE namespace = ? AND name = ?")
                .bind(namespace)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    /// Keys of an APIKey object, newest first.
    pub async fn api_keys_of(&self, namespace: &str, name: &str) -> Result<Vec<ApiKeyRow>> {
        let mut conn = self.pool.acquire().await?;
        self.keys_of(&mut conn, namespace, name).await
    }

    pub async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRow>> {
        self.query(select_keys!("WHERE key_hash = ?"))
            .bind(key_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_api_key(&row))
            .transpose()
    }

    async fn insert_key_row(&self, conn: &mut sqlx::AnyConnection, key: &ApiKeyRow) -> Result<()> {
        self.query(
            "INSERT INTO api_keys (key_hash, namespace, name, prefix, owner_kind, owner_name, scopes, roles, teams, honoured_in, expires_at, revoked_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.key_hash)
        .bind(&key.namespace)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key.owner_kind.as_str())
        .bind(&key.owner_name)
        .bind(to_json(&key.scopes)?)
        .bind(to_json(&key.roles)?)
        .bind(to_json(&key.teams)?)
        .bind(to_json(&key.honoured_in)?)
        .bind(key.expires_at)
        .bind(key.revoked_at)
        .bind(key.created_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn keys_of(&self, conn: &mut sqlx::AnyConnection, namespace: &str, name: &str) -> Result<Vec<ApiKeyRow>> {
        self.query(select_keys!(
            "WHERE namespace = ? AND name = ? ORDER BY created_at DESC, key_hash"
        ))
        .bind(namespace)
        .bind(name)
        .fetch_all(conn)
        .await?
        .iter()
        .map(decode_api_key)
        .collect()
    }
}

pub(super) fn decode_api_key(row: &sqlx::any::AnyRow) -> Result<ApiKeyRow> {
    let kind: String = row.try_get("owner_kind")?;
    Ok(ApiKeyRow {
        key_hash: row.try_get("key_hash")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        owner_kind: OwnerKind::parse(&kind).ok_or_else(|| StoreError::Corrupt {
            what: "api_keys.owner_kind",
            reason: format!("unknown kind {kind:?}"),
        })?,
        owner_name: row.try_get("owner_name")?,
        scopes: from_json("api_keys.scopes", &row.try_get::<String, _>("scopes")?)?,
        roles: optional_list(row, "roles", "api_keys.roles")?,
        teams: optional_list(row, "teams", "api_keys.teams")?,
        honoured_in: optional_list(row, "honoured_in", "api_keys.honoured_in")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A JSON list column added by a later migration: NULL on older rows reads as empty.
fn optional_list(row: &sqlx::any::AnyRow, column: &str, what: &'static str) -> Result<Vec<String>> {
    match row.try_get::<Option<String>, _>(column)? {
        Some(text) => from_json(what, &text),
        None => Ok(Vec::new()),
    }
}
