//! `palisade controller`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::ca::IssuancePolicy;
use crate::server;
use crate::webhook::InjectionConfig;

/// Run the control plane (CA over gRPC/TLS, monitor endpoint). In a cluster by default;
/// `--standalone` runs without Kubernetes from a state and a config directory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run without Kubernetes (needs --state-dir and --config-dir).
    #[arg(long)]
    pub standalone: bool,
    /// Standalone: CA material, token-signing key and root-cert.pem live here.
    #[arg(long, requires = "standalone")]
    pub state_dir: Option<PathBuf>,
    /// Standalone: policy and workload YAML files.
    #[arg(long, requires = "standalone")]
    pub config_dir: Option<PathBuf>,
    /// CA (and later xDS) gRPC over TLS.
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Injection webhook (HTTPS).
    #[arg(long, default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,
    /// Injection settings (YAML). Standalone default: `injection.yaml` in --config-dir, if present.
    #[arg(long, env = "PALISADE_INJECTION_CONFIG")]
    pub injection_config: Option<PathBuf>,
    /// Image of the injected containers (overrides the injection settings).
    #[arg(long, env = "PALISADE_PROXY_IMAGE")]
    pub proxy_image: Option<String>,
    /// /metrics, /healthz, /readyz over plain HTTP.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub monitor_addr: SocketAddr,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Root namespace (holds the CA Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "palisade-system")]
    pub namespace: String,
    /// Name of the control plane's Service (for the serving certificate's DNS names).
    #[arg(long, default_value = "palisade")]
    pub service_name: String,
    /// Accepted token audience (repeatable).
    #[arg(long = "audience", default_value = "palisade-ca")]
    pub audiences: Vec<String>,
    /// Certificate lifetime when a request asks for none.
    #[arg(long, default_value = "24h", value_parser = super::duration::parse)]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for (longer requests are rejected).
    #[arg(long, default_value = "90d", value_parser = super::duration::parse)]
    pub max_ttl: Duration,
    /// Let workloads renew with their current certificate instead of a token. The new
    /// certificate then lives at most --default-ttl, must renew one issued by this CA's own
    /// signing certificate, and (in a cluster) its ServiceAccount must still exist.
    #[arg(long)]
    pub allow_certificate_renewal: bool,
    /// Most gRPC connections open at once (each proxy keeps one); new ones beyond it are
    /// closed on arrival and counted in palisade_grpc_connections_rejected_total.
    #[arg(long, default_value_t = server::DEFAULT_MAX_GRPC_CONNECTIONS,
          value_parser = connection_count)]
    pub max_grpc_connections: usize,
}

/// A connection cap: a whole number of at least 1.
fn connection_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number of at least 1")),
    }
}

impl Args {
    /// The server configuration these flags describe.
    pub fn to_config(&self) -> anyhow::Result<server::Config> {
        if self.standalone && (self.state_dir.is_none() || self.config_dir.is_none()) {
            bail!("--standalone needs --state-dir DIR and --config-dir DIR");
        }
        if self.default_ttl > self.max_ttl {
            bail!("--default-ttl must not exceed --max-ttl");
        }
        let injection = self.injection_config()?;
        Ok(server::Config {
            state_dir: self.state_dir.clone(),
            config_dir: self.config_dir.clone(),
            grpc_addr: self.grpc_addr,
            webhook_addr: self.webhook_addr,
            monitor_addr: self.monitor_addr,
            namespace: self.namespace.clone(),
            service_name: self.service_name.clone(),
            policy: IssuancePolicy {
                trust_domain: self.trust_domain.clone(),
                default_ttl: self.default_ttl,
                max_ttl: self.max_ttl,
            },
            audiences: self.audiences.clone(),
            injection,
            allow_certificate_renewal: self.allow_certificate_renewal,
            max_grpc_connections: self.max_grpc_connections,
        })
    }

    /// The injection settings: the file (if any), then the flags. The control plane's
    /// namespace and trust domain always come from the controller's own flags.
    fn injection_config(&self) -> anyhow::Result<InjectionConfig> {
        let file = self.injection_config.clone().or_else(|| {
            let default = self.config_dir.as_ref()?.join("injection.yaml");
            default.exists().then_some(default)
        });
        let mut config = match &file {
            Some(path) => InjectionConfig::load(path)?,
            None => InjectionConfig::default(),
        };
        if let Some(image) = &self.proxy_image {
            config.image = image.clone();
        }
        config.control_plane_namespace = self.namespace.clone();
        config.trust_domain = self.trust_domain.clone();
        if file.is_none() {
            config.ca_address = format!(
                "{}.{}.svc:{}",
                self.service_name,
                self.namespace,
                self.grpc_addr.port()
            );
        }
        config.validate()?;
        Ok(config)
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down cleanly.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.to_config()?;
    // One crypto provider for the whole process, chosen before anything builds a TLS config.
    server::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = server::start(config)
            .await
            .context("starting the control plane")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
        running.shutdown().await.context("shutting down")?;
        tracing::info!("stopped");
        Ok(())
    })
}
