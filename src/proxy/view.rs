//! The proxy's side of policy distribution, without the transport: the requests it sends (node,
//! ACK, NACK), how a `DiscoveryResponse` is checked and decoded, and the state of the world it
//! accumulates. The control plane decides everything; the proxy refuses only what breaks the
//! contract of `proto/palisade/v1/mesh.proto` (undecodable resources, a foreign type URL, a
//! count that must be one and is not, an unusable trust bundle, too many resources), NACKs it
//! and keeps what it had. [`super::ads_client`] runs this over the gRPC stream.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use super::state::{Policy, Trust};
use super::trust;
use crate::policy::authz::{WorkloadAuthz, wire};
use crate::xds::proto::palisade_v1 as pb;
use crate::xds::views::{
    AUTHORIZATION_POLICY_TYPE, DESTINATION_TYPE, INBOUND_POLICY_TYPE, TRUST_BUNDLE_TYPE,
    VIEW_TYPES, WORKLOAD_TYPE,
};

/// Largest `DiscoveryResponse` accepted from the control plane (the transport refuses more).
/// A Destination set for a large cluster is a few MiB; this leaves ample room.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Most resources accepted in one response.
pub const MAX_RESOURCES: usize = 100_000;
/// Longest NACK detail sent (the control plane logs at most 1 KiB of it).
pub const MAX_DETAIL_BYTES: usize = 1024;
/// gRPC code INVALID_ARGUMENT, carried in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Why a response is refused (NACKed); the previous resources of its type stay in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// A type URL this proxy did not ask for.
    #[error("type {0} is not one this proxy subscribes to")]
    UnknownType(String),
    /// More than [`MAX_RESOURCES`] resources.
    #[error("{0} resources (at most {MAX_RESOURCES} accepted)")]
    TooMany(usize),
    /// A resource whose `Any` type URL differs from the response's.
    #[error("resource {index} has type {found}")]
    MixedType {
        /// 0-based position.
        index: usize,
        /// Its type URL.
        found: String,
    },
    /// A resource that does not decode as its type.
    #[error("resource {index} does not decode: {message}")]
    Decode {
        /// 0-based position.
        index: usize,
        /// The decoder's message.
        message: String,
    },
    /// A type the contract says comes as exactly one resource came as `found`.
    #[error("expected exactly one resource, got {found}")]
    NotOne {
        /// How many came.
        found: usize,
    },
    /// The trust bundle is not usable.
    #[error("trust bundle: {0}")]
    Bundle(String),
}

/// The resources of one response, decoded and checked.
#[derive(Debug)]
pub enum Decoded {
    Inbound(pb::InboundPolicy),
    Destinations(Vec<pb::Destination>),
    Workloads(Vec<pb::Workload>),
    TrustBundle(Trust),
    /// The AuthorizationPolicies, compiled (in (namespace, name) order, whatever the order
    /// they came in).
    Authorization(Arc<WorkloadAuthz>),
}

/// Compiles the AuthorizationPolicies of a response. What this proxy cannot read fails closed
/// (see [`wire::from_wire`]) and is logged; it is not a reason to refuse the response, which
/// would keep an older, possibly looser, policy in force.
fn authorization(mut policies: Vec<pb::AuthorizationPolicy>) -> Arc<WorkloadAuthz> {
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let compiled = policies
        .iter()
        .map(|p| {
            let (compiled, problems) = wire::from_wire(p);
            for problem in problems.iter().take(8) {
                tracing::error!(policy = %format!("{}/{}", p.namespace, p.name), %problem,
                    "AuthorizationPolicy from the control plane is not fully understood; failing closed");
            }
            Arc::new(compiled)
        })
        .collect();
    Arc::new(WorkloadAuthz::new(compiled))
}

fn decode_all<M: Message + Default>(response: &DiscoveryResponse) -> Result<Vec<M>, Reject> {
    response
        .resources
        .iter()
        .enumerate()
        .map(|(index, any)| {
            if any.type_url != response.type_url {
                return Err(Reject::MixedType {
                    index,
                    found: any.type_url.chars().take(128).collect(),
                });
            }
            M::decode(any.value.as_slice()).map_err(|e| Reject::Decode {
                index,
                message: e.to_string(),
            })
        })
        .collect()
}

fn exactly_one<M>(mut items: Vec<M>) -> Result<M, Reject> {
    match (items.pop(), items.is_empty()) {
        (Some(one), true) => Ok(one),
        (None, _) => Err(Reject::NotOne { found: 0 }),
        (Some(_), false) => Err(Reject::NotOne {
            found: items.len() + 1,
        }),
    }
}

/// Checks and decodes `response`.
pub fn decode(response: &DiscoveryResponse) -> Result<Decoded, Reject> {
    if response.resources.len() > MAX_RESOURCES {
        return Err(Reject::TooMany(response.resources.len()));
    }
    Ok(match response.type_url.as_str() {
        INBOUND_POLICY_TYPE => Decoded::Inbound(exactly_one(decode_all(response)?)?),
        DESTINATION_TYPE => Decoded::Destinations(decode_all(response)?),
        WORKLOAD_TYPE => Decoded::Workloads(decode_all(response)?),
        AUTHORIZATION_POLICY_TYPE => Decoded::Authorization(authorization(decode_all(response)?)),
        TRUST_BUNDLE_TYPE => {
            let bundle: pb::TrustBundle = exactly_one(decode_all(response)?)?;
            let trust = trust::parse(&bundle.roots_pem.concat())
                .map_err(|e| Reject::Bundle(e.to_string()))?;
            Decoded::TrustBundle(trust)
        }
        other => return Err(Reject::UnknownType(other.chars().take(128).collect())),
    })
}

