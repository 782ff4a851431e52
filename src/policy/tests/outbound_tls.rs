//! DestinationRule results beyond the lookup: merging, port-level and subset TLS, unknown
//! subsets, auto mTLS per endpoint, secure naming, ISTIO_MUTUAL field handling.

use serde_json::json;

use super::outbound::{REVIEWS, base, client, mode_of, rule};
use super::*;
use crate::api::TlsMode::{self, Disable, IstioMutual, Mutual, Simple};

#[test]
fn merge_concatenates_subsets_and_keeps_the_first_traffic_policy() {
    let engine = base()
        .dr(
            "default",
            "first",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        )
        .dr(
            "default",
            "second",
            Some(2),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "DISABLE"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v2"}}, {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}]}),
        )
        .engine();
    let frontend = client("frontend", &[]);
    let got = engine.outbound(&frontend, REVIEWS, 9080, None);
    assert_eq!(got.rule, Some(dr_ref("default", "first")));
    assert_eq!(
        got.merged_from,
        vec![dr_ref("default", "first"), dr_ref("default", "second")]
    );
    assert_eq!(mode_of(&got), Some(IstioMutual));
    let dropped: Vec<DiagnosticKind> = kinds_of(&got.diagnostics, &dr_ref("default", "second"));
    assert_eq!(
        dropped,
        vec![
            DiagnosticKind::MergeDropped {
                into: dr_ref("default", "first"),
                what: "subset v1".into()
            },
            DiagnosticKind::MergeDropped {
                into: dr_ref("default", "first"),
                what: "trafficPolicy".into()
            },
        ]
    );
    // v1 is the first rule's subset (version v1): the second's v1 (version v2) was dropped.
    let v1 = engine.outbound(&frontend, REVIEWS, 9080, Some("v1"));
    assert_eq!(
        v1.expected_identities,
        vec![
            "spiffe://cluster.local/ns/default/sa/default",
            "spiffe://cluster.local/ns/default/sa/reviews"
        ]
    );
    // v2 comes from the second rule, with its subset policy.
    let v2 = engine.outbound(&frontend, REVIEWS, 9080, Some("v2"));
    assert_eq!(mode_of(&v2), Some(Simple));
    // The object-level view reports the same drops.
    let all = kinds_of(engine.diagnostics(), &dr_ref("default", "second"));
    assert_eq!(all, dropped);
}

#[test]
fn later_rule_supplies_the_traffic_policy_when_the_first_has_none() {
    let engine = base()
        .dr(
            "default",
            "first",
            Some(1),
            json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
        )
        .dr("default", "second", Some(2), rule("reviews", "SIMPLE"))
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, None);
    assert_eq!(got.rule, Some(dr_ref("default", "first")));
    assert_eq!(mode_of(&got), Some(Simple));
    assert!(got.diagnostics.is_empty(), "{:?}", got.diagnostics);
}

#[test]
fn rules_with_different_export_sets_do_not_merge() {
    let engine = base()
        .dr("default", "first", Some(1), json!({"host": "reviews", "exportTo": ["*"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}))
        .dr(
            "default",
            "second",
            Some(2),
            json!({"host": "reviews", "exportTo": ["frontend", "default"], "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}),
        )
        .dr("default", "third", Some(3), json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}))
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, Some("v1"));
    assert_eq!(
        got.merged_from,
        vec![dr_ref("default", "first"), dr_ref("default", "third")]
    );
    assert_eq!(
        kinds_of(&got.diagnostics, &dr_ref("default", "second")),
        vec![DiagnosticKind::NotMerged {
            used: dr_ref("default", "first")
        }]
    );
    // The second rule's subset is not available.
    let v2 = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, Some("v2"));
    assert_eq!(
        kinds_of(&v2.diagnostics, &dr_ref("default", "first")),
        vec![DiagnosticKind::UnknownSubset {
            subset: "v2".into()
        }]
    );
    // Where the first is invisible, the second leads.
    let engine2 = base()
        .dr("default", "first", Some(1), json!({"host": "reviews", "exportTo": ["other"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}))
        .dr("default", "second", Some(2), json!({"host": "reviews", "exportTo": ["frontend"], "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "c"}}}))
        .engine();
    let got = engine2.outbound(&client("frontend", &[]), REVIEWS, 9080, None);
    assert_eq!(got.rule, Some(dr_ref("default", "second")));
    assert_eq!(mode_of(&got), Some(Mutual));
}

#[test]
fn port_level_settings_replace_and_subsets_override() {
    let spec = json!({
        "host": "reviews",
        "trafficPolicy": {
            "tls": {"mode": "ISTIO_MUTUAL"},
            "portLevelSettings": [
                {"port": {"number": 8080}},
                {"port": {"number": 7070}, "tls": {"mode": "SIMPLE", "sni": "seven"}}
            ]
        },
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "MUTUAL", "credentialName": "v2-cert"}}},
            {"name": "v3", "labels": {"version": "v3"}, "trafficPolicy": {
                "portLevelSettings": [{"port": {"number": 9080}}, {"port": {"number": 6060}, "tls": {"mode": "DISABLE"}}]}},
            {"name": "v4", "labels": {"version": "v4"}, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}
        ]
    });
    let engine = base().dr("default", "r", Some(1), spec).engine();
    let frontend = client("frontend", &[]);
    // (port, subset, expected mode): None = no TLS settings, auto mTLS.
    let table: [(u16, Option<&str>, Option<TlsMode>); 13] = [
        (9080, None, Some(IstioMutual)),
        (8080, None, None),
        (7070, None, Some(Simple)),
        (9080, Some("v1"), Some(IstioMutual)),
        (8080, Some("v1"), None),
        (7070, Some("v1"), Some(Simple)),
        (9080, Some("v2"), Some(Mutual)),
        (8080, Some("v2"), Some(Mutual)),
        (7070, Some("v2"), Some(Mutual)),
        (9080, Some("v3"), None),
        (6060, Some("v3"), Some(Disable)),
        (7070, Some("v3"), Some(Simple)),
        (8080, Some("v4"), None),
    ];
    for (port, subset, want) in table {
        let got = engine.outbound(&frontend, REVIEWS, port, subset);
        assert_eq!(mode_of(&got), want, "port {port} subset {subset:?}");
    }
    let seven = engine.outbound(&frontend, REVIEWS, 7070, None);
    assert_eq!(seven.tls.and_then(|t| t.sni), Some("seven".to_string()));
}

