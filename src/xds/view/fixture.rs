//! Small inventories for the view and registry tests, and decoders for what a proxy sees.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use prost::Message;
use serde_json::Value;

use crate::api::{DestinationRuleSpec, PeerAuthenticationSpec};
use crate::controller::inventory::{
    EndpointRecord, Inventory, ObjectKey, PodRecord, PolicyRecord, ServiceRecord,
};
use crate::policy::{
    NamespaceInfo, Policy, PolicyMeta, ServiceInfo, ServicePortInfo, TLS_MODE_LABEL,
    TLS_MODE_PALISADE, TargetPort, Workload, WorkloadPort,
};
use crate::xds::proto::palisade_v1 as pb;
use crate::xds::views::ProxyView;

/// Builds an [`Inventory`]; endpoints are derived from selectors by [`Mesh::build`], as the
/// standalone source does.
#[derive(Clone, Default)]
pub(crate) struct Mesh {
    pub(crate) inventory: Inventory,
    seq: u64,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

impl Mesh {
    pub(crate) fn new() -> Mesh {
        Mesh::default()
    }

    /// A pod: `meshed` adds the injected tlsMode label; `ports` are (name, number).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pod(
        mut self,
        namespace: &str,
        name: &str,
        account: &str,
        labels: &[(&str, &str)],
        address: &str,
        ports: &[(Option<&str>, u16)],
        meshed: bool,
    ) -> Mesh {
        let mut labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if meshed {
            labels.insert(TLS_MODE_LABEL.into(), TLS_MODE_PALISADE.into());
        }
        self.inventory
            .namespaces
            .entry(namespace.to_string())
            .or_insert_with(|| {
                Arc::new(NamespaceInfo {
                    name: namespace.into(),
                    labels: BTreeMap::new(),
                })
            });
        let record = PodRecord {
            workload: Workload {
                namespace: namespace.into(),
                name: name.into(),
                labels,
                service_account: account.into(),
                ports: ports
                    .iter()
                    .map(|(n, p)| WorkloadPort {
                        name: n.map(str::to_string),
                        port: *p,
                    })
                    .collect(),
            },
            ips: vec![ip(address)],
            active: true,
        };
        self.inventory
            .pods
            .insert(ObjectKey::new(namespace, name), Arc::new(record));
        self
    }

    /// A Service selecting `app=<selector>`; `ports` are (name, port, target).
    pub(crate) fn service(
        mut self,
        namespace: &str,
        name: &str,
        selector: &str,
        vip: &str,
        ports: &[(Option<&str>, u16, TargetPort)],
    ) -> Mesh {
        let info = ServiceInfo {
            namespace: namespace.into(),
            name: name.into(),
            selector: [("app".to_string(), selector.to_string())].into(),
            ports: ports
                .iter()
                .map(|(n, p, t)| ServicePortInfo {
                    name: n.map(str::to_string),
                    port: *p,
                    target_port: t.clone(),
                })
                .collect(),
        };
        self.inventory.services.insert(
            ObjectKey::new(namespace, name),
            Arc::new(ServiceRecord {
                info,
                cluster_ips: vec![ip(vip)],
            }),
        );
        self
    }

    fn meta(&mut self, namespace: &str, name: &str) -> PolicyMeta {
        self.seq += 1;
        PolicyMeta {
            namespace: namespace.into(),
            name: name.into(),
            creation_timestamp: None,
            seq: self.seq,
        }
    }

    /// The record of a policy `namespace/name` with `spec` (JSON, as a user writes it).
    fn record<S: serde::de::DeserializeOwned>(
        &mut self,
        namespace: &str,
        name: &str,
        spec: Value,
    ) -> (ObjectKey, Arc<PolicyRecord<S>>) {
        let policy = Policy {
            meta: self.meta(namespace, name),
            spec: serde_json::from_value(spec).expect("test spec"),
        };
        let record = PolicyRecord {
            policy,
            generation: None,
            status: None,
        };
        (ObjectKey::new(namespace, name), Arc::new(record))
    }

