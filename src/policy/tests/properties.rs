//! Property tests: invariants over random meshes.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::api::MtlsMode;

const NAMESPACES: [&str; 3] = ["palisade-system", "a", "b"];
const MODES: [Option<&str>; 5] = [
    None,
    Some("UNSET"),
    Some("DISABLE"),
    Some("PERMISSIVE"),
    Some("STRICT"),
];

fn label_sets() -> Vec<Vec<(&'static str, &'static str)>> {
    vec![
        vec![],
        vec![("app", "x")],
        vec![("app", "y")],
        vec![("app", "x"), ("tier", "1")],
        vec![("app", "y"), ("tier", "2")],
    ]
}

fn selector(choice: usize) -> Value {
    match choice {
        0 => Value::Null,
        1 => json!({}),
        2 => json!({"matchLabels": {"app": "x"}}),
        3 => json!({"matchLabels": {"tier": "1"}}),
        _ => json!({"matchLabels": {"app": "x", "tier": "1"}}),
    }
}

fn mtls(mode: Option<&str>) -> Value {
    match mode {
        None => Value::Null,
        Some(m) => json!({ "mode": m }),
    }
}

/// (namespace, selector, mode, port entries)
type PaShape = (usize, usize, usize, Vec<(u16, usize)>);

fn pa_shape() -> impl Strategy<Value = PaShape> {
    (
        0..3usize,
        0..5usize,
        0..5usize,
        prop::collection::vec((prop::sample::select(vec![80u16, 8080]), 0..5usize), 0..3),
    )
}

fn pa_spec(shape: &PaShape) -> Value {
    let (_, sel, mode, ports) = shape;
    let mut spec = json!({});
    if !selector(*sel).is_null() {
        spec["selector"] = selector(*sel);
    }
    if !mtls(MODES[*mode]).is_null() {
        spec["mtls"] = mtls(MODES[*mode]);
    }
    if !ports.is_empty() && *sel >= 2 {
        let map: serde_json::Map<String, Value> = ports
            .iter()
            .map(|(p, m)| (p.to_string(), mtls(MODES[*m].or(Some("UNSET")))))
            .collect();
        spec["portLevelMtls"] = Value::Object(map);
    }
    spec
}

/// (namespace, host, exportTo, selector?, tls mode, subsets, port-level tls mode)
type DrShape = (usize, usize, usize, bool, usize, usize, Option<usize>);

fn dr_shape() -> impl Strategy<Value = DrShape> {
    (
        0..3usize,
        0..5usize,
        0..5usize,
        any::<bool>(),
        0..5usize,
        0..3usize,
        prop::option::of(0..5usize),
    )
}

const HOSTS: [&str; 5] = [
    "svc",
    "svc.a.svc.cluster.local",
    "*.a.svc.cluster.local",
    "*.cluster.local",
    "*",
];
const TLS: [Option<&str>; 5] = [
    None,
    Some("DISABLE"),
    Some("SIMPLE"),
    Some("ISTIO_MUTUAL"),
    Some("MUTUAL"),
];

fn tls(mode: Option<&str>) -> Value {
    match mode {
        Some("MUTUAL") => json!({"mode": "MUTUAL", "credentialName": "c"}),
        Some(m) => json!({ "mode": m }),
        None => Value::Null,
    }
}

