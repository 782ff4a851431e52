//! AuthorizationPolicy decisions, table by table, from Istio's documented semantics: the
//! evaluation order, the scopes, each source and operation field at L4, conditions, and
//! fields only an HTTP proxy could check.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::labels;
use crate::policy::authz::{AuthzEngine, Connection, Reason};
use crate::policy::model::*;

const ROOT: &str = "palisade-system";

/// Policies as (namespace, name, spec).
pub(super) type Policies = Vec<(&'static str, &'static str, Value)>;

pub(super) fn engine(policies: &Policies) -> AuthzEngine {
    let input: Vec<Policy<crate::api::AuthorizationPolicySpec>> = policies
        .iter()
        .enumerate()
        .map(|(i, (ns, name, spec))| Policy {
            meta: PolicyMeta {
                namespace: ns.to_string(),
                name: name.to_string(),
                creation_timestamp: None,
                seq: i as u64,
            },
            spec: serde_json::from_value(spec.clone()).expect("AuthorizationPolicy spec"),
        })
        .collect();
    AuthzEngine::new(&MeshConfig::default(), &input)
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// An mTLS connection from `sa` in `ns` (trust domain cluster.local) at 10.1.0.5, to port.
pub(super) fn from_sa(ns: &str, sa: &str, port: u16) -> Connection {
    Connection::mtls(
        &format!("spiffe://cluster.local/ns/{ns}/sa/{sa}"),
        ip("10.1.0.5"),
        ip("10.2.0.9"),
        port,
    )
    .expect("workload id")
}

/// A plaintext connection from `source` to port.
pub(super) fn plaintext(source: &str, port: u16) -> Connection {
    Connection::plaintext(ip(source), ip("10.2.0.9"), port)
}

struct Case {
    name: &'static str,
    policies: Policies,
    /// The workload: namespace and labels.
    workload: (&'static str, &'static [(&'static str, &'static str)]),
    connection: Connection,
    allowed: bool,
    reason: Reason,
    /// Name of the deciding policy and rule index.
    by: Option<(&'static str, Option<u32>)>,
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let engine = engine(&case.policies);
        let authz = engine.for_workload(case.workload.0, &labels(case.workload.1));
        let decision = authz.explain(&case.connection);
        assert_eq!(decision.allowed, case.allowed, "{}: allowed", case.name);
        assert_eq!(decision.reason, case.reason, "{}: reason", case.name);
        let by = decision
            .policy
            .as_ref()
            .map(|p| (p.name.as_str(), decision.rule));
        assert_eq!(by, case.by, "{}: decided by", case.name);
    }
}

fn allow_from(principals: &[&str]) -> Value {
    json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": principals}}]}]})
}

#[test]
fn evaluation_order_deny_before_allow_and_defaults() {
    let web: &[(&str, &str)] = &[("app", "web")];
    run(vec![
        Case {
            name: "no policy: allowed by default",
            policies: vec![],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
        Case {
            name: "a DENY that does not match leaves the default allow",
            policies: vec![(
                "shop",
                "deny-other",
                json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["other"]}}]}]}),
            )],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
        Case {
            name: "deny wins over a matching allow",
            policies: vec![
                (
                    "shop",
                    "allow-client",
                    allow_from(&["cluster.local/ns/shop/sa/client"]),
                ),
                (
                    "shop",
                    "deny-shop",
                    json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}),
                ),
            ],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: false,
            reason: Reason::DenyMatched,
            by: Some(("deny-shop", Some(0))),
        },
        Case {
            name: "an ALLOW that applies and does not match denies",
            policies: vec![(
                "shop",
                "allow-client",
                allow_from(&["cluster.local/ns/shop/sa/client"]),
            )],
            workload: ("shop", web),
            connection: from_sa("shop", "intruder", 8080),
            allowed: false,
            reason: Reason::NoAllowMatched,
            by: None,
        },
        Case {
            name: "one of several ALLOW policies matching is enough (second rule)",
            policies: vec![
                ("shop", "a", allow_from(&["cluster.local/ns/x/sa/y"])),
                (
                    "shop",
                    "b",
                    json!({"rules": [
                        {"from": [{"source": {"principals": ["cluster.local/ns/z/sa/z"]}}]},
                        {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}
                    ]}),
                ),
            ],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: true,
            reason: Reason::AllowMatched,
            by: Some(("b", Some(1))),
        },
        Case {
            name: "CUSTOM is not supported: it denies even with a matching ALLOW",
            policies: vec![
                ("shop", "allow-all", json!({"rules": [{}]})),
                (
                    "shop",
                    "ext",
                    json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
                ),
            ],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: false,
            reason: Reason::CustomUnsupported,
            by: Some(("ext", None)),
        },
        Case {
            name: "AUDIT changes nothing",
            policies: vec![("shop", "audit", json!({"action": "AUDIT", "rules": [{}]}))],
            workload: ("shop", web),
            connection: from_sa("shop", "client", 8080),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
    ]);
}

