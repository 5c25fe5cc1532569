//! Role → `roles`.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{Applied, Context, Reconciled, Result, Verdict, run};
use crate::bootstrap;
use crate::crd::Role;
use crate::store::RoleRow;

impl Reconciled for Role {
    const CONTROLLER: &'static str = "role";
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

pub async fn reconcile(obj: Arc<Role>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<Role> = Api::all(ctx.client.clone());
    run(api, obj, ctx, apply, cleanup).await
}

async fn apply(role: Arc<Role>, ctx: Arc<Context>) -> Result<Applied> {
    let mut row = RoleRow::new(role.name_any(), role.spec.scopes.iter().cloned());
    row.description = role.spec.description.clone();
    row.builtin = bootstrap::builtin_role(&row.name).is_some();
    ctx.store.upsert_role(&row).await?;
    // Messages hold nothing that changes without the object changing (like the
    // revision): a status that changes on every resync would be a write per resync.
    Ok(Verdict::ready(format!("role holds {} scope(s)", row.scopes.len())).into())
}

/// Deleting the Role of a built-in name restores the built-in definition rather than
/// leaving the cluster without `admin`.
async fn cleanup(role: Arc<Role>, ctx: Arc<Context>) -> Result<()> {
    match bootstrap::builtin_role(&role.name_any()) {
        Some(builtin) => ctx.store.upsert_role(&builtin).await?,
        None => ctx.store.delete_role(&role.name_any()).await?,
    };
    Ok(())
}
