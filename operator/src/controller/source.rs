//! Source → `sources`, plus the Source's own write-scoped API key in a Secret.

use kube::{Resource, ResourceExt};
use portcullis_wire::OwnerKind;
use serde_json::json;

use super::keys::{self, Grant};
use super::{Applied, Context, Error, Reconciler, Result, Verdict};
use crate::crd::Source;
use crate::store::{KeyGrants, SourceRow};

/// What a Source may do with its own key: send.
pub const SOURCE_SCOPES: &[&str] = &["write"];

/// Name of a Source's key Secret.
pub fn secret_name(source: &str) -> String {
    format!("{source}-source-key")
}

/// Identity of a Source's key in the store; `/` cannot occur in an APIKey's name, so
/// it never collides with one.
pub fn key_object(source: &str) -> String {
    format!("source/{source}")
}

impl Reconciler for Source {
    const KIND: &'static str = "source";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let namespace = self.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let name = self.name_any();
        let row = SourceRow {
            namespace: namespace.clone(),
            name: name.clone(),
            source_type: self.spec.source_type.as_str().to_string(),
            team: self.spec.team.clone(),
            labels: self.spec.labels.clone(),
            enabled: self.spec.enabled,
            rate_limit: self.spec.rate_limit.clone(),
        };
        ctx.store.upsert_source(&row).await?;
        let owner = self.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
        let scopes: Vec<String> = SOURCE_SCOPES.iter().map(|s| s.to_string()).collect();
        let object = key_object(&name);
        let grant = Grant {
            namespace: &namespace,
            object: &object,
            grants: KeyGrants::scopes_only(OwnerKind::Source, &name, &scopes, None),
        };
        let secret = secret_name(&name);
        let key = keys::ensure(ctx, &secret, owner, &grant, false).await?;
        let mut applied: Applied = match &self.spec.team {
            Some(team) if ctx.store.get_team(team).await?.is_none() => {
                Verdict::not_ready("TeamNotFound", format!("no Team named {team}")).into()
            }
            _ => Verdict::ready(format!("key {}… in Secret {secret}", key.prefix)).into(),
        };
        applied.extra_status.insert("apiKeySecret".into(), json!(secret));
        Ok(applied)
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        let namespace = self.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        ctx.store.delete_source(&namespace, &self.name_any()).await?;
        Ok(())
    }
}
