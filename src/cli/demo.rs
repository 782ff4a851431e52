//! `palisade demo`: a complete local mesh (see [`crate::demo`]).

/// `palisade demo` takes no options: it needs root on a Linux machine with iproute2, iptables
/// and util-linux, and leaves nothing behind.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the demo.
pub fn run(_args: Args) -> anyhow::Result<()> {
    crate::demo::run()
}
