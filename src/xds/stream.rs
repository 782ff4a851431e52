//! The outgoing half of a discovery stream, shared by ADS and SDS: a channel of capacity one
//! from the stream's task to the transport, so a client that does not read holds at most one
//! response here (plus what HTTP/2 flow control lets through) and later changes coalesce into
//! the next response instead of queueing.

use std::pin::Pin;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::metrics::{XdsMetrics, XdsService};

/// What a discovery stream yields to tonic.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

/// What the stream's task hands the transport.
pub enum Outgoing<R> {
    /// A response and when the change that caused it was seen (for the latency metric).
    Response(R, Instant),
    /// The stream ends with this status.
    End(Status),
}

/// The receiver (the transport) is gone: the stream's task should end.
#[derive(Debug)]
pub struct Closed;

/// The task's end of the stream; `R` is the response type (ADS sends pre-encoded ones).
pub struct Outbox<R = DiscoveryResponse> {
    tx: mpsc::Sender<Outgoing<R>>,
}

/// A new stream with a one-slot channel: the task's sender and the transport's receiver.
pub fn raw_channel<R>() -> (Outbox<R>, mpsc::Receiver<Outgoing<R>>) {
    let (tx, rx) = mpsc::channel(1);
    (Outbox { tx }, rx)
}

/// A new stream: the task's sender and the stream tonic polls, which counts each response as a
/// push when the transport takes it.
pub fn channel(metrics: XdsMetrics, service: XdsService) -> (Outbox, ResponseStream) {
    let (outbox, rx) = raw_channel::<DiscoveryResponse>();
    let stream = ReceiverStream::new(rx).map(move |item| match item {
        Outgoing::Response(response, since) => {
            metrics.pushed(service, &response.type_url, since.elapsed().as_secs_f64());
            Ok(response)
        }
        Outgoing::End(status) => Err(status),
    });
    (outbox, Box::pin(stream))
}

impl<R> Outbox<R> {
    /// Queues `response` (waits while the previous one has not been taken).
    pub async fn send(&self, response: R, since: Instant) -> Result<(), Closed> {
        self.tx
            .send(Outgoing::Response(response, since))
            .await
            .map_err(|_| Closed)
    }

    /// Ends the stream with `status` (the caller returns afterwards).
    pub async fn end(&self, status: Status) {
        let _ = self.tx.send(Outgoing::End(status)).await;
    }

    /// Resolves when the transport has dropped the stream (client gone, connection closed).
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Resolves once `shutdown` turns `true`; never when its sender is gone without doing so (a
/// service built without a shutdown signal).
pub async fn shutting_down(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The status a stream ends with when the control plane shuts down: the proxy reconnects (to
/// another replica, or to this one once it is back) and keeps its last policy meanwhile.
pub fn shutdown_status() -> Status {
    Status::unavailable("control plane shutting down; reconnect")
}

/// A shutdown signal that never fires, for services built without one.
pub fn never_shutdown() -> tokio::sync::watch::Receiver<bool> {
    tokio::sync::watch::channel(false).1
}
