//! `resolve_all` agrees with the single lookups and shares identical decisions.

use std::sync::Arc;

use serde_json::json;

use super::*;

const ROOT: &str = "palisade-system";

pub(super) fn sample_mesh() -> Mesh {
    Mesh::new()
        .service("a", "svc", &[("app", "x")], &[(80, TargetPort::Number(80)), (8080, TargetPort::Name("alt".into()))])
        .service("b", "svc", &[("app", "x")], &[(80, TargetPort::Number(0))])
        .service("b", "headless", &[], &[(443, TargetPort::Number(443))])
        .workload("a", "x1", "sa-x", &[("app", "x"), (TLS_MODE_LABEL, TLS_MODE_PALISADE)], &[(Some("alt"), 9000)])
        .workload("a", "y1", "sa-y", &[("app", "y"), (TLS_MODE_LABEL, TLS_MODE_PALISADE)], &[])
        .workload("b", "x2", "sa-x", &[("app", "x")], &[])
        .workload("c", "z", "", &[("app", "z"), (TLS_MODE_LABEL, TLS_MODE_PALISADE)], &[])
        .pa(ROOT, "mesh", Some(1), json!({"mtls": {"mode": "STRICT"}}))
        .pa("a", "x-ports", Some(2), json!({"selector": {"matchLabels": {"app": "x"}}, "portLevelMtls": {"9000": {"mode": "DISABLE"}}}))
        .pa("b", "ns", Some(3), json!({"mtls": {"mode": "PERMISSIVE"}}))
        .dr("a", "svc-a", Some(4), json!({"host": "svc", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}))
        .dr("b", "wild", Some(5), json!({"host": "*.b.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}))
        .dr(ROOT, "root", Some(6), json!({"host": "*.cluster.local", "exportTo": ["c"], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}))
}

#[test]
fn resolve_all_agrees_with_single_lookups() {
    let mesh = sample_mesh();
    let workloads = mesh.input.workloads.clone();
    let engine = mesh.engine();
    let all = engine.resolve_all();
    assert_eq!(all.inbound.len(), workloads.len());
    for (entry, workload) in all.inbound.iter().zip(&workloads) {
        assert_eq!(&*entry.namespace, workload.namespace);
        assert_eq!(&*entry.workload, workload.name);
        assert_eq!(
            *entry.decision,
            engine.inbound(&workload.namespace, &workload.labels),
            "{}",
            workload.name
        );
    }
    // 3 client namespaces (a, b, c) x 4 service ports.
    assert_eq!(all.outbound.len(), 12);
    let namespaces: Vec<&str> = all.outbound.iter().map(|e| &*e.client_namespace).collect();
    assert_eq!(
        namespaces,
        ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c", "c", "c"]
    );
    for entry in &all.outbound {
        let client = Client {
            namespace: entry.client_namespace.to_string(),
            labels: BTreeMap::new(),
        };
        let host = format!(
            "{}.{}.svc.cluster.local",
            entry.service, entry.service_namespace
        );
        let single = engine.outbound(&client, &host, entry.port, None);
        assert_eq!(
            *entry.decision, single,
            "{} -> {host}:{}",
            entry.client_namespace, entry.port
        );
    }
    let find = |client: &str, ns: &str, svc: &str, port: u16| {
        all.outbound
            .iter()
            .find(|e| {
                &*e.client_namespace == client
                    && &*e.service_namespace == ns
                    && &*e.service == svc
                    && e.port == port
            })
            .map(|e| e.decision.clone())
    };
    let mode = |d: Option<Arc<OutboundDecision>>| {
        d.and_then(|d| d.tls.as_ref().map(|t| t.effective_mode()))
    };
    use crate::api::TlsMode::*;
    assert_eq!(mode(find("a", "a", "svc", 80)), Some(Simple));
    assert_eq!(mode(find("b", "a", "svc", 80)), None);
    assert_eq!(mode(find("c", "a", "svc", 80)), Some(Disable));
    assert_eq!(mode(find("a", "b", "svc", 80)), Some(IstioMutual));
    // Identical lookups share one decision.
    let (from_a, from_c) = (find("a", "b", "svc", 80), find("c", "b", "svc", 80));
    assert!(from_a.zip(from_c).is_some_and(|(x, y)| Arc::ptr_eq(&x, &y)));
    // Auto mTLS with the named target port: x1's `alt` is 9000, disabled by its port entry.
    let alt = find("b", "a", "svc", 8080)
        .map(|d| d.endpoints.clone())
        .unwrap_or_default();
    assert_eq!(alt.len(), 1);
    assert!(!alt[0].mtls, "{:?}", alt[0]);
    let plain = find("b", "a", "svc", 80)
        .map(|d| d.endpoints.clone())
        .unwrap_or_default();
    assert!(plain[0].mtls, "{:?}", plain[0]);
}

#[test]
fn empty_input_resolves_to_nothing() {
    let engine = PolicyEngine::new(MeshInput::default());
    let all = engine.resolve_all();
    assert!(all.inbound.is_empty() && all.outbound.is_empty());
    assert!(engine.diagnostics().is_empty());
    assert_eq!(engine.config(), &MeshConfig::default());
}

#[test]
fn engine_and_resolution_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<PolicyEngine>();
    shareable::<MeshResolution>();
    let engine = Arc::new(sample_mesh().engine());
    let worker = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.resolve_all())
    };
    let here = engine.resolve_all();
    let there = worker.join().expect("worker thread");
    assert_eq!(here, there);
}
