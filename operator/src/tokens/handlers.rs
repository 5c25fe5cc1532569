//! What each endpoint does. The abuse rules live here: throttling per account and per
//! client address, the same argon2 work for unknown e-mails, the same answer for
//! unknown addresses on `password/forgot`, disabled users refused everywhere, audit rows
//! for every security event, and nothing secret (password, token, reset link) logged.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::TokenService;
use super::api::{
    ApiError, Call, ChangePasswordRequest, Done, ForgotPasswordRequest, LoginRequest, LogoutRequest, PreferencesInfo,
    PreferencesRequest, RefreshRequest, ResetPasswordRequest, RotatedKey, SessionInfo, SessionsQuery, TeamInfo,
    TokenPair, UserInfo, parse_body,
};
use crate::credentials;
use crate::store::{AuditEvent, AuthSession, RefreshOutcome, ResetTokenRow, TOKEN_AUDIENCE, UserRow};

/// The scope that makes a caller an administrator of sessions and keys (the built-in
/// `admin` role holds it).
pub const ADMIN_SCOPE: &str = "admin";
/// Reset links work this long.
pub const RESET_TOKEN_SECS: i64 = 3600;
/// At most one reset mail per account this often.
const RESET_MAIL_INTERVAL_SECS: i64 = 60;
/// Password policy (see the README): length in characters, bytes as an argon2 cost cap.
pub const PASSWORD_MIN_CHARS: usize = 12;
pub const PASSWORD_MAX_BYTES: usize = 256;
/// Preferences a user may set: keys, key length, value length.
const MAX_PREFERENCES: usize = 64;
const MAX_PREFERENCE_KEY: usize = 64;
const MAX_PREFERENCE_VALUE: usize = 1024;

/// The claims of our access tokens (what the sidecar's `claims: directory` reads: `sub`
/// names the User; roles, scopes and teams come from the snapshot).
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub sid: String,
}

/// A caller proven by an access token of a live session of an enabled user.
struct Authed {
    user: UserRow,
    session: AuthSession,
}

/// 16 random bytes, base64url (session ids, token ids, correlation ids).
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// 32 random bytes, base64url, with a prefix saying what it is.
fn random_secret(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

fn digest(secret: &str) -> String {
    credentials::sha256_hex(secret.as_bytes())
}

fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// "Firefox on Linux", from a user agent, for the sessions list.
pub fn device_of(user_agent: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| user_agent.contains(needle))
    .map_or("unknown client", |(_, name)| name);
    let platform = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| user_agent.contains(needle))
    .map(|(_, name)| *name);
    match platform {
        Some(p) => format!("{browser} on {p}"),
        None => browser.to_string(),
    }
}

/// Why a new password is refused, or `None` when the policy accepts it.
pub fn password_problem(password: &str, user: &UserRow) -> Option<String> {
    let chars = password.chars().count();
    if chars < PASSWORD_MIN_CHARS {
        return Some(format!("the password needs at least {PASSWORD_MIN_CHARS} characters"));
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Some(format!("the password may have at most {PASSWORD_MAX_BYTES} bytes"));
    }
    if password.chars().all(|c| password.starts_with(c)) {
        return Some("the password is one character repeated".into());
    }
    let lower = password.to_lowercase();
    let local = user.email.split('@').next().unwrap_or_default().to_lowercase();
    if lower == email_key(&user.email)
        || lower == user.name.to_lowercase()
        || (local.len() >= 4 && lower.contains(&local))
    {
        return Some("the password must not contain the user's name or e-mail".into());
    }
    None
}

impl TokenService {
    fn audit(
        &self,
        call: &Call,
        actor: Option<&str>,
        action: &str,
        resource: Option<String>,
        allow: bool,
        reason: &str,
    ) -> AuditEvent {
        AuditEvent {
            occurred_at: self.clock().now(),
            correlation_id: Some(call.correlation_id.clone()),
            actor: actor.map(|a| format!("user:{a}")),
            action: action.to_string(),
            resource,
            decision: if allow { "allow" } else { "deny" }.to_string(),
            reason: Some(reason.to_string()),
            source_ip: call.client.map(|ip| ip.to_string()),
        }
    }