fn dr_spec(shape: &DrShape) -> Value {
    let (_, host, export, selected, mode, subsets, port) = *shape;
    let mut spec = json!({ "host": HOSTS[host] });
    let exports = [
        json!([]),
        json!(["."]),
        json!(["a"]),
        json!(["*"]),
        json!(["b", "."]),
    ];
    spec["exportTo"] = exports[export].clone();
    if selected {
        spec["workloadSelector"] = json!({"matchLabels": {"app": "x"}});
    }
    let mut policy = json!({});
    if !tls(TLS[mode]).is_null() {
        policy["tls"] = tls(TLS[mode]);
    }
    if let Some(p) = port {
        let mut entry = json!({"port": {"number": 8080}});
        if !tls(TLS[p]).is_null() {
            entry["tls"] = tls(TLS[p]);
        }
        policy["portLevelSettings"] = json!([entry]);
    }
    if policy != json!({}) {
        spec["trafficPolicy"] = policy;
    }
    let names = [vec![], vec!["v1"], vec!["v1", "v2"]];
    spec["subsets"] = Value::Array(
        names[subsets]
            .iter()
            .map(|n| json!({"name": n, "labels": {"app": "x"}, "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}))
            .collect(),
    );
    spec
}

/// A mesh with the policies in the given order; `ages[i]` is the distinct age of policy `i`.
fn build(pas: &[(PaShape, i64)], drs: &[(DrShape, i64)]) -> Mesh {
    let mut mesh = Mesh::new()
        .service(
            "a",
            "svc",
            &[("app", "x")],
            &[
                (80, TargetPort::Number(80)),
                (8080, TargetPort::Name("alt".into())),
            ],
        )
        .service("b", "svc", &[("app", "x")], &[(80, TargetPort::Number(80))]);
    for ns in ["a", "b"] {
        for (i, set) in label_sets().iter().enumerate() {
            let mut pod = set.clone();
            pod.push((TLS_MODE_LABEL, TLS_MODE_PALISADE));
            mesh = mesh.workload(
                ns,
                &format!("w{i}"),
                &format!("sa{i}"),
                &pod,
                &[(Some("alt"), 8080)],
            );
        }
    }
    for (shape, age) in pas {
        mesh = mesh.pa(
            NAMESPACES[shape.0],
            &format!("pa-{age}"),
            Some(*age),
            pa_spec(shape),
        );
    }
    for (shape, age) in drs {
        mesh = mesh.dr(
            NAMESPACES[shape.0],
            &format!("dr-{age}"),
            Some(*age),
            dr_spec(shape),
        );
    }
    mesh
}

fn with_ages<T: Clone>(items: Vec<T>) -> Vec<(T, i64)> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, (i as i64) * 7 % 101))
        .collect()
}

fn probes() -> Vec<(&'static str, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for set in label_sets() {
            out.push((ns, labels(&set)));
        }
    }
    out
}

