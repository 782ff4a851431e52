//! `palisade proxy`: the sidecar. An agent (workload identity and its rotation, the ADS client)
//! publishes what the proxy knows; the listeners (inbound :15006, outbound :15001, admin
//! :15020) read it. Data flows one way: [`state::Identity`], [`state::Trust`] and
//! [`state::Policy`] are published through `tokio::sync::watch` channels ([`state::Shared`])
//! and every new connection reads the latest; established connections keep what they began
//! with.

pub mod balance;
pub mod context;
pub mod detect;
pub mod forward;
pub mod inbound;
mod listen;
pub mod metrics;
pub mod orig_dst;
pub mod originate;
pub mod outbound;
pub mod route;
pub mod state;
#[cfg(test)]
mod test_pki;
pub mod tls;

pub use context::{ConnectionInfo, Context, Ports, Timeouts};

/// The ALPN protocol a Palisade proxy offers when it originates mesh mTLS, and by which the
/// receiving proxy tells a mesh handshake from anything else (the application's own TLS
/// included) without consuming a byte.
pub const MESH_ALPN: &[u8] = b"palisade-mtls/1";
