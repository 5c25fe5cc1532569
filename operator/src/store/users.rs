//! Users, their roles and password hashes.

use std::collections::BTreeMap;

use sqlx::{AnyConnection, Row};

use super::{NameTable, Result, Store, StoreError, Upsert, WriteOutcome, flag, from_json, to_json, unix_now};

/// A user as the database holds it (its password lives apart, see [`PasswordRow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub email: String,
    pub display_name: Option<String>,
    pub disabled: bool,
    /// Sorted and without duplicates.
    pub roles: Vec<String>,
    pub preferences: BTreeMap<String, String>,
    pub require_two_factor: bool,
}

impl UserRow {
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        UserRow {
            name: name.into(),
            email: email.into(),
            display_name: None,
            disabled: false,
            roles: Vec::new(),
            preferences: BTreeMap::new(),
            require_two_factor: false,
        }
    }

    pub fn with_roles(mut self, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.roles = roles.into_iter().map(Into::into).collect();
        self.roles.sort();
        self.roles.dedup();
        self
    }
}

/// A user's password hash, and the digest of the Secret content it was set from (none
/// when the user set it through the token service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordRow {
    pub hash: String,
    pub source_digest: Option<String>,
}

/// E-mail addresses are unique regardless of case.
fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

impl Store {
    /// Creates or updates a user and its roles. Fails with
    /// [`StoreError::MissingReference`] when a role does not exist and with
    /// [`StoreError::EmailTaken`] when another user has the e-mail. Disabling a user
    /// revokes its sessions in the same transaction.
    pub async fn upsert_user(&self, user: &UserRow) -> Result<WriteOutcome> {
        let mut user = user.clone();
        user.roles.sort();
        user.roles.dedup();
        let outcome = self.upsert(&user).await;
        // The unique index on the e-mail decides (also between two racing writers).
        match outcome {
            Err(StoreError::Database(sqlx::Error::Database(db))) if db.is_unique_violation() => {
                let owner = self
                    .find_user_by_email(&user.email)
                    .await?
                    .map(|u| u.name)
                    .unwrap_or_default();
                Err(StoreError::EmailTaken {
                    email: user.email.clone(),
                    owner,
                })
            }
            other => other,
        }
    }

    /// Deletes a user with everything that hangs off it: roles, team memberships,
    /// sessions, reset tokens (by cascade) and its API keys.
    pub async fn delete_user(&self, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_user", |tx| {
            self.query("DELETE FROM api_keys WHERE owner_kind = 'user' AND owner_name = ?")
                .bind(name)
                .execute(&mut **tx)
                .await?;
            let deleted = self
                .query("DELETE FROM users WHERE name = ?")
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    pub async fn get_user(&self, name: &str) -> Result<Option<UserRow>> {
        let mut conn = self.pool.acquire().await?;
        self.load_user(&mut conn, name).await
    }

    /// The scopes a user holds through its roles, or `None` when there is no such user.
    pub async fn user_scopes(&self, name: &str) -> Result<Option<std::collections::BTreeSet<String>>> {
        let rows = self
            .query(
                "SELECT u.name AS name, r.scopes AS scopes FROM users u \
                 LEFT JOIN user_roles ur ON ur.user_name = u.name \
                 LEFT JOIN roles r ON r.name = ur.role_name WHERE u.name = ?",
            )
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut scopes = std::collections::BTreeSet::new();
        for row in &rows {
            if let Some(json) = row.try_get::<Option<String>, _>("scopes")? {
                scopes.extend(from_json::<Vec<String>>("roles.scopes", &json)?);
            }
        }
        Ok(Some(scopes))
    }

    /// A user with its roles, in one query.
    async fn load_user(&self, conn: &mut AnyConnection, name: &str) -> Result<Option<UserRow>> {
        let rows = self
            .query(
                "SELECT u.name AS name, u.email AS email, u.display_name AS display_name, u.disabled AS disabled, \
                 u.preferences AS preferences, u.require_two_factor AS require_two_factor, ur.role_name AS role_name \
                 FROM users u LEFT JOIN user_roles ur ON ur.user_name = u.name WHERE u.name = ? ORDER BY ur.role_name",
            )
            .bind(name)
            .fetch_all(conn)
            .await?;
        let Some(first) = rows.first() else { return Ok(None) };
        let mut roles = Vec::new();
        for row in &rows {
            if let Some(role) = row.try_get::<Option<String>, _>("role_name")? {
                roles.push(role);
            }
        }
        Ok(Some(decode_user(first, roles)?))
    }

    /// Looks a user up by e-mail, ignoring case.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        let name: Option<String> = sqlx::query_scalar(self.sql("SELECT name FROM users WHERE email_key = ?"))
            .bind(email_key(email))
            .fetch_optional(&self.pool)
            .await?;
        match name {
            Some(name) => self.get_user(&name).await,
            None => Ok(None),
        }
    }

