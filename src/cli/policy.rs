//! `palisade policy explain`: offline "what-if" over manifests — which policy applies to a
//! workload or a destination, and why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::api::manifest::Manifests;
use crate::api::{ClientTlsSettings, MtlsMode};
use crate::policy::host::service_fqdn;
use crate::policy::{
    Client, Diagnostic, InboundDecision, MeshConfig, MeshInput, OutboundDecision, PolicyEngine,
};

/// Policy tools.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// `palisade policy <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Explain which policy applies, and why, from manifests on disk.
    #[command(subcommand)]
    Explain(ExplainCommand),
}

/// `palisade policy explain <direction>`.
#[derive(Debug, clap::Subcommand)]
pub enum ExplainCommand {
    /// The inbound mTLS mode of a workload (PeerAuthentication).
    Inbound(InboundArgs),
    /// The TLS a client uses for a destination (DestinationRule or auto mTLS).
    Outbound(OutboundArgs),
    /// Whether a connection to a workload is allowed (AuthorizationPolicy).
    Authz(AuthzArgs),
}

/// Options shared by both directions.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// YAML files (multi-document) or directories of them.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Namespace of the workload (inbound) or of the client (outbound).
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: String,
    /// Namespace holding mesh-wide policies.
    #[arg(long, default_value = "palisade-system", value_name = "NS")]
    pub root_namespace: String,
    /// Cluster DNS suffix used to expand short host names.
    #[arg(long, default_value = "cluster.local", value_name = "SUFFIX")]
    pub domain_suffix: String,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN")]
    pub trust_domain: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A readable explanation.
    Text,
    /// One JSON object.
    Json,
}

/// `palisade policy explain inbound`.
#[derive(Debug, clap::Args)]
pub struct InboundArgs {
    #[command(flatten)]
    pub common: Common,
    /// The workload's pod labels, `k=v[,k=v]`.
    #[arg(long, short = 'l', value_name = "K=V,...", default_value = "")]
    pub labels: String,
    /// Also report the mode of this container port.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
}

/// `palisade policy explain outbound`.
#[derive(Debug, clap::Args)]
pub struct OutboundArgs {
    #[command(flatten)]
    pub common: Common,
    /// The destination host as the client dials it: a short name expands with `--namespace`;
    /// `svc.ns.svc`, and `svc.ns` for a Service in the manifests, expand like cluster DNS.
    #[arg(long, value_name = "HOST")]
    pub host: String,
    /// The service port the client dials.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The destination subset, as a VirtualService route would name it.
    #[arg(long, value_name = "NAME")]
    pub subset: Option<String>,
    /// The client's pod labels, `k=v[,k=v]` (for DestinationRule workloadSelector).
    #[arg(long, short = 'l', value_name = "K=V,...", default_value = "")]
    pub labels: String,
}

/// `palisade policy explain authz`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("peer").required(true).args(["from", "from_plaintext"])))]
pub struct AuthzArgs {
    #[command(flatten)]
    pub common: Common,
    /// The workload's pod labels, `k=v[,k=v]`.
    #[arg(long, short = 'l', value_name = "K=V,...", default_value = "")]
    pub labels: String,
    /// The workload (container) port the connection is for.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The client's identity, `spiffe://<trust domain>/ns/<ns>/sa/<sa>` (an mTLS connection).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub from: Option<String>,
    /// The client connects in plaintext (PERMISSIVE or DISABLE): it has no identity.
    #[arg(long)]
    pub from_plaintext: bool,
    /// The client's address (for ipBlocks and source.ip); default 0.0.0.0, which no
    /// specific block contains.
    #[arg(long, value_name = "IP")]
    pub source_ip: Option<std::net::IpAddr>,
    /// The address the connection arrives on (for destination.ip); default 0.0.0.0.
    #[arg(long, value_name = "IP")]
    pub destination_ip: Option<std::net::IpAddr>,
    /// The TLS server name the client sends (for connection.sni).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
}

/// Runs `palisade policy ...`, printing to stdout.
pub fn run(args: Args) -> anyhow::Result<()> {
    let PolicyCommand::Explain(command) = args.command;
    let text = match command {
        ExplainCommand::Inbound(args) => explain_inbound(&args)?,
        ExplainCommand::Outbound(args) => explain_outbound(&args)?,
        ExplainCommand::Authz(args) => super::policy_authz::explain_authz(&args)?,
    };
    print!("{text}");
    Ok(())
}

/// Parses `k=v,k2=v2` (empty: no labels).
pub fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("label `{pair}` is not of the form key=value");
        };
        if k.trim().is_empty() {
            bail!("label `{pair}` has an empty key");
        }
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

