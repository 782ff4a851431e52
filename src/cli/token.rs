//! `palisade token`: standalone mode only, prints a workload token the standalone CA accepts.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::auth::Identity;
use crate::auth::jwt::LocalJwtKey;

/// Issue a workload token signed by the standalone token key in the state directory.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The standalone control plane's state directory (holds the signing key).
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub service_account: String,
    #[arg(long, default_value = "palisade-ca")]
    pub audience: String,
    /// Token lifetime.
    #[arg(long, default_value = "12h", value_parser = super::duration::parse)]
    pub ttl: Duration,
}

/// Prints the token on stdout.
pub fn run(args: Args) -> anyhow::Result<()> {
    let identity = Identity::new(&args.namespace, &args.service_account)?;
    let key = LocalJwtKey::load_or_create(&args.state_dir)
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    let token = key.issue(&identity, &args.audience, args.ttl, SystemTime::now())?;
    println!("{token}");
    Ok(())
}
