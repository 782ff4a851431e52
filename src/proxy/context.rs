//! What the data-path listeners share: the published state, metrics, the TLS configurations,
//! the proxy's ports, where original destinations come from, and the time bounds.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::balance::EndpointLoad;
use super::metrics::ProxyMetrics;
use super::orig_dst::OrigDstSource;
use super::originate::OriginateCache;
use super::state::Shared;
use super::tls::MeshTls;

/// The proxy's own listener ports: a connection whose original destination is one of them is
/// a loop and is closed.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl Ports {
    /// The three ports, for loop checks.
    pub fn all(&self) -> [u16; 3] {
        [self.inbound, self.outbound, self.admin]
    }
}

/// Time bounds of the data path.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a STRICT port waits for a mesh ClientHello before closing.
    pub strict_detect: Duration,
    /// How long a PERMISSIVE port waits for the client's first bytes before treating the
    /// connection as plaintext (server-speaks-first protocols, e.g. SMTP, MySQL).
    pub permissive_detect: Duration,
    /// A TLS handshake (either side) must finish within this.
    pub handshake: Duration,
    /// Connecting to the app or to the upstream.
    pub connect: Duration,
}

/// Most connections one listener keeps open (each costs a task, two 32 KiB copy buffers and
/// up to 16 KiB of detection buffer); beyond it new connections are closed on accept.
pub const MAX_CONNECTIONS: usize = 16 * 1024;

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            strict_detect: Duration::from_secs(5),
            permissive_detect: Duration::from_millis(300),
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
        }
    }
}

/// Everything a listener needs. Cheap to clone (shared handles).
#[derive(Clone, Debug)]
pub struct Context {
    pub shared: Shared,
    pub metrics: ProxyMetrics,
    pub ports: Ports,
    pub orig_dst: OrigDstSource,
    pub timeouts: Timeouts,
    /// Most connections open per listener ([`MAX_CONNECTIONS`] by default).
    pub max_connections: usize,
    /// Mesh mTLS configurations following the identity and trust watches.
    pub mesh: Arc<MeshTls>,
    /// SIMPLE / MUTUAL origination configurations.
    pub originate: Arc<OriginateCache>,
    /// Open connections per upstream endpoint (power of two choices).
    pub load: Arc<EndpointLoad>,
    /// Refusals are logged at most once per [`LOG_INTERVAL`] per listener kind.
    pub inbound_log: Arc<RateLimitedLog>,
    pub outbound_log: Arc<RateLimitedLog>,
}

impl Context {
    /// A context reading `shared`, accepting peers of `trust_domain`, with production defaults
    /// (original destinations from the socket option, [`Timeouts::default`]).
    pub fn new(
        shared: Shared,
        metrics: ProxyMetrics,
        trust_domain: &str,
        ports: Ports,
    ) -> Result<Self, rustls::Error> {
        let mesh = MeshTls::new(shared.identity.clone(), shared.trust.clone(), trust_domain)?;
        Ok(Self {
            shared,
            metrics,
            ports,
            orig_dst: OrigDstSource::SocketOption,
            timeouts: Timeouts::default(),
            max_connections: MAX_CONNECTIONS,
            mesh: Arc::new(mesh),
            originate: Arc::new(OriginateCache::default()),
            load: Arc::new(EndpointLoad::default()),
            inbound_log: Arc::new(RateLimitedLog::default()),
            outbound_log: Arc::new(RateLimitedLog::default()),
        })
    }
}

/// What is known about an accepted connection once its TLS (if any) is done: what an
/// AuthorizationPolicy decision takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The peer's verified SPIFFE ID (mesh mTLS only).
    pub peer_identity: Option<String>,
    /// The address the connection came from.
    pub source: SocketAddr,
    /// The original destination.
    pub destination: SocketAddr,
}

impl ConnectionInfo {
    /// The source IP.
    pub fn source_ip(&self) -> IpAddr {
        self.source.ip()
    }
}

/// Shortest interval between two refusal log lines of one listener.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Lets one log line through per [`LOG_INTERVAL`] and counts the rest, so a flood of refused
/// connections cannot flood the log (the metrics count every one).
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedLog {
    /// Some(number suppressed since the last line) when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let log = RateLimitedLog::default();
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        // Pretend the interval passed.
        log.state.lock().unwrap().0 = Instant::now().checked_sub(LOG_INTERVAL);
        assert_eq!(log.allow(), Some(2));
    }
}
