//! The token service's tables: signing keys, refresh-token sessions with rotation,
//! spent refresh tokens, login throttling and the preferences users set themselves.
//!
//! What a snapshot holds (published signing keys, revoked sessions) changes through
//! `versioned_write!`; book-keeping that sidecars never see (a refresh, a failed
//! login) through `unversioned_write!`, so that a busy login page does not make every
//! sidecar refetch its snapshot.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Result, Store, StoreError, WriteOutcome, flag, from_json, to_json};

/// A signing key of our issuer as the database holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub kid: String,
    /// The `iss` the key signs for.
    pub issuer: String,
    pub alg: String,
    /// The public key as a JWK (JSON text).
    pub public_jwk: String,
    /// The private key sealed with the key-encryption key (never the plain key).
    pub private_key: String,
    pub created_at: i64,
    /// Signs from this time on (until a newer key's `active_from`).
    pub active_from: i64,
    /// Published until then; `None` while no newer key replaced it.
    pub retire_after: Option<i64>,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sealed private key stays out of logs too.
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("active_from", &self.active_from)
            .field("retire_after", &self.retire_after)
            .finish_non_exhaustive()
    }
}

/// A login session (one per login, whatever the number of refreshes). Its `id` is the
/// access tokens' `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSession {
    pub id: String,
    pub user_name: String,
    /// Hex SHA-256 of the refresh token currently valid.
    pub refresh_hash: String,
    /// How many times the session was refreshed.
    pub generation: i64,
    pub remember_me: bool,
    /// Browser and platform, from the user agent, for the sessions list.
    pub device: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: i64,
    pub revoked_at: Option<i64>,
    /// `logout`, `logout_all`, `refresh_reuse`, `password_change`, `password_reset`, `admin`, …
    pub revoke_reason: Option<String>,
}

impl AuthSession {
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was the session's current one: it is spent now, the new one is current.
    Rotated(AuthSession),
    /// The token had already been spent: the session is revoked (it was, now or before).
    Reused(AuthSession),
    /// The session this token belongs to was revoked or has expired.
    Dead(AuthSession),
    /// No session ever had this token.
    Unknown,
}

/// Failed-login book-keeping for one throttle key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleState {
    pub failures: i64,
    pub last_failure_at: i64,
    /// Unix seconds until which attempts are refused (0: not locked).
    pub locked_until: i64,
}

macro_rules! select_auth_sessions {
    ($rest:literal) => {
        concat!(
            "SELECT id, user_name, refresh_hash, generation, remember_me, device, user_agent, ip, created_at, expires_at, last_used_at, revoked_at, revoke_reason FROM sessions ",
            $rest
        )
    };
}

