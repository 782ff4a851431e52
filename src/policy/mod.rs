//! The policy engine: pure functions over plain data (no Kubernetes client, no I/O).
//!
//! [`PolicyEngine::new`] indexes a [`MeshInput`] once; lookups are then cheap, so the whole
//! mesh can be recomputed on every change.
//!
//! - [`PolicyEngine::inbound`]: the effective PeerAuthentication mode of a workload, per port.
//! - [`PolicyEngine::outbound`]: the client TLS settings for a host, port and subset.
//! - [`PolicyEngine::diagnostics`]: every rule that lost, applies to nothing, or has fields
//!   that are kept but not enforced.

pub mod model;

pub use model::*;
