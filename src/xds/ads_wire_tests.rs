use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use http_body::Body as _;
use prost::Message;

use super::*;
use crate::xds::stream::raw_channel;
use crate::xds::views::{DESTINATION_TYPE, INBOUND_POLICY_TYPE};

fn resources(n: usize) -> TypedResources {
    TypedResources::new(
        format!("v{n}"),
        (0..n)
            .map(|i| Any {
                type_url: DESTINATION_TYPE.into(),
                // Sizes that cross the one-byte and two-byte varint lengths.
                value: vec![i as u8; i * 97],
            })
            .collect(),
    )
}

/// The generated encoding of the same response.
fn generated(type_url: &str, nonce: &str, r: &TypedResources) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: r.version.clone(),
        resources: r.resources.clone(),
        type_url: type_url.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

#[test]
fn wire_response_decodes_to_the_generated_message() {
    for n in [0, 1, 2, 300] {
        let r = resources(n);
        let wire = WireResponse::new(DESTINATION_TYPE, "17".into(), &r);
        let expected = generated(DESTINATION_TYPE, "17", &r);
        assert_eq!(wire.len(), expected.encoded_len(), "n={n}");
        let (first, shared) = wire.into_frame().expect("frame");
        assert_eq!(first[0], 0, "uncompressed");
        let len = u32::from_be_bytes(first[1..5].try_into().expect("4 bytes")) as usize;
        let mut message = first[5..].to_vec();
        message.extend_from_slice(&shared);
        assert_eq!(len, message.len());
        let decoded = DiscoveryResponse::decode(message.as_slice()).expect("decodes");
        assert_eq!(decoded, expected, "n={n}");
        // Field order differs from prost's, the bytes need not be equal, the message must.
        let mut again = Vec::new();
        decoded.encode(&mut again).expect("encode");
        assert_eq!(
            DiscoveryResponse::decode(again.as_slice()).expect("re-decodes"),
            expected
        );
    }
}

#[test]
fn the_resources_chunk_is_shared_not_copied() {
    let r = resources(50);
    let a = WireResponse::new(DESTINATION_TYPE, "1".into(), &r);
    let b = WireResponse::new(DESTINATION_TYPE, "2".into(), &r);
    let (_, a) = a.into_frame().expect("frame");
    let (_, b) = b.into_frame().expect("frame");
    assert!(!a.is_empty());
    assert_eq!(a.as_ptr(), r.encoded_resources().as_ptr());
    assert_eq!(b.as_ptr(), r.encoded_resources().as_ptr());
}

fn poll(body: &mut AdsBody) -> Option<Frame<Bytes>> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => Some(frame),
        Poll::Ready(None) => None,
        Poll::Pending => panic!("body pending"),
    }
}

#[tokio::test]
async fn body_writes_frames_then_the_ending_status_as_trailers() {
    let metrics = XdsMetrics::default();
    let (outbox, rx) = raw_channel();
    let mut body = AdsBody::new(rx, metrics);
    let r = resources(3);
    let sent = WireResponse::new(INBOUND_POLICY_TYPE, "1".into(), &r);
    outbox.send(sent, Instant::now()).await.expect("open");
    let first = poll(&mut body).expect("frame").into_data().expect("data");
    let second = poll(&mut body).expect("frame").into_data().expect("data");
    let mut message = first[5..].to_vec();
    message.extend_from_slice(&second);
    assert_eq!(
        DiscoveryResponse::decode(message.as_slice()).expect("decodes"),
        generated(INBOUND_POLICY_TYPE, "1", &r)
    );
    outbox.end(Status::invalid_argument("bad")).await;
    let trailers = poll(&mut body)
        .expect("frame")
        .into_trailers()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "3");
    assert_eq!(trailers["grpc-message"], "bad");
    assert!(poll(&mut body).is_none());
    // The task sees the transport gone.
    tokio::time::timeout(std::time::Duration::from_secs(5), outbox.closed())
        .await
        .expect("closed");
}

#[tokio::test]
async fn body_of_a_task_that_ended_quietly_ends_ok() {
    let (outbox, rx) = raw_channel::<WireResponse>();
    let mut body = AdsBody::new(rx, XdsMetrics::default());
    drop(outbox);
    let trailers = poll(&mut body)
        .expect("frame")
        .into_trailers()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert!(poll(&mut body).is_none());
}
