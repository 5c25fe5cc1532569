//! `Source` (namespaced): a telemetry sender with its own write-scoped API key.

use std::collections::BTreeMap;

use kube::CustomResource;
use portcullis_wire::RateLimit;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Status;

/// A telemetry producer (log shipper, metrics agent, OTLP exporter…) that writes to the
/// protected API with its own write-scoped API key.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.io",
    version = "v1alpha1",
    kind = "Source",
    plural = "sources",
    shortname = "pcsrc",
    category = "portcullis",
    namespaced,
    status = "SourceStatus",
    doc = "A Portcullis source: a machine identity that sends telemetry, with its own write-scoped API key.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Kind of telemetry"
    ),
    printcolumn(
        name = "Team",
        type_ = "string",
        json_path = ".spec.team",
        description = "Owning team"
    ),
    printcolumn(
        name = "Enabled",
        type_ = "boolean",
        json_path = ".spec.enabled",
        description = "Whether the source may send"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the source is in the database"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// Kind of telemetry the source sends.
    #[serde(rename = "type")]
    pub source_type: SourceType,
    /// Team that owns the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = super::patterns::OBJECT_NAME))]
    pub team: Option<String>,
    /// Free-form labels attached to what the source sends.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 256}))]
    pub labels: BTreeMap<String, String>,
    /// Whether the source may send; a disabled source's key is refused.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Rate limit applied to everything this source sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

fn enabled_by_default() -> bool {
    true
}

/// Kind of telemetry a Source sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    Logs,
    Metrics,
    Traces,
    Otlp,
    Syslog,
    Http,
}

impl SourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceType::Logs => "logs",
            SourceType::Metrics => "metrics",
            SourceType::Traces => "traces",
            SourceType::Otlp => "otlp",
            SourceType::Syslog => "syslog",
            SourceType::Http => "http",
        }
    }
}

/// What the operator made of a Source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    #[serde(flatten)]
    pub common: Status,
    /// Secret holding the source's own API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub api_key_secret: Option<String>,
}

impl AsRef<Status> for SourceStatus {
    fn as_ref(&self) -> &Status {
        &self.common
    }
}
