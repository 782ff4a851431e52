//! Envoy SDS: `envoy.service.secret.v3.SecretDiscoveryService` `StreamSecrets` (state of the
//! world) and `FetchSecrets`, type [`SECRET_TYPE`], for Envoy-based proxies without an agent.
//!
//! The caller authenticates exactly as for `CreateCertificate` (the same code:
//! [`CaService::identify`]): a bearer token, or a workload client certificate. Resource names:
//! - `ROOTCA`: `validation_context.trusted_ca.inline_bytes` = the PEM trust bundle; pushed again
//!   on an open stream whenever the bundle changes;
//! - `default`: `tls_certificate.certificate_chain` (leaf, then intermediates) and
//!   `private_key` (PKCS#8), PEM in `inline_bytes`, for the caller's own identity, on a fresh
//!   P-256 key generated here and held only in memory, with the CA's default lifetime. Before
//!   [`RENEW_AT`] of that lifetime has passed, the caller's credential is checked again and a new
//!   certificate on a new key is pushed (a credential no longer valid ends the stream with
//!   `UNAUTHENTICATED`);
//! - any other name is left out of the response (state of the world: "no such secret") and
//!   logged; it never yields key material. An empty name list (wildcard) gets no secrets.
//!
//! Status codes: `UNAUTHENTICATED` / `UNAVAILABLE` / `RESOURCE_EXHAUSTED` as for the CA,
//! `INVALID_ARGUMENT` for a request over the bounds of [`super::sotw`] or of another type
//! (FetchSecrets), `INTERNAL` (no detail) when issuance fails on our side.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::CaService;
use super::metrics::{XdsMetrics, XdsService};
use super::sotw::{self, RequestKind, StreamState};
use super::stream::{self, Outbox, ResponseStream};
use crate::auth::{AuthError, Identity};
use crate::ca::Authority;

/// The SDS type URL.
pub const SECRET_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// The trust bundle's resource name.
pub const ROOTCA: &str = "ROOTCA";
/// The caller's own certificate and key.
pub const DEFAULT: &str = "default";
/// Largest request message accepted (credentials travel in headers, not here).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Share of a certificate's lifetime after which the stream pushes a new one (before half).
pub const RENEW_AT: f64 = 0.45;

const SERVICE: XdsService = XdsService::Sds;

/// The SDS server.
#[derive(Clone)]
pub struct SdsService {
    ca: CaService,
    authority: Arc<Authority>,
    metrics: XdsMetrics,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// A certificate and key issued for one stream.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    serial: String,
    renew_at: tokio::time::Instant,
}

impl SdsService {
    /// Serves secrets issued by the CA behind `ca` to the callers `ca` identifies (the same
    /// rules as `CreateCertificate`: a bearer token, or a client certificate when renewal by
    /// certificate is enabled).
    pub fn new(ca: CaService, metrics: XdsMetrics) -> Self {
        Self {
            authority: ca.authority().clone(),
            ca,
            metrics,
            shutdown: stream::never_shutdown(),
        }
    }