    /// A PeerAuthentication with `spec` (JSON).
    pub(crate) fn pa(mut self, namespace: &str, name: &str, spec: Value) -> Mesh {
        let (key, record) = self.record::<PeerAuthenticationSpec>(namespace, name, spec);
        self.inventory.peer_authentications.insert(key, record);
        self
    }

    /// A DestinationRule with `spec` (JSON).
    pub(crate) fn dr(mut self, namespace: &str, name: &str, spec: Value) -> Mesh {
        let (key, record) = self.record::<DestinationRuleSpec>(namespace, name, spec);
        self.inventory.destination_rules.insert(key, record);
        self
    }

    /// An AuthorizationPolicy with `spec` (JSON).
    pub(crate) fn ap(mut self, namespace: &str, name: &str, spec: Value) -> Mesh {
        let (key, record) = self.record(namespace, name, spec);
        self.inventory.authorization_policies.insert(key, record);
        self
    }

    /// The inventory with endpoints: each Service's selector over the pods of its namespace,
    /// target ports resolved per pod (a pod without a named target port has no entry).
    pub(crate) fn build(mut self) -> Arc<Inventory> {
        let mut endpoints = BTreeMap::new();
        for (key, service) in &self.inventory.services {
            let mut list = Vec::new();
            for pod in self.inventory.pods.values() {
                let w = &pod.workload;
                if !pod.active
                    || w.namespace != key.namespace
                    || !service
                        .info
                        .selector
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                {
                    continue;
                }
                let ports = service
                    .info
                    .ports
                    .iter()
                    .filter_map(|p| {
                        let target = match &p.target_port {
                            TargetPort::Number(0) => Some(p.port),
                            TargetPort::Number(n) => Some(*n),
                            TargetPort::Name(name) => w
                                .ports
                                .iter()
                                .find(|c| c.name.as_deref() == Some(name.as_str()))
                                .map(|c| c.port),
                        }?;
                        Some((p.name.clone(), target))
                    })
                    .collect();
                if let Some(address) = pod.ips.first() {
                    list.push(EndpointRecord {
                        ip: *address,
                        pod: Some(pod.key()),
                        ready: true,
                        ports,
                    });
                }
            }
            endpoints.insert(key.clone(), Arc::new(list));
        }
        self.inventory.endpoints = endpoints;
        Arc::new(self.inventory)
    }
}

/// The Destinations of a view, by FQDN.
pub(crate) fn destinations(view: &ProxyView) -> BTreeMap<String, pb::Destination> {
    view.destinations
        .resources
        .iter()
        .map(|any| {
            let d = pb::Destination::decode(any.value.as_slice()).expect("destination");
            (d.fqdn.clone(), d)
        })
        .collect()
}

/// The InboundPolicy of a view.
pub(crate) fn inbound(view: &ProxyView) -> pb::InboundPolicy {
    assert_eq!(view.inbound.resources.len(), 1);
    pb::InboundPolicy::decode(view.inbound.resources[0].value.as_slice()).expect("inbound")
}

/// The Workloads of a view, by `ns/name`.
pub(crate) fn workloads(view: &ProxyView) -> BTreeMap<String, pb::Workload> {
    view.workloads
        .resources
        .iter()
        .map(|any| {
            let w = pb::Workload::decode(any.value.as_slice()).expect("workload");
            (format!("{}/{}", w.namespace, w.name), w)
        })
        .collect()
}

/// The endpoint of `fqdn` service port `port` at `address`, as a view shows it.
pub(crate) fn endpoint(
    view: &ProxyView,
    fqdn: &str,
    port: u32,
    address: &str,
) -> Option<pb::Endpoint> {
    let destinations = destinations(view);
    let destination = destinations.get(fqdn)?;
    let service_port = destination.ports.iter().find(|p| p.port == port)?;
    service_port
        .endpoints
        .iter()
        .find(|e| e.ip == address)
        .cloned()
}
