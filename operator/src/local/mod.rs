//! Local mode: the control plane without a cluster. Applies a directory of manifests
//! (the same YAML a user would `kubectl apply`, Secrets included) to a database through
//! the same reconcilers, with an in-memory Kubernetes API standing in for the API
//! server, reports each object's resulting status, and keeps watching the directory.
//!
//! Operator-made Secrets (generated API keys, the bootstrap admin's password) are kept
//! in the state directory, so that keys survive a restart as they would in a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod api;

pub use api::MemoryApi;

use crate::controller::{self, Context, Reconciler};
use crate::crd::{self, AccessPolicy, ApiKey, Role, Source, Team, User};

/// One object read from the manifests directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub value: Value,
}

/// A manifest (or a whole file) that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub object: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}: {object}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Reads every `*.yaml` / `*.yml` file of `dir`: valid objects, and problems (a file
/// that does not parse is skipped whole; an invalid object is skipped alone).
pub fn load_dir(dir: &Path) -> std::io::Result<(Vec<Manifest>, Vec<Problem>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    let validator = crd::validate::Validator::new();
    for path in files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem {
                    file,
                    object: None,
                    message: e.to_string(),
                });
                continue;
            }
        };
        match parse_file(&validator, &file, &text) {
            Ok((mut found, mut bad)) => {
                manifests.append(&mut found);
                problems.append(&mut bad);
            }
            Err(problem) => problems.push(problem),
        }
    }
    Ok((manifests, problems))
}

/// Parses one file. A YAML error rejects the whole file (as `kubectl apply -f` does).
pub fn parse_file(
    validator: &crd::validate::Validator,
    file: &str,
    text: &str,
) -> Result<(Vec<Manifest>, Vec<Problem>), Problem> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| Problem {
            file: file.to_string(),
            object: None,
            message: format!("invalid YAML: {e}"),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let mut manifests = Vec::new();
    let mut problems = Vec::new();
    for (i, value) in docs.into_iter().enumerate() {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let label = if name.is_empty() {
            format!("document {}", i + 1)
        } else {
            format!("{kind} {name}")
        };
        let problem = |message: String| Problem {
            file: file.to_string(),
            object: Some(label.clone()),
            message,
        };
        if kind.is_empty() || name.is_empty() || value["apiVersion"].as_str().is_none() {
            problems.push(problem("needs apiVersion, kind and metadata.name".into()));
            continue;
        }
        let ours = value["apiVersion"] == "portcullis.io/v1alpha1";
        if ours {
            if let Err(errors) = validator.validate(&value) {
                problems.push(problem(errors.join("; ")));
                continue;
            }
        } else if !(value["apiVersion"] == "v1" && matches!(kind.as_str(), "Secret" | "Namespace")) {
            problems.push(problem(format!(
                "{} {kind} is not applied in local mode (ignored)",
                value["apiVersion"]
            )));
            continue;
        }
        let namespaced = matches!(kind.as_str(), "APIKey" | "Source" | "AccessPolicy" | "Secret");
        let namespace = if namespaced {
            Some(value["metadata"]["namespace"].as_str().unwrap_or("default").to_string())
        } else {
            None
        };
        manifests.push(Manifest {
            file: file.to_string(),
            kind,
            namespace,
            name,
            value,
        });
    }
    Ok((manifests, problems))
}

/// A client of a fresh in-memory Kubernetes API that serves our kinds and Secrets.
pub fn memory_api() -> Client {
    MemoryApi::new().client()
}

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

/// Identity of a manifest: (kind, namespace, name).
pub type ManifestKey = (String, Option<String>, String);

impl Manifest {
    pub fn key(&self) -> ManifestKey {
        (self.kind.clone(), self.namespace.clone(), self.name.clone())
    }
}

