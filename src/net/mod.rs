//! Listener plumbing shared by every server of the control plane and the proxy: binding with a
//! clear error, and TLS (1.3 only, hot-reloaded certificates, bounded handshakes). It sits below
//! `server` (the composition root) and the individual servers (`webhook`, `xds`), so none of
//! them imports another's module for it.

pub mod client_trust;
pub mod tls;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{what} {addr}: {source}")]
pub struct BindError {
    /// Which listener (`gRPC listener`, `webhook listener`, ...).
    pub what: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (`what` names the listener in errors) and returns the listener with its actual
/// address (the port chosen when `addr` asks for port 0).
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<(TcpListener, SocketAddr), BindError> {
    let io = |source| BindError { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(io)?;
    let local = listener.local_addr().map_err(io)?;
    Ok((listener, local))
}