    /// The same service ending every open stream with `UNAVAILABLE` once `shutdown` turns
    /// `true` (see [`super::AdsService::with_shutdown`]).
    pub fn with_shutdown(mut self, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The tonic server for this service, with the request size bound applied.
    pub fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Who the caller is; refusals are counted, logged in detail and answered without it.
    async fn authenticate<T>(&self, request: &Request<T>, peer: &str) -> Result<Identity, Status> {
        self.ca
            .identify(request)
            .await
            .map(|caller| caller.identity)
            .map_err(|e| {
                tracing::info!(peer, error = %e, "SDS caller not authenticated");
                let (reason, status) = match e {
                    AuthError::Unauthenticated(_) => (
                        "unauthenticated",
                        Status::unauthenticated("unauthenticated"),
                    ),
                    AuthError::Unavailable(_) => (
                        "auth_unavailable",
                        Status::unavailable("authentication backend unavailable, retry later"),
                    ),
                    AuthError::Exhausted => (
                        "shed",
                        Status::resource_exhausted("overloaded, retry later"),
                    ),
                };
                self.metrics.refuse(SERVICE, reason);
                status
            })
    }

    /// A certificate for `identity` on a fresh key.
    fn issue(&self, identity: &Identity, peer: &str) -> Result<Leaf, Status> {
        let internal = |e: &dyn std::fmt::Display| {
            tracing::error!(%identity, peer, error = %e, "SDS certificate issuance failed");
            self.metrics.refuse(SERVICE, "issue_failed");
            Status::internal("internal error")
        };
        let key = rcgen::KeyPair::generate().map_err(|e| internal(&e))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(|e| internal(&e))?;
        let issued = self
            .authority
            .issue(identity, &csr, 0, peer)
            .map_err(|e| internal(&e))?;
        // The root stays out of the chain: peers have it from ROOTCA.
        let n = issued.chain_pem.len();
        let keep = if n >= 2 { n - 1 } else { n };
        let lifetime = issued
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let renew_in = lifetime.mul_f64(RENEW_AT).max(Duration::from_secs(1));
        Ok(Leaf {
            chain_pem: issued.chain_pem[..keep].concat(),
            key_pem: key.serialize_pem(),
            serial: issued.serial_hex,
            renew_at: tokio::time::Instant::now() + renew_in,
        })
    }
}

/// PEM in a `DataSource`.
fn inline(pem: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(pem.as_bytes().to_vec())),
        ..Default::default()
    })
}

/// A short digest of the bundle (for versions).
fn bundle_digest(pem: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The secrets `names` asks for, as of `bundle` and `leaf`, with their version (equal content,
/// equal version). `default` is left out when `leaf` is `None`; unknown names always are.
fn secrets(names: &[String], bundle_pem: &str, leaf: Option<&Leaf>) -> (String, Vec<Any>) {
    let mut version = Vec::new();
    let mut resources = Vec::new();
    let mut seen = Vec::new();
    for name in names {
        if seen.contains(&name.as_str()) {
            continue;
        }
        seen.push(name.as_str());
        let (tag, kind) = match (name.as_str(), leaf) {
            (ROOTCA, _) => (
                format!("r{}", bundle_digest(bundle_pem)),
                secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: inline(bundle_pem),
                    ..Default::default()
                }),
            ),
            (DEFAULT, Some(leaf)) => (
                format!("c{}", leaf.serial),
                secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: inline(&leaf.chain_pem),
                    private_key: inline(&leaf.key_pem),
                    ..Default::default()
                }),
            ),
            _ => continue,
        };
        version.push(tag);
        let secret = Secret {
            name: name.clone(),
            r#type: Some(kind),
        };
        resources.push(Any {
            type_url: SECRET_TYPE.into(),
            value: secret.encode_to_vec(),
        });
    }
    let version = if version.is_empty() {
        "empty".to_string()
    } else {
        version.join(".")
    };
    (version, resources)
}

fn unknown_names(names: &[String]) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != ROOTCA && *n != DEFAULT)
        .collect()
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ResponseStream;
    type DeltaSecretsStream = tokio_stream::Empty<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let identity = self.authenticate(&request, &peer).await?;
        let (metadata, extensions, inbound) = request.into_parts();
        let (outbox, responses) = stream::channel(self.metrics.clone(), SERVICE);
        let task = SdsStream {
            service: self.clone(),
            credentials: Request::from_parts(metadata, extensions, ()),
            identity,
            peer,
            outbox,
        };
        tokio::spawn(task.run(inbound));
        Ok(Response::new(responses))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let started = Instant::now();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let identity = self.authenticate(&request, &peer).await?;
        let req = request.into_inner();
        sotw::validate(&req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.type_url != SECRET_TYPE {
            return Err(Status::invalid_argument("unsupported type URL"));
        }
        let leaf = match req.resource_names.iter().any(|n| n == DEFAULT) {
            true => Some(self.issue(&identity, &peer)?),
            false => None,
        };
        let bundle = self.authority.trust_bundle().to_pem();
        let (version, resources) = secrets(&req.resource_names, &bundle, leaf.as_ref());
        self.metrics
            .pushed(SERVICE, SECRET_TYPE, started.elapsed().as_secs_f64());
        Ok(Response::new(DiscoveryResponse {
            nonce: version.clone(),
            version_info: version,
            resources,
            type_url: SECRET_TYPE.into(),
            ..Default::default()
        }))
    }

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental xDS is not served; use StreamSecrets",
        ))
    }
}

