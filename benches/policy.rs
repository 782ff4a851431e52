//! Policy engine benchmark: `PolicyEngine::new` and `PolicyEngine::resolve_all` over a
//! synthetic mesh of 10,000 workloads, 1,000 services and 1,000 policies in 50 namespaces.
//!
//! Run with `CARGO_TARGET_DIR=/work/target-policy cargo bench --bench policy`. Plain `main`,
//! no harness: warm up, then time each phase separately and print median and p95. As a
//! reference on the same machine in the same run, the time to clone the input (touching every
//! object once) is measured too, and the phases are reported as ratios to it.

use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::api::traffic_policy::{LoadBalancerSettings, SimpleLb};
use palisade::api::{
    ClientTlsSettings, DestinationRuleSpec, MtlsMode, MutualTls, PeerAuthenticationSpec,
    PortSelector, PortTrafficPolicy, Subset, TlsMode, TrafficPolicy, WorkloadSelector,
};
use palisade::policy::{
    Client, MeshConfig, MeshInput, OutboundDecision, Policy, PolicyEngine, PolicyMeta, ServiceInfo,
    ServicePortInfo, TLS_MODE_LABEL, TLS_MODE_PALISADE, TargetPort, Workload, WorkloadPort,
};

const NAMESPACES: usize = 50;
const SERVICES_PER_NAMESPACE: usize = 20;
const WORKLOADS_PER_NAMESPACE: usize = 200;
const WORKLOAD_POLICIES: usize = 400;
const DESTINATION_RULES: usize = 549;
const WARMUP: usize = 3;
const ITERATIONS: usize = 30;

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn selector(pairs: &[(&str, String)]) -> Option<WorkloadSelector> {
    Some(WorkloadSelector {
        match_labels: labels(pairs),
    })
}

fn mtls(mode: MtlsMode) -> Option<MutualTls> {
    Some(MutualTls { mode: Some(mode) })
}

fn tls(mode: TlsMode) -> Option<ClientTlsSettings> {
    Some(ClientTlsSettings {
        mode: Some(mode),
        ..ClientTlsSettings::default()
    })
}

struct Builder {
    seq: u64,
}

impl Builder {
    fn meta(&mut self, namespace: &str, name: String) -> PolicyMeta {
        self.seq += 1;
        // Distinct, deterministic creation times (not in input order).
        let second = 1_700_000_000 + ((self.seq * 7919) % 100_003) as i64;
        PolicyMeta {
            namespace: namespace.to_string(),
            name,
            creation_timestamp: jiff::Timestamp::from_second(second).ok(),
            seq: self.seq,
        }
    }
}

fn ns(i: usize) -> String {
    format!("ns-{i:02}")
}

