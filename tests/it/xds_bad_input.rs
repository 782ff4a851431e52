//! Bad input on discovery streams: oversize and undecodable messages, unknown type URLs,
//! clients that never ACK or never read, and 10,000 idle streams. Each gets a clean outcome
//! and the server keeps serving.

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use palisade::ca::IssuancePolicy;
use palisade::xds::views::INBOUND_POLICY_TYPE;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

use crate::xds_harness::{self as h, Plane};

async fn plane() -> (Plane, (String, String)) {
    let plane = h::start(IssuancePolicy::default()).await;
    plane.registry.add_pod("shop", "web-1", "web");
    let id = plane.workload("shop", "web");
    (plane, id)
}

fn subscribe() -> DiscoveryRequest {
    h::request(INBOUND_POLICY_TYPE, Some(h::node("shop", "web-1")))
}

/// The server still serves a well-behaved stream on `channel`.
async fn still_serves(channel: Channel) {
    let mut stream = h::open_ads(channel, subscribe()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().type_url, INBOUND_POLICY_TYPE);
}

#[tokio::test]
async fn oversize_messages_end_only_their_stream() {
    let (plane, id) = plane().await;
    let channel = plane.channel(Some(&id)).await;
    let mut huge = subscribe();
    huge.node.as_mut().unwrap().metadata = Some(Struct {
        fields: [(
            "PADDING".to_string(),
            Value {
                kind: Some(Kind::StringValue("x".repeat(100 * 1024))),
            },
        )]
        .into(),
    });
    let status = h::refused_ads(channel.clone(), huge).await;
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    // Over the bookkeeping bounds: a clean INVALID_ARGUMENT.
    let mut stream = h::open_ads(channel.clone(), subscribe()).await.unwrap();
    stream.next().await.unwrap();
    stream
        .send(DiscoveryRequest {
            resource_names: vec!["n".into(); 17],
            ..h::request(INBOUND_POLICY_TYPE, None)
        })
        .await;
    assert_eq!(
        stream.next().await.unwrap_err().code(),
        Code::InvalidArgument
    );
    still_serves(channel).await;
}

/// Sends raw bytes as gRPC messages and decodes nothing.
#[derive(Clone, Default)]
struct Raw;
struct RawEncoder;
struct RawDecoder;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

#[tokio::test]
async fn garbage_frames_end_only_their_stream() {
    let (plane, id) = plane().await;
    let channel = plane.channel(Some(&id)).await;
    let garbage: Vec<Vec<u8>> = vec![subscribe().encode_to_vec(), vec![0xff; 64]];
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let response = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(garbage)), path, Raw)
        .await;
    let outcome = match response {
        Err(status) => status,
        Ok(response) => {
            let mut rx = response.into_inner();
            loop {
                match tokio::time::timeout(h::DEADLINE, rx.message()).await {
                    Ok(Ok(Some(_first_response))) => continue,
                    Ok(Ok(None)) => break tonic::Status::ok("ended"),
                    Ok(Err(status)) => break status,
                    Err(_) => panic!("garbage did not end the stream"),
                }
            }
        }
    };
    assert_ne!(outcome.code(), Code::Ok, "{outcome:?}");
    still_serves(channel).await;
}

#[tokio::test]
async fn unknown_type_urls_are_ignored() {
    let (plane, id) = plane().await;
    let channel = plane.channel(Some(&id)).await;
    let mut stream = h::open_ads(
        channel,
        h::request(
            "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Some(h::node("shop", "web-1")),
        ),
    )
    .await
    .unwrap();
    stream
        .send(h::request("type.googleapis.com/no.such.Type", None))
        .await;
    stream.send(h::request(INBOUND_POLICY_TYPE, None)).await;
    let response = stream.next().await.unwrap();
    assert_eq!(
        response.type_url, INBOUND_POLICY_TYPE,
        "nothing for the unknown types, and the stream keeps serving"
    );
}

/// A client that neither ACKs nor reads while its view changes 50 times (1 MiB each) holds at
/// most a few responses (HTTP/2 window, the one-slot outbox, the one being built); then it
/// gets the latest view, not every intermediate one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_gets_the_latest_not_a_backlog() {
    let (plane, id) = plane().await;
    let channel = plane.channel(Some(&id)).await;
    let mut stream = h::open_ads(channel, subscribe()).await.unwrap();
    assert_eq!(stream.next().await.unwrap().version_info, "v1");
    for i in 2..=50 {
        plane.registry.update("shop", "web-1", |v| {
            v.inbound = h::typed(
                INBOUND_POLICY_TYPE,
                &format!("v{i}"),
                vec![i as u8; 1 << 20],
            );
        });
        tokio::task::yield_now().await;
    }
    let mut received = 0;
    loop {
        let response = stream.next().await.unwrap();
        received += 1;
        if response.version_info == "v50" {
            break;
        }
    }
    assert!(received <= 8, "{received} responses for 49 changes");
    // Without reading it still got later pushes: ACKs are not a precondition.
    plane.registry.update("shop", "web-1", |v| {
        v.inbound = h::typed(INBOUND_POLICY_TYPE, "v51", vec![]);
    });
    assert_eq!(stream.next().await.unwrap().version_info, "v51");
}

/// 100 TLS connections x 100 ADS streams, all admitted and idle; the server keeps serving a
/// fresh client, pushes still reach idle streams, and everything is released when they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_streams() {
    const CONNECTIONS: usize = 100;
    const STREAMS: usize = 100;
    let (plane, id) = plane().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let channel = plane.channel(Some(&id)).await;
        for _ in 0..STREAMS {
            let channel = channel.clone();
            tasks.spawn(async move {
                let mut stream = h::open_ads(channel, subscribe()).await.unwrap();
                stream.next().await.unwrap();
                stream
            });
        }
    }
    let mut streams = Vec::with_capacity(CONNECTIONS * STREAMS);
    while let Some(stream) = tasks.join_next().await {
        streams.push(stream.unwrap());
    }
    plane
        .wait_metric("palisade_xds_connected_streams{service=\"ads\"}", "10000")
        .await;
    let fresh = plane.channel(Some(&id)).await;
    still_serves(fresh).await;
    // A change still reaches an idle stream.
    plane.registry.update("shop", "web-1", |v| {
        v.inbound = h::typed(INBOUND_POLICY_TYPE, "v2", vec![]);
    });
    let last = streams.last_mut().unwrap();
    assert_eq!(last.next().await.unwrap().version_info, "v2");
    drop(streams);
    plane
        .wait_metric("palisade_xds_connected_streams{service=\"ads\"}", "0")
        .await;
}
