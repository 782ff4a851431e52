//! Status: the pure rule by tables (the writer's scenarios are in `status_writer_tests.rs`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::api::{DestinationRuleSpec, PeerAuthenticationSpec};
use crate::controller::inventory::PolicyRecord;
use crate::policy::{NamespaceInfo, Policy, PolicyMeta, Severity, Workload};

pub(super) const ROOT: &str = "palisade-system";
pub(super) const T0: &str = "2026-01-01T00:00:00Z";
pub(super) const T1: &str = "2026-01-01T00:10:00Z";

pub(super) fn t(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

fn pa_obj(ns: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: PolicyKind::PeerAuthentication,
        namespace: ns.into(),
        name: name.into(),
    }
}

fn finding(kind: DiagnosticKind, message: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        object: pa_obj("default", "p"),
        kind,
        message: message.into(),
    }
}

pub(super) fn condition(status: &PolicyStatus, type_: &str) -> (String, String, String) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{type_} missing"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn conditions_from_findings() {
    let conflict = || {
        finding(
            DiagnosticKind::Conflict {
                winner: pa_obj("default", "old"),
            },
            "lost to old",
        )
    };
    let not_enforced = || {
        finding(
            DiagnosticKind::NotEnforced {
                field: "spec.trafficPolicy.loadBalancer".into(),
            },
            "lb kept",
        )
    };
    let invalid = || {
        finding(
            DiagnosticKind::Invalid {
                field: "spec.host".into(),
            },
            "host empty",
        )
    };
    struct Case {
        name: &'static str,
        findings: Vec<Diagnostic>,
        ignored: bool,
        // (type, status, reason, message contains)
        expect: &'static [(&'static str, &'static str, &'static str, &'static str)],
    }
    let cases = vec![
        Case {
            name: "nothing found: in force, everything False",
            findings: vec![],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", "in force"),
                (CONFLICTED, "False", "NoConflict", ""),
                (UNUSED, "False", "InUse", ""),
                (NOT_ENFORCED, "False", "AllEnforced", ""),
            ],
        },
        Case {
            name: "lost its scope",
            findings: vec![conflict()],
            ignored: true,
            expect: &[
                (ACCEPTED, "False", "OlderPolicyWins", "lost to old"),
                (CONFLICTED, "True", "OlderPolicyWins", "lost to old"),
                (UNUSED, "False", "InUse", ""),
            ],
        },
        Case {
            name: "lost on some workloads, in force on others",
            findings: vec![conflict()],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (CONFLICTED, "True", "OlderPolicyWins", "lost to old"),
            ],
        },
        Case {
            name: "root-namespace selector",
            findings: vec![finding(
                DiagnosticKind::RootNamespaceSelector,
                "applies to nothing",
            )],
            ignored: true,
            expect: &[
                (
                    ACCEPTED,
                    "False",
                    "RootNamespaceSelector",
                    "applies to nothing",
                ),
                (
                    UNUSED,
                    "True",
                    "RootNamespaceSelector",
                    "applies to nothing",
                ),
                (CONFLICTED, "False", "NoConflict", ""),
            ],
        },
        Case {
            name: "selects nothing yet: still accepted",
            findings: vec![finding(
                DiagnosticKind::SelectsNothing,
                "matches no workload",
            )],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (UNUSED, "True", "SelectsNothing", "matches no workload"),
            ],
        },
        Case {
            name: "merge drop and not merged",
            findings: vec![
                finding(
                    DiagnosticKind::MergeDropped {
                        into: pa_obj("default", "first"),
                        what: "trafficPolicy".into(),
                    },
                    "dropped tp",
                ),
                finding(
                    DiagnosticKind::NotMerged {
                        used: pa_obj("default", "other"),
                    },
                    "not merged",
                ),
            ],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (
                    CONFLICTED,
                    "True",
                    "MergedIntoOlderRule",
                    "dropped tp; not merged",
                ),
            ],
        },
        Case {
            name: "fields kept but not enforced",
            findings: vec![not_enforced()],
            ignored: false,
            expect: &[
                (ACCEPTED, "True", "Accepted", ""),
                (NOT_ENFORCED, "True", "FieldsNotEnforced", "lb kept"),
            ],
        },
        Case {
            name: "invalid as a whole",
            findings: vec![invalid(), not_enforced()],
            ignored: true,
            expect: &[
                (ACCEPTED, "False", "Invalid", "host empty"),
                (NOT_ENFORCED, "True", "InvalidFields", "host empty; lb kept"),
            ],
        },
    ];
    for case in cases {
        let refs: Vec<&Diagnostic> = case.findings.iter().collect();
        let status = policy_status(&refs, case.ignored, Some(3), None, t(T0));
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [ACCEPTED, CONFLICTED, UNUSED, NOT_ENFORCED],
            "{}",
            case.name
        );
        assert_eq!(status.observed_generation, Some(3), "{}", case.name);
        for c in &status.conditions {
            assert_eq!(c.observed_generation, Some(3), "{}", case.name);
            assert_eq!(c.last_transition_time.as_deref(), Some(T0), "{}", case.name);
        }
        for (type_, want_status, want_reason, contains) in case.expect {
            let (status_, reason, message) = condition(&status, type_);
            assert_eq!(
                (status_.as_str(), reason.as_str()),
                (*want_status, *want_reason),
                "{}: {type_}",
                case.name
            );
            assert!(
                message.contains(contains),
                "{}: {type_}: {message}",
                case.name
            );
        }
    }
}

