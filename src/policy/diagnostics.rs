//! Object-level findings that need no other object: fields kept but not enforced, invalid
//! field combinations, and the helpers every module uses to build and order diagnostics.

use crate::api::{ClientTlsSettings, DestinationRuleSpec, TlsMode, TrafficPolicy};

use super::model::{Diagnostic, DiagnosticKind, ObjectRef, Severity};

/// Builds one diagnostic.
pub(crate) fn diagnostic(
    severity: Severity,
    object: &ObjectRef,
    kind: DiagnosticKind,
    message: String,
) -> Diagnostic {
    Diagnostic {
        severity,
        object: object.clone(),
        kind,
        message,
    }
}

/// Orders diagnostics by object, then message, and removes exact duplicates.
pub(crate) fn sort_and_dedup(diagnostics: &mut Vec<Diagnostic>) {
    diagnostics.sort_by(|a, b| {
        (&a.object, &a.message, a.severity).cmp(&(&b.object, &b.message, b.severity))
    });
    diagnostics.dedup();
}

/// Findings about a DestinationRule on its own: not-enforced fields, invalid TLS combinations,
/// exportTo on a workloadSelector rule, duplicate subset names.
pub(crate) fn destination_rule_findings(
    object: &ObjectRef,
    spec: &DestinationRuleSpec,
    out: &mut Vec<Diagnostic>,
) {
    if spec.host.is_empty() {
        out.push(diagnostic(
            Severity::Error,
            object,
            DiagnosticKind::Invalid {
                field: "spec.host".into(),
            },
            "spec.host is empty: the rule is ignored".into(),
        ));
    }
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy_findings(object, "spec.trafficPolicy", policy, out);
    }
    for (i, subset) in spec.subsets.iter().enumerate() {
        if spec.subsets[..i].iter().any(|s| s.name == subset.name) {
            out.push(diagnostic(
                Severity::Error,
                object,
                DiagnosticKind::Invalid {
                    field: format!("spec.subsets[{i}].name"),
                },
                format!(
                    "spec.subsets[{i}]: subset name {:?} is already defined earlier in the rule; this subset is ignored",
                    subset.name
                ),
            ));
        }
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy_findings(
                object,
                &format!("spec.subsets[{i}].trafficPolicy"),
                policy,
                out,
            );
        }
    }
    if spec.workload_selector.is_some()
        && !spec.export_to.is_empty()
        && spec.export_to.iter().any(|e| e != ".")
    {
        out.push(diagnostic(
            Severity::Info,
            object,
            DiagnosticKind::NotEnforced {
                field: "spec.exportTo".into(),
            },
            "spec.exportTo: a rule with a workloadSelector applies only to selected workloads of its own namespace and is never exported".into(),
        ));
    }
}

fn traffic_policy_findings(
    object: &ObjectRef,
    path: &str,
    policy: &TrafficPolicy,
    out: &mut Vec<Diagnostic>,
) {
    let present = [
        ("loadBalancer", policy.load_balancer.is_some()),
        ("connectionPool", policy.connection_pool.is_some()),
        ("outlierDetection", policy.outlier_detection.is_some()),
        ("tunnel", policy.tunnel.is_some()),
        ("proxyProtocol", policy.proxy_protocol.is_some()),
        ("retryBudget", policy.retry_budget.is_some()),
    ];
    not_enforced(object, path, &present, out);
    if let Some(tls) = &policy.tls {
        tls_findings(object, &format!("{path}.tls"), tls, out);
    }
    for (j, entry) in policy.port_level_settings.iter().enumerate() {
        let entry_path = format!("{path}.portLevelSettings[{j}]");
        let present = [
            ("loadBalancer", entry.load_balancer.is_some()),
            ("connectionPool", entry.connection_pool.is_some()),
            ("outlierDetection", entry.outlier_detection.is_some()),
        ];
        not_enforced(object, &entry_path, &present, out);
        if entry.port.number == 0 || entry.port.number > u32::from(u16::MAX) {
            out.push(diagnostic(
                Severity::Error,
                object,
                DiagnosticKind::Invalid {
                    field: format!("{entry_path}.port.number"),
                },
                format!(
                    "{entry_path}.port.number: {} is not a port number (1-65535); the entry is ignored",
                    entry.port.number
                ),
            ));
        }
        if let Some(tls) = &entry.tls {
            tls_findings(object, &format!("{entry_path}.tls"), tls, out);
        }
    }
}

