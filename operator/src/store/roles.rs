use sqlx::Row;

use super::{Result, Store, WriteOutcome, flag, from_json, to_json, unix_now};

/// A role as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRow {
    pub name: String,
    /// Sorted and without duplicates, so that comparing rows compares meaning.
    pub scopes: Vec<String>,
    pub description: Option<String>,
    /// Created by bootstrap (admin, maintainer, viewer).
    pub builtin: bool,
}

impl RoleRow {
    pub fn new(name: impl Into<String>, scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let mut scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        scopes.sort();
        scopes.dedup();
        RoleRow {
            name: name.into(),
            scopes,
            description: None,
            builtin: false,
        }
    }
}

impl Store {
    /// Creates or updates a role.
    pub async fn upsert_role(&self, role: &RoleRow) -> Result<WriteOutcome> {
        let mut role = role.clone();
        role.scopes.sort();
        role.scopes.dedup();
        if self.get_role(&role.name).await?.as_ref() == Some(&role) {
            return self.unchanged().await;
        }
        let scopes = to_json(&role.scopes)?;
        versioned_write!(self, "upsert_role", |tx| {
            let current = self
                .query("SELECT name, scopes, description, builtin FROM roles WHERE name = ?")
                .bind(&role.name)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| decode_role(&row))
                .transpose()?;
            let now = unix_now();
            match current {
                Some(existing) if existing == role => return Ok(false),
                Some(_) => {
                    self.query(
                        "UPDATE roles SET scopes = ?, description = ?, builtin = ?, updated_at = ? WHERE name = ?",
                    )
                    .bind(&scopes)
                    .bind(&role.description)
                    .bind(flag(role.builtin))
                    .bind(now)
                    .bind(&role.name)
                    .execute(&mut **tx)
                    .await?;
                }
                None => {
                    self.query("INSERT INTO roles (name, scopes, description, builtin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
                        .bind(&role.name)
                        .bind(&scopes)
                        .bind(&role.description)
                        .bind(flag(role.builtin))
                        .bind(now)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Ok(true)
        })
    }

    /// Deletes a role; users lose it (their `user_roles` rows cascade).
    pub async fn delete_role(&self, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_role", |tx| {
            let deleted = self
                .query("DELETE FROM roles WHERE name = ?")
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    pub async fn get_role(&self, name: &str) -> Result<Option<RoleRow>> {
        self.query("SELECT name, scopes, description, builtin FROM roles WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_role(&row))
            .transpose()
    }

    pub async fn list_roles(&self) -> Result<Vec<RoleRow>> {
        self.query("SELECT name, scopes, description, builtin FROM roles ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_role)
            .collect()
    }
}

pub(super) fn decode_role(row: &sqlx::any::AnyRow) -> Result<RoleRow> {
    Ok(RoleRow {
        name: row.try_get("name")?,
        scopes: from_json("roles.scopes", &row.try_get::<String, _>("scopes")?)?,
        description: row.try_get("description")?,
        builtin: row.try_get::<i64, _>("builtin")? != 0,
    })
}
