use portcullis_wire::{ApiVersions, Cors, PolicyRule};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Result, Store, WriteOutcome, from_json, to_json, unix_now};

/// An AccessPolicy as the database holds it: exactly what a snapshot carries.
pub type PolicyRow = portcullis_wire::PolicyEntry;

/// The `spec` column: what the sidecar enforces besides the selector.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecColumn {
    rules: Vec<PolicyRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cors: Option<Cors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_versions: Option<ApiVersions>,
}

impl Store {
    /// Creates or updates an access policy.
    pub async fn upsert_policy(&self, policy: &PolicyRow) -> Result<WriteOutcome> {
        if self.get_policy(&policy.namespace, &policy.name).await?.as_ref() == Some(policy) {
            return self.unchanged().await;
        }
        let selector = to_json(&policy.pod_selector)?;
        let spec = to_json(&SpecColumn {
            rules: policy.rules.clone(),
            cors: policy.cors.clone(),
            api_versions: policy.api_versions.clone(),
        })?;
        versioned_write!(self, "upsert_policy", |tx| {
            let current = self
                .query("SELECT namespace, name, pod_selector, spec FROM policies WHERE namespace = ? AND name = ?")
                .bind(&policy.namespace)
                .bind(&policy.name)
                .fetch_optional(&mut **tx)
                .await?
                .map(|row| decode_policy(&row))
                .transpose()?;
            let now = unix_now();
            match current {
                Some(existing) if existing == *policy => return Ok(false),
                Some(_) => {
                    self.query("UPDATE policies SET pod_selector = ?, spec = ?, updated_at = ? WHERE namespace = ? AND name = ?")
                        .bind(&selector)
                        .bind(&spec)
                        .bind(now)
                        .bind(&policy.namespace)
                        .bind(&policy.name)
                        .execute(&mut **tx)
                        .await?;
                }
                None => {
                    self.query("INSERT INTO policies (namespace, name, pod_selector, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
                        .bind(&policy.namespace)
                        .bind(&policy.name)
                        .bind(&selector)
                        .bind(&spec)
                        .bind(now)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Ok(true)
        })
    }

    pub async fn delete_policy(&self, namespace: &str, name: &str) -> Result<WriteOutcome> {
        versioned_write!(self, "delete_policy", |tx| {
            let deleted = self
                .query("DELETE FROM policies WHERE namespace = ? AND name = ?")
                .bind(namespace)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            Ok(deleted.rows_affected() > 0)
        })
    }

    pub async fn get_policy(&self, namespace: &str, name: &str) -> Result<Option<PolicyRow>> {
        self.query("SELECT namespace, name, pod_selector, spec FROM policies WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| decode_policy(&row))
            .transpose()
    }
}

pub(super) fn decode_policy(row: &sqlx::any::AnyRow) -> Result<PolicyRow> {
    let spec: SpecColumn = from_json("policies.spec", &row.try_get::<String, _>("spec")?)?;
    Ok(PolicyRow {
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        pod_selector: from_json("policies.pod_selector", &row.try_get::<String, _>("pod_selector")?)?,
        rules: spec.rules,
        cors: spec.cors,
        api_versions: spec.api_versions,
    })
}
