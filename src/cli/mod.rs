//! The `palisade` command line: one binary, subcommands select the role.

use std::process::ExitCode;

pub mod certificate;
pub mod controller;
pub mod demo;
mod duration;
pub mod init;
pub mod proxy;
pub mod token;

use clap::{Parser, Subcommand};

pub mod crds;
pub mod policy;
mod policy_authz;

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
    /// A complete local mesh on this machine (root, no Kubernetes): mutual TLS, STRICT and
    /// PERMISSIVE, narrated; removes everything it created.
    Demo(demo::Args),
    /// Print the CustomResourceDefinition manifests (the source of `crds/`).
    Crds(crds::Args),
    /// Offline policy tools: `palisade policy explain inbound|outbound`.
    Policy(policy::Args),
    /// Run the control plane (CA, and more as it grows).
    Controller(controller::Args),
    /// Standalone mode: print a workload token the standalone CA accepts.
    Token(token::Args),
    /// Ask a running CA for a workload certificate, as a proxy would (for checks and scripts).
    Certificate(certificate::Args),
    /// Install the iptables rules that send a pod's traffic through its proxy.
    Init(init::Args),
    /// Run the sidecar proxy (started by the injector in every meshed pod).
    Proxy(proxy::Args),
}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Crds(args) => crds::run(args),
        Command::Policy(args) => policy::run(args),
        Command::Controller(args) => controller::run(args),
        Command::Token(args) => token::run(args),
        Command::Certificate(args) => certificate::run(args),
        Command::Init(args) => init::run(args),
        Command::Proxy(args) => proxy::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", crate::error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`), so stdout stays machine-readable.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use crate::error_chain;

    #[test]
    fn causes_already_in_a_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::new(crate::api::manifest::ManifestError::Io {
            path: "/x.yaml".into(),
            source: io,
        })
        .context("reading manifests");
        assert_eq!(
            error_chain(err.as_ref()),
            "reading manifests: /x.yaml: no such file"
        );
    }
}
