//! Table-driven and property tests of the policy engine, with a small builder for inputs.

mod authz;
mod authz_diagnostics;
mod authz_fields;
mod authz_props;
mod diagnostics;
mod inbound;
mod outbound;
mod outbound_tls;
mod properties;
mod resolution;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

use super::PolicyEngine;
use super::model::*;

/// Labels from pairs.
pub(super) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A reference to an object.
pub(super) fn pa_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: PolicyKind::PeerAuthentication,
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// A reference to an object.
pub(super) fn dr_ref(namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: PolicyKind::DestinationRule,
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// Builds a [`MeshInput`] step by step; objects get `seq` in call order.
#[derive(Clone, Default)]
pub(super) struct Mesh {
    pub(super) input: MeshInput,
    seq: u64,
}

impl Mesh {
    pub(super) fn new() -> Mesh {
        Mesh::default()
    }

    fn meta(&mut self, namespace: &str, name: &str, age: Option<i64>) -> PolicyMeta {
        self.seq += 1;
        PolicyMeta {
            namespace: namespace.into(),
            name: name.into(),
            creation_timestamp: age
                .map(|s| Timestamp::from_second(1_700_000_000 + s).expect("timestamp")),
            seq: self.seq,
        }
    }

    /// A PeerAuthentication; `age` in seconds (smaller is older), `spec` as the user writes it.
    pub(super) fn pa(mut self, namespace: &str, name: &str, age: Option<i64>, spec: Value) -> Mesh {
        let meta = self.meta(namespace, name, age);
        let spec = serde_json::from_value(spec).expect("PeerAuthentication spec");
        self.input.peer_authentications.push(Policy { meta, spec });
        self
    }

    /// A DestinationRule; `age` in seconds (smaller is older), `spec` as the user writes it.
    pub(super) fn dr(mut self, namespace: &str, name: &str, age: Option<i64>, spec: Value) -> Mesh {
        let meta = self.meta(namespace, name, age);
        let spec = serde_json::from_value(spec).expect("DestinationRule spec");
        self.input.destination_rules.push(Policy { meta, spec });
        self
    }

    /// A workload with named container ports.
    pub(super) fn workload(
        mut self,
        namespace: &str,
        name: &str,
        service_account: &str,
        pod_labels: &[(&str, &str)],
        ports: &[(Option<&str>, u16)],
    ) -> Mesh {
        self.input.workloads.push(Workload {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels(pod_labels),
            service_account: service_account.into(),
            ports: ports
                .iter()
                .map(|(n, p)| WorkloadPort {
                    name: n.map(str::to_string),
                    port: *p,
                })
                .collect(),
        });
        self
    }

    /// A service with (port, target port) pairs.
    pub(super) fn service(
        mut self,
        namespace: &str,
        name: &str,
        selector: &[(&str, &str)],
        ports: &[(u16, TargetPort)],
    ) -> Mesh {
        self.input.services.push(ServiceInfo {
            namespace: namespace.into(),
            name: name.into(),
            selector: labels(selector),
            ports: ports
                .iter()
                .map(|(p, t)| ServicePortInfo {
                    name: None,
                    port: *p,
                    target_port: t.clone(),
                })
                .collect(),
        });
        self
    }

    /// Marks the inventory complete.
    pub(super) fn complete(mut self) -> Mesh {
        self.input.inventory_complete = true;
        self
    }

    pub(super) fn engine(self) -> PolicyEngine {
        PolicyEngine::new(self.input)
    }
}

/// The diagnostic kinds of `diagnostics` about `object`.
pub(super) fn kinds_of(diagnostics: &[Diagnostic], object: &ObjectRef) -> Vec<DiagnosticKind> {
    diagnostics
        .iter()
        .filter(|d| &d.object == object)
        .map(|d| d.kind.clone())
        .collect()
}