/// The synthetic mesh, the same on every run.
fn synthetic_mesh() -> MeshInput {
    let config = MeshConfig::default();
    let root = config.root_namespace.clone();
    let mut b = Builder { seq: 0 };
    let mut input = MeshInput {
        config,
        inventory_complete: true,
        ..MeshInput::default()
    };

    for n in 0..NAMESPACES {
        for s in 0..SERVICES_PER_NAMESPACE {
            let mut ports = vec![ServicePortInfo {
                name: Some("http".into()),
                port: 80,
                target_port: TargetPort::Number(8080),
            }];
            if s % 2 == 0 {
                ports.push(ServicePortInfo {
                    name: Some("metrics".into()),
                    port: 9090,
                    target_port: TargetPort::Name("metrics".into()),
                });
            }
            input.services.push(ServiceInfo {
                namespace: ns(n),
                name: format!("svc-{s:02}"),
                selector: labels(&[("app", format!("svc-{s:02}"))]),
                ports,
            });
        }
        for w in 0..WORKLOADS_PER_NAMESPACE {
            let s = w % SERVICES_PER_NAMESPACE;
            let mut pod = labels(&[
                ("app", format!("svc-{s:02}")),
                ("version", format!("v{}", w % 3)),
            ]);
            if w % 10 != 9 {
                pod.insert(TLS_MODE_LABEL.into(), TLS_MODE_PALISADE.into());
            }
            input.workloads.push(Workload {
                namespace: ns(n),
                name: format!("svc-{s:02}-{w:03}"),
                labels: pod,
                service_account: format!("svc-{s:02}"),
                ports: vec![
                    WorkloadPort {
                        name: Some("http".into()),
                        port: 8080,
                    },
                    WorkloadPort {
                        name: Some("metrics".into()),
                        port: 9090,
                    },
                ],
            });
        }
    }

    // PeerAuthentications: 1 mesh-wide, 50 namespace-wide, 400 workload (some overlapping).
    let pa =
        |b: &mut Builder, namespace: &str, name: String, spec: PeerAuthenticationSpec| Policy {
            meta: b.meta(namespace, name),
            spec,
        };
    input.peer_authentications.push(pa(
        &mut b,
        &root,
        "mesh".into(),
        PeerAuthenticationSpec {
            mtls: mtls(MtlsMode::Strict),
            ..Default::default()
        },
    ));
    let ns_modes = [MtlsMode::Permissive, MtlsMode::Strict, MtlsMode::Unset];
    for n in 0..NAMESPACES {
        input.peer_authentications.push(pa(
            &mut b,
            &ns(n),
            "default".into(),
            PeerAuthenticationSpec {
                mtls: mtls(ns_modes[n % 3]),
                ..Default::default()
            },
        ));
    }
    let wl_modes = [
        MtlsMode::Strict,
        MtlsMode::Permissive,
        MtlsMode::Disable,
        MtlsMode::Unset,
    ];
    for p in 0..WORKLOAD_POLICIES {
        let n = p % NAMESPACES;
        let s = (p / NAMESPACES) % SERVICES_PER_NAMESPACE;
        let mut match_labels = vec![("app", format!("svc-{s:02}"))];
        if p % 3 == 0 {
            match_labels.push(("version", format!("v{}", p % 3)));
        }
        let mut port_level_mtls = BTreeMap::new();
        if p % 4 == 0 {
            port_level_mtls.insert(
                9090,
                MutualTls {
                    mode: Some(MtlsMode::Disable),
                },
            );
            port_level_mtls.insert(
                8080,
                MutualTls {
                    mode: Some(MtlsMode::Unset),
                },
            );
        }
        input.peer_authentications.push(pa(
            &mut b,
            &ns(n),
            format!("wl-{p:03}"),
            PeerAuthenticationSpec {
                selector: selector(&match_labels),
                mtls: mtls(wl_modes[p % 4]),
                port_level_mtls,
            },
        ));
    }

    // DestinationRules: per namespace a wildcard; root-namespace catch-alls; the rest exact
    // hosts with subsets, port-level settings, exportTo variants, workloadSelectors and
    // duplicates that merge.
    let dr = |b: &mut Builder, namespace: &str, name: String, spec: DestinationRuleSpec| Policy {
        meta: b.meta(namespace, name),
        spec,
    };
    input.destination_rules.push(dr(
        &mut b,
        &root,
        "mesh-default".into(),
        DestinationRuleSpec {
            host: "*.cluster.local".into(),
            traffic_policy: Some(TrafficPolicy {
                tls: tls(TlsMode::IstioMutual),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    input.destination_rules.push(dr(
        &mut b,
        &root,
        "external".into(),
        DestinationRuleSpec {
            host: "*".into(),
            traffic_policy: Some(TrafficPolicy {
                tls: tls(TlsMode::Simple),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    for n in 0..NAMESPACES {
        input.destination_rules.push(dr(
            &mut b,
            &ns(n),
            "wildcard".into(),
            DestinationRuleSpec {
                host: format!("*.{}.svc.cluster.local", ns(n)),
                traffic_policy: Some(TrafficPolicy {
                    tls: tls(TlsMode::IstioMutual),
                    load_balancer: Some(LoadBalancerSettings {
                        simple: Some(SimpleLb::RoundRobin),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                export_to: if n % 5 == 0 { vec![".".into()] } else { vec![] },
                ..Default::default()
            },
        ));
    }
    let remaining = DESTINATION_RULES - 2 - NAMESPACES;
    for r in 0..remaining {
        let n = r % NAMESPACES;
        let s = (r / NAMESPACES) % SERVICES_PER_NAMESPACE;
        // Some rules live in a client namespace and name another namespace's service.
        let (home, host) = if r % 7 == 0 {
            (
                ns((n + 1) % NAMESPACES),
                format!("svc-{s:02}.{}.svc.cluster.local", ns(n)),
            )
        } else {
            (ns(n), format!("svc-{s:02}"))
        };
        let subsets = (0..3)
            .map(|v| Subset {
                name: format!("v{v}"),
                labels: labels(&[("version", format!("v{v}"))]),
                traffic_policy: (v == 1).then(|| TrafficPolicy {
                    tls: tls(TlsMode::Simple),
                    ..Default::default()
                }),
            })
            .collect();
        input.destination_rules.push(dr(
            &mut b,
            &home,
            format!("dr-{r:03}"),
            DestinationRuleSpec {
                host,
                traffic_policy: Some(TrafficPolicy {
                    tls: tls(if r % 3 == 0 {
                        TlsMode::Disable
                    } else {
                        TlsMode::IstioMutual
                    }),
                    port_level_settings: vec![PortTrafficPolicy {
                        port: PortSelector { number: 9090 },
                        tls: if r % 2 == 0 {
                            None
                        } else {
                            tls(TlsMode::Simple)
                        },
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                subsets,
                export_to: match r % 4 {
                    0 => vec![".".into()],
                    1 => vec![ns((n + 2) % NAMESPACES), ".".into()],
                    _ => vec![],
                },
                workload_selector: (r % 10 == 5).then(|| WorkloadSelector {
                    match_labels: labels(&[(
                        "app",
                        format!("svc-{:02}", (s + 1) % SERVICES_PER_NAMESPACE),
                    )]),
                }),
            },
        ));
    }
    input
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, reference: Duration) -> Duration {
    samples.sort();
    let (median, p95) = (percentile(&samples, 0.5), percentile(&samples, 0.95));
    println!(
        "{name:<28} median {:>8.2} ms   p95 {:>8.2} ms   ({:.1}x input clone)",
        median.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3,
        median.as_secs_f64() / reference.as_secs_f64().max(1e-9),
    );
    median
}

fn main() {
    let input = synthetic_mesh();
    println!(
        "synthetic mesh: {} namespaces, {} workloads, {} services, {} PeerAuthentications, {} DestinationRules",
        NAMESPACES,
        input.workloads.len(),
        input.services.len(),
        input.peer_authentications.len(),
        input.destination_rules.len(),
    );
    let (mut clone, mut new, mut resolve, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut shape = (0, 0, 0, 0);
    for iteration in 0..WARMUP + ITERATIONS {
        let t0 = Instant::now();
        let copy = black_box(input.clone());
        let t1 = Instant::now();
        let engine = PolicyEngine::new(copy);
        let t2 = Instant::now();
        let resolution = black_box(engine.resolve_all());
        let t3 = Instant::now();
        let distinct: HashSet<*const OutboundDecision> = resolution
            .outbound
            .iter()
            .map(|e| Arc::as_ptr(&e.decision))
            .collect();
        shape = (
            resolution.inbound.len(),
            resolution.outbound.len(),
            distinct.len(),
            engine.diagnostics().len(),
        );
        drop(resolution);
        drop(engine);
        if iteration >= WARMUP {
            clone.push(t1 - t0);
            new.push(t2 - t1);
            resolve.push(t3 - t2);
            total.push(t3 - t1);
        }
    }
    println!(
        "resolution: {} inbound decisions, {} outbound decisions ({} distinct), {} diagnostics; {ITERATIONS} iterations after {WARMUP} warm-up",
        shape.0, shape.1, shape.2, shape.3
    );
    let mut sorted = clone.clone();
    sorted.sort();
    let reference = percentile(&sorted, 0.5);
    report("MeshInput::clone (reference)", clone, reference);
    report("PolicyEngine::new", new, reference);
    report("resolve_all", resolve, reference);
    report("new + resolve_all", total, reference);

    // Without sharing: one uncached `outbound` lookup per (client namespace, service, port),
    // the cost `resolve_all` would pay if every decision were distinct.
    let engine = PolicyEngine::new(input.clone());
    let mut namespaces: Vec<&str> = input
        .workloads
        .iter()
        .map(|w| w.namespace.as_str())
        .collect();
    namespaces.dedup();
    let mut single = Vec::new();
    let mut lookups = 0;
    for iteration in 0..WARMUP + 5 {
        let start = Instant::now();
        lookups = 0;
        for namespace in &namespaces {
            let client = Client {
                namespace: namespace.to_string(),
                labels: BTreeMap::new(),
            };
            for service in &input.services {
                let host = format!("{}.{}.svc.cluster.local", service.name, service.namespace);
                for port in &service.ports {
                    black_box(engine.outbound(&client, &host, port.port, None));
                    lookups += 1;
                }
            }
        }
        if iteration >= WARMUP {
            single.push(start.elapsed());
        }
    }
    single.sort();
    let median = percentile(&single, 0.5);
    println!(
        "{lookups} uncached outbound() lookups: median {:.2} ms in all, {:.2} us per lookup",
        median.as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e6 / lookups as f64
    );
}
