//! TLS for the control plane's listeners: TLS 1.3 only, aws-lc-rs with the post-quantum hybrid
//! group offered first, the serving certificate resolved per handshake (hot reload), optional
//! client certificates verified against the trust bundle (renewal by certificate), bounded
//! handshakes, and optionally a cap on open connections ([`ConnectionCap`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the kernel backlog.
const MAX_HANDSHAKES: usize = 512;
/// Under a flood, one log line per this interval says how many connections were shed.
const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A cap on a listener's open connections (handshaking or established). Beyond it, a new
/// connection is closed as soon as it is accepted — before any TLS work — counted in
/// `rejected` and logged (at most once per [`SHED_LOG_INTERVAL`], with the count since).
/// Established connections are untouched, so the proxies already connected keep being served.
#[derive(Clone, Debug)]
pub struct ConnectionCap {
    /// Most connections open at once (at least 1).
    pub max: usize,
    /// Names the listener in the log (`gRPC`).
    pub listener: &'static str,
    /// Connections closed because the cap was reached.
    pub rejected: Counter,
    /// Connections open now.
    pub open: Gauge,
}

/// One slot of a [`ConnectionCap`], given back when the connection is dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// A connection from [`incoming`], holding its listener's connection slot (if capped) until it
/// is dropped. Reads and writes go straight to the inner stream.
pub struct Counted<S> {
    inner: S,
    _slot: Option<Slot>,
}

impl<S> Counted<S> {
    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// tonic reads the peer address and client certificates through this.
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Rate-limits the shedding log line of one accept loop.
#[derive(Default)]
struct ShedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ShedLog {
    fn shed(&mut self, cap: &ConnectionCap, peer: SocketAddr) {
        cap.rejected.inc();
        if self.last.is_some_and(|t| t.elapsed() < SHED_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            listener = cap.listener,
            max_connections = cap.max,
            %peer,
            shed_since_last_log = self.suppressed,
            "connection limit reached; closing new connections (established ones are served)"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// Builds the server configuration. With `client_roots`, client certificates are requested and,
/// when presented, must chain to those roots; clients without one are still accepted (they
/// authenticate with a bearer token instead). The roots are fixed: a listener that must follow
/// trust-bundle changes uses [`server_config_live_trust`].
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    client_roots: Option<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match client_roots {
        Some(roots) => Some(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?,
        ),
        None => None,
    };
    config_with(provider, resolver, verifier, alpn)
}

/// [`server_config`] whose client-certificate verifier follows `bundle`: every handshake
/// verifies against the trust bundle current at that moment (no restart after a change).
pub fn server_config_live_trust(
    resolver: Arc<dyn ResolvesServerCert>,
    bundle: tokio::sync::watch::Receiver<crate::ca::TrustBundle>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(super::client_trust::LiveClientVerifier::new(
        bundle,
        provider.clone(),
    ));
    config_with(provider, resolver, Some(verifier), alpn)
}

fn config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
    verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, rustls::Error> {
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts TCP connections and performs TLS handshakes off the accept loop, yielding finished
/// TLS streams. Ends when the receiver is dropped. No cap on open connections: the caller
/// bounds them (see [`incoming_capped`]).
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> mpsc::Receiver<Result<Counted<TlsStream<TcpStream>>, std::io::Error>> {
    accept_loop(listener, config, None)
}

/// [`incoming`] with at most `cap.max` connections open at once; see [`ConnectionCap`].
pub fn incoming_capped(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    cap: ConnectionCap,
) -> mpsc::Receiver<Result<Counted<TlsStream<TcpStream>>, std::io::Error>> {
    accept_loop(listener, config, Some(cap))
}

fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    cap: Option<ConnectionCap>,
) -> mpsc::Receiver<Result<Counted<TlsStream<TcpStream>>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let connections = cap
        .as_ref()
        .map(|cap| Arc::new(Semaphore::new(cap.max.max(1))));
    tokio::spawn(async move {
        let mut shed_log = ShedLog::default();
        loop {
            let permit = tokio::select! {
                _ = tx.closed() => return,
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let slot = match (&cap, &connections) {
                (Some(cap), Some(connections)) => match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        cap.open.inc();
                        Some(Slot {
                            _permit: permit,
                            open: cap.open.clone(),
                        })
                    }
                    Err(_) => {
                        // Closed before any TLS work: a flood costs an accept and a close.
                        drop(tcp);
                        shed_log.shed(cap, peer);
                        continue;
                    }
                },
                _ => None,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let stream = Counted {
                            inner: stream,
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The handshake-signature methods every rustls certificate verifier (client or server side)
/// must have, checked with the algorithms of the verifier's crypto provider (the expression
/// after `self.`, e.g. `provider` or `roots.provider`). `tls13_only:` leaves
/// `verify_tls12_signature` to the caller (verifiers of TLS 1.3-only configurations refuse it).
macro_rules! handshake_signatures {
    (tls13_only: $($provider:tt)+) => {
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$($provider)+.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$($provider)+.signature_verification_algorithms.supported_schemes()
        }
    };
    ($($provider:tt)+) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$($provider)+.signature_verification_algorithms,
            )
        }

        $crate::net::tls::handshake_signatures!(tls13_only: $($provider)+);
    };
}
pub(crate) use handshake_signatures;
