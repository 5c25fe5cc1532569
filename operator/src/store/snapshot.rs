//! The snapshot: everything sidecars enforce, read at one revision.

use std::collections::BTreeMap;

use portcullis_wire::{
    ApiKeyEntry, ClaimSource, JwtIssuer, JwtKey, RoleEntry, Snapshot, SourceEntry, TeamMembership, UserEntry,
};
use sqlx::Row;

use super::api_keys::{decode_api_key, select_keys};
use super::policies::decode_policy;
use super::roles::decode_role;
use super::sources::decode_source;
use super::teams::decode_team_role;
use super::{Backend, Result, Store};

/// Revoked API keys stay in snapshots this long, so that a refusal can say "revoked".
const REVOKED_KEY_MEMORY_SECS: i64 = 24 * 3600;

/// A revoked session matters to sidecars only while an access token issued before the
/// revocation can be valid: access tokens live at most [`MAX_ACCESS_TOKEN_SECS`], plus
/// the sidecar's leeway. Beyond that the list would only grow.
const REVOKED_SESSION_MEMORY_SECS: i64 = MAX_ACCESS_TOKEN_SECS + 300;

/// The longest access-token lifetime the token service accepts as a setting.
pub const MAX_ACCESS_TOKEN_SECS: i64 = 3600;

/// The `aud` of the token service's access tokens, and the audience snapshots give its issuer.
pub const TOKEN_AUDIENCE: &str = "portcullis";

/// Clock skew sidecars allow on our tokens' `exp`.
pub const TOKEN_LEEWAY_SECS: u32 = 30;

