//! `AuthorizationPolicy` (`security.palisade.dev/v1`): which peers may connect to a workload.
//!
//! Field for field Istio's `security.istio.io/v1` AuthorizationPolicy, so Istio manifests apply
//! after changing only `apiVersion`. Palisade's proxy works at L4: fields only an HTTP proxy can
//! check (methods, paths, hosts, request principals, `request.*` conditions) are accepted and
//! kept, and handled the way Istio handles them on TCP traffic (see [`crate::policy::authz`]).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::peer_authentication::WorkloadSelector;
use super::status::PolicyStatus;

/// Access control for the selected workloads.
///
/// No selector in the root namespace: mesh-wide; no selector elsewhere: namespace-wide; a
/// selector: the matching workloads of this namespace (of every namespace, in the root
/// namespace).
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "security.palisade.dev",
    version = "v1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    singular = "authorizationpolicy",
    shortname = "ap",
    category = "palisade",
    doc = "AuthorizationPolicy: which peers may connect to the selected workloads.",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action","description":"ALLOW (the default), DENY, AUDIT or CUSTOM"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status","description":"True when the policy is in force (status condition Accepted)"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason","description":"Why the policy is or is not in force"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.provider) || (has(self.action) && self.action == 'CUSTOM')"
).message("provider may only be set with action CUSTOM"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.action) || self.action != 'CUSTOM' || (has(self.provider) && has(self.provider.name) && self.provider.name != '')"
).message("action CUSTOM requires provider.name"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.selector) || (!has(self.targetRef) && (!has(self.targetRefs) || self.targetRefs.size() == 0))"
).message("selector cannot be combined with targetRef or targetRefs"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.targetRef) || !has(self.targetRefs) || self.targetRefs.size() == 0"
).message("targetRef and targetRefs cannot both be set"))]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The workloads this policy applies to; absent means every workload of the namespace (or
    /// of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A gateway or service this policy is attached to (Istio waypoints and gateways). Kept;
    /// a sidecar proxy is never such a target, so such a policy applies to no workload here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several targets; see `targetRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules that select connections; the policy matches when any rule does. Absent or empty
    /// matches nothing (an ALLOW policy without rules allows nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub rules: Vec<AuthorizationRule>,
    /// What a match means; absent is `ALLOW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthorizationAction>,
    /// The external authorizer of a CUSTOM policy (not supported by Palisade: such a policy
    /// denies the connections it applies to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// The action with Istio's default applied: absent is `ALLOW`.
    pub fn effective_action(&self) -> AuthorizationAction {
        self.action.unwrap_or_default()
    }
}

/// What a matching policy does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Allow matching connections; with any ALLOW policy applying, others are denied.
    #[default]
    Allow,
    /// Deny matching connections (checked before ALLOW).
    Deny,
    /// Mark matching requests for auditing; does not change the decision.
    Audit,
    /// Delegate to an external authorizer (`provider`).
    Custom,
}

impl AuthorizationAction {
    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizationAction::Allow => "ALLOW",
            AuthorizationAction::Deny => "DENY",
            AuthorizationAction::Audit => "AUDIT",
            AuthorizationAction::Custom => "CUSTOM",
        }
    }
}

impl std::fmt::Display for AuthorizationAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to the object a policy is attached to (Gateway API policy attachment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group of the target (empty for core).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Kind of the target (`Gateway`, `Service`, ...).
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target; must be the policy's own when set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The external authorizer of a CUSTOM policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The provider's name in the mesh configuration.
    #[serde(default)]
    pub name: String,
}

/// One rule: it matches when one `from` entry, one `to` entry and every `when` condition
/// match (an absent list places no constraint).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Who is connecting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("from must not be empty when set"))]
    #[schemars(length(max = 128))]
    pub from: Vec<RuleFrom>,
    /// What is being reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("to must not be empty when set"))]
    #[schemars(length(max = 128))]
    pub to: Vec<RuleTo>,
    /// Further conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("when must not be empty when set"))]
    #[schemars(length(max = 128))]
    pub when: Vec<Condition>,
}

/// One `from` entry.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.source) && (has(self.source.principals) || has(self.source.notPrincipals) || has(self.source.requestPrincipals) || has(self.source.notRequestPrincipals) || has(self.source.namespaces) || has(self.source.notNamespaces) || has(self.source.ipBlocks) || has(self.source.notIpBlocks) || has(self.source.remoteIpBlocks) || has(self.source.notRemoteIpBlocks) || has(self.source.serviceAccounts) || has(self.source.notServiceAccounts))"
).message("from.source must be set and not empty"))]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    /// The peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// One `to` entry.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.operation) && (has(self.operation.hosts) || has(self.operation.notHosts) || has(self.operation.ports) || has(self.operation.notPorts) || has(self.operation.methods) || has(self.operation.notMethods) || has(self.operation.paths) || has(self.operation.notPaths))"
).message("to.operation must be set and not empty"))]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    /// The operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// Properties of the peer. Set fields must all match; a list matches when any value does; a
/// `not` list matches when no value does.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.serviceAccounts) && !has(self.notServiceAccounts) || !has(self.principals) && !has(self.notPrincipals)"
).message("serviceAccounts and notServiceAccounts cannot be combined with principals or notPrincipals"))]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities from the mTLS certificate, `<trust domain>/ns/<ns>/sa/<sa>` (no
    /// `spiffe://`); a leading or trailing `*` is a wildcard, `*` alone any authenticated peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub principals: Vec<String>,
    /// Identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_principals: Vec<String>,
    /// End-user (JWT) principals: HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub request_principals: Vec<String>,
    /// End-user principals that must not match: HTTP only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces, taken from the peer's mTLS identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_namespaces: Vec<String>,
    /// Peer IP addresses or CIDR ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub ip_blocks: Vec<String>,
    /// Addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_ip_blocks: Vec<String>,
    /// Original client addresses (from a PROXY header or X-Forwarded-For); without either, the
    /// peer address, as here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_remote_ip_blocks: Vec<String>,
    /// Peer service accounts, `<ns>/<sa>`, or `<sa>` in the policy's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_service_accounts: Vec<String>,
}

/// Properties of what is reached. At L4 only `ports` and `notPorts` can be checked.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Request hosts (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub hosts: Vec<String>,
    /// Request hosts that must not match (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_hosts: Vec<String>,
    /// Destination (workload) ports, as decimal strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(p, p.matches('^[0-9]{1,5}$') && int(p) >= 1 && int(p) <= 65535)"
    ).message("ports must be port numbers between 1 and 65535"))]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(p, p.matches('^[0-9]{1,5}$') && int(p) >= 1 && int(p) <= 65535)"
    ).message("notPorts must be port numbers between 1 and 65535"))]
    pub not_ports: Vec<String>,
    /// HTTP methods (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub methods: Vec<String>,
    /// HTTP methods that must not match (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_methods: Vec<String>,
    /// Request paths (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub paths: Vec<String>,
    /// Request paths that must not match (HTTP only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_paths: Vec<String>,
}

/// A condition on a connection attribute named by `key`.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.values) && self.values.size() > 0) || (has(self.notValues) && self.notValues.size() > 0)"
).message("a condition needs values or notValues"))]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The attribute: `source.ip`, `remote.ip`, `source.namespace`, `source.principal`,
    /// `destination.ip`, `destination.port`, `connection.sni` (checked at L4), or an HTTP
    /// attribute such as `request.headers[...]`.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("key must not be empty"))]
    pub key: String,
    /// Values of which one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub not_values: Vec<String>,
}