impl Store {
    /// Every signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        self.query("SELECT kid, issuer, alg, public_jwk, private_key, created_at, active_from, retire_after FROM signing_keys ORDER BY active_from, kid")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_signing_key)
            .collect()
    }

    /// Adds a signing key and schedules the retirement of those it replaces
    /// (`retire_others_after`: the last moment a token they signed can still be valid).
    /// With `unless_created_since`, does nothing (returns `changed: false`) when a key was
    /// created at or after that time: another replica rotated already. Snapshot-changing
    /// (sidecars learn the new public key).
    pub async fn add_signing_key(
        &self,
        key: &SigningKeyRow,
        retire_others_after: i64,
        unless_created_since: Option<i64>,
    ) -> Result<WriteOutcome> {
        versioned_write!(self, "add_signing_key", |tx| {
            if let Some(since) = unless_created_since {
                let newest: Option<i64> = sqlx::query_scalar(self.sql("SELECT MAX(created_at) FROM signing_keys"))
                    .fetch_one(&mut **tx)
                    .await?;
                if newest.is_some_and(|t| t >= since) {
                    return Ok(false);
                }
            }
            self.query("UPDATE signing_keys SET retire_after = ? WHERE retire_after IS NULL")
                .bind(retire_others_after)
                .execute(&mut **tx)
                .await?;
            self.query("INSERT INTO signing_keys (kid, issuer, alg, public_jwk, private_key, created_at, active_from, retire_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&key.kid)
                .bind(&key.issuer)
                .bind(&key.alg)
                .bind(&key.public_jwk)
                .bind(&key.private_key)
                .bind(key.created_at)
                .bind(key.active_from)
                .bind(key.retire_after)
                .execute(&mut **tx)
                .await?;
            Ok(true)
        })
    }

    /// Deletes the keys no valid token can carry any more.
    pub async fn prune_signing_keys(&self, now: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "prune_signing_keys", |tx| {
            let gone = self
                .query("DELETE FROM signing_keys WHERE retire_after IS NOT NULL AND retire_after <= ?")
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(gone.rows_affected() > 0)
        })
    }

    /// Opens a session (login). Not part of any snapshot.
    pub async fn open_session(&self, s: &AuthSession) -> Result<()> {
        unversioned_write!(self, "open_session", |tx| {
            self.query("INSERT INTO sessions (id, user_name, refresh_hash, generation, remember_me, device, user_agent, ip, created_at, expires_at, last_used_at, revoked_at, revoke_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&s.id)
                .bind(&s.user_name)
                .bind(&s.refresh_hash)
                .bind(s.generation)
                .bind(flag(s.remember_me))
                .bind(&s.device)
                .bind(&s.user_agent)
                .bind(&s.ip)
                .bind(s.created_at)
                .bind(s.expires_at)
                .bind(s.last_used_at)
                .bind(s.revoked_at)
                .bind(&s.revoke_reason)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    pub async fn auth_session(&self, id: &str) -> Result<Option<AuthSession>> {
        self.query(select_auth_sessions!("WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_auth_session(&row))
            .transpose()
    }

    /// A user's sessions, newest first; live ones only unless `all`.
    pub async fn auth_sessions_of(&self, user: &str, now: i64, all: bool) -> Result<Vec<AuthSession>> {
        let sessions = self
            .query(select_auth_sessions!(
                "WHERE user_name = ? ORDER BY created_at DESC, id"
            ))
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(decode_auth_session)
            .collect::<Result<Vec<_>>>()?;
        Ok(sessions.into_iter().filter(|s| all || s.is_live(now)).collect())
    }

    /// Presents a refresh token (its hash): rotates the session when it is the current
    /// token of a live session (compare-and-swap on the hash, so of two concurrent uses
    /// of one token exactly one rotates), revokes the session when it is a spent one.
    pub async fn refresh_session(
        &self,
        presented: &str,
        next: &str,
        now: i64,
        ip: Option<&str>,
    ) -> Result<RefreshOutcome> {
        let rotated: Option<std::result::Result<AuthSession, AuthSession>> = unversioned_write!(
            self,
            "refresh_session",
            |tx| {
                let Some(row) = self
                    .query(select_auth_sessions!("WHERE refresh_hash = ?"))
                    .bind(presented)
                    .fetch_optional(&mut **tx)
                    .await?
                else {
                    return Ok(None);
                };
                let mut session = decode_auth_session(&row)?;
                if !session.is_live(now) {
                    return Ok(Some(Err(session)));
                }
                let swapped = self
                    .query("UPDATE sessions SET refresh_hash = ?, generation = generation + 1, last_used_at = ?, ip = COALESCE(?, ip) WHERE id = ? AND refresh_hash = ? AND revoked_at IS NULL")
                    .bind(next)
                    .bind(now)
                    .bind(ip)
                    .bind(&session.id)
                    .bind(presented)
                    .execute(&mut **tx)
                    .await?;
                if swapped.rows_affected() == 0 {
                    // Another use of the same token won the race: this one is a reuse.
                    return Ok(None);
                }
                self.query("INSERT INTO refresh_tokens_spent (token_hash, session_id, generation, spent_at) VALUES (?, ?, ?, ?)")
                    .bind(presented)
                    .bind(&session.id)
                    .bind(session.generation)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                session.refresh_hash = next.to_string();
                session.generation += 1;
                session.last_used_at = now;
                if let Some(ip) = ip {
                    session.ip = Some(ip.to_string());
                }
                Ok(Some(Ok(session)))
            }
        )?;
        match rotated {
            Some(Ok(session)) => return Ok(RefreshOutcome::Rotated(session)),
            Some(Err(dead)) => return Ok(RefreshOutcome::Dead(dead)),
            None => {}
        }
        let spent_by: Option<String> =
            sqlx::query_scalar(self.sql("SELECT session_id FROM refresh_tokens_spent WHERE token_hash = ?"))
                .bind(presented)
                .fetch_optional(&self.pool)
                .await?;
        let Some(id) = spent_by else {
            return Ok(RefreshOutcome::Unknown);
        };
        self.revoke_auth_session(&id, "refresh_reuse", now).await?;
        match self.auth_session(&id).await? {
            Some(session) => Ok(RefreshOutcome::Reused(session)),
            None => Ok(RefreshOutcome::Unknown),
        }
    }

    /// Revokes one session (no change when it already was). Snapshot-changing: the
    /// session's id joins the snapshot's revoked sessions.
    pub async fn revoke_auth_session(&self, id: &str, reason: &str, now: i64) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_auth_session", |tx| {
            let updated = self
                .query("UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(reason)
                .bind(id)
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Revokes every live session of a user but `keep` (password change keeps the
    /// session that changed it).
    pub async fn revoke_sessions_of(
        &self,
        user: &str,
        keep: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<WriteOutcome> {
        versioned_write!(self, "revoke_sessions_of", |tx| {
            let updated = self
                .query("UPDATE sessions SET revoked_at = ?, revoke_reason = ? WHERE user_name = ? AND revoked_at IS NULL AND id <> ?")
                .bind(now)
                .bind(reason)
                .bind(user)
                .bind(keep.unwrap_or(""))
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Throttle state of the given keys (absent keys have none).
    pub async fn throttle_states(&self, keys: &[&str]) -> Result<Vec<(String, ThrottleState)>> {
        let mut out = Vec::new();
        for key in keys {
            let row = self
                .query("SELECT failures, last_failure_at, locked_until FROM login_throttle WHERE throttle_key = ?")
                .bind(*key)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                out.push(((*key).to_string(), decode_throttle(&row)?));
            }
        }
        Ok(out)
    }

    /// Counts a failure for `key`: failures older than `window` seconds are forgotten
    /// first; `lock_for(failures)` says for how long the key is locked after this one.
    pub async fn record_login_failure(
        &self,
        key: &str,
        now: i64,
        window: i64,
        lock_for: impl Fn(i64) -> i64 + Send + Sync,
    ) -> Result<ThrottleState> {
        unversioned_write!(self, "record_login_failure", |tx| {
            let current = self
                .query("SELECT failures, last_failure_at, locked_until FROM login_throttle WHERE throttle_key = ?")
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| decode_throttle(&row))
                .transpose()?;
            let failures = match current {
                Some(s) if s.last_failure_at > now - window => s.failures + 1,
                _ => 1,
            };
            let lock = lock_for(failures);
            let locked_until = if lock > 0 { now + lock } else { 0 };
            let state = ThrottleState {
                failures,
                last_failure_at: now,
                locked_until,
            };
            if current.is_some() {
                self.query("UPDATE login_throttle SET failures = ?, last_failure_at = ?, locked_until = ? WHERE throttle_key = ?")
                    .bind(failures)
                    .bind(now)
                    .bind(locked_until)
                    .bind(key)
                    .execute(&mut **tx)
                    .await?;
            } else {
                // A concurrent first failure makes this a unique violation: the retry
                // wrapper does not retry those, so the caller sees an error and answers
                // 503; rare, and nothing is let through.
                self.query("INSERT INTO login_throttle (throttle_key, failures, last_failure_at, locked_until) VALUES (?, ?, ?, ?)")
                    .bind(key)
                    .bind(failures)
                    .bind(now)
                    .bind(locked_until)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(state)
        })
    }

    /// Forgets the failures of `key` (a successful login).
    pub async fn clear_login_failures(&self, key: &str) -> Result<()> {
        unversioned_write!(self, "clear_login_failures", |tx| {
            self.query("DELETE FROM login_throttle WHERE throttle_key = ?")
                .bind(key)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    /// The preferences a user set through the token service (empty: none).
    pub async fn preferences_override(&self, user: &str) -> Result<BTreeMap<String, String>> {
        let json: Option<Option<String>> =
            sqlx::query_scalar(self.sql("SELECT preferences_override FROM users WHERE name = ?"))
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        match json.flatten() {
            Some(json) => from_json("users.preferences_override", &json),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Replaces the preferences a user set. Not part of any snapshot.
    pub async fn set_preferences_override(&self, user: &str, prefs: &BTreeMap<String, String>) -> Result<()> {
        let json = if prefs.is_empty() { None } else { Some(to_json(prefs)?) };
        unversioned_write!(self, "set_preferences_override", |tx| {
            let updated = self
                .query("UPDATE users SET preferences_override = ? WHERE name = ?")
                .bind(&json)
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

    /// Forgets a user's unused reset tokens (after a reset or a password change, an
    /// older mail must not work any more).
    pub async fn discard_reset_tokens(&self, user: &str) -> Result<()> {
        unversioned_write!(self, "discard_reset_tokens", |tx| {
            self.query("DELETE FROM password_reset_tokens WHERE user_name = ? AND used_at IS NULL")
                .bind(user)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }

    /// A user's team memberships as `(team, role)`, by team name.
    pub async fn teams_of(&self, user: &str) -> Result<Vec<(String, String)>> {
        self.query("SELECT team_name, role FROM team_members WHERE user_name = ? ORDER BY team_name")
            .bind(user)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("team_name")?, row.try_get("role")?)))
            .collect()
    }

    /// When the newest reset token of a user was made (mail flood control).
    pub async fn last_reset_token_at(&self, user: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar(self.sql("SELECT MAX(created_at) FROM password_reset_tokens WHERE user_name = ?"))
                .bind(user)
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

fn decode_signing_key(row: &sqlx::any::AnyRow) -> Result<SigningKeyRow> {
    Ok(SigningKeyRow {
        kid: row.try_get("kid")?,
        issuer: row.try_get("issuer")?,
        alg: row.try_get("alg")?,
        public_jwk: row.try_get("public_jwk")?,
        private_key: row.try_get("private_key")?,
        created_at: row.try_get("created_at")?,
        active_from: row.try_get("active_from")?,
        retire_after: row.try_get("retire_after")?,
    })
}

fn decode_auth_session(row: &sqlx::any::AnyRow) -> Result<AuthSession> {
    Ok(AuthSession {
        id: row.try_get("id")?,
        user_name: row.try_get("user_name")?,
        refresh_hash: row.try_get("refresh_hash")?,
        generation: row.try_get("generation")?,
        remember_me: row.try_get::<i64, _>("remember_me")? != 0,
        device: row.try_get("device")?,
        user_agent: row.try_get("user_agent")?,
        ip: row.try_get("ip")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoke_reason: row.try_get("revoke_reason")?,
    })
}

fn decode_throttle(row: &sqlx::any::AnyRow) -> Result<ThrottleState> {
    Ok(ThrottleState {
        failures: row.try_get("failures")?,
        last_failure_at: row.try_get("last_failure_at")?,
        locked_until: row.try_get("locked_until")?,
    })
}
