//! External JWT issuers: what their Issuer objects ask for, and the last good keys
//! fetched from them (shipped to sidecars in `jwt_issuers`).

use std::collections::BTreeMap;

use portcullis_wire::{ClaimNames, ClaimSource, JwtIssuer, JwtKey};
use sqlx::{AnyConnection, Row};

use super::{Result, Store, Upsert, WriteOutcome, from_json, to_json, unix_now};

/// An issuer as its Issuer object asks for it. Lists sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRow {
    pub name: String,
    /// The `iss` claim.
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    /// `roles`, `scopes`, `teams`, `email` → the claim holding each.
    pub claims: BTreeMap<String, String>,
    pub algorithms: Vec<String>,
}

/// The keys held for an issuer, and when they were fetched and go stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerKeys {
    pub keys: Vec<JwtKey>,
    pub fetched_at: Option<i64>,
    pub expires_at: Option<i64>,
}

impl Store {
    /// Creates or updates an issuer's settings; its keys are kept.
    pub async fn upsert_issuer(&self, issuer: &IssuerRow) -> Result<WriteOutcome> {
        self.upsert(issuer).await
    }

    pub async fn delete_issuer(&self, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_issuer", |tx| {
            let deleted = self
                .query("DELETE FROM issuers WHERE name = ?")
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    pub async fn get_issuer(&self, name: &str) -> Result<Option<IssuerRow>> {
        let mut conn = self.pool.acquire().await?;
        self.load_issuer(&mut conn, name).await
    }

    async fn load_issuer(&self, conn: &mut AnyConnection, name: &str) -> Result<Option<IssuerRow>> {
        self.query("SELECT name, issuer, jwks_uri, audiences, claims, algorithms FROM issuers WHERE name = ?")
            .bind(name)
            .fetch_optional(conn)
            .await?
            .map(|row| decode_issuer(&row))
            .transpose()
    }

    /// The keys held for `name` (`None`: no such issuer).
    pub async fn issuer_keys(&self, name: &str) -> Result<Option<IssuerKeys>> {
        let row = self
            .query("SELECT jwks, keys_fetched_at, keys_expire_at FROM issuers WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(IssuerKeys {
                keys: from_json("issuers.jwks", &row.try_get::<String, _>("jwks")?)?,
                fetched_at: row.try_get("keys_fetched_at")?,
                expires_at: row.try_get("keys_expire_at")?,
            })
        })
        .transpose()
    }

    /// Records a successful fetch. The revision moves only when the keys changed (a
    /// refetch that brings the same keys is no news to sidecars).
    pub async fn store_issuer_keys(&self, name: &str, fetched: &IssuerKeys) -> Result<WriteOutcome> {
        let jwks = to_json(&fetched.keys)?;
        let unchanged = self
            .issuer_keys(name)
            .await?
            .is_some_and(|held| held.keys == fetched.keys);
        if unchanged {
            unversioned_write!(self, "touch_issuer_keys", |tx| {
                self.query("UPDATE issuers SET keys_fetched_at = ?, keys_expire_at = ? WHERE name = ?")
                    .bind(fetched.fetched_at)
                    .bind(fetched.expires_at)
                    .bind(name)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })?;
            return self.unchanged().await;
        }
        versioned_write!(self, "store_issuer_keys", |tx| {
            let updated = self
                .query("UPDATE issuers SET jwks = ?, keys_fetched_at = ?, keys_expire_at = ?, updated_at = ? WHERE name = ?")
                .bind(&jwks)
                .bind(fetched.fetched_at)
                .bind(fetched.expires_at)
                .bind(unix_now())
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(updated.rows_affected() > 0)
        })
    }

    /// Names of the Issuers whose `iss` is `issuer`.
    pub async fn issuer_names_for(&self, issuer: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar(self.sql("SELECT name FROM issuers WHERE issuer = ? ORDER BY name"))
                .bind(issuer)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Issuers whose keys are stale at `now` (or were never fetched).
    pub async fn issuers_due(&self, now: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            self.sql("SELECT name FROM issuers WHERE keys_expire_at IS NULL OR keys_expire_at <= ? ORDER BY name"),
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every issuer with its keys, as sidecars verify with them (read in the snapshot's
    /// transaction).
    pub(super) async fn snapshot_issuers(&self, conn: &mut AnyConnection) -> Result<Vec<JwtIssuer>> {
        let rows = self
            .query("SELECT name, issuer, jwks_uri, audiences, claims, algorithms, jwks FROM issuers ORDER BY name")
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|row| {
                let issuer = decode_issuer(row)?;
                let keys: Vec<JwtKey> = from_json("issuers.jwks", &row.try_get::<String, _>("jwks")?)?;
                Ok(JwtIssuer {
                    issuer: issuer.issuer,
                    audiences: issuer.audiences,
                    claims: ClaimSource::Token,
                    claim_names: claim_names(&issuer.claims),
                    leeway_seconds: 30,
                    // Only keys of an allowed algorithm (the fetcher filters too; this
                    // holds when the allowed list shrank since).
                    keys: keys
                        .into_iter()
                        .filter(|k| issuer.algorithms.contains(&k.alg))
                        .collect(),
                })
            })
            .collect()
    }
}

/// The stored mapping (`roles`, `scopes`, `teams`, `email` → claim) as sidecars read it;
/// an entry missing from an older row keeps the default claim.
fn claim_names(stored: &BTreeMap<String, String>) -> ClaimNames {
    let mut names = ClaimNames::default();
    for (field, claim) in [
        (&mut names.roles, "roles"),
        (&mut names.scopes, "scopes"),
        (&mut names.teams, "teams"),
        (&mut names.email, "email"),
    ] {
        if let Some(stored) = stored.get(claim) {
            field.clone_from(stored);
        }
    }
    names
}

impl Upsert for IssuerRow {
    const WHAT: &'static str = "upsert_issuer";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_issuer(conn, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        let audiences = to_json(&self.audiences)?;
        let claims = to_json(&self.claims)?;
        let algorithms = to_json(&self.algorithms)?;
        let now = unix_now();
        match current {
            Some(current) => {
                // Another issuer URL or key location: the held keys are someone else's.
                let same_source = current.issuer == self.issuer && current.jwks_uri == self.jwks_uri;
                let sql = if same_source {
                    "UPDATE issuers SET issuer = ?, jwks_uri = ?, audiences = ?, claims = ?, algorithms = ?, updated_at = ? WHERE name = ?"
                } else {
                    "UPDATE issuers SET issuer = ?, jwks_uri = ?, audiences = ?, claims = ?, algorithms = ?, updated_at = ?, jwks = '[]', keys_fetched_at = NULL, keys_expire_at = NULL WHERE name = ?"
                };
                store
                    .query(sql)
                    .bind(&self.issuer)
                    .bind(&self.jwks_uri)
                    .bind(&audiences)
                    .bind(&claims)
                    .bind(&algorithms)
                    .bind(now)
                    .bind(&self.name)
                    .execute(conn)
                    .await?;
            }
            None => {
                store
                    .query("INSERT INTO issuers (name, issuer, jwks_uri, audiences, claims, algorithms, jwks, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, '[]', ?, ?)")
                    .bind(&self.name)
                    .bind(&self.issuer)
                    .bind(&self.jwks_uri)
                    .bind(&audiences)
                    .bind(&claims)
                    .bind(&algorithms)
                    .bind(now)
                    .bind(now)
                    .execute(conn)
                    .await?;
            }
        }
        Ok(())
    }
}

fn decode_issuer(row: &sqlx::any::AnyRow) -> Result<IssuerRow> {
    Ok(IssuerRow {
        name: row.try_get("name")?,
        issuer: row.try_get("issuer")?,
        jwks_uri: row.try_get("jwks_uri")?,
        audiences: from_json("issuers.audiences", &row.try_get::<String, _>("audiences")?)?,
        claims: from_json("issuers.claims", &row.try_get::<String, _>("claims")?)?,
        algorithms: from_json("issuers.algorithms", &row.try_get::<String, _>("algorithms")?)?,
    })
}