#[test]
fn unknown_subset_is_reported_and_its_policy_ignored() {
    let engine = base()
        .dr(
            "default",
            "r",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]}),
        )
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, Some("v9"));
    assert_eq!(mode_of(&got), Some(Simple));
    let unknown: Vec<&Diagnostic> = got
        .diagnostics
        .iter()
        .filter(|d| matches!(d.kind, DiagnosticKind::UnknownSubset { .. }))
        .collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].severity, Severity::Warning);
    assert_eq!(unknown[0].object, dr_ref("default", "r"));
    assert!(
        engine
            .diagnostics()
            .iter()
            .all(|d| !matches!(d.kind, DiagnosticKind::UnknownSubset { .. }))
    );
}

fn endpoint(workload: &str, mtls: bool) -> (String, bool) {
    (format!("default/{workload}"), mtls)
}

fn endpoints(decision: &OutboundDecision) -> Vec<(String, bool)> {
    decision
        .endpoints
        .iter()
        .map(|e| (e.workload.clone(), e.mtls))
        .collect()
}

#[test]
fn auto_mtls_decides_per_endpoint() {
    let engine = base()
        .pa(
            "default",
            "ns",
            Some(0),
            json!({"mtls": {"mode": "STRICT"}}),
        )
        .engine();
    let frontend = client("frontend", &[]);
    // Port 9080 targets container port 9080: both meshed endpoints are STRICT there.
    let got = engine.outbound(&frontend, REVIEWS, 9080, None);
    assert_eq!(got.tls, None);
    assert_eq!(
        endpoints(&got),
        vec![
            endpoint("reviews-v1", true),
            endpoint("reviews-v2", true),
            endpoint("reviews-legacy", false)
        ]
    );
    assert!(
        got.endpoints[2].reason.contains(TLS_MODE_LABEL),
        "{}",
        got.endpoints[2].reason
    );
    // Port 8080 targets `http-alt`: 8081 on v1 (STRICT), 8080 on v2 (DISABLE by port entry);
    // legacy has no such port and is no endpoint of it.
    let alt = engine.outbound(&frontend, REVIEWS, 8080, None);
    assert_eq!(
        endpoints(&alt),
        vec![endpoint("reviews-v1", true), endpoint("reviews-v2", false)]
    );
    assert!(
        alt.endpoints[1].reason.contains("DISABLE"),
        "{}",
        alt.endpoints[1].reason
    );
    // Only the endpoints reached over mTLS present an identity.
    assert_eq!(
        alt.expected_identities,
        vec!["spiffe://cluster.local/ns/default/sa/reviews"]
    );
}

#[test]
fn auto_mtls_honours_a_workload_disable() {
    let engine = base()
        .pa(
            "default",
            "v1-off",
            Some(2),
            json!({"selector": {"matchLabels": {"version": "v1"}}, "mtls": {"mode": "DISABLE"}}),
        )
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, None);
    assert_eq!(
        endpoints(&got),
        vec![
            endpoint("reviews-v1", false),
            endpoint("reviews-v2", true),
            endpoint("reviews-legacy", false)
        ]
    );
}