/// Applies `manifests` to the in-memory API: creates what is new, updates what
/// changed, deletes what was in `previous` and is gone (so its rows are cleaned up by
/// the finalizer). Returns the keys to pass as `previous` next time.
pub async fn sync_objects(
    client: &Client,
    manifests: &[Manifest],
    previous: &BTreeSet<ManifestKey>,
) -> Result<BTreeSet<ManifestKey>, String> {
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

async fn ensure_namespace(client: &Client, name: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.map_err(|e| e.to_string())?.is_none() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).map_err(|e| e.to_string())?;
        api.create(&PostParams::default(), &ns)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn apply(client: &Client, m: &Manifest) -> Result<(), String> {
    match m.kind.as_str() {
        "Role" => apply_typed::<Role>(Api::all(client.clone()), m).await,
        "User" => apply_typed::<User>(Api::all(client.clone()), m).await,
        "Team" => apply_typed::<Team>(Api::all(client.clone()), m).await,
        "APIKey" => apply_typed::<ApiKey>(namespaced(client, m), m).await,
        "Source" => apply_typed::<Source>(namespaced(client, m), m).await,
        "AccessPolicy" => apply_typed::<AccessPolicy>(namespaced(client, m), m).await,
        "Secret" => apply_typed::<Secret>(namespaced(client, m), m).await,
        "Namespace" => ensure_namespace(client, &m.name).await,
        _ => Ok(()),
    }
}

async fn delete(client: &Client, kind: &str, namespace: Option<&str>, name: &str) -> Result<(), String> {
    let dp = DeleteParams::default();
    let ns = namespace.unwrap_or("default");
    let result = match kind {
        "Role" => Api::<Role>::all(client.clone()).delete(name, &dp).await.map(drop),
        "User" => Api::<User>::all(client.clone()).delete(name, &dp).await.map(drop),
        "Team" => Api::<Team>::all(client.clone()).delete(name, &dp).await.map(drop),
        "APIKey" => Api::<ApiKey>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        "Source" => Api::<Source>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        "AccessPolicy" => Api::<AccessPolicy>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        "Secret" => Api::<Secret>::namespaced(client.clone(), ns)
            .delete(name, &dp)
            .await
            .map(drop),
        _ => Ok(()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(format!("delete {kind} {name}: {e}")),
    }
}

fn namespaced<K>(client: &Client, m: &Manifest) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), m.namespace.as_deref().unwrap_or("default"))
}

/// Creates the object, or replaces its spec/data keeping metadata the API owns.
async fn apply_typed<K>(api: Api<K>, m: &Manifest) -> Result<(), String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let mut desired: K = serde_json::from_value(m.value.clone()).map_err(|e| format!("{}: {e}", m.file))?;
    match api.get_opt(&m.name).await.map_err(|e| e.to_string())? {
        None => {
            api.create(&PostParams::default(), &desired)
                .await
                .map_err(|e| format!("create {} {}: {e}", m.kind, m.name))?;
        }
        Some(current) => {
            let mut current_json = serde_json::to_value(&current).map_err(|e| e.to_string())?;
            let desired_json = serde_json::to_value(&desired).map_err(|e| e.to_string())?;
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
                current_json["metadata"]["annotations"] =
                    serde_json::to_value(&annotations).map_err(|e| e.to_string())?;
            }
            if changed {
                if current_json.get("spec").is_some() {
                    let generation = current.meta().generation.unwrap_or(1);
                    current_json["metadata"]["generation"] = serde_json::json!(generation + 1);
                }
                desired = serde_json::from_value(current_json).map_err(|e| e.to_string())?;
                api.replace(&m.name, &PostParams::default(), &desired)
                    .await
                    .map_err(|e| format!("update {} {}: {e}", m.kind, m.name))?;
            }
        }
    }
    Ok(())
}

/// Reconciles every object of our kinds, in dependency order, until a pass changes
/// neither the database nor any status (references resolve across passes, as watches
/// would make them in a cluster).
pub async fn converge(ctx: &Arc<Context>) -> Result<Vec<ObjectStatus>, String> {
    let client = &ctx.client;
    let mut last = (Vec::new(), -1);
    for pass in 0..6 {
        // After the first pass, only what is not settled yet: in dependency order, a
        // Ready object's references were all there when it was reconciled.
        let only_unsettled = pass > 0;
        reconcile_all::<Role>(ctx, only_unsettled).await?;
        reconcile_all::<User>(ctx, only_unsettled).await?;
        reconcile_all::<Team>(ctx, only_unsettled).await?;
        reconcile_all::<Source>(ctx, only_unsettled).await?;
        reconcile_all::<ApiKey>(ctx, only_unsettled).await?;
        reconcile_all::<AccessPolicy>(ctx, only_unsettled).await?;
        let now = (
            statuses(client).await?,
            ctx.store.revision().await.map_err(|e| e.to_string())?,
        );
        let settled = now == last;
        last = now;
        if settled {
            break;
        }
    }
    Ok(last.0)
}

/// Objects listed per request: bounds memory whatever the number of objects.
const PAGE: u32 = 500;

