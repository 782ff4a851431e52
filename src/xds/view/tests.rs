//! Table tests of what a proxy sees, over small inventories; sharing and reuse.

use std::sync::Arc;

use serde_json::{Value, json};

use super::MeshViews;
use super::fixture::{Mesh, destinations, endpoint, inbound, workloads};
use crate::ca::TrustBundle;
use crate::controller::inventory::{Inventory, ObjectKey};
use crate::policy::{MeshConfig, TargetPort};
use crate::xds::proto::palisade_v1 as pb;
use crate::xds::views::ProxyView;

const API: &str = "api.backend.svc.cluster.local";
const DB: &str = "db.backend.svc.cluster.local";
const EXT: &str = "ext.backend.svc.cluster.local";
const OLD: &str = "old.legacy.svc.cluster.local";
const API_ID: &str = "spiffe://cluster.local/ns/backend/sa/api";

/// shop: two clients (one a canary); backend: api (named target port), db, ext (unmeshed);
/// legacy: old (unmeshed, default service account).
fn base() -> Mesh {
    Mesh::new()
        .pod(
            "shop",
            "web-1",
            "web",
            &[("app", "web")],
            "10.0.0.1",
            &[],
            true,
        )
        .pod(
            "shop",
            "canary-1",
            "web",
            &[("app", "web"), ("track", "canary")],
            "10.0.0.2",
            &[],
            true,
        )
        .pod(
            "backend",
            "api-1",
            "api",
            &[("app", "api")],
            "10.0.1.1",
            &[(Some("http"), 8080), (Some("metrics"), 9090)],
            true,
        )
        .pod(
            "backend",
            "db-1",
            "db",
            &[("app", "db")],
            "10.0.1.2",
            &[(None, 5432)],
            true,
        )
        .pod(
            "backend",
            "ext-1",
            "ext",
            &[("app", "ext")],
            "10.0.1.3",
            &[(None, 443)],
            false,
        )
        .pod(
            "legacy",
            "old-1",
            "",
            &[("app", "old")],
            "10.0.2.1",
            &[(None, 8080)],
            false,
        )
        .service(
            "backend",
            "api",
            "api",
            "10.96.0.10",
            &[
                (Some("http"), 80, TargetPort::Name("http".into())),
                (Some("metrics"), 9090, TargetPort::Number(9090)),
            ],
        )
        .service(
            "backend",
            "db",
            "db",
            "10.96.0.11",
            &[(None, 5432, TargetPort::Number(5432))],
        )
        .service(
            "backend",
            "ext",
            "ext",
            "10.96.0.12",
            &[(Some("https"), 443, TargetPort::Number(443))],
        )
        .service(
            "legacy",
            "old",
            "old",
            "10.96.0.13",
            &[(None, 80, TargetPort::Number(8080))],
        )
}

pub(super) fn bundle() -> TrustBundle {
    let (_, cert_pem) =
        crate::ca::authority::generate_root(std::time::SystemTime::now()).expect("root");
    TrustBundle::from_pem(cert_pem.as_bytes()).expect("bundle")
}

fn compute(inventory: Arc<Inventory>) -> MeshViews {
    MeshViews::compute(inventory, &bundle(), &MeshConfig::default(), None)
}

pub(super) fn view<'v>(views: &'v MeshViews, pod: &str) -> &'v Arc<ProxyView> {
    let (ns, name) = pod.split_once('/').expect("ns/name");
    views.view(&ObjectKey::new(ns, name)).expect("view of pod")
}

