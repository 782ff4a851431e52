//! Plain input and output data of the policy engine: no Kubernetes client, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::{ClientTlsSettings, DestinationRuleSpec, MtlsMode, PeerAuthenticationSpec};

/// Label that marks a workload as carrying a Palisade proxy (injected by the webhook).
pub const TLS_MODE_LABEL: &str = "security.palisade.dev/tlsMode";
/// Value of [`TLS_MODE_LABEL`] on meshed workloads.
pub const TLS_MODE_PALISADE: &str = "palisade";

/// Mesh-wide settings the engine needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// Namespace whose unselected policies are mesh-wide (default `palisade-system`).
    pub root_namespace: String,
    /// Cluster DNS suffix used to expand short host names (default `cluster.local`).
    pub domain_suffix: String,
    /// SPIFFE trust domain (default `cluster.local`).
    pub trust_domain: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            root_namespace: "palisade-system".to_string(),
            domain_suffix: "cluster.local".to_string(),
            trust_domain: "cluster.local".to_string(),
        }
    }
}

/// Kind of a policy object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyKind {
    /// `PeerAuthentication`.
    PeerAuthentication,
    /// `DestinationRule`.
    DestinationRule,
    /// `AuthorizationPolicy`.
    AuthorizationPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::PeerAuthentication => "PeerAuthentication",
            PolicyKind::DestinationRule => "DestinationRule",
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }
}

/// Names one policy object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: PolicyKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// What the engine needs of an object's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyMeta {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// `metadata.creationTimestamp`, when known.
    pub creation_timestamp: Option<Timestamp>,
    /// Position in the input (file order), used as the age of objects without a timestamp.
    pub seq: u64,
}

impl PolicyMeta {
    /// Sort key for "oldest wins": objects with a timestamp are older than those without; by
    /// timestamp, then (without timestamps) by input order, then by name.
    pub fn age_key(&self) -> (bool, Option<Timestamp>, u64, &str) {
        let seq = if self.creation_timestamp.is_some() {
            0
        } else {
            self.seq
        };
        (
            self.creation_timestamp.is_none(),
            self.creation_timestamp,
            seq,
            &self.name,
        )
    }
}

/// A policy object: metadata plus spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy<S> {
    /// Metadata.
    pub meta: PolicyMeta,
    /// The spec as the user wrote it.
    pub spec: S,
}

/// A namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// A workload (a pod, or a set of identical pods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Name (pod name or a workload name).
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Service account the pod runs as.
    pub service_account: String,
    /// Container ports.
    pub ports: Vec<WorkloadPort>,
}

impl Workload {
    /// True when the workload carries the injected `security.palisade.dev/tlsMode=palisade` label.
    pub fn is_meshed(&self) -> bool {
        self.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_PALISADE)
    }
}

/// A container port of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadPort {
    /// Port name, if any (services may target it by name).
    pub name: Option<String>,
    /// Port number.
    pub port: u16,
}

/// A Kubernetes Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pod selector; empty selects nothing (a selector-less service).
    pub selector: BTreeMap<String, String>,
    /// Service ports.
    pub ports: Vec<ServicePortInfo>,
}

/// A port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Port name, if any.
    pub name: Option<String>,
    /// The port clients dial.
    pub port: u16,
    /// The workload port traffic goes to.
    pub target_port: TargetPort,
}

/// A service's target port: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A container port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

impl Default for TargetPort {
    fn default() -> Self {
        TargetPort::Number(0)
    }
}

/// Everything the engine resolves over.
#[derive(Clone, Debug, Default)]
pub struct MeshInput {
    /// Mesh settings.
    pub config: MeshConfig,
    /// Known namespaces.
    pub namespaces: Vec<NamespaceInfo>,
    /// PeerAuthentication objects.
    pub peer_authentications: Vec<Policy<PeerAuthenticationSpec>>,
    /// DestinationRule objects.
    pub destination_rules: Vec<Policy<DestinationRuleSpec>>,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<ServiceInfo>,
    /// True when `workloads` and `services` are the complete inventory of the mesh, so "this
    /// selector matches nothing" can be reported. Offline explanations set it to false.
    pub inventory_complete: bool,
}

/// Scope at which a PeerAuthentication applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// No selector, in the root namespace.
    Mesh,
    /// No selector, in another namespace.
    Namespace,
    /// A selector.
    Workload,
    /// A `portLevelMtls` entry of a workload policy.
    Port,
}

/// An object that decided part of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decider {
    /// The object.
    pub object: ObjectRef,
    /// The scope at which it decided.
    pub scope: Scope,
}

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational: behaviour as designed that users often miss.
    Info,
    /// Something in the object has no effect or lost to another object.
    Warning,
    /// The object is invalid and ignored (in whole or in part).
    Error,
}

