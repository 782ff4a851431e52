//! The standalone inventory from parsed manifest files: pure functions, no I/O.
//!
//! - Pods with an address (`status.podIP`/`podIPs`) are the workloads; nothing would ever give
//!   a Pod without one an address standalone, so it is left out. Pod templates (Deployments
//!   and the like) create no pods standalone and are left out too.
//! - Services give selector, ports and cluster IPs; their endpoints are the active pods with
//!   addresses that the selector matches, one per address, named target ports resolved against
//!   each pod's container ports as the EndpointSlice controller would (a port the pod does not
//!   name is left out for that pod). A Service without a selector has no endpoints entry.
//! - Namespace documents give labels; a namespace that objects only name exists, unlabelled.
//! - Two documents with the same kind and `namespace/name`: the later one (file name order,
//!   then document order) wins, as a second `kubectl apply` would; the caller logs it.
//! - A policy's age (`seq`, used when it has no `creationTimestamp`) is the order in which the
//!   source first saw it, kept while it exists: like a creation time, so editing or adding
//!   another file does not reorder existing policies.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::inventory::{
    EndpointRecord, Inventory, ObjectKey, PodRecord, PolicyRecord, ServiceRecord,
};
use crate::api::manifest::Manifests;
use crate::policy::{NamespaceInfo, Policy, PolicyKind, ServiceInfo, TargetPort};

/// Stable ages of the policies: first seen, first served.
#[derive(Debug, Default)]
pub(crate) struct PolicyAges {
    seqs: BTreeMap<(PolicyKind, ObjectKey), u64>,
    next: u64,
}

impl PolicyAges {
    fn seq(&mut self, kind: PolicyKind, key: &ObjectKey) -> u64 {
        let next = &mut self.next;
        *self.seqs.entry((kind, key.clone())).or_insert_with(|| {
            *next += 1;
            *next
        })
    }

    /// Forgets the policies that are gone (a re-created one is newer than every other).
    fn retain(&mut self, inventory: &Inventory) {
        self.seqs.retain(|(kind, key), _| match kind {
            PolicyKind::PeerAuthentication => inventory.peer_authentications.contains_key(key),
            PolicyKind::DestinationRule => inventory.destination_rules.contains_key(key),
            PolicyKind::AuthorizationPolicy => inventory.authorization_policies.contains_key(key),
        });
    }
}

/// A `kind namespace/name` that more than one document defines (the later one won).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Duplicate {
    pub kind: &'static str,
    pub key: ObjectKey,
}

/// The inventory of `files` (in file order), sharing every record that equals one of
/// `previous` with it. Returns the duplicates it resolved.
pub(crate) fn build<'a>(
    files: impl IntoIterator<Item = &'a Manifests>,
    previous: &Inventory,
    ages: &mut PolicyAges,
) -> (Inventory, Vec<Duplicate>) {
    let mut inventory = Inventory::default();
    let mut duplicates = Vec::new();
    let mut namespaces: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
    let mut note = |kind, key: ObjectKey, existed: bool| {
        if existed {
            duplicates.push(Duplicate { kind, key });
        }
    };
    for manifests in files {
        for ns in &manifests.namespaces {
            note(
                "Namespace",
                ObjectKey::new("", &ns.name),
                namespaces.insert(ns.name.clone(), ns.clone()).is_some(),
            );
        }
        for pod in manifests.pods.iter().filter(|p| !p.ips.is_empty()) {
            let record = PodRecord {
                workload: pod.workload.clone(),
                ips: pod.ips.clone(),
                active: pod.active,
            };
            let key = record.key();
            note(
                "Pod",
                key.clone(),
                inventory.pods.insert(key, Arc::new(record)).is_some(),
            );
        }
        for (info, ips) in manifests.services.iter().zip(&manifests.service_ips) {
            let key = ObjectKey::new(&info.namespace, &info.name);
            let record = ServiceRecord {
                info: info.clone(),
                cluster_ips: ips.clone(),
            };
            let existed = inventory
                .services
                .insert(key.clone(), Arc::new(record))
                .is_some();
            note("Service", key, existed);
        }
        for policy in &manifests.peer_authentications {
            let (key, record) = policy_record(policy, PolicyKind::PeerAuthentication, ages);
            let existed = inventory
                .peer_authentications
                .insert(key.clone(), Arc::new(record))
                .is_some();
            note("PeerAuthentication", key, existed);
        }
        for policy in &manifests.destination_rules {
            let (key, record) = policy_record(policy, PolicyKind::DestinationRule, ages);
            let existed = inventory
                .destination_rules
                .insert(key.clone(), Arc::new(record))
                .is_some();
            note("DestinationRule", key, existed);
        }
        for policy in &manifests.authorization_policies {
            let (key, record) = policy_record(policy, PolicyKind::AuthorizationPolicy, ages);
            let existed = inventory
                .authorization_policies
                .insert(key.clone(), Arc::new(record))
                .is_some();
            note("AuthorizationPolicy", key, existed);
        }
    }
    let named = inventory
        .pods
        .keys()
        .chain(inventory.services.keys())
        .chain(inventory.peer_authentications.keys())
        .chain(inventory.destination_rules.keys())
        .chain(inventory.authorization_policies.keys())
        .map(|k| k.namespace.clone());
    for name in named.collect::<Vec<_>>() {
        namespaces.entry(name.clone()).or_insert(NamespaceInfo {
            name,
            labels: BTreeMap::new(),
        });
    }
    inventory.namespaces = namespaces
        .into_iter()
        .map(|(name, info)| (name, Arc::new(info)))
        .collect();
    for (key, service) in &inventory.services {
        if let Some(endpoints) = selector_endpoints(&service.info, &inventory.pods) {
            inventory.endpoints.insert(key.clone(), Arc::new(endpoints));
        }
    }
    ages.retain(&inventory);
    (inventory.sharing_unchanged(previous), duplicates)
}