fn outbound_probes(engine: &PolicyEngine) -> Vec<OutboundDecision> {
    let mut out = Vec::new();
    for ns in NAMESPACES {
        for pod in [vec![], vec![("app", "x")]] {
            let client = Client {
                namespace: ns.into(),
                labels: labels(&pod),
            };
            for host in [
                "svc.a.svc.cluster.local",
                "svc.b.svc.cluster.local",
                "svc",
                "other.a.svc.cluster.local",
            ] {
                for port in [80, 8080] {
                    for subset in [None, Some("v1"), Some("v2")] {
                        out.push(engine.outbound(&client, host, port, subset));
                    }
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn inbound_mode_is_never_unset(pas in prop::collection::vec(pa_shape(), 0..12)) {
        let engine = build(&with_ages(pas), &[]).engine();
        for (ns, pod) in probes() {
            let got = engine.inbound(ns, &pod);
            prop_assert_ne!(got.mode, MtlsMode::Unset);
            prop_assert!(got.port_modes.values().all(|m| *m != MtlsMode::Unset));
        }
    }

    #[test]
    fn a_lone_workload_policy_with_a_mode_decides(pas in prop::collection::vec(pa_shape(), 0..12), sel in 2..5usize, mode in 2..5usize) {
        // The only selector policy of namespace `a`, youngest of all: it still decides.
        let mut input: Vec<PaShape> = pas.into_iter().filter(|p| p.0 != 1 || p.1 < 2).collect();
        input.push((1, sel, mode, vec![]));
        let engine = build(&with_ages(input), &[]).engine();
        let want = match MODES[mode] { Some("DISABLE") => MtlsMode::Disable, Some("PERMISSIVE") => MtlsMode::Permissive, _ => MtlsMode::Strict };
        let selector = selector(sel);
        for (ns, pod) in probes().into_iter().filter(|(ns, _)| *ns == "a") {
            let matches = selector["matchLabels"].as_object().is_some_and(|m| {
                m.iter().all(|(k, v)| pod.get(k).map(String::as_str) == v.as_str())
            });
            if matches {
                prop_assert_eq!(engine.inbound(ns, &pod).mode, want);
            }
        }
    }

    #[test]
    // The newest policy of a scope never wins it, and one that sets nothing decides nothing.
    fn adding_a_newest_unset_policy_changes_nothing(
        pas in prop::collection::vec(pa_shape(), 0..10),
        ns in 0..3usize,
        sel in 0..5usize,
        explicit in any::<bool>(),
    ) {
        let before = build(&with_ages(pas.clone()), &[]).engine();
        let mut more = pas;
        let unset: PaShape = (ns, sel, if explicit { 1 } else { 0 }, vec![]);
        more.push(unset);
        let after = build(&with_ages(more), &[]).engine();
        for (ns, pod) in probes() {
            let (b, a) = (before.inbound(ns, &pod), after.inbound(ns, &pod));
            prop_assert_eq!(b.mode, a.mode);
            prop_assert_eq!(&b.port_modes, &a.port_modes);
            let names = |d: &InboundDecision| d.decided_by.iter().map(|x| (x.object.namespace.clone(), x.scope)).collect::<Vec<_>>();
            prop_assert_eq!(names(&b), names(&a));
        }
    }

    #[test]
    fn input_order_does_not_matter_with_distinct_timestamps(
        pas in prop::collection::vec(pa_shape(), 0..10),
        drs in prop::collection::vec(dr_shape(), 0..10),
        seed in any::<u64>(),
    ) {
        let pas = with_ages(pas);
        let drs = with_ages(drs);
        let original = build(&pas, &drs).engine();
        let (mut pas2, mut drs2) = (pas.clone(), drs.clone());
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        let mut next = |n: usize| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % n as u64) as usize };
        for i in (1..pas2.len()).rev() { let j = next(i + 1); pas2.swap(i, j); }
        for i in (1..drs2.len()).rev() { let j = next(i + 1); drs2.swap(i, j); }
        let shuffled = build(&pas2, &drs2).engine();
        for (ns, pod) in probes() {
            prop_assert_eq!(original.inbound(ns, &pod), shuffled.inbound(ns, &pod));
        }
        prop_assert_eq!(outbound_probes(&original), outbound_probes(&shuffled));
        prop_assert_eq!(original.diagnostics(), shuffled.diagnostics());
        prop_assert_eq!(original.resolve_all(), shuffled.resolve_all());
    }

    #[test]
    fn resolve_all_matches_single_lookups(
        pas in prop::collection::vec(pa_shape(), 0..8),
        drs in prop::collection::vec(dr_shape(), 0..8),
    ) {
        let mesh = build(&with_ages(pas), &with_ages(drs));
        let workloads = mesh.input.workloads.clone();
        let engine = mesh.engine();
        let all = engine.resolve_all();
        for (entry, w) in all.inbound.iter().zip(&workloads) {
            prop_assert_eq!(&*entry.decision, &engine.inbound(&w.namespace, &w.labels));
        }
        for entry in &all.outbound {
            let client = Client { namespace: entry.client_namespace.to_string(), labels: BTreeMap::new() };
            let host = format!("{}.{}.svc.cluster.local", entry.service, entry.service_namespace);
            prop_assert_eq!(&*entry.decision, &engine.outbound(&client, &host, entry.port, None));
        }
    }

    #[test]
    fn outbound_invariants(drs in prop::collection::vec(dr_shape(), 0..10)) {
        let engine = build(&[], &with_ages(drs)).engine();
        for decision in outbound_probes(&engine) {
            // Endpoints are listed only under auto mTLS; the rule used is the first merged.
            prop_assert!(decision.tls.is_none() || decision.endpoints.is_empty());
            prop_assert_eq!(decision.rule.as_ref(), decision.merged_from.first());
            let mut sorted = decision.expected_identities.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&sorted, &decision.expected_identities);
            // Every merged rule is visible to the client: never a workloadSelector rule
            // from another namespace.
            prop_assert!(decision.host.contains('.'));
        }
    }
}