/// What a diagnostic is about, for status conditions and tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum DiagnosticKind {
    /// Lost to an older policy in the same scope.
    Conflict {
        /// The policy that won.
        winner: ObjectRef,
    },
    /// A selector policy in the root namespace: applies to nothing.
    RootNamespaceSelector,
    /// The selector matches no workload (only when the inventory is complete).
    SelectsNothing,
    /// Part of the object was dropped when merging with an older rule for the same host.
    MergeDropped {
        /// The rule it merged into.
        into: ObjectRef,
        /// What was dropped (`trafficPolicy`, `subset reviews-v1`, ...).
        what: String,
    },
    /// A rule for the same host with a different `exportTo` was not merged.
    NotMerged {
        /// The rule that was used instead.
        used: ObjectRef,
    },
    /// A field is accepted and kept but not enforced by Palisade.
    NotEnforced {
        /// JSON path of the field.
        field: String,
    },
    /// A field is invalid or contradicts another and is ignored.
    Invalid {
        /// JSON path of the field.
        field: String,
    },
    /// A field asks for something Palisade does not do (an AuthorizationPolicy's CUSTOM
    /// action); the object fails closed.
    Unsupported {
        /// JSON path of the field.
        field: String,
    },
    /// An ALLOW AuthorizationPolicy whose rules can never match: it allows nothing, so the
    /// workloads it applies to accept only what another ALLOW policy allows.
    AllowsNothing,
    /// An AuthorizationPolicy with a rule that matches every connection (`rules: [{}]`).
    MatchesEverything {
        /// JSON path of the rule.
        field: String,
    },
    /// A lookup asked for a subset that the rule (after merging) does not define; the subset's
    /// policy is ignored and all endpoints of the service are used.
    UnknownSubset {
        /// The subset name asked for.
        subset: String,
    },
}

/// One finding about one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// How bad it is.
    pub severity: Severity,
    /// The object it is about.
    pub object: ObjectRef,
    /// Machine-readable kind.
    pub kind: DiagnosticKind,
    /// Human-readable explanation.
    pub message: String,
}

/// The effective inbound policy of one workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InboundDecision {
    /// Mode for ports without a port-level entry (never `UNSET`).
    pub mode: MtlsMode,
    /// Ports whose mode was set explicitly by `portLevelMtls` (never `UNSET`).
    pub port_modes: BTreeMap<u16, MtlsMode>,
    /// The policies that decided, outermost scope first.
    pub decided_by: Vec<Decider>,
    /// Findings about the policies considered for this workload (losers in its scopes, ...).
    pub diagnostics: Vec<Diagnostic>,
}

impl InboundDecision {
    /// The mode that applies to traffic arriving on container port `port`.
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.port_modes.get(&port).copied().unwrap_or(self.mode)
    }
}

/// Identifies the client of an outbound lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Client {
    /// Client namespace.
    pub namespace: String,
    /// Client pod labels (for `workloadSelector`).
    pub labels: BTreeMap<String, String>,
}

/// Whether one endpoint gets mesh mTLS under auto mTLS, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointDecision {
    /// Workload namespace/name.
    pub workload: String,
    /// True: mesh mTLS; false: plaintext.
    pub mtls: bool,
    /// Why.
    pub reason: String,
}

/// The TLS a client uses for one destination host and port (and subset).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundDecision {
    /// The fully qualified host looked up.
    pub host: String,
    /// The TLS settings; `None` means no rule sets TLS here, so auto mTLS applies.
    pub tls: Option<ClientTlsSettings>,
    /// The rule used (the first of the merged rules), if any.
    pub rule: Option<ObjectRef>,
    /// All rules merged into the result, first first.
    pub merged_from: Vec<ObjectRef>,
    /// SPIFFE identities the server must present under ISTIO_MUTUAL without
    /// `subjectAltNames` or under auto mTLS (secure naming); empty when the service is unknown.
    pub expected_identities: Vec<String>,
    /// Per-endpoint auto mTLS decisions, when `tls` is `None` and the endpoints are known.
    pub endpoints: Vec<EndpointDecision>,
    /// Findings about this lookup (unknown subset, ...) and the rules involved.
    pub diagnostics: Vec<Diagnostic>,
}

/// The inbound decision of one workload of the inventory.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadInbound {
    /// Workload namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// The decision (shared between workloads that resolve identically).
    pub decision: Arc<InboundDecision>,
}

/// The outbound decision of clients in one namespace for one port of one service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceOutbound {
    /// Namespace of the clients.
    pub client_namespace: Arc<str>,
    /// Namespace of the service.
    pub service_namespace: Arc<str>,
    /// Name of the service.
    pub service: Arc<str>,
    /// The service port clients dial.
    pub port: u16,
    /// The decision (shared between client namespaces that resolve to the same rules).
    pub decision: Arc<OutboundDecision>,
}

/// Whole-mesh resolution: what [`crate::policy::PolicyEngine::resolve_all`] returns.
///
/// Outbound entries are for clients without labels, so `workloadSelector` rules (which need
/// the client's labels) are not among them; ask [`crate::policy::PolicyEngine::outbound`] for a
/// particular client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshResolution {
    /// One entry per workload of the input, in input order.
    pub inbound: Vec<WorkloadInbound>,
    /// One entry per (client namespace, service, service port), for every namespace that has
    /// workloads, ordered by client namespace, then by the input order of services and ports.
    pub outbound: Vec<ServiceOutbound>,
}
