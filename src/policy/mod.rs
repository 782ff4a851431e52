//! The policy engine: pure functions over plain data (no Kubernetes client, no I/O).
//!
//! [`PolicyEngine::new`] indexes a [`MeshInput`] once; lookups are then cheap, so the whole
//! mesh can be recomputed on every change.
//!
//! - [`PolicyEngine::inbound`]: the effective PeerAuthentication mode of a workload, per port.
//! - [`PolicyEngine::outbound`]: the client TLS settings for a host, port and subset.
//! - [`PolicyEngine::diagnostics`]: every rule that lost, applies to nothing, or has fields
//!   that are kept but not enforced.
//! - [`PolicyEngine::resolve_all`]: all of the above for every workload and service.
//!
//! Choices where the specification leaves room (see `docs` of each module for more):
//!
//! - As in Istio, the oldest PeerAuthentication of a scope wins even when it sets nothing (its
//!   mode is UNSET): the scope then inherits. Istio ignores the newer policies silently; here
//!   each gets a `Conflict` diagnostic naming the winner.
//! - Object-level merge findings ([`PolicyEngine::diagnostics`]) describe the merge of the rules
//!   without `workloadSelector` for each (namespace, host), as seen from each namespace that
//!   sees a different subset of them (rules whose audiences do not overlap are not "not
//!   merged": no client could use both); merges that involve a
//!   `workloadSelector` rule depend on the client and are reported in
//!   [`OutboundDecision::diagnostics`].
//! - Invalid TLS combinations that the CRD rejects are passed through as written, with an
//!   error diagnostic; under ISTIO_MUTUAL the certificate fields are dropped (they never apply).
//! - [`PolicyEngine::resolve_all`] resolves outbound for clients without labels, so it never
//!   uses `workloadSelector` rules; [`PolicyEngine::outbound`] does, given the client's labels.
//!
//! AuthorizationPolicy has its own engine, [`authz::AuthzEngine`] (see [`authz`]).
//!
//! Module map: `peer` (PeerAuthentication scopes and modes), `destination` (DestinationRule
//! lookup, merging, TLS per port and subset), `host` (host names), `diagnostics` (findings
//! about one object), `engine` (the indexes and the public entry points).

pub mod authz;
mod destination;
mod diagnostics;
mod engine;
pub mod host;
pub mod model;
mod peer;

#[cfg(test)]
mod tests;

pub use engine::PolicyEngine;
pub use model::*;
