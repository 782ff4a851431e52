//! `DestinationRule` (`networking.palisade.dev/v1`): how a client reaches a destination.
//!
//! Palisade enforces the TLS settings (`trafficPolicy.tls`, `portLevelSettings[].tls`,
//! `subsets[].trafficPolicy.tls`). The other traffic-policy fields are accepted and kept, so
//! Istio manifests apply unchanged, and reported as not enforced.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::peer_authentication::WorkloadSelector;
use super::status::PolicyStatus;
use super::traffic_policy::{
    ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, ProxyProtocol, RetryBudget,
    TunnelSettings,
};

/// Client-side policy for traffic to one host (service), after routing.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "networking.palisade.dev",
    version = "v1",
    kind = "DestinationRule",
    plural = "destinationrules",
    singular = "destinationrule",
    shortname = "dr",
    category = "palisade",
    doc = "DestinationRule: how clients reach a destination host, in particular with which TLS.",
    namespaced,
    status = "PolicyStatus",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host","description":"The destination host"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status","description":"True when the policy is in force (status condition Accepted)"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason","description":"Why the policy is or is not in force"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSpec {
    /// The destination: a short name (expanded with the rule's namespace), a fully qualified
    /// name, or a wildcard such as `*.example.com`.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("host must not be empty"))]
    pub host: String,
    /// Policies for all traffic to the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named sets of endpoints (by label), each optionally with its own policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new(
        "self.all(s, self.exists_one(o, o.name == s.name))"
    ).message("subset names must be unique"))]
    #[schemars(length(max = 128))]
    pub subsets: Vec<Subset>,
    /// Namespaces that may use this rule: `.` (own namespace), `*` (all; the default) or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// Client workloads this rule applies to; such a rule is never exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
}

/// Traffic policy for a destination, a port or a subset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancing (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS for connections to the destination (enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port policies; a port's entry replaces the destination-level settings for that port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnelling (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelSettings>,
    /// PROXY protocol (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Policy for one port of the destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    /// The port this entry applies to.
    pub port: PortSelector,
    /// Load balancing (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection pool limits (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection (kept, not enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS for connections to this port (enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// A port of the destination service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub number: u32,
}

/// A named set of the destination's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    /// The subset's name, unique within the rule.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Endpoint labels selecting the subset's members.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Overrides the destination's policy for traffic to this subset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Client TLS settings for connections to the destination.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.mode) || self.mode != 'MUTUAL' || (has(self.credentialName) && self.credentialName != '') || (has(self.clientCertificate) && self.clientCertificate != '' && has(self.privateKey) && self.privateKey != '')"
).message("MUTUAL mode requires clientCertificate and privateKey, or credentialName"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.credentialName) || self.credentialName == '' || ((!has(self.clientCertificate) || self.clientCertificate == '') && (!has(self.privateKey) || self.privateKey == '') && (!has(self.caCertificates) || self.caCertificates == ''))"
).message("credentialName cannot be combined with clientCertificate, privateKey or caCertificates"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.insecureSkipVerify) || self.insecureSkipVerify != true || ((!has(self.caCertificates) || self.caCertificates == '') && (!has(self.subjectAltNames) || self.subjectAltNames.size() == 0))"
).message("insecureSkipVerify cannot be combined with caCertificates or subjectAltNames"))]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    /// The TLS mode; absent is `DISABLE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TlsMode>,
    /// Path of the client certificate file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Path of the client private key file (MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Path of the CA bundle that verifies the server (SIMPLE, MUTUAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificates: Option<String>,
    /// Name of a Secret holding the client certificate, key and CA (excludes the file fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_name: Option<String>,
    /// Identities the server certificate must carry; with ISTIO_MUTUAL and none given, the
    /// service accounts behind the destination service are expected (secure naming).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
    /// SNI to send in the TLS handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Skip verification of the server certificate (excludes CA and SAN fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// Path of a certificate revocation list for the server's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_crl: Option<String>,
}

impl ClientTlsSettings {
    /// The mode with Istio's default applied: absent is `DISABLE`.
    pub fn effective_mode(&self) -> TlsMode {
        self.mode.unwrap_or_default()
    }
}

/// Client TLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext.
    #[default]
    Disable,
    /// TLS origination; the server is verified, the client presents no certificate.
    Simple,
    /// Mutual TLS with a certificate the user supplies.
    Mutual,
    /// The mesh's own mutual TLS with workload certificates (name kept for compatibility).
    IstioMutual,
}

impl TlsMode {
    /// The name users write (`ISTIO_MUTUAL`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "DISABLE",
            TlsMode::Simple => "SIMPLE",
            TlsMode::Mutual => "MUTUAL",
            TlsMode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
