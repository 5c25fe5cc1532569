//! The state directory: operator-made Secrets (generated API keys, the bootstrap
//! admin's password) kept in `secrets/<namespace>.yaml` so that they survive a restart
//! as they would in a cluster, and the policy snapshot file a sidecar reads.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use super::Error;
use super::apply::ensure_namespace;
use crate::controller;

/// Secrets the operator wrote (managed-by label), as (namespace, name) → manifest.
pub async fn operator_secrets(client: &Client) -> Result<BTreeMap<(String, String), Secret>, Error> {
    let api: Api<Secret> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/managed-by={}", controller::MANAGER)))
        .await?;
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
        let yaml = yaml_serde::to_string(&clean).map_err(std::io::Error::other)?;
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

/// Loads Secrets saved by [`save_secrets`] into the in-memory API.
pub async fn restore_secrets(client: &Client, state: &Path) -> Result<usize, Error> {
    let Ok(files) = std::fs::read_dir(state.join("secrets")) else {
        return Ok(0);
    };
    let mut count = 0;
    for file in files
        .filter_map(Result::ok)
        .filter(|f| f.path().extension().is_some_and(|e| e == "yaml"))
    {
        let path = file.path();
        let text = std::fs::read_to_string(&path).map_err(Error::Read)?;
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let secret: Secret = serde::Deserialize::deserialize(doc).map_err(|source| Error::SavedSecret {
                path: path.display().to_string(),
                source,
            })?;
            let namespace = secret.namespace().unwrap_or_default();
            ensure_namespace(client, &namespace).await?;
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            if api.get_opt(&secret.name_any()).await?.is_none() {
                api.create(&PostParams::default(), &secret).await?;
                count += 1;
            }
        }
    }
    Ok(count)
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

/// Creates or truncates `path`, readable by its owner only (it may hold keys).
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
