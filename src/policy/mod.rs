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
//! Module map: `peer` (PeerAuthentication scopes and modes), `destination` (DestinationRule
//! lookup, merging, TLS per port and subset), `host` (host names), `diagnostics` (findings
//! about one object), `engine` (the indexes and the public entry points).

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
