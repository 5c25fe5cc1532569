//! Teams and their members (each member with a team role).

use portcullis_wire::TeamRole;
use sqlx::{AnyConnection, Row};

use super::{NameTable, Result, Store, StoreError, Upsert, WriteOutcome, unix_now};

/// A team as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    pub name: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// (user, role), sorted by user, one entry per user.
    pub members: Vec<(String, TeamRole)>,
}

impl TeamRow {
    pub fn new(name: impl Into<String>) -> Self {
        TeamRow {
            name: name.into(),
            display_name: None,
            description: None,
            members: Vec::new(),
        }
    }

    pub fn with_member(mut self, user: impl Into<String>, role: TeamRole) -> Self {
        let user = user.into();
        self.members.retain(|(u, _)| *u != user);
        self.members.push((user, role));
        self.members.sort();
        self
    }
}

impl Store {
    /// Creates or updates a team and its members. Fails with
    /// [`StoreError::MissingReference`] when a member is not a user.
    pub async fn upsert_team(&self, team: &TeamRow) -> Result<WriteOutcome> {
        let mut team = team.clone();
        team.members.sort();
        team.members.dedup_by(|a, b| a.0 == b.0);
        self.upsert(&team).await
    }

    /// Deletes a team; its memberships cascade.
    pub async fn delete_team(&self, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_team", |tx| {
            let deleted = self
                .query("DELETE FROM teams WHERE name = ?")
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    pub async fn get_team(&self, name: &str) -> Result<Option<TeamRow>> {
        let mut conn = self.pool.acquire().await?;
        self.load_team(&mut conn, name).await
    }

    /// The teams `user` is a member of, sorted.
    pub async fn user_teams(&self, user: &str) -> Result<Vec<String>> {
        self.query("SELECT team_name FROM team_members WHERE user_name = ? ORDER BY team_name")
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok(row.try_get::<String, _>("team_name")?))
            .collect()
    }

    /// A team with its members.
    async fn load_team(&self, conn: &mut AnyConnection, name: &str) -> Result<Option<TeamRow>> {
        let row = self
            .query("SELECT name, display_name, description FROM teams WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(TeamRow {
            name: row.try_get("name")?,
            display_name: row.try_get("display_name")?,
            description: row.try_get("description")?,
            members: self.team_members(conn, name).await?,
        }))
    }

    async fn team_members(&self, conn: &mut sqlx::AnyConnection, team: &str) -> Result<Vec<(String, TeamRole)>> {
        let rows = self
            .query("SELECT user_name, role FROM team_members WHERE team_name = ? ORDER BY user_name")
            .bind(team)
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("user_name")?,
                    decode_team_role(&row.try_get::<String, _>("role")?)?,
                ))
            })
            .collect()
    }
}

impl Upsert for TeamRow {
    const WHAT: &'static str = "upsert_team";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_team(conn, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        let names: Vec<String> = self.members.iter().map(|(u, _)| u.clone()).collect();
        store.require_names(conn, NameTable::Users, &names).await?;
        let now = unix_now();
        if current.is_some() {
            store
                .query("UPDATE teams SET display_name = ?, description = ?, updated_at = ? WHERE name = ?")
                .bind(&self.display_name)
                .bind(&self.description)
                .bind(now)
                .bind(&self.name)
                .execute(&mut *conn)
                .await?;
        } else {
            store
                .query("INSERT INTO teams (name, display_name, description, created_at, updated_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&self.name)
                .bind(&self.display_name)
                .bind(&self.description)
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
        let had: &[(String, TeamRole)] = current.map_or(&[], |c| &c.members);
        for (user, _) in had.iter().filter(|(u, _)| !self.members.iter().any(|(m, _)| m == u)) {
            store
                .query("DELETE FROM team_members WHERE team_name = ? AND user_name = ?")
                .bind(&self.name)
                .bind(user)
                .execute(&mut *conn)
                .await?;
        }
        for (user, role) in &self.members {
            match had.iter().find(|(u, _)| u == user) {
                Some((_, old)) if old == role => {}
                Some(_) => {
                    store
                        .query("UPDATE team_members SET role = ? WHERE team_name = ? AND user_name = ?")
                        .bind(role.as_str())
                        .bind(&self.name)
                        .bind(user)
                        .execute(&mut *conn)
                        .await?;
                }
                None => {
                    store
                        .query("INSERT INTO team_members (team_name, user_name, role) VALUES (?, ?, ?)")
                        .bind(&self.name)
                        .bind(user)
                        .bind(role.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

pub(super) fn decode_team_role(text: &str) -> Result<TeamRole> {
    TeamRole::parse(text).ok_or_else(|| StoreError::Corrupt {
        what: "team_members.role",
        reason: format!("unknown role {text:?}"),
    })
}
