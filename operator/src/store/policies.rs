//! Access policies: which requests a sidecar lets through, per pod selector.

use portcullis_wire::{ApiVersions, AuditSettings, Cors, PathMatching, PolicyRule};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use super::{Result, Store, Upsert, WriteOutcome, from_json, to_json, unix_now};

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit: Option<AuditSettings>,
    #[serde(default, skip_serializing_if = "PathMatching::is_exact")]
    path_matching: PathMatching,
}

impl Store {
    /// Creates or updates an access policy.
    pub async fn upsert_policy(&self, policy: &PolicyRow) -> Result<WriteOutcome> {
        self.upsert(policy).await
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
        let mut conn = self.pool.acquire().await?;
        self.load_policy(&mut conn, namespace, name).await
    }

    async fn load_policy(&self, conn: &mut AnyConnection, namespace: &str, name: &str) -> Result<Option<PolicyRow>> {
        self.query("SELECT namespace, name, pod_selector, spec FROM policies WHERE namespace = ? AND name = ?")
            .bind(namespace)
            .bind(name)
            .fetch_optional(conn)
            .await?
            .map(|row| decode_policy(&row))
            .transpose()
    }
}

impl Upsert for PolicyRow {
    const WHAT: &'static str = "upsert_policy";

    async fn load(&self, store: &Store, conn: &mut AnyConnection) -> Result<Option<Self>> {
        store.load_policy(conn, &self.namespace, &self.name).await
    }

    async fn write(&self, store: &Store, conn: &mut AnyConnection, current: Option<&Self>) -> Result<()> {
        let selector = to_json(&self.pod_selector)?;
        let spec = to_json(&SpecColumn {
            rules: self.rules.clone(),
            cors: self.cors.clone(),
            api_versions: self.api_versions.clone(),
            audit: self.audit.clone(),
            path_matching: self.path_matching,
        })?;
        let now = unix_now();
        if current.is_some() {
            store
                .query(
                    "UPDATE policies SET pod_selector = ?, spec = ?, updated_at = ? WHERE namespace = ? AND name = ?",
                )
                .bind(&selector)
                .bind(&spec)
                .bind(now)
                .bind(&self.namespace)
                .bind(&self.name)
                .execute(conn)
                .await?;
        } else {
            store
                .query("INSERT INTO policies (namespace, name, pod_selector, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(&self.namespace)
                .bind(&self.name)
                .bind(&selector)
                .bind(&spec)
                .bind(now)
                .bind(now)
                .execute(conn)
                .await?;
        }
        Ok(())
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
        audit: spec.audit,
        path_matching: spec.path_matching,
    })
}
