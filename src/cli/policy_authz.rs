//! `palisade policy explain authz`: would a connection to a workload be allowed, by which
//! AuthorizationPolicy and rule, and what Palisade cannot enforce in the policies that apply.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use serde_json::{Value, json};

use super::policy::{
    AuthzArgs, Output, diagnostics_json, diagnostics_text, labels_text, load, parse_labels,
};
use crate::policy::authz::{AuthzDecision, Connection, Reason};

/// Runs the explanation and renders it.
pub(super) fn explain_authz(args: &AuthzArgs) -> anyhow::Result<String> {
    let labels = parse_labels(&args.labels)?;
    let mut loaded = load(&args.common)?;
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let source_ip = args.source_ip.unwrap_or(unspecified);
    let destination_ip = args.destination_ip.unwrap_or(unspecified);
    let connection = match &args.from {
        Some(id) => Connection::mtls(id, source_ip, destination_ip, args.port)
            .with_context(|| format!("--from {id:?}"))?,
        None => Connection::plaintext(source_ip, destination_ip, args.port),
    }
    .with_sni(args.sni.clone());
    if args.source_ip.is_none() {
        loaded
            .notes
            .push("no --source-ip: address rules were checked against 0.0.0.0".into());
    }
    let authz = loaded.authz.for_workload(&args.common.namespace, &labels);
    let decision = authz.explain(&connection);
    Ok(match args.common.output {
        Output::Json => format!("{:#}\n", authz_json(&decision)),
        Output::Text => authz_text(args, &labels_text(&labels), &decision, &loaded.notes),
    })
}

fn verdict(decision: &AuthzDecision) -> &'static str {
    if decision.allowed { "ALLOW" } else { "DENY" }
}

/// The `-o json` object of `explain authz`: `decision` is `ALLOW` or `DENY`; `decidedBy` lists
/// the deciding policy (and rule), empty when a default decided.
pub fn authz_json(decision: &AuthzDecision) -> Value {
    json!({
        "decision": verdict(decision),
        "reason": decision.reason,
        "decidedBy": decision.policy.iter().map(|p| json!({
            "kind": p.kind.as_str(),
            "namespace": p.namespace,
            "name": p.name,
            "rule": decision.rule,
        })).collect::<Vec<_>>(),
        "applying": decision.applying.iter().map(|p| json!({
            "kind": p.kind.as_str(), "namespace": p.namespace, "name": p.name,
        })).collect::<Vec<_>>(),
        "diagnostics": diagnostics_json(&decision.diagnostics),
    })
}

fn authz_text(
    args: &AuthzArgs,
    labels: &str,
    decision: &AuthzDecision,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let peer = match &args.from {
        Some(id) => id.clone(),
        None => "a plaintext client (no identity)".into(),
    };
    let _ = writeln!(
        out,
        "Connection from {peer} to port {} of a workload in namespace {} with labels {labels}",
        args.port, args.common.namespace
    );
    let _ = writeln!(out, "\nDecision: {}", verdict(decision));
    let policy = decision
        .policy
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let rule = decision
        .rule
        .map(|r| format!(", spec.rules[{r}]"))
        .unwrap_or_default();
    let why = match decision.reason {
        Reason::CustomUnsupported => {
            format!("{policy} has action CUSTOM, which Palisade does not support, so it denies")
        }
        Reason::DenyMatched => format!("{policy}{rule} (DENY) matches"),
        Reason::AllowMatched => format!("{policy}{rule} (ALLOW) matches"),
        Reason::NoAllowMatched => "ALLOW policies apply to the workload and none matches".into(),
        Reason::NoAllowPolicy => {
            "no DENY matches and no ALLOW policy applies: allowed by default".into()
        }
    };
    let _ = writeln!(out, "  {why}");
    out.push_str("\nPolicies that apply:\n");
    if decision.applying.is_empty() {
        out.push_str("  none\n");
    }
    for p in &decision.applying {
        let _ = writeln!(out, "  {p}");
    }
    diagnostics_text(&mut out, &decision.diagnostics, notes);
    out
}
