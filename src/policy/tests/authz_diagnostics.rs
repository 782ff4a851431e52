//! AuthorizationPolicy findings and the status conditions built from them.

use serde_json::json;

use super::authz::{Policies, engine};
use crate::policy::authz::{authz_status, authz_statuses};
use crate::policy::model::*;

/// A finding: severity and kind.
type Finding = (Severity, DiagnosticKind);

fn kinds(policies: &Policies) -> Vec<Finding> {
    engine(policies)
        .policies()
        .flat_map(|p| p.diagnostics.iter().map(|d| (d.severity, d.kind.clone())))
        .collect()
}

fn not_enforced(field: &str) -> (Severity, DiagnosticKind) {
    (
        Severity::Warning,
        DiagnosticKind::NotEnforced {
            field: field.into(),
        },
    )
}

#[test]
fn each_finding_is_reported() {
    let table: Vec<(&str, serde_json::Value, Vec<Finding>)> = vec![
        (
            "a clean policy has none",
            json!({"rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}),
            vec![],
        ),
        (
            "CUSTOM",
            json!({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}),
            vec![(
                Severity::Error,
                DiagnosticKind::Unsupported {
                    field: "spec.action".into(),
                },
            )],
        ),
        (
            "AUDIT",
            json!({"action": "AUDIT", "rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}),
            vec![(
                Severity::Info,
                DiagnosticKind::NotEnforced {
                    field: "spec.action".into(),
                },
            )],
        ),
        (
            "allow nothing",
            json!({}),
            vec![(Severity::Info, DiagnosticKind::AllowsNothing)],
        ),
        (
            "allow all",
            json!({"rules": [{}]}),
            vec![(
                Severity::Info,
                DiagnosticKind::MatchesEverything {
                    field: "spec.rules[0]".into(),
                },
            )],
        ),
        (
            "HTTP-only in ALLOW: the only rule can never match",
            json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
            vec![
                not_enforced("spec.rules[0].to[0].operation.methods"),
                (Severity::Info, DiagnosticKind::AllowsNothing),
            ],
        ),
        (
            "HTTP-only in DENY: the rule matches everything",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
            vec![
                not_enforced("spec.rules[0].to[0].operation.paths"),
                (
                    Severity::Info,
                    DiagnosticKind::MatchesEverything {
                        field: "spec.rules[0]".into(),
                    },
                ),
            ],
        ),
        (
            "request principals and request.* keys",
            json!({"action": "DENY", "rules": [{
            "from": [{"source": {"requestPrincipals": ["*"], "namespaces": ["a"]}}],
            "when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]}),
            vec![
                not_enforced("spec.rules[0].from[0].source.requestPrincipals"),
                not_enforced("spec.rules[0].when[0] (key \"request.auth.claims[iss]\")"),
            ],
        ),
        (
            "invalid values",
            json!({"action": "DENY", "rules": [{
            "from": [{"source": {"ipBlocks": ["10.0.0.0/33"], "namespaces": ["a"]}}],
            "to": [{"operation": {"ports": ["0"]}}],
            "when": [{"key": "source.labels", "values": ["x"]}]}]}),
            vec![
                (
                    Severity::Error,
                    DiagnosticKind::Invalid {
                        field: "spec.rules[0].from[0].source.ipBlocks".into(),
                    },
                ),
                (
                    Severity::Error,
                    DiagnosticKind::Invalid {
                        field: "spec.rules[0].to[0].operation.ports".into(),
                    },
                ),
                (
                    Severity::Error,
                    DiagnosticKind::Invalid {
                        field: "spec.rules[0].when[0] (key \"source.labels\")".into(),
                    },
                ),
            ],
        ),
        (
            "targetRef",
            json!({"targetRef": {"kind": "Gateway", "name": "gw"}, "action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}),
            vec![not_enforced("spec.targetRefs")],
        ),
    ];
    for (name, spec, want) in table {
        assert_eq!(kinds(&vec![("shop", "p", spec)]), want, "{name}");
    }
}

fn condition<'a>(
    status: &'a crate::api::PolicyStatus,
    type_: &str,
) -> Option<&'a crate::api::PolicyCondition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[test]
fn status_conditions() {
    let policies: Policies = vec![
        (
            "shop",
            "custom",
            json!({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{}]}),
        ),
        (
            "shop",
            "http",
            json!({"selector": {"matchLabels": {"app": "web"}}, "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        ),
        (
            "shop",
            "invalid",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]}),
        ),
        (
            "shop",
            "unused",
            json!({"selector": {"matchLabels": {"app": "none"}}, "rules": [{"from": [{"source": {"namespaces": ["a"]}}]}]}),
        ),
    ];
    let engine = engine(&policies);
    let workloads = vec![Workload {
        namespace: "shop".into(),
        name: "web".into(),
        labels: super::labels(&[("app", "web")]),
        service_account: "web".into(),
        ports: vec![],
    }];
    let statuses = authz_statuses(&engine, Some(&workloads));
    let get = |name: &str| {
        &statuses
            .iter()
            .find(|(o, _)| o.name == name)
            .expect("policy")
            .1
    };
    let summary = |name: &str, type_: &str| {
        condition(get(name), type_).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let s = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
    assert_eq!(
        summary("custom", "Accepted"),
        s("False", "UnsupportedAction")
    );
    assert_eq!(summary("custom", "Unused"), s("False", "InUse"));
    assert_eq!(summary("http", "Accepted"), s("True", "Accepted"));
    assert!(
        condition(get("http"), "Accepted")
            .expect("accepted")
            .message
            .contains("allows nothing")
    );
    assert_eq!(summary("http", "NotEnforced"), s("True", "HttpOnlyFields"));
    assert!(
        condition(get("http"), "NotEnforced")
            .expect("c")
            .message
            .contains("methods")
    );
    assert_eq!(summary("invalid", "Accepted"), s("False", "InvalidFields"));
    assert_eq!(summary("invalid", "NotEnforced"), s("False", "Enforced"));
    assert_eq!(summary("unused", "Unused"), s("True", "SelectsNothing"));
    assert_eq!(summary("unused", "Accepted"), s("True", "Accepted"));

    // Without an inventory there is no Unused condition; the generation is carried.
    let first = engine.policies().next().expect("one");
    let status = authz_status(first, None, Some(7));
    assert!(condition(&status, "Unused").is_none());
    assert_eq!(status.observed_generation, Some(7));
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(7))
    );
}
