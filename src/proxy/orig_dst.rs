//! Where a redirected connection was going. `palisade init` redirects the pod's traffic to the
//! proxy with iptables REDIRECT; the kernel keeps the original destination, which
//! SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6) read back. Tests inject it instead.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

/// How a listener learns a connection's original destination.
#[derive(Clone, Default)]
pub enum OrigDstSource {
    /// The socket option (production).
    #[default]
    SocketOption,
    /// Every connection was going to this address (tests).
    Fixed(SocketAddr),
    /// Decided per connection from its peer address (tests with several destinations).
    Custom(Arc<dyn Fn(SocketAddr) -> Option<SocketAddr> + Send + Sync>),
}

impl fmt::Debug for OrigDstSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SocketOption => f.write_str("SocketOption"),
            Self::Fixed(a) => write!(f, "Fixed({a})"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// Why a connection has no usable original destination (it is closed).
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The socket option failed: the connection was not redirected (someone dialled the
    /// proxy's port directly) or conntrack does not know it.
    #[error("no original destination: {0}")]
    Missing(std::io::Error),
    /// The injected source had none for this peer.
    #[error("no original destination for this peer")]
    Unknown,
    /// The original destination is the proxy's own listener: forwarding would loop.
    #[error("original destination {0} is the proxy itself")]
    Loop(SocketAddr),
}

impl OrigDstError {
    /// The metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) | Self::Unknown => "no_original_destination",
            Self::Loop(_) => "loop",
        }
    }
}

impl OrigDstSource {
    /// The original destination of `stream`, refused when it is one of the proxy's own
    /// listeners (`proxy_ports` on the address the connection arrived at): a connection made
    /// straight to the proxy's port reads back that very port, and forwarding it would loop.
    pub fn resolve(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
        proxy_ports: &[u16],
    ) -> Result<SocketAddr, OrigDstError> {
        let dst = match self {
            Self::SocketOption => socket_option(stream).map_err(OrigDstError::Missing)?,
            Self::Fixed(a) => *a,
            Self::Custom(f) => f(peer).ok_or(OrigDstError::Unknown)?,
        };
        let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
        let local = stream.local_addr().map_err(OrigDstError::Missing)?;
        if is_loop(dst, local, proxy_ports) {
            return Err(OrigDstError::Loop(dst));
        }
        Ok(dst)
    }
}

/// Whether `dst` is the proxy itself: the address the connection arrived at, or one of the
/// proxy's ports on that IP or on loopback.
pub fn is_loop(dst: SocketAddr, local: SocketAddr, proxy_ports: &[u16]) -> bool {
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    dst == local
        || (proxy_ports.contains(&dst.port())
            && (dst.ip() == local.ip() || dst.ip().is_loopback() || dst.ip().is_unspecified()))
}

/// SO_ORIGINAL_DST or IP6T_SO_ORIGINAL_DST, by the family of the socket.
fn socket_option(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    // On the dual-stack listener an IPv4 connection arrives with a v4-mapped local address;
    // its conntrack entry is IPv4, so it is asked for with the IPv4 option.
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => sock.original_dst_v4()?,
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_some() => sock.original_dst_v4()?,
        SocketAddr::V6(_) => sock.original_dst_v6()?,
    };
    addr.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_refused() {
        let local: SocketAddr = "10.0.0.5:15006".parse().unwrap();
        let ports = [15006, 15001, 15020];
        let cases = [
            ("10.0.0.5:15006", true),
            ("10.0.0.5:15001", true),
            ("127.0.0.1:15001", true),
            ("[::1]:15020", true),
            ("0.0.0.0:15006", true),
            ("10.0.0.5:8080", false),
            ("10.0.0.9:15001", false),
            ("127.0.0.1:8080", false),
        ];
        for (dst, want) in cases {
            assert_eq!(is_loop(dst.parse().unwrap(), local, &ports), want, "{dst}");
        }
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:15006".parse().unwrap();
        assert!(is_loop("10.0.0.5:15006".parse().unwrap(), mapped, &ports));
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_original_destination_or_is_a_loop() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        // Without NAT the kernel either has no entry (ENOENT) or reports the address dialled,
        // which is the proxy itself: both are refused.
        let err = OrigDstSource::SocketOption
            .resolve(&stream, peer, &[addr.port()])
            .unwrap_err();
        assert!(
            matches!(err, OrigDstError::Missing(_) | OrigDstError::Loop(_)),
            "{err}"
        );
        let dst = OrigDstSource::Custom(Arc::new(move |p| (p == peer).then_some(peer)))
            .resolve(&stream, peer, &[addr.port()])
            .unwrap();
        assert_eq!(dst, peer);
        assert!(matches!(
            OrigDstSource::Fixed(addr).resolve(&stream, peer, &[]),
            Err(OrigDstError::Loop(_))
        ));
    }
}
