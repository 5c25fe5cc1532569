//! The custom resources of group `portcullis.io`, version `v1alpha1`.
//!
//! These Rust types are the source of truth: `crds/*.yaml` is generated from them by the
//! `crdgen` binary, and a test fails when the two drift apart. Every field carries a doc
//! comment because it becomes the OpenAPI description that `kubectl explain` shows.

// Several `printcolumn(...)` attributes repeat `type_ = "string"`; clippy mistakes
// that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
mod access_policy;
#[allow(clippy::duplicated_attributes)]
mod api_key;
#[allow(clippy::duplicated_attributes)]
mod issuer;
#[allow(clippy::duplicated_attributes)]
mod role;
#[allow(clippy::duplicated_attributes)]
mod source;
#[allow(clippy::duplicated_attributes)]
mod team;
#[allow(clippy::duplicated_attributes)]
mod user;
pub mod validate;

pub use access_policy::{AccessPolicy, AccessPolicySpec};
pub use api_key::{ApiKey, ApiKeyOwner, ApiKeySpec, ApiKeyStatus};
pub use issuer::{Algorithm, ClaimMapping, ISSUER_URL, Issuer, IssuerSpec, IssuerStatus};
pub use role::{Role, RoleSpec};
pub use source::{Source, SourceSpec, SourceStatus, SourceType};
pub use team::{Team, TeamMember, TeamSpec};
pub use user::{User, UserSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "portcullis.io";

/// Patterns shared by several kinds, kept here so that one rule means one regex.
pub(crate) mod patterns {
    /// A Kubernetes object name (RFC 1123 subdomain), as used to reference Roles, Users, Teams.
    pub const OBJECT_NAME: &str = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$";
    /// A scope: `read`, `write`, `admin`, or `resource:verb`.
    pub const SCOPE: &str = r"^(read|write|admin|[a-z][a-z0-9-]*:[a-z][a-z0-9-]*)$";
    /// A deliberately simple e-mail shape; deliverability is SMTP's business.
    pub const EMAIL: &str = r"^[^@\s]+@[^@\s]+\.[^@\s]+$";
    /// A namespace name (RFC 1123 label).
    pub const NAMESPACE: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
    /// A namespace name, or `*` for every namespace.
    pub const NAMESPACE_OR_ANY: &str = r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$";
}

/// Status shared by every kind: what the operator last made of the object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The `metadata.generation` the operator last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current state of the object; `Ready` tells whether it is in the database and enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[schemars(transform = bound_conditions)]
    pub conditions: Vec<Condition>,
}

/// Adds to k8s-openapi's schema of `Condition` the bounds the API server declares for
/// `metav1.Condition` (k8s-openapi's carries none): an API server estimates the cost of
/// CEL rules from such bounds, and `operator/tests/crd_limits.rs` wants every field bounded.
/// [`bound_conditions`] for a status that flattens [`Status`] into its own fields (the
/// field's own transform does not survive the flattening).
pub(crate) fn bound_status_conditions(schema: &mut schemars::Schema) {
    let conditions = schema
        .get_mut("properties")
        .and_then(|p| p.get_mut("conditions"))
        .and_then(|c| <&mut schemars::Schema>::try_from(c).ok());
    if let Some(conditions) = conditions {
        bound_conditions(conditions);
    }
}

fn bound_conditions(schema: &mut schemars::Schema) {
    schema.insert("maxItems".into(), 16.into());
    let props = schema
        .get_mut("items")
        .and_then(|items| items.get_mut("properties"))
        .and_then(serde_json::Value::as_object_mut);
    if let Some(props) = props {
        for (field, max) in [("type", 316), ("reason", 1024), ("message", 32768)] {
            if let Some(field) = props.get_mut(field).and_then(serde_json::Value::as_object_mut) {
                field.insert("maxLength".into(), max.into());
            }
        }
        if let Some(status) = props.get_mut("status").and_then(serde_json::Value::as_object_mut) {
            status.insert("enum".into(), serde_json::json!(["True", "False", "Unknown"]));
        }
    }
}

/// Kinds whose status is just [`Status`] and kinds that extend it reach it alike.
impl AsRef<Status> for Status {
    fn as_ref(&self) -> &Status {
        self
    }
}

/// A key of a Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Secret; defaults to the operator's namespace for cluster-scoped owners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Key within the Secret's data.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_string()
}

/// The seven CustomResourceDefinitions, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Role::crd(),
        User::crd(),
        Team::crd(),
        ApiKey::crd(),
        Source::crd(),
        AccessPolicy::crd(),
        Issuer::crd(),
    ]
}

/// What `crds/` must hold: (file name, YAML) per CRD, e.g. `users.portcullis.io.yaml`.
pub fn rendered() -> Result<Vec<(String, String)>, yaml_serde::Error> {
    all()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.as_deref().unwrap_or("unnamed");
            let body = yaml_serde::to_string(crd)?;
            Ok((
                format!("{name}.yaml"),
                format!("# Generated by `cargo run -p portcullis-operator --bin crdgen` from operator/src/crd. Do not edit.\n{body}"),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Collects the paths of schema properties that lack a description.
    fn undescribed(path: &str, schema: &Value, out: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                let standard = path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                if !standard
                    && prop
                        .get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                {
                    out.push(here.clone());
                }
                undescribed(&here, prop, out);
            }
        }
        if let Some(items) = schema.get("items") {
            undescribed(&format!("{path}[]"), items, out);
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            undescribed(&format!("{path}{{}}"), extra, out);
        }
    }

    fn schema_of(crd: &CustomResourceDefinition) -> Value {
        let version = &crd.spec.versions[0];
        let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
        serde_json::to_value(schema.expect("CRD has a schema")).expect("schema serializes")
    }

    #[test]
    fn every_property_has_a_description() {
        for crd in all() {
            let mut missing = Vec::new();
            undescribed("", &schema_of(&crd), &mut missing);
            assert!(
                missing.is_empty(),
                "{}: no description on {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn every_crd_has_status_printer_columns_and_short_names() {
        for crd in all() {
            let kind = &crd.spec.names.kind;
            assert_eq!(crd.spec.group, GROUP);
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(
                version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
                "{kind}: no status subresource"
            );
            let columns: Vec<&str> = version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert!(
                columns.contains(&"Ready") && columns.contains(&"Age"),
                "{kind}: columns {columns:?}"
            );
            assert!(
                !crd.spec.names.short_names.clone().unwrap_or_default().is_empty(),
                "{kind}: no short name"
            );
            assert!(
                crd.spec
                    .names
                    .categories
                    .clone()
                    .unwrap_or_default()
                    .contains(&"portcullis".to_string()),
                "{kind}: not in category portcullis"
            );
            let status = &schema_of(&crd)["properties"]["status"]["properties"];
            for field in ["conditions", "observedGeneration"] {
                assert!(status.get(field).is_some(), "{kind}: status lacks {field}");
            }
        }
    }

    #[test]
    fn scopes_are_cluster_or_namespace_as_designed() {
        let scopes: Vec<(String, String)> = all().into_iter().map(|c| (c.spec.names.kind, c.spec.scope)).collect();
        for (kind, scope) in scopes {
            let expected = match kind.as_str() {
                "Role" | "User" | "Team" | "Issuer" => "Cluster",
                _ => "Namespaced",
            };
            assert_eq!(scope, expected, "{kind}");
        }
    }
}
