//! Kubernetes objects reduced to inventory records the moment they arrive, so the watchers'
//! stores hold only what the engine and distribution need (no managed fields, no annotations,
//! no container specs beyond ports). Pure functions; objects without a name or namespace give
//! no record.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ObjectMeta;
use tracing::warn;

use super::inventory::{EndpointRecord, ObjectKey, PodRecord, PolicyRecord, ServiceRecord};
use crate::api::objects::{cluster_ips, pod_active, service_info, workload};
use crate::api::{AuthorizationPolicy, DestinationRule, PeerAuthentication};
use crate::policy::{NamespaceInfo, Policy, PolicyMeta};

/// Label that names the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The endpoints of one EndpointSlice and the Service they belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecord {
    /// `namespace/name` of the Service (from the `kubernetes.io/service-name` label).
    pub service: ObjectKey,
    /// One record per address.
    pub endpoints: Vec<EndpointRecord>,
}

/// `namespace/name` of a namespaced object, when it has both.
pub fn key_of(meta: &ObjectMeta) -> Option<ObjectKey> {
    let namespace = meta.namespace.as_deref().filter(|n| !n.is_empty())?;
    let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
    Some(ObjectKey::new(namespace, name))
}

/// A Pod's record: labels, service account, container ports, addresses, and whether it is
/// still active (not terminating, not `Succeeded`/`Failed`).
pub fn pod_record(pod: &Pod) -> Option<(ObjectKey, PodRecord)> {
    let key = key_of(&pod.metadata)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let mut texts: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.as_str()).collect())
        .unwrap_or_default();
    if texts.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
    {
        texts.push(ip);
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    for text in texts.into_iter().filter(|t| !t.is_empty()) {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => warn!(pod = %key, ip = text, "ignoring a pod IP that is not an address"),
        }
    }
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let record = PodRecord {
        workload: workload(&key.namespace, &key.name, labels, &spec),
        ips,
        active: pod_active(pod.metadata.deletion_timestamp.is_some(), phase),
    };
    Some((key, record))
}

/// A Service's record: selector, ports and cluster IPs (none for a headless Service). An
/// unparsable cluster IP (the API server validates them) drops the IPs with a warning.
pub fn service_record(service: &Service) -> Option<(ObjectKey, ServiceRecord)> {
    let key = key_of(&service.metadata)?;
    let spec = service.spec.as_ref();
    let ips = cluster_ips(
        spec.and_then(|s| s.cluster_ips.as_deref()),
        spec.and_then(|s| s.cluster_ip.as_deref()),
    )
    .unwrap_or_else(|(field, message)| {
        warn!(service = %key, field, message, "ignoring the cluster IPs of a service");
        Vec::new()
    });
    let record = ServiceRecord {
        info: service_info(service, &key.namespace),
        cluster_ips: ips,
    };
    Some((key, record))
}

/// A Namespace's name and labels.
pub fn namespace_record(namespace: &Namespace) -> Option<(String, NamespaceInfo)> {
    let name = namespace.metadata.name.clone().filter(|n| !n.is_empty())?;
    let info = NamespaceInfo {
        name: name.clone(),
        labels: namespace.metadata.labels.clone().unwrap_or_default(),
    };
    Some((name, info))
}

/// An EndpointSlice's addresses, keyed by the slice; `None` for a slice that names no Service.
/// `FQDN` slices carry no addresses and give none; an absent `ready` condition counts as ready.
pub fn slice_record(slice: &EndpointSlice) -> Option<(ObjectKey, SliceRecord)> {
    let key = key_of(&slice.metadata)?;
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|n| !n.is_empty())?;
    let service = ObjectKey::new(&key.namespace, service_name);
    let ports: Vec<(Option<String>, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok()?;
            Some((p.name.clone().filter(|n| !n.is_empty()), port))
        })
        .collect();
    let mut endpoints = Vec::new();
    if matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        for endpoint in &slice.endpoints {
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let name = r.name.as_deref().filter(|n| !n.is_empty())?;
                    let namespace = r
                        .namespace
                        .as_deref()
                        .filter(|n| !n.is_empty())
                        .unwrap_or(&key.namespace);
                    Some(ObjectKey::new(namespace, name))
                });
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    warn!(slice = %key, address, "ignoring an endpoint address that is not an IP");
                    continue;
                };
                endpoints.push(EndpointRecord {
                    ip,
                    pod: pod.clone(),
                    ready,
                    ports: ports.clone(),
                });
            }
        }
    }
    Some((key, SliceRecord { service, endpoints }))
}

/// A PeerAuthentication's record: spec, generation and current status.
pub fn peer_authentication_record(
    object: &PeerAuthentication,
) -> Option<(ObjectKey, PolicyRecord<crate::api::PeerAuthenticationSpec>)> {
    policy_record(&object.metadata, &object.spec, object.status.as_ref())
}

