//! The running control plane: CA material, authenticators, the gRPC (TLS) and monitor
//! listeners, background renewal, and an orderly shutdown. `palisade controller` is a thin
//! wrapper around [`start`].

pub mod monitor;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::auth::cache::CachingAuthenticator;
use crate::auth::jwt::{JwtError, LocalJwtKey};
use crate::auth::peer::{KubeServiceAccounts, ServiceAccounts};
use crate::auth::tokenreview::{TokenReviewAuthenticator, TokenReviewConfig};
use crate::ca::kube_store::KubeSecretStore;
use crate::ca::serving::{self, ServingResolver, ServingSpec};
use crate::ca::{
    Authority, BootstrapError, DirStore, IssuancePolicy, KeyStore, TrustBundle, plugin,
};
use crate::controller::dir_source::DirSource;
use crate::controller::inventory::{Inventory, Source};
use crate::controller::kube_source::KubeSource;
use crate::metrics::Metrics;
use crate::net::{bind, tls};
use crate::policy::MeshConfig;
use crate::xds::ca_service::CertificateRenewal;
use crate::xds::registry::Registry;
use crate::xds::{AdsService, CaService, SdsService};

/// File in the state directory holding the trust bundle clients need (standalone mode).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// Default cap on open gRPC connections: 10,000 proxies (one connection each) plus headroom
/// for restarts, rollouts and tools.
pub const DEFAULT_MAX_GRPC_CONNECTIONS: usize = 16_384;
/// Most concurrent requests (and HTTP/2 streams) on one gRPC connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Where and how the control plane runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Standalone (no Kubernetes) with this state directory; `None` = in-cluster.
    pub state_dir: Option<PathBuf>,
    /// Standalone configuration directory (policies, workloads); read by later subsystems.
    pub config_dir: Option<PathBuf>,
    pub grpc_addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    pub monitor_addr: SocketAddr,
    /// The root namespace (CA Secrets live there) and the Service name of the control plane.
    pub namespace: String,
    pub service_name: String,
    pub policy: IssuancePolicy,
    pub audiences: Vec<String>,
    /// What the injection webhook puts into pods.
    pub injection: crate::webhook::InjectionConfig,
    /// Let callers renew with a workload client certificate instead of a token (off: tokens
    /// are the credential). See [`crate::xds::ca_service::CertificateRenewal`].
    pub allow_certificate_renewal: bool,
    /// Most gRPC connections open at once; beyond it new ones are closed on arrival.
    pub max_grpc_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: None,
            config_dir: None,
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 15012)),
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], 15017)),
            monitor_addr: SocketAddr::from(([0, 0, 0, 0], 15014)),
            namespace: "palisade-system".into(),
            service_name: "palisade".into(),
            policy: IssuancePolicy::default(),
            audiences: vec!["palisade-ca".into()],
            injection: crate::webhook::InjectionConfig::default(),
            allow_certificate_renewal: false,
            max_grpc_connections: DEFAULT_MAX_GRPC_CONNECTIONS,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("CA: {0}")]
    Ca(#[from] BootstrapError),
    #[error("token signing key: {0}")]
    Jwt(#[from] JwtError),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("serving certificate: {0}")]
    Serving(#[from] serving::ServingError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bind(#[from] crate::net::BindError),
    #[error("config directory: {0}")]
    ConfigDir(#[from] crate::api::manifest::ManifestError),
    #[error(transparent)]
    Webhook(#[from] crate::webhook::server::StartError),
    #[error("server task: {0}")]
    Task(String),
}

/// A started control plane.
pub struct Running {
    /// Actual bound addresses (useful with port 0).
    pub grpc_addr: SocketAddr,
    pub monitor_addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    pub authority: Arc<Authority>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    servers: Vec<JoinHandle<Result<(), String>>>,
    background: Vec<JoinHandle<()>>,
    leader: Option<LeaderTasks>,
    /// The inventory source; its watchers stop when it is dropped.
    _source: Box<dyn Source>,
    /// The per-proxy views; they stop following the inventory when dropped.
    _registry: Registry,
}

/// The leader elector and the writers it gates (in-cluster mode).
struct LeaderTasks {
    /// Ends the election (dropping it does too); the elector then releases the Lease.
    stop: tokio::sync::oneshot::Sender<()>,
    elector: JoinHandle<()>,
    writers: Vec<JoinHandle<()>>,
}

impl LeaderTasks {
    /// Stops the writers first, so none still writes when the other replica takes over, then
    /// the election (which releases the Lease if held).
    async fn shutdown(self) {
        for writer in &self.writers {
            writer.abort();
        }
        for writer in self.writers {
            let _ = writer.await;
        }
        let _ = self.stop.send(());
        let mut elector = self.elector;
        let grace = crate::controller::leader::RETRY_PERIOD * 2;
        if tokio::time::timeout(grace, &mut elector).await.is_err() {
            elector.abort();
        }
    }
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the servers to end.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        // Not ready first, so load balancers stop sending while in-flight requests finish.
        self.ready.store(false, Ordering::Release);
        self.shutdown.send_replace(true);
        for task in &self.background {
            task.abort();
        }
        if let Some(leader) = self.leader {
            leader.shutdown().await;
        }
        for server in self.servers {
            server
                .await
                .map_err(|e| ServerError::Task(e.to_string()))?
                .map_err(ServerError::Task)?;
        }
        Ok(())
    }
}

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent). Done explicitly:
/// rustls' implicit selection panics when it cannot pick one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Writes a public file atomically (temp file + rename), so readers never see half of it.
fn write_public_atomic(path: &Path, data: &str) -> Result<(), ServerError> {
    let io = |source| ServerError::Io {
        what: "writing",
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, data).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

struct Ca {
    authority: Arc<Authority>,
    self_signed_store: Option<Arc<dyn KeyStore>>,
}

async fn load_ca(
    config: &Config,
    client: Option<&kube::Client>,
    metrics: &Metrics,
) -> Result<Ca, ServerError> {
    let now = SystemTime::now();
    let plugin_files = match (&config.state_dir, client) {
        (Some(dir), _) => plugin::read_dir(&dir.join("cacerts")).map_err(BootstrapError::from)?,
        (None, Some(client)) => plugin::read_secret(client.clone(), &config.namespace)
            .await
            .map_err(BootstrapError::from)?,
        (None, None) => None,
    };
    if let Some(files) = plugin_files {
        let ca = plugin::load(&files, now).map_err(BootstrapError::from)?;
        tracing::info!("using the plug-in CA");
        let authority = Authority::new(
            ca.signing,
            ca.bundle,
            config.policy.clone(),
            metrics.ca.clone(),
        );
        return Ok(Ca {
            authority: Arc::new(authority),
            self_signed_store: None,
        });
    }
    let store: Arc<dyn KeyStore> = match (&config.state_dir, client) {
        (Some(dir), _) => Arc::new(DirStore::new(dir)),
        (None, Some(client)) => Arc::new(KubeSecretStore::new(client.clone(), &config.namespace)),
        (None, None) => {
            return Err(ServerError::Task(
                "in-cluster mode needs a Kubernetes client".into(),
            ));
        }
    };
    let signing = crate::ca::bootstrap_self_signed(store.as_ref(), now).await?;
    let bundle = TrustBundle::new(signing.root().clone());
    let authority = Authority::new(signing, bundle, config.policy.clone(), metrics.ca.clone());
    Ok(Ca {
        authority: Arc::new(authority),
        self_signed_store: Some(store),
    })
}

/// Starts the control plane: loads or creates the CA, binds the listeners, and returns once
/// everything is serving.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let client = match config.state_dir {
        Some(_) => None,
        None => Some(kube::Client::try_default().await?),
    };
    start_with_client(config, client).await
}

/// [`start`] with a given Kubernetes client (in-cluster mode; tests pass a mocked one).
/// `client` is ignored in standalone mode.
pub async fn start_with_client(
    config: Config,
    client: Option<kube::Client>,
) -> Result<Running, ServerError> {
    install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let client = if config.state_dir.is_some() {
        None
    } else {
        client
    };
    let ca = load_ca(&config, client.as_ref(), &metrics).await?;
    let authority = ca.authority.clone();

    let authenticator: Arc<dyn Authenticator> = match (&config.state_dir, &client) {
        // Cached like TokenReview results, so the issuance hot path does not re-verify the
        // same token's signature on every request.
        (Some(dir), _) => Arc::new(CachingAuthenticator::new(
            LocalJwtKey::load_or_create(dir)?.authenticator(config.audiences.clone()),
            Duration::from_secs(60),
            100_000,
            metrics.auth.clone(),
        )),
        (None, Some(client)) => Arc::new(TokenReviewAuthenticator::new(
            client.clone(),
            TokenReviewConfig {
                audiences: config.audiences.clone(),
                ..Default::default()
            },
            metrics.auth.clone(),
        )),
        (None, None) => return Err(ServerError::Task("no authenticator".into())),
    };

    let mut background = Vec::new();
    if let Some(dir) = &config.state_dir {
        // Keep root-cert.pem in step with the trust bundle.
        let path = dir.join(ROOT_CERT_FILE);
        write_public_atomic(&path, &authority.trust_bundle().to_pem())?;
        let mut bundles = authority.subscribe_bundle();
        background.push(tokio::spawn(async move {
            while bundles.changed().await.is_ok() {
                let pem = bundles.borrow_and_update().to_pem();
                if let Err(e) = write_public_atomic(&path, &pem) {
                    tracing::warn!(error = %e, "could not update root-cert.pem");
                }
            }
        }));
    }
    if let Some(store) = ca.self_signed_store {
        background.push(crate::ca::spawn_root_renewal(
            authority.clone(),
            store,
            Duration::from_secs(3600),
        ));
    }

    let standalone = config.state_dir.is_some();
    let mut spec = ServingSpec::for_service(&config.service_name, &config.namespace, standalone);
    if standalone {
        spec = spec.with_listen_addresses(&[config.grpc_addr, config.webhook_addr]);
    }
    let (serving_rx, serving_task) = serving::start(authority.clone(), spec)?;
    background.push(serving_task);
    let webhook_resolver = Arc::new(ServingResolver::new(serving_rx.clone()));
    // Client certificates (renewal, SDS, ADS) are verified against the bundle as it is at
    // each handshake, so a root added later is trusted without a restart.
    let tls = tls::server_config_live_trust(
        Arc::new(ServingResolver::new(serving_rx)),
        authority.subscribe_bundle(),
        &[b"h2"],
    )?;

    // The inventory: the API server's objects in a cluster, the config directory standalone.
    let (source, inventory, mut synced) = start_source(&config, client.as_ref(), &metrics)?;
    let mesh = MeshConfig {
        root_namespace: config.namespace.clone(),
        trust_domain: config.policy.trust_domain.clone(),
        ..MeshConfig::default()
    };
    let registry = Registry::start(
        inventory.clone(),
        authority.subscribe_bundle(),
        mesh.clone(),
    );

    let (shutdown, shutdown_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let (grpc_listener, grpc_addr) = bind(config.grpc_addr, "gRPC listener").await?;
    // Established connections are capped as well as handshakes: each proxy keeps one open,
    // and idle connections must not pile up without bound.
    let cap = tls::ConnectionCap {
        max: config.max_grpc_connections,
        listener: "gRPC",
        rejected: metrics.grpc.connections_rejected.clone(),
        open: metrics.grpc.connections_open.clone(),
    };
    let incoming = tokio_stream::wrappers::ReceiverStream::new(tls::incoming_capped(
        grpc_listener,
        Arc::new(tls),
        cap,
    ));
    let renewal = match (config.allow_certificate_renewal, &client) {
        (false, _) => CertificateRenewal::Disabled,
        (true, client) => CertificateRenewal::Enabled {
            service_accounts: client.as_ref().map(|client| {
                Arc::new(KubeServiceAccounts::new(client.clone())) as Arc<dyn ServiceAccounts>
            }),
        },
    };
    // One CaService decides who every caller is, for CreateCertificate and SDS alike.
    let ca = CaService::new(authority.clone(), authenticator).with_certificate_renewal(renewal);
    let sds = SdsService::new(ca.clone(), metrics.xds.clone())
        .with_shutdown(shutdown_rx.clone())
        .into_server();
    let ca_service = ca.into_server();
    let ads = AdsService::new(
        Arc::new(registry.clone()),
        config.policy.trust_domain.clone(),
        metrics.xds.clone(),
    )
    .with_shutdown(shutdown_rx.clone())
    .into_server();
    let grpc = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Headers carry the bearer token (<= 16 KiB, checked later with a clear error); the
        // header list as a whole is capped so no caller can make us hold more.
        .http2_max_header_list_size(32 * 1024)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(ca_service)
        .add_service(sds)
        .add_service(ads)
        .serve_with_incoming_shutdown(incoming, stopped(shutdown_rx.clone()));
    let grpc = tokio::spawn(async move { grpc.await.map_err(|e| format!("gRPC server: {e}")) });

    let (monitor_listener, monitor_addr) = bind(config.monitor_addr, "monitor listener").await?;
    let ready = Arc::new(AtomicBool::new(false));
    let router = monitor::router(metrics.clone(), ready.clone());
    let monitor_stop = stopped(shutdown_rx.clone());
    let monitor = tokio::spawn(async move {
        axum::serve(monitor_listener, router)
            .with_graceful_shutdown(monitor_stop)
            .await
            .map_err(|e| format!("monitor server: {e}"))
    });

    let mut leader = None;
    let namespaces: Arc<dyn crate::webhook::namespaces::NamespaceLabels> = match &client {
        Some(client) => {
            // Cluster writers run on the elected replica only (standalone writes no cluster).
            let identity = crate::controller::leader::default_identity();
            tracing::info!(%identity, namespace = %config.namespace, "joining leader election");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (leading, elector) = crate::controller::leader::spawn(
                client.clone(),
                &config.namespace,
                identity,
                async {
                    let _ = stopped.await;
                },
            );
            let ca_bundle = crate::webhook::ca_bundle::CaBundleSync::new(client.clone())
                .spawn_while_leader(authority.subscribe_bundle(), leading.clone());
            let status = crate::controller::status::spawn(
                client.clone(),
                inventory.clone(),
                mesh.clone(),
                leading.clone(),
                metrics.reconcile.clone(),
            );
            let root_configmaps = crate::controller::root_configmap::spawn(
                client.clone(),
                inventory.clone(),
                authority.subscribe_bundle(),
                leading,
                metrics.reconcile.clone(),
            );
            leader = Some(LeaderTasks {
                stop,
                elector,
                writers: vec![ca_bundle, status, root_configmaps],
            });
            Arc::new(crate::webhook::namespaces::KubeNamespaces::new(
                client.clone(),
            ))
        }
        None => Arc::new(crate::webhook::namespaces::StaticNamespaces(
            config.injection.namespace_labels.clone(),
        )),
    };
    let injector = crate::webhook::server::Injector {
        config: Arc::new(config.injection.clone()),
        namespaces,
        metrics: metrics.webhook.clone(),
    };
    let (webhook_addr, webhook) = crate::webhook::server::start(
        config.webhook_addr,
        webhook_resolver,
        injector,
        stopped(shutdown_rx.clone()),
    )
    .await?;

    tracing::info!(%grpc_addr, %monitor_addr, %webhook_addr, standalone,
        trust_domain = %config.policy.trust_domain, "control plane serving");
    // Ready once the inventory has synced: before that, proxies would get empty views and
    // status would be computed from half a picture.
    // And once the views have caught up with that inventory, so a proxy admitted right after
    // readiness finds its pod.
    let ready_flag = ready.clone();
    let mut ready_stop = shutdown_rx.clone();
    let (views, latest) = (registry.clone(), inventory.clone());
    background.push(tokio::spawn(async move {
        let caught_up = async {
            if synced.wait_for(|synced| *synced).await.is_err() {
                return false;
            }
            while !Arc::ptr_eq(views.current().inventory(), &latest.borrow()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        };
        let became_synced = tokio::select! {
            caught_up = caught_up => caught_up,
            _ = ready_stop.wait_for(|stop| *stop) => false,
        };
        if became_synced && !*ready_stop.borrow() {
            ready_flag.store(true, Ordering::Release);
            tracing::info!("inventory synced: ready");
        }
    }));
    Ok(Running {
        grpc_addr,
        monitor_addr,
        webhook_addr,
        authority,
        metrics,
        shutdown,
        ready,
        servers: vec![grpc, monitor, webhook],
        background,
        leader,
        _source: source,
        _registry: registry,
    })
}

/// A source that never changes: standalone without a config directory (tests, a bare CA).
struct EmptySource {
    inventory: watch::Sender<Arc<Inventory>>,
    synced: watch::Sender<bool>,
}

impl Source for EmptySource {
    fn subscribe(&self) -> watch::Receiver<Arc<Inventory>> {
        self.inventory.subscribe()
    }

    fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }
}

/// Starts the inventory source of this mode and returns it (it stops when dropped) with its
/// inventory and synced channels.
#[allow(clippy::type_complexity)]
fn start_source(
    config: &Config,
    client: Option<&kube::Client>,
    metrics: &Metrics,
) -> Result<
    (
        Box<dyn Source>,
        watch::Receiver<Arc<Inventory>>,
        watch::Receiver<bool>,
    ),
    ServerError,
> {
    let source: Box<dyn Source> = match (client, &config.config_dir) {
        (Some(client), _) => Box::new(KubeSource::start(client.clone(), metrics.sources.clone())),
        (None, Some(dir)) => {
            // A fresh standalone setup starts with an empty directory (README: `--config-dir
            // ./config`); policies are added to it later.
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
                what: "creating the config directory",
                path: dir.display().to_string(),
                source,
            })?;
            Box::new(DirSource::start(dir.clone(), metrics.sources.clone())?)
        }
        (None, None) => Box::new(EmptySource {
            inventory: watch::channel(Arc::new(Inventory::default())).0,
            synced: watch::channel(true).0,
        }),
    };
    let (inventory, synced) = (source.subscribe(), source.synced());
    Ok((source, inventory, synced))
}
