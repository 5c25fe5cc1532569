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
    pub expires_at: Option<i64>,
    /// When the key stops being accepted (may be in the future during a rotation grace).
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// `SELECT <every column> FROM api_keys <rest>`, as the `&'static str` sqlx wants.
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT key_hash, namespace, name, prefix, owner_kind, owner_name, scopes, expires_at, revoked_at, created_at FROM api_keys ",
            $rest
        )
    };
}
pub(super) use select_keys;

impl Store {
    /// Records a newly issued key. Recording the same key again changes nothing.
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<WriteOutcome> {
        let mut key = key.clone();
        key.scopes.sort();
        key.scopes.dedup();
        let scopes = to_json(&key.scopes)?;
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
                    self.insert_key_row(tx, &key, &scopes).await?;
                    Ok(true)
                }
            }
        })
    }

    /// Issues a new key for an APIKey object and, when `retire_others_at` is given,
    /// retires its other keys then (now, or the end of a rotation grace period), in one
    /// transaction.
    pub async fn issue_api_key(&self, key: &ApiKeyRow, retire_others_at: Option<i64>) -> Result<WriteOutcome> {
        let mut key = key.clone();
        key.scopes.sort();
        key.scopes.dedup();
        let scopes = to_json(&key.scopes)?;
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
            self.insert_key_row(tx, &key, &scopes).await?;
            Ok(true)
        })
    }

    /// Sets owner, scopes and expiry of every key of an APIKey object that is not
    /// being retired (keys in a rotation grace keep what they had).
    pub async fn update_api_key_grants(
        &self,
        namespace: &str,
        name: &str,
        owner_kind: OwnerKind,
        owner_name: &str,
        scopes: &[String],
        expires_at: Option<i64>,
    ) -> Result<WriteOutcome> {
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let scopes_json = to_json(&scopes)?;
        let stale = |keys: &[ApiKeyRow]| {
            keys.iter().any(|k| {
                k.revoked_at.is_none()
                    && (k.owner_kind != owner_kind
                        || k.owner_name != owner_name
                        || k.scopes != scopes
                        || k.expires_at != expires_at)
            })
        };
        if !stale(&self.api_keys_of(namespace, name).await?) {
            return self.unchanged().await;
        }
        versioned_write!(self, "update_api_key_grants", |tx| {
            if !stale(&self.keys_of(tx, namespace, name).await?) {
                return Ok(false);
            }
            self.query("UPDATE api_keys SET owner_kind = ?, owner_name = ?, scopes = ?, expires_at = ? WHERE namespace = ? AND name = ? AND revoked_at IS NULL")
                .bind(owner_kind.as_str())
                .bind(owner_name)
                .bind(&scopes_json)
                .bind(expires_at)
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

    async fn insert_key_row(&self, conn: &mut sqlx::AnyConnection, key: &ApiKeyRow, scopes_json: &str) -> Result<()> {
        self.query(
            "INSERT INTO api_keys (key_hash, namespace, name, prefix, owner_kind, owner_name, scopes, expires_at, revoked_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.key_hash)
        .bind(&key.namespace)
        .bind(&key.name)
        .bind(&key.prefix)
        .bind(key.owner_kind.as_str())
        .bind(&key.owner_name)
        .bind(scopes_json)
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
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        created_at: row.try_get("created_at")?,
    })
}
