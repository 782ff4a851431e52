//! The directory source on real files in a temporary directory, with real notifications:
//! every wait polls with a deadline, none sleeps to prove that nothing happened (a scan that
//! found a bad file is observed through its counter).

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::controller::dir_inventory::selector_endpoints;
use crate::controller::inventory::{ObjectKey, PodRecord};
use crate::policy::{ServiceInfo, ServicePortInfo, TargetPort, Workload, WorkloadPort};

/// Generous for a loaded CI machine; a change normally shows within a few hundred ms.
const DEADLINE: Duration = Duration::from_secs(5);

/// Writes a file the way editors and `kubectl`-style tools do: a hidden temporary file (which
/// the source skips), then a rename, so a scan never sees half a file.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn pa(name: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  mtls: {{mode: {mode}}}\n"
    )
}

const WORKLOADS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: pay}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\nspec:\n  serviceAccountName: web\n  containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}]}]\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-2, namespace: shop, labels: {app: web}}\nspec:\n  containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]\nstatus: {podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.0.0.3, phase: Succeeded}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: no-ip, namespace: shop, labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: 15000}]\n";

fn start(dir: &Path) -> (DirSource, SourceMetrics) {
    let metrics = SourceMetrics::default();
    let source = DirSource::start(dir.to_path_buf(), metrics.clone()).expect("start");
    (source, metrics)
}

async fn snapshot_where(source: &DirSource, ready: impl Fn(&Inventory) -> bool) -> Arc<Inventory> {
    let mut rx = source.subscribe();
    let wait = async {
        loop {
            {
                let current = rx.borrow_and_update();
                if ready(&current) {
                    return Arc::clone(&current);
                }
            }
            rx.changed().await.expect("source alive");
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the expected snapshot within the deadline")
}

async fn synced(source: &DirSource) {
    let mut synced = source.synced();
    tokio::time::timeout(DEADLINE, synced.wait_for(|s| *s))
        .await
        .expect("synced within the deadline")
        .expect("source alive");
}

/// Polls the error counter until it reaches `want` (deadline).
async fn config_errors(metrics: &SourceMetrics, want: u64) {
    let started = std::time::Instant::now();
    while metrics.config_errors.get() < want {
        assert!(
            started.elapsed() < DEADLINE,
            "config errors: {}",
            metrics.config_errors.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.config_errors.get(), want);
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("shop", name)
}

#[tokio::test]
async fn a_new_peer_authentication_file_appears_within_a_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "workloads.yaml", WORKLOADS);
    let (source, metrics) = start(dir.path());
    synced(&source).await;
    let started = std::time::Instant::now();
    put(dir.path(), "strict.yaml", &pa("strict", "STRICT"));
    let snapshot = snapshot_where(&source, |i| !i.peer_authentications.is_empty()).await;
    eprintln!("new file applied after {:?}", started.elapsed());
    let record = &snapshot.peer_authentications[&key("strict")];
    assert_eq!(record.generation, None);
    assert_eq!(metrics.config_errors.get(), 0);
}

#[tokio::test]
async fn authorization_policy_files_are_read_and_removed_with_their_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "workloads.yaml", WORKLOADS);
    let (source, metrics) = start(dir.path());
    synced(&source).await;
    let ap = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-evil, namespace: shop}\nspec:\n  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]\n";
    put(dir.path(), "authz.yaml", ap);
    let snapshot = snapshot_where(&source, |i| !i.authorization_policies.is_empty()).await;
    let record = &snapshot.authorization_policies[&key("deny-evil")];
    assert_eq!(
        record.policy.spec.effective_action(),
        crate::api::AuthorizationAction::Deny
    );
    std::fs::remove_file(dir.path().join("authz.yaml")).expect("remove");
    snapshot_where(&source, |i| i.authorization_policies.is_empty()).await;
    assert_eq!(metrics.config_errors.get(), 0);
}

#[tokio::test]
async fn workloads_services_endpoints_and_namespaces_come_from_the_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "workloads.yaml", WORKLOADS);
    put(
        dir.path(),
        "policy.yml",
        &pa("p", "PERMISSIVE").replace("namespace: shop", "namespace: other"),
    );
    let (source, _) = start(dir.path());
    synced(&source).await;
    let s = source.subscribe().borrow().clone();
    // The pod without an address is no workload; the finished one is, inactive.
    assert_eq!(
        s.pods.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["done", "web-1", "web-2"]
    );
    assert!(!s.pods[&key("done")].active);
    assert_eq!(s.pods[&key("web-2")].ips.len(), 2);
    assert_eq!(
        s.services[&key("web")].cluster_ips,
        vec!["10.96.0.10".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert_eq!(s.namespaces["shop"].labels["team"], "pay");
    assert!(
        s.namespaces["other"].labels.is_empty(),
        "named by an object only"
    );
    // Endpoints: active pods with addresses, one per address, named target port per pod.
    let endpoints = &s.endpoints[&key("web")];
    type Ports = Vec<(Option<String>, u16)>;
    let seen: Vec<(String, Ports)> = endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.ports.clone()))
        .collect();
    let ports = |http: u16| {
        vec![
            (Some("http".to_string()), http),
            (Some("admin".to_string()), 15000),
        ]
    };
    assert_eq!(
        seen,
        vec![
            ("10.0.0.1".to_string(), ports(8080)),
            ("10.0.0.2".to_string(), ports(9090)),
            ("fd00::2".to_string(), ports(9090)),
        ]
    );
    assert_eq!(endpoints[0].pod, Some(key("web-1")));
}

