//! Property tests of AuthorizationPolicy decisions: policies only ever narrow what they should.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::authz::{Policies, engine};
use super::labels;
use crate::policy::authz::Connection;

const NAMESPACES: [&str; 3] = ["palisade-system", "shop", "other"];

fn strings(choice: usize) -> Value {
    match choice {
        0 => json!(["cluster.local/ns/shop/sa/a"]),
        1 => json!(["cluster.local/ns/web/*"]),
        2 => json!(["*"]),
        _ => json!(["*/sa/b", "cluster.local/ns/other/sa/a"]),
    }
}

/// One source, operation or condition field, by number.
fn field(kind: usize, choice: usize) -> (&'static str, Value) {
    match kind {
        0 => ("principals", strings(choice)),
        1 => ("notPrincipals", strings(choice)),
        2 => (
            "namespaces",
            json!([(["shop", "web", "oth*", "*"][choice % 4])]),
        ),
        3 => ("notNamespaces", json!([(["shop", "web"][choice % 2])])),
        4 => (
            "ipBlocks",
            json!([(["10.1.0.0/16", "10.1.0.5", "fd00::/8", "0.0.0.0/0"][choice % 4])]),
        ),
        5 => (
            "notIpBlocks",
            json!([(["10.1.0.0/16", "10.2.0.0/16"][choice % 2])]),
        ),
        _ => ("requestPrincipals", json!(["*"])),
    }
}

fn rule(shape: &RuleShape) -> Value {
    let (source_fields, operation, when) = shape;
    let mut rule = serde_json::Map::new();
    if !source_fields.is_empty() {
        let mut source = serde_json::Map::new();
        for (kind, choice) in source_fields {
            let (name, value) = field(*kind, *choice);
            source.insert(name.to_string(), value);
        }
        rule.insert("from".into(), json!([{"source": source}]));
    }
    if let Some((negate, choice)) = operation {
        let op = match (negate, choice % 3) {
            (_, 2) => json!({"methods": ["GET"]}),
            (false, c) => json!({"ports": [(["80", "8080"][c])]}),
            (true, c) => json!({"notPorts": [(["80", "8080"][c])]}),
        };
        rule.insert("to".into(), json!([{"operation": op}]));
    }
    if let Some(choice) = when {
        let condition = match choice % 4 {
            0 => json!({"key": "source.namespace", "values": ["shop"]}),
            1 => json!({"key": "destination.port", "notValues": ["80"]}),
            2 => json!({"key": "source.ip", "values": ["10.1.0.0/24"]}),
            _ => json!({"key": "request.headers[x]", "values": ["y"]}),
        };
        rule.insert("when".into(), json!([condition]));
    }
    Value::Object(rule)
}

type RuleShape = (Vec<(usize, usize)>, Option<(bool, usize)>, Option<usize>);
/// (namespace, selector, rules or none)
type PolicyShape = (usize, usize, Option<Vec<RuleShape>>);

fn rule_shape() -> impl Strategy<Value = RuleShape> {
    (
        prop::collection::vec((0..7usize, 0..4usize), 0..3),
        prop::option::of((any::<bool>(), 0..3usize)),
        prop::option::of(0..4usize),
    )
}

fn policy_shape() -> impl Strategy<Value = PolicyShape> {
    (
        0..3usize,
        0..3usize,
        prop::option::of(prop::collection::vec(rule_shape(), 0..3)),
    )
}

fn spec(action: &str, shape: &PolicyShape) -> Value {
    let (_, selector, rules) = shape;
    let mut spec = json!({"action": action});
    match selector {
        1 => spec["selector"] = json!({"matchLabels": {"app": "web"}}),
        2 => spec["selector"] = json!({"matchLabels": {"app": "db"}}),
        _ => {}
    }
    if let Some(rules) = rules {
        spec["rules"] = Value::Array(rules.iter().map(rule).collect());
    }
    spec
}

const NAMES: [&str; 8] = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"];

fn policies(action_of: impl Fn(usize) -> &'static str, shapes: &[PolicyShape]) -> Policies {
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                NAMESPACES[s.0],
                NAMES[i % NAMES.len()],
                spec(action_of(i), s),
            )
        })
        .collect()
}

/// Every connection shape the tests try: identities, plaintext, addresses, ports.
fn connections() -> Vec<Connection> {
    let mut out = Vec::new();
    for port in [80u16, 8080] {
        for source in ["10.1.0.5", "10.2.3.4", "fd00::1"] {
            let s = source.parse().expect("ip");
            let d = "10.9.0.1".parse().expect("ip");
            out.push(Connection::plaintext(s, d, port));
            for (ns, sa) in [("shop", "a"), ("shop", "b"), ("web", "a"), ("other", "a")] {
                let id = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
                out.push(Connection::mtls(&id, s, d, port).expect("id"));
            }
        }
    }
    out
}

fn allowed(policies: &Policies, c: &Connection) -> bool {
    engine(policies)
        .for_workload("shop", &labels(&[("app", "web")]))
        .decide(c)
        .allowed
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Adding a DENY policy never turns a denied connection into an allowed one.
    #[test]
    fn adding_a_deny_only_narrows(
        existing in prop::collection::vec((policy_shape(), 0..3usize), 0..5),
        deny in policy_shape(),
    ) {
        let actions = ["ALLOW", "DENY", "AUDIT"];
        let shapes: Vec<PolicyShape> = existing.iter().map(|(s, _)| s.clone()).collect();
        let before = policies(|i| actions[existing[i].1], &shapes);
        let mut after = before.clone();
        after.push((NAMESPACES[deny.0], "zz-new-deny", spec("DENY", &deny)));
        for c in connections() {
            if allowed(&after, &c) {
                prop_assert!(allowed(&before, &c), "new DENY allowed {:?}", c);
            }
        }
    }

    /// On a workload with no ALLOW policy, adding one never allows what was denied before
    /// (it only narrows the default allow).
    #[test]
    fn adding_the_first_allow_only_narrows(
        denies in prop::collection::vec(policy_shape(), 0..4),
        allow in policy_shape(),
    ) {
        let before = policies(|_| "DENY", &denies);
        let mut after = before.clone();
        after.push((NAMESPACES[allow.0], "zz-new-allow", spec("ALLOW", &allow)));
        for c in connections() {
            if allowed(&after, &c) {
                prop_assert!(allowed(&before, &c), "new ALLOW allowed {:?}", c);
            }
        }
    }

    /// The index finds what a scan of every rule would: the decision equals checking each
    /// applying policy's rules one by one in order.
    #[test]
    fn indexed_decision_equals_a_plain_scan(
        shapes in prop::collection::vec((policy_shape(), 0..3usize), 0..6),
    ) {
        let actions = ["ALLOW", "DENY", "AUDIT"];
        let only: Vec<PolicyShape> = shapes.iter().map(|(s, _)| s.clone()).collect();
        let ps = policies(|i| actions[shapes[i].1], &only);
        let engine = engine(&ps);
        let authz = engine.for_workload("shop", &labels(&[("app", "web")]));
        for c in connections() {
            let v = authz.decide(&c);
            let scan = crate::policy::authz::scan_decide(authz.policies(), &c);
            prop_assert_eq!(v, scan, "{:?}", c);
        }
    }
}
