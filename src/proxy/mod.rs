//! `palisade proxy`: the sidecar. An agent (workload identity and its rotation, the ADS client)
//! publishes what the proxy knows; the listeners (inbound :15006, outbound :15001, admin
//! :15020) read it. Data flows one way: [`state::Identity`], [`state::Trust`] and
//! [`state::Policy`] are published through `tokio::sync::watch` channels ([`state::Shared`])
//! and every new connection reads the latest; established connections keep what they began
//! with.

pub mod admin;
pub mod ads_client;
pub mod app_health;
pub mod authz;
pub mod balance;
pub mod context;
pub mod detect;
pub mod forward;
pub mod identity;
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

pub mod trust;
pub mod view;

pub use context::{ConnectionInfo, Context, Ports, Timeouts};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::client::ExpectedIdentity;

/// The ALPN protocol a Palisade proxy offers when it originates mesh mTLS, and by which the
/// receiving proxy tells a mesh handshake from anything else (the application's own TLS
/// included) without consuming a byte.
pub const MESH_ALPN: &[u8] = b"palisade-mtls/1";

/// Backlog of the proxy's listeners.
const BACKLOG: i32 = 1024;

/// Everything the proxy starts from (`palisade proxy`'s flags and environment).
#[derive(Clone, Debug)]
pub struct Config {
    pub pod_name: String,
    pub pod_namespace: String,
    /// The pod's IP, sent to the control plane (which checks it) when known.
    pub instance_ip: Option<IpAddr>,
    pub service_account: String,
    pub trust_domain: String,
    /// `host:port` of the CA.
    pub ca_address: String,
    /// The name the CA's serving certificate must carry.
    pub ca_server_name: String,
    /// `host:port` of the ADS server.
    pub xds_address: String,
    /// The name the ADS server's certificate must carry.
    pub xds_server_name: String,
    /// The projected service-account token (re-read on every renewal).
    pub token_file: PathBuf,
    /// The trust bundle file (followed while running).
    pub ca_root: PathBuf,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Admin port (0: any free port, for tests).
    pub admin_port: u16,
    /// How long open connections may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Certificate lifetime to request (`None`: the CA's default).
    pub certificate_ttl: Option<Duration>,
    /// The app's original probes.
    pub app_probes: app_health::AppProbes,
}

/// Binds `port` on every address family: `[::]` accepting IPv4 too (IPV6_V6ONLY off), or
/// `0.0.0.0` where the host has no IPv6. Must run inside a tokio runtime.
pub fn bind_dual(port: u16) -> std::io::Result<TcpListener> {
    match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), true) {
        Ok(listener) => Ok(listener),
        // The port is taken (or forbidden): IPv4 would fail the same way; say so now.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Err(e)
        }
        Err(e) => {
            tracing::info!(port, error = %e, "no IPv6 here; listening on IPv4 only");
            bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), false)
        }
    }
}

