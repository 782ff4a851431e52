//! Kubernetes core objects (Pods, Services) reduced to what the policy engine and the control
//! plane need, shared by the manifest reader and the Kubernetes watchers so both read an
//! object the same way.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{PodSpec, Service};

use crate::policy::{ServiceInfo, ServicePortInfo, TargetPort, Workload, WorkloadPort};

/// A pod takes traffic (and may be claimed by a proxy) until it is terminating or finished.
pub fn pod_active(deleting: bool, phase: &str) -> bool {
    !deleting && !matches!(phase, "Succeeded" | "Failed")
}

/// An IP address, or an error that quotes the text.
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse::<IpAddr>()
        .map_err(|_| format!("`{text}` is not an IP address"))
}

/// A Service's cluster IPs: `spec.clusterIPs`, else `spec.clusterIP`; `None` (headless) and
/// empty strings give none. The error names the field.
pub fn cluster_ips(
    cluster_ips: Option<&[String]>,
    cluster_ip: Option<&str>,
) -> Result<Vec<IpAddr>, (String, String)> {
    let texts: Vec<(String, &str)> = match cluster_ips {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => cluster_ip
            .map(|ip| vec![("spec.clusterIP".to_string(), ip)])
            .unwrap_or_default(),
    };
    let mut ips = Vec::new();
    for (field, text) in texts {
        if text.is_empty() || text == "None" {
            continue;
        }
        let ip = parse_ip(text).map_err(|m| (field, m))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// A pod spec as the engine sees it: labels, service account (`default` when unset) and the
/// containers' named and numbered ports; nothing else of the spec is kept.
pub fn workload(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    spec: &PodSpec,
) -> Workload {
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(WorkloadPort {
                name: p.name.clone(),
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    Workload {
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels,
        service_account: spec
            .service_account_name
            .clone()
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        ports,
    }
}

/// A Service as the engine sees it: selector and ports (a numeric-string target port is a
/// number; an absent one is the service port).
pub fn service_info(service: &Service, namespace: &str) -> ServiceInfo {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).ok()?),
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePortInfo {
                name: p.name.clone(),
                port,
                target_port,
            })
        })
        .collect();
    ServiceInfo {
        namespace: namespace.to_string(),
        name: service.metadata.name.clone().unwrap_or_default(),
        selector: spec.selector.unwrap_or_default(),
        ports,
    }
}
