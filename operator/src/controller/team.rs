//! Team → `teams`, `team_members`.

use kube::ResourceExt;

use super::{Applied, Context, Reconciler, Result, Verdict};
use crate::crd::Team;
use crate::store::{StoreError, TeamRow};

impl Reconciler for Team {
    const KIND: &'static str = "team";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let mut row = TeamRow::new(self.name_any());
        row.display_name = self.spec.display_name.clone();
        row.description = self.spec.description.clone();
        for member in &self.spec.members {
            row = row.with_member(member.user.clone(), member.role);
        }
        match ctx.store.upsert_team(&row).await {
            Ok(_) => Ok(Verdict::ready(format!("{} member(s)", row.members.len())).into()),
            Err(StoreError::MissingReference { names, .. }) => {
                Ok(Verdict::not_ready("UserNotFound", format!("no User named {}", names.join(", "))).into())
            }
            Err(other) => Err(other.into()),
        }
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        ctx.store.delete_team(&self.name_any()).await?;
        Ok(())
    }
}
