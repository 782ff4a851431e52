//! DestinationRule resolution: host expansion and precedence, the three lookup stages,
//! exportTo, workloadSelector, merging, port-level and subset TLS, auto mTLS, secure naming.

use serde_json::json;

use super::*;
use crate::api::TlsMode::{self, Disable, IstioMutual, Mutual, Simple};

const ROOT: &str = "palisade-system";
pub(super) const REVIEWS: &str = "reviews.default.svc.cluster.local";
const MESHED: (&str, &str) = (TLS_MODE_LABEL, TLS_MODE_PALISADE);

/// `reviews` in `default`: port 9080 targets 9080, port 8080 targets the named port
/// `http-alt`. v1 and v2 are meshed; legacy has no proxy and no `http-alt` port; v2 disables
/// mTLS on its container port 8080.
pub(super) fn base() -> Mesh {
    Mesh::new()
        .service(
            "default",
            "reviews",
            &[("app", "reviews")],
            &[(9080, TargetPort::Number(9080)), (8080, TargetPort::Name("http-alt".into()))],
        )
        .workload(
            "default",
            "reviews-v1",
            "reviews",
            &[("app", "reviews"), ("version", "v1"), MESHED],
            &[(Some("http"), 9080), (Some("http-alt"), 8081)],
        )
        .workload(
            "default",
            "reviews-v2",
            "reviews-v2",
            &[("app", "reviews"), ("version", "v2"), MESHED],
            &[(None, 9080), (Some("http-alt"), 8080)],
        )
        .workload("default", "reviews-legacy", "", &[("app", "reviews"), ("version", "v1")], &[(None, 9080)])
        .workload("frontend", "productpage", "productpage", &[("app", "productpage"), MESHED], &[(None, 9080)])
        .pa(
            "default",
            "v2-port",
            Some(1),
            json!({"selector": {"matchLabels": {"version": "v2"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}}),
        )
}

fn tls(mode: &str) -> Value {
    json!({ "trafficPolicy": { "tls": { "mode": mode } } })
}

pub(super) fn rule(host: &str, mode: &str) -> Value {
    json!({ "host": host, "trafficPolicy": { "tls": { "mode": mode } } })
}

pub(super) fn client(namespace: &str, pod_labels: &[(&str, &str)]) -> Client {
    Client {
        namespace: namespace.into(),
        labels: labels(pod_labels),
    }
}

pub(super) fn mode_of(decision: &OutboundDecision) -> Option<TlsMode> {
    decision.tls.as_ref().map(|t| t.effective_mode())
}

type RuleSpec = (&'static str, &'static str, Option<i64>, Value);

struct Case {
    name: &'static str,
    rules: Vec<RuleSpec>,
    client: Client,
    host: &'static str,
    /// Expected rule used, and the TLS mode.
    want: Option<(&'static str, &'static str)>,
    mode: Option<TlsMode>,
}

fn cases() -> Vec<Case> {
    let frontend = client("frontend", &[("app", "productpage")]);
    let other = client("other", &[]);
    let _ = tls;
    vec![
        Case {
            name: "no rule: no TLS settings",
            rules: vec![],
            client: frontend.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "short host in the rule expands with the rule's namespace",
            rules: vec![("default", "r", Some(1), rule("reviews", "ISTIO_MUTUAL"))],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "r")),
            mode: Some(IstioMutual),
        },
        Case {
            name: "short host asked by the client expands with the client's namespace",
            rules: vec![("default", "r", Some(1), rule("reviews", "ISTIO_MUTUAL"))],
            client: client("default", &[]),
            host: "reviews",
            want: Some(("default", "r")),
            mode: Some(IstioMutual),
        },
        Case {
            name: "short host of a client elsewhere names another service",
            rules: vec![("default", "r", Some(1), rule("reviews", "ISTIO_MUTUAL"))],
            client: frontend.clone(),
            host: "reviews",
            want: None,
            mode: None,
        },
        Case {
            name: "a host with a dot is literal, not expanded",
            rules: vec![("default", "r", Some(1), rule("reviews.default", "SIMPLE"))],
            client: frontend.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "exact host beats a wildcard in the same namespace",
            rules: vec![
                (
                    "default",
                    "wild",
                    Some(1),
                    rule("*.default.svc.cluster.local", "SIMPLE"),
                ),
                ("default", "exact", Some(2), rule("reviews", "DISABLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "exact")),
            mode: Some(Disable),
        },
        Case {
            name: "longer wildcard beats shorter",
            rules: vec![
                (
                    "default",
                    "short",
                    Some(1),
                    rule("*.cluster.local", "SIMPLE"),
                ),
                (
                    "default",
                    "long",
                    Some(2),
                    rule("*.default.svc.cluster.local", "MUTUAL"),
                ),
                ("default", "all", Some(0), rule("*", "DISABLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "long")),
            mode: Some(Mutual),
        },
        Case {
            name: "`*` alone matches every host",
            rules: vec![("default", "all", Some(0), rule("*", "SIMPLE"))],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "all")),
            mode: Some(Simple),
        },
        Case {
            name: "a wildcard does not match its bare suffix",
            rules: vec![(
                "default",
                "wild",
                Some(0),
                rule("*.reviews.default.svc.cluster.local", "SIMPLE"),
            )],
            client: frontend.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "stage 1: a rule in the client namespace beats the service and root namespaces",
            rules: vec![
                ("frontend", "mine", Some(3), rule(REVIEWS, "SIMPLE")),
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
                (ROOT, "root", Some(0), rule("*.cluster.local", "DISABLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("frontend", "mine")),
            mode: Some(Simple),
        },
        Case {
            name: "stage 1 wins even with a wildcard against an exact host in the service namespace",
            rules: vec![
                (
                    "frontend",
                    "mine",
                    Some(3),
                    rule("*.svc.cluster.local", "SIMPLE"),
                ),
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("frontend", "mine")),
            mode: Some(Simple),
        },
        Case {
            name: "stage 2: the service namespace's exported rule",
            rules: vec![
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
                (ROOT, "root", Some(0), rule("*.cluster.local", "DISABLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "theirs")),
            mode: Some(IstioMutual),
        },
        Case {
            name: "stage 3: the root namespace",
            rules: vec![(ROOT, "root", Some(0), rule("*.cluster.local", "DISABLE"))],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some((ROOT, "root")),
            mode: Some(Disable),
        },
        Case {
            name: "rules of unrelated namespaces are never used",
            rules: vec![("other", "unrelated", Some(0), rule(REVIEWS, "SIMPLE"))],
            client: frontend.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "service namespace parsed from the host when the service is unknown",
            rules: vec![("ghost", "g", Some(0), rule("svc", "SIMPLE"))],
            client: frontend.clone(),
            host: "svc.ghost.svc.cluster.local",
            want: Some(("ghost", "g")),
            mode: Some(Simple),
        },
        Case {
            name: "exportTo `.` hides the rule from other namespaces",
            rules: vec![
                (
                    "default",
                    "private",
                    Some(1),
                    json!({"host": "reviews", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
                ),
                (ROOT, "root", Some(0), rule("*.cluster.local", "DISABLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some((ROOT, "root")),
            mode: Some(Disable),
        },
        Case {
            name: "exportTo `.` keeps the rule for its own namespace",
            rules: vec![(
                "default",
                "private",
                Some(1),
                json!({"host": "reviews", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: client("default", &[]),
            host: REVIEWS,
            want: Some(("default", "private")),
            mode: Some(Simple),
        },
        Case {
            name: "exportTo names the client namespace",
            rules: vec![(
                "default",
                "named",
                Some(1),
                json!({"host": "reviews", "exportTo": ["frontend"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "named")),
            mode: Some(Simple),
        },
        Case {
            name: "exportTo names another namespace",
            rules: vec![(
                "default",
                "named",
                Some(1),
                json!({"host": "reviews", "exportTo": ["frontend"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: other.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "exportTo `*` exports everywhere",
            rules: vec![(
                "default",
                "all",
                Some(1),
                json!({"host": "reviews", "exportTo": ["*"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: other.clone(),
            host: REVIEWS,
            want: Some(("default", "all")),
            mode: Some(Simple),
        },
        Case {
            name: "a root rule not exported to the client is not used",
            rules: vec![(
                ROOT,
                "root",
                Some(0),
                json!({"host": "*.cluster.local", "exportTo": ["frontend"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: other.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "a rule of the client namespace not visible to it falls through",
            rules: vec![
                (
                    "frontend",
                    "elsewhere",
                    Some(1),
                    json!({"host": REVIEWS, "exportTo": ["other"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
                ),
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "theirs")),
            mode: Some(IstioMutual),
        },
        Case {
            name: "workloadSelector rule applies to a matching client",
            rules: vec![
                (
                    "frontend",
                    "selected",
                    Some(5),
                    json!({"host": REVIEWS, "workloadSelector": {"matchLabels": {"app": "productpage"}}, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
                ),
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("frontend", "selected")),
            mode: Some(Simple),
        },
        Case {
            name: "workloadSelector rule does not apply to another client",
            rules: vec![
                (
                    "frontend",
                    "selected",
                    Some(5),
                    json!({"host": REVIEWS, "workloadSelector": {"matchLabels": {"app": "productpage"}}, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
                ),
                (
                    "default",
                    "theirs",
                    Some(1),
                    rule("reviews", "ISTIO_MUTUAL"),
                ),
            ],
            client: client("frontend", &[("app", "other")]),
            host: REVIEWS,
            want: Some(("default", "theirs")),
            mode: Some(IstioMutual),
        },
        Case {
            name: "workloadSelector rules are never exported",
            rules: vec![(
                "default",
                "selected",
                Some(5),
                json!({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "productpage"}}, "exportTo": ["*"], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: frontend.clone(),
            host: REVIEWS,
            want: None,
            mode: None,
        },
        Case {
            name: "a workloadSelector rule comes first in a merge even when newer",
            rules: vec![
                ("frontend", "plain", Some(1), rule(REVIEWS, "DISABLE")),
                (
                    "frontend",
                    "selected",
                    Some(9),
                    json!({"host": REVIEWS, "workloadSelector": {"matchLabels": {"app": "productpage"}}, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
                ),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("frontend", "selected")),
            mode: Some(Simple),
        },
        Case {
            name: "the oldest rule of a merge comes first",
            rules: vec![
                ("default", "newer", Some(9), rule("reviews", "DISABLE")),
                ("default", "older", Some(1), rule("reviews", "SIMPLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "older")),
            mode: Some(Simple),
        },
        Case {
            name: "equal timestamps: the name orders the merge",
            rules: vec![
                ("default", "b", Some(1), rule("reviews", "DISABLE")),
                ("default", "a", Some(1), rule("reviews", "SIMPLE")),
            ],
            client: frontend.clone(),
            host: REVIEWS,
            want: Some(("default", "a")),
            mode: Some(Simple),
        },
    ]
}

#[test]
fn lookup_table() {
    for case in cases() {
        let mut mesh = base();
        for (ns, name, age, spec) in case.rules {
            mesh = mesh.dr(ns, name, age, spec);
        }
        let engine = mesh.engine();
        let got = engine.outbound(&case.client, case.host, 9080, None);
        assert_eq!(
            got.rule,
            case.want.map(|(ns, n)| dr_ref(ns, n)),
            "{}: rule",
            case.name
        );
        assert_eq!(mode_of(&got), case.mode, "{}: mode", case.name);
        assert!(got.host.contains('.'), "{}: host {}", case.name, got.host);
    }
}

#[test]
fn custom_domain_suffix() {
    let mut mesh = Mesh::new().dr("default", "r", Some(1), rule("reviews", "SIMPLE"));
    mesh.input.config.domain_suffix = "corp.internal".into();
    let engine = mesh.engine();
    assert_eq!(
        engine.expand_host("reviews", "default"),
        "reviews.default.svc.corp.internal"
    );
    let got = engine.outbound(
        &client("frontend", &[]),
        "reviews.default.svc.corp.internal",
        80,
        None,
    );
    assert_eq!(got.rule, Some(dr_ref("default", "r")));
    let short = engine.outbound(&client("default", &[]), "reviews", 80, None);
    assert_eq!(short.host, "reviews.default.svc.corp.internal");
    assert_eq!(short.rule, Some(dr_ref("default", "r")));
}
