//! The control plane's own serving certificate, issued by its CA and renewed before expiry
//! without a restart: TLS servers resolve the certificate per handshake from a watch channel.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use super::Authority;
use super::authority::{IssueError, unix_secs};

/// What the serving certificate covers and how long it lives.
#[derive(Clone, Debug)]
pub struct ServingSpec {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ttl: Duration,
}

impl ServingSpec {
    /// DNS names of the Service `service` in `namespace`; `standalone` adds localhost,
    /// 127.0.0.1 and ::1 so local clients can verify it.
    pub fn for_service(service: &str, namespace: &str, standalone: bool) -> Self {
        let mut dns_names = vec![
            service.to_string(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        let mut ips = Vec::new();
        if standalone {
            dns_names.push("localhost".into());
            ips.push(IpAddr::from([127, 0, 0, 1]));
            ips.push(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        }
        Self {
            dns_names,
            ips,
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// Also covers the addresses the control plane listens on, so a client in another network
    /// namespace can dial `10.x.y.z:15012` and verify the certificate. Wildcard addresses
    /// (`0.0.0.0`, `::`) name no address and are skipped.
    pub fn with_listen_addresses(mut self, addrs: &[std::net::SocketAddr]) -> Self {
        for addr in addrs {
            let ip = addr.ip();
            if !ip.is_unspecified() && !self.ips.contains(&ip) {
                self.ips.push(ip);
            }
        }
        self
    }
}

/// Why a serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("serving key: {0}")]
    Key(#[from] rustls::Error),
}

/// A freshly issued serving certificate with its validity window.
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Issues a serving certificate from the authority's current signing CA.
pub fn issue(authority: &Authority, spec: &ServingSpec) -> Result<Issued, ServingError> {
    let m = authority.signing().issue_serving(
        &spec.dns_names,
        &spec.ips,
        spec.ttl,
        SystemTime::now(),
    )?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&m.key)?;
    authority
        .metrics()
        .serving_expiry_seconds
        .set(unix_secs(m.not_after));
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(m.chain, signer)),
        not_before: m.not_before,
        not_after: m.not_after,
    })
}

/// A rustls certificate resolver that always hands out the latest serving certificate.
#[derive(Debug)]
pub struct ServingResolver(watch::Receiver<Arc<CertifiedKey>>);

impl ServingResolver {
    pub fn new(rx: watch::Receiver<Arc<CertifiedKey>>) -> Self {
        Self(rx)
    }
}

impl ResolvesServerCert for ServingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().clone())
    }
}

/// When to renew: two thirds into the validity window (at least a second from now).
pub fn renew_delay(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let at = not_before + life.mul_f64(2.0 / 3.0);
    at.duration_since(now)
        .unwrap_or_default()
        .max(Duration::from_secs(1))
}

/// Issues the first serving certificate and keeps it renewed in the background.
/// Returns the channel TLS servers read from and the renewal task (abort it on shutdown).
pub fn start(
    authority: Arc<Authority>,
    spec: ServingSpec,
) -> Result<
    (
        watch::Receiver<Arc<CertifiedKey>>,
        tokio::task::JoinHandle<()>,
    ),
    ServingError,
> {
    let first = issue(&authority, &spec)?;
    let (tx, rx) = watch::channel(first.key);
    let mut window = (first.not_before, first.not_after);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(renew_delay(window.0, window.1, SystemTime::now())).await;
            match issue(&authority, &spec) {
                Ok(next) => {
                    window = (next.not_before, next.not_after);
                    tx.send_replace(next.key);
                    tracing::info!(
                        not_after = unix_secs(window.1),
                        "renewed serving certificate"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate renewal failed; retrying");
                    // Retry soon, but never spin.
                    window = (
                        SystemTime::now(),
                        SystemTime::now() + Duration::from_secs(90),
                    );
                }
            }
        }
    });
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_two_thirds_in() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(300);
        assert_eq!(renew_delay(nb, na, nb), Duration::from_secs(200));
        assert_eq!(renew_delay(nb, na, na), Duration::from_secs(1));
    }

    #[test]
    fn standalone_spec_covers_loopback() {
        let spec = ServingSpec::for_service("palisade", "palisade-system", true);
        assert!(
            spec.dns_names
                .contains(&"palisade.palisade-system.svc".to_string())
        );
        assert!(spec.dns_names.contains(&"localhost".to_string()));
        assert_eq!(
            spec.ips,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            ]
        );
        let listening = spec.clone().with_listen_addresses(&[
            "10.44.0.1:15012".parse().unwrap(),
            "0.0.0.0:15017".parse().unwrap(),
            "[::]:15014".parse().unwrap(),
            "127.0.0.1:15012".parse().unwrap(),
        ]);
        assert_eq!(
            listening.ips,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                IpAddr::from([10, 44, 0, 1])
            ]
        );
        let in_cluster = ServingSpec::for_service("palisade", "palisade-system", false);
        assert!(!in_cluster.dns_names.contains(&"localhost".to_string()));
    }
}
