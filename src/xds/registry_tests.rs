//! The registry: claims, targeted pushes, closing, no growth.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use super::{Registry, check_claim};
use crate::ca::{Identity, TrustBundle};
use crate::controller::inventory::{Inventory, ObjectKey};
use crate::policy::{MeshConfig, TargetPort};
use crate::xds::view::fixture::{Mesh, endpoint, inbound, workloads};
use crate::xds::views::{ProxyClaim, ViewError, ViewRegistry};

/// Three meshed pods: a/one and a/two (app=one, app=two), b/server behind Service b/server.
fn mesh() -> Mesh {
    Mesh::new()
        .pod(
            "a",
            "one",
            "sa-one",
            &[("app", "one")],
            "10.1.0.1",
            &[],
            true,
        )
        .pod(
            "a",
            "two",
            "sa-two",
            &[("app", "two")],
            "10.1.0.2",
            &[],
            true,
        )
        .pod(
            "b",
            "server",
            "",
            &[("app", "server")],
            "10.1.0.3",
            &[(None, 8080)],
            true,
        )
        .service(
            "b",
            "server",
            "server",
            "10.96.1.1",
            &[(None, 80, TargetPort::Number(8080))],
        )
}

fn claim(ns: &str, pod: &str, account: &str, ip: Option<&str>) -> ProxyClaim {
    ProxyClaim {
        pod: ObjectKey::new(ns, pod),
        instance_ip: ip.map(|s| s.parse::<IpAddr>().expect("ip")),
        identity: Identity::new(ns, account).expect("identity"),
    }
}

fn bundle() -> TrustBundle {
    let (_, cert_pem) =
        crate::ca::authority::generate_root(std::time::SystemTime::now()).expect("root");
    TrustBundle::from_pem(cert_pem.as_bytes()).expect("bundle")
}

#[test]
fn claims_are_checked() {
    let mut m = mesh();
    let key = ObjectKey::new("a", "two");
    let mut two = (*m.inventory.pods[&key]).clone();
    two.active = false;
    m.inventory.pods.insert(key, Arc::new(two));
    let inventory = m.build();
    let cases: Vec<(&str, ProxyClaim, Result<(), ViewError>)> = vec![
        (
            "good",
            claim("a", "one", "sa-one", Some("10.1.0.1")),
            Ok(()),
        ),
        (
            "no address claimed",
            claim("a", "one", "sa-one", None),
            Ok(()),
        ),
        (
            "empty service account is default",
            claim("b", "server", "default", None),
            Ok(()),
        ),
        (
            "unknown pod",
            claim("a", "three", "sa-one", None),
            Err(ViewError::UnknownPod(ObjectKey::new("a", "three"))),
        ),
        (
            "terminated pod",
            claim("a", "two", "sa-two", None),
            Err(ViewError::UnknownPod(ObjectKey::new("a", "two"))),
        ),
        (
            "another service account",
            claim("a", "one", "sa-two", None),
            Err(ViewError::WrongIdentity {
                pod: ObjectKey::new("a", "one"),
                actual: "a/sa-one".into(),
                claimed: "a/sa-two".into(),
            }),
        ),
        (
            "another namespace's certificate",
            ProxyClaim {
                pod: ObjectKey::new("a", "one"),
                instance_ip: None,
                identity: Identity::new("b", "sa-one").expect("identity"),
            },
            Err(ViewError::WrongIdentity {
                pod: ObjectKey::new("a", "one"),
                actual: "a/sa-one".into(),
                claimed: "b/sa-one".into(),
            }),
        ),
        (
            "another pod's address",
            claim("a", "one", "sa-one", Some("10.1.0.3")),
            Err(ViewError::WrongAddress {
                pod: ObjectKey::new("a", "one"),
                ip: "10.1.0.3".parse().expect("ip"),
            }),
        ),
    ];
    for (name, c, want) in cases {
        assert_eq!(check_claim(&inventory, &c), want, "{name}");
    }
}

fn start(
    inventory: Arc<Inventory>,
) -> (
    Registry,
    watch::Sender<Arc<Inventory>>,
    watch::Sender<TrustBundle>,
) {
    let (inv_tx, inv_rx) = watch::channel(inventory);
    let (bundle_tx, bundle_rx) = watch::channel(bundle());
    let registry = Registry::start(inv_rx, bundle_rx, MeshConfig::default());
    (registry, inv_tx, bundle_tx)
}

/// Waits (with a deadline, not a sleep) for the next value.
async fn next<T>(rx: &mut watch::Receiver<T>) -> Result<(), watch::error::RecvError> {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("no update within the deadline")
}

#[tokio::test]
async fn subscribe_refuses_bad_claims() {
    let (registry, _inv, _bundle) = start(mesh().build());
    let err = registry
        .subscribe(&claim("a", "one", "sa-two", None))
        .expect_err("wrong identity");
    assert!(matches!(err, ViewError::WrongIdentity { .. }));
    let err = registry
        .subscribe(&claim("a", "nope", "sa-one", None))
        .expect_err("unknown pod");
    assert_eq!(err, ViewError::UnknownPod(ObjectKey::new("a", "nope")));
    assert_eq!(registry.subscribers(), 0);
    let rx = registry
        .subscribe(&claim("a", "one", "sa-one", Some("10.1.0.1")))
        .expect("good claim");
    assert_eq!(
        inbound(&rx.borrow()).spiffe_id,
        "spiffe://cluster.local/ns/a/sa/sa-one"
    );
}