#[test]
fn transition_time_is_kept_while_the_status_holds() {
    let none: Vec<&Diagnostic> = vec![];
    let first = policy_status(&none, false, Some(1), None, t(T0));
    // Same findings later (and a new generation): every time kept.
    let again = policy_status(&none, false, Some(2), Some(&first), t(T1));
    for c in &again.conditions {
        assert_eq!(c.last_transition_time.as_deref(), Some(T0), "{}", c.type_);
        assert_eq!(c.observed_generation, Some(2));
    }
    // A conflict appears: Accepted and Conflicted flip (new time), the others keep theirs.
    let lost = finding(
        DiagnosticKind::Conflict {
            winner: pa_obj("default", "old"),
        },
        "lost",
    );
    let flipped = policy_status(&[&lost], true, Some(2), Some(&again), t(T1));
    let times: BTreeMap<&str, Option<&str>> = flipped
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.last_transition_time.as_deref()))
        .collect();
    assert_eq!(times[ACCEPTED], Some(T1));
    assert_eq!(times[CONFLICTED], Some(T1));
    assert_eq!(times[UNUSED], Some(T0));
    assert_eq!(times[NOT_ENFORCED], Some(T0));
    // A reason or message change alone keeps the time (only status transitions count).
    let other = finding(
        DiagnosticKind::Conflict {
            winner: pa_obj("default", "older"),
        },
        "lost to another",
    );
    let reworded = policy_status(&[&other], true, Some(2), Some(&flipped), t(T0));
    assert_eq!(
        reworded.conditions[0].last_transition_time.as_deref(),
        Some(T1)
    );
    assert_eq!(condition(&reworded, CONFLICTED).2, "lost to another");
}

#[test]
fn long_messages_are_cut() {
    let long = "é".repeat(MAX_MESSAGE);
    let d = finding(DiagnosticKind::SelectsNothing, &long);
    let status = policy_status(&[&d], false, None, None, t(T0));
    let (_, _, message) = condition(&status, UNUSED);
    assert!(message.len() <= MAX_MESSAGE, "{}", message.len());
    assert!(message.ends_with("..."));
}

// --- inventories -------------------------------------------------------------------------

fn meta(ns: &str, name: &str, age: i64) -> PolicyMeta {
    PolicyMeta {
        namespace: ns.into(),
        name: name.into(),
        creation_timestamp: Some(Timestamp::from_second(1_700_000_000 + age).expect("ts")),
        seq: 0,
    }
}

