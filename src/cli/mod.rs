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
///
/// `palisade proxy …` first replaces this process with the proxy-only executable installed
/// next to this one (same arguments and environment; see [`proxy::exec_dedicated`]), and runs
/// the proxy here only when there is none.
pub fn main() -> ExitCode {
    // Before anything else, so the proxy's start does not first set up this executable's logs.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let not_execed = argv
        .get(1)
        .is_some_and(|arg| arg == "proxy")
        .then(|| proxy::exec_dedicated(&argv))
        .flatten();
    init_tracing();
    if let Some((exe, err)) = not_execed {
        tracing::warn!(
            exe = %exe.display(),
            error = %err,
            "could not start the proxy-only executable; running the proxy in this one"
        );
    }
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
    exit_code(outcome)
}

/// The command line of the proxy-only executable (`palisade-proxy`): exactly `palisade
/// proxy`'s, so the exec in [`main`] passes its arguments on unchanged and help reads the same.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, long_about = None)]
struct ProxyCli {
    #[command(subcommand)]
    command: ProxyCommand,
}

#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Run the sidecar proxy (started by the injector in every meshed pod).
    Proxy(proxy::Args),
}

/// `main` of the proxy-only executable: it links only the proxy, so the sidecar maps and
/// touches a fraction of the pages the full `palisade` executable would (docs/proxy.md).
pub fn proxy_main() -> ExitCode {
    init_proxy_tracing();
    let ProxyCommand::Proxy(args) = ProxyCli::parse().command;
    exit_code(proxy::run(args))
}

/// Logs for the proxy-only executable: `RUST_LOG` as a list of `target=level` directives
/// (`info`, `palisade::proxy=debug,info`), read without `EnvFilter`, whose directive parser
/// compiles regular expressions: the regex engine would be most of the code the sidecar maps
/// only to start. Span and field directives are not supported there; such a `RUST_LOG` is
/// reported and `info` used.
fn init_proxy_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let wanted = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (filter, unreadable) = match wanted.as_deref().map(str::parse::<Targets>) {
        None => (Targets::new().with_default(tracing::Level::INFO), None),
        Some(Ok(targets)) => (targets, None),
        Some(Err(err)) => (Targets::new().with_default(tracing::Level::INFO), Some(err)),
    };
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .with(filter)
        .try_init();
    if let Some(err) = unreadable {
        tracing::warn!(
            rust_log = wanted.as_deref().unwrap_or_default(),
            error = %err,
            "RUST_LOG is not a list of target=level directives; logging at info"
        );
    }
}

fn exit_code(outcome: anyhow::Result<()>) -> ExitCode {
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
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(stderr_layer())
        .with(filter)
        .try_init();
}

/// The log output both executables use: text lines on stderr, coloured on a terminal.
fn stderr_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