    /// Writes audit rows; a failure is logged, never hidden, and does not fail the call
    /// (the event already happened).
    async fn write_audit(&self, events: &[AuditEvent]) {
        if let Err(e) = self.store().append_audit(events).await {
            tracing::error!(error = %e, actions = ?events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), "cannot write audit rows");
        }
    }

    /// argon2 verification on a blocking thread, at most one per core at once.
    async fn verify_password(&self, password: String, hash: String) -> Result<bool, ApiError> {
        let _permit = self.0.hashing.acquire().await.map_err(|e| ApiError::internal(&e))?;
        Ok(tokio::task::spawn_blocking(move || credentials::verify_password(&password, &hash)).await?)
    }

    async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let _permit = self.0.hashing.acquire().await.map_err(|e| ApiError::internal(&e))?;
        let params = self.settings().argon2.clone();
        tokio::task::spawn_blocking(move || credentials::hash_password_with(&password, &params))
            .await?
            .map_err(|e| ApiError::internal(&e))
    }

    fn throttle_keys(&self, call: &Call, email: &str) -> Vec<(String, i64)> {
        let t = self.settings().throttle;
        let mut keys = vec![(format!("account:{}", email_key(email)), t.account_free)];
        if let Some(ip) = call.client {
            keys.push((format!("client:{ip}"), t.client_free));
        }
        keys
    }

    /// 429 when any of the keys is locked (the same answer for an account lock and an
    /// address lock, for known and unknown e-mails alike).
    async fn check_throttle(&self, keys: &[(String, i64)]) -> Result<(), ApiError> {
        let now = self.clock().now();
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let locked = self
            .store()
            .throttle_states(&names)
            .await?
            .into_iter()
            .map(|(_, s)| s.locked_until)
            .max()
            .unwrap_or(0);
        if locked > now {
            return Err(ApiError::too_many(locked - now));
        }
        Ok(())
    }

    /// Counts a failure on every key; returns audit rows for the keys it locked.
    async fn count_failure(&self, call: &Call, keys: &[(String, i64)]) -> Result<Vec<AuditEvent>, ApiError> {
        let now = self.clock().now();
        let t = self.settings().throttle;
        let mut events = Vec::new();
        for (key, free) in keys {
            let free = *free;
            let state = self
                .store()
                .record_login_failure(key, now, t.window, move |n| t.lock_for(free, n))
                .await?;
            if state.locked_until > now {
                // The key, not the account: an e-mail that exists is not told apart.
                events.push(self.audit(
                    call,
                    None,
                    "auth.lockout",
                    Some(key.clone()),
                    false,
                    &format!("{} failures; locked {} s", state.failures, state.locked_until - now),
                ));
            }
        }
        Ok(events)
    }

    fn issue(&self, session: &AuthSession, refresh_token: String) -> Result<TokenPair, ApiError> {
        let now = self.clock().now();
        let settings = self.settings();
        let claims = AccessClaims {
            iss: settings.issuer.clone(),
            sub: session.user_name.clone(),
            aud: TOKEN_AUDIENCE.to_string(),
            exp: now + settings.access_ttl,
            iat: now,
            nbf: now,
            jti: random_id(),
            sid: session.id.clone(),
        };
        let (access_token, _kid) = self.ring().sign(&settings.issuer, now, &claims)?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer",
            expires_in: settings.access_ttl,
            refresh_token,
            refresh_expires_at: session.expires_at,
            session_id: session.id.clone(),
        })
    }

    /// Checks an access token: our signature, our issuer and audience, not expired, a
    /// live session, an enabled user.
    async fn authenticate(&self, call: &Call) -> Result<Authed, ApiError> {
        let token = call
            .bearer
            .as_deref()
            .ok_or_else(|| ApiError::unauthenticated("an access token is required (Authorization: Bearer …)"))?;
        let now = self.clock().now();
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is invalid or expired",
            )
        };
        let mut verified = self.ring().verify(token, now);
        if verified.is_none() {
            // Another replica may have rotated since our last reload.
            self.reload_keys().await?;
            verified = self.ring().verify(token, now);
        }
        let (payload, key_issuer) = verified.ok_or_else(invalid)?;
        let claims: AccessClaims = serde_json::from_slice(&payload).map_err(|_| invalid())?;
        if claims.iss != self.settings().issuer
            || key_issuer != claims.iss
            || claims.aud != TOKEN_AUDIENCE
            || claims.exp <= now
            || claims.nbf > now + 30
        {
            return Err(invalid());
        }
        let session = self
            .store()
            .auth_session(&claims.sid)
            .await?
            .filter(|s| s.is_live(now) && s.user_name == claims.sub)
            .ok_or_else(invalid)?;
        let user = self
            .store()
            .get_user(&claims.sub)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(invalid)?;
        Ok(Authed { user, session })
    }

    async fn is_admin(&self, user: &str) -> Result<bool, ApiError> {
        Ok(self
            .store()
            .user_scopes(user)
            .await?
            .is_some_and(|s| s.contains(ADMIN_SCOPE)))
    }

    async fn do_login(&self, call: &Call, body: LoginRequest) -> Result<(StatusCode, TokenPair), ApiError> {
        let keys = self.throttle_keys(call, &body.email);
        self.check_throttle(&keys).await?;
        let user = self.store().find_user_by_email(&body.email).await?;
        let hash = match &user {
            Some(u) => self.store().password(&u.name).await?.map(|p| p.hash),
            None => None,
        };
        // Unknown e-mails and users without a password cost the same argon2 work.
        let known_hash = hash.is_some();
        let verified = self
            .verify_password(body.password, hash.unwrap_or_else(|| self.0.dummy_hash.clone()))
            .await?
            && known_hash;
        let refusal = match &user {
            None => Some("unknown_email"),
            Some(_) if !known_hash => Some("no_password"),
            Some(_) if !verified => Some("wrong_password"),
            Some(u) if u.disabled => Some("disabled"),
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            let mut events = self.count_failure(call, &keys).await?;
            events.push(self.audit(
                call,
                user.as_ref().map(|u| u.name.as_str()),
                "auth.login",
                None,
                false,
                reason,
            ));
            self.write_audit(&events).await;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "e-mail or password is wrong",
            ));
        }
        let Some(user) = user else {
            return Err(ApiError::internal(&"login without a user"));
        };
        if let Some((account, _)) = keys.first() {
            self.store().clear_login_failures(account).await?;
        }
        let now = self.clock().now();
        let settings = self.settings();
        let refresh_token = random_secret("pcr_");
        let session = AuthSession {
            id: random_id(),
            user_name: user.name.clone(),
            refresh_hash: digest(&refresh_token),
            generation: 0,
            remember_me: body.remember_me,
            device: call.user_agent.as_deref().map(device_of),
            user_agent: call.user_agent.clone(),
            ip: call.client.map(|ip| ip.to_string()),
            created_at: now,
            expires_at: now
                + if body.remember_me {
                    settings.remember_me_ttl
                } else {
                    settings.refresh_ttl
                },
            last_used_at: now,
            revoked_at: None,
            revoke_reason: None,
        };
        self.store().open_session(&session).await?;
        let pair = self.issue(&session, refresh_token)?;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.login",
            Some(format!("session:{}", session.id)),
            true,
            "password",
        )])
        .await;
        Ok((StatusCode::OK, pair))
    }

    async fn do_refresh(&self, call: &Call, body: RefreshRequest) -> Result<(StatusCode, TokenPair), ApiError> {
        let now = self.clock().now();
        let next = random_secret("pcr_");
        let ip = call.client.map(|ip| ip.to_string());
        let invalid = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_refresh_token",
                "the refresh token is invalid, expired or revoked",
            )
        };
        match self
            .store()
            .refresh_session(&digest(&body.refresh_token), &digest(&next), now, ip.as_deref())
            .await?
        {
            RefreshOutcome::Rotated(session) => {
                let enabled = self
                    .store()
                    .get_user(&session.user_name)
                    .await?
                    .is_some_and(|u| !u.disabled);
                if !enabled {
                    self.store().revoke_auth_session(&session.id, "disabled", now).await?;
                    return Err(invalid());
                }
                Ok((StatusCode::OK, self.issue(&session, next)?))
            }
            RefreshOutcome::Reused(session) => {
                tracing::warn!(user = %session.user_name, session = %session.id, "a spent refresh token was presented again; session revoked");
                self.write_audit(&[self.audit(
                    call,
                    Some(&session.user_name),
                    "auth.refresh_reuse",
                    Some(format!("session:{}", session.id)),
                    false,
                    "spent refresh token presented; session revoked",
                )])
                .await;
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "refresh_token_reused",
                    "this refresh token was already used; the session is revoked, log in again",
                ))
            }
            RefreshOutcome::Dead(_) | RefreshOutcome::Unknown => Err(invalid()),
        }
    }

    async fn do_logout(&self, call: &Call, body: LogoutRequest) -> Result<(StatusCode, Done), ApiError> {
        let now = self.clock().now();
        let all = body.all || call.query_all;
        let session = if call.bearer.is_some() {
            self.authenticate(call).await?.session
        } else if let Some(refresh) = &body.refresh_token {
            let found = self.store().find_session_by_refresh_hash(&digest(refresh)).await?;
            let found = match found {
                Some(s) => self.store().auth_session(&s.id).await?,
                None => None,
            };
            found
                .filter(|s| s.is_live(now))
                .ok_or_else(|| ApiError::unauthenticated("the refresh token is invalid, expired or revoked"))?
        } else {
            return Err(ApiError::unauthenticated(
                "an access token or a refresh token is required",
            ));
        };
        let (revoked, action) = if all {
            let before = self
                .store()
                .auth_sessions_of(&session.user_name, now, false)
                .await?
                .len();
            self.store()
                .revoke_sessions_of(&session.user_name, None, "logout_all", now)
                .await?;
            (u64::try_from(before).unwrap_or(0), "auth.logout_all")
        } else {
            let changed = self
                .store()
                .revoke_auth_session(&session.id, "logout", now)
                .await?
                .changed;
            (u64::from(changed), "auth.logout")
        };
        self.write_audit(&[self.audit(
            call,
            Some(&session.user_name),
            action,
            Some(format!("session:{}", session.id)),
            true,
            "logout",
        )])
        .await;
        Ok((
            StatusCode::OK,
            Done {
                message: "logged out".into(),
                sessions_revoked: Some(revoked),
            },
        ))
    }

    async fn preferences(&self, user: &UserRow) -> Result<PreferencesInfo, ApiError> {
        let overrides = self.store().preferences_override(&user.name).await?;
        let mut effective = user.preferences.clone();
        effective.extend(overrides.clone());
        Ok(PreferencesInfo {
            preferences: effective,
            preference_defaults: user.preferences.clone(),
            preference_overrides: overrides,
        })
    }

    async fn do_user(&self, call: &Call) -> Result<(StatusCode, UserInfo), ApiError> {
        let Authed { user, session } = self.authenticate(call).await?;
        let scopes = self.store().user_scopes(&user.name).await?.unwrap_or_default();
        let teams = self.store().teams_of(&user.name).await?;
        let prefs = self.preferences(&user).await?;
        Ok((
            StatusCode::OK,
            UserInfo {
                name: user.name,
                email: user.email,
                display_name: user.display_name,
                roles: user.roles,
                scopes: scopes.into_iter().collect(),
                teams: teams.into_iter().map(|(team, role)| TeamInfo { team, role }).collect(),
                preferences: prefs.preferences,
                preference_defaults: prefs.preference_defaults,
                preference_overrides: prefs.preference_overrides,
                session_id: session.id,
            },
        ))
    }

    async fn do_put_preferences(
        &self,
        call: &Call,
        body: PreferencesRequest,
    ) -> Result<(StatusCode, PreferencesInfo), ApiError> {
        let Authed { user, .. } = self.authenticate(call).await?;
        let mut overrides = self.store().preferences_override(&user.name).await?;
        for (key, value) in body.preferences {
            if key.is_empty()
                || key.len() > MAX_PREFERENCE_KEY
                || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(ApiError::bad_request(format!(
                    "preference keys are 1 to {MAX_PREFERENCE_KEY} of A-Z a-z 0-9 . _ -"
                )));
            }
            match value {
                Some(v) if v.len() > MAX_PREFERENCE_VALUE => {
                    return Err(ApiError::bad_request(format!(
                        "preference values have at most {MAX_PREFERENCE_VALUE} bytes"
                    )));
                }
                Some(v) => {
                    overrides.insert(key, v);
                }
                None => {
                    overrides.remove(&key);
                }
            }
        }
        if overrides.len() > MAX_PREFERENCES {
            return Err(ApiError::bad_request(format!("at most {MAX_PREFERENCES} preferences")));
        }
        self.store().set_preferences_override(&user.name, &overrides).await?;
        Ok((StatusCode::OK, self.preferences(&user).await?))
    }

    async fn do_sessions(&self, call: &Call, query: SessionsQuery) -> Result<(StatusCode, Vec<SessionInfo>), ApiError> {
        let Authed { user, session: current } = self.authenticate(call).await?;
        let whose = match query.user {
            Some(other) if other != user.name => {
                if !self.is_admin(&user.name).await? {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "only administrators see other users' sessions",
                    ));
                }
                other
            }
            _ => user.name.clone(),
        };
        let now = self.clock().now();
        let list = self
            .store()
            .auth_sessions_of(&whose, now, false)
            .await?
            .into_iter()
            .map(|s| SessionInfo {
                current: s.id == current.id,
                id: s.id,
                user: s.user_name,
                device: s.device,
                user_agent: s.user_agent,
                client_address: s.ip,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                remember_me: s.remember_me,
            })
            .collect();
        Ok((StatusCode::OK, list))
    }

    async fn do_delete_session(&self, call: &Call, id: &str) -> Result<(StatusCode, Done), ApiError> {
        let Authed { user, .. } = self.authenticate(call).await?;
        let now = self.clock().now();
        let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such session");
        let target = self.store().auth_session(id).await?.ok_or_else(not_found)?;
        let reason = if target.user_name == user.name {
            "user"
        } else if self.is_admin(&user.name).await? {
            "admin"
        } else {
            // Someone else's session is "not found", not "forbidden": ids are not confirmed.
            return Err(not_found());
        };
        let changed = self.store().revoke_auth_session(id, reason, now).await?.changed;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.session_revoke",
            Some(format!("session:{id} of {}", target.user_name)),
            true,
            reason,
        )])
        .await;
        Ok((
            StatusCode::OK,
            Done {
                message: "session revoked".into(),
                sessions_revoked: Some(u64::from(changed)),
            },
        ))
    }

    async fn do_change_password(
        &self,
        call: &Call,
        body: ChangePasswordRequest,
    ) -> Result<(StatusCode, Done), ApiError> {
        let Authed { user, session } = self.authenticate(call).await?;
        let keys = self.throttle_keys(call, &user.email);
        self.check_throttle(&keys).await?;
        let hash = self.store().password(&user.name).await?.map(|p| p.hash);
        let known = hash.is_some();
        let ok = self
            .verify_password(
                body.current_password.clone(),
                hash.unwrap_or_else(|| self.0.dummy_hash.clone()),
            )
            .await?
            && known;
        if !ok {
            let mut events = self.count_failure(call, &keys).await?;
            events.push(self.audit(
                call,
                Some(&user.name),
                "auth.password_change",
                None,
                false,
                "wrong current password",
            ));
            self.write_audit(&events).await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_password",
                "the current password is wrong",
            ));
        }
        if body.new_password == body.current_password {
            return Err(ApiError::bad_request(
                "the new password must differ from the current one",
            ));
        }
        if let Some(problem) = password_problem(&body.new_password, &user) {
            return Err(ApiError::bad_request(problem));
        }
        let hash = self.hash_password(body.new_password).await?;
        // No source digest: the operator keeps a password the user chose over an
        // unchanged Secret at every resync.
        self.store().set_password(&user.name, &hash, None).await?;
        let now = self.clock().now();
        let before = self.store().auth_sessions_of(&user.name, now, false).await?.len();
        self.store()
            .revoke_sessions_of(&user.name, Some(&session.id), "password_change", now)
            .await?;
        self.store().discard_reset_tokens(&user.name).await?;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.password_change",
            None,
            true,
            "other sessions revoked",
        )])
        .await;
        Ok((
            StatusCode::OK,
            Done {
                message: "password changed; every other session is logged out".into(),
                sessions_revoked: Some(u64::try_from(before.saturating_sub(1)).unwrap_or(0)),
            },
        ))
    }

    /// Answers at once, the same for every address: the lookup, the token and the mail
    /// happen after the answer, so neither the answer nor its timing says whether the
    /// e-mail belongs to someone.
    fn do_forgot(&self, call: &Call, body: ForgotPasswordRequest) -> (StatusCode, Done) {
        let service = self.clone();
        let call = call.clone();
        tokio::spawn(async move {
            if let Err(e) = service.send_reset(&call, &body.email).await {
                tracing::error!(error = %e.message, "password reset mail failed");
            }
        });
        (
            StatusCode::ACCEPTED,
            Done {
                message: "if this e-mail belongs to an account, a reset link is on its way".into(),
                sessions_revoked: None,
            },
        )
    }

    async fn send_reset(&self, call: &Call, email: &str) -> Result<(), ApiError> {
        let Some(user) = self.store().find_user_by_email(email).await?.filter(|u| !u.disabled) else {
            return Ok(());
        };
        let now = self.clock().now();
        if self
            .store()
            .last_reset_token_at(&user.name)
            .await?
            .is_some_and(|t| t > now - RESET_MAIL_INTERVAL_SECS)
        {
            tracing::info!(user = %user.name, "password reset requested again within a minute; no new mail");
            return Ok(());
        }
        let Some(mailer) = &self.0.mailer else {
            tracing::warn!(user = %user.name, "password reset requested but mail is not configured (set SMTP_HOST); no mail sent");
            return Ok(());
        };
        let token = random_secret("");
        self.store()
            .create_reset_token(&ResetTokenRow {
                token_hash: digest(&token),
                user_name: user.name.clone(),
                created_at: now,
                expires_at: now + RESET_TOKEN_SECS,
                used_at: None,
            })
            .await?;
        let link = format!("{}?token={token}", self.settings().reset_url);
        let text = format!(
            "Someone (hopefully you) asked to reset the password of {email} on Portcullis.\r\n\r\n\
             Open this link within one hour to choose a new password; it works once:\r\n\r\n{link}\r\n\r\n\
             If you did not ask, ignore this mail: your password stays as it is.\r\n",
            email = user.email
        );
        mailer
            .send(&user.email, "Reset your Portcullis password", &text)
            .await
            .map_err(|e| ApiError::internal(&e))?;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.password_forgot",
            None,
            true,
            "reset mail sent",
        )])
        .await;
        Ok(())
    }

    async fn do_reset(&self, call: &Call, body: ResetPasswordRequest) -> Result<(StatusCode, Done), ApiError> {
        let invalid = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_reset_token",
                "the reset link is invalid, used or expired",
            )
        };
        if body.new_password.chars().count() < PASSWORD_MIN_CHARS || body.new_password.len() > PASSWORD_MAX_BYTES {
            // Checked before the token is used, so a refused password does not burn the link.
            return Err(ApiError::bad_request(format!(
                "the password needs {PASSWORD_MIN_CHARS} characters to {PASSWORD_MAX_BYTES} bytes"
            )));
        }
        let now = self.clock().now();
        let user_name = self
            .store()
            .consume_reset_token(&digest(&body.token), now)
            .await?
            .ok_or_else(invalid)?;
        let Some(user) = self.store().get_user(&user_name).await?.filter(|u| !u.disabled) else {
            self.write_audit(&[self.audit(
                call,
                Some(&user_name),
                "auth.password_reset",
                None,
                false,
                "user disabled or gone",
            )])
            .await;
            return Err(invalid());
        };
        if let Some(problem) = password_problem(&body.new_password, &user) {
            return Err(ApiError::bad_request(problem));
        }
        let hash = self.hash_password(body.new_password).await?;
        self.store().set_password(&user.name, &hash, None).await?;
        self.store()
            .revoke_sessions_of(&user.name, None, "password_reset", now)
            .await?;
        self.store().discard_reset_tokens(&user.name).await?;
        self.store()
            .clear_login_failures(&format!("account:{}", email_key(&user.email)))
            .await?;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.password_reset",
            None,
            true,
            "every session revoked",
        )])
        .await;
        Ok((
            StatusCode::OK,
            Done {
                message: "password reset; log in with the new password".into(),
                sessions_revoked: None,
            },
        ))
    }

    async fn do_rotate(&self, call: &Call) -> Result<(StatusCode, RotatedKey), ApiError> {
        let Authed { user, .. } = self.authenticate(call).await?;
        if !self.is_admin(&user.name).await? {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "rotating signing keys needs the admin scope",
            ));
        }
        let (kid, active_from) = self.rotate_now().await?;
        self.write_audit(&[self.audit(
            call,
            Some(&user.name),
            "auth.key_rotate",
            Some(format!("kid:{kid}")),
            true,
            "on demand",
        )])
        .await;
        Ok((StatusCode::OK, RotatedKey { kid, active_from }))
    }
}

