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

fn ip(s: &str) -> IpAddr {
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

/// One ALLOW policy `spec` on workload shop/web: is `connection` allowed?
fn allowed_by(spec: Value, connection: &Connection) -> bool {
    let engine = engine(&vec![("shop", "p", spec)]);
    engine
        .for_workload("shop", &labels(&[("app", "web")]))
        .decide(connection)
        .allowed
}

fn source(source: Value) -> Value {
    json!({"rules": [{"from": [{"source": source}]}]})
}

#[test]
fn principals_with_wildcards_and_plaintext() {
    let c = from_sa("shop", "client", 80);
    let p = plaintext("10.1.0.5", 80);
    let table: Vec<(&str, Value, &Connection, bool)> = vec![
        (
            "exact",
            source(json!({"principals": ["cluster.local/ns/shop/sa/client"]})),
            &c,
            true,
        ),
        (
            "other sa",
            source(json!({"principals": ["cluster.local/ns/shop/sa/other"]})),
            &c,
            false,
        ),
        (
            "prefix *",
            source(json!({"principals": ["cluster.local/ns/shop/*"]})),
            &c,
            true,
        ),
        (
            "prefix * other ns",
            source(json!({"principals": ["cluster.local/ns/web/*"]})),
            &c,
            false,
        ),
        (
            "suffix *",
            source(json!({"principals": ["*/sa/client"]})),
            &c,
            true,
        ),
        (
            "suffix * other sa",
            source(json!({"principals": ["*/sa/admin"]})),
            &c,
            false,
        ),
        (
            "* is any authenticated peer",
            source(json!({"principals": ["*"]})),
            &c,
            true,
        ),
        (
            "* does not match plaintext",
            source(json!({"principals": ["*"]})),
            &p,
            false,
        ),
        (
            "spiffe:// prefix never matches (fails closed)",
            source(json!({"principals": ["spiffe://cluster.local/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "other trust domain",
            source(json!({"principals": ["example.org/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "notPrincipals excludes",
            source(json!({"notPrincipals": ["cluster.local/ns/shop/sa/client"]})),
            &c,
            false,
        ),
        (
            "notPrincipals lets others in",
            source(json!({"notPrincipals": ["cluster.local/ns/shop/sa/other"]})),
            &c,
            true,
        ),
        (
            "notPrincipals [*] is plaintext only",
            source(json!({"notPrincipals": ["*"]})),
            &p,
            true,
        ),
        (
            "notPrincipals [*] keeps mTLS out",
            source(json!({"notPrincipals": ["*"]})),
            &c,
            false,
        ),
        (
            "serviceAccounts ns/sa",
            source(json!({"serviceAccounts": ["shop/client"]})),
            &c,
            true,
        ),
        (
            "serviceAccounts bare name is the policy's namespace",
            source(json!({"serviceAccounts": ["client"]})),
            &c,
            true,
        ),
        (
            "serviceAccounts other",
            source(json!({"serviceAccounts": ["web/client"]})),
            &c,
            false,
        ),
        (
            "notServiceAccounts",
            source(json!({"notServiceAccounts": ["shop/client"]})),
            &c,
            false,
        ),
        (
            "serviceAccounts never match plaintext",
            source(json!({"serviceAccounts": ["shop/client"]})),
            &p,
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, connection), want, "{name}");
    }
}

#[test]
fn namespaces_come_from_the_identity() {
    let c = from_sa("payments", "api", 80);
    let p = plaintext("10.1.0.5", 80);
    let table: Vec<(&str, Value, &Connection, bool)> = vec![
        (
            "namespace of the identity",
            source(json!({"namespaces": ["payments"]})),
            &c,
            true,
        ),
        (
            "other namespace",
            source(json!({"namespaces": ["shop"]})),
            &c,
            false,
        ),
        ("prefix", source(json!({"namespaces": ["pay*"]})), &c, true),
        (
            "suffix",
            source(json!({"namespaces": ["*ments"]})),
            &c,
            true,
        ),
        (
            "plaintext has no namespace",
            source(json!({"namespaces": ["*"]})),
            &p,
            false,
        ),
        (
            "notNamespaces excludes",
            source(json!({"notNamespaces": ["payments"]})),
            &c,
            false,
        ),
        (
            "notNamespaces matches plaintext",
            source(json!({"notNamespaces": ["payments"]})),
            &p,
            true,
        ),
        (
            "all fields of a source must match",
            source(json!({"namespaces": ["payments"], "principals": ["*/sa/other"]})),
            &c,
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, connection), want, "{name}");
    }
}

#[test]
fn ip_blocks() {
    let c = |ip: &str| Connection::plaintext(self::ip(ip), self::ip("10.2.0.9"), 80);
    let table: Vec<(&str, Value, Connection, bool)> = vec![
        (
            "in CIDR",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "outside CIDR",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("10.3.2.3"),
            false,
        ),
        (
            "single address",
            source(json!({"ipBlocks": ["10.1.2.3"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "single address, other",
            source(json!({"ipBlocks": ["10.1.2.3"]})),
            c("10.1.2.4"),
            false,
        ),
        (
            "IPv6",
            source(json!({"ipBlocks": ["fd00::/8"]})),
            c("fd00::1"),
            true,
        ),
        (
            "IPv4-mapped IPv6 peer compared as IPv4",
            source(json!({"ipBlocks": ["10.1.0.0/16"]})),
            c("::ffff:10.1.2.3"),
            true,
        ),
        (
            "notIpBlocks",
            source(json!({"notIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            false,
        ),
        (
            "remoteIpBlocks is the peer without a PROXY header",
            source(json!({"remoteIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            true,
        ),
        (
            "notRemoteIpBlocks",
            source(json!({"notRemoteIpBlocks": ["10.1.0.0/16"]})),
            c("10.1.2.3"),
            false,
        ),
        (
            "an invalid block fails closed in ALLOW",
            source(json!({"ipBlocks": ["10.1.0.0/16", "not-an-ip"]})),
            c("10.1.2.3"),
            false,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, &connection), want, "{name}");
    }
}

fn operation(operation: Value) -> Value {
    json!({"rules": [{"to": [{"operation": operation}]}]})
}

#[test]
fn ports_and_conditions() {
    let c = |port| from_sa("shop", "client", port);
    let when =
        |key: &str, values: Value| json!({"rules": [{"when": [{"key": key, "values": values}]}]});
    let not_when = |key: &str, values: Value| json!({"rules": [{"when": [{"key": key, "notValues": values}]}]});
    let table: Vec<(&str, Value, Connection, bool)> = vec![
        (
            "port listed",
            operation(json!({"ports": ["8080", "9090"]})),
            c(9090),
            true,
        ),
        (
            "port not listed",
            operation(json!({"ports": ["8080"]})),
            c(9090),
            false,
        ),
        (
            "notPorts",
            operation(json!({"notPorts": ["8080"]})),
            c(8080),
            false,
        ),
        (
            "notPorts other",
            operation(json!({"notPorts": ["8080"]})),
            c(9090),
            true,
        ),
        (
            "invalid port fails closed",
            operation(json!({"ports": ["http"]})),
            c(80),
            false,
        ),
        (
            "when source.namespace",
            when("source.namespace", json!(["shop"])),
            c(80),
            true,
        ),
        (
            "when source.namespace other",
            when("source.namespace", json!(["web"])),
            c(80),
            false,
        ),
        (
            "when source.principal",
            when("source.principal", json!(["cluster.local/ns/shop/*"])),
            c(80),
            true,
        ),
        (
            "when source.ip",
            when("source.ip", json!(["10.1.0.0/24"])),
            c(80),
            true,
        ),
        (
            "when remote.ip",
            when("remote.ip", json!(["10.9.0.0/24"])),
            c(80),
            false,
        ),
        (
            "when destination.ip",
            when("destination.ip", json!(["10.2.0.9"])),
            c(80),
            true,
        ),
        (
            "when destination.port",
            when("destination.port", json!(["80"])),
            c(80),
            true,
        ),
        (
            "when destination.port other",
            when("destination.port", json!(["81"])),
            c(80),
            false,
        ),
        (
            "when notValues",
            not_when("source.namespace", json!(["shop"])),
            c(80),
            false,
        ),
        (
            "when connection.sni",
            when("connection.sni", json!(["*.shop.svc.cluster.local"])),
            c(80).with_sni(Some("web.shop.svc.cluster.local".into())),
            true,
        ),
        (
            "when connection.sni without SNI",
            when("connection.sni", json!(["*"])),
            c(80),
            false,
        ),
        (
            "unknown key fails closed",
            when("source.labels", json!(["x"])),
            c(80),
            false,
        ),
        (
            "all conditions must hold",
            json!({"rules": [{"when": [
            {"key": "source.namespace", "values": ["shop"]},
            {"key": "destination.port", "values": ["81"]}]}]}),
            c(80),
            false,
        ),
        (
            "from, to and when together",
            json!({"rules": [{
            "from": [{"source": {"namespaces": ["shop"]}}],
            "to": [{"operation": {"ports": ["80"]}}],
            "when": [{"key": "source.ip", "values": ["10.1.0.5"]}]}]}),
            c(80),
            true,
        ),
        (
            "any to entry",
            json!({"rules": [{"to": [
            {"operation": {"ports": ["81"]}}, {"operation": {"ports": ["80"]}}]}]}),
            c(80),
            true,
        ),
    ];
    for (name, spec, connection, want) in table {
        assert_eq!(allowed_by(spec, &connection), want, "{name}");
    }
}

/// `spec` as a DENY policy next to an allow-all: is `connection` denied?
fn denied_by(spec: Value, connection: &Connection) -> bool {
    let mut spec = spec;
    spec["action"] = json!("DENY");
    let engine = engine(&vec![
        ("shop", "allow-all", json!({"rules": [{}]})),
        ("shop", "deny", spec),
    ]);
    !engine
        .for_workload("shop", &labels(&[]))
        .decide(connection)
        .allowed
}

#[test]
fn http_only_fields_never_allow_and_always_narrow_deny() {
    let c = from_sa("shop", "client", 80);
    let other = from_sa("web", "client", 80);
    let table: Vec<(&str, Value)> = vec![
        ("methods", operation(json!({"methods": ["GET"]}))),
        ("paths", operation(json!({"paths": ["/admin"]}))),
        ("hosts", operation(json!({"hosts": ["shop.example"]}))),
        ("notMethods", operation(json!({"notMethods": ["DELETE"]}))),
        (
            "requestPrincipals",
            source(json!({"requestPrincipals": ["*"]})),
        ),
        (
            "request.headers",
            json!({"rules": [{"when": [{"key": "request.headers[x-user]", "values": ["alice"]}]}]}),
        ),
    ];
    for (name, spec) in table {
        // ALLOW: the rule never matches, so the workload is closed.
        assert!(
            !allowed_by(spec.clone(), &c),
            "{name}: ALLOW must not match"
        );
        // DENY: the HTTP field is dropped, so the rule matches every connection.
        assert!(denied_by(spec, &c), "{name}: DENY must match");
    }
    // In DENY the remaining L4 fields still narrow the rule.
    let spec = json!({"rules": [{"from": [{"source": {"namespaces": ["shop"]}}], "to": [{"operation": {"methods": ["POST"]}}]}]});
    assert!(denied_by(spec.clone(), &c));
    assert!(!denied_by(spec, &other));
    // In ALLOW a rule with an HTTP field is dropped, but other rules still count.
    let spec = json!({"rules": [
        {"to": [{"operation": {"methods": ["GET"]}}]},
        {"from": [{"source": {"namespaces": ["shop"]}}]}]});
    assert!(allowed_by(spec.clone(), &c));
    assert!(!allowed_by(spec, &other));
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
