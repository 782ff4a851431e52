//! The control plane's picture of the mesh: what a source (the Kubernetes watchers, or the
//! standalone config directory) publishes and what every consumer (status and ConfigMap
//! reconcilers, SDS/ADS) reads. Plain data, no I/O.
//!
//! A source publishes a new [`Inventory`] snapshot through a `tokio::sync::watch` channel
//! whenever something changed (see [`Source`]). Snapshots are immutable and cheap to clone:
//! every record sits behind an `Arc`, so a new snapshot shares the unchanged records of the
//! previous one and consumers compare records with `Arc::ptr_eq` before comparing values.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::api::{
    AuthorizationPolicySpec, DestinationRuleSpec, PeerAuthenticationSpec, PolicyStatus,
};
use crate::policy::{MeshConfig, MeshInput, NamespaceInfo, Policy, ServiceInfo, Workload};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A pod, reduced to what policy and distribution need (no container specs beyond ports, no
/// managed fields, no annotations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// Namespace, name, labels, service account and container ports, as the engine takes them.
    pub workload: Workload,
    /// `status.podIPs` (or `status.podIP`); empty until the pod has an address.
    pub ips: Vec<IpAddr>,
    /// False once the pod is terminating or finished (`deletionTimestamp` set, phase
    /// `Succeeded`/`Failed`): such a pod is no endpoint and no proxy may claim it.
    pub active: bool,
}

impl PodRecord {
    /// The pod's `namespace/name`.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.workload.namespace, &self.workload.name)
    }
}

/// A Service: what the engine takes plus its cluster IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    /// Namespace, name, selector, ports.
    pub info: ServiceInfo,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for headless services.
    pub cluster_ips: Vec<IpAddr>,
}

/// One address behind a Service (from EndpointSlices in a cluster; standalone, one per pod
/// address the Service's selector matches, as the EndpointSlice controller would write).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The address.
    pub ip: IpAddr,
    /// The pod behind it, when the endpoint names one (`targetRef`).
    pub pod: Option<ObjectKey>,
    /// Ready to receive traffic (`conditions.ready`, absent = ready).
    pub ready: bool,
    /// Port name (as in the Service's ports; `None` for an unnamed port) to the target port
    /// number on this endpoint.
    pub ports: Vec<(Option<String>, u16)>,
}

/// A policy object with what the status reconciler needs besides the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyRecord<S> {
    /// Metadata and spec, as the engine takes them.
    pub policy: Policy<S>,
    /// `metadata.generation` (`None` standalone).
    pub generation: Option<i64>,
    /// The status the object carries now (`None` when it has none, and standalone).
    pub status: Option<PolicyStatus>,
}

/// One consistent snapshot of the mesh.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Namespaces and their labels.
    pub namespaces: BTreeMap<String, Arc<NamespaceInfo>>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<ObjectKey, Arc<PodRecord>>,
    /// Services by `namespace/name`.
    pub services: BTreeMap<ObjectKey, Arc<ServiceRecord>>,
    /// Endpoints by Service `namespace/name`.
    pub endpoints: BTreeMap<ObjectKey, Arc<Vec<EndpointRecord>>>,
    /// PeerAuthentications by `namespace/name`.
    pub peer_authentications: BTreeMap<ObjectKey, Arc<PolicyRecord<PeerAuthenticationSpec>>>,
    /// DestinationRules by `namespace/name`.
    pub destination_rules: BTreeMap<ObjectKey, Arc<PolicyRecord<DestinationRuleSpec>>>,
    /// AuthorizationPolicies by `namespace/name`.
    pub authorization_policies: BTreeMap<ObjectKey, Arc<PolicyRecord<AuthorizationPolicySpec>>>,
}

impl Inventory {
    /// The engine's input for this snapshot: every active pod as a workload, every Service,
    /// every policy (in `namespace/name` order; age comes from their creation timestamps, or
    /// from their `seq` when they have none), `inventory_complete` set.
    pub fn mesh_input(&self, config: &MeshConfig) -> MeshInput {
        MeshInput {
            config: config.clone(),
            namespaces: self.namespaces.values().map(|n| (**n).clone()).collect(),
            peer_authentications: self
                .peer_authentications
                .values()
                .map(|r| r.policy.clone())
                .collect(),
            destination_rules: self
                .destination_rules
                .values()
                .map(|r| r.policy.clone())
                .collect(),
            workloads: self
                .pods
                .values()
                .filter(|p| p.active)
                .map(|p| p.workload.clone())
                .collect(),
            services: self.services.values().map(|s| s.info.clone()).collect(),
            inventory_complete: true,
        }
    }

