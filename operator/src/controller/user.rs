//! User → `users`, `user_roles`, and the password hash from `passwordSecretRef`.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::{Applied, Context, Reconciler, Result, Verdict};
use crate::crd::{SecretKeyRef, User};
use crate::credentials;
use crate::store::{StoreError, UserRow};

/// The row a User spec asks for.
pub fn desired_row(user: &User) -> UserRow {
    let mut row = UserRow::new(user.name_any(), user.spec.email.clone()).with_roles(user.spec.roles.iter().cloned());
    row.display_name = user.spec.display_name.clone();
    row.disabled = user.spec.disabled;
    row.preferences = user.spec.preferences.clone();
    row.require_two_factor = user.spec.require_two_factor;
    row
}

impl Reconciler for User {
    const KIND: &'static str = "user";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let row = desired_row(self);
        match ctx.store.upsert_user(&row).await {
            Ok(_) => {}
            Err(StoreError::MissingReference { names, .. }) => {
                return Ok(Verdict::not_ready("RoleNotFound", format!("no Role named {}", names.join(", "))).into());
            }
            Err(StoreError::EmailTaken { email, owner }) => {
                return Ok(Verdict::not_ready(
                    "EmailConflict",
                    format!("e-mail {email} already belongs to user {owner}"),
                )
                .into());
            }
            Err(other) => return Err(other.into()),
        }
        if let Some(secret_ref) = &self.spec.password_secret_ref
            && let Some(verdict) = apply_password(ctx, &row.name, secret_ref).await?
        {
            return Ok(verdict.into());
        }
        let mut message = format!("{} role(s)", row.roles.len());
        if row.disabled {
            message.push_str("; disabled: logins refused, sessions revoked");
        }
        Ok(Verdict::ready(message).into())
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        ctx.store.delete_user(&self.name_any()).await?;
        Ok(())
    }
}

/// Hashes the Secret's password into the store when the Secret's content differs from
/// what was last applied (its digest is kept, never the password). Returns a verdict
/// when the Secret is unusable.
async fn apply_password(ctx: &Context, user: &str, secret_ref: &SecretKeyRef) -> Result<Option<Verdict>> {
    let namespace = secret_ref.namespace.as_deref().unwrap_or(&ctx.config.namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = secrets.get_opt(&secret_ref.name).await? else {
        return Ok(Some(Verdict::not_ready(
            "SecretNotFound",
            format!("Secret {namespace}/{} not found", secret_ref.name),
        )));
    };
    let password = secret_value(&secret, &secret_ref.key);
    let Some(password) = password.filter(|p| !p.is_empty()) else {
        return Ok(Some(Verdict::not_ready(
            "SecretKeyNotFound",
            format!("Secret {namespace}/{} has no key {:?}", secret_ref.name, secret_ref.key),
        )));
    };
    let digest = credentials::sha256_hex(password.as_bytes());
    let current = ctx.store.password(user).await?;
    if current.as_ref().and_then(|p| p.source_digest.as_deref()) == Some(digest.as_str()) {
        return Ok(None);
    }
    let hash = credentials::hash_password_blocking(password).await?;
    ctx.store.set_password(user, &hash, Some(&digest)).await?;
    tracing::info!(user, "password set from Secret");
    Ok(None)
}

/// A Secret's value for `key`, from `data` or (not yet converted) `stringData`.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(bytes.0.clone()).ok();
    }
    secret.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}
