//! Convergence: reconciles every object of our kinds, in dependency order, pass after
//! pass until nothing changes, as the watches of a cluster would make it.

use std::sync::Arc;

use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::report::{ObjectStatus, statuses};
use super::{Error, PAGE};
use crate::controller::{self, Context, Reconciler};
use crate::crd::{AccessPolicy, ApiKey, Issuer, Role, Source, Team, User};

/// Reconciles run at once within a pass.
const CONCURRENCY: usize = 8;

/// Passes at the most; a pass that changes nothing ends convergence sooner.
const PASSES: usize = 6;

/// Reconciles every object of our kinds, in dependency order, until a pass changes
/// neither the database nor any status (references resolve across passes, as watches
/// would make them in a cluster).
pub async fn converge(ctx: &Arc<Context>) -> Result<Vec<ObjectStatus>, Error> {
    let client = &ctx.client;
    let mut last = (Vec::new(), -1);
    for pass in 0..PASSES {
        // After the first pass, only what is not settled yet: in dependency order, a
        // Ready object's references were all there when it was reconciled.
        let only_unsettled = pass > 0;
        reconcile_all::<Role>(ctx, only_unsettled).await?;
        reconcile_all::<User>(ctx, only_unsettled).await?;
        reconcile_all::<Team>(ctx, only_unsettled).await?;
        reconcile_all::<Source>(ctx, only_unsettled).await?;
        reconcile_all::<ApiKey>(ctx, only_unsettled).await?;
        reconcile_all::<AccessPolicy>(ctx, only_unsettled).await?;
        reconcile_all::<Issuer>(ctx, only_unsettled).await?;
        let now = (statuses(client).await?, ctx.store.revision().await?);
        let settled = now == last;
        last = now;
        if settled {
            break;
        }
    }
    Ok(last.0)
}

async fn reconcile_all<K: Reconciler>(ctx: &Arc<Context>, only_unsettled: bool) -> Result<(), Error> {
    use futures::StreamExt;
    let list_api: Api<K> = Api::all(ctx.client.clone());
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = list_api.list(&params).await?;
        // As a controller would, several at a time. Errors are already in the object's
        // status (and logged); the report shows them.
        let todo = page.items.into_iter().filter(|obj| !(only_unsettled && settled(obj)));
        futures::stream::iter(todo)
            .for_each_concurrent(CONCURRENCY, |obj| {
                let api = obj.api(&ctx.client);
                let name = obj.name_any();
                let fresh = obj.meta().deletion_timestamp.is_none()
                    && !obj.finalizers().iter().any(|f| f == controller::FINALIZER);
                async move {
                    let _ = controller::reconcile(Arc::new(obj), ctx.clone()).await;
                    // The first reconcile of a new object only adds the finalizer; in a
                    // cluster the resulting watch event brings it straight back.
                    if fresh && let Ok(Some(obj)) = api.get_opt(&name).await {
                        let _ = controller::reconcile(Arc::new(obj), ctx.clone()).await;
                    }
                }
            })
            .await;
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(()),
        }
    }
}

/// Ready for the generation it has, and not being deleted.
fn settled<K: Reconciler>(obj: &K) -> bool {
    let generation = obj.meta().generation;
    obj.meta().deletion_timestamp.is_none()
        && obj
            .conditions()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == generation)
}