fn policy_record<S: Clone>(
    policy: &Policy<S>,
    kind: PolicyKind,
    ages: &mut PolicyAges,
) -> (ObjectKey, PolicyRecord<S>) {
    let key = ObjectKey::new(&policy.meta.namespace, &policy.meta.name);
    let mut policy = policy.clone();
    policy.meta.seq = ages.seq(kind, &key);
    let record = PolicyRecord {
        policy,
        generation: None,
        status: None,
    };
    (key, record)
}

/// The endpoints of a Service with a selector, as the EndpointSlice controller would write
/// them: one per address of every active pod of its namespace whose labels include the
/// selector, in pod order. `None` for a Service without a selector.
pub(crate) fn selector_endpoints(
    service: &ServiceInfo,
    pods: &BTreeMap<ObjectKey, Arc<PodRecord>>,
) -> Option<Vec<EndpointRecord>> {
    if service.selector.is_empty() {
        return None;
    }
    let mut endpoints = Vec::new();
    let in_namespace = pods
        .range(ObjectKey::new(&service.namespace, "")..)
        .take_while(|(k, _)| k.namespace == service.namespace);
    for (key, pod) in in_namespace {
        let labels = &pod.workload.labels;
        let selected = service
            .selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        if !pod.active || !selected {
            continue;
        }
        let ports: Vec<(Option<String>, u16)> = service
            .ports
            .iter()
            .filter_map(|p| {
                let target = match &p.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod
                        .workload
                        .ports
                        .iter()
                        .find(|wp| wp.name.as_deref() == Some(name.as_str()))
                        .map(|wp| wp.port),
                }?;
                Some((p.name.clone(), target))
            })
            .collect();
        for ip in &pod.ips {
            endpoints.push(endpoint(*ip, key, &ports));
        }
    }
    Some(endpoints)
}

fn endpoint(ip: IpAddr, pod: &ObjectKey, ports: &[(Option<String>, u16)]) -> EndpointRecord {
    EndpointRecord {
        ip,
        pod: Some(pod.clone()),
        ready: true,
        ports: ports.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parsed(text: &str) -> Manifests {
        let mut m = Manifests::default();
        m.add_str(text, Path::new("t.yaml")).expect("parses");
        m
    }

    fn pa(name: &str, mode: &str) -> String {
        format!(
            "apiVersion: security.palisade.dev/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        )
    }

    #[test]
    fn a_later_definition_wins_and_is_reported() {
        let first = parsed(&pa("p", "STRICT"));
        let second = parsed(&pa("p", "DISABLE"));
        let mut ages = PolicyAges::default();
        let (inventory, duplicates) = build([&first, &second], &Inventory::default(), &mut ages);
        let mode = inventory.peer_authentications[&ObjectKey::new("shop", "p")]
            .policy
            .spec
            .mtls
            .as_ref()
            .and_then(|m| m.mode);
        assert_eq!(mode, Some(crate::api::MtlsMode::Disable));
        assert_eq!(
            duplicates,
            vec![Duplicate {
                kind: "PeerAuthentication",
                key: ObjectKey::new("shop", "p"),
            }]
        );
    }

    #[test]
    fn ages_are_kept_while_a_policy_exists_and_renewed_when_it_returns() {
        let a = parsed(&pa("a", "STRICT"));
        let b = parsed(&pa("b", "STRICT"));
        let mut ages = PolicyAges::default();
        let seq = |i: &Inventory, name: &str| {
            i.peer_authentications[&ObjectKey::new("shop", name)]
                .policy
                .meta
                .seq
        };
        let (one, _) = build([&a, &b], &Inventory::default(), &mut ages);
        assert!(seq(&one, "a") < seq(&one, "b"));
        // A new file sorted before both does not make it older than them.
        let z = parsed(&pa("z", "STRICT"));
        let (two, _) = build([&z, &a, &b], &one, &mut ages);
        assert!(seq(&two, "z") > seq(&two, "b"));
        assert!(Arc::ptr_eq(
            &one.peer_authentications[&ObjectKey::new("shop", "a")],
            &two.peer_authentications[&ObjectKey::new("shop", "a")]
        ));
        // Removed, then back: newer than every other.
        let (three, _) = build([&z, &b], &two, &mut ages);
        let (four, _) = build([&z, &a, &b], &three, &mut ages);
        assert!(seq(&four, "a") > seq(&four, "z"));
    }
}
