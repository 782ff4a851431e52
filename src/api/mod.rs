//! The custom resource types users apply: `PeerAuthentication`, `DestinationRule` and
//! `AuthorizationPolicy`.
//!
//! Every spec field mirrors the Istio v1 type of the same name (camelCase JSON, same enum
//! values, same defaults), so an Istio manifest applies after changing only `apiVersion`.
//! Missing enum fields keep Istio's proto defaults: an absent `mtls.mode` is `UNSET`, an absent
//! `tls.mode` is `DISABLE`.

pub mod authorization_policy;
pub mod crd;
pub mod destination_rule;
pub mod manifest;
pub mod objects;
pub mod peer_authentication;
pub mod status;
pub mod traffic_policy;

pub use authorization_policy::{
    AuthorizationAction, AuthorizationPolicy, AuthorizationPolicySpec, AuthorizationRule,
    Condition, ExtensionProvider, Operation, PolicyTargetReference, RuleFrom, RuleTo, Source,
};
pub use destination_rule::{
    ClientTlsSettings, DestinationRule, DestinationRuleSpec, PortSelector, PortTrafficPolicy,
    Subset, TlsMode, TrafficPolicy,
};
pub use peer_authentication::{
    MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec, WorkloadSelector,
};
pub use status::{PolicyCondition, PolicyStatus};

/// API group of `PeerAuthentication` and `AuthorizationPolicy`.
pub const SECURITY_GROUP: &str = "security.palisade.dev";
/// API group of `DestinationRule`.
pub const NETWORKING_GROUP: &str = "networking.palisade.dev";
/// The one served and stored version of both groups.
pub const API_VERSION: &str = "v1";
/// Istio's group for `PeerAuthentication` and `AuthorizationPolicy`; accepted by the offline tools as the same kind.
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// Istio's group for `DestinationRule`; accepted by the offline tools as the same kind.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