/// Manifests read and indexed.
pub(super) struct Loaded {
    pub(super) engine: PolicyEngine,
    pub(super) authz: crate::policy::authz::AuthzEngine,
    pub(super) notes: Vec<String>,
}

pub(super) fn load(common: &Common) -> anyhow::Result<Loaded> {
    let manifests = Manifests::load(&common.manifests).context("reading manifests")?;
    let notes = manifests
        .skipped
        .iter()
        .map(|s| {
            format!(
                "skipped {} {} `{}` ({}): not a policy, workload or service",
                s.api_version, s.kind, s.name, s.location
            )
        })
        .collect();
    let config = MeshConfig {
        root_namespace: common.root_namespace.clone(),
        domain_suffix: common.domain_suffix.clone(),
        trust_domain: common.trust_domain.clone(),
    };
    let authz = crate::policy::authz::AuthzEngine::new(&config, &manifests.authorization_policies);
    let input = MeshInput {
        config,
        namespaces: Vec::new(),
        peer_authentications: manifests.peer_authentications,
        destination_rules: manifests.destination_rules,
        workloads: manifests.workloads,
        services: manifests.services,
        inventory_complete: false,
    };
    Ok(Loaded {
        engine: PolicyEngine::new(input),
        authz,
        notes,
    })
}

/// Expands what a client dials the way cluster DNS would: `svc.ns.svc` always, and `svc.ns`
/// when the manifests define that Service (otherwise `a.b` may well be an external name).
fn dialed_host(loaded: &Loaded, host: &str) -> String {
    let suffix = &loaded.engine.config().domain_suffix;
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [name, ns, "svc"] => service_fqdn(name, ns, suffix),
        [name, ns] => {
            let fqdn = service_fqdn(name, ns, suffix);
            if loaded.engine.has_service(&fqdn) {
                fqdn
            } else {
                host.to_string()
            }
        }
        _ => host.to_string(),
    }
}

fn explain_inbound(args: &InboundArgs) -> anyhow::Result<String> {
    let labels = parse_labels(&args.labels)?;
    let loaded = load(&args.common)?;
    let decision = loaded.engine.inbound(&args.common.namespace, &labels);
    Ok(match args.common.output {
        Output::Json => format!("{:#}\n", inbound_json(&decision, args.port)),
        Output::Text => inbound_text(args, &labels, &decision, &loaded.notes),
    })
}

fn explain_outbound(args: &OutboundArgs) -> anyhow::Result<String> {
    let labels = parse_labels(&args.labels)?;
    let loaded = load(&args.common)?;
    let client = Client {
        namespace: args.common.namespace.clone(),
        labels,
    };
    let host = dialed_host(&loaded, &args.host);
    let decision = loaded
        .engine
        .outbound(&client, &host, args.port, args.subset.as_deref());
    Ok(match args.common.output {
        Output::Json => format!("{:#}\n", outbound_json(&decision)),
        Output::Text => outbound_text(args, &decision, &loaded.notes),
    })
}

/// The `-o json` object of `explain inbound`: `portModes` lists the ports whose mode differs
/// from `mode` or was set explicitly, and always the asked `port`.
pub fn inbound_json(decision: &InboundDecision, port: Option<u16>) -> Value {
    let mut port_modes = serde_json::Map::new();
    for (p, mode) in &decision.port_modes {
        port_modes.insert(p.to_string(), json!(mode.as_str()));
    }
    if let Some(p) = port {
        port_modes.insert(p.to_string(), json!(decision.mode_for_port(p).as_str()));
    }
    json!({
        "mode": decision.mode.as_str(),
        "portModes": port_modes,
        "decidedBy": decision.decided_by.iter().map(|d| json!({
            "kind": d.object.kind.as_str(),
            "namespace": d.object.namespace,
            "name": d.object.name,
            "scope": d.scope,
        })).collect::<Vec<_>>(),
        "diagnostics": diagnostics_json(&decision.diagnostics),
    })
}

/// The `-o json` object of `explain outbound`; `tls: null` means auto mTLS applies.
pub fn outbound_json(decision: &OutboundDecision) -> Value {
    json!({
        "host": decision.host,
        "tls": decision.tls.as_ref().map(tls_json),
        "rule": decision.rule.as_ref().map(|r| json!({"namespace": r.namespace, "name": r.name})),
        "mergedFrom": decision.merged_from.iter().map(|r| json!({"namespace": r.namespace, "name": r.name})).collect::<Vec<_>>(),
        "expectedIdentities": decision.expected_identities,
        "endpoints": decision.endpoints,
        "diagnostics": diagnostics_json(&decision.diagnostics),
    })
}

fn tls_json(tls: &ClientTlsSettings) -> Value {
    let mut value = serde_json::to_value(tls).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut value {
        // Istio's default for an absent mode is DISABLE; say it rather than omit it.
        map.insert("mode".into(), json!(tls.effective_mode().as_str()));
    }
    value
}

