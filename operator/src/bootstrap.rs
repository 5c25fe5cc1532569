//! First-start state, applied idempotently at every start: the built-in roles, and an
//! administrator when nobody holds `admin`, with a random password written to a Secret
//! (never a known default, never logged).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};

use crate::controller::{MANAGER, Result};
use crate::credentials;
use crate::store::{Store, UserRow, builtin_roles};

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_EMAIL: &str = "admin@localhost.local";
/// Secret (in the operator's namespace) holding the bootstrap admin's credentials.
pub const ADMIN_SECRET: &str = "portcullis-initial-admin";

/// What bootstrap did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub roles_created: Vec<String>,
    pub admin_created: bool,
    pub secret_created: bool,
}

pub async fn run(store: &Store, client: &Client, namespace: &str) -> Result<Report> {
    let mut report = Report::default();
    for role in builtin_roles() {
        // Only when missing: a Role object of the same name may have changed it.
        if store.get_role(&role.name).await?.is_none() {
            store.upsert_role(&role).await?;
            report.roles_created.push(role.name);
        }
    }
    if !store.users_with_role("admin").await?.is_empty() {
        return Ok(report);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let password = match secrets.get_opt(ADMIN_SECRET).await? {
        Some(secret) => crate::controller::user::secret_value(&secret, "password").filter(|p| !p.is_empty()),
        None => None,
    };
    let password = match password {
        Some(p) => p,
        None => {
            let fresh = credentials::random_password();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(ADMIN_SECRET.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_string(),
                        MANAGER.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([
                    (
                        "username".to_string(),
                        k8s_openapi::ByteString(ADMIN_EMAIL.as_bytes().to_vec()),
                    ),
                    (
                        "password".to_string(),
                        k8s_openapi::ByteString(fresh.as_bytes().to_vec()),
                    ),
                ])),
                ..Secret::default()
            };
            secrets.create(&PostParams::default(), &secret).await?;
            report.secret_created = true;
            fresh
        }
    };
    store
        .upsert_user(&UserRow::new(ADMIN_USER, ADMIN_EMAIL).with_roles(["admin"]))
        .await?;
    let digest = credentials::sha256_hex(password.as_bytes());
    let hash = credentials::hash_password_blocking(password).await?;
    store.set_password(ADMIN_USER, &hash, Some(&digest)).await?;
    report.admin_created = true;
    tracing::info!(
        user = ADMIN_EMAIL,
        secret = %format!("{namespace}/{ADMIN_SECRET}"),
        "created the bootstrap administrator; its password is in the Secret"
    );
    Ok(report)
}
