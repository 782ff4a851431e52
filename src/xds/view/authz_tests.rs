//! AuthorizationPolicies in views: each pod gets exactly the policies that apply to it, pods
//! with the same policies share one set, and a policy change touches only the views it affects.

use std::sync::Arc;

use prost::Message;
use serde_json::json;

use super::MeshViews;
use super::tests::{bundle, view, with};
use crate::policy::MeshConfig;
use crate::xds::proto::palisade_v1 as pb;
use crate::xds::views::{AUTHORIZATION_POLICY_TYPE, ProxyView};

fn names(view: &ProxyView) -> Vec<String> {
    view.authorization
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, AUTHORIZATION_POLICY_TYPE);
            let p = pb::AuthorizationPolicy::decode(any.value.as_slice()).expect("decodes");
            format!("{}/{}", p.namespace, p.name)
        })
        .collect()
}

fn allow_from(ns: &str) -> serde_json::Value {
    json!({"rules": [{"from": [{"source": {"namespaces": [ns]}}]}]})
}

#[test]
fn each_pod_gets_the_policies_that_apply_to_it() {
    let views = MeshViews::compute(
        with(&[
            ("ap", "backend", "all-backend", allow_from("shop")),
            (
                "ap",
                "backend",
                "db-only",
                json!({"selector": {"matchLabels": {"app": "db"}}, "action": "DENY",
                       "rules": [{"from": [{"source": {"notNamespaces": ["backend"]}}]}]}),
            ),
            (
                "ap",
                "palisade-system",
                "mesh-web",
                json!({"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}),
            ),
            (
                "ap",
                "backend",
                "audit",
                json!({"action": "AUDIT", "rules": [{}]}),
            ),
            (
                "ap",
                "backend",
                "gateway",
                json!({"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]}),
            ),
        ]),
        &bundle(),
        &MeshConfig::default(),
        None,
    );
    // AUDIT is not sent (it has no effect) and a targetRef policy applies to no sidecar.
    assert_eq!(
        names(view(&views, "backend/api-1")),
        ["backend/all-backend"]
    );
    assert_eq!(
        names(view(&views, "backend/db-1")),
        ["backend/all-backend", "backend/db-only"]
    );
    assert_eq!(
        names(view(&views, "shop/web-1")),
        ["palisade-system/mesh-web"]
    );
    // Same policies, one Arc.
    assert!(Arc::ptr_eq(
        &view(&views, "shop/web-1").authorization,
        &view(&views, "shop/canary-1").authorization
    ));
    // The resource carries the compiled rule.
    let db = &view(&views, "backend/db-1").authorization.resources[1];
    let policy = pb::AuthorizationPolicy::decode(db.value.as_slice()).expect("decodes");
    assert_eq!(policy.action, pb::authorization_policy::Action::Deny as i32);
    let check = &policy.rules[0].from[0].checks[0];
    assert_eq!(check.values, ["backend"]);
    assert!(check.negate);
}

#[test]
fn a_policy_change_touches_only_the_views_it_applies_to() {
    let config = MeshConfig::default();
    let roots = bundle();
    let db = |ns: &str| {
        json!({"selector": {"matchLabels": {"app": "db"}},
               "rules": [{"from": [{"source": {"namespaces": [ns]}}]}]})
    };
    let before = MeshViews::compute(
        with(&[("ap", "backend", "db", db("shop"))]),
        &roots,
        &config,
        None,
    );
    let after = MeshViews::compute(
        with(&[("ap", "backend", "db", db("admin"))]),
        &roots,
        &config,
        Some(&before),
    );
    for (key, old) in &before.views {
        let new = &after.views[key];
        assert!(Arc::ptr_eq(&old.destinations, &new.destinations), "{key}");
        assert!(Arc::ptr_eq(&old.inbound, &new.inbound), "{key}");
        let changed = key.name == "db-1";
        assert_eq!(!Arc::ptr_eq(old, new), changed, "{key}: view changed");
        assert_eq!(
            old.authorization.version != new.authorization.version,
            changed,
            "{key}"
        );
    }
    // Back to the first policy: the first set's Arc is not kept across two computations, but
    // equal content has the equal version.
    let again = MeshViews::compute(
        with(&[("ap", "backend", "db", db("shop"))]),
        &roots,
        &config,
        Some(&after),
    );
    assert_eq!(
        view(&again, "backend/db-1").authorization.version,
        view(&before, "backend/db-1").authorization.version
    );
}