pub(super) fn diagnostics_json(diagnostics: &[Diagnostic]) -> Vec<Value> {
    diagnostics
        .iter()
        .map(|d| {
            json!({
                "severity": d.severity,
                "object": {"kind": d.object.kind.as_str(), "namespace": d.object.namespace, "name": d.object.name},
                "kind": d.kind,
                "message": d.message,
            })
        })
        .collect()
}

pub(super) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "(none)".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn inbound_text(
    args: &InboundArgs,
    labels: &BTreeMap<String, String>,
    decision: &InboundDecision,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Inbound mTLS for a workload in namespace {} with labels {}",
        args.common.namespace,
        labels_text(labels)
    );
    let _ = writeln!(out, "\nMode: {}", decision.mode);
    let mut ports: BTreeMap<u16, MtlsMode> = decision.port_modes.clone();
    if let Some(p) = args.port {
        ports.insert(p, decision.mode_for_port(p));
    }
    for (port, mode) in &ports {
        let why = if decision.port_modes.contains_key(port) {
            "set by portLevelMtls"
        } else {
            "the workload's mode"
        };
        let _ = writeln!(out, "  port {port}: {mode} ({why})");
    }
    out.push_str("\nDecided by:\n");
    if decision.decided_by.is_empty() {
        out.push_str("  nothing: no policy applies, so the default PERMISSIVE holds\n");
    }
    for d in &decision.decided_by {
        let _ = writeln!(
            out,
            "  {:<9} {}",
            format!("{:?}", d.scope).to_lowercase(),
            d.object
        );
    }
    diagnostics_text(&mut out, &decision.diagnostics, notes);
    out
}

fn outbound_text(args: &OutboundArgs, decision: &OutboundDecision, notes: &[String]) -> String {
    let mut out = String::new();
    let subset = args
        .subset
        .as_deref()
        .map(|s| format!(", subset {s}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Outbound TLS from namespace {} to {} port {}{}",
        args.common.namespace, decision.host, args.port, subset
    );
    match &decision.tls {
        Some(tls) => {
            let _ = writeln!(out, "\nTLS: {}", tls.effective_mode());
            let fields = [
                ("sni", tls.sni.clone()),
                ("clientCertificate", tls.client_certificate.clone()),
                ("privateKey", tls.private_key.clone()),
                ("caCertificates", tls.ca_certificates.clone()),
                ("credentialName", tls.credential_name.clone()),
                ("caCrl", tls.ca_crl.clone()),
                (
                    "insecureSkipVerify",
                    tls.insecure_skip_verify.map(|b| b.to_string()),
                ),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    let _ = writeln!(out, "  {name}: {value}");
                }
            }
            if !tls.subject_alt_names.is_empty() {
                let _ = writeln!(
                    out,
                    "  subjectAltNames: {}",
                    tls.subject_alt_names.join(", ")
                );
            }
        }
        None => {
            out.push_str("\nTLS: none set by any DestinationRule, so auto mTLS applies\n");
            for e in &decision.endpoints {
                let how = if e.mtls { "mTLS" } else { "plaintext" };
                let _ = writeln!(out, "  endpoint {}: {} ({})", e.workload, how, e.reason);
            }
        }
    }
    if !decision.expected_identities.is_empty() {
        let _ = writeln!(
            out,
            "  server identity must be one of: {}",
            decision.expected_identities.join(", ")
        );
    }
    out.push_str("\nRule:\n");
    match &decision.rule {
        None => out.push_str("  none applies to this client and host\n"),
        Some(rule) => {
            let _ = writeln!(out, "  {rule}");
            for merged in decision.merged_from.iter().filter(|r| *r != rule) {
                let _ = writeln!(out, "  merged with {merged}");
            }
        }
    }
    diagnostics_text(&mut out, &decision.diagnostics, notes);
    out
}

pub(super) fn diagnostics_text(out: &mut String, diagnostics: &[Diagnostic], notes: &[String]) {
    if diagnostics.is_empty() && notes.is_empty() {
        return;
    }
    out.push_str("\nDiagnostics:\n");
    for d in diagnostics {
        let severity = format!("{:?}", d.severity).to_lowercase();
        let _ = writeln!(out, "  {severity:<7} {}: {}", d.object, d.message);
    }
    for note in notes {
        let _ = writeln!(out, "  note    {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let l = parse_labels("app=web, version=v1").expect("parses");
        assert_eq!(l.len(), 2);
        assert_eq!(l["version"], "v1");
        assert!(parse_labels("").expect("empty").is_empty());
        assert!(parse_labels("novalue").is_err());
        assert!(parse_labels("=x").is_err());
    }
}
