//! AccessPolicy → `policies`, after checking what the schema cannot: that the sidecar
//! can compile every path glob (with the same parser it uses).

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use portcullis_wire::glob;

use super::{Applied, Context, Error, Reconciled, Result, Verdict, run};
use crate::crd::AccessPolicy;
use crate::store::PolicyRow;

impl Reconciled for AccessPolicy {
    const CONTROLLER: &'static str = "accesspolicy";
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

pub async fn reconcile(obj: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<AccessPolicy> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    run(api, obj, ctx, apply, cleanup).await
}

async fn apply(policy: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<Applied> {
    let problems: Vec<String> = policy
        .spec
        .rules
        .iter()
        .flat_map(|rule| {
            rule.paths
                .iter()
                .filter_map(move |p| glob::parse(p).err().map(|e| format!("rule {}: {e}", rule.name)))
        })
        .collect();
    if !problems.is_empty() {
        return Ok(Verdict::not_ready("InvalidPolicy", problems.join("; ")).into());
    }
    let row = PolicyRow {
        namespace: policy.namespace().ok_or(Error::MissingMetadata("namespace"))?,
        name: policy.name_any(),
        pod_selector: policy.spec.pod_selector.clone(),
        rules: policy.spec.rules.clone(),
        cors: policy.spec.cors.clone(),
        api_versions: policy.spec.api_versions.clone(),
    };
    ctx.store.upsert_policy(&row).await?;
    Ok(Verdict::ready(format!("{} rule(s)", row.rules.len())).into())
}

async fn cleanup(policy: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<()> {
    let namespace = policy.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    ctx.store.delete_policy(&namespace, &policy.name_any()).await?;
    Ok(())
}