async fn reconcile_all<K: Reconciler>(ctx: &Arc<Context>, only_unsettled: bool) -> Result<(), String> {
    use futures::StreamExt;
    let list_api: Api<K> = Api::all(ctx.client.clone());
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = list_api.list(&params).await.map_err(|e| e.to_string())?;
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

/// The Ready condition of every object, in report order.
pub async fn statuses(client: &Client) -> Result<Vec<ObjectStatus>, String> {
    let mut out = Vec::new();
    collect::<Role>(client, "Role", &mut out).await?;
    collect::<User>(client, "User", &mut out).await?;
    collect::<Team>(client, "Team", &mut out).await?;
    collect::<Source>(client, "Source", &mut out).await?;
    collect::<ApiKey>(client, "APIKey", &mut out).await?;
    collect::<AccessPolicy>(client, "AccessPolicy", &mut out).await?;
    Ok(out)
}

async fn collect<K: Reconciler>(client: &Client, kind: &str, out: &mut Vec<ObjectStatus>) -> Result<(), String> {
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|e| e.to_string())?;
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

/// Secrets the operator wrote (managed-by label), as (namespace, name) → manifest.
pub async fn operator_secrets(client: &Client) -> Result<BTreeMap<(String, String), Secret>, String> {
    let api: Api<Secret> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/managed-by={}", controller::MANAGER)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect())
}

/// Saves operator-made Secrets, one file per namespace: `state/secrets/<namespace>.yaml`
/// (mode 0600), each Secret a YAML document headed by a `# <name>` comment. A file is
/// rewritten only when its content changes.
pub fn save_secrets(state: &Path, secrets: &BTreeMap<(String, String), Secret>) -> std::io::Result<()> {
    let dir = state.join("secrets");
    std::fs::create_dir_all(&dir)?;
    let mut files: BTreeMap<&str, String> = BTreeMap::new();
    for ((namespace, name), secret) in secrets {
        let mut clean = secret.clone();
        clean.metadata = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: secret.metadata.labels.clone(),
            ..Default::default()
        };
        let yaml = serde_yaml::to_string(&clean).map_err(std::io::Error::other)?;
        let file = files.entry(namespace.as_str()).or_default();
        file.push_str(&format!("---\n# {name}\n{yaml}"));
    }
    for (namespace, content) in files {
        let path = dir.join(format!("{namespace}.yaml"));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            write_private(&path, content.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes the policy snapshot a sidecar reads with `--snapshot-file` (until the control
/// plane serves snapshots over HTTP): to a temporary file renamed into place, so a
/// sidecar watching it never reads half a file.
pub fn save_snapshot(state: &Path, snapshot: &portcullis_wire::Snapshot) -> std::io::Result<()> {
    let path = state.join("snapshot.json");
    let tmp = state.join("snapshot.json.tmp");
    let bytes = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    write_private(&tmp, &bytes)?;
    std::fs::rename(tmp, path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)
}

/// Loads Secrets saved by [`save_secrets`] into the in-memory API.
pub async fn restore_secrets(client: &Client, state: &Path) -> Result<usize, String> {
    let Ok(files) = std::fs::read_dir(state.join("secrets")) else {
        return Ok(0);
    };
    let mut count = 0;
    for file in files
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(file.path()).map_err(|e| e.to_string())?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let secret: Secret =
                serde::Deserialize::deserialize(doc).map_err(|e| format!("{}: {e}", file.path().display()))?;
            let namespace = secret.namespace().unwrap_or_default();
            ensure_namespace(client, &namespace).await?;
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            if api
                .get_opt(&secret.name_any())
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                api.create(&PostParams::default(), &secret)
                    .await
                    .map_err(|e| e.to_string())?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// A fingerprint of the directory's YAML files, to notice edits.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .map(|p| {
                    let meta = std::fs::metadata(&p).ok();
                    let modified = meta.as_ref().and_then(|m| m.modified().ok());
                    let len = meta.map_or(0, |m| m.len());
                    (p, modified, len)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reconciles run at once within a pass.
const CONCURRENCY: usize = 8;

/// How often watch mode looks at the directory.
pub const POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_is_refused_whole_and_a_bad_object_alone() {
        let validator = crd::validate::Validator::new();
        let err = parse_file(&validator, "broken.yaml", "kind: User\nmetadata: [unclosed").unwrap_err();
        assert!(err.to_string().starts_with("broken.yaml: invalid YAML"), "{err}");
        let text = "apiVersion: portcullis.io/v1alpha1\nkind: User\nmetadata: {name: ok}\nspec: {email: ok@example.com}\n---\n\
                    apiVersion: portcullis.io/v1alpha1\nkind: User\nmetadata: {name: bad}\nspec: {email: nope}\n---\n\
                    apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
        let (ok, problems) = parse_file(&validator, "users.yaml", text).unwrap();
        assert_eq!(ok.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["ok"]);
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].to_string().starts_with("users.yaml: User bad: spec.email"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].to_string().contains("not applied in local mode"),
            "{}",
            problems[1]
        );
    }
}
