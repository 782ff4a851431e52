use envoy_types::pb::google::protobuf::Any;

use super::*;
use crate::proxy::trust::tests::root_pem;

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

fn response(type_url: &str, version: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        type_url: type_url.into(),
        version_info: version.into(),
        nonce: format!("nonce-{version}"),
        resources,
        ..Default::default()
    }
}

fn inbound(mode: pb::MtlsMode) -> Any {
    any(
        INBOUND_POLICY_TYPE,
        &pb::InboundPolicy {
            default_mode: mode as i32,
            ..Default::default()
        },
    )
}

fn bundle(roots: Vec<String>) -> Any {
    any(TRUST_BUNDLE_TYPE, &pb::TrustBundle { roots_pem: roots })
}

#[test]
fn contract_violations_are_refused_with_a_reason() {
    let garbage = Any {
        type_url: DESTINATION_TYPE.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    type Check = fn(&Reject) -> bool;
    let cases: Vec<(DiscoveryResponse, Check)> = vec![
        (response("type.googleapis.com/x.Y", "1", vec![]), |r| {
            matches!(r, Reject::UnknownType(_))
        }),
        (response(INBOUND_POLICY_TYPE, "1", vec![]), |r| {
            *r == Reject::NotOne { found: 0 }
        }),
        (
            response(
                INBOUND_POLICY_TYPE,
                "1",
                vec![
                    inbound(pb::MtlsMode::Strict),
                    inbound(pb::MtlsMode::Disable),
                ],
            ),
            |r| *r == Reject::NotOne { found: 2 },
        ),
        (response(DESTINATION_TYPE, "1", vec![garbage]), |r| {
            matches!(r, Reject::Decode { index: 0, .. })
        }),
        (
            response(WORKLOAD_TYPE, "1", vec![inbound(pb::MtlsMode::Strict)]),
            |r| matches!(r, Reject::MixedType { index: 0, .. }),
        ),
        (
            response(TRUST_BUNDLE_TYPE, "1", vec![bundle(vec!["nope".into()])]),
            |r| matches!(r, Reject::Bundle(_)),
        ),
        (
            response(TRUST_BUNDLE_TYPE, "1", vec![bundle(vec![])]),
            |r| matches!(r, Reject::Bundle(_)),
        ),
        (
            response(
                WORKLOAD_TYPE,
                "1",
                vec![any(WORKLOAD_TYPE, &pb::Workload::default()); MAX_RESOURCES + 1],
            ),
            |r| *r == Reject::TooMany(MAX_RESOURCES + 1),
        ),
    ];
    for (resp, check) in cases {
        let err = decode(&resp).expect_err(&resp.type_url);
        assert!(check(&err), "{}: {err}", resp.type_url);
    }
}

#[test]
fn the_policy_appears_once_every_type_arrived_and_a_nack_keeps_the_last_good_version() {
    let mut state = ViewState::default();
    let root = root_pem();
    let steps = [
        response(
            INBOUND_POLICY_TYPE,
            "i1",
            vec![inbound(pb::MtlsMode::Strict)],
        ),
        response(DESTINATION_TYPE, "d1", vec![]),
        response(WORKLOAD_TYPE, "w1", vec![]),
        response(AUTHORIZATION_POLICY_TYPE, "a1", vec![]),
    ];
    for step in &steps {
        let handled = handle(&mut state, step);
        assert!(handled.accepted);
        assert_eq!(handled.reply.version_info, step.version_info, "ACK");
        assert_eq!(handled.reply.response_nonce, step.nonce);
        assert!(handled.reply.error_detail.is_none());
        assert!(state.policy().is_none(), "not all five yet");
    }
    let handled = handle(
        &mut state,
        &response(TRUST_BUNDLE_TYPE, "t1", vec![bundle(vec![root.clone()])]),
    );
    assert_eq!(handled.trust.map(|t| t.roots.len()), Some(1));
    let policy = state.policy().expect("complete");
    assert_eq!(policy.inbound_mode(80), pb::MtlsMode::Strict);
    assert_eq!(policy.versions.len(), 5);
    assert!(policy.authz.policies().is_empty());
    assert_eq!(policy.versions[INBOUND_POLICY_TYPE], "i1");

    // Two InboundPolicy resources: NACK with the previous version, keep STRICT.
    let bad = response(
        INBOUND_POLICY_TYPE,
        "i2",
        vec![
            inbound(pb::MtlsMode::Disable),
            inbound(pb::MtlsMode::Disable),
        ],
    );
    let handled = handle(&mut state, &bad);
    assert!(!handled.accepted);
    assert_eq!(handled.reply.version_info, "i1");
    assert_eq!(handled.reply.response_nonce, "nonce-i2");
    let detail = handled.reply.error_detail.expect("NACK");
    assert_eq!(detail.code, 3);
    assert!(detail.message.contains("exactly one"), "{}", detail.message);
    assert_eq!(
        state.policy().unwrap().inbound_mode(80),
        pb::MtlsMode::Strict
    );

    // The next good one is taken.
    handle(
        &mut state,
        &response(
            INBOUND_POLICY_TYPE,
            "i3",
            vec![inbound(pb::MtlsMode::Disable)],
        ),
    );
    let policy = state.policy().unwrap();
    assert_eq!(policy.inbound_mode(80), pb::MtlsMode::Disable);
    assert_eq!(policy.versions[INBOUND_POLICY_TYPE], "i3");
}

#[test]
fn a_nack_before_any_good_version_carries_an_empty_version_and_a_bounded_detail() {
    let mut state = ViewState::default();
    let long = response(
        &format!("type.googleapis.com/{}", "é".repeat(2000)),
        "v",
        vec![],
    );
    let handled = handle(&mut state, &long);
    assert_eq!(handled.reply.version_info, "");
    assert!(handled.reply.error_detail.unwrap().message.len() <= MAX_DETAIL_BYTES);
}

#[test]
fn node_and_initial_requests_follow_the_contract() {
    let ip: IpAddr = "10.44.0.11".parse().unwrap();
    let n = node("shop", "web-1", Some(ip));
    assert_eq!(n.id, "shop/web-1");
    let claim = crate::xds::node::parse_node(Some(&n)).expect("the control plane accepts it");
    assert_eq!(claim.instance_ip, Some(ip));
    let requests = initial_requests(n);
    let types: Vec<&str> = requests.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(types, VIEW_TYPES);
    assert!(requests[0].node.is_some());
    assert!(requests[1..].iter().all(|r| r.node.is_none()));
    assert!(
        requests
            .iter()
            .all(|r| r.resource_names.is_empty() && r.version_info.is_empty())
    );
}

#[test]
fn authorization_policies_are_compiled_in_name_order_and_unreadable_checks_fail_closed() {
    use crate::policy::authz::Connection;
    let policy = |name: &str, action: pb::authorization_policy::Action, ns_value: &str| {
        any(
            AUTHORIZATION_POLICY_TYPE,
            &pb::AuthorizationPolicy {
                namespace: "shop".into(),
                name: name.into(),
                action: action as i32,
                rules: vec![pb::AuthorizationRule {
                    index: 0,
                    from: vec![pb::AuthorizationClause {
                        checks: vec![pb::AuthorizationCheck {
                            attribute: pb::authorization_check::Attribute::SourceNamespace as i32,
                            values: vec![ns_value.into()],
                            negate: false,
                        }],
                    }],
                    ..Default::default()
                }],
            },
        )
    };
    use pb::authorization_policy::Action;
    // Sent out of order: "b-allow" then "a-deny"; decisions follow name order.
    let resp = response(
        AUTHORIZATION_POLICY_TYPE,
        "a1",
        vec![
            policy("b-allow", Action::Allow, "front"),
            policy("a-deny", Action::Deny, "evil"),
        ],
    );
    let Ok(Decoded::Authorization(authz)) = decode(&resp) else {
        panic!("decodes");
    };
    let names: Vec<&str> = authz
        .policies()
        .iter()
        .map(|p| p.object.name.as_str())
        .collect();
    assert_eq!(names, ["a-deny", "b-allow"]);
    let conn = |ns: &str| {
        Connection::mtls(
            &format!("spiffe://cluster.local/ns/{ns}/sa/x"),
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            80,
        )
        .unwrap()
    };
    assert!(authz.decide(&conn("front")).allowed);
    assert!(!authz.decide(&conn("evil")).allowed);
    assert!(!authz.decide(&conn("other")).allowed);
    // A check with an attribute this proxy does not know: accepted (not NACKed: that would
    // keep the older policy), and the ALLOW rule never matches.
    let mut unknown =
        pb::AuthorizationPolicy::decode(policy("b-allow", Action::Allow, "front").value.as_slice())
            .unwrap();
    unknown.rules[0].from[0].checks[0].attribute = 77;
    let resp = response(
        AUTHORIZATION_POLICY_TYPE,
        "a2",
        vec![any(AUTHORIZATION_POLICY_TYPE, &unknown)],
    );
    let Ok(Decoded::Authorization(authz)) = decode(&resp) else {
        panic!("decodes");
    };
    assert!(!authz.decide(&conn("front")).allowed);
}
