//! What the proxy knows, as published by the agent and read by the listeners: its current
//! certificate, the trust bundle, and the policy from the control plane.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::policy::authz::WorkloadAuthz;
use crate::xds::proto::palisade_v1 as pb;

/// The workload certificate the proxy presents (both as a server and as a client).
#[derive(Debug)]
pub struct Identity {
    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, exactly as in the leaf's URI SAN.
    pub spiffe_id: String,
    /// Chain (leaf first) and the in-memory signing key, ready for a rustls resolver.
    pub certified: Arc<CertifiedKey>,
    /// The chain as the CA returned it (PEM, leaf first), for `/certs`.
    pub chain_pem: Vec<String>,
    /// The leaf's serial number (hex).
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The roots peers' certificates must chain to.
#[derive(Debug)]
pub struct Trust {
    /// The bundle, one PEM certificate per element.
    pub roots_pem: Vec<String>,
    /// The same roots, parsed.
    pub roots: Vec<CertificateDer<'static>>,
}

/// Where an outbound connection's original destination leads, according to the view.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A Service VIP and one of its ports: pick one of `port.endpoints`.
    Service {
        destination: &'a pb::Destination,
        port: &'a pb::ServicePort,
    },
    /// A meshed pod's own IP, dialled directly.
    Pod { workload: &'a pb::Workload },
    /// Nothing the view knows: pass through to the original address.
    Unknown,
}

/// The policy in force: the last accepted resources of every ADS type, indexed for the data
/// path.
#[derive(Debug, Default)]
pub struct Policy {
    /// This proxy's inbound policy.
    pub inbound: pb::InboundPolicy,
    /// Every Service this proxy can reach.
    pub destinations: Vec<pb::Destination>,
    /// Every meshed pod (for clients that dial pod IPs).
    pub workloads: Vec<pb::Workload>,
    /// Accepted `version_info` per type URL (for `/config`).
    pub versions: BTreeMap<String, String>,
    /// The AuthorizationPolicies that apply to this workload, compiled for decisions (none:
    /// every connection the inbound mode lets in is allowed).
    pub authz: Arc<WorkloadAuthz>,
    services: HashMap<SocketAddr, (usize, usize)>,
    pods: HashMap<IpAddr, usize>,
}

impl Policy {
    /// Indexes the resources. Unparsable VIPs or pod IPs are skipped (the control plane writes
    /// only valid ones; a bad one must not take the rest down).
    pub fn new(
        inbound: pb::InboundPolicy,
        destinations: Vec<pb::Destination>,
        workloads: Vec<pb::Workload>,
        versions: BTreeMap<String, String>,
    ) -> Self {
        let mut services = HashMap::new();
        for (d, dest) in destinations.iter().enumerate() {
            for vip in dest.vips.iter().filter_map(|v| v.parse::<IpAddr>().ok()) {
                for (p, port) in dest.ports.iter().enumerate() {
                    if let Ok(number) = u16::try_from(port.port) {
                        services.insert(SocketAddr::new(vip, number), (d, p));
                    }
                }
            }
        }
        let mut pods = HashMap::new();
        for (w, workload) in workloads.iter().enumerate() {
            for ip in workload.ips.iter().filter_map(|v| v.parse::<IpAddr>().ok()) {
                pods.insert(ip, w);
            }
        }
        Self {
            inbound,
            destinations,
            workloads,
            versions,
            authz: Arc::default(),
            services,
            pods,
        }
    }

    /// This policy deciding connections with `authz`.
    pub fn with_authz(mut self, authz: Arc<WorkloadAuthz>) -> Self {
        self.authz = authz;
        self
    }

    /// The inbound mode of `port` (its `port_modes` entry, else the default; UNSPECIFIED is
    /// treated as PERMISSIVE, as the contract says).
    pub fn inbound_mode(&self, port: u16) -> pb::MtlsMode {
        let raw = self
            .inbound
            .port_modes
            .get(&u32::from(port))
            .copied()
            .unwrap_or(self.inbound.default_mode);
        match pb::MtlsMode::try_from(raw).unwrap_or(pb::MtlsMode::Unspecified) {
            pb::MtlsMode::Unspecified => pb::MtlsMode::Permissive,
            mode => mode,
        }
    }

    /// Where a connection to `dst` leads.
    pub fn lookup(&self, dst: SocketAddr) -> Target<'_> {
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        if let Some(&(d, p)) = self.services.get(&dst) {
            let destination = &self.destinations[d];
            return Target::Service {
                destination,
                port: &destination.ports[p],
            };
        }
        match self.pods.get(&dst.ip()) {
            Some(&w) => Target::Pod {
                workload: &self.workloads[w],
            },
            None => Target::Unknown,
        }
    }
}

/// The channels the agent publishes on and the listeners read. `None` until the first
/// certificate / the first complete policy arrived.
#[derive(Clone, Debug)]
pub struct Shared {
    pub identity: watch::Receiver<Option<Arc<Identity>>>,
    pub trust: watch::Receiver<Arc<Trust>>,
    pub policy: watch::Receiver<Option<Arc<Policy>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let destination = pb::Destination {
            fqdn: "web.default.svc.cluster.local".into(),
            namespace: "default".into(),
            name: "web".into(),
            vips: vec!["10.96.0.10".into(), "fd00::10".into(), "bogus".into()],
            ports: vec![pb::ServicePort {
                port: 80,
                name: "http".into(),
                endpoints: vec![],
            }],
        };
        let workload = pb::Workload {
            namespace: "default".into(),
            name: "web-0".into(),
            ips: vec!["10.0.0.5".into()],
            identity: "spiffe://cluster.local/ns/default/sa/web".into(),
            ..Default::default()
        };
        let inbound = pb::InboundPolicy {
            default_mode: pb::MtlsMode::Strict as i32,
            port_modes: [(8080, pb::MtlsMode::Disable as i32), (9090, 0)].into(),
            ..Default::default()
        };
        Policy::new(inbound, vec![destination], vec![workload], BTreeMap::new())
    }

    #[test]
    fn lookup_finds_vips_on_both_families_then_pods_then_nothing() {
        let p = policy();
        for vip in ["10.96.0.10:80", "[fd00::10]:80", "[::ffff:10.96.0.10]:80"] {
            assert!(
                matches!(p.lookup(vip.parse().unwrap()), Target::Service { port, .. } if port.port == 80),
                "{vip}"
            );
        }
        assert!(matches!(
            p.lookup("10.96.0.10:81".parse().unwrap()),
            Target::Unknown
        ));
        assert!(
            matches!(p.lookup("10.0.0.5:8080".parse().unwrap()), Target::Pod { workload } if workload.name == "web-0")
        );
        assert!(matches!(
            p.lookup("10.0.0.6:80".parse().unwrap()),
            Target::Unknown
        ));
    }

    #[test]
    fn inbound_mode_uses_port_entries_then_default_and_unspecified_is_permissive() {
        let p = policy();
        assert_eq!(p.inbound_mode(8080), pb::MtlsMode::Disable);
        assert_eq!(p.inbound_mode(9090), pb::MtlsMode::Permissive);
        assert_eq!(p.inbound_mode(443), pb::MtlsMode::Strict);
        assert_eq!(Policy::default().inbound_mode(1), pb::MtlsMode::Permissive);
    }
}
