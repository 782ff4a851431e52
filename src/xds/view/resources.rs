//! Pure builders of the `palisade.v1` resources of a view, and their encoding into
//! [`TypedResources`] with a content-hash version. No caches here: see `super` for sharing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::api::{ClientTlsSettings, MtlsMode, TlsMode};
use crate::ca::TrustBundle;
use crate::ca::pem::cert_to_pem;
use crate::controller::inventory::{EndpointRecord, ObjectKey, PodRecord, ServiceRecord};
use crate::policy::{InboundDecision, OutboundDecision, Scope};
use crate::xds::proto::palisade_v1 as pb;
use crate::xds::views::TypedResources;

/// `auto mTLS` as the `decided_by` of endpoint TLS no DestinationRule set.
pub const AUTO_MTLS: &str = "auto mTLS";

/// Encodes `messages` as `Any`s of `type_url`; the version is a SHA-256 over every encoded
/// resource (length-prefixed), so equal versions mean equal content.
pub fn typed<M: Message>(type_url: &str, messages: &[M]) -> TypedResources {
    typed_from_any(
        messages
            .iter()
            .map(|m| Any {
                type_url: type_url.to_string(),
                value: m.encode_to_vec(),
            })
            .collect(),
    )
}

/// [`TypedResources`] from already encoded resources (the version hashes type URL and value).
pub fn typed_from_any(resources: Vec<Any>) -> TypedResources {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for any in &resources {
        ctx.update(&(any.type_url.len() as u64).to_le_bytes());
        ctx.update(any.type_url.as_bytes());
        ctx.update(&(any.value.len() as u64).to_le_bytes());
        ctx.update(&any.value);
    }
    let digest = ctx.finish();
    // 128 bits: a collision would hide a change from every proxy, so not 64.
    let version = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    TypedResources::new(version, resources)
}

/// The SPIFFE ID of a pod (service account `default` when the pod names none).
pub fn pod_identity(pod: &PodRecord, trust_domain: &str) -> String {
    let account = match pod.workload.service_account.as_str() {
        "" => "default",
        sa => sa,
    };
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{account}",
        pod.workload.namespace
    )
}

fn mode_to_pb(mode: MtlsMode) -> pb::MtlsMode {
    match mode {
        MtlsMode::Disable => pb::MtlsMode::Disable,
        MtlsMode::Strict => pb::MtlsMode::Strict,
        // The engine never leaves a mode UNSET; if it did, PERMISSIVE is what UNSET means.
        MtlsMode::Permissive | MtlsMode::Unset => pb::MtlsMode::Permissive,
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Mesh => "mesh",
        Scope::Namespace => "namespace",
        Scope::Workload => "workload",
        Scope::Port => "port",
    }
}

/// A pod's `InboundPolicy` from the engine's decision.
pub fn inbound_policy(decision: &InboundDecision, spiffe_id: &str) -> pb::InboundPolicy {
    pb::InboundPolicy {
        default_mode: mode_to_pb(decision.mode) as i32,
        port_modes: decision
            .port_modes
            .iter()
            .map(|(&port, &mode)| (u32::from(port), mode_to_pb(mode) as i32))
            .collect(),
        decided_by: decision
            .decided_by
            .iter()
            .map(|d| format!("{} ({})", d.object, scope_name(d.scope)))
            .collect(),
        spiffe_id: spiffe_id.to_string(),
    }
}

/// A meshed, active pod with addresses as clients see it; `None` for any other pod.
pub fn workload(
    pod: &PodRecord,
    decision: &InboundDecision,
    trust_domain: &str,
) -> Option<pb::Workload> {
    if !pod.active || pod.ips.is_empty() || !pod.workload.is_meshed() {
        return None;
    }
    let plaintext_by_default = decision.mode == MtlsMode::Disable;
    // Only DISABLE matters to a client: PERMISSIVE and STRICT both take mesh mTLS.
    let exception_ports = decision
        .port_modes
        .iter()
        .filter(|&(_, &mode)| (mode == MtlsMode::Disable) != plaintext_by_default)
        .map(|(&port, _)| u32::from(port))
        .collect();
    Some(pb::Workload {
        namespace: pod.workload.namespace.clone(),
        name: pod.workload.name.clone(),
        ips: pod.ips.iter().map(IpAddr::to_string).collect(),
        identity: pod_identity(pod, trust_domain),
        plaintext_by_default,
        exception_ports,
    })
}

/// The `TrustBundle` resource: one PEM string per root.
pub fn trust_bundle(bundle: &TrustBundle) -> pb::TrustBundle {
    pb::TrustBundle {
        roots_pem: bundle.roots().iter().map(|r| cert_to_pem(r)).collect(),
    }
}

/// What the view computation knows of the pod behind an endpoint.
#[derive(Clone, Debug)]
pub struct PodFacts {
    /// Carries a Palisade proxy.
    pub meshed: bool,
    /// Its SPIFFE ID.
    pub identity: String,
    /// Its resolved inbound policy.
    pub inbound: Arc<InboundDecision>,
}

/// The pods behind endpoints, by key and by address.
#[derive(Debug, Default)]
pub struct EndpointPods {
    /// Active pods by key.
    pub by_key: HashMap<ObjectKey, PodFacts>,
    /// Active pods by address.
    pub by_ip: HashMap<IpAddr, ObjectKey>,
}