    /// Names of the users holding a role (to re-reconcile them when it changes).
    pub async fn users_with_role(&self, role: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(self.sql("SELECT user_name FROM user_roles WHERE role_name = ? ORDER BY user_name"))
                .bind(role)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Sets a user's password hash. `source_digest` is the digest of the Secret content
    /// it came from; `None` (the user chose a new password) keeps the recorded digest,
    /// so that the operator does not re-apply an unchanged Secret over the user's choice.
    /// Not part of any snapshot.
    pub async fn set_password(&self, user: &str, hash: &str, source_digest: Option<&str>) -> Result<()> {
        unversioned_write!(self, "set_password", |tx| {
            let updated = self
                .query("UPDATE users SET password_hash = ?, password_source_digest = COALESCE(?, password_source_digest), updated_at = ? WHERE name = ?")
                .bind(hash)
                .bind(source_digest)
                .bind(unix_now())
                .bind(user)
                .execute(&mut **tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    kind: "user",
                    name: user.to_string(),
                });
            }
            Ok(())
        })
    }

    pub async fn password(&self, user: &str) -> Result<Option<PasswordRow>> {
        let row = self
            .query("SELECT password_hash, password_source_digest FROM users WHERE name = ?")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let hash: Option<String> = row.try_get("password_hash")?;
        Ok(match hash {
            Some(hash) => Some(PasswordRow {
                hash,
                source_digest: row.try_get("password_source_digest")?,
            }),
            None => None,
        })
    }
}

impl Upsert for UserRow {
    const WHAT: &'static str = "upsert_user";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_user(conn, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        store.require_names(conn, NameTable::Roles, &self.roles).await?;
        let key = email_key(&self.email);
        let preferences = to_json(&self.preferences)?;
        let now = unix_now();
        if current.is_some() {
            store
                .query("UPDATE users SET email = ?, email_key = ?, display_name = ?, disabled = ?, preferences = ?, require_two_factor = ?, updated_at = ? WHERE name = ?")
                .bind(&self.email)
                .bind(&key)
                .bind(&self.display_name)
                .bind(flag(self.disabled))
                .bind(&preferences)
                .bind(flag(self.require_two_factor))
                .bind(now)
                .bind(&self.name)
                .execute(&mut *conn)
                .await?;
        } else {
            store
                .query("INSERT INTO users (name, email, email_key, display_name, disabled, preferences, require_two_factor, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&self.name)
                .bind(&self.email)
                .bind(&key)
                .bind(&self.display_name)
                .bind(flag(self.disabled))
                .bind(&preferences)
                .bind(flag(self.require_two_factor))
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
        let had: &[String] = current.map_or(&[], |c| &c.roles);
        for role in had.iter().filter(|r| !self.roles.contains(r)) {
            store
                .query("DELETE FROM user_roles WHERE user_name = ? AND role_name = ?")
                .bind(&self.name)
                .bind(role)
                .execute(&mut *conn)
                .await?;
        }
        for role in self.roles.iter().filter(|r| !had.contains(r)) {
            store
                .query("INSERT INTO user_roles (user_name, role_name) VALUES (?, ?)")
                .bind(&self.name)
                .bind(role)
                .execute(&mut *conn)
                .await?;
        }
        // Disabling a user revokes its sessions in the same transaction.
        if self.disabled && !current.is_some_and(|c| c.disabled) {
            store
                .query("UPDATE sessions SET revoked_at = ? WHERE user_name = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(&self.name)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

fn decode_user(row: &sqlx::any::AnyRow, roles: Vec<String>) -> Result<UserRow> {
    Ok(UserRow {
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        roles,
        preferences: from_json("users.preferences", &row.try_get::<String, _>("preferences")?)?,
        require_two_factor: row.try_get::<i64, _>("require_two_factor")? != 0,
    })
}
