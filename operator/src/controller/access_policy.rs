//! AccessPolicy → `policies`, after checking what the schema cannot: path globs the
//! sidecar can compile.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

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

/// Checks one path glob: segments are literals, `*`, `{team}`, or a final `**`.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if !glob.starts_with('/') {
        return Err(format!("{glob:?} does not start with /"));
    }
    let segments: Vec<&str> = glob[1..].split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "**" if i + 1 == segments.len() => {}
            "**" => return Err(format!("{glob:?}: ** is only allowed as the last segment")),
            "*" | "{team}" => {}
            "" if i + 1 == segments.len() => {} // trailing slash
            "" => return Err(format!("{glob:?}: empty segment")),
            "." | ".." => return Err(format!("{glob:?}: dot segments never match a normalized path")),
            s if s.contains('*') || s.contains('{') || s.contains('}') => {
                return Err(format!("{glob:?}: {s:?} mixes a wildcard or capture with text"));
            }
            s if s.contains('%') || s.contains('\\') || s.contains(';') => {
                return Err(format!(
                    "{glob:?}: {s:?} holds a character the sidecar rejects in paths"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn apply(policy: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<Applied> {
    let problems: Vec<String> = policy
        .spec
        .rules
        .iter()
        .flat_map(|rule| {
            rule.paths
                .iter()
                .filter_map(move |p| check_glob(p).err().map(|e| format!("rule {}: {e}", rule.name)))
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

#[cfg(test)]
mod tests {
    use super::check_glob;

    #[test]
    fn globs_the_sidecar_can_compile() {
        for ok in [
            "/healthz",
            "/api/v1/**",
            "/api/v1/teams/{team}/**",
            "/api/*/items",
            "/api/v1/",
        ] {
            assert!(check_glob(ok).is_ok(), "{ok}");
        }
        for bad in [
            "api",
            "/a/**/b",
            "/a//b",
            "/a/../b",
            "/a/x*",
            "/a/{team}x",
            "/a/%2e",
            "/a\\b",
            "/a;b",
        ] {
            assert!(check_glob(bad).is_err(), "{bad}");
        }
    }
}