/// One authenticated SDS stream.
struct SdsStream {
    service: SdsService,
    /// The caller's metadata and connection info, to check the credential again at renewal.
    credentials: Request<()>,
    identity: Identity,
    peer: String,
    outbox: Outbox,
}

impl SdsStream {
    async fn run(self, inbound: Streaming<DiscoveryRequest>) {
        let _open = self.service.metrics.stream_opened(SERVICE);
        if let Err(status) = self.serve(inbound).await {
            self.outbox.end(status).await;
        }
    }

    /// Serves until the client leaves (`Ok`) or the stream must end with a status.
    async fn serve(&self, mut inbound: Streaming<DiscoveryRequest>) -> Result<(), Status> {
        let metrics = &self.service.metrics;
        let mut bundles = self.service.authority.subscribe_bundle();
        let mut bundle_pem = bundles.borrow_and_update().to_pem();
        let mut state = StreamState::new();
        let mut leaf: Option<Leaf> = None;
        let mut since = Instant::now();
        let mut shutdown = self.service.shutdown.clone();
        loop {
            // Checked before anything is sent: a request and the shutdown may both be ready.
            if *shutdown.borrow() {
                return Err(stream::shutdown_status());
            }
            if let Some(names) = state.names(SECRET_TYPE) {
                let wants_default = names.iter().any(|n| n == DEFAULT);
                if !wants_default {
                    leaf = None;
                } else if leaf.is_none() {
                    leaf = Some(self.service.issue(&self.identity, &self.peer)?);
                }
                let (version, resources) = secrets(names, &bundle_pem, leaf.as_ref());
                if state.should_send(SECRET_TYPE, &version) {
                    let response = state.respond(SECRET_TYPE, &version, resources);
                    if self.outbox.send(response, since).await.is_err() {
                        return Ok(());
                    }
                }
            }
            let renewal = leaf.as_ref().map(|l| l.renew_at);
            tokio::select! {
                _ = self.outbox.closed() => return Ok(()),
                _ = stream::shutting_down(&mut shutdown) => return Err(stream::shutdown_status()),
                changed = bundles.changed() => {
                    if changed.is_err() {
                        return Err(Status::unavailable("shutting down"));
                    }
                    bundle_pem = bundles.borrow_and_update().to_pem();
                    since = Instant::now();
                }
                _ = sleep_until(renewal) => {
                    // Still this caller? (token revoked, client certificate expired, ...)
                    let identity = self.service.authenticate(&self.credentials, &self.peer).await?;
                    if identity != self.identity {
                        tracing::warn!(peer = %self.peer, was = %self.identity, now = %identity,
                            "SDS caller's identity changed; ending the stream");
                        metrics.refuse(SERVICE, "identity_changed");
                        return Err(Status::unauthenticated("unauthenticated"));
                    }
                    leaf = Some(self.service.issue(&self.identity, &self.peer)?);
                    since = Instant::now();
                }
                message = inbound.message() => match message {
                    Ok(Some(req)) => {
                        self.on_request(&mut state, &req)?;
                        since = Instant::now();
                    }
                    Ok(None) => return Ok(()),
                    Err(status) => {
                        tracing::debug!(peer = %self.peer, %status, "SDS stream read failed");
                        metrics.refuse(SERVICE, "read_error");
                        return Err(Status::new(status.code(), "request stream failed"));
                    }
                },
            }
        }
    }

