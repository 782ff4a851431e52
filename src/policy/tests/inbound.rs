//! PeerAuthentication resolution: scopes, inheritance, oldest wins, port-level modes.

use serde_json::json;

use super::*;
use crate::api::MtlsMode::{self, Disable, Permissive, Strict};

const ROOT: &str = "palisade-system";

struct Case {
    name: &'static str,
    mesh: Mesh,
    namespace: &'static str,
    labels: &'static [(&'static str, &'static str)],
    mode: MtlsMode,
    ports: &'static [(u16, MtlsMode)],
    decided_by: &'static [(&'static str, &'static str, Scope)],
}

fn mode(m: &str) -> Value {
    json!({ "mtls": { "mode": m } })
}

fn selected(app: &str, m: &str) -> Value {
    json!({ "selector": { "matchLabels": { "app": app } }, "mtls": { "mode": m } })
}

fn cases() -> Vec<Case> {
    let app = &[("app", "web")][..];
    vec![
        Case {
            name: "nothing configured is PERMISSIVE",
            mesh: Mesh::new(),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "mesh-wide policy applies everywhere",
            mesh: Mesh::new().pa(ROOT, "mesh", Some(1), mode("STRICT")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh)],
        },
        Case {
            name: "mesh-wide with an empty selector is still mesh-wide",
            mesh: Mesh::new().pa(ROOT, "mesh", Some(1), json!({"selector": {}, "mtls": {"mode": "STRICT"}})),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh)],
        },
        Case {
            name: "namespace overrides mesh",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("STRICT"))
                .pa("default", "ns", Some(2), mode("DISABLE")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh), ("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "namespace policy with an empty matchLabels is namespace-wide",
            mesh: Mesh::new().pa(
                "default",
                "ns",
                Some(2),
                json!({"selector": {"matchLabels": {}}, "mtls": {"mode": "STRICT"}}),
            ),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "namespace policy of another namespace does not apply",
            mesh: Mesh::new().pa("other", "ns", Some(2), mode("STRICT")),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "namespace without mtls inherits mesh",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("STRICT"))
                .pa("default", "ns", Some(2), json!({})),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh)],
        },
        Case {
            name: "namespace with mtls but no mode inherits mesh",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("DISABLE"))
                .pa("default", "ns", Some(2), json!({"mtls": {}})),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh)],
        },
        Case {
            name: "UNSET at every level is PERMISSIVE",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("UNSET"))
                .pa("default", "ns", Some(2), mode("UNSET"))
                .pa("default", "wl", Some(3), selected("web", "UNSET")),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "UNSET mesh leaves the default, namespace decides",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("UNSET"))
                .pa("default", "ns", Some(2), mode("STRICT")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "workload overrides namespace and mesh",
            mesh: Mesh::new()
                .pa(ROOT, "mesh", Some(1), mode("STRICT"))
                .pa("default", "ns", Some(2), mode("STRICT"))
                .pa("default", "wl", Some(3), selected("web", "DISABLE")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[
                (ROOT, "mesh", Scope::Mesh),
                ("default", "ns", Scope::Namespace),
                ("default", "wl", Scope::Workload),
            ],
        },
        Case {
            name: "UNSET workload inherits namespace",
            mesh: Mesh::new()
                .pa("default", "ns", Some(2), mode("DISABLE"))
                .pa("default", "wl", Some(3), selected("web", "UNSET")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "workload policy not matching the labels does not apply",
            mesh: Mesh::new()
                .pa("default", "ns", Some(2), mode("STRICT"))
                .pa("default", "wl", Some(3), selected("db", "DISABLE")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "selector needs every label",
            mesh: Mesh::new().pa(
                "default",
                "wl",
                Some(3),
                json!({"selector": {"matchLabels": {"app": "web", "tier": "front"}}, "mtls": {"mode": "STRICT"}}),
            ),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "selector with several labels matches a pod carrying them all",
            mesh: Mesh::new().pa(
                "default",
                "wl",
                Some(3),
                json!({"selector": {"matchLabels": {"app": "web", "tier": "front"}}, "mtls": {"mode": "STRICT"}}),
            ),
            namespace: "default",
            labels: &[("app", "web"), ("tier", "front"), ("zone", "a")],
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "wl", Scope::Workload)],
        },
        Case {
            name: "workload policy of another namespace does not apply",
            mesh: Mesh::new().pa("other", "wl", Some(3), selected("web", "STRICT")),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "selector policy in the root namespace applies to nothing",
            mesh: Mesh::new().pa(ROOT, "sel", Some(1), selected("web", "STRICT")),
            namespace: ROOT,
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "selector policy in the root namespace is not mesh-wide",
            mesh: Mesh::new().pa(ROOT, "sel", Some(1), selected("web", "STRICT")),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "workloads of the root namespace get the mesh policy once",
            mesh: Mesh::new().pa(ROOT, "mesh", Some(1), mode("STRICT")),
            namespace: ROOT,
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[(ROOT, "mesh", Scope::Mesh)],
        },
        Case {
            name: "oldest mesh-wide policy wins",
            mesh: Mesh::new()
                .pa(ROOT, "newer", Some(20), mode("DISABLE"))
                .pa(ROOT, "older", Some(10), mode("STRICT")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[(ROOT, "older", Scope::Mesh)],
        },
        Case {
            name: "oldest namespace-wide policy wins",
            mesh: Mesh::new()
                .pa("default", "newer", Some(20), mode("STRICT"))
                .pa("default", "older", Some(10), mode("DISABLE")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[("default", "older", Scope::Namespace)],
        },
        Case {
            name: "oldest matching workload policy wins",
            mesh: Mesh::new()
                .pa("default", "newer", Some(20), selected("web", "STRICT"))
                .pa(
                    "default",
                    "older",
                    Some(10),
                    json!({"selector": {"matchLabels": {"tier": "front"}}, "mtls": {"mode": "DISABLE"}}),
                ),
            namespace: "default",
            labels: &[("app", "web"), ("tier", "front")],
            mode: Disable,
            ports: &[],
            decided_by: &[("default", "older", Scope::Workload)],
        },
        Case {
            name: "equal timestamps: the name decides",
            mesh: Mesh::new()
                .pa("default", "b", Some(10), mode("STRICT"))
                .pa("default", "a", Some(10), mode("DISABLE")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[("default", "a", Scope::Namespace)],
        },
        Case {
            name: "without timestamps the input order decides",
            mesh: Mesh::new()
                .pa("default", "z-first", None, mode("STRICT"))
                .pa("default", "a-second", None, mode("DISABLE")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "z-first", Scope::Namespace)],
        },
        Case {
            name: "a timestamped policy is older than one without",
            mesh: Mesh::new()
                .pa("default", "untimed", None, mode("STRICT"))
                .pa("default", "timed", Some(99), mode("DISABLE")),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[],
            decided_by: &[("default", "timed", Scope::Namespace)],
        },
        Case {
            name: "an older policy that sets nothing still wins its scope (as in Istio)",
            mesh: Mesh::new()
                .pa("default", "older-unset", Some(1), json!({}))
                .pa("default", "newer", Some(2), mode("STRICT")),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[],
            decided_by: &[],
        },
        Case {
            name: "port entry overrides its port only",
            mesh: Mesh::new().pa("default", "ns", Some(1), mode("STRICT")).pa(
                "default",
                "wl",
                Some(2),
                json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            ),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[(8080, Disable)],
            decided_by: &[("default", "ns", Scope::Namespace), ("default", "wl", Scope::Port)],
        },
        Case {
            name: "UNSET port entry takes the workload's resolved mode",
            mesh: Mesh::new().pa(
                "default",
                "wl",
                Some(2),
                json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
                       "portLevelMtls": {"8080": {"mode": "UNSET"}, "9090": {"mode": "PERMISSIVE"}}}),
            ),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[(8080, Strict), (9090, Permissive)],
            decided_by: &[("default", "wl", Scope::Workload), ("default", "wl", Scope::Port)],
        },
        Case {
            name: "UNSET port entry of an UNSET workload policy takes the inherited mode",
            mesh: Mesh::new().pa(ROOT, "mesh", Some(1), mode("DISABLE")).pa(
                "default",
                "wl",
                Some(2),
                json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {}}}),
            ),
            namespace: "default",
            labels: app,
            mode: Disable,
            ports: &[(8080, Disable)],
            decided_by: &[(ROOT, "mesh", Scope::Mesh), ("default", "wl", Scope::Port)],
        },
        Case {
            name: "portLevelMtls without a selector is ignored",
            mesh: Mesh::new().pa(
                "default",
                "ns",
                Some(1),
                json!({"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
            ),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "ns", Scope::Namespace)],
        },
        Case {
            name: "port keys outside 1-65535 are ignored, valid ones kept",
            mesh: Mesh::new().pa(
                "default",
                "wl",
                Some(1),
                json!({"selector": {"matchLabels": {"app": "web"}},
                       "portLevelMtls": {"0": {"mode": "DISABLE"}, "70000": {"mode": "DISABLE"}, "443": {"mode": "STRICT"}}}),
            ),
            namespace: "default",
            labels: app,
            mode: Permissive,
            ports: &[(443, Strict)],
            decided_by: &[("default", "wl", Scope::Port)],
        },
        Case {
            name: "port entries of a losing workload policy do not apply",
            mesh: Mesh::new()
                .pa("default", "older", Some(1), selected("web", "STRICT"))
                .pa(
                    "default",
                    "newer",
                    Some(2),
                    json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
                ),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[],
            decided_by: &[("default", "older", Scope::Workload)],
        },
        Case {
            name: "an older ports-only workload policy wins over a newer mode policy",
            mesh: Mesh::new()
                .pa("default", "ns", Some(0), mode("STRICT"))
                .pa(
                    "default",
                    "older",
                    Some(1),
                    json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
                )
                .pa("default", "newer", Some(2), selected("web", "PERMISSIVE")),
            namespace: "default",
            labels: app,
            mode: Strict,
            ports: &[(8080, Disable)],
            decided_by: &[("default", "ns", Scope::Namespace), ("default", "older", Scope::Port)],
        },
    ]
}

