//! The transport of ADS without a per-stream copy of the views.
//!
//! tonic's generated server encodes each response into a per-stream buffer that grows to the
//! largest message and stays for the life of the stream; with every proxy of a namespace
//! receiving the same multi-MiB Destination set, that buffer, not the shared views, was the
//! controller's memory per proxy. This module serves `StreamAggregatedResources` itself:
//! requests are decoded with tonic's [`Streaming`] (size bound and all), and each response is
//! written as gRPC frames whose large part, the `resources` field, is the
//! [`TypedResources::encoded_resources`] `Bytes` shared by every stream (a reference count,
//! not a copy). Protobuf fields may come in any order, so a response is its small fields
//! (`version_info`, `type_url`, `nonce`) followed by the pre-encoded field 2; a test checks
//! that prost decodes it to the same message as the generated encoding.
//!
//! `DeltaAggregatedResources` and unknown methods are answered `UNIMPLEMENTED`, as before.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::SERVICE_NAME;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body::Frame;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::{Codec, Streaming};
use tonic::server::NamedService;
use tonic::{Code, Status};

use super::ads::{AdsService, MAX_REQUEST_BYTES};
use super::metrics::{XdsMetrics, XdsService};
use super::stream::Outgoing;
use super::views::TypedResources;

/// The one method served here.
pub const STREAM_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// One state-of-the-world response, ready for the wire.
#[derive(Clone, Debug)]
pub struct WireResponse {
    /// The type URL (for the push metric).
    pub type_url: String,
    /// `version_info`, `type_url` and `nonce`, encoded (small, per stream).
    head: Bytes,
    /// Field 2, shared with every stream that sends the same resources.
    resources: Bytes,
}

impl WireResponse {
    /// The response carrying `resources` at its version, with `nonce`.
    pub fn new(type_url: &str, nonce: String, resources: &TypedResources) -> Self {
        let head = DiscoveryResponse {
            version_info: resources.version.clone(),
            type_url: type_url.to_string(),
            nonce,
            ..Default::default()
        }
        .encode_to_vec();
        Self {
            type_url: type_url.to_string(),
            head: head.into(),
            resources: resources.encoded_resources().clone(),
        }
    }

    /// Length of the encoded message.
    pub fn len(&self) -> usize {
        self.head.len() + self.resources.len()
    }

    /// Whether the encoded message is empty (it never is: the type URL is always set).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The gRPC message as two chunks: frame header and small fields, then the shared
    /// resources. `None` when the message exceeds gRPC's 4 GiB frame length.
    pub fn into_frame(self) -> Option<(Bytes, Bytes)> {
        let len = u32::try_from(self.len()).ok()?;
        let mut first = BytesMut::with_capacity(5 + self.head.len());
        first.put_u8(0); // not compressed
        first.put_u32(len);
        first.put_slice(&self.head);
        Some((first.freeze(), self.resources))
    }
}

/// The response body of one stream: frames from the stream's task, then trailers.
pub struct AdsBody {
    rx: mpsc::Receiver<Outgoing<WireResponse>>,
    metrics: XdsMetrics,
    /// The shared second chunk of the response being written.
    pending: Option<Bytes>,
    done: bool,
}

impl AdsBody {
    /// The body that writes what the task sends on `rx`.
    pub fn new(rx: mpsc::Receiver<Outgoing<WireResponse>>, metrics: XdsMetrics) -> Self {
        Self {
            rx,
            metrics,
            pending: None,
            done: false,
        }
    }
}

/// gRPC trailers for `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if let Err(e) = status.add_header(&mut map) {
        // Only a message that cannot be a header value gets here; the code still goes out.
        tracing::debug!(error = %e, "gRPC status message not sendable");
        map.clear();
        let _ = Status::new(status.code(), "").add_header(&mut map);
    }
    map
}

impl http_body::Body for AdsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let status = match std::task::ready!(this.rx.poll_recv(cx)) {
            Some(Outgoing::Response(response, since)) => {
                let type_url = response.type_url.clone();
                match response.into_frame() {
                    Some((first, resources)) => {
                        this.metrics.pushed(
                            XdsService::Ads,
                            &type_url,
                            since.elapsed().as_secs_f64(),
                        );
                        this.pending = Some(resources);
                        return Poll::Ready(Some(Ok(Frame::data(first))));
                    }
                    None => {
                        tracing::error!(type_url, "ADS response over 4 GiB; ending the stream");
                        Status::resource_exhausted("response too large")
                    }
                }
            }
            Some(Outgoing::End(status)) => status,
            // The task ended quietly (the client half-closed or left).
            None => Status::new(Code::Ok, ""),
        };
        this.done = true;
        this.rx.close();
        Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))))
    }
}

/// The ADS service as added to the gRPC server (`Server::add_service`).
#[derive(Clone)]
pub struct AdsServer {
    ads: AdsService,
}

impl AdsServer {
    /// Serves `ads`.
    pub fn new(ads: AdsService) -> Self {
        Self { ads }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = SERVICE_NAME;
}

/// A gRPC response carrying only `status` (no messages).
fn status_response(status: Status) -> http::Response<tonic::body::Body> {
    status.into_http()
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AdsServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != STREAM_PATH {
            let status = if req.uri().path().ends_with("/DeltaAggregatedResources") {
                Status::unimplemented(
                    "incremental xDS is not served; use StreamAggregatedResources",
                )
            } else {
                Status::unimplemented("")
            };
            return std::future::ready(Ok(status_response(status)));
        }
        let decoder =
            tonic_prost::ProstCodec::<DiscoveryResponse, DiscoveryRequest>::default().decoder();
        let request = tonic::Request::from_http(
            req.map(|body| Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES))),
        );
        let response = match self.ads.open(request) {
            Ok(rx) => {
                let body = AdsBody::new(rx, self.ads.metrics().clone());
                let mut response = http::Response::new(tonic::body::Body::new(body));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                response
            }
            Err(status) => status_response(status),
        };
        std::future::ready(Ok(response))
    }
}

#[cfg(test)]
#[path = "ads_wire_tests.rs"]
mod tests;
