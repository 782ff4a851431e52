//! TLS for the control plane's listeners: TLS 1.3 only, aws-lc-rs with the post-quantum hybrid
//! group offered first, the serving certificate resolved per handshake (hot reload), and
//! optional client certificates verified against the trust bundle (renewal by certificate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped (slowloris).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the kernel backlog.
const MAX_HANDSHAKES: usize = 512;

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
/// TLS streams. Ends when the receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
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
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
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
