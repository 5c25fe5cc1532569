use std::collections::BTreeMap;

use portcullis_wire::RateLimit;
use sqlx::Row;

use super::{Result, Store, WriteOutcome, flag, from_json, to_json, unix_now};

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
        if self.get_source(&source.namespace, &source.name).await?.as_ref() == Some(source) {
            return self.unchanged().await;
        }
        let labels = to_json(&source.labels)?;
        let rate_limit = source.rate_limit.as_ref().map(to_json).transpose()?;
        versioned_write!(self, "upsert_source", |tx| {
            let current = self
                .query("SELECT namespace, name, source_type, team_name, labels, enabled, rate_limit FROM sources WHERE namespace = ? AND name = ?")
                .bind(&source.namespace)
                .bind(&source.name)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| decode_source(&row))
                .transpose()?;
            let now = unix_now();
            match current {
                Some(existing) if existing == *source => return Ok(false),
                Some(_) => {
                    self.query("UPDATE sources SET source_type = ?, team_name = ?, labels = ?, enabled = ?, rate_limit = ?, updated_at = ? WHERE namespace = ? AND name = ?")
                        .bind(&source.source_type)
                        .bind(&source.team)
                        .bind(&labels)
                        .bind(flag(source.enabled))
                        .bind(&rate_limit)
                        .bind(now)
                        .bind(&source.namespace)
                        .bind(&source.name)
                        .execute(&mut **tx)
                        .await?;
                }
                None => {
                    self.query("INSERT INTO sources (namespace, name, source_type, team_name, labels, enabled, rate_limit, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
                        .bind(&source.namespace)
                        .bind(&source.name)
                        .bind(&source.source_type)
                        .bind(&source.team)
                        .bind(&labels)
                        .bind(flag(source.enabled))
                        .bind(&rate_limit)
                        .bind(now)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Ok(true)
        })
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
        self.query("SELECT namespace, name, source_type, team_name, labels, enabled, rate_limit FROM sources WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_source(&row))
            .transpose()
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
