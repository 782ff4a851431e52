//! `palisade init`: installs (or with `--cleanup` removes) the iptables rules that send the
//! pod's TCP traffic through its proxy. Runs as the `palisade-init` init container.

use anyhow::Context as _;

use crate::init::apply::Iptables;
use crate::init::{self, OutboundInclude, Settings};

/// Set up traffic capture in the current network namespace (idempotent).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the iptables-restore script instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove Palisade's chains and jumps instead of installing them.
    #[arg(long)]
    pub cleanup: bool,
    /// The proxy's user id: its own connections are not captured.
    #[arg(long, default_value_t = init::PROXY_UID)]
    pub proxy_uid: u32,
    /// The proxy's group id: its own connections are not captured.
    #[arg(long, default_value_t = init::PROXY_GID)]
    pub proxy_gid: u32,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = init::INBOUND_CAPTURE_PORT)]
    pub inbound_capture_port: u16,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = init::OUTBOUND_CAPTURE_PORT)]
    pub outbound_capture_port: u16,
    /// Inbound ports not captured, comma-separated (the proxy's ports never are).
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports not captured, comma-separated.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations captured: `*` or comma-separated IPv4 CIDRs.
    #[arg(long, default_value = "*")]
    pub include_outbound_ip_ranges: String,
    /// Outbound destinations not captured: comma-separated IPv4 CIDRs.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ip_ranges: String,
    /// `iptables-save` to run (e.g. iptables-legacy-save).
    #[arg(long, default_value = "iptables-save")]
    pub iptables_save: String,
    /// `iptables-restore` to run (e.g. iptables-legacy-restore).
    #[arg(long, default_value = "iptables-restore")]
    pub iptables_restore: String,
}

impl Args {
    /// The settings these flags describe (lists validated).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_capture_port: self.inbound_capture_port,
            outbound_capture_port: self.outbound_capture_port,
            exclude_inbound_ports: init::parse_ports(&self.exclude_inbound_ports)
                .context("--exclude-inbound-ports")?,
            exclude_outbound_ports: init::parse_ports(&self.exclude_outbound_ports)
                .context("--exclude-outbound-ports")?,
            include_outbound: OutboundInclude::parse(&self.include_outbound_ip_ranges)
                .context("--include-outbound-ip-ranges")?,
            exclude_outbound_cidrs: init::parse_cidrs(&self.exclude_outbound_ip_ranges)
                .context("--exclude-outbound-ip-ranges")?,
        })
    }
}

/// Applies, removes or prints the rules.
pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let iptables = Iptables {
        save: args.iptables_save.clone(),
        restore: args.iptables_restore.clone(),
    };
    match (args.cleanup, args.dry_run) {
        (false, true) => {
            // No current table to diff against: print what a first run would install.
            print!("{}", init::rules::apply_script(&settings, ""));
        }
        (true, true) => match init::rules::cleanup_script(&iptables.current_nat()?) {
            Some(script) => print!("{script}"),
            None => eprintln!("nothing to clean up"),
        },
        (false, false) => {
            iptables.apply(&settings)?;
            eprintln!("palisade init: traffic capture installed");
        }
        (true, false) => match iptables.cleanup()? {
            Some(_) => eprintln!("palisade init: traffic capture removed"),
            None => eprintln!("palisade init: nothing to clean up"),
        },
    }
    Ok(())
}
