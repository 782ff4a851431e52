//! The ADS stream to the control plane: TLS 1.3 presenting the current workload certificate
//! (read from the identity watch at each handshake) and verifying the control plane against the
//! trust bundle in force; one state-of-the-world stream for the four Palisade types; every
//! response ACKed or NACKed ([`super::view`]); the policy published once complete and on every
//! accepted change; reconnection with jittered exponential backoff, the last policy staying in
//! force meanwhile.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Endpoint;

use super::identity::random_fraction;
use super::state::{Identity, Policy, Trust};
use super::trust;
use super::view::{self, MAX_MESSAGE_BYTES, ViewState};

/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnection delay; doubles per consecutive failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest reconnection delay (before jitter).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// HTTP/2 pings on the stream: a control plane that vanished without closing the connection
/// (node lost, network partition) is noticed within interval + timeout, and the proxy
/// reconnects instead of waiting forever on a dead stream.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request the proxy sends (ACKs and NACKs are small).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Where the control plane is and who this proxy is.
#[derive(Clone, Debug)]
pub struct AdsConfig {
    /// `host:port` of the control plane's gRPC port.
    pub address: String,
    /// The name its serving certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub instance_ip: Option<IpAddr>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    /// The server name is not a DNS name or IP address.
    #[error("server name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Connecting failed.
    #[error("connecting to {address}: {message}")]
    Connect {
        /// The address dialled.
        address: String,
        /// What went wrong.
        message: String,
    },
    /// The control plane ended the stream with a status.
    #[error("the control plane ended the stream: {code:?}: {message}")]
    Status {
        /// The gRPC code (PermissionDenied: it does not serve this pod as this identity).
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The control plane closed the stream without a status.
    #[error("the control plane closed the stream")]
    Closed,
}

impl From<tonic::Status> for AdsError {
    fn from(status: tonic::Status) -> Self {
        Self::Status {
            code: status.code(),
            message: status.message().chars().take(512).collect(),
        }
    }
}

/// The delay before reconnection attempt `failures` (1-based): 1 s doubling to 30 s, scaled by
/// a jitter factor in `[0.5, 1]` (`jitter` in `[0, 1]`) so a restarted control plane is not
/// met by every proxy at once.
pub fn reconnect_backoff(failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let base = FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Runs the stream until every policy receiver is gone, reconnecting as needed. Waits for the
/// first workload certificate before the first connection.
pub async fn run(
    config: AdsConfig,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    trust: watch::Sender<Arc<Trust>>,
    policy: watch::Sender<Option<Arc<Policy>>>,
) {
    let mut state = ViewState::default();
    let mut failures: u32 = 0;
    let mut waiting = identity.clone();
    if waiting.wait_for(Option::is_some).await.is_err() {
        return;
    }
    loop {
        let outcome = stream_once(&config, &identity, &trust, &policy, &mut state).await;
        if policy.is_closed() {
            return;
        }
        let received = match outcome {
            Ok(received) => {
                tracing::warn!("the control plane closed the policy stream; reconnecting");
                received
            }
            Err((
                received,
                AdsError::Status {
                    code: tonic::Code::PermissionDenied,
                    message,
                },
            )) => {
                tracing::error!(
                    pod = %format!("{}/{}", config.pod_namespace, config.pod_name),
                    %message,
                    "the control plane REFUSED this proxy's policy stream (PERMISSION_DENIED): it does not know this pod as running with this identity; check POD_NAME, POD_NAMESPACE, INSTANCE_IP and the service account"
                );
                received
            }
            Err((received, e)) => {
                tracing::warn!(error = %e, "policy stream failed; the last policy stays in force");
                received
            }
        };
        failures = if received {
            1
        } else {
            failures.saturating_add(1)
        };
        let wait = reconnect_backoff(failures, random_fraction());
        tracing::info!(
            retry_in_ms = wait.as_millis() as u64,
            "reconnecting the policy stream"
        );
        tokio::time::sleep(wait).await;
    }
}

/// One stream, from connecting to its end. Returns whether any response was accepted (a
/// stream that worked resets the backoff), with the error if it ended in one.
async fn stream_once(
    config: &AdsConfig,
    identity: &watch::Receiver<Option<Arc<Identity>>>,
    trust: &watch::Sender<Arc<Trust>>,
    policy: &watch::Sender<Option<Arc<Policy>>>,
    state: &mut ViewState,
) -> Result<bool, (bool, AdsError)> {
    let channel = connect(config, identity.clone(), trust.subscribe())
        .await
        .map_err(|e| (false, e))?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let (requests, outgoing) = mpsc::channel(8);
    for request in view::initial_requests(view::node(
        &config.pod_namespace,
        &config.pod_name,
        config.instance_ip,
    )) {
        // The channel holds more than the four initial requests.
        let _ = requests.try_send(request);
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .map_err(|s| (false, AdsError::from(s)))?
        .into_inner();
    let mut received = false;
    loop {
        let response = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Ok(received),
            Err(status) => return Err((received, AdsError::from(status))),
        };
        let handled = view::handle(state, &response);
        if requests.send(handled.reply).await.is_err() {
            return Err((received, AdsError::Closed));
        }
        if !handled.accepted {
            continue;
        }
        received = true;
        if let Some(bundle) = handled.trust {
            let roots = bundle.roots.len();
            if trust::publish(trust, bundle) {
                tracing::info!(
                    roots,
                    "trust bundle from the control plane; new handshakes use it"
                );
            }
        }
        if let Some(p) = state.policy() {
            tracing::info!(
                versions = ?p.versions,
                destinations = p.destinations.len(),
                workloads = p.workloads.len(),
                "policy from the control plane; new connections follow it"
            );
            policy.send_replace(Some(Arc::new(p)));
        }
    }
}

/// A gRPC channel to the control plane over this module's TLS.
async fn connect(
    config: &AdsConfig,
    identity: watch::Receiver<Option<Arc<Identity>>>,
    trust: watch::Receiver<Arc<Trust>>,
) -> Result<tonic::transport::Channel, AdsError> {
    let server_name = ServerName::try_from(config.server_name.clone())
        .map_err(|_| AdsError::ServerName(config.server_name.clone()))?;
    let tls = client_config(identity, trust)?;
    let connector = Connector {
        tls: TlsConnector::from(Arc::new(tls)),
        address: config.address.clone(),
        server_name,
    };
    let fail = |message: String| AdsError::Connect {
        address: config.address.clone(),
        message,
    };
    // The scheme is `http` because the TLS is this module's own (tonic refuses `https` without
    // its TLS); the authority only fills the `:authority` header.
    Endpoint::from_shared(format!("http://{}", config.address))
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await
        .map_err(|e| fail(crate::error_chain(&e)))
}

/// TLS 1.3 to the control plane: the client certificate is whatever identity is current at the
/// handshake, the server is verified against the trust bundle current at the handshake.
pub fn client_config(
    identity: watch::Receiver<Option<Arc<Identity>>>,
    trust: watch::Receiver<Arc<Trust>>,
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LiveServerVerifier { trust, provider }))
        .with_client_cert_resolver(Arc::new(CurrentIdentity(identity)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Presents the identity current at each handshake.
#[derive(Debug)]
struct CurrentIdentity(watch::Receiver<Option<Arc<Identity>>>);

impl ResolvesClientCert for CurrentIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|id| id.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies the control plane's certificate (chain and name) against the bundle in force.
#[derive(Debug)]
struct LiveServerVerifier {
    trust: watch::Receiver<Arc<Trust>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        let _ = roots.add_parsable_certificates(self.trust.borrow().roots.iter().cloned());
        // Built per handshake: the stream connects rarely, and the bundle may have changed.
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("no usable trust anchors: {e}")))?
        .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration allows TLS 1.3 only.
        Err(rustls::Error::General("TLS 1.2 is not allowed".into()))
    }

    crate::net::tls::handshake_signatures!(tls13_only: provider);
}

/// Dials the control plane and runs the TLS handshake (for tonic's `connect_with_connector`).
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    address: String,
    server_name: ServerName<'static>,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let work = async {
                let tcp = TcpStream::connect(&this.address).await?;
                tcp.set_nodelay(true)?;
                this.tls.connect(this.server_name.clone(), tcp).await
            };
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, work)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")
                })??;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_to_thirty_seconds_with_jitter() {
        let full: Vec<u64> = (1..=7)
            .map(|n| reconnect_backoff(n, 1.0).as_secs())
            .collect();
        assert_eq!(full, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(reconnect_backoff(3, 0.0), Duration::from_secs(2));
        assert_eq!(reconnect_backoff(1, 0.5), Duration::from_millis(750));
        assert_eq!(reconnect_backoff(u32::MAX, 9.0), MAX_BACKOFF);
    }
}