#[tokio::test]
async fn a_peer_authentication_change_reaches_exactly_the_affected() {
    let (registry, inv, _bundle) = start(mesh().build());
    let mut one = registry
        .subscribe(&claim("a", "one", "sa-one", None))
        .expect("one");
    let mut two = registry
        .subscribe(&claim("a", "two", "sa-two", None))
        .expect("two");
    let mut server = registry
        .subscribe(&claim("b", "server", "default", None))
        .expect("server");
    one.mark_unchanged();
    two.mark_unchanged();
    server.mark_unchanged();

    // STRICT for app=one only: a/one's inbound changes; nobody else's view does (clients
    // see no difference between PERMISSIVE and STRICT).
    inv.send_replace(
        mesh()
            .pa(
                "a",
                "one-strict",
                json!({"selector": {"matchLabels": {"app": "one"}}, "mtls": {"mode": "STRICT"}}),
            )
            .build(),
    );
    next(&mut one).await.expect("open");
    assert_eq!(inbound(&one.borrow_and_update()).default_mode, 3, "STRICT");
    // The publication that woke `one` has finished once the registry's lock is free.
    assert_eq!(registry.subscribers(), 3);
    assert!(!two.has_changed().expect("open"), "a/two saw nothing");
    assert!(!server.has_changed().expect("open"), "b/server saw nothing");
}

#[tokio::test]
async fn a_disable_flip_reaches_clients() {
    let (registry, inv, _bundle) = start(mesh().build());
    let mut one = registry
        .subscribe(&claim("a", "one", "sa-one", None))
        .expect("one");
    one.mark_unchanged();
    let before = one.borrow().clone();
    inv.send_replace(
        mesh()
            .pa(
                "b",
                "server-off",
                json!({"selector": {"matchLabels": {"app": "server"}}, "mtls": {"mode": "DISABLE"}}),
            )
            .build(),
    );
    next(&mut one).await.expect("open");
    let after = one.borrow_and_update().clone();
    assert!(
        Arc::ptr_eq(&before.inbound, &after.inbound),
        "own inbound unchanged"
    );
    assert!(workloads(&after)["b/server"].plaintext_by_default);
    let fqdn = "server.b.svc.cluster.local";
    let tls = endpoint(&after, fqdn, 80, "10.1.0.3").and_then(|e| e.tls);
    assert_eq!(tls.map(|t| t.decided_by), Some("auto mTLS".to_string()));
    let mode = endpoint(&after, fqdn, 80, "10.1.0.3")
        .and_then(|e| e.tls)
        .map(|t| t.mode);
    assert_eq!(
        mode,
        Some(crate::xds::proto::palisade_v1::client_tls::Mode::Plaintext as i32)
    );
}

#[tokio::test]
async fn deleting_the_pod_closes_its_channel_only() {
    let (registry, inv, _bundle) = start(mesh().build());
    let mut one = registry
        .subscribe(&claim("a", "one", "sa-one", None))
        .expect("one");
    let mut two = registry
        .subscribe(&claim("a", "two", "sa-two", None))
        .expect("two");
    two.mark_unchanged();
    let mut m = mesh();
    m.inventory.pods.remove(&ObjectKey::new("a", "one"));
    inv.send_replace(m.build());
    assert!(next(&mut one).await.is_err(), "a/one's channel closed");
    // a/two's Workloads changed (a/one is gone), and its channel stays open.
    next(&mut two).await.expect("a/two still served");
    assert!(!workloads(&two.borrow()).contains_key("a/one"));
    assert_eq!(registry.subscribers(), 1);
}

#[tokio::test]
async fn a_service_account_change_closes_the_channel() {
    let (registry, inv, _bundle) = start(mesh().build());
    let mut one = registry
        .subscribe(&claim("a", "one", "sa-one", None))
        .expect("one");
    let mut m = mesh();
    let key = ObjectKey::new("a", "one");
    let mut pod = (*m.inventory.pods[&key]).clone();
    pod.workload.service_account = "other".into();
    m.inventory.pods.insert(key, Arc::new(pod));
    inv.send_replace(m.build());
    assert!(next(&mut one).await.is_err());
}

#[tokio::test]
async fn a_bundle_change_reaches_everyone() {
    let (registry, _inv, bundles) = start(mesh().build());
    let mut one = registry
        .subscribe(&claim("a", "one", "sa-one", None))
        .expect("one");
    let mut server = registry
        .subscribe(&claim("b", "server", "default", None))
        .expect("server");
    let old = one.borrow_and_update().trust_bundle.version.clone();
    server.mark_unchanged();
    bundles.send_replace(bundle());
    next(&mut one).await.expect("open");
    next(&mut server).await.expect("open");
    assert_ne!(one.borrow().trust_bundle.version, old);
}

#[tokio::test]
async fn dropped_receivers_are_forgotten() {
    let (registry, inv, _bundle) = start(mesh().build());
    let mut keep = registry
        .subscribe(&claim("a", "two", "sa-two", None))
        .expect("two");
    keep.mark_unchanged();
    // A proxy that reconnects many times: its list never grows past the live stream.
    for _ in 0..100 {
        let rx = registry
            .subscribe(&claim("a", "one", "sa-one", None))
            .expect("one");
        drop(rx);
    }
    assert_eq!(registry.subscribers(), 2);
    // The next publication drops the dead one.
    let mut m = mesh();
    m.inventory.pods.remove(&ObjectKey::new("b", "server"));
    inv.send_replace(m.build());
    next(&mut keep).await.expect("open");
    assert_eq!(registry.subscribers(), 1);
}
