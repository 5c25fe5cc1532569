//! The status report: one line per object with its Ready condition, as local mode
//! prints it after every convergence.

use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::{Error, PAGE};
use crate::controller::Reconciler;
use crate::crd::{AccessPolicy, ApiKey, Issuer, Role, Source, Team, User};

/// One line of the report: an object and its Ready condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub message: String,
}

impl std::fmt::Display for ObjectStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        };
        write!(
            f,
            "{:<13} {:<28} {:<6} {:<20} {}",
            self.kind, name, self.ready, self.reason, self.message
        )
    }
}

/// The Ready condition of every object, in report order.
pub async fn statuses(client: &Client) -> Result<Vec<ObjectStatus>, Error> {
    let mut out = Vec::new();
    collect::<Role>(client, "Role", &mut out).await?;
    collect::<User>(client, "User", &mut out).await?;
    collect::<Team>(client, "Team", &mut out).await?;
    collect::<Source>(client, "Source", &mut out).await?;
    collect::<ApiKey>(client, "APIKey", &mut out).await?;
    collect::<AccessPolicy>(client, "AccessPolicy", &mut out).await?;
    collect::<Issuer>(client, "Issuer", &mut out).await?;
    Ok(out)
}

async fn collect<K: Reconciler>(client: &Client, kind: &str, out: &mut Vec<ObjectStatus>) -> Result<(), Error> {
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        for obj in page.items {
            let conditions = obj.conditions();
            let paused = conditions.iter().find(|c| c.type_ == "Paused");
            let ready = conditions.iter().find(|c| c.type_ == "Ready");
            let shown = paused.or(ready);
            out.push(ObjectStatus {
                kind: kind.to_string(),
                namespace: obj.namespace(),
                name: obj.name_any(),
                ready: ready.map_or("-".into(), |c| c.status.clone()),
                reason: shown.map_or("Pending".into(), |c| c.reason.clone()),
                message: shown.map_or(String::new(), |c| c.message.clone()),
            });
        }
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(()),
        }
    }
}