impl Store {
    /// The snapshot's API keys on SQLite, as one row: the keys the other backends read
    /// row by row (same filter, same order), aggregated by SQLite into one JSON array.
    /// sqlx's SQLite driver hands every row from its worker thread to the async side, a
    /// wake-up each: 100,000 keys cost 0.6 s that way, one row a few milliseconds.
    async fn snapshot_keys_sqlite(&self, conn: &mut sqlx::AnyConnection, now: i64) -> Result<Vec<ApiKeyEntry>> {
        let json: String = sqlx::query_scalar(
            "SELECT json_group_array(json_object(
                'key_hash', key_hash, 'prefix', prefix, 'namespace', namespace,
                'owner_kind', owner_kind, 'owner_name', owner_name, 'scopes', json(scopes),
                'roles', json(COALESCE(roles, '[]')), 'teams', json(COALESCE(teams, '[]')),
                'honoured_in', json(COALESCE(honoured_in, '[]')),
                'expires_at', expires_at, 'revoked_at', revoked_at))
             FROM (SELECT * FROM api_keys
                   WHERE (expires_at IS NULL OR expires_at > ?) AND (revoked_at IS NULL OR revoked_at > ?))",
        )
        .bind(now)
        .bind(now - REVOKED_KEY_MEMORY_SECS)
        .fetch_one(conn)
        .await?;
        let mut keys: Vec<ApiKeyEntry> = super::from_json("api_keys", &json)?;
        // An aggregate's order is SQLite's to choose; the snapshot's is by hash.
        keys.sort_unstable_by(|a, b| a.key_hash.cmp(&b.key_hash));
        Ok(keys)
    }

    /// Reads everything sidecars enforce, at one revision, in one read-only transaction
    /// with a stable view (REPEATABLE READ / consistent snapshot / one SQLite read
    /// transaction), so a snapshot never holds half of a write.
    pub async fn read_snapshot(&self, now: i64) -> Result<Snapshot> {
        let mut tx = match self.backend {
            Backend::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
            Backend::MySql => {
                self.pool
                    .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    .await?
            }
            Backend::Sqlite => self.pool.begin().await?,
        };
        let revision = self
            .scalar_i64("SELECT value FROM revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // Empty until [`Store::epoch`] first made one (the API server does at start).
        let epoch: String = sqlx::query_scalar(self.sql("SELECT value FROM epoch WHERE id = 1"))
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_default();

        let roles = self
            .query("SELECT name, scopes, description, builtin FROM roles ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                decode_role(row).map(|r| RoleEntry {
                    name: r.name,
                    scopes: r.scopes,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let mut user_roles: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for row in self
            .query("SELECT user_name, role_name FROM user_roles ORDER BY user_name, role_name")
            .fetch_all(&mut *tx)
            .await?
        {
            user_roles
                .entry(row.try_get("user_name")?)
                .or_default()
                .push(row.try_get("role_name")?);
        }
        let mut user_teams: BTreeMap<String, Vec<TeamMembership>> = BTreeMap::new();
        for row in self
            .query("SELECT team_name, user_name, role FROM team_members ORDER BY user_name, team_name")
            .fetch_all(&mut *tx)
            .await?
        {
            user_teams
                .entry(row.try_get("user_name")?)
                .or_default()
                .push(TeamMembership {
                    team: row.try_get("team_name")?,
                    role: decode_team_role(&row.try_get::<String, _>("role")?)?,
                });
        }
        let users = self
            .query("SELECT name, email, disabled FROM users ORDER BY name")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                Ok(UserEntry {
                    email: row.try_get("email")?,
                    disabled: row.try_get::<i64, _>("disabled")? != 0,
                    roles: user_roles.remove(&name).unwrap_or_default(),
                    teams: user_teams.remove(&name).unwrap_or_default(),
                    name,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let api_keys = match self.backend {
            Backend::Sqlite => self.snapshot_keys_sqlite(&mut tx, now).await?,
            Backend::Postgres | Backend::MySql => self
                .query(select_keys!("WHERE (expires_at IS NULL OR expires_at > ?) AND (revoked_at IS NULL OR revoked_at > ?) ORDER BY key_hash"))
                .bind(now)
                .bind(now - REVOKED_KEY_MEMORY_SECS)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| {
                    decode_api_key(row).map(|k| ApiKeyEntry {
                        key_hash: k.key_hash,
                        prefix: k.prefix,
                        namespace: k.namespace,
                        owner_kind: k.owner_kind,
                        owner_name: k.owner_name,
                        scopes: k.scopes,
                        expires_at: k.expires_at,
                        revoked_at: k.revoked_at,
                        roles: k.roles,
                        teams: k.teams,
                        honoured_in: k.honoured_in,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };

        let sources = self
            .query("SELECT namespace, name, source_type, team_name, labels, enabled, rate_limit FROM sources ORDER BY namespace, name")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| {
                decode_source(row).map(|s| SourceEntry {
                    namespace: s.namespace,
                    name: s.name,
                    team: s.team,
                    enabled: s.enabled,
                    rate_limit: s.rate_limit,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let revoked_sessions: Vec<String> = sqlx::query_scalar(self.sql(
            "SELECT id FROM sessions WHERE revoked_at IS NOT NULL AND revoked_at > ? AND expires_at > ? ORDER BY id",
        ))
        .bind(now - REVOKED_SESSION_MEMORY_SECS)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;

        let policies = self
            .query("SELECT namespace, name, pod_selector, spec FROM policies ORDER BY namespace, name")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(decode_policy)
            .collect::<Result<Vec<_>>>()?;

        // External issuers (Issuer objects), then the token service's own.
        let mut jwt_issuers = self.snapshot_issuers(&mut tx).await?;
        // Our issuer's published keys (a key is published from its creation, before it
        // signs, until the last token it signed has expired), grouped by issuer.
        let mut issuers: BTreeMap<String, Vec<JwtKey>> = BTreeMap::new();
        for row in self
            .query("SELECT kid, issuer, public_jwk FROM signing_keys WHERE retire_after IS NULL OR retire_after > ? ORDER BY active_from, kid")
            .bind(now)
            .fetch_all(&mut *tx)
            .await?
        {
            let jwk: String = row.try_get("public_jwk")?;
            let key: JwtKey = super::from_json("signing_keys.public_jwk", &jwk)?;
            issuers.entry(row.try_get("issuer")?).or_default().push(key);
        }
        let own_issuers: Vec<JwtIssuer> = issuers
            .into_iter()
            .map(|(issuer, keys)| JwtIssuer {
                issuer,
                audiences: vec![TOKEN_AUDIENCE.to_string()],
                claims: ClaimSource::Directory,
                claim_names: Default::default(),
                leeway_seconds: TOKEN_LEEWAY_SECS,
                keys,
            })
            .collect();
        jwt_issuers.extend(own_issuers);

        tx.commit().await?;
        Ok(Snapshot {
            revision,
            epoch,
            generated_at: now,
            roles,
            users,
            api_keys,
            sources,
            revoked_sessions,
            policies,
            jwt_issuers,
        })
    }
}
