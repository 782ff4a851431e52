//! Policy distribution over ADS, end to end over TLS with envoy-types' generated client:
//! subscription, ACK silence, NACK, pushes on change, and refusals.

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use palisade::ca::IssuancePolicy;
use palisade::xds::proto::palisade_v1::InboundPolicy;
use palisade::xds::views::{DESTINATION_TYPE, INBOUND_POLICY_TYPE, VIEW_TYPES, WORKLOAD_TYPE};
use prost::Message;
use tonic::Code;

use crate::xds_harness::{self as h, Plane, XdsStream};

/// A plane with pods shop/web-1 (sa web) and shop/db-0 (sa db).
async fn plane() -> Plane {
    let plane = h::start(IssuancePolicy::default()).await;
    plane.registry.add_pod("shop", "web-1", "web");
    plane.registry.add_pod("shop", "db-0", "db");
    plane
}

/// An ADS stream of shop/web-1 subscribed to every type, with the first response of each.
async fn subscribed(plane: &Plane) -> (XdsStream, HashMap<String, DiscoveryResponse>) {
    let id = plane.workload("shop", "web");
    let channel = plane.channel(Some(&id)).await;
    let mut stream = h::open_ads(
        channel,
        h::request(VIEW_TYPES[0], Some(h::node("shop", "web-1"))),
    )
    .await
    .expect("admitted");
    for type_url in &VIEW_TYPES[1..] {
        stream.send(h::request(type_url, None)).await;
    }
    let mut first = HashMap::new();
    for _ in VIEW_TYPES {
        let response = stream.next().await.expect("a response per type");
        first.insert(response.type_url.clone(), response);
    }
    (stream, first)
}

#[tokio::test]
async fn subscribe_ack_push_and_nack() {
    let plane = plane().await;
    let (mut stream, first) = subscribed(&plane).await;
    assert_eq!(
        first.keys().cloned().collect::<HashSet<_>>(),
        VIEW_TYPES.iter().map(|t| t.to_string()).collect(),
        "one response per subscribed type"
    );
    let nonces: HashSet<&str> = first.values().map(|r| r.nonce.as_str()).collect();
    assert_eq!(
        nonces.len(),
        VIEW_TYPES.len(),
        "a fresh nonce on every response"
    );
    assert!(first.values().all(|r| r.version_info == "v1"));
    let inbound =
        InboundPolicy::decode(first[INBOUND_POLICY_TYPE].resources[0].value.as_slice()).unwrap();
    assert_eq!(inbound.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
    for response in first.values() {
        stream.send(h::ack(response, None)).await;
    }

    // ACKs got no answer: the next thing on the stream is the push of a change.
    plane.registry.update("shop", "web-1", |v| {
        v.inbound = h::typed(INBOUND_POLICY_TYPE, "v2", vec![1])
    });
    let pushed = stream.next().await.unwrap();
    assert_eq!(
        (pushed.type_url.as_str(), pushed.version_info.as_str()),
        (INBOUND_POLICY_TYPE, "v2")
    );
    assert!(!nonces.contains(pushed.nonce.as_str()));

    // NACK it: not answered, and v2 is not sent again when something else changes.
    stream.send(h::ack(&pushed, Some("cannot apply v2"))).await;
    plane.registry.update("shop", "web-1", |v| {
        v.destinations = h::typed(DESTINATION_TYPE, "v2", vec![2]);
    });
    let next = stream.next().await.unwrap();
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (DESTINATION_TYPE, "v2")
    );
    stream.send(h::ack(&next, None)).await;
    plane.registry.update("shop", "web-1", |v| {
        v.inbound = h::typed(INBOUND_POLICY_TYPE, "v3", vec![3])
    });
    let next = stream.next().await.unwrap();
    assert_eq!(
        (next.type_url.as_str(), next.version_info.as_str()),
        (INBOUND_POLICY_TYPE, "v3"),
        "a later version after a NACK is pushed"
    );

    // A view whose content did not change pushes nothing: the next push is the real change.
    plane.registry.update("shop", "web-1", |_| {});
    plane.registry.update("shop", "web-1", |v| {
        v.workloads = h::typed(WORKLOAD_TYPE, "v2", vec![])
    });
    let next = stream.next().await.unwrap();
    assert_eq!(next.type_url, WORKLOAD_TYPE);

    let text = plane.metrics_text();
    // One initial response per type, then four pushes.
    let pushes = format!(
        "palisade_xds_push_duration_seconds_count{{service=\"ads\"}} {}",
        VIEW_TYPES.len() + 4
    );
    for needle in [
        "palisade_xds_nacks_total{service=\"ads\",type=\"InboundPolicy\"} 1",
        "palisade_xds_pushes_total{service=\"ads\",type=\"InboundPolicy\"} 3",
        "palisade_xds_connected_streams{service=\"ads\"} 1",
        &pushes,
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    drop(stream);
    plane
        .wait_metric("palisade_xds_connected_streams{service=\"ads\"}", "0")
        .await;
}

fn with_metadata(mut node: Node, fields: &[(&str, &str)]) -> Node {
    node.metadata = Some(Struct {
        fields: fields
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), value)
            })
            .collect(),
    });
    node
}

