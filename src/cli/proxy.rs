//! `palisade proxy`: the sidecar. Everything comes from the environment the injector writes
//! (each variable is also a flag) and from the mounted token and trust-bundle files; nothing is
//! written to disk.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::proxy::{self, app_health::AppProbes};

/// Run the sidecar proxy (agent, inbound/outbound listeners, admin server).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: String,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: String,
    /// The pod's IP (sent to the control plane, which checks it).
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    /// The pod's service account (with the namespace, the identity to expect from the CA).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: String,
    /// The CA's gRPC address, `host:port`.
    #[arg(
        long,
        env = "PALISADE_CA_ADDRESS",
        default_value = "palisade.palisade-system.svc:15012"
    )]
    pub ca_address: String,
    /// The mesh's trust domain.
    #[arg(long, env = "PALISADE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The app's original probes (JSON, keyed by app-health path), as the injector writes them.
    #[arg(long, env = "PALISADE_APP_PROBES")]
    pub app_probes: Option<String>,
    /// The projected service-account token (audience palisade-ca); re-read on every renewal.
    #[arg(
        long,
        default_value = "/var/run/secrets/palisade/tokens/palisade-token"
    )]
    pub token_file: PathBuf,
    /// The trust bundle (PEM roots); followed while running.
    #[arg(
        long,
        default_value = "/var/run/secrets/palisade/root-cert/root-cert.pem"
    )]
    pub ca_root: PathBuf,
    /// The policy (ADS) server, `host:port` (default: the CA address).
    #[arg(long, env = "PALISADE_XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Name the CA's serving certificate must carry (default: the host of --ca-address).
    #[arg(long, env = "PALISADE_CA_SERVER_NAME")]
    pub ca_server_name: Option<String>,
    /// Name the ADS server's certificate must carry (default: the host of --xds-address).
    #[arg(long, env = "PALISADE_XDS_SERVER_NAME")]
    pub xds_server_name: Option<String>,
    /// Inbound listener (where `palisade init` redirects incoming connections).
    #[arg(long, default_value_t = crate::init::INBOUND_CAPTURE_PORT)]
    pub inbound_port: u16,
    /// Outbound listener (where `palisade init` redirects outgoing connections).
    #[arg(long, default_value_t = crate::init::OUTBOUND_CAPTURE_PORT)]
    pub outbound_port: u16,
    /// Admin server (/healthz, /metrics, /certs, /config, /app-health).
    #[arg(long, default_value_t = crate::init::ADMIN_PORT)]
    pub admin_port: u16,
    /// How long open connections may take to finish after SIGTERM.
    #[arg(long, default_value = "5s", value_parser = super::duration::parse)]
    pub drain_timeout: Duration,
    /// Certificate lifetime to ask the CA for (default: the CA's).
    #[arg(long, env = "PALISADE_CERTIFICATE_TTL", value_parser = super::duration::parse)]
    pub certificate_ttl: Option<Duration>,
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

impl Args {
    /// The proxy's configuration (parses the probes: a bad `PALISADE_APP_PROBES` stops the
    /// start with a clear error rather than failing every probe later).
    pub fn into_config(self) -> anyhow::Result<proxy::Config> {
        let app_probes = AppProbes::parse(self.app_probes.as_deref())?;
        let xds_address = self.xds_address.unwrap_or_else(|| self.ca_address.clone());
        let ca_server_name = self
            .ca_server_name
            .unwrap_or_else(|| host_of(&self.ca_address).to_string());
        let xds_server_name = self
            .xds_server_name
            .unwrap_or_else(|| host_of(&xds_address).to_string());
        Ok(proxy::Config {
            pod_name: self.pod_name,
            pod_namespace: self.pod_namespace,
            instance_ip: self.instance_ip,
            service_account: self.service_account,
            trust_domain: self.trust_domain,
            ca_address: self.ca_address,
            ca_server_name,
            xds_address,
            xds_server_name,
            token_file: self.token_file,
            ca_root: self.ca_root,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            drain_timeout: self.drain_timeout,
            certificate_ttl: self.certificate_ttl,
            app_probes,
        })
    }
}

/// The proxy-only executable, installed next to `palisade` (the image has both in
/// /usr/local/bin; `cargo build` makes both).
pub const DEDICATED_EXE: &str = "palisade-proxy";

/// The proxy-only executable beside `current` (the running `palisade`), if there is a file of
/// that name; `None` when `current` is that executable already, so it never execs itself.
pub fn dedicated_exe_beside(current: &Path) -> Option<PathBuf> {
    if current.file_name()? == DEDICATED_EXE {
        return None;
    }
    let beside = current.with_file_name(DEDICATED_EXE);
    beside.is_file().then_some(beside)
}