/// A DestinationRule's record: spec, generation and current status.
pub fn destination_rule_record(
    object: &DestinationRule,
) -> Option<(ObjectKey, PolicyRecord<crate::api::DestinationRuleSpec>)> {
    policy_record(&object.metadata, &object.spec, object.status.as_ref())
}

/// An AuthorizationPolicy's record: spec, generation and current status.
pub fn authorization_policy_record(
    object: &AuthorizationPolicy,
) -> Option<(ObjectKey, PolicyRecord<crate::api::AuthorizationPolicySpec>)> {
    policy_record(&object.metadata, &object.spec, object.status.as_ref())
}

fn policy_record<S: Clone>(
    meta: &ObjectMeta,
    spec: &S,
    status: Option<&crate::api::PolicyStatus>,
) -> Option<(ObjectKey, PolicyRecord<S>)> {
    let key = key_of(meta)?;
    let record = PolicyRecord {
        policy: Policy {
            meta: PolicyMeta {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0),
                seq: 0,
            },
            spec: spec.clone(),
        },
        generation: meta.generation,
        status: status.cloned(),
    };
    Some((key, record))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value, deleting: bool) -> Pod {
        let mut object = json!({
            "metadata": {"name": "p", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": status
        });
        if deleting {
            object["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        serde_json::from_value(object).expect("pod")
    }

    #[test]
    fn pod_activity_and_addresses_table() {
        let cases = [
            (
                "running",
                json!({"phase": "Running", "podIP": "10.0.0.1"}),
                false,
                true,
                vec!["10.0.0.1"],
            ),
            (
                "pending, no IP yet",
                json!({"phase": "Pending"}),
                false,
                true,
                vec![],
            ),
            (
                "terminating",
                json!({"phase": "Running", "podIP": "10.0.0.1"}),
                true,
                false,
                vec!["10.0.0.1"],
            ),
            (
                "succeeded",
                json!({"phase": "Succeeded", "podIP": "10.0.0.1"}),
                false,
                false,
                vec!["10.0.0.1"],
            ),
            ("failed", json!({"phase": "Failed"}), false, false, vec![]),
            (
                "dual stack, podIPs win",
                json!({"podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}),
                false,
                true,
                vec!["10.0.0.1", "fd00::1"],
            ),
            (
                "a bad IP is dropped",
                json!({"podIPs": [{"ip": "nope"}, {"ip": "10.0.0.2"}]}),
                false,
                true,
                vec!["10.0.0.2"],
            ),
        ];
        for (name, status, deleting, active, ips) in cases {
            let (key, record) = pod_record(&pod(status, deleting)).expect(name);
            assert_eq!(key, ObjectKey::new("shop", "p"), "{name}");
            assert_eq!(record.active, active, "{name}");
            let got: Vec<String> = record.ips.iter().map(ToString::to_string).collect();
            assert_eq!(got, ips, "{name}");
            assert_eq!(record.workload.ports[0].port, 8080, "{name}");
            assert_eq!(record.workload.service_account, "default", "{name}");
        }
    }

    #[test]
    fn objects_without_name_or_namespace_give_no_record() {
        let nameless: Pod =
            serde_json::from_value(json!({"metadata": {"namespace": "shop"}})).expect("pod");
        assert!(pod_record(&nameless).is_none());
        let cluster_scoped: Service =
            serde_json::from_value(json!({"metadata": {"name": "s"}})).expect("svc");
        assert!(service_record(&cluster_scoped).is_none());
    }

    #[test]
    fn slices_table() {
        let slice = |labels: serde_json::Value, address_type: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "s-1", "namespace": "shop", "labels": labels},
                "addressType": address_type,
                "endpoints": [{"addresses": ["10.0.0.1", "bad"], "conditions": {"ready": true}}],
                "ports": [{"port": 8080}, {"name": "no-port"}]
            }))
            .expect("slice")
        };
        assert!(
            slice_record(&slice(json!({}), "IPv4")).is_none(),
            "no service label"
        );
        let (_, fqdn) =
            slice_record(&slice(json!({SERVICE_NAME_LABEL: "web"}), "FQDN")).expect("record");
        assert!(fqdn.endpoints.is_empty());
        let (key, v4) =
            slice_record(&slice(json!({SERVICE_NAME_LABEL: "web"}), "IPv4")).expect("record");
        assert_eq!(key, ObjectKey::new("shop", "s-1"));
        assert_eq!(v4.service, ObjectKey::new("shop", "web"));
        assert_eq!(v4.endpoints.len(), 1, "the unparsable address is dropped");
        assert_eq!(v4.endpoints[0].ports, vec![(None, 8080)]);
        assert_eq!(v4.endpoints[0].pod, None);
    }
}
