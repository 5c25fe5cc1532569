//! Source → `sources`, plus the Source's own write-scoped API key in a Secret.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use portcullis_wire::OwnerKind;
use serde_json::json;

use super::keys::{self, Grant};
use super::{Applied, Context, Error, Reconciled, Result, Verdict, run};
use crate::crd::Source;
use crate::store::SourceRow;

/// What a Source may do with its own key: send.
pub const SOURCE_SCOPES: &[&str] = &["write"];

impl Reconciled for Source {
    const CONTROLLER: &'static str = "source";
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.common.conditions)
    }
}

/// Name of a Source's key Secret.
pub fn secret_name(source: &str) -> String {
    format!("{source}-source-key")
}

/// Identity of a Source's key in the store; `/` cannot occur in an APIKey's name, so
/// it never collides with one.
pub fn key_object(source: &str) -> String {
    format!("source/{source}")
}

pub async fn reconcile(obj: Arc<Source>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<Source> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    run(api, obj, ctx, apply, cleanup).await
}

async fn apply(source: Arc<Source>, ctx: Arc<Context>) -> Result<Applied> {
    let namespace = source.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = source.name_any();
    let row = SourceRow {
        namespace: namespace.clone(),
        name: name.clone(),
        source_type: source.spec.source_type.as_str().to_string(),
        team: source.spec.team.clone(),
        labels: source.spec.labels.clone(),
        enabled: source.spec.enabled,
        rate_limit: source.spec.rate_limit.clone(),
    };
    ctx.store.upsert_source(&row).await?;
    let owner = source.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
    let scopes: Vec<String> = SOURCE_SCOPES.iter().map(|s| s.to_string()).collect();
    let object = key_object(&name);
    let grant = Grant {
        namespace: &namespace,
        object: &object,
        owner_kind: OwnerKind::Source,
        owner_name: &name,
        scopes: &scopes,
        expires_at: None,
    };
    let secret = secret_name(&name);
    let key = keys::ensure(&ctx, &secret, owner, &grant, false).await?;
    let mut applied: Applied = match &source.spec.team {
        Some(team) if ctx.store.get_team(team).await?.is_none() => {
            Verdict::not_ready("TeamNotFound", format!("no Team named {team}")).into()
        }
        _ => Verdict::ready(format!("key {}… in Secret {secret}", key.prefix)).into(),
    };
    applied.extra_status.insert("apiKeySecret".into(), json!(secret));
    Ok(applied)
}

async fn cleanup(source: Arc<Source>, ctx: Arc<Context>) -> Result<()> {
    let namespace = source.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    ctx.store.delete_source(&namespace, &source.name_any()).await?;
    Ok(())
}
