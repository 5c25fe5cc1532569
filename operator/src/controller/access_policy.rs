//! AccessPolicy → `policies`, after checking what the schema cannot: that the sidecar
//! can compile every path glob (with the same parser it uses), and that CORS does not
//! grant credentials to every origin.

use kube::ResourceExt;
use portcullis_wire::glob;

use super::{Applied, Context, Error, Reconciler, Result, Verdict};
use crate::crd::AccessPolicy;
use crate::store::PolicyRow;

impl Reconciler for AccessPolicy {
    const KIND: &'static str = "accesspolicy";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let mut problems: Vec<String> = self
            .spec
            .rules
            .iter()
            .flat_map(|rule| {
                rule.paths
                    .iter()
                    .filter_map(move |p| glob::parse(p).err().map(|e| format!("rule {}: {e}", rule.name)))
            })
            .collect();
        // The CRD's CEL rule says the same; an object that slipped past it is not applied.
        if self.spec.cors.as_ref().is_some_and(|c| c.wildcard_with_credentials()) {
            problems.push(
                "cors: allowedOrigins \"*\" with allowCredentials would let any site call the API with its users' cookies; list the origins".into(),
            );
        }
        if !problems.is_empty() {
            return Ok(Verdict::not_ready("InvalidPolicy", problems.join("; ")).into());
        }
        let row = PolicyRow {
            namespace: self.namespace().ok_or(Error::MissingMetadata("namespace"))?,
            name: self.name_any(),
            pod_selector: self.spec.pod_selector.clone(),
            rules: self.spec.rules.clone(),
            cors: self.spec.cors.clone(),
            api_versions: self.spec.api_versions.clone(),
            audit: self.spec.audit.clone(),
            path_matching: self.spec.path_matching,
        };
        ctx.store.upsert_policy(&row).await?;
        Ok(Verdict::ready(format!("{} rule(s)", row.rules.len())).into())
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        let namespace = self.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        ctx.store.delete_policy(&namespace, &self.name_any()).await?;
        Ok(())
    }
}
