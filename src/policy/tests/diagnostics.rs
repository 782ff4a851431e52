//! Object-level diagnostics: every kind, its severity and field path, and the ordering.

use serde_json::json;

use super::*;

const ROOT: &str = "palisade-system";

fn invalid(field: &str) -> DiagnosticKind {
    DiagnosticKind::Invalid {
        field: field.into(),
    }
}

fn not_enforced(field: &str) -> DiagnosticKind {
    DiagnosticKind::NotEnforced {
        field: field.into(),
    }
}

fn mesh() -> Mesh {
    Mesh::new()
        .workload("default", "web", "web", &[("app", "web")], &[])
        .pa(ROOT, "mesh-old", Some(1), json!({"mtls": {"mode": "STRICT"}}))
        .pa(ROOT, "mesh-new", Some(2), json!({"mtls": {"mode": "PERMISSIVE"}}))
        .pa(ROOT, "root-selector", Some(3), json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}))
        .pa("default", "ns-old", Some(1), json!({"mtls": {"mode": "STRICT"}}))
        .pa("default", "ns-new", Some(2), json!({"mtls": {"mode": "DISABLE"}, "portLevelMtls": {"80": {"mode": "STRICT"}}}))
        .pa("default", "wl-old", Some(1), json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}}))
        .pa(
            "default",
            "wl-new",
            Some(2),
            json!({"selector": {"matchLabels": {"app": "web"}}, "portLevelMtls": {"0": {"mode": "STRICT"}, "8080": {"mode": "DISABLE"}}}),
        )
        .pa("default", "wl-none", Some(3), json!({"selector": {"matchLabels": {"app": "nothing"}}, "mtls": {"mode": "STRICT"}}))
        .dr(
            "default",
            "first",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}, "loadBalancer": {"simple": "RANDOM"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        )
        .dr(
            "default",
            "second",
            Some(2),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE"}},
                   "subsets": [{"name": "v1"}, {"name": "v2", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1}}}}]}),
        )
        .dr("default", "third", Some(3), json!({"host": "reviews", "exportTo": ["."]}))
        .dr(
            "default",
            "kitchen-sink",
            Some(4),
            json!({"host": "ratings",
                   "trafficPolicy": {
                       "outlierDetection": {"interval": "1s"}, "tunnel": {"targetHost": "x", "targetPort": 1},
                       "proxyProtocol": {"version": "V1"}, "retryBudget": {"percent": 5.0}, "connectionPool": {},
                       "tls": {"mode": "MUTUAL"},
                       "portLevelSettings": [
                           {"port": {"number": 0}, "outlierDetection": {}, "loadBalancer": {}, "connectionPool": {}},
                           {"port": {"number": 81}, "tls": {"mode": "MUTUAL", "credentialName": "c", "clientCertificate": "/c"}}
                       ]},
                   "subsets": [
                       {"name": "a", "trafficPolicy": {"tls": {"mode": "SIMPLE", "insecureSkipVerify": true, "subjectAltNames": ["x"]}}},
                       {"name": "a"}
                   ]}),
        )
        .dr(
            "default",
            "selected",
            Some(5),
            json!({"host": "ratings", "workloadSelector": {"matchLabels": {"app": "nothing"}}, "exportTo": ["*"]}),
        )
        .dr("default", "selected-ok", Some(6), json!({"host": "ratings", "workloadSelector": {"matchLabels": {"app": "web"}}, "exportTo": ["."]}))
        .dr("default", "empty-host", Some(7), json!({"host": ""}))
}