/// What the proxy has accepted so far, per type, with the accepted versions. It survives
/// reconnects: the last policy stays in force until a new stream delivers a new one.
#[derive(Debug, Default)]
pub struct ViewState {
    inbound: Option<pb::InboundPolicy>,
    destinations: Option<Vec<pb::Destination>>,
    workloads: Option<Vec<pb::Workload>>,
    trust: Option<Trust>,
    authz: Option<Arc<WorkloadAuthz>>,
    versions: BTreeMap<String, String>,
}

impl ViewState {
    /// The last accepted version of `type_url` ("" before the first).
    pub fn version(&self, type_url: &str) -> &str {
        self.versions.get(type_url).map_or("", String::as_str)
    }

    /// Records an accepted response of `version`.
    pub fn apply(&mut self, type_url: &str, version: &str, decoded: Decoded) {
        match decoded {
            Decoded::Inbound(p) => self.inbound = Some(p),
            Decoded::Destinations(d) => self.destinations = Some(d),
            Decoded::Workloads(w) => self.workloads = Some(w),
            Decoded::TrustBundle(t) => self.trust = Some(t),
            Decoded::Authorization(a) => self.authz = Some(a),
        }
        self.versions
            .insert(type_url.to_string(), version.to_string());
    }

    /// The policy to publish: `None` until every type has arrived at least once.
    pub fn policy(&self) -> Option<Policy> {
        let (Some(inbound), Some(destinations), Some(workloads), Some(_), Some(authz)) = (
            &self.inbound,
            &self.destinations,
            &self.workloads,
            &self.trust,
            &self.authz,
        ) else {
            return None;
        };
        Some(
            Policy::new(
                inbound.clone(),
                destinations.clone(),
                workloads.clone(),
                self.versions.clone(),
            )
            .with_authz(authz.clone()),
        )
    }
}

/// The node that names this proxy's pod: `node.id = "<ns>/<pod>"` and the metadata the
/// control plane checks against it.
pub fn node(pod_namespace: &str, pod_name: &str, instance_ip: Option<IpAddr>) -> Node {
    let text = |s: String| Value {
        kind: Some(Kind::StringValue(s)),
    };
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("POD_NAME".to_string(), text(pod_name.to_string()));
    fields.insert("POD_NAMESPACE".to_string(), text(pod_namespace.to_string()));
    if let Some(ip) = instance_ip {
        fields.insert("INSTANCE_IP".to_string(), text(ip.to_string()));
    }
    Node {
        id: format!("{pod_namespace}/{pod_name}"),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

/// The subscriptions that open a stream: one wildcard request per type, the node on the
/// first. Versions are left empty so the control plane sends the full state of every type.
pub fn initial_requests(node: Node) -> Vec<DiscoveryRequest> {
    let mut node = Some(node);
    VIEW_TYPES
        .iter()
        .map(|type_url| DiscoveryRequest {
            type_url: (*type_url).to_string(),
            node: node.take(),
            ..Default::default()
        })
        .collect()
}

/// ACK of `response`.
pub fn ack(response: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        version_info: response.version_info.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

/// NACK of `response`: the last good `previous_version` and why.
pub fn nack(
    response: &DiscoveryResponse,
    previous_version: &str,
    why: &Reject,
) -> DiscoveryRequest {
    let mut message = why.to_string();
    if message.len() > MAX_DETAIL_BYTES {
        let mut cut = MAX_DETAIL_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    DiscoveryRequest {
        type_url: response.type_url.clone(),
        version_info: previous_version.to_string(),
        response_nonce: response.nonce.clone(),
        error_detail: Some(Status {
            code: INVALID_ARGUMENT,
            message,
            details: vec![],
        }),
        ..Default::default()
    }
}

/// What to do after a response: the request to send back, and what changed.
#[derive(Debug)]
pub struct Handled {
    /// ACK or NACK.
    pub reply: DiscoveryRequest,
    /// A new trust bundle to publish (an accepted TrustBundle response).
    pub trust: Option<Trust>,
    /// Whether resources were accepted (the policy may have changed).
    pub accepted: bool,
}

/// Checks `response`, records it in `state` when acceptable, and says what to reply.
pub fn handle(state: &mut ViewState, response: &DiscoveryResponse) -> Handled {
    match decode(response) {
        Ok(decoded) => {
            let trust = match &decoded {
                Decoded::TrustBundle(t) => Some(Trust {
                    roots_pem: t.roots_pem.clone(),
                    roots: t.roots.clone(),
                }),
                _ => None,
            };
            state.apply(&response.type_url, &response.version_info, decoded);
            Handled {
                reply: ack(response),
                trust,
                accepted: true,
            }
        }
        Err(why) => {
            tracing::error!(
                type_url = %response.type_url.chars().take(128).collect::<String>(),
                version = %response.version_info.chars().take(128).collect::<String>(),
                error = %why,
                "refusing a policy update from the control plane (NACK); the previous one stays in force"
            );
            Handled {
                reply: nack(response, state.version(&response.type_url), &why),
                trust: None,
                accepted: false,
            }
        }
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