fn not_enforced(
    object: &ObjectRef,
    path: &str,
    present: &[(&str, bool)],
    out: &mut Vec<Diagnostic>,
) {
    for (name, _) in present.iter().filter(|(_, is)| *is) {
        let field = format!("{path}.{name}");
        out.push(diagnostic(
            Severity::Info,
            object,
            DiagnosticKind::NotEnforced {
                field: field.clone(),
            },
            format!("{field} is kept but not enforced by Palisade (only TLS settings are)"),
        ));
    }
}

fn non_empty(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.is_empty())
}

/// The fields of `tls` that ISTIO_MUTUAL ignores (the mesh's own certificates are used), by
/// JSON name.
pub(crate) fn istio_mutual_ignored_fields(tls: &ClientTlsSettings) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if non_empty(&tls.client_certificate) {
        fields.push("clientCertificate");
    }
    if non_empty(&tls.private_key) {
        fields.push("privateKey");
    }
    if non_empty(&tls.ca_certificates) {
        fields.push("caCertificates");
    }
    if non_empty(&tls.credential_name) {
        fields.push("credentialName");
    }
    fields
}

/// TLS settings as the proxy applies them: under ISTIO_MUTUAL the file and secret fields are
/// dropped.
pub(crate) fn effective_tls(tls: &ClientTlsSettings) -> ClientTlsSettings {
    let mut tls = tls.clone();
    if tls.effective_mode() == TlsMode::IstioMutual {
        tls.client_certificate = None;
        tls.private_key = None;
        tls.ca_certificates = None;
        tls.credential_name = None;
    }
    tls
}

fn tls_findings(
    object: &ObjectRef,
    path: &str,
    tls: &ClientTlsSettings,
    out: &mut Vec<Diagnostic>,
) {
    let mut invalid = |severity: Severity, field: String, message: String| {
        out.push(diagnostic(
            severity,
            object,
            DiagnosticKind::Invalid { field },
            message,
        ));
    };
    let mode = tls.effective_mode();
    let has_files = non_empty(&tls.client_certificate)
        || non_empty(&tls.private_key)
        || non_empty(&tls.ca_certificates);
    if mode == TlsMode::Mutual
        && !non_empty(&tls.credential_name)
        && !(non_empty(&tls.client_certificate) && non_empty(&tls.private_key))
    {
        invalid(
            Severity::Error,
            format!("{path}.mode"),
            format!(
                "{path}.mode: MUTUAL requires clientCertificate and privateKey, or credentialName"
            ),
        );
    }
    if mode != TlsMode::IstioMutual && non_empty(&tls.credential_name) && has_files {
        invalid(
            Severity::Error,
            format!("{path}.credentialName"),
            format!(
                "{path}.credentialName cannot be combined with clientCertificate, privateKey or caCertificates"
            ),
        );
    }
    if tls.insecure_skip_verify == Some(true)
        && (non_empty(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
    {
        invalid(
            Severity::Error,
            format!("{path}.insecureSkipVerify"),
            format!(
                "{path}.insecureSkipVerify cannot be combined with caCertificates or subjectAltNames"
            ),
        );
    }
    if mode == TlsMode::IstioMutual {
        for field in istio_mutual_ignored_fields(tls) {
            invalid(
                Severity::Warning,
                format!("{path}.{field}"),
                format!(
                    "{path}.{field} is ignored with ISTIO_MUTUAL, which uses the mesh's workload certificates"
                ),
            );
        }
    }
}
