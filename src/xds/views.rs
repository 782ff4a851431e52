//! Per-proxy views: the contract between the view computation (what each proxy should see,
//! recomputed when the inventory changes) and the ADS server (which streams it).
//!
//! A view holds, per Palisade type URL, every resource of that type for one proxy, already
//! encoded. The pieces are `Arc`s so proxies that see the same thing (every client in a
//! namespace sees the same Destinations, unless a `workloadSelector` rule picks some out) share
//! one copy; the ADS server sends a type again only when its `version` differs from what it
//! last sent on that stream.

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::ca::spiffe::Identity;
use crate::controller::inventory::ObjectKey;

/// Type URL of [`crate::xds::proto::palisade_v1::InboundPolicy`].
pub const INBOUND_POLICY_TYPE: &str = "type.googleapis.com/palisade.v1.InboundPolicy";
/// Type URL of [`crate::xds::proto::palisade_v1::Destination`].
pub const DESTINATION_TYPE: &str = "type.googleapis.com/palisade.v1.Destination";
/// Type URL of [`crate::xds::proto::palisade_v1::Workload`].
pub const WORKLOAD_TYPE: &str = "type.googleapis.com/palisade.v1.Workload";
/// Type URL of [`crate::xds::proto::palisade_v1::TrustBundle`].
pub const TRUST_BUNDLE_TYPE: &str = "type.googleapis.com/palisade.v1.TrustBundle";
/// Type URL of [`crate::xds::proto::palisade_v1::AuthorizationPolicy`].
pub const AUTHORIZATION_POLICY_TYPE: &str = "type.googleapis.com/palisade.v1.AuthorizationPolicy";
/// Every type URL the ADS server serves, in the order a proxy should apply them.
pub const VIEW_TYPES: [&str; 5] = [
    TRUST_BUNDLE_TYPE,
    INBOUND_POLICY_TYPE,
    AUTHORIZATION_POLICY_TYPE,
    WORKLOAD_TYPE,
    DESTINATION_TYPE,
];

/// All resources of one type for one proxy (state of the world), encoded once.
///
/// Besides the resources it holds their encoding as field 2 (`resources`) of a
/// `DiscoveryResponse`, made once at construction: the ADS server sends that `Bytes` to every
/// stream that shares this value by reference count, so a 3 MiB Destination set costs 3 MiB
/// once, not once per stream (see [`super::ads_wire`]). Build it with [`TypedResources::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct TypedResources {
    /// Changes whenever the content changes (a hash of it): equal versions, equal content.
    pub version: String,
    /// The resources, `google.protobuf.Any` with the type's URL.
    pub resources: Vec<envoy_types::pb::google::protobuf::Any>,
    /// `resources` encoded as repeated field 2 of `DiscoveryResponse` (read-only after `new`).
    encoded: bytes::Bytes,
}

/// Field number of `resources` in `envoy.service.discovery.v3.DiscoveryResponse`.
pub const DISCOVERY_RESPONSE_RESOURCES_FIELD: u32 = 2;

impl TypedResources {
    /// The resources at `version`, with their response encoding made now.
    pub fn new(version: String, resources: Vec<envoy_types::pb::google::protobuf::Any>) -> Self {
        let len: usize = resources
            .iter()
            .map(|any| {
                prost::encoding::message::encoded_len(DISCOVERY_RESPONSE_RESOURCES_FIELD, any)
            })
            .sum();
        let mut buf = Vec::with_capacity(len);
        for any in &resources {
            prost::encoding::message::encode(DISCOVERY_RESPONSE_RESOURCES_FIELD, any, &mut buf);
        }
        Self {
            version,
            resources,
            encoded: buf.into(),
        }
    }

    /// `resources` as the bytes of field 2 of a `DiscoveryResponse` (shared, not copied).
    pub fn encoded_resources(&self) -> &bytes::Bytes {
        &self.encoded
    }
}

/// What one proxy sees, by type.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyView {
    /// `InboundPolicy`: exactly one resource, named `<ns>/<pod>`.
    pub inbound: Arc<TypedResources>,
    /// `Destination`: one per Service the proxy may reach.
    pub destinations: Arc<TypedResources>,
    /// `Workload`: one per meshed pod.
    pub workloads: Arc<TypedResources>,
    /// `TrustBundle`: exactly one resource, `ROOTCA`.
    pub trust_bundle: Arc<TypedResources>,
    /// `AuthorizationPolicy`: one per policy that applies to the proxy's pod (maybe none).
    pub authorization: Arc<TypedResources>,
}

impl ProxyView {
    /// The resources of `type_url`, or `None` for a type this server does not serve.
    pub fn get(&self, type_url: &str) -> Option<&Arc<TypedResources>> {
        match type_url {
            INBOUND_POLICY_TYPE => Some(&self.inbound),
            DESTINATION_TYPE => Some(&self.destinations),
            WORKLOAD_TYPE => Some(&self.workloads),
            TRUST_BUNDLE_TYPE => Some(&self.trust_bundle),
            AUTHORIZATION_POLICY_TYPE => Some(&self.authorization),
            _ => None,
        }
    }
}

/// Who a connecting proxy says it is: the pod it names in the node, and the identity its
/// client certificate proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyClaim {
    /// The pod named in `node.id` (and metadata, when present).
    pub pod: ObjectKey,
    /// `INSTANCE_IP` from the node metadata, when present.
    pub instance_ip: Option<IpAddr>,
    /// The identity of the client certificate (authenticated by the TLS handshake).
    pub identity: Identity,
}

/// Why a proxy may not have a view. The ADS server answers every one of these with
/// `PERMISSION_DENIED` and no detail; the detail goes to the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// No such pod (or it is terminating or finished).
    #[error("pod {0} is not a running pod of the mesh")]
    UnknownPod(ObjectKey),
    /// The pod runs as another service account or namespace than the certificate says.
    #[error("pod {pod} runs as {actual}, the certificate says {claimed}")]
    WrongIdentity {
        /// The pod.
        pod: ObjectKey,
        /// `namespace/serviceaccount` of the pod.
        actual: String,
        /// `namespace/serviceaccount` of the certificate.
        claimed: String,
    },
    /// `INSTANCE_IP` is not one of the pod's addresses.
    #[error("pod {pod} does not have address {ip}")]
    WrongAddress {
        /// The pod.
        pod: ObjectKey,
        /// The address claimed.
        ip: IpAddr,
    },
}

/// Hands out live views: implemented by the view computation, used by the ADS server.
pub trait ViewRegistry: Send + Sync + 'static {
    /// Checks `claim` against the current inventory and returns the proxy's view, which the
    /// registry updates (with `send_if_modified`: only when it changed) until every receiver
    /// is dropped. A later inventory in which the claim no longer holds (pod deleted,
    /// service account changed) closes the channel, and the ADS server ends the stream.
    fn subscribe(&self, claim: &ProxyClaim) -> Result<watch::Receiver<Arc<ProxyView>>, ViewError>;
}