/// The pod an endpoint is, or `Err(())` when it names a pod that is unknown or not active
/// (such an endpoint is left out: guessing "not meshed" would send plaintext to what may be a
/// meshed pod). `Ok(None)`: an address of no known pod (not meshed).
#[allow(clippy::result_unit_err)]
pub fn endpoint_pod<'p>(
    pods: &'p EndpointPods,
    endpoint: &EndpointRecord,
) -> Result<Option<&'p PodFacts>, ()> {
    match &endpoint.pod {
        Some(key) => pods.by_key.get(key).map(Some).ok_or(()),
        None => Ok(pods
            .by_ip
            .get(&endpoint.ip)
            .and_then(|key| pods.by_key.get(key))),
    }
}

/// The TLS a client must use to one endpoint of a Service port, given the engine's decision
/// for the client's class and that port: the DestinationRule's settings when one sets TLS,
/// else auto mTLS for this endpoint.
pub fn client_tls(
    decision: &OutboundDecision,
    fqdn: &str,
    pod: Option<&PodFacts>,
    target_port: u16,
) -> pb::ClientTls {
    use pb::client_tls::Mode;
    let Some(tls) = &decision.tls else {
        return match pod {
            Some(p) if p.meshed && p.inbound.mode_for_port(target_port) != MtlsMode::Disable => {
                pb::ClientTls {
                    mode: Mode::MeshMtls as i32,
                    expected_identities: vec![p.identity.clone()],
                    decided_by: AUTO_MTLS.to_string(),
                    ..Default::default()
                }
            }
            _ => pb::ClientTls {
                mode: Mode::Plaintext as i32,
                decided_by: AUTO_MTLS.to_string(),
                ..Default::default()
            },
        };
    };
    let decided_by = decision
        .rule
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    rule_tls(tls, decision, fqdn, decided_by)
}

fn rule_tls(
    tls: &ClientTlsSettings,
    decision: &OutboundDecision,
    fqdn: &str,
    decided_by: String,
) -> pb::ClientTls {
    use pb::client_tls::Mode;
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    match tls.effective_mode() {
        TlsMode::Disable => pb::ClientTls {
            mode: Mode::Plaintext as i32,
            decided_by,
            ..Default::default()
        },
        TlsMode::IstioMutual => pb::ClientTls {
            mode: Mode::MeshMtls as i32,
            expected_identities: if tls.subject_alt_names.is_empty() {
                decision.expected_identities.clone()
            } else {
                tls.subject_alt_names.clone()
            },
            decided_by,
            ..Default::default()
        },
        mode @ (TlsMode::Simple | TlsMode::Mutual) => {
            let mutual = mode == TlsMode::Mutual;
            pb::ClientTls {
                mode: (if mutual { Mode::Mutual } else { Mode::Simple }) as i32,
                expected_identities: tls.subject_alt_names.clone(),
                sni: tls.sni.clone().unwrap_or_else(|| fqdn.to_string()),
                ca_certificates: text(&tls.ca_certificates),
                client_certificate: if mutual {
                    text(&tls.client_certificate)
                } else {
                    String::new()
                },
                private_key: if mutual {
                    text(&tls.private_key)
                } else {
                    String::new()
                },
                credential_name: text(&tls.credential_name),
                insecure_skip_verify: tls.insecure_skip_verify.unwrap_or(false),
                ca_crl: text(&tls.ca_crl),
                decided_by,
            }
        }
    }
}

/// The `Destination` of one Service for one client class: `decisions[i]` is the engine's
/// decision for `service.info.ports[i]`. Only ready endpoints, each with the target port the
/// Service port resolves to on it (endpoints without that port are not endpoints of it).
pub fn destination(
    service: &ServiceRecord,
    endpoints: &[EndpointRecord],
    decisions: &[Arc<OutboundDecision>],
    pods: &EndpointPods,
    domain_suffix: &str,
) -> pb::Destination {
    let info = &service.info;
    let fqdn = crate::policy::host::service_fqdn(&info.name, &info.namespace, domain_suffix);
    let ports = info
        .ports
        .iter()
        .zip(decisions)
        .map(|(port, decision)| {
            let endpoints = endpoints
                .iter()
                .filter(|e| e.ready)
                .filter_map(|e| {
                    let target = e
                        .ports
                        .iter()
                        .find(|(name, _)| *name == port.name)
                        .map(|&(_, number)| number)?;
                    let pod = endpoint_pod(pods, e).ok()?;
                    Some(pb::Endpoint {
                        ip: e.ip.to_string(),
                        port: u32::from(target),
                        meshed: pod.is_some_and(|p| p.meshed),
                        identity: pod.map(|p| p.identity.clone()).unwrap_or_default(),
                        tls: Some(client_tls(decision, &fqdn, pod, target)),
                    })
                })
                .collect();
            pb::ServicePort {
                port: u32::from(port.port),
                name: port.name.clone().unwrap_or_default(),
                endpoints,
            }
        })
        .collect();
    pb::Destination {
        fqdn,
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        vips: service.cluster_ips.iter().map(IpAddr::to_string).collect(),
        ports,
    }
}
