//! APIKey → `api_keys` (hash only), the key itself in a Secret owned by the APIKey.
//! A key is issued only in a namespace its owning User allows (`apiKeyNamespaces`); it
//! carries its scopes, and roles and team roles only when it asks, each capped at the
//! owner's; rotation on request keeps the old key for a grace period.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use portcullis_wire::OwnerKind;
use serde_json::json;

use super::keys::{self, Grant};
use super::{Applied, Context, Error, Reconciler, Result, Verdict, source};
use crate::crd::{ApiKey, User};
use crate::store::KeyGrants;

/// Set this annotation to a new value (a date, a ticket number) to rotate the key.
pub const ROTATE_ANNOTATION: &str = "portcullis.io/rotate";

/// The Secret an APIKey's key is written to.
pub fn secret_name(key: &ApiKey) -> String {
    key.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-apikey", key.name_any()))
}

/// What an owner may hand to its keys: scopes, roles, teams, and the namespaces whose
/// keys may act for it (`None` for a Source: its keys stay in its namespace).
struct Holdings {
    scopes: BTreeSet<String>,
    roles: BTreeSet<String>,
    teams: BTreeSet<String>,
    key_namespaces: Option<Vec<String>>,
}

impl Holdings {
    /// Whether this owner lets APIKeys of `namespace` act for it.
    fn allows(&self, namespace: &str) -> bool {
        self.key_namespaces
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|n| n == "*" || n == namespace))
    }
}

/// What the owner holds, or `None` when it does not exist.
async fn holdings(ctx: &Context, kind: OwnerKind, namespace: &str, name: &str) -> Result<Option<Holdings>> {
    match kind {
        OwnerKind::User => {
            let Some(scopes) = ctx.store.user_scopes(name).await? else {
                return Ok(None);
            };
            let Some(user) = ctx.store.get_user(name).await? else {
                return Ok(None);
            };
            // Where keys may act for the user is the User object's say, read from the
            // cluster (a User missing there allows nothing).
            let users: Api<User> = Api::all(ctx.client.clone());
            let key_namespaces = users
                .get_opt(name)
                .await?
                .map(|u| u.spec.api_key_namespaces)
                .unwrap_or_default();
            Ok(Some(Holdings {
                scopes,
                roles: user.roles.into_iter().collect(),
                teams: ctx.store.user_teams(name).await?.into_iter().collect(),
                key_namespaces: Some(key_namespaces),
            }))
        }
        OwnerKind::Source => Ok(ctx.store.get_source(namespace, name).await?.map(|_| Holdings {
            scopes: source::SOURCE_SCOPES.iter().map(|s| s.to_string()).collect(),
            roles: BTreeSet::new(),
            teams: BTreeSet::new(),
            key_namespaces: None,
        })),
    }
}

/// `requested ∩ held`, and what was asked beyond it.
fn split(requested: &[String], held: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let requested: BTreeSet<&String> = requested.iter().collect();
    let (granted, excess): (Vec<&String>, Vec<&String>) = requested.into_iter().partition(|r| held.contains(*r));
    (
        granted.into_iter().cloned().collect(),
        excess.into_iter().cloned().collect(),
    )
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
        let Some(held) = holdings(ctx, owner_kind, &namespace, &owner_name).await? else {
            let reason = if owner_kind == OwnerKind::User {
                "UserNotFound"
            } else {
                "SourceNotFound"
            };
            return Ok(Verdict::not_ready(reason, format!("no {} named {owner_name}", owner_kind.as_str())).into());
        };
        // Whoever may create APIKeys here must not gain the authority of a user who did
        // not allow it: no key (and no Secret), and any key issued before goes at once.
        if !held.allows(&namespace) {
            ctx.store.delete_api_keys(&namespace, &name).await?;
            return Ok(Verdict::not_ready(
                "NamespaceNotAllowed",
                format!(
                    "user {owner_name} does not allow API keys in namespace {namespace} (User spec.apiKeyNamespaces); no key issued"
                ),
            )
            .into());
        }
        // Never more than the owner holds: what exceeds it is dropped (fail closed) and
        // reported, the rest of the key keeps working.
        let (scopes, excess_scopes) = split(&key.spec.scopes, &held.scopes);
        let (roles, excess_roles) = split(&key.spec.roles, &held.roles);
        let (teams, excess_teams) = split(&key.spec.teams, &held.teams);
        let (honoured_in, refused_namespaces): (Vec<String>, Vec<String>) = key
            .spec
            .honoured_in
            .iter()
            .filter(|n| **n != namespace)
            .cloned()
            .partition(|n| held.key_namespaces.is_some() && held.allows(n));

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
            grants: KeyGrants {
                owner_kind,
                owner_name: owner_name.clone(),
                scopes,
                roles,
                teams,
                honoured_in,
                expires_at: key.spec.expires_at.as_ref().map(|t| t.0.as_second()),
            },
        };
        let state = keys::ensure(ctx, &secret, owner, &grant, rotate).await?;

        let owner_label = format!("{} {owner_name}", owner_kind.as_str());
        let verdict = if !excess_scopes.is_empty() {
            Verdict::not_ready(
                "ScopesExceedOwner",
                format!(
                    "{owner_label} does not hold {}; the key works without them",
                    excess_scopes.join(", ")
                ),
            )
        } else if !excess_roles.is_empty() || !excess_teams.is_empty() {
            let missing: Vec<String> = excess_roles
                .iter()
                .map(|r| format!("role {r}"))
                .chain(excess_teams.iter().map(|t| format!("team {t}")))
                .collect();
            Verdict::not_ready(
                "RolesExceedOwner",
                format!(
                    "{owner_label} does not hold {}; the key works without them",
                    missing.join(", ")
                ),
            )
        } else if !refused_namespaces.is_empty() {
            Verdict::not_ready(
                "NamespaceNotAllowed",
                format!(
                    "{owner_label} does not allow its keys in {}; the key is honoured without them",
                    refused_namespaces.join(", ")
                ),
            )
        } else {
            Verdict::ready(format!("key {}… in Secret {secret}", state.prefix))
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
