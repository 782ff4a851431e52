//! `palisade init`: installs (or with `--cleanup` removes) the iptables and ip6tables rules
//! that send the pod's TCP traffic through its proxy. Runs as the `palisade-init` init
//! container.

use anyhow::Context as _;

use crate::init::apply::{self, Iptables, Ipv6State};
use crate::init::{self, Family, OutboundInclude, Settings};

/// Whether IPv6 rules are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// When the namespace has IPv6 enabled; then ip6tables must work or init fails (IPv4-only
    /// capture would let IPv6 traffic bypass the proxy).
    Auto,
    /// Always; fail if IPv6 is disabled or ip6tables is missing.
    On,
    /// Never (IPv4 rules only).
    Off,
}

/// Set up traffic capture in the current network namespace (idempotent).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the iptables-restore and ip6tables-restore scripts instead of applying them.
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
    /// Outbound destinations captured: `*` (both families) or comma-separated IPv4 or IPv6 CIDRs.
    #[arg(long, default_value = "*")]
    pub include_outbound_ip_ranges: String,
    /// Outbound destinations not captured: comma-separated IPv4 or IPv6 CIDRs.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ip_ranges: String,
    /// `iptables-save` to run (e.g. iptables-legacy-save).
    #[arg(long, default_value = "iptables-save")]
    pub iptables_save: String,
    /// `iptables-restore` to run (e.g. iptables-legacy-restore).
    #[arg(long, default_value = "iptables-restore")]
    pub iptables_restore: String,
    /// `ip6tables-save` to run (e.g. ip6tables-legacy-save).
    #[arg(long, default_value = "ip6tables-save")]
    pub ip6tables_save: String,
    /// `ip6tables-restore` to run (e.g. ip6tables-legacy-restore).
    #[arg(long, default_value = "ip6tables-restore")]
    pub ip6tables_restore: String,
    /// Write IPv6 rules: `auto` when the namespace has IPv6 (failing if ip6tables cannot write
    /// them), `on` always (failing if it cannot), `off` never (IPv4-only capture, deliberately).
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,
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

/// Whether to write IPv6 rules, given the mode, what the namespace says about IPv6 and (asked
/// only when it matters) whether ip6tables works. Fails closed: where IPv6 traffic can flow,
/// `auto` either captures it or stops, because IPv4-only capture would let IPv6 traffic bypass
/// the proxy (and mTLS STRICT) unseen. Only `--ipv6 off` chooses IPv4-only capture.
fn decide_ipv6(
    mode: Ipv6Mode,
    state: &Ipv6State,
    probe: impl FnOnce() -> Result<(), apply::ApplyError>,
) -> anyhow::Result<bool> {
    match (mode, state) {
        (Ipv6Mode::Off, _) => Ok(false),
        (Ipv6Mode::On, Ipv6State::Disabled(why) | Ipv6State::Unknown(why)) => {
            anyhow::bail!("--ipv6 on: {why}")
        }
        (Ipv6Mode::Auto, Ipv6State::Disabled(_)) => Ok(false),
        (Ipv6Mode::On, Ipv6State::Enabled) => {
            probe().context("--ipv6 on: ip6tables is not usable")?;
            Ok(true)
        }
        (Ipv6Mode::Auto, Ipv6State::Enabled | Ipv6State::Unknown(_)) => {
            let seen = match state {
                Ipv6State::Unknown(why) => format!("IPv6 may be enabled in this pod ({why})"),
                _ => "IPv6 is enabled in this pod".to_string(),
            };
            probe().with_context(|| {
                format!(
                    "--ipv6 auto: {seen} but ip6tables cannot be used, so IPv6 traffic would \
                     bypass the proxy; refusing to start the pod. Install ip6tables in the \
                     init image (Debian/Ubuntu: the iptables package, which ships \
                     ip6tables-save and ip6tables-restore), point --ip6tables-save and \
                     --ip6tables-restore at working front-ends, or set --ipv6 off to capture \
                     IPv4 only, deliberately"
                )
            })?;
            Ok(true)
        }
    }
}

/// The comment line that heads one family's script in `--dry-run` output (restore skips it).
fn header(family: Family) -> &'static str {
    match family {
        Family::V4 => "# iptables-restore\n",
        Family::V6 => "# ip6tables-restore\n",
    }
}

