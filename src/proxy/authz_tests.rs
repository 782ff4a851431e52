use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::json;

use super::*;
use crate::policy::authz::AuthzEngine;
use crate::policy::{MeshConfig, Policy as PolicyObject, PolicyMeta};

/// The policies of `shop` for a workload there, as the proxy holds them.
fn policy(specs: &[(&str, serde_json::Value)]) -> Policy {
    let objects: Vec<PolicyObject<crate::api::AuthorizationPolicySpec>> = specs
        .iter()
        .enumerate()
        .map(|(i, (name, spec))| PolicyObject {
            meta: PolicyMeta {
                namespace: "shop".into(),
                name: (*name).into(),
                creation_timestamp: None,
                seq: i as u64,
            },
            spec: serde_json::from_value(spec.clone()).expect("spec"),
        })
        .collect();
    let engine = AuthzEngine::new(&MeshConfig::default(), &objects);
    Policy::default().with_authz(Arc::new(engine.for_workload("shop", &BTreeMap::new())))
}

fn info(peer: Option<&str>, source: &str) -> ConnectionInfo {
    ConnectionInfo {
        peer_identity: peer.map(str::to_string),
        source: source.parse::<SocketAddr>().unwrap(),
        destination: "10.0.0.10:8080".parse().unwrap(),
    }
}

const FRONT: &str = "spiffe://cluster.local/ns/shop/sa/front";
const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/front";

fn check(p: Option<&Policy>, i: &ConnectionInfo) -> Result<(), Denied> {
    decide(p, connection(i, None).as_ref())
}

#[test]
fn decisions_name_the_policy_that_denied() {
    let allow_front = (
        "allow-front",
        json!({"rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/front"]}}]}]}),
    );
    let deny_evil = (
        "deny-evil",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["evil"]}}]}]}),
    );
    let p = policy(&[allow_front, deny_evil]);
    assert_eq!(check(Some(&p), &info(Some(FRONT), "10.0.0.1:4000")), Ok(()));
    let denied = check(Some(&p), &info(Some(EVIL), "10.0.0.1:4000")).unwrap_err();
    assert_eq!(denied.policy, "shop/deny-evil");
    assert_eq!(denied.why, "DENY rule 0 matched");
    let denied = check(Some(&p), &info(None, "10.0.0.1:4000")).unwrap_err();
    assert_eq!(denied.policy, NO_ALLOW_MATCHED);
    // An IPv4-mapped source is the IPv4 address to ipBlocks.
    let by_ip = policy(&[(
        "deny-net",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.9.0.0/16"]}}]}]}),
    )]);
    assert!(check(Some(&by_ip), &info(None, "[::ffff:10.9.1.1]:4000")).is_err());
    assert!(check(Some(&by_ip), &info(None, "10.8.1.1:4000")).is_ok());
}

#[test]
fn fail_closed_without_a_policy_and_for_odd_identities_only_when_policies_apply() {
    let denied = check(None, &info(Some(FRONT), "10.0.0.1:4000")).unwrap_err();
    assert_eq!(denied.policy, NO_POLICY);
    let odd = info(
        Some("spiffe://cluster.local/not/a/workload"),
        "10.0.0.1:4000",
    );
    assert_eq!(check(Some(&Policy::default()), &odd), Ok(()));
    let p = policy(&[(
        "deny-evil",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["evil"]}}]}]}),
    )]);
    assert_eq!(check(Some(&p), &odd).unwrap_err().policy, BAD_IDENTITY);
    // CUSTOM denies everything and says why.
    let custom = policy(&[(
        "ext",
        json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
    )]);
    let denied = check(Some(&custom), &info(Some(FRONT), "10.0.0.1:4000")).unwrap_err();
    assert_eq!(denied.policy, "shop/ext");
    assert!(denied.why.contains("CUSTOM"), "{}", denied.why);
}

#[tokio::test(start_paused = true)]
async fn an_open_connection_is_revoked_only_by_a_policy_that_denies_it() {
    let (tx, mut rx) = watch::channel(Some(Arc::new(Policy::default())));
    rx.borrow_and_update();
    let conn = connection(&info(Some(FRONT), "10.0.0.1:4000"), None);
    let watch = tokio::spawn(revoked(rx, conn));
    // A new policy that still allows it: nothing happens.
    tx.send_replace(Some(Arc::new(policy(&[(
        "deny-evil",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["evil"]}}]}]}),
    )]))));
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    assert!(!watch.is_finished());
    // One that denies it: the watch ends with the policy's name.
    tx.send_replace(Some(Arc::new(policy(&[(
        "deny-shop",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}),
    )]))));
    let denied = tokio::time::timeout(std::time::Duration::from_secs(5), watch)
        .await
        .expect("revoked in time")
        .expect("task");
    assert_eq!(denied.policy, "shop/deny-shop");
}

#[tokio::test(start_paused = true)]
async fn without_the_agent_the_last_policy_stays_in_force() {
    let (tx, rx) = watch::channel(Some(Arc::new(Policy::default())));
    let watch = tokio::spawn(revoked(rx, None));
    drop(tx);
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    assert!(!watch.is_finished());
    watch.abort();
}

#[tokio::test(start_paused = true)]
async fn a_policy_published_before_the_watch_starts_is_still_checked() {
    let (tx, mut rx) = watch::channel(Some(Arc::new(Policy::default())));
    rx.borrow_and_update();
    // The caller decided with the first value; a denying policy arrives before the watch runs.
    tx.send_replace(Some(Arc::new(policy(&[(
        "deny-shop",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}),
    )]))));
    let conn = connection(&info(Some(FRONT), "10.0.0.1:4000"), None);
    let denied = tokio::time::timeout(std::time::Duration::from_secs(5), revoked(rx, conn))
        .await
        .expect("revoked at once");
    assert_eq!(denied.policy, "shop/deny-shop");
}

#[tokio::test(start_paused = true)]
async fn an_update_with_the_same_authorization_policies_keeps_the_connection_and_a_later_deny_revokes()
 {
    let deny_shop = Arc::new(policy(&[(
        "deny-shop",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}),
    )]));
    let allow_all = Arc::new(Policy::default());
    let (tx, mut rx) = watch::channel(Some(allow_all.clone()));
    rx.borrow_and_update();
    let conn = connection(&info(Some(FRONT), "10.0.0.1:4000"), None);
    let watch = tokio::spawn(revoked(rx, conn));
    // Another policy object with the very same compiled set: still allowed.
    let same_authz = Policy::default().with_authz(allow_all.authz.clone());
    tx.send_replace(Some(Arc::new(same_authz)));
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(!watch.is_finished());
    tx.send_replace(Some(deny_shop));
    let denied = tokio::time::timeout(std::time::Duration::from_secs(5), watch)
        .await
        .expect("revoked")
        .expect("task");
    assert_eq!(denied.policy, "shop/deny-shop");
}