#[test]
fn allow_nothing_and_allow_all() {
    let any: &[(&str, &str)] = &[];
    run(vec![
        Case {
            name: "ALLOW without rules allows nothing",
            policies: vec![("shop", "allow-nothing", json!({}))],
            workload: ("shop", any),
            connection: from_sa("shop", "client", 80),
            allowed: false,
            reason: Reason::NoAllowMatched,
            by: None,
        },
        Case {
            name: "rules: [{}] allows everything, plaintext too",
            policies: vec![("shop", "allow-all", json!({"rules": [{}]}))],
            workload: ("shop", any),
            connection: plaintext("192.168.1.1", 80),
            allowed: true,
            reason: Reason::AllowMatched,
            by: Some(("allow-all", Some(0))),
        },
        Case {
            name: "DENY with rules: [{}] denies everything",
            policies: vec![("shop", "deny-all", json!({"action": "DENY", "rules": [{}]}))],
            workload: ("shop", any),
            connection: from_sa("shop", "client", 80),
            allowed: false,
            reason: Reason::DenyMatched,
            by: Some(("deny-all", Some(0))),
        },
        Case {
            name: "DENY without rules denies nothing",
            policies: vec![("shop", "deny-none", json!({"action": "DENY"}))],
            workload: ("shop", any),
            connection: from_sa("shop", "client", 80),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
    ]);
}

#[test]
fn scopes_root_namespace_and_selector() {
    let web: &[(&str, &str)] = &[("app", "web")];
    let db: &[(&str, &str)] = &[("app", "db")];
    let deny_all = || json!({"action": "DENY", "rules": [{}]});
    let deny_web =
        || json!({"action": "DENY", "selector": {"matchLabels": {"app": "web"}}, "rules": [{}]});
    run(vec![
        Case {
            name: "root namespace without selector: every workload of the mesh",
            policies: vec![(ROOT, "mesh", deny_all())],
            workload: ("shop", db),
            connection: from_sa("shop", "c", 80),
            allowed: false,
            reason: Reason::DenyMatched,
            by: Some(("mesh", Some(0))),
        },
        Case {
            name: "root namespace with a selector: matching workloads of every namespace",
            policies: vec![(ROOT, "mesh-web", deny_web())],
            workload: ("shop", web),
            connection: from_sa("shop", "c", 80),
            allowed: false,
            reason: Reason::DenyMatched,
            by: Some(("mesh-web", Some(0))),
        },
        Case {
            name: "root namespace with a selector: not the others",
            policies: vec![(ROOT, "mesh-web", deny_web())],
            workload: ("shop", db),
            connection: from_sa("shop", "c", 80),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
        Case {
            name: "a namespace policy does not reach another namespace",
            policies: vec![("other", "ns-wide", deny_all())],
            workload: ("shop", web),
            connection: from_sa("shop", "c", 80),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
        Case {
            name: "a selector policy applies to matching workloads of its namespace only",
            policies: vec![("shop", "web-only", deny_web())],
            workload: ("shop", db),
            connection: from_sa("shop", "c", 80),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
        Case {
            name: "a mesh-wide ALLOW makes every workload deny-by-default",
            policies: vec![(
                ROOT,
                "mesh-allow",
                allow_from(&["cluster.local/ns/trusted/sa/*"]),
            )],
            workload: ("shop", web),
            connection: from_sa("shop", "c", 80),
            allowed: false,
            reason: Reason::NoAllowMatched,
            by: None,
        },
        Case {
            name: "a targetRef policy applies to no sidecar",
            policies: vec![(
                "shop",
                "gw",
                json!({"action": "DENY", "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}], "rules": [{}]}),
            )],
            workload: ("shop", web),
            connection: from_sa("shop", "c", 80),
            allowed: true,
            reason: Reason::NoAllowPolicy,
            by: None,
        },
    ]);
}

#[test]
fn the_first_matching_policy_in_name_order_decides_across_index_buckets() {
    // Rules indexed by principal, namespace, port and not at all: the verdict names the first
    // matching policy in (namespace, name) order whichever bucket it sits in.
    let policies: Policies = vec![
        (
            "shop",
            "d-by-port",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["80"]}}]}]}),
        ),
        (
            "shop",
            "b-by-namespace",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}),
        ),
        (
            "shop",
            "c-by-principal",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}),
        ),
        (
            "shop",
            "e-unindexed",
            json!({"action": "DENY", "rules": [{"when": [{"key": "source.ip", "values": ["10.1.0.5"]}]}]}),
        ),
    ];
    let engine = engine(&policies);
    let authz = engine.for_workload("shop", &labels(&[]));
    let name = |c: &Connection| authz.explain(c).policy.map(|p| p.name);
    assert_eq!(
        name(&from_sa("shop", "client", 80)).as_deref(),
        Some("b-by-namespace")
    );
    assert_eq!(
        name(&from_sa("web", "client", 80)).as_deref(),
        Some("d-by-port")
    );
    assert_eq!(
        name(&from_sa("web", "client", 81)).as_deref(),
        Some("e-unindexed")
    );
    let mut stranger = from_sa("web", "client", 81);
    stranger.source_ip = ip("10.7.7.7");
    assert_eq!(name(&stranger), None);
}

#[test]
fn peer_identities_must_be_workload_spiffe_ids() {
    let a = ip("10.0.0.1");
    for bad in [
        "cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe:///ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/sa/b/ns/a",
    ] {
        assert!(Connection::mtls(bad, a, a, 80).is_err(), "{bad}");
    }
    let long = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(3000));
    assert!(Connection::mtls(&long, a, a, 80).is_err());
    let ok = Connection::mtls("spiffe://td/ns/a/sa/b", a, a, 80).expect("valid");
    assert_eq!(ok.principal.as_deref(), Some("td/ns/a/sa/b"));
    assert_eq!(ok.namespace.as_deref(), Some("a"));
    assert_eq!(ok.service_account.as_deref(), Some("a/b"));
}