    /// This snapshot with every record that equals the record at the same key in `previous`
    /// replaced by `previous`'s `Arc`, so consumers see unchanged records as `Arc::ptr_eq`.
    pub fn sharing_unchanged(mut self, previous: &Inventory) -> Inventory {
        share(&previous.namespaces, &mut self.namespaces);
        share(&previous.pods, &mut self.pods);
        share(&previous.services, &mut self.services);
        share(&previous.endpoints, &mut self.endpoints);
        share(
            &previous.peer_authentications,
            &mut self.peer_authentications,
        );
        share(&previous.destination_rules, &mut self.destination_rules);
        share(
            &previous.authorization_policies,
            &mut self.authorization_policies,
        );
        self
    }

    /// True when both snapshots hold the very same records (same keys, `Arc::ptr_eq` values):
    /// publishing `other` after `self` would tell consumers nothing new.
    pub fn same_records(&self, other: &Inventory) -> bool {
        same(&self.namespaces, &other.namespaces)
            && same(&self.pods, &other.pods)
            && same(&self.services, &other.services)
            && same(&self.endpoints, &other.endpoints)
            && same(&self.peer_authentications, &other.peer_authentications)
            && same(&self.destination_rules, &other.destination_rules)
            && same(&self.authorization_policies, &other.authorization_policies)
    }

    /// The AuthorizationPolicies, as the authorization engine takes them.
    pub fn authz_policies(&self) -> Vec<Policy<AuthorizationPolicySpec>> {
        self.authorization_policies
            .values()
            .map(|r| r.policy.clone())
            .collect()
    }
}

fn share<K: Ord, V: PartialEq>(previous: &BTreeMap<K, Arc<V>>, next: &mut BTreeMap<K, Arc<V>>) {
    for (key, record) in next.iter_mut() {
        if let Some(old) = previous.get(key)
            && !Arc::ptr_eq(old, record)
            && **old == **record
        {
            *record = Arc::clone(old);
        }
    }
}

fn same<K: Ord, V>(a: &BTreeMap<K, Arc<V>>, b: &BTreeMap<K, Arc<V>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && Arc::ptr_eq(va, vb))
}

/// Where the inventory comes from: the Kubernetes watchers or the standalone directory. Both
/// adapters publish through a watch channel; consumers never know which one runs.
pub trait Source: Send + Sync {
    /// The latest snapshot, and every later one. The first value is an empty inventory until
    /// the source has synced (see [`Source::synced`]).
    fn subscribe(&self) -> watch::Receiver<Arc<Inventory>>;

    /// Becomes `true` once every watcher (or the first read of the directory) has completed,
    /// and stays `true`. `/readyz` waits for it.
    fn synced(&self) -> watch::Receiver<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, team: &str) -> NamespaceInfo {
        NamespaceInfo {
            name: name.into(),
            labels: [("team".to_string(), team.to_string())].into(),
        }
    }

    fn inventory(namespaces: &[NamespaceInfo]) -> Inventory {
        Inventory {
            namespaces: namespaces
                .iter()
                .map(|n| (n.name.clone(), Arc::new(n.clone())))
                .collect(),
            ..Inventory::default()
        }
    }

    #[test]
    fn unchanged_records_are_shared_and_changed_ones_are_not() {
        let before = inventory(&[ns("a", "x"), ns("b", "x")]);
        let after =
            inventory(&[ns("a", "x"), ns("b", "y"), ns("c", "x")]).sharing_unchanged(&before);
        assert!(Arc::ptr_eq(&before.namespaces["a"], &after.namespaces["a"]));
        assert!(!Arc::ptr_eq(
            &before.namespaces["b"],
            &after.namespaces["b"]
        ));
        assert_eq!(after.namespaces["b"].labels["team"], "y");
        assert!(!before.same_records(&after));
        let again = inventory(&[ns("a", "x"), ns("b", "y"), ns("c", "x")]);
        assert!(!after.same_records(&again), "equal values, other Arcs");
        assert!(after.same_records(&again.sharing_unchanged(&after)));
        assert!(!after.same_records(&inventory(&[ns("a", "x")]).sharing_unchanged(&after)));
    }
}
