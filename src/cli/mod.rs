//! The `palisade` command line: one binary, subcommands select the role.

use std::process::ExitCode;

pub mod controller;
mod duration;
pub mod token;

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
pub enum Command {
    /// Run the control plane (CA, and more as it grows).
    Controller(controller::Args),
    /// Standalone mode: print a workload token the standalone CA accepts.
    Token(token::Args),
}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Controller(args) => controller::run(args),
        Command::Token(args) => token::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
