//! Role → `roles`.

use kube::ResourceExt;

use super::{Applied, Context, Reconciler, Result, Verdict};
use crate::crd::Role;
use crate::store::{RoleRow, builtin_role};

impl Reconciler for Role {
    const KIND: &'static str = "role";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let mut row = RoleRow::new(self.name_any(), self.spec.scopes.iter().cloned());
        row.description = self.spec.description.clone();
        row.builtin = builtin_role(&row.name).is_some();
        ctx.store.upsert_role(&row).await?;
        // Messages hold nothing that changes without the object changing (like the
        // revision): a status that changes on every resync would be a write per resync.
        Ok(Verdict::ready(format!("role holds {} scope(s)", row.scopes.len())).into())
    }

    /// Deleting the Role of a built-in name restores the built-in definition rather than
    /// leaving the cluster without `admin`.
    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        match builtin_role(&self.name_any()) {
            Some(builtin) => ctx.store.upsert_role(&builtin).await?,
            None => ctx.store.delete_role(&self.name_any()).await?,
        };
        Ok(())
    }
}
