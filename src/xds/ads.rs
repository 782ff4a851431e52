//! Policy distribution: `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! `StreamAggregatedResources` (state of the world) with Palisade's resource types
//! (`proto/palisade/v1/mesh.proto`, [`crate::xds::views`]).
//!
//! A stream is served only to a caller that presents a workload client certificate (verified
//! against the trust bundle by the TLS layer) and names, in the node of its first request, a
//! pod that the [`ViewRegistry`] confirms runs as that identity. Every refusal is
//! `PERMISSION_DENIED` with no detail; the log has it. There is no bearer-token path.
//!
//! Once subscribed, each type is sent when first asked for and whenever its version in the
//! proxy's view changes ([`super::sotw`] rules). Unknown type URLs are logged and ignored (the
//! stream keeps serving the others). A request over the size bounds ends the stream with
//! `INVALID_ARGUMENT`. When the registry closes the view (the pod is gone or runs as someone
//! else now) the stream ends with `UNAVAILABLE`; a reconnecting proxy is checked again.
//!
//! A client that never ACKs still gets later versions (ACKs are not a precondition for the
//! next push), but never more than one response waits for it: changes made while it does not
//! read coalesce into the latest view (see [`super::stream`]).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Status, Streaming};

use super::ads_wire::{AdsServer, WireResponse};

use super::metrics::{XdsMetrics, XdsService};
use super::node::{NodeClaim, parse_node};
use super::sotw::{self, RequestKind, StreamState};
use super::stream::{self, Outbox, Outgoing};
use super::views::{ProxyClaim, ProxyView, VIEW_TYPES, ViewRegistry};
use crate::auth::peer::identity_from_peer_cert;

/// Largest request message accepted: a node with generous metadata.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A stream whose first request does not arrive within this is ended.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const SERVICE: XdsService = XdsService::Ads;

/// The ADS server.
#[derive(Clone)]
pub struct AdsService {
    registry: Arc<dyn ViewRegistry>,
    trust_domain: String,
    metrics: XdsMetrics,
    shutdown: watch::Receiver<bool>,
}

/// What every refused caller sees.
fn permission_denied() -> Status {
    Status::permission_denied("permission denied")
}

impl AdsService {
    /// Serves the views of `registry` to proxies whose certificates are of `trust_domain`.
    pub fn new(
        registry: Arc<dyn ViewRegistry>,
        trust_domain: impl Into<String>,
        metrics: XdsMetrics,
    ) -> Self {
        Self {
            registry,
            trust_domain: trust_domain.into(),
            metrics,
            shutdown: stream::never_shutdown(),
        }
    }

    /// The same service ending every open stream with `UNAVAILABLE` once `shutdown` turns
    /// `true`, so the gRPC server's graceful shutdown is not held up by proxies that never end
    /// their streams (they reconnect, to another replica or to this one when it is back).
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The service to add to the gRPC server (request size bound applied; responses share
    /// the views' encoding instead of copying it per stream, see [`super::ads_wire`]).
    pub fn into_server(self) -> AdsServer {
        AdsServer::new(self)
    }
}

impl AdsService {
    /// Authenticates the caller of `StreamAggregatedResources` and starts the stream's task;
    /// returns what the transport reads the responses from ([`super::ads_wire::AdsBody`]).
    pub(crate) fn open(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<mpsc::Receiver<Outgoing<WireResponse>>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let identity = match request.peer_certs() {
            Some(chain) if !chain.is_empty() => {
                identity_from_peer_cert(&chain, &self.trust_domain, SystemTime::now())
            }
            _ => Err(crate::auth::AuthError::Unauthenticated(
                "no client certificate".into(),
            )),
        };
        let identity = identity.map_err(|e| {
            tracing::info!(peer, error = %e, "ADS stream refused");
            self.metrics.refuse(SERVICE, "unauthenticated");
            permission_denied()
        })?;
        let (outbox, responses) = stream::raw_channel();
        let task = AdsStream {
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            identity,
            peer,
            outbox,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(task.run(request.into_inner()));
        Ok(responses)
    }

    /// The metrics this service records into.
    pub(crate) fn metrics(&self) -> &XdsMetrics {
        &self.metrics
    }
}

/// One ADS stream after the TLS identity was read.
struct AdsStream {
    registry: Arc<dyn ViewRegistry>,
    metrics: XdsMetrics,
    identity: crate::auth::Identity,
    peer: String,
    outbox: Outbox<WireResponse>,
    shutdown: watch::Receiver<bool>,
}

/// Why a stream ends early.
enum End {
    /// Quietly: the client left or the transport failed.
    Quiet,
    /// With this status (already counted and logged).
    Status(Status),
}

impl AdsStream {
    async fn run(self, mut inbound: Streaming<DiscoveryRequest>) {
        let _open = self.metrics.stream_opened(SERVICE);
        let mut shutdown = self.shutdown.clone();
        let first = tokio::select! {
            _ = self.outbox.closed() => return,
            _ = stream::shutting_down(&mut shutdown) => {
                return self.outbox.end(stream::shutdown_status()).await;
            }
            first = tokio::time::timeout(FIRST_REQUEST_TIMEOUT, inbound.message()) => first,
        };
        let first = match first {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => return,
            Ok(Err(status)) => {
                // Oversize or undecodable, or the client reset the stream.
                tracing::debug!(peer = %self.peer, %status, "ADS stream failed before its first request");
                self.metrics.refuse(SERVICE, "read_error");
                let status = Status::new(status.code(), "request stream failed");
                return self.outbox.end(status).await;
            }
            Err(_) => {
                self.metrics.refuse(SERVICE, "no_request");
                self.outbox
                    .end(Status::deadline_exceeded("no discovery request"))
                    .await;
                return;
            }
        };
        let (node, view) = match self.admit(&first) {
            Ok(admitted) => admitted,
            Err(status) => return self.outbox.end(status).await,
        };
        if let End::Status(status) = self.serve(node, view, first, inbound).await {
            self.outbox.end(status).await;
        }
    }

