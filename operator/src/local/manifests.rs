//! Manifest loading: reads a directory of YAML (what a user would `kubectl apply`),
//! validates our kinds the way the API server would, and says what it refused and why.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::crd;

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
    for doc in yaml_serde::Deserializer::from_str(text) {
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

/// Identity of a manifest: (kind, namespace, name).
pub type ManifestKey = (String, Option<String>, String);

impl Manifest {
    pub fn key(&self) -> ManifestKey {
        (self.kind.clone(), self.namespace.clone(), self.name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_file_is_refused_whole_and_a_bad_object_alone() {
        let validator = crd::validate::Validator::new();
        let err = parse_file(&validator, "broken.yaml", "kind: User\nmetadata: [unclosed").unwrap_err();
        assert!(err.to_string().starts_with("broken.yaml: invalid YAML"), "{err}");
        // The position, so that a person finds the mistake.
        let err = parse_file(
            &validator,
            "tabs.yaml",
            "kind: User\nmetadata:\n  name: a\n\tspec: {}\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
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
