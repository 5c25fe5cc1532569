//! Roles: named sets of scopes, and the built-in ones bootstrap creates.

use sqlx::{AnyConnection, Row};

use super::{Result, Store, Upsert, WriteOutcome, flag, from_json, to_json, unix_now};

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

/// The built-in roles: admin, maintainer, viewer.
pub fn builtin_roles() -> Vec<RoleRow> {
    let role = |name: &str, scopes: &[&str], description: &str| {
        let mut row = RoleRow::new(name, scopes.iter().copied());
        row.description = Some(description.to_string());
        row.builtin = true;
        row
    };
    vec![
        role(
            "admin",
            &["read", "write", "admin"],
            "Everything, including user and policy administration.",
        ),
        role(
            "maintainer",
            &["read", "write"],
            "Reads and changes data; no administration.",
        ),
        role("viewer", &["read"], "Reads only."),
    ]
}

/// The built-in role of this name, if it is one.
pub fn builtin_role(name: &str) -> Option<RoleRow> {
    builtin_roles().into_iter().find(|r| r.name == name)
}

impl Store {
    /// Creates or updates a role.
    pub async fn upsert_role(&self, role: &RoleRow) -> Result<WriteOutcome> {
        let mut role = role.clone();
        role.scopes.sort();
        role.scopes.dedup();
        self.upsert(&role).await
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
        let mut conn = self.pool.acquire().await?;
        self.load_role(&mut conn, name).await
    }

    async fn load_role(&self, conn: &mut AnyConnection, name: &str) -> Result<Option<RoleRow>> {
        self.query("SELECT name, scopes, description, builtin FROM roles WHERE name = ?")
            .bind(name)
            .fetch_optional(conn)
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

impl Upsert for RoleRow {
    const WHAT: &'static str = "upsert_role";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_role(conn, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        let scopes = to_json(&self.scopes)?;
        let now = unix_now();
        if current.is_some() {
            store
                .query("UPDATE roles SET scopes = ?, description = ?, builtin = ?, updated_at = ? WHERE name = ?")
                .bind(&scopes)
                .bind(&self.description)
                .bind(flag(self.builtin))
                .bind(now)
                .bind(&self.name)
                .execute(conn)
                .await?;
        } else {
            store
                .query("INSERT INTO roles (name, scopes, description, builtin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&self.name)
                .bind(&scopes)
                .bind(&self.description)
                .bind(flag(self.builtin))
                .bind(now)
                .bind(now)
                .execute(conn)
                .await?;
        }
        Ok(())
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