#[tokio::test]
async fn proxies_get_only_their_own_pod() {
    let plane = plane().await;
    let web = plane.workload("shop", "web");
    let other_ns = plane.workload("bank", "web");
    let first = |node: Option<Node>| h::request(INBOUND_POLICY_TYPE, node);
    let cases = [
        (
            "no client certificate",
            None,
            first(Some(h::node("shop", "web-1"))),
        ),
        (
            "another workload's pod",
            Some(&web),
            first(Some(h::node("shop", "db-0"))),
        ),
        (
            "a pod that does not exist",
            Some(&web),
            first(Some(h::node("shop", "ghost"))),
        ),
        (
            "same name, other namespace",
            Some(&other_ns),
            first(Some(h::node("shop", "web-1"))),
        ),
        ("no node", Some(&web), first(None)),
        (
            "metadata names another pod",
            Some(&web),
            first(Some(with_metadata(
                h::node("shop", "web-1"),
                &[("POD_NAME", "db-0")],
            ))),
        ),
        (
            "malformed node id",
            Some(&web),
            first(Some(h::node("shop/x", "web-1"))),
        ),
    ];
    for (what, identity, request) in cases {
        let channel = plane.channel(identity).await;
        let status = h::refused_ads(channel, request).await;
        assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
        assert_eq!(status.message(), "permission denied", "{what}: no detail");
    }
    // The rightful proxy, with agreeing metadata, is served.
    let channel = plane.channel(Some(&web)).await;
    let node = with_metadata(
        h::node("shop", "web-1"),
        &[
            ("POD_NAME", "web-1"),
            ("POD_NAMESPACE", "shop"),
            ("INSTANCE_IP", "10.0.0.7"),
        ],
    );
    let mut stream = h::open_ads(channel, first(Some(node))).await.unwrap();
    assert_eq!(stream.next().await.unwrap().type_url, INBOUND_POLICY_TYPE);
    let text = plane.metrics_text();
    assert!(
        text.contains(
            "palisade_xds_refused_streams_total{service=\"ads\",reason=\"not_this_pod\"} 3"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_withdrawn_view_ends_the_stream() {
    let plane = plane().await;
    let (mut stream, _) = subscribed(&plane).await;
    plane.registry.remove("shop", "web-1");
    let status = stream.next().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Reconnecting is checked again: the pod is gone.
    let id = plane.workload("shop", "web");
    let channel = plane.channel(Some(&id)).await;
    let status = h::refused_ads(
        channel,
        h::request(INBOUND_POLICY_TYPE, Some(h::node("shop", "web-1"))),
    )
    .await;
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_node_may_not_change_mid_stream() {
    let plane = plane().await;
    let (mut stream, _) = subscribed(&plane).await;
    stream
        .send(h::request(DESTINATION_TYPE, Some(h::node("shop", "db-0"))))
        .await;
    let status = stream.next().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn incremental_xds_is_unimplemented() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let plane = plane().await;
    let id = plane.workload("shop", "web");
    let mut client = AggregatedDiscoveryServiceClient::new(plane.channel(Some(&id)).await);
    let requests = tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]);
    let status = client
        .delta_aggregated_resources(requests)
        .await
        .expect_err("not served");
    assert_eq!(status.code(), Code::Unimplemented);
}