/// Replaces this process with [`DEDICATED_EXE`] beside it, passing `argv` (from `palisade`
/// on, so it parses exactly what `palisade proxy` would) and the environment unchanged. The
/// proxy then runs from an executable a third of the size, whose resident pages are the
/// proxy's alone. Returns only when there is no such file (`None`) or the exec failed (that
/// executable and the error, for the caller to log once logging is set up); the caller then
/// runs the proxy in this process, the same code either way.
pub fn exec_dedicated(argv: &[OsString]) -> Option<(PathBuf, std::io::Error)> {
    use std::os::unix::process::CommandExt as _;

    let exe = dedicated_exe_beside(&std::env::current_exe().ok()?)?;
    let (first, rest) = argv.split_first()?;
    let err = std::process::Command::new(&exe)
        .arg0(first)
        .args(rest)
        .exec();
    Some((exe, err))
}

/// Runs the proxy until SIGTERM; exits 0 after draining.
pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(proxy::run(config))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let mut argv = vec!["palisade", "proxy"];
        argv.extend_from_slice(args);
        match crate::cli::Cli::try_parse_from(argv)?.command {
            crate::cli::Command::Proxy(args) => Ok(args),
            _ => unreachable!("the proxy subcommand parses to Command::Proxy"),
        }
    }

    #[test]
    fn the_proxy_only_executable_is_found_beside_palisade_and_never_execs_itself() {
        let dir = tempfile::tempdir().unwrap();
        let palisade = dir.path().join("palisade");
        assert_eq!(
            dedicated_exe_beside(&palisade),
            None,
            "nothing installed beside it"
        );
        let dedicated = dir.path().join(DEDICATED_EXE);
        std::fs::create_dir(&dedicated).unwrap();
        assert_eq!(
            dedicated_exe_beside(&palisade),
            None,
            "a directory is not an executable"
        );
        std::fs::remove_dir(&dedicated).unwrap();
        std::fs::write(&dedicated, b"").unwrap();
        assert_eq!(dedicated_exe_beside(&palisade), Some(dedicated.clone()));
        assert_eq!(dedicated_exe_beside(&dedicated), None);
    }

    #[test]
    fn the_proxy_only_executable_parses_palisade_proxy_command_lines_alike() {
        let argv = [
            "palisade",
            "proxy",
            "--pod-name=web-0",
            "--pod-namespace=shop",
            "--service-account=web",
            "--drain-timeout=9s",
            "--inbound-port=16006",
        ];
        let full = format!("{:?}", parse(&argv[2..]).unwrap());
        let crate::cli::ProxyCommand::Proxy(alone) =
            crate::cli::ProxyCli::try_parse_from(argv).unwrap().command;
        assert_eq!(format!("{alone:?}"), full);
        // Only `proxy` is a subcommand there.
        assert!(crate::cli::ProxyCli::try_parse_from(["palisade", "controller"]).is_err());
    }

    #[test]
    fn flags_have_the_contract_defaults_and_derive_server_names() {
        let args = parse(&[
            "--pod-name=web-1",
            "--pod-namespace=shop",
            "--service-account=web",
            "--instance-ip=10.44.0.11",
        ])
        .unwrap();
        let c = args.into_config().unwrap();
        assert_eq!(c.ca_address, "palisade.palisade-system.svc:15012");
        assert_eq!(c.xds_address, c.ca_address);
        assert_eq!(c.ca_server_name, "palisade.palisade-system.svc");
        assert_eq!(c.xds_server_name, "palisade.palisade-system.svc");
        assert_eq!(
            (c.inbound_port, c.outbound_port, c.admin_port),
            (15006, 15001, 15020)
        );
        assert_eq!(c.drain_timeout, Duration::from_secs(5));
        assert_eq!(
            c.token_file,
            PathBuf::from("/var/run/secrets/palisade/tokens/palisade-token")
        );
        assert_eq!(
            c.ca_root,
            PathBuf::from("/var/run/secrets/palisade/root-cert/root-cert.pem")
        );
        assert_eq!(c.trust_domain, "cluster.local");
        assert!(c.app_probes.is_empty());

        let c = parse(&[
            "--pod-name=web-1",
            "--pod-namespace=shop",
            "--service-account=web",
            "--ca-address=[fd00::1]:15012",
            "--xds-address=10.0.0.1:15012",
            "--drain-timeout=30s",
        ])
        .unwrap()
        .into_config()
        .unwrap();
        assert_eq!(c.ca_server_name, "fd00::1");
        assert_eq!(c.xds_server_name, "10.0.0.1");
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.instance_ip, None);
    }

    #[test]
    fn bad_input_is_refused_at_start() {
        assert!(
            parse(&["--pod-name=a", "--pod-namespace=b"]).is_err(),
            "service account missing"
        );
        let args = parse(&[
            "--pod-name=a",
            "--pod-namespace=b",
            "--service-account=c",
            "--app-probes={\"/healthz\": {}}",
        ])
        .unwrap();
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("app-health"), "{err}");
        assert!(
            parse(&[
                "--pod-name=a",
                "--pod-namespace=b",
                "--service-account=c",
                "--instance-ip=nope"
            ])
            .is_err()
        );
    }
}
