//! `PeerAuthentication` (`security.palisade.dev/v1`): which inbound traffic a workload accepts.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::PolicyStatus;

/// Mutual TLS requirements for inbound traffic to the selected workloads.
///
/// No selector in the root namespace: mesh-wide. No selector elsewhere: namespace-wide.
/// A selector: the matching workloads of this namespace.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "security.palisade.dev",
    version = "v1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    singular = "peerauthentication",
    shortname = "pa",
    category = "palisade",
    doc = "PeerAuthentication: the mutual TLS mode a workload's inbound traffic must use.",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mtls.mode","description":"Default mutual TLS mode"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status","description":"True when the policy is in force (status condition Accepted)"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason","description":"Why the policy is or is not in force"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.portLevelMtls) || self.portLevelMtls.size() == 0 || (has(self.selector) && has(self.selector.matchLabels) && self.selector.matchLabels.size() > 0)"
).message("portLevelMtls requires a non-empty selector.matchLabels"))]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// The workloads this policy applies to; absent or empty means every workload of the
    /// namespace (or of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS settings for the workload; absent means inherit from the parent scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Mutual TLS settings per workload (container) port; keys are port numbers 1-65535.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(key, key.matches('^[0-9]+$') && int(key) >= 1 && int(key) <= 65535)"
    ).message("portLevelMtls keys must be port numbers between 1 and 65535"))]
    #[schemars(schema_with = "port_map_schema")]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// JSON object keys are strings, so a map keyed by port number is an object whose values are
/// `MutualTls`; schemars would emit `patternProperties`, which CRD schemas may not use.
fn port_map_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "Mutual TLS settings per workload (container) port; keys are port numbers 1-65535.",
        "additionalProperties": generator.subschema_for::<MutualTls>(),
    })
}

/// Selects workloads by their labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all carry to be selected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when the selector names no label (it then selects every workload).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty()
    }

    /// True when every label of the selector is carried by `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

/// Mutual TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    /// The mode; absent is `UNSET` (inherit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
}

/// Inbound mutual TLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope.
    #[default]
    Unset,
    /// Plaintext only: connections are not tunnelled through mutual TLS.
    Disable,
    /// Mutual TLS or plaintext.
    Permissive,
    /// Mutual TLS only.
    Strict,
}

impl MtlsMode {
    /// The name users write (`STRICT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl MutualTls {
    /// The mode with Istio's default applied: absent is `UNSET`.
    pub fn effective_mode(&self) -> MtlsMode {
        self.mode.unwrap_or_default()
    }
}