    fn on_request(&self, state: &mut StreamState, req: &DiscoveryRequest) -> Result<(), Status> {
        let metrics = &self.service.metrics;
        if let Err(e) = sotw::validate(req) {
            tracing::info!(peer = %self.peer, identity = %self.identity, error = %e, "bad SDS request");
            metrics.refuse(SERVICE, "bad_request");
            return Err(Status::invalid_argument(e.to_string()));
        }
        if req.type_url != SECRET_TYPE {
            tracing::info!(peer = %self.peer, type_url = %req.type_url, "ignoring an SDS request for another type");
            return Ok(());
        }
        match state.on_request(req) {
            RequestKind::Subscribe => {
                let unknown = unknown_names(&req.resource_names);
                if !unknown.is_empty() {
                    tracing::info!(peer = %self.peer, identity = %self.identity, ?unknown,
                        "SDS names that are not served (ROOTCA, default) get no secret");
                }
            }
            RequestKind::Nack { version, detail } => {
                metrics.nacked(SERVICE, SECRET_TYPE);
                tracing::warn!(peer = %self.peer, identity = %self.identity, version, detail,
                    "SDS client rejected a response (NACK)");
            }
            RequestKind::Ack | RequestKind::Stale => {}
        }
        Ok(())
    }
}

/// Sleeps until `at`, forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(any: &Any) -> Secret {
        assert_eq!(any.type_url, SECRET_TYPE);
        Secret::decode(any.value.as_slice()).unwrap()
    }

    fn leaf(serial: &str) -> Leaf {
        Leaf {
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
            serial: serial.into(),
            renew_at: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn names_map_to_secrets() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = leaf("aa");
        let cases: Vec<(Vec<String>, Option<&Leaf>, Vec<&str>)> = vec![
            (names(&["ROOTCA"]), None, vec!["ROOTCA"]),
            (names(&["default"]), Some(&a), vec!["default"]),
            (
                names(&["ROOTCA", "default"]),
                Some(&a),
                vec!["ROOTCA", "default"],
            ),
            (names(&["default", "default"]), Some(&a), vec!["default"]),
            (names(&["default"]), None, vec![]),
            (names(&["other", "spiffe://x", ""]), Some(&a), vec![]),
            (names(&[]), Some(&a), vec![]),
        ];
        for (requested, leaf, want) in cases {
            let (version, resources) = secrets(&requested, "BUNDLE", leaf);
            let got: Vec<String> = resources.iter().map(|r| decode(r).name).collect();
            assert_eq!(got, want, "{requested:?}");
            assert!(!version.is_empty());
        }
        let (_, resources) = secrets(&names(&["default", "ROOTCA"]), "BUNDLE", Some(&a));
        match decode(&resources[0]).r#type {
            Some(secret::Type::TlsCertificate(tls)) => {
                assert_eq!(tls.certificate_chain, inline("CHAIN"));
                assert_eq!(tls.private_key, inline("KEY"));
            }
            other => panic!("{other:?}"),
        }
        match decode(&resources[1]).r#type {
            Some(secret::Type::ValidationContext(v)) => assert_eq!(v.trusted_ca, inline("BUNDLE")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn versions_follow_content() {
        let both = vec![ROOTCA.to_string(), DEFAULT.to_string()];
        let v = |bundle: &str, serial: &str| secrets(&both, bundle, Some(&leaf(serial))).0;
        assert_eq!(v("A", "1"), v("A", "1"));
        assert_ne!(v("A", "1"), v("B", "1"), "a bundle change is a new version");
        assert_ne!(v("A", "1"), v("A", "2"), "a renewal is a new version");
        assert_eq!(unknown_names(&both), Vec::<&str>::new());
        assert_eq!(unknown_names(&["x".to_string()]), vec!["x"]);
    }
}