#[test]
fn a_port_entry_without_tls_falls_back_to_auto_mtls_with_endpoints() {
    let engine = base()
        .dr(
            "default",
            "r",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE"}, "portLevelSettings": [{"port": {"number": 8080}}]}}),
        )
        .engine();
    let frontend = client("frontend", &[]);
    let simple = engine.outbound(&frontend, REVIEWS, 9080, None);
    assert!(simple.endpoints.is_empty());
    assert!(simple.expected_identities.is_empty());
    let auto = engine.outbound(&frontend, REVIEWS, 8080, None);
    assert_eq!(auto.tls, None);
    assert_eq!(auto.endpoints.len(), 2);
}

#[test]
fn subset_limits_endpoints_and_identities() {
    let engine = base()
        .dr(
            "default",
            "r",
            Some(1),
            json!({"host": "reviews", "subsets": [{"name": "v2", "labels": {"version": "v2"}}]}),
        )
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, Some("v2"));
    assert_eq!(endpoints(&got), vec![endpoint("reviews-v2", true)]);
    assert_eq!(
        got.expected_identities,
        vec!["spiffe://cluster.local/ns/default/sa/reviews-v2"]
    );
}

#[test]
fn secure_naming_identities() {
    let all = vec![
        "spiffe://cluster.local/ns/default/sa/default".to_string(),
        "spiffe://cluster.local/ns/default/sa/reviews".to_string(),
        "spiffe://cluster.local/ns/default/sa/reviews-v2".to_string(),
    ];
    let table: Vec<(Value, Vec<String>)> = vec![
        (json!({"mode": "ISTIO_MUTUAL"}), all.clone()),
        (
            json!({"mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://x/ns/y/sa/z"]}),
            vec![],
        ),
        (json!({"mode": "SIMPLE"}), vec![]),
        (json!({"mode": "MUTUAL", "credentialName": "c"}), vec![]),
        (json!({"mode": "DISABLE"}), vec![]),
    ];
    for (tls, want) in table {
        let engine = base()
            .dr(
                "default",
                "r",
                Some(1),
                json!({"host": "reviews", "trafficPolicy": {"tls": tls.clone()}}),
            )
            .engine();
        let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, None);
        assert_eq!(got.expected_identities, want, "{tls}");
        assert!(got.endpoints.is_empty(), "{tls}");
    }
    // Auto mTLS: the identities of the endpoints reached over mTLS (the meshed ones), in the
    // configured trust domain; the unmeshed endpoint is reached in plaintext.
    let mut mesh = base();
    mesh.input.config.trust_domain = "example.org".into();
    let got = mesh
        .engine()
        .outbound(&client("frontend", &[]), REVIEWS, 9080, None);
    let mtls_endpoints = got.endpoints.iter().filter(|e| e.mtls).count();
    assert!(mtls_endpoints > 0 && mtls_endpoints < got.endpoints.len());
    assert!(
        got.expected_identities
            .iter()
            .all(|id| id.starts_with("spiffe://example.org/ns/default/sa/")),
        "{:?}",
        got.expected_identities
    );
    assert!(
        !got.expected_identities
            .contains(&"spiffe://example.org/ns/default/sa/default".to_string()),
        "the unmeshed endpoint's account is not expected: {:?}",
        got.expected_identities
    );
    // Unknown service: nothing expected.
    let engine = base().engine();
    let unknown = engine.outbound(&client("frontend", &[]), "nowhere.example.com", 443, None);
    assert!(unknown.expected_identities.is_empty() && unknown.endpoints.is_empty());
    assert_eq!(unknown.host, "nowhere.example.com");
}

#[test]
fn istio_mutual_ignores_certificate_fields() {
    let engine = base()
        .dr(
            "default",
            "r",
            Some(1),
            json!({"host": "reviews", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL", "clientCertificate": "/c.pem",
                   "privateKey": "/k.pem", "caCertificates": "/ca.pem", "credentialName": "s", "sni": "kept"}}}),
        )
        .engine();
    let got = engine.outbound(&client("frontend", &[]), REVIEWS, 9080, None);
    let tls = got.tls.clone().unwrap_or_default();
    assert_eq!(tls.effective_mode(), IstioMutual);
    assert_eq!(
        (
            tls.client_certificate,
            tls.private_key,
            tls.ca_certificates,
            tls.credential_name
        ),
        (None, None, None, None)
    );
    assert_eq!(tls.sni.as_deref(), Some("kept"));
    let fields: Vec<DiagnosticKind> = kinds_of(&got.diagnostics, &dr_ref("default", "r"));
    assert_eq!(fields.len(), 4, "{fields:?}");
}
