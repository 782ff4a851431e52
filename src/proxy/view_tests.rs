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
    ];
    for step in &steps {
        let handled = handle(&mut state, step);
        assert!(handled.accepted);
        assert_eq!(handled.reply.version_info, step.version_info, "ACK");
        assert_eq!(handled.reply.response_nonce, step.nonce);
        assert!(handled.reply.error_detail.is_none());
        assert!(state.policy().is_none(), "not all four yet");
    }
    let handled = handle(
        &mut state,
        &response(TRUST_BUNDLE_TYPE, "t1", vec![bundle(vec![root.clone()])]),
    );
    assert_eq!(handled.trust.map(|t| t.roots.len()), Some(1));
    let policy = state.policy().expect("complete");
    assert_eq!(policy.inbound_mode(80), pb::MtlsMode::Strict);
    assert_eq!(policy.versions.len(), 4);
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