#[test]
fn inbound_table() {
    for case in cases() {
        let engine = case.mesh.engine();
        let got = engine.inbound(case.namespace, &labels(case.labels));
        assert_eq!(got.mode, case.mode, "{}: mode", case.name);
        let ports: BTreeMap<u16, MtlsMode> = case.ports.iter().copied().collect();
        assert_eq!(got.port_modes, ports, "{}: port modes", case.name);
        let deciders: Vec<Decider> = case
            .decided_by
            .iter()
            .map(|(ns, name, scope)| Decider {
                object: pa_ref(ns, name),
                scope: *scope,
            })
            .collect();
        assert_eq!(got.decided_by, deciders, "{}: decided_by", case.name);
        assert_ne!(got.mode, MtlsMode::Unset, "{}", case.name);
    }
}

#[test]
fn mode_for_port_falls_back_to_the_workload_mode() {
    let engine = Mesh::new()
        .pa(
            "default",
            "wl",
            Some(1),
            json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
                   "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        )
        .engine();
    let got = engine.inbound("default", &labels(&[("app", "web")]));
    assert_eq!(got.mode_for_port(8080), Disable);
    assert_eq!(got.mode_for_port(9090), Strict);
}

#[test]
fn decision_carries_the_findings_of_the_policies_considered() {
    let engine = Mesh::new()
        .pa(ROOT, "mesh-old", Some(1), mode("STRICT"))
        .pa(ROOT, "mesh-new", Some(2), mode("DISABLE"))
        .pa(ROOT, "root-selector", Some(3), selected("web", "STRICT"))
        .pa("default", "ns-old", Some(1), mode("STRICT"))
        .pa("default", "ns-new", Some(2), mode("PERMISSIVE"))
        .pa("default", "wl-old", Some(1), selected("web", "STRICT"))
        .pa("default", "wl-new", Some(2), selected("web", "DISABLE"))
        .pa("default", "wl-other", Some(2), selected("db", "DISABLE"))
        .pa("other", "ns-other-old", Some(1), mode("STRICT"))
        .pa("other", "ns-other-new", Some(2), mode("STRICT"))
        .engine();
    let got = engine.inbound("default", &labels(&[("app", "web")]));
    let objects: Vec<(ObjectRef, DiagnosticKind)> = got
        .diagnostics
        .iter()
        .map(|d| (d.object.clone(), d.kind.clone()))
        .collect();
    assert_eq!(
        objects,
        vec![
            (
                pa_ref("default", "ns-new"),
                DiagnosticKind::Conflict {
                    winner: pa_ref("default", "ns-old")
                }
            ),
            (
                pa_ref("default", "wl-new"),
                DiagnosticKind::Conflict {
                    winner: pa_ref("default", "wl-old")
                }
            ),
            (
                pa_ref(ROOT, "mesh-new"),
                DiagnosticKind::Conflict {
                    winner: pa_ref(ROOT, "mesh-old")
                }
            ),
            // The root-namespace selector policy matches this workload's labels: it is told
            // why that policy does not apply (issue 7 item 9).
            (
                pa_ref(ROOT, "root-selector"),
                DiagnosticKind::RootNamespaceSelector
            ),
        ]
    );
    assert!(
        got.diagnostics
            .iter()
            .all(|d| d.severity == Severity::Warning)
    );
    // A workload of the root namespace that a root selector policy matches hears about it.
    let root = engine.inbound(ROOT, &labels(&[("app", "web")]));
    assert!(
        root.diagnostics
            .iter()
            .any(|d| d.object == pa_ref(ROOT, "root-selector")
                && d.kind == DiagnosticKind::RootNamespaceSelector)
    );
    // A workload matched by only one of the workload policies has no workload conflict.
    let db = engine.inbound("default", &labels(&[("app", "db")]));
    assert!(
        db.diagnostics
            .iter()
            .all(|d| d.object != pa_ref("default", "wl-other"))
    );
}

/// Issue 7 item 9: "why is my STRICT not applied?" A root-namespace selector policy is
/// explained to every workload its selector matches, in any namespace, and to no other.
#[test]
fn root_namespace_selector_is_explained_wherever_it_matches() {
    let engine = Mesh::new()
        .pa(ROOT, "strict-web", Some(1), selected("web", "STRICT"))
        .pa("prod", "ns", Some(2), mode("PERMISSIVE"))
        .engine();
    struct Case {
        namespace: &'static str,
        labels: &'static [(&'static str, &'static str)],
        told: bool,
        names_namespace: bool,
    }
    let cases = [
        Case {
            namespace: "default",
            labels: &[("app", "web")],
            told: true,
            names_namespace: true,
        },
        Case {
            namespace: "prod",
            labels: &[("app", "web"), ("v", "1")],
            told: true,
            names_namespace: true,
        },
        Case {
            namespace: ROOT,
            labels: &[("app", "web")],
            told: true,
            names_namespace: false,
        },
        Case {
            namespace: "default",
            labels: &[("app", "db")],
            told: false,
            names_namespace: false,
        },
        Case {
            namespace: "default",
            labels: &[],
            told: false,
            names_namespace: false,
        },
    ];
    for case in cases {
        let got = engine.inbound(case.namespace, &labels(case.labels));
        let about: Vec<&Diagnostic> = got
            .diagnostics
            .iter()
            .filter(|d| d.object == pa_ref(ROOT, "strict-web"))
            .collect();
        let what = format!("{} {:?}", case.namespace, case.labels);
        assert_eq!(about.len(), usize::from(case.told), "{what}: {about:?}");
        // The policy never decides anything, wherever it matches.
        assert!(
            got.decided_by
                .iter()
                .all(|d| d.object != pa_ref(ROOT, "strict-web")),
            "{what}"
        );
        if let Some(d) = about.first() {
            assert_eq!(d.kind, DiagnosticKind::RootNamespaceSelector, "{what}");
            assert_eq!(d.severity, Severity::Warning, "{what}");
            assert!(
                d.message.contains("applies to nothing"),
                "{what}: {}",
                d.message
            );
            let move_hint = format!("move it to namespace {}", case.namespace);
            assert_eq!(
                d.message.contains(&move_hint),
                case.names_namespace,
                "{what}: {}",
                d.message
            );
        }
    }
}
