//! The `palisade` command line: one binary, subcommands select the role.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Palisade: zero-trust service-mesh security for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each lives in its own module with an `Args` struct and a `run` function.
#[derive(Debug, Subcommand)]
pub enum Command {}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {}
}
