//! Applies manifests to the in-memory Kubernetes API as `kubectl apply` would: creates
//! what is new, updates what changed (bumping `metadata.generation` on a spec change),
//! and deletes what left the directory, so that the finalizer cleans its rows up.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Error;
use super::manifests::{Manifest, ManifestKey};
use crate::controller::ApiScope;
use crate::crd::{AccessPolicy, ApiKey, Issuer, Role, Source, Team, User};

/// Applies `manifests` to the in-memory API: creates what is new, updates what
/// changed, deletes what was in `previous` and is gone (so its rows are cleaned up by
/// the finalizer). Returns the keys to pass as `previous` next time.
pub async fn sync_objects(
    client: &Client,
    manifests: &[Manifest],
    previous: &BTreeSet<ManifestKey>,
) -> Result<BTreeSet<ManifestKey>, Error> {
    let now: BTreeSet<ManifestKey> = manifests.iter().map(Manifest::key).collect();
    for (kind, namespace, name) in previous.difference(&now) {
        delete(client, kind, namespace.as_deref(), name).await?;
    }
    for namespace in manifests
        .iter()
        .filter_map(|m| m.namespace.clone())
        .collect::<BTreeSet<_>>()
    {
        ensure_namespace(client, &namespace).await?;
    }
    for m in manifests {
        apply(client, m).await?;
    }
    Ok(now)
}

/// Creates the Namespace unless it exists.
pub(super) async fn ensure_namespace(client: &Client, name: &str) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_none() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        api.create(&PostParams::default(), &ns).await?;
    }
    Ok(())
}

async fn apply(client: &Client, m: &Manifest) -> Result<(), Error> {
    match m.kind.as_str() {
        "Role" => apply_typed::<Role>(client, m).await,
        "User" => apply_typed::<User>(client, m).await,
        "Team" => apply_typed::<Team>(client, m).await,
        "APIKey" => apply_typed::<ApiKey>(client, m).await,
        "Source" => apply_typed::<Source>(client, m).await,
        "AccessPolicy" => apply_typed::<AccessPolicy>(client, m).await,
        "Issuer" => apply_typed::<Issuer>(client, m).await,
        "Secret" => apply_typed::<Secret>(client, m).await,
        "Namespace" => ensure_namespace(client, &m.name).await,
        _ => Ok(()),
    }
}

async fn delete(client: &Client, kind: &str, namespace: Option<&str>, name: &str) -> Result<(), Error> {
    match kind {
        "Role" => delete_typed::<Role>(client, kind, namespace, name).await,
        "User" => delete_typed::<User>(client, kind, namespace, name).await,
        "Team" => delete_typed::<Team>(client, kind, namespace, name).await,
        "APIKey" => delete_typed::<ApiKey>(client, kind, namespace, name).await,
        "Source" => delete_typed::<Source>(client, kind, namespace, name).await,
        "AccessPolicy" => delete_typed::<AccessPolicy>(client, kind, namespace, name).await,
        "Issuer" => delete_typed::<Issuer>(client, kind, namespace, name).await,
        "Secret" => delete_typed::<Secret>(client, kind, namespace, name).await,
        _ => Ok(()),
    }
}

/// The API of a kind in the manifest's namespace (`default` when it names none), or
/// the cluster's.
fn api_in<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope: ApiScope>,
{
    <K::Scope as ApiScope>::api(client, Some(namespace.unwrap_or("default")))
}

async fn delete_typed<K>(client: &Client, kind: &str, namespace: Option<&str>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope: ApiScope> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api_in::<K>(client, namespace)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::Object {
            action: "delete",
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// Creates the object, or replaces its spec/data keeping metadata the API owns.
async fn apply_typed<K>(client: &Client, m: &Manifest) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope: ApiScope> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let api = api_in::<K>(client, m.namespace.as_deref());
    let object_error = |action, source| Error::Object {
        action,
        kind: m.kind.clone(),
        name: m.name.clone(),
        source,
    };
    let mut desired: K = serde_json::from_value(m.value.clone()).map_err(|source| Error::Manifest {
        file: m.file.clone(),
        source,
    })?;
    match api.get_opt(&m.name).await? {
        None => {
            api.create(&PostParams::default(), &desired)
                .await
                .map_err(|e| object_error("create", e))?;
        }
        Some(current) => {
            let mut current_json = serde_json::to_value(&current)?;
            let desired_json = serde_json::to_value(&desired)?;
            let mut changed = false;
            for field in ["spec", "data", "stringData", "type"] {
                if current_json.get(field) != desired_json.get(field) {
                    changed = true;
                    match desired_json.get(field) {
                        Some(v) => current_json[field] = v.clone(),
                        None => {
                            if let Some(obj) = current_json.as_object_mut() {
                                obj.remove(field);
                            }
                        }
                    }
                }
            }
            let annotations = desired.meta().annotations.clone();
            if current.meta().annotations != annotations {
                changed = true;
                current_json["metadata"]["annotations"] = serde_json::to_value(&annotations)?;
            }
            if changed {
                if current_json.get("spec").is_some() {
                    let generation = current.meta().generation.unwrap_or(1);
                    current_json["metadata"]["generation"] = serde_json::json!(generation + 1);
                }
                desired = serde_json::from_value(current_json)?;
                api.replace(&m.name, &PostParams::default(), &desired)
                    .await
                    .map_err(|e| object_error("update", e))?;
            }
        }
    }
    Ok(())
}