#[tokio::test]
async fn editing_a_file_changes_only_the_records_it_touches() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    put(
        dir.path(),
        "b.yaml",
        &format!("{}---\n{WORKLOADS}", pa("b", "PERMISSIVE")),
    );
    let (source, _) = start(dir.path());
    synced(&source).await;
    let before = source.subscribe().borrow().clone();
    put(dir.path(), "a.yaml", &pa("a", "DISABLE"));
    let after = snapshot_where(&source, |i| {
        i.peer_authentications[&key("a")]
            .policy
            .spec
            .mtls
            .as_ref()
            .and_then(|m| m.mode)
            == Some(crate::api::MtlsMode::Disable)
    })
    .await;
    assert!(Arc::ptr_eq(
        &before.peer_authentications[&key("b")],
        &after.peer_authentications[&key("b")]
    ));
    for (k, pod) in &before.pods {
        assert!(Arc::ptr_eq(pod, &after.pods[k]), "{k}");
    }
    assert!(Arc::ptr_eq(
        &before.services[&key("web")],
        &after.services[&key("web")]
    ));
    assert!(Arc::ptr_eq(
        &before.endpoints[&key("web")],
        &after.endpoints[&key("web")]
    ));
    assert!(Arc::ptr_eq(
        &before.namespaces["shop"],
        &after.namespaces["shop"]
    ));
    // The edited policy keeps its age.
    assert_eq!(
        before.peer_authentications[&key("a")].policy.meta.seq,
        after.peer_authentications[&key("a")].policy.meta.seq
    );
}

#[tokio::test]
async fn a_malformed_file_keeps_the_last_good_snapshot_and_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    let (source, metrics) = start(dir.path());
    synced(&source).await;
    let good = source.subscribe().borrow().clone();
    put(dir.path(), "a.yaml", &pa("a", "STRICTLY"));
    config_errors(&metrics, 1).await;
    let now = source.subscribe().borrow().clone();
    assert!(Arc::ptr_eq(&good, &now), "the last good snapshot stays");
    // Fixing it applies; the bad version counted once.
    put(dir.path(), "a.yaml", &pa("a", "PERMISSIVE"));
    snapshot_where(&source, |i| {
        i.peer_authentications[&key("a")]
            .policy
            .spec
            .mtls
            .as_ref()
            .and_then(|m| m.mode)
            == Some(crate::api::MtlsMode::Permissive)
    })
    .await;
    assert_eq!(metrics.config_errors.get(), 1);
}

#[tokio::test]
async fn a_malformed_file_at_start_holds_readiness_until_it_parses() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    put(
        dir.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 300.1.1.1}\n",
    );
    let (source, metrics) = start(dir.path());
    config_errors(&metrics, 1).await;
    assert!(!*source.synced().borrow());
    assert!(!source.subscribe().has_changed().expect("alive"));
    assert!(source.subscribe().borrow().peer_authentications.is_empty());
    put(
        dir.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: c, image: i}]}\nstatus: {podIP: 10.1.1.1}\n",
    );
    synced(&source).await;
    let s = snapshot_where(&source, |i| !i.peer_authentications.is_empty()).await;
    assert_eq!(s.pods.len(), 1);
}

#[tokio::test]
async fn deleting_a_file_removes_its_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    put(dir.path(), "workloads.yaml", WORKLOADS);
    let (source, _) = start(dir.path());
    synced(&source).await;
    std::fs::remove_file(dir.path().join("workloads.yaml")).expect("remove");
    let s = snapshot_where(&source, |i| i.pods.is_empty()).await;
    assert!(s.services.is_empty() && s.endpoints.is_empty());
    assert_eq!(s.peer_authentications.len(), 1);
    assert!(
        s.namespaces["shop"].labels.is_empty(),
        "only implied by the policy now"
    );
}

#[tokio::test]
async fn injection_yaml_is_not_a_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(
        dir.path(),
        "injection.yaml",
        "image: example/palisade:1\nlogLevel: debug\n",
    );
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    let (source, metrics) = start(dir.path());
    synced(&source).await;
    assert_eq!(source.subscribe().borrow().peer_authentications.len(), 1);
    assert_eq!(metrics.config_errors.get(), 0);
}

