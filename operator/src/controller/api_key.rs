//! APIKey → `api_keys` (hash only), the key itself in a Secret owned by the APIKey.
//! Scopes are capped at the owner's; rotation on request keeps the old key for a grace
//! period.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use portcullis_wire::OwnerKind;
use serde_json::json;

use super::keys::{self, Grant};
use super::{Applied, Context, Error, Reconciler, Result, Verdict, source};
use crate::crd::ApiKey;
use crate::store::Store;

/// Set this annotation to a new value (a date, a ticket number) to rotate the key.
pub const ROTATE_ANNOTATION: &str = "portcullis.io/rotate";

/// The Secret an APIKey's key is written to.
pub fn secret_name(key: &ApiKey) -> String {
    key.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-apikey", key.name_any()))
}

/// The scopes an owner holds, or `None` when the owner does not exist.
async fn owner_scopes(store: &Store, kind: OwnerKind, namespace: &str, name: &str) -> Result<Option<BTreeSet<String>>> {
    match kind {
        OwnerKind::User => Ok(store.user_scopes(name).await?),
        OwnerKind::Source => Ok(store
            .get_source(namespace, name)
            .await?
            .map(|_| source::SOURCE_SCOPES.iter().map(|s| s.to_string()).collect())),
    }
}

impl Reconciler for ApiKey {
    const KIND: &'static str = "apikey";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let key = self;
        let namespace = key.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        let name = key.name_any();
        let (owner_kind, owner_name) = match (&key.spec.owner.user, &key.spec.owner.source) {
            (Some(user), None) => (OwnerKind::User, user.clone()),
            (None, Some(source)) => (OwnerKind::Source, source.clone()),
            // The CRD's CEL rule refuses this; an object that slipped past it gets no key.
            _ => return Ok(Verdict::not_ready("InvalidOwner", "name exactly one owner: user or source").into()),
        };
        let Some(held) = owner_scopes(&ctx.store, owner_kind, &namespace, &owner_name).await? else {
            let reason = if owner_kind == OwnerKind::User {
                "UserNotFound"
            } else {
                "SourceNotFound"
            };
            return Ok(Verdict::not_ready(reason, format!("no {} named {owner_name}", owner_kind.as_str())).into());
        };
        // Never more than the owner holds: excess scopes are dropped (fail closed) and
        // reported, the rest of the key keeps working.
        let requested: BTreeSet<String> = key.spec.scopes.iter().cloned().collect();
        let granted: Vec<String> = requested.intersection(&held).cloned().collect();
        let excess: Vec<String> = requested.difference(&held).cloned().collect();

        let rotation = key.annotations().get(ROTATE_ANNOTATION).cloned();
        let status = key.status.as_ref();
        let last_rotation = status.and_then(|s| s.rotation.clone());
        let rotate =
            rotation.is_some() && rotation != last_rotation && status.and_then(|s| s.prefix.as_ref()).is_some();

        let secret = secret_name(key);
        let owner = key.controller_owner_ref(&()).ok_or(Error::MissingMetadata("uid"))?;
        let grant = Grant {
            namespace: &namespace,
            object: &name,
            owner_kind,
            owner_name: &owner_name,
            scopes: &granted,
            expires_at: key.spec.expires_at.as_ref().map(|t| t.0.as_second()),
        };
        let state = keys::ensure(ctx, &secret, owner, &grant, rotate).await?;

        let verdict = if excess.is_empty() {
            Verdict::ready(format!("key {}… in Secret {secret}", state.prefix))
        } else {
            Verdict::not_ready(
                "ScopesExceedOwner",
                format!(
                    "{} {owner_name} does not hold {}; the key works without them",
                    owner_kind.as_str(),
                    excess.join(", ")
                ),
            )
        };
        let issued_at = if state.issued {
            Some(Time(jiff::Timestamp::now()))
        } else {
            status.and_then(|s| s.issued_at.clone())
        };
        let mut applied = Applied::from(verdict);
        applied.extra_status.insert("prefix".into(), json!(state.prefix));
        applied.extra_status.insert("secretName".into(), json!(secret));
        applied.extra_status.insert("issuedAt".into(), json!(issued_at));
        applied
            .extra_status
            .insert("rotation".into(), json!(rotation.or(last_rotation)));
        Ok(applied)
    }

    /// Deleting an APIKey revokes it at once: its rows go, so the next snapshot refuses it.
    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        let namespace = self.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        ctx.store.delete_api_keys(&namespace, &self.name_any()).await?;
        Ok(())
    }
}
