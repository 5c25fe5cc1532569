//! Team → `teams`, `team_members`.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::{Applied, Context, Reconciled, Result, Verdict, run};
use crate::crd::Team;
use crate::store::{StoreError, TeamRow};

impl Reconciled for Team {
    const CONTROLLER: &'static str = "team";
    fn conditions(&self) -> &[Condition] {
        self.status.as_ref().map_or(&[], |s| &s.conditions)
    }
}

pub async fn reconcile(obj: Arc<Team>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<Team> = Api::all(ctx.client.clone());
    run(api, obj, ctx, apply, cleanup).await
}

async fn apply(team: Arc<Team>, ctx: Arc<Context>) -> Result<Applied> {
    let mut row = TeamRow::new(team.name_any());
    row.display_name = team.spec.display_name.clone();
    row.description = team.spec.description.clone();
    for member in &team.spec.members {
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

async fn cleanup(team: Arc<Team>, ctx: Arc<Context>) -> Result<()> {
    ctx.store.delete_team(&team.name_any()).await?;
    Ok(())
}