#[test]
fn a_missing_directory_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let err = DirSource::start(dir.path().join("absent"), SourceMetrics::default())
        .err()
        .expect("an error");
    assert!(err.to_string().contains("absent"), "{err}");
}

fn pod(
    name: &str,
    labels: &[(&str, &str)],
    ports: &[(&str, u16)],
    ips: &[&str],
    active: bool,
) -> Arc<PodRecord> {
    Arc::new(PodRecord {
        workload: Workload {
            namespace: "shop".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".into(),
            ports: ports
                .iter()
                .map(|(n, p)| WorkloadPort {
                    name: Some(n.to_string()),
                    port: *p,
                })
                .collect(),
        },
        ips: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
        active,
    })
}

#[test]
fn selector_endpoints_table() {
    let mut pods = BTreeMap::new();
    for p in [
        pod(
            "a",
            &[("app", "web"), ("v", "1")],
            &[("http", 8080)],
            &["10.0.0.1"],
            true,
        ),
        pod(
            "b",
            &[("app", "web")],
            &[("grpc", 9000)],
            &["10.0.0.2"],
            true,
        ),
        pod(
            "c",
            &[("app", "web")],
            &[("http", 8081)],
            &["10.0.0.3"],
            false,
        ),
        pod(
            "d",
            &[("app", "db")],
            &[("http", 8082)],
            &["10.0.0.4"],
            true,
        ),
    ] {
        pods.insert(p.key(), p);
    }
    let mut elsewhere = (*pod("e", &[("app", "web")], &[], &["10.0.0.5"], true)).clone();
    elsewhere.workload.namespace = "other".into();
    pods.insert(elsewhere.key(), Arc::new(elsewhere));
    let service = |selector: &[(&str, &str)], target: TargetPort| ServiceInfo {
        namespace: "shop".into(),
        name: "web".into(),
        selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: vec![ServicePortInfo {
            name: Some("p".into()),
            port: 80,
            target_port: target,
        }],
    };
    type Want = Option<Vec<(&'static str, Vec<u16>)>>;
    let cases: Vec<(&str, ServiceInfo, Want)> = vec![
        ("no selector", service(&[], TargetPort::Number(80)), None),
        (
            "numbered port, same namespace, active only",
            service(&[("app", "web")], TargetPort::Number(8000)),
            Some(vec![("10.0.0.1", vec![8000]), ("10.0.0.2", vec![8000])]),
        ),
        (
            "named port resolved per pod; a pod without it keeps no port",
            service(&[("app", "web")], TargetPort::Name("http".into())),
            Some(vec![("10.0.0.1", vec![8080]), ("10.0.0.2", vec![])]),
        ),
        (
            "every selector label must match",
            service(&[("app", "web"), ("v", "1")], TargetPort::Number(1)),
            Some(vec![("10.0.0.1", vec![1])]),
        ),
        (
            "matches nothing",
            service(&[("app", "none")], TargetPort::Number(1)),
            Some(vec![]),
        ),
    ];
    for (name, svc, want) in cases {
        let got = selector_endpoints(&svc, &pods).map(|eps| {
            eps.iter()
                .map(|e| {
                    (
                        e.ip.to_string(),
                        e.ports.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        });
        let want = want.map(|w| {
            w.into_iter()
                .map(|(ip, p)| (ip.to_string(), p))
                .collect::<Vec<_>>()
        });
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test]
async fn a_file_too_large_is_reported_once_and_the_rest_keeps_applying() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    let (source, metrics) = start(dir.path());
    synced(&source).await;
    let big = "#".repeat(crate::api::manifest::MAX_FILE_BYTES as usize + 1);
    put(dir.path(), "big.yaml", &big);
    config_errors(&metrics, 1).await;
    // Another change re-reads the big file too: the same error is not counted again.
    put(dir.path(), "b.yaml", &pa("b", "STRICT"));
    let s = snapshot_where(&source, |i| i.peer_authentications.len() == 2).await;
    assert!(s.peer_authentications.contains_key(&key("a")));
    assert_eq!(metrics.config_errors.get(), 1);
}

#[tokio::test]
async fn without_notifications_polling_still_applies_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    put(dir.path(), "a.yaml", &pa("a", "STRICT"));
    let source = DirSource::start_with(dir.path().to_path_buf(), SourceMetrics::default(), false)
        .expect("start");
    synced(&source).await;
    put(dir.path(), "b.yaml", &pa("b", "STRICT"));
    snapshot_where(&source, |i| i.peer_authentications.len() == 2).await;
    std::fs::remove_file(dir.path().join("a.yaml")).expect("remove");
    snapshot_where(&source, |i| i.peer_authentications.len() == 1).await;
}
