//! Sources: senders of data, each with its own write-scoped API key.

use std::collections::BTreeMap;

use portcullis_wire::RateLimit;
use sqlx::{AnyConnection, Row};

use super::{Result, Store, Upsert, WriteOutcome, flag, from_json, to_json, unix_now};

/// A source as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub namespace: String,
    pub name: String,
    pub source_type: String,
    pub team: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub enabled: bool,
    pub rate_limit: Option<RateLimit>,
}

impl Store {
    /// Creates or updates a source.
    pub async fn upsert_source(&self, source: &SourceRow) -> Result<WriteOutcome> {
        self.upsert(source).await
    }

    /// Deletes a source and the API keys it owns.
    pub async fn delete_source(&self, namespace: &str, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_source", |tx| {
            let keys = self
                .query("DELETE FROM api_keys WHERE owner_kind = 'source' AND namespace = ? AND owner_name = ?")
                .bind(namespace)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            let deleted = self
                .query("DELETE FROM sources WHERE namespace = ? AND name = ?")
                .bind(namespace)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() + keys.rows_affected() > 0)
        })
    }

    pub async fn get_source(&self, namespace: &str, name: &str) -> Result<Option<SourceRow>> {
        let mut conn = self.pool.acquire().await?;
        self.load_source(&mut conn, namespace, name).await
    }

    async fn load_source(&self, conn: &mut AnyConnection, namespace: &str, name: &str) -> Result<Option<SourceRow>> {
        self.query("SELECT namespace, name, source_type, team_name, labels, enabled, rate_limit FROM sources WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .fetch_optional(conn)
            .await?
            .map(|row| decode_source(&row))
            .transpose()
    }
}

impl Upsert for SourceRow {
    const WHAT: &'static str = "upsert_source";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_source(conn, &self.namespace, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        let labels = to_json(&self.labels)?;
        let rate_limit = self.rate_limit.as_ref().map(to_json).transpose()?;
        let now = unix_now();
        if current.is_some() {
            store
                .query("UPDATE sources SET source_type = ?, team_name = ?, labels = ?, enabled = ?, rate_limit = ?, updated_at = ? WHERE namespace = ? AND name = ?")
                .bind(&self.source_type)
                .bind(&self.team)
                .bind(&labels)
                .bind(flag(self.enabled))
                .bind(&rate_limit)
                .bind(now)
                .bind(&self.namespace)
                .bind(&self.name)
                .execute(conn)
                .await?;
        } else {
            store
                .query("INSERT INTO sources (namespace, name, source_type, team_name, labels, enabled, rate_limit, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&self.namespace)
                .bind(&self.name)
                .bind(&self.source_type)
                .bind(&self.team)
                .bind(&labels)
                .bind(flag(self.enabled))
                .bind(&rate_limit)
                .bind(now)
                .bind(now)
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}

pub(super) fn decode_source(row: &sqlx::any::AnyRow) -> Result<SourceRow> {
    let rate_limit: Option<String> = row.try_get("rate_limit")?;
    Ok(SourceRow {
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        source_type: row.try_get("source_type")?,
        team: row.try_get("team_name")?,
        labels: from_json("sources.labels", &row.try_get::<String, _>("labels")?)?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        rate_limit: rate_limit.map(|r| from_json("sources.rate_limit", &r)).transpose()?,
    })
}