fn bind(addr: SocketAddr, dual: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A started proxy.
pub struct Running {
    /// Where the admin server listens.
    pub admin_addr: SocketAddr,
    /// What the agent publishes.
    pub shared: state::Shared,
    pub metrics: metrics::ProxyMetrics,
    shutdown: watch::Sender<bool>,
    /// The data-path listeners: they stop accepting when `shutdown` flips and end once their
    /// connections have finished.
    listeners: Vec<(&'static str, JoinHandle<std::io::Result<()>>)>,
    /// Agent tasks and the admin server: they serve until the drain is over.
    background: Vec<JoinHandle<()>>,
}

/// Starts the agent (trust, identity, ADS) and the admin server. Fails when the trust bundle
/// cannot be read or a port cannot be bound.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    crate::server::install_crypto_provider();
    let (bundle_text, initial_trust) = trust::load(&config.ca_root)?;
    let own = crate::ca::Identity::new(&config.pod_namespace, &config.service_account)
        .context("POD_NAMESPACE / SERVICE_ACCOUNT do not make a workload identity")?;
    let metrics = metrics::ProxyMetrics::default();
    let (trust_tx, trust_rx) = watch::channel(Arc::new(initial_trust));
    let (identity_tx, identity_rx) = watch::channel(None);
    let (policy_tx, policy_rx) = watch::channel(None);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = state::Shared {
        identity: identity_rx.clone(),
        trust: trust_rx.clone(),
        policy: policy_rx,
    };
    let mut background = Vec::new();
    background.push(tokio::spawn(trust::follow_file(
        config.ca_root.clone(),
        bundle_text,
        trust_tx.clone(),
        trust::POLL_INTERVAL,
    )));
    let issuer = identity::CaIssuer {
        address: config.ca_address.clone(),
        server_name: config.ca_server_name.clone(),
        token_file: config.token_file.clone(),
        expected: ExpectedIdentity::exact(&own, &config.trust_domain),
        ttl: config.certificate_ttl,
        trust: trust_rx,
    };
    background.push(tokio::spawn(identity::run(
        issuer,
        identity_tx,
        metrics.clone(),
        identity::random_fraction,
    )));
    let ads = ads_client::AdsConfig {
        address: config.xds_address.clone(),
        server_name: config.xds_server_name.clone(),
        pod_name: config.pod_name.clone(),
        pod_namespace: config.pod_namespace.clone(),
        instance_ip: config.instance_ip,
    };
    background.push(tokio::spawn(ads_client::run(
        ads,
        identity_rx,
        trust_tx,
        policy_tx,
    )));

    let admin_listener = bind_dual(config.admin_port)
        .with_context(|| format!("admin listener on port {}", config.admin_port))?;
    let admin_addr = admin_listener.local_addr()?;
    let router = admin::router(admin::AdminState::new(
        shared.clone(),
        metrics.clone(),
        config.app_probes.clone(),
    ));
    background.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(admin_listener, router).await {
            tracing::error!(error = %e, "admin server failed");
        }
    }));

    // The data path: inbound and outbound, each on its own dual-stack listener, stopping on
    // `shutdown_rx` so SIGTERM drains them.
    let ports = Ports {
        inbound: config.inbound_port,
        outbound: config.outbound_port,
        admin: config.admin_port,
    };
    let ctx = Context::new(shared.clone(), metrics.clone(), &config.trust_domain, ports)
        .context("the mesh TLS configuration")?;
    let inbound_listener = bind_dual(config.inbound_port)
        .with_context(|| format!("inbound listener on port {}", config.inbound_port))?;
    let outbound_listener = bind_dual(config.outbound_port)
        .with_context(|| format!("outbound listener on port {}", config.outbound_port))?;
    let listeners: Vec<(&'static str, JoinHandle<std::io::Result<()>>)> = vec![
        (
            "inbound",
            tokio::spawn(inbound::serve(
                inbound_listener,
                ctx.clone(),
                shutdown_rx.clone(),
            )),
        ),
        (
            "outbound",
            tokio::spawn(outbound::serve(outbound_listener, ctx, shutdown_rx)),
        ),
    ];

    tracing::info!(
        pod = %format!("{}/{}", config.pod_namespace, config.pod_name),
        spiffe_id = %own.spiffe_id(&config.trust_domain),
        ca = %config.ca_address,
        xds = %config.xds_address,
        %admin_addr,
        inbound_port = config.inbound_port,
        outbound_port = config.outbound_port,
        "proxy started"
    );
    Ok(Running {
        admin_addr,
        shared,
        metrics,
        shutdown,
        listeners,
        background,
    })
}

impl Running {
    /// Stops accepting, lets open connections finish for up to `timeout`, then stops the agent
    /// and the admin server. Returns whether every listener finished in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        self.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut clean = true;
        for (name, task) in self.listeners {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(listener = name, error = %e, "listener failed"),
                Ok(Err(e)) => tracing::warn!(listener = name, error = %e, "listener task failed"),
                Err(_) => {
                    tracing::warn!(
                        listener = name,
                        "drain timeout: closing the remaining connections"
                    );
                    clean = false;
                }
            }
        }
        for task in self.background {
            task.abort();
        }
        clean
    }
}

/// Runs the proxy until SIGTERM (or Ctrl-C), then drains for `drain_timeout` and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let drain_timeout = config.drain_timeout;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let running = start(config).await?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
    }
    let clean = running.drain(drain_timeout).await;
    tracing::info!(clean, "proxy stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_dual_accepts_both_families_and_reports_a_taken_port() {
        let listener = bind_dual(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let v4 = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await;
        assert!(v4.is_ok(), "IPv4: {v4:?}");
        let (_, peer) = listener.accept().await.unwrap();
        assert!(peer.ip().to_canonical().is_ipv4(), "{peer}");
        if listener.local_addr().unwrap().is_ipv6() {
            tokio::net::TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .expect("IPv6 on a dual-stack listener");
        }
        let err = bind_dual(port).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