#[test]
fn every_kind_is_reported_with_its_severity() {
    let engine = mesh().complete().engine();
    let all = engine.diagnostics();
    let expect: Vec<(ObjectRef, Severity, DiagnosticKind)> = vec![
        (
            pa_ref(ROOT, "mesh-new"),
            Severity::Warning,
            DiagnosticKind::Conflict {
                winner: pa_ref(ROOT, "mesh-old"),
            },
        ),
        (
            pa_ref(ROOT, "root-selector"),
            Severity::Warning,
            DiagnosticKind::RootNamespaceSelector,
        ),
        (
            pa_ref("default", "ns-new"),
            Severity::Warning,
            DiagnosticKind::Conflict {
                winner: pa_ref("default", "ns-old"),
            },
        ),
        (
            pa_ref("default", "ns-new"),
            Severity::Error,
            invalid("spec.portLevelMtls"),
        ),
        (
            pa_ref("default", "wl-new"),
            Severity::Warning,
            DiagnosticKind::Conflict {
                winner: pa_ref("default", "wl-old"),
            },
        ),
        (
            pa_ref("default", "wl-new"),
            Severity::Error,
            invalid("spec.portLevelMtls"),
        ),
        (
            pa_ref("default", "wl-none"),
            Severity::Warning,
            DiagnosticKind::SelectsNothing,
        ),
        (
            dr_ref("default", "first"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.loadBalancer"),
        ),
        (
            dr_ref("default", "second"),
            Severity::Warning,
            DiagnosticKind::MergeDropped {
                into: dr_ref("default", "first"),
                what: "trafficPolicy".into(),
            },
        ),
        (
            dr_ref("default", "second"),
            Severity::Warning,
            DiagnosticKind::MergeDropped {
                into: dr_ref("default", "first"),
                what: "subset v1".into(),
            },
        ),
        (
            dr_ref("default", "second"),
            Severity::Info,
            not_enforced("spec.subsets[1].trafficPolicy.connectionPool"),
        ),
        (
            dr_ref("default", "third"),
            Severity::Warning,
            DiagnosticKind::NotMerged {
                used: dr_ref("default", "first"),
            },
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.outlierDetection"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.tunnel"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.proxyProtocol"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.retryBudget"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.connectionPool"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.portLevelSettings[0].outlierDetection"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.portLevelSettings[0].loadBalancer"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Info,
            not_enforced("spec.trafficPolicy.portLevelSettings[0].connectionPool"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Error,
            invalid("spec.trafficPolicy.portLevelSettings[0].port.number"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Error,
            invalid("spec.trafficPolicy.tls.mode"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Error,
            invalid("spec.trafficPolicy.portLevelSettings[1].tls.credentialName"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Error,
            invalid("spec.subsets[0].trafficPolicy.tls.insecureSkipVerify"),
        ),
        (
            dr_ref("default", "kitchen-sink"),
            Severity::Error,
            invalid("spec.subsets[1].name"),
        ),
        (
            dr_ref("default", "selected"),
            Severity::Info,
            not_enforced("spec.exportTo"),
        ),
        (
            dr_ref("default", "selected"),
            Severity::Warning,
            DiagnosticKind::SelectsNothing,
        ),
        (
            dr_ref("default", "empty-host"),
            Severity::Error,
            invalid("spec.host"),
        ),
    ];
    for (object, severity, kind) in &expect {
        let found = all
            .iter()
            .any(|d| &d.object == object && &d.severity == severity && &d.kind == kind);
        assert!(
            found,
            "missing {object} {severity:?} {kind:?}\nall: {all:#?}"
        );
    }
    assert_eq!(
        all.len(),
        expect.len(),
        "unexpected extra diagnostics: {all:#?}"
    );
    // Nothing about the winners or the rule that selects an existing workload.
    for clean in [
        pa_ref(ROOT, "mesh-old"),
        pa_ref("default", "ns-old"),
        pa_ref("default", "wl-old"),
        dr_ref("default", "selected-ok"),
    ] {
        assert!(kinds_of(all, &clean).is_empty(), "{clean}");
    }
}

#[test]
fn diagnostics_are_sorted_by_object_then_message() {
    let engine = mesh().complete().engine();
    let all = engine.diagnostics();
    assert!(all.len() > 10);
    for pair in all.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            (&a.object, &a.message) <= (&b.object, &b.message),
            "{a:?} before {b:?}"
        );
    }
}

#[test]
fn selects_nothing_needs_a_complete_inventory() {
    let engine = mesh().engine();
    assert!(
        engine
            .diagnostics()
            .iter()
            .all(|d| d.kind != DiagnosticKind::SelectsNothing)
    );
    let complete = mesh().complete().engine();
    assert_eq!(
        complete
            .diagnostics()
            .iter()
            .filter(|d| d.kind == DiagnosticKind::SelectsNothing)
            .count(),
        2
    );
}

#[test]
fn outbound_decision_carries_the_findings_of_the_rules_used() {
    let engine = mesh().engine();
    let got = engine.outbound(
        &Client {
            namespace: "frontend".into(),
            labels: BTreeMap::new(),
        },
        "ratings.default.svc.cluster.local",
        81,
        None,
    );
    assert_eq!(got.rule, Some(dr_ref("default", "kitchen-sink")));
    assert!(
        got.diagnostics.iter().any(
            |d| d.kind == invalid("spec.trafficPolicy.portLevelSettings[1].tls.credentialName")
        )
    );
    // The MUTUAL settings are passed on as written (the CRD would have rejected them).
    assert_eq!(
        got.tls.and_then(|t| t.credential_name),
        Some("c".to_string())
    );
}

#[test]
fn not_merged_is_reported_only_where_a_namespace_sees_both_rules() {
    let not_merged = |first: Value, second: Value| {
        let engine = Mesh::new()
            .dr(
                "default",
                "first",
                Some(1),
                json!({"host": "reviews", "exportTo": first}),
            )
            .dr(
                "default",
                "second",
                Some(2),
                json!({"host": "reviews", "exportTo": second}),
            )
            .engine();
        kinds_of(engine.diagnostics(), &dr_ref("default", "second"))
    };
    let reported = vec![DiagnosticKind::NotMerged {
        used: dr_ref("default", "first"),
    }];
    // Disjoint audiences: two separate rules, nothing to report.
    assert_eq!(not_merged(json!(["x"]), json!(["y"])), vec![]);
    assert_eq!(not_merged(json!(["."]), json!(["y"])), vec![]);
    // Namespace y sees both.
    assert_eq!(not_merged(json!(["*"]), json!(["y"])), reported);
    assert_eq!(not_merged(json!(["x", "y"]), json!(["y"])), reported);
    // The rules' own namespace sees both.
    assert_eq!(not_merged(json!([]), json!(["."])), reported);
    // Same export set: merged, nothing to report.
    assert_eq!(not_merged(json!(["y", "x"]), json!(["x", "y"])), vec![]);
    assert_eq!(not_merged(json!([]), json!(["*"])), vec![]);
}

#[test]
fn workload_selector_rules_are_not_in_the_object_level_merge() {
    let engine = Mesh::new()
        .workload("default", "web", "web", &[("app", "web")], &[])
        .dr(
            "default",
            "selected",
            Some(5),
            json!({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "web"}},
                   "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
        )
        .dr(
            "default",
            "plain",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
        )
        .complete()
        .engine();
    assert!(
        engine.diagnostics().is_empty(),
        "{:#?}",
        engine.diagnostics()
    );
    // For the selected client the plain rule merges behind the selected one and loses its
    // trafficPolicy: reported on that lookup.
    let client = Client {
        namespace: "default".into(),
        labels: labels(&[("app", "web")]),
    };
    let got = engine.outbound(&client, "reviews", 80, None);
    assert_eq!(got.rule, Some(dr_ref("default", "selected")));
    assert_eq!(
        kinds_of(&got.diagnostics, &dr_ref("default", "plain")),
        vec![DiagnosticKind::MergeDropped {
            into: dr_ref("default", "selected"),
            what: "trafficPolicy".into()
        }]
    );
}

/// Issue 7 item 9: with the whole inventory known, a root-namespace selector policy's own
/// finding (its status message) names the workloads its selector matches, in any namespace.
#[test]
fn root_namespace_selector_finding_names_the_matched_workloads() {
    let selector = json!({"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"}});
    let mut mesh = Mesh::new()
        .workload("default", "web-0", "web", &[("app", "web")], &[])
        .workload("prod", "web-1", "web", &[("app", "web"), ("v", "2")], &[])
        .workload("prod", "db-0", "db", &[("app", "db")], &[])
        .pa(ROOT, "strict-web", Some(1), selector.clone())
        .pa(
            ROOT,
            "strict-none",
            Some(2),
            json!({"selector": {"matchLabels": {"app": "none"}}}),
        );
    let message = |engine: &PolicyEngine, name: &str| -> String {
        let found: Vec<&Diagnostic> = engine
            .diagnostics()
            .iter()
            .filter(|d| d.object == pa_ref(ROOT, name))
            .collect();
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert_eq!(found[0].kind, DiagnosticKind::RootNamespaceSelector);
        found[0].message.clone()
    };
    let offline = mesh.clone().engine();
    let generic = message(&offline, "strict-web");
    assert!(!generic.contains("default/web-0"), "{generic}");

    let complete = mesh.clone().complete().engine();
    let named = message(&complete, "strict-web");
    assert!(
        named.contains("matches 2 workload(s): default/web-0, prod/web-1;"),
        "{named}"
    );
    assert!(!named.contains("db-0"), "{named}");
    // Matching nothing: the generic message.
    assert_eq!(message(&complete, "strict-none"), generic);
    // Both are ignored; neither selects-nothing is reported for them (they are not workload
    // policies).
    assert!(complete.ignored().contains(&pa_ref(ROOT, "strict-web")));
    assert!(
        kinds_of(complete.diagnostics(), &pa_ref(ROOT, "strict-none"))
            .iter()
            .all(|k| *k == DiagnosticKind::RootNamespaceSelector)
    );

    // Many matches: five named, the rest counted.
    for i in 0..7 {
        mesh = mesh.workload("ns", &format!("w{i}"), "w", &[("app", "web")], &[]);
    }
    let many = message(&mesh.complete().engine(), "strict-web");
    assert!(many.contains("matches 9 workload(s):"), "{many}");
    assert!(many.contains(" and 4 more;"), "{many}");
}

/// Which objects take effect nowhere (the status reconciler's `Accepted=False`).
#[test]
fn ignored_objects() {
    let engine = mesh().complete().engine();
    let got: Vec<ObjectRef> = engine.ignored().iter().cloned().collect();
    let mut want = vec![
        pa_ref(ROOT, "mesh-new"),
        pa_ref(ROOT, "root-selector"),
        pa_ref("default", "ns-new"),
        // wl-new matches default/web but loses to wl-old there, its only workload.
        pa_ref("default", "wl-new"),
        dr_ref("default", "empty-host"),
    ];
    want.sort();
    assert_eq!(got, want);
    // Offline (inventory incomplete) a selector policy is never judged by its matches.
    let offline = mesh().engine();
    assert!(!offline.ignored().contains(&pa_ref("default", "wl-new")));
    assert!(offline.ignored().contains(&pa_ref("default", "ns-new")));
    // A selector policy that wins somewhere is in force even where it loses.
    let split = Mesh::new()
        .workload("default", "a", "a", &[("app", "web"), ("tier", "x")], &[])
        .workload("default", "b", "b", &[("tier", "x")], &[])
        .pa(
            "default",
            "old",
            Some(1),
            json!({"selector": {"matchLabels": {"app": "web"}}}),
        )
        .pa(
            "default",
            "new",
            Some(2),
            json!({"selector": {"matchLabels": {"tier": "x"}}}),
        )
        .complete()
        .engine();
    assert!(split.ignored().is_empty(), "{:?}", split.ignored());
}