    /// Checks the node of the first request against the certificate and the inventory.
    fn admit(
        &self,
        first: &DiscoveryRequest,
    ) -> Result<(NodeClaim, watch::Receiver<Arc<ProxyView>>), Status> {
        let node = parse_node(first.node.as_ref()).map_err(|e| {
            tracing::info!(peer = %self.peer, identity = %self.identity, error = %e, "ADS stream refused: bad node");
            self.metrics.refuse(SERVICE, "bad_node");
            permission_denied()
        })?;
        let claim = ProxyClaim {
            pod: node.pod.clone(),
            instance_ip: node.instance_ip,
            identity: self.identity.clone(),
        };
        let view = self.registry.subscribe(&claim).map_err(|e| {
            tracing::warn!(peer = %self.peer, identity = %self.identity, pod = %claim.pod, error = %e,
                "ADS stream refused: the pod is not this identity's");
            self.metrics.refuse(SERVICE, "not_this_pod");
            permission_denied()
        })?;
        tracing::info!(peer = %self.peer, identity = %self.identity, pod = %claim.pod, "ADS stream admitted");
        Ok((node, view))
    }

    async fn serve(
        &self,
        node: NodeClaim,
        mut view: watch::Receiver<Arc<ProxyView>>,
        first: DiscoveryRequest,
        mut inbound: Streaming<DiscoveryRequest>,
    ) -> End {
        let mut state = StreamState::new();
        let mut unknown_logged = false;
        let mut current = view.borrow_and_update().clone();
        let mut since = Instant::now();
        let mut request = Some(first);
        let mut shutdown = self.shutdown.clone();
        loop {
            // Checked before anything is sent: a request and the shutdown may both be ready.
            if *shutdown.borrow() {
                return End::Status(stream::shutdown_status());
            }
            if let Some(req) = request.take()
                && let Err(end) = self.on_request(&node, &mut state, &req, &mut unknown_logged)
            {
                return end;
            }
            for type_url in VIEW_TYPES {
                let Some(resources) = current.get(type_url) else {
                    continue;
                };
                if state.should_send(type_url, &resources.version) {
                    let nonce = state.record_sent(type_url, &resources.version);
                    let response = WireResponse::new(type_url, nonce, resources);
                    if self.outbox.send(response, since).await.is_err() {
                        return End::Quiet;
                    }
                }
            }
            tokio::select! {
                _ = self.outbox.closed() => return End::Quiet,
                _ = stream::shutting_down(&mut shutdown) => {
                    tracing::debug!(peer = %self.peer, pod = %node.pod, "ending the ADS stream: shutting down");
                    return End::Status(stream::shutdown_status());
                }
                changed = view.changed() => {
                    if changed.is_err() {
                        tracing::info!(peer = %self.peer, pod = %node.pod, "view closed; ending the ADS stream");
                        self.metrics.refuse(SERVICE, "view_closed");
                        return End::Status(Status::unavailable("view withdrawn; reconnect"));
                    }
                    current = view.borrow_and_update().clone();
                    since = Instant::now();
                }
                message = inbound.message() => match message {
                    Ok(Some(req)) => {
                        request = Some(req);
                        since = Instant::now();
                    }
                    Ok(None) => return End::Quiet,
                    Err(status) => {
                        // Oversize or undecodable messages, or the client reset the stream.
                        tracing::debug!(peer = %self.peer, %status, "ADS stream read failed");
                        self.metrics.refuse(SERVICE, "read_error");
                        return End::Status(Status::new(status.code(), "request stream failed"));
                    }
                },
            }
        }
    }

    /// Applies one request to the stream's state; `Err` ends the stream.
    fn on_request(
        &self,
        node: &NodeClaim,
        state: &mut StreamState,
        req: &DiscoveryRequest,
        unknown_logged: &mut bool,
    ) -> Result<(), End> {
        if let Err(e) = sotw::validate(req) {
            tracing::info!(peer = %self.peer, pod = %node.pod, error = %e, "bad ADS request");
            self.metrics.refuse(SERVICE, "bad_request");
            return Err(End::Status(Status::invalid_argument(e.to_string())));
        }
        if req.node.is_some() && parse_node(req.node.as_ref()).as_ref() != Ok(node) {
            tracing::warn!(peer = %self.peer, pod = %node.pod, "ADS request names another node mid-stream");
            self.metrics.refuse(SERVICE, "node_changed");
            return Err(End::Status(permission_denied()));
        }
        if !VIEW_TYPES.contains(&req.type_url.as_str()) {
            if !*unknown_logged {
                tracing::info!(peer = %self.peer, pod = %node.pod, type_url = %req.type_url,
                    "ignoring a request for a type this server does not serve");
                *unknown_logged = true;
            }
            return Ok(());
        }
        match state.on_request(req) {
            RequestKind::Nack { version, detail } => {
                self.metrics.nacked(SERVICE, &req.type_url);
                tracing::warn!(peer = %self.peer, pod = %node.pod, type_url = %req.type_url,
                    version, detail, "proxy rejected a response (NACK)");
            }
            RequestKind::Stale => {
                tracing::debug!(peer = %self.peer, pod = %node.pod, type_url = %req.type_url,
                    nonce = %req.response_nonce, "ignoring a request with a stale nonce");
            }
            RequestKind::Subscribe | RequestKind::Ack => {}
        }
        Ok(())
    }
}
