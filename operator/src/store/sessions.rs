//! Refresh-token sessions and password-reset tokens (only hashes are stored).

use sqlx::Row;

use super::{Result, Store, StoreError, WriteOutcome};

/// One refresh-token session. Refreshing rotates it: the old row is revoked and a new
/// one names it in `rotated_from`, so that replaying a rotated token can be detected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub user_name: String,
    /// Hex SHA-256 of the refresh token.
    pub refresh_hash: String,
    pub device: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: i64,
    pub revoked_at: Option<i64>,
    pub rotated_from: Option<String>,
}

/// A password-reset token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetTokenRow {
    /// Hex SHA-256 of the token mailed to the user.
    pub token_hash: String,
    pub user_name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

macro_rules! select_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_name, refresh_hash, device, user_agent, ip, created_at, expires_at, last_used_at, revoked_at, rotated_from FROM sessions ",
            $rest
        )
    };
}

impl Store {
    /// Opens a session (login). Not part of any snapshot: no revision bump.
    pub async fn create_session(&self, session: &SessionRow) -> Result<()> {
        unversioned_write!(self, "create_session", |tx| {
            self.insert_session(tx, session).await?;
            Ok(())
        })
    }

    /// Rotates a session (refresh): revokes `old_id` at `now` and opens `next`, in one
    /// transaction. Fails with [`StoreError::NotFound`] when `old_id` is not a live
    /// session, so a refresh token can be rotated once only.
    pub async fn rotate_session(&self, old_id: &str, next: &SessionRow, now: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "rotate_session", |tx| {
            let revoked = self
                .query("UPDATE sessions SET revoked_at = ?, last_used_at = ? WHERE id = ? AND revoked_at IS NULL AND expires_at > ?")
                .bind(now)
                .bind(now)
                .bind(old_id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            if revoked.rows_affected() == 0 {
                return Err(StoreError::NotFound {
                    kind: "live session",
                    name: old_id.to_string(),
                });
            }
            self.insert_session(tx, next).await?;
            Ok(true)
        })
    }

    /// Revokes one session and, transitively, the sessions rotated from it (a replayed
    /// refresh token kills the whole chain).
    pub async fn revoke_session_chain(&self, id: &str, now: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_session_chain", |tx| {
            let mut changed = false;
            let mut frontier = vec![id.to_string()];
            while let Some(current) = frontier.pop() {
                let updated = self
                    .query("UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                    .bind(now)
                    .bind(&current)
                    .execute(&mut **tx)
                    .await?;
                changed |= updated.rows_affected() > 0;
                let next: Vec<String> = sqlx::query_scalar(self.sql("SELECT id FROM sessions WHERE rotated_from = ?"))
                    .bind(&current)
                    .fetch_all(&mut **tx)
                    .await?;
                frontier.extend(next);
            }
            Ok(changed)
        })
    }

    /// Revokes every live session of a user (logout everywhere, password change, disable).
    pub async fn revoke_user_sessions(&self, user: &str, now: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_user_sessions", |tx| {
            let updated = self
                .query("UPDATE sessions SET revoked_at = ? WHERE user_name = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(user)
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Records a session's use (device tracking). Not part of any snapshot.
    pub async fn touch_session(&self, id: &str, now: i64, ip: Option<&str>) -> Result<()> {
        unversioned_write!(self, "touch_session", |tx| {
            self.query("UPDATE sessions SET last_used_at = ?, ip = COALESCE(?, ip) WHERE id = ?")
                .bind(now)
                .bind(ip)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    pub async fn find_session_by_refresh_hash(&self, refresh_hash: &str) -> Result<Option<SessionRow>> {
        self.query(select_sessions!("WHERE refresh_hash = ?"))
            .bind(refresh_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_session(&row))
            .transpose()
    }

    /// A user's sessions, newest first (device list, forced logout).
    pub async fn sessions_of(&self, user: &str) -> Result<Vec<SessionRow>> {
        self.query(select_sessions!("WHERE user_name = ? ORDER BY created_at DESC, id"))
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_session)
            .collect()
    }

    /// Stores a password-reset token. Not part of any snapshot.
    pub async fn create_reset_token(&self, token: &ResetTokenRow) -> Result<()> {
        unversioned_write!(self, "create_reset_token", |tx| {
            self.query("INSERT INTO password_reset_tokens (token_hash, user_name, created_at, expires_at, used_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&token.token_hash)
                .bind(&token.user_name)
                .bind(token.created_at)
                .bind(token.expires_at)
                .bind(token.used_at)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    /// Uses a reset token: returns its user if the token exists, is unused and has not
    /// expired, and marks it used in the same statement so it works once.
    pub async fn consume_reset_token(&self, token_hash: &str, now: i64) -> Result<Option<String>> {
        unversioned_write!(self, "consume_reset_token", |tx| {
            let used = self
                .query("UPDATE password_reset_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?")
                .bind(now)
                .bind(token_hash)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            if used.rows_affected() == 0 {
                return Ok(None);
            }
            let user: String =
                sqlx::query_scalar(self.sql("SELECT user_name FROM password_reset_tokens WHERE token_hash = ?"))
                    .bind(token_hash)
                    .fetch_one(&mut **tx)
                    .await?;
            Ok(Some(user))
        })
    }

    async fn insert_session(&self, conn: &mut sqlx::AnyConnection, s: &SessionRow) -> Result<()> {
        self.query("INSERT INTO sessions (id, user_name, refresh_hash, device, user_agent, ip, created_at, expires_at, last_used_at, revoked_at, rotated_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(&s.id)
            .bind(&s.user_name)
            .bind(&s.refresh_hash)
            .bind(&s.device)
            .bind(&s.user_agent)
            .bind(&s.ip)
            .bind(s.created_at)
            .bind(s.expires_at)
            .bind(s.last_used_at)
            .bind(s.revoked_at)
            .bind(&s.rotated_from)
            .execute(conn)
            .await?;
        Ok(())
    }
}

fn decode_session(row: &sqlx::any::AnyRow) -> Result<SessionRow> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        user_name: row.try_get("user_name")?,
        refresh_hash: row.try_get("refresh_hash")?,
        device: row.try_get("device")?,
        user_agent: row.try_get("user_agent")?,
        ip: row.try_get("ip")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        rotated_from: row.try_get("rotated_from")?,
    })
}