pub(super) fn pa(
    inv: &mut Inventory,
    ns: &str,
    name: &str,
    age: i64,
    spec: Value,
    status: Option<PolicyStatus>,
) {
    let spec: PeerAuthenticationSpec = serde_json::from_value(spec).expect("spec");
    inv.peer_authentications.insert(
        ObjectKey::new(ns, name),
        Arc::new(PolicyRecord {
            policy: Policy {
                meta: meta(ns, name, age),
                spec,
            },
            generation: Some(1),
            status,
        }),
    );
}

pub(super) fn dr(
    inv: &mut Inventory,
    ns: &str,
    name: &str,
    spec: Value,
    status: Option<PolicyStatus>,
) {
    let spec: DestinationRuleSpec = serde_json::from_value(spec).expect("spec");
    inv.destination_rules.insert(
        ObjectKey::new(ns, name),
        Arc::new(PolicyRecord {
            policy: Policy {
                meta: meta(ns, name, 1),
                spec,
            },
            generation: Some(4),
            status,
        }),
    );
}

pub(super) fn pod(inv: &mut Inventory, ns: &str, name: &str, labels: &[(&str, &str)]) {
    use crate::controller::inventory::PodRecord;
    inv.namespaces.insert(
        ns.into(),
        Arc::new(NamespaceInfo {
            name: ns.into(),
            labels: BTreeMap::new(),
        }),
    );
    inv.pods.insert(
        ObjectKey::new(ns, name),
        Arc::new(PodRecord {
            workload: Workload {
                namespace: ns.into(),
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                service_account: "default".into(),
                ports: vec![],
            },
            ips: vec![],
            active: true,
        }),
    );
}

/// Two namespace-wide policies in `default` (the newer loses) and a root-namespace selector
/// policy matching `default/web`.
pub(super) fn conflicted_mesh() -> Inventory {
    let mut inv = Inventory::default();
    pod(&mut inv, "default", "web", &[("app", "web")]);
    pa(
        &mut inv,
        "default",
        "old",
        1,
        json!({"mtls": {"mode": "STRICT"}}),
        None,
    );
    pa(
        &mut inv,
        "default",
        "new",
        2,
        json!({"mtls": {"mode": "DISABLE"}}),
        None,
    );
    pa(
        &mut inv,
        ROOT,
        "web",
        3,
        json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}),
        None,
    );
    inv
}

pub(super) fn engine_of(inv: &Inventory) -> PolicyEngine {
    PolicyEngine::new(inv.mesh_input(&MeshConfig::default()))
}

#[test]
fn desired_statuses_of_an_inventory() {
    let inv = conflicted_mesh();
    let desired = desired_statuses(&inv, &engine_of(&inv), t(T0));
    let summary: Vec<(String, String, String)> = desired
        .iter()
        .map(|d| {
            let (status, reason, _) = condition(&d.status, ACCEPTED);
            (d.key.to_string(), status, reason)
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        summary,
        [
            s("default/new", "False", "OlderPolicyWins"),
            s("default/old", "True", "Accepted"),
            s("palisade-system/web", "False", "RootNamespaceSelector"),
        ]
    );
    assert!(desired.iter().all(|d| d.changed));
    // The root-namespace policy's status names the workload it seems to target (item 9).
    let root = &desired[2].status;
    assert!(
        condition(root, UNUSED).2.contains("default/web"),
        "{root:?}"
    );

    // Objects that already carry their status are unchanged; the time of the first write is
    // what they carry, so a later pass computes the same status.
    let mut carried = Inventory::default();
    for d in &desired {
        let record = &inv.peer_authentications[&d.key];
        let spec = serde_json::to_value(&record.policy.spec).unwrap();
        let age = if d.key.name == "old" {
            1
        } else if d.key.name == "new" {
            2
        } else {
            3
        };
        pa(
            &mut carried,
            &d.key.namespace,
            &d.key.name,
            age,
            spec,
            Some(d.status.clone()),
        );
    }
    carried.pods = inv.pods.clone();
    carried.namespaces = inv.namespaces.clone();
    let later = desired_statuses(&carried, &engine_of(&carried), t(T1));
    assert!(later.iter().all(|d| !d.changed), "{later:?}");
}