fn parsed<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    parse_body(body)
}

pub async fn login(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = match parsed(&body) {
        Ok(req) => s.do_login(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn refresh(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = match parsed(&body) {
        Ok(req) => s.do_refresh(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn logout(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(LogoutRequest::default())
    } else {
        parsed(&body)
    };
    let result = match req {
        Ok(req) => s.do_logout(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn user(State(s): State<TokenService>, call: Call) -> Response {
    call.respond(s.do_user(&call).await)
}

pub async fn put_preferences(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = match parsed(&body) {
        Ok(req) => s.do_put_preferences(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn sessions(
    State(s): State<TokenService>,
    call: Call,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let query = SessionsQuery {
        user: query.get("user").cloned(),
    };
    call.respond(s.do_sessions(&call, query).await)
}

pub async fn delete_session(State(s): State<TokenService>, call: Call, Path(id): Path<String>) -> Response {
    call.respond(s.do_delete_session(&call, &id).await)
}

pub async fn change_password(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = match parsed(&body) {
        Ok(req) => s.do_change_password(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn forgot_password(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = parsed(&body).map(|req| s.do_forgot(&call, req));
    call.respond(result)
}

pub async fn reset_password(State(s): State<TokenService>, call: Call, body: Bytes) -> Response {
    let result = match parsed(&body) {
        Ok(req) => s.do_reset(&call, req).await,
        Err(e) => Err(e),
    };
    call.respond(result)
}

pub async fn rotate_keys(State(s): State<TokenService>, call: Call) -> Response {
    call.respond(s.do_rotate(&call).await)
}

/// RFC 7517 JWKS: raw, not enveloped (JOSE clients read `keys` at the top).
pub async fn jwks(State(s): State<TokenService>) -> Response {
    if s.reload_keys().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "keys unavailable").into_response();
    }
    let keys = s.ring().jwks(s.clock().now());
    let mut response = axum::Json(serde_json::json!({ "keys": keys })).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// The subset of OpenID Connect discovery that applies (raw, as OIDC clients expect).
pub async fn openid_configuration(State(s): State<TokenService>) -> Response {
    let issuer = &s.settings().issuer;
    axum::Json(serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/api/v1/auth/login"),
        "userinfo_endpoint": format!("{issuer}/api/v1/auth/user"),
        "revocation_endpoint": format!("{issuer}/api/v1/auth/logout"),
        "id_token_signing_alg_values_supported": [super::keys::ALG],
        "token_endpoint_auth_methods_supported": ["none"],
        "grant_types_supported": ["password", "refresh_token"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid"],
    }))
    .into_response()
}

/// The OpenAPI 3.1 document (raw: it is the document).
pub async fn openapi(State(s): State<TokenService>) -> Response {
    axum::Json(super::openapi::document(&s.settings().issuer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_password_policy() {
        assert_eq!(
            device_of(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/130.0 Safari/537.36 Edg/130.0"
            ),
            "Edge on Windows"
        );
        assert_eq!(
            device_of("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Version/17.0 Mobile Safari/604.1"),
            "Safari on iOS"
        );
        assert_eq!(device_of("curl/8.5.0"), "curl");
        let user = UserRow::new("alice", "alice.smith@example.com");
        assert!(password_problem("correct horse battery", &user).is_none());
        assert!(password_problem("short", &user).is_some());
        assert!(password_problem("aaaaaaaaaaaaaaaa", &user).is_some());
        assert!(password_problem("hello-alice.smith-2024", &user).is_some());
        assert!(password_problem(&"x1".repeat(200), &user).is_some(), "over 256 bytes");
    }
}