type PolicyRow = (&'static str, &'static str, &'static str, Value);

pub(super) fn with(policies: &[PolicyRow]) -> Arc<Inventory> {
    let mut mesh = base();
    for (kind, ns, name, spec) in policies {
        mesh = match *kind {
            "pa" => mesh.pa(ns, name, spec.clone()),
            "ap" => mesh.ap(ns, name, spec.clone()),
            _ => mesh.dr(ns, name, spec.clone()),
        };
    }
    mesh.build()
}

struct TlsCase {
    name: &'static str,
    policies: Vec<PolicyRow>,
    client: &'static str,
    fqdn: &'static str,
    port: u32,
    endpoint: &'static str,
    /// (mode, expected identities, sni, decided_by)
    want: (
        pb::client_tls::Mode,
        Vec<&'static str>,
        &'static str,
        &'static str,
    ),
    /// The target port on the endpoint.
    want_port: u32,
}

#[test]
fn client_tls_per_endpoint() {
    use pb::client_tls::Mode::*;
    let api_sans = json!({"host": "api", "trafficPolicy": {"tls": {
        "mode": "ISTIO_MUTUAL", "subjectAltNames": ["spiffe://cluster.local/ns/backend/sa/pinned"]}}});
    let cases = vec![
        TlsCase {
            name: "auto mTLS to a meshed endpoint, named target port",
            policies: vec![],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (MeshMtls, vec![API_ID], "", "auto mTLS"),
            want_port: 8080,
        },
        TlsCase {
            name: "auto mTLS to an endpoint whose port is DISABLE",
            policies: vec![(
                "pa",
                "backend",
                "db",
                json!({"selector": {"matchLabels": {"app": "db"}},
                       "mtls": {"mode": "STRICT"}, "portLevelMtls": {"5432": {"mode": "DISABLE"}}}),
            )],
            client: "shop/web-1",
            fqdn: DB,
            port: 5432,
            endpoint: "10.0.1.2",
            want: (Plaintext, vec![], "", "auto mTLS"),
            want_port: 5432,
        },
        TlsCase {
            name: "auto mTLS to a meshed STRICT endpoint",
            policies: vec![("pa", "backend", "all", json!({"mtls": {"mode": "STRICT"}}))],
            client: "shop/web-1",
            fqdn: DB,
            port: 5432,
            endpoint: "10.0.1.2",
            want: (
                MeshMtls,
                vec!["spiffe://cluster.local/ns/backend/sa/db"],
                "",
                "auto mTLS",
            ),
            want_port: 5432,
        },
        TlsCase {
            name: "auto mTLS to an unmeshed endpoint",
            policies: vec![],
            client: "shop/web-1",
            fqdn: OLD,
            port: 80,
            endpoint: "10.0.2.1",
            want: (Plaintext, vec![], "", "auto mTLS"),
            want_port: 8080,
        },
        TlsCase {
            name: "DestinationRule ISTIO_MUTUAL with subjectAltNames",
            policies: vec![("dr", "backend", "api", api_sans.clone())],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (
                MeshMtls,
                vec!["spiffe://cluster.local/ns/backend/sa/pinned"],
                "",
                "DestinationRule backend/api",
            ),
            want_port: 8080,
        },
        TlsCase {
            name: "DestinationRule ISTIO_MUTUAL without subjectAltNames: secure naming",
            policies: vec![(
                "dr",
                "backend",
                "api",
                json!({"host": "api", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}),
            )],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (MeshMtls, vec![API_ID], "", "DestinationRule backend/api"),
            want_port: 8080,
        },
        TlsCase {
            name: "DestinationRule DISABLE to a meshed endpoint",
            policies: vec![(
                "dr",
                "backend",
                "api",
                json!({"host": API, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (Plaintext, vec![], "", "DestinationRule backend/api"),
            want_port: 8080,
        },
        TlsCase {
            name: "DestinationRule SIMPLE with sni",
            policies: vec![(
                "dr",
                "backend",
                "ext",
                json!({"host": "ext", "trafficPolicy": {"tls": {"mode": "SIMPLE",
                    "sni": "ext.example.com", "subjectAltNames": ["ext.example.com"]}}}),
            )],
            client: "shop/web-1",
            fqdn: EXT,
            port: 443,
            endpoint: "10.0.1.3",
            want: (
                Simple,
                vec!["ext.example.com"],
                "ext.example.com",
                "DestinationRule backend/ext",
            ),
            want_port: 443,
        },
        TlsCase {
            name: "DestinationRule SIMPLE without sni sends the FQDN",
            policies: vec![(
                "dr",
                "backend",
                "ext",
                json!({"host": "ext", "trafficPolicy": {"tls": {"mode": "SIMPLE"}}}),
            )],
            client: "shop/web-1",
            fqdn: EXT,
            port: 443,
            endpoint: "10.0.1.3",
            want: (Simple, vec![], EXT, "DestinationRule backend/ext"),
            want_port: 443,
        },
        TlsCase {
            name: "port-level settings replace the top level for their port",
            policies: vec![(
                "dr",
                "backend",
                "api",
                json!({"host": "api", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                    "portLevelSettings": [{"port": {"number": 9090}, "tls": {"mode": "DISABLE"}}]}}),
            )],
            client: "shop/web-1",
            fqdn: API,
            port: 9090,
            endpoint: "10.0.1.1",
            want: (Plaintext, vec![], "", "DestinationRule backend/api"),
            want_port: 9090,
        },
        TlsCase {
            name: "exportTo '.' hides the rule from other namespaces",
            policies: vec![(
                "dr",
                "backend",
                "api",
                json!({"host": "api", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (MeshMtls, vec![API_ID], "", "auto mTLS"),
            want_port: 8080,
        },
        TlsCase {
            name: "exportTo '.' still applies in its own namespace",
            policies: vec![(
                "dr",
                "backend",
                "api",
                json!({"host": "api", "exportTo": ["."], "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            client: "backend/db-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (Plaintext, vec![], "", "DestinationRule backend/api"),
            want_port: 8080,
        },
        TlsCase {
            name: "a workloadSelector rule applies to the client it selects",
            policies: vec![(
                "dr",
                "shop",
                "canary",
                json!({"host": API, "workloadSelector": {"matchLabels": {"track": "canary"}},
                       "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            client: "shop/canary-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (Plaintext, vec![], "", "DestinationRule shop/canary"),
            want_port: 8080,
        },
        TlsCase {
            name: "a workloadSelector rule leaves the other clients alone",
            policies: vec![(
                "dr",
                "shop",
                "canary",
                json!({"host": API, "workloadSelector": {"matchLabels": {"track": "canary"}},
                       "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            client: "shop/web-1",
            fqdn: API,
            port: 80,
            endpoint: "10.0.1.1",
            want: (MeshMtls, vec![API_ID], "", "auto mTLS"),
            want_port: 8080,
        },
    ];
    for case in cases {
        let views = compute(with(&case.policies));
        let got = endpoint(
            view(&views, case.client),
            case.fqdn,
            case.port,
            case.endpoint,
        )
        .unwrap_or_else(|| panic!("{}: endpoint missing", case.name));
        let tls = got.tls.clone().expect("tls");
        let (mode, identities, sni, decided_by) = &case.want;
        assert_eq!(tls.mode, *mode as i32, "{}: mode", case.name);
        assert_eq!(
            tls.expected_identities, *identities,
            "{}: identities",
            case.name
        );
        assert_eq!(tls.sni, *sni, "{}: sni", case.name);
        assert_eq!(tls.decided_by, *decided_by, "{}: decided_by", case.name);
        assert_eq!(got.port, case.want_port, "{}: target port", case.name);
    }
}

#[test]
fn endpoints_say_meshed_and_identity() {
    let views = compute(base().build());
    let web = view(&views, "shop/web-1");
    let api = endpoint(web, API, 80, "10.0.1.1").expect("api endpoint");
    assert!(api.meshed);
    assert_eq!(api.identity, API_ID);
    let old = endpoint(web, OLD, 80, "10.0.2.1").expect("old endpoint");
    assert!(!old.meshed);
    assert_eq!(old.identity, "spiffe://cluster.local/ns/legacy/sa/default");
    let all = destinations(web);
    let d = &all[API];
    assert_eq!(
        (d.namespace.as_str(), d.name.as_str(), d.vips.clone()),
        ("backend", "api", vec!["10.96.0.10".to_string()])
    );
    let ports: Vec<(u32, &str)> = d.ports.iter().map(|p| (p.port, p.name.as_str())).collect();
    assert_eq!(ports, vec![(80, "http"), (9090, "metrics")]);
    assert_eq!(destinations(web).len(), 4, "every Service is a destination");
}

#[test]
fn named_target_port_missing_on_a_pod_leaves_it_out_of_that_port() {
    // api-2 has no port named "http": it is an endpoint of 9090 only.
    let inventory = base()
        .pod(
            "backend",
            "api-2",
            "api",
            &[("app", "api")],
            "10.0.1.9",
            &[(Some("metrics"), 9090)],
            true,
        )
        .build();
    let views = compute(inventory);
    let web = view(&views, "shop/web-1");
    assert!(endpoint(web, API, 80, "10.0.1.9").is_none());
    assert_eq!(
        endpoint(web, API, 9090, "10.0.1.9").map(|e| e.port),
        Some(9090)
    );
}

struct InboundCase {
    name: &'static str,
    policies: Vec<PolicyRow>,
    pod: &'static str,
    want_default: pb::MtlsMode,
    want_ports: Vec<(u32, pb::MtlsMode)>,
    want_decided_by: Vec<&'static str>,
    /// The pod's Workload as clients see it: (plaintext_by_default, exception ports).
    want_workload: (bool, Vec<u32>),
}

#[test]
fn inbound_policy_and_workload() {
    use pb::MtlsMode::*;
    let mesh_strict = (
        "pa",
        "palisade-system",
        "default",
        json!({"mtls": {"mode": "STRICT"}}),
    );
    let cases = vec![
        InboundCase {
            name: "no policy: PERMISSIVE",
            policies: vec![],
            pod: "backend/api-1",
            want_default: Permissive,
            want_ports: vec![],
            want_decided_by: vec![],
            want_workload: (false, vec![]),
        },
        InboundCase {
            name: "mesh-wide STRICT",
            policies: vec![mesh_strict.clone()],
            pod: "backend/api-1",
            want_default: Strict,
            want_ports: vec![],
            want_decided_by: vec!["PeerAuthentication palisade-system/default (mesh)"],
            want_workload: (false, vec![]),
        },
        InboundCase {
            name: "namespace PERMISSIVE over mesh STRICT",
            policies: vec![
                mesh_strict.clone(),
                (
                    "pa",
                    "backend",
                    "ns",
                    json!({"mtls": {"mode": "PERMISSIVE"}}),
                ),
            ],
            pod: "backend/api-1",
            want_default: Permissive,
            want_ports: vec![],
            want_decided_by: vec![
                "PeerAuthentication palisade-system/default (mesh)",
                "PeerAuthentication backend/ns (namespace)",
            ],
            want_workload: (false, vec![]),
        },
        InboundCase {
            name: "workload DISABLE with a STRICT port",
            policies: vec![(
                "pa",
                "backend",
                "api",
                json!({"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "DISABLE"},
                       "portLevelMtls": {"8080": {"mode": "STRICT"}}}),
            )],
            pod: "backend/api-1",
            want_default: Disable,
            want_ports: vec![(8080, Strict)],
            want_decided_by: vec![
                "PeerAuthentication backend/api (workload)",
                "PeerAuthentication backend/api (port)",
            ],
            want_workload: (true, vec![8080]),
        },
        InboundCase {
            name: "STRICT with a PERMISSIVE port: no exception for clients",
            policies: vec![(
                "pa",
                "backend",
                "api",
                json!({"selector": {"matchLabels": {"app": "api"}}, "mtls": {"mode": "STRICT"},
                       "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}}),
            )],
            pod: "backend/api-1",
            want_default: Strict,
            want_ports: vec![(9090, Permissive)],
            want_decided_by: vec![
                "PeerAuthentication backend/api (workload)",
                "PeerAuthentication backend/api (port)",
            ],
            want_workload: (false, vec![]),
        },
    ];
    for case in cases {
        let views = compute(with(&case.policies));
        let v = view(&views, case.pod);
        let got = inbound(v);
        assert_eq!(got.default_mode, case.want_default as i32, "{}", case.name);
        let ports: Vec<(u32, i32)> = got.port_modes.iter().map(|(&p, &m)| (p, m)).collect();
        let want: Vec<(u32, i32)> = case
            .want_ports
            .iter()
            .map(|&(p, m)| (p, m as i32))
            .collect();
        assert_eq!(ports, want, "{}: ports", case.name);
        assert_eq!(
            got.decided_by, case.want_decided_by,
            "{}: decided_by",
            case.name
        );
        assert_eq!(got.spiffe_id, API_ID, "{}", case.name);
        let all = workloads(v);
        let w = &all[case.pod];
        assert_eq!(
            (w.plaintext_by_default, w.exception_ports.clone()),
            case.want_workload,
            "{}: workload",
            case.name
        );
    }
}

#[test]
fn workloads_are_the_meshed_pods_with_addresses() {
    let views = compute(base().build());
    let all = workloads(view(&views, "shop/web-1"));
    let names: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "backend/api-1",
            "backend/db-1",
            "shop/canary-1",
            "shop/web-1"
        ]
    );
    let api = &all["backend/api-1"];
    assert_eq!(api.ips, vec!["10.0.1.1".to_string()]);
    assert_eq!(api.identity, API_ID);
}

#[test]
fn trust_bundle_is_every_root() {
    let views = compute(base().build());
    let v = view(&views, "shop/web-1");
    assert_eq!(v.trust_bundle.resources.len(), 1);
    use prost::Message;
    let tb = pb::TrustBundle::decode(v.trust_bundle.resources[0].value.as_slice()).expect("tb");
    assert_eq!(tb.roots_pem.len(), 1);
    assert!(tb.roots_pem[0].starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn shared_pieces_are_one_arc() {
    let views = compute(base().build());
    let web = view(&views, "shop/web-1");
    let api = view(&views, "backend/api-1");
    let canary = view(&views, "shop/canary-1");
    // No DestinationRule: every client class has the same content, hence one Arc.
    assert!(Arc::ptr_eq(&web.destinations, &api.destinations));
    assert!(Arc::ptr_eq(&web.destinations, &canary.destinations));
    assert!(Arc::ptr_eq(&web.workloads, &api.workloads));
    assert!(Arc::ptr_eq(&web.trust_bundle, &api.trust_bundle));
    // web-1 and canary-1 run as the same identity with the same decision.
    assert!(Arc::ptr_eq(&web.inbound, &canary.inbound));
    assert!(!Arc::ptr_eq(&web.inbound, &api.inbound));
    assert_eq!(views.distinct_destination_sets(), 1);
}

#[test]
fn a_selector_rule_makes_one_more_class() {
    let inventory = with(&[(
        "dr",
        "shop",
        "canary",
        json!({"host": API, "workloadSelector": {"matchLabels": {"track": "canary"}},
               "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
    )]);
    let views = compute(inventory);
    let web = view(&views, "shop/web-1");
    let canary = view(&views, "shop/canary-1");
    let api = view(&views, "backend/api-1");
    assert!(!Arc::ptr_eq(&web.destinations, &canary.destinations));
    assert!(Arc::ptr_eq(&web.destinations, &api.destinations));
    assert_eq!(views.distinct_destination_sets(), 2);
}

#[test]
fn equal_content_equal_version_and_reuse() {
    let config = MeshConfig::default();
    let roots = bundle();
    let first = MeshViews::compute(base().build(), &roots, &config, None);
    // A rebuilt but equal inventory: every view is the previous Arc.
    let second = MeshViews::compute(base().build(), &roots, &config, Some(&first));
    for (key, v) in &first.views {
        assert!(Arc::ptr_eq(v, &second.views[key]), "{key} view reused");
    }
    // Computed from scratch, versions agree.
    let fresh = MeshViews::compute(base().build(), &roots, &config, None);
    let (a, b) = (view(&first, "shop/web-1"), view(&fresh, "shop/web-1"));
    assert_eq!(a.destinations.version, b.destinations.version);
    assert_eq!(a.inbound.version, b.inbound.version);
    assert_eq!(a.workloads.version, b.workloads.version);
    assert_eq!(a.trust_bundle.version, b.trust_bundle.version);
    // A new bundle changes only the trust bundle.
    let rotated = MeshViews::compute(first.inventory.clone(), &bundle(), &config, Some(&first));
    let c = view(&rotated, "shop/web-1");
    assert_ne!(c.trust_bundle.version, a.trust_bundle.version);
    assert!(Arc::ptr_eq(&c.destinations, &a.destinations));
    assert!(Arc::ptr_eq(&c.inbound, &a.inbound));
}

#[test]
fn a_strict_permissive_change_rebuilds_only_inbound() {
    let config = MeshConfig::default();
    let roots = bundle();
    let strict = json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "STRICT"}});
    let permissive =
        json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "PERMISSIVE"}});
    let before = MeshViews::compute(
        with(&[("pa", "backend", "db", strict)]),
        &roots,
        &config,
        None,
    );
    let after = MeshViews::compute(
        with(&[("pa", "backend", "db", permissive)]),
        &roots,
        &config,
        Some(&before),
    );
    for (key, old) in &before.views {
        let new = &after.views[key];
        assert!(Arc::ptr_eq(&old.destinations, &new.destinations), "{key}");
        assert!(Arc::ptr_eq(&old.workloads, &new.workloads), "{key}");
        let changed = key.name == "db-1";
        assert_eq!(!Arc::ptr_eq(old, new), changed, "{key}: view changed");
    }
}

#[test]
fn a_disable_flip_changes_clients_workloads_and_destinations() {
    let config = MeshConfig::default();
    let roots = bundle();
    let before = MeshViews::compute(base().build(), &roots, &config, None);
    let disable = json!({"selector": {"matchLabels": {"app": "db"}}, "mtls": {"mode": "DISABLE"}});
    let after = MeshViews::compute(
        with(&[("pa", "backend", "db", disable)]),
        &roots,
        &config,
        Some(&before),
    );
    let (old, new) = (view(&before, "shop/web-1"), view(&after, "shop/web-1"));
    assert_ne!(old.workloads.version, new.workloads.version);
    assert_ne!(old.destinations.version, new.destinations.version);
    assert!(workloads(new)["backend/db-1"].plaintext_by_default);
    let db = endpoint(new, DB, 5432, "10.0.1.2").expect("db endpoint");
    assert_eq!(
        db.tls.map(|t| t.mode),
        Some(pb::client_tls::Mode::Plaintext as i32)
    );
    // The unchanged service keeps its resource bytes.
    assert_eq!(destinations(old)[API], destinations(new)[API]);
}

#[test]
fn inactive_and_unknown_pods_have_no_view_and_are_no_endpoint() {
    let mut mesh = base();
    let key = ObjectKey::new("backend", "db-1");
    let mut db = (*mesh.inventory.pods[&key]).clone();
    db.active = false;
    mesh.inventory.pods.insert(key.clone(), Arc::new(db));
    let mut inventory = (*mesh.clone().build()).clone();
    // The endpoint still names the pod (a slice not yet updated): left out, not plaintext.
    let endpoints = base().build().endpoints.clone();
    inventory.endpoints = endpoints;
    let views = compute(Arc::new(inventory));
    assert!(views.view(&key).is_none());
    let web = view(&views, "shop/web-1");
    assert!(endpoint(web, DB, 5432, "10.0.1.2").is_none());
}
