//! API key material shared by APIKeys and Sources: the key lives in a Secret (written
//! once, owned by the object), its hash in the store. The Secret is the source of
//! truth: a hash missing from the database is restored from it, and a key is only
//! generated when there is no Secret.

use std::collections::BTreeMap;

use super::{Context, Result};
use crate::credentials::{self, generate_api_key};
use crate::store::{ApiKeyRow, KeyGrants, unix_now};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// Key of the Secret's data that holds the API key.
pub const SECRET_KEY: &str = "api-key";

/// Who a key is for and what it may do.
pub struct Grant<'a> {
    pub namespace: &'a str,
    /// Identity of the key's object in the store (`APIKey` name, or `source/<name>`).
    pub object: &'a str,
    pub grants: KeyGrants,
}

/// What [`ensure`] found or did.
pub struct KeyState {
    pub prefix: String,
    pub issued: bool,
}

/// Makes sure the key exists: in the Secret `secret_name` (owned by `owner`) and, as a
/// hash, in the store with the grant's owner, scopes and expiry. `rotate` replaces the
/// key, retiring the old one after the configured grace period.
pub async fn ensure(
    ctx: &Context,
    secret_name: &str,
    owner: OwnerReference,
    grant: &Grant<'_>,
    rotate: bool,
) -> Result<KeyState> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), grant.namespace);
    let secret = secrets.get_opt(secret_name).await?;
    if let Some(secret) = &secret
        && secret.labels().get(super::manager::MANAGED_BY).map(String::as_str) != Some(super::MANAGER)
    {
        // Made before Secrets were labelled: the owned-Secret watch selects on the label.
        let labels = BTreeMap::from([(super::manager::MANAGED_BY, super::MANAGER)]);
        let label = serde_json::json!({"metadata": {"labels": labels}});
        secrets
            .patch(secret_name, &PatchParams::default(), &Patch::Merge(&label))
            .await?;
    }
    let existing = secret.and_then(|s| key_of(&s));
    let stored = ctx.store.api_keys_of(grant.namespace, grant.object).await?;
    let now = unix_now();
    let state = match existing {
        Some(key) if !rotate => {
            let hash = credentials::hash_api_key(&key);
            if !stored.iter().any(|k| k.key_hash == hash) {
                // Drift: the row went missing; the Secret still holds the key.
                ctx.store
                    .insert_api_key(&row(grant, &hash, &credentials::display_prefix(&key), now))
                    .await?;
            }
            KeyState {
                prefix: credentials::display_prefix(&key),
                issued: false,
            }
        }
        previous => {
            // No Secret (first reconcile, or deleted behind our back) or a rotation.
            let retire_at = if rotate && previous.is_some() {
                now + i64::try_from(ctx.config.rotation_grace.as_secs()).unwrap_or(i64::MAX)
            } else {
                now
            };
            let fresh = generate_api_key();
            let live = stored.iter().any(|k| k.revoked_at.is_none_or(|at| at > retire_at));
            let retire = live.then_some(retire_at);
            ctx.store
                .issue_api_key(&row(grant, &fresh.hash, &fresh.prefix, now), retire)
                .await?;
            write_secret(&secrets, secret_name, owner, &fresh.key).await?;
            tracing::info!(namespace = grant.namespace, object = grant.object, prefix = %fresh.prefix, rotated = rotate, "issued API key");
            return Ok(KeyState {
                prefix: fresh.prefix,
                issued: true,
            });
        }
    };
    let grants = grant.grants.normalized();
    let stale = stored.iter().any(|k| k.revoked_at.is_none() && !grants.held_by(k));
    if stale {
        ctx.store
            .update_api_key_grants(grant.namespace, grant.object, &grants)
            .await?;
    }
    Ok(state)
}

fn row(grant: &Grant<'_>, hash: &str, prefix: &str, now: i64) -> ApiKeyRow {
    ApiKeyRow {
        key_hash: hash.to_string(),
        namespace: grant.namespace.to_string(),
        name: grant.object.to_string(),
        prefix: prefix.to_string(),
        owner_kind: grant.grants.owner_kind,
        owner_name: grant.grants.owner_name.clone(),
        scopes: grant.grants.scopes.clone(),
        roles: grant.grants.roles.clone(),
        teams: grant.grants.teams.clone(),
        honoured_in: grant.grants.honoured_in.clone(),
        expires_at: grant.grants.expires_at,
        revoked_at: None,
        created_at: now,
    }
}

fn key_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(SECRET_KEY)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|k| k.starts_with(credentials::API_KEY_PREFIX))
}

/// Creates the Secret, or replaces its key (rotation). The Secret is owned by the
/// object, so Kubernetes deletes it with the object.
async fn write_secret(secrets: &Api<Secret>, name: &str, owner: OwnerReference, key: &str) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: Some(vec![owner]),
            labels: Some(BTreeMap::from([(
                super::manager::MANAGED_BY.to_string(),
                super::MANAGER.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    match secrets.get_opt(name).await? {
        None => {
            secrets.create(&PostParams::default(), &secret).await?;
        }
        Some(current) => {
            let mut updated = current;
            updated
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(super::manager::MANAGED_BY.to_string(), super::MANAGER.to_string());
            updated.data = secret.data;
            updated.string_data = None;
            secrets.replace(name, &PostParams::default(), &updated).await?;
        }
    }
    Ok(())
}