/// Applies, removes or prints the rules: IPv4 first, then IPv6.
pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let v4 = Iptables {
        family: Family::V4,
        save: args.iptables_save.clone(),
        restore: args.iptables_restore.clone(),
    };
    let v6 = Iptables {
        family: Family::V6,
        save: args.ip6tables_save.clone(),
        restore: args.ip6tables_restore.clone(),
    };
    if args.dry_run && !args.cleanup {
        // No current table to diff against: print what a first run would install, for both
        // families unless IPv6 is off (nothing is probed: this runs anywhere).
        let mut families = vec![Family::V4];
        if args.ipv6 != Ipv6Mode::Off {
            families.push(Family::V6);
        }
        for family in families {
            print!(
                "{}{}",
                header(family),
                init::rules::apply_script(&settings, family, "")
            );
        }
        return Ok(());
    }
    let mut tables = vec![&v4];
    // Decided before anything is changed, so a refusal leaves the namespace as it was.
    let state = apply::ipv6_state();
    if decide_ipv6(args.ipv6, &state, || v6.available())? {
        tables.push(&v6);
    } else if let (Ipv6Mode::Auto, Ipv6State::Disabled(why)) = (args.ipv6, &state) {
        eprintln!("palisade init: no IPv6 rules (--ipv6 auto): {why}");
    }
    // When the IPv6 step fails, the IPv4 one has already changed the namespace: say so.
    let v4_done = match (args.cleanup, args.dry_run) {
        (_, true) => None,
        (false, false) => Some(
            "the IPv4 rules are installed but installing the IPv6 rules failed, so IPv6 \
             traffic is NOT captured; re-running palisade init is safe (idempotent)",
        ),
        (true, false) => Some(
            "the IPv4 rules were removed but removing the IPv6 rules failed; re-running \
             palisade init --cleanup is safe",
        ),
    };
    for (i, table) in tables.iter().enumerate() {
        let step = |r: Result<(), apply::ApplyError>| -> anyhow::Result<()> {
            r.map_err(|e| match v4_done {
                Some(note) if i > 0 => anyhow::Error::new(e).context(note),
                _ => e.into(),
            })
        };
        let name = match table.family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        match (args.cleanup, args.dry_run) {
            (true, true) => {
                step(table.current_nat().map(|current| {
                    match init::rules::cleanup_script(&current) {
                        Some(script) => print!("{}{script}", header(table.family)),
                        None => eprintln!("{name}: nothing to clean up"),
                    }
                }))?
            }
            (false, _) => {
                step(table.apply(&settings).map(drop))?;
                eprintln!("palisade init: {name} traffic capture installed");
            }
            (true, false) => step(table.cleanup().map(|script| match script {
                Some(_) => eprintln!("palisade init: {name} traffic capture removed"),
                None => eprintln!("palisade init: {name}: nothing to clean up"),
            }))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("init").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn ipv6_flags_default_to_auto_and_the_usual_front_ends() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.ipv6, Ipv6Mode::Auto);
        assert_eq!(a.ip6tables_save, "ip6tables-save");
        assert_eq!(a.ip6tables_restore, "ip6tables-restore");
        let a = parse(&[
            "--ipv6",
            "off",
            "--ip6tables-restore",
            "ip6tables-legacy-restore",
        ])
        .unwrap();
        assert_eq!(a.ipv6, Ipv6Mode::Off);
        assert_eq!(a.ip6tables_restore, "ip6tables-legacy-restore");
        assert_eq!(parse(&["--ipv6", "on"]).unwrap().ipv6, Ipv6Mode::On);
        assert!(parse(&["--ipv6", "yes"]).is_err());
    }

    #[test]
    fn mixed_range_flags_are_accepted_and_bad_ones_named() {
        let a = parse(&[
            "--include-outbound-ip-ranges",
            "10.0.0.0/8,fd00::/8",
            "--exclude-outbound-ip-ranges",
            "fd00::1",
        ])
        .unwrap();
        let s = a.settings().unwrap();
        assert_eq!(s.include_outbound.to_string(), "10.0.0.0/8,fd00::/8");
        assert_eq!(init::join(&s.exclude_outbound_cidrs), "fd00::1/128");
        let e = parse(&["--exclude-outbound-ip-ranges", "fd00::/200"])
            .unwrap()
            .settings()
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("--exclude-outbound-ip-ranges") && text.contains("fd00::/200"),
            "{text}"
        );
    }

    /// Every mode against every namespace state and probe outcome: where IPv6 can flow, `auto`
    /// captures it or fails; only `off` (or a namespace without IPv6) gives IPv4-only capture.
    #[test]
    fn ipv6_decision_fails_closed() {
        use Ipv6Mode::{Auto, Off, On};
        let enabled = Ipv6State::Enabled;
        let disabled = Ipv6State::Disabled("IPv6 is disabled".into());
        let unknown = Ipv6State::Unknown("unreadable".into());
        // (mode, state, probe works, expected: Some(use v6) or None for an error, probed)
        let table: [(Ipv6Mode, &Ipv6State, bool, Option<bool>, bool); 18] = [
            (Off, &enabled, true, Some(false), false),
            (Off, &enabled, false, Some(false), false),
            (Off, &disabled, false, Some(false), false),
            (Off, &unknown, false, Some(false), false),
            (Off, &disabled, true, Some(false), false),
            (Off, &unknown, true, Some(false), false),
            (On, &enabled, true, Some(true), true),
            (On, &enabled, false, None, true),
            (On, &disabled, true, None, false),
            (On, &disabled, false, None, false),
            (On, &unknown, true, None, false),
            (On, &unknown, false, None, false),
            (Auto, &enabled, true, Some(true), true),
            (Auto, &enabled, false, None, true),
            (Auto, &disabled, true, Some(false), false),
            (Auto, &disabled, false, Some(false), false),
            (Auto, &unknown, true, Some(true), true),
            (Auto, &unknown, false, None, true),
        ];
        for (mode, state, works, expected, probes) in table {
            let mut probed = false;
            let got = decide_ipv6(mode, state, || {
                probed = true;
                if works {
                    Ok(())
                } else {
                    Err(apply::ApplyError::Failed {
                        command: "ip6tables-restore --noflush --test".into(),
                        status: "exit status: 2".into(),
                        stderr: "can't initialize ip6tables table `nat'".into(),
                    })
                }
            });
            let case = format!("{mode:?} {state:?} probe works: {works}");
            assert_eq!(got.as_ref().ok().copied(), expected, "{case}: {got:?}");
            assert_eq!(probed, probes, "{case}: probed");
            if let (Err(e), Auto) = (&got, mode) {
                // The operator learns what failed and both ways out.
                let text = format!("{e:#}");
                for needed in [
                    "can't initialize ip6tables table",
                    "bypass the proxy",
                    "ip6tables",
                    "--ipv6 off",
                ] {
                    assert!(text.contains(needed), "{case}: {text}");
                }
            }
        }
    }
}
